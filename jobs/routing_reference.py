"""The assignment and sample passes as they were before route-then-evaluate (issue 18): every
split node masks every frontier row and rewrites the ``cluster`` column, and the sample pass
looks a threshold up per row. Kept outside ``src`` as the reference that
``tests/test_routing.py`` compares :mod:`recluster.compute.routing` with (bit for bit) and that
``jobs/benchmark.py --passes`` times it against."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recluster.compute.node import U_COLUMN, assign_node_rows
from recluster.compute.paths import NodePath
from recluster.compute.routing import STRATUM


def assign_level(df: pd.DataFrame, state: pd.DataFrame, level: int, fits: dict) -> pd.DataFrame:
    """The straightforward pass (mask every frontier row against every node, write as it goes):
    what :func:`recluster.compute.routing.assign_level` must reproduce bit for bit."""
    col = f"level_{level}"
    new = state.copy()
    new[col] = pd.array(np.full(len(state), pd.NA), dtype="Int64")
    frontier = state["depth"].to_numpy() == level - 1
    paths = state["cluster"].to_numpy()
    for path, fit in fits.items():
        mask = frontier & (paths == path)
        if not mask.any():
            continue
        # only the root's assigner places rows on the map (a zoom's classifier has no
        # embedding regressor to evaluate)
        labels, prob, emb = assign_node_rows(fit, df.loc[mask])
        if fit.child_numbers is not None:
            labels = np.asarray([-1, *fit.child_numbers], dtype=np.int64)[labels + 1]
        idx = np.flatnonzero(mask)
        new.loc[idx, col] = labels
        member = labels >= 0
        cluster = new["cluster"].to_numpy(copy=True)
        cluster[idx[member]] = NodePath.parse(path).child_texts(labels)[member]
        new["cluster"] = cluster
        new.loc[idx[member], "depth"] = level
        new.loc[idx[member], "probability"] = prob[member]
        if path == "root":
            for j in range(emb.shape[1]):
                new.loc[idx, f"umap_{j}"] = emb[:, j]
    return new


def select_sample(df: pd.DataFrame, state: pd.DataFrame, level: int, thresholds: dict,
                  columns: list[str]) -> pd.DataFrame:
    """The sample pass: one dict look-up per row."""
    frontier = state["depth"].to_numpy() == level - 1
    keys = zip(state["cluster"].to_numpy(), state[STRATUM].to_numpy(), strict=True)
    limit = np.array([thresholds.get(k, -1.0) for k in keys], dtype=np.float64)
    keep = frontier & (state[U_COLUMN].to_numpy() < limit)
    out = df.loc[keep, columns].reset_index(drop=True)
    out[U_COLUMN] = state.loc[keep, U_COLUMN].to_numpy()
    out["_node"] = state.loc[keep, "cluster"].to_numpy()
    return out
