"""Unit tests of :mod:`recluster.compute.cluster`: HDBSCAN fits on small frames (blobs recovered,
clusters numbered by size, determinism, errors) and ``min_cluster_size`` scaling. No cluster.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from recluster.compute.cluster import fit_clusters, min_cluster_size_for
from recluster.config import ClusteringConfig

pytestmark = pytest.mark.timeout(120)


def test_fit_clusters_three_blobs_renumbered_by_size():
    sizes = [150, 600, 300]
    centers = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    emb, truth = make_blobs(n_samples=sizes, centers=centers, cluster_std=1.0, random_state=0)
    cfg = ClusteringConfig()
    cl = fit_clusters(emb.astype(np.float32), cfg)
    assert cl.n_clusters == 3
    assert len(cl.persistence) == cl.n_clusters
    assert all(np.isfinite(cl.persistence))
    assert adjusted_rand_score(truth, cl.labels) >= 0.95
    counts = np.bincount(cl.labels[cl.labels >= 0], minlength=cl.n_clusters)
    assert list(counts) == sorted(counts, reverse=True)
    # Cluster 0 is the biggest true blob.
    assert np.bincount(truth[cl.labels == 0]).argmax() == int(np.argmax(sizes))
    assert cl.labels.min() >= -1 and cl.labels.max() == cl.n_clusters - 1
    assert np.all(cl.probabilities[cl.labels < 0] == 0.0)
    assert np.all((cl.probabilities >= 0) & (cl.probabilities <= 1))
    # relabel maps HDBSCAN's raw labels onto the new numbering.
    raw = np.asarray(cl.clusterer.labels_)
    np.testing.assert_array_equal(cl.relabel[raw + 1], cl.labels)
    assert cl.min_cluster_size == min_cluster_size_for(len(emb), cfg)


def test_min_cluster_size_scales_with_sample():
    cfg = ClusteringConfig(min_cluster_fraction=0.01, min_cluster_size_floor=30)
    assert min_cluster_size_for(100, cfg) == 30
    assert min_cluster_size_for(100_000, cfg) == 1_000
    sizes = [min_cluster_size_for(n, cfg) for n in (10, 1_000, 5_000, 50_000)]
    assert sizes == sorted(sizes)
