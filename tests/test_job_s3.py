"""End to end through the CLI against a real S3 endpoint (moto on loopback) and a real cluster."""

from __future__ import annotations

import pytest
from helpers import published, read_json, read_labels, run_cli, write_config, write_table
from sklearn.metrics import adjusted_rand_score

from recluster.demo import make_table

pytestmark = pytest.mark.timeout(600)

N = 6000


@pytest.fixture(scope="module")
def nested():
    return make_table(N, seed=3)


@pytest.fixture(scope="module")
def first_run(nested, s3_endpoint, scheduler, tmp_path_factory):
    """One published run of the nested table (4 files on S3), reused by several tests."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("e2e")
    table, _ = nested
    write_table(table, "s3://e2e/input", n_files=4)
    tmp = tmp_path_factory.mktemp("e2e")
    cfg = write_config(tmp, "s3://e2e/input", "s3://e2e/out/run-1")
    code = run_cli("run", cfg, "--scheduler", scheduler)
    return code, cfg, "s3://e2e/out/run-1"


def test_every_row_labelled_once_and_groups_recovered(first_run, nested):
    code, _, out = first_run
    assert code == 0
    table, truth = nested
    labels = read_labels(out)
    assert len(labels) == len(table)
    assert labels["user_id"].is_unique
    assert set(labels["user_id"]) == set(table["user_id"])
    for col in ("cluster", "level_1", "probability", "umap_0", "umap_1", "depth"):
        assert col in labels.columns
    merged = truth.merge(labels, on="user_id")
    assert adjusted_rand_score(merged["group"], merged["level_1"].astype(int)) >= 0.9
    assert labels["probability"].between(0, 1).all()
    assert labels["umap_0"].notna().all()


def test_manifest_records_rows_and_agreement(first_run):
    _, _, out = first_run
    manifest = read_json(out, "manifest.json")
    assert manifest["rows"]["in"] == manifest["rows"]["out"] == N
    assert manifest["assignment"]["method"] == "classifier"
    assert manifest["assignment"]["holdout_ari"]["root"] >= 0.95
    assert published(out)


def test_rerun_same_config_is_idempotent(first_run, scheduler, s3fs_fs):
    code, cfg, out = first_run
    before = read_json(out, "manifest.json")
    assert run_cli("run", cfg, "--scheduler", scheduler) == 0
    assert read_json(out, "manifest.json") == before


def test_different_run_into_published_output_is_refused(first_run, scheduler, capsys):
    _, cfg, out = first_run
    assert run_cli("run", cfg, "--scheduler", scheduler, "--set", "seed=5") != 0
    assert "already holds a different published run" in capsys.readouterr().err


def test_partitioning_does_not_change_labels(nested, scheduler, tmp_path, s3fs_fs, bucket):
    table, _ = nested
    write_table(table, f"s3://{bucket}/in-a", n_files=2, row_group_rows=1_000)
    write_table(table.sample(frac=1.0, random_state=7), f"s3://{bucket}/in-b", n_files=5,
                row_group_rows=700)
    runs = {}
    for name in ("a", "b"):
        cfg = write_config(tmp_path, f"s3://{bucket}/in-{name}", f"s3://{bucket}/out-{name}",
                           input={"rows_per_partition": 1000})
        assert run_cli("run", cfg, "--scheduler", scheduler) == 0
        runs[name] = read_labels(f"s3://{bucket}/out-{name}").sort_values("user_id").reset_index(drop=True)
    a, b = runs["a"], runs["b"]
    assert a["cluster"].tolist() == b["cluster"].tolist()
    assert a["level_1"].equals(b["level_1"])
    assert (a["probability"] - b["probability"]).abs().max() < 1e-9
    assert (a["umap_0"] - b["umap_0"]).abs().max() < 1e-5
    assert read_json(f"s3://{bucket}/out-a", "tree.json") == read_json(f"s3://{bucket}/out-b", "tree.json")
