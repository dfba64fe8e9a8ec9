"""Cluster stability: refit a node's embedding on subsamples, cluster each like the fit, match
clusters by Jaccard overlap of their members, average the best matches (Hennig's convention:
>= 0.75 stable, <= 0.5 dissolved). The same evidence chooses the node's clustering
(:func:`settle_node`): the finest HDBSCAN setting whose clusters survive resampling.
Pure compute; the Dask layer runs one task per resample and one per node to settle.

A resample needs only the node's sample, not its fit: it runs while the node is being fitted,
and is scored against the fit's labels afterwards, matched on the rows' ids (values, not
positions: an id's type and the sample's order in another process do not matter).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from recluster.compute.cluster import fit_clusters
from recluster.compute.evidence import zoom_null_test
from recluster.compute.node import (
    NodeFit,
    fit_node_preprocessor,
    node_seed,
    refinish,
    sorted_sample,
)
from recluster.compute.paths import ROOT
from recluster.compute.preprocess import Preprocessor
from recluster.compute.reduce import fit_projection, project
from recluster.compute.tree import gaussian_split, stability_verdict
from recluster.config import ClusteringConfig, EmbeddingConfig, JobConfig

#: HDBSCAN settings tried on a node's embedding, as multiples of its ``min_cluster_size``.
COARSER = (1, 2, 4)


def subsample_rows(n: int, fraction: float, max_rows: int) -> int:
    """How many of a node's ``n`` sample rows one resample refits on."""
    return int(min(max(2, round(fraction * n)), max_rows, n))


def subsample(n: int, fraction: float, max_rows: int, seed: int) -> np.ndarray:
    """Sorted positions of a subsample without replacement (duplicates would distort UMAP)."""
    m = subsample_rows(n, fraction, max_rows)
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


def resample_embedding(X: np.ndarray, fraction: float, max_rows: int, seed: int,
                       emb_cfg: EmbeddingConfig) -> tuple[np.ndarray, np.ndarray]:
    """One resample: refit (PCA) + UMAP on a subsample of X (n, d), as the fit did.

    The subsample is embedded with the epoch count of the node's own fit
    (:func:`~recluster.compute.embed.umap_epochs` of the node's distinct rows), not the one of
    its own (smaller) row count, which could be more epochs: a different (and dearer) procedure
    than the one whose clusters are being checked. A wide node's
    projection is refitted on the subsample too: it is part of the procedure being checked.
    The clustering is left to the caller, who tries it at more than one setting.

    Returns
    -------
    idx : ndarray (m,) sorted positions of the subsample in X
    embedding : ndarray (m, n_components) float32
    """
    from recluster.compute.embed import fit_embedding, umap_epochs

    idx = subsample(len(X), fraction, max_rows, seed)
    distinct = len(np.unique(X, axis=0))
    same = emb_cfg.model_copy(update={"n_epochs": umap_epochs(distinct, emb_cfg)})
    Z = project(fit_projection(X[idx], emb_cfg, seed), X[idx])
    _, emb = fit_embedding(Z, same, seed)
    return idx, emb


def resample_node(sample: pd.DataFrame, path: str, i: int, numeric: list[str],
                  categorical: list[str], id_column: str, cfg: JobConfig,
                  pre: Preprocessor | None = None):
    """Resample ``i`` of a node from its sample rows, preprocessed exactly as fit_node does
    (``pre``: that preprocessing, fitted once for the node by
    :func:`~recluster.compute.node.node_preprocessing`; else fitted here).

    Returns ``(rows in the sample, ids of the subsample's rows, their embedding)`` -- so that
    the caller can check the rows are the fitted ones -- or None when the sample is too small.
    """
    rows = sorted_sample(sample, id_column)
    if len(rows) < cfg.embedding.n_neighbors + 2:
        return None
    if pre is None:
        pre = fit_node_preprocessor(rows, numeric, categorical, cfg)
    st = cfg.stability
    idx, emb = resample_embedding(pre.transform(rows), st.fraction, st.max_rows,
                                  node_seed(cfg.seed + 7919 * (i + 1), path), cfg.embedding)
    return len(rows), rows[id_column].to_numpy()[idx], emb


def scaled_min_cluster_size(min_cluster_size: int, rows: int, n: int) -> int:
    """The fit's ``min_cluster_size`` (on ``n`` sample rows) scaled to a resample of ``rows``
    rows; a resample clusters at this, or at ``clustering.min_cluster_size_floor`` if higher."""
    return int(round(min_cluster_size * rows / n))


def score_resample(fit_ids: np.ndarray, fit_labels: np.ndarray, n_clusters: int, result,
                   min_cluster_size: int, cfg: ClusteringConfig) -> np.ndarray:
    """Best-match Jaccard per fitted cluster against one resample, clustered like the fit.

    Parameters
    ----------
    fit_ids, fit_labels : ndarray (n,), the fitted node's sample ids and cluster labels
    n_clusters : int
    result : what :func:`resample_node` returned
    min_cluster_size : int, the fit's setting; the resample's is scaled to its row count
    cfg : ClusteringConfig

    Returns
    -------
    ndarray (n_clusters,)
    """
    n_rows, ids, emb = result
    pos = pd.Index(fit_ids).get_indexer(ids)
    if n_rows != len(fit_ids) or (pos < 0).any():
        raise RuntimeError("a stability resample ran on other sample rows than the fit")
    m = max(cfg.min_cluster_size_floor, scaled_min_cluster_size(min_cluster_size, len(ids),
                                                                len(fit_ids)))
    labels = fit_clusters(emb, cfg, min_cluster_size=m).labels
    return best_jaccard(fit_labels[pos], labels, n_clusters)


def mean_scores(fit_ids: np.ndarray, fit_labels: np.ndarray, n_clusters: int, results: list,
                min_cluster_size: int, cfg: ClusteringConfig) -> list[float]:
    """Each cluster's stability: its mean best-match Jaccard over the resamples (0 if unseen)."""
    scores = np.vstack([score_resample(fit_ids, fit_labels, n_clusters, r, min_cluster_size, cfg)
                        for r in results])
    seen = ~np.isnan(scores)
    mean = np.where(seen, scores, 0.0).sum(axis=0) / np.maximum(1, seen.sum(axis=0))
    return [round(float(v), 6) for v in mean]


def conclusive(settled: NodeFit, fitted: NodeFit, scores: list[float], cfg: JobConfig) -> bool:
    """Whether a node settled on its first resample is settled for good: it kept its own
    clustering (the fitted ``min_cluster_size``, no cluster made noise, still split), its
    resamples cluster at that setting scaled to their rows (not raised to
    ``clustering.min_cluster_size_floor``), and every cluster scored at least
    ``stability.conclusive``.

    The resamples of a clearly separated cluster all score ~1, and the ones that follow would
    only confirm it; a score in between is what more resamples are for. So is a clustering that
    :func:`settle_node` coarsened or trimmed on that one resample: the scores it returns are
    those of the clusters it kept, and one resample's verdict on the others is not evidence
    enough to drop them. And so is a small node whose resamples must find clusters of the
    floor's size among fewer rows than the fit had: a cluster near that size is found by one
    resample and not by the next (diamonds: a 36-row cluster of a 108-row zoom scored 1.0 on
    its first resample, 0.667 on average over three).

    Parameters
    ----------
    settled : what :func:`settle_node` returned on the first resample
    fitted : the node's fit it was given
    scores : list of float, the scores it returned (one per cluster of ``settled``)
    cfg : JobConfig
    """
    st = cfg.stability
    own = (settled.stop_reason is None and not settled.dropped
           and settled.min_cluster_size == fitted.min_cluster_size)
    rows = subsample_rows(fitted.n_sample, st.fraction, st.max_rows)
    scaled = scaled_min_cluster_size(fitted.min_cluster_size, rows, fitted.n_sample) \
        >= cfg.clustering.min_cluster_size_floor
    return (st.conclusive is not None and own and scaled and bool(scores)
            and min(scores) >= st.conclusive)


def settle_node(fit: NodeFit, sample: pd.DataFrame, id_column: str, results: list,
                cfg: JobConfig) -> tuple[NodeFit, list[float]]:
    """Choose the node's clustering on resampling evidence, and score its clusters.

    In a zoom (below the root), HDBSCAN is tried on the node's embedding at its
    ``min_cluster_size`` and at :data:`COARSER` multiples of it; the finest setting whose
    clusters all reach ``stability.stable`` is kept. The root keeps its own setting. Failing that, in a zoom (below the root) with
    ``stability.unstable: noise``, the setting with the most stable clusters is kept (the finest
    of equals), its unstable clusters become noise (their rows stay in the parent's segment),
    and a zoom left with fewer than two stable clusters is not split. The root, and the other
    policies, keep the node's own setting and record (and do not zoom into) unstable clusters.

    Parameters
    ----------
    fit : a fitted node with children
    sample : DataFrame, the node's sample
    id_column : str
    results : list of what :func:`resample_node` returned (Nones left out)
    cfg : JobConfig

    Returns
    -------
    fit : NodeFit (a new object when the clusters changed; ``stop_reason`` set if not split)
    stability : list of float, one per cluster of the returned fit
    """
    results = [r for r in results if r is not None]
    if not results:
        return fit, []
    noise = cfg.stability.unstable == "noise" and fit.path != ROOT
    best = None
    # The root keeps its own setting: its clusters are the segmentation the zooms refine, and
    # trading them for coarser ones would leave the zooms to find again what it already had.
    for mult in COARSER if fit.path != ROOT else COARSER[:1]:
        m = fit.min_cluster_size * mult
        if mult == 1:
            labels, probs, pers = fit.sample_labels, fit.sample_probabilities, fit.persistence
        else:
            if 2 * m > fit.n_sample:
                break
            cl = fit_clusters(fit.sample_embedding, cfg.clustering, min_cluster_size=m)
            labels, probs, pers = cl.labels, cl.probabilities, cl.persistence
        k = len(pers)
        if k < 2:
            break  # coarser settings only merge further
        scores = mean_scores(fit.sample_ids, labels, k, results, m, cfg.clustering)
        if mult == 1:
            own = scores  # the fit's own clusters' (a small zoom split on the Gaussian test keeps them)
        n_stable = sum(v >= cfg.stability.stable for v in scores)
        if n_stable == k:
            best = (n_stable, m, labels, probs, pers, scores)
            break
        # Without a setting whose clusters all hold, "noise" keeps the one with the most stable
        # clusters (their rest becomes noise); the other policies keep the node's own setting.
        if best is None or (noise and n_stable > best[0]):
            best = (n_stable, m, labels, probs, pers, scores)
    _, m, labels, probs, pers, scores = best
    drop, reason = stability_verdict(scores, cfg.stability, zoom=fit.path != ROOT)
    if reason and (test := zoom_null_test(fit, sample, id_column, cfg)) is not None:
        fit = replace(fit, gaussian_null=test.summary())  # a small zoom: more than one Gaussian?
        if gaussian_split(test, cfg.stability):
            return fit, own  # split all the same, on its own clusters
    if reason:
        return replace(fit, stop_reason=reason, dropped={k: scores[k] for k in drop}), scores
    if m == fit.min_cluster_size and not drop:
        return fit, scores
    keep = [k for k in range(len(pers)) if k not in drop]
    relabel = np.full(len(pers) + 1, -1, dtype=np.int64)
    relabel[np.array(keep, dtype=np.int64) + 1] = np.arange(len(keep))
    new = relabel[labels + 1]
    out = refinish(fit, sample, id_column, new, np.where(new < 0, 0.0, probs),
                   [pers[k] for k in keep], m, {k: scores[k] for k in drop}, cfg)
    return out, [scores[k] for k in keep]
