"""Why each cluster exists: raw-feature frames, one-vs-rest targets, SHAP aggregates, profiles.

Pure compute (pandas/numpy in, pandas out; single-node XGBoost, no Dask). This module prepares
what goes into the one-vs-rest models, trains one model on one thread (:func:`explain_child`,
the task :mod:`recluster.parallel.explain` fans out per child), and evaluates and summarises
any model, whichever trainer made it (:func:`evaluate_child`).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from recluster.compute.node import U_COLUMN
from recluster.compute.paths import NodePath
from recluster.compute.preprocess import (
    OTHER,
    Preprocessor,
    categorical_strings,
    most_frequent,
    numeric_columns,
)
from recluster.compute.routing import codes_of

F32_MAX = float(np.finfo(np.float32).max)
#: Statistics over many numeric columns (profiles, the feature screen) are computed a block of
#: columns at a time, of at most this many values (columns x rows): they take several copies of
#: the block, which for a wide node's 50,000 training rows would be gigabytes at once.
BLOCK_VALUES = 2_000_000


def raw_frame(rows: pd.DataFrame | Sequence[pd.DataFrame], pre: Preprocessor) -> pd.DataFrame:
    """Features as the classifiers see them: numeric imputed with the node's medians (not
    scaled, not logged), categoricals as pandas categories over the node's levels.

    Parameters
    ----------
    rows : DataFrame (n, ...) with the node's feature columns, or the pieces of it in order
        (:func:`pieces_of`: written into one frame, never concatenated first)
    pre : the node's fitted Preprocessor

    Returns
    -------
    DataFrame (n, n_numeric + n_categorical), the numeric columns one float32 block; the index
    of ``rows`` given as one frame, else 0 .. n-1
    """
    pieces = pieces_of(rows)
    n = sum(len(p) for p in pieces)
    numeric = list(pre.numeric)
    # One F-ordered (n, m) float32 array: pandas' single (m, n) block, which the frame takes
    # without the copy that consolidating a column-per-array frame makes (0.2 s for
    # 50,000 x 500), each piece's rows written in place (no concatenation of 500 columns).
    x = np.empty((n, len(numeric)), dtype=np.float32, order="F")
    medians = np.array([pre.medians_[c] for c in numeric], dtype=np.float64)
    at = 0
    for p in pieces:
        _raw_numeric(p, numeric, medians, x[at:at + len(p)])
        at += len(p)
    index = pieces[0].index if len(pieces) == 1 else pd.RangeIndex(n)
    out = pd.DataFrame(x, index=index, columns=numeric, copy=False)
    for c in pre.categorical:
        levels = list(pre.levels_[c]) + [OTHER]
        vals = np.concatenate([categorical_strings(p[c]) for p in pieces])
        known = set(levels)
        vals = np.array([v if v in known else OTHER for v in vals], dtype=object)
        codes = pd.Categorical(vals, categories=levels).codes
        out[c] = pd.Categorical.from_codes(codes, categories=[category_name(v) for v in levels])
    return out


def _raw_numeric(df: pd.DataFrame, numeric: list[str], medians: np.ndarray,
                 out: np.ndarray) -> None:
    """:func:`raw_frame`'s numeric columns of ``df`` into ``out`` (n, m) float32: missing as the
    node's median, clipped to float32's range (what XGBoost holds; beyond it a value would
    become inf, an error), a block of columns at a time
    (:func:`~recluster.compute.preprocess.numeric_columns`; a column at a time was a dozen
    pandas calls per column: most of the time of a 500-column node's split)."""
    step = max(1, BLOCK_VALUES // max(1, len(df)))
    columns = numeric_columns(df, numeric, errors="raise")
    for first in range(0, len(numeric), step):
        v = columns(first, first + step)
        v = np.where(np.isnan(v), medians[first:first + step], v)
        out[:, first:first + step] = np.clip(v, -F32_MAX, F32_MAX)


def category_name(level: str) -> str:
    """A categorical level as XGBoost holds it: its category names may not contain NUL, so NUL
    is written ``\\0`` and a backslash ``\\\\`` (distinct levels stay distinct)."""
    return level.replace("\\", "\\\\").replace("\x00", "\\0")


def in_node(cluster: pd.Series | np.ndarray, depth: np.ndarray, path: str,
            node_depth: int) -> np.ndarray:
    """Rows that belong to node ``path`` (at depth ``node_depth``) given final labels.

    ``cluster`` is the rows' paths: a state column (each distinct path tested once, then
    spread to the rows by their codes: testing every row's text in Python cost seconds per
    pass at millions of rows) or an array of texts."""
    node = NodePath.parse(path)
    if isinstance(cluster, pd.Series):
        codes, uniques = codes_of(cluster)
        # (a code -1, no path: in the root only, as covers has it)
        hit = np.append(node.covers(uniques), node.is_root)[codes]
    else:
        hit = node.covers(cluster)
    return (depth >= node_depth) & hit


def select_training_rows(df: pd.DataFrame, state: pd.DataFrame,
                         spec: Mapping[str, tuple[int, float]], columns: Sequence[str]) -> pd.DataFrame:
    """Rows of one partition drawn into the training samples of the explained nodes.

    ``spec`` maps a node path to ``(node depth, keep-threshold on _u)``. A row may be drawn for
    several nodes (its ancestors); it is emitted once per node with ``_node`` and ``_child``
    (its cluster number among the node's children, ``-1`` for noise).
    """
    cluster = state["cluster"]
    depth = state["depth"].to_numpy()
    u = state[U_COLUMN].to_numpy()
    rows, nodes, children = [], [], []
    for path, (node_depth, threshold) in spec.items():
        mask = in_node(cluster, depth, path, node_depth) & (u < threshold)
        if not mask.any():
            continue
        level = state[f"level_{node_depth + 1}"].to_numpy(dtype="float64", na_value=np.nan)[mask]
        rows.append(np.flatnonzero(mask))
        nodes.append((path, len(rows[-1])))
        children.append(np.nan_to_num(level, nan=-1).astype(np.int64))
    if not rows:
        empty = df.iloc[:0][list(columns)].copy()
        return empty.assign(**{U_COLUMN: pd.Series([], dtype="float64"),
                               "_node": pd.Series([], dtype=object),
                               "_child": pd.Series([], dtype="int64")})
    # Every node's rows in one gather (a node's rows, then the next node's): one copy of the
    # drawn rows' columns, where a frame per node and their concatenation were two. Rows first:
    # a selection of columns first copied every row of the partition (50,000 x 500: 0.18 s
    # for 20,000 drawn rows, 0.07 s taken first).
    at = np.concatenate(rows)
    out = df.take(at)[list(columns)].reset_index(drop=True)
    out[U_COLUMN] = u[at]
    out["_node"] = pd.Series(np.repeat(np.array([p for p, _ in nodes], dtype=object),
                                       [n for _, n in nodes]), dtype="str")
    out["_child"] = np.concatenate(children)
    return out


def classifier_params(n_pos: int, n_neg: int, cfg, seed: int) -> dict:
    """XGBoost parameters of one one-vs-rest model; positives re-weighted to balance."""
    return {
        "objective": "binary:logistic",
        "eval_metric": "auc",
        "tree_method": "hist",
        "max_depth": cfg.max_depth,
        "eta": cfg.learning_rate,
        "gamma": cfg.gamma,
        "min_child_weight": cfg.min_child_weight,
        "scale_pos_weight": max(1.0, n_neg / max(1, n_pos)),
        "max_cat_to_onehot": 1,
        "seed": seed,
        "nthread": 1,
    }


@dataclass
class NodeRows:
    """One node's explanation rows as the models see them (:func:`raw_frame`), split by ``_u``
    into training rows, held-out rows (quality) and SHAP rows (aggregated contributions).

    ``X`` holds every drawn row once; ``train``, ``hold`` and ``shap`` are positions in it (in
    its order; a SHAP row may also train). A model takes its rows and, on a wide node, its
    screened columns in one selection (:meth:`part`): the three parts had been copied out of
    ``X`` whole, every column, 1.4 times the node's values (2.4 s of a 500-column run's
    explanations), to be narrowed to 50 columns per model afterwards. ``child`` is each row's
    child number (-1: noise).
    """

    X: pd.DataFrame
    child: np.ndarray
    train: np.ndarray
    hold: np.ndarray
    shap: np.ndarray
    #: child number -> (kept, score) of :func:`screen_features`, for every child among the
    #: training rows, computed together (:func:`separations`) when the node has more than
    #: ``max_features`` features; empty otherwise
    screens: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    max_features: int | None = None

    def part(self, name: str, kept: np.ndarray | None = None) -> pd.DataFrame:
        """The rows of part ``name`` ("train", "hold" or "shap"), every column or the column
        positions ``kept``, as a frame of their own (index: positions in ``X``'s index)."""
        at = getattr(self, name)
        return self.X.iloc[at] if kept is None else self.X.iloc[at, kept]

    @property
    def child_train(self) -> np.ndarray:
        return self.child[self.train]

    @property
    def child_hold(self) -> np.ndarray:
        return self.child[self.hold]

    @property
    def child_shap(self) -> np.ndarray:
        return self.child[self.shap]

    def screen(self, k: int, max_features: int | None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """:func:`screen_features` of child ``k`` on the training rows (the node's screen when
        it was computed for these ``max_features``)."""
        if max_features == self.max_features and k in self.screens:
            return self.screens[k]
        return screen_features(self.X, self.child == k, max_features, rows=self.train)

    def counts(self) -> dict[str, dict[int, int]]:
        """Rows per child number among the training and the held-out rows (small: what the
        client needs to decide which children get a model and how each is trained)."""
        return {name: {int(k): int(n)
                       for k, n in zip(*np.unique(c, return_counts=True), strict=True)}
                for name, c in (("train", self.child_train), ("hold", self.child_hold))}


def pieces_of(rows: pd.DataFrame | Sequence[pd.DataFrame]) -> list[pd.DataFrame]:
    """A node's rows as the list of frames they come in (one frame: itself): the explanation
    tasks take a node's rows as the pieces the partitions drew, one after the other, and never
    concatenate them (a copy of every drawn value: 200 MB a node at 500 columns)."""
    return [rows] if isinstance(rows, pd.DataFrame) else list(rows)


def split_node_rows(rows: pd.DataFrame | Sequence[pd.DataFrame], pre: Preprocessor,
                    threshold: float, holdout_fraction: float, shap_cut: float,
                    max_features: int | None = None) -> NodeRows:
    """Split a node's drawn rows (:func:`select_training_rows`, one node) into training,
    hold-out and SHAP rows, in their given order.

    Parameters
    ----------
    rows : DataFrame (n, ...) with the node's feature columns, ``_u`` and ``_child``, or the
        pieces of it in order (:func:`pieces_of`; at least one, which may be empty)
    pre : the node's fitted Preprocessor
    threshold : the node's draw threshold on ``_u`` (every row has ``_u < threshold``)
    holdout_fraction : rows with ``_u < holdout_fraction * threshold`` are held out
    shap_cut : rows with ``_u < shap_cut`` are the SHAP rows (they may also train)
    max_features : the feature screen (:func:`screen_features`) of every child is computed
        here, all children at once, when the node has more features than this
    """
    pieces = pieces_of(rows)
    X = raw_frame(pieces, pre)  # (float32: half the raw values' bytes)
    u = np.concatenate([p[U_COLUMN].to_numpy() for p in pieces])
    child = np.concatenate([p["_child"].to_numpy() for p in pieces])
    hold = u < holdout_fraction * threshold
    out = NodeRows(X, child, np.flatnonzero(~hold), np.flatnonzero(hold),
                   np.flatnonzero(u < shap_cut), max_features=max_features)
    if max_features is not None and X.shape[1] > max_features:
        ks = [int(k) for k in np.unique(out.child_train) if k >= 0]
        scores = separations(X, child, ks, rows=out.train)
        out.screens = {k: kept_features(scores[i], max_features) for i, k in enumerate(ks)}
    return out


def skip_reason(n_pos: int, n_neg: int, n_pos_hold: int, min_child_rows: int) -> str | None:
    """Why a child gets no model (too few members or non-members to train or to judge it), or
    None when it gets one."""
    if n_pos < min_child_rows or n_neg < min_child_rows or n_pos_hold < 5:
        return (f"{n_pos} training / {n_pos_hold} held-out members, {n_neg} non-members: below "
                f"explain.min_child_rows={min_child_rows}")
    return None


@dataclass
class ChildResult:
    """What one child's model task returns (small: no rows)."""

    model: bytes | None  # the booster (.ubj); None when training ran out of time
    quality: dict | None
    shap: pd.DataFrame | None
    seconds: float  # training and evaluation, in the task
    timed_out: bool = False


def separation(X: pd.DataFrame, member: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """How far each column of ``X`` tells ``member`` rows from the rest on its own: the absolute
    standardised mean difference (difference of the two means over the pooled standard
    deviation; 0 where that is 0). A categorical column scores its best level, each level taken
    as a 0/1 column. One pass over the rows (:func:`separations` of one group).

    Parameters
    ----------
    X : DataFrame (n, n_features), :func:`raw_frame`'s columns (no missing values)
    member : ndarray (n,) bool
    rows : positions of the rows scored (default: all; see :func:`separations`)

    Returns
    -------
    ndarray (n_features,) float64, >= 0
    """
    return separations(X, np.asarray(member, dtype=bool).astype(np.int64), [1], rows)[0]


def separations(X: pd.DataFrame, group: np.ndarray, ks: Sequence[int],
                rows: np.ndarray | None = None) -> np.ndarray:
    """:func:`separation` of each group ``k`` in ``ks`` (rows with ``group == k``) from the
    other rows, every group in the same pass over the rows: a node's children are screened
    together, so that a wide node's rows are centred and squared once, not once per child.

    Parameters
    ----------
    X : DataFrame (n, n_features), :func:`raw_frame`'s columns (no missing values)
    group : ndarray (n,) of int, each row's group (a child number, -1 for noise)
    ks : the groups to score
    rows : positions of the rows scored (default: all): the others are left out of both sides,
        and each block of columns is taken at them as it is converted (no copy of ``X``'s rows)

    Returns
    -------
    ndarray (len(ks), n_features) float64, >= 0 (a row of 0 for a group with no rows or every row)
    """
    group = np.asarray(group)
    if rows is not None:
        group = group[rows]
    W = np.stack([group == k for k in ks], axis=1).astype(np.float64) if len(ks) else \
        np.zeros((len(group), 0))
    n_m = W.sum(axis=0)  # (K,)
    n_r = len(group) - n_m
    out = np.zeros((len(ks), X.shape[1]))
    scored = (n_m > 0) & (n_r > 0)
    if not scored.any():
        return out
    n_m, n_r = n_m[:, None], n_r[:, None]

    def smd(a: np.ndarray) -> np.ndarray:  # a (n, d) -> (K, d)
        # Sums as matrix products (no copies of either side's rows), on columns centred first
        # so that the sums of squares keep their precision.
        a = a - a.mean(axis=0)
        sq = a * a
        sum_m, sq_m = W.T @ a, W.T @ sq
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_m, mean_r = sum_m / n_m, -sum_m / n_r  # the centred columns sum to 0
            var_m = np.maximum(sq_m / n_m - mean_m**2, 0.0)
            var_r = np.maximum((sq.sum(axis=0) - sq_m) / n_r - mean_r**2, 0.0)
            pooled = np.sqrt((var_m + var_r) / 2)
            return np.where(pooled > 1e-12 * (1 + np.abs(mean_m - mean_r)),
                            np.abs(mean_m - mean_r) / pooled, 0.0)

    numeric = [j for j, c in enumerate(X.columns) if not isinstance(X[c].dtype, pd.CategoricalDtype)]
    step = max(1, BLOCK_VALUES // max(1, len(group)))  # columns per block
    every = slice(None) if rows is None else rows
    for first in range(0, len(numeric), step):
        cols = numeric[first:first + step]
        out[:, cols] = smd(X.iloc[every, cols].to_numpy(dtype=np.float64))
    for j, c in enumerate(X.columns):
        if j not in set(numeric):
            codes = X[c].cat.codes.to_numpy()[every]
            onehot = (codes[:, None] == np.arange(len(X[c].cat.categories))).astype(np.float64)
            out[:, j] = smd(onehot).max(axis=1) if onehot.shape[1] else 0.0
    out[~scored] = 0.0
    return out


def screen_features(X: pd.DataFrame, member: np.ndarray, max_features: int | None,
                    rows: np.ndarray | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The columns a child's model trains on when the node is wide: the ``max_features`` that
    best separate the child from the rest of the node (:func:`separation`, ties in column
    order), in column order; ``(None, None)`` (every column) when there are not more than that.

    Parameters
    ----------
    X : DataFrame (n, n_features), the node's training rows (or more: see ``rows``)
    member : ndarray (n,) bool, the child's rows among them
    rows : positions of the training rows in ``X`` and ``member`` (default: all)

    Returns
    -------
    kept : ndarray (max_features,) of column positions, increasing, or None
    score : ndarray (n_features,), :func:`separation`, or None
    """
    if max_features is None or X.shape[1] <= max_features:
        return None, None
    return kept_features(separation(X, member, rows), max_features)


def kept_features(score: np.ndarray, max_features: int) -> tuple[np.ndarray, np.ndarray]:
    """The positions of the ``max_features`` highest ``score``s (ties in column order), in
    column order, and ``score``."""
    return np.sort(np.argsort(-score, kind="stable")[:max_features]), score


def screen_entry(kept: np.ndarray | None, features: Sequence[str], score: np.ndarray | None = None) -> dict | None:
    """What tree.json says of a child's feature screen: how many of the node's features its
    model saw, which, and the weakest separation kept (None when there was no screen)."""
    if kept is None:
        return None
    entry = {"method": "standardised mean difference", "kept": len(kept),
             "of": len(features), "features": [features[j] for j in kept]}
    if score is not None:
        entry["min_separation_kept"] = round(float(score[kept].min()), 6)
    return entry


def fit_booster(X: pd.DataFrame, label: np.ndarray, params: dict, rounds: int,
                timeout_s: float = float("inf")):
    """One single-node XGBoost model on one thread; ``None`` when it did not finish its
    ``rounds`` within ``timeout_s`` seconds (checked after every round).

    Parameters
    ----------
    X : DataFrame (n, n_features)
    label : ndarray (n,) of 0/1
    """
    import xgboost as xgb

    deadline = time.monotonic() + timeout_s

    class Deadline(xgb.callback.TrainingCallback):
        def after_iteration(self, model, epoch, evals_log) -> bool:
            return time.monotonic() > deadline  # True stops the training

    d = xgb.DMatrix(X, label=label.astype("int32"), enable_categorical=True, nthread=1)
    booster = xgb.train({**params, "nthread": 1}, d, num_boost_round=rounds, verbose_eval=False,
                        callbacks=[Deadline()])
    return booster if booster.num_boosted_rounds() >= rounds else None


def evaluate_child(booster, rows: NodeRows, k: int, features: Sequence[str], node: str,
                   cluster: str, kept: np.ndarray | None = None) -> tuple[dict, pd.DataFrame]:
    """A child's model judged on the node's held-out rows (AUC, average precision) and explained
    on its SHAP rows (TreeSHAP ``pred_contribs``, checked to add up to the margin).

    Parameters
    ----------
    booster : xgboost.Booster, ``child == k`` against the rest of the node
    features : the feature names written, in the column order of ``rows.X_*``
    kept : column positions the model was trained on (:func:`screen_features`), None: all; the
        others get a SHAP value of exactly 0 (the model never saw them)

    Returns
    -------
    metrics : dict, ``auc``, ``average_precision``, ``n_holdout``, ``n_shap_rows``,
        ``shap_additivity_max_error``
    shap : DataFrame (n_features rows), :func:`shap_summary`
    """
    import xgboost as xgb

    booster.set_param({"nthread": 1})
    X_hold, X_shap = rows.part("hold", kept), rows.part("shap", kept)
    p_hold = booster.predict(xgb.DMatrix(X_hold, enable_categorical=True, nthread=1))
    y_hold = (rows.child_hold == k).astype(int)
    d = xgb.DMatrix(X_shap, enable_categorical=True, nthread=1)
    contribs = np.asarray(booster.predict(d, pred_contribs=True))
    margin = np.asarray(booster.predict(d, output_margin=True))
    additivity = float(np.max(np.abs(contribs.sum(axis=1) - margin))) if len(margin) else 0.0
    member = rows.child_shap == k
    metrics = {"auc": round(float(roc_auc_score(y_hold, p_hold)), 6),
               "average_precision": round(float(average_precision_score(y_hold, p_hold)), 6),
               "n_holdout": len(y_hold), "n_shap_rows": int(len(member)),
               "shap_additivity_max_error": additivity}
    return metrics, shap_summary(contribs, member, features, node, cluster, kept)


def quality_entry(k: int, trainer: str, n_pos: int, n_neg: int, metrics: dict,
                  screen: dict | None = None) -> dict:
    """A child's model as tree.json and the manifest record it (``feature_screen``:
    :func:`screen_entry`, null when the model saw every feature)."""
    return {"model": f"child-{k}.ubj", "trainer": trainer, "feature_screen": screen,
            "auc": metrics["auc"], "average_precision": metrics["average_precision"],
            "n_train": n_pos + n_neg, "n_train_members": n_pos,
            "n_holdout": metrics["n_holdout"], "n_shap_rows": metrics["n_shap_rows"],
            "shap_additivity_max_error": metrics["shap_additivity_max_error"]}


def explain_child(rows: NodeRows, k: int, params: dict, rounds: int, timeout_s: float,
                  features: Sequence[str], node: str, cluster: str,
                  max_features: int | None = None) -> ChildResult:
    """Train, judge and explain one child's one-vs-rest model on one thread: the whole work of
    one fanned-out task. On a node of more than ``max_features`` features the model trains on
    the ones that best separate the child (:func:`screen_features`). The same rows, parameters
    and seed give the same model bytes wherever and whenever it runs."""
    t0 = time.perf_counter()
    member = rows.child_train == k
    n_pos = int(member.sum())
    kept, score = rows.screen(k, max_features)
    X = rows.part("train", kept)
    booster = fit_booster(X, member, params, rounds, timeout_s)
    if booster is None:
        return ChildResult(None, None, None, time.perf_counter() - t0, timed_out=True)
    metrics, shap = evaluate_child(booster, rows, k, features, node, cluster, kept)
    quality = quality_entry(k, "task", n_pos, len(rows.child_train) - n_pos, metrics,
                            screen_entry(kept, features, score))
    return ChildResult(bytes(booster.save_raw("ubj")), quality, shap, time.perf_counter() - t0)


def shap_summary(contribs: np.ndarray, member: np.ndarray, features: Sequence[str], node: str,
                 cluster: str, kept: np.ndarray | None = None) -> pd.DataFrame:
    """Aggregate TreeSHAP contributions of one one-vs-rest model.

    Parameters
    ----------
    contribs : ndarray (n, k + 1), the model's contributions, last column the bias: one column
        per feature (k = n_features), or one per ``kept`` feature
    member : ndarray (n,) bool, the rows that belong to ``cluster``
    features : the feature names, in column order
    node, cluster : the node's path and the child's path
    kept : column positions the model saw (:func:`screen_features`), in the order of the
        columns of ``contribs``; None: all

    Returns
    -------
    DataFrame with one row per feature: ``node``, ``cluster``, ``feature``, ``mean_abs_shap``
    (all rows), ``mean_shap`` (members), ``mean_shap_rest``, ``rank`` (1 = most important),
    ``screened_out`` (the feature screen kept the feature from the model: its zero says nothing
    about the feature, which was not looked at)
    """
    # Aggregated over the model's own columns, then spread over every feature (a screened-out
    # one contributes exactly 0): each column's sums are the same, and a 500-feature node's
    # children no longer expanded 20,000 rows to every feature and copied them twice more.
    phi = contribs[:, :-1]
    seen = np.arange(len(features)) if kept is None else np.asarray(kept, dtype=np.intp)
    if phi.shape[1] != len(seen):
        raise ValueError(f"{phi.shape[1]} contribution columns for {len(seen)} features")
    if kept is not None and len(features) > 1:
        # Summed with the bias column, in C order, as the expanded (n, n_features) block was:
        # numpy sums the rows of a block of one column pairwise and those of a wider one row
        # by row, so one kept feature's means differed in their last bits.
        phi = np.ascontiguousarray(contribs)

    def spread(values: np.ndarray) -> np.ndarray:
        # Of no rows every mean is undefined, a screened-out feature's too (as expanded).
        out = np.full(len(features), 0 if len(phi) else np.nan, dtype=values.dtype)
        out[seen] = values[:len(seen)]
        return out

    mean_abs = spread(np.abs(phi).mean(axis=0)) if len(phi) else \
        np.full(len(features), np.nan, dtype=phi.dtype)
    mean_member = spread(phi[member].mean(axis=0)) if member.any() else \
        np.full(len(features), np.nan)
    mean_rest = spread(phi[~member].mean(axis=0)) if (~member).any() else \
        np.full(len(features), np.nan)
    order = np.argsort(-mean_abs, kind="stable")
    rank = np.empty(len(features), dtype=np.int64)
    rank[order] = np.arange(1, len(features) + 1)
    screened = np.zeros(len(features), dtype=bool)
    if kept is not None:
        screened[:] = True
        screened[kept] = False
    return pd.DataFrame({"node": node, "cluster": cluster, "feature": list(features),
                         "mean_abs_shap": mean_abs, "mean_shap": mean_member,
                         "mean_shap_rest": mean_rest, "rank": rank,
                         "screened_out": screened, "n_rows": len(member),
                         "n_members": int(member.sum())})


#: The quantiles a numeric profile gives on each side: name -> q.
PROFILE_QUANTILES = {"median": 0.5, "q25": 0.25, "q75": 0.75}


def _positions(count: int, q: float) -> tuple[int, int, float]:
    """Where :func:`numpy.quantile`'s default (linear) rule takes the ``q`` quantile of
    ``count`` sorted values: the two order statistics (0-based) and the weight of the upper."""
    virtual = (count - 1) * q
    lo = min(max(int(np.floor(virtual)), 0), count - 1)
    return lo, min(lo + 1, count - 1), virtual - np.floor(virtual)


def _select(v: np.ndarray, ks: Sequence[int], start: int, stop: int) -> None:
    """Reorder the columns ``start:stop`` of each row of ``v`` in place so that each position
    of ``ks`` (sorted, within the range) holds the value a sort would put there: a partition at
    the middle one, then each side for the others (numpy partitions at one position with its
    vectorised selection; at several positions at once it is slower than a sort)."""
    if not ks:
        return
    mid = len(ks) // 2
    k = ks[mid]
    v[:, start:stop].partition(k - start, axis=1)
    _select(v, ks[:mid], start, k)
    _select(v, ks[mid + 1:], k + 1, stop)


#: A row whose first :data:`TIE_PROBE` values hold at most :data:`TIE_LEVELS` distinct ones is
#: sorted for its quantiles, not selected (:func:`_quantile_rows`).
TIE_PROBE = 256
TIE_LEVELS = 32


def _quantile_rows(v: np.ndarray, count: int) -> dict[str, np.ndarray]:
    """:data:`PROFILE_QUANTILES` of each row of ``v`` (k, m), whose rows all hold ``count`` >= 1
    present values (NaN in the others), exactly as :func:`numpy.quantile` gives them on the
    present values: each from the two order statistics it needs.

    Rows of a few distinct values (a flag, a dummy, a small count) are sorted, the others have
    those order statistics selected: numpy's selection slows down twentyfold on a column of
    mostly one value (1.9 ms a row of 8,000 values of a 5% dummy, against 0.07 ms to sort it),
    while on a measure it is the faster (0.26 against 0.32 ms). Either way the same values."""
    if count < v.shape[1]:
        v[np.isnan(v)] = np.inf  # (no value is inf: missing and non-finite are both NaN)
    at = {name: _positions(count, q) for name, q in PROFILE_QUANTILES.items()}
    head = np.sort(v[:, :TIE_PROBE], axis=1)
    tied = 1 + np.count_nonzero(np.diff(head, axis=1), axis=1) <= TIE_LEVELS
    if tied.all() or not tied.any():
        return (_sorted_quantiles if tied.all() else _selected_quantiles)(v, at)
    out = {name: np.empty(len(v)) for name in at}
    for rows, of in ((np.flatnonzero(tied), _sorted_quantiles),
                     (np.flatnonzero(~tied), _selected_quantiles)):
        for name, values in of(v[rows], at).items():
            out[name][rows] = values
    return out


def _lerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """numpy's linear interpolation between the order statistics ``a`` and ``b``; + 0.0: a zero
    is written 0.0, whichever of 0.0 and -0.0 (equal) stood at the quantile's place."""
    diff = b - a
    with np.errstate(invalid="ignore"):
        return np.where(t >= 0.5, b - diff * (1 - t), a + diff * t) + 0.0


def _sorted_quantiles(v: np.ndarray, at: dict[str, tuple[int, int, float]]) -> dict[str, np.ndarray]:
    """:func:`_quantile_rows` by sorting each row of ``v`` in place."""
    v.sort(axis=1)
    return {name: _lerp(v[:, lo], v[:, hi], t) for name, (lo, hi, t) in at.items()}


def _selected_quantiles(v: np.ndarray,
                        at: dict[str, tuple[int, int, float]]) -> dict[str, np.ndarray]:
    """:func:`_quantile_rows` by selecting the order statistics in each row of ``v`` (reordered
    in place): the lower one of each quantile by :func:`_select`, the next as the least value
    between it and the next selected position."""
    los = sorted({lo for lo, _, _ in at.values()})
    _select(v, los, 0, v.shape[1])
    out = {}
    for name, (lo, hi, t) in at.items():
        a = v[:, lo]
        if hi == lo:
            b = a
        else:
            nxt = next((k for k in los if k > lo), v.shape[1] - 1)
            b = v[:, lo + 1:nxt + 1].min(axis=1)
        out[name] = _lerp(a, b, t)
    return out


def _quantiles(v: np.ndarray, count: np.ndarray) -> dict[str, np.ndarray]:
    """:data:`PROFILE_QUANTILES` of each row of ``v`` (d, n) over its ``count`` present values
    (NaN elsewhere; NaN where a row has none). ``v``'s rows are reordered (and its missing
    values may become inf): pass a copy to keep them."""
    out = {name: np.full(v.shape[0], np.nan) for name in PROFILE_QUANTILES}
    for c in np.unique(count):
        if c == 0:
            continue
        rows = np.flatnonzero(count == c)
        sub = v if len(rows) == v.shape[0] else v[rows]  # (a copy of some rows)
        for name, values in _quantile_rows(sub, int(c)).items():
            out[name][rows] = values
    return out


#: Rows of a profile's block whose deviations from their mean are squared at a time (a few MB:
#: they stay in the cache between the subtraction and the sum, and the block is left as it was).
_VAR_ROWS = 8


def _sums(v: np.ndarray, holes: np.ndarray, gaps: bool,
          count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Means and (population) variances of the rows of ``v`` (d, n) over their present values
    (``holes`` missing, ``count`` present; NaN where none), two-pass, ``v`` left unchanged."""
    n_a = np.maximum(count, 1)
    mean = np.where(count > 0, (np.where(holes, 0.0, v) if gaps else v).sum(axis=1) / n_a, np.nan)
    centre = np.nan_to_num(mean)
    ss = np.empty(v.shape[0])
    for r in range(0, v.shape[0], _VAR_ROWS):
        w = v[r:r + _VAR_ROWS] - centre[r:r + _VAR_ROWS, None]
        if gaps:
            w[holes[r:r + _VAR_ROWS]] = 0.0
        ss[r:r + _VAR_ROWS] = np.einsum("ij,ij->i", w, w)
    return mean, np.where(count > 0, ss / n_a, np.nan)


#: A pooled standard deviation at most this share of the means' magnitude is rounding, not
#: spread (a constant column's, pairwise-summed: under 5e-16), so there is no effect size.
EFFECT_RTOL = 1e-12


def numeric_profile_stats(xt: np.ndarray, member: np.ndarray) -> dict[str, np.ndarray]:
    """The numeric columns of :func:`profiles`, every column at once (a wide node's profiles
    were a Python loop of a dozen numpy calls per column and child).

    Parameters
    ----------
    xt : ndarray (d, n) float64, one row per column (contiguous), missing and non-finite
        values as NaN
    member : ndarray (n,) bool

    Returns
    -------
    dict of ndarray (d,): ``{member,rest}_{mean,median,q25,q75,missing}``, ``effect_size``,
    ``member_above_rest_median``, ``member_below_rest_median`` (NaN where undefined)
    """
    d = xt.shape[0]
    stats: dict[str, np.ndarray] = {}
    var = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for side, m in (("rest", ~member), ("member", member)):
            v = xt.take(np.flatnonzero(m), axis=1)  # a copy, reordered by the quantiles last
            # (a take of positions: half the time of a boolean mask's)
            holes = np.isnan(v)
            count = v.shape[1] - holes.sum(axis=1)
            gaps = bool(holes.any())  # (a complete block skips the fillings)
            stats[f"{side}_mean"], var[side] = _sums(v, holes, gaps, count)
            stats[f"{side}_missing"] = 1 - count / v.shape[1] if v.shape[1] else np.full(d, np.nan)
            if side == "member":  # its members against the rest's median (whose quantiles came
                # first), before the selection below reorders v
                mid = stats["rest_median"][:, None]
                n_a = np.maximum(count, 1)
                ok = (count > 0) & np.isfinite(stats["rest_median"])
                above = np.count_nonzero(v > mid, axis=1)
                below = np.count_nonzero(v < mid, axis=1)
                stats["member_above_rest_median"] = np.where(ok, above / n_a, np.nan)
                stats["member_below_rest_median"] = np.where(ok, below / n_a, np.nan)
            del holes
            for key, values in _quantiles(v, count).items():
                stats[f"{side}_{key}"] = values
        pooled = np.sqrt((var["member"] + var["rest"]) / 2)
        # A column of one value has a spread of rounding errors only (a mean of n copies of 2.7
        # is not 2.7 to the last bit): its "effect" was +-1.4 or 2 sd, a fact "higher x: mean
        # 2.7 vs 2.7". A spread under EFFECT_RTOL of the means' size is no spread.
        size = np.maximum(np.abs(stats["member_mean"]), np.abs(stats["rest_mean"]))
        effect = np.where(pooled > EFFECT_RTOL * size,
                          (stats["member_mean"] - stats["rest_mean"]) / pooled, np.nan)
    order = [f"{side}_{k}" for side in ("member", "rest")
             for k in ("mean", "median", "q25", "q75", "missing")]
    return {**{k: stats[k] for k in order}, "effect_size": effect,
            "member_above_rest_median": stats["member_above_rest_median"],
            "member_below_rest_median": stats["member_below_rest_median"]}


def _at_most_two(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``x`` (k, m; missing as NaN): its least and greatest value (inf / -inf
    where it has none) and whether it holds no other value."""
    with np.errstate(invalid="ignore"):
        holes = np.isnan(x)
        low = np.where(holes, np.inf, x).min(axis=1, initial=np.inf)
        high = np.where(holes, -np.inf, x).max(axis=1, initial=-np.inf)
        only = (holes | (x == low[:, None]) | (x == high[:, None])).all(axis=1)
    return low, high, only


def two_values(xt: np.ndarray) -> dict[str, np.ndarray]:
    """The two values of each row of ``xt`` (d, n; missing as NaN) that holds exactly two (a
    flag, a 0/1 code, a two-valued measure), NaN for the others: ``two_valued_low`` and
    ``two_valued_high``. Such a column's mean is a share, not a level: facts speak of how often
    members hold each value (:mod:`recluster.compute.segments`). A row whose first 1,024 values
    already hold three is no candidate: a measure is ruled out without a pass over its rows."""
    d = xt.shape[0]
    out = {"two_valued_low": np.full(d, np.nan), "two_valued_high": np.full(d, np.nan)}
    rows = np.flatnonzero(_at_most_two(xt[:, :1024])[2])
    if len(rows):
        low, high, only = _at_most_two(xt[rows])
        two = only & (low < high)
        out["two_valued_low"][rows[two]] = low[two]
        out["two_valued_high"][rows[two]] = high[two]
    return out


#: The columns of a profile frame (``profiles.parquet``), whatever kinds of column the node
#: holds: a table of categorical columns only made frames without ``effect_size`` and the
#: report stage failed on it (KeyError), as would any reader of the published file.
PROFILE_COLUMNS = ["node", "cluster", "feature", "kind", "role", "level",
                   *(f"{side}_{k}" for side in ("member", "rest")
                     for k in ("mean", "median", "q25", "q75", "missing")),
                   "effect_size", "member_above_rest_median", "member_below_rest_median",
                   "two_valued_low", "two_valued_high", "member_share", "rest_share", "lift",
                   "unit", "time_zone"]
_PROFILE_TEXT = {"node", "cluster", "feature", "kind", "role", "level", "unit", "time_zone"}

#: A categorical column is profiled on at most this many levels (the most frequent in the
#: node); the others are counted together as :data:`OTHER_LEVELS`.
MAX_PROFILE_LEVELS = 50
OTHER_LEVELS = "(other levels)"


def profiles(raw: pd.DataFrame, member: np.ndarray, numeric: Sequence[str],
             categorical: Sequence[str], node: str, cluster: str,
             names: Mapping[str, str] | None = None,
             describe: Collection[str] = (),
             units: Mapping[str, tuple[str, str | None]] | None = None) -> pd.DataFrame:
    """Members of ``cluster`` against the rest of ``node``, column by column.

    ``raw`` holds the columns before imputation (n, ...). Numeric: mean, median, quartiles and
    share missing on both sides, ``effect_size`` (difference of means over the pooled standard
    deviation), and the shares of members above and below the rest's median
    (``member_above_rest_median``, ``member_below_rest_median``: how many members a "higher" or
    "lower" stands for). Categorical: per level (at most :data:`MAX_PROFILE_LEVELS`, the most
    frequent, never cutting through a tie: :func:`~recluster.compute.preprocess.most_frequent`;
    the others together as one level), the share
    on both sides and the ``lift`` (member share / rest share; NaN where the rest has none).
    ``names`` maps a column of ``raw`` to the ``feature`` name written (default: the column
    itself); columns in ``describe`` get ``role`` "describe" (profiled only, never a feature),
    the others "feature". ``units`` maps a numeric column that holds dates, times or durations
    (as numbers, :mod:`recluster.compute.temporal`) to its ``(unit, time zone)``, written as
    ``unit`` and ``time_zone`` (null for every other row).
    """
    return profiles_of(raw, [(member, cluster)], numeric, categorical, node, names, describe,
                       units)[0]


def profiles_of(raw: pd.DataFrame | Sequence[pd.DataFrame],
                members: Sequence[tuple[np.ndarray, str]],
                numeric: Sequence[str], categorical: Sequence[str], node: str,
                names: Mapping[str, str] | None = None,
                describe: Collection[str] = (),
                units: Mapping[str, tuple[str, str | None]] | None = None) -> list[pd.DataFrame]:
    """:func:`profiles` of several clusters of one node (each ``(member, cluster)``), one frame
    each, equal to :func:`profiles` of each alone: every column is converted (and every
    categorical's levels read) once for all of them instead of once per cluster, which for a
    wide node's children was most of the work besides the sorting.

    Parameters
    ----------
    raw : DataFrame (n, ...), the node's rows before imputation, or the pieces of it in order
        (:func:`pieces_of`: each block of columns is gathered from them)
    members : sequence of (ndarray (n,) bool, cluster path)

    Returns
    -------
    list of DataFrame, one per entry of ``members``, in order
    """
    names, units = names or {}, units or {}
    numeric = list(numeric)
    members = [(np.asarray(m, dtype=bool), c) for m, c in members]
    pieces = pieces_of(raw)
    n = sum(len(p) for p in pieces)
    step = max(1, BLOCK_VALUES // max(1, n))  # columns per block
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in members]
    readers = [numeric_columns(p, numeric, errors="coerce") for p in pieces]
    for first in range(0, len(numeric), step):
        cols = numeric[first:first + step]
        xt = np.empty((len(cols), n))
        at = 0
        for p, columns in zip(pieces, readers, strict=True):
            xt[:, at:at + len(p)] = columns(first, first + step).T
            at += len(p)
        xt[~np.isfinite(xt)] = np.nan
        pair = two_values(xt)
        for i, (member, _) in enumerate(members):
            parts[i].append({**numeric_profile_stats(xt, member), **pair})
    levels = {}
    for c in categorical:
        vals = np.concatenate([categorical_strings(p[c]) for p in pieces])
        counts = pd.Series(vals).value_counts(sort=False)
        if len(counts) > MAX_PROFILE_LEVELS:
            ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            top = most_frequent(ordered, MAX_PROFILE_LEVELS)
            vals = np.where(np.isin(vals, top), vals, OTHER_LEVELS).astype(object)
        levels[c] = vals, [(lvl, vals == lvl) for lvl in sorted(pd.unique(vals))]
    out = []
    for (member, cluster), part in zip(members, parts, strict=True):
        stats = {k: np.concatenate([p[k] for p in part]) for k in part[0]} if part else {}
        rows = []
        for j, c in enumerate(numeric):
            rows.append({"node": node, "cluster": cluster, "feature": names.get(c, c),
                         "kind": "numeric", "role": "describe" if c in describe else "feature",
                         "level": None, **{k: float(v[j]) for k, v in stats.items()},
                         "member_share": np.nan, "rest_share": np.nan, "lift": np.nan,
                         "unit": units.get(c, (None, None))[0],
                         "time_zone": units.get(c, (None, None))[1]})
        n_m, n_r = max(1, int(member.sum())), max(1, int((~member).sum()))
        for c in categorical:
            for lvl, hit in levels[c][1]:
                ms, rs = hit[member].sum() / n_m, hit[~member].sum() / n_r
                rows.append({"node": node, "cluster": cluster, "feature": names.get(c, c),
                             "kind": "categorical",
                             "role": "describe" if c in describe else "feature",
                             "level": lvl, "member_share": float(ms), "rest_share": float(rs),
                             "lift": float(ms / rs) if rs > 0 else np.nan,
                             "unit": None, "time_zone": None})
        frame = pd.DataFrame(rows, columns=PROFILE_COLUMNS)
        out.append(frame.astype({c: "float64" for c in PROFILE_COLUMNS
                                 if c not in _PROFILE_TEXT}))
    return out
