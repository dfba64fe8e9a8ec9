"""UMAP embedding of a node's scaled sample.

For the default (kNN) assignment the neighbour graph is computed exactly with scikit-learn
and handed to UMAP as ``precomputed_knn``: exact, deterministic, and it skips pynndescent,
whose numba kernels cannot be cached and cost ~45 s of compilation in every new process.
The ``umap`` assignment method needs UMAP's own search index for ``transform``, so there
UMAP builds its graph itself.

Identical rows are embedded once: real tables hold many (whole-number measurements, capped
values), UMAP's spectral initialisation crawls on the disconnected graph that exact duplicates
make (a 20,000-row table with 2,195 distinct rows: 160 s instead of 5 s), and identical rows
must land on the same point anyway. Each row gets the position of its distinct row, so HDBSCAN
still sees how many rows sit there.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.neighbors import NearestNeighbors

from recluster.config import EmbeddingConfig

#: Epochs of a small fit (UMAP's own default at up to 10,000 rows).
MAX_EPOCHS = 500
#: Epochs of a large fit (UMAP's own default above 10,000 rows): the floor of the rule.
MIN_EPOCHS = 200
#: Rows x epochs a fit above 2,000 rows spends (until MIN_EPOCHS, from 5,000 rows): the layout
#: optimisation (~95% of a fit) costs about rows x epochs, so the epochs fall as the rows grow.
EPOCH_WORK = MAX_EPOCHS * 2_000


def umap_epochs(n: int, cfg: EmbeddingConfig) -> int:
    """Optimisation epochs of a fit on ``n`` distinct rows: the configured count, else a rule
    bounded by work.

    UMAP's own default is a step: 500 epochs up to 10,000 rows, 200 above, so a 10k-row fit cost
    more than a 20k-row one (the layout's cost is about rows x epochs), and the nodes below the
    root (their level's sample budget gives them 5k-10k rows) paid the dearest fits of the run.
    Here a fit of up to 2,000 distinct rows keeps 500 epochs (every labelled real set of the
    quality benchmark but rodents, whose largest node has 2,564 distinct rows), larger ones get
    ``EPOCH_WORK / n`` epochs, and from 5,000 rows on UMAP's 200. Measured in README
    "Performance".

    Parameters
    ----------
    n : int, distinct rows of the fit
    cfg : EmbeddingConfig, whose ``n_epochs`` (if set) wins

    Returns
    -------
    int, epochs in [MIN_EPOCHS, MAX_EPOCHS] (or the configured count)
    """
    if cfg.n_epochs:
        return cfg.n_epochs
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, round(EPOCH_WORK / max(1, n)))))


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
    reducer : umap.UMAP, fitted on the distinct rows of X (None if there are too few to embed)
    embedding : ndarray (n, cfg.n_components) float32
    """
    X = np.asarray(X, dtype=np.float32)
    # Distinct rows in the order they first appear (without duplicates: X itself, unchanged,
    # so that UMAP's seeded optimisation sees the rows in the sample's order).
    _, first, inverse = np.unique(X, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    distinct, inverse = X[first[order]], rank[inverse.reshape(-1)]
    if len(distinct) < min(len(X), cfg.n_neighbors + 2):
        # Too few distinct rows for a neighbour graph: their leading principal axes place them.
        centred = distinct - distinct.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        emb = np.zeros((len(distinct), cfg.n_components), dtype=np.float32)
        k = min(cfg.n_components, vt.shape[0])
        emb[:, :k] = centred @ vt[:k].T
        return None, emb[inverse]
    reducer, emb = _umap(distinct, cfg, seed, keep_index)
    return reducer, emb[inverse]


def _umap(X: np.ndarray, cfg: EmbeddingConfig, seed: int, keep_index: bool):
    import umap

    n = len(X)
    k = int(min(cfg.n_neighbors, n - 1))
    kwargs = dict(n_components=cfg.n_components, n_neighbors=k, min_dist=cfg.min_dist,
                  random_state=seed, n_epochs=umap_epochs(n, cfg), low_memory=True)
    if not keep_index:
        # In double precision: float32 distances (scikit-learn's expanded dot-product form)
        # differ by ~1e-7, enough to send UMAP to another layout; on olive the float32 graph
        # merged areas for 5 of 6 seeds (one level's ARI 0.65 vs 0.89; same neighbours).
        X64 = X.astype(np.float64)
        dist, idx = NearestNeighbors(n_neighbors=k).fit(X64).kneighbors(X64)
        kwargs["precomputed_knn"] = (idx, dist.astype(np.float32), None)
    reducer = umap.UMAP(**kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_epochs/random_state and precomputed-knn notices
        emb = reducer.fit_transform(X)
    if not cfg.n_epochs:
        # The rule sets the fit's epochs only. UMAP's transform (and the umap assigner, which
        # saves this setting) derives its own from it, n_epochs // 3, where unset it runs 100
        # (batches up to 10,000 rows) or 30: left set, the rule made `assign.method: umap`
        # transform every row with 66-166 epochs instead of 30.
        reducer.n_epochs = None
    return reducer, np.asarray(emb, dtype=np.float32)
