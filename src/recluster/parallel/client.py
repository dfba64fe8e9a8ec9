"""Getting a Dask client: an existing scheduler if one is named, else a local cluster.

The scheduler address comes from ``--scheduler``, then ``DASK_SCHEDULER_ADDRESS`` (what the
dask-kubernetes DaskJob runner pod is given), then ``runtime.scheduler`` in the config.
A local cluster binds its scheduler and dashboard to 127.0.0.1 only.

**A quiet terminal.** Worker processes of a local cluster write to this process's terminal:
unless ``verbose``, they start with Python warnings off (``PYTHONWARNINGS``) and a worker plugin
(:class:`QuietWorker`) turns library warnings and logs off and points their stdout and stderr
at the null device, so that no UMAP, numba, scikit-learn or XGBoost line (XGBoost's collective
prints "got rank" from C++) reaches the user. Task errors still reach the client as exceptions.
Workers of an existing scheduler keep their output: it goes to their own logs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

from recluster.config import RuntimeConfig
from recluster.progress import silence_libraries


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


class QuietWorker(WorkerPlugin):
    """Silences a local worker process: library warnings and logs off, stdout and stderr to the
    null device (also what C++ code such as XGBoost's collective prints)."""

    name = "recluster-quiet-worker"

    def setup(self, worker) -> None:
        silence_libraries()
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
        finally:
            os.close(devnull)


@contextmanager
def dask_client(runtime: RuntimeConfig, cli_address: str | None = None,
                verbose: bool = False) -> Iterator[Client]:
    """Yield a connected client; a local cluster started here is closed on exit (its workers
    silenced unless ``verbose``)."""
    address = scheduler_address(runtime, cli_address)
    if address:
        with Client(address, timeout="60s") as client:
            yield client
        return
    prepare_numba_cache(runtime)
    if not verbose:  # inherited by the worker processes: covers what they print on import
        os.environ.setdefault("PYTHONWARNINGS", "ignore")
    n_workers = runtime.n_workers or max(1, os.cpu_count() or 1)
    with LocalCluster(
        n_workers=n_workers,
        threads_per_worker=runtime.threads_per_worker,
        memory_limit=runtime.memory_limit,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:8787",
        processes=True,
        # LocalCluster would set distributed's loggers to warnings; --verbose wants its info.
        silence_logs=False if verbose else logging.ERROR,
    ) as cluster, Client(cluster) as client:
        if not verbose:
            client.register_plugin(QuietWorker())
        yield client
