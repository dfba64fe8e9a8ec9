"""Node paths: the one home of how a node of the cluster tree is named, parsed and ordered.

A node is named by the child numbers on the way down from the root. Its text form, used in
every output (the labels' ``cluster`` column, ``tree.json``, ``models/<path>/``, the SHAP and
profile tables, the report's map), is::

    root          the whole table
    root.2        cluster 2 of the whole table
    root.2.10     sub-cluster 10 of cluster 2

The text always starts with ``root``, so no spreadsheet or CSV reader takes it for a number or a
date: bare ``2.1`` and ``2.10`` are both read as the number 2.1 by Excel, LibreOffice and
``pandas.read_csv`` (and ``2.1`` as 2 January in a German locale), which merged two clusters.
A node's ancestors are the text prefixes that end at a ``.``, and sorting by :class:`NodePath`
is the natural order, depth first (``root.2.9`` before ``root.2.10``).

Nothing else in recluster splits or joins path text: parse with :meth:`NodePath.parse`, write
with ``str(path)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

ROOT = "root"
SEP = "."
_TEXT = re.compile(r"root(?:\.(?:0|[1-9][0-9]*))*")
#: The largest child number: a level of the labels (``level_<d>``) is an Int32 column, where a
#: larger number would wrap round to a negative one.
MAX_CHILD = 2**31 - 1


@dataclass(frozen=True, order=True)
class NodePath:
    """The path of a node: its child numbers from the root (``()`` for the root).

    Ordered naturally (the root first, then depth first by child number), hashable, and
    written by ``str()`` in the text form of the module docstring.
    """

    parts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if any(not isinstance(k, int) or isinstance(k, bool) or k < 0 for k in self.parts):
            raise ValueError(f"a node path is made of child numbers >= 0, not {self.parts!r}")
        if any(k > MAX_CHILD for k in self.parts):
            raise ValueError(f"node path {str(self)!r}: a child number above {MAX_CHILD}, the "
                             f"largest the labels' level columns (Int32) hold")

    # ------------------------------------------------------------------ text
    @classmethod
    def parse(cls, text: object) -> NodePath:
        """The path written as ``text`` (``root``, ``root.2``, ``root.2.10``, ...).

        Raises
        ------
        ValueError
            naming the text, for anything else: bare numbers (``2.1``, the form of recluster
            before labels schema version 2), empty parts, signs, leading zeros, spaces.
        """
        if isinstance(text, NodePath):
            return text
        if not isinstance(text, str) or not _TEXT.fullmatch(text):
            raise ValueError(f"not a node path: {text!r} (a node path is '{ROOT}' or '{ROOT}' "
                             f"followed by child numbers, each after a '{SEP}', e.g. "
                             f"'{ROOT}{SEP}2{SEP}10')")
        return cls(tuple(int(k) for k in text.split(SEP)[1:]))

    def __str__(self) -> str:
        return SEP.join([ROOT, *map(str, self.parts)])

    @property
    def text(self) -> str:
        """The text form (``str(self)``)."""
        return str(self)

    @property
    def label(self) -> str:
        """How people call the node in sentences: ``2.10`` ("cluster 2.10"), ``root`` for the
        root. For display only: outputs hold :attr:`text`."""
        return SEP.join(map(str, self.parts)) if self.parts else ROOT

    # ------------------------------------------------------------------ tree
    @property
    def depth(self) -> int:
        """0 for the root, 1 for a first-level cluster, ..."""
        return len(self.parts)

    @property
    def is_root(self) -> bool:
        return not self.parts

    @property
    def index(self) -> int | None:
        """The node's number among its parent's children (None for the root)."""
        return self.parts[-1] if self.parts else None

    @property
    def parent(self) -> NodePath | None:
        """The parent node, None for the root."""
        return NodePath(self.parts[:-1]) if self.parts else None

    def child(self, k: int) -> NodePath:
        """Child number ``k`` (0-based, as the node's clustering numbers it)."""
        return NodePath((*self.parts, int(k)))

    def children(self, n: int) -> list[NodePath]:
        """The first ``n`` children, in order."""
        return [self.child(k) for k in range(n)]

    def ancestor(self, depth: int) -> NodePath:
        """This node's ancestor at ``depth`` (itself at its own depth).

        Raises
        ------
        ValueError if ``depth`` is negative or deeper than the node.
        """
        if not 0 <= depth <= self.depth:
            raise ValueError(f"{self} has no ancestor at depth {depth}")
        return NodePath(self.parts[:depth])

    def is_ancestor_of(self, other: NodePath, strict: bool = True) -> bool:
        """Whether ``other`` lies below this node (or is it, with ``strict=False``)."""
        n = len(self.parts)
        return other.parts[:n] == self.parts and (len(other.parts) > n or not strict)

    # ------------------------------------------------------------------ arrays of text
    def child_texts(self, labels: np.ndarray) -> np.ndarray:
        """The text of child ``labels[i]`` for every row (``labels >= 0``; others get this node).

        Parameters
        ----------
        labels : ndarray (n,) of int, a child number per row, negative for noise

        Returns
        -------
        ndarray (n,) of object (str)
        """
        labels = np.asarray(labels)
        out = np.full(len(labels), str(self), dtype=object)
        for k in np.unique(labels[labels >= 0]):
            out[labels == k] = str(self.child(int(k)))
        return out

    def covers(self, texts: np.ndarray) -> np.ndarray:
        """Which rows' path text (``texts``, e.g. the ``cluster`` column) is this node or lies
        below it.

        Parameters
        ----------
        texts : ndarray (n,) of str

        Returns
        -------
        ndarray (n,) of bool
        """
        if self.is_root:
            return np.ones(len(texts), dtype=bool)
        own, below = str(self), str(self) + SEP
        return np.fromiter((t == own or t.startswith(below) for t in texts), dtype=bool,
                           count=len(texts))


ROOT_PATH = NodePath()


def is_path_text(text: object) -> bool:
    """Whether ``text`` is a node path in its text form (what :meth:`NodePath.parse` accepts)."""
    return isinstance(text, str) and _TEXT.fullmatch(text) is not None


def path_key(text: str) -> NodePath:
    """Sort key for path texts: ``sorted(paths, key=path_key)`` is the natural tree order."""
    return NodePath.parse(text)


def sorted_paths(texts: Iterable[str]) -> list[str]:
    """Path texts in the natural tree order (root first, ``root.2.9`` before ``root.2.10``)."""
    return sorted(texts, key=path_key)
