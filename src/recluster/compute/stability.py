"""Cluster stability: refit a node's embedding and clustering on subsamples, match clusters by
Jaccard overlap of their members, average the best matches (Hennig's convention: >= 0.75
stable, <= 0.5 dissolved). Pure compute; the Dask layer runs one task per resample.

A resample needs only the node's sample, not its fit: it runs while the node is being fitted,
and is scored against the fit's labels afterwards.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recluster.compute.cluster import fit_clusters
from recluster.compute.node import ids_checksum, node_seed, sorted_sample
from recluster.compute.preprocess import Preprocessor
from recluster.config import ClusteringConfig, EmbeddingConfig, JobConfig


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


def resample_labels(X: np.ndarray, fraction: float, max_rows: int, seed: int,
                    emb_cfg: EmbeddingConfig, cl_cfg: ClusteringConfig) -> tuple[np.ndarray, np.ndarray]:
    """One resample: refit UMAP + HDBSCAN on a subsample of X (n, d).

    The subsample is embedded with the epoch count of the node's own fit: left to itself, UMAP
    would give a subsample of 10k rows or fewer 500 epochs instead of 200, which is a different
    (and 2.5x dearer) procedure than the one whose clusters are being checked.

    Returns
    -------
    idx : ndarray (m,) sorted positions of the subsample in X
    labels : ndarray (m,) the refit's cluster labels (-1 noise)
    """
    from recluster.compute.embed import fit_embedding, umap_epochs

    idx = subsample(len(X), fraction, max_rows, seed)
    same = emb_cfg.model_copy(update={"n_epochs": umap_epochs(len(X), emb_cfg)})
    _, emb = fit_embedding(X[idx], same, seed)
    return idx, fit_clusters(emb, cl_cfg).labels


def resample_node(sample: pd.DataFrame, path: str, i: int, numeric: list[str],
                  categorical: list[str], id_column: str, cfg: JobConfig):
    """Resample ``i`` of a node from its sample rows, preprocessed exactly as fit_node does.

    Returns ``(ids checksum, positions, labels)`` -- the checksum lets the caller verify that the
    rows are the fitted ones -- or None when the sample is too small to embed.
    """
    rows = sorted_sample(sample, id_column)
    if len(rows) < cfg.embedding.n_neighbors + 2:
        return None
    pre = Preprocessor(numeric, categorical, cfg.preprocess.skew_threshold,
                       cfg.preprocess.max_categories).fit(rows)
    st = cfg.stability
    idx, labels = resample_labels(pre.transform(rows), st.fraction, st.max_rows,
                                  node_seed(cfg.seed + 7919 * (i + 1), path), cfg.embedding,
                                  cfg.clustering)
    return ids_checksum(rows[id_column].to_numpy()), idx, labels


def score_resample(fit_ids: np.ndarray, fit_labels: np.ndarray, n_clusters: int, result) -> np.ndarray:
    """Best-match Jaccard per fitted cluster for one resample's result."""
    checksum, idx, labels = result
    if checksum != ids_checksum(fit_ids):
        raise RuntimeError("a stability resample ran on other sample rows than the fit")
    return best_jaccard(fit_labels[idx], labels, n_clusters)
