"""Reaching object storage: fsspec filesystems with bounded timeouts and retries, picklable
locations, the one canonical spelling of a location (:func:`normalize_url`) that overlap checks
compare, and the translation of the store's failures into :class:`StorageError`.

Only the ``recluster.storage`` package opens files. Locations are fsspec URLs (``s3://…``,
``file://…`` or a local folder) plus explicit ``storage_options``; S3 credentials and the endpoint
come from the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``),
which botocore reads itself, so they never pass through the config, a task or a log line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from recluster.config import REDACTED, secret_values
from recluster.errors import ConfigError, OutputConflictError, ReclusterError, StorageError

#: Spellings of the same protocol: compared as the first name.
_PROTOCOL_ALIASES = {"s3a": "s3", "s3n": "s3", "local": "file", "gcs": "gs", "abfss": "abfs"}


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
    try:
        fs, root = fsspec.core.url_to_fs(url, **_options(url, storage_options or {}, timeout_s,
                                                         retries))
    except (ImportError, ValueError, TypeError) as exc:  # unknown protocol, package, option
        detail = _scrub(f"{type(exc).__name__}: {exc}", storage_options)
        raise ConfigError(f"cannot open {url}: {detail} -- check the location's protocol and "
                          "its storage_options") from None
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


def _refused_parameters(exc: BaseException) -> bool:
    """Did the client refuse the request's parameters before sending it (an option of the wrong
    type or name, e.g. ``s3_additional_kwargs``)? That is the config, not the store."""
    if type(exc).__name__ == "ParamValidationError" and type(exc).__module__.startswith(
            "botocore"):
        return True
    return isinstance(exc, TypeError) and "unexpected keyword argument" in str(exc)


def _scrub(text: str, storage_options: Mapping[str, Any] | None) -> str:
    """``text`` (a library's message) without the values of storage options that are treated
    as secret (:func:`recluster.config.secret_values`): botocore, for one, quotes a parameter's
    value when it refuses it."""
    for value in sorted(secret_values(dict(storage_options or {})), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


@contextmanager
def storage_errors(loc: Location, doing: str) -> Iterator[None]:
    """Turn what the store raised after its retries into a :class:`StorageError` naming the URL,
    and parameters the client refused to send into a :class:`ConfigError`. Values of storage
    options off the allowlist never appear in either message.

    ``FileNotFoundError`` passes through: callers decide what a missing file means.
    """
    try:
        yield
    except (FileNotFoundError, FileExistsError, ReclusterError):
        raise
    except Exception as exc:
        detail = _scrub(f"{type(exc).__name__}: {exc}", dict(loc.storage_options))
        if _refused_parameters(exc):
            raise ConfigError(f"the storage client refused a request while {doing} ({loc.url}): "
                              f"{detail} -- check that location's storage_options") from None
        if not _is_transport(exc):
            raise
        raise StorageError(
            f"storage failed while {doing} ({loc.url}): {detail} -- after "
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

    def shown(self, path: str) -> str:
        """``path`` (as this location's filesystem names it) spelt like the location's URL,
        for messages and records: fsspec names ``s3://bucket/key`` ``bucket/key``; a location
        given as a plain local path shows plain paths."""
        return f"{self.url.split('://', 1)[0]}://{path}" if "://" in self.url else path


def is_folder_entry(path: str, info: Mapping[str, Any]) -> bool:
    """Is this entry of a listing (``fs.find(..., detail=True)``) a folder rather than a file?
    A directory, or an object store's folder marker: an empty object whose key ends in ``/``,
    which S3 consoles create for "Create folder" (s3fs lists it as a file)."""
    return info.get("type") == "directory" or (path.endswith("/") and not info.get("size"))


def _protocol_of(url: str) -> str:
    if "://" not in url:
        return "file"
    proto = url.split("://", 1)[0].lower()
    return _PROTOCOL_ALIASES.get(proto, proto)


def is_local(url: str) -> bool:
    """Is ``url`` a path on this machine's disk (a plain path or ``file://``)?"""
    return _protocol_of(url) == "file"


def normalize_url(url: str) -> str:
    """The one canonical spelling of a location, for telling whether two locations are the same.

    Local paths (plain, ``./``, ``..``, ``~``, ``file://``) become ``file://`` + the absolute path
    with symlinks resolved (``os.path.realpath``: also for a path that does not exist yet, whose
    existing ancestors are resolved). Object-store URLs become ``protocol://bucket/key`` with the
    protocol's aliases folded (``s3a://`` and ``s3n://`` are ``s3://``) and no trailing slash.
    Object stores keep ``.`` and ``..`` in keys literally, so a URL that holds such a segment (or
    an empty one, ``a//b``) names something other than it seems to: it is refused.

    Parameters
    ----------
    url : str
        A local path or an fsspec URL.

    Returns
    -------
    str
        e.g. ``file:///data/in``, ``s3://bucket/segments/run-1``.

    Raises
    ------
    ConfigError
        for an object-store URL with ``.``, ``..`` or empty segments, or without a bucket.
    """
    proto = _protocol_of(url)
    if proto == "file":
        path = url.split("://", 1)[1] if "://" in url else url
        return "file://" + os.path.realpath(os.path.expanduser(path))
    rest = url.split("://", 1)[1]
    parts = rest.rstrip("/").split("/")
    if not parts[0] or any(p in ("", ".", "..") for p in parts):
        raise ConfigError(f"{url!r}: an object-store URL needs a bucket and no '.', '..' or empty "
                          "segments (object stores keep them literally in key names)")
    return f"{proto}://{'/'.join(parts)}"


def _endpoint(options: Mapping[str, Any]) -> str | None:
    url = options.get("endpoint_url") or dict(options.get("client_kwargs") or {}).get("endpoint_url")
    return str(url).rstrip("/").lower() if url else None


def overlap(a: Location, b: Location) -> str | None:
    """How location ``a`` relates to ``b``: ``"is"``, ``"inside"``, ``"contains"``, or None.

    Compared on :func:`normalize_url`; two object-store locations whose options name different
    endpoints (``endpoint_url``) are different stores. Without an explicit endpoint on both sides
    they are taken to be the same store (the environment's).
    """
    na, nb = normalize_url(a.url), normalize_url(b.url)
    ea, eb = _endpoint(dict(a.storage_options)), _endpoint(dict(b.storage_options))
    if ea and eb and ea != eb:
        return None
    if na == nb:
        return "is"
    if na.startswith(nb + "/"):
        return "inside"
    if nb.startswith(na + "/"):
        return "contains"
    return None


def refuse_overlap(output: Location, others: Mapping[str, Location], what: str = "output.path"
                   ) -> None:
    """Refuse an output that is, lies inside, or contains any of ``others`` (before any work).

    Parameters
    ----------
    output : the location a run will write to
    others : name (e.g. ``"input.path"``) -> a location the run reads
    what : how the output is named in the message (``output.path``, ``--output``)

    Raises
    ------
    OutputConflictError
        naming both settings and their canonical spellings.
    """
    words = {"is": "is the same location as", "inside": "lies inside",
             "contains": "contains"}
    for name, loc in others.items():
        rel = overlap(output, loc)
        if rel is not None:
            raise OutputConflictError(
                f"{what} {output.url} {words[rel]} {name} {loc.url} (compared as "
                f"{normalize_url(output.url)} and {normalize_url(loc.url)}): a run must not "
                f"write where it reads; choose an output folder outside {name}")


def create_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` only if nothing is there: ``FileExistsError`` otherwise.

    On a local disk: ``open(..., "xb")`` (``O_CREAT | O_EXCL``, atomic). On object stores:
    ``pipe_file(mode="create")``, which s3fs sends as ``If-None-Match: *`` (AWS S3 and moto
    honour it; a store that ignores it is caught by the callers' read-back).
    """
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "xb") as f:
            f.write(data)
        return
    fs.pipe_file(path, data, mode="create")
