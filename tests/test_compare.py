"""``recluster compare`` and ``run --previous`` (issue 20): two runs over time.

A generator plants every kind of change between two periods of the same customers (one segment
stays, one splits in two, two merge, one vanishes with its rows, one appears with new rows), each
run through the CLI on the shared LocalCluster with the outputs on moto's S3 server; the kinds
``compare`` reports, the stable paths ``--previous`` gives, and that ``score`` routes rows to the
same renamed paths are checked. A real table (ggplot2 diamonds, two overlapping samples) checks
the row accounting and that a run compared with itself is ``same`` everywhere.
"""

from __future__ import annotations

import io
import json

import fsspec
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers import read_json, read_labels, run_cli, write_config, write_table
from tables import diamonds

from recluster.compute import compare
from recluster.compute.paths import NodePath

pytestmark = pytest.mark.timeout(300)

CENTRES = {"A": (10, 0, 0, 0), "B": (0, 10, 0, 0), "C": (0, 0, 10, 0), "D": (0, 0, 0, 10),
           "E": (-10, 0, 0, 0), "B1": (0, 10, -10, 0), "B2": (0, 10, 0, -10),
           "CD": (0, 0, 10, 10), "F": (0, -10, 0, 0)}


def _rows(ids: list[str], centre: str, rng) -> pd.DataFrame:
    x = np.asarray(CENTRES[centre], dtype=float) + rng.normal(0, 1.0, (len(ids), 4))
    return pd.DataFrame({"user_id": ids, **{f"f{i}": x[:, i] for i in range(4)}})


def planted_periods(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, list[str]]]:
    """Two periods of one population. Old: A, B, C, D, E. New: A where it was, B's rows split
    between B1 and B2, C's and D's rows merged at CD, E's rows gone, new rows F."""
    rng = np.random.default_rng(seed)
    ids = {g: [f"{g.lower()}-{i}" for i in range(n)]
           for g, n in {"A": 300, "B": 400, "C": 250, "D": 250, "E": 300, "F": 300}.items()}
    old = pd.concat([_rows(ids[g], g, rng) for g in "ABCDE"], ignore_index=True)
    new = pd.concat([_rows(ids["A"], "A", rng), _rows(ids["B"][:200], "B1", rng),
                     _rows(ids["B"][200:], "B2", rng), _rows(ids["C"] + ids["D"], "CD", rng),
                     _rows(ids["F"], "F", rng)], ignore_index=True)
    return old.sample(frac=1, random_state=1), new.sample(frac=1, random_state=2), ids


SECTIONS = dict(input={"id_column": "user_id", "categorical": []},
                sample={"size": 4000}, recursion={"max_depth": 1, "min_node_rows": 50},
                clustering={"min_cluster_fraction": 0.05}, stability={"resamples": 0},
                explain={"enabled": False})


def _run(tmp_path, table: pd.DataFrame, inp: str, out: str, scheduler: str, *args: str) -> None:
    write_table(table, inp, n_files=2)
    cfg = write_config(tmp_path, inp, out, **SECTIONS)
    assert run_cli("run", cfg, "--scheduler", scheduler, "--quiet", *args) == 0


def _read_parquet(url: str) -> pd.DataFrame:
    fs, root = fsspec.core.url_to_fs(url)
    if fs.isfile(root):
        with fs.open(root, "rb") as f:
            return pq.read_table(io.BytesIO(f.read())).to_pandas()
    parts = []
    for path in sorted(fs.glob(f"{root}/*.parquet")):
        with fs.open(path, "rb") as f:
            parts.append(pq.read_table(io.BytesIO(f.read())).to_pandas())
    return pd.concat(parts, ignore_index=True)


def _segment_of(labels: pd.DataFrame, ids: list[str]) -> str:
    """The segment most of ``ids`` are in."""
    return labels.set_index("user_id").loc[ids, "cluster"].mode().iat[0]


@pytest.fixture(scope="module")
def planted(tmp_path_factory, s3fs_fs, scheduler):
    """The two planted periods, run once each (old, new, and new with --previous old)."""
    tmp = tmp_path_factory.mktemp("planted")
    bucket = "compare-planted"
    s3fs_fs.mkdir(bucket)
    old, new, ids = planted_periods()
    urls = {k: f"s3://{bucket}/{k}" for k in ("old", "new", "stable")}
    _run(tmp, old, f"s3://{bucket}/in-old", urls["old"], scheduler)
    _run(tmp, new, f"s3://{bucket}/in-new", urls["new"], scheduler)
    _run(tmp, new, f"s3://{bucket}/in-new-2", urls["stable"], scheduler,
         "--previous", urls["old"])
    return {**urls, "bucket": bucket, "ids": ids, "tmp": tmp, "new_table": new}


def test_compare_finds_planted_split_merge_new_and_gone(planted, scheduler, capsys):
    capsys.readouterr()
    out = f"s3://{planted['bucket']}/cmp"
    code = run_cli("compare", planted["old"], planted["new"], "--output", out,
                   "--scheduler", scheduler)
    printed = capsys.readouterr().out
    assert code == 0
    ids = planted["ids"]
    old_l, new_l = read_labels(planted["old"]), read_labels(planted["new"])
    seg = {g: _segment_of(old_l, ids[g]) for g in "ABCDE"}
    seg |= {"A'": _segment_of(new_l, ids["A"]), "B1": _segment_of(new_l, ids["B"][:200]),
            "B2": _segment_of(new_l, ids["B"][200:]), "CD": _segment_of(new_l, ids["C"]),
            "F": _segment_of(new_l, ids["F"])}
    assert len({seg[g] for g in "ABCDE"}) == 5 and len({seg[g] for g in
                                                         ("A'", "B1", "B2", "CD", "F")}) == 5
    m = _read_parquet(f"{out}/matches.parquet")
    leaf = m[m["level"] == "leaf"]

    def kind(o, n):
        hit = leaf[(leaf["old_path"].fillna("-") == (o or "-"))
                   & (leaf["new_path"].fillna("-") == (n or "-"))]
        assert len(hit) == 1, (o, n, leaf)
        return hit.iloc[0]

    assert kind(seg["A"], seg["A'"])["kind"] == "same"
    assert kind(seg["A"], seg["A'"])["jaccard"] >= 0.95
    assert kind(seg["B"], seg["B1"])["kind"] == "split"
    assert kind(seg["B"], seg["B2"])["kind"] == "split"
    assert kind(seg["C"], seg["CD"])["kind"] == "merged"
    assert kind(seg["D"], seg["CD"])["kind"] == "merged"
    gone = kind(seg["E"], None)
    assert gone["kind"] == "gone" and gone["shared_rows"] == 300 and gone["old_rows"] == 300
    new = kind(None, seg["F"])
    assert new["kind"] == "new" and new["shared_rows"] == 300 and new["new_rows"] == 300
    # Level 1 is the leaf level of a one-level run: the same flows.
    lv1 = m[m["level"] == "level_1"].drop(columns="level").reset_index(drop=True)
    pd.testing.assert_frame_equal(lv1, leaf.drop(columns="level").reset_index(drop=True))
    moves = _read_parquet(f"{out}/moves.parquet")
    assert moves["id"].is_unique
    assert moves["new_path"].isna().sum() == 300 and moves["old_path"].isna().sum() == 300
    joined = old_l.merge(new_l, on="user_id", how="outer", suffixes=("_old", "_new"))
    changed = joined[joined["cluster_old"].fillna("-") != joined["cluster_new"].fillna("-")]
    assert set(moves["id"]) == set(changed["user_id"])
    manifest = read_json(out, "manifest.json")
    assert manifest["rows"] == {"both": 1200, "only_old": 300, "only_new": 300,
                                "moves": len(moves)}
    assert {f["path"] for f in manifest["files"]} >= {"matches.parquet", "compare.html"}
    assert manifest["summary"]["leaf"]["split"] == 1 and manifest["summary"]["leaf"]["gone"] == 1
    leaf_line = next(line for line in printed.splitlines() if line.strip().startswith("leaf:"))
    assert "1 split" in leaf_line and "1 gone" in leaf_line and "1 new" in leaf_line
    fs, root = fsspec.core.url_to_fs(out)
    page = fs.cat_file(f"{root}/compare.html").decode()
    assert "<svg" in page and "Content-Security-Policy" in page and "nan" not in page
    assert page.count("<svg") == 2  # one flow diagram per level (leaf, level 1)
    assert "(not in NEW) (300)" in page and "(not in OLD) (300)" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") \
        and "https://" not in page and "<script" not in page
    # The same comparison again is a no-op; a different one needs --overwrite (exit 4).
    assert run_cli("compare", planted["old"], planted["new"], "--output", out,
                   "--scheduler", scheduler) == 0
    assert run_cli("compare", planted["old"], planted["old"], "--output", out,
                   "--scheduler", scheduler) == 4
    assert run_cli("compare", planted["old"], planted["old"], "--output", out,
                   "--scheduler", scheduler, "--overwrite") == 0
    again = _read_parquet(f"{out}/matches.parquet")
    assert set(again["kind"]) == {"same"}


def test_previous_reuses_old_paths_and_score_follows(planted, scheduler, tmp_path, capsys):
    ids = planted["ids"]
    old_l, st_l = read_labels(planted["old"]), read_labels(planted["stable"])
    old_tree = {n["path"] for n in read_json(planted["old"], "tree.json")}
    a, b, c, d = (_segment_of(old_l, ids[g]) for g in "ABCD")
    assert _segment_of(st_l, ids["A"]) == a  # same segment, same path
    b1, b2 = _segment_of(st_l, ids["B"][:200]), _segment_of(st_l, ids["B"][200:])
    assert b1 != b2 and b in (b1, b2)  # one half of the split keeps the old path
    fresh_b = ({b1, b2} - {b}).pop()
    assert fresh_b not in old_tree  # the other half of the split gets a fresh path
    assert _segment_of(st_l, ids["C"]) in (c, d)  # a merge keeps one of its paths
    f = _segment_of(st_l, ids["F"])
    assert f not in old_tree and f != fresh_b
    manifest = read_json(planted["stable"], "manifest.json")
    assert manifest["previous"]["path"] == planted["old"]
    assert set(manifest["previous"]["fresh"]) == {fresh_b, f}
    # Every output uses the final paths: tree.json, models/, and labels agree with each other.
    tree = {n["path"]: n for n in read_json(planted["stable"], "tree.json")}
    assert set(st_l["cluster"]) <= set(tree)
    assert sorted(tree["root"]["children"]) == sorted(set(st_l["cluster"]) - {"root"})
    assert (st_l["level_1"].astype("Int64") == st_l["cluster"].map(
        lambda p: -1 if p == "root" else NodePath.parse(p).index)).all()
    index = read_json(planted["stable"], "models/index.json")
    assert index["nodes"][0]["children"] == tree["root"]["children"]
    # score routes the new period's rows with the renamed models to the very same paths.
    scored = f"s3://{planted['bucket']}/scored"
    capsys.readouterr()
    assert run_cli("score", "--model", planted["stable"], "--input",
                   f"s3://{planted['bucket']}/in-new-2", "--output", scored,
                   "--scheduler", scheduler) == 0
    s = read_labels(scored).set_index("user_id").loc[st_l["user_id"]]
    assert (s["cluster"].to_numpy() == st_l["cluster"].to_numpy()).all()
    assert (s["level_1"].to_numpy() == st_l["level_1"].to_numpy()).all()


def test_compare_refuses_ids_of_another_type(planted, scheduler, tmp_path, capsys):
    table = planted["new_table"].copy()
    table["user_id"] = np.arange(len(table))
    inp, out = f"s3://{planted['bucket']}/in-int", f"s3://{planted['bucket']}/run-int"
    _run(tmp_path, table, inp, out, scheduler)
    capsys.readouterr()
    code = run_cli("compare", planted["old"], out, "--output",
                   f"s3://{planted['bucket']}/cmp-int", "--scheduler", scheduler)
    err = capsys.readouterr().err
    assert code == 3 and "string ids" in err and "integer ids" in err


def test_compare_refuses_foreign_files_and_unpublished_runs(planted, scheduler, tmp_path, capsys):
    fs = fsspec.filesystem("s3")
    out = f"{planted['bucket']}/cmp-foreign"
    fs.pipe_file(f"{out}/notes.txt", b"mine")
    assert run_cli("compare", planted["old"], planted["new"], "--output", f"s3://{out}",
                   "--scheduler", scheduler) == 4
    assert fs.cat_file(f"{out}/notes.txt") == b"mine"
    assert run_cli("compare", planted["old"], f"s3://{planted['bucket']}/in-old", "--output",
                   f"s3://{planted['bucket']}/cmp-x", "--scheduler", scheduler) == 3
    assert "not a published recluster run" in capsys.readouterr().err
    # inside a run's own folder: refused before any work
    assert run_cli("compare", planted["old"], planted["new"], "--output",
                   f"{planted['new']}/cmp", "--scheduler", scheduler) == 4


def test_compare_real_table_with_itself_and_overlapping_periods(tmp_path, scheduler, capsys):
    """ggplot2 diamonds: an earlier and a later sample sharing 800 stones (rows 0-1599 and
    800-2399 of one shuffle); local folders."""
    t = diamonds(2400).drop(columns=["cut", "color", "clarity"])
    early, late = t.iloc[:1600], t.iloc[800:]
    sections = dict(SECTIONS, input={"id_column": "stone", "categorical": []},
                    recursion={"max_depth": 2, "min_node_rows": 300})
    runs = {}
    for name, table in (("early", early), ("late", late)):
        inp, out = str(tmp_path / f"in-{name}"), str(tmp_path / f"run-{name}")
        write_table(table, inp, n_files=3)
        cfg = write_config(tmp_path, inp, out, **sections)
        assert run_cli("run", cfg, "--scheduler", scheduler, "--quiet") == 0
        runs[name] = out
    out = str(tmp_path / "self")
    capsys.readouterr()
    assert run_cli("compare", runs["early"], runs["early"], "--output", out,
                   "--scheduler", scheduler) == 0
    assert "0 split, 0 merged, 0 gone, 0 moved; new: 0 new" in capsys.readouterr().out
    m = pd.read_parquet(f"{out}/matches.parquet")
    labels = read_labels(runs["early"])
    assert set(m["kind"]) == {"same"} and (m["jaccard"] == 1.0).all()
    assert set(m.loc[m["level"] == "leaf", "old_path"]) == set(labels["cluster"])
    assert len(pd.read_parquet(f"{out}/moves.parquet")) == 0
    out = str(tmp_path / "periods")
    assert run_cli("compare", runs["early"], runs["late"], "--output", out,
                   "--scheduler", scheduler) == 0
    manifest = json.loads((tmp_path / "periods" / "manifest.json").read_text())
    assert manifest["rows"]["both"] == 800
    assert manifest["rows"]["only_old"] == 800 and manifest["rows"]["only_new"] == 800
    m = pd.read_parquet(f"{out}/matches.parquet")
    for level, g in m.groupby("level"):
        assert g["shared_rows"].sum() == 2400, level  # every row of either run, once per level
        assert set(g["kind"]) <= set(compare.KINDS)
    # Half the stones are shared; their first-level segments mostly agree (a floor, not a value).
    lv1 = m[(m["level"] == "level_1") & m["old_path"].notna() & m["new_path"].notna()]
    best = lv1.groupby("old_path")["shared_rows"].max().sum() / lv1["shared_rows"].sum()
    assert best >= 0.7
    print(manifest["summary"], f"level-1 best-match share {best:.3f}")


def _copy_run(fs, src: str, dst: str) -> None:
    """A byte-for-byte copy of a published run (s3 keys without the scheme)."""
    for path in fs.find(src):
        fs.pipe_file(dst + path[len(src):], fs.cat_file(path))


def _tamper_labels(fs, run: str, change) -> str:
    """Rewrite the first label file of ``run`` with ``change(frame)`` and record its new size in
    the manifest (as a hand-edited or foreign "run" would look); returns the file's path."""
    label = sorted(fs.glob(f"{run}/labels/*.parquet"))[0]
    t = change(pq.read_table(io.BytesIO(fs.cat_file(label))).to_pandas())
    buf = io.BytesIO()
    t.to_parquet(buf, index=False)
    fs.pipe_file(label, buf.getvalue())
    manifest = json.loads(fs.cat_file(f"{run}/manifest.json"))
    rel = label[len(run) + 1:]
    for f in manifest["files"]:
        if f["path"] == rel:
            f["size"] = len(buf.getvalue())
    fs.pipe_file(f"{run}/manifest.json", json.dumps(manifest).encode())
    return rel


def test_compare_refuses_labels_that_are_not_paths_or_repeat_ids(planted, scheduler, capsys):
    """A label file holding a value that is no segment path (markup, null) or ids twice, or a
    truncated manifest.json, must be refused naming the file (exit 7), not crash the page (or
    the JSON parser) or count rows twice."""
    fs = fsspec.filesystem("s3")
    src = planted["old"][len("s3://"):]
    odd, dup = f"{planted['bucket']}/odd-run", f"{planted['bucket']}/dup-run"
    _copy_run(fs, src, odd)
    _copy_run(fs, src, dup)

    def markup(t):
        t.loc[t.index[:3], "cluster"] = "<script>alert(1)</script>"
        return t

    rel = _tamper_labels(fs, odd, markup)
    _tamper_labels(fs, dup, lambda t: pd.concat([t, t.iloc[:5]], ignore_index=True))
    capsys.readouterr()
    out = f"s3://{planted['bucket']}/cmp-odd"
    assert run_cli("compare", planted["new"], f"s3://{odd}", "--output", out,
                   "--scheduler", scheduler) == 7
    err = capsys.readouterr().err
    assert rel in err and "'cluster'" in err and "Traceback" not in err
    assert not fs.exists(f"{out[len('s3://'):]}/compare.html")
    assert run_cli("compare", f"s3://{dup}", planted["new"], "--output",
                   f"s3://{planted['bucket']}/cmp-dup", "--scheduler", scheduler) == 7
    assert "more than once" in capsys.readouterr().err
    fs.pipe_file(f"{dup}/manifest.json", fs.cat_file(f"{dup}/manifest.json")[:-20])  # truncated
    assert run_cli("compare", f"s3://{dup}", planted["new"], "--output",
                   f"s3://{planted['bucket']}/cmp-dup", "--scheduler", scheduler) == 7
    err = capsys.readouterr().err
    assert "manifest.json" in err and "Traceback" not in err
    manifest = json.loads(fs.cat_file(f"{src}/manifest.json"))
    manifest["input"] = "not an object"
    fs.pipe_file(f"{dup}/manifest.json", json.dumps(manifest).encode())
    assert run_cli("compare", f"s3://{dup}", planted["new"], "--output",
                   f"s3://{planted['bucket']}/cmp-dup", "--scheduler", scheduler) == 7
    assert "manifest.json" in capsys.readouterr().err


def test_previous_republished_is_not_reused(planted, scheduler, tmp_path, capsys):
    """The same config and input with ``--previous P`` after P was published again is another
    run (its paths come from P): it is redone and records P's new manifest, not skipped."""
    fs = fsspec.filesystem("s3")
    prev = f"{planted['bucket']}/prev-copy"
    _copy_run(fs, planted["old"][len("s3://"):], prev)
    table = planted["new_table"].iloc[:600]
    inp, out = f"s3://{planted['bucket']}/in-rep", f"s3://{planted['bucket']}/run-rep"
    write_table(table, inp, n_files=1)
    cfg = write_config(tmp_path, inp, out, **SECTIONS)
    assert run_cli("run", cfg, "--scheduler", scheduler, "--quiet", "--previous",
                   f"s3://{prev}") == 0
    first = read_json(out, "manifest.json")["previous"]["manifest_sha256"]
    manifest = json.loads(fs.cat_file(f"{prev}/manifest.json"))
    manifest["republished"] = True  # stands for a new publication at the same place
    fs.pipe_file(f"{prev}/manifest.json", json.dumps(manifest).encode())
    capsys.readouterr()
    assert run_cli("run", cfg, "--scheduler", scheduler, "--previous", f"s3://{prev}",
                   "--set", "output.overwrite=true") == 0
    assert "nothing to do" not in capsys.readouterr().out
    again = read_json(out, "manifest.json")["previous"]["manifest_sha256"]
    assert again != first


def _stages(out: str) -> list[str]:
    return [json.loads(line).get("stage", "") for line in out.splitlines() if line.startswith("{")]


def test_previous_refused_before_growing(planted, scheduler, tmp_path, capsys):
    """``--previous`` a run of text ids for integer ids, or a run whose tree.json is damaged:
    refused at the plan (exit 3, both runs named; exit 7 naming tree.json), before any level is
    fitted."""
    fs = fsspec.filesystem("s3")
    table = planted["new_table"].iloc[:300].copy()
    inp = f"s3://{planted['bucket']}/in-prev-early"
    write_table(table, inp, n_files=1)
    cfg = write_config(tmp_path, inp, f"s3://{planted['bucket']}/run-prev-early", **SECTIONS)
    damaged = f"{planted['bucket']}/prev-damaged-tree"
    _copy_run(fs, planted["old"][len("s3://"):], damaged)
    fs.pipe_file(f"{damaged}/tree.json", b"[]")
    capsys.readouterr()
    assert run_cli("run", cfg, "--scheduler", scheduler, "--quiet", "--previous",
                   f"s3://{damaged}") == 7
    printed = capsys.readouterr()
    stages = _stages(printed.out)
    assert "plan" in stages and not any(s.startswith("level") for s in stages), stages
    assert "tree.json" in printed.err
    table["user_id"] = np.arange(len(table))
    write_table(table, inp + "-int", n_files=1)
    cfg = write_config(tmp_path, inp + "-int", f"s3://{planted['bucket']}/run-prev-int",
                       **SECTIONS)
    assert run_cli("run", cfg, "--scheduler", scheduler, "--quiet", "--previous",
                   planted["old"]) == 3
    printed = capsys.readouterr()
    stages = _stages(printed.out)
    assert "plan" in stages and not any(s.startswith("level") for s in stages), stages
    assert "string ids" in printed.err and "integer ids" in printed.err


@pytest.mark.parametrize("final, kept", [
    ({"root": "root", "root.0": "root.0", "root.1": "root.1"}, True),
    ({"root": "root", "root.0": "root.1", "root.1": "root.0"}, False),
])
def test_previous_paths_keep_the_explanation_rows_drawn_only_when_no_path_changes(final, kept):
    """``--previous`` renames the grown tree: the explanation rows the assignment passes drew
    (under the paths and child numbers of growth) are dropped when a path changes, and kept
    when every path stays (a run over unchanged segments): explain then reads no column again."""
    import dask
    import dask.dataframe as dd

    from recluster.comparing import rename_growth
    from recluster.compute.tree import TreeNode
    from recluster.job.growth import Growth

    state = pd.DataFrame({"cluster": ["root.0", "root.1", "root.0"], "depth": [1, 1, 1],
                          "level_1": pd.array([0, 1, 0], dtype="Int64")})
    g = Growth(state=dd.from_pandas(state, npartitions=1),
               nodes={p: TreeNode(p, p.count("."), 1, 1.0) for p in final})
    g.nodes["root"].children = ["root.0", "root.1"]
    drawn = [({"root": (0, 1.0)}, "rows")]
    g.drawn = list(drawn)
    with dask.config.set(scheduler="sync"):
        rename_growth(g, final)
        labels = g.state.compute()
    assert g.drawn == (drawn if kept else [])
    assert list(labels["cluster"]) == [final[p] for p in state["cluster"]]
