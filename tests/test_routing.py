"""Unit tests of :mod:`recluster.compute.routing` (the per-partition state of the recursion) and
of the labels contract (:func:`recluster.parallel.passes.labels_table`): small frames, real
preprocessing and a real kNN assigner, no cluster and no storage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from recluster.compute.assign import KnnAssigner
from recluster.compute.node import U_COLUMN, NodeFit
from recluster.compute.preprocess import Preprocessor
from recluster.compute.routing import (
    LABELS_SCHEMA_VERSION,
    NO_STRATUM,
    STRATUM,
    assign_level,
    initial_state,
    label_columns,
    node_counts,
    older_labels_schema,
    rows_with_ids,
    select_sample,
    state_meta,
)
from recluster.parallel.passes import labels_table, sum_counts

pytestmark = pytest.mark.timeout(60)


def _frame(n_per: int = 6) -> pd.DataFrame:
    """Three tight groups on x (0, 10, 20) with a small y jitter; ids are text."""
    x = np.repeat([0.0, 10.0, 20.0], n_per) + np.tile(np.linspace(0, 0.5, n_per), 3)
    y = np.tile(np.linspace(-1, 1, n_per), 3)
    return pd.DataFrame({"c0": [f"id-{i}" for i in range(3 * n_per)], "x": x, "y": y,
                         "plan": np.tile(["a", "b"], 3 * n_per // 2)})


def _node(path: str, rows: pd.DataFrame, labels: np.ndarray) -> NodeFit:
    """A node fitted for real on ``rows``: its preprocessing and a kNN assigner of ``labels``."""
    pre = Preprocessor(["x", "y"], []).fit(rows)
    X = pre.transform(rows)
    emb = np.column_stack([X[:, 0], X[:, 1]]).astype(np.float32)
    assigner = KnnAssigner(k=3).fit(X, labels, np.where(labels >= 0, 0.9, 0.0), emb)
    return NodeFit(path=path, n_sample=len(rows), preprocessor=pre, assigner=assigner,
                   n_children=int(labels.max()) + 1)


def test_initial_state_puts_every_row_in_the_root():
    df = _frame()
    state = initial_state(df, "c0", None, seed=3, n_components=2)
    assert len(state) == len(df) and (state["cluster"] == "root").all()
    assert (state["depth"] == 0).all() and (state["probability"] == 0).all()
    assert (state[STRATUM] == NO_STRATUM).all()
    assert state["__id__"].tolist() == df["c0"].tolist()
    u = state[U_COLUMN].to_numpy()
    assert ((u >= 0) & (u < 1)).all() and len(np.unique(u)) == len(u)
    # the draw depends on the id and the seed, not on the row's position
    again = initial_state(df.iloc[::-1].reset_index(drop=True), "c0", None, 3, 2)
    assert dict(zip(again["__id__"], again[U_COLUMN], strict=True)) == \
        dict(zip(state["__id__"], state[U_COLUMN], strict=True))
    assert not np.array_equal(initial_state(df, "c0", None, 4, 2)[U_COLUMN], u)
    strat = initial_state(df, "c0", "plan", 3, 2)
    assert strat[STRATUM].tolist() == df["plan"].tolist()
    assert list(state.columns) == list(state_meta(object, 0, 2).columns)


def test_two_levels_of_routing_write_paths_levels_and_depth():
    df = _frame()
    state = initial_state(df, "c0", None, 0, 2)
    truth = np.repeat([0, 1, 2], 6)
    root = _node("root", df, truth)
    one = assign_level(df, state, 1, {"root": root})
    assert one["cluster"].tolist() == [f"root.{k}" for k in truth]
    assert one["level_1"].tolist() == truth.tolist() and (one["depth"] == 1).all()
    assert (one["probability"] > 0).all() and one["umap_0"].notna().all()
    # level 2: only cluster 1 (x near 10) is split, in two by y; one of its rows is noise
    inside = df[truth == 1]
    sub = np.where(inside["y"].to_numpy() < 0, 0, 1)
    node = _node("root.1", inside, sub)
    two = assign_level(df, one, 2, {"root.1": node})
    want = np.where(truth == 1, ["root.1." + str(k) for k in np.resize(sub, len(truth))],
                    [f"root.{k}" for k in truth])
    assert two["cluster"].tolist() == want.tolist()
    assert two.loc[truth == 1, "depth"].eq(2).all() and two.loc[truth != 1, "depth"].eq(1).all()
    assert two.loc[truth != 1, "level_2"].isna().all()
    assert two.loc[truth == 1, "level_2"].tolist() == sub.tolist()
    # the embedding is the first level's; deeper levels leave it alone
    assert np.array_equal(two["umap_0"].to_numpy(), one["umap_0"].to_numpy())


def test_noise_keeps_the_nodes_path_and_level_minus_one():
    df = _frame()
    state = initial_state(df, "c0", None, 0, 2)
    labels = np.repeat([0, -1, 1], 6)  # the middle group is noise in the root's clustering
    out = assign_level(df, state, 1, {"root": _node("root", df, labels)})
    middle = labels < 0
    assert (out.loc[middle, "cluster"] == "root").all() and out.loc[middle, "depth"].eq(0).all()
    assert out.loc[middle, "level_1"].eq(-1).all() and out.loc[middle, "probability"].eq(0).all()
    assert set(out.loc[~middle, "cluster"]) == {"root.0", "root.1"}


def test_rows_of_unsplit_nodes_and_empty_partitions_pass_through():
    df = _frame()
    state = initial_state(df, "c0", None, 0, 2)
    out = assign_level(df, state, 1, {})
    assert out["level_1"].isna().all() and (out["cluster"] == "root").all()
    empty = assign_level(df.iloc[:0], state.iloc[:0], 1, {"root": _node("root", df,
                                                                        np.repeat([0, 1, 2], 6))})
    assert len(empty) == 0 and "level_1" in empty


def test_counts_samples_and_id_lookups():
    df = _frame()
    state = initial_state(df, "c0", "plan", 0, 2)
    state["cluster"] = np.repeat(["root.0", "root.1", "root.2"], 6)
    state["depth"] = 1
    counts = node_counts(state)
    assert counts["rows"].sum() == len(df)
    assert set(zip(counts["cluster"], counts[STRATUM], counts["rows"], strict=True)) == \
        {(f"root.{k}", s, 3) for k in range(3) for s in "ab"}
    # two partitions' counts add up
    total = sum_counts(pd.concat([counts, counts]))
    assert total["rows"].tolist() == [6] * 6
    assert len(node_counts(state.iloc[:0])) == 0
    # the sample pass keeps rows under their node's threshold, only at the frontier
    thresholds = {("root.1", "a"): 1.0, ("root.1", "b"): 0.0, ("root.2", "a"): 0.5}
    sample = select_sample(df, state, 2, thresholds, ["c0", "x"])
    u = state[U_COLUMN].to_numpy()
    keep = ((state["cluster"] == "root.1") & (state[STRATUM] == "a")) | \
        ((state["cluster"] == "root.2") & (state[STRATUM] == "a") & (u < 0.5))
    assert sample["c0"].tolist() == df.loc[keep.to_numpy(), "c0"].tolist()
    assert set(sample["_node"]) <= {"root.1", "root.2"}
    assert select_sample(df, state, 1, thresholds, ["c0"]).empty  # level 1: depth-0 rows only
    found = rows_with_ids(state, np.array(["id-3", "id-7", "nope"], dtype=object))
    assert found["__id__"].tolist() == ["id-3", "id-7"]
    assert found["cluster"].tolist() == ["root.0", "root.1"]


def test_labels_always_have_every_level_of_the_contract():
    df = _frame()
    state = initial_state(df, "c0", None, 0, 2)
    one = assign_level(df, state, 1, {"root": _node("root", df, np.repeat([0, 1, 2], 6))})
    table = labels_table(one, "account id", 3, pa.string())
    assert list(table.columns) == label_columns("account id", 3, 2) == \
        ["account id", "cluster", "level_1", "level_2", "level_3", "depth", "probability",
         "umap_0", "umap_1"]
    assert table["level_1"].notna().all()
    assert table["level_2"].isna().all() and table["level_3"].isna().all()
    assert str(table["level_3"].dtype) == "Int64"
    assert table["account id"].tolist() == df["c0"].tolist()
    # the root alone (not split): still every level column
    flat = labels_table(state, "account id", 2)
    assert list(flat.columns) == label_columns("account id", 2, 2)
    assert flat["level_1"].isna().all() and (flat["cluster"] == "root").all()


def test_readers_refuse_an_older_labels_schema_by_name():
    assert older_labels_schema({"labels_schema_version": LABELS_SCHEMA_VERSION}, "s3://b/r") is None
    msg = older_labels_schema({"recluster_manifest": 2}, "s3://b/r")
    assert msg is not None and "s3://b/r" in msg and "version 1" in msg and "re-run" in msg
    assert "version 7" in older_labels_schema({"labels_schema_version": 7}, "x")
