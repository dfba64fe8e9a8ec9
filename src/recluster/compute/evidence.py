"""Evidence that a small node holds more than one Gaussian: the Gaussian null test of a zoom.

Resampling stability (:mod:`recluster.compute.stability`) is weak evidence in a node of a few
hundred rows or fewer: measured on the labelled sets' first-level nodes of 90-142 rows, a
Gaussian of the node's own mean and covariance (no cluster structure at all) was split by the
stability gate (two or more clusters at 0.75) in 21 of 108 draws, while real sub-structure (crabs' sexes inside a species) scored
0.42-0.64 and was refused. A small zoom (under ``stability.small_node_rows`` sample rows)
that resampling refuses is therefore asked a question that is informative at that size, the
SigClust test (Liu, Hayes, Nobel and Marron, 2008): does a 2-means split leave less of the
node's variance within its halves (the *cluster index*) than it leaves in Gaussians of the
node's covariance? If so (Monte Carlo p-value at most ``stability.null_alpha``) the node holds
more than one Gaussian and is split all the same
(:func:`recluster.compute.tree.gaussian_split`). Stable small zooms are not asked: requiring
both refused the Gentoo penguins' sexes (p 0.07-0.08).

Pure compute on one node's rows (n, d) in the space its embedding was fitted on; no Dask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Gaussian draws per test (the p-value's resolution is 1 / (draws + 1)).
NULL_DRAWS = 200
NULL_BATCH = 50
#: Lloyd iterations of the 2-means (started from the split of the first principal axis).
LLOYD_STEPS = 20


@dataclass(frozen=True)
class GaussianNullTest:
    """The test of one node.

    Attributes
    ----------
    rows : int, rows tested
    cluster_index : float, within-halves share of the variance of the node's 2-means split
    null_index : float, the mean of the same index over the Gaussian draws
    p_value : float, share of draws (plus one) whose index is at most the node's
    """

    rows: int
    cluster_index: float
    null_index: float
    p_value: float

    def summary(self) -> dict[str, Any]:
        """JSON-ready (``tree.json`` ``fit.gaussian_null``)."""
        return {"rows": self.rows, "cluster_index": round(self.cluster_index, 6),
                "null_index": round(self.null_index, 6), "p_value": round(self.p_value, 6),
                "draws": NULL_DRAWS}


def two_means_index(X: np.ndarray) -> np.ndarray:
    """Cluster index of a 2-means split of each batch of rows.

    Parameters
    ----------
    X : ndarray (b, n, d), b batches of n rows, each centred (column means 0)

    Returns
    -------
    ndarray (b,), within-halves sum of squares / total sum of squares (1: no split helps)
    """
    total = np.einsum("bnd,bnd->b", X, X)
    # Start from the sign of the first principal axis (the best split of a Gaussian), then
    # Lloyd's steps; deterministic, and the same procedure for the node and its Gaussians.
    _, _, vt = np.linalg.svd(X, full_matrices=False)
    side = np.einsum("bnd,bd->bn", X, vt[:, 0, :]) > 0
    for _ in range(LLOYD_STEPS):
        w1 = side.sum(axis=1, keepdims=True)
        w0 = X.shape[1] - w1
        c1 = np.einsum("bn,bnd->bd", side, X) / np.maximum(w1, 1)
        c0 = np.einsum("bn,bnd->bd", ~side, X) / np.maximum(w0, 1)
        d1 = ((X - c1[:, None, :]) ** 2).sum(axis=2)
        d0 = ((X - c0[:, None, :]) ** 2).sum(axis=2)
        new = d1 < d0
        if np.array_equal(new, side):
            break
        side = new
    within = np.where(side, d1, d0).sum(axis=1)
    return within / np.maximum(total, np.finfo(float).tiny)


def gaussian_null_test(X: np.ndarray, seed: int) -> GaussianNullTest:
    """The node's 2-means cluster index against :data:`NULL_DRAWS` Gaussians of its covariance.

    The index is invariant to rotation, so the Gaussians are drawn in the node's principal axes
    (variances: the eigenvalues of its sample covariance) and never rotated back.

    Parameters
    ----------
    X : ndarray (n, d), the node's rows as its embedding saw them
    seed : int

    Returns
    -------
    GaussianNullTest
    """
    X = np.asarray(X, dtype=np.float64)
    X = X - X.mean(axis=0)
    n = len(X)
    sv = np.linalg.svd(X, compute_uv=False)
    sd = sv[sv > sv[0] * 1e-9] / np.sqrt(max(1, n - 1)) if sv.size and sv[0] > 0 else sv[:0]
    if sd.size == 0:
        return GaussianNullTest(n, 1.0, 1.0, 1.0)
    own = float(two_means_index(X[None])[0])
    rng = np.random.default_rng(seed)
    null = []
    for start in range(0, NULL_DRAWS, NULL_BATCH):  # batches bound the memory of wide nodes
        draws = rng.standard_normal((min(NULL_BATCH, NULL_DRAWS - start), n, sd.size)) * sd
        null.append(two_means_index(draws - draws.mean(axis=1, keepdims=True)))
    null = np.concatenate(null)
    p = (np.count_nonzero(null <= own) + 1) / (NULL_DRAWS + 1)
    return GaussianNullTest(n, own, float(null.mean()), float(p))


def zoom_null_test(fit, sample, id_column: str, cfg) -> GaussianNullTest | None:
    """The Gaussian null test of a fitted zoom, or None where stability alone judges it: the
    root, a node of ``stability.small_node_rows`` sample rows or more, and a node with more
    than a fifth as many dimensions as rows (there the sample covariance's spread eigenvalues
    make Gaussians of it look more clustered than the node: the test could only refuse).

    Parameters
    ----------
    fit : NodeFit, fitted with children
    sample : DataFrame, the node's sample (any order)
    id_column : str
    cfg : JobConfig

    Returns
    -------
    GaussianNullTest or None
    """
    from recluster.compute.node import node_seed, sorted_sample
    from recluster.compute.paths import ROOT
    from recluster.compute.reduce import project

    if fit.path == ROOT or not fit.n_sample < cfg.stability.small_node_rows:
        return None
    Z = project(fit.projection, fit.preprocessor.transform(sorted_sample(sample, id_column)))
    if 5 * Z.shape[1] > len(Z):
        return None
    return gaussian_null_test(Z, node_seed(cfg.seed + 4243, fit.path))
