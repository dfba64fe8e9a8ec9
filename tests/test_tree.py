"""Unit tests of :mod:`recluster.compute.tree` and :mod:`recluster.compute.stops`: the node
record, the stopping rules and their codes. No data, no cluster."""

from __future__ import annotations

import json
import string

import pytest

from recluster.compute.node import NodeFit
from recluster.compute.stops import SENTENCES, Stop, StopReason
from recluster.compute.tree import SplitDecision, TreeNode, accept_split, split_refusal
from recluster.config import RecursionConfig

pytestmark = pytest.mark.timeout(30)

REC = RecursionConfig(max_depth=3, min_node_rows=1_000, min_node_share=0.05, min_child_rows=50,
                      min_split_agreement=0.6)


def _facts(code: StopReason) -> dict[str, object]:
    fields = [f for _, f, _, _ in string.Formatter().parse(SENTENCES[code]) if f]
    return {f: 0.5 for f in fields}


def test_every_code_has_a_sentence_that_names_its_facts():
    assert set(SENTENCES) == set(StopReason)
    texts = set()
    for code in StopReason:
        stop = code.stop(**_facts(code))
        assert isinstance(stop, Stop) and stop.code is code and str(stop) == stop.text
        assert stop.record() == {"stop_reason": stop.text, "stop_code": code.value}
        texts.add(stop.text)
    assert len(texts) == len(StopReason)  # no two codes read alike
    with pytest.raises(KeyError, match="min_node_rows"):
        StopReason.TOO_SMALL.stop(rows=3)


def test_sentences_are_the_documented_ones():
    """The README and the bad-input tests quote these; the codes must not change them."""
    assert StopReason.NO_STRUCTURE.stop(what="all noise").text == "no sub-structure: all noise"
    assert StopReason.UNSTABLE.stop(stability=0.42, stable=0.75).text == \
        "unstable: stability 0.420 is below stability.stable=0.75"
    # never printed as reaching the threshold it is below
    assert StopReason.UNSTABLE.stop(stability=0.7496, stable=0.75).text == \
        "unstable: stability 0.7496 is below stability.stable=0.75"
    assert StopReason.NOT_REPRODUCIBLE.stop(ari=0.49996, min_split_agreement=0.5).text == \
        "no reproducible sub-structure: held-out ARI 0.49996 is below " \
        "recursion.min_split_agreement=0.5"
    assert StopReason.SMALL_SHARE.stop(share=0.00999996, min_node_share=0.01).text == \
        "share 0.00999996 is below recursion.min_node_share=0.01"
    assert StopReason.SMALL_SHARE.stop(share=0.0042, min_node_share=0.01).text == \
        "share 0.0042 is below recursion.min_node_share=0.01"
    assert StopReason.TOO_SMALL.stop(rows=180, min_node_rows=300).text == \
        ("too small to segment: 180 rows is below recursion.min_node_rows=300, the smallest "
         "node recluster splits")
    assert StopReason.ARTEFACT.stop(artefact="splits on plan = pro only").text.startswith(
        "artefact split: splits on plan = pro only")


def test_split_refusal_codes():
    total = 100_000
    assert split_refusal(TreeNode("root", 0, total, 1.0), total, REC) is None
    assert split_refusal(TreeNode("root.2", 1, 20_000, 0.2), total, REC) is None
    deep = split_refusal(TreeNode("root.1.0.2", 3, 50_000, 0.5), total, REC)
    assert deep.code is StopReason.MAX_DEPTH and "max_depth 3" in deep.text
    small = split_refusal(TreeNode("root.1", 1, 999, 0.00999), 999 * 2, REC)
    assert small.code is StopReason.TOO_SMALL and "999 rows" in small.text
    rare = split_refusal(TreeNode("root.4", 1, 4_000, 0.04), total, REC)
    assert rare.code is StopReason.SMALL_SHARE and "0.0400" in rare.text
    # The share rule does not apply to the root.
    assert split_refusal(TreeNode("root", 0, 1_000, 1.0), 10**9, REC) is None
    # A node of exactly the share is not below it (350 of 5,000 at 0.07 was stopped, "share
    # 0.0700 is below recursion.min_node_share=0.07"), and a stop's text agrees with the rule.
    for size, total_rows, share in ((350, 5_000, 0.07), (70, 1_000, 0.07), (21, 300, 0.07),
                                    (1_400, 5_000, 0.28), (42, 300, 0.14)):
        at = RecursionConfig(max_depth=3, min_node_rows=10, min_node_share=share)
        assert split_refusal(TreeNode("root.0", 1, size, size / total_rows), total_rows, at) \
            is None, (size, total_rows, share)
        below = split_refusal(TreeNode("root.0", 1, size - 1, 0.0), total_rows, at)
        assert below.code is StopReason.SMALL_SHARE and \
            float(below.text.split()[1]) < share, below.text


def test_accept_split_returns_a_positive_decision():
    ok = NodeFit(path="root", n_sample=1_000, agreement=0.9, n_children=2,
                 child_sample_sizes=[600, 300])
    decision = accept_split(ok, node_rows=100_000, cfg=REC)
    assert isinstance(decision, SplitDecision) and decision and decision.accepted
    assert decision.stop is None

    low = NodeFit(path="root", n_sample=1_000, agreement=0.3, n_children=2,
                  child_sample_sizes=[600, 300])
    decision = accept_split(low, node_rows=100_000, cfg=REC)
    assert not decision and not decision.accepted
    assert decision.stop.code is StopReason.NOT_REPRODUCIBLE
    assert "0.300" in decision.stop.text and "min_split_agreement=0.6" in decision.stop.text

    fitted_stop = StopReason.SMALL_SAMPLE.stop(rows=10, need=17)
    stopped = NodeFit(path="root.3", n_sample=10, stop_reason=fitted_stop)
    assert accept_split(stopped, node_rows=100, cfg=REC).stop is fitted_stop

    # Child sizes are scaled from the sample to the node: 5 sample rows x 10 = 50 rows.
    edge = NodeFit(path="root.1", n_sample=1_000, agreement=None, n_children=2,
                   child_sample_sizes=[900, 5])
    assert accept_split(edge, node_rows=10_000, cfg=REC).accepted
    tiny = NodeFit(path="root.1", n_sample=1_000, agreement=None, n_children=2,
                   child_sample_sizes=[900, 4])
    decision = accept_split(tiny, node_rows=10_000, cfg=REC)
    assert decision.stop.code is StopReason.SMALL_CHILDREN and "[900, 4]" in decision.stop.text


def test_a_zoom_of_artefacts_only_is_refused_but_the_root_is_not():
    arts = ["splits on plan = pro only", "splits on plan = free only"]
    zoom = NodeFit(path="root.1", n_sample=1_000, agreement=0.9, n_children=2,
                   child_sample_sizes=[600, 300], artefacts=arts)
    decision = accept_split(zoom, node_rows=10_000, cfg=REC)
    assert decision.stop.code is StopReason.ARTEFACT_SPLIT and arts[1] in decision.stop.text
    root = NodeFit(path="root", n_sample=1_000, agreement=0.9, n_children=2,
                   child_sample_sizes=[600, 300], artefacts=arts)
    assert accept_split(root, node_rows=10_000, cfg=REC).accepted
    mixed = NodeFit(path="root.1", n_sample=1_000, agreement=0.9, n_children=2,
                    child_sample_sizes=[600, 300], artefacts=[arts[0], None])
    assert accept_split(mixed, node_rows=10_000, cfg=REC).accepted
    flag = RecursionConfig(**{**REC.model_dump(), "artefact_splits": "flag"})
    assert accept_split(zoom, node_rows=10_000, cfg=flag).accepted


def test_node_record_is_tree_json_ready():
    leaf = TreeNode("root.2.10", 2, 180, 0.018, stability=0.42,
                    stop_reason=StopReason.UNSTABLE.stop(stability=0.42, stable=0.75))
    rec = json.loads(json.dumps(leaf.record()))
    assert rec["path"] == "root.2.10" and rec["parent"] == "root.2" and rec["depth"] == 2
    assert rec["stop_code"] == "unstable"
    assert rec["stop_reason"] == "unstable: stability 0.420 is below stability.stable=0.75"
    assert rec["n_children"] == 0 and rec["children"] == []
    root = TreeNode("root", 0, 10_000, 1.0, children=["root.0", "root.1"])
    rec = root.record()
    assert rec["parent"] is None and rec["stop_reason"] is None and rec["stop_code"] is None
    assert rec["n_children"] == 2
    # the keys readers of tree.json rely on are all there, plus the code
    assert {"path", "parent", "depth", "size", "share", "persistence", "stability", "n_children",
            "children", "stop_reason", "artefact", "fit", "classifier", "stop_code"} == set(rec)
    with pytest.raises(ValueError, match="not a node path: '2.10'"):
        TreeNode("2.10", 2, 1, 0.1).record()
