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

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from recluster.compute.node import U_COLUMN, NodeFit, assign_node_rows
from recluster.compute.paths import ROOT, NodePath
from recluster.compute.preprocess import Columns, categorical_strings
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


#: The state's compact dtypes (issue 18, memory: the state of every row is held on the workers
#: between levels): paths and strata as categoricals (a code per row, each text once), the depth
#: in one byte, level numbers in four. :func:`recluster.parallel.passes.labels_table` publishes
#: them as before (strings, int64, Int64).
DEPTH_DTYPE = "int8"
LEVEL_DTYPE = "Int32"


def state_meta(id_dtype, level: int, n_components: int) -> pd.DataFrame:
    """An empty state frame with the dtypes of level ``level`` (for Dask's ``meta``)."""
    cols = {"__id__": pd.Series([], dtype=id_dtype), U_COLUMN: pd.Series([], dtype="float64"),
            STRATUM: pd.Series(pd.Categorical([])), "cluster": pd.Series(pd.Categorical([])),
            "depth": pd.Series([], dtype=DEPTH_DTYPE),
            "probability": pd.Series([], dtype="float64")}
    for c in embedding_columns(n_components):
        cols[c] = pd.Series([], dtype="float32")
    for lvl in range(1, level + 1):
        cols[f"level_{lvl}"] = pd.Series([], dtype=LEVEL_DTYPE)
    return pd.DataFrame(cols)


def plain_dtypes(state: pd.DataFrame) -> pd.DataFrame:
    """``state`` (a copy) with the labels contract's dtypes instead of the compact ones
    (:func:`state_meta`): paths and strata as strings, ``depth`` int64, ``level_<n>`` Int64."""
    out = state.copy(deep=False)
    for c in ("cluster", STRATUM):
        # "str" by name, not inferred from the values: an empty partition's object column
        # would be written as Arrow type null, and its labels file would then not read
        # together with the others (pandas.read_parquet of labels/ failed)
        if c in out:
            out[c] = out[c].astype("str")
    if "depth" in out:
        out["depth"] = out["depth"].astype("int64")
    for c in out.columns:
        if c.startswith("level_") and c[6:].isdigit():
            out[c] = out[c].astype("Int64")
    return out


def one_value(value: str, n: int) -> pd.Categorical:
    """``n`` rows of one text, as a categorical (one code per row)."""
    return pd.Categorical.from_codes(np.zeros(n, dtype=np.int8), [value])


def codes_of(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A state column (categorical, or object after an older step) as codes and its distinct
    texts: ``uniques[codes[i]]`` is row ``i``'s value.

    Returns
    -------
    codes : ndarray (n,) of int
    uniques : ndarray (g,) of object
    """
    if isinstance(values.dtype, pd.CategoricalDtype):
        return values.cat.codes.to_numpy(), np.asarray(values.cat.categories, dtype=object)
    codes, uniques = pd.factorize(values.to_numpy(), use_na_sentinel=False)
    return codes, np.asarray(uniques, dtype=object)


def initial_state(df: pd.DataFrame, id_column: str, stratify_by: str | None, seed: int,
                  n_components: int) -> pd.DataFrame:
    """Level-0 state of a partition: every row in the root."""
    n = len(df)
    state = pd.DataFrame({
        "__id__": df[id_column].to_numpy(),
        U_COLUMN: hash_uniform(df[id_column], seed),
        STRATUM: (pd.Categorical(categorical_strings(df[stratify_by])) if stratify_by
                  else one_value(NO_STRATUM, n)),
        "cluster": one_value(ROOT, n),
        "depth": np.zeros(n, dtype=DEPTH_DTYPE),
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
    g = state.groupby(["cluster", "depth", STRATUM], sort=True, observed=True).size()
    out = g.rename("rows").reset_index()
    return out.astype({"cluster": object, "depth": "int64", STRATUM: object})


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


def _frontier_blocks(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows grouped by key, once: the distinct keys, and for key ``j`` the positions
    ``order[bounds[j]:bounds[j + 1]]`` (ascending) of its rows in ``keys``.

    Parameters
    ----------
    keys : ndarray (m,) of hashable values (paths, or codes)

    Returns
    -------
    uniques : ndarray (g,)
    order : ndarray (m,) of intp, positions sorted by key, stable within a key
    bounds : ndarray (g + 1,) of intp
    """
    codes, uniques = pd.factorize(keys, use_na_sentinel=False)
    order = np.argsort(codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(uniques)))])
    return np.asarray(uniques, dtype=object), order, bounds


def select_sample(df: pd.DataFrame, state: pd.DataFrame, level: int,
                  thresholds: Mapping[tuple[str, str], float], columns: list[str]) -> pd.DataFrame:
    """Rows of this partition drawn into the samples of the nodes fitted at ``level``.

    ``thresholds`` maps ``(node path, stratum)`` to the keep-threshold on ``_u``; only rows whose
    deepest membership is at depth ``level - 1`` are in such a node. The threshold is looked up
    once per distinct (path, stratum) of the partition's frontier, not once per row.

    Parameters
    ----------
    df : features of the partition (n, ...), same rows and order as ``state``
    state : state after level ``level - 1`` (n, ...)
    level : int, 1-based
    thresholds : (node path, stratum) -> keep-threshold in [0, 1]
    columns : columns of ``df`` to keep

    Returns
    -------
    DataFrame (k, len(columns) + 2), k <= n: ``columns``, ``_u`` and ``_node`` (the node's path)
    """
    front = np.flatnonzero(state["depth"].to_numpy() == level - 1)
    limit = np.full(len(front), -1.0)
    path_codes, paths = codes_of(state["cluster"])
    if len(front):
        strat_codes, strata = codes_of(state[STRATUM])
        pair = path_codes[front].astype(np.int64) * len(strata) + strat_codes[front]
        # Sized by the pairs the frontier holds, not by paths x strata: the categories span the
        # whole partition, and a stratum of many values (thousands of zip codes) times a deep
        # tree's paths made a table of hundreds of MB for a frontier of a few rows.
        present, which = np.unique(pair, return_inverse=True)
        table = np.array([thresholds.get((paths[p // len(strata)], strata[p % len(strata)]), -1.0)
                          for p in present], dtype=np.float64)
        limit = table[which]
    u = state[U_COLUMN].to_numpy()
    rows = front[u[front] < limit]
    out = df.iloc[rows][columns].reset_index(drop=True)
    out[U_COLUMN] = u[rows]
    out["_node"] = paths[path_codes[rows]]
    return out


def thin_sample(drawn: pd.DataFrame, thresholds: Mapping[str, float]) -> pd.DataFrame:
    """The rows of a sample drawn ahead (:func:`select_sample` of one partition, at upper
    bounds of the thresholds) that the exact keep-thresholds keep: per node path, the rows
    with ``_u`` below its threshold, in their order (a node not in ``thresholds`` keeps none).
    Equal to :func:`select_sample` at ``thresholds`` when each bound is at least its threshold.
    """
    limit = drawn["_node"].map(thresholds).to_numpy(dtype=np.float64, na_value=-1.0)
    return drawn[drawn[U_COLUMN].to_numpy() < limit].reset_index(drop=True)


def _node_columns(df: pd.DataFrame, fits: Sequence[NodeFit]) -> Columns:
    """The features the ``fits`` read, out of the partition's frame once (see :class:`Columns`)."""
    numeric = [c for f in fits if f.preprocessor is not None for c in f.preprocessor.numeric]
    categorical = [c for f in fits if f.preprocessor is not None
                   for c in f.preprocessor.categorical]
    return Columns.of(df, numeric, categorical)


def assign_level(df: pd.DataFrame, state: pd.DataFrame, level: int,
                 fits: Mapping[str, NodeFit]) -> pd.DataFrame:
    """Next state: rows of every split node at ``level`` get their child (or noise).

    Route, then evaluate: the frontier rows (depth ``level - 1``) are grouped by their path once,
    each node's assigner runs on its own block of rows only, and every output column is written
    once at the end, so a pass costs rows (plus one model evaluation per row), not rows × nodes.

    Parameters
    ----------
    df : features of the partition (n, ...), same rows and order as ``state``
    state : state after level ``level - 1`` (n, ...)
    level : int, 1-based
    fits : node path -> fitted node with children (nodes without children are left out)

    Returns
    -------
    DataFrame (n, ...): ``state`` with ``cluster``, ``depth``, ``probability`` and (level 1) the
    embedding updated, plus ``level_<level>`` (:data:`LEVEL_DTYPE`, null outside the split
    nodes); unchanged columns are shared with ``state``
    """
    n = len(state)
    # A shallow copy: the columns this level leaves alone (id, draw, stratum, and below the root
    # the map) are shared with the previous level's state, not held twice while both are kept.
    new = state.copy(deep=False)
    values = np.zeros(n, dtype=np.int32)
    written = np.zeros(n, dtype=bool)
    front = np.flatnonzero(state["depth"].to_numpy() == level - 1)
    if len(front) and fits:
        codes, texts = codes_of(state["cluster"])
        codes = codes.astype(np.int32)
        categories = list(texts)
        depth = state["depth"].to_numpy(copy=True)
        probability = state["probability"].to_numpy(dtype=np.float64, copy=True)
        embedding: dict[str, np.ndarray] = {}
        blocks, order, bounds = _frontier_blocks(codes[front])
        paths = [categories[c] for c in blocks]
        columns = _node_columns(df, [fits[p] for p in paths if p in fits])
        for j, path in enumerate(paths):
            fit = fits.get(path)
            if fit is None:
                continue
            idx = front[order[bounds[j]:bounds[j + 1]]]
            # only the first level's map is kept: deeper nodes skip their coordinates
            labels, prob, emb = assign_node_rows(fit, columns.take(idx))
            labels = np.asarray(labels, dtype=np.int64)
            if fit.child_numbers is not None:  # published numbers (run --previous): k -> numbers[k]
                numbers = np.asarray([-1, *fit.child_numbers], dtype=np.int64)
                labels = numbers[labels + 1]
            values[idx] = labels
            written[idx] = True
            member = labels >= 0
            kept = idx[member]
            # each child present here is one new category: one unique and one write per node
            # (a sort of the node's rows, not a count per number: published numbers, run
            # --previous, may be far apart)
            present, which = np.unique(labels[member], return_inverse=True)
            codes[kept] = len(categories) + which.astype(np.int32)
            node = NodePath.parse(path)
            categories.extend(str(node.child(int(k))) for k in present)
            depth[kept] = level
            probability[kept] = prob[member]
            if path == ROOT:
                for k, c in enumerate(embedding_columns(emb.shape[1])):
                    embedding.setdefault(c, new[c].to_numpy(copy=True))[idx] = emb[:, k]
        new["cluster"] = _compact_paths(codes, categories)
        new["depth"] = depth
        new["probability"] = probability
        for c, v in embedding.items():
            new[c] = v
    new[f"level_{level}"] = pd.arrays.IntegerArray(values, ~written)
    return new


def _compact_paths(codes: np.ndarray, categories: list[str]) -> pd.Categorical:
    """Paths as a categorical of only the texts some row holds (a level's parents drop out)."""
    used = np.unique(codes)
    remap = np.zeros(len(categories), dtype=np.int32)
    remap[used] = np.arange(len(used), dtype=np.int32)
    return pd.Categorical.from_codes(remap[codes], [categories[c] for c in used])
