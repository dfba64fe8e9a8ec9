"""HDBSCAN on a node's embedding, with labels renumbered by size (0 = largest)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recluster.config import ClusteringConfig


@dataclass
class Clusters:
    """Result of clustering one node's sample.

    Attributes
    ----------
    labels : ndarray (n,) int64, ``-1`` noise, clusters numbered by size descending
    probabilities : ndarray (n,) membership strengths (0 for noise)
    persistence : list of float, per cluster (new numbering)
    relabel : ndarray mapping HDBSCAN's raw label + 1 to the new label
    min_cluster_size : int
    clusterer : the fitted ``hdbscan.HDBSCAN``
    """

    labels: np.ndarray
    probabilities: np.ndarray
    persistence: list[float]
    relabel: np.ndarray
    min_cluster_size: int
    clusterer: object

    @property
    def n_clusters(self) -> int:
        return len(self.persistence)


def min_cluster_size_for(n: int, cfg: ClusteringConfig) -> int:
    """HDBSCAN's ``min_cluster_size`` for a node sample of ``n`` rows (scales with ``n``)."""
    return int(max(cfg.min_cluster_size_floor, round(cfg.min_cluster_fraction * n)))


def fit_clusters(embedding: np.ndarray, cfg: ClusteringConfig, prediction_data: bool = False,
                 min_cluster_size: int | None = None) -> Clusters:
    """Cluster an embedding (n, c) with HDBSCAN; ``min_samples`` kept small (memory ~ n x it).

    ``min_cluster_size`` overrides the size rule (:func:`min_cluster_size_for`): the stability
    check tries coarser settings on the same embedding.
    """
    import hdbscan

    n = len(embedding)
    mcs = min(min_cluster_size or min_cluster_size_for(n, cfg), max(2, n))
    model = hdbscan.HDBSCAN(
        min_cluster_size=mcs,
        min_samples=min(cfg.min_samples, mcs),
        cluster_selection_method=cfg.cluster_selection_method,
        prediction_data=prediction_data,
        core_dist_n_jobs=1,  # no joblib pools inside (daemonic) Dask workers
    ).fit(embedding)
    raw = np.asarray(model.labels_, dtype=np.int64)
    k = int(raw.max()) + 1 if raw.size else 0
    sizes = np.bincount(raw[raw >= 0], minlength=k)
    order = sorted(range(k), key=lambda c: (-sizes[c], c))
    relabel = np.full(k + 1, -1, dtype=np.int64)
    for new, old in enumerate(order):
        relabel[old + 1] = new
    labels = relabel[raw + 1]
    persistence = [float(model.cluster_persistence_[old]) for old in order]
    probs = np.where(labels < 0, 0.0, np.asarray(model.probabilities_, dtype=np.float64))
    return Clusters(labels, probs, persistence, relabel, mcs, model)
