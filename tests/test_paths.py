"""Unit tests of :mod:`recluster.compute.paths` (node paths): no cluster, no storage."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from recluster.compute.node import node_seed
from recluster.compute.paths import ROOT, ROOT_PATH, NodePath, path_key, sorted_paths

pytestmark = pytest.mark.timeout(30)


def test_parse_and_format_round_trip():
    for text, parts in [("root", ()), ("root.0", (0,)), ("root.2.10", (2, 10)),
                        ("root.12.0.7", (12, 0, 7))]:
        p = NodePath.parse(text)
        assert p.parts == parts and str(p) == text and p.text == text
        assert NodePath.parse(str(p)) == p
    assert NodePath.parse("root") == ROOT_PATH and str(ROOT_PATH) == ROOT


@pytest.mark.parametrize("bad", ["", "2", "2.10", "0.1", "root.", "root..1", ".root", "root.-1",
                                 "root.01", "root.1a", "Root.1", " root", "root.1 ", "root/1",
                                 "root.+1", "root.١"])
def test_parse_refuses_anything_else_naming_the_text(bad):
    with pytest.raises(ValueError, match="not a node path") as err:
        NodePath.parse(bad)
    assert repr(bad) in str(err.value) and "root.2.10" in str(err.value)


def test_a_child_number_beyond_the_level_columns_is_refused_naming_the_path():
    """A level column is Int32: child number 2**31 + 5 (a hand-edited model index) was routed
    with level value -2147483643 beside the path root.1.2147483653."""
    assert NodePath.parse(f"root.{2**31 - 1}").parts == (2**31 - 1,)
    with pytest.raises(ValueError, match=r"'root\.1\.2147483653'.*above 2147483647"):
        NodePath.parse("root.1.2147483653")
    with pytest.raises(ValueError, match="above 2147483647"):
        NodePath.parse("root.1").child(2**31)


def test_parse_refuses_non_text():
    for bad in [None, 2.1, 3, b"root"]:
        with pytest.raises(ValueError, match="not a node path"):
            NodePath.parse(bad)
    with pytest.raises(ValueError, match="child numbers >= 0"):
        NodePath((1, -2))


def test_tree_navigation():
    p = NodePath.parse("root.2.10")
    assert p.depth == 2 and not p.is_root and p.index == 10
    assert str(p.parent) == "root.2" and str(p.parent.parent) == "root"
    assert ROOT_PATH.parent is None and ROOT_PATH.index is None and ROOT_PATH.depth == 0
    assert str(ROOT_PATH.child(3)) == "root.3" and str(p.child(0)) == "root.2.10.0"
    assert [str(c) for c in NodePath.parse("root.1").children(3)] == \
        ["root.1.0", "root.1.1", "root.1.2"]
    for k in (0, 1, 12):
        assert p.child(k).parent == p and p.child(k).index == k
    assert str(p.ancestor(0)) == "root" and str(p.ancestor(1)) == "root.2" and p.ancestor(2) == p
    with pytest.raises(ValueError, match="no ancestor at depth 3"):
        p.ancestor(3)


def test_ancestry_is_by_parts_not_by_text_prefix():
    two, twenty = NodePath.parse("root.2"), NodePath.parse("root.20")
    assert not two.is_ancestor_of(twenty) and not twenty.is_ancestor_of(two)
    assert two.is_ancestor_of(NodePath.parse("root.2.0"))
    assert ROOT_PATH.is_ancestor_of(twenty)
    assert not two.is_ancestor_of(two) and two.is_ancestor_of(two, strict=False)
    assert not NodePath.parse("root.2.0").is_ancestor_of(two)


def test_natural_order_depth_first():
    texts = ["root.10", "root.2.10", "root", "root.2.9", "root.2", "root.1", "root.2.1"]
    want = ["root", "root.1", "root.2", "root.2.1", "root.2.9", "root.2.10", "root.10"]
    assert sorted_paths(texts) == want
    assert sorted(texts, key=path_key) == want
    assert NodePath.parse("root.2.9") < NodePath.parse("root.2.10")


def test_child_texts_and_covers():
    node = NodePath.parse("root.3")
    texts = node.child_texts(np.array([0, -1, 10, 1, 0]))
    assert texts.tolist() == ["root.3.0", "root.3", "root.3.10", "root.3.1", "root.3.0"]
    assert ROOT_PATH.child_texts(np.array([-1, 2])).tolist() == ["root", "root.2"]
    cluster = np.array(["root", "root.3", "root.3.1", "root.30", "root.31.3", "root.3.10.2"],
                       dtype=object)
    assert node.covers(cluster).tolist() == [False, True, True, False, False, True]
    assert ROOT_PATH.covers(cluster).all()
    assert node.covers(np.array([], dtype=object)).shape == (0,)


def test_text_form_is_never_read_as_a_number_by_a_csv_reader():
    """``2.1`` and ``2.10`` were one number once a CSV was read back; the text form stays text."""
    paths = ["root", "root.2", "root.2.1", "root.2.10", "root.10", "root.1.0"]
    back = pd.read_csv(io.StringIO("cluster\n" + "\n".join(paths) + "\n"))
    assert not pd.api.types.is_numeric_dtype(back["cluster"]) and back["cluster"].tolist() == paths
    legacy = pd.read_csv(io.StringIO("cluster\n2.1\n2.10\n"))  # what the old form did
    assert legacy["cluster"].nunique() == 1


def test_label_is_the_old_text_so_node_seeds_do_not_change():
    assert NodePath.parse("root.2.10").label == "2.10" and ROOT_PATH.label == "root"
    # the seeds of earlier releases hashed "2.10": published figures stay reproducible
    import zlib
    assert node_seed(5, "root.2.10") == (5 * 1_000_003 + zlib.crc32(b"2.10")) % (2**31 - 1)
    assert node_seed(5, "root") == (5 * 1_000_003 + zlib.crc32(b"root")) % (2**31 - 1)
    assert node_seed(5, "root.2.1") != node_seed(5, "root.2.10")
