"""Attacks on the per-row state in compact dtypes (issue 18, memory): paths and strata as
categoricals whose code width grows with the partition (int8 up to 127 distinct values, int16 up
to 32,767, then int32), ``depth`` int8, ``level_<n>`` Int32, and a level's new state sharing
the columns it leaves alone with the previous one. The labels must stay those of the plain
state (``jobs/routing_reference.py``, the pass before route-then-evaluate) and keep the labels
contract's dtypes, in every partition (an empty one too). Pure compute (real preprocessing and
real kNN assigners), and one run through the CLI."""

from __future__ import annotations

import io
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tables import check_published, penguins, run
from test_routing import _node

from recluster.compute.compare import rename_state
from recluster.compute.routing import (
    STRATUM,
    assign_level,
    initial_state,
    node_counts,
    plain_dtypes,
    select_sample,
)
from recluster.parallel.passes import labels_bytes, labels_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))
import routing_reference  # noqa: E402  (the pass before route-then-evaluate)

pytestmark = pytest.mark.timeout(300)

GROUPS, SUBS = 20, 15  # 20 root children x 15 grandchildren: 300 paths in one partition


def _table(n: int, seed: int) -> pd.DataFrame:
    """Rows on a 20 x 15 grid of tight groups (x: group, y: sub-group); ids ``uint64`` above
    2^63; ``plan`` a stratum of a distinct text per row but 5% nulls."""
    rng = np.random.default_rng(seed)
    g, s = rng.integers(0, GROUPS, n), rng.integers(0, SUBS, n)
    plan = pd.Series(rng.permutation(n).astype(str), dtype=object)
    plan[rng.random(n) < 0.05] = None
    return pd.DataFrame({"c0": np.uint64(2**63) + np.uint64(seed) * np.uint64(10**7)
                         + np.arange(n, dtype=np.uint64),
                         "x": g * 10.0 + rng.normal(0, 0.5, n),
                         "y": s * 10.0 + rng.normal(0, 0.5, n), "plan": plan})


def _wide_tree(train: pd.DataFrame) -> dict[int, dict]:
    """Level 1: the root in 20 (2% noise); level 2: each child in 15; level 3: one grandchild
    of each child in two (320 paths in all)."""
    rng = np.random.default_rng(0)
    groups = np.round(train["x"].to_numpy() / 10).astype(int)
    groups[rng.random(len(groups)) < 0.02] = -1
    fits = {1: {"root": _node("root", train, groups)}, 2: {}, 3: {}}
    for k in range(GROUPS):
        rows = train[groups == k]
        subs = np.round(rows["y"].to_numpy() / 10).astype(int)
        fits[2][f"root.{k}"] = _node(f"root.{k}", rows, subs)
        deep = rows[subs == 0]
        fits[3][f"root.{k}.0"] = _node(f"root.{k}.0", deep,
                                       (deep["x"].to_numpy() > k * 10).astype(int))
    return fits


def test_code_widths_grow_and_the_labels_stay_the_plain_states():
    """More than 255 paths and more than 32,767 strata in one partition: the codes widen to
    int16 and int32; routing, the sample draw, the counts and the labels are bit for bit those
    of the plain state, assigning a level leaves the previous state as it was, and the sample
    draw's memory does not grow with paths x strata."""
    fits = _wide_tree(_table(6_000, 1))
    df = _table(36_000, 2)
    mine = theirs = initial_state(df, "c0", "plan", 5, 2)
    assert mine[STRATUM].nunique() > 32_767 and mine[STRATUM].cat.codes.dtype == np.int32
    widths = []
    for level in (1, 2, 3):
        before = mine.copy(deep=True)
        new = assign_level(df, mine, level, fits[level])
        pd.testing.assert_frame_equal(mine, before, check_exact=True)  # shared, not changed
        mine = new
        theirs = routing_reference.assign_level(df, theirs, level, fits[level])
        pd.testing.assert_frame_equal(plain_dtypes(mine), plain_dtypes(theirs), check_exact=True)
        widths.append(mine["cluster"].cat.codes.dtype)
    assert mine["cluster"].nunique() > 255 and widths[0] == np.int8 and widths[-1] == np.int16
    strata = mine[STRATUM].astype(object).to_numpy()
    thresholds = {(p, s): 0.3 for p in set(mine["cluster"]) for s in set(strata[::7])}
    for level in (1, 2, 3, 4):
        pd.testing.assert_frame_equal(select_sample(df, mine, level, thresholds, ["c0", "x"]),
                                      routing_reference.select_sample(df, mine, level,
                                                                      thresholds, ["c0", "x"]),
                                      check_exact=True)
    # The draw's working memory follows the frontier, not paths x strata of the partition
    # (321 paths x ~34k strata: an 86 MiB table for a level-4 frontier of ~2k rows; 1734e82's
    # table was 71 MiB at level 3).
    for level in (3, 4):
        tracemalloc.start()
        select_sample(df, mine, level, thresholds, ["c0", "x"])
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 24 * 2**20, (level, peak / 2**20)
    counts = node_counts(mine)  # in the categories' order; the caller sums and sorts them
    assert counts["rows"].sum() == len(df)
    keys = ["cluster", "depth", STRATUM]
    pd.testing.assert_frame_equal(counts.sort_values(keys, ignore_index=True),
                                  node_counts(plain_dtypes(mine)), check_exact=True)
    table = labels_table(mine, "c0", 4)
    assert table["c0"].dtype == np.uint64 and table["c0"].tolist() == df["c0"].tolist()
    assert {str(table[c].dtype) for c in ("level_1", "level_2", "level_3", "level_4")} == {"Int64"}
    assert table["depth"].dtype == np.int64 and table["depth"].max() == 3
    assert not isinstance(table["cluster"].dtype, pd.CategoricalDtype)


def test_renaming_a_compact_state_renames_as_the_plain_one():
    """``run --previous``: renaming paths keeps the compact dtypes and gives the plain state's
    renamed values (paths swapped between two children, a level-2 child renumbered)."""
    fits = _wide_tree(_table(3_000, 1))
    df = _table(4_000, 3)
    state = initial_state(df, "c0", "plan", 5, 2)
    for level in (1, 2):
        state = assign_level(df, state, level, {p: f for p, f in fits[level].items()
                                                if level == 1 or p in ("root.0", "root.1")})
    final = {"root.0": "root.1", "root.1": "root.0", "root.0.3": "root.1.9",
             "root.1.3": "root.0.3"}
    mine = rename_state(state, final)
    assert isinstance(mine["cluster"].dtype, pd.CategoricalDtype)
    assert {str(mine[f"level_{lvl}"].dtype) for lvl in (1, 2)} == {"Int32"}
    pd.testing.assert_frame_equal(plain_dtypes(mine), rename_state(plain_dtypes(state), final),
                                  check_exact=True)
    assert (mine["cluster"] == "root.1.9").any() and (mine["level_2"] == 9).any()


@pytest.mark.parametrize(("id_type", "values"), [
    (pa.large_string(), ["a", ""]), (pa.uint64(), np.array([2**63, 2**64 - 1], np.uint64)),
    (pa.binary(), ["00ff", "61"]),  # binary ids are held as hex text inside the job
    (pa.dictionary(pa.int32(), pa.string()), ["a", "b"])],
    ids=["large_string", "uint64", "binary", "dictionary"])
def test_an_empty_partitions_labels_have_the_contracts_types(id_type, values):
    """The labels file of an empty partition has the Arrow types of any other (its ``cluster``
    was written as type null: the folder then failed to read as one table)."""
    df = pd.DataFrame({"c0": values, "x": [1.0, 2.0], "plan": ["p", None]})
    schemas = []
    for part in (df, df.iloc[:0]):
        state = initial_state(part, "c0", "plan", 0, 2)
        data, _ = labels_bytes(state, "id", 2, id_type)
        schemas.append(pq.read_table(io.BytesIO(data)).schema)
        assert len(pd.read_parquet(io.BytesIO(data))) == len(part)  # pandas reads it back
    assert schemas[1].field("cluster").type == pa.string()  # the labels contract's type
    assert schemas[0].remove_metadata() == schemas[1].remove_metadata()
    assert schemas[0].field("id").type == id_type


def test_a_file_the_filter_empties_publishes_labels_that_read_as_one(tmp_path, scheduler,
                                                                      capsys):
    """penguins of Dream island, from three files: one holds only the other islands (its
    statistics, Biscoe..Torgersen, cannot rule it out, so it is read and its partition is
    empty), one a single row. Every labels file has the same types; the folder reads as one
    table, with pyarrow and with pandas, every row once."""
    frame = penguins()
    dream = frame[frame["island"] == "Dream"]
    inp, out = tmp_path / "in", str(tmp_path / "out")
    inp.mkdir()
    for i, part in enumerate([frame[frame["island"] != "Dream"], dream.iloc[:1], dream.iloc[1:]]):
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False),
                       inp / f"part-{i:03d}.parquet")
    code, _, err = run(tmp_path, str(inp), out, scheduler, capsys,
                       {"id_column": "penguin", "categorical": ["species", "sex"],
                        "exclude": ["island"], "filters": [["island", "=", "Dream"]]},
                       recursion={"min_node_rows": 20, "max_depth": 2})
    assert code == 0, err[-3000:]
    files = sorted((tmp_path / "out" / "labels").glob("*.parquet"))
    rows = [pq.read_metadata(f).num_rows for f in files]
    assert 0 in rows and 1 in rows, rows  # the empty and the one-row partition were published
    schemas = {str(pq.read_schema(f).remove_metadata()) for f in files}
    assert len(schemas) == 1, schemas
    check_published(out, pa.array(dream["penguin"].tolist(), pa.large_string()), "penguin")
    labels = pd.read_parquet(tmp_path / "out" / "labels")
    assert sorted(labels["penguin"]) == sorted(dream["penguin"])
