"""Artefact splits: clusters that one discrete column carves out on its own.

UMAP puts rows that differ in a one-hot level (or a 0/1 flag, a small count) on separate islands
even when nothing else about them differs, and HDBSCAN then reports each island as a cluster. Such
a cluster is a fact about one column ("plan = pro"), not structure the zoom should explore.

A cluster is flagged when (1) every one of its sample rows shares one level of a discrete column
that takes other levels elsewhere in the node, and (2) the node's other features do not
reproduce it: a leave-one-out vote of each row's nearest neighbours in the scaled space without
that column's dimensions, cluster against the rest of the node's members, scores an ARI below
the threshold a split must reach anyway (``recursion.min_split_agreement``). A cluster that the
column marks *and* the other features separate (paying customers who also behave differently)
is real and stays a normal cluster.

Pure compute: arrays and a fitted :class:`~recluster.compute.preprocess.Preprocessor` in, one
description (or None) per cluster out.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from recluster.compute.preprocess import Preprocessor, categorical_strings

#: A numeric column with at most this many distinct whole values in a node is discrete.
DISCRETE_MAX_LEVELS = 10
#: Rows of the node's sample the neighbour vote runs on (first in hash order: a random subset).
CHECK_ROWS = 3_000
NEIGHBOURS = 10


def discrete_columns(sample: pd.DataFrame, pre: Preprocessor) -> dict[str, np.ndarray]:
    """The node's discrete columns as string arrays (n,): categoricals, and numeric columns with
    at most :data:`DISCRETE_MAX_LEVELS` whole values (missing values are a level of their own)."""
    out = {c: categorical_strings(sample[c]) for c in pre.categorical}
    for c in pre.numeric:
        x = pd.to_numeric(sample[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        present = x[~np.isnan(x)]
        if present.size and np.all(present == np.round(present)) and \
                len(np.unique(present)) <= DISCRETE_MAX_LEVELS:
            out[c] = categorical_strings(sample[c])
    return out


def _columns_of(pre: Preprocessor, column: str) -> np.ndarray:
    """Positions of ``column``'s dimensions in the preprocessor's output."""
    names = pre.feature_names_out_
    return np.array([j for j, n in enumerate(names)
                     if n == column or (column in pre.categorical and n.startswith(f"{column}="))])


class _NeighboursWithout:
    """Each row's :data:`NEIGHBOURS` nearest other rows of X (n, d) with one column's dimensions
    left out, for column after column of the same rows.

    One squared-distance matrix (n, n) over all dimensions is computed once; a column's share of
    it (its few dimensions) is subtracted per column. A neighbour query per column on the rest of
    the dimensions cost n * n * d each: on a node of 3,000 rows and 300 five-level categoricals
    whose levels the other columns reproduce (so every column is asked), 524 s for the level
    check before, 88 s this way on a loaded machine (1.7 s against 0.5 s a column at 1,500
    dimensions). A row is never its own neighbour, also when other rows are its exact copies.
    """

    def __init__(self, X: np.ndarray):
        self.X = np.asarray(X, dtype=np.float64)
        self.k = int(min(NEIGHBOURS, len(self.X) - 1))
        self.d2 = _squared_distances(self.X)

    def of(self, drop: np.ndarray) -> np.ndarray:
        """Neighbour positions (n, k) in X without the dimensions ``drop``."""
        part = self.X[:, drop]
        # d2 - (sq_i + sq_j - 2 <x_i, x_j>) over the dropped dimensions, in place: four passes
        # over (n, n) and no (n, n) temporaries.
        d2 = part @ part.T
        d2 *= 2.0
        d2 += self.d2
        sq = np.einsum("ij,ij->i", part, part)
        d2 -= sq[:, None]
        d2 -= sq[None, :]
        np.fill_diagonal(d2, np.inf)
        return np.argpartition(d2, self.k - 1, axis=1)[:, :self.k]


def _squared_distances(X: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (n, n) between the rows of X (n, d), never below 0."""
    sq = np.einsum("ij,ij->i", X, X)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (X @ X.T)
    return np.maximum(d2, 0.0, out=d2)


def _vote(neigh: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Majority label (n,) among each row's neighbours (positions (n, k) into ``labels``)."""
    votes = labels[neigh]
    shift = votes - labels.min()
    counts = np.zeros((len(neigh), int(shift.max()) + 1), dtype=np.int32)
    np.add.at(counts, (np.repeat(np.arange(len(neigh)), neigh.shape[1]), shift.ravel()), 1)
    return counts.argmax(axis=1) + labels.min()


def find_artefacts(sample: pd.DataFrame, X: np.ndarray, labels: np.ndarray, n_clusters: int,
                   pre: Preprocessor, min_agreement: float) -> list[str | None]:
    """One entry per cluster: ``"splits on <column> = <level> only"`` for an artefact, else None.

    Parameters
    ----------
    sample : DataFrame (n, ...), the node's sample in the order of X and labels
    X : ndarray (n, d), the sample as the preprocessor scaled it
    labels : ndarray (n,), the node's clusters (``-1`` noise)
    n_clusters : int
    pre : the node's fitted preprocessor (its output columns are X's)
    min_agreement : float, the ARI the other features must reach for the cluster to be real
    """
    out: list[str | None] = [None] * n_clusters
    member = np.flatnonzero(labels >= 0)[:CHECK_ROWS]
    if n_clusters < 2 or len(member) <= NEIGHBOURS + 1:
        return out
    lab = labels[member]
    votes: dict[str, np.ndarray] = {}
    neighbours = None
    for column, values in discrete_columns(sample, pre).items():
        vals = values[member]
        drop = _columns_of(pre, column)
        for c in range(n_clusters):
            if out[c] is not None:
                continue
            levels = np.unique(vals[lab == c])
            if len(levels) != 1 or np.all(vals == levels[0]):
                continue
            if column not in votes:
                rest = np.delete(X[member], drop, axis=1)
                if rest.shape[1] == 0 or not np.ptp(rest, axis=0).any():
                    votes[column] = np.full(len(member), -2)  # nothing else to tell rows apart
                else:
                    neighbours = neighbours or _NeighboursWithout(X[member])
                    votes[column] = _vote(neighbours.of(drop), lab)
            score = adjusted_rand_score(lab == c, votes[column] == c)
            if score < min_agreement:
                out[c] = describe_artefact(column, levels[0])
    return out


def unreproduced_level(sample: pd.DataFrame, X: np.ndarray, pre: Preprocessor, min_rows: int,
                       min_agreement: float) -> dict | None:
    """The first categorical level that would be an artefact split if it became a cluster.

    A level of at least ``min_rows`` rows (with at least as many rows outside it: it could be a
    cluster of the node) is *reproduced* when a leave-one-out vote of each row's
    :data:`NEIGHBOURS` nearest neighbours in the scaled space without the column's dimensions
    tells its rows from the rest at ARI ``min_agreement`` or more. Weighting the one-hot levels
    heavily (``categorical_scale: standard``) walls every level off in the embedding; that is
    harmless where the other features agree with the levels (flavia's leaf descriptors), and
    makes artefact clusters where they do not (penguins' islands, the demo's countries). The same
    test as :func:`find_artefacts`, made before the embedding, on levels instead of clusters.

    Parameters
    ----------
    sample : DataFrame (n, ...), the node's sample in the order of X
    X : ndarray (n, d), the sample as ``pre`` scaled it
    pre : a fitted preprocessor (its output columns are X's)
    min_rows : int, the smallest level (and complement) that could be a cluster, in rows of X
        (the check runs on the first :data:`CHECK_ROWS` rows, with the same share)
    min_agreement : float, the ARI the other features must reach

    Returns
    -------
    None when every such level is reproduced, else ``{"column", "level", "rows", "ari"}`` of the
    first one that is not (columns in the preprocessor's order, levels by name).
    """
    rows = np.arange(min(len(X), CHECK_ROWS))  # hash order: a random subset
    n = len(rows)
    k = int(min(NEIGHBOURS, n - 1))
    min_rows = min_rows * n / max(1, len(X))  # the same share of the rows checked
    neighbours = None
    for column in pre.categorical:
        vals = categorical_strings(sample[column].iloc[rows])
        levels, counts = np.unique(vals, return_counts=True)
        big = [lvl for lvl, c in zip(levels, counts, strict=True)
               if c >= min_rows and n - c >= min_rows]
        if not big or k < 1:
            continue
        drop = _columns_of(pre, column)
        rest = np.delete(X[rows], drop, axis=1)
        if rest.shape[1] == 0 or not np.ptp(rest, axis=0).any():
            return {"column": column, "level": str(big[0]), "rows": int(np.sum(vals == big[0])),
                    "ari": 0.0}
        neighbours = neighbours or _NeighboursWithout(X[rows])
        neigh = vals[neighbours.of(drop)]
        for lvl in big:
            member = vals == lvl
            vote = np.sum(neigh == lvl, axis=1) * 2 > k  # majority of the neighbours
            score = float(adjusted_rand_score(member, vote))
            if score < min_agreement:
                return {"column": column, "level": str(lvl), "rows": int(member.sum()),
                        "ari": round(score, 4)}
    return None


def describe_artefact(column: str, level: str) -> str:
    """The words for a cluster that ``column = level`` makes on its own."""
    return f"splits on {column} = {level} only"


def rename_artefact(text: str | None, name: Callable[[str], str]) -> str | None:
    """An artefact description found under internal column keys, with the column's own name.

    Parameters
    ----------
    text : ``"splits on <key> = <level> only"`` (or None), ``<key>`` an internal key (no spaces)
    name : callable, internal key -> the column's original name
    """
    if text is None:
        return None
    key, level = text.removeprefix("splits on ").removesuffix(" only").split(" = ", 1)
    return describe_artefact(name(key), level)
