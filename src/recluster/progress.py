"""Progress of a run: human lines for a terminal, or one JSON line per stage for batch logs.

:class:`Progress` is what the orchestrator calls ``echo``: calling it with a message prints a
human line (terminal mode) or logs it at debug level (quiet mode). :class:`Timer` times each
stage; a stage may declare how many steps (nodes) it has and report each one as it finishes.

Terminal mode::

    [   12.3s] level 2: fit 4 node(s) ...
      [2/4  3.1s] node 0: 1551 sample rows -> 3 children ...
    [   15.0s] level 2: fit 4 node(s) done in 2.7s

Quiet mode prints only structured lines, one per stage (plus one at start and end)::

    {"event": "stage", "stage": "plan", "status": "ok", "seconds": 0.41, "elapsed": 0.41, "counts": {...}}
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from recluster.errors import ReclusterError, StageError, StorageError

log = logging.getLogger("recluster")


def _stdout(line: str) -> None:
    print(line, file=sys.stdout, flush=True)



def counted(n: int, noun: str) -> str:
    """``n`` and the noun, plural unless ``n`` is 1: ``counted(1, "file")`` is ``"1 file"``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"

class Progress:
    """Where progress goes.

    Parameters
    ----------
    write : callable taking one line; default: print to stdout
    quiet : bool
        False: human lines. True: structured JSON lines only (human lines go to the debug log).
    """

    def __init__(self, write: Callable[[str], None] | None = None, quiet: bool = False):
        self.write = write or _stdout
        self.quiet = quiet
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def __call__(self, msg: str) -> None:
        if self.quiet:
            log.debug(msg)
        else:
            self.write(msg)

    def event(self, event: str, **fields: Any) -> None:
        """A structured line (quiet mode only)."""
        if self.quiet:
            self.write(json.dumps({"event": event, **fields}, sort_keys=False, default=str))

    def start(self, workers: int, dashboard: str | None) -> None:
        """The first line of a run: the cluster and its dashboard link (if there is one)."""
        self(f"dask: {workers} workers, dashboard {dashboard or 'none'}")
        self.event("start", workers=workers, dashboard=dashboard)

    def stage_started(self, name: str) -> None:
        self(f"[{self.elapsed():7.1f}s] {name} ...")

    def step(self, done: int, total: int | None, stage_seconds: float, msg: str) -> None:
        of = f"{done}/{total}" if total else f"{done}"
        self(f"  [{of} {stage_seconds:5.1f}s] {msg.strip()}")

    def stage_finished(self, name: str, seconds: float, status: str,
                       counts: dict[str, Any], error: str | None = None) -> None:
        if status == "ok":
            self(f"[{self.elapsed():7.1f}s] {name} done in {seconds:.1f}s")
        else:
            self(f"[{self.elapsed():7.1f}s] {name} failed after {seconds:.1f}s")
        fields: dict[str, Any] = {"stage": name, "status": status, "seconds": round(seconds, 3),
                                  "elapsed": round(self.elapsed(), 3), "counts": counts}
        if error:
            fields["error"] = error
        self.event("stage", **fields)


def silence_libraries() -> None:
    """Keep library chatter off the terminal in this process: Python warnings off, and the
    loggers of Dask's ``distributed`` and XGBoost to errors only (``--verbose`` skips this)."""
    import warnings

    warnings.simplefilter("ignore")
    for name in ("distributed", "[xgboost.dask]", "xgboost", "numba", "umap", "py.warnings"):
        logging.getLogger(name).setLevel(logging.ERROR)


def as_progress(echo: Callable[[str], None] | Progress) -> Progress:
    """Wrap a plain ``echo`` function (human lines) as a :class:`Progress`."""
    return echo if isinstance(echo, Progress) else Progress(echo)


class Stage:
    """One timed stage; ``counts`` is filled by the caller, ``step`` reports a finished node."""

    def __init__(self, timer: Timer, name: str, total: int | None):
        self.timer, self.name, self.total = timer, name, total
        self.done = 0
        self.counts: dict[str, Any] = {}

    def step(self, msg: str) -> None:
        self.done += 1
        self.timer.progress.step(self.done, self.total, time.perf_counter() - self.t, msg)

    def __enter__(self) -> Stage:
        if self.timer.stopped:
            raise StageError(self.timer.stopped)
        self.timer.current = self.name
        self.timer.running = self
        self.reported = False
        self.t = time.perf_counter()
        self.timer.progress.stage_started(self.name)
        return self

    def report(self, status: str, error: str | None = None) -> float:
        """Report the stage's end once (a stage stopped by the run's timeout is reported when
        the run stops, not again when its thread gets there); returns its seconds."""
        dt = time.perf_counter() - self.t
        if not self.reported:
            self.reported = True
            counts = dict(self.counts)
            if self.total is not None:
                counts.update(done=self.done, total=self.total)
            self.timer.progress.stage_finished(self.name, dt, status, counts, error=error)
        return dt

    def __exit__(self, et, ev, tb) -> bool:
        t = self.timer
        if t.running is self:
            t.running = None
        dt = self.report("ok" if et is None else "failed", None if et is None else et.__name__)
        t.seconds[self.name] = round(t.seconds.get(self.name, 0.0) + dt, 3)
        if et is None:
            return False
        if not issubclass(et, ReclusterError):
            raise StageError(f"stage '{self.name}' failed: {et.__name__}: {ev}") from ev
        if issubclass(et, StorageError) and not str(ev).startswith("stage '"):
            raise StorageError(f"stage '{self.name}' failed: {ev}") from None
        return False


class Timer:
    """Wall time per stage (``seconds``), reported through a :class:`Progress`."""

    def __init__(self, echo: Callable[[str], None] | Progress):
        self.progress = as_progress(echo)
        self.echo = self.progress
        self.seconds: dict[str, float] = {}
        self.current: str | None = None  # the stage in progress (named when the run times out)
        self.stopped: str | None = None  # once set, no further stage starts
        self.running: Stage | None = None

    def stop(self, reason: str) -> None:
        """No further stage starts; the stage in progress is reported failed now, with a
        :class:`StageError` (``reason``), not later with whatever error the stopped work
        meets (its thread goes on until its process ends, its client closed under it)."""
        self.stopped = reason
        if self.running is not None:
            self.running.report("failed", StageError.__name__)

    def stage(self, name: str, total: int | None = None) -> Stage:
        return Stage(self, name, total)
