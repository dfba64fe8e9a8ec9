"""Fitting one node of the tree on its sample: preprocess -> UMAP -> HDBSCAN -> assigner.

A node is a set of rows (the root: all rows; ``3``: the rows of cluster 3; ``3.1``: the rows of
sub-cluster 1 of 3). Fitting it finds its children. Pure compute: a pandas sample in, a
:class:`NodeFit` out; the Dask layer runs many of these as independent tasks.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from recluster.compute.assign import ClassifierAssigner, KnnAssigner, UmapAssigner
from recluster.compute.cluster import fit_clusters
from recluster.compute.embed import fit_embedding
from recluster.compute.preprocess import Preprocessor
from recluster.compute.sampling import id_hashes
from recluster.config import JobConfig

U_COLUMN = "_u"  # the row's hash draw, carried with samples


def node_seed(seed: int, path: str) -> int:
    """A per-node seed: reproducible, different for every node."""
    return int((seed * 1_000_003 + zlib.crc32(path.encode())) % (2**31 - 1))


@dataclass
class NodeFit:
    """A fitted node. ``stop_reason`` is set when the node has no children."""

    path: str
    n_sample: int
    stop_reason: str | None = None
    preprocessor: Preprocessor | None = None
    assigner: Any = None
    n_children: int = 0
    child_sample_sizes: list[int] = field(default_factory=list)
    persistence: list[float] = field(default_factory=list)
    noise_share_sample: float = 0.0
    min_cluster_size: int = 0
    agreement: float | None = None
    n_holdout: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    sample_ids: np.ndarray | None = None
    sample_labels: np.ndarray | None = None
    sample_embedding: np.ndarray | None = None

    def routing_view(self) -> NodeFit:
        """Only what assigning rows needs (no sample arrays): the copy shipped to workers."""
        return NodeFit(path=self.path, n_sample=self.n_sample, preprocessor=self.preprocessor,
                       assigner=self.assigner, n_children=self.n_children)

    def summary(self) -> dict[str, Any]:
        """JSON-ready facts about the fit for ``tree.json`` (deterministic: no timings)."""
        return {
            "n_sample": self.n_sample,
            "stop_reason": self.stop_reason,
            "n_children": self.n_children,
            "min_cluster_size": self.min_cluster_size,
            "persistence": [round(p, 6) for p in self.persistence],
            "noise_share_sample": round(self.noise_share_sample, 6),
            "assign_agreement_ari": None if self.agreement is None else round(self.agreement, 6),
            "n_holdout": self.n_holdout,
            "preprocess": self.preprocessor.summary() if self.preprocessor else None,
        }


def holdout_mask(n: int, fraction: float) -> np.ndarray:
    """Every ``round(1/fraction)``-th row of the (sorted) sample is held out."""
    step = max(2, int(round(1.0 / fraction)))
    return (np.arange(n) % step) == step // 2


def sorted_sample(sample: pd.DataFrame, id_column: str) -> pd.DataFrame:
    """A node's sample in its canonical order (hash draw, then id): independent of partitioning."""
    return sample.sort_values([U_COLUMN, id_column], kind="mergesort").reset_index(drop=True)


def ids_checksum(ids: np.ndarray) -> int:
    """A checksum of the ids' values in order (never of object pointers: equal string ids in
    two processes must give equal checksums)."""
    return zlib.crc32(id_hashes(ids).tobytes())


def fit_node(sample: pd.DataFrame, path: str, numeric: list[str], categorical: list[str],
             id_column: str, cfg: JobConfig) -> NodeFit:
    """Fit one node on its sample.

    Parameters
    ----------
    sample : pandas.DataFrame (n, ...) with the id, ``_u`` and the feature columns
    path : str
        The node's path (``"root"`` for the whole table).
    numeric, categorical : lists of feature column names
    id_column : str
    cfg : JobConfig

    Returns
    -------
    NodeFit
    """
    t0 = time.perf_counter()
    sample = sorted_sample(sample, id_column)
    n = len(sample)
    fit = NodeFit(path=path, n_sample=n)
    need = cfg.embedding.n_neighbors + 2
    if n < need:
        fit.stop_reason = f"sample of {n} rows is below the {need} the embedding needs"
        return fit
    pre = Preprocessor(numeric, categorical, cfg.preprocess.skew_threshold,
                       cfg.preprocess.max_categories).fit(sample)
    X = pre.transform(sample)
    fit.preprocessor = pre
    fit.seconds["preprocess"] = time.perf_counter() - t0
    if not np.ptp(X, axis=0).any():
        fit.stop_reason = "no sub-structure: every sample row has the same features"
        return fit

    keep_index = cfg.assign.method == "umap"
    t = time.perf_counter()
    reducer, emb = fit_embedding(X, cfg.embedding, node_seed(cfg.seed, path), keep_index=keep_index)
    fit.seconds["umap"] = time.perf_counter() - t

    t = time.perf_counter()
    cl = fit_clusters(emb, cfg.clustering, prediction_data=keep_index)
    fit.seconds["hdbscan"] = time.perf_counter() - t
    fit.min_cluster_size = cl.min_cluster_size
    fit.persistence = cl.persistence
    fit.noise_share_sample = float(np.mean(cl.labels < 0))
    fit.sample_ids = sample[id_column].to_numpy()
    fit.sample_labels = cl.labels
    fit.sample_embedding = emb
    if cl.n_clusters < 2:
        fit.stop_reason = "no sub-structure: all noise" if cl.n_clusters == 0 else \
            "no sub-structure: a single cluster"
        return fit

    t = time.perf_counter()
    hold = holdout_mask(n, cfg.sample.holdout_fraction)
    if keep_index:
        assigner = UmapAssigner(reducer, cl.clusterer, cl.relabel)
        pred, _, _ = assigner.predict(X[hold])
    else:
        def make():
            if cfg.assign.method == "knn":
                return KnnAssigner(cfg.assign.k)
            return ClassifierAssigner(cfg.assign.n_estimators, cfg.assign.max_depth,
                                      seed=node_seed(cfg.seed, path))

        probe = make().fit(X[~hold], cl.labels[~hold], cl.probabilities[~hold], emb[~hold])
        pred, _, _ = probe.predict(X[hold])
        assigner = make().fit(X, cl.labels, cl.probabilities, emb)
    fit.agreement = float(adjusted_rand_score(cl.labels[hold], pred))
    fit.n_holdout = int(hold.sum())
    fit.seconds["assigner"] = time.perf_counter() - t
    fit.assigner = assigner
    fit.n_children = cl.n_clusters
    fit.child_sample_sizes = np.bincount(cl.labels[cl.labels >= 0], minlength=cl.n_clusters).tolist()
    fit.seconds["total"] = time.perf_counter() - t0
    return fit


def assign_node_rows(fit: NodeFit, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Children of ``rows`` (all inside this node): labels, probability, embedding."""
    X = fit.preprocessor.transform(rows)
    return fit.assigner.predict(X)
