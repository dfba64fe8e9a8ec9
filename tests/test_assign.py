"""Unit tests of :mod:`recluster.compute.assign`: the kNN assigner recovers blobs, gives noise
zero probability, is row-independent and handles empty input. No cluster.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from recluster.compute.assign import KnnAssigner

pytestmark = pytest.mark.timeout(120)


def _blobs(n: int, seed: int = 0):
    centers = np.array([[0, 0, 0, 0], [12, 0, 0, 0], [0, 12, 0, 0], [0, 0, 12, 12]], dtype=float)
    X, y = make_blobs(n_samples=n, centers=centers, cluster_std=1.0, random_state=seed)
    return X.astype(np.float32), y


def test_knn_assigner_recovers_blobs():
    X, y = _blobs(2_000)
    train, test = slice(0, 1_500), slice(1_500, None)
    rng = np.random.default_rng(0)
    prob = rng.uniform(0.2, 1.0, size=1_500)
    emb = np.column_stack([y[train] * 10.0, -y[train] * 10.0]) + rng.normal(size=(1_500, 2))
    a = KnnAssigner(k=10).fit(X[train], y[train], prob, emb)
    labels, p, e = a.predict(X[test])
    assert labels.dtype == np.int64 and labels.shape == (500,)
    assert adjusted_rand_score(y[test], labels) >= 0.98
    assert np.all((p >= 0) & (p <= 1))
    assert e.shape == (500, 2) and e.dtype == np.float32
    # The embedding is an average of the predicted cluster's members: inside their bounding box.
    for lab in np.unique(labels):
        box = emb[y[train] == lab]
        inside = e[labels == lab]
        assert np.all(inside >= box.min(axis=0) - 1e-4)
        assert np.all(inside <= box.max(axis=0) + 1e-4)


def test_knn_assigner_noise_has_zero_probability():
    X, y = _blobs(1_200, seed=1)
    # Far-away labelled noise: rows near it are predicted noise.
    rng = np.random.default_rng(2)
    noise = rng.normal(loc=60.0, scale=1.0, size=(100, X.shape[1])).astype(np.float32)
    Xf = np.vstack([X, noise])
    yf = np.r_[y, np.full(100, -1)]
    prob = np.where(yf < 0, 0.0, rng.uniform(0.5, 1.0, size=len(yf)))
    emb = rng.normal(size=(len(yf), 3)).astype(np.float32)
    a = KnnAssigner(k=7).fit(Xf, yf, prob, emb)
    probe = np.vstack([noise[:20] + 0.1, X[:20] + 0.01]).astype(np.float32)
    labels, p, e = a.predict(probe)
    assert np.all(labels[:20] == -1)
    assert np.all(labels[20:] == y[:20])
    assert np.all(p[labels < 0] == 0.0)
    assert np.all(p[labels >= 0] > 0.0)
    assert np.all((p >= 0) & (p <= 1))
    assert e.shape == (40, 3)
    assert np.isfinite(e).all()


def test_knn_assigner_is_row_independent():
    X, y = _blobs(1_000, seed=3)
    a = KnnAssigner(k=5).fit(X[:600], y[:600], np.ones(600), np.zeros((600, 2)))
    whole = a.predict(X[600:])
    parts = [a.predict(X[i:i + 37]) for i in range(600, 1_000, 37)]
    for j in range(3):
        np.testing.assert_array_equal(np.concatenate([p[j] for p in parts]), whole[j])


def test_knn_assigner_empty_input_and_small_fit():
    X, y = _blobs(40, seed=4)
    a = KnnAssigner(k=100).fit(X, y, np.ones(40), np.zeros((40, 4), dtype=np.float32))
    labels, p, e = a.predict(np.empty((0, X.shape[1]), dtype=np.float32))
    assert labels.shape == (0,) and p.shape == (0,) and e.shape == (0, 4)
    # k larger than the labelled set is capped; prediction still works.
    labels, p, _ = a.predict(X[:5])
    assert labels.shape == (5,)
    assert np.all((p >= 0) & (p <= 1))
