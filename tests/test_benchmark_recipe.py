"""The benchmark's recipe at depth (``jobs/benchmark.py``): one run to depth d gives the recipe's
times and leaf ARI at every depth up to d, as prefixes, and its deeper levels really re-cluster."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))
import benchmark  # noqa: E402  (the benchmark's own recipe)


@pytest.mark.timeout(300)
def test_the_recipe_at_depth_two_recurses_and_its_depth_one_is_a_prefix(tmp_path):
    data = benchmark.generate(tmp_path, 2_000, 8, seed=0)
    r = benchmark.run_recipe(data, seed=0, depth=2, unseeded=False)
    one, two = r["by_depth"]["1"], r["by_depth"]["2"]
    assert r["stages"] == one["stages"] and len(r["levels"]) == 2
    # Depth 2's times are depth 1's plus the second level's, stage by stage.
    for stage, secs in two["stages"].items():
        assert secs == pytest.approx(one["stages"][stage] + r["levels"][1].get(stage, 0.0))
    assert r["levels"][1]["embed (UMAP, all rows)"] > 0 and r["levels"][1]["explain: SHAP all rows"] > 0
    # The generator's groups hold sub-groups: the second level splits clusters and its leaves
    # match the sub-groups better than the first level's.
    assert one["nodes_split"] == 1 and two["nodes_split"] >= 1
    assert two["segments"] > one["segments"]
    assert two["ari_leaf"] > one["ari_leaf"] > 0.1
    assert two["min_auc"] is not None and one["min_auc"] >= 0.9
    # What the table prints for depth 2: the cumulative times and that depth's leaf ARI.
    at2 = benchmark.recipe_at(r, 2)
    assert at2["depth"] == 2 and at2["stages"] == two["stages"] and at2["ari_leaf"] == two["ari_leaf"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("argv, said", [
    (["--wide", "32"], "--wide 32 must be more columns than --features 32"),
    (["--wide", "16", "--features", "32"], "--wide 16 must be more columns"),
    (["--recipe-depth", "0"], "--recipe-depth must be at least 1"),
    (["--recipe-depth", "-1"], "--recipe-depth must be at least 1"),
    (["--depths", "1,0"], "--depths must be at least 1"),
    (["--depths", "two"], "--depths takes comma-separated whole numbers"),
])
def test_benchmark_refuses_flags_it_cannot_honour_before_running(argv, said, capsys, tmp_path):
    """--wide no wider than --features ran both (identical) wide runs and then crashed
    unpacking one result; --recipe-depth 0 fell back to the default, -1 crashed after the
    recipe's run. Refused at once, naming the flag (nothing generated, nothing run)."""
    with pytest.raises(SystemExit) as exc:
        benchmark.main([*argv, "--dir", str(tmp_path)])
    assert exc.value.code == 2
    assert said in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def _result(depth: int, total: float, ari_leaf: float) -> dict:
    return {"depth": depth, "rows": 1000, "stages": {"fit": total}, "ari_l1": 1.0,
            "ari_leaf": ari_leaf, "pass_rows_per_s_core": {}}


@pytest.mark.timeout(30)
def test_a_depth_deeper_than_the_recipe_ran_is_a_failed_target_not_a_missing_one():
    """--recipe-depth 2 with --depths 1,2,3: depth 3 has no recipe to compare with; its target
    line said nothing at all (the table showed '-'), as if no target applied."""
    rec = {**_result(1, 100.0, 0.5), "by_depth": {"1": {}, "2": {}}}
    results = {"recipe": rec, "recipe_d2": _result(2, 200.0, 0.5),
               "d1": _result(1, 5.0, 0.5), "d2": _result(2, 10.0, 0.9), "d3": _result(3, 20.0, 0.9)}
    checks = {what: (ok, value) for what, ok, value in benchmark.check_targets(results)}
    assert checks["recluster depth 2 >= 10x faster than the recipe at depth 2"] == (True, "20.0x")
    ok, value = checks["recluster depth 3 >= 10x faster than the recipe at depth 3"]
    assert not ok and "recipe ran to depth 2 only" in value
    # Without the recipe (--skip-recipe) no recipe target is printed at any depth.
    alone = {k: v for k, v in results.items() if not k.startswith("recipe")}
    assert not [w for w, _, _ in benchmark.check_targets(alone) if "recipe" in w]
