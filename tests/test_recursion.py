"""Recursive zoom: nested structure is found level by level, and only where it exists."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import read_json, read_labels, run_cli, write_config, write_table
from sklearn.metrics import adjusted_rand_score

from recluster.demo import make_table

pytestmark = pytest.mark.timeout(600)


def _run(tmp_path, scheduler, table, name, **sections):
    inp = tmp_path / f"{name}-in"
    out = tmp_path / f"{name}-out"
    write_table(table, str(inp), n_files=3)
    cfg = write_config(tmp_path, str(inp), str(out), **sections)
    assert run_cli("run", cfg, "--scheduler", scheduler) == 0
    return read_labels(str(out)), read_json(str(out), "tree.json")


def _leaf_ids(labels: pd.DataFrame) -> np.ndarray:
    return pd.factorize(labels["cluster"])[0]


@pytest.fixture(scope="module")
def nested_run(tmp_path_factory, scheduler):
    table, truth = make_table(8000, seed=21)
    labels, tree = _run(tmp_path_factory.mktemp("nested"), scheduler, table, "nested",
                        recursion={"max_depth": 3})
    return labels.merge(truth, on="user_id"), tree


def test_zoom_recovers_subgroups_the_first_level_merges(nested_run):
    merged, _ = nested_run
    level1 = merged["level_1"].astype(int)
    assert adjusted_rand_score(merged["group"], level1) >= 0.9
    assert adjusted_rand_score(merged["subgroup"], level1) <= 0.5
    assert adjusted_rand_score(merged["subgroup"], _leaf_ids(merged)) >= 0.85


def test_labels_follow_the_documented_representation(nested_run):
    merged, _ = nested_run
    assert merged["depth"].max() >= 2
    level_cols = [c for c in merged.columns if c.startswith("level_")]
    assert level_cols == [f"level_{i}" for i in range(1, len(level_cols) + 1)]
    for row in merged.sample(300, random_state=0).itertuples():
        levels = [getattr(row, c) for c in level_cols]
        members = []
        for lv in levels:
            if pd.isna(lv) or lv < 0:
                break
            members.append(str(int(lv)))
        assert row.depth == len(members)
        assert row.cluster == ".".join(["root", *members])  # root, root.2, root.2.1


def test_tree_sizes_add_up_to_labels(nested_run):
    merged, tree = nested_run
    by_path = {n["path"]: n for n in tree}
    total = len(merged)
    assert by_path["root"]["size"] == total
    for node in tree:
        if node["path"] == "root":
            inside = merged
        else:
            p = node["path"]
            inside = merged[(merged["cluster"] == p) | merged["cluster"].str.startswith(p + ".")]
        assert node["size"] == len(inside), node["path"]
        assert node["share"] == pytest.approx(len(inside) / total, abs=1e-6)
        assert (node["stop_reason"] is None) == (node["n_children"] > 0)
        if node["n_children"]:
            assert sum(by_path[c]["size"] for c in node["children"]) <= node["size"]
            assert node["fit"]["min_cluster_size"] > 0 and node["fit"]["n_sample"] > 0
        if node["fit"] is not None:  # no level budget binds: min(sample.size, node rows)
            assert node["fit"]["sample_target"] == min(by_path["root"]["fit"]["sample_target"],
                                                       node["size"]), node["path"]
        if node["parent"] is not None:
            assert node["path"] in by_path[node["parent"]]["children"]
            assert node["persistence"] is not None


def test_level_budget_shares_samples_and_keeps_subgroups(tmp_path, scheduler):
    """sample.level_size: the nodes of a level share one budget (each gets its share, at least
    min_node_size), the tree records each node's target, and the zoom still finds sub-groups."""
    table, truth = make_table(8000, seed=21)
    size, level_size, floor = 3_000, 4_000, 800
    labels, tree = _run(tmp_path, scheduler, table, "budget", recursion={"max_depth": 2},
                        sample={"size": size, "level_size": level_size, "min_node_size": floor})
    merged = labels.merge(truth, on="user_id")
    assert adjusted_rand_score(merged["subgroup"], _leaf_ids(merged)) >= 0.85
    fitted = [n for n in tree if n["fit"] is not None]
    level2 = [n for n in fitted if n["depth"] == 1]
    assert fitted[0]["path"] == "root" and fitted[0]["fit"]["sample_target"] == size
    assert len(level2) >= 2
    rows = sum(n["size"] for n in level2)
    wants = []
    for n in level2:
        want = min(size, n["size"], max(floor, round(level_size * n["size"] / rows)))
        assert n["fit"]["sample_target"] == want, n["path"]
        assert abs(n["fit"]["n_sample"] - want) <= 0.1 * want + 30, n["path"]  # hash draws
        wants.append(want)
    # The budget binds: the level fits fewer rows than sample.size per node would.
    assert sum(wants) < sum(min(size, n["size"]) for n in level2)


def test_round_blob_gets_no_invented_children(tmp_path, scheduler):
    table, _ = make_table(4000, n_groups=1, n_sub=1, seed=5)
    table = table.drop(columns=["country", "sessions"])  # discrete columns are real structure
    labels, tree = _run(tmp_path, scheduler, table, "blob", input={"categorical": []})
    assert len(tree) == 1
    assert tree[0]["n_children"] == 0 and "sub-structure" in tree[0]["stop_reason"]
    assert (labels["cluster"] == "root").all()
    assert labels["level_1"].isna().all()
    assert len(labels) == 4000


def test_max_depth_one_gives_one_level_and_small_nodes_are_not_split(tmp_path, scheduler):
    table, truth = make_table(5000, seed=8)
    labels, tree = _run(tmp_path, scheduler, table, "d1", recursion={"max_depth": 1})
    assert [c for c in labels.columns if c.startswith("level_")] == ["level_1"]
    assert max(n["depth"] for n in tree) == 1
    assert all("max_depth" in n["stop_reason"] for n in tree if n["depth"] == 1)
    labels, tree = _run(tmp_path, scheduler, table, "small", recursion={"min_node_rows": 2000})
    children = [n for n in tree if n["depth"] == 1]
    assert children and all(n["size"] < 2000 for n in children)
    assert all("min_node_rows" in n["stop_reason"] for n in children)
    # The labels contract: a column per level of recursion.max_depth (2), however deep the tree
    # grew, null below the deepest split.
    assert [c for c in labels.columns if c.startswith("level_")] == ["level_1", "level_2"]
    assert labels["level_1"].notna().any() and labels["level_2"].isna().all()
