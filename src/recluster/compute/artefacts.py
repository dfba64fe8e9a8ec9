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

from recluster.compute.preprocess import MISSING, Preprocessor, categorical_strings

#: A numeric column with at most this many distinct whole values in a node is discrete.
DISCRETE_MAX_LEVELS = 10
#: Rows of the node's sample the neighbour vote runs on (first in hash order: a random subset).
CHECK_ROWS = 3_000
#: Rows the vote on two-valued columns runs on: each column costs a pass over an (n, n) matrix,
#: and tables carry such columns by the hundred (dummies): 0.065 CPU s a column at 3,000 rows,
#: a ninth of that at 1,000, where a two-way split is still judged on hundreds of rows a side.
BINARY_CHECK_ROWS = 1_000
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


def _others_vary(spread: np.ndarray, drop: np.ndarray) -> bool:
    """Whether any dimension but ``drop`` varies, given each dimension's ``spread`` (d,) bool
    (range above 0 over the rows checked): computed once per node, not per column (copying
    the rows without each column's dimensions cost a third of a wide node's artefact check)."""
    return bool(np.delete(spread, drop).any())


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
    Xm = X[member]
    spread = np.ptp(Xm, axis=0) > 0
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
                if not _others_vary(spread, drop):
                    votes[column] = np.full(len(member), -2)  # nothing else to tell rows apart
                else:
                    neighbours = neighbours or _NeighboursWithout(Xm)
                    votes[column] = _vote(neighbours.of(drop), lab)
            score = adjusted_rand_score(lab == c, votes[column] == c)
            if score < min_agreement:
                out[c] = describe_artefact(column, levels[0])
    return out


class LevelCheck:
    """Whether the other features reproduce the rows of one level of a discrete column: a
    leave-one-out vote of each row's :data:`NEIGHBOURS` nearest neighbours in the scaled space
    without that column's dimensions, on the first ``max_rows`` rows of a node's sample (hash
    order: a random subset). One distance matrix serves every column asked about.

    Parameters
    ----------
    sample : DataFrame (n, ...), the node's sample in the order of X
    X : ndarray (n, d), the sample as ``pre`` scaled it
    pre : a fitted preprocessor (its output columns are X's)
    min_rows : int, the smallest level (and complement) that could be a cluster of the node, in
        rows of X; judged on the rows checked with the same share
    max_rows : int, the rows checked (the first of the sample)
    """

    def __init__(self, sample: pd.DataFrame, X: np.ndarray, pre: Preprocessor, min_rows: int,
                 max_rows: int = CHECK_ROWS):
        self.sample, self.X, self.pre = sample, X, pre
        self.rows = np.arange(min(len(X), max_rows))
        self.n = len(self.rows)
        self.k = int(min(NEIGHBOURS, self.n - 1))
        self.min_rows = min_rows * self.n / max(1, len(X))
        self._neighbours: _NeighboursWithout | None = None
        self._spread: np.ndarray | None = None

    def values(self, column: str) -> np.ndarray:
        """The checked rows' values of ``column`` as level strings (n_checked,)."""
        return categorical_strings(self.sample[column].iloc[self.rows])

    def big_enough(self, rows: int) -> bool:
        """Whether a level of ``rows`` checked rows could be a cluster (and so its complement)."""
        return self.k >= 1 and rows >= self.min_rows and self.n - rows >= self.min_rows

    def agreement(self, column: str, vals: np.ndarray, levels: list[str]) -> list[float]:
        """ARI of the vote against membership, per level in ``levels`` (of ``vals`` (n_checked,),
        the column's values), without ``column``'s dimensions; 0 when nothing else varies."""
        drop = _columns_of(self.pre, column)
        if self._spread is None:
            self._spread = np.ptp(self.X[self.rows], axis=0) > 0
        if not _others_vary(self._spread, drop):
            return [0.0] * len(levels)
        if self._neighbours is None:
            self._neighbours = _NeighboursWithout(self.X[self.rows])
        neigh = vals[self._neighbours.of(drop)]
        return [float(adjusted_rand_score(vals == lvl, np.sum(neigh == lvl, axis=1) * 2 > self.k))
                for lvl in levels]  # a majority of the neighbours


def unreproduced_level(check: LevelCheck, min_agreement: float) -> dict | None:
    """The first categorical level that would be an artefact split if it became a cluster.

    A level of the node's categoricals big enough to be a cluster (:meth:`LevelCheck.big_enough`)
    is *reproduced* when the :class:`LevelCheck` vote tells its rows from the rest at ARI
    ``min_agreement`` or more. Weighting the one-hot levels heavily (``categorical_scale:
    standard``) walls every level off in the embedding; that is harmless where the other
    features agree with the levels (flavia's leaf descriptors), and makes artefact clusters
    where they do not (penguins' islands, the demo's countries). The same test as
    :func:`find_artefacts`, made before the embedding, on levels instead of clusters.

    Returns
    -------
    None when every such level is reproduced, else ``{"column", "level", "rows", "ari"}`` of the
    first one that is not (columns in the preprocessor's order, levels by name).
    """
    for column in check.pre.categorical:
        vals = check.values(column)
        levels, counts = np.unique(vals, return_counts=True)
        big = [str(lvl) for lvl, c in zip(levels, counts, strict=True) if check.big_enough(c)]
        if not big:
            continue
        for lvl, score in zip(big, check.agreement(column, vals, big), strict=True):
            if score < min_agreement:
                return {"column": column, "level": lvl, "rows": int(np.sum(vals == lvl)),
                        "ari": round(score, 4)}
    return None


def binary_verdicts(check: LevelCheck, columns: list[str], min_agreement: float
                    ) -> dict[str, dict]:
    """How each two-valued numeric column should weigh, by the evidence :func:`unreproduced_level`
    asks of categorical levels.

    A column whose two values split the node into parts big enough to be clusters, and whose
    split the other features reproduce (vote ARI >= ``min_agreement``), keeps its standard
    scaling (``"standard"``, as the recipe); one they do not reproduce, or whose rarer value is
    too small to be judged, is weighed as a 0/1 flag (``"unit"``): standard-scaled, a flag the
    rest of the table ignores is 1/sqrt(p (1 - p)) >= 2 apart, and walls its rows off.

    Parameters
    ----------
    check : LevelCheck of the node's sample, scaled with the columns standard-scaled (on
        :data:`BINARY_CHECK_ROWS` rows)
    columns : two-valued columns (keys of the preprocessor's ``binary_``)
    min_agreement : float

    Returns
    -------
    dict column -> ``{"weight", "rows", "ari"}``: ``rows`` of the checked rows hold the column's
    rarer value (missing values count with neither), ``ari`` the vote's (None: too small).
    """
    out = {}
    for column in columns:
        vals = check.values(column)
        levels, counts = np.unique(vals[vals != MISSING], return_counts=True)
        rare = str(levels[np.argmin(counts)]) if len(levels) else MISSING
        rows = int(counts.min()) if len(levels) else 0
        ari = None
        if len(levels) == 2 and check.big_enough(rows):
            ari = round(check.agreement(column, vals, [rare])[0], 4)
        weight = "standard" if ari is not None and ari >= min_agreement else "unit"
        out[column] = {"weight": weight, "rows": rows, "ari": ari}
    return out


def describe_artefact(column: str, level: str) -> str:
    """The words for a cluster that ``column = level`` makes on its own."""
    return f"splits on {column} = {level} only"


def rename_artefact(text: str | None, name: Callable[[str], str],
                    shown: Callable[[str], str] = str) -> str | None:
    """An artefact description found under internal column keys, with the column's own name.

    Parameters
    ----------
    text : ``"splits on <key> = <level> only"`` (or None), ``<key>`` an internal key (no spaces)
    name : callable, internal key -> the column's original name
    shown : callable, how a name or level is written for people (the job passes
        :func:`recluster.compute.segments.quoted`, as segment names write them)
    """
    if text is None:
        return None
    key, level = text.removeprefix("splits on ").removesuffix(" only").split(" = ", 1)
    return describe_artefact(shown(name(key)), shown(level))
