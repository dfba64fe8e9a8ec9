"""Getting a Dask client: an existing scheduler if one is named, else a local cluster.

The scheduler address comes from ``--scheduler``, then ``DASK_SCHEDULER_ADDRESS`` (what the
dask-kubernetes DaskJob runner pod is given), then ``runtime.scheduler`` in the config.
A local cluster binds its scheduler and dashboard to 127.0.0.1 only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from distributed import Client, LocalCluster

from recluster.config import RuntimeConfig


def scheduler_address(runtime: RuntimeConfig, cli_address: str | None) -> str | None:
    return cli_address or os.environ.get("DASK_SCHEDULER_ADDRESS") or runtime.scheduler


def prepare_numba_cache(runtime: RuntimeConfig) -> str:
    """Point numba's on-disk cache somewhere persistent before any worker process starts.

    Local workers inherit the environment, so UMAP's cacheable kernels compile once per
    machine instead of once per process.
    """
    path = runtime.numba_cache_dir or os.environ.get("NUMBA_CACHE_DIR") or str(
        Path.home() / ".cache" / "recluster" / "numba")
    Path(path).mkdir(parents=True, exist_ok=True)
    os.environ["NUMBA_CACHE_DIR"] = path
    return path


@contextmanager
def dask_client(runtime: RuntimeConfig, cli_address: str | None = None) -> Iterator[Client]:
    """Yield a connected client; a local cluster started here is closed on exit."""
    address = scheduler_address(runtime, cli_address)
    if address:
        with Client(address, timeout="60s") as client:
            yield client
        return
    prepare_numba_cache(runtime)
    n_workers = runtime.n_workers or max(1, os.cpu_count() or 1)
    with LocalCluster(
        n_workers=n_workers,
        threads_per_worker=runtime.threads_per_worker,
        memory_limit=runtime.memory_limit,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:8787",
        processes=True,
    ) as cluster, Client(cluster) as client:
        yield client
