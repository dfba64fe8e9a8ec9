"""Benchmark: the explanation stage alone (``explain_nodes``), without fitting a tree first.

The generated table's true groups and sub-groups stand in for a fitted two-level tree (the
root split into ``n_groups`` groups, each group into its sub-groups), each node with a
preprocessor fitted on its rows; the stage runs on a fresh LocalCluster, ``--reps`` times, and
prints its wall time and how long each worker computed (from Dask's task stream), per kind of
task. To compare with another version of the code, run the same command with that version's
``src`` first on ``PYTHONPATH``.

    nice -n 10 .venv/bin/python jobs/benchmark_explain.py --rows 300000 --reps 2
"""

from __future__ import annotations

import argparse
import inspect
import time

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
from dask.utils import key_split
from distributed import Client, LocalCluster, get_task_stream

from recluster.compute.node import U_COLUMN, NodeFit
from recluster.compute.preprocess import Preprocessor
from recluster.compute.schema import TableSchema
from recluster.config import ExplainConfig
from recluster.demo import make_table
from recluster.parallel.explain import explain_nodes


def true_tree(n_rows: int, seed: int, n_features: int | None = None):
    """The generator's table (keyed columns), a labels state and the nodes explain_nodes takes;
    ``n_features`` numeric-and-categorical columns shaped as jobs/benchmark.py's (default: the
    generator's own 15)."""
    n_sub = 3
    shape = {} if n_features is None else {"n_informative": max(4, n_features // 3),
                                             "n_noise": n_features - max(4, n_features // 3) - 3}
    table, truth = make_table(n_rows, n_sub=n_sub, seed=seed, **shape)
    numeric = tuple(c for c in table.columns if c not in ("user_id", "country"))
    ts = TableSchema("user_id", numeric, ("country",), None, pa.int64(),
                     tuple((c, pa.float64()) for c in numeric)
                     + (("country", pa.string()), ("user_id", pa.int64())))
    # (a copy: one block per dtype, as a read piece is; the generator's frame is a block a column)
    feats = table[list(ts.columns)].rename(columns=ts.keys).copy()
    group = truth["group"].to_numpy()
    sub = truth["subgroup"].to_numpy() - group * n_sub
    state = pd.DataFrame({"cluster": [f"root.{g}.{s}" for g, s in zip(group, sub, strict=True)],
                          "depth": 2, "level_1": pd.array(group, dtype="Int64"),
                          "level_2": pd.array(sub, dtype="Int64"),
                          U_COLUMN: np.random.default_rng(seed).random(n_rows)})

    def node(path: str, members: np.ndarray, children: list[str]):
        pre = Preprocessor(ts.numeric_keys, ts.categorical_keys).fit(feats[members])
        size = int(members.sum())
        return path.count("."), size, NodeFit(path, size, preprocessor=pre), children

    groups = sorted(set(group.tolist()))
    nodes = {"root": node("root", np.ones(n_rows, bool), [f"root.{g}" for g in groups])}
    for g in groups:
        subs = sorted(set(sub[group == g].tolist()))
        nodes[f"root.{g}"] = node(f"root.{g}", group == g, [f"root.{g}.{s}" for s in subs])
    return ts, feats, state, nodes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--features", type=int, default=None,
                    help="columns as jobs/benchmark.py --features (default: the generator's 15)")
    args = ap.parse_args()
    ts, feats, state, nodes = true_tree(args.rows, args.seed, args.features)
    # Versions before the fan-out take no run id.
    kw = {"run_id": "bench"} if "run_id" in inspect.signature(explain_nodes).parameters else {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        try:  # as a job's client does (versions before it had none)
            from recluster.parallel.frame_sizes import FrameSizes
            client.register_plugin(FrameSizes())
        except ImportError:
            pass
        fd = dd.from_pandas(feats, npartitions=args.partitions)
        sd = dd.from_pandas(state, npartitions=args.partitions)
        for rep in range(args.reps):
            t0 = time.perf_counter()
            with get_task_stream(client) as stream:
                explain_nodes(client, fd, sd, nodes, ts, ExplainConfig(), args.seed,
                              lambda line: None, **kw)
            wall = time.perf_counter() - t0
            per_worker: dict[str, float] = {}
            per_kind: dict[str, float] = {}
            for rec in stream.data:
                for ss in rec["startstops"]:
                    if ss["action"] == "compute":
                        s = ss["stop"] - ss["start"]
                        per_worker[rec["worker"]] = per_worker.get(rec["worker"], 0.0) + s
                        kind = key_split(rec["key"])
                        per_kind[kind] = per_kind.get(kind, 0.0) + s
            top = sorted(per_kind.items(), key=lambda kv: -kv[1])[:6]
            print(f"{args.rows} rows, {len(nodes)} nodes, rep {rep}: explain {wall:.1f} s; "
                  f"worker compute s {[round(v, 1) for v in per_worker.values()]}; "
                  + ", ".join(f"{k} {v:.1f}" for k, v in top), flush=True)


if __name__ == "__main__":
    main()
