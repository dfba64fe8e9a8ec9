"""Shared fixtures: a real S3 endpoint (moto's server over HTTP on 127.0.0.1) and a real
two-worker Dask ``LocalCluster``, both started once per test session.

The S3 credentials and endpoint reach s3fs/botocore through the environment, exactly as in
production; worker processes inherit them because the cluster starts after the server.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

FAKE_KEY = "RECLUSTERFAKEKEYID0001"
FAKE_SECRET = "recluster-fake-secret-Zq8vT3xW9"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """Start moto's S3 server on loopback and point the AWS environment at it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": FAKE_KEY,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def s3fs_fs(s3_endpoint):
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True)


@pytest.fixture
def bucket(s3fs_fs):
    """A fresh bucket per test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3fs_fs.mkdir(name)
    return name


@pytest.fixture(scope="session")
def dask_cluster(s3_endpoint, tmp_path_factory):
    """A real two-process LocalCluster on 127.0.0.1, shared by the session."""
    from distributed import LocalCluster

    cache = os.environ.get("NUMBA_CACHE_DIR") or str(Path.home() / ".cache" / "recluster" / "numba")
    os.environ["NUMBA_CACHE_DIR"] = cache
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0", processes=True, memory_limit="4GiB")
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def scheduler(dask_cluster) -> str:
    return dask_cluster.scheduler_address


@pytest.fixture
def client(dask_cluster):
    from distributed import Client

    with Client(dask_cluster) as c:
        yield c


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium for the report tests (one per test module)."""
    from chromium import CHROMIUM, Chromium

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)")
    b = Chromium()
    yield b
    b.close()
