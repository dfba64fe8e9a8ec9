"""Why each cluster exists: raw-feature frames, one-vs-rest targets, SHAP aggregates, profiles.

Pure compute (pandas/numpy in, pandas out). The models themselves are trained by
:mod:`recluster.parallel.explain` with ``xgboost.dask``; this module prepares what goes in and
summarises what comes out.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
import pandas as pd

from recluster.compute.node import U_COLUMN
from recluster.compute.paths import NodePath
from recluster.compute.preprocess import OTHER, Preprocessor, categorical_strings

F32_MAX = float(np.finfo(np.float32).max)


def raw_frame(df: pd.DataFrame, pre: Preprocessor) -> pd.DataFrame:
    """Features as the classifiers see them: numeric imputed with the node's medians (not
    scaled, not logged), categoricals as pandas categories over the node's levels.

    Parameters
    ----------
    df : DataFrame (n, ...) with the node's feature columns
    pre : the node's fitted Preprocessor

    Returns
    -------
    DataFrame (n, n_numeric + n_categorical)
    """
    out = {}
    for c in pre.numeric:
        x = pd.to_numeric(df[c], errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
        x = np.where(np.isnan(x), pre.medians_[c], x)
        # float32 is what XGBoost holds; beyond its range a value would become inf (an error).
        out[c] = np.clip(x, -F32_MAX, F32_MAX).astype(np.float32)
    for c in pre.categorical:
        levels = list(pre.levels_[c]) + [OTHER]
        vals = categorical_strings(df[c])
        known = set(levels)
        vals = np.array([v if v in known else OTHER for v in vals], dtype=object)
        codes = pd.Categorical(vals, categories=levels).codes
        out[c] = pd.Categorical.from_codes(codes, categories=[category_name(v) for v in levels])
    return pd.DataFrame(out, index=df.index)


def category_name(level: str) -> str:
    """A categorical level as XGBoost holds it: its category names may not contain NUL, so NUL
    is written ``\\0`` and a backslash ``\\\\`` (distinct levels stay distinct)."""
    return level.replace("\\", "\\\\").replace("\x00", "\\0")


def in_node(cluster: np.ndarray, depth: np.ndarray, path: str, node_depth: int) -> np.ndarray:
    """Rows that belong to node ``path`` (at depth ``node_depth``) given final labels."""
    return (depth >= node_depth) & NodePath.parse(path).covers(cluster)


def select_training_rows(df: pd.DataFrame, state: pd.DataFrame,
                         spec: Mapping[str, tuple[int, float]], columns: Sequence[str]) -> pd.DataFrame:
    """Rows of one partition drawn into the training samples of the explained nodes.

    ``spec`` maps a node path to ``(node depth, keep-threshold on _u)``. A row may be drawn for
    several nodes (its ancestors); it is emitted once per node with ``_node`` and ``_child``
    (its cluster number among the node's children, ``-1`` for noise).
    """
    cluster = state["cluster"].to_numpy()
    depth = state["depth"].to_numpy()
    u = state[U_COLUMN].to_numpy()
    parts = []
    for path, (node_depth, threshold) in spec.items():
        mask = in_node(cluster, depth, path, node_depth) & (u < threshold)
        if not mask.any():
            continue
        level = state[f"level_{node_depth + 1}"].to_numpy(dtype="float64", na_value=np.nan)[mask]
        part = df.loc[mask, list(columns)].reset_index(drop=True)
        part[U_COLUMN] = u[mask]
        part["_node"] = path
        part["_child"] = np.nan_to_num(level, nan=-1).astype(np.int64)
        parts.append(part)
    if not parts:
        empty = df.iloc[:0][list(columns)].copy()
        return empty.assign(**{U_COLUMN: pd.Series([], dtype="float64"),
                               "_node": pd.Series([], dtype=object),
                               "_child": pd.Series([], dtype="int64")})
    return pd.concat(parts, ignore_index=True)


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


def shap_summary(contribs: np.ndarray, member: np.ndarray, features: Sequence[str], node: str,
                 cluster: str) -> pd.DataFrame:
    """Aggregate TreeSHAP contributions of one one-vs-rest model.

    Parameters
    ----------
    contribs : ndarray (n, n_features + 1), last column the bias
    member : ndarray (n,) bool, the rows that belong to ``cluster``
    features : the feature names, in column order
    node, cluster : the node's path and the child's path

    Returns
    -------
    DataFrame with one row per feature: ``node``, ``cluster``, ``feature``, ``mean_abs_shap``
    (all rows), ``mean_shap`` (members), ``mean_shap_rest``, ``rank`` (1 = most important)
    """
    phi = contribs[:, : len(features)]
    mean_abs = np.abs(phi).mean(axis=0)
    mean_member = phi[member].mean(axis=0) if member.any() else np.full(len(features), np.nan)
    mean_rest = phi[~member].mean(axis=0) if (~member).any() else np.full(len(features), np.nan)
    order = np.argsort(-mean_abs, kind="stable")
    rank = np.empty(len(features), dtype=np.int64)
    rank[order] = np.arange(1, len(features) + 1)
    return pd.DataFrame({"node": node, "cluster": cluster, "feature": list(features),
                         "mean_abs_shap": mean_abs, "mean_shap": mean_member,
                         "mean_shap_rest": mean_rest, "rank": rank,
                         "n_rows": len(member), "n_members": int(member.sum())})


def _q(x: np.ndarray, q: float) -> float:
    return float(np.quantile(x, q)) if x.size else float("nan")


#: A categorical column is profiled on at most this many levels (the most frequent in the
#: node); the others are counted together as :data:`OTHER_LEVELS`.
MAX_PROFILE_LEVELS = 50
OTHER_LEVELS = "(other levels)"


def profiles(raw: pd.DataFrame, member: np.ndarray, numeric: Sequence[str],
             categorical: Sequence[str], node: str, cluster: str,
             names: Mapping[str, str] | None = None,
             describe: Collection[str] = ()) -> pd.DataFrame:
    """Members of ``cluster`` against the rest of ``node``, column by column.

    ``raw`` holds the columns before imputation (n, ...). Numeric: mean, median, quartiles and
    share missing on both sides, ``effect_size`` (difference of means over the pooled standard
    deviation), and the shares of members above and below the rest's median
    (``member_above_rest_median``, ``member_below_rest_median``: how many members a "higher" or
    "lower" stands for). Categorical: per level (at most :data:`MAX_PROFILE_LEVELS`), the share
    on both sides and the ``lift`` (member share / rest share; NaN where the rest has none).
    ``names`` maps a column of ``raw`` to the ``feature`` name written (default: the column
    itself); columns in ``describe`` get ``role`` "describe" (profiled only, never a feature),
    the others "feature".
    """
    names = names or {}
    rows = []
    for c in numeric:
        x = pd.to_numeric(raw[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        x = np.where(np.isfinite(x), x, np.nan)
        stats = {}
        for side, m in (("member", member), ("rest", ~member)):
            v = x[m]
            present = v[~np.isnan(v)]
            stats.update({
                f"{side}_mean": float(present.mean()) if present.size else np.nan,
                f"{side}_median": _q(present, 0.5), f"{side}_q25": _q(present, 0.25),
                f"{side}_q75": _q(present, 0.75),
                f"{side}_missing": float(1 - present.size / v.size) if v.size else np.nan,
            })
        a, b = x[member], x[~member]
        a, b = a[~np.isnan(a)], b[~np.isnan(b)]
        pooled = np.sqrt((a.var() + b.var()) / 2) if a.size and b.size else np.nan
        effect = (stats["member_mean"] - stats["rest_mean"]) / pooled if pooled > 0 else np.nan
        mid = stats["rest_median"]
        above = float((a > mid).mean()) if a.size and np.isfinite(mid) else np.nan
        below = float((a < mid).mean()) if a.size and np.isfinite(mid) else np.nan
        rows.append({"node": node, "cluster": cluster, "feature": names.get(c, c), "kind": "numeric",
                     "role": "describe" if c in describe else "feature",
                     "level": None, **stats, "effect_size": float(effect),
                     "member_above_rest_median": above, "member_below_rest_median": below,
                     "member_share": np.nan, "rest_share": np.nan, "lift": np.nan})
    for c in categorical:
        vals = categorical_strings(raw[c])
        counts = pd.Series(vals).value_counts(sort=False)
        if len(counts) > MAX_PROFILE_LEVELS:
            top = counts.sort_values(ascending=False, kind="stable").index[:MAX_PROFILE_LEVELS]
            vals = np.where(np.isin(vals, top), vals, OTHER_LEVELS).astype(object)
        levels = pd.unique(vals)
        n_m, n_r = max(1, int(member.sum())), max(1, int((~member).sum()))
        for lvl in sorted(levels):
            hit = vals == lvl
            ms, rs = hit[member].sum() / n_m, hit[~member].sum() / n_r
            rows.append({"node": node, "cluster": cluster, "feature": names.get(c, c),
                         "kind": "categorical", "role": "describe" if c in describe else "feature",
                         "level": lvl, "member_share": float(ms), "rest_share": float(rs),
                         "lift": float(ms / rs) if rs > 0 else np.nan})
    return pd.DataFrame(rows)
