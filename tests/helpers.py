"""Test helpers: write generated tables to a store, run the CLI, read the published labels,
and start/stop the Dask processes that the multi-process tests run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from recluster.cli import main


def write_table(table: pd.DataFrame, url: str, n_files: int, row_group_rows: int = 2_000) -> None:
    """Write ``table`` as ``n_files`` Parquet files under ``url`` (any fsspec URL)."""
    fs, root = fsspec.core.url_to_fs(url)
    fs.makedirs(root, exist_ok=True)
    for i, idx in enumerate(np.array_split(np.arange(len(table)), n_files)):
        with fs.open(f"{root}/part-{i:03d}.parquet", "wb") as f:
            pq.write_table(pa.Table.from_pandas(table.iloc[idx], preserve_index=False), f,
                           row_group_size=row_group_rows)


def write_config(tmp_path: Path, input_url: str, output_url: str, **sections) -> Path:
    data = {"input": {"path": input_url, "id_column": "user_id", "categorical": ["country"]},
            "output": {"path": output_url},
            "sample": {"size": 4000},
            "clustering": {"min_cluster_fraction": 0.03},
            "recursion": {"min_node_rows": 500},
            "explain": {"enabled": False},
            "seed": 0}
    for key, value in sections.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    path = tmp_path / f"config-{abs(hash(output_url)) % 10**8}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_cli(*args: str) -> int:
    return main([str(a) for a in args])


def read_labels(url: str) -> pd.DataFrame:
    fs, root = fsspec.core.url_to_fs(url)
    files = sorted(fs.glob(f"{root}/labels/*.parquet"))
    parts = []
    for f in files:
        with fs.open(f, "rb") as fh:
            parts.append(pq.read_table(fh).to_pandas())
    return pd.concat(parts, ignore_index=True)


def read_json(url: str, name: str):
    fs, root = fsspec.core.url_to_fs(url)
    with fs.open(f"{root}/{name}", "rb") as f:
        return json.loads(f.read())


def published(url: str) -> bool:
    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return fs.exists(f"{root}/manifest.json") or fs.exists(f"{root}/_SUCCESS")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return ""


def stop_processes(procs: list[subprocess.Popen]) -> None:
    """Terminate what a test started (by pid, then its own process group if it lingers)."""
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # the group of a process started there, nothing else
            p.wait(timeout=10)
