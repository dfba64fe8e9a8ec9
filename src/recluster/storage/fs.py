"""Reaching object storage: fsspec filesystems with bounded timeouts and retries, picklable
locations, and the translation of the store's failures into :class:`StorageError`.

Only the ``recluster.storage`` package opens files. Locations are fsspec URLs (``s3://…``,
``file://…`` or a local folder) plus explicit ``storage_options``; S3 credentials and the endpoint
come from the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``),
which botocore reads itself, so they never pass through the config, a task or a log line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import fsspec

from recluster.errors import InputDataError, OutputConflictError, StorageError


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
