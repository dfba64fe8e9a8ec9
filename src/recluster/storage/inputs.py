"""Reading the input table: listing Parquet files, their footers, pieces of row groups, and
reading one piece into pandas.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recluster.errors import InputDataError
from recluster.storage.fs import Location, storage_errors


@dataclass(frozen=True)
class FileInfo:
    """What a Parquet footer says about one file."""

    path: str
    schema: pa.Schema
    row_group_rows: tuple[int, ...]

    @property
    def n_rows(self) -> int:
        return sum(self.row_group_rows)


@dataclass(frozen=True)
class Piece:
    """A unit of parallel work: some row groups of one file."""

    index: int
    path: str
    row_groups: tuple[int, ...]
    n_rows: int


def list_parquet_files(loc: Location) -> list[str]:
    """All Parquet data files under the input location, sorted (hidden and ``_`` files skipped)."""
    fs, root = loc.fs()
    fs.invalidate_cache(root)  # a long-lived process must see the files as they are now
    try:
        with storage_errors(loc, "listing the input"):
            if fs.isfile(root):
                return [root]
            found = fs.find(root)
    except FileNotFoundError:
        raise InputDataError(f"input path does not exist: {loc.url}") from None
    files = []
    for p in found:
        rel = p[len(root):].lstrip("/")
        if any(part.startswith(("_", ".")) for part in rel.split("/")):
            continue
        if p.endswith((".parquet", ".parq", ".pq")) or "." not in posixpath.basename(p):
            files.append(p)
    if not files:
        raise InputDataError(f"no Parquet files found under {loc.url}")
    return sorted(files)


def _read_footer(fs: fsspec.AbstractFileSystem, loc: Location, path: str) -> FileInfo:
    try:
        with storage_errors(loc, f"reading the footer of {path}"), fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
            schema = meta.schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as exc:  # not the store's fault: the bytes
        raise InputDataError(f"cannot read Parquet file {path}: {exc}") from None
    rows = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    return FileInfo(path=path, schema=schema, row_group_rows=rows)


def read_footers(loc: Location, files: Sequence[str], threads: int = 16) -> list[FileInfo]:
    """Read every file's footer (schema and row-group sizes) with a small thread pool."""
    fs, _ = loc.fs()
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(files)))) as pool:
        return list(pool.map(lambda p: _read_footer(fs, loc, p), files))


def plan_pieces(infos: Sequence[FileInfo], rows_per_piece: int) -> list[Piece]:
    """Group consecutive row groups of each file into pieces of about ``rows_per_piece`` rows.

    Files with no rows give no piece. The plan depends only on the files, so every pass over
    the data sees the same pieces in the same order.
    """
    pieces: list[Piece] = []
    for info in infos:
        group: list[int] = []
        n = 0
        for rg, rows in enumerate(info.row_group_rows):
            if rows == 0:
                continue
            if group and n + rows > rows_per_piece:
                pieces.append(Piece(len(pieces), info.path, tuple(group), n))
                group, n = [], 0
            group.append(rg)
            n += rows
        if group:
            pieces.append(Piece(len(pieces), info.path, tuple(group), n))
    return pieces


def read_piece(piece: Piece, loc: Location, columns: Sequence[str]) -> pd.DataFrame:
    """Read the requested columns of one piece into pandas."""
    fs, _ = loc.fs()
    try:
        with storage_errors(loc, f"reading {piece.path}"), fs.open(piece.path, "rb") as f:
            table = pq.ParquetFile(f).read_row_groups(list(piece.row_groups), columns=list(columns))
    except (OSError, pa.ArrowException) as exc:
        raise InputDataError(f"cannot read {piece.path}: {exc}") from None
    return table.to_pandas()


def file_identities(loc: Location, paths: Sequence[str]) -> list[dict[str, object]]:
    """What each input file is right now, beyond its path: size and ETag (object stores) or
    modification time (local disks), from fsspec ``info``. A file rewritten in place changes
    its identity even when its row count and schema stay the same.

    Parameters
    ----------
    loc : the input location
    paths : (n,) file paths as listed under ``loc``

    Returns
    -------
    list of n dicts ``{"path", "size", "version"}``, in the order of ``paths``; ``version`` is the
    ETag (quotes stripped) or the modification time, whichever the store gives (ETag first).
    """
    fs, root = loc.fs()
    with storage_errors(loc, "reading the input files' identities"):
        fs.invalidate_cache(root)
        try:
            found = fs.find(root, detail=True) if not fs.isfile(root) else {}
        except FileNotFoundError:
            found = {}
        missing = [p for p in paths if p not in found]
        if missing:
            with ThreadPoolExecutor(max_workers=max(1, min(16, len(missing)))) as pool:
                found = {**found, **dict(zip(missing, pool.map(fs.info, missing), strict=True))}
    out = []
    for p in paths:
        info = found[p]
        version = info.get("ETag") or info.get("etag") or info.get("mtime") \
            or info.get("LastModified") or info.get("last_modified")
        if isinstance(version, str):
            version = version.strip('"')
        out.append({"path": p, "size": int(info.get("size") or 0), "version": str(version)})
    return out
