"""Unit tests of :mod:`recluster.compute.routing` (the per-partition state of the recursion) and
of the labels contract (:func:`recluster.parallel.passes.labels_table`): small frames, real
preprocessing and a real kNN assigner, no cluster and no storage."""

from __future__ import annotations

import sys
from pathlib import Path

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
    plain_dtypes,
    rows_with_ids,
    select_sample,
    state_meta,
)
from recluster.parallel.passes import labels_table, sum_counts

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))
import routing_reference  # noqa: E402  (the pass before route-then-evaluate)

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


# ------------------------------------------------------------------ route-then-evaluate equivalence


def _grid(n: int, seed: int) -> pd.DataFrame:
    """Four groups on (x, y) (corners of a square, 10 apart) with a small jitter, and two
    bridges: rows with x near 5, and rows on the right with y near 5; text ids."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 6, n)
    x = np.where(group % 2 == 1, 10.0, 0.0) + rng.normal(0, 1, n)
    y = np.where(group >= 2, 10.0, 0.0) + rng.normal(0, 1, n)
    x[group == 4] = rng.uniform(4.5, 5.5, (group == 4).sum())
    y[group == 5] = rng.uniform(4.5, 5.5, (group == 5).sum())
    return pd.DataFrame({"c0": [f"id-{seed}-{i}" for i in range(n)], "x": x, "y": y,
                         "plan": rng.choice(["a", "b", "c"], n)})


def _three_level_tree(train: pd.DataFrame) -> dict[int, dict[str, NodeFit]]:
    """A real tree over ``_grid`` rows: the root splits on x (rows near x = 5 are noise); its
    child 0 splits on y, child 1 splits on y with published child numbers (``run --previous``:
    classes 0, 1 are children 4, 2) and some noise; a level-3 node under ``root.0.1`` splits on
    x's sign, and a level-3 node ``root.0.7`` that no row reaches."""
    x = train["x"].to_numpy()
    root_labels = np.where(np.abs(x - 5) < 1.0, -1, (x > 5).astype(int))
    fits = {1: {"root": _node("root", train, root_labels)}}
    left, right = train[root_labels == 0], train[root_labels == 1]
    n0 = _node("root.0", left, (left["y"].to_numpy() > 5).astype(int))
    ry = right["y"].to_numpy()
    n1 = _node("root.1", right, np.where(np.abs(ry - 5) < 1.5, -1, (ry > 5).astype(int)))
    n1.child_numbers = [4, 2]
    fits[2] = {"root.0": n0, "root.1": n1}
    deep = left[left["y"].to_numpy() > 5]
    n01 = _node("root.0.1", deep, (deep["x"].to_numpy() > 0).astype(int))
    fits[3] = {"root.0.1": n01, "root.0.7": _node("root.0.7", deep, np.zeros(len(deep), int))}
    return fits


def test_route_then_evaluate_gives_the_reference_labels_bit_for_bit():
    train = _grid(400, seed=1)
    fits = _three_level_tree(train)
    # partitions: an ordinary one, one without any row of cluster 1, a one-row one, an empty one
    big = _grid(700, seed=2)
    parts = [big, big[big["x"] < 4].reset_index(drop=True), big.iloc[:1], big.iloc[:0]]
    seen = set()
    for df in parts:
        mine = theirs = initial_state(df, "c0", "plan", 5, 2)
        for level in (1, 2, 3):
            mine = assign_level(df, mine, level, fits[level])
            theirs = routing_reference.assign_level(df, theirs, level, fits[level])
            pd.testing.assert_frame_equal(plain_dtypes(mine), plain_dtypes(theirs), check_exact=True)
        seen |= set(mine["cluster"])
        # the sample pass of a level below, for each level's thresholds
        thresholds = {(p, s): t for p, t in (("root.0", 0.5), ("root.1.4", 1.0), ("root", 0.3))
                      for s in ("a", "c")}
        if len(df):  # a threshold equal to a row's draw: that row is out (``_u < threshold``)
            first = mine.iloc[0]
            thresholds[(first["cluster"], first[STRATUM])] = float(first[U_COLUMN])
        for level in (1, 2, 3, 4):
            pd.testing.assert_frame_equal(
                select_sample(df, mine, level, thresholds, ["c0", "x"]),
                routing_reference.select_sample(df, mine, level, thresholds, ["c0", "x"]),
                check_exact=True)
    # the tree was exercised: noise at both levels, published child numbers, a level-3 split
    assert {"root", "root.1", "root.1.4", "root.1.2", "root.0.1.0", "root.0.1.1"} <= seen
    assert not any(s.startswith("root.0.7") for s in seen)


def test_published_child_numbers_far_apart_route_as_the_reference_in_little_memory():
    """``run --previous`` gives a node's children their published numbers, which may be large
    and far apart: the labels equal the reference pass's, and routing does not allocate in the
    largest number (a count per child number: 20,000,001 counts, 160 MB, for a few rows; the
    Int32 level column's largest number would have asked 16 GiB)."""
    import tracemalloc

    fits = _three_level_tree(_grid(400, seed=1))
    fits[2]["root.1"].child_numbers = [20_000_000, 3]
    df = _grid(700, seed=2)
    mine = theirs = initial_state(df, "c0", "plan", 5, 2)
    for level in (1, 2, 3):
        tracemalloc.start()
        mine = assign_level(df, mine, level, fits[level])
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 16 * 2**20, (level, peak)
        theirs = routing_reference.assign_level(df, theirs, level, fits[level])
        pd.testing.assert_frame_equal(plain_dtypes(mine), plain_dtypes(theirs), check_exact=True)
    assert {"root.1.20000000", "root.1.3"} <= set(mine["cluster"])


def test_a_sample_drawn_ahead_thins_to_the_sample_a_pass_draws():
    """Rows drawn at upper bounds of the thresholds, thinned to the exact ones, are the frame
    select_sample draws at the exact ones (rows, order, index, columns, dtypes); covers says
    when bounds are high enough, and a node without a threshold keeps nothing."""
    from recluster.compute.routing import thin_sample
    from recluster.compute.sampling import ahead_bound, covers

    rng = np.random.default_rng(11)
    n = 5_000
    df = pd.DataFrame({"c0": [f"id-{i}" for i in range(n)], "x": rng.normal(size=n),
                       "y": rng.normal(size=n)})
    state = initial_state(df, "c0", None, 0, 2)
    state["cluster"] = np.array(["root.0", "root.1", "root.2", "root"])[rng.integers(0, 4, n)]
    state["depth"] = np.where(state["cluster"] == "root", 0, 1)
    for exact in ({("root.0", NO_STRATUM): 0.1, ("root.1", NO_STRATUM): 0.37},
                  {("root.0", NO_STRATUM): 1.0, ("root.2", NO_STRATUM): 0.002}):
        bounds = {k: ahead_bound(v * 0.9, 1_000) for k, v in exact.items()}
        bounds[("root.2", NO_STRATUM)] = bounds.get(("root.2", NO_STRATUM), 0.3)  # unused extra
        assert covers(bounds, exact)
        drawn = select_sample(df, state, 2, bounds, ["c0", "x", "y"])
        thinned = thin_sample(drawn, {p: v for (p, _), v in exact.items()})
        pd.testing.assert_frame_equal(thinned, select_sample(df, state, 2, exact, ["c0", "x", "y"]))
        assert len(thinned) < len(drawn)
    assert not covers({("root.0", NO_STRATUM): 0.2}, {("root.0", NO_STRATUM): 0.21})
    assert not covers({("root.0", NO_STRATUM): 0.2}, {("root.1", NO_STRATUM): 0.01})
    assert thin_sample(select_sample(df, state, 2, {("root.0", NO_STRATUM): 0.5}, ["c0"]),
                       {}).empty
