"""Cluster stability: refit a node's embedding and clustering on subsamples, match clusters by
Jaccard overlap of their members, average the best matches (Hennig's convention: >= 0.75
stable, <= 0.5 dissolved). Pure compute; the Dask layer runs one task per resample.
"""

from __future__ import annotations

import numpy as np

from recluster.cluster import fit_clusters
from recluster.config import ClusteringConfig, EmbeddingConfig


def subsample(n: int, fraction: float, max_rows: int, seed: int) -> np.ndarray:
    """Sorted positions of a subsample without replacement (duplicates would distort UMAP)."""
    m = int(min(max(2, round(fraction * n)), max_rows, n))
    return np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False))


def best_jaccard(ref: np.ndarray, other: np.ndarray, n_ref: int) -> np.ndarray:
    """For each reference cluster 0..n_ref-1, the best Jaccard overlap with any ``other`` cluster.

    Parameters
    ----------
    ref, other : ndarray (m,) int labels of the same rows (``-1`` noise, never matched)
    n_ref : number of reference clusters

    Returns
    -------
    ndarray (n_ref,) in [0, 1]; NaN for a reference cluster with no row in these rows
    """
    out = np.full(n_ref, np.nan)
    others = [d for d in np.unique(other) if d >= 0]
    for c in range(n_ref):
        a = ref == c
        if not a.any():
            continue
        best = 0.0
        for d in others:
            b = other == d
            inter = np.count_nonzero(a & b)
            if inter:
                best = max(best, inter / np.count_nonzero(a | b))
        out[c] = best
    return out


def resample_jaccard(X: np.ndarray, labels: np.ndarray, n_clusters: int, fraction: float,
                     max_rows: int, seed: int, emb_cfg: EmbeddingConfig,
                     cl_cfg: ClusteringConfig) -> np.ndarray:
    """One resample: refit UMAP + HDBSCAN on a subsample of X (n, d) and score each cluster."""
    from recluster.embed import fit_embedding

    idx = subsample(len(X), fraction, max_rows, seed)
    _, emb = fit_embedding(X[idx], emb_cfg, seed)
    return best_jaccard(labels[idx], fit_clusters(emb, cl_cfg).labels, n_clusters)
