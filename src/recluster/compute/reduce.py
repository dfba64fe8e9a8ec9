"""Linear reduction of a wide node sample before UMAP: PCA fitted on the node's own sample.

UMAP's documentation advises reducing tables of many columns with PCA before embedding them:
the neighbour search and the assigner then work on a few dozen dimensions instead of hundreds,
and PCA keeps the directions along which the node's rows actually differ. Each node fits its
own projection on its own scaled sample (a child's directions are not its parent's), the
assigner routes rows through the same projection, and explanations stay on the raw features.
Pure compute: numpy arrays in and out.
"""

from __future__ import annotations

import io

import numpy as np

from recluster.config import EmbeddingConfig


class Projection:
    """Centre and project rows onto the leading principal directions of a fitted sample.

    Parameters
    ----------
    n_components : int
        Directions kept (at most the sample's rows - 1 and its columns).
    seed : int
        Seed of the randomized SVD (used when the sample is large).
    """

    def __init__(self, n_components: int, seed: int = 0):
        self.n_components = n_components
        self.seed = seed

    def fit(self, X: np.ndarray) -> Projection:
        """Learn ``mean_`` (d,) and ``components_`` (k, d) from X (n, d)."""
        from sklearn.decomposition import PCA

        X = np.asarray(X, dtype=np.float64)
        k = int(min(self.n_components, X.shape[0] - 1, X.shape[1]))
        if k < 1:
            raise ValueError(f"cannot fit a projection on {X.shape[0]} rows x {X.shape[1]} columns")
        pca = PCA(n_components=k, svd_solver="auto", random_state=self.seed).fit(X)
        self.mean_ = pca.mean_.astype(np.float32)
        self.components_ = pca.components_.astype(np.float32)
        self.explained_variance_ratio_ = float(np.sum(pca.explained_variance_ratio_))
        return self

    def transform(self, X: np.ndarray, overwrite: bool = False) -> np.ndarray:
        """Project X (m, d) to (m, k) float32; ``overwrite``: X (float32) may be centred in
        place instead of in a copy (the same values)."""
        X = np.asarray(X, dtype=np.float32)
        if overwrite:
            X -= self.mean_
        else:
            X = X - self.mean_
        return X @ self.components_.T

    def summary(self) -> dict:
        d = int(self.components_.shape[1])
        return {"method": "pca", "from_dims": d, "to_dims": int(self.components_.shape[0]),
                "explained_variance": round(self.explained_variance_ratio_, 4)}

    def to_bytes(self) -> bytes:
        """The fitted projection as a portable ``.npz`` (no pickle)."""
        buf = io.BytesIO()
        np.savez(buf, mean=self.mean_, components=self.components_,
                 explained=np.float64(self.explained_variance_ratio_))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Projection:
        data = np.load(io.BytesIO(raw), allow_pickle=False)
        self = cls(int(data["components"].shape[0]))
        self.mean_ = data["mean"]
        self.components_ = data["components"]
        self.explained_variance_ratio_ = float(data["explained"])
        return self


def fit_projection(X: np.ndarray, cfg: EmbeddingConfig, seed: int) -> Projection | None:
    """A projection for scaled sample X (n, d) when it is wider than ``cfg.reduce_above``, else None."""
    if cfg.reduce_above is None or X.shape[1] <= cfg.reduce_above:
        return None
    return Projection(cfg.reduce_to, seed).fit(X)


def project(projection: Projection | None, X: np.ndarray) -> np.ndarray:
    """X (m, d) through ``projection`` if there is one: (m, k), else X unchanged."""
    return X if projection is None else projection.transform(X)
