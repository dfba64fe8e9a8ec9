"""Object-store faults between the job and S3, injected by a proxy on 127.0.0.1 (tests/faultproxy.py).

Transient faults (503 SlowDown, connection resets, delays) are retried and the run publishes the
same labels as a clean run; a store that stays down, refuses connections or hangs fails the run
with a message naming the stage and the storage settings, within a bounded time, publishing
nothing; once the store is back, a re-run completes.
"""

from __future__ import annotations

import socket
import time

import pytest
from faultproxy import FaultProxy, Rule
from helpers import published, read_json, read_labels, run_cli, write_config, write_table

from recluster.demo import make_table

pytestmark = pytest.mark.timeout(300)

SECTIONS = {"sample": {"size": 2000}, "recursion": {"max_depth": 1},
            "input": {"rows_per_partition": 1000}, "stability": {"resamples": 0}}


@pytest.fixture(scope="module")
def data(s3_endpoint, scheduler, tmp_path_factory):
    """The input table on S3 and the labels of a clean run (no proxy)."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("faults")
    table, _ = make_table(3000, seed=5)
    write_table(table, "s3://faults/in", n_files=3, row_group_rows=500)
    tmp = tmp_path_factory.mktemp("s3faults")
    cfg = write_config(tmp, "s3://faults/in", "s3://faults/clean", **SECTIONS)
    assert run_cli("run", cfg, "--scheduler", scheduler, "--quiet") == 0
    return {"table": table, "clean": _sorted(read_labels("s3://faults/clean"))}


def _sorted(labels):
    return labels.sort_values("user_id").reset_index(drop=True)


def _config(tmp_path, endpoint: str, out: str, retries: int, timeout_s: float):
    opts = {"storage_options": {"endpoint_url": endpoint}}
    sections = {**SECTIONS, "input": {**SECTIONS["input"], **opts}, "output": opts,
                "runtime": {"storage_retries": retries, "storage_timeout_s": timeout_s}}
    return write_config(tmp_path, "s3://faults/in", out, **sections)


def _run(cfg, scheduler, capsys):
    t0 = time.perf_counter()
    code = run_cli("run", cfg, "--scheduler", scheduler, "--quiet")
    seconds = time.perf_counter() - t0
    return code, capsys.readouterr().err, seconds


def test_transient_503_resets_and_delays_are_retried(data, s3_endpoint, scheduler, tmp_path,
                                                      capsys):
    out = "s3://faults/transient"
    rules = [
        Rule("503", method="GET", path_contains="/faults/in/", times=3),  # footers and pieces
        Rule("reset", method="GET", path_contains="/faults/in/", skip=5, times=2),
        Rule("503", method="PUT", path_contains="/labels/part-", times=2),  # worker writes
        Rule("reset", method="PUT", path_contains="/_recluster/staging/", skip=1, times=2),
        Rule("delay", delay_s=0.3, times=10),
    ]
    with FaultProxy(s3_endpoint, rules) as proxy:
        cfg = _config(tmp_path, proxy.url, out, retries=4, timeout_s=10)
        code, err, seconds = _run(cfg, scheduler, capsys)
    assert code == 0, err[-3000:]
    assert [r.injected for r in rules] == [3, 2, 2, 2, 10], "every planned fault was injected"
    labels = _sorted(read_labels(out))
    assert labels["user_id"].tolist() == data["clean"]["user_id"].tolist()
    assert labels["cluster"].tolist() == data["clean"]["cluster"].tolist()
    assert (labels["probability"] - data["clean"]["probability"]).abs().max() < 1e-9
    assert read_json(out, "manifest.json")["rows"] == {"in": 3000, "out": 3000}
    print(f"transient faults: {proxy.requests} requests, {proxy.injected()} faults, {seconds:.1f}s")


def test_store_that_stays_down_fails_clearly_in_bounded_time(data, s3_endpoint, scheduler,
                                                             tmp_path, capsys):
    out, retries, timeout_s = "s3://faults/down", 2, 2.0
    with FaultProxy(s3_endpoint, [Rule("503")]) as proxy:
        cfg = _config(tmp_path, proxy.url, out, retries, timeout_s)
        code, err, seconds = _run(cfg, scheduler, capsys)
    assert code == 6, err[-2000:]
    # Refused before a cluster starts: the output folder (and the folders above it: is it
    # inside another run's?) is looked at first.
    assert "storage failed while looking at the output folder (s3://faults/down)" in err
    assert f"runtime.storage_retries={retries}" in err
    assert proxy.injected("503") >= retries + 1
    assert seconds < 60, f"a store that stays down took {seconds:.1f}s to fail"
    assert not published(out)
    print(f"503 forever: failed after {seconds:.1f}s, {proxy.requests} requests")


def test_refused_connections_fail_clearly_in_bounded_time(data, scheduler, tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    out = "s3://faults/refused"
    cfg = _config(tmp_path, endpoint, out, retries=2, timeout_s=2)
    code, err, seconds = _run(cfg, scheduler, capsys)
    assert code == 6, err[-2000:]
    assert "storage failed while looking at the output folder" in err and endpoint in err
    assert seconds < 60, f"refused connections took {seconds:.1f}s to fail"
    assert not published(out)


def test_hanging_store_is_bounded_by_the_storage_timeout(data, s3_endpoint, scheduler, tmp_path,
                                                         capsys):
    out = "s3://faults/hang"
    with FaultProxy(s3_endpoint, [Rule("delay", delay_s=30)]) as proxy:
        cfg = _config(tmp_path, proxy.url, out, retries=1, timeout_s=1)
        code, err, seconds = _run(cfg, scheduler, capsys)
    assert code == 6, err[-2000:]
    assert "storage failed while" in err and "runtime.storage_timeout_s=1" in err
    assert seconds < 45, f"a hanging store took {seconds:.1f}s to fail"
    assert not published(out)


def test_store_down_mid_run_on_workers_then_rerun_completes(data, s3_endpoint, scheduler,
                                                            tmp_path, capsys):
    out = "s3://faults/midrun"
    down = Rule("503", method="PUT", path_contains="/labels/part-")
    with FaultProxy(s3_endpoint, [down]) as proxy:
        cfg = _config(tmp_path, proxy.url, out, retries=2, timeout_s=2)
        code, err, seconds = _run(cfg, scheduler, capsys)
        assert code == 6, err[-2000:]
        assert "stage 'write labels' failed: storage failed while writing labels/part-" in err
        assert down.injected >= 3
        assert seconds < 120
        assert not published(out)
        proxy.rules.clear()  # the store is back
        code, err, _ = _run(cfg, scheduler, capsys)
    assert code == 0, err[-3000:]
    labels = _sorted(read_labels(out))
    assert labels["cluster"].tolist() == data["clean"]["cluster"].tolist()
