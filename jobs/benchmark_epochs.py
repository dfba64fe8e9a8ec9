"""One node below the root, fitted and resampled under UMAP's old epoch step and under the
work-bounded rule (:func:`recluster.compute.embed.umap_epochs`): CPU seconds, clusters, stability.

The nodes are real ones of the benchmark's 300k x 32 generated table: a first-level group (one
of four, ~75k rows; a level-2 node's sample under the level budget: 10,000 rows) and a
second-level sub-group (~25k rows; a level-3 node's sample at the 5,000-row floor). Each is
fitted (``fit_node``), resampled ``stability.resamples`` times and settled (``settle_node``) in
this process, one thread, once with ``embedding.n_epochs`` set to what UMAP's step gave (500 at
up to 10,000 rows) and once with the default rule. CPU seconds, so other load does not count.

    .venv/bin/python jobs/benchmark_epochs.py --data ~/.cache/recluster/bench/data-300000x32-seed0
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd


def _node(table: pd.DataFrame, path: str, size: int, seed: int, cfg) -> dict:
    from sklearn.metrics import adjusted_rand_score

    from recluster.compute.embed import umap_epochs
    from recluster.compute.node import U_COLUMN, fit_node
    from recluster.compute.sampling import hash_uniform
    from recluster.compute.stability import resample_node, settle_node

    table = table.copy()
    table[U_COLUMN] = hash_uniform(table["user_id"], seed)
    sample = table.nsmallest(size, U_COLUMN)
    numeric = [c for c in table.columns if c not in ("user_id", "country", U_COLUMN, "truth")]
    old_epochs = 500 if size <= 10_000 else 200  # UMAP's own step
    out = {}
    for name, epochs in (("step", old_epochs), ("rule", None)):
        c = cfg.model_copy(update={"embedding": cfg.embedding.model_copy(
            update={"n_epochs": epochs})})
        t = time.process_time()
        fit = fit_node(sample.drop(columns="truth"), path, numeric, ["country"], "user_id", c)
        fit_s = time.process_time() - t
        t = time.process_time()
        results = [resample_node(sample.drop(columns="truth"), path, i, numeric, ["country"],
                                 "user_id", c) for i in range(c.stability.resamples)]
        settled, scores = settle_node(fit, sample.drop(columns="truth"), "user_id", results, c)
        stab_s = time.process_time() - t
        truth = sample.set_index("user_id").loc[settled.sample_ids, "truth"].to_numpy()
        out[name] = {"epochs": umap_epochs(size, c.embedding), "fit_s": round(fit_s, 1),
                     "stability_s": round(stab_s, 1), "children": settled.n_children,
                     "stop": str(settled.stop_reason) if settled.stop_reason else None,
                     "stability": [round(s, 3) for s in scores],
                     "ari_truth": round(float(adjusted_rand_score(truth, settled.sample_labels)), 4),
                     "labels": settled.sample_labels}
    out["ari_step_vs_rule"] = round(float(adjusted_rand_score(out["step"].pop("labels"),
                                                              out["rule"].pop("labels"))), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a jobs/benchmark.py data folder (input, truth)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from recluster.config import parse_config

    d = Path(args.data).expanduser()
    table = pd.read_parquet(d / "input")
    truth = pd.read_parquet(d / "truth.parquet").set_index("user_id").loc[table["user_id"]]
    cfg = parse_config({"input": {"path": "-", "id_column": "user_id", "categorical": ["country"]},
                        "output": {"path": "-"}, "seed": args.seed})
    nodes = [("root.0", "level 2 (one group)", truth["group"].to_numpy() == 0,
              truth["subgroup"].to_numpy(), 10_000),
             ("root.0.0", "level 3 (one sub-group)",
              truth["subgroup"].to_numpy() == truth["subgroup"].to_numpy()[
                  np.flatnonzero(truth["group"].to_numpy() == 0)[0]],
              truth["subgroup"].to_numpy(), 5_000)]
    print("| node | rows | sample | rule | epochs | fit CPU s | stability CPU s | children |"
          " stability | ARI vs truth | ARI step vs rule |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for path, what, mask, labels, size in nodes:
        sub = table[mask].assign(truth=labels[mask]).reset_index(drop=True)
        r = _node(sub, path, size, args.seed, cfg)
        for name in ("step", "rule"):
            v = r[name]
            print(f"| {what} | {len(sub):,} | {size:,} | {name} | {v['epochs']} | {v['fit_s']} |"
                  f" {v['stability_s']} | {v['children']}{' (' + v['stop'] + ')' if v['stop'] else ''}"
                  f" | {v['stability']} | {v['ari_truth']} | {r['ari_step_vs_rule']} |", flush=True)


if __name__ == "__main__":
    main()
