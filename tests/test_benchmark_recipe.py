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
