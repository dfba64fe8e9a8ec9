"""Writing outputs: Parquet bytes, single files, and the output folder of a run: what a run
owns there, its staging area, publication by manifest, and what a later run may remove.

Layout of an output folder::

    manifest.json        the published run; ``files`` lists every file it put in place, with its
                         size: the proof of what that run wrote
    _SUCCESS             written last; a manifest without it is an unfinished publication
    labels/ tree.json …  the listed files
    _recluster/          recluster's own working area (a reserved name):
      lock/              the write lock with its lease (:mod:`recluster.storage.lock`)
      staging/<run-id>/  one run attempt's files before publication
      publishing/<run-id>.json   the files a publication in progress is putting in place

A run deletes only: its own staging area; the files the published manifest lists, when it
replaces that run (only after it is fully staged); files a publishing record lists (a run died
while publishing); and, once it holds the lock, staging areas of other attempts (none of them
can still be writing). Anything else in the folder is foreign: a folder holding anything
foreign is refused before any work (:meth:`OutputStore.check_claimable`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
import secrets
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from recluster.config import DEFAULT_LEASE_S
from recluster.errors import ConfigError, OutputConflictError
from recluster.storage.fs import (
    Location,
    create_exclusive,
    filesystem,
    is_folder_entry,
    is_local,
    storage_errors,
)
from recluster.storage.lock import LOCK_DIR, OutputLock, holds

MANIFEST = "manifest.json"
SUCCESS = "_SUCCESS"
RESERVED = "_recluster"
STAGING = f"{RESERVED}/staging"
PUBLISHING = f"{RESERVED}/publishing"
#: Version 2 lists ``files`` (path and size); version 1 listed only ``outputs`` (names).
MANIFEST_VERSION = 2
#: Manifest key: ``{relative path: SHA-256 hex}`` of every published file except ``labels/``
#: (written by :func:`recluster.storage.models.staged_digests`).
DIGESTS = "sha256"

_RUN_ID = r"\d{8}T\d{6}Z-[0-9a-f]{8}"
#: What a run stages (:meth:`OutputStore.write_staged`, and ``deltalake``'s commit of the staged
#: labels): folders and files named with letters, digits and ``_ . = -``, files of the kinds
#: recluster writes. A staging area of a run that died is removed by the next run; anything else
#: in it (a person's notes dropped there were deleted with it) is foreign.
_STAGED_NAME = (r"(?:[A-Za-z0-9_=-][A-Za-z0-9_.=-]*/)*[A-Za-z0-9_=-][A-Za-z0-9_.=-]*"
                r"\.(?:parquet|json|ubj|npz|html|yaml)"
                # deltalake writes a log entry as "<version>.json#<n>", then links it into place
                r"|(?:[A-Za-z0-9_=-][A-Za-z0-9_.=-]*/)*_delta_log/\d{20}\.json#\d+")
_OWN_LAYOUT = re.compile(rf"^{RESERVED}/(?:{LOCK_DIR.split('/', 1)[1]}/\d{{12}}\.(?:json|lease)"
                         rf"|staging/{_RUN_ID}/(?:{_STAGED_NAME})|publishing/{_RUN_ID}\.json)$")
# What version-1 code wrote under the folder names it listed in ``outputs``; any other name it
# listed was one file. Nothing else under those folders is taken to be a v1 run's.
_V1_FOLDERS = {
    "labels/": re.compile(r"^labels/part-\d{5}\.parquet$"),
    "models/": re.compile(r"^models/(?:index\.json|(?:root|\d+(?:\.\d+)*)/(?:preprocess\.json|"
                          r"assigner\.json|assigner\.pkl|[A-Za-z0-9_.-]+\.ubj))$"),
}
_SHOWN = 5  # foreign entries named in a refusal
#: The commit log folder of a Delta Lake table (``labels/`` with ``output.format: delta``).
DELTA_LOG = "_delta_log"
#: Id types a Delta table holds (no unsigned integers, dictionaries or fixed-size binary).
_DELTA_ID_TYPES = (pa.types.is_signed_integer, pa.types.is_string, pa.types.is_large_string,
                   pa.types.is_string_view, pa.types.is_binary, pa.types.is_large_binary,
                   pa.types.is_binary_view)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_run_id() -> str:
    """A fresh id for one run attempt: UTC start time and 32 random bits."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)


def _not_a_folder(path: str) -> bool:
    """On a local disk: something is at ``path`` that is not a folder (a file, a device such as
    ``/dev/null``, a socket, a dangling symlink)."""
    return os.path.lexists(path) and not os.path.isdir(path)


def plain_types(schema: pa.Schema, keep: Collection[str] = ()) -> pa.Schema:
    """``schema`` with the types every published table uses for text: ``string``, where pandas
    3 gives ``large_string`` for its text columns, and ``string`` for a column that holds no
    value at all (pandas' all-``None`` object column, Arrow's ``null`` type, which readers such
    as Spark refuse). The numeric columns of the published tables are typed where they are
    made, so a column without values is a text column. The columns in ``keep`` (an id, in the
    input's own type) stay as they are."""
    def plain(t: pa.DataType) -> pa.DataType:
        if pa.types.is_large_string(t) or pa.types.is_null(t):
            return pa.string()
        if pa.types.is_dictionary(t):  # a pandas categorical of text
            return pa.dictionary(t.index_type, plain(t.value_type), t.ordered)
        return t

    return pa.schema([f if f.name in keep else f.with_type(plain(f.type)) for f in schema],
                     metadata=schema.metadata)


def parquet_bytes(df: pd.DataFrame, dictionary_columns: Sequence[str] = (),
                  schema: pa.Schema | None = None, keep: Collection[str] = ()) -> bytes:
    """Serialize a frame to Parquet (as Arrow ``schema``, if given, with text as
    :func:`plain_types` says; ``keep``: columns whose type is never changed); dictionary
    encoding only where it pays (string columns)."""
    table = pa.Table.from_pandas(df, preserve_index=False, schema=schema)
    plain = plain_types(table.schema, keep)
    if not plain.equals(table.schema):
        table = table.cast(plain)
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


def _safe_rel(rel: Any) -> bool:
    """A relative path a manifest may list: inside the folder, not a control or reserved file."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel:
        return False
    parts = rel.split("/")
    return (all(p not in ("", ".", "..") for p in parts) and parts[0] != RESERVED
            and rel not in (MANIFEST, SUCCESS))


def manifest_files(manifest: dict[str, Any], listing: dict[str, int], where: str
                   ) -> dict[str, int | None]:
    """The files a published manifest proves its run wrote: relative path -> size.

    Version 2 lists them. A version-1 manifest (older recluster) listed only names in
    ``outputs``; its files are derived conservatively from ``listing``: exactly the files that
    version wrote under those names (``labels/part-NNNNN.parquet``, ``models/<node>/…`` model
    files, and the single files it listed by name), with sizes unknown (None).

    Parameters
    ----------
    manifest : the parsed ``manifest.json``
    listing : relative path -> size of every file now in the folder
    where : the folder's URL, for messages

    Raises
    ------
    OutputConflictError
        if the manifest is not one recluster wrote, or lists a path outside the folder.
    """
    version = manifest.get("recluster_manifest")
    if version == 1:
        out: dict[str, int | None] = {}
        for name in manifest.get("outputs", []):
            pattern = _V1_FOLDERS.get(name)
            if pattern is not None:
                out.update({rel: None for rel in listing if pattern.match(rel)})
            elif _safe_rel(name) and not name.endswith("/") and name in listing:
                out[name] = None
        return out
    files = manifest.get("files")
    if not isinstance(version, int) or version < 2 or not isinstance(files, list):
        raise OutputConflictError(f"{where}/{MANIFEST} is not a manifest recluster wrote; "
                                  "the folder belongs to something else: choose another output")
    out = {}
    for entry in files:
        rel = entry.get("path") if isinstance(entry, dict) else None
        if not _safe_rel(rel) or not isinstance(entry.get("size"), int):
            raise OutputConflictError(f"{where}/{MANIFEST} lists {rel!r}, which is not a file "
                                      "inside the folder: it was not written by recluster")
        out[rel] = entry["size"]
    return out


def run_input_location(manifest: Any) -> Location | None:
    """Where the published run of ``manifest`` read its input: the canonical location it
    recorded (``input.location``, a local path resolved where the run ran), or, for runs that
    did not record it, its config's ``input.path``. None if the manifest names neither."""
    if not isinstance(manifest, dict):
        return None
    recorded = manifest.get("input")
    if isinstance(recorded, dict) and isinstance(recorded.get("location"), str):
        return Location.of(recorded["location"])
    config = manifest.get("config")
    section = config.get("input") if isinstance(config, dict) else None
    path = section.get("path") if isinstance(section, dict) else None
    return Location.of(path) if isinstance(path, str) and path else None


@dataclass(frozen=True)
class Decision:
    """What :meth:`OutputStore.prepare` found at the output.

    Attributes
    ----------
    action : ``new`` (run and publish), ``reuse`` (this exact run is published and its files
        verified: nothing to do), ``repaired`` (this exact run was published but its
        ``_SUCCESS`` was missing; the files were verified and ``_SUCCESS`` written)
    previous : the manifest of the run that is there (replaced by publication if ``new``)
    problems : why this exact run, found published, is done again (:meth:`OutputStore.verify`)
    """

    action: str
    previous: dict[str, Any] | None = None
    problems: tuple[str, ...] = ()


class OutputStore:
    """The output folder of one run attempt (``run_id``): ownership, staging and publication.

    Picklable (the filesystem is opened lazily): Dask tasks write their staged files through it,
    and it tokenizes by location and run id, so tasks of two runs never share a key.
    """

    def __init__(self, loc: Location, run_id: str | None = None,
                 generation: int | None = None):
        self.loc = loc
        self.run_id = run_id
        self.lock: OutputLock | None = None
        self.closed = False
        self._publishing = threading.Lock()  # held by a publication under way (see close)
        self._generation = generation  # of the lock, in a copy sent to a worker
        self._fs = None
        self._root: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"loc": self.loc, "run_id": self.run_id, "generation": self.generation}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["loc"], state["run_id"], state.get("generation"))

    @property
    def generation(self) -> int | None:
        """The generation of the folder's lock this attempt holds (None: it holds none)."""
        return self.lock.generation if self.lock is not None else self._generation

    def __dask_tokenize__(self):
        return ("OutputStore", self.loc, self.run_id)

    @property
    def fs(self):
        if self._fs is None:
            self._fs, self._root = self.loc.fs()
        return self._fs

    @property
    def root(self) -> str:
        if self._root is None:
            self._fs, self._root = self.loc.fs()
        return self._root

    def _p(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # -- reading what is there ---------------------------------------------------------------

    def published_manifest(self) -> dict[str, Any] | None:
        path = self._p(MANIFEST)
        try:
            with storage_errors(self.loc, "reading the published manifest"):
                raw = self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise OutputConflictError(f"{self.loc.url}/{MANIFEST} is not a manifest recluster "
                                      "wrote (not a JSON object): choose another output")
        return data

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

    def _find(self, folder: str) -> dict[str, int]:
        """relative path (to ``folder``) -> size of every file under ``folder``."""
        self.fs.invalidate_cache()
        try:
            found = self.fs.find(folder, detail=True)
        except FileNotFoundError:
            return {}
        prefix = folder + "/"
        return {p[len(prefix):]: int(info.get("size") or 0) for p, info in found.items()
                if p.startswith(prefix) and not is_folder_entry(p, info)}

    def listing(self) -> dict[str, int]:
        """relative path -> size of every file in the output folder (the reserved area too)."""
        with storage_errors(self.loc, "listing the output folder"):
            return self._find(self.root)

    def publishing_records(self) -> dict[str, list[str]]:
        """Publications that did not finish: run id -> the files each was putting in place."""
        out = {}
        for rel in self._find(self._p(PUBLISHING)):
            if not rel.endswith(".json"):
                continue
            try:
                files = json.loads(self.fs.cat_file(self._p(PUBLISHING, rel))).get("files", [])
            except (FileNotFoundError, ValueError, AttributeError):
                continue
            out[rel[:-len(".json")]] = [f for f in files if _safe_rel(f)]
        return out

    def check_claimable(self) -> None:
        """Refuse (before any work) an output that is a file, or a folder holding anything that
        no recluster run here can be shown to have written."""
        with storage_errors(self.loc, "looking at the output folder"):
            self.fs.invalidate_cache()
            local = isinstance(self.fs, LocalFileSystem)
            if self.fs.isfile(self.root) or (local and _not_a_folder(self.root)):
                raise OutputConflictError(
                    f"output path {self.loc.url} is an existing file, not a folder: recluster "
                    "writes a folder of outputs there; choose a folder path")
            if local:
                parent = os.path.dirname(self.root)
                while parent and parent != os.path.dirname(parent):
                    if _not_a_folder(parent):
                        raise OutputConflictError(
                            f"output path {self.loc.url} lies under {parent}, which is an "
                            "existing file, not a folder; choose a folder path")
                    parent = os.path.dirname(parent)
            holder = self._enclosing_run()
        if holder is not None:
            raise OutputConflictError(
                f"output path {self.loc.url} lies inside {holder}, the folder of another "
                "recluster run: that run's folder would hold files it did not write, and its "
                "next run would refuse it; choose an output folder outside it")
        listing = self.listing()
        if not listing:
            return
        owned: set[str] = {MANIFEST, SUCCESS}
        manifest = self.published_manifest()
        if manifest is not None:
            owned |= set(manifest_files(manifest, listing, self.loc.url))
        with storage_errors(self.loc, "reading unfinished publications"):
            for files in self.publishing_records().values():
                owned |= set(files)
        foreign = sorted(rel for rel in listing if rel not in owned and not _OWN_LAYOUT.match(rel))
        if not foreign:
            return
        shown = ", ".join(foreign[:_SHOWN]) + (f" and {len(foreign) - _SHOWN} more"
                                               if len(foreign) > _SHOWN else "")
        legacy = any(rel.startswith("_staging/") for rel in foreign)
        raise OutputConflictError(
            f"output folder {self.loc.url} holds {len(foreign)} file(s) that no recluster run "
            f"there wrote ({shown}); recluster deletes only what it wrote, so it writes only into "
            "an empty folder or one holding a recluster run. Choose another output.path or move "
            "those files" + ("; _staging/ is an earlier recluster version's staging area: delete "
                             "it if no older run is writing there" if legacy else ""))

    def _enclosing_run(self) -> str | None:
        """The nearest folder above the output that holds a recluster run (its working area
        ``_recluster/``, or a manifest recluster wrote), as a URL; None if there is none. Folders
        this process may not read are passed over. On a local disk the folders above the path
        with its symlinks resolved are looked at too: a link into a run's folder led a whole run
        to be published inside another one."""
        starts = [self.root]
        if is_local(self.loc.url):
            real = os.path.realpath(self.root)
            if real != self.root:
                starts.append(real)
        for path in starts:
            while (parent := posixpath.dirname(path)) and parent != path:
                path = parent
                try:
                    if self.fs.exists(f"{parent}/{RESERVED}"):
                        return self.loc.shown(parent)
                    manifest = json.loads(self.fs.cat_file(f"{parent}/{MANIFEST}"))
                except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                        ValueError):
                    continue
                if isinstance(manifest, dict) and "recluster_manifest" in manifest:
                    return self.loc.shown(parent)
        return None

    def preflight(self) -> None:
        """Everything :func:`claim` refuses, read-only: a file, foreign files, a live lock. Cheap:
        the command line runs it before it starts a cluster."""
        self.check_claimable()
        OutputLock(self.loc, self.fs, self.root, "", DEFAULT_LEASE_S, "").check_free()

    # -- the lock ------------------------------------------------------------------------------

    def take_lock(self, lease_s: float, command: str) -> None:
        """Take the folder's write lock, renew it in the background, and clear staging areas
        of attempts that are no longer running (none can be while this one holds the lock)."""
        self.lock = OutputLock(self.loc, self.fs, self.root, self.run_id, lease_s, command)
        try:
            self.lock.acquire()
        except FileNotFoundError as exc:  # the first write: an object store's missing bucket
            raise OutputConflictError(
                f"output path {self.loc.url} cannot be written: {exc} -- recluster creates the "
                "folders under output.path, not the bucket it names") from None
        self.lock.start()
        with storage_errors(self.loc, "clearing staging areas of dead runs"):
            others = {rel.split("/", 1)[0] for rel in self._find(self._p(STAGING))}
            for run_id in sorted(others - {self.run_id}):
                if re.fullmatch(_RUN_ID, run_id):
                    self._remove_folder(self._p(STAGING, run_id))

    # -- deciding what to do -----------------------------------------------------------------

    def verify(self, manifest: dict[str, Any]) -> list[str]:
        """Problems with a published run's files: missing, a size other than listed, or (for
        the files whose SHA-256 the manifest records: all but ``labels/``) other bytes."""
        listing = self.listing()
        digests = manifest.get(DIGESTS)
        digests = digests if isinstance(digests, dict) else {}
        problems = []
        for rel, size in manifest_files(manifest, listing, self.loc.url).items():
            if rel not in listing:
                problems.append(f"{rel} is missing")
            elif size is not None and listing[rel] != size:
                problems.append(f"{rel} has {listing[rel]} bytes, the manifest says {size}")
            elif isinstance(digests.get(rel), str) and sha256_hex(
                    self.fs.cat_file(self._p(rel))) != digests[rel]:
                problems.append(f"{rel} does not have the SHA-256 the manifest records")
        if manifest.get("recluster_manifest") == 1:
            problems.append("a version-1 manifest does not list file sizes")
        return problems

    def prepare(self, fingerprint: str, overwrite: bool, overwrite_hint: str) -> Decision:
        """Compare the run about to start with what is published at the output.

        Parameters
        ----------
        fingerprint : the new run's fingerprint (config and input identity)
        overwrite : may a different published run be replaced?
        overwrite_hint : how the user allows that (``set output.overwrite: true``)
        """
        existing = self.published_manifest()
        if existing is None:
            return Decision("new")
        self.fs.invalidate_cache()
        if existing.get("fingerprint") == fingerprint:
            # This exact run is there: it is reused (or its publication finished) only if its
            # files are; else it is done again, which needs no overwrite (it is the same run).
            with storage_errors(self.loc, "verifying the published run"):
                problems = tuple(self.verify(existing))
            if problems:
                return Decision("new", existing, problems)
            if self.fs.exists(self._p(SUCCESS)):
                with storage_errors(self.loc, "clearing unfinished publications"):
                    self._clear_publications(keep=set(manifest_files(
                        existing, self.listing(), self.loc.url)))
                return Decision("reuse", existing)
            with storage_errors(self.loc, "repairing the publication"):
                self._clear_publications(keep=set(manifest_files(
                    existing, self.listing(), self.loc.url)))
                self.lock.check()
                self.fs.pipe_file(self._p(SUCCESS), b"")
            return Decision("repaired", existing)
        if not overwrite:
            older = (" (written by an older recluster version)"
                     if existing.get("recluster_manifest") == 1 else "")
            raise OutputConflictError(
                f"{self.loc.url} already holds a different published run{older}; choose another "
                f"output folder or {overwrite_hint} to replace it")
        return Decision("new", existing)

    # -- staging -------------------------------------------------------------------------------

    def _staging(self) -> str:
        if self.run_id is None:
            raise ValueError("an OutputStore without a run id has no staging area")
        return self._p(STAGING, self.run_id)

    def staged(self, rel: str) -> str:
        return f"{self._staging()}/{rel}"

    def write_staged(self, rel: str, data: bytes) -> str:
        """Write ``rel`` into this attempt's staging area (from the client or a worker).

        A staged file stands only while the attempt holds the folder's lock: the lock is read
        back after the write, and a file written after the attempt ended (a task still running
        when the run failed, timed out or was interrupted, or after it lost the lock) is removed
        again, since the attempt's own clean-up, which runs after it releases the lock, may
        already be over.
        """
        if self.closed:
            raise OutputConflictError(f"{self.loc.url}: run {self.run_id} has ended; "
                                      f"not writing {rel}")
        path = self.staged(rel)
        with storage_errors(self.loc, f"writing {rel}"):
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
            self.fs.pipe_file(path, data)
            if holds(self.fs, self.root, self.generation, self.run_id):
                return path
            try:
                self.fs.rm_file(path)
            except FileNotFoundError:
                pass
            self._prune(posixpath.dirname(path))
        raise OutputConflictError(f"{self.loc.url}: run {self.run_id} no longer holds the output "
                                  f"folder's lock (it has ended); not writing {rel}")

    def _prune(self, folder: str) -> None:
        """On a local disk, remove ``folder`` and its parents up to the reserved area (itself
        included) while they are empty (object stores have no folders)."""
        if not isinstance(self.fs, LocalFileSystem):
            return
        top = self._p(RESERVED)
        while folder == top or folder.startswith(top + "/"):
            try:
                os.rmdir(folder)
            except OSError:
                return
            folder = posixpath.dirname(folder)

    def _remove_folder(self, folder: str) -> None:
        """Delete every file under ``folder`` (a folder of this run's own making)."""
        if isinstance(self.fs, LocalFileSystem):
            try:
                if self.fs.exists(folder):
                    self.fs.rm(folder, recursive=True)
            except FileNotFoundError:  # removed at the same time by the lock's next holder
                pass
        else:
            files = [f"{folder}/{rel}" for rel in self._find(folder)]
            if files:
                self.fs.rm(files)
        self.fs.invalidate_cache()

    def discard_staging(self) -> None:
        """Remove this attempt's staging area (after a failure; best effort)."""
        with storage_errors(self.loc, "removing the staging area"):
            self._remove_folder(self._staging())

    # -- publication ---------------------------------------------------------------------------

    def _clear_publications(self, keep: set[str]) -> None:
        """Remove what unfinished publications of dead runs put in place (except ``keep``),
        then their records."""
        records = self.publishing_records()
        present = self._find(self.root)
        doomed = sorted(({f for files in records.values() for f in files} - keep) & set(present))
        if doomed:
            self.fs.rm([self._p(rel) for rel in doomed])
        for run_id in records:
            if run_id != self.run_id:
                try:
                    self.fs.rm_file(self._p(PUBLISHING, f"{run_id}.json"))
                except FileNotFoundError:
                    pass

    def publish(self, manifest: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
        """Put the staged files in place and publish them; returns the published manifest.

        Order: a publishing record lists the files about to be put in place; the previous run
        loses ``_SUCCESS``; its files (and those of dead publications) that this run does not
        write again are removed; the staged files move into place; the manifest is replaced
        (the new one created with a conditional create); ``_SUCCESS``; the record and the
        staging area go. A crash at any step leaves every file listed by the manifest or a
        record, so the next run can finish or redo the work.

        Parameters
        ----------
        manifest : the run's manifest without ``files``
        previous : the manifest :meth:`prepare` found (None if there was none)
        """
        with self._publishing:
            if self.closed:
                raise OutputConflictError(f"{self.loc.url}: run {self.run_id} has ended; "
                                          "not publishing")
            self.lock.check()
            with storage_errors(self.loc, "publishing"):
                return self._publish(manifest, previous)

    def close(self) -> None:
        """End the attempt: no staged write or publication starts after this. A publication
        under way (in the run's thread, when the caller lets go because the run timed out) is
        finished first: stopped halfway, with the lock and staging area gone from under it, it
        left the previous run without ``_SUCCESS`` or its files and this one unpublished."""
        with self._publishing:
            self.closed = True

    def _publish(self, manifest: dict[str, Any], previous: dict[str, Any] | None
                 ) -> dict[str, Any]:
        staging = self._staging()
        staged = self._find(staging)
        final = {**manifest, "recluster_manifest": MANIFEST_VERSION, "run_id": self.run_id,
                 "files": [{"path": rel, "size": size} for rel, size in sorted(staged.items())]}
        current = self.published_manifest()
        if (current or {}).get("run_id", (current or {}).get("fingerprint")) != \
                (previous or {}).get("run_id", (previous or {}).get("fingerprint")):
            raise OutputConflictError(f"{self.loc.url}: the published run changed while this run "
                                      "was running; nothing was published")
        listing = self._find(self.root)
        old = set(manifest_files(current, listing, self.loc.url)) if current else set()
        for files in self.publishing_records().values():
            old |= set(files)
        record = self._p(PUBLISHING, f"{self.run_id}.json")
        self.fs.makedirs(posixpath.dirname(record), exist_ok=True)
        self.fs.pipe_file(record, json.dumps({"run_id": self.run_id,
                                              "files": sorted(staged)}).encode())
        if SUCCESS in listing:
            self.fs.rm_file(self._p(SUCCESS))
        stale = sorted((old - set(staged)) & set(listing))
        if stale:
            self.fs.rm([self._p(rel) for rel in stale])
        # A table's commit log last: a Delta reader sees the labels table only once its data
        # files are all in place (output.format: delta).
        self._move_into_place(staging, sorted(staged, key=lambda r: (f"/{DELTA_LOG}/" in r, r)))
        if current is not None:
            self.fs.rm_file(self._p(MANIFEST))
        body = json.dumps(final, indent=2, sort_keys=True).encode()
        try:
            create_exclusive(self.fs, self._p(MANIFEST), body)
        except FileExistsError:
            raise OutputConflictError(
                f"another run published {self.loc.url} while this one was running") from None
        self.fs.pipe_file(self._p(SUCCESS), b"")
        self._clear_publications(keep=set(staged))
        self.fs.rm_file(record)
        self._remove_folder(staging)
        return json.loads(body)

    def _move_into_place(self, staging: str, rels: list[str]) -> None:
        sources = [f"{staging}/{rel}" for rel in rels]
        targets = [self._p(rel) for rel in rels]
        for folder in sorted({posixpath.dirname(t) for t in targets}):
            self.fs.makedirs(folder, exist_ok=True)
        if isinstance(self.fs, LocalFileSystem):
            for src, dst in zip(sources, targets, strict=True):
                os.replace(src, dst)  # a rename: instant, whatever the size
        elif sources:
            self.fs.copy(sources, targets)  # server-side on object stores

    def tidy(self, created_root: bool) -> None:
        """On a local disk, remove the reserved area's empty folders (and the output folder if
        this run created it and left nothing in it)."""
        if not isinstance(self.fs, LocalFileSystem):
            return
        for rel in (STAGING, PUBLISHING, LOCK_DIR, RESERVED):
            try:
                os.rmdir(self._p(rel))
            except OSError:
                pass
        if created_root:
            try:
                os.rmdir(self.root)
            except OSError:
                pass


@contextmanager
def claim(loc: Location, lease_s: float, command: str) -> Iterator[OutputStore]:
    """Claim an output folder for one run attempt; yields its :class:`OutputStore`.

    Before anything is written: an output that is a file, or a folder holding foreign files, is
    refused. Then the folder's lock is taken (refused if another run holds it) and renewed while
    the attempt runs. On the way out, however it ends: the lock is released, then the attempt's
    staging area is removed (nothing of it is left if it did not publish; a worker's write that
    lands later removes itself, see :meth:`OutputStore.write_staged`).
    """
    store = OutputStore(loc, new_run_id())
    store.check_claimable()
    with storage_errors(loc, "looking at the output folder"):
        created = not store.fs.exists(store.root)
    try:
        store.take_lock(lease_s, command)
        yield store
    finally:
        store.close()
        held = store.generation is not None
        try:
            if store.lock is not None:
                # First: a staged write still under way on a worker sees the lock gone and
                # removes its own file; whatever was written before is removed below.
                store.lock.release()
        finally:
            if held:
                store.discard_staging()
            store.tidy(created)


def check_delta_labels(id_column: str, id_type: pa.DataType) -> None:
    """Refuse (before any work) an id the labels' Delta table cannot hold as the input has it.

    Raises
    ------
    ConfigError
        naming the id column and its type.
    """
    if not any(ok(id_type) for ok in _DELTA_ID_TYPES):
        raise ConfigError(
            f"output.format: delta cannot hold the id column '{id_column}' as the input has it "
            f"({id_type}): Delta Lake has no unsigned, dictionary or fixed-size binary types, and "
            "the labels keep the input's id type; use output.format: parquet")


def commit_labels_table(store: OutputStore) -> str:
    """``output.format: delta``: commit the staged ``labels/part-*.parquet`` files as version 0
    of a Delta Lake table (``labels/_delta_log/``, written by ``deltalake`` into the staging
    area, so it is published, listed in the manifest and owned like every staged file;
    :meth:`OutputStore.publish` puts the log in place after the data files, so the table
    appears whole). Returns the table's URI as staged.
    """
    from recluster.storage.tables import delta_storage_options, delta_uri, quiet_deltalake

    quiet_deltalake()
    from deltalake import convert_to_deltalake
    from deltalake.exceptions import DeltaError

    store.lock.check()
    loc = Location.of(store.loc.shown(store.staged("labels")), dict(store.loc.storage_options),
                      store.loc.timeout_s, store.loc.retries)
    uri = delta_uri(loc)
    try:
        with storage_errors(store.loc, "committing labels/ as a Delta table"):
            convert_to_deltalake(uri, storage_options=delta_storage_options(loc))
    except DeltaError as exc:
        raise OutputConflictError(f"{store.loc.url}: cannot commit labels/ as a Delta table: "
                                  f"{str(exc).splitlines()[0]}") from None
    store.fs.invalidate_cache()
    return uri
