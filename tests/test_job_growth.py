"""Unit tests of the pure parts of :mod:`recluster.job.growth`, no cluster: node counts from the
count pass, folded strata for the manifest, why a child is not zoomed into (unstable, artefact),
and the graph literal that ships models to a pass's tasks.
"""

from __future__ import annotations

from types import SimpleNamespace

import dask
import pandas as pd
import pytest
from dask.delayed import Delayed

from recluster.compute.paths import ROOT
from recluster.compute.routing import NO_STRATUM, STRATUM
from recluster.compute.sampling import FOLDED, ahead_bound, allocate, level_targets
from recluster.compute.schema import TableSchema
from recluster.compute.stops import StopReason
from recluster.compute.tree import TreeNode
from recluster.config import parse_config
from recluster.job.growth import (
    Growth,
    _ahead_bounds,
    _child_stop,
    counts_by_node,
    folded_strata,
    graph_literal,
    root_ahead_bounds,
)

pytestmark = pytest.mark.timeout(30)


def _cfg(**sections):
    return parse_config({"input": {"path": "/in", "id_column": "id"},
                         "output": {"path": "/out"}, **sections})


def test_counts_by_node_keys_path_and_depth_and_sums_nothing_away():
    counts = pd.DataFrame({"cluster": ["root", "root.0", "root.0", "root.1"],
                           "depth": [0, 1, 1, 1], STRATUM: ["a", "a", "b", "b"],
                           "rows": [10, 4, 3, 3]})
    by_node = counts_by_node(counts)
    assert by_node == {("root", 0): {"a": 10}, ("root.0", 1): {"a": 4, "b": 3},
                       ("root.1", 1): {"b": 3}}
    assert all(isinstance(v, int) for d in by_node.values() for v in d.values())


def test_folded_strata_reports_only_when_levels_exceed_max_strata():
    ts = TableSchema(id_column="id", numeric=["x"], categorical=[], stratify_by="country")
    few = {"fr": 50, "de": 30}
    assert folded_strata(few, ts, _cfg(sample={"max_strata": 4})) is None
    many = {f"c{i}": 100 - i for i in range(10)}
    entry = folded_strata(many, ts, _cfg(sample={"max_strata": 4}))
    assert entry["column"] == "country" and entry["levels"] == 10
    assert entry["folded_levels"] == 7  # the 3 largest keep their own stratum
    assert entry["folded_rows"] == sum(100 - i for i in range(3, 10))
    assert "sample.max_strata=4" in entry["what"] and FOLDED not in entry["what"]


@pytest.mark.parametrize("unstable, zoom_root, depth, stopped", [
    ("noise", True, 1, False),   # the root's unstable clusters are zoomed into all the same
    ("noise", False, 1, True),
    ("noise", True, 2, True),
    ("no_recurse", True, 1, True),
    ("flag", False, 2, False),   # recorded only
])
def test_unstable_children_are_not_zoomed_into(unstable, zoom_root, depth, stopped):
    cfg = _cfg(stability={"unstable": unstable, "zoom_unstable_root": zoom_root})
    child = TreeNode("root.0" if depth == 1 else "root.0.0", depth, 100, 0.1, stability=0.4)
    assert _child_stop(child, None, cfg) is stopped
    assert (child.stop_reason is not None and child.stop_reason.code == StopReason.UNSTABLE) \
        is stopped
    steady = TreeNode(child.path, depth, 100, 0.1, stability=0.9)
    assert _child_stop(steady, None, cfg) is False and steady.stop_reason is None


@pytest.mark.parametrize("mode, stopped", [("no_recurse", True), ("flag", False), ("off", False)])
def test_artefact_children(mode, stopped):
    child = TreeNode("root.1", 1, 100, 0.1)
    assert _child_stop(child, "island = Biscoe", _cfg(recursion={"artefact_splits": mode})) \
        is stopped
    assert child.artefact == (None if mode == "off" else "island = Biscoe")
    assert (child.stop_reason is not None and "island = Biscoe" in str(child.stop_reason)) \
        is stopped


def test_graph_literal_is_the_value_untouched_and_a_fresh_key_each_time():
    fits = {"root": {"n": 1}, "root.0": [dask.delayed(1)]}  # not traversed: kept as given
    a, b = graph_literal(fits), graph_literal(fits)
    assert a.key != b.key
    value = a.compute(scheduler="sync")
    assert value["root"] == {"n": 1}
    assert isinstance(value["root.0"][0], Delayed)  # traverse=False: nothing inside is computed


def _exact_threshold(rows: dict[str, int], path: str, cfg) -> float:
    """The threshold ``_fit_level`` gives ``path`` when the level fits ``rows`` (one stratum)."""
    target = level_targets(rows, cfg.sample.size, cfg.sample.level_budget,
                           cfg.sample.min_node_size)[path]
    return allocate({NO_STRATUM: rows[path]}, target, cfg.sample.min_per_stratum,
                    cfg.sample.max_strata)[NO_STRATUM]


@pytest.mark.parametrize("level_size", [None, 0, 60_000])
def test_ahead_bounds_are_the_next_levels_thresholds_raised(level_size):
    """Drawn ahead at the thresholds the next level computes (its level budget: level_size
    null is sample.size, 0 none), raised by ahead_bound: not below them (never thinned: the
    draw wasted) nor at sample.size per child (ten times the rows for ten children)."""
    cfg = _cfg(sample={"size": 20_000, "min_node_size": 2_000, "level_size": level_size},
               recursion={"max_depth": 3})
    ts = TableSchema(id_column="id", numeric=["x"], categorical=[], stratify_by=None)
    total = 1_000_000
    root = root_ahead_bounds(total, ts, cfg)
    assert root == {(ROOT, NO_STRATUM): ahead_bound(_exact_threshold({ROOT: total}, ROOT, cfg),
                                                    total)}
    shares = [0.4, 0.3, 0.1] + [0.025] * 8
    fit = SimpleNamespace(n_sample=20_000, n_children=len(shares), artefacts=[],
                          child_sample_sizes=[int(20_000 * s) for s in shares])
    g = Growth(state=None, nodes={ROOT: TreeNode(ROOT, 0, total, 1.0)})
    bounds = _ahead_bounds({ROOT: fit}, g, 1, total, {}, ts, cfg)
    rows = {f"{ROOT}.{k}": int(total * s) for k, s in enumerate(shares)}
    assert bounds == {(p, NO_STRATUM): ahead_bound(_exact_threshold(rows, p, cfg), n)
                      for p, n in rows.items()}


def test_clusters_made_noise_are_listed_when_few_and_counted_when_many():
    from recluster.job.growth import NOISE_LISTED, made_noise

    assert made_noise({0: 0.614, 3: 0.4849}) == "{0: 0.61, 3: 0.48}"
    many = {k: 0.1 + k / 100 for k in range(NOISE_LISTED + 10)}
    assert made_noise(many) == f"{NOISE_LISTED + 10} of them, stability 0.10-0.25"
