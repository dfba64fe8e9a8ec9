"""Everything that touches storage: listing and reading Parquet, staging and publishing outputs.

Only this module opens files. Locations are fsspec URLs (``s3://…``, ``file://…`` or a local
folder) plus explicit ``storage_options``; S3 credentials and the endpoint come from the
environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``), which
botocore reads itself, so they never pass through the config, a task or a log line.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recluster.errors import InputDataError, OutputConflictError, StorageError

MANIFEST = "manifest.json"
SUCCESS = "_SUCCESS"
STAGING = "_staging"


def _is_s3(url: str) -> bool:
    return url.startswith(("s3://", "s3a://"))


def _options(url: str, storage_options: dict[str, Any], timeout_s: float | None,
             retries: int) -> dict[str, Any]:
    opts = dict(storage_options)
    if _is_s3(url) and timeout_s:
        cfg = dict(opts.get("config_kwargs", {}))
        cfg.setdefault("connect_timeout", timeout_s)
        cfg.setdefault("read_timeout", timeout_s)
        # botocore retries 503 SlowDown, throttling, resets and timeouts with exponential backoff.
        cfg.setdefault("retries", {"total_max_attempts": retries + 1, "mode": "standard"})
        opts["config_kwargs"] = cfg
    return opts


#: s3fs re-issues a request botocore gave up on (or whose body broke off) this many times in all.
S3FS_ATTEMPTS = 2


def filesystem(url: str, storage_options: dict[str, Any] | None = None,
               timeout_s: float | None = 60.0,
               retries: int = 5) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(fs, root)`` for a URL; ``root`` has no protocol and no trailing slash.

    On S3 a request is attempted at most ``S3FS_ATTEMPTS * (retries + 1)`` times, each bounded
    by ``timeout_s`` to connect and to read, so a store that stays down fails in bounded time.
    """
    fs, root = fsspec.core.url_to_fs(url, **_options(url, storage_options or {}, timeout_s,
                                                     retries))
    if _is_s3(url):
        fs.retries = S3FS_ATTEMPTS  # s3fs's own loop (default 5) multiplies botocore's
    return fs, root.rstrip("/")


def _is_transport(exc: BaseException) -> bool:
    """Did the store fail (as opposed to the bytes being bad)? pyarrow's own errors on a
    corrupt file are ``OSError`` without an errno; the store's carry one, or a botocore cause."""
    seen = 0
    while exc is not None and seen < 5:
        mod = type(exc).__module__
        if mod.startswith(("botocore", "aiobotocore", "aiohttp", "urllib3")) or isinstance(
                exc, ConnectionError | TimeoutError):
            return True
        if isinstance(exc, OSError) and exc.errno is not None:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


@contextmanager
def storage_errors(loc: Location, doing: str) -> Iterator[None]:
    """Turn what the store raised after its retries into a :class:`StorageError` naming the URL.

    ``FileNotFoundError`` passes through: callers decide what a missing file means.
    """
    try:
        yield
    except (FileNotFoundError, FileExistsError, InputDataError, OutputConflictError):
        raise
    except Exception as exc:
        if not _is_transport(exc):
            raise
        raise StorageError(
            f"storage failed while {doing} ({loc.url}): {type(exc).__name__}: {exc} -- after "
            f"runtime.storage_retries={loc.retries} retries with runtime.storage_timeout_s="
            f"{loc.timeout_s:g}") from None


@dataclass(frozen=True)
class Location:
    """A picklable handle on a storage location (URL + non-secret options)."""

    url: str
    storage_options: tuple[tuple[str, Any], ...] = ()
    timeout_s: float = 60.0
    retries: int = 5

    @classmethod
    def of(cls, url: str, storage_options: dict[str, Any] | None = None,
           timeout_s: float = 60.0, retries: int = 5) -> Location:
        return cls(url, tuple(sorted((storage_options or {}).items())), timeout_s, retries)

    def fs(self) -> tuple[fsspec.AbstractFileSystem, str]:
        return filesystem(self.url, dict(self.storage_options), self.timeout_s, self.retries)


# ---------------------------------------------------------------------------- reading


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


# ---------------------------------------------------------------------------- writing


def parquet_bytes(df: pd.DataFrame, dictionary_columns: Sequence[str] = ()) -> bytes:
    """Serialize a frame to Parquet; dictionary encoding only where it pays (string columns)."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf, use_dictionary=list(dictionary_columns) or False, compression="zstd")
    return buf.getvalue()


def frame_from_parquet_bytes(data: bytes) -> pd.DataFrame:
    """The inverse of :func:`parquet_bytes`."""
    return pq.read_table(io.BytesIO(data)).to_pandas()


def write_file(url: str, data: bytes, storage_options: dict[str, Any] | None = None) -> str:
    """Write one file anywhere fsspec reaches (e.g. a rebuilt report); returns its path."""
    fs, path = filesystem(url, storage_options)
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    fs.pipe_file(path, data)
    return path


class OutputStore:
    """The output prefix of one run: a staging area, and publication by manifest.

    Everything is written under ``<root>/_staging/`` first. :meth:`publish` moves the staged
    files into place, then creates ``manifest.json`` with a conditional create (it fails if a
    manifest already exists), then writes ``_SUCCESS``. Readers trust only runs with a manifest.
    """

    def __init__(self, loc: Location):
        self.loc = loc
        self.fs, self.root = loc.fs()

    def _p(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def staged(self, rel: str) -> str:
        return self._p(STAGING, rel)

    def published_manifest(self) -> dict[str, Any] | None:
        path = self._p(MANIFEST)
        try:
            with storage_errors(self.loc, "reading the published manifest"), \
                    self.fs.open(path, "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None

    def read(self, rel: str, staged: bool = False) -> bytes | None:
        """A published (or staged) file's bytes, None if it is not there."""
        try:
            return self.fs.cat_file(self.staged(rel) if staged else self._p(rel))
        except FileNotFoundError:
            return None

    def is_complete(self) -> bool:
        """A manifest and ``_SUCCESS`` are both there: the run finished publishing."""
        self.fs.invalidate_cache()
        return self.fs.exists(self._p(MANIFEST)) and self.fs.exists(self._p(SUCCESS))

    def reset_staging(self) -> None:
        """Forget whatever an earlier failed attempt left in staging."""
        with storage_errors(self.loc, "clearing the staging area"):
            if self.fs.exists(self._p(STAGING)):
                self.fs.rm(self._p(STAGING), recursive=True)
        self.fs.invalidate_cache()

    def unpublish(self) -> None:
        """Remove a published run: its manifest first, so that it stops being trusted at once."""
        for name in (MANIFEST, SUCCESS):
            if self.fs.exists(self._p(name)):
                self.fs.rm(self._p(name))
        for entry in self._published_entries():
            self.fs.rm(entry, recursive=True)

    def _published_entries(self) -> list[str]:
        try:
            entries = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        keep = {self._p(STAGING), self._p(MANIFEST), self._p(SUCCESS)}
        return [e.rstrip("/") for e in entries if e.rstrip("/") not in keep]

    def write_staged(self, rel: str, data: bytes) -> str:
        path = self.staged(rel)
        with storage_errors(self.loc, f"writing {rel}"):
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
            self.fs.pipe_file(path, data)
        return path

    def publish(self, manifest: dict[str, Any]) -> None:
        """Move staged files into place and create the manifest (exclusively), then ``_SUCCESS``."""
        with storage_errors(self.loc, "publishing"):
            self._publish(manifest)

    def _publish(self, manifest: dict[str, Any]) -> None:
        if self.published_manifest() is not None:
            raise OutputConflictError(f"{self.loc.url} already holds a published run")
        # Leftovers of a publication that died before its manifest: not trusted, replace them.
        for entry in self._published_entries():
            self.fs.rm(entry, recursive=True)
        staging = self._p(STAGING)
        self.fs.invalidate_cache()
        sources = sorted(self.fs.find(staging))
        targets = [self._p(src[len(staging) + 1:]) for src in sources]
        for target in {posixpath.dirname(t) for t in targets}:
            self.fs.makedirs(target, exist_ok=True)
        if sources:
            self.fs.copy(sources, targets)  # server-side on object stores
        body = json.dumps(manifest, indent=2, sort_keys=True).encode()
        try:
            self.fs.pipe_file(self._p(MANIFEST), body, mode="create")
        except FileExistsError:
            raise OutputConflictError(
                f"another run published {self.loc.url} while this one was running"
            ) from None
        self.fs.pipe_file(self._p(SUCCESS), b"")
        if self.fs.exists(staging):
            self.fs.rm(staging, recursive=True)
        self.fs.invalidate_cache()
