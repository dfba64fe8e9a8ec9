"""Benchmark: SHAP aggregates from a per-node sample against SHAP on all rows.

Fits the root node of the generated table, trains one one-vs-rest XGBoost model per cluster on
the raw features (as the job does), computes TreeSHAP (``pred_contribs``) for every row and for a
hash-drawn sample of ``--shap-rows`` rows, and prints per cluster the relative error of the
sample's ``mean_abs_shap`` and of members' ``mean_shap`` (relative to the feature's mean |SHAP|)
on the cluster's top-5 features, and the time of both.

    .venv/bin/python jobs/benchmark_shap.py --rows 300000 --shap-rows 20000
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--sample", type=int, default=20_000, help="rows the node is fitted on")
    ap.add_argument("--shap-rows", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "recluster" / "numba"))

    import xgboost as xgb

    from recluster.compute.explain import classifier_params, raw_frame, shap_summary
    from recluster.compute.node import U_COLUMN, assign_node_rows, fit_node
    from recluster.compute.sampling import hash_uniform
    from recluster.config import ExplainConfig, parse_config
    from recluster.demo import make_table

    table, _ = make_table(args.rows, seed=args.seed)
    table[U_COLUMN] = hash_uniform(table["user_id"], args.seed)
    numeric = [c for c in table.columns if c not in ("user_id", "country", U_COLUMN)]
    cfg = parse_config({"input": {"path": "-", "id_column": "user_id", "categorical": ["country"]},
                        "output": {"path": "-"}, "sample": {"size": args.sample}})
    fit = fit_node(table[table[U_COLUMN] < args.sample / args.rows], "root", numeric, ["country"],
                   "user_id", cfg)
    labels, _, _ = assign_node_rows(fit, table)
    X = raw_frame(table, fit.preprocessor)
    d_all = xgb.DMatrix(X, enable_categorical=True)
    in_sample = table[U_COLUMN].to_numpy() < args.shap_rows / args.rows
    d_sample = xgb.DMatrix(X[in_sample], enable_categorical=True)
    ecfg = ExplainConfig()
    print(f"{args.rows} rows, {fit.n_children} clusters, SHAP sample {in_sample.sum()} rows\n")
    print(f"{'cluster':>7} {'members':>8} {'in sample':>9} {'all rows s':>10} {'sample s':>9} "
          f"{'max rel err |SHAP| top5':>24} {'max err members/|SHAP| top5':>28}")
    worst = 0.0
    for k in range(fit.n_children):
        y = (labels == k).astype(int)
        params = classifier_params(int(y.sum()), int(len(y) - y.sum()), ecfg, args.seed)
        params["nthread"] = os.cpu_count()
        booster = xgb.train(params, xgb.DMatrix(X, label=y, enable_categorical=True),
                            ecfg.n_estimators)
        t = time.perf_counter()
        full = shap_summary(booster.predict(d_all, pred_contribs=True), y == 1, list(X.columns),
                            "root", str(k))
        t_all = time.perf_counter() - t
        t = time.perf_counter()
        part = shap_summary(booster.predict(d_sample, pred_contribs=True), y[in_sample] == 1,
                            list(X.columns), "root", str(k))
        t_sample = time.perf_counter() - t
        top = full.nsmallest(5, "rank").index
        err_abs = np.max(np.abs(part.loc[top, "mean_abs_shap"] - full.loc[top, "mean_abs_shap"])
                         / full.loc[top, "mean_abs_shap"])
        # members' mean SHAP can sit near zero; its error is measured against the feature's scale
        err_mem = np.max(np.abs(part.loc[top, "mean_shap"] - full.loc[top, "mean_shap"])
                         / full.loc[top, "mean_abs_shap"])
        worst = max(worst, err_abs)
        print(f"{k:>7} {int(y.sum()):>8} {int(y[in_sample].sum()):>9} {t_all:>10.2f} "
              f"{t_sample:>9.2f} {err_abs:>24.2%} {err_mem:>28.2%}")
    print(f"\nworst relative error of mean |SHAP| on a cluster's top-5 features: {worst:.2%} "
          f"(target <= 2%)")


if __name__ == "__main__":
    main()
