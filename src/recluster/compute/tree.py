"""The cluster tree: which nodes get split, why the others stop, and ``tree.json``'s records.

Pure bookkeeping over counts and fitted nodes; no data, no Dask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recluster.compute.node import NodeFit
from recluster.compute.routing import ROOT
from recluster.config import RecursionConfig


def parent_of(path: str) -> str | None:
    if path == ROOT:
        return None
    return ROOT if "." not in path else path.rsplit(".", 1)[0]


def child_path(parent: str, k: int) -> str:
    return str(k) if parent == ROOT else f"{parent}.{k}"


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

    def record(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "parent": parent_of(self.path),
            "depth": self.depth,
            "size": self.size,
            "share": round(self.share, 8),
            "persistence": self.persistence,
            "stability": self.stability,
            "n_children": len(self.children),
            "children": list(self.children),
            "stop_reason": self.stop_reason,
            "fit": self.fit,
            "classifier": self.classifier,
        }


def split_refusal(node: TreeNode, total_rows: int, cfg: RecursionConfig) -> str | None:
    """Why ``node`` must not be fitted for children, or None if it may be."""
    if node.depth >= cfg.max_depth:
        return f"max_depth {cfg.max_depth} reached"
    if node.size < cfg.min_node_rows:
        return f"{node.size} rows is below recursion.min_node_rows={cfg.min_node_rows}"
    if node.depth > 0 and node.size < cfg.min_node_share * total_rows:
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
    scale = node_rows / max(1, fit.n_sample)
    big = [s for s in fit.child_sample_sizes if s * scale >= cfg.min_child_rows]
    if len(big) < 2:
        return (f"fewer than 2 children would reach recursion.min_child_rows={cfg.min_child_rows}"
                f" (sample sizes {fit.child_sample_sizes})")
    return None
