"""Progress lines: human ones for a terminal, one JSON line per stage in quiet mode."""

from __future__ import annotations

import json
import re

import pytest

from recluster.errors import InputDataError, StageError
from recluster.progress import Progress, Timer, as_progress

pytestmark = pytest.mark.timeout(60)


def _timer(quiet: bool):
    lines: list[str] = []
    return Timer(Progress(lines.append, quiet=quiet)), lines


def _three_nodes(timer: Timer) -> None:
    timer.progress.start(2, "http://127.0.0.1:8787/status")
    with timer.stage("plan") as st:
        st.counts["rows"] = 10
    with timer.stage("level 1: fit 3 node(s)", total=3) as st:
        for path in ("0", "1", "2"):
            st.step(f"node {path}: fitted")


def test_terminal_lines_per_stage_and_per_node():
    timer, lines = _timer(quiet=False)
    _three_nodes(timer)
    assert lines[0] == "dask: 2 workers, dashboard http://127.0.0.1:8787/status"
    assert re.fullmatch(r"\[\s*\d+\.\ds\] plan \.\.\.", lines[1])
    assert re.fullmatch(r"\[\s*\d+\.\ds\] plan done in \d+\.\ds", lines[2])
    steps = [line for line in lines if line.startswith("  [")]
    assert [re.match(r"  \[(\d)/3 +\d+\.\ds\] node (\d): fitted$", s).groups() for s in steps] == \
        [("1", "0"), ("2", "1"), ("3", "2")]
    assert not any(line.startswith("{") for line in lines)
    assert set(timer.seconds) == {"plan", "level 1: fit 3 node(s)"}


def test_quiet_mode_gives_one_json_line_per_stage():
    timer, lines = _timer(quiet=True)
    _three_nodes(timer)
    records = [json.loads(line) for line in lines]
    assert records[0] == {"event": "start", "workers": 2,
                          "dashboard": "http://127.0.0.1:8787/status"}
    assert [r["stage"] for r in records[1:]] == ["plan", "level 1: fit 3 node(s)"]
    assert records[1]["counts"] == {"rows": 10} and records[1]["status"] == "ok"
    assert records[2]["counts"] == {"done": 3, "total": 3}
    assert records[2]["elapsed"] >= records[2]["seconds"] >= 0


@pytest.mark.parametrize("quiet", [False, True])
def test_a_failing_stage_is_reported_and_named(quiet):
    timer, lines = _timer(quiet)
    with pytest.raises(StageError, match="stage 'validate' failed: ZeroDivisionError"):
        with timer.stage("validate"):
            raise ZeroDivisionError("division by zero")
    with pytest.raises(InputDataError):  # our own errors pass through unchanged
        with timer.stage("plan"):
            raise InputDataError("no files")
    if quiet:
        records = [json.loads(line) for line in lines]
        assert [(r["stage"], r["status"], r["error"]) for r in records] == \
            [("validate", "failed", "ZeroDivisionError"), ("plan", "failed", "InputDataError")]
    else:
        assert [line.split("] ", 1)[1].split(" after")[0] for line in lines[1::2]] == \
            ["validate failed", "plan failed"]


def test_a_plain_echo_function_still_works():
    lines: list[str] = []
    p = as_progress(lines.append)
    assert as_progress(p) is p
    p("hello")
    p.event("stage", stage="x")  # structured lines only in quiet mode
    assert lines == ["hello"]


def test_a_stage_stopped_by_the_run_timeout_is_reported_once_as_the_timeout():
    """On ``runtime.run_timeout_s`` the stage's thread goes on until the process ends; the CLI
    closes its client, the stopped work fails with whatever that gives (a TypeError), and the
    quiet log's stage line said ``"error": "TypeError"`` instead of the timeout (or nothing at
    all if the process ended first). The stage is now reported when the run stops, once."""
    import threading

    from recluster.pipeline import _within

    timer, lines = _timer(quiet=True)
    release, ended = threading.Event(), threading.Event()

    def body():
        try:
            with timer.stage("level 1: fit 2 node(s)", total=2):
                release.wait(30)
                raise TypeError("the client was closed under the stopped work")
        finally:
            ended.set()

    with pytest.raises(StageError, match=r"run_timeout_s=0.3s; stage in progress: 'level 1: fit"):
        _within(0.3, timer, body)
    events = [json.loads(line) for line in lines]
    assert [(e["stage"], e["status"], e["error"]) for e in events if e["event"] == "stage"] == \
        [("level 1: fit 2 node(s)", "failed", "StageError")]
    release.set()
    assert ended.wait(30)
    assert len(lines) == len(events)  # the thread's own failure is not reported again
    with pytest.raises(StageError, match="did not finish"):  # and no later stage starts
        with timer.stage("write labels"):
            pass


def test_a_second_stop_while_the_cluster_starts_still_releases_the_output_lock():
    """The run's thread starts the cluster inside the run's claims; on a first Ctrl-C (or
    SIGTERM) the caller's thread waits for that start to finish (seconds) so as to close it. A
    second one in that wait left the claims unreleased: the output folder's lock stayed held
    until its lease ran out (120 s), and the next run was refused. Now what is held is released
    at once, and the cluster being started is closed by the run's thread once it has started."""
    import signal
    import threading
    import time
    from contextlib import contextmanager

    from recluster.pipeline import _Claims

    events: list[str] = []
    starting, started = threading.Event(), threading.Event()

    @contextmanager
    def held(name: str, enter_s: float = 0.0):
        starting.set()
        time.sleep(enter_s)
        events.append(f"{name} entered")
        try:
            yield name
        finally:
            events.append(f"{name} released")

    timer, _ = _timer(quiet=True)
    claims = _Claims(timer)
    claims.enter_context(held("lock"))
    outcome: list[BaseException] = []

    def run_thread():
        try:
            claims.enter_context(held("cluster", enter_s=1.5))
        except BaseException as exc:
            outcome.append(exc)
        started.set()

    def second_stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, second_stop)
    try:
        threading.Thread(target=run_thread, daemon=True).start()
        assert starting.wait(10)
        signal.setitimer(signal.ITIMER_REAL, 0.3)  # the second stop, while the caller waits
        with pytest.raises(KeyboardInterrupt):
            claims.__exit__(KeyboardInterrupt, KeyboardInterrupt(), None)  # the first stop
        assert events == ["lock entered", "lock released"]  # at once, not after the start
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert started.wait(10)
    assert events == ["lock entered", "lock released", "cluster entered", "cluster released"]
    assert len(outcome) == 1 and isinstance(outcome[0], StageError)
