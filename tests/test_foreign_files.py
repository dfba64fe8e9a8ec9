"""Property: whatever foreign files lie around and inside a run's input and output paths, and
however the output path is spelled, a run (succeeding or refused or failing) leaves every one
of them byte for byte, and leaves nothing of its own but a complete publication.

Hypothesis draws the layout on a local folder; most examples are refused before any work
(overlap, foreign files in the output, unreadable input), and at most ``MAX_FULL_RUNS`` runs go
all the way (each costs a few seconds): beyond that, an example that would run gets one more
foreign file inside its output. One fixed layout runs on moto's S3 server, with an overwrite.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import fsspec
import pytest
import yaml
from helpers import run_cli
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_output_runs import penguins, write_files

from recluster.job.inputs import NOT_PARQUET

pytestmark = pytest.mark.timeout(600)

MAX_FULL_RUNS = 3
_full_runs = {"n": 0}

# Where foreign files go, relative to the example's base folder.
PLACES = ["", "data", "data/in", "data/in/sub", "out", "out/labels", "out-old", "data/out",
          "data/in-notes"]
# Output paths (spelled in several ways); {b} is the base folder.
OUTPUTS = ["{b}/out", "{b}/out/", "file://{b}/out", "{b}/./out", "{b}/data/../out",
           "{b}/out/nested/run", "{b}/data/out", "{b}/data/in", "{b}/data/in/", "{b}/data/in/out",
           "{b}/data", "{b}", "{b}/link-in", "{b}/link-in/x"]

segment = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,7}", fullmatch=True).filter(
    lambda s: s not in (".", ".."))
foreign = st.lists(st.tuples(st.sampled_from(PLACES), st.lists(segment, min_size=1, max_size=3),
                             st.binary(min_size=0, max_size=64)), min_size=1, max_size=8)


def lay(base: Path, files) -> dict[str, bytes]:
    """Write the foreign files (skipping any whose path runs through an existing file or is an
    existing folder); returns relative path -> bytes of those written."""
    laid = {}
    for place, parts, data in files:
        target = base.joinpath(place, *parts)
        if any(p.is_file() for p in [target, *target.parents] if base in p.parents) or \
                target.is_dir():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        laid[str(target.relative_to(base))] = data
    return laid


def every_file(base: Path) -> dict[str, bytes]:
    return {str(p.relative_to(base)): p.read_bytes() for p in base.rglob("*")
            if p.is_file() and not p.is_symlink()}


def _config(path: Path, input_url: str, output_url: str, **output) -> Path:
    path.write_text(yaml.safe_dump({
        "input": {"path": input_url, "id_column": "penguin", "categorical": ["island"],
                  "features": ["island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm",
                               "body_mass_g"]},
        "output": {"path": output_url, **output},
        "sample": {"size": 1000}, "recursion": {"max_depth": 1, "min_node_rows": 100},
        "stability": {"resamples": 0}, "explain": {"enabled": False}}))
    return path


@settings(max_examples=24, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(files=foreign, output=st.sampled_from(OUTPUTS))
def test_foreign_files_survive_any_run(files, output, tmp_path_factory, scheduler):
    base = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    write_files(penguins(), str(base / "data" / "in"))
    (base / "link-in").symlink_to(base / "data" / "in")
    inputs = every_file(base)
    laid = lay(base, files)
    out_url = output.format(b=base)
    out_dir = Path(fsspec.core.url_to_fs(out_url)[1]).resolve()
    # Would this example run all the way? Then cap the number of such examples.
    clean_out = not out_dir.exists() or not any(p.is_file() for p in out_dir.rglob("*"))
    overlaps = out_dir == base / "data" / "in" or base / "data" / "in" in out_dir.parents or \
        out_dir in (base / "data" / "in").parents
    bad_input = any(k.startswith("data/in/") and not Path(k).name.startswith(("_", "."))
                    and (k.endswith((".parquet", ".parq", ".pq")) or "." not in Path(k).name)
                    for k in laid)
    if clean_out and not overlaps and not bad_input:
        if _full_runs["n"] >= MAX_FULL_RUNS:
            extra = out_dir / "kept.txt"
            extra.parent.mkdir(parents=True, exist_ok=True)
            extra.write_bytes(b"a file the run must refuse to share a folder with")
            laid[str(extra.relative_to(base))] = extra.read_bytes()
        else:
            _full_runs["n"] += 1
    cfg = _config(base / "c.yaml", str(base / "data" / "in"), out_url)
    before = every_file(base)

    code = run_cli("run", cfg, "--scheduler", scheduler, "--quiet")

    after = every_file(base)
    event(f"exit {code}")
    for rel, data in before.items():
        assert after.get(rel) == data, f"{rel} changed or vanished (exit {code}, output {out_url})"
    new = set(after) - set(before)
    assert code in (0, 3, 4), code
    if code == 0:
        manifest = yaml.safe_load((out_dir / "manifest.json").read_text())
        listed = {f["path"] for f in manifest["files"]} | {"manifest.json", "_SUCCESS"}
        assert {str((base / r).resolve().relative_to(out_dir)) for r in new} == listed
        assert clean_out and not overlaps and not bad_input
    else:
        assert not new, f"a refused or failed run left {sorted(new)[:5]}"
    assert set(inputs) <= set(after)


def test_foreign_objects_on_s3_survive_runs_and_an_overwrite(bucket, s3fs_fs, tmp_path,
                                                               scheduler, capsys):
    b = f"s3://{bucket}"
    write_files(penguins(), f"{b}/data/in")
    objects = {"out-old/labels/part-00000.parquet": b"another tool's", "out.txt": b"sibling",
               "outx/y": b"prefix-sharing", "data/in/_README": b"notes",
               "data/in/notes/readme.md": b"more notes", "data/in-notes/z": b"z",
               "segments/keep.csv": b"a,b\n1,2\n"}
    for rel, data in objects.items():
        s3fs_fs.pipe(f"{bucket}/{rel}", data)

    def check():
        s3fs_fs.invalidate_cache()
        for rel, data in objects.items():
            assert s3fs_fs.cat_file(f"{bucket}/{rel}") == data, rel

    cfg = _config(tmp_path / "c.yaml", f"{b}/data/in", f"{b}/out")
    assert run_cli("run", cfg, "--scheduler", scheduler, "--quiet") == 0
    check()
    for out in (f"{b}/segments", f"{b}", f"{b}/data", f"s3a://{bucket}/data/in/"):
        assert run_cli("run", _config(tmp_path / "r.yaml", f"{b}/data/in", out),
                       "--scheduler", scheduler, "--quiet") == 4, out
        check()
    again = _config(tmp_path / "o.yaml", f"{b}/data/in", f"{b}/out/", overwrite=True)
    text = yaml.safe_load(again.read_text())
    text["seed"] = 7
    again.write_text(yaml.safe_dump(text))
    assert run_cli("run", again, "--scheduler", scheduler, "--quiet") == 0
    check()
    s3fs_fs.invalidate_cache()
    left = {p[len(f"{bucket}/out/"):] for p in s3fs_fs.find(f"{bucket}/out")}
    manifest = yaml.safe_load(s3fs_fs.cat_file(f"{bucket}/out/manifest.json"))
    assert manifest["seed"] == 7
    # the input's notes are not read, and the run says so (it skipped them without a word)
    assert {"file": f"{b}/data/in/notes/readme.md", "what": NOT_PARQUET} in manifest["degraded"]
    assert manifest["input"]["table"]["skipped_files"] == [f"{b}/data/in/notes/readme.md"]
    assert left == {f["path"] for f in manifest["files"]} | {"manifest.json", "_SUCCESS"}
