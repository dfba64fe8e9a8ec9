"""Benchmark: the single-machine recipe against recluster, side by side, on the same generated data.

One invocation generates the tables, then runs each contender in its own fresh process (so peak
memory and numba compilation are its own) and prints one table:

(a) ``recipe``: what the tutorials write. All rows in memory, median-impute + standardise +
    one-hot, ``UMAP.fit_transform`` on every row, HDBSCAN on the embedding, one-vs-all
    ``XGBClassifier()`` (XGBoost's defaults, as the tutorials leave them) per cluster on the raw
    features, ``shap.TreeExplainer`` on every row. At depth d (``--recipe-depth``, default the
    largest of ``--depths``) the recipe recurses as the tutorials' recursive recipe does: every
    cluster with at least twice its ``min_cluster_size`` rows is standardised, embedded (seeded
    UMAP) and clustered afresh on ALL its rows, and each new cluster explained one-vs-rest on all
    its parent's rows. One run gives its times at every depth up to d (the levels are timed
    apart: depth k's total is the first k levels'), so each recluster depth is printed against
    the recipe at the same depth (the target) and against the recipe at depth 1.
(b) ``recluster`` on a 2-worker ``LocalCluster`` (one thread each), local storage, default
    config with explanations: at depth 1 (the fair comparison), then at depth 2; then depth 2
    at larger N for the scaling targets.

Compilation warm-up (numba, in every fresh process) is measured on its own line for each
contender: the first and the second identical tiny fit in the same process, so the line also
shows that the cost is paid once per process. Stage times exclude it.

    .venv/bin/python jobs/benchmark.py                      # 300k x 32, then 1M and 4M x 32
    .venv/bin/python jobs/benchmark.py --depths 1,2,3 --scale '' --pass-nodes ''  # recipe to depth 3
    .venv/bin/python jobs/benchmark.py --rows 100000 --scale '' --skip-recipe   # a quick look
    .venv/bin/python jobs/benchmark.py --passes      # only the full-data passes at 50 and 400 nodes
    .venv/bin/python jobs/benchmark.py --wide 500 --rows 100000   # only 32 vs 500 columns, depth 2

The pass section (in its own process, one core) times one full-data level-2 assignment pass and
one sample pass over --rows rows, for a tree of 50 and of 400 split nodes, against the passes
they replaced (``jobs/routing_reference.py``); see :func:`run_passes`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
N_WORKERS = 2


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _table_shape(n_features: int) -> dict[str, int]:
    """make_table arguments for ``n_features`` features: informative + noise + 2 skewed + country."""
    n_informative = max(4, n_features // 3)
    return {"n_informative": n_informative, "n_noise": n_features - n_informative - 3}


def generate(root: Path, rows: int, n_features: int, seed: int) -> Path:
    """Write the table and its truth once; reuse it on later invocations."""
    import fsspec

    from recluster.demo import make_table, write_partitioned

    d = root / f"data-{rows}x{n_features}-seed{seed}"
    if (d / "truth.parquet").exists():
        return d
    t = time.perf_counter()
    table, truth = make_table(rows, seed=seed, **_table_shape(n_features))
    # Files of 50k rows: a lake's many files, and enough partitions to keep both workers busy.
    write_partitioned(table, fsspec.filesystem("file"), str(d / "input"),
                      n_files=max(1, rows // 50_000))
    truth.to_parquet(d / "truth.parquet", index=False)
    print(f"generated {rows} rows x {n_features} features in {time.perf_counter() - t:.1f}s -> {d}",
          flush=True)
    return d


def _ari(labels, truth) -> float:
    from sklearn.metrics import adjusted_rand_score

    return round(float(adjusted_rand_score(truth, labels)), 4)


# --------------------------------------------------------------------------- (a) the recipe


def _recipe_warmup() -> tuple[float, float]:
    import umap

    x = np.random.default_rng(0).normal(size=(2_000, 8))
    times = []
    for _ in range(2):
        t = time.perf_counter()
        # Seeded and unseeded UMAP run differently compiled (serial / parallel) kernels.
        umap.UMAP(n_neighbors=15, min_dist=0.0, random_state=0).fit_transform(x)
        umap.UMAP(n_neighbors=15, min_dist=0.0).fit_transform(x)
        times.append(time.perf_counter() - t)
    return times[0], times[1]


#: The recipe's stages, in the order they run at each level (their seconds are summed per level).
RECIPE_STAGES = ("preprocess", "embed (UMAP, all rows)", "cluster (HDBSCAN)",
                 "explain: XGBoost one-vs-all", "explain: SHAP all rows")


def _recipe_cluster(raw, seed: int, times: dict[str, float]):
    """The tutorial's clustering of the rows ``raw`` (DataFrame (m, d): numeric with NaN, one-hot
    country): median-impute and standardise on these rows, seeded UMAP on all of them, HDBSCAN.

    Returns
    -------
    labels : ndarray (m,), -1 noise
    x : ndarray (m, d), the standardised rows
    Adds the stages' seconds to ``times``.
    """
    import hdbscan
    import umap
    from sklearn.preprocessing import StandardScaler

    t = time.perf_counter()
    x = StandardScaler().fit_transform(raw.fillna(raw.median()))
    times["preprocess"] += time.perf_counter() - t
    # Seeded, as recluster is: a segmentation someone must explain has to be reproducible.
    # UMAP runs single-threaded when seeded; the unseeded (parallel) fit is timed on its own line.
    t = time.perf_counter()
    emb = umap.UMAP(n_neighbors=15, min_dist=0.0, n_components=2,
                    random_state=seed).fit_transform(x)
    times["embed (UMAP, all rows)"] += time.perf_counter() - t
    t = time.perf_counter()
    labels = hdbscan.HDBSCAN(min_cluster_size=_recipe_mcs(len(raw)),
                             min_samples=10).fit_predict(emb)
    times["cluster (HDBSCAN)"] += time.perf_counter() - t
    return labels, x


def _recipe_mcs(n: int) -> int:
    """The recipe's HDBSCAN ``min_cluster_size`` for ``n`` rows."""
    return max(25, int(0.02 * n))


def _recipe_explain(raw, labels, seed: int, times: dict[str, float]) -> list[float]:
    """One-vs-rest XGBoost (the tutorials' defaults) per cluster of ``labels`` on the rows ``raw``
    (the clustered rows: all of them, noise included), scored on a 20% hold-out, and TreeSHAP on
    every row. Returns the hold-out AUCs; adds the stages' seconds to ``times``."""
    import shap
    import xgboost as xgb
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    aucs = []
    for c in sorted(set(labels) - {-1}):
        y = (labels == c).astype(int)
        t = time.perf_counter()
        xtr, xte, ytr, yte = train_test_split(raw, y, test_size=0.2, random_state=seed, stratify=y)
        # The tutorials' classifier: XGBoost's defaults (100 trees of depth 6, eta 0.3).
        model = xgb.XGBClassifier(n_jobs=N_WORKERS)
        model.fit(xtr, ytr)
        aucs.append(roc_auc_score(yte, model.predict_proba(xte)[:, 1]))
        times["explain: XGBoost one-vs-all"] += time.perf_counter() - t
        t = time.perf_counter()
        values = shap.TreeExplainer(model).shap_values(raw)
        np.abs(values).mean(axis=0)  # the per-cluster bar chart's numbers
        times["explain: SHAP all rows"] += time.perf_counter() - t
    return aucs


def run_recipe(data: Path, seed: int, depth: int = 1, unseeded: bool = True) -> dict:
    """The tutorial recipe, recursively to ``depth``: level 1 clusters every row (UMAP + HDBSCAN)
    and explains each cluster one-vs-all; each later level takes every cluster of the level
    above with at least twice its own ``min_cluster_size`` rows, standardises, embeds (seeded
    UMAP) and clusters ALL its rows afresh, and -- when it finds two clusters or more -- explains
    each one-vs-rest on all the parent's rows. A cluster's noise stays in the parent's segment.

    Stage seconds are kept per level, so one run at ``depth`` gives the recipe's totals at every
    depth up to it (prefix sums): ``by_depth[d]`` holds the cumulative stages, leaf ARI, number of
    segments and the smallest AUC at depth d; the top-level keys are depth 1's, as before.
    ``unseeded``: also time an unseeded (parallel) UMAP on all rows, on its own line.
    """
    import pandas as pd
    import umap

    warm = _recipe_warmup()
    t = time.perf_counter()
    df = pd.read_parquet(data / "input")
    truth = pd.read_parquet(data / "truth.parquet")
    load_s = time.perf_counter() - t

    t = time.perf_counter()
    num = df.drop(columns=["user_id", "country"])
    raw = pd.concat([num, pd.get_dummies(df["country"], prefix="country", dtype=float)], axis=1)
    onehot_s = time.perf_counter() - t
    order = truth.set_index("user_id").loc[df["user_id"]]
    groups, subgroups = order["group"].to_numpy(), order["subgroup"].to_numpy()

    paths = np.full(len(df), "root", dtype=object)  # each row's segment, level by level
    frontier = [("root", np.arange(len(df)))]
    levels, by_depth, unseeded_umap_s, x_all = [], {}, None, None
    for level in range(1, depth + 1):
        times = dict.fromkeys(RECIPE_STAGES, 0.0)
        aucs, nxt, n_split = [], [], 0
        for path, rows in frontier:
            sub = raw.iloc[rows]
            labels, x = _recipe_cluster(sub, seed, times)
            k = len(set(labels) - {-1})
            if level == 1:
                x_all = x
            elif k < 2:
                continue  # not split: the cluster is a leaf
            n_split += 1
            aucs += _recipe_explain(sub, labels, seed, times)
            for c in range(k):
                members = rows[labels == c]
                paths[members] = f"{path}.{c}"
                if len(members) >= 2 * _recipe_mcs(len(members)):
                    nxt.append((f"{path}.{c}", members))
        if level == 1:
            times["preprocess"] += onehot_s
            if unseeded:
                t = time.perf_counter()
                umap.UMAP(n_neighbors=15, min_dist=0.0, n_components=2).fit_transform(x_all)
                unseeded_umap_s = time.perf_counter() - t
            level1 = paths.copy()
        levels.append(times)
        print(f"recipe level {level}: {n_split} of {len(frontier)} node(s) split, "
              f"{sum(times.values()):.1f}s", file=sys.stderr, flush=True)
        prev = by_depth.get(level - 1, {"stages": {"load": load_s, **dict.fromkeys(RECIPE_STAGES, 0.0)},
                                        "min_auc": None})
        mins = [a for a in (prev["min_auc"], min(aucs) if aucs else None) if a is not None]
        by_depth[level] = {
            "stages": {k: v + times.get(k, 0.0) for k, v in prev["stages"].items()},
            "segments": len(set(paths)), "nodes_split": n_split,
            "ari_leaf": _ari(paths, subgroups), "min_auc": round(min(mins), 4) if mins else None}
        frontier = nxt
        if not frontier:
            break
    for d in range(len(levels) + 1, depth + 1):  # nothing left to split: deeper is the same
        by_depth[d] = by_depth[len(levels)]
    first = by_depth[1]
    return {"stages": first["stages"], "warmup_s": list(warm), "rows": len(df),
            "unseeded_umap_s": unseeded_umap_s, "levels": levels,
            "by_depth": {str(d): v for d, v in by_depth.items()},
            "clusters_l1": first["segments"] - int((level1 == "root").any()),
            "noise_share": float(np.mean(level1 == "root")),
            "ari_l1": _ari(level1, groups), "ari_leaf": first["ari_leaf"],
            "min_auc": first["min_auc"],
            "peak_client_mib": _peak_mib(), "peak_worker_mib": None}


# --------------------------------------------------------------------------- (b) recluster


def _worker_warmup() -> tuple[float, float]:
    """A tiny node fit twice in this worker process: first pays compilation, second does not."""
    from recluster.parallel.client import imports_ready

    # As the job's fitting tasks do: the warm-up thread may be importing the fitting libraries
    # right now, and two threads importing sklearn.metrics at once fail with a _DeadlockError
    # (it failed the 4M-row scaling run once).
    imports_ready()
    from recluster.compute.node import U_COLUMN, fit_node
    from recluster.compute.sampling import hash_uniform
    from recluster.config import parse_config
    from recluster.demo import make_table

    table, _ = make_table(2_000, seed=1)
    table[U_COLUMN] = hash_uniform(table["user_id"], 0)
    cfg = parse_config({"input": {"path": "-", "id_column": "user_id", "categorical": ["country"]},
                        "output": {"path": "-"}, "sample": {"size": 2_000}})
    numeric = [c for c in table.columns if c not in ("user_id", "country", U_COLUMN)]
    times = []
    for _ in range(2):
        t = time.perf_counter()
        fit_node(table, "root", numeric, ["country"], "user_id", cfg)
        times.append(time.perf_counter() - t)
    return times[0], times[1]


def _worker_peak() -> float:
    return _peak_mib()


def _bench_config(data: Path, out: Path, depth: int, seed: int, overrides: list[str]):
    """The config every recluster contender runs with (an emptied ``out``): the generated
    table, ``depth`` levels, 2 single-threaded workers."""
    from recluster.config import apply_overrides, parse_config

    if out.exists():
        shutil.rmtree(out)
    return parse_config(apply_overrides({
        "input": {"path": str(data / "input"), "id_column": "user_id", "categorical": ["country"]},
        "output": {"path": str(out)},
        "recursion": {"max_depth": depth},
        "runtime": {"n_workers": N_WORKERS, "threads_per_worker": 1},
        "seed": seed,
    }, overrides))


def run_recluster(data: Path, out: Path, depth: int, seed: int, overrides: list[str]) -> dict:
    import pandas as pd

    from recluster.parallel.client import dask_client
    from recluster.pipeline import run

    cfg = _bench_config(data, out, depth, seed, overrides)
    with dask_client(cfg.runtime, warm=True) as client:  # as `recluster run`
        warm = client.run(_worker_warmup)
        t = time.perf_counter()
        manifest = run(cfg, client, echo=lambda m: None)
        wall = time.perf_counter() - t
        worker_peak = max(client.run(_worker_peak).values())
        client_peak = _peak_mib()  # before this process reads labels and truth to score them
    timings = {k: v for k, v in manifest["timings_s"].items() if k != "node_fits"}
    labels = pd.read_parquet(out / "labels")
    truth = pd.read_parquet(data / "truth.parquet").set_index("user_id").loc[labels["user_id"]]
    tree = json.loads((out / "tree.json").read_text())
    aucs = [n["classifier"]["auc"] for n in tree
            if (n.get("classifier") or {}).get("auc") is not None]
    rows = manifest["rows"]["in"]
    stages = _group_stages(timings)
    # The total is the run's wall time: what the stages do not cover (the report, publishing,
    # the gaps between stages) is put in the last column.
    stages["write"] = max(0.0, wall - sum(v for k, v in stages.items() if k != "write"))
    return {
        "stages": stages, "stage_detail": timings, "wall_s": wall, "depth": depth,
        "warmup_s": [max(w[0] for w in warm.values()), max(w[1] for w in warm.values())],
        "rows": rows,
        "clusters_l1": sum(1 for n in tree if n["depth"] == 1),
        "noise_share": float(labels["level_1"].fillna(-1).eq(-1).mean()),
        "ari_l1": _ari(labels["level_1"].fillna(-1).to_numpy(), truth["group"].to_numpy()),
        "ari_leaf": _ari(labels["cluster"].to_numpy(), truth["subgroup"].to_numpy()),
        "min_auc": round(min(aucs), 4) if aucs else None,
        "pass_rows_per_s_core": {k: rows / v / N_WORKERS for k, v in timings.items()
                                 if ("assign all rows" in k or k == "validate") and v > 0},
        "fit_s": {k: v for k, v in timings.items() if ": fit " in k},
        "peak_client_mib": client_peak, "peak_worker_mib": worker_peak,
    }


def _group_stages(timings: dict[str, float]) -> dict[str, float]:
    """Stage names in the manifest -> the benchmark's columns."""
    groups = {"load": ("plan", "validate"), "fit on samples": (": sample ", ": fit ", ": stability"),
              "assign all rows": ("assign all rows",), "explain": ("explain",),
              "write": ("write labels", "publish")}
    out = dict.fromkeys(groups, 0.0)
    for name, secs in timings.items():
        for g, keys in groups.items():
            if any(k in name for k in keys):
                out[g] += secs
                break
    return out


# --------------------------------------------------------------------------- full-data passes


def _pass_tree(table, n_nodes: int, seed: int):
    """A level-2 pass to time: every row in one of ``n_nodes`` first-level clusters, each a split
    node with three children fitted for real.

    The first level is k-means (``n_nodes`` centres fitted on 20,000 rows of the whole table's
    scaled features, then every row to its nearest centre). Each first-level cluster is then fitted
    like a recluster node on its own sample (at most 500 rows, the lowest hash draws): its own
    preprocessing, three children from k-means on its scaled sample (the 5% of rows farthest from
    their centre are noise), a 2-d PCA as its embedding, and the default assigner
    (:class:`~recluster.compute.assign.ClassifierAssigner`, 60 trees of depth 6) trained on that.

    Returns
    -------
    state : the level-1 state of every row (n, ...)
    fits : node path -> NodeFit, ``n_nodes`` split nodes
    """
    import pandas as pd
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.decomposition import PCA

    from recluster.compute import routing
    from recluster.compute.assign import ClassifierAssigner
    from recluster.compute.node import NodeFit, node_preprocessor, node_seed
    from recluster.compute.routing import initial_state
    from recluster.config import parse_config

    cfg = parse_config({"input": {"path": "-", "id_column": "user_id", "categorical": ["country"]},
                        "output": {"path": "-"}, "seed": seed})
    numeric = [c for c in table.columns if c not in ("user_id", "country")]
    state = initial_state(table, "user_id", None, seed, cfg.embedding.n_components)
    pre = node_preprocessor(numeric, ["country"], cfg).fit(table.sample(20_000, random_state=seed))
    X = pre.transform(table)
    top = MiniBatchKMeans(n_nodes, random_state=seed, n_init=1, batch_size=4096).fit(
        X[np.random.default_rng(seed).choice(len(X), 20_000, replace=False)])
    k = top.predict(X)
    # the level-1 state as the job holds it (routing.state_meta's compact dtypes)
    state["cluster"] = pd.Categorical.from_codes(k, [f"root.{i}" for i in range(n_nodes)])
    state["depth"] = np.ones(len(k), dtype=routing.DEPTH_DTYPE)
    state["level_1"] = pd.array(k, dtype=routing.LEVEL_DTYPE)
    fits = {}
    u = state["_u"].to_numpy()
    for i in range(n_nodes):
        rows = np.flatnonzero(k == i)
        if len(rows) < 30:
            continue
        rows = rows[np.argsort(u[rows])[:500]]
        path = f"root.{i}"
        sample = table.iloc[rows]
        node_pre = node_preprocessor(numeric, ["country"], cfg).fit(sample)
        Xs = node_pre.transform(sample)
        km = KMeans(3, n_init=1, random_state=seed).fit(Xs)
        dist = np.linalg.norm(Xs - km.cluster_centers_[km.labels_], axis=1)
        labels = np.where(dist > np.quantile(dist, 0.95), -1, km.labels_).astype(np.int64)
        emb = PCA(2, random_state=seed).fit_transform(Xs).astype(np.float32)
        assigner = ClassifierAssigner(cfg.assign.n_estimators, cfg.assign.max_depth,
                                      seed=node_seed(seed, path)).fit(
            Xs, labels, np.where(labels >= 0, 1.0, 0.0), emb)
        fits[path] = NodeFit(path=path, n_sample=len(rows), preprocessor=node_pre,
                             assigner=assigner, n_children=3)
    return state, fits


#: Assignment passes timed per tree: the median is the pass's cost. The first also pays each
#: booster's one-time set-up in this process (XGBoost's first prediction with a booster costs
#: ~0.1-0.25 ms more than the next ones; a worker pays it once per booster, not per partition),
#: and on a shared machine one pass is noisy (the 400-vs-50 ratio of single first passes spread
#: 1.37-1.62 at one commit). Both are reported.
PASS_REPEATS = 3


def run_passes(rows: int, n_features: int, node_counts: list[int], seed: int,
               partition_rows: int | None = None) -> dict:
    """Time a full-data level-2 assignment pass (:data:`PASS_REPEATS` times: the median, and
    the first) and one sample pass, in this process on one core, over ``rows`` rows in
    partitions of ``partition_rows`` (default: the job's own ``input.rows_per_partition``), for
    trees of each of ``node_counts`` split nodes: :mod:`recluster.compute.routing` against the
    pass it replaced (``jobs/routing_reference.py``, timed once), whose labels must come out
    identical. Times are the process's CPU seconds (one thread), so that other load on the
    machine does not count."""
    from recluster.config import InputConfig

    if partition_rows is None:
        partition_rows = InputConfig.model_fields["rows_per_partition"].default
    import pandas as pd
    import routing_reference

    from recluster.compute import routing
    from recluster.demo import make_table

    table, _ = make_table(rows, seed=seed, **_table_shape(n_features))
    out = {}
    for n_nodes in node_counts:
        t = time.perf_counter()
        state, fits = _pass_tree(table, n_nodes, seed)
        built = time.perf_counter() - t
        thresholds = {(p, routing.NO_STRATUM): 0.02 for p in fits}
        bounds = range(0, rows, partition_rows)
        parts = [(table.iloc[a:a + partition_rows].reset_index(drop=True),
                  state.iloc[a:a + partition_rows].reset_index(drop=True)) for a in bounds]
        res = {"split_nodes": len(fits), "build_s": built, "rows_per_node": rows / n_nodes}
        labels = {}
        for name, mod in (("new", routing), ("old", routing_reference)):
            times = []
            for _ in range(PASS_REPEATS if name == "new" else 1):
                t = time.process_time()
                labels[name] = [mod.assign_level(df, st, 2, fits) for df, st in parts]
                times.append(time.process_time() - t)
            res[f"assign_{name}_s"] = float(np.median(times))
            res[f"assign_{name}_first_s"] = times[0]
            t = time.process_time()
            for (df, _), st in zip(parts, labels[name], strict=True):
                mod.select_sample(df, st, 3, thresholds, ["user_id", *df.columns[1:4]])
            res[f"sample_{name}_s"] = time.process_time() - t
        for a, b in zip(labels["new"], labels["old"], strict=True):
            pd.testing.assert_frame_equal(routing.plain_dtypes(a), routing.plain_dtypes(b),
                                          check_exact=True)
        res["members"] = float(np.mean(pd.concat(labels["new"])["level_2"].to_numpy() >= 0))
        out[str(n_nodes)] = res
    return {"rows": rows, "partition_rows": partition_rows, "trees": out}


def print_passes(r: dict) -> None:
    rows = r["rows"]
    print(f"\nfull-data passes, one process on one core (CPU seconds): {rows:,} rows in partitions of "
          f"{r['partition_rows']:,}; level-2 pass over a tree of N first-level split nodes "
          "(same labels from both)")
    head = (f"{'split nodes':>11} {'rows/node':>9} {'assign rows/s/core':>19} {'(first)':>9}"
            f" {'(before)':>10} {'speed-up':>8} {'sample rows/s/core':>19} {'(before)':>10}"
            f" {'members':>7}")
    print(head)
    print("-" * len(head))
    for t in r["trees"].values():
        first = t.get("assign_new_first_s", t["assign_new_s"])
        print(f"{t['split_nodes']:>11} {t['rows_per_node']:>9,.0f}"
              f" {rows / t['assign_new_s']:>19,.0f} {rows / first:>9,.0f}"
              f" {rows / t['assign_old_s']:>10,.0f}"
              f" {t['assign_old_s'] / t['assign_new_s']:>7.1f}x"
              f" {rows / t['sample_new_s']:>19,.0f} {rows / t['sample_old_s']:>10,.0f}"
              f" {t['members']:>7.1%}")


def check_passes(r: dict) -> list[tuple[str, bool, str]]:
    rows, trees = r["rows"], list(r["trees"].values())
    checks = [(f"assignment pass at {t['split_nodes']} split nodes >= 50k rows/s/core",
               rows / t["assign_new_s"] >= 50_000, f"{rows / t['assign_new_s']:,.0f}")
              for t in trees]
    if len(trees) >= 2:
        few, many = trees[0], trees[-1]
        ratio = many["assign_new_s"] / few["assign_new_s"]
        first = (many.get("assign_new_first_s", many["assign_new_s"])
                 / few.get("assign_new_first_s", few["assign_new_s"]))
        checks.append((f"assignment pass at {many['split_nodes']} vs {few['split_nodes']} split "
                       f"nodes within 1.5x (median of {PASS_REPEATS} passes)", ratio <= 1.5,
                       f"{ratio:.2f}x (first passes: {first:.2f}x)"))
    return checks


# --------------------------------------------------------------------------- wide tables


def _cpu_sys() -> tuple[float, float]:
    """User + system CPU seconds of this process so far (all its threads) and, of them, the
    system seconds: the kernel's work for it (page faults of memory fresh from the operating
    system, reads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_stime


#: How the wide section sums the run's stages: passes over every row (reading, validating,
#: drawing samples, assigning), fits on samples, explanations, and writing the outputs.
WIDE_GROUPS = {"passes": ("plan", "validate", ": sample ", "assign all rows"),
               "fits": (": fit ", ": stability"), "explain": ("explain",),
               "write": ("write labels", "report", "publish")}


def _wide_group(stage: str) -> str:
    for group, keys in WIDE_GROUPS.items():
        if any(k in stage for k in keys):
            return group
    return "write"


def run_wide_child(data: Path, out: Path, depth: int, seed: int, overrides: list[str]) -> dict:
    """One ``recluster run`` at ``depth`` on a 2-worker LocalCluster (one thread each) in this
    fresh process, as `recluster run`; per stage its wall seconds and the CPU seconds of the
    client and of every worker process spent in it (sampled at each stage's start and end)."""
    from recluster.parallel.client import dask_client
    from recluster.pipeline import run
    from recluster.progress import Progress

    cfg = _bench_config(data, out, depth, seed, overrides)
    with dask_client(cfg.runtime, warm=True) as client:
        client.run(_worker_warmup)  # compilation is paid here, not in the stages

        def cpu() -> tuple[float, float]:
            """CPU and, of it, system seconds: client and workers."""
            parts = [_cpu_sys(), *client.run(_cpu_sys).values()]
            return sum(c for c, _ in parts), sum(k for _, k in parts)

        stages: dict[str, dict[str, float]] = {}

        class Clock(Progress):
            def stage_started(self, name: str) -> None:
                self.t_cpu = cpu()

            def stage_finished(self, name, seconds, status, counts, error=None) -> None:
                s = stages.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0, "sys_s": 0.0})
                now = cpu()
                s["wall_s"] += seconds
                s["cpu_s"] += now[0] - self.t_cpu[0]
                s["sys_s"] += now[1] - self.t_cpu[1]

        t, c = time.perf_counter(), cpu()[0]
        manifest = run(cfg, client, echo=Clock(lambda m: None))
        wall, total_cpu = time.perf_counter() - t, cpu()[0] - c
        worker_peak = max(client.run(_worker_peak).values())
    tree = json.loads((out / "tree.json").read_text())
    aucs = [n["classifier"]["auc"] for n in tree
            if (n.get("classifier") or {}).get("auc") is not None]
    return {"depth": depth, "rows": manifest["rows"]["in"], "stages": stages, "wall_s": wall, "cpu_s": total_cpu,
            "nodes": len(tree), "split_nodes": sum(1 for n in tree if n.get("children")),
            "min_auc": min(aucs) if aucs else None, "peak_worker_mib": worker_peak}


def run_wide(root: Path, rows: int, narrow: int, wide: int, depth: int, seed: int,
             overrides: list[str], timeout: float) -> dict[int, dict]:
    """The same generated structure at ``narrow`` and at ``wide`` numeric columns, one
    depth-``depth`` run each in a fresh process (:func:`run_wide_child`)."""
    out = {}
    for n in (narrow, wide):
        data = generate(root, rows, n, seed)
        print(f"running recluster depth {depth}, {rows:,} x {n} ...", flush=True)
        out[n] = _child(["wide", str(data), str(root / f"out-wide-{n}"), "--depth", str(depth),
                         "--seed", str(seed), *[f"--set={o}" for o in overrides]], timeout)
    return out


def print_wide(res: dict[int, dict]) -> list[tuple[str, bool, str]]:
    """Per stage group and per stage: wall and CPU seconds per 100k rows at each width, their
    ratio; returns the target line(s)."""
    (narrow, a), (wide, b) = sorted(res.items())

    def per100k(r: dict, group: str | None, key: str) -> float:
        v = sum(s.get(key, 0.0) for name, s in r["stages"].items()
                if group is None or _wide_group(name) == group)
        return v / r["rows"] * 100_000

    print(f"\nwide tables: {a['rows']:,} rows, {narrow} vs {wide} numeric columns, depth-"
          f"{a['depth']} runs on {N_WORKERS} workers x 1 thread; seconds per 100k rows"
          f" (CPU: client + workers; load now {os.getloadavg()[0]:.1f})")
    head = (f"{'stage':<34} {f'wall {narrow}':>9} {f'wall {wide}':>9} {'ratio':>6}"
            f" {f'CPU {narrow}':>9} {f'CPU {wide}':>9} {'ratio':>6}")
    print(head)
    print("-" * len(head))

    def line(label: str, wa: float, wb: float, ca: float, cb: float) -> None:
        print(f"{label:<34} {wa:>9.2f} {wb:>9.2f} {wb / max(wa, 1e-9):>5.2f}x"
              f" {ca:>9.2f} {cb:>9.2f} {cb / max(ca, 1e-9):>5.2f}x")

    def kinds(r: dict) -> dict[str, dict[str, float]]:
        """Stages by kind: the node counts in their names differ between the two trees."""
        out: dict[str, dict[str, float]] = {}
        for name, s in r["stages"].items():
            kind = re.sub(r" \d+ node\(s\).*| of \d+ node\(s\).*", "", name)
            k = out.setdefault(kind, {"wall_s": 0.0, "cpu_s": 0.0})
            k["wall_s"] += s["wall_s"] * 100_000 / r["rows"]
            k["cpu_s"] += s["cpu_s"] * 100_000 / r["rows"]
        return out

    ka, kb = kinds(a), kinds(b)
    zero = {"wall_s": 0.0, "cpu_s": 0.0}
    for kind in dict.fromkeys([*ka, *kb]):
        sa, sb = ka.get(kind, zero), kb.get(kind, zero)
        line(f"  {kind[:32]}", sa["wall_s"], sb["wall_s"], sa["cpu_s"], sb["cpu_s"])
    for group in WIDE_GROUPS:
        line(group, per100k(a, group, "wall_s"), per100k(b, group, "wall_s"),
             per100k(a, group, "cpu_s"), per100k(b, group, "cpu_s"))
        # The kernel's share of that CPU (page faults of fresh memory): the per-function timings
        # of a warm process never see it.
        print(f"{'  of which system CPU':<34} {'':>9} {'':>9} {'':>6}"
              f" {per100k(a, group, 'sys_s'):>9.2f} {per100k(b, group, 'sys_s'):>9.2f}")
    per_row = [sum(per100k(r, g, k) for g in ("passes", "explain")) for k in ("wall_s", "cpu_s")
               for r in (a, b)]
    line("per-row part (passes + explain)", *per_row)
    line("whole run", per100k(a, None, "wall_s"), per100k(b, None, "wall_s"),
         per100k(a, None, "cpu_s"), per100k(b, None, "cpu_s"))
    for r, n in ((a, narrow), (b, wide)):
        print(f"  {n} columns: {r['nodes']} nodes ({r['split_nodes']} split), min AUC "
              f"{_fmt(r['min_auc'], '.3f')}, peak worker {r['peak_worker_mib']:,.0f} MiB,"
              f" wall {r['wall_s']:.1f}s")
    whole = per100k(b, None, "cpu_s") / per100k(a, None, "cpu_s")
    part = per_row[3] / per_row[2]  # CPU, wide over narrow
    return [(f"{wide} vs {narrow} columns: per-row cost at most 2x (CPU, passes + explain)",
             part <= 2.0, f"{part:.2f}x"),
            (f"{wide} vs {narrow} columns: whole run at most 2x (CPU)", whole <= 2.0,
             f"{whole:.2f}x")]


# --------------------------------------------------------------------------- the table


def _child(args: list[str], timeout: float, env: dict[str, str] | None = None) -> dict:
    """Run one contender in a fresh interpreter; it prints one JSON line last."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, str(HERE), *args], capture_output=True, text=True,
                          timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"benchmark child {' '.join(args)} failed with exit code {proc.returncode}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t
    return res


def _fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def recipe_at(rec: dict, depth: int) -> dict:
    """The recipe's result at ``depth`` (cumulative stages, leaf ARI, smallest AUC) from one run
    of :func:`run_recipe` to that depth or deeper."""
    d = rec["by_depth"][str(depth)]
    return {**rec, "stages": d["stages"], "ari_leaf": d["ari_leaf"], "min_auc": d["min_auc"],
            "depth": depth, "segments": d["segments"]}


def print_table(results: list[tuple[str, dict]], recipes: dict[int, dict]) -> None:
    """One line per contender; ``recipes`` maps a depth to the recipe's result at that depth.
    Each line's speed-ups: the recipe at depth 1 / this, and the recipe at this line's depth /
    this (the target's comparison)."""
    cols = ["load", "fit on samples", "assign all rows", "explain", "write"]  # recluster: + report
    head = (f"{'contender':<26} {'rows':>9} {'warm-up':>13} " + " ".join(f"{c[:10]:>10}" for c in cols)
            + f" {'total s':>8} {'rows/s':>9} {'peak worker':>11} {'peak client':>11}"
            f" {'L1 k':>4} {'ARI grp':>7} {'ARI sub':>7} {'min AUC':>7} {'(a1)/(b)':>8}"
            f" {'(ad)/(b)':>8}")
    print(head)
    print("-" * len(head))
    for name, r in results:
        st = r["stages"]
        total = sum(st.values())
        if name.startswith("recipe"):
            row = {"load": st["load"] + st["preprocess"],
                   "fit on samples": st["embed (UMAP, all rows)"] + st["cluster (HDBSCAN)"],
                   "assign all rows": 0.0,
                   "explain": st["explain: XGBoost one-vs-all"] + st["explain: SHAP all rows"],
                   "write": 0.0}
        else:
            row = st
        same = recipes.get(r.get("depth", 1)) if recipes and r["rows"] == recipes[1]["rows"] \
            else None
        ratio1 = sum(recipes[1]["stages"].values()) / total if 1 in recipes else None
        ratio = sum(same["stages"].values()) / total if same else None
        print(f"{name:<26} {r['rows']:>9} {r['warmup_s'][0]:>6.1f}/{r['warmup_s'][1]:<5.1f} "
              + " ".join(f"{row[c]:>10.1f}" for c in cols)
              + f" {total:>8.1f} {r['rows'] / total:>9,.0f} {_fmt(r['peak_worker_mib'], ',.0f'):>8} MiB"
              f" {r['peak_client_mib']:>7,.0f} MiB {r['clusters_l1']:>4} {r['ari_l1']:>7.3f}"
              f" {_fmt(r['ari_leaf'], '.3f'):>7} {_fmt(r['min_auc'], '.3f'):>7}"
              f" {_fmt(ratio1, '.1f'):>7}x {_fmt(ratio, '.1f'):>7}x")
    print("  warm-up = numba compilation and first-call cost, per fresh process: first/second identical"
          " tiny fit (max over workers); not in the stage columns.\n"
          "  recipe 'fit on samples' is UMAP (seeded, like recluster's) + HDBSCAN on ALL rows, 'explain'"
          " its XGBoost + SHAP on all rows; recluster's 'fit on samples' includes stability refits,\n"
          "  its 'write' the labels, the report, publishing and the gaps between stages (total = the"
          " run's wall time).\n"
          "  ARI grp: first-level clusters (the recipe: its flat clusters) vs the generator's groups;"
          " ARI sub: final segments vs its sub-groups. L1 k: first-level clusters.\n"
          "  recipe depth d: the recipe recursed (every cluster of >= 2 x its min_cluster_size"
          " rows re-standardised, re-embedded and re-clustered on ALL its rows, each new cluster"
          " explained on all its parent's rows);\n"
          "  its depth-d times are the first d levels of one run. (a1)/(b): the recipe at depth 1"
          " / this; (ad)/(b): the recipe at this line's depth / this (the target).")


def check_targets(results: dict[str, dict]) -> list[tuple[str, bool, str]]:
    checks = []
    rec, d1 = results.get("recipe"), results.get("d1")
    if rec and d1:
        ratio = sum(rec["stages"].values()) / sum(d1["stages"].values())
        checks.append(("recluster depth 1 >= 10x faster than the recipe", ratio >= 10,
                       f"{ratio:.1f}x"))
        # The truth has two levels; a flat clustering may match either, so each side is scored
        # by its better match.
        mine, theirs = max(d1["ari_l1"], d1["ari_leaf"]), max(rec["ari_l1"], rec["ari_leaf"])
        checks.append(("ARI vs truth (better of groups / sub-groups) not lower than the recipe's",
                       mine >= theirs - 0.005, f"{mine:.3f} vs {theirs:.3f}"))
    for key, r in results.items():
        if key.startswith("recipe"):
            continue
        for stage, rps in r["pass_rows_per_s_core"].items():
            checks.append((f"{key}: '{stage}' >= 50k rows/s/core", rps >= 50_000, f"{rps:,.0f}"))
    for key, r in results.items():
        same = results.get(f"recipe_d{r.get('depth')}")
        if not key.startswith("d") or key == "d1":
            continue
        if not same:
            if rec:  # the recipe ran, but not this deep: say so instead of leaving it out
                checks.append((f"recluster depth {r['depth']} >= 10x faster than the recipe at "
                               f"depth {r['depth']}", False, "not measured: the recipe ran to "
                               f"depth {len(rec['by_depth'])} only (--recipe-depth)"))
            continue
        ratio = sum(same["stages"].values()) / sum(r["stages"].values())
        checks.append((f"recluster depth {r['depth']} >= 10x faster than the recipe at depth "
                       f"{r['depth']}", ratio >= 10, f"{ratio:.1f}x"))
        checks.append((f"depth {r['depth']}: leaf ARI vs sub-groups not lower than the recipe's "
                       "at that depth", r["ari_leaf"] >= same["ari_leaf"] - 0.005,
                       f"{r['ari_leaf']:.3f} vs {same['ari_leaf']:.3f}"))
    scale = sorted((r["rows"], k) for k, r in results.items() if k.startswith("scale"))
    if len(scale) >= 2:
        (n0, k0), (n1, k1) = scale[0], scale[-1]
        a, b = results[k0], results[k1]
        growth = sum(b["stages"].values()) / sum(a["stages"].values())
        mem = b["peak_worker_mib"] / a["peak_worker_mib"]
        checks.append((f"{n0:,} -> {n1:,} rows ({n1 / n0:.0f}x): wall grows at most 4.4x",
                       growth <= 4.4,
                       f"{growth:.2f}x"))
        checks.append((f"{n0:,} -> {n1:,} rows: peak memory per worker at most 1.3x", mem <= 1.3,
                       f"{mem:.2f}x ({a['peak_worker_mib']:,.0f} -> {b['peak_worker_mib']:,.0f} MiB)"))
        fa = sum(a["fit_s"].values())
        fb = sum(b["fit_s"].values())
        checks.append((f"{n0:,} -> {n1:,} rows: fits on samples are a fixed cost (at most 1.5x)",
                       fb <= 1.5 * fa, f"{fa:.1f}s -> {fb:.1f}s"))
    return checks


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=300_000, help="rows of the side-by-side comparison")
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--scale", default="1000000,4000000",
                    help="comma-separated row counts for recluster depth-2 scaling runs ('' to skip)")
    ap.add_argument("--depths", default="1,2", help="recluster depths at --rows")
    ap.add_argument("--skip-recipe", action="store_true")
    ap.add_argument("--recipe-depth", type=int, default=None,
                    help="depth the recipe recurses to (default: the largest of --depths); one "
                         "run gives its times at every depth up to this")
    ap.add_argument("--dir", default=str(Path.home() / ".cache" / "recluster" / "bench"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per contender")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every recluster run (as `recluster run --set`)")
    ap.add_argument("--passes", action="store_true",
                    help="only the full-data pass section (--rows rows, trees of --pass-nodes)")
    ap.add_argument("--pass-nodes", default="50,400",
                    help="split nodes of the trees the pass section times ('' to skip it)")
    ap.add_argument("--pass-partition-rows", type=int, default=None,
                    help="rows per partition in the pass section (default: the job's "
                         "input.rows_per_partition)")
    ap.add_argument("--wide", type=int, default=None, metavar="N",
                    help="only the wide-table section: --rows rows at --features and at N numeric "
                         "columns, recluster depth 2 each")
    args = ap.parse_args(argv)
    # Refused before any run: each would waste the runs and then crash or compare wrongly.
    if args.wide is not None and args.wide <= args.features:
        ap.error(f"--wide {args.wide} must be more columns than --features {args.features}")
    if args.recipe_depth is not None and args.recipe_depth < 1:
        ap.error(f"--recipe-depth must be at least 1, not {args.recipe_depth}")
    try:
        depths = [int(x) for x in args.depths.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--depths takes comma-separated whole numbers, not {args.depths!r}")
    if any(d < 1 for d in depths):
        ap.error(f"--depths must be at least 1: {args.depths!r}")
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "recluster" / "numba"))
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    if args.wide:
        for what, ok, value in print_wide(run_wide(root, args.rows, args.features, args.wide, 2,
                                                   args.seed, args.set, args.timeout)):
            print(f"  [{'PASS' if ok else 'FAIL'}] {what}: {value}")
        return
    passes = None
    if args.pass_nodes.strip():
        print(f"running full-data passes at {args.pass_nodes} split nodes ...", flush=True)
        one_core = dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                  "NUMBA_NUM_THREADS"), "1")
        passes = _child(["passes", str(args.rows), str(args.features), args.pass_nodes,
                         "--seed", str(args.seed),
                         *(["--partition-rows", str(args.pass_partition_rows)]
                           if args.pass_partition_rows else [])], args.timeout, env=one_core)
    if args.passes:
        if passes:
            print_passes(passes)
            print("\ntargets:")
            for what, ok, value in check_passes(passes):
                print(f"  [{'PASS' if ok else 'FAIL'}] {what}: {value}")
        return

    data = generate(root, args.rows, args.features, args.seed)
    recipe_depth = args.recipe_depth or max(depths, default=1)
    plan = [] if args.skip_recipe else [("recipe", f"recipe (a) depth 1, {args.rows:,}",
                                         ["recipe", data, "--depth", recipe_depth])]
    plan += [(f"d{d}", f"recluster (b) depth {d}, {args.rows:,}",
              ["recluster", data, root / f"out-d{d}", "--depth", d])
             for d in depths]
    for n in [int(s) for s in args.scale.split(",") if s.strip()]:
        d = generate(root, n, args.features, args.seed)
        plan.append((f"scale{n}", f"recluster depth 2, {n:,}", ["recluster", d, root / f"out-{n}",
                                                                 "--depth", 2]))
    results: dict[str, dict] = {}
    for key, label, child_args in plan:
        print(f"running {label if key != 'recipe' else f'the recipe (a) to depth {recipe_depth}'}"
              " ...", flush=True)
        extra = [f"--set={o}" for o in args.set] if key != "recipe" else []
        r = results[key] = _child([str(a) for a in child_args] + ["--seed", str(args.seed), *extra],
                                  args.timeout)
        print(f"  done in {r['process_s']:.0f}s (process, incl. start-up and warm-up)", flush=True)
    recipes = {}
    if "recipe" in results:  # one run to recipe_depth: its depth-d lines are prefixes of it
        recipes = {d: recipe_at(results["recipe"], d) for d in range(1, recipe_depth + 1)}
        results["recipe"] = recipes[1]
        at = [i for i, (k, _, _) in enumerate(plan) if k == "recipe"][0] + 1
        for d in range(recipe_depth, 1, -1):
            results[f"recipe_d{d}"] = recipes[d]
            plan.insert(at, (f"recipe_d{d}", f"recipe (a) depth {d}, {args.rows:,}", []))

    print(f"\n{args.features} features; {N_WORKERS} worker processes x 1 thread for recluster, "
          f"{N_WORKERS} threads for the recipe; {os.cpu_count()} cores\n")
    print_table([(label, results[key]) for key, label, _ in plan], recipes)
    print("\nrecluster stage detail (s):")
    for key, label, _ in plan:
        if not key.startswith("recipe"):
            detail = ", ".join(f"{k} {v:.1f}" for k, v in results[key]["stage_detail"].items())
            print(f"  {label}: {detail}")
    if "recipe" in results:
        rec = results["recipe"]
        for level, times in enumerate(rec["levels"], 1):
            bd = rec["by_depth"][str(level)]
            print(f"  recipe (a) level {level} ({bd['nodes_split']} node(s) split, "
                  f"{bd['segments']} segments): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
        alt = sum(rec["stages"].values()) - rec["stages"]["embed (UMAP, all rows)"] + rec["unseeded_umap_s"]
        line = (f"  recipe with unseeded UMAP (parallel on {N_WORKERS} threads, not reproducible): "
                f"UMAP {rec['unseeded_umap_s']:.1f}s, total {alt:.1f}s")
        if "d1" in results:
            line += f", (a)/(b depth 1) {alt / sum(results['d1']['stages'].values()):.1f}x"
        print(line)
    if passes:
        print_passes(passes)
    print("\ntargets:")
    for what, ok, value in check_targets(results) + (check_passes(passes) if passes else []):
        print(f"  [{'PASS' if ok else 'FAIL'}] {what}: {value}")
    (root / "results.json").write_text(json.dumps({**results, "passes": passes}, indent=1,
                                                  default=str))


def child_main(argv: list[str]) -> None:
    if argv[0] == "passes":
        ap = argparse.ArgumentParser()
        ap.add_argument("what")
        ap.add_argument("rows", type=int)
        ap.add_argument("features", type=int)
        ap.add_argument("nodes")
        ap.add_argument("--seed", type=int, default=0)
        ap.add_argument("--partition-rows", type=int, default=None)
        a = ap.parse_args(argv)
        print(json.dumps(run_passes(a.rows, a.features, [int(x) for x in a.nodes.split(",")],
                                    a.seed, a.partition_rows), default=float))
        return
    if argv[0] == "wide":
        ap = argparse.ArgumentParser()
        ap.add_argument("what")
        ap.add_argument("data")
        ap.add_argument("out")
        ap.add_argument("--depth", type=int, default=2)
        ap.add_argument("--seed", type=int, default=0)
        ap.add_argument("--set", action="append", default=[])
        a = ap.parse_args(argv)
        print(json.dumps(run_wide_child(Path(a.data), Path(a.out), a.depth, a.seed, a.set),
                         default=float))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["recipe", "recluster"])
    ap.add_argument("data")
    ap.add_argument("out", nargs="?")
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args(argv)
    if a.what == "recipe":
        res = run_recipe(Path(a.data), a.seed, a.depth)
    else:
        res = run_recluster(Path(a.data), Path(a.out), a.depth, a.seed, a.set)
    print(json.dumps(res, default=float))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("recipe", "recluster", "passes", "wide"):
        child_main(sys.argv[1:])
    else:
        main()
