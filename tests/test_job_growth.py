"""Unit tests of the pure parts of :mod:`recluster.job.growth`, no cluster: node counts from the
count pass, folded strata for the manifest, why a child is not zoomed into (unstable, artefact),
and the graph literal that ships models to a pass's tasks.
"""

from __future__ import annotations

from types import SimpleNamespace

import dask
import numpy as np
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

    assert made_noise({0: 0.614, 3: 0.4849}, 0.75) == "{0: 0.61, 3: 0.48}"
    many = {k: 0.1 + k / 100 for k in range(NOISE_LISTED + 10)}
    assert made_noise(many, 0.75) == f"{NOISE_LISTED + 10} of them, stability 0.10-0.25"
    # A score below the threshold is never printed as reaching it (gapminder's zooms printed
    # "stability 0.14-0.75" for scores of at most 0.746, next to "stability.stable=0.75").
    many[NOISE_LISTED] = 0.746
    assert made_noise(many, 0.75) == f"{NOISE_LISTED + 10} of them, stability 0.10-0.746"
    assert made_noise({2: 0.7499}, 0.75) == "{2: 0.7499}"


def test_score_text_stays_on_its_side_of_the_threshold():
    from recluster.compute.stops import score_text

    assert score_text(0.614, 0.75) == "0.61"
    assert score_text(0.746, 0.75) == "0.746"
    assert score_text(0.75, 0.75) == "0.75"
    assert score_text(0.7496, 0.75, 3) == "0.7496"
    assert score_text(0.7451, 0.75) == "0.745"
    for v in np.linspace(0.0, 1.0, 2001):
        for t in (0.5, 0.7, 0.75):
            assert (float(score_text(v, t)) >= t) == (v >= t), (v, t)


def test_settle_line_says_why_a_split_refused_by_resampling_stands():
    """A small zoom that resampling scores near 0 but the Gaussian null test splits printed its
    scores and nothing else (economics' monthly curve: [0.00, 0.00] and a split kept); the
    line now says on what it stands. A refused one still says why it stops."""
    from dataclasses import replace

    from recluster.compute.node import NodeFit
    from recluster.compute.stops import StopReason
    from recluster.config import JobConfig
    from recluster.job.growth import settle_line

    cfg = JobConfig.model_validate({"input": {"path": "in", "id_column": "id"},
                                    "output": {"path": "out"}})
    before = NodeFit(path="root.1", n_sample=70, min_cluster_size=5)
    kept = replace(before, gaussian_null={"rows": 70, "p_value": 0.005, "cluster_index": 0.4,
                                          "null_index": 0.6, "draws": 200})
    line = settle_line("root.1", [0.0, 0.001], 3, before, kept, cfg)
    assert line.startswith("node root.1: stability [0.00, 0.00] on 3 resample(s)"), line
    assert (f"split all the same on the Gaussian null test (p = 0.005 <= stability.null_alpha="
            f"{cfg.stability.null_alpha}): resampling is weak evidence at 70 rows") in line, line
    stop = StopReason.NO_STABLE_STRUCTURE.stop(stable=0.75, scores="0.40, 0.50")
    refused = replace(kept, gaussian_null={**kept.gaussian_null, "p_value": 0.4},
                      stop_reason=stop)
    line = settle_line("root.1", [0.4, 0.5], 3, before, refused, cfg)
    assert "Gaussian" not in line and line.endswith(f"; stops: {stop}"), line
    plain = settle_line("root.1", [0.746, 0.9], 1, before, before, cfg)
    assert plain == "node root.1: stability [0.746, 0.90] on 1 resample(s)", plain
