"""UMAP embedding of a node's scaled sample.

For the default (kNN) assignment the neighbour graph is computed exactly with scikit-learn
and handed to UMAP as ``precomputed_knn``: exact, deterministic, and it skips pynndescent,
whose numba kernels cannot be cached and cost ~45 s of compilation in every new process.
The ``umap`` assignment method needs UMAP's own search index for ``transform``, so there
UMAP builds its graph itself.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.neighbors import NearestNeighbors

from recluster.config import EmbeddingConfig


def umap_epochs(n: int, cfg: EmbeddingConfig) -> int:
    """Optimisation epochs of a fit on ``n`` rows: the configured count, else UMAP's own default."""
    return cfg.n_epochs or (500 if n <= 10_000 else 200)


def fit_embedding(X: np.ndarray, cfg: EmbeddingConfig, seed: int, keep_index: bool = False):
    """Fit UMAP on ``X`` and return ``(reducer, embedding)``.

    Parameters
    ----------
    X : ndarray (n, d) float32, scaled features
    cfg : EmbeddingConfig
    seed : int
        UMAP's ``random_state`` (makes the fit single-threaded and reproducible).
    keep_index : bool
        Let UMAP build its own neighbour index so that ``reducer.transform`` works.

    Returns
    -------
    reducer : umap.UMAP
    embedding : ndarray (n, cfg.n_components) float32
    """
    import umap

    n = len(X)
    k = int(min(cfg.n_neighbors, n - 1))
    kwargs = dict(n_components=cfg.n_components, n_neighbors=k, min_dist=cfg.min_dist,
                  random_state=seed, n_epochs=cfg.n_epochs, low_memory=True)
    if not keep_index:
        nn = NearestNeighbors(n_neighbors=k).fit(X)
        dist, idx = nn.kneighbors(X)
        kwargs["precomputed_knn"] = (idx, dist.astype(np.float32), None)
    reducer = umap.UMAP(**kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_jobs/random_state and precomputed-knn notices
        emb = reducer.fit_transform(X)
    return reducer, np.asarray(emb, dtype=np.float32)
