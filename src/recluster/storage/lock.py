"""The write lock of an output folder: one run at a time, with a lease so that a killed run
does not block the folder forever.

Layout, under ``<output>/_recluster/lock/``:

- ``<generation>.json`` (12 digits): who holds the lock (run id, command, host, pid, lease).
  Created with a conditional create (:func:`~recluster.storage.fs.create_exclusive`) and never
  rewritten.
- ``<generation>.lease``: the holder's lease, ``{"expires_at": <unix time>}``, rewritten every
  quarter lease while the run is alive.

The lock is held by the highest generation whose lease has not expired. A new run takes a free
or stale lock by creating the next generation: of several runs that race for it, exactly one
create succeeds, so a takeover is as safe as the first claim. The holder deletes older
generations (their runs are dead), and its own on release. A holder that finds a higher
generation, or its own record gone, has lost the lock and must not publish.

Leases compare the writer's clock with the reader's: the machines' clocks must agree to well
within ``output.lock_lease_s``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from recluster.errors import OutputConflictError
from recluster.storage.fs import Location, create_exclusive, storage_errors

log = logging.getLogger("recluster")

LOCK_DIR = "_recluster/lock"
_NAME = re.compile(r"^(\d{12})\.(json|lease)$")


class OutputLockedError(OutputConflictError):
    """Another run holds the output folder's lock (exit code 4, like any output conflict)."""


def _utc(ts: float) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    except (OverflowError, OSError, ValueError):  # a record from a clock far off, or planted
        return f"unix time {ts:.0f}"


@dataclass(frozen=True)
class Holder:
    """What one generation's files say."""

    generation: int
    run_id: str
    command: str
    host: str
    pid: int
    acquired_at: float
    expires_at: float

    def live(self, now: float) -> bool:
        return self.expires_at > now


def record_path(root: str, generation: int, kind: str = "json") -> str:
    """Where generation ``generation`` of the lock of the output folder ``root`` keeps its
    record (``json``) or its lease (``lease``)."""
    return f"{root}/{LOCK_DIR}/{generation:012d}.{kind}"


def read_record(fs, path: str) -> dict[str, Any] | None:
    """A lock record or lease as a dict; None if it is not there. A record that is not a JSON
    object (damaged, half-written on a local disk, or planted) is read as ``{}``: it names no
    holder and keeps nothing live."""
    for attempt in range(2):
        try:
            data = json.loads(fs.cat_file(path))
        except FileNotFoundError:
            return None
        except ValueError:  # being written (local disks) or damaged: read again once
            if attempt == 0:
                time.sleep(0.2)
            continue
        return data if isinstance(data, dict) else {}
    return {}


def holds(fs, root: str, generation: int | None, run_id: str | None) -> bool:
    """Does run ``run_id`` still hold lock generation ``generation`` of the folder ``root``
    (its record is there and names it)? One read; usable from any process."""
    if generation is None or run_id is None:
        return False
    rec = read_record(fs, record_path(root, generation))
    return rec is not None and rec.get("run_id") == run_id


def _number(value: Any, default: float) -> float:
    """A finite number from a record field, else ``default`` (damaged or planted records)."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return default
    return number if math.isfinite(number) else default


class OutputLock:
    """The lock of one output folder, as one run attempt holds it.

    Parameters
    ----------
    loc : the output folder
    fs, root : its filesystem and root path (as :meth:`Location.fs` gives them)
    run_id : this attempt's id
    lease_s : how long the lock stays held without a renewal
    command : ``run`` or ``score`` (shown to a run that is refused)
    """

    def __init__(self, loc: Location, fs, root: str, run_id: str, lease_s: float, command: str):
        self.loc, self.fs, self.root = loc, fs, root
        self.run_id, self.lease_s, self.command = run_id, float(lease_s), command
        self.dir = f"{root}/{LOCK_DIR}"
        self.generation: int | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading -----------------------------------------------------------------------------

    def _path(self, generation: int, kind: str) -> str:
        return record_path(self.root, generation, kind)

    def _names(self) -> list[str]:
        self.fs.invalidate_cache(self.dir)
        try:
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.dir, detail=False)]
        except FileNotFoundError:
            return []

    def _generations(self) -> list[int]:
        return sorted({int(m.group(1)) for n in self._names() if (m := _NAME.match(n))
                       and m.group(2) == "json"})

    def holder(self, generation: int) -> Holder | None:
        """The holder recorded for ``generation``; None if that generation is gone."""
        rec = read_record(self.fs, self._path(generation, "json"))
        if rec is None:
            return None
        lease = read_record(self.fs, self._path(generation, "lease")) or {}
        # A damaged record counts from the epoch: only a lease file can keep it live.
        acquired = _number(rec.get("acquired_at"), 0.0)
        expires = max(_number(lease.get("expires_at"), 0.0),
                      acquired + _number(rec.get("lease_s"), self.lease_s))
        return Holder(generation, str(rec.get("run_id", "?")), str(rec.get("command", "?")),
                      str(rec.get("host", "?")), int(_number(rec.get("pid"), -1)), acquired,
                      expires)

    # -- taking and keeping it ---------------------------------------------------------------

    def _refusal(self, h: Holder, now: float) -> OutputLockedError:
        where = self.loc.url.rstrip("/") + "/" + LOCK_DIR + "/"
        return OutputLockedError(
            f"{self.loc.url} is being written by another recluster run: run {h.run_id} "
            f"({h.command} on host {h.host}, pid {h.pid}, started {_utc(h.acquired_at)}); its "
            f"lease expires at {_utc(h.expires_at)} ({h.expires_at - now:.0f}s from now) unless "
            f"that run renews it. Wait for it to finish. If that run is dead (killed, its machine "
            f"gone), its lock expires by itself then (output.lock_lease_s); to clear it by hand "
            f"now, make sure no run is writing there and delete {where}")

    def check_free(self) -> None:
        """Raise :class:`OutputLockedError` if a live run holds the lock (reads only)."""
        with storage_errors(self.loc, "reading the output folder's lock"):
            gens = self._generations()
            h = self.holder(gens[-1]) if gens else None
        now = time.time()
        if h is not None and h.live(now):
            raise self._refusal(h, now)

    def acquire(self, attempts: int = 5) -> None:
        """Take the lock, or raise :class:`OutputLockedError` naming the holder."""
        body = {"run_id": self.run_id, "command": self.command, "host": socket.gethostname(),
                "pid": os.getpid(), "lease_s": self.lease_s}
        with storage_errors(self.loc, "taking the output folder's lock"):
            for _ in range(attempts):
                gens = self._generations()
                nxt = 0
                if gens:
                    h = self.holder(gens[-1])
                    if h is None:  # released while we looked: look again
                        continue
                    now = time.time()
                    if h.live(now):
                        raise self._refusal(h, now)
                    nxt = gens[-1] + 1
                now = time.time()
                data = json.dumps({**body, "acquired_at": now}).encode()
                try:
                    create_exclusive(self.fs, self._path(nxt, "json"), data)
                except FileExistsError:  # another run took this generation first
                    continue
                h = self.holder(nxt)
                if h is None or h.run_id != self.run_id:  # a store that ignored the condition
                    continue
                self.generation = nxt
                self._write_lease()
                for g in gens:  # their runs are dead: the lock was free or stale
                    self._delete_generation(g)
                self._delete_strays()
                return
        raise OutputLockedError(f"{self.loc.url}: could not take the output folder's lock in "
                                f"{attempts} attempts (other runs keep taking it)")

    def _write_lease(self) -> None:
        body = json.dumps({"run_id": self.run_id,
                           "expires_at": time.time() + self.lease_s}).encode()
        self.fs.pipe_file(self._path(self.generation, "lease"), body)

    def _delete_generation(self, generation: int) -> None:
        for kind in ("json", "lease"):
            try:
                self.fs.rm_file(self._path(generation, kind))
            except FileNotFoundError:
                pass

    def _delete_strays(self) -> None:
        """Lease files whose record is gone (a holder that lost the lock renewed it late)."""
        names = self._names()
        records = {m.group(1) for n in names if (m := _NAME.match(n)) and m.group(2) == "json"}
        for n in names:
            m = _NAME.match(n)
            if m and m.group(2) == "lease" and m.group(1) not in records \
                    and int(m.group(1)) != self.generation:
                try:
                    self.fs.rm_file(f"{self.dir}/{n}")
                except FileNotFoundError:
                    pass

    def check(self) -> None:
        """Renew now and make sure this run still holds the lock; raise if it lost it."""
        if self.generation is None:
            raise OutputConflictError(f"{self.loc.url}: this run does not hold the lock")
        with storage_errors(self.loc, "renewing the output folder's lock"):
            self._renew()
            newer = [g for g in self._generations() if g > self.generation]
        if newer:
            self.lost = f"run of lock generation {newer[-1]} took it over"
        if self.lost:
            raise OutputConflictError(
                f"{self.loc.url}: this run lost the output folder's lock ({self.lost}; its lease "
                f"of output.lock_lease_s={self.lease_s:g}s ran out); nothing was published")

    def _renew(self) -> None:
        if self.lost:
            return
        if not holds(self.fs, self.root, self.generation, self.run_id):
            self.lost = "its lock record was removed"
            return
        self._write_lease()

    def _keep_alive(self) -> None:
        period = max(0.25, self.lease_s / 4)
        while not self._stop.wait(period):
            try:
                self._renew()
            except Exception as exc:  # noqa: BLE001 - a failed renewal is retried next period;
                log.debug("renewing the lock of %s failed: %s", self.loc.url, type(exc).__name__)
            if self.lost:
                return

    def start(self) -> None:
        """Renew the lease in a background thread until :meth:`release`."""
        self._thread = threading.Thread(target=self._keep_alive, name="recluster-lock-lease",
                                        daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and delete this run's lock files (best effort; the lease bounds it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.generation is None or self.lost:
            return
        try:
            with storage_errors(self.loc, "releasing the output folder's lock"):
                h = self.holder(self.generation)
                if h is not None and h.run_id == self.run_id:
                    self._delete_generation(self.generation)
        except Exception as exc:  # noqa: BLE001 - the lease expires by itself
            log.warning("could not release the lock of %s (%s); it expires within "
                        "output.lock_lease_s", self.loc.url, type(exc).__name__)
        self.generation = None
