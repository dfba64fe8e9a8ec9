"""The job against a Dask cluster of separate OS processes, run the way the DaskJob runs it.

A ``dask scheduler`` and two ``dask worker`` processes start from the venv's own ``dask``
script (as the scheduler and worker pods do); the runner is ``recluster run /config/job.yaml
--quiet`` exactly as rendered into the DaskJob, in its own process, reading the rendered
ConfigMap's config and finding the scheduler only through ``DASK_SCHEDULER_ADDRESS``. Its
labels must equal those of the same config run on the shared LocalCluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import (
    free_port,
    log_tail,
    read_json,
    read_labels,
    run_cli,
    stop_processes,
    write_config,
    write_table,
)

from recluster.config import load_config
from recluster.demo import make_table
from recluster.k8s import render_manifests

pytestmark = pytest.mark.timeout(600)

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 120


@pytest.fixture
def process_cluster(s3_endpoint, tmp_path):
    """``dask scheduler`` + 2 × ``dask worker`` as OS processes on 127.0.0.1; yields
    ``(address, dashboard_port, env)``. Started after ``s3_endpoint``, so they inherit the S3
    environment, as worker pods get it from the Secret."""
    env = dict(os.environ)
    env.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "recluster" / "numba"))
    env["NUMBA_NUM_THREADS"] = "1"  # as the rendered worker pods set it
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    port, dashboard = free_port(), free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = tmp_path / "logs"
    logs.mkdir()
    commands = {
        "scheduler": [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                      "--dashboard-address", f"127.0.0.1:{dashboard}"],
        **{f"worker-{i}": [str(BIN / "dask"), "worker", address, "--nthreads", "1",
                           "--nworkers", "1", "--host", "127.0.0.1", "--memory-limit", "4GiB",
                           "--dashboard-address", "127.0.0.1:0", "--name", f"proc-worker-{i}"]
           for i in range(2)},
    }
    procs: list[subprocess.Popen] = []
    try:
        for name, cmd in commands.items():
            with open(logs / f"{name}.log", "wb") as log:
                procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                              stdin=subprocess.DEVNULL, start_new_session=True))
        from distributed import Client

        deadline = time.monotonic() + START_TIMEOUT_S
        n_workers = 0
        with Client(address, timeout=f"{START_TIMEOUT_S}s") as client:
            while n_workers < 2:
                dead = [name for name, p in zip(commands, procs, strict=True) if p.poll() is not None]
                assert not dead, f"{dead} exited:\n" + "\n".join(
                    log_tail(logs / f"{n}.log") for n in dead)
                assert time.monotonic() < deadline, (
                    f"only {n_workers} of 2 workers connected after {START_TIMEOUT_S}s:\n"
                    + "\n".join(log_tail(logs / f"{n}.log") for n in commands))
                time.sleep(0.5)
                n_workers = len(client.scheduler_info()["workers"])
        yield address, dashboard, env
    finally:
        stop_processes(procs)


def test_daskjob_runner_on_a_multiprocess_cluster_matches_localcluster(
        process_cluster, scheduler, s3fs_fs, bucket, tmp_path):
    address, dashboard, env = process_cluster
    table, _ = make_table(3000, seed=11)
    write_table(table, f"s3://{bucket}/in", n_files=3, row_group_rows=500)
    sections = {"sample": {"size": 2000}, "recursion": {"max_depth": 1},
                "input": {"rows_per_partition": 1000}}
    out_k8s, out_local = f"s3://{bucket}/out-k8s", f"s3://{bucket}/out-local"

    # What `recluster render-k8s` would put into the ConfigMap and the runner container.
    cfg = load_config(write_config(tmp_path, f"s3://{bucket}/in", out_k8s, **sections))
    # Plain TCP here; tests/test_tls_cluster.py runs the TLS rendering.
    job, cm, *_ = render_manifests(cfg, image="recluster:test", workers=2, worker_cpu=1,
                                   worker_memory_gib=4, secret="s3", name="mp", tls_secret=None)
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "job.yaml").write_text(cm["data"]["job.yaml"])
    (runner,) = job["spec"]["job"]["spec"]["containers"]
    args = [a.replace("/config/", f"{config_dir}/") for a in runner["args"]]
    assert args[0] == "recluster"
    args[0] = str(BIN / "recluster")

    # The operator hands the runner DASK_SCHEDULER_ADDRESS; nothing else names the scheduler.
    runner_env = dict(env, DASK_SCHEDULER_ADDRESS=address)
    assert yaml.safe_load(cm["data"]["job.yaml"])["runtime"]["scheduler"] is None
    t0 = time.perf_counter()
    proc = subprocess.run(args, env=runner_env, capture_output=True, text=True, timeout=480,
                          stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    # --quiet: one JSON line per event on stdout (the batch log).
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    start = next(e for e in events if e["event"] == "start")
    assert start["workers"] == 2, proc.stdout[-2000:]
    assert f":{dashboard}" in start["dashboard"], "the runner did not use the process cluster"
    assert [e["rows"] for e in events if e["event"] == "published"] == [len(table)]

    from distributed import Client

    with Client(address, timeout="30s") as c:
        info = c.scheduler_info()["workers"]
        assert sorted(w["name"] for w in info.values()) == ["proc-worker-0", "proc-worker-1"]
        prefixes = c.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))
        assert prefixes, "no task ran on the process cluster"

    # The same config on the shared LocalCluster.
    ref = write_config(tmp_path, f"s3://{bucket}/in", out_local, **sections)
    assert run_cli("run", ref, "--scheduler", scheduler, "--quiet") == 0

    a = read_labels(out_k8s).sort_values("user_id").reset_index(drop=True)
    b = read_labels(out_local).sort_values("user_id").reset_index(drop=True)
    assert len(a) == len(table) and a["user_id"].tolist() == b["user_id"].tolist()
    assert a["cluster"].tolist() == b["cluster"].tolist()
    assert a["level_1"].equals(b["level_1"])
    assert a["depth"].tolist() == b["depth"].tolist()
    assert (a["probability"] - b["probability"]).abs().max() < 1e-9
    assert (a["umap_0"] - b["umap_0"]).abs().max() < 1e-5
    assert (a["umap_1"] - b["umap_1"]).abs().max() < 1e-5
    assert a["cluster"].nunique() >= 2, "the table should split"
    assert read_json(out_k8s, "tree.json") == read_json(out_local, "tree.json")
    print(f"runner on the process cluster: {seconds:.1f}s")
