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

from recluster.compute.preprocess import MISSING, Preprocessor, categorical_strings, numeric_values

#: A numeric column with at most this many distinct whole values in a node is discrete.
DISCRETE_MAX_LEVELS = 10
#: Rows of the node's sample the neighbour vote runs on (first in hash order: a random subset).
CHECK_ROWS = 3_000
#: Rows the vote on two-valued columns runs on: each column costs a pass over an (n, n) matrix,
#: and tables carry such columns by the hundred (dummies): 0.065 CPU s a column at 3,000 rows,
#: a ninth of that at 1,000, where a two-way split is still judged on hundreds of rows a side.
BINARY_CHECK_ROWS = 1_000
NEIGHBOURS = 10
#: Each checked row's nearest rows kept in order (:class:`_NeighboursWithout`).
NEAR_LIST = 50
#: A column whose dimensions take more distinct vectors than this over the checked rows is
#: left out by a query over the whole distance matrix (:class:`_NeighboursWithout`).
MAX_LEVEL_VECTORS = 64


def discrete_columns(sample: pd.DataFrame, pre: Preprocessor) -> dict[str, np.ndarray]:
    """The node's discrete columns as string arrays (n,): categoricals, and numeric columns with
    at most :data:`DISCRETE_MAX_LEVELS` whole values (missing values are a level of their own)."""
    out = {c: categorical_strings(sample[c]) for c in pre.categorical}
    for c, x in zip(pre.numeric, numeric_values(sample, pre.numeric, "coerce"), strict=True):
        present = x[~np.isnan(x)]
        if present.size and np.all(present == np.round(present)) and \
                len(np.unique(present)) <= DISCRETE_MAX_LEVELS:
            out[c] = categorical_strings(sample[c])
    return out


def _columns_of(pre: Preprocessor, column: str) -> np.ndarray:
    """Positions of ``column``'s dimensions in the preprocessor's output."""
    return _dimensions(pre).get(column, np.zeros(0, dtype=np.intp))


def _dimensions(pre: Preprocessor) -> dict[str, np.ndarray]:
    """Every column's dimensions in the preprocessor's output (:func:`_columns_of`), from one
    pass over the output names: a numeric column's own name, a categorical's ``column=level``
    names (asked column by column, a wide node's checks went through 1,500 names for each of
    1,500 columns)."""
    categorical = set(pre.categorical)
    found: dict[str, list[int]] = {}
    for j, name in enumerate(pre.feature_names_out_):
        found.setdefault(name, []).append(j)
        at = name.find("=")
        while at >= 0:  # every "=" may end the column's name (names and levels may hold one)
            if name[:at] in categorical:
                found.setdefault(name[:at], []).append(j)
            at = name.find("=", at + 1)
    return {c: np.asarray(js, dtype=np.intp) for c, js in found.items()}


class _NeighboursWithout:
    """Each row's :data:`NEIGHBOURS` nearest other rows of X (n, d) with one column's dimensions
    left out, for column after column of the same rows.

    One squared-distance matrix (n, n) over all dimensions is computed once, and each row's
    :data:`NEAR_LIST` nearest rows in it, in order. A discrete column's dimensions take one
    vector per level, so leaving them out lowers the distance of two rows by an amount that
    depends only on their two levels (0 for the same level): a row's nearest rows without the
    column are among, for each level, its nearest rows *of that level* in the full space. Those
    come from the row's list where it holds enough of them, and from its distances to that
    level's rows otherwise (a rare level's few rows). A neighbour query per column over the whole
    matrix (an (n, n) selection each) cost 0.28 s a column at 3,000 rows; modeldata's
    grants_other, ~1,000 two-valued columns asked about, spent 366 s on the root's artefact
    check. A column of more than :data:`MAX_LEVEL_VECTORS` distinct vectors takes the whole
    matrix. A row is never its own neighbour, also when other rows are its exact copies.
    """

    def __init__(self, X: np.ndarray):
        self.X = np.asarray(X, dtype=np.float64)
        n = len(self.X)
        self.k = int(min(NEIGHBOURS, n - 1))
        self.d2 = _squared_distances(self.X)
        np.fill_diagonal(self.d2, np.inf)
        m = int(min(NEAR_LIST, n - 1))
        near = np.argpartition(self.d2, m - 1, axis=1)[:, :m] if 1 <= m < n - 1 else \
            np.argsort(self.d2, axis=1)[:, :max(m, 0)]
        d2 = np.take_along_axis(self.d2, near, axis=1)
        order = np.argsort(d2, axis=1, kind="stable")
        #: each row's nearest rows (n, m), nearest first, and their squared distances
        self.near = np.take_along_axis(near, order, axis=1)
        self.near_d2 = np.take_along_axis(d2, order, axis=1)

    def of(self, drop: np.ndarray) -> np.ndarray:
        """Neighbour positions (n, k) in X without the dimensions ``drop``."""
        part = self.X[:, drop]
        if self.k < 1:
            return np.zeros((len(part), 0), dtype=np.intp)
        if part.shape[1] == 0:
            return self._of_all(part)
        if part.shape[1] == 1:
            vectors, group = np.unique(part[:, 0], return_inverse=True)
            vectors = vectors[:, None]
        else:
            vectors, group = np.unique(part, axis=0, return_inverse=True)
        if len(vectors) > MAX_LEVEL_VECTORS:
            return self._of_all(part)
        group = group.ravel()
        n, k, levels = len(self.X), self.k, len(vectors)
        # how much closer a row of each level comes to a row of each other without the column
        diff = vectors[:, None, :] - vectors[None, :, :]
        closer = np.einsum("abd,abd->ab", diff, diff)[group]  # (n, levels)
        # each row's list, level by level (nearest first within a level), and where each
        # level's part of it starts
        near_group = group[self.near]
        order = np.argsort(near_group, axis=1, kind="stable")
        listed = np.take_along_axis(self.near, order, axis=1)
        listed_d2 = np.take_along_axis(self.near_d2, order, axis=1)
        held = np.bincount((np.arange(n)[:, None] * levels + near_group).ravel(),
                           minlength=n * levels).reshape(n, levels)
        starts = np.cumsum(held, axis=1) - held
        size = np.bincount(group, minlength=levels)
        last = self.near.shape[1] - 1
        cand = np.zeros((n, levels * k), dtype=np.intp)
        dist = np.full((n, levels * k), np.inf)
        for g in range(levels):
            wanted = np.minimum(k, size[g] - (group == g))  # (a row is not its own)
            ok = np.arange(k)[None, :] < held[:, g:g + 1]  # the list's first k of level g
            # (the list holds min(NEAR_LIST, n - 1) >= k rows: positions past it are masked)
            pos = np.minimum(starts[:, g:g + 1] + np.arange(k), last)
            idx = np.take_along_axis(listed, pos, axis=1)
            d = np.take_along_axis(listed_d2, pos, axis=1)
            short = np.flatnonzero(held[:, g] < wanted)
            if len(short):  # rows whose list holds too few of this level: from all of its rows
                level = np.flatnonzero(group == g)
                sub = self.d2[np.ix_(short, level)]
                take = min(k, len(level))
                pos = np.argpartition(sub, take - 1, axis=1)[:, :take] if take < len(level) \
                    else np.broadcast_to(np.arange(take), (len(short), take))
                ok[short] = False
                ok[short, :take] = True
                idx[short, :take] = level[pos]
                d[short, :take] = np.take_along_axis(sub, pos, axis=1)
            cand[:, g * k:(g + 1) * k] = idx
            dist[:, g * k:(g + 1) * k] = np.where(ok, d - closer[:, g:g + 1], np.inf)
        pick = np.argpartition(dist, k - 1, axis=1)[:, :k]
        return np.take_along_axis(cand, pick, axis=1)

    def _of_all(self, part: np.ndarray) -> np.ndarray:
        """:meth:`of` over the whole distance matrix (``part``: X's dimensions left out)."""
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
    width = int(shift.max()) + 1
    at = np.arange(len(neigh))[:, None] * width + shift  # (row, label) cells, counted at once
    counts = np.bincount(at.ravel(), minlength=len(neigh) * width).reshape(len(neigh), width)
    return counts.argmax(axis=1) + labels.min()


def two_way_ari(a: np.ndarray, b: np.ndarray) -> float:
    """:func:`sklearn.metrics.adjusted_rand_score` of two yes/no labellings (n,) bool, the same
    value from their four counts (the checks ask it of every column and cluster: sklearn's
    checks of its arguments were most of a wide node's artefact check)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    n = len(a)
    both = int(np.count_nonzero(a & b))
    n_a, n_b = int(np.count_nonzero(a)), int(np.count_nonzero(b))
    cells = [both, n_a - both, n_b - both, n - n_a - n_b + both]
    squares = sum(c * c for c in cells)
    rows = n_a * n_a + (n - n_a) ** 2  # sums of squares of the two sides' sizes
    cols = n_b * n_b + (n - n_b) ** 2
    tp = squares - n  # pairs together in both (sklearn's pair confusion matrix)
    fp = cols - squares  # (0, 1): apart in a, together in b
    fn = rows - squares
    tn = n * n - fp - fn - squares
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


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
    dims = _dimensions(pre)
    size = np.bincount(lab, minlength=n_clusters)
    for column, values in discrete_columns(sample, pre).items():
        codes, levels = pd.factorize(values[member], use_na_sentinel=False)
        if len(levels) < 2:  # one level over the checked rows: it tells no cluster apart
            continue
        # the clusters whose rows all hold one level: its least and greatest code agree
        low = np.full(n_clusters, len(levels))
        high = np.full(n_clusters, -1)
        np.minimum.at(low, lab, codes)
        np.maximum.at(high, lab, codes)
        for c in np.flatnonzero((size > 0) & (low == high)):
            if out[c] is not None:
                continue
            if column not in votes:
                drop = dims.get(column, np.zeros(0, dtype=np.intp))
                if not _others_vary(spread, drop):
                    votes[column] = np.full(len(member), -2)  # nothing else to tell rows apart
                else:
                    neighbours = neighbours or _NeighboursWithout(Xm)
                    votes[column] = _vote(neighbours.of(drop), lab)
            score = two_way_ari(lab == c, votes[column] == c)
            if score < min_agreement:
                out[c] = describe_artefact(column, str(levels[low[c]]))
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
        self._dims: dict[str, np.ndarray] | None = None

    def values(self, column: str) -> np.ndarray:
        """The checked rows' values of ``column`` as level strings (n_checked,)."""
        return categorical_strings(self.sample[column].iloc[self.rows])

    def big_enough(self, rows: int) -> bool:
        """Whether a level of ``rows`` checked rows could be a cluster (and so its complement)."""
        return self.k >= 1 and rows >= self.min_rows and self.n - rows >= self.min_rows

    def agreement(self, column: str, vals: np.ndarray, levels: list[str]) -> list[float]:
        """ARI of the vote against membership, per level in ``levels`` (of ``vals`` (n_checked,),
        the column's values), without ``column``'s dimensions; 0 when nothing else varies."""
        if self._dims is None:
            self._dims = _dimensions(self.pre)
        drop = self._dims.get(column, np.zeros(0, dtype=np.intp))
        if self._spread is None:
            self._spread = np.ptp(self.X[self.rows], axis=0) > 0
        if not _others_vary(self._spread, drop):
            return [0.0] * len(levels)
        if self._neighbours is None:
            self._neighbours = _NeighboursWithout(self.X[self.rows])
        neigh = vals[self._neighbours.of(drop)]
        return [two_way_ari(vals == lvl, np.sum(neigh == lvl, axis=1) * 2 > self.k)
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
