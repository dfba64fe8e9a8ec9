"""Credentials never leak, and what runs locally listens on 127.0.0.1 only.

The session's S3 credentials are recognisable fake strings (conftest.FAKE_KEY / FAKE_SECRET) that
the job and its worker processes really use against moto. After a run with explanations, every
file under the output path (labels, tree, models, SHAP, profiles, manifest, _SUCCESS, and a
report once there is one), the captured stdout/stderr, the job's log lines, the scheduler's and
workers' logs, and the repr and pickle of every task the scheduler ran are searched for them.
"""

from __future__ import annotations

import logging
import pickle

import pytest
from conftest import FAKE_KEY, FAKE_SECRET
from distributed.diagnostics.plugin import SchedulerPlugin
from helpers import run_cli, write_config, write_table

from recluster.demo import make_table

pytestmark = pytest.mark.timeout(300)
SECRETS = (FAKE_KEY, FAKE_SECRET)


class TaskRecorder(SchedulerPlugin):
    """Keeps the repr and pickled bytes of every task's spec as it is sent to a worker."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.texts: list[str] = []
        self.blobs: list[bytes] = []

    def transition(self, key, start, finish, *args, **kwargs):
        if finish != "processing":
            return
        ts = self.scheduler.tasks.get(key)
        if ts is None:
            return
        self.texts.append(f"{key!r} {ts.run_spec!r}")
        try:
            self.blobs.append(pickle.dumps(ts.run_spec))
        except Exception:  # noqa: BLE001 - some specs hold unpicklable locals; repr is kept
            pass


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


def test_fake_credentials_appear_in_no_output_log_or_task(dask_cluster, scheduler, bucket,
                                                          s3fs_fs, tmp_path, capsys):
    import os

    assert os.environ["AWS_SECRET_ACCESS_KEY"] == FAKE_SECRET  # the run really uses them
    table, _ = make_table(2000, seed=21)
    write_table(table, f"s3://{bucket}/in", 2)
    out = f"s3://{bucket}/out"
    cfg = write_config(tmp_path, f"s3://{bucket}/in", out, recursion={"max_depth": 1},
                       stability={"resamples": 1},
                       explain={"enabled": True, "n_estimators": 10, "shap_rows": 300})
    recorder = TaskRecorder(dask_cluster.scheduler)
    lines = Lines()
    dask_cluster.scheduler.add_plugin(recorder, name="record-tasks")
    for name in ("recluster", "distributed", "botocore", "s3fs", "fsspec"):
        logging.getLogger(name).addHandler(lines)
    try:
        # --verbose: the libraries log as much as they would for a user who asks, all searched.
        code = run_cli("run", cfg, "--scheduler", scheduler, "--verbose")
    finally:
        dask_cluster.scheduler.remove_plugin(name="record-tasks")
        for name in ("recluster", "distributed", "botocore", "s3fs", "fsspec"):
            logging.getLogger(name).removeHandler(lines)
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]

    files = s3fs_fs.find(f"{bucket}/out")
    names = {f.rsplit("/", 1)[1] for f in files}
    assert {"manifest.json", "_SUCCESS", "tree.json", "shap_summary.parquet"} <= names
    assert len(recorder.texts) > 20 and lines.lines

    from distributed import Client

    with Client(scheduler) as c:
        logs = [m for _, m in c.get_scheduler_logs(n=10_000)]
        logs += [m for w in c.get_worker_logs(n=10_000).values() for _, m in w]
    haystacks = {
        "stdout": captured.out, "stderr": captured.err, "log records": "\n".join(lines.lines),
        "dask logs": "\n".join(logs), "task reprs": "\n".join(recorder.texts),
    }
    for secret in SECRETS:
        for where, text in haystacks.items():
            assert secret not in text, f"{secret!r} found in {where}"
        for blob in recorder.blobs:
            assert secret.encode() not in blob, "secret in a pickled task"
        for f in files:
            assert secret.encode() not in s3fs_fs.cat_file(f), f"{secret!r} in {f}"
    print(f"searched {len(files)} output files, {len(recorder.texts)} tasks, "
          f"{len(logs)} dask log lines, {len(lines.lines)} log records")


def test_local_cluster_binds_scheduler_and_dashboard_to_loopback():
    from urllib.parse import urlsplit

    from recluster.config import RuntimeConfig
    from recluster.parallel.client import dask_client

    with dask_client(RuntimeConfig(n_workers=1, memory_limit="1GiB")) as client:
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert urlsplit(client.dashboard_link).hostname == "127.0.0.1"
        workers = client.scheduler_info()["workers"]
        assert workers and all(a.startswith("tcp://127.0.0.1:") for a in workers)


def test_seeded_secrets_in_options_and_environment_reach_no_file_or_output(
        s3_endpoint, bucket, s3fs_fs, tmp_path, scheduler):
    """Every storage option that is not on the allowlist and every credential variable the
    job's storage layer reads gets a distinctive value in the ``recluster`` process (which
    writes the manifest, tree, models and report; the session cluster's workers, which write
    the labels, hold the fake credentials the test above searches for); a real run, a refused
    run and ``render-k8s`` must not write any of them anywhere: output files (the reserved area
    included), stdout, stderr."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    seeds = {
        "AWS_ACCESS_KEY_ID": "SEEDAKIDenv0000000001",
        "AWS_SECRET_ACCESS_KEY": "seed-aws-secret-env-Qw7",
        "AWS_SESSION_TOKEN": "seed-aws-session-token-env-Zx9",
        "FSSPEC_S3_KEY": "SEEDAKIDfsspec000002",
        "FSSPEC_S3_SECRET": "seed-fsspec-secret-Lp4",
        "FSSPEC_S3_TOKEN": "seed-fsspec-token-Mn5",
    }
    option_seeds = {"in": "seed-option-input-ua-Rt6", "out": "seed-option-output-ua-Yu8"}
    env = {**os.environ, **seeds}
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    table, _ = make_table(2000, seed=4)
    write_table(table, f"s3://{bucket}/in", 2)

    def config(out: str, options: bool = True) -> Path:
        data = yaml.safe_load(write_config(
            tmp_path, f"s3://{bucket}/in", out, recursion={"max_depth": 1},
            stability={"resamples": 1},
            explain={"enabled": True, "n_estimators": 10, "shap_rows": 300}).read_text())
        if options:
            for section, key in (("input", "in"), ("output", "out")):
                data[section]["storage_options"] = {
                    "config_kwargs": {"user_agent_extra": option_seeds[key],
                                      "connect_timeout": 30},
                    "client_kwargs": {"region_name": "us-east-1"}}
        path = tmp_path / f"seeded-{abs(hash((out, options)))}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    recluster = str(Path(sys.executable).parent / "recluster")
    runs = [subprocess.run([recluster, *args], env=env, capture_output=True, text=True,
                           timeout=240, stdin=subprocess.DEVNULL)
            for args in (["run", str(config(f"s3://{bucket}/out")), "--scheduler", scheduler],
                         ["render-k8s", str(config(f"s3://{bucket}/k8s")), "--image",
                          "r.example/recluster:1.0"],
                         ["render-k8s", str(config(f"s3://{bucket}/k8s", options=False)),
                          "--image", "r.example/recluster:1.0"])]
    assert runs[0].returncode == 0, runs[0].stderr[-3000:]
    assert runs[1].returncode == 2 and "user_agent_extra" in runs[1].stderr
    assert runs[2].returncode == 0 and "kind: DaskJob" in runs[2].stdout
    s3fs_fs.pipe(f"{bucket}/foreign/x.txt", b"someone else's")
    refused = subprocess.run([recluster, "run", str(config(f"s3://{bucket}/foreign"))], env=env,
                             capture_output=True, text=True, timeout=120,
                             stdin=subprocess.DEVNULL)
    assert refused.returncode == 4
    s3fs_fs.invalidate_cache()
    files = s3fs_fs.find(f"{bucket}/out")
    names = {f.rsplit("/", 1)[1] for f in files}
    assert {"manifest.json", "report.html", "tree.json", "shap_summary.parquet"} <= names
    manifest = s3fs_fs.cat_file(f"{bucket}/out/manifest.json").decode()
    assert '"user_agent_extra": "***"' in manifest and '"region_name": "us-east-1"' in manifest
    texts = {f: s3fs_fs.cat_file(f) for f in files}
    for p in (*runs, refused):
        texts[f"{p.args[1]} stdout"] = p.stdout.encode()
        texts[f"{p.args[1]} stderr"] = p.stderr.encode()
    for secret in [*seeds.values(), *option_seeds.values()]:
        for where, data in texts.items():
            assert secret.encode() not in data, f"{secret!r} found in {where}"
