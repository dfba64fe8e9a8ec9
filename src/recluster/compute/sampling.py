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
    h = pd.util.hash_pandas_object(ids.reset_index(drop=True), index=False, hash_key=salt_for(seed))
    salt = _mix(np.array([seed], dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15))[0]
    with np.errstate(over="ignore"):
        z = _mix(h.to_numpy(dtype=np.uint64) ^ salt)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def allocate(counts: Mapping[object, int], size: int, min_per_stratum: int) -> dict[object, float]:
    """Per-stratum keep-thresholds for a node of the given stratum counts.

    Proportional allocation of ``size`` rows, each stratum raised to at least
    ``min(count, min_per_stratum)`` rows so small strata are represented.

    Parameters
    ----------
    counts : mapping stratum -> number of rows of the node in that stratum
    size : int
        Target sample size of the node.
    min_per_stratum : int

    Returns
    -------
    dict stratum -> threshold in (0, 1]
    """
    total = sum(counts.values())
    out: dict[object, float] = {}
    for stratum, c in counts.items():
        if c <= 0:
            continue
        if total <= size:
            out[stratum] = 1.0
            continue
        want = max(size * c / total, min(c, min_per_stratum))
        out[stratum] = min(1.0, want / c)
    return out
