"""Per-partition compute of the level-synchronous recursion (pure pandas, no Dask).

Every row carries a *state*: its id, its hash draw ``_u``, its stratum, the path of the deepest
cluster it belongs to (``cluster``), how deep that is (``depth``), ``level_1..level_L``,
``probability`` and the first-level embedding coordinates. A level turns the state of each
partition into the next one; the Dask layer maps these functions over partitions.

Representation (also in the README):

* ``cluster`` is a path (:mod:`recluster.compute.paths`): ``root.3`` is cluster 3 of the whole
  table, ``root.3.1`` sub-cluster 1 of it. A row that is noise inside a node keeps the node's
  path; rows that are noise at the first level have ``cluster == "root"``.
* ``level_L`` is the row's cluster number among its node's children at level ``L``, ``-1`` if it
  was noise in that split, and null if its node was not split at that level (or it was noise
  higher up).
* ``depth`` is the number of levels at which the row is a member (0 for first-level noise).

The published labels are this state without its internal columns, in a fixed contract
(:func:`label_columns`, version :data:`LABELS_SCHEMA_VERSION` in the manifest): the same
columns whatever depth the tree reached.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from recluster.compute.node import U_COLUMN, NodeFit, assign_node_rows
from recluster.compute.paths import ROOT, NodePath
from recluster.compute.preprocess import categorical_strings
from recluster.compute.sampling import hash_uniform

# Version 2: paths written ``root.2.10`` (was ``2.10``, which CSV readers take for a number),
# and ``level_1 .. level_<recursion.max_depth>`` always present (were: as deep as the tree grew).
LABELS_SCHEMA_VERSION = 2
STRATUM = "_stratum"
NO_STRATUM = "__all__"


def embedding_columns(n_components: int) -> list[str]:
    return [f"umap_{i}" for i in range(n_components)]


def label_columns(id_column: str, max_depth: int, n_components: int) -> list[str]:
    """The published labels' columns, in order: the id, ``cluster`` (the row's path),
    ``level_1 .. level_<max_depth>`` (null below the row's deepest split), ``depth``,
    ``probability`` and the first-level embedding ``umap_0 ..``."""
    return [id_column, "cluster", *(f"level_{i}" for i in range(1, max_depth + 1)), "depth",
            "probability", *embedding_columns(n_components)]


def older_labels_schema(manifest: Mapping, url: str) -> str | None:
    """Why a published run's outputs cannot be read by this recluster (an older labels schema,
    whose paths :class:`~recluster.compute.paths.NodePath` does not parse), or None."""
    version = manifest.get("labels_schema_version")
    if version == LABELS_SCHEMA_VERSION:
        return None
    return (f"{url} was published with labels schema version {version or 1} (paths written like "
            f"'2.1'); this recluster reads version {LABELS_SCHEMA_VERSION} (paths like 'root.2.1')"
            ": re-run the job")


def state_meta(id_dtype, level: int, n_components: int) -> pd.DataFrame:
    """An empty state frame with the dtypes of level ``level`` (for Dask's ``meta``)."""
    cols = {"__id__": pd.Series([], dtype=id_dtype), U_COLUMN: pd.Series([], dtype="float64"),
            STRATUM: pd.Series([], dtype=object), "cluster": pd.Series([], dtype=object),
            "depth": pd.Series([], dtype="int64"), "probability": pd.Series([], dtype="float64")}
    for c in embedding_columns(n_components):
        cols[c] = pd.Series([], dtype="float32")
    for lvl in range(1, level + 1):
        cols[f"level_{lvl}"] = pd.Series([], dtype="Int64")
    return pd.DataFrame(cols)


def initial_state(df: pd.DataFrame, id_column: str, stratify_by: str | None, seed: int,
                  n_components: int) -> pd.DataFrame:
    """Level-0 state of a partition: every row in the root."""
    n = len(df)
    state = pd.DataFrame({
        "__id__": df[id_column].to_numpy(),
        U_COLUMN: hash_uniform(df[id_column], seed),
        STRATUM: (categorical_strings(df[stratify_by]) if stratify_by
                  else np.full(n, NO_STRATUM, dtype=object)),
        "cluster": np.full(n, ROOT, dtype=object),
        "depth": np.zeros(n, dtype=np.int64),
        "probability": np.zeros(n, dtype=np.float64),
    })
    for c in embedding_columns(n_components):
        state[c] = np.full(n, np.nan, dtype=np.float32)
    return state


def node_counts(state: pd.DataFrame) -> pd.DataFrame:
    """Rows per (cluster, depth, stratum) in one partition; summed over partitions by the caller."""
    if len(state) == 0:
        return pd.DataFrame({"cluster": [], "depth": [], STRATUM: [], "rows": []}).astype(
            {"cluster": object, "depth": "int64", STRATUM: object, "rows": "int64"})
    g = state.groupby(["cluster", "depth", STRATUM], sort=True).size()
    return g.rename("rows").reset_index()


def rows_with_ids(state: pd.DataFrame, ids: np.ndarray) -> pd.DataFrame:
    """The ``__id__`` and ``cluster`` of this partition's rows whose id is one of ``ids``.

    Matched by pandas on the values as they are (Dask's own ``isin`` turns a list of strings
    into a fixed-width numpy array, which drops trailing NUL characters: ``"a\\x00"`` then
    never matched).

    Parameters
    ----------
    state : state of one partition (n, ...)
    ids : ndarray (m,) canonical id values

    Returns
    -------
    DataFrame (k, 2), k <= n
    """
    return state.loc[state["__id__"].isin(ids), ["__id__", "cluster"]]


def select_sample(df: pd.DataFrame, state: pd.DataFrame, level: int,
                  thresholds: Mapping[tuple[str, str], float], columns: list[str]) -> pd.DataFrame:
    """Rows of this partition drawn into the samples of the nodes fitted at ``level``.

    ``thresholds`` maps ``(node path, stratum)`` to the keep-threshold on ``_u``; only rows whose
    deepest membership is at depth ``level - 1`` are in such a node.
    """
    frontier = state["depth"].to_numpy() == level - 1
    keys = list(zip(state["cluster"].to_numpy(), state[STRATUM].to_numpy(), strict=True))
    limit = np.array([thresholds.get(k, -1.0) for k in keys], dtype=np.float64)
    keep = frontier & (state[U_COLUMN].to_numpy() < limit)
    out = df.loc[keep, columns].reset_index(drop=True)
    out[U_COLUMN] = state.loc[keep, U_COLUMN].to_numpy()
    out["_node"] = state.loc[keep, "cluster"].to_numpy()
    return out


def assign_level(df: pd.DataFrame, state: pd.DataFrame, level: int,
                 fits: Mapping[str, NodeFit]) -> pd.DataFrame:
    """Next state: rows of every split node at ``level`` get their child (or noise).

    Parameters
    ----------
    df : features of the partition (n, ...), same rows and order as ``state``
    state : state after level ``level - 1``
    level : int, 1-based
    fits : node path -> fitted node with children (nodes without children are left out)
    """
    col = f"level_{level}"
    new = state.copy()
    new[col] = pd.array(np.full(len(state), pd.NA), dtype="Int64")
    if len(state) == 0:
        return new
    frontier = state["depth"].to_numpy() == level - 1
    paths = state["cluster"].to_numpy()
    for path, fit in fits.items():
        mask = frontier & (paths == path)
        if not mask.any():
            continue
        labels, prob, emb = assign_node_rows(fit, df.loc[mask])
        if fit.child_numbers is not None:  # published numbers (run --previous): k -> numbers[k]
            numbers = np.asarray([-1, *fit.child_numbers], dtype=np.int64)
            labels = numbers[np.asarray(labels, dtype=np.int64) + 1]
        idx = np.flatnonzero(mask)
        new.loc[idx, col] = labels
        member = labels >= 0
        child_paths = NodePath.parse(path).child_texts(labels)
        cluster = new["cluster"].to_numpy(copy=True)
        cluster[idx[member]] = child_paths[member]
        new["cluster"] = cluster
        new.loc[idx[member], "depth"] = level
        new.loc[idx[member], "probability"] = prob[member]
        if path == ROOT:
            for j, c in enumerate(embedding_columns(emb.shape[1])):
                new.loc[idx, c] = emb[:, j]
    return new
