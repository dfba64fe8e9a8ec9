"""Unit tests of the explanation pass's per-partition pieces (:mod:`recluster.compute.explain`):
which rows belong to a node given final labels, and which are drawn to train its models.
Small frames, no cluster (the models themselves are tested end to end in test_explain.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recluster.compute.explain import in_node, select_training_rows
from recluster.compute.node import U_COLUMN

pytestmark = pytest.mark.timeout(30)


def _state() -> tuple[pd.DataFrame, pd.DataFrame]:
    cluster = np.array(["root", "root.0", "root.0.1", "root.0", "root.1", "root.10", "root.1.0",
                        "root.0.0"], dtype=object)
    depth = np.array([0, 1, 2, 1, 1, 1, 2, 2])
    level_1 = pd.array([-1, 0, 0, 0, 1, 10, 1, 0], dtype="Int64")
    level_2 = pd.array([pd.NA, -1, 1, -1, pd.NA, pd.NA, 0, 0], dtype="Int64")
    u = np.linspace(0.05, 0.95, len(cluster))
    state = pd.DataFrame({"cluster": cluster, "depth": depth, "level_1": level_1,
                          "level_2": level_2, U_COLUMN: u})
    df = pd.DataFrame({"c0": np.arange(len(cluster)), "c1": np.arange(len(cluster)) * 1.5})
    return df, state


def test_in_node_follows_paths_not_text_prefixes():
    _, state = _state()
    cluster, depth = state["cluster"].to_numpy(), state["depth"].to_numpy()
    assert in_node(cluster, depth, "root", 0).all()
    assert in_node(cluster, depth, "root.0", 1).tolist() == \
        [False, True, True, True, False, False, False, True]
    # root.1 holds root.1.0 but not root.10
    assert in_node(cluster, depth, "root.1", 1).tolist() == \
        [False, False, False, False, True, False, True, False]
    assert in_node(cluster, depth, "root.0.1", 2).tolist() == \
        [False, False, True, False, False, False, False, False]


def test_training_rows_carry_node_and_child_per_explained_node():
    df, state = _state()
    u = state[U_COLUMN].to_numpy()
    spec = {"root": (0, 1.0), "root.0": (1, 0.6)}
    rows = select_training_rows(df, state, spec, ["c0", "c1"])
    root_rows = rows[rows["_node"] == "root"]
    assert root_rows["c0"].tolist() == df["c0"].tolist()  # every row, threshold 1
    assert root_rows["_child"].tolist() == [-1, 0, 0, 0, 1, 10, 1, 0]
    zoom = rows[rows["_node"] == "root.0"]
    want = [i for i in range(len(df)) if state["cluster"][i].startswith("root.0") and u[i] < 0.6]
    assert zoom["c0"].tolist() == want and want  # members of root.0 under the threshold
    assert zoom["_child"].tolist() == [-1, 1, -1]  # noise in root.0's split is -1
    assert np.array_equal(zoom[U_COLUMN].to_numpy(), u[want])
    assert list(rows.columns) == ["c0", "c1", U_COLUMN, "_node", "_child"]


def test_no_training_rows_gives_an_empty_frame_of_the_right_columns():
    df, state = _state()
    rows = select_training_rows(df, state, {"root.7": (1, 1.0)}, ["c0", "c1"])
    assert rows.empty and list(rows.columns) == ["c0", "c1", U_COLUMN, "_node", "_child"]
    assert str(rows["_child"].dtype) == "int64"
