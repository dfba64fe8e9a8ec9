"""Unit tests of :mod:`recluster.compute.cluster`: HDBSCAN fits on small frames (blobs recovered,
clusters numbered by size, determinism, the size override) and ``min_cluster_size`` scaling. No cluster.
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


def _three_blobs(seed: int = 0):
    emb, truth = make_blobs(n_samples=[200, 400, 300], centers=[[0, 0], [15, 0], [0, 15]],
                            cluster_std=1.0, random_state=seed)
    return emb.astype(np.float32), truth


def test_fit_clusters_is_deterministic():
    emb, _ = _three_blobs()
    a, b = fit_clusters(emb, ClusteringConfig()), fit_clusters(emb, ClusteringConfig())
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    assert a.persistence == b.persistence


def test_min_cluster_size_override_and_cap():
    emb, truth = _three_blobs()
    cfg = ClusteringConfig()
    # A size above the two smaller blobs merges or drops them: fewer clusters, never more.
    coarse = fit_clusters(emb, cfg, min_cluster_size=350)
    assert coarse.min_cluster_size == 350
    assert coarse.n_clusters < 3
    assert all(size >= 350 for size in np.bincount(coarse.labels[coarse.labels >= 0]))
    # Never above the sample: a 10-row sample gets min_cluster_size 10 at most.
    small = fit_clusters(emb[:10], cfg, min_cluster_size=500)
    assert small.min_cluster_size == 10


def test_prediction_data_lets_new_points_join_their_blob():
    import hdbscan

    emb, truth = _three_blobs()
    cl = fit_clusters(emb, ClusteringConfig(), prediction_data=True)
    new, new_truth = _three_blobs(seed=1)
    pred, _ = hdbscan.approximate_predict(cl.clusterer, new)
    assert adjusted_rand_score(new_truth, cl.relabel[np.asarray(pred) + 1]) >= 0.95


def test_leaf_selection_finds_at_least_as_many_clusters_as_eom():
    emb, _ = _three_blobs()
    eom = fit_clusters(emb, ClusteringConfig(cluster_selection_method="eom"))
    leaf = fit_clusters(emb, ClusteringConfig(cluster_selection_method="leaf"))
    assert leaf.n_clusters >= eom.n_clusters >= 3
