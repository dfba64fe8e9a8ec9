"""Warm workers (:mod:`recluster.parallel.client`): UMAP's kernels that lack ``cache=True`` get
numba's on-disk cache, and a worker plugin warms each worker process once, in the background,
whoever registers it and however often."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from recluster.config import RuntimeConfig
from recluster.parallel.client import dask_client

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
