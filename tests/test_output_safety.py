"""Where a run may write, what it may delete, and who may write at once: the checks that need
no cluster (overlap, foreign files, a file as output, the lock and its lease, publication and
repair, config input limits, secrets), on a local folder and on moto's S3 server.

Runs through the whole job are in ``test_output_runs.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from pathlib import Path

import pytest
import yaml
from helpers import run_cli

from recluster.config import parse_config
from recluster.errors import ConfigError, OutputConflictError
from recluster.job.inputs import check_output
from recluster.storage.fs import Location, create_exclusive, normalize_url, overlap
from recluster.storage.lock import OutputLock, OutputLockedError
from recluster.storage.outputs import MANIFEST, SUCCESS, OutputStore, claim

pytestmark = pytest.mark.timeout(120)


def _cfg(input_path: str, output_path: str, **output) -> object:
    return parse_config({"input": {"path": input_path, "id_column": "id"},
                         "output": {"path": output_path, **output}})


# -- one canonical spelling -------------------------------------------------------------------

@pytest.mark.parametrize("a, b, relation", [
    ("s3://b/x", "s3://b/x/", "is"),
    ("s3a://b/x/", "s3://b/x", "is"),
    ("s3://b/x/y", "s3://b/x", "inside"),
    ("s3://b", "s3://b/x", "contains"),
    ("s3://b/x-old", "s3://b/x", None),
    ("s3://b/xy", "s3://b/x", None),
    ("s3://other/x", "s3://b/x", None),
    ("gs://b/x", "s3://b/x", None),
])
def test_object_store_spellings(a, b, relation):
    assert overlap(Location.of(a), Location.of(b)) == relation


def test_different_endpoints_are_different_stores():
    a = Location.of("s3://b/x", {"endpoint_url": "http://one:9000"})
    b = Location.of("s3://b/x", {"endpoint_url": "http://two:9000/"})
    assert overlap(a, b) is None
    assert overlap(a, Location.of("s3://b/x")) == "is"  # unknown endpoint: assume the same store


@pytest.mark.parametrize("url", ["s3://b/in/../out", "s3://b/./x", "s3://b//x", "s3:///x"])
def test_object_store_dot_segments_are_refused(url):
    with pytest.raises(ConfigError, match="'.', '..' or empty"):
        normalize_url(url)


def test_local_spellings_resolve_to_one_path(tmp_path, monkeypatch):
    real = tmp_path / "data" / "in"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    canonical = normalize_url(str(real))
    for spelling in (f"{real}/", f"file://{real}", "./data/in", "data/x/../in/",
                     f"{tmp_path}/link/in", "link/./in"):
        assert normalize_url(spelling) == canonical, spelling
    assert normalize_url("link/in/new/out") == canonical + "/new/out"  # not there yet: fine


def test_a_link_to_a_folder_inside_the_input_is_named_not_read(tmp_path):
    """Links to folders inside the input are not followed (one could lead into the output);
    the listing took such a link for a Parquet file: "cannot read Parquet file <p>: <p>"."""
    import pandas as pd

    from recluster.errors import InputDataError
    from recluster.storage.inputs import list_parquet_files

    (tmp_path / "in").mkdir()
    pd.DataFrame({"id": [1, 2]}).to_parquet(tmp_path / "in" / "part-0.parquet")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "in" / "more").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InputDataError, match=f"link to the folder {tmp_path}/elsewhere"):
        list_parquet_files(Location.of(str(tmp_path / "in")))


@pytest.mark.parametrize("output", [
    "{in}", "{in}/", "file://{in}", "{in}/../in", "{in}/out", "{root}", "{link}", "{link}/sub",
    "{root}/./in/", "{root}/x/../in/sub",
])
def test_output_overlapping_the_input_is_refused_before_any_work(tmp_path, output):
    data = tmp_path / "data"
    (data / "in").mkdir(parents=True)
    (data / "in" / "part-0.parquet").write_bytes(b"PAR1 not really")
    (tmp_path / "link").symlink_to(data / "in")
    out = output.format(**{"in": data / "in", "root": data, "link": tmp_path / "link"})
    before = sorted(p.name for p in data.rglob("*"))
    with pytest.raises(OutputConflictError, match="must not write where it reads") as err:
        check_output(_cfg(str(data / "in"), out))
    assert "input.path" in str(err.value)
    assert sorted(p.name for p in data.rglob("*")) == before


@pytest.mark.parametrize("output", ["s3://{b}/in", "s3://{b}/in/", "s3a://{b}/in/out",
                                    "s3://{b}"])
def test_output_overlapping_the_input_is_refused_on_s3(bucket, output):
    with pytest.raises(OutputConflictError, match="must not write where it reads"):
        check_output(_cfg(f"s3://{bucket}/in", output.format(b=bucket)))


def test_sibling_with_a_common_prefix_is_not_an_overlap(bucket, s3fs_fs):
    s3fs_fs.pipe(f"{bucket}/in-old/notes.txt", b"keep me")
    check_output(_cfg(f"s3://{bucket}/in", f"s3://{bucket}/in-old-out"))  # does not raise


# -- what is already at the output ------------------------------------------------------------

def test_output_that_is_a_file_is_refused_saying_so(tmp_path, bucket, s3fs_fs):
    (tmp_path / "out.parquet").write_bytes(b"x")
    for out in (str(tmp_path / "out.parquet"), str(tmp_path / "out.parquet" / "sub")):
        with pytest.raises(OutputConflictError, match="existing file, not a folder"):
            check_output(_cfg(str(tmp_path / "in"), out))
    s3fs_fs.pipe(f"{bucket}/out", b"x")
    with pytest.raises(OutputConflictError, match="existing file, not a folder"):
        check_output(_cfg(f"s3://{bucket}/in", f"s3://{bucket}/out"))
    # Not a regular file either: these were a storage outage 'after 5 retries' (exit 6).
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for out in ("/dev/null", "/dev/null/sub", str(tmp_path / "fifo"), str(tmp_path / "dangling")):
        with pytest.raises(OutputConflictError, match="existing file, not a folder"):
            check_output(_cfg(str(tmp_path / "in"), out))


def test_object_store_files_are_named_with_their_scheme(s3_endpoint, bucket, s3fs_fs, tmp_path):
    """fsspec lists an S3 file as ``bucket/key``: messages and the manifest named input files so,
    which is no URL a user can paste. They are now spelt like input.path: with its scheme, and
    plain under a plain local path."""
    import pandas as pd

    from recluster.errors import InputDataError
    from recluster.storage.inputs import list_parquet_files, plan_pieces, read_footers

    s3fs_fs.pipe(f"{bucket}/named/part-0.parquet", pd.DataFrame({"id": [1, 2]}).to_parquet())
    for scheme in ("s3", "s3a"):
        loc = Location.of(f"{scheme}://{bucket}/named")
        infos = read_footers(loc, list_parquet_files(loc))
        assert [i.path for i in infos] == [f"{bucket}/named/part-0.parquet"]  # what opens it
        assert [i.url for i in infos] == [f"{scheme}://{bucket}/named/part-0.parquet"]
        assert [p.url for p in plan_pieces(infos, 100)] == [i.url for i in infos]
    s3fs_fs.pipe(f"{bucket}/named/part-1.parquet", b"not parquet")
    loc = Location.of(f"s3://{bucket}/named")
    with pytest.raises(InputDataError, match=f"cannot read Parquet file s3://{bucket}/named/part-1"):
        read_footers(loc, list_parquet_files(loc))
    pd.DataFrame({"id": [1]}).to_parquet(tmp_path / "part-0.parquet")
    for url, shown in ((str(tmp_path), str(tmp_path / "part-0.parquet")),
                       (f"file://{tmp_path}", f"file://{tmp_path}/part-0.parquet")):
        local = Location.of(url)
        assert [i.url for i in read_footers(local, list_parquet_files(local))] == [shown]


def test_s3_console_folder_markers_are_folders_not_files(s3_endpoint, bucket, s3fs_fs):
    """An S3 console's "Create folder" leaves an empty object ``key/``: the output folder was
    refused as holding a foreign file named '' (and ``sub/``), and an input folder made so
    failed with "cannot read Parquet file <bucket>/in/"."""
    import boto3
    import pandas as pd

    from recluster.storage.inputs import list_parquet_files
    from recluster.storage.models import PublishedFiles
    from recluster.storage.outputs import DIGESTS

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for key in ("out/", "out/sub/", "in/", "in/country=SE/", "run/models/", "run/models/root/"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"")
    s3fs_fs.pipe(f"{bucket}/in/part-0.parquet", pd.DataFrame({"id": [1]}).to_parquet())
    check_output(_cfg(f"s3://{bucket}/in", f"s3://{bucket}/out"))  # does not raise
    assert list_parquet_files(Location.of(f"s3://{bucket}/in")) == [f"{bucket}/in/part-0.parquet"]
    index = b'{"nodes": []}'
    s3fs_fs.pipe(f"{bucket}/run/models/index.json", index)
    s3fs_fs.pipe(f"{bucket}/run/{MANIFEST}", json.dumps(
        {DIGESTS: {"models/index.json": hashlib.sha256(index).hexdigest()}}).encode())
    s3fs_fs.invalidate_cache()
    published = PublishedFiles(OutputStore(Location.of(f"s3://{bucket}/run")))
    assert published.read_all("models/") == {"models/index.json": index}


def test_exit_code_and_message_name_the_folder_and_foreign_entries(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    for name in ("a.csv", "b.txt", "sub/c.parquet", "sub/d", "e", "f", "g"):
        (out / name).write_text(name)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"input": {"path": str(tmp_path / "in"), "id_column": "id"},
                                   "output": {"path": str(out)}}))
    assert run_cli("validate", cfg) == 4
    err = capsys.readouterr().err
    assert str(out) in err and "7 file(s)" in err
    assert "(a.csv, b.txt, e, f, g and 2 more)" in err
    assert sorted(p.name for p in out.rglob("*")) == ["a.csv", "b.txt", "c.parquet", "d", "e",
                                                      "f", "g", "sub"]


def _stage_and_publish(loc: Location, files: dict[str, bytes], fp: str, overwrite: bool = True,
                       lease_s: float = 30.0) -> dict:
    with claim(loc, lease_s, "run") as store:
        decision = store.prepare(fp, overwrite, "set output.overwrite: true")
        if decision.action != "new":
            return decision.previous
        for rel, data in files.items():
            store.write_staged(rel, data)
        return store.publish({"fingerprint": fp, "outputs": sorted(files)}, decision.previous)


def _put(fs, path: str, data: bytes) -> None:
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, data)


def _tree(fs, root: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    return {p[len(root) + 1:]: fs.cat_file(p) for p in fs.find(root)}


@pytest.fixture(params=["local", "s3"])
def place(request, tmp_path):
    """(output Location, fs, root) on a local folder or on the moto S3 server."""
    if request.param == "local":
        loc = Location.of(str(tmp_path / "out"))
    else:
        bucket = request.getfixturevalue("bucket")
        loc = Location.of(f"s3://{bucket}/out")
    fs, root = loc.fs()
    return loc, fs, root


def test_manifest_lists_every_published_file_with_its_size(place):
    loc, fs, root = place
    files = {"labels/part-00000.parquet": b"a" * 10, "labels/part-00001.parquet": b"b" * 7,
             "tree.json": b"{}", "models/root/preprocess.json": b"{}"}
    manifest = _stage_and_publish(loc, files, "fp1")
    assert manifest["recluster_manifest"] == 2 and manifest["run_id"]
    assert {f["path"]: f["size"] for f in manifest["files"]} == {k: len(v) for k, v in files.items()}
    tree = _tree(fs, root)
    assert set(tree) == set(files) | {MANIFEST, SUCCESS}, "no staging, lock or record left"
    assert json.loads(tree[MANIFEST]) == manifest


def test_an_output_bucket_that_does_not_exist_is_named(bucket):
    """``output.path`` in a bucket that does not exist failed as "stage 'plan' failed:
    FileNotFoundError: The specified bucket does not exist" (exit 5), naming nothing."""
    loc = Location.of(f"s3://{bucket}-missing/out/")
    with pytest.raises(OutputConflictError, match=rf"output path s3://{bucket}-missing/out/ "
                                                  r"cannot be written: .*bucket"):
        _stage_and_publish(loc, {"tree.json": b"x"}, "fp")


def test_overwrite_removes_only_the_listed_files_once_the_new_run_is_staged(place):
    loc, fs, root = place
    _stage_and_publish(loc, {f"labels/part-{i:05d}.parquet": b"old" for i in range(3)}
                       | {"tree.json": b"old"}, "fp1")
    # A file that appears while no run is writing is foreign: the next run is refused ...
    _put(fs, f"{root}/labels/mine.txt", b"user file")
    with pytest.raises(OutputConflictError, match="labels/mine.txt"):
        _stage_and_publish(loc, {"tree.json": b"new"}, "fp2")
    fs.rm(f"{root}/labels/mine.txt")
    # ... a different run without overwrite is refused and changes nothing ...
    before = _tree(fs, root)
    with pytest.raises(OutputConflictError, match="output.overwrite: true"):
        _stage_and_publish(loc, {"tree.json": b"new"}, "fp2", overwrite=False)
    assert _tree(fs, root) == before
    # ... and a failure after staging leaves the previous run as it was.
    with pytest.raises(RuntimeError, match="boom"), claim(loc, 30, "run") as store:
        decision = store.prepare("fp2", True, "")
        assert decision.previous["fingerprint"] == "fp1"
        store.write_staged("tree.json", b"new")
        raise RuntimeError("boom")
    assert _tree(fs, root) == before
    manifest = _stage_and_publish(loc, {"labels/part-00000.parquet": b"new", "tree.json": b"n"},
                                  "fp2")
    tree = _tree(fs, root)
    assert set(tree) == {"labels/part-00000.parquet", "tree.json", MANIFEST, SUCCESS}
    assert tree["labels/part-00000.parquet"] == b"new" and manifest["fingerprint"] == "fp2"


def test_manifest_without_success_is_repaired_or_redone(place):
    loc, fs, root = place
    files = {"labels/part-00000.parquet": b"x" * 50, "tree.json": b"{}"}
    first = _stage_and_publish(loc, files, "fp1")
    fs.rm_file(f"{root}/{SUCCESS}")  # a crash between the manifest and _SUCCESS
    with claim(loc, 30, "run") as store:
        decision = store.prepare("fp1", False, "")
    assert decision.action == "repaired" and decision.previous["run_id"] == first["run_id"]
    assert fs.exists(f"{root}/{SUCCESS}")
    # A listed file that lost bytes: not repairable, the run is done again (no overwrite needed)
    fs.rm_file(f"{root}/{SUCCESS}")
    _put(fs, f"{root}/labels/part-00000.parquet", b"x" * 3)
    with claim(loc, 30, "run") as store:
        decision = store.prepare("fp1", False, "")
        assert decision.action == "new" and decision.previous["run_id"] == first["run_id"]
        assert "has 3 bytes" in store.verify(decision.previous)[0]
    second = _stage_and_publish(loc, files, "fp1", overwrite=False)
    assert second["run_id"] != first["run_id"]
    assert _tree(fs, root)["labels/part-00000.parquet"] == b"x" * 50 and fs.exists(
        f"{root}/{SUCCESS}")


def test_a_published_run_is_reused_only_if_its_files_are_intact(place):
    """Same config and input, ``_SUCCESS`` there: "nothing to do" used to be said without a
    look at the files, so a deleted labels part stayed missing for good (rows lost, exit 0)."""
    from recluster.storage.outputs import DIGESTS, OutputStore, sha256_hex

    loc, fs, root = place
    files = {"labels/part-00000.parquet": b"x" * 50, "labels/part-00001.parquet": b"y" * 40,
             "tree.json": b'{"a": 1}'}

    def publish(previous):
        with claim(loc, 30, "run") as store:
            for rel, data in files.items():
                store.write_staged(rel, data)
            return store.publish({"fingerprint": "fp1", DIGESTS: {"tree.json": sha256_hex(
                files["tree.json"])}}, previous)

    first = publish(None)
    with claim(loc, 30, "run") as store:
        assert store.prepare("fp1", False, "").action == "reuse"
    for damage, problem in (("labels/part-00001.parquet", "is missing"),
                            ("tree.json", "SHA-256")):  # same size, other bytes
        if damage.startswith("labels/"):
            fs.rm_file(f"{root}/{damage}")
        else:
            _put(fs, f"{root}/{damage}", b'{"a": 2}')
        with claim(loc, 30, "run") as store:
            decision = store.prepare("fp1", False, "")  # no overwrite needed: the same run
        assert decision.action == "new" and decision.previous["run_id"] == first["run_id"]
        assert damage in decision.problems[0] and problem in decision.problems[0]
        first = publish(decision.previous)
        assert OutputStore(loc).verify(first) == []
        assert fs.cat_file(f"{root}/{damage}") == files[damage]


def test_an_output_inside_another_runs_folder_is_refused(place):
    """A run into ``<run>/sub`` (while that run was being written, or after) published inside
    it: the outer run's folder then held files it did not write, and its next run was refused
    for good. Refused before any work now, naming the enclosing run; siblings are fine."""
    loc, fs, root = place
    inner = Location.of(f"{loc.url}/labels/more")
    with claim(loc, 30, "run"):  # being written: only its working area is there
        with pytest.raises(OutputConflictError, match=f"lies inside {loc.url}, the folder of"):
            OutputStore(inner).preflight()
    _stage_and_publish(loc, {"labels/part-00000.parquet": b"x"}, "fp")
    before = _tree(fs, root)
    for url in (f"{loc.url}/sub", f"{loc.url}/labels/more"):
        with pytest.raises(OutputConflictError, match="the folder of another recluster run"):
            _stage_and_publish(Location.of(url), {"tree.json": b"y"}, "fp2")
    assert _tree(fs, root) == before
    _stage_and_publish(Location.of(f"{loc.url}-sibling/x"), {"tree.json": b"y"}, "fp2")


def test_an_output_reached_through_a_symlink_into_another_run_is_refused(tmp_path):
    """``out/link -> run/models``: an output at ``out/link/x`` is ``run/models/x`` on disk. The
    literal path's parents hold no run, and a whole run was published inside the other one
    (whose next score then refused its 58 unlisted files). Its parents with the links resolved
    are looked at too; a link to a folder that holds no run is fine."""
    run = Location.of(str(tmp_path / "run"))
    _stage_and_publish(run, {"labels/part-00000.parquet": b"x", "models/index.json": b"{}"}, "fp")
    fs, _ = run.fs()
    before = _tree(fs, str(tmp_path / "run"))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "run" / "models")
    (tmp_path / "fine").symlink_to(tmp_path / "elsewhere")
    for url in (str(tmp_path / "link" / "x"), f"file://{tmp_path}/link/x/y"):
        with pytest.raises(OutputConflictError, match=f"lies inside (file://)?{tmp_path}/run, "
                                                      "the folder of another recluster run"):
            _stage_and_publish(Location.of(url), {"tree.json": b"y"}, "fp2")
    assert _tree(fs, str(tmp_path / "run")) == before
    _stage_and_publish(Location.of(str(tmp_path / "fine" / "x")), {"tree.json": b"y"}, "fp2")
    assert (tmp_path / "elsewhere" / "x" / "tree.json").read_bytes() == b"y"


def test_a_foreign_file_in_a_dead_runs_staging_area_is_refused_not_deleted(place):
    """A run that died leaves ``_recluster/staging/<its id>/``; the next run removes that area.
    A file a person put in it (notes next to the half-written outputs) went with it. Only what a
    run stages is taken to be its own there: anything else is refused, and nothing removed."""
    loc, fs, root = place
    dead = f"{root}/_recluster/staging/20260101T000000Z-0badc0de"
    _put(fs, f"{dead}/tree.json", b"staged")
    _put(fs, f"{dead}/labels/part-00000.parquet", b"staged")
    for rel in ("user-notes.txt", "labels/my copy.parquet", "models/root/notes.md"):
        _put(fs, f"{dead}/{rel}", b"precious")
        before = _tree(fs, root)
        with pytest.raises(OutputConflictError, match=f"holds 1 file.*{re.escape(rel)}"):
            _stage_and_publish(loc, {"tree.json": b"new"}, "fp")
        assert _tree(fs, root) == before
        fs.rm(f"{dead}/{rel}")
    # what a run stages, deltalake's half-made log entry too (a kill between its write and its
    # link): its own, removed
    _put(fs, f"{dead}/labels/_delta_log/00000000000000000000.json#1", b"staged")
    _stage_and_publish(loc, {"tree.json": b"new"}, "fp")
    assert set(_tree(fs, root)) == {"tree.json", MANIFEST, SUCCESS}


def test_a_publication_that_died_midway_is_owned_and_cleaned(place):
    """Crash after the staged files moved into place, before the manifest: the publishing
    record still proves whose they are; the next run removes them, nothing else."""
    loc, fs, root = place
    _put(fs, f"{root}/_recluster/publishing/20260101T000000Z-0badc0de.json",
            json.dumps({"files": ["labels/part-00000.parquet", "labels/part-00001.parquet"]})
            .encode())
    _put(fs, f"{root}/labels/part-00000.parquet", b"half")
    _put(fs, f"{root}/labels/part-00001.parquet", b"published")
    _put(fs, f"{root}/_recluster/staging/20260101T000000Z-0badc0de/tree.json", b"staged")
    manifest = _stage_and_publish(loc, {"labels/part-00000.parquet": b"new"}, "fp", False)
    assert set(_tree(fs, root)) == {"labels/part-00000.parquet", MANIFEST, SUCCESS}
    assert [f["path"] for f in manifest["files"]] == ["labels/part-00000.parquet"]


def test_version_1_manifests_own_only_what_that_version_wrote(place):
    loc, fs, root = place
    v1 = {"recluster_manifest": 1, "fingerprint": "old", "outputs": [
        "labels/", "tree.json", "models/", "report.html"]}
    owned = ["labels/part-00000.parquet", "labels/part-00001.parquet", "tree.json",
             "models/index.json", "models/root/preprocess.json", "models/0/child-1.ubj",
             "report.html"]
    for rel in owned:
        _put(fs, f"{root}/{rel}", b"v1")
    _put(fs, f"{root}/{MANIFEST}", json.dumps(v1).encode())
    _put(fs, f"{root}/{SUCCESS}", b"")
    with pytest.raises(OutputConflictError, match="older recluster version"):
        _stage_and_publish(loc, {"tree.json": b"v2"}, "new", overwrite=False)
    _put(fs, f"{root}/labels/summary.csv", b"user's")  # not a file v1 wrote under labels/
    with pytest.raises(OutputConflictError, match="labels/summary.csv"):
        _stage_and_publish(loc, {"tree.json": b"v2"}, "new")
    fs.rm(f"{root}/labels/summary.csv")
    _stage_and_publish(loc, {"tree.json": b"v2"}, "new")
    assert set(_tree(fs, root)) == {"tree.json", MANIFEST, SUCCESS}


def test_a_manifest_recluster_did_not_write_is_refused(place):
    loc, fs, root = place
    _put(fs, f"{root}/{MANIFEST}", json.dumps({"files": ["../../etc/passwd"]}).encode())
    with pytest.raises(OutputConflictError, match="not a manifest recluster wrote"):
        _stage_and_publish(loc, {"tree.json": b"x"}, "fp")
    _put(fs, f"{root}/{MANIFEST}", json.dumps({"recluster_manifest": 2, "files": [
        {"path": "../x", "size": 1}]}).encode())
    with pytest.raises(OutputConflictError, match="not a file inside the folder"):
        _stage_and_publish(loc, {"tree.json": b"x"}, "fp")


# -- the lock -----------------------------------------------------------------------------------

def test_conditional_create_is_honoured(place):
    loc, fs, root = place
    create_exclusive(fs, f"{root}/x", b"first")
    with pytest.raises(FileExistsError):
        create_exclusive(fs, f"{root}/x", b"second")
    assert fs.cat_file(f"{root}/x") == b"first"


def _lock(loc, fs, root, run_id, lease_s=30.0):
    return OutputLock(loc, fs, root, run_id, lease_s, "run")


def test_a_live_lock_refuses_and_says_how_to_clear_it(place):
    loc, fs, root = place
    with claim(loc, 30, "run") as store:
        with pytest.raises(OutputLockedError) as err:
            _lock(loc, fs, root, "other").acquire()
        msg = str(err.value)
        assert store.run_id in msg and "_recluster/lock/" in msg and "delete" in msg
        assert "output.lock_lease_s" in msg
        with pytest.raises(OutputLockedError):  # the read-only check before a cluster starts
            store.preflight()
    _lock(loc, fs, root, "after").acquire()  # released on the way out


def test_the_lease_is_renewed_while_the_run_is_alive(place):
    loc, fs, root = place
    holder = _lock(loc, fs, root, "alive", lease_s=2.0)
    holder.acquire()
    holder.start()
    try:
        time.sleep(5.0)  # more than two leases
        with pytest.raises(OutputLockedError):
            _lock(loc, fs, root, "second").acquire()
        holder.check()
    finally:
        holder.release()


def test_stale_lock_is_taken_over_by_exactly_one_of_racing_runs(place):
    loc, fs, root = place
    dead = _lock(loc, fs, root, "dead", lease_s=1.0)
    dead.acquire()  # never renewed: as if killed
    time.sleep(1.2)
    winners, losers = [], []
    barrier = threading.Barrier(6)

    def contend(i):
        lk = _lock(loc, *loc.fs(), f"racer-{i}")
        barrier.wait()
        try:
            lk.acquire()
            winners.append(lk)
        except OutputLockedError:
            losers.append(i)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(winners) == 1 and len(losers) == 5
    with pytest.raises(OutputConflictError, match="lost the output folder's lock"):
        dead.check()  # the dead run, were it only slow, must not publish
    winners[0].check()
    winners[0].release()


def test_staging_of_a_dead_attempt_is_removed_by_the_next_holder(place):
    loc, fs, root = place
    dead = _lock(loc, fs, root, "20260101T000000Z-00000000", lease_s=1.0)
    dead.acquire()
    _put(fs, f"{root}/_recluster/staging/20260101T000000Z-00000000/labels/part-00000.parquet",
            b"left behind")
    time.sleep(1.2)
    _stage_and_publish(loc, {"tree.json": b"x"}, "fp")
    assert set(_tree(fs, root)) == {"tree.json", MANIFEST, SUCCESS}


def test_failed_attempt_leaves_nothing_but_what_was_there(tmp_path):
    loc = Location.of(str(tmp_path / "new" / "out"))
    with pytest.raises(RuntimeError), claim(loc, 30, "run") as store:
        store.write_staged("labels/part-00000.parquet", b"x")
        raise RuntimeError("stage failed")
    assert not (tmp_path / "new" / "out").exists()  # the run created it; it is gone again


def test_a_staged_write_landing_after_the_attempt_ended_removes_itself(place):
    """A worker's task still writing when the run failed (or timed out, or was interrupted)
    writes after the attempt released its lock and cleared its staging area: its file must not
    stay behind. Before, ``_recluster/staging/<run-id>/labels/part-*.parquet`` of a failed run
    on S3 was left after the run exited (one label write failed, the others were in flight)."""
    import pickle

    loc, fs, root = place
    with pytest.raises(RuntimeError, match="stage failed"), claim(loc, 30, "run") as store:
        on_worker = pickle.loads(pickle.dumps(store))  # as Dask ships it to a worker
        on_worker.write_staged("labels/part-00000.parquet", b"in time")
        assert fs.cat_file(store.staged("labels/part-00000.parquet")) == b"in time"
        raise RuntimeError("stage failed")
    with pytest.raises(OutputConflictError, match="no longer holds the output folder's lock"):
        on_worker.write_staged("labels/part-00001.parquet", b"too late")
    assert _tree(fs, root) == {}
    if not loc.url.startswith("s3://"):  # not even an empty folder of the reserved area
        assert not os.path.exists(f"{root}/_recluster")


@pytest.mark.parametrize("record, live", [
    ("[1]", False), ('"x"', False), ("null", False), ('{"acquired_at": "abc"}', False),
    ('{"acquired_at": 1e400}', False), ('{"pid": "x", "acquired_at": 1e30}', True),
    ('{"lease_s": 1e308, "acquired_at": 5}', True)])
def test_a_damaged_lock_record_is_named_or_taken_over_never_a_traceback(place, record, live):
    """Lock records are read back from storage, where anything can be: a damaged or planted
    record gave raw AttributeError / ValueError / OverflowError tracebacks, and a ``null`` one
    made every run retry until 'other runs keep taking it'."""
    loc, fs, root = place
    _put(fs, f"{root}/_recluster/lock/000000000000.json", record.encode())
    if not live:  # a damaged record keeps nothing live: it is taken over
        with claim(loc, 30, "run") as store:
            assert store.generation == 1
        return
    with pytest.raises(OutputLockedError) as err:  # it says "held for ages": named, clearable
        with claim(loc, 30, "run"):
            pass
    assert "_recluster/lock/" in str(err.value) and "delete" in str(err.value)


# -- config input ------------------------------------------------------------------------------

BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
input: {path: /tmp/in, id_column: id, features: *i}
output: {path: /tmp/out}
"""


@pytest.mark.timeout(30)
def test_billion_laughs_is_refused_with_exit_2(tmp_path, capsys):
    cfg = tmp_path / "laughs.yaml"
    cfg.write_text(BILLION_LAUGHS)
    t0 = time.perf_counter()
    assert run_cli("validate", cfg) == 2
    assert time.perf_counter() - t0 < 5
    assert "YAML aliases" in capsys.readouterr().err


def test_a_few_aliases_are_fine_and_oversized_files_are_refused(tmp_path, capsys):
    cfg = tmp_path / "anchors.yaml"
    cfg.write_text("opts: &o {anon: false}\ninput: {path: s3://b/in, id_column: id, "
                   "storage_options: *o}\noutput: {path: s3://b/out, storage_options: *o}\n")
    with pytest.raises(ConfigError, match="opts"):  # parsed fine; the unknown key is named
        from recluster.config import load_config
        load_config(cfg)
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (2 << 20) + "\ninput: {path: /in, id_column: id}\n")
    assert run_cli("validate", big) == 2
    assert "larger than 1024 KiB" in capsys.readouterr().err


@pytest.mark.timeout(30)
def test_deep_nesting_duplicate_keys_and_endless_timeouts_are_config_errors(tmp_path, capsys):
    """Thousands of '[' (a 10 KiB file) were a RecursionError traceback; a key written twice
    silently meant its last value (here: overwrite on); ``.inf`` as run_timeout_s overflowed
    the thread wait with a traceback while the run went on in the background."""
    cases = {
        "deep": ("input: " + "[" * 5000 + "]" * 5000 + "\n", "more than 32 levels deep"),
        "deepmap": ("input: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", "levels deep"),
        "twice": ("input: {path: s3://b/in, id_column: id}\noutput:\n  path: s3://b/out\n"
                  "  overwrite: false\n  overwrite: true\n",
                  "found the key 'overwrite' twice at line 5"),
    }
    for name, (text, expected) in cases.items():
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(text)
        assert run_cli("validate", cfg) == 2, name
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, (name, err[-500:])
    # a merge may override what it brings in: that is not a key written twice
    from recluster.config import safe_yaml
    assert safe_yaml("b: &b {x: 1, y: 2}\nc: {<<: *b, x: 3}\n", "m") == {
        "b": {"x": 1, "y": 2}, "c": {"x": 3, "y": 2}}
    base = {"input": {"path": "s3://b/in", "id_column": "id"}, "output": {"path": "s3://b/o"}}
    for key, value, expected in (("run_timeout_s", float("inf"), "finite number"),
                                 ("run_timeout_s", 1e300, "less than or equal"),
                                 ("storage_timeout_s", float("nan"), "finite number")):
        with pytest.raises(ConfigError, match=f"runtime.{key}: Input should be (a )?{expected}"):
            parse_config({**base, "runtime": {key: value}})


def test_yaml_errors_do_not_echo_the_line(tmp_path, capsys):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("input:\n  path: s3://b/in\n  id_column: [unclosed s3cr3t-VALUE-123\n")
    assert run_cli("validate", cfg) == 2
    err = capsys.readouterr().err
    assert "not valid YAML" in err and "line" in err and "s3cr3t-VALUE-123" not in err


# -- secrets in storage options ------------------------------------------------------------------

@pytest.mark.parametrize("key", [
    "key", "secret", "token", "account_key", "connection_string", "credential", "credentials",
    "sas_token", "sse_customer_key", "client_secret", "password", "aws_access_key_id",
    "private_key", "api_key"])
def test_credential_like_options_are_refused_without_echoing_the_value(tmp_path, capsys, key):
    for nested in (False, True):
        value = "VALUE-must-not-print-7731"
        opts = {"s3_additional_kwargs": {key: value}} if nested else {key: value}
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump({"input": {"path": "s3://b/in", "id_column": "id",
                                                 "storage_options": opts},
                                       "output": {"path": "s3://b/out"}}))
        assert run_cli("validate", cfg) == 2
        err = capsys.readouterr().err
        assert "must not hold credentials" in err and key in err and value not in err


def test_password_in_a_url_is_refused(tmp_path, capsys):
    for section, where in (("output", "path"), ("input", "storage_options")):
        data = {"input": {"path": "s3://b/in", "id_column": "id"},
                "output": {"path": "s3://b/out"}}
        if where == "path":
            data[section]["path"] = "sftp://user:pw-VALUE-55@host/out"
        else:
            data[section]["storage_options"] = {"endpoint_url": "http://u:pw-VALUE-55@minio:9000"}
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump(data))
        assert run_cli("validate", cfg) == 2
        err = capsys.readouterr().err
        assert "pw-VALUE-55" not in err and ("password" in err or "credentials" in err)


SIGNED = "SEEDsig-VALUE-901"


@pytest.mark.parametrize("url", [
    f"http://127.0.0.1:9/b/in/part-0.parquet?AWSAccessKeyId=AKIA1&Signature={SIGNED}&Expires=9",
    f"https://b.s3.amazonaws.com/in.parquet?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential="
    f"AKIA%2F1&X-Amz-Signature={SIGNED}",
    f"https://acct.blob.core.windows.net/c/in.parquet?sv=2022-11-02&sp=r&sig={SIGNED}",
    f"https://{SIGNED}@files.example.com/in.parquet",
    f"https://files.example.com/in.parquet?token={SIGNED}"])
def test_signed_and_token_urls_are_refused_without_echoing_them(tmp_path, capsys, url):
    """A presigned URL read fine as input.path, and its signature and key id were written into
    manifest.json and report.html (and a render-k8s ConfigMap); score's --input likewise."""
    for section in ("input", "output"):
        data = {"input": {"path": "s3://b/in", "id_column": "id"},
                "output": {"path": "s3://b/out"}}
        data[section]["path"] = url
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump(data))
        assert run_cli("validate", cfg) == 2
        err = capsys.readouterr().err
        assert f"{section}.path carries a credential" in err and SIGNED not in err
    data["output"]["path"] = "s3://b/out"
    data["output"]["storage_options"] = {"endpoint_url": url}
    cfg.write_text(yaml.safe_dump(data))
    assert run_cli("validate", cfg) == 2
    err = capsys.readouterr().err
    assert "must not hold credentials (endpoint_url)" in err and SIGNED not in err
    assert run_cli("score", "--model", "s3://b/run", "--input", url, "--output", "s3://b/s") == 2
    err = capsys.readouterr().err
    assert "--input carries a credential" in err and SIGNED not in err


def test_plain_urls_with_a_user_or_a_version_are_still_fine():
    from recluster.config import has_url_credentials

    for url in ("abfs://container@account.dfs.core.windows.net/in", "s3://b/in?versionId=3",
                "https://minio.example.com:9000", "s3://b/in", "/data/in?x=1"):
        assert not has_url_credentials(url), url


def test_option_values_stay_out_of_the_stores_messages(bucket):
    """botocore quotes a refused parameter's value: a non-allowlisted option (redacted in the
    manifest) came back in the error message, as a storage outage 'after 5 retries' (exit 6).
    It is a config error (exit 2) naming the storage_options, the value replaced by ***."""
    from recluster.storage.fs import filesystem

    secret = "seed-metadata-VALUE-77"
    loc = Location.of(f"s3://{bucket}/out", {"s3_additional_kwargs": {"Metadata": secret}})
    with pytest.raises(ConfigError) as err, claim(loc, 30, "run"):
        pass
    msg = str(err.value)
    assert "storage_options" in msg and "Metadata" in msg and secret not in msg and "***" in msg
    loc = Location.of(f"s3://{bucket}/out", {"no_such_option": secret})
    with pytest.raises(ConfigError, match="no_such_option") as err:
        OutputStore(loc).preflight()
    assert secret not in str(err.value)
    for url, reason in (("s4://b/x", "Protocol not known"), ("gs://b/x", "gcsfs")):
        with pytest.raises(ConfigError, match=reason):  # were raw ValueError / ImportError
            filesystem(url)


def test_only_allowlisted_options_are_written_down():
    cfg = parse_config({"input": {"path": "s3://b/in", "id_column": "id", "storage_options": {
        "anon": False, "endpoint_url": "http://minio:9000", "profile": "team-A",
        "config_kwargs": {"connect_timeout": 5, "user_agent_extra": "private-note"},
        "client_kwargs": {"region_name": "eu-west-1", "proxies": {"https": "http://p:1"}}}},
        "output": {"path": "s3://b/out"}})
    shown = cfg.redacted()["input"]["storage_options"]
    assert shown == {"anon": False, "endpoint_url": "http://minio:9000", "profile": "***",
                     "config_kwargs": {"connect_timeout": 5, "user_agent_extra": "***"},
                     "client_kwargs": {"region_name": "eu-west-1", "proxies": {"https": "***"}}}


def test_render_k8s_refuses_options_it_would_have_to_write(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"input": {"path": "s3://b/in", "id_column": "id",
                                             "storage_options": {"profile": "VALUE-k8s-42"}},
                                   "output": {"path": "s3://b/out"}}))
    assert run_cli("render-k8s", cfg, "--image", "r.example/recluster:1.0") == 2
    out = capsys.readouterr()
    assert "input.storage_options.profile" in out.err and "VALUE-k8s-42" not in out.err + out.out


def test_lock_files_hold_nothing_from_the_environment(tmp_path):
    loc = Location.of(str(tmp_path / "out"))
    with claim(loc, 30, "run"):
        texts = [p.read_text() for p in Path(tmp_path / "out").rglob("*") if p.is_file()]
    assert texts and all(set(json.loads(t)) <= {"run_id", "command", "host", "pid", "lease_s",
                                                 "acquired_at", "expires_at"} for t in texts)
    assert all(os.environ.get("AWS_SECRET_ACCESS_KEY", "\0") not in t for t in texts)


def test_an_attempt_released_while_it_publishes_finishes_the_publication(place, monkeypatch):
    """``run`` publishes in its own thread and releases the output's claim in the caller's
    (:func:`recluster.pipeline._within`): a run timing out during the publication released the
    lock and removed the staging area under the files being moved, leaving the previous run
    without ``_SUCCESS`` or its files, a publishing record, and neither run published. The
    release now waits for a publication under way."""
    loc, fs, root = place
    _stage_and_publish(loc, {"labels/part-00000.parquet": b"old", "tree.json": b"{}"}, "fp0")
    moving = threading.Event()
    real = OutputStore._move_into_place

    def slow(self, staging, rels):
        moving.set()
        time.sleep(1.0)  # the caller lets go meanwhile
        return real(self, staging, rels)

    monkeypatch.setattr(OutputStore, "_move_into_place", slow)
    box: dict = {}

    def publish(store, previous):
        try:
            box["manifest"] = store.publish({"fingerprint": "fp1", "outputs": []}, previous)
        except Exception as exc:  # noqa: BLE001 -- reported by the assertion below
            box["error"] = exc

    with claim(loc, 30, "run") as store:
        decision = store.prepare("fp1", True, "set output.overwrite: true")
        store.write_staged("labels/part-00000.parquet", b"new")
        worker = threading.Thread(target=publish, args=(store, decision.previous))
        worker.start()
        assert moving.wait(10)
    worker.join(10)
    assert "error" not in box, box.get("error")
    assert box["manifest"]["fingerprint"] == "fp1"
    tree = _tree(fs, root)
    assert set(tree) == {"labels/part-00000.parquet", MANIFEST, SUCCESS}, sorted(tree)
    assert tree["labels/part-00000.parquet"] == b"new"
    with claim(loc, 30, "run") as again:  # the lock was released
        assert again.lock is not None


@pytest.mark.parametrize("stage", ["report", "publish"])
def test_run_timeout_finishes_a_publication_under_way(stage):
    """The run's time running out during the publication: it is finished and the run succeeds
    (stopped halfway, neither run would be published); in any earlier stage the run stops."""
    from recluster.errors import StageError
    from recluster.pipeline import _within
    from recluster.progress import Timer

    lines: list[str] = []
    timer = Timer(lines.append)

    def body() -> dict:
        with timer.stage(stage):
            time.sleep(0.6)
        return {"published": True}

    if stage == "publish":
        assert _within(0.1, timer, body) == {"published": True}
        assert timer.stopped is None
    else:
        with pytest.raises(StageError, match="stage in progress: 'report'"):
            _within(0.1, timer, body)
