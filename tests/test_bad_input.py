"""Bad input: a clear error naming the column or file, a non-zero exit, nothing published."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import published, run_cli, write_config, write_table

from recluster.demo import make_table

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def table():
    return make_table(1500, seed=11)[0]


def _run(tmp_path, bucket, scheduler, capsys, **sections):
    out = f"s3://{bucket}/out"
    cfg = write_config(tmp_path, f"s3://{bucket}/in", out, **sections)
    code = run_cli("run", cfg, "--scheduler", scheduler)
    err = capsys.readouterr().err
    assert code != 0
    assert not published(out)
    return err


def test_missing_id_column(table, tmp_path, bucket, scheduler, capsys):
    write_table(table.drop(columns="user_id").assign(uid=table["user_id"]), f"s3://{bucket}/in", 2)
    err = _run(tmp_path, bucket, scheduler, capsys)
    assert "id column 'user_id' is missing from" in err and "part-000.parquet" in err


def test_duplicate_ids(table, tmp_path, bucket, scheduler, capsys):
    dup = table.copy()
    dup.loc[dup.index[-1], "user_id"] = dup["user_id"].iloc[0]
    write_table(dup, f"s3://{bucket}/in", 3)
    err = _run(tmp_path, bucket, scheduler, capsys)
    assert "'user_id' has duplicate values" in err


def test_non_numeric_feature_not_declared(table, tmp_path, bucket, scheduler, capsys):
    write_table(table.assign(plan=np.where(table["f0"] > 0, "gold", "free")), f"s3://{bucket}/in", 2)
    err = _run(tmp_path, bucket, scheduler, capsys)
    assert "feature column 'plan'" in err and "input.categorical" in err


def test_type_differs_between_files(table, tmp_path, bucket, scheduler, capsys, s3fs_fs):
    half = len(table) // 2
    write_table(table.iloc[:half], f"s3://{bucket}/in/a", 1)
    write_table(table.iloc[half:].assign(sessions=table["sessions"].iloc[half:].astype(str)),
                f"s3://{bucket}/in/b", 1)
    err = _run(tmp_path, bucket, scheduler, capsys)
    assert "column 'sessions' has type" in err and "/in/a/" in err and "/in/b/" in err


def test_infinite_values(table, tmp_path, bucket, scheduler, capsys):
    bad = table.copy()
    bad.loc[bad.index[700], "spend"] = np.inf
    write_table(bad, f"s3://{bucket}/in", 3)
    err = _run(tmp_path, bucket, scheduler, capsys)
    assert "column 'spend' has 1 infinite values in" in err and ".parquet" in err


def test_too_few_rows(table, tmp_path, bucket, scheduler, capsys):
    write_table(table.iloc[:10], f"s3://{bucket}/in", 1)
    err = _run(tmp_path, bucket, scheduler, capsys)
    assert "input has 10 rows" in err and "n_neighbors" in err


def test_missing_feature_and_config_errors(table, tmp_path, bucket, scheduler, capsys):
    write_table(table, f"s3://{bucket}/in", 1)
    err = _run(tmp_path, bucket, scheduler, capsys, input={"features": ["f0", "nope"],
                                                               "categorical": []})
    assert "feature column 'nope' is missing from" in err
    err = _run(tmp_path, bucket, scheduler, capsys, sample={"sise": 100})
    assert "sample.sise" in err
    err = _run(tmp_path, bucket, scheduler, capsys, input={"storage_options": {"secret": "x"}})
    assert "AWS_SECRET_ACCESS_KEY" in err


def test_validate_command_reports_schema_without_running(table, tmp_path, bucket, capsys):
    write_table(table, f"s3://{bucket}/in", 2)
    cfg = write_config(tmp_path, f"s3://{bucket}/in", f"s3://{bucket}/out")
    assert run_cli("validate", cfg) == 0
    out = capsys.readouterr().out
    assert "1500 rows" in out and "categorical ['country']" in out
    assert not published(f"s3://{bucket}/out")
    write_table(table.assign(plan="x"), f"s3://{bucket}/in", 2)
    assert run_cli("validate", cfg) != 0
    assert "feature column 'plan'" in capsys.readouterr().err
