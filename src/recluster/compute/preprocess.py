"""Feature preprocessing fitted on a node's sample and applied to any rows of that node.

Numeric columns: median imputation, ``log1p`` for right-skewed non-negative columns, then
standard scaling. Categorical columns: the most frequent levels one-hot encoded, rarer ones
folded into ``__other__``, missing values into ``__missing__``; a present level's value is 1, or
1/std of its 0/1 column in the fitted rows (``categorical_scale="standard"``, as standard scaling
of a one-hot table weights it), or that over sqrt(levels) (``"column"``: a categorical column
weighs as one numeric column). Two-valued numeric columns (bool, a 0/1 flag, a dummy) are
recorded (``binary_``) and, standard-scaled by default, can be weighed as a 0/1 flag instead
(:meth:`Preprocessor.weigh_binary_unit`, chosen per node by
:func:`recluster.compute.node.fit_node_preprocessor`). Pure compute: no storage, no Dask.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

MISSING = "__missing__"
OTHER = "__other__"
#: Values (rows x numeric columns) the transform scales at a time: a chunk of float64 that stays
#: in a core's cache (256 KiB) through the steps.
_CHUNK_VALUES = 32_768


def _level(v) -> str:
    # A whole float is the same level as the int it came from (Parquet ints read as float64
    # in pieces that hold nulls).
    if isinstance(v, float | np.floating) and float(v).is_integer():
        return str(int(v))
    return str(v)


def _nested(dtype) -> bool:
    """An Arrow struct, list or map type: Arrow cannot factorise it (spelt row by row)."""
    return isinstance(dtype, pd.ArrowDtype) and pa.types.is_nested(dtype.pyarrow_dtype)


def categorical_strings(col: pd.Series) -> np.ndarray:
    """Categorical values as an object array of strings, missing values as ``__missing__``.

    A column of one type (text, numbers, booleans, dates, a categorical) is factorised and each
    distinct value spelt once: spelling every row in Python cost each pass ~0.5 s per million
    rows and categorical column. A column of Python objects is spelt row by row (its values
    may compare equal across types, ``True == 1``, and still be spelt apart)."""
    if col.dtype != object and not _nested(col.dtype):
        codes, uniques = pd.factorize(col, use_na_sentinel=True)
        # A unique may still be missing: Arrow's floats hold NaN apart from null (not the
        # sentinel), which row by row is missing like null.
        spelt = np.array([*(MISSING if pd.isna(v) else _level(v) for v in uniques), MISSING],
                         dtype=object)
        return spelt[codes]  # (code -1, a missing value: the last)
    values = col.to_numpy(dtype=object)
    out = np.empty(len(values), dtype=object)
    missing = pd.isna(values)
    out[missing] = MISSING
    out[~missing] = [_level(v) for v in values[~missing]]
    return out


#: Values (rows x numeric columns) :func:`numeric_values` converts at a time (16 MB of float64).
_READ_VALUES = 2_000_000


def positions_of(df: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Where ``columns`` are in ``df`` (a KeyError naming those it lacks, as ``df[columns]``
    raises: a position of -1 would take the last column instead)."""
    pos = df.columns.get_indexer(columns)
    if (pos < 0).any():
        lacking = [c for c, i in zip(columns, pos, strict=True) if i < 0]
        raise KeyError(f"columns not in the frame: {lacking}")
    return pos


def numeric_columns(df: pd.DataFrame, numeric: Sequence[str],
                    errors: str) -> Callable[[int, int], np.ndarray]:
    """A reader of ``df``'s columns ``numeric[a:b]`` as float64 (n, b - a), missing as NaN:
    where every one of them has a numeric type, a block of them at once (types and positions
    asked once: asked per block and column, the lookups cost a node of many pieces more than
    its conversions), else column by column through ``pandas.to_numeric(errors=errors)``."""
    pos = positions_of(df, numeric)
    if all(pd.api.types.is_numeric_dtype(t) for t in df.dtypes.iloc[pos]):
        return lambda a, b: df.iloc[:, pos[a:b]].to_numpy(dtype=np.float64, na_value=np.nan)
    return lambda a, b: np.column_stack([
        pd.to_numeric(df[c], errors=errors).to_numpy(dtype=np.float64, na_value=np.nan)
        for c in numeric[a:b]])


def numeric_values(df: pd.DataFrame, numeric: Sequence[str], errors: str) -> Iterator[np.ndarray]:
    """Each column of ``numeric`` in turn as a contiguous float64 array (n,), missing as NaN
    (the values of ``pandas.to_numeric(df[c], errors=errors)``), converted a block of columns
    at a time (:func:`numeric_columns`): a fit that asked pandas for each column of a wide
    node's sample on its own spent most of its time in pandas, not in the arithmetic."""
    if not len(numeric):
        return
    read = numeric_columns(df, numeric, errors)
    step = max(1, _READ_VALUES // max(1, len(df)))
    for first in range(0, len(numeric), step):
        yield from np.ascontiguousarray(read(first, first + step).T)


def _skewness(x: np.ndarray) -> float:
    if x.size < 3:
        return 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        m = x.mean()
        d = x - m
        var = float(np.mean(d * d))
        if not np.isfinite(var) or var <= 0:
            return 0.0
        # d * d * d, not d**3: numpy sends a power of 3 to libm pow, 50x slower, and a wide
        # sample skews every non-negative column (the same value to a few ulps)
        return float(np.mean(d * d * d) / var**1.5)


def two_valued(df: pd.DataFrame, numeric: Sequence[str]) -> dict[str, tuple[float, float]]:
    """The numeric columns of ``df`` (n, ...) with exactly two distinct non-missing values
    (booleans, which are read as 0.0 / 1.0, flags, dummies): column -> (lower, higher)."""
    out = {}
    for c, x in zip(numeric, numeric_values(df, numeric, "coerce"), strict=True):
        x = x[np.isfinite(x)]
        if x.size < 2:
            continue
        lo, hi = float(x.min()), float(x.max())
        if lo < hi and np.all((x == lo) | (x == hi)):
            out[c] = (lo, hi)
    return out


class Columns:
    """A partition's feature columns read out of its frame once, for many nodes' transforms.

    The level passes run a node's preprocessing on each node's own block of rows; selecting
    columns from a DataFrame and turning categoricals into level strings then cost a fixed
    amount per node and partition, which with hundreds of nodes outweighed the rows' own work.
    Done once per partition here, a node's block is two array takes.

    The numeric block is the frame's own values where it can be (no copy: a partition's
    float64 columns are one block, see :func:`recluster.compute.schema.table_to_frame`), and a
    selection of rows (:meth:`take`) is only remembered: :meth:`Preprocessor.transform` gathers
    the rows it needs a few hundred at a time, so a wide partition is never copied whole.

    Attributes
    ----------
    numeric : ndarray (N, m) float64, missing values as NaN (all the partition's rows)
    position : dict column -> its index in ``numeric``
    categorical : dict column -> ndarray (n,) of level strings (:func:`categorical_strings`)
    rows : ndarray (n,) of intp, the rows of ``numeric`` these columns hold, or None (all N)
    """

    def __init__(self, numeric: np.ndarray, position: dict[str, int],
                 categorical: dict[str, np.ndarray], rows: np.ndarray | None = None):
        self.numeric, self.position, self.categorical = numeric, position, categorical
        self.rows = rows

    @classmethod
    def of(cls, df: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str]) -> Columns:
        numeric = list(dict.fromkeys(numeric))
        block = df[numeric].to_numpy(dtype=np.float64, na_value=np.nan) if numeric else \
            np.empty((len(df), 0))
        return cls(block, {c: j for j, c in enumerate(numeric)},
                   {c: categorical_strings(df[c]) for c in dict.fromkeys(categorical)})

    def __len__(self) -> int:
        return len(self.numeric) if self.rows is None else len(self.rows)

    def take(self, idx: np.ndarray) -> Columns:
        """The rows at positions ``idx`` (categoricals copied; numeric rows gathered on use)."""
        idx = np.asarray(idx)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.intp, copy=False)
        return Columns(self.numeric, self.position,
                       {c: v[idx] for c, v in self.categorical.items()},
                       idx if self.rows is None else self.rows[idx])

    def numeric_rows(self, start: int, stop: int, columns: np.ndarray | None) -> np.ndarray:
        """Rows ``start:stop`` (of these columns' rows) of the numeric ``columns`` (positions in
        ``numeric``; None: all, in order): a fresh C-ordered (stop - start, k) float64 array."""
        block = self.numeric[start:stop] if self.rows is None else \
            self.numeric[self.rows[start:stop]]  # a view; a gathered copy
        if columns is not None:
            block = block[:, columns]  # a copy
        elif self.rows is None:
            return np.array(block, order="C")  # the caller changes it: never the frame's values
        return np.ascontiguousarray(block)


def most_frequent(counts: Sequence[tuple[str, int]], limit: int) -> list[str]:
    """The levels to keep of a categorical column: at most ``limit`` of ``counts`` ((level,
    rows) pairs, most rows first), never cutting through a tie. Where the levels that would come
    last and first left out hold as many rows, all of them are left out: a near-unique column
    (93 car models of one row each, 162 countries of 9 rows) would otherwise keep the first 20
    by the order of their names, an arbitrary choice of features that nothing in the data makes."""
    if len(counts) <= limit:
        return [k for k, _ in counts]
    cut = counts[limit][1]
    return [k for k, n in counts[:limit] if n > cut]


class Preprocessor:
    """Scale and encode features for the embedding (scikit-learn style: ``fit`` then ``transform``).

    Parameters
    ----------
    numeric : sequence of str
    categorical : sequence of str
    skew_threshold : float
        Non-negative columns whose sample skewness exceeds this are ``log1p``-transformed.
    max_categories : int
        Levels kept per categorical column (by frequency); the rest become ``__other__``.
    categorical_scale : {"unit", "standard", "column"}
        The value of a present level: 1; or 1 / sqrt(p (1 - p)) with p the level's share of the
        fitted rows (each one-hot column standard-scaled, as in a standardised table: a column
        of L levels weighs as much as L numeric columns); or that divided by sqrt(L) for the L
        levels that vary ("column": the levels together have the variance of one standardised
        numeric column, and rare levels still stand out). Absent or constant levels: 1.
    """

    def __init__(self, numeric: Sequence[str], categorical: Sequence[str],
                 skew_threshold: float = 1.0, max_categories: int = 20,
                 categorical_scale: str = "unit"):
        if categorical_scale not in ("unit", "standard", "column"):
            raise ValueError(f"categorical_scale must be 'unit', 'standard' or 'column', not "
                             f"{categorical_scale!r}")
        self.numeric = list(numeric)
        self.categorical = list(categorical)
        self.skew_threshold = skew_threshold
        self.max_categories = max_categories
        self.categorical_scale = categorical_scale

    def fit(self, df: pd.DataFrame) -> Preprocessor:
        """Learn medians, log flags, scales and category levels from ``df`` (n_rows, n_columns)."""
        self._arrays = None
        if len(df) == 0:
            raise ValueError("cannot fit preprocessing on zero rows")
        self.medians_ = {}
        self.log1p_ = []
        self.means_ = {}
        self.scales_ = {}
        self.constant_ = []
        self.missing_share_ = {}
        for c, x in zip(self.numeric, numeric_values(df, self.numeric, "raise"), strict=True):
            present = x[~np.isnan(x)]
            self.missing_share_[c] = float(1 - present.size / x.size)
            med = float(np.median(present)) if present.size else 0.0
            self.medians_[c] = med
            if present.size and present.min() >= 0 and _skewness(present) > self.skew_threshold:
                self.log1p_.append(c)
                present = np.log1p(present)
            filled = np.concatenate([present, np.full(x.size - present.size, np.log1p(med)
                                     if c in self.log1p_ else med)])
            mean = float(filled.mean()) if filled.size else 0.0
            with np.errstate(over="ignore", invalid="ignore"):
                std = float(filled.std())
            if not np.isfinite(mean) or not np.isfinite(std):
                # Extreme magnitudes overflow the moments: fall back to median / IQR.
                q1, q2, q3 = np.quantile(filled, [0.25, 0.5, 0.75])
                mean, std = float(q2), float(q3 - q1)
            if not np.isfinite(std) or std <= 1e-12 * max(1.0, abs(mean)):
                self.constant_.append(c)
                std = 1.0
            self.means_[c] = mean
            self.scales_[c] = std
        self.levels_ = {}
        self.folded_ = {}
        for c in self.categorical:
            vals = pd.Series(categorical_strings(df[c]))
            counts = vals.value_counts()
            ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            # A value spelt like the bucket of rare levels is in that bucket: kept as a level of
            # its own it would make two categories of one name (and two equal one-hot names).
            named = [(k, n) for k, n in ordered if k != OTHER]
            self.levels_[c] = most_frequent(named, self.max_categories)
            rare = named[len(self.levels_[c]):]
            if rare:  # said: a column of 228 artists weighs as 20 of them and one bucket
                # Missing values count as a level; folded, they are not in '__missing__'.
                missing = sum(n for k, n in rare if k == MISSING)
                self.folded_[c] = {"levels": len(named), "kept": len(self.levels_[c]),
                                   "rows": int(sum(n for _, n in rare)),
                                   **({"missing": int(missing)} if missing else {})}
                if len(self.levels_[c]) < self.max_categories:  # a tie at the cut
                    self.folded_[c]["tied_rows"] = int(rare[0][1])
        self.level_weights_ = {c: self._weights(df[c], self.levels_[c]) for c in self.categorical}
        self.binary_ = two_valued(df, self.numeric)
        self.feature_names_out_ = self._names()
        return self

    def weigh_binary_unit(self, columns: Sequence[str]) -> None:
        """Scale each two-valued column of ``columns`` (keys of ``binary_``) so that its two
        values lie 1 apart after the transform, as a 0/1 flag, instead of standard-scaled
        (1 / sqrt(p (1 - p)) apart, at least 2: a flag of p = 0.01 is 10 apart)."""
        for c in columns:
            lo, hi = self.binary_[c]
            if c in self.log1p_:
                lo, hi = np.log1p(lo), np.log1p(hi)
            self.scales_[c] = float(hi - lo)
        self._arrays = None  # the cached scale array is stale

    def _weights(self, col: pd.Series, levels: list[str]) -> list[float]:
        """The value of each level's column (``levels`` then ``__other__``) when present."""
        if self.categorical_scale == "unit":
            return [1.0] * (len(levels) + 1)
        index = {lvl: i for i, lvl in enumerate(levels)}
        pos = [index.get(v, len(levels)) for v in categorical_strings(col)]
        p = np.bincount(np.asarray(pos, dtype=np.int64), minlength=len(levels) + 1) / max(1, len(pos))
        sd = np.sqrt(p * (1 - p))
        varying = sd > 1e-12
        # "column": the column's levels together carry the variance of one standardised column.
        block = np.sqrt(max(1, int(varying.sum()))) if self.categorical_scale == "column" else 1.0
        return [float(1.0 / (s * block)) if v else 1.0 for s, v in zip(sd, varying, strict=True)]

    def _numeric_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Medians, means, scales (m,) of the numeric columns, and the positions of the log1p
        ones: the fitted dicts as arrays (built on first use, also for a loaded preprocessor)."""
        cached = getattr(self, "_arrays", None)
        if cached is None:
            logged = set(self.log1p_)
            cached = self._arrays = (
                np.array([self.medians_[c] for c in self.numeric], dtype=np.float64),
                np.array([self.means_[c] for c in self.numeric], dtype=np.float64),
                np.array([self.scales_[c] for c in self.numeric], dtype=np.float64),
                np.array([j for j, c in enumerate(self.numeric) if c in logged], dtype=np.int64))
        return cached

    def _names(self) -> list[str]:
        names = list(self.numeric)
        for c in self.categorical:
            names += [f"{c}={lvl}" for lvl in self.levels_[c]] + [f"{c}={OTHER}"]
        return names

    def _scaled(self, block: np.ndarray) -> np.ndarray:
        """Numeric rows (k, m) float64, a fresh array changed in place: imputed, logged where
        fitted so, standard-scaled, clipped to +-1e4 (non-finite results 0)."""
        medians, means, scales, logged = self._numeric_arrays()
        holes = np.isnan(block)
        if holes.any():
            np.copyto(block, np.broadcast_to(medians, block.shape), where=holes)
        if logged.size:
            block[:, logged] = np.log1p(np.maximum(block[:, logged], 0.0))
        with np.errstate(over="ignore", invalid="ignore"):
            block -= means
            block /= scales
        np.clip(block, -1e4, 1e4, out=block)  # +-inf -> +-1e4
        holes = np.isnan(block)  # only from non-finite arithmetic
        if holes.any():
            block[holes] = 0.0
        return block

    def transform(self, df: pd.DataFrame | Columns) -> np.ndarray:
        """Scaled, encoded features.

        Parameters
        ----------
        df : pandas.DataFrame, shape (n, n_columns), or the same rows' :class:`Columns`

        Returns
        -------
        numpy.ndarray of float32, shape (n, len(feature_names_out_))
        """
        n = len(df)
        out = np.zeros((n, len(self.feature_names_out_)), dtype=np.float32)
        if self.numeric:
            m = len(self.numeric)
            if isinstance(df, Columns):
                source = df
                columns = np.array([df.position[c] for c in self.numeric], dtype=np.intp)
                if m == df.numeric.shape[1] and np.array_equal(columns, np.arange(m)):
                    columns = None  # the block's own columns, in order: no gather
            else:
                source = Columns(df[self.numeric].to_numpy(dtype=np.float64, na_value=np.nan),
                                 {}, {})
                columns = None
            # Some hundred rows at a time, each step one vectorised pass over the chunk while
            # it is in the cache: over the whole (n, m) block at once every step streamed it
            # through memory again (and a column at a time into the row-major output cost a
            # cache miss per value). Element for element the same arithmetic either way.
            step = max(1, _CHUNK_VALUES // m)
            for start in range(0, n, step):
                stop = min(n, start + step)
                out[start:stop, :m] = self._scaled(source.numeric_rows(start, stop, columns))
        j = len(self.numeric)
        for c in self.categorical:
            vals = df.categorical[c] if isinstance(df, Columns) else categorical_strings(df[c])
            levels = self.levels_[c]
            index = {lvl: i for i, lvl in enumerate(levels)}
            pos = np.fromiter((index.get(v, len(levels)) for v in vals), dtype=np.int64, count=n)
            out[np.arange(n), j + pos] = np.asarray(self.level_weights_[c], dtype=np.float32)[pos]
            j += len(levels) + 1
        return out

    def summary(self, name: Callable[[str], str] = str) -> dict:
        """What was learned, for the tree and the manifest; ``name`` maps a column (as the
        preprocessor knows it) to the name shown."""
        return {
            "log1p": [name(c) for c in self.log1p_],
            "constant": [name(c) for c in self.constant_],
            "imputed": {name(c): s for c, s in self.missing_share_.items() if s > 0},
            "categories": {name(c): len(v) for c, v in self.levels_.items()},
            # models pickled before folds were recorded have none to say
            **({"folded": {name(c): v for c, v in self.folded_.items()}}
               if getattr(self, "folded_", None) else {}),
            "n_dims": len(self.feature_names_out_),
            **self._scale_summary(name),
        }

    def _scale_summary(self, name: Callable[[str], str]) -> dict:
        """The categorical (and two-valued columns') weighting used and, where ``auto`` chose
        it, why (see :func:`recluster.compute.node.fit_node_preprocessor`)."""
        out: dict = {}
        binary = getattr(self, "binary_choice_", None)
        if binary:
            out["binary_scale"] = {name(c): v for c, v in binary.items()}
        if not self.categorical:
            return out
        out["categorical_scale"] = self.categorical_scale
        choice = getattr(self, "scale_choice_", None)
        if choice is not None:
            blocker = choice["unreproduced_level"]
            out["categorical_scale_auto"] = None if blocker is None else {
                **blocker, "column": name(blocker["column"])}
        return out
