"""The cluster tree: which nodes get split, why the others stop, and ``tree.json``'s records.

Pure bookkeeping over counts and fitted nodes; no data, no Dask.

Stopping rules, in the order they apply (each recorded as the node's ``stop_reason``):

* before fitting (:func:`split_refusal`): ``recursion.max_depth``; fewer rows than
  ``recursion.min_node_rows``, the smallest node that is segmented (the whole table included);
  optionally a share of all rows under ``recursion.min_node_share`` (off by default: sizes are
  relative to the node, so a 1,500-row child of a huge table is treated like a 1,500-row table);
* after fitting (:func:`accept_split`), on evidence from the node's own sample: no sub-structure
  (fewer than two clusters), clusters the features cannot reproduce on held-out rows,
  fewer than two children of ``recursion.min_child_rows``;
* after the stability refits (:func:`stability_verdict`): clusters that do not survive
  resampling are made noise, and a split left with fewer than two stable clusters is dropped;
* per child (in the pipeline): unstable children and artefact children (one discrete column
  separates them, :mod:`recluster.compute.artefacts`) are not zoomed into.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recluster.compute.node import NodeFit
from recluster.compute.paths import ROOT, NodePath
from recluster.config import RecursionConfig, StabilityConfig


@dataclass
class TreeNode:
    path: str
    depth: int
    size: int
    share: float
    persistence: float | None = None
    stability: float | None = None
    probability_mean: float | None = None
    stop_reason: str | None = None
    children: list[str] = field(default_factory=list)
    fit: dict[str, Any] | None = None
    classifier: dict[str, Any] | None = None
    sample_threshold: dict[str, float] | None = None
    artefact: str | None = None

    def record(self) -> dict[str, Any]:
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
            "stop_reason": self.stop_reason,
            "artefact": self.artefact,
            "fit": self.fit,
            "classifier": self.classifier,
        }


def _text(path: NodePath | None) -> str | None:
    return None if path is None else str(path)


def split_refusal(node: TreeNode, total_rows: int, cfg: RecursionConfig) -> str | None:
    """Why ``node`` must not be fitted for children, or None if it may be."""
    if node.depth >= cfg.max_depth:
        return f"max_depth {cfg.max_depth} reached"
    if node.size < cfg.min_node_rows:
        return (f"too small to segment: {node.size} rows is below recursion.min_node_rows="
                f"{cfg.min_node_rows}, the smallest node recluster splits")
    if node.depth > 0 and cfg.min_node_share and node.size < cfg.min_node_share * total_rows:
        return (f"share {node.size / total_rows:.4f} is below "
                f"recursion.min_node_share={cfg.min_node_share}")
    return None


def accept_split(fit: NodeFit, node_rows: int, cfg: RecursionConfig) -> str | None:
    """Check a fitted split against the minimum child size (estimated from the sample).

    Returns the stop reason if the split is dropped, else None.
    """
    if fit.stop_reason:
        return fit.stop_reason
    if fit.agreement is not None and fit.agreement < cfg.min_split_agreement:
        return (f"no reproducible sub-structure: held-out ARI {fit.agreement:.3f} is below "
                f"recursion.min_split_agreement={cfg.min_split_agreement}")
    if (cfg.artefact_splits == "no_recurse" and fit.path != ROOT and fit.artefacts
            and all(fit.artefacts)):
        return ("artefact split: every cluster is one level of a discrete column ("
                + "; ".join(fit.artefacts) + "), which the other features do not separate")
    scale = node_rows / max(1, fit.n_sample)
    big = [s for s in fit.child_sample_sizes if s * scale >= cfg.min_child_rows]
    if len(big) < 2:
        return (f"fewer than 2 children would reach recursion.min_child_rows={cfg.min_child_rows}"
                f" (sample sizes {fit.child_sample_sizes})")
    return None


def stability_verdict(stability: list[float], cfg: StabilityConfig,
                      zoom: bool = True) -> tuple[list[int], str | None]:
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
    reason : str or None, the stop reason when fewer than two clusters are stable
    """
    if cfg.unstable != "noise" or not zoom:
        return [], None
    unstable = [k for k, v in enumerate(stability) if not v >= cfg.stable]
    if len(stability) - len(unstable) < 2:
        shown = ", ".join(f"{v:.2f}" for v in stability)
        return unstable, (f"no stable sub-structure: fewer than 2 of the clusters reach "
                          f"stability.stable={cfg.stable} under resampling ({shown})")
    return unstable, None
