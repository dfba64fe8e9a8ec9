"""Fitting one node of the tree on its sample: preprocess -> (PCA) -> UMAP -> HDBSCAN -> assigner.

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

from recluster.compute.artefacts import (
    BINARY_CHECK_ROWS,
    LevelCheck,
    binary_verdicts,
    find_artefacts,
    unreproduced_level,
)
from recluster.compute.assign import ClassifierAssigner, KnnAssigner, UmapAssigner
from recluster.compute.cluster import fit_clusters, min_cluster_size_for
from recluster.compute.drift import Reference, fit_reference
from recluster.compute.embed import fit_embedding
from recluster.compute.paths import ROOT, NodePath
from recluster.compute.preprocess import Columns, Preprocessor
from recluster.compute.reduce import Projection, fit_projection, project
from recluster.compute.sampling import id_hashes
from recluster.compute.stops import Stop, StopReason
from recluster.config import JobConfig

U_COLUMN = "_u"  # the row's hash draw, carried with samples


def node_seed(seed: int, path: str) -> int:
    """A per-node seed: reproducible, different for every node.

    Hashes the path's :attr:`~recluster.compute.paths.NodePath.label` (``2.10``), the text form
    paths had before labels schema version 2, so that seeds (and so every fit) stay as they were.
    """
    label = NodePath.parse(path).label
    return int((seed * 1_000_003 + zlib.crc32(label.encode())) % (2**31 - 1))


@dataclass
class NodeFit:
    """A fitted node. ``stop_reason`` is set when the node has no children."""

    path: str
    n_sample: int
    stop_reason: Stop | None = None
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
    sample_probabilities: np.ndarray | None = None
    projection: Projection | None = None
    artefacts: list[str | None] = field(default_factory=list)
    dropped: dict[int, float] = field(default_factory=dict)  # unstable cluster -> its stability
    #: The published number of each child (the assigner's class k is child ``child_numbers[k]``);
    #: None: k itself. Set when a run reuses an earlier run's paths (``run --previous``).
    child_numbers: list[int] | None = None
    #: What the node was trained on, for drift in ``recluster score`` (:mod:`.drift`).
    reference: Reference | None = None
    #: How many stability resamples scored the clusters (None: not scored).
    stability_resamples: int | None = None
    #: A small zoom's Gaussian null test (:mod:`.evidence`), when it was judged by one.
    gaussian_null: dict[str, Any] | None = None

    def routing_view(self) -> NodeFit:
        """Only what assigning rows needs (no sample arrays): the copy shipped to workers."""
        return NodeFit(path=self.path, n_sample=self.n_sample, preprocessor=self.preprocessor,
                       assigner=self.assigner, n_children=self.n_children,
                       projection=self.projection, child_numbers=self.child_numbers,
                       reference=self.reference)

    def summary(self) -> dict[str, Any]:
        """JSON-ready facts about the fit for ``tree.json`` (deterministic: no timings)."""
        return {
            "n_sample": self.n_sample,
            "stop_reason": None if self.stop_reason is None else str(self.stop_reason),
            "n_children": self.n_children,
            "min_cluster_size": self.min_cluster_size,
            "persistence": [round(p, 6) for p in self.persistence],
            "noise_share_sample": round(self.noise_share_sample, 6),
            "assign_agreement_ari": None if self.agreement is None else round(self.agreement, 6),
            "n_holdout": self.n_holdout,
            "preprocess": self.preprocessor.summary() if self.preprocessor else None,
            "reduction": self.projection.summary() if self.projection else None,
            "unstable_clusters_made_noise": {str(k): v for k, v in self.dropped.items()},
            "stability_resamples": self.stability_resamples,
            "gaussian_null": self.gaussian_null,
        }


def node_preprocessor(numeric: list[str], categorical: list[str], cfg: JobConfig,
                      categorical_scale: str | None = None) -> Preprocessor:
    """The (unfitted) preprocessing of a node, as configured (``categorical_scale`` overrides
    the configured weighting; ``auto`` is resolved by :func:`fit_node_preprocessor`)."""
    p = cfg.preprocess
    scale = categorical_scale or p.categorical_scale
    return Preprocessor(numeric, categorical, p.skew_threshold, p.max_categories,
                        "standard" if scale == "auto" else scale)


def fit_node_preprocessor(sample: pd.DataFrame, numeric: list[str], categorical: list[str],
                          cfg: JobConfig) -> Preprocessor:
    """The node's preprocessing fitted on its (sorted) sample (n, ...), with
    ``preprocess.categorical_scale: auto`` and ``preprocess.binary_scale: auto`` resolved on
    that sample.

    ``categorical_scale: auto``: the recipe's ``standard`` weighting, unless a categorical level
    large enough to be a cluster (``min_cluster_size`` of the node) is one the other features do
    not reproduce (:func:`~recluster.compute.artefacts.unreproduced_level`, at
    ``recursion.min_split_agreement``): then ``unit``. Under ``standard``, levels smaller than
    a cluster (which the check cannot judge) keep the 0/1 value. The choice and its reason are
    kept on the preprocessor (``scale_choice_``, shown by its summary in ``tree.json``).

    ``binary_scale: auto``: each two-valued numeric column (bool, 0/1) stays standard-scaled
    only if both its values are cluster-sized and the other features reproduce its split
    (:func:`~recluster.compute.artefacts.binary_verdicts`, the same vote); otherwise it is
    weighed as a 0/1 flag (``binary_choice_``, in ``tree.json`` as ``binary_scale``).

    Both are judged on the same scaled sample (every column standard-scaled) and are a
    deterministic function of the rows, so the stability resamples choose as the fit does.
    """
    pre = node_preprocessor(numeric, categorical, cfg).fit(sample)
    auto_levels = cfg.preprocess.categorical_scale == "auto" and bool(categorical)
    binaries = list(pre.binary_) if cfg.preprocess.binary_scale == "auto" else []
    if not auto_levels and not binaries:
        return pre
    X = pre.transform(sample)
    floor = min_cluster_size_for(len(sample), cfg.clustering)
    check = LevelCheck(sample, X, pre, floor)
    agreement = cfg.recursion.min_split_agreement
    if auto_levels:
        blocker = unreproduced_level(check, agreement)
        if blocker is not None:
            pre = node_preprocessor(numeric, categorical, cfg, "unit").fit(sample)
        else:
            # Levels too small to be a cluster were not checked: they keep the 0/1 value, so
            # that a rare level (a near-unique tag, 1/sqrt(p) ~ 38 at 3,000 rows) does not
            # pull its few rows away from where the other features put them.
            j = len(pre.numeric)
            for c in pre.categorical:
                width = len(pre.levels_[c]) + 1
                rows = np.count_nonzero(X[:, j:j + width], axis=0)
                pre.level_weights_[c] = [w if n >= floor else 1.0
                                         for w, n in zip(pre.level_weights_[c], rows, strict=True)]
                j += width
        pre.scale_choice_ = {"chosen": pre.categorical_scale, "unreproduced_level": blocker}
    if binaries:
        if len(sample) > BINARY_CHECK_ROWS:
            check = LevelCheck(sample, X, check.pre, floor, BINARY_CHECK_ROWS)
        verdicts = binary_verdicts(check, binaries, agreement)
        pre.weigh_binary_unit([c for c, v in verdicts.items() if v["weight"] == "unit"])
        pre.binary_choice_ = verdicts
    return pre


def node_preprocessing(sample: pd.DataFrame, numeric: list[str], categorical: list[str],
                       id_column: str, cfg: JobConfig) -> Preprocessor | None:
    """The preprocessing :func:`fit_node` and every stability resample of the node fit on its
    sample (unsorted: sorted here as they sort it), once for all of them; None where the sample
    is too small to be fitted at all.

    It is a deterministic function of the sample's rows, and on a wide node it is much of a
    fit's work (the ``auto`` weightings' neighbour votes over every column): each resample
    refitted it.
    """
    rows = sorted_sample(sample, id_column)
    if len(rows) < cfg.embedding.n_neighbors + 2:
        return None
    return fit_node_preprocessor(rows, numeric, categorical, cfg)


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
             id_column: str, cfg: JobConfig, pre: Preprocessor | None = None) -> NodeFit:
    """Fit one node on its sample.

    Parameters
    ----------
    sample : pandas.DataFrame (n, ...) with the id, ``_u`` and the feature columns
    path : str
        The node's path (``"root"`` for the whole table).
    numeric, categorical : lists of feature column names
    id_column : str
    cfg : JobConfig
    pre : the node's preprocessing already fitted on this sample (:func:`node_preprocessing`),
        else fitted here

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
        fit.stop_reason = StopReason.SMALL_SAMPLE.stop(rows=n, need=need)
        return fit
    if pre is None:
        pre = fit_node_preprocessor(sample, numeric, categorical, cfg)
    X = pre.transform(sample)
    fit.preprocessor = pre
    fit.seconds["preprocess"] = time.perf_counter() - t0
    if not np.ptp(X, axis=0).any():
        fit.stop_reason = StopReason.NO_STRUCTURE.stop(
            what="every sample row has the same features")
        return fit

    keep_index = cfg.assign.method == "umap"
    seed = node_seed(cfg.seed, path)
    t = time.perf_counter()
    fit.projection = fit_projection(X, cfg.embedding, seed)
    Z = project(fit.projection, X)
    fit.seconds["reduce"] = time.perf_counter() - t
    t = time.perf_counter()
    reducer, emb = fit_embedding(Z, cfg.embedding, seed, keep_index=keep_index)
    fit.seconds["umap"] = time.perf_counter() - t
    if reducer is None and keep_index:
        fit.stop_reason = StopReason.NO_STRUCTURE.stop(
            what="too few distinct rows for umap.transform (assign.method umap)")
        return fit

    t = time.perf_counter()
    cl = fit_clusters(emb, cfg.clustering, prediction_data=keep_index)
    fit.seconds["hdbscan"] = time.perf_counter() - t
    fit.min_cluster_size = cl.min_cluster_size
    fit.persistence = cl.persistence
    fit.noise_share_sample = float(np.mean(cl.labels < 0))
    fit.sample_ids = sample[id_column].to_numpy()
    fit.sample_labels = cl.labels
    fit.sample_probabilities = cl.probabilities
    fit.sample_embedding = emb
    if cl.n_clusters < 2:
        fit.stop_reason = StopReason.NO_STRUCTURE.stop(
            what="all noise" if cl.n_clusters == 0 else "a single cluster")
        return fit
    if cfg.recursion.artefact_splits != "off":
        t = time.perf_counter()
        fit.artefacts = find_artefacts(sample, X, cl.labels, cl.n_clusters, pre,
                                       cfg.recursion.min_split_agreement)
        fit.seconds["artefacts"] = time.perf_counter() - t
    umap_assigner = UmapAssigner(reducer, cl.clusterer, cl.relabel) if keep_index else None
    _train_assigner(fit, Z, umap_assigner, cfg)
    if fit.assigner is not None:  # for drift in score (a refused split is never saved)
        fit.reference = fit_reference(sample, pre, Z, fit.sample_labels)
    fit.seconds["total"] = time.perf_counter() - t0
    return fit


def _train_assigner(fit: NodeFit, X: np.ndarray, umap_assigner: UmapAssigner | None,
                    cfg: JobConfig) -> None:
    """Train the node's assigner on its labelled sample X (n, d), in the space the embedding was
    fitted on (after the node's projection, if any), and measure its agreement on held-out rows;
    sets ``assigner``, ``agreement``, ``n_children`` and the child sizes.

    A probe trained without the held-out rows measures the agreement (labels only). The assigner
    that routes rows is then trained on the whole sample, and only when the split can be kept
    (agreement at least ``recursion.min_split_agreement``): a split refused as not reproducible
    routes nothing, and most zooms that find no sub-structure end there. Only the root's
    assigner places rows on a map (the embedding regressor); below it no map is kept.
    """
    t = time.perf_counter()
    labels, probs, emb = fit.sample_labels, fit.sample_probabilities, fit.sample_embedding
    n_clusters = int(labels.max()) + 1
    hold = holdout_mask(len(X), cfg.sample.holdout_fraction)
    if umap_assigner is not None:
        assigner = umap_assigner
        pred, _, _ = assigner.predict(X[hold])
        fit.agreement = float(adjusted_rand_score(labels[hold], pred))
    else:
        def trained(rows: np.ndarray | slice, place: bool):
            if cfg.assign.method == "knn":
                return KnnAssigner(cfg.assign.k).fit(X[rows], labels[rows], probs[rows], emb[rows])
            return ClassifierAssigner(cfg.assign.n_estimators, cfg.assign.max_depth,
                                      seed=node_seed(cfg.seed, fit.path)).fit(
                X[rows], labels[rows], probs[rows], emb[rows], place=place)

        pred, _, _ = trained(~hold, place=False).predict(X[hold], embedding=False)
        fit.agreement = float(adjusted_rand_score(labels[hold], pred))
        assigner = trained(slice(None), place=fit.path == ROOT) \
            if fit.agreement >= cfg.recursion.min_split_agreement else None
    fit.n_holdout = int(hold.sum())
    fit.seconds["assigner"] = fit.seconds.get("assigner", 0.0) + time.perf_counter() - t
    fit.assigner = assigner
    fit.n_children = n_clusters
    fit.child_sample_sizes = np.bincount(labels[labels >= 0], minlength=n_clusters).tolist()


def refinish(fit: NodeFit, sample: pd.DataFrame, id_column: str, labels: np.ndarray,
             probabilities: np.ndarray, persistence: list[float], min_cluster_size: int,
             dropped: dict[int, float], cfg: JobConfig) -> NodeFit:
    """The node with other clusters on the same embedding (a coarser ``min_cluster_size``,
    unstable clusters made noise): artefacts looked for again and the assigner retrained.

    Parameters
    ----------
    fit : a fitted node (its preprocessing, projection and embedding are kept)
    sample : DataFrame, the node's sample (any order; sorted as the fit sorted it)
    id_column : str
    labels, probabilities : ndarray (n,), the new clusters of the sorted sample, numbered by size
    persistence : list of float, one per new cluster
    min_cluster_size : int, the HDBSCAN setting that gave them
    dropped : dict, unstable cluster (numbered as at that setting) -> its stability
    cfg : JobConfig

    Returns
    -------
    NodeFit, a new object
    """
    from dataclasses import replace

    rows = sorted_sample(sample, id_column)
    X = fit.preprocessor.transform(rows)
    Z = project(fit.projection, X)
    n_clusters = int(labels.max()) + 1 if labels.size else 0
    out = replace(fit, sample_labels=labels, sample_probabilities=probabilities,
                  persistence=list(persistence), min_cluster_size=min_cluster_size,
                  dropped=dict(dropped), artefacts=[], n_children=0, child_sample_sizes=[],
                  noise_share_sample=float(np.mean(labels < 0)), seconds=dict(fit.seconds))
    if n_clusters < 2:
        out.assigner = None
        out.stop_reason = StopReason.NO_STRUCTURE.stop(what="a single cluster")
        return out
    if cfg.recursion.artefact_splits != "off":
        out.artefacts = find_artefacts(rows, X, labels, n_clusters, fit.preprocessor,
                                       cfg.recursion.min_split_agreement)
    umap_assigner = None
    if isinstance(fit.assigner, UmapAssigner):  # same embedding; HDBSCAN refitted with its data
        cl = fit_clusters(fit.sample_embedding, cfg.clustering, prediction_data=True,
                          min_cluster_size=min_cluster_size)
        keep = np.full(cl.n_clusters + 1, -1, dtype=np.int64)
        kept = [k for k in range(cl.n_clusters) if k not in dropped]
        keep[np.array(kept, dtype=np.int64) + 1] = np.arange(len(kept))
        umap_assigner = fit.assigner.with_clusters(cl.clusterer, keep[cl.relabel + 1])
    _train_assigner(out, Z, umap_assigner, cfg)
    out.reference = fit_reference(rows, fit.preprocessor, Z, labels) \
        if out.assigner is not None else None
    return out


def assign_node_rows(fit: NodeFit, rows: pd.DataFrame | Columns, embedding: bool | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Children of ``rows`` (all inside this node; a frame or its :class:`Columns`): labels,
    probability, embedding (None unless ``embedding``; by default the root's rows are placed on
    its map and no other node's: only the first level's map is kept)."""
    place = fit.path == ROOT if embedding is None else embedding
    return fit.assigner.predict(node_inputs(fit, rows), embedding=place)


#: How much of a projected node's scaled rows (float32) :func:`node_inputs` holds at a time.
#: Taken whole, a 50,000-row piece of 500 features made a 100 MB array and a centred copy of
#: it for every piece and pass, each mapped afresh and its pages faulted in by the kernel
#: (glibc maps anything above 32 MiB on its own); a few MiB come from the heap again and again.
_PROJECTED_CHUNK_BYTES = 4 << 20


def node_inputs(fit: NodeFit, rows: pd.DataFrame | Columns) -> np.ndarray:
    """What the node's assigner reads for ``rows`` (a frame or its :class:`Columns`): the
    preprocessed features, projected where the node has a projection, a chunk of rows at a
    time (:data:`_PROJECTED_CHUNK_BYTES`; row for row the same values as all rows at once).

    Returns
    -------
    ndarray (n, k) float32
    """
    pre = fit.preprocessor
    if fit.projection is None:
        return pre.transform(rows)
    n = len(rows)
    step = max(1, _PROJECTED_CHUNK_BYTES // (4 * max(1, len(pre.feature_names_out_))))
    if n <= step:
        return fit.projection.transform(pre.transform(rows), overwrite=True)
    out = np.empty((n, fit.projection.components_.shape[0]), dtype=np.float32)
    for start in range(0, n, step):
        stop = min(n, start + step)
        chunk = rows.take(np.arange(start, stop)) if isinstance(rows, Columns) \
            else rows.iloc[start:stop]
        out[start:stop] = fit.projection.transform(pre.transform(chunk), overwrite=True)
    return out
