"""Drift in ``recluster score`` (issue 20): the share of scored rows outside each node's training
support and each feature's PSI against the node's training profile, in the manifest and on the
terminal; ``--fail-on-drift`` exits 8 once the labels are published.

Real data: ggplot2 diamonds. The model is trained on stones of at most one carat; a disjoint
resample of such stones must not drift, the stones above one carat must.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import read_json, read_labels, run_cli, write_config, write_table
from tables import diamonds

from recluster.compute import drift
from recluster.compute.preprocess import Preprocessor

pytestmark = pytest.mark.timeout(300)


def test_reference_support_and_psi_units():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    labels = np.repeat([0, 1, 2], 400)
    Z = centres[labels] + rng.normal(0, 1, (1200, 2))
    sample = pd.DataFrame({"a": Z[:, 0], "b": Z[:, 1],
                           "k": rng.choice(["x", "y", "z"], 1200, p=[0.6, 0.3, 0.1])})
    pre = Preprocessor(["a", "b"], ["k"], 1.0, 20).fit(sample)
    ref = drift.fit_reference(sample, pre, Z, labels)
    ref = drift.Reference.from_json(ref.to_json())  # as score reads it back
    rule = drift.DriftRule()
    # Fresh rows like the training rows: about 1% outside, PSI near 0.
    Z2 = centres[labels] + rng.normal(0, 1, (1200, 2))
    same = pd.DataFrame({"a": Z2[:, 0], "b": Z2[:, 1],
                         "k": rng.choice(["x", "y", "z"], 1200, p=[0.6, 0.3, 0.1])})
    e = drift.summarise(ref, drift.node_counts(ref, same, Z2), {}, rule)
    assert e["outside_share"] <= 0.03 and e["max_psi"]["psi"] < 0.05 and not e["drifted"]
    # Rows between and beyond the clusters, and another mix of levels: outside, high PSI.
    Z3 = rng.uniform(-10, 20, (1200, 2))
    moved = pd.DataFrame({"a": Z3[:, 0], "b": Z3[:, 1],
                          "k": rng.choice(["x", "y", "w"], 1200, p=[0.1, 0.1, 0.8])})
    e = drift.summarise(ref, drift.node_counts(ref, moved, Z3), {"k": "kind"}, rule)
    assert e["outside_share"] >= 0.5 and e["psi"]["kind"] >= 1.0 and e["drifted"]
    assert drift.psi(np.array([0.5, 0.5]), np.array([50, 50])) == pytest.approx(0.0)


SECTIONS = dict(input={"id_column": "stone", "categorical": ["cut", "color", "clarity"]},
                sample={"size": 4000}, recursion={"max_depth": 2, "min_node_rows": 300},
                clustering={"min_cluster_fraction": 0.05}, stability={"resamples": 0},
                explain={"enabled": False})


def test_score_drift_shifted_vs_resampled_diamonds(tmp_path, scheduler, capsys):
    t = diamonds(9000)
    small, large = t[t["carat"] <= 1.0], t[t["carat"] > 1.0]
    train, resample = small.iloc[:3000], small.iloc[3000:5000]
    shifted = large.iloc[:2000]
    urls = {k: str(tmp_path / k) for k in ("train", "resample", "shifted")}
    for name, table in (("train", train), ("resample", resample), ("shifted", shifted)):
        write_table(table, urls[name], n_files=2)
    model = str(tmp_path / "model")
    cfg = write_config(tmp_path, urls["train"], model, **SECTIONS)
    assert run_cli("run", cfg, "--scheduler", scheduler, "--quiet") == 0
    assert "drift.json" in {p.name for p in (tmp_path / "model" / "models" / "root").iterdir()}

    capsys.readouterr()
    out = str(tmp_path / "scored-resample")
    assert run_cli("score", "--model", model, "--input", urls["resample"], "--output", out,
                   "--scheduler", scheduler, "--fail-on-drift") == 0
    printed = capsys.readouterr().out
    assert "drift: 0 of" in printed
    d = read_json(out, "manifest.json")["drift"]
    root = d["nodes"]["root"]
    assert root["rows"] == 2000 and root["outside_share"] <= 0.05
    assert root["max_psi"]["psi"] < 0.1, root["psi"]
    assert not any(n["drifted"] for n in d["nodes"].values())

    out = str(tmp_path / "scored-shifted")
    code = run_cli("score", "--model", model, "--input", urls["shifted"], "--output", out,
                   "--scheduler", scheduler, "--fail-on-drift")
    cap = capsys.readouterr()
    assert code == 8, cap.err
    assert "--fail-on-drift" in cap.err and "node root" in cap.out
    manifest = read_json(out, "manifest.json")  # the labels are published all the same
    assert manifest["rows"]["out"] == 2000 and len(read_labels(out)) == 2000
    root = manifest["drift"]["nodes"]["root"]
    assert root["drifted"] and root["outside_share"] >= 0.2
    assert root["psi"]["carat"] >= 1.0 and root["psi"]["price"] >= 1.0
    # Without --fail-on-drift the same scoring is a no-op that reports, exit 0; thresholds
    # passed on the command line judge the recorded numbers again.
    assert run_cli("score", "--model", model, "--input", urls["shifted"], "--output", out,
                   "--scheduler", scheduler) == 0
    assert run_cli("score", "--model", model, "--input", urls["shifted"], "--output", out,
                   "--scheduler", scheduler, "--fail-on-drift", "--drift-max-outside", "1",
                   "--drift-max-psi", "1000") == 0
