"""Warm workers (:mod:`recluster.parallel.client`): UMAP's kernels that lack ``cache=True`` get
numba's on-disk cache, and a worker plugin warms each worker process once, in the background,
whoever registers it and however often."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from recluster.config import RuntimeConfig
from recluster.errors import ConfigError
from recluster.parallel.client import dask_client, prepare_numba_cache

pytestmark = pytest.mark.timeout(300)


def _warm_state(wait_s: float) -> dict:
    """On a worker: the warm-up thread's identity and, once it has finished (up to ``wait_s``),
    whether UMAP's graph kernel has an on-disk cache and compiled code."""
    import recluster.parallel.client as c

    thread = c._warm_thread
    if thread is None:
        return {"thread": None}
    thread.join(wait_s)
    import umap.umap_
    from numba.core.caching import NullCache

    kernel = umap.umap_.smooth_knn_dist
    return {"thread": thread.ident, "alive": thread.is_alive(),
            "cached": not isinstance(kernel._cache, NullCache),
            "compiled": len(kernel.signatures) > 0}


def test_every_worker_is_warmed_once_however_often_the_plugin_is_registered(scheduler):
    with dask_client(RuntimeConfig(), cli_address=scheduler, warm=True) as client:
        first = client.run(_warm_state, 240)
    assert len(first) == 2
    for state in first.values():
        assert state["thread"] is not None and not state["alive"]
        assert state["cached"] and state["compiled"]
    # a second run on the same scheduler registers the plugin again: no second warm-up
    with dask_client(RuntimeConfig(), cli_address=scheduler, warm=True) as client:
        again = client.run(_warm_state, 0)
    assert {w: s["thread"] for w, s in again.items()} == {w: s["thread"] for w, s in first.items()}


def test_umap_kernels_compile_once_per_machine_not_once_per_process(tmp_path):
    """A fresh process fills the on-disk cache with UMAP's parallel graph kernels; the next
    fresh process loads them instead of compiling (what a new worker then skips)."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "PYTHONWARNINGS": "ignore"}
    code = "from recluster.parallel.client import warm_up; print(warm_up())"
    seconds = []
    for _ in range(2):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           timeout=240)
        assert r.returncode == 0, r.stderr[-2000:]
        seconds.append((float(r.stdout.strip()), time.perf_counter() - t))
    cached = [p.name for p in tmp_path.rglob("*.nbi")]
    for kernel in ("smooth_knn_dist", "compute_membership_strengths"):
        assert any(f"umap_.{kernel}" in name for name in cached), (kernel, cached)
    # loading is far cheaper than compiling (12.6 s against 0.2 s unloaded)
    assert seconds[1][0] < 0.5 * seconds[0][0], seconds


def _home_that_cannot_hold_a_cache(tmp_path, monkeypatch):
    """HOME is a regular file (as unwritable as a read-only home, even for root); no
    NUMBA_CACHE_DIR; the temporary directory is a fresh one under ``tmp_path``."""
    home = tmp_path / "home"
    home.write_text("not a directory")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def test_a_home_that_cannot_hold_the_cache_falls_back_to_a_private_temp_dir(tmp_path, monkeypatch):
    """A read-only or missing home (containers) made every local run fail with a raw
    FileNotFoundError traceback from mkdir: the cache is an optimisation, not a requirement."""
    tmp = _home_that_cannot_hold_a_cache(tmp_path, monkeypatch)
    path = prepare_numba_cache(RuntimeConfig())
    assert path == str(tmp / f"recluster-numba-{os.getuid()}")
    assert os.environ["NUMBA_CACHE_DIR"] == path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700


def test_a_temp_cache_dir_others_can_write_is_not_used(tmp_path, monkeypatch):
    """numba's cache files are pickles: a directory another user can write is never loaded."""
    tmp = _home_that_cannot_hold_a_cache(tmp_path, monkeypatch)
    planted = tmp / f"recluster-numba-{os.getuid()}"
    planted.mkdir()
    planted.chmod(0o777)
    assert prepare_numba_cache(RuntimeConfig()) is None
    assert "NUMBA_CACHE_DIR" not in os.environ


@pytest.mark.parametrize("via_config", [True, False])
def test_a_cache_dir_the_user_names_must_be_writable(tmp_path, monkeypatch, via_config):
    bad = str(tmp_path / "a-file" / "numba")
    (tmp_path / "a-file").write_text("")
    if via_config:
        runtime, setting = RuntimeConfig(numba_cache_dir=bad), "runtime.numba_cache_dir"
    else:
        monkeypatch.setenv("NUMBA_CACHE_DIR", bad)
        runtime, setting = RuntimeConfig(), "NUMBA_CACHE_DIR"
    with pytest.raises(ConfigError, match=rf"{setting}={re.escape(bad)}: .*writable directory"):
        prepare_numba_cache(runtime)


def test_a_damaged_cache_file_is_named_before_any_worker_starts(tmp_path, monkeypatch):
    """numba unpickles its cache files unguarded: one damaged file failed the first node fit with
    "module 'umap' has no attribute 'UMAP'", which names neither the cache nor the file."""
    import pickle

    kernels = tmp_path / "umap_0123"
    kernels.mkdir()
    whole = pickle.dumps("0.61.0", protocol=-1) + pickle.dumps((1.5, {"sig": "f.nbc"}), protocol=-1)
    (kernels / "umap_.smooth_knn_dist-183.py311.nbi").write_bytes(whole)
    (kernels / "umap_.smooth_knn_dist-183.py311.1.nbc").write_bytes(pickle.dumps(b"\0" * 99))
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    assert prepare_numba_cache(RuntimeConfig()) == str(tmp_path)  # whole files pass
    damaged = kernels / "umap_.compute_membership_strengths-263.py311.nbi"
    damaged.write_bytes(whole[:-5])  # cut short, as by a full disk
    with pytest.raises(ConfigError, match=re.escape(str(damaged)) + ".*delete the file"):
        prepare_numba_cache(RuntimeConfig())


def test_without_a_chosen_cache_dir_nothing_is_cached_inside_the_package(tmp_path):
    """A worker of an external cluster started without NUMBA_CACHE_DIR: numba's default for the
    kernels the plugin makes cacheable is UMAP's own ``__pycache__`` in site-packages."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    code = ("import umap.umap_; from numba.core.caching import NullCache;"
            "from recluster.parallel.client import cache_umap_kernels;"
            "print(cache_umap_kernels(), isinstance(umap.umap_.smooth_knn_dist._cache, NullCache))")
    r = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONWARNINGS": "ignore"},
                       capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["[]", "True"]


def test_a_fit_waits_for_the_warm_up_threads_imports(monkeypatch):
    """Two threads importing umap at once can get a partially initialised module (a fit failed
    once with "cannot import name 'optimize_layout_euclidean' from partially initialized module
    'umap.layouts'"): a fit task waits for the warm-up thread's imports, and only while that
    thread exists (a worker never warmed does not wait at all)."""
    import threading

    import recluster.parallel.client as c

    gate = threading.Event()
    monkeypatch.setattr(c, "_imports_done", gate)
    monkeypatch.setattr(c, "_warm_thread", None)
    t = time.perf_counter()
    c.imports_ready(timeout_s=5)
    assert time.perf_counter() - t < 0.5  # no warm-up thread: no wait

    monkeypatch.setattr(c, "_warm_thread", threading.current_thread())
    done = threading.Event()
    waiter = threading.Thread(target=lambda: (c.imports_ready(timeout_s=30), done.set()))
    waiter.start()
    assert not done.wait(0.5)  # still importing: the fit waits
    gate.set()
    assert done.wait(5)
    waiter.join(5)
