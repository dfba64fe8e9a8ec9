"""Benchmark: how every row gets its cluster — classifier, kNN on the labelled sample, umap.transform.

Fits the root node of the generated table on a hash-drawn sample twice (once per method), then
assigns rows with each method in this one process (one core) and prints a table side by side:
fit time, assignment rows/s, held-out agreement with the fitted labels (ARI) and agreement of
the two methods with each other and with the generator's truth.

    .venv/bin/python jobs/benchmark_assign.py --rows 1000000 --sample 50000
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--sample", type=int, default=50_000)
    ap.add_argument("--umap-rows", type=int, default=100_000,
                    help="rows assigned with umap.transform (it is slow); rows/s is reported")
    ap.add_argument("--batch", type=int, default=250_000, help="rows per assignment call (a partition)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "recluster" / "numba"))

    from recluster.compute.node import U_COLUMN, fit_node
    from recluster.compute.sampling import hash_uniform
    from recluster.config import parse_config
    from recluster.demo import make_table

    t = time.perf_counter()
    table, truth = make_table(args.rows, seed=args.seed)
    table[U_COLUMN] = hash_uniform(table["user_id"], args.seed)
    print(f"generated {args.rows} rows in {time.perf_counter() - t:.1f}s")
    sample = table[table[U_COLUMN] < args.sample / args.rows]
    numeric = [c for c in table.columns if c not in ("user_id", "country", U_COLUMN)]

    rows = []
    preds = {}
    for method in ("classifier", "knn", "umap"):
        cfg = parse_config({"input": {"path": "-", "id_column": "user_id", "categorical": ["country"]},
                            "output": {"path": "-"}, "assign": {"method": method},
                            "sample": {"size": args.sample}, "seed": args.seed})
        t = time.perf_counter()
        fit = fit_node(sample, "root", numeric, ["country"], "user_id", cfg)
        fit_s = time.perf_counter() - t
        n = args.rows if method != "umap" else min(args.rows, args.umap_rows)
        labels = np.empty(n, dtype=np.int64)
        t = time.perf_counter()
        for start in range(0, n, args.batch):
            part = table.iloc[start:start + args.batch][: n - start]
            labels[start:start + len(part)] = fit.assigner.predict(fit.preprocessor.transform(part))[0]
        assign_s = time.perf_counter() - t
        preds[method] = labels
        truth_ari = adjusted_rand_score(truth["group"].to_numpy()[:n], labels)
        rows.append((method, fit.n_sample, fit.n_children, fit_s, n, assign_s, n / assign_s,
                     fit.agreement, truth_ari))

    m = min(len(p) for p in preds.values())
    print()
    print(f"{'method':<7} {'sample':>7} {'k':>3} {'fit s':>7} {'rows':>9} {'assign s':>9} "
          f"{'rows/s/core':>12} {'holdout ARI':>12} {'ARI truth':>10}")
    for r in rows:
        print(f"{r[0]:<7} {r[1]:>7} {r[2]:>3} {r[3]:>7.1f} {r[4]:>9} {r[5]:>9.1f} {r[6]:>12,.0f} "
              f"{r[7]:>12.4f} {r[8]:>10.4f}")
    print(f"\nagreement between methods on the first {m} rows (each fits its own UMAP):")
    names = list(preds)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            print(f"  {a} vs {b}: ARI {adjusted_rand_score(preds[a][:m], preds[b][:m]):.4f}")
    print("speed-up per core over umap.transform: "
          + ", ".join(f"{r[0]} {r[6] / rows[-1][6]:.1f}x" for r in rows[:-1]))


if __name__ == "__main__":
    main()
