"""Unit tests of :mod:`recluster.compute.sampling`: hash draws (uniform, partition- and
flavour-independent, seeded) and the stratified allocation. No cluster.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recluster.compute.sampling import allocate, hash_uniform, level_targets
from recluster.config import SampleConfig

pytestmark = pytest.mark.timeout(120)


def _ks_uniform(u: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance between the sample ``u`` and Uniform[0, 1)."""
    s = np.sort(u)
    n = s.size
    upper = np.arange(1, n + 1) / n - s
    lower = s - np.arange(n) / n
    return float(max(upper.max(), lower.max()))


def _string_ids(n: int, seed: int = 0) -> pd.Series:
    rng = np.random.default_rng(seed)
    return pd.Series([f"user-{v:012x}" for v in rng.choice(2**40, size=n, replace=False)])


ID_KINDS = {
    "int64": lambda n: pd.Series(np.arange(n, dtype=np.int64) * 7 + 1_000_003),
    "string": _string_ids,
}


@pytest.mark.parametrize("kind", sorted(ID_KINDS))
def test_hash_uniform_in_unit_interval_and_uniform(kind):
    n = 100_000
    u = hash_uniform(ID_KINDS[kind](n), seed=3)
    assert u.shape == (n,)
    assert u.dtype == np.float64
    assert np.all(u >= 0.0) and np.all(u < 1.0)
    assert abs(u.mean() - 0.5) < 0.02
    # KS critical value at alpha = 0.001 is about 1.95 / sqrt(n).
    assert _ks_uniform(u) < 1.95 / np.sqrt(n)
    # Deciles hold about a tenth each.
    counts = np.bincount((u * 10).astype(int), minlength=10)
    assert np.all(np.abs(counts / n - 0.1) < 0.01)


@pytest.mark.parametrize("kind", sorted(ID_KINDS))
def test_hash_uniform_is_partition_independent(kind):
    ids = ID_KINDS[kind](20_000)
    whole = pd.Series(hash_uniform(ids, seed=11), index=ids.to_numpy())

    # Shuffle, give the series a non-default index, and split into uneven chunks.
    rng = np.random.default_rng(1)
    shuffled = ids.iloc[rng.permutation(len(ids))]
    shuffled.index = rng.integers(0, 10**9, size=len(shuffled))
    cuts = np.sort(rng.choice(np.arange(1, len(ids)), size=9, replace=False))
    parts = []
    for chunk in np.split(np.arange(len(shuffled)), cuts):
        part = shuffled.iloc[chunk]
        parts.append(pd.Series(hash_uniform(part, seed=11), index=part.to_numpy()))
    pieced = pd.concat(parts)

    assert len(pieced) == len(whole)
    np.testing.assert_array_equal(pieced.loc[whole.index].to_numpy(), whole.to_numpy())
    # And a single id hashed alone matches too.
    one = ids.iloc[[123]]
    assert hash_uniform(one, seed=11)[0] == whole.iloc[123]


def test_hash_uniform_string_flavours_agree():
    ids = _string_ids(1_000)
    base = hash_uniform(ids, seed=5)
    np.testing.assert_array_equal(hash_uniform(ids.astype("string"), seed=5), base)
    np.testing.assert_array_equal(hash_uniform(ids.astype("category"), seed=5), base)


def test_hash_uniform_seed_changes_draws_for_string_ids():
    ids = _string_ids(10_000)
    a, b = hash_uniform(ids, seed=0), hash_uniform(ids, seed=1)
    assert np.mean(a == b) < 0.001
    # Draws under two seeds are unrelated, not merely permuted or shifted.
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.05
    np.testing.assert_array_equal(hash_uniform(ids, seed=0), a)  # but reproducible


def test_hash_uniform_seed_changes_draws_for_int_ids():
    ids = ID_KINDS["int64"](10_000)
    a, b = hash_uniform(ids, seed=0), hash_uniform(ids, seed=1)
    assert np.mean(a == b) < 0.001


def test_allocate_proportional_when_population_large():
    counts = {"a": 600_000, "b": 300_000, "c": 100_000}
    size = 10_000
    t = allocate(counts, size, min_per_stratum=50)
    assert set(t) == set(counts)
    assert all(0.0 < v <= 1.0 for v in t.values())
    expected = sum(t[s] * c for s, c in counts.items())
    assert abs(expected - size) <= 0.01 * size
    # Proportional: every stratum gets the same rate when no minimum binds.
    assert max(t.values()) - min(t.values()) < 1e-12


def test_allocate_raises_small_strata_to_minimum():
    counts = {"big": 1_000_000, "mid": 2_000, "tiny": 10, "empty": 0}
    size, mps = 5_000, 100
    t = allocate(counts, size, mps)
    assert all(0.0 < v <= 1.0 for v in t.values())
    for s, c in counts.items():
        if c > 0:
            assert t[s] * c >= min(c, mps) - 1e-9, s
    assert t["tiny"] == 1.0
    assert "empty" not in t  # a stratum without rows gets no threshold (nothing to draw)
    expected = sum(t[s] * c for s, c in counts.items() if s in t)
    # The minimums only add rows: at most one minimum per stratum on top of ``size``.
    assert size - 1e-6 <= expected <= size + mps * len(counts)


def test_allocate_small_population_takes_everything():
    counts = {"x": 30, "y": 50, None: 19}
    t = allocate(counts, size=100, min_per_stratum=0)
    assert t == {"x": 1.0, "y": 1.0, None: 1.0}


def test_allocate_thresholds_draw_the_expected_sample():
    """Thresholds applied to hash draws give about ``threshold * count`` rows per stratum."""
    n = 200_000
    ids = _string_ids(n, seed=7)
    rng = np.random.default_rng(7)
    strata = rng.choice(["a", "b", "c", "rare"], size=n, p=[0.6, 0.3, 0.0995, 0.0005])
    counts = pd.Series(strata).value_counts().to_dict()
    t = allocate(counts, size=4_000, min_per_stratum=60)
    u = hash_uniform(ids, seed=2)
    limit = pd.Series(strata).map(t).to_numpy()
    kept = pd.Series(strata[u < limit]).value_counts()
    for s, c in counts.items():
        want = t[s] * c
        # Binomial count: within 5 standard deviations (or exact when the threshold is 1).
        sd = np.sqrt(c * t[s] * (1 - t[s]))
        assert abs(kept.get(s, 0) - want) <= 5 * sd + 1e-9, (s, kept.get(s, 0), want)


# ---- level budget (sample.level_size / sample.min_node_size) ----

def test_level_targets_one_node_is_todays_sample():
    """A level of one node (the root) targets sample.size rows, with or without a budget."""
    for level_size in (None, 20_000, 60_000):
        assert level_targets({"": 300_000}, 20_000, level_size, 5_000) == {"": 20_000}
        assert level_targets({"": 1_500}, 20_000, level_size, 5_000) == {"": 1_500}


def test_level_targets_without_budget_every_node_gets_size():
    rows = {"0": 90_000, "1": 40_000, "2": 3_000}
    assert level_targets(rows, 20_000, None, 5_000) == {"0": 20_000, "1": 20_000, "2": 3_000}


def test_level_targets_share_the_budget_proportionally():
    rows = {str(k): 37_500 for k in range(8)}  # eight equal children of 300k rows
    t = level_targets(rows, 20_000, 40_000, 1_000)
    assert t == {p: 5_000 for p in rows}
    assert sum(t.values()) == 40_000  # the level fits level_size rows, not 8 x size
    uneven = {"0": 150_000, "1": 100_000, "2": 50_000}
    t = level_targets(uneven, 20_000, 30_000, 1_000)
    assert t == {"0": 15_000, "1": 10_000, "2": 5_000}
    assert abs(sum(t.values()) - 30_000) <= len(uneven)  # rounding only


def test_level_targets_floor_and_caps():
    rows = {"big": 270_000, "small": 25_000, "tiny": 2_000, "empty": 0}
    t = level_targets(rows, 20_000, 30_000, 6_000)
    assert t["big"] == 20_000  # 30k x 270/297 = 27.3k, capped by sample.size
    assert t["small"] == 6_000  # 30k x 25/297 = 2.5k, raised to the floor
    assert t["tiny"] == 2_000  # the floor is capped by the node's rows: sampled whole
    assert t["empty"] == 0
    for p, n in rows.items():
        assert 0 <= t[p] <= min(20_000, n)


def test_level_targets_small_levels_cannot_change():
    """A level with fewer rows than the budget samples every node as without a budget."""
    rows = {"0": 19_000, "1": 9_000, "2": 6_786}  # a 34,786-row table's children
    assert level_targets(rows, 20_000, 40_000, 5_000) == level_targets(rows, 20_000, None, 5_000)


def test_level_size_below_size_is_refused_naming_the_setting():
    with pytest.raises(ValueError, match="sample.level_size"):
        SampleConfig(size=20_000, level_size=10_000)
    assert SampleConfig(size=20_000, level_size=20_000).level_budget == 20_000
    assert SampleConfig(size=50_000).level_budget == 50_000  # default: size, never refused
    assert SampleConfig(size=20_000, level_size=0).level_budget is None  # 0: no budget


def test_strata_floors_follow_the_node_target_under_a_budget():
    """Below the root, a stratum's floor is min(its rows, min_per_stratum, the node's level
    target / strata) (README 'stratify_by'), so the floors never more than double the node's
    budgeted sample; every stratum keeps at least that many expected rows."""
    level = {"big": 200_000, "small": 10_000}
    targets = level_targets(level, 20_000, 40_000, 5_000)
    assert targets == {"big": 20_000, "small": 5_000}
    counts = {"a": 9_000, "b": 600, "c": 250, "d": 150}  # the small node's strata
    t = allocate(counts, targets["small"], min_per_stratum=2_000, max_strata=100)
    floor = targets["small"] // len(counts)  # 1,250 < min_per_stratum
    expected = {s: c * t[s] for s, c in counts.items()}
    for s, c in counts.items():
        assert expected[s] >= min(c, floor) - 1e-6, (s, expected[s])
    assert sum(expected.values()) <= 2 * targets["small"]
