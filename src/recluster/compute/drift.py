"""Drift of scored rows against what a node was trained on (``recluster score``).

At training time every split node records a :class:`Reference` (saved as
``models/<path>/drift.json``):

* its **support** in the space its assigner routes in (preprocessed, projected): the centroid
  and the median member distance ``s_k`` of each child cluster; a row's *support distance* is
  ``min_k |z - centroid_k| / s_k``, and ``radius`` is that distance's ``SUPPORT_QUANTILE``
  (0.99) quantile over the node's training sample (noise rows included). So by construction
  1% of rows like the training rows lie outside, and a scored row is *outside the training
  support* when its distance exceeds ``radius``;
* a **profile** of every feature on the node's sample: numeric features cut at the sample's
  deciles (plus a bin for missing values), categorical ones by the preprocessor's levels (plus
  ``__other__`` and ``__missing__``), with the sample's share in each bin.

At scoring time, per node, the rows routed through it are counted per bin and against the
radius (:func:`node_counts`); :func:`summarise` gives the share outside the support and the
population stability index (PSI, ``sum((a - e) * ln(a / e))`` over bins, shares floored at
``PSI_FLOOR``) of every feature. Pure numpy/pandas.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from recluster.compute.preprocess import (
    MISSING,
    OTHER,
    Preprocessor,
    categorical_strings,
    numeric_values,
)

SUPPORT_QUANTILE = 0.99
PSI_FLOOR = 1e-4
_DECILES = np.linspace(0.1, 0.9, 9)


@dataclass
class Reference:
    """What a node was trained on, for drift (see the module docstring)."""

    centroids: np.ndarray  # (k, d)
    scales: np.ndarray  # (k,)
    radius: float
    numeric_edges: dict[str, list[float]] = field(default_factory=dict)  # key -> inner edges
    categorical_levels: dict[str, list[str]] = field(default_factory=dict)
    expected: dict[str, list[float]] = field(default_factory=dict)  # key -> share per bin

    def to_json(self) -> bytes:
        return json.dumps({
            "support_quantile": SUPPORT_QUANTILE, "radius": self.radius,
            "centroids": self.centroids.tolist(), "scales": self.scales.tolist(),
            "numeric_edges": self.numeric_edges, "categorical_levels": self.categorical_levels,
            "expected": self.expected}, indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Reference:
        d = json.loads(raw)
        return cls(np.asarray(d["centroids"], dtype=np.float64),
                   np.asarray(d["scales"], dtype=np.float64), float(d["radius"]),
                   {k: [float(x) for x in v] for k, v in d["numeric_edges"].items()},
                   {k: [str(x) for x in v] for k, v in d["categorical_levels"].items()},
                   {k: [float(x) for x in v] for k, v in d["expected"].items()})


def support_distance(ref_centroids: np.ndarray, scales: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """``min_k |z - centroid_k| / s_k`` of every row of Z (m, d): (m,)."""
    best = np.full(len(Z), np.inf)
    for c, s in zip(ref_centroids, scales, strict=True):  # one centroid at a time: (m, d) memory
        np.minimum(best, np.sqrt(((Z - c) ** 2).sum(axis=1)) / s, out=best)
    return best


def _bins(ref: Reference, key: str, values: pd.Series) -> np.ndarray:
    """Bin index of every value of feature ``key``: (m,) ints in [0, n_bins)."""
    if key in ref.numeric_edges:
        edges = np.asarray(ref.numeric_edges[key], dtype=np.float64)
        x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        out = np.searchsorted(edges, x, side="right")
        out[np.isnan(x)] = len(edges) + 1  # the missing bin
        return out
    levels = ref.categorical_levels[key]
    index = {lvl: i for i, lvl in enumerate(levels)}
    other, missing = len(levels), len(levels) + 1
    s = categorical_strings(values)
    return np.array([missing if v == MISSING else index.get(v, other) for v in s], dtype=np.int64)


def n_bins(ref: Reference, key: str) -> int:
    return len(ref.numeric_edges[key]) + 2 if key in ref.numeric_edges else \
        len(ref.categorical_levels[key]) + 2


def fit_reference(sample: pd.DataFrame, pre: Preprocessor, Z: np.ndarray,
                  labels: np.ndarray) -> Reference:
    """A node's :class:`Reference` from its training sample.

    Parameters
    ----------
    sample : DataFrame (n, ...) raw features of the node's sample (columns by key)
    pre : the node's fitted preprocessor (which features; categorical levels)
    Z : ndarray (n, d), the sample in the space the assigner routes in
    labels : ndarray (n,), the node's clusters of the sample (-1 noise)
    """
    Z = np.asarray(Z, dtype=np.float64)
    ks = [k for k in np.unique(labels) if k >= 0] or [None]
    cents, scales = [], []
    for k in ks:
        rows = Z if k is None else Z[labels == k]
        c = rows.mean(axis=0)
        dist = np.sqrt(((rows - c) ** 2).sum(axis=1))
        cents.append(c)
        scales.append(max(float(np.median(dist)), 1e-9))
    cents_a, scales_a = np.vstack(cents), np.asarray(scales)
    radius = float(np.quantile(support_distance(cents_a, scales_a, Z), SUPPORT_QUANTILE))
    ref = Reference(cents_a, scales_a, radius)
    for key, x in zip(pre.numeric, numeric_values(sample, pre.numeric, "coerce"), strict=True):
        x = x[~np.isnan(x)]
        ref.numeric_edges[key] = np.unique(np.quantile(x, _DECILES)).tolist() if len(x) else []
    for key in pre.categorical:
        ref.categorical_levels[key] = [str(v) for v in pre.levels_.get(key, []) if v != OTHER]
    for key in [*pre.numeric, *pre.categorical]:
        counts = np.bincount(_bins(ref, key, sample[key]), minlength=n_bins(ref, key))
        ref.expected[key] = (counts / max(len(sample), 1)).round(8).tolist()
    return ref


def node_counts(ref: Reference, rows: pd.DataFrame, Z: np.ndarray) -> dict[str, Any]:
    """Counts of one node's scored rows in one partition: ``rows``, ``outside`` (beyond the
    support radius) and ``bins`` (feature key -> count per bin)."""
    dist = support_distance(ref.centroids, ref.scales, np.asarray(Z, dtype=np.float64))
    return {"rows": int(len(rows)), "outside": int((dist > ref.radius).sum()),
            "bins": {key: np.bincount(_bins(ref, key, rows[key]),
                                      minlength=n_bins(ref, key)).tolist()
                     for key in ref.expected}}


def add_counts(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    if a is None:
        return {"rows": b["rows"], "outside": b["outside"],
                "bins": {k: list(v) for k, v in b["bins"].items()}}
    return {"rows": a["rows"] + b["rows"], "outside": a["outside"] + b["outside"],
            "bins": {k: [x + y for x, y in zip(a["bins"][k], v, strict=True)]
                     for k, v in b["bins"].items()}}


def psi(expected: np.ndarray, counts: np.ndarray) -> float:
    """Population stability index of observed ``counts`` against ``expected`` shares."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), PSI_FLOOR)
    total = max(float(np.sum(counts)), 1.0)
    a = np.maximum(np.asarray(counts, dtype=np.float64) / total, PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class DriftRule:
    """When a node has drifted: more than ``max_outside`` of its scored rows outside the
    training support, or a feature's PSI above ``max_psi``; nodes with fewer than ``min_rows``
    scored rows are reported but never flagged (too few rows for either measure)."""

    max_outside: float = 0.05
    max_psi: float = 0.25
    min_rows: int = 100


def summarise(ref: Reference, counts: dict[str, Any], names: Mapping[str, str],
              rule: DriftRule) -> dict[str, Any]:
    """One node's drift entry for the manifest: rows, share outside the support, PSI per
    feature (by name), the worst feature, and whether the node passed a threshold."""
    rows = counts["rows"]
    outside = counts["outside"] / rows if rows else 0.0
    psis = {names.get(k, k): round(psi(ref.expected[k], np.asarray(v)), 6)
            for k, v in counts["bins"].items()}
    worst = max(psis.items(), key=lambda kv: kv[1]) if psis else (None, 0.0)
    entry = {"rows": rows, "outside_share": round(outside, 6),
             "expected_outside_share": round(1 - SUPPORT_QUANTILE, 6), "psi": psis,
             "max_psi": {"feature": worst[0], "psi": worst[1]}}
    return {**entry, **judge(entry, rule)}


def judge(entry: Mapping[str, Any], rule: DriftRule) -> dict[str, Any]:
    """``drifted`` and the ``reasons`` of one node's entry under ``rule`` (also applied again to
    a published entry, whose numbers do not depend on the thresholds)."""
    reasons = []
    if entry["rows"] >= rule.min_rows:
        if entry["outside_share"] > rule.max_outside:
            reasons.append(f"{entry['outside_share']:.1%} of rows outside the training support "
                           f"(> {rule.max_outside:.1%})")
        reasons += [f"PSI of '{f}' {v:.3f} > {rule.max_psi:g}" for f, v in entry["psi"].items()
                    if v > rule.max_psi]
    return {"drifted": bool(reasons), "reasons": reasons}
