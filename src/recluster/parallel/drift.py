"""The Dask layer of drift in ``recluster score``: one pass over the scored rows and their final
labels that counts, per node with a training reference, the rows outside its support and the
rows per feature bin (:mod:`recluster.compute.drift`). Only those counts reach the client."""

from __future__ import annotations

import json
from collections.abc import Mapping

import dask.dataframe as dd
import pandas as pd

from recluster.compute import drift
from recluster.compute.explain import in_node
from recluster.compute.node import NodeFit
from recluster.compute.reduce import project


def _counts(df: pd.DataFrame, state: pd.DataFrame,
            nodes: Mapping[str, tuple[int, NodeFit]]) -> pd.DataFrame:
    cluster, depth = state["cluster"], state["depth"].to_numpy()
    out = []
    for path, (node_depth, fit) in nodes.items():
        mask = in_node(cluster, depth, path, node_depth)
        if not mask.any():
            continue
        rows = df.loc[mask]
        Z = project(fit.projection, fit.preprocessor.transform(rows))
        out.append((path, json.dumps(drift.node_counts(fit.reference, rows, Z))))
    return pd.DataFrame(out, columns=["node", "counts"]).astype(object)


def counts_frame(feats: dd.DataFrame, state: dd.DataFrame, nodes) -> dd.DataFrame:
    """Per partition and node: a JSON row of :func:`recluster.compute.drift.node_counts`.
    ``nodes``: path -> (depth, routing NodeFit with a reference), or a future of it."""
    meta = pd.DataFrame({"node": pd.Series([], dtype=object), "counts": pd.Series([], dtype=object)})
    return dd.map_partitions(_counts, feats, state, nodes, meta=meta, align_dataframes=False)


def total_counts(parts: pd.DataFrame) -> dict[str, dict]:
    """Sum the partitions' counts by node."""
    out: dict[str, dict] = {}
    for node, raw in parts[["node", "counts"]].itertuples(index=False):
        out[node] = drift.add_counts(out.get(node), json.loads(raw))
    return out
