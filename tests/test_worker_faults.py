"""Worker processes killed (SIGKILL) in the middle of a run, on a dedicated LocalCluster.

A scheduler plugin kills the worker process a task of the chosen stage was just given to
(node fits ``fit-node-*``, the assignment pass ``assign_level-*``, the label writes
``_write_labels-*``, XGBoost training ``dispatched_train-*``). The nanny restarts the worker and
Dask recomputes what was lost; a run that survives must publish exactly the labels of a clean
run. A worker killed every time a task of one stage starts exhausts
``distributed.scheduler.allowed-failures``: the run must then exit non-zero naming that stage,
publish nothing, and a re-run must complete. Everything is bounded by ``runtime.run_timeout_s``
and by pytest-timeout. The run-level timeout itself is tested on the session cluster.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from contextlib import ExitStack, contextmanager

import dask
import pytest
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.utils import key_split
from helpers import published, read_json, read_labels, run_cli, write_config, write_table

from recluster.demo import make_table

pytestmark = pytest.mark.timeout(420)

SECTIONS = {"sample": {"size": 1500}, "recursion": {"max_depth": 1},
            "input": {"rows_per_partition": 1000}, "stability": {"resamples": 0},
            "runtime": {"run_timeout_s": 300}}
N = 2500


class KillWorkerInStage(SchedulerPlugin, logging.Handler):
    """SIGKILL the worker process a task was just sent to, once the job has announced ``stage``.

    Stages run one after another, so a task that starts processing after the job logged
    "<stage> ..." belongs to that stage. ``prefix`` narrows it to tasks named so.
    """

    def __init__(self, scheduler, stage: str, prefix: str | None = None, times: int = 1):
        SchedulerPlugin.__init__(self)
        logging.Handler.__init__(self)
        self.scheduler, self.stage, self.prefix, self.times = scheduler, stage, prefix, times
        self.armed = False
        self.killed: list[tuple[str, int]] = []
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:  # the job's progress lines
        msg = record.getMessage()
        if f"] {self.stage}" in msg and msg.endswith(" ..."):
            self.armed = True

    def transition(self, key, start, finish, *args, **kwargs):
        if finish != "processing" or not self.armed or len(self.killed) >= self.times:
            return
        name = key_split(key)
        self.seen.add(name)
        if self.prefix and name != self.prefix:
            return
        ts = self.scheduler.tasks.get(key)
        ws = ts.processing_on if ts is not None else None
        if ws is None or not ws.pid or any(pid == ws.pid for _, pid in self.killed):
            return
        os.kill(ws.pid, signal.SIGKILL)
        self.killed.append((str(key), ws.pid))


@contextmanager
def kill_in(cluster, stage: str, prefix: str | None = None, times: int = 1):
    plugin = KillWorkerInStage(cluster.scheduler, stage, prefix, times)
    name = f"kill-{stage}"
    cluster.scheduler.add_plugin(plugin, name=name)
    logger = logging.getLogger("recluster")
    level = logger.level
    logger.setLevel(logging.DEBUG)  # quiet mode logs the human stage lines at debug level
    logger.addHandler(plugin)
    try:
        yield plugin
    finally:
        logger.removeHandler(plugin)
        logger.setLevel(level)
        cluster.scheduler.remove_plugin(name=name)


@pytest.fixture(scope="module")
def cluster(s3_endpoint, dask_cluster):
    """Two worker processes with nannies, only for this module (started after the S3 env and
    the numba cache dir are set, which they inherit)."""
    with dask.config.set({"distributed.scheduler.allowed-failures": 2}), LocalCluster(
            n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0",
            processes=True, memory_limit="3GiB") as c:
        yield c


@pytest.fixture(scope="module")
def data(cluster, tmp_path_factory):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("kills")
    table, _ = make_table(N, seed=9)
    write_table(table, "s3://kills/in", n_files=3, row_group_rows=500)
    tmp = tmp_path_factory.mktemp("kills")
    cfg = write_config(tmp, "s3://kills/in", "s3://kills/clean", **SECTIONS)
    assert run_cli("run", cfg, "--scheduler", cluster.scheduler_address, "--quiet") == 0
    return {"tmp": tmp, "clean": _sorted(read_labels("s3://kills/clean"))}


def _sorted(labels):
    return labels.sort_values("user_id").reset_index(drop=True)


def _workers_back(cluster, n: int = 2, timeout_s: float = 120) -> None:
    """Wait until the nannies have restarted the killed workers.

    Once, in CI under load, one of the two nannies had not brought its worker back 120 s after
    the every-attempt test's kills (distributed 2026.8); here it happened once in ~25 runs of
    this module beside two busy loops, with nothing logged at error level. Restarting workers is
    distributed's part, not what these tests check: the next run goes ahead on the workers that
    are back (at least one), and the output says which nanny lost its worker.
    """
    with Client(cluster, timeout="30s") as c:
        try:
            c.wait_for_workers(n, timeout=timeout_s)
        except TimeoutError:
            registered = {ws.name for ws in cluster.scheduler.workers.values()}
            lost = {name: str(nanny.status) for name, nanny in cluster.workers.items()
                    if name not in registered}
            print(f"only {len(registered)}/{n} workers back after {timeout_s:g}s; "
                  f"nannies without a worker (name: status): {lost}")
            c.wait_for_workers(1, timeout=timeout_s)


def _same_labels(out: str, clean) -> None:
    labels = _sorted(read_labels(out))
    assert len(labels) == N and labels["user_id"].is_unique
    assert labels["user_id"].tolist() == clean["user_id"].tolist()
    assert labels["cluster"].tolist() == clean["cluster"].tolist()
    assert labels["level_1"].equals(clean["level_1"])
    assert (labels["probability"] - clean["probability"]).abs().max() < 1e-9
    assert (labels["umap_0"] - clean["umap_0"]).abs().max() < 1e-5
    assert read_json(out, "manifest.json")["rows"] == {"in": N, "out": N}


def _run(cfg, cluster, capsys):
    t0 = time.perf_counter()
    code = run_cli("run", cfg, "--scheduler", cluster.scheduler_address, "--quiet")
    return code, capsys.readouterr().err, time.perf_counter() - t0


def test_workers_killed_during_fit_assignment_and_write_run_completes(cluster, data, capsys):
    out = "s3://kills/survive"
    stages = ("level 1: fit", "level 1: assign all rows", "write labels")
    with ExitStack() as stack:
        plugins = [stack.enter_context(kill_in(cluster, st)) for st in stages]
        cfg = write_config(data["tmp"], "s3://kills/in", out, **SECTIONS)
        code, err, seconds = _run(cfg, cluster, capsys)
    for p in plugins:
        assert len(p.killed) == 1, f"{p.stage}: tasks seen {sorted(p.seen)}"
    assert code == 0, err[-3000:]
    _same_labels(out, data["clean"])
    print(f"3 workers killed ({[k for p in plugins for k, _ in p.killed]}): "
          f"run completed in {seconds:.1f}s")
    _workers_back(cluster)


def test_worker_killed_while_fitting_a_node_preprocessing_run_completes(cluster, data, capsys):
    """A node's preprocessing is a task of its own (``prep-node-*``) that its fit and its
    resamples wait for: its worker lost, it is recomputed and the run ends as a clean one."""
    out = "s3://kills/prep"
    with kill_in(cluster, "level 1: fit", prefix="prep-node-root") as plugin:
        cfg = write_config(data["tmp"], "s3://kills/in", out, **SECTIONS)
        code, err, _ = _run(cfg, cluster, capsys)
    assert len(plugin.killed) == 1, sorted(plugin.seen)
    assert code == 0, err[-3000:]
    _same_labels(out, data["clean"])
    _workers_back(cluster)


def test_worker_killed_during_xgboost_training_completes_or_fails_in_bounded_time(
        cluster, data, capsys):
    """xgboost.dask is not resilient to worker loss: training is retried with fresh data
    handles, each attempt bounded by explain.train_timeout_s, the run by runtime.run_timeout_s.
    Defined outcome: the same labels as a clean run, or a non-zero exit naming stage 'explain'
    within the bound, nothing published, and a re-run that completes."""
    out = "s3://kills/xgb"
    sections = {**SECTIONS, "runtime": {"run_timeout_s": 90}}
    explain = {"enabled": True, "n_estimators": 20, "shap_rows": 500, "train_timeout_s": 20,
               "retries": 2, "collective_timeout_s": 5,
               "local_train_rows": 0}  # every model through xgboost.dask, the fragile path
    # xgboost.dask runs one training task per worker, named after its inner function ``fn``.
    with kill_in(cluster, "explain", prefix="fn") as plugin:
        cfg = write_config(data["tmp"], "s3://kills/in", out, **sections, explain=explain)
        code, err, seconds = _run(cfg, cluster, capsys)
    print(f"xgboost kill: killed {plugin.killed}, seen {sorted(plugin.seen)}; exit {code} after "
          f"{seconds:.1f}s; {(err.strip().splitlines() or ['(no error)'])[-1]}")
    assert len(plugin.killed) == 1, sorted(plugin.seen)
    assert seconds < 90 + 15
    if code != 0:
        assert code == 5 and "'explain" in err.strip().splitlines()[-1], err[-2000:]
        assert not published(out)
        _workers_back(cluster)
        code, err, _ = _run(cfg, cluster, capsys)
        assert code == 0, err[-3000:]
    _same_labels(out, data["clean"])
    tree = read_json(out, "tree.json")
    models = [n["classifier"] for n in tree if n["classifier"] and n["classifier"].get("model")]
    assert models and min(m["auc"] for m in models) > 0.9
    _workers_back(cluster)


def test_worker_killed_at_every_attempt_fails_naming_the_stage_then_rerun_completes(
        cluster, data, capsys):
    out = "s3://kills/fail"
    with kill_in(cluster, "level 1: assign all rows", times=10) as plugin:
        cfg = write_config(data["tmp"], "s3://kills/in", out, **SECTIONS)
        code, err, seconds = _run(cfg, cluster, capsys)
    assert code == 5, err[-3000:]
    assert re.search(r"stage 'level 1: assign all rows' failed: KilledWorker", err), err[-3000:]
    assert len(plugin.killed) >= 3
    assert not published(out)
    _workers_back(cluster)
    code, err, _ = _run(cfg, cluster, capsys)
    assert code == 0, err[-3000:]
    _same_labels(out, data["clean"])
    print(f"killed {len(plugin.killed)} times: failed after {seconds:.1f}s; re-run completed")


def test_run_timeout_names_the_stage_and_publishes_nothing(scheduler, data, capsys):
    out = "s3://kills/timeout"
    cfg = write_config(data["tmp"], "s3://kills/in", out,
                       **{**SECTIONS, "runtime": {"run_timeout_s": 0.5}})
    t0 = time.perf_counter()
    code = run_cli("run", cfg, "--scheduler", scheduler, "--quiet")
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert code == 5, err[-2000:]
    m = re.search(r"did not finish within runtime.run_timeout_s=0.5s; stage in progress: "
                  r"'([^']+)'", err)
    assert m, err[-2000:]
    # Which stage it is depends on how warm the workers are (reaching the scheduler: connect);
    # it is one of the run's, never the publication itself (the whole run takes several
    # seconds even on warm workers).
    assert re.fullmatch(r"plan|connect|validate|level \d+: .+", m.group(1)), m.group(1)
    assert seconds < 10
    time.sleep(1)  # the abandoned stage may still be finishing; it must not publish
    assert not published(out)


@pytest.mark.parametrize("late_in", ["output_location", "claim"])
def test_a_claim_the_run_reaches_after_its_timeout_is_not_taken(scheduler, data, capsys,
                                                                 monkeypatch, late_in):
    """The run's thread is not stopped when the run times out; the caller releases the output's
    claim. A thread that reached the claim only after that took the folder's lock after its
    release had run: the lock stayed held, renewed (the next run refused), until the garbage
    collector found the claim. Late before the claim (``output_location``): it is not taken;
    late while it is being entered (``claim``): it is released once entered."""
    from recluster import pipeline
    from recluster.storage.fs import Location
    from recluster.storage.outputs import claim

    reached = threading.Event()
    real = getattr(pipeline, late_in)

    def late(*args, **kwargs):
        time.sleep(1.0)  # the run times out (0.2 s) before its thread gets on
        reached.set()
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, late_in, late)
    out = f"s3://kills/late-{late_in}"
    cfg = write_config(data["tmp"], "s3://kills/in", out,
                       **{**SECTIONS, "runtime": {"run_timeout_s": 0.2}})
    code = run_cli("run", cfg, "--scheduler", scheduler, "--quiet")
    err = capsys.readouterr().err
    assert code == 5 and "runtime.run_timeout_s=0.2s; stage in progress: 'plan'" in err, err
    assert reached.wait(10)
    time.sleep(0.5)  # the thread's claim is refused, or released once entered
    with claim(Location.of(out), 30, "run") as store:  # OutputLockedError if it is still held
        assert store.lock is not None
    assert not published(out)


def test_a_timeout_while_the_cluster_starts_names_connect(scheduler, data, capsys, monkeypatch):
    """The cluster is started (or the scheduler reached) once the plan holds, inside the run's
    time limit: a timeout while it starts named the stage 'plan', which was over by then (a
    user looked for slow listing). It names 'connect', as a scheduler that cannot be reached
    does, and the output's lock is released, nothing published."""
    from recluster.parallel import client as client_module
    from recluster.storage.fs import Location
    from recluster.storage.outputs import claim

    real = client_module.dask_client

    @contextmanager
    def slow(*args, **kwargs):
        time.sleep(5.0)  # a LocalCluster's workers being spawned; the run allows 3 s
        with real(*args, **kwargs) as c:
            yield c

    monkeypatch.setattr(client_module, "dask_client", slow)
    out = "s3://kills/slow-connect"
    cfg = write_config(data["tmp"], "s3://kills/in", out,
                       **{**SECTIONS, "runtime": {"run_timeout_s": 3}})
    code = run_cli("run", cfg, "--scheduler", scheduler, "--quiet")
    err = capsys.readouterr().err
    assert code == 5 and "runtime.run_timeout_s=3s; stage in progress: 'connect'" in err, err
    with claim(Location.of(out), 30, "run") as store:  # OutputLockedError if it is still held
        assert store.lock is not None
    assert not published(out)
