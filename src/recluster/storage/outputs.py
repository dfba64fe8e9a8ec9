"""Writing outputs: Parquet bytes, single files, and the output prefix of a run (staging and
publication by manifest).
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recluster.errors import OutputConflictError
from recluster.storage.fs import Location, filesystem, storage_errors

MANIFEST = "manifest.json"
SUCCESS = "_SUCCESS"
STAGING = "_staging"

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
