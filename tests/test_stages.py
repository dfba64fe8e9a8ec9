"""Fast unit tests of the pure stages: no Dask cluster, no S3, no UMAP.

Each test asserts a property the stage promises (partition independence, coverage, bounds,
error messages naming the culprit), not numbers copied from a previous run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from recluster.compute.assign import KnnAssigner
from recluster.compute.cluster import fit_clusters, min_cluster_size_for
from recluster.compute.preprocess import MISSING, OTHER, Preprocessor, categorical_strings
from recluster.compute.sampling import allocate, hash_uniform
from recluster.compute.schema import check_stats, partition_stats, resolve_schema
from recluster.config import (
    ClusteringConfig,
    InputConfig,
    apply_overrides,
    load_config,
    parse_config,
)
from recluster.errors import ConfigError, InputDataError
from recluster.storage.inputs import FileInfo, plan_pieces

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------------------- sampling


def _ks_uniform(u: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance between the sample ``u`` and Uniform[0, 1)."""
    s = np.sort(u)
    n = s.size
    upper = np.arange(1, n + 1) / n - s
    lower = s - np.arange(n) / n
    return float(max(upper.max(), lower.max()))


def _string_ids(n: int, seed: int = 0) -> pd.Series:
    rng = np.random.default_rng(seed)
    return pd.Series([f"user-{v:012x}" for v in rng.choice(2**40, size=n, replace=False)])


ID_KINDS = {
    "int64": lambda n: pd.Series(np.arange(n, dtype=np.int64) * 7 + 1_000_003),
    "string": _string_ids,
}


@pytest.mark.parametrize("kind", sorted(ID_KINDS))
def test_hash_uniform_in_unit_interval_and_uniform(kind):
    n = 100_000
    u = hash_uniform(ID_KINDS[kind](n), seed=3)
    assert u.shape == (n,)
    assert u.dtype == np.float64
    assert np.all(u >= 0.0) and np.all(u < 1.0)
    assert abs(u.mean() - 0.5) < 0.02
    # KS critical value at alpha = 0.001 is about 1.95 / sqrt(n).
    assert _ks_uniform(u) < 1.95 / np.sqrt(n)
    # Deciles hold about a tenth each.
    counts = np.bincount((u * 10).astype(int), minlength=10)
    assert np.all(np.abs(counts / n - 0.1) < 0.01)


@pytest.mark.parametrize("kind", sorted(ID_KINDS))
def test_hash_uniform_is_partition_independent(kind):
    ids = ID_KINDS[kind](20_000)
    whole = pd.Series(hash_uniform(ids, seed=11), index=ids.to_numpy())

    # Shuffle, give the series a non-default index, and split into uneven chunks.
    rng = np.random.default_rng(1)
    shuffled = ids.iloc[rng.permutation(len(ids))]
    shuffled.index = rng.integers(0, 10**9, size=len(shuffled))
    cuts = np.sort(rng.choice(np.arange(1, len(ids)), size=9, replace=False))
    parts = []
    for chunk in np.split(np.arange(len(shuffled)), cuts):
        part = shuffled.iloc[chunk]
        parts.append(pd.Series(hash_uniform(part, seed=11), index=part.to_numpy()))
    pieced = pd.concat(parts)

    assert len(pieced) == len(whole)
    np.testing.assert_array_equal(pieced.loc[whole.index].to_numpy(), whole.to_numpy())
    # And a single id hashed alone matches too.
    one = ids.iloc[[123]]
    assert hash_uniform(one, seed=11)[0] == whole.iloc[123]


def test_hash_uniform_string_flavours_agree():
    ids = _string_ids(1_000)
    base = hash_uniform(ids, seed=5)
    np.testing.assert_array_equal(hash_uniform(ids.astype("string"), seed=5), base)
    np.testing.assert_array_equal(hash_uniform(ids.astype("category"), seed=5), base)


def test_hash_uniform_seed_changes_draws_for_string_ids():
    ids = _string_ids(10_000)
    a, b = hash_uniform(ids, seed=0), hash_uniform(ids, seed=1)
    assert np.mean(a == b) < 0.001
    # Draws under two seeds are unrelated, not merely permuted or shifted.
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.05
    np.testing.assert_array_equal(hash_uniform(ids, seed=0), a)  # but reproducible


def test_hash_uniform_seed_changes_draws_for_int_ids():
    ids = ID_KINDS["int64"](10_000)
    a, b = hash_uniform(ids, seed=0), hash_uniform(ids, seed=1)
    assert np.mean(a == b) < 0.001


def test_allocate_proportional_when_population_large():
    counts = {"a": 600_000, "b": 300_000, "c": 100_000}
    size = 10_000
    t = allocate(counts, size, min_per_stratum=50)
    assert set(t) == set(counts)
    assert all(0.0 < v <= 1.0 for v in t.values())
    expected = sum(t[s] * c for s, c in counts.items())
    assert abs(expected - size) <= 0.01 * size
    # Proportional: every stratum gets the same rate when no minimum binds.
    assert max(t.values()) - min(t.values()) < 1e-12


def test_allocate_raises_small_strata_to_minimum():
    counts = {"big": 1_000_000, "mid": 2_000, "tiny": 10, "empty": 0}
    size, mps = 5_000, 100
    t = allocate(counts, size, mps)
    assert all(0.0 < v <= 1.0 for v in t.values())
    for s, c in counts.items():
        if c > 0:
            assert t[s] * c >= min(c, mps) - 1e-9, s
    assert t["tiny"] == 1.0
    assert "empty" not in t  # a stratum without rows gets no threshold (nothing to draw)
    expected = sum(t[s] * c for s, c in counts.items() if s in t)
    # The minimums only add rows: at most one minimum per stratum on top of ``size``.
    assert size - 1e-6 <= expected <= size + mps * len(counts)


def test_allocate_small_population_takes_everything():
    counts = {"x": 30, "y": 50, None: 19}
    t = allocate(counts, size=100, min_per_stratum=0)
    assert t == {"x": 1.0, "y": 1.0, None: 1.0}


def test_allocate_thresholds_draw_the_expected_sample():
    """Thresholds applied to hash draws give about ``threshold * count`` rows per stratum."""
    n = 200_000
    ids = _string_ids(n, seed=7)
    rng = np.random.default_rng(7)
    strata = rng.choice(["a", "b", "c", "rare"], size=n, p=[0.6, 0.3, 0.0995, 0.0005])
    counts = pd.Series(strata).value_counts().to_dict()
    t = allocate(counts, size=4_000, min_per_stratum=60)
    u = hash_uniform(ids, seed=2)
    limit = pd.Series(strata).map(t).to_numpy()
    kept = pd.Series(strata[u < limit]).value_counts()
    for s, c in counts.items():
        want = t[s] * c
        # Binomial count: within 5 standard deviations (or exact when the threshold is 1).
        sd = np.sqrt(c * t[s] * (1 - t[s]))
        assert abs(kept.get(s, 0) - want) <= 5 * sd + 1e-9, (s, kept.get(s, 0), want)


# ---------------------------------------------------------------------------- preprocess


def _numeric_frame(n: int = 5_000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "spend": rng.lognormal(mean=3.0, sigma=1.0, size=n),
        "height": rng.normal(170.0, 10.0, size=n),
        "delta": rng.normal(0.0, 5.0, size=n),
    })


def test_preprocess_log1p_only_for_skewed_non_negative():
    df = _numeric_frame()
    pre = Preprocessor(["spend", "height", "delta"], [], skew_threshold=1.0).fit(df)
    assert pre.summary()["log1p"] == ["spend"]
    # A lognormal column is no longer skewed after the transform.
    z = pre.transform(df)[:, 0].astype(np.float64)
    skew = np.mean((z - z.mean()) ** 3) / z.std() ** 3
    assert abs(skew) < 0.5


def test_preprocess_standardises_fit_data():
    df = _numeric_frame()
    pre = Preprocessor(list(df.columns), []).fit(df)
    out = pre.transform(df)
    assert out.dtype == np.float32
    assert out.shape == (len(df), 3)
    assert pre.feature_names_out_ == list(df.columns)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(out.std(axis=0), 1.0, atol=1e-3)


def test_preprocess_transform_is_row_independent():
    df = _numeric_frame(2_000)
    df["kind"] = np.random.default_rng(0).choice(["p", "q", "r", None], size=len(df))
    pre = Preprocessor(["spend", "height", "delta"], ["kind"]).fit(df)
    whole = pre.transform(df)
    parts = np.vstack([pre.transform(df.iloc[i:i + 333]) for i in range(0, len(df), 333)])
    np.testing.assert_array_equal(parts, whole)


def test_preprocess_imputes_missing_and_reports_it():
    df = _numeric_frame()
    rng = np.random.default_rng(1)
    holes = rng.random(len(df)) < 0.1
    df.loc[holes, "height"] = np.nan
    df.loc[holes[::-1], "spend"] = np.nan  # a log1p column with holes too
    pre = Preprocessor(list(df.columns), []).fit(df)
    out = pre.transform(df)
    assert np.isfinite(out).all()
    imputed = pre.summary()["imputed"]
    assert set(imputed) == {"height", "spend"}
    assert imputed["height"] == pytest.approx(holes.mean())
    assert imputed["spend"] == pytest.approx(holes.mean())
    # Imputed rows sit at the median's position, and the fit data is still standardised.
    j = pre.feature_names_out_.index("height")
    assert np.ptp(out[holes, j]) == 0.0
    median_z = (np.nanmedian(df["height"]) - pre.means_["height"]) / pre.scales_["height"]
    assert out[holes, j][0] == pytest.approx(median_z, abs=1e-4)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(out.std(axis=0), 1.0, atol=1e-3)
    # Missing values in rows never seen at fit time are imputed the same way.
    new = pd.DataFrame({"spend": [np.nan], "height": [np.nan], "delta": [np.nan]})
    assert np.isfinite(pre.transform(new)).all()


def test_preprocess_constant_column_flagged_and_zero():
    df = _numeric_frame(1_000)
    df["flat"] = 42.0
    df.loc[::7, "flat"] = np.nan  # missing values imputed to the same constant
    pre = Preprocessor(["height", "flat"], []).fit(df)
    assert pre.summary()["constant"] == ["flat"]
    out = pre.transform(df)
    assert np.isfinite(out).all()
    assert np.all(out[:, 1] == 0.0)
    # The other column is unaffected.
    assert out[:, 0].std() == pytest.approx(1.0, abs=1e-3)


def test_preprocess_all_missing_numeric_column_is_finite():
    df = pd.DataFrame({"x": np.arange(100.0), "gone": np.full(100, np.nan)})
    pre = Preprocessor(["x", "gone"], []).fit(df)
    assert pre.summary()["imputed"]["gone"] == 1.0
    out = pre.transform(df)
    assert np.isfinite(out).all()
    assert np.all(out[:, 1] == 0.0)


@pytest.mark.parametrize("extreme", [1e300, -1e300, 1.7e308])
def test_preprocess_extreme_values_stay_finite(extreme):
    df = _numeric_frame(500)
    df.loc[3, "height"] = extreme
    df.loc[5, "delta"] = -abs(extreme)
    df.loc[7, "delta"] = abs(extreme)
    pre = Preprocessor(list(df.columns), []).fit(df)
    out = pre.transform(df)
    assert np.isfinite(out).all()
    # The ordinary rows still spread out (the outliers do not squash them onto one value).
    ordinary = np.ones(len(df), dtype=bool)
    ordinary[[3, 5, 7]] = False
    assert np.all(out[ordinary].std(axis=0) > 0.1)
    # Extremes unseen at fit time are finite as well.
    probe = pd.DataFrame({c: [extreme, -extreme] for c in df.columns})
    assert np.isfinite(pre.transform(probe)).all()


def _categorical_frame() -> pd.DataFrame:
    values = ["a"] * 50 + ["b"] * 40 + ["c"] * 30 + [None] * 20 + ["d"] * 5 + ["e"] * 3
    rng = np.random.default_rng(0)
    return pd.DataFrame({"kind": rng.permutation(np.array(values, dtype=object)),
                         "x": rng.normal(size=len(values))})


def test_preprocess_categorical_top_levels_and_other():
    df = _categorical_frame()
    pre = Preprocessor(["x"], ["kind"], max_categories=4).fit(df)
    names = pre.feature_names_out_
    assert names == ["x", "kind=a", "kind=b", "kind=c", f"kind={MISSING}", f"kind={OTHER}"]
    assert pre.summary()["categories"] == {"kind": 4}
    assert pre.summary()["n_dims"] == len(names)
    out = pre.transform(df)
    onehot = out[:, 1:]
    assert set(np.unique(onehot)) <= {0.0, 1.0}
    np.testing.assert_array_equal(onehot.sum(axis=1), 1.0)
    col = {n: i for i, n in enumerate(names)}
    kind = df["kind"].to_numpy()
    for level in ["a", "b", "c"]:
        np.testing.assert_array_equal(out[:, col[f"kind={level}"]] == 1.0, kind == level)
    np.testing.assert_array_equal(out[:, col[f"kind={MISSING}"]] == 1.0, pd.isna(kind))
    np.testing.assert_array_equal(out[:, col[f"kind={OTHER}"]] == 1.0, np.isin(kind, ["d", "e"]))


def test_preprocess_categorical_unseen_and_missing_at_transform():
    pre = Preprocessor(["x"], ["kind"], max_categories=4).fit(_categorical_frame())
    names = pre.feature_names_out_
    new = pd.DataFrame({"kind": ["never-seen", None, "a", "e"], "x": [0.0, 1.0, 2.0, 3.0]})
    out = pre.transform(new)
    assert out.shape == (4, len(names))
    hot = [names[i] for i in out[:, 1:].argmax(axis=1) + 1]
    assert hot == [f"kind={OTHER}", f"kind={MISSING}", "kind=a", f"kind={OTHER}"]
    np.testing.assert_array_equal(out[:, 1:].sum(axis=1), 1.0)


def test_preprocess_missing_level_folds_into_other_when_rare():
    df = pd.DataFrame({"kind": ["a"] * 10 + ["b"] * 8 + [None]})
    pre = Preprocessor([], ["kind"], max_categories=2).fit(df)
    assert pre.feature_names_out_ == ["kind=a", "kind=b", f"kind={OTHER}"]
    out = pre.transform(pd.DataFrame({"kind": [None]}))
    assert out[0, -1] == 1.0


def test_preprocess_categorical_dtypes_agree():
    """Object, pandas string and category columns of the same values encode identically."""
    df = _categorical_frame()
    pre = Preprocessor(["x"], ["kind"], max_categories=3).fit(df)
    base = pre.transform(df)
    for dtype in ["string", "category"]:
        other = df.assign(kind=df["kind"].astype(dtype))
        np.testing.assert_array_equal(pre.transform(other), base)


def test_a_level_spelt_like_the_rare_levels_bucket_is_that_bucket():
    """A categorical value '__other__' (the name of the bucket of rare levels) was kept as a
    level of its own: the explanation frame then had two categories '__other__' and the run
    failed in 'explain' ("Categorical categories must be unique") after every fit."""
    from recluster.compute.explain import raw_frame

    df = pd.DataFrame({"kind": ["__other__"] * 30 + ["a"] * 20 + ["rare"] * 2})
    pre = Preprocessor([], ["kind"], max_categories=2).fit(df)
    assert pre.levels_["kind"] == ["a", "rare"]
    frame = raw_frame(df, pre)
    assert list(frame["kind"].cat.categories) == ["a", "rare", OTHER]
    out = pre.transform(pd.DataFrame({"kind": ["__other__", "never seen"]}))
    np.testing.assert_array_equal(out[0], out[1])


def test_explanation_frame_takes_any_text_level():
    """XGBoost refuses category names with a NUL character (an AssertionError with no message
    inside xgboost, after every fit: 'training the model of cluster 0 failed 3 times'). Levels
    reach it escaped, and levels that differ stay different."""
    import xgboost as xgb
    from tables import NASTY_TEXT

    from recluster.compute.explain import raw_frame

    levels = [*NASTY_TEXT, "a\\0", "\\\\"]  # the escapes of "a\x00" and "\\", as text
    df = pd.DataFrame({"kind": levels * 4, "x": np.arange(4 * len(levels), dtype=float)})
    pre = Preprocessor(["x"], ["kind"], max_categories=len(levels)).fit(df)
    frame = raw_frame(df, pre)
    cats = list(frame["kind"].cat.categories)
    assert len(set(cats)) == len(cats) == len(levels) + 1 and not any("\x00" in c for c in cats)
    assert frame["kind"].cat.codes.nunique() == len(levels)  # every level its own category
    y = (df["kind"] == "a\x00").astype(int)
    booster = xgb.train({"tree_method": "hist", "max_cat_to_onehot": 1, "min_child_weight": 0},
                        xgb.DMatrix(frame, y, enable_categorical=True), 5)
    p = booster.predict(xgb.DMatrix(frame, enable_categorical=True))
    assert p[y == 1].min() > p[y == 0].max()


def test_preprocess_integer_categorical_independent_of_nulls():
    fit_df = pd.DataFrame({"code": pd.array([1, 2, 2, None] * 10, dtype="float64")})
    pre = Preprocessor([], ["code"]).fit(fit_df)
    rows = pd.DataFrame({"code": np.array([1, 2], dtype=np.int64)})
    out = pre.transform(rows)
    assert out[:, -1].sum() == 0.0  # neither known level falls into __other__


def test_large_integer_levels_read_the_same_with_and_without_nulls():
    """An int64 categorical (or stratify_by) column read from a piece with nulls came out as
    pandas float64: 2**62 + 1 became the level '4611686018427387904' there and
    '4611686018427387905' in a piece without nulls, one level split in two."""
    from recluster.compute.schema import TableSchema, table_to_frame

    big = 2**62 + 1
    ts = TableSchema("id", ("x",), ("code",), "group", pa.int64(),
                     (("id", pa.int64()), ("x", pa.int64()), ("code", pa.int64()),
                      ("group", pa.uint64())))
    levels = []
    for code, group in (([big, None], [2**64 - 1, None]), ([big, 7], [2**64 - 1, 3])):
        table = pa.table({ts.id_key: [1, 2], ts.key("x"): pa.array([big, None], pa.int64()),
                          ts.key("code"): pa.array(code, pa.int64()),
                          ts.key("group"): pa.array(group, pa.uint64())})
        frame = table_to_frame(table, ts)
        levels.append((categorical_strings(frame[ts.key("code")])[0],
                       categorical_strings(frame[ts.key("group")])[0]))
        assert pd.isna(frame[ts.key("x")][1])  # numeric features: missing as ever
    assert levels == [(str(big), str(2**64 - 1))] * 2


def test_preprocess_fit_rejects_empty():
    with pytest.raises(ValueError):
        Preprocessor(["x"], []).fit(pd.DataFrame({"x": pd.Series([], dtype=float)}))


# ---------------------------------------------------------------------------- config


def _base_config() -> dict:
    return {"input": {"path": "/data/in", "id_column": "user_id"},
            "output": {"path": "/data/out"}}


def test_parse_config_defaults_are_valid():
    cfg = parse_config(_base_config())
    assert cfg.input.id_column == "user_id"
    assert cfg.sample.size >= 2 * cfg.assign.k


@pytest.mark.parametrize("section,key", [("input", "colour"), ("sample", "sizee"), (None, "sampel")])
def test_parse_config_rejects_unknown_keys(section, key):
    data = _base_config()
    if section is None:
        data[key] = {}
    else:
        data.setdefault(section, {})[key] = 1
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert key in str(exc.value)


@pytest.mark.parametrize("section", ["input", "output"])
@pytest.mark.parametrize("key", ["secret", "key", "Token", "aws_secret_access_key"])
def test_parse_config_rejects_credentials(section, key):
    data = _base_config()
    data[section]["storage_options"] = {key: "TOP-SECRET-VALUE-123", "anon": False}
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    msg = str(exc.value)
    assert key in msg
    assert "AWS_ACCESS_KEY_ID" in msg and "AWS_SECRET_ACCESS_KEY" in msg
    assert "TOP-SECRET-VALUE-123" not in msg  # the secret itself is never echoed


def test_parse_config_accepts_harmless_storage_options():
    data = _base_config()
    data["input"]["storage_options"] = {"anon": True, "endpoint_url": "http://127.0.0.1:9000"}
    cfg = parse_config(data)
    assert cfg.input.storage_options["anon"] is True


def test_apply_overrides_parses_yaml_scalars():
    data = _base_config()
    out = apply_overrides(data, ["sample.size=123", "output.overwrite=true",
                                 "assign.method=umap", "sample.stratify_by=country",
                                 "input.path=s3://bucket/a=b"])
    assert out["sample"]["size"] == 123 and isinstance(out["sample"]["size"], int)
    assert out["output"]["overwrite"] is True
    assert out["assign"]["method"] == "umap"
    assert out["input"]["path"] == "s3://bucket/a=b"  # only the first '=' splits
    assert "sample" not in data  # the input data is not mutated
    cfg = parse_config(out)
    assert cfg.sample.size == 123
    assert cfg.sample.stratify_by == "country"


@pytest.mark.parametrize("bad", ["sample.size", "input.path.deeper=1"])
def test_apply_overrides_rejects_malformed(bad):
    with pytest.raises(ConfigError):
        apply_overrides(_base_config(), [bad])


def test_load_config_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as exc:
        load_config(missing)
    assert "nope.yaml" in str(exc.value)


def test_load_config_reads_yaml_and_overrides(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text("input:\n  path: /in\n  id_column: id\noutput:\n  path: /out\nseed: 3\n")
    cfg = load_config(p, ["sample.size=500", "seed=9"])
    assert cfg.sample.size == 500
    assert cfg.seed == 9
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: [unclosed\n")
    with pytest.raises(ConfigError):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError):
        load_config(listy)
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("input:\n  path: /in\n  id_column: id\noutput:\n  path: /out\nsample:\n  size: 5\n")
    with pytest.raises(ConfigError) as exc:
        load_config(invalid)
    assert "sample.size" in str(exc.value)


def test_secret_looking_options_are_refused_and_masked():
    data = _base_config()
    data["input"]["storage_options"] = {"client_secret_ref": "s3cr3t-ref",
                                        "refresh_TOKEN_path": "/var/tok",
                                        "endpoint_url": "http://minio:9000"}
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    msg = str(exc.value)
    assert "client_secret_ref" in msg and "refresh_TOKEN_path" in msg
    assert "s3cr3t-ref" not in msg and "/var/tok" not in msg
    # Masking (defence in depth for manifests) reaches nested keys and keeps harmless ones.
    from recluster.config import redact_options as _mask

    masked = _mask({"endpoint_url": "http://minio:9000",
                    "client_kwargs": {"MySecretThing": "xyz", "region_name": "eu"}})
    assert masked == {"endpoint_url": "http://minio:9000",
                      "client_kwargs": {"MySecretThing": "***", "region_name": "eu"}}
    ok = _base_config()
    ok["input"]["storage_options"] = {"endpoint_url": "http://minio:9000", "anon": False}
    assert parse_config(ok).redacted()["input"]["storage_options"] == ok["input"]["storage_options"]


def test_nested_credentials_are_refused_by_name_without_their_values():
    data = _base_config()
    data["input"]["storage_options"] = {
        "client_kwargs": {"aws_access_key_id": "AKIAFAKE", "aws_secret_access_key": "NESTED-SECRET"}}
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    msg = str(exc.value)
    assert "client_kwargs.aws_access_key_id" in msg and "client_kwargs.aws_secret_access_key" in msg
    assert "input.storage_options" in msg and "AWS_ACCESS_KEY_ID" in msg
    assert "NESTED-SECRET" not in msg and "AKIAFAKE" not in msg


# ---------------------------------------------------------------------------- schema


def _info(path: str, fields: list[tuple[str, pa.DataType]], rows=(100,)) -> FileInfo:
    return FileInfo(path, pa.schema(fields), tuple(rows))


GOOD = [("user_id", pa.int64()), ("spend", pa.float64()), ("visits", pa.int32()),
        ("country", pa.string())]


def test_resolve_schema_roles():
    cfg = InputConfig(path="/in", id_column="user_id", categorical=["country"])
    ts = resolve_schema([_info("a.parquet", GOOD), _info("b.parquet", GOOD)], cfg, None)
    assert ts.id_column == "user_id"
    assert ts.numeric == ("spend", "visits")
    assert ts.categorical == ("country",)
    assert ts.columns == ["user_id", "spend", "visits", "country"]


def test_resolve_schema_stratify_column_not_a_numeric_feature():
    cfg = InputConfig(path="/in", id_column="user_id", categorical=["country"])
    fields = [*GOOD, ("segment", pa.int8())]
    ts = resolve_schema([_info("a.parquet", fields)], cfg, "segment")
    assert "segment" not in ts.features
    assert ts.stratify_by == "segment"
    assert "segment" in ts.columns


def test_resolve_schema_missing_id_names_column_and_file():
    cfg = InputConfig(path="/in", id_column="user_id", categorical=["country"])
    without_id = [f for f in GOOD if f[0] != "user_id"]
    with pytest.raises(InputDataError) as exc:
        resolve_schema([_info("s3://b/part-000.parquet", GOOD),
                        _info("s3://b/part-001.parquet", without_id)], cfg, None)
    msg = str(exc.value)
    assert "'user_id'" in msg
    assert "part-001.parquet" in msg and "part-000.parquet" not in msg


def test_resolve_schema_missing_feature_names_column_and_file():
    cfg = InputConfig(path="/in", id_column="user_id", features=["spend", "visits"])
    with pytest.raises(InputDataError) as exc:
        resolve_schema([_info("one.parquet", GOOD[:2])], cfg, None)
    assert "'visits'" in str(exc.value) and "one.parquet" in str(exc.value)


def test_missing_column_names_the_file_columns_that_only_look_different():
    """A config naming 'é' (one character) for a file column 'é' written as e + combining
    accent, or 'Spend' for 'spend ', was told the column is missing, in a message where both
    print the same; the message now names the near miss, escaped where it prints alike."""
    fields = [("user_id", pa.int64()), ("e\u0301", pa.float64()), ("spend ", pa.float64())]
    for wanted, hint in (("\u00e9", "'e\\u0301'"), ("Spend", "'spend '")):
        cfg = InputConfig(path="/in", id_column="user_id", features=[wanted])
        with pytest.raises(InputDataError) as exc:
            resolve_schema([_info("one.parquet", fields)], cfg, None)
        msg = str(exc.value)
        assert f"feature column '{wanted}' is missing from one.parquet" in msg, msg
        assert f"(it has {hint}: names must match exactly)" in msg, msg
    cfg = InputConfig(path="/in", id_column="user_id", features=["visits"])
    with pytest.raises(InputDataError) as exc:
        resolve_schema([_info("one.parquet", fields)], cfg, None)
    assert "it has" not in str(exc.value)


def test_resolve_schema_type_conflict_names_both_files():
    cfg = InputConfig(path="/in", id_column="user_id", categorical=["country"])
    changed = [(n, pa.float64() if n == "visits" else t) for n, t in GOOD]
    with pytest.raises(InputDataError) as exc:
        resolve_schema([_info("first.parquet", GOOD), _info("second.parquet", GOOD),
                        _info("third.parquet", changed)], cfg, None)
    msg = str(exc.value)
    assert "'visits'" in msg
    assert "third.parquet" in msg and "first.parquet" in msg
    assert "int32" in msg and "double" in msg


def test_resolve_schema_string_flavours_do_not_conflict():
    cfg = InputConfig(path="/in", id_column="user_id", categorical=["country"])
    a = [("user_id", pa.string()), ("spend", pa.float64()), ("country", pa.string())]
    b = [("user_id", pa.large_string()), ("spend", pa.float64()),
         ("country", pa.large_string())]
    c = [("user_id", pa.string()), ("spend", pa.float64()),
         ("country", pa.dictionary(pa.int32(), pa.string()))]
    ts = resolve_schema([_info("a.parquet", a), _info("b.parquet", b), _info("c.parquet", c)],
                        cfg, None)
    assert ts.categorical == ("country",)
    assert ts.numeric == ("spend",)


def test_columns_without_values_in_some_files_take_the_other_files_type(tmp_path):
    """pandas writes an all-None object column, and every object column of an empty frame, with
    Arrow's null type; such files were refused ("has type null in part-001 but string in
    part-000: the files' schemas disagree"). They fit any type; a column null in every file is
    numeric, so that validation names it as having no values."""
    from recluster.compute.schema import table_to_frame
    from recluster.storage.fs import Location
    from recluster.storage.inputs import list_parquet_files, plan_pieces, read_footers, read_piece

    full = pd.DataFrame({"user_id": ["a", "b"], "spend": [1.0, 2.0], "country": ["SE", "NO"],
                         "note": [None, None]})
    no_country = pd.DataFrame({"user_id": ["c"], "spend": [3.0], "country": [None],
                               "note": [None]})
    full.to_parquet(tmp_path / "part-000.parquet", index=False)
    no_country.to_parquet(tmp_path / "part-001.parquet", index=False)
    full.iloc[:0].astype(object).to_parquet(tmp_path / "part-002.parquet", index=False)
    loc = Location.of(str(tmp_path))
    infos = read_footers(loc, list_parquet_files(loc))
    assert pa.types.is_null(infos[1].schema.field("country").type)
    assert pa.types.is_null(infos[2].schema.field("user_id").type)
    cfg = InputConfig(path=str(tmp_path), id_column="user_id", categorical=["country"])
    ts = resolve_schema(infos, cfg, None)
    read = dict(ts.read_types)
    assert read["user_id"] == read["country"] == pa.string()
    assert ts.id_type == infos[0].schema.field("user_id").type  # the labels keep it
    assert ts.numeric == ("spend", "note") and pa.types.is_null(read["note"])
    frames = [table_to_frame(read_piece(p, loc, ts.read_schema, list(ts.keys.items())), ts)
              for p in plan_pieces(infos, 1_000)]
    got = pd.concat(frames, ignore_index=True)
    assert got[ts.id_key].tolist() == ["a", "b", "c"]
    assert got[ts.key("country")].tolist()[:2] == ["SE", "NO"]
    assert got[ts.key("country")].isna().tolist() == [False, False, True]
    stats = [partition_stats(f, ts, "f") for f in frames]
    with pytest.raises(InputDataError, match="feature column 'note' has no values at all"):
        check_stats(stats, 3, ts, 2)


def test_resolve_schema_undeclared_string_feature():
    cfg = InputConfig(path="/in", id_column="user_id")  # country not declared categorical
    with pytest.raises(InputDataError) as exc:
        resolve_schema([_info("a.parquet", GOOD)], cfg, None)
    msg = str(exc.value)
    assert "'country'" in msg and "categorical" in msg


def test_resolve_schema_rejects_float_id():
    cfg = InputConfig(path="/in", id_column="user_id", categorical=["country"])
    fields = [("user_id", pa.float64()), *GOOD[1:]]
    with pytest.raises(InputDataError) as exc:
        resolve_schema([_info("a.parquet", fields)], cfg, None)
    assert "'user_id'" in str(exc.value)


def _ts():
    cfg = InputConfig(path="/in", id_column="user_id", categorical=["country"])
    return resolve_schema([_info("a.parquet", GOOD)], cfg, None)


def _part(ids, spend=None, country=None) -> pd.DataFrame:
    """A partition as the passes hand it to the checks: columns under their internal keys."""
    n = len(ids)
    return pd.DataFrame({
        "user_id": ids,
        "spend": np.linspace(0, 1, n) if spend is None else spend,
        "visits": np.arange(n, dtype=np.int32),
        "country": ["fr"] * n if country is None else country,
    }).rename(columns=_ts().keys)


def test_check_stats_happy_path_sums_missing():
    ts = _ts()
    p1 = _part(np.arange(0, 50), spend=np.r_[np.nan, np.ones(49)])
    p2 = _part(np.arange(50, 100), country=[None, None] + ["de"] * 48)
    stats = [partition_stats(p1, ts, "p1.parquet"), partition_stats(p2, ts, "p2.parquet")]
    out = check_stats(stats, n_unique_ids=100, schema=ts, min_rows=17)
    assert out["rows"] == 100
    assert out["missing"] == {"spend": 1, "country": 2}


def test_check_stats_duplicate_ids():
    ts = _ts()
    stats = [partition_stats(_part(np.arange(50)), ts, "p1.parquet"),
             partition_stats(_part(np.arange(40, 90)), ts, "p2.parquet")]
    with pytest.raises(InputDataError) as exc:
        check_stats(stats, n_unique_ids=90, schema=ts, min_rows=17)
    msg = str(exc.value)
    assert "'user_id'" in msg and "duplicate" in msg
    found = pd.DataFrame({"__id__": [45, 45, 41, 41, 7],
                          "path": ["p1.parquet", "p2.parquet", "p1.parquet", "p2.parquet",
                                   "p1.parquet"]})
    with pytest.raises(InputDataError) as exc:
        check_stats(stats, n_unique_ids=90, schema=ts, min_rows=17, duplicates=found)
    assert str(exc.value).endswith("; e.g. 41 (2 rows: in p1.parquet, p2.parquet); "
                                   "45 (2 rows: in p1.parquet, p2.parquet)"), str(exc.value)


def test_check_stats_infinite_values_name_column_and_file():
    ts = _ts()
    bad = np.ones(50)
    bad[[3, 9]] = [np.inf, -np.inf]
    stats = [partition_stats(_part(np.arange(50)), ts, "ok.parquet"),
             partition_stats(_part(np.arange(50, 100), spend=bad), ts, "bad.parquet")]
    with pytest.raises(InputDataError) as exc:
        check_stats(stats, n_unique_ids=100, schema=ts, min_rows=17)
    msg = str(exc.value)
    assert "'spend'" in msg and "bad.parquet" in msg and "ok.parquet" not in msg
    assert "2 infinite" in msg


def test_check_stats_too_few_rows():
    ts = _ts()
    stats = [partition_stats(_part(np.arange(10)), ts, "small.parquet")]
    with pytest.raises(InputDataError) as exc:
        check_stats(stats, n_unique_ids=10, schema=ts, min_rows=17)
    assert "10 rows" in str(exc.value) and "17" in str(exc.value)


def test_check_stats_null_ids_and_empty_column():
    ts = _ts()
    ids = pd.array([1, 2, None, 4] * 10, dtype="Int64")
    stats = [partition_stats(_part(ids), ts, "nullid.parquet")]
    with pytest.raises(InputDataError) as exc:
        check_stats(stats, n_unique_ids=39, schema=ts, min_rows=17)
    assert "'user_id'" in str(exc.value) and "nullid.parquet" in str(exc.value)

    stats = [partition_stats(_part(np.arange(30), spend=np.full(30, np.nan)), ts, "a.parquet"),
             partition_stats(_part(np.arange(30, 60), spend=np.full(30, np.nan)), ts, "b.parquet")]
    with pytest.raises(InputDataError) as exc:
        check_stats(stats, n_unique_ids=60, schema=ts, min_rows=17)
    assert "'spend'" in str(exc.value)


# ---------------------------------------------------------------------------- assign


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


# ---------------------------------------------------------------------------- cluster


def test_fit_clusters_three_blobs_renumbered_by_size():
    sizes = [150, 600, 300]
    centers = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    emb, truth = make_blobs(n_samples=sizes, centers=centers, cluster_std=1.0, random_state=0)
    cfg = ClusteringConfig()
    cl = fit_clusters(emb.astype(np.float32), cfg)
    assert cl.n_clusters == 3
    assert len(cl.persistence) == cl.n_clusters
    assert all(np.isfinite(cl.persistence))
    assert adjusted_rand_score(truth, cl.labels) >= 0.95
    counts = np.bincount(cl.labels[cl.labels >= 0], minlength=cl.n_clusters)
    assert list(counts) == sorted(counts, reverse=True)
    # Cluster 0 is the biggest true blob.
    assert np.bincount(truth[cl.labels == 0]).argmax() == int(np.argmax(sizes))
    assert cl.labels.min() >= -1 and cl.labels.max() == cl.n_clusters - 1
    assert np.all(cl.probabilities[cl.labels < 0] == 0.0)
    assert np.all((cl.probabilities >= 0) & (cl.probabilities <= 1))
    # relabel maps HDBSCAN's raw labels onto the new numbering.
    raw = np.asarray(cl.clusterer.labels_)
    np.testing.assert_array_equal(cl.relabel[raw + 1], cl.labels)
    assert cl.min_cluster_size == min_cluster_size_for(len(emb), cfg)


def test_min_cluster_size_scales_with_sample():
    cfg = ClusteringConfig(min_cluster_fraction=0.01, min_cluster_size_floor=30)
    assert min_cluster_size_for(100, cfg) == 30
    assert min_cluster_size_for(100_000, cfg) == 1_000
    sizes = [min_cluster_size_for(n, cfg) for n in (10, 1_000, 5_000, 50_000)]
    assert sizes == sorted(sizes)


# ---------------------------------------------------------------------------- plan_pieces


def _infos_for_pieces() -> list[FileInfo]:
    schema = pa.schema([("id", pa.int64())])
    return [
        FileInfo("f0.parquet", schema, (400, 400, 400, 0, 400, 100)),
        FileInfo("empty.parquet", schema, ()),
        FileInfo("zeros.parquet", schema, (0, 0)),
        FileInfo("f1.parquet", schema, (5_000, 10, 10)),  # one row group above the target
        FileInfo("f2.parquet", schema, tuple(range(1, 300, 7))),
        FileInfo("f3.parquet", schema, (1_000,)),
    ]


@pytest.mark.parametrize("rows_per_piece", [1, 999, 1_000, 1_234, 10**9])
def test_plan_pieces_covers_each_row_group_once(rows_per_piece):
    infos = _infos_for_pieces()
    pieces = plan_pieces(infos, rows_per_piece)
    seen = [(p.path, rg) for p in pieces for rg in p.row_groups]
    want = [(i.path, rg) for i in infos for rg, n in enumerate(i.row_group_rows) if n > 0]
    assert sorted(seen) == sorted(want)
    assert len(seen) == len(set(seen))
    assert sum(p.n_rows for p in pieces) == sum(i.n_rows for i in infos)
    assert [p.index for p in pieces] == list(range(len(pieces)))
    rows = {i.path: i.row_group_rows for i in infos}
    for p in pieces:
        assert p.n_rows == sum(rows[p.path][rg] for rg in p.row_groups)
        assert p.n_rows > 0
        assert list(p.row_groups) == sorted(p.row_groups)
        assert p.n_rows <= rows_per_piece or len(p.row_groups) == 1
    # No file with zero rows yields a piece.
    assert {p.path for p in pieces} == {i.path for i in infos if i.n_rows > 0}
    # Greedy: a piece could not have taken the next piece's first row group of the same file.
    for a, b in zip(pieces, pieces[1:], strict=False):
        if a.path == b.path:
            assert a.n_rows + rows[b.path][b.row_groups[0]] > rows_per_piece
    # Deterministic.
    assert plan_pieces(infos, rows_per_piece) == pieces


def test_plan_pieces_empty_input():
    schema = pa.schema([("id", pa.int64())])
    assert plan_pieces([FileInfo("e.parquet", schema, (0,))], 100) == []
    assert plan_pieces([], 100) == []


def test_example_config_is_valid_and_complete():
    """configs/example.yaml parses and lists every key the model knows."""
    from pathlib import Path

    import yaml

    from recluster.config import JobConfig, load_config

    path = Path(__file__).resolve().parents[1] / "configs" / "example.yaml"
    cfg = load_config(path)
    raw = yaml.safe_load(path.read_text())
    for name, field in JobConfig.model_fields.items():
        assert name in raw, name
        sub = field.annotation
        if hasattr(sub, "model_fields"):
            missing = set(sub.model_fields) - set(raw[name]) - {"features"}
            assert not missing, (name, missing)
    assert cfg.sample.stratify_by == "country"
