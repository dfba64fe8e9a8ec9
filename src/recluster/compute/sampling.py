"""Hash-drawn samples: which rows every fit sees, independent of how the input is partitioned.

A row's draw is ``u = hash(id, salt) / 2**64``, uniform on [0, 1); a node keeps the rows with
``u < threshold(node, stratum)``. Thresholds come from exact counts, so the sample depends only
on the ids, the seed and the counts, never on partition boundaries or task order.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd


def salt_for(seed: int) -> str:
    """The 16-character siphash key derived from the run's seed."""
    return f"recluster{seed:07d}"[-16:].rjust(16, "0")


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective scramble of uint64 values."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def id_hashes(ids: pd.Series | np.ndarray, seed: int = 0) -> np.ndarray:
    """A 64-bit hash of each id's value, keyed by ``seed``.

    Defined on values, never on memory: integers of any width hash as their value (``int8`` 5
    and ``int64`` 5 alike), text (every string flavour, and binary ids as hex, see
    :mod:`recluster.compute.schema`) by SipHash of its UTF-8 bytes. So the hash of a row does
    not depend on which partition, file or process it is read in.

    Parameters
    ----------
    ids : pandas.Series or numpy.ndarray, shape (n,)
    seed : int

    Returns
    -------
    numpy.ndarray of uint64, shape (n,)
    """
    s = pd.Series(ids).reset_index(drop=True)
    if pd.api.types.is_integer_dtype(s.dtype) and not isinstance(s.dtype, pd.ArrowDtype) \
            and not s.hasnans:
        s = pd.Series(s.to_numpy().astype(np.uint64))  # two's complement: width-independent
    elif not pd.api.types.is_numeric_dtype(s.dtype):
        s = s.astype(object)
    return pd.util.hash_pandas_object(s, index=False, hash_key=salt_for(seed)).to_numpy(
        dtype=np.uint64)


def hash_uniform(ids: pd.Series, seed: int) -> np.ndarray:
    """Uniform draws in [0, 1) from ids, salted by ``seed``.

    pandas' hash keys only string data, so the seed is mixed in afterwards for every dtype.

    Parameters
    ----------
    ids : pandas.Series, shape (n,)
    seed : int

    Returns
    -------
    numpy.ndarray of float64, shape (n,)
    """
    h = id_hashes(ids, seed)
    salt = _mix(np.array([seed], dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15))[0]
    with np.errstate(over="ignore"):
        z = _mix(h ^ salt)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


FOLDED = "__other strata__"


def fold_strata(counts: Mapping[object, int], max_strata: int) -> dict[object, object]:
    """Which stratum each stratum is sampled as: the ``max_strata - 1`` largest keep their own,
    the rest share one (:data:`FOLDED`). Ties go by the stratum's text, so it is deterministic.

    Returns
    -------
    dict stratum -> stratum it is sampled as (itself, or FOLDED)
    """
    present = [s for s, c in counts.items() if c > 0]
    if len(present) <= max_strata:
        return {s: s for s in present}
    ranked = sorted(present, key=lambda s: (-counts[s], str(s)))
    keep = set(ranked[: max_strata - 1])
    return {s: s if s in keep else FOLDED for s in present}


def allocate(counts: Mapping[object, int], size: int, min_per_stratum: int,
             max_strata: int | None = None) -> dict[object, float]:
    """Per-stratum keep-thresholds for a node of the given stratum counts.

    Proportional allocation of ``size`` rows, each stratum raised to at least
    ``min(count, min_per_stratum, size // number of strata)`` rows so small strata are
    represented without the floors ever adding more than ``size`` rows. Beyond ``max_strata``
    strata the smallest are folded into one (:func:`fold_strata`) and share its threshold.

    Parameters
    ----------
    counts : mapping stratum -> number of rows of the node in that stratum
    size : int
        Target sample size of the node.
    min_per_stratum : int
    max_strata : int or None
        None: no folding.

    Returns
    -------
    dict stratum -> threshold in (0, 1], for every stratum with rows
    """
    as_ = fold_strata(counts, max_strata) if max_strata else {s: s for s, c in counts.items()
                                                               if c > 0}
    grouped: dict[object, int] = {}
    for s, g in as_.items():
        grouped[g] = grouped.get(g, 0) + counts[s]
    total = sum(grouped.values())
    floor = min(min_per_stratum, size // max(1, len(grouped)))
    out: dict[object, float] = {}
    for g, c in grouped.items():
        if total <= size:
            out[g] = 1.0
            continue
        want = max(size * c / total, min(c, floor))
        out[g] = min(1.0, want / c)
    return {s: out[g] for s, g in as_.items()}


def level_targets(node_rows: Mapping[str, int], size: int, level_size: int | None,
                  min_node_size: int) -> dict[str, int]:
    """Sample-size target of each node fitted at one level, from a budget the level shares.

    Without a budget (``level_size`` None) every node targets ``size`` rows, as a lone node
    does. With one, node ``i`` of ``n_i`` rows targets
    ``max(min_node_size, level_size * n_i / sum(n))``, capped by ``size`` and by ``n_i``: a
    level of many nodes fits as many rows in all as ``level_size`` (plus the floors), not
    ``size`` per node. ``level_size >= size`` (config), so a level of one node (the root)
    targets ``min(size, n)`` rows either way.

    Parameters
    ----------
    node_rows : mapping node path -> number of rows of the node, shape (nodes,)
    size : int
        ``sample.size``: no node's target exceeds it.
    level_size : int or None
        ``sample.level_size``: rows shared by all nodes of the level; None: no budget.
    min_node_size : int
        ``sample.min_node_size``: floor of a node's target (before the cap by its rows).

    Returns
    -------
    dict node path -> target sample rows (int, 0 <= target <= min(size, rows))
    """
    total = sum(max(0, n) for n in node_rows.values())
    out: dict[str, int] = {}
    for path, n in node_rows.items():
        n = max(0, int(n))
        want = size if level_size is None or total == 0 else \
            max(min_node_size, level_size * n / total)
        out[path] = int(min(size, n, round(want)))
    return out


#: A sample drawn ahead (by the pass before the one that would draw it) keeps rows up to this
#: many times each threshold estimated from the parent's sample, plus a few rows' worth: the
#: counts of a full pass differ from the estimate by sampling error (a few per cent for a
#: child of a thousand sample rows) and by the assigner's disagreements with the clustering.
AHEAD_MARGIN = 1.25


def ahead_bound(threshold: float, rows: float) -> float:
    """The keep-threshold a sample drawn ahead uses for a node whose threshold is estimated as
    ``threshold`` from an estimate of ``rows`` rows: an upper bound of the exact one, which
    the exact counts then thin to (:func:`covers`)."""
    return min(1.0, AHEAD_MARGIN * threshold + 32 / max(rows, 1.0))


def covers(bounds: Mapping[tuple[str, object], float],
           thresholds: Mapping[tuple[str, object], float]) -> bool:
    """Whether rows drawn with the keep-thresholds ``bounds`` hold every row the exact
    ``thresholds`` keep (both keyed by (node path, stratum)): then thinning them to
    ``thresholds`` gives the very sample a pass over every row draws."""
    return all(key in bounds and v <= bounds[key] for key, v in thresholds.items())
