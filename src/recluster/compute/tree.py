"""The cluster tree: which nodes get split, why the others stop, and ``tree.json``'s records.

Pure bookkeeping over counts and fitted nodes; no data, no Dask.

:class:`TreeNode` is the record of one node: everything known about it (size, sample
thresholds, stability, fit summary, held-out agreement, explanation quality, the split kept,
why it stops), from which ``tree.json`` is written. Decisions return values, not free text:
:func:`split_refusal` and :func:`stability_verdict` a :class:`~recluster.compute.stops.Stop`
(a :class:`~recluster.compute.stops.StopReason` code with its sentence) or None,
:func:`accept_split` a :class:`SplitDecision`.

Stopping rules, in the order they apply (each recorded as the node's ``stop_reason`` and
``stop_code``):

* before fitting (:func:`split_refusal`): ``recursion.max_depth``; fewer rows than
  ``recursion.min_node_rows``, the smallest node that is segmented (the whole table included);
  optionally a share of all rows under ``recursion.min_node_share`` (off by default: sizes are
  relative to the node, so a 1,500-row child of a huge table is treated like a 1,500-row table);
* after fitting (:func:`accept_split`), on evidence from the node's own sample: no sub-structure
  (fewer than two clusters), clusters the features cannot reproduce on held-out rows,
  fewer than two children of ``recursion.min_child_rows``;
* after the stability refits (:func:`stability_verdict`): clusters that do not survive
  resampling are made noise, and a split left with fewer than two stable clusters is dropped;
  a zoom under ``stability.small_node_rows`` sample rows that this refuses is split all the
  same when its rows hold more than one Gaussian (:func:`gaussian_split`,
  :mod:`recluster.compute.evidence`): at that size resampling stability is weak evidence;
* per child (in the pipeline): unstable children and artefact children (one discrete column
  separates them, :mod:`recluster.compute.artefacts`) are not zoomed into.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recluster.compute.evidence import GaussianNullTest
from recluster.compute.node import NodeFit
from recluster.compute.paths import ROOT, NodePath
from recluster.compute.stops import Stop, StopReason, score_text
from recluster.config import RecursionConfig, StabilityConfig

__all__ = ["SplitDecision", "Stop", "StopReason", "TreeNode", "accept_split", "gaussian_split",
           "split_refusal", "stability_verdict"]


@dataclass
class TreeNode:
    """One node of the tree and what is known about it (``path`` in the text form of
    :mod:`recluster.compute.paths`; ``children`` likewise).

    ``split`` is the fit kept for the node when it was split (None for a leaf), ``agreement``
    that fit's held-out ARI, ``seconds`` the fit's timings (for any fitted node) and
    ``classifier`` the quality of the one-vs-rest explanation model of this node as a child.
    """

    path: str
    depth: int
    size: int
    share: float
    persistence: float | None = None
    stability: float | None = None
    stop_reason: Stop | None = None
    children: list[str] = field(default_factory=list)
    fit: dict[str, Any] | None = None
    classifier: dict[str, Any] | None = None
    sample_threshold: dict[str, float] | None = None
    sample_target: int | None = None  # rows the node's sample was drawn to (sample.level_size)
    artefact: str | None = None
    split: NodeFit | None = None
    agreement: float | None = None
    seconds: dict[str, float] | None = None

    def record(self) -> dict[str, Any]:
        """The node's ``tree.json`` entry (JSON-ready)."""
        return {
            "path": self.path,
            "parent": _text(NodePath.parse(self.path).parent),
            "depth": self.depth,
            "size": self.size,
            "share": round(self.share, 8),
            "persistence": self.persistence,
            "stability": self.stability,
            "n_children": len(self.children),
            "children": list(self.children),
            "stop_reason": None if self.stop_reason is None else self.stop_reason.text,
            "stop_code": None if self.stop_reason is None else self.stop_reason.code.value,
            "artefact": self.artefact,
            "fit": self.fit,
            "classifier": self.classifier,
        }


def _text(path: NodePath | None) -> str | None:
    return None if path is None else str(path)


def split_refusal(node: TreeNode, total_rows: int, cfg: RecursionConfig) -> Stop | None:
    """Why ``node`` must not be fitted for children, or None if it may be."""
    if node.depth >= cfg.max_depth:
        return StopReason.MAX_DEPTH.stop(max_depth=cfg.max_depth)
    if node.size < cfg.min_node_rows:
        return StopReason.TOO_SMALL.stop(rows=node.size, min_node_rows=cfg.min_node_rows)
    # (the share itself against the setting, as the sentence says it: 350 of 5,000 rows at
    # min_node_share 0.07 was below 0.07 * 5000 = 350.00000000000006, and "share 0.0700 is below
    # recursion.min_node_share=0.07")
    if node.depth > 0 and cfg.min_node_share and node.size / total_rows < cfg.min_node_share:
        return StopReason.SMALL_SHARE.stop(share=node.size / total_rows,
                                           min_node_share=cfg.min_node_share)
    return None


@dataclass(frozen=True)
class SplitDecision:
    """Whether a fitted split is kept: true (``accepted``) when it is, else false with the
    :class:`Stop` that refuses it."""

    stop: Stop | None = None

    @property
    def accepted(self) -> bool:
        return self.stop is None

    def __bool__(self) -> bool:
        return self.accepted


def accept_split(fit: NodeFit, node_rows: int, cfg: RecursionConfig) -> SplitDecision:
    """Whether a fitted split is kept: it has sub-structure, reproducible on held-out rows, not
    only artefact clusters (in a zoom), and at least two children of ``recursion.min_child_rows``
    (estimated from the sample).

    Returns
    -------
    SplitDecision, true when the split is kept; otherwise its ``stop`` says why not.
    """
    if fit.stop_reason:
        return SplitDecision(fit.stop_reason)
    if fit.agreement is not None and fit.agreement < cfg.min_split_agreement:
        return SplitDecision(StopReason.NOT_REPRODUCIBLE.stop(
            ari=fit.agreement, min_split_agreement=cfg.min_split_agreement))
    if (cfg.artefact_splits == "no_recurse" and fit.path != ROOT and fit.artefacts
            and all(fit.artefacts)):
        return SplitDecision(StopReason.ARTEFACT_SPLIT.stop(artefacts="; ".join(fit.artefacts)))
    scale = node_rows / max(1, fit.n_sample)
    big = [s for s in fit.child_sample_sizes if s * scale >= cfg.min_child_rows]
    if len(big) < 2:
        return SplitDecision(StopReason.SMALL_CHILDREN.stop(
            min_child_rows=cfg.min_child_rows, sizes=fit.child_sample_sizes))
    return SplitDecision()


def stability_verdict(stability: list[float], cfg: StabilityConfig,
                      zoom: bool = True) -> tuple[list[int], Stop | None]:
    """Which fitted clusters to make noise for their stability, and why the split is dropped.

    Only a zoom (a node below the root) is judged this way: its clusters made noise stay in
    their parent's segment, and a zoom that finds no stable structure leaves the parent as it
    was. The root's clusters are the segmentation itself; unstable ones are kept and flagged
    (and not zoomed into), since as noise their rows would be in no segment at all.

    Parameters
    ----------
    stability : list of float, one score per fitted cluster (NaN counts as unstable)
    cfg : StabilityConfig
    zoom : bool, False for the root

    Returns
    -------
    drop : list of int, clusters to turn into noise (empty unless ``unstable`` is ``noise``)
    reason : Stop or None, why the split is dropped when fewer than two clusters are stable
    """
    if cfg.unstable != "noise" or not zoom:
        return [], None
    unstable = [k for k, v in enumerate(stability) if not v >= cfg.stable]
    if len(stability) - len(unstable) < 2:
        shown = ", ".join(score_text(v, cfg.stable) for v in stability)
        return unstable, StopReason.NO_STABLE_STRUCTURE.stop(stable=cfg.stable, scores=shown)
    return unstable, None


def gaussian_split(test: GaussianNullTest, cfg: StabilityConfig) -> bool:
    """Whether a small zoom that resampling refuses is split all the same: its rows are more
    clustered than Gaussians of their covariance (p-value at most ``stability.null_alpha``).
    Resampling stability is weak evidence at that size; the split keeps its own clusters.
    """
    return test.p_value <= cfg.null_alpha
