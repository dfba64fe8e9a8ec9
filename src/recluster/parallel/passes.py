"""The Dask layer: lazy frames over input pieces, and the passes that map pure stages over them.

Nothing here computes anything itself; it wraps :mod:`recluster.compute.routing`, :mod:`recluster.compute.node`,
:mod:`recluster.compute.schema` and :mod:`recluster.storage` functions into Dask collections and tasks,
always with ``meta``. The client is an explicit argument.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
from dask.dataframe._pyarrow import is_object_string_dtype
from dask.dataframe.utils import pyarrow_strings_enabled
from dask.delayed import Delayed
from distributed import Client, Future

from recluster.compute import routing, schema, stability
from recluster.compute.node import U_COLUMN, NodeFit, fit_node, node_preprocessing
from recluster.compute.schema import TableSchema
from recluster.config import JobConfig
from recluster.parallel.client import imports_ready
from recluster.storage.fs import Location
from recluster.storage.inputs import Piece, read_piece_groups
from recluster.storage.outputs import OutputStore, parquet_bytes

#: A piece with more float columns than this is read this many at a time
#: (:func:`recluster.compute.schema.read_groups`). On the wide benchmark's pieces (50,000 x 500)
#: groups of 100 kept a worker's Arrow memory at 365 MB instead of 874 and its first reads'
#: system CPU at 1.9 s instead of 5.2 (both workers, six pieces), for 0.3 s more of decoding.
READ_GROUP_COLUMNS = 100


def read_frame(piece: Piece, loc: Location, ts: TableSchema) -> pd.DataFrame:
    """One piece's columns of ``ts``, under their internal keys (see :mod:`recluster.compute.schema`),
    text columns as Dask's string conversion gives them (:func:`dask_strings`); a wide piece's
    float columns a group at a time (:data:`READ_GROUP_COLUMNS`)."""
    tables = read_piece_groups(piece, loc, ts.read_schema,
                               schema.read_groups(ts, READ_GROUP_COLUMNS))
    return dask_strings(schema.tables_to_frame(tables, ts, list(ts.keys.values())))


def dask_strings(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with its text columns converted as Dask converts the partitions it reads
    (``dataframe.convert-string``, on by default: ``string[pyarrow]``), one column at a time.

    The same values and types the tasks got from Dask's own conversion, which came right
    after each read; but Dask's ``astype`` of the whole frame split the float block
    (:func:`recluster.compute.schema.table_to_frame`) into one block per column, and every
    later use of the numeric columns as an array (validation, samples, the transform of each
    node's rows) copied them back together: for 500 columns a fresh 200 MB per 50,000 rows and
    pass. Converted here, Dask finds nothing left to convert and the block stays one.
    """
    if not pyarrow_strings_enabled():
        return df
    text = [c for c, t in df.dtypes.items() if is_object_string_dtype(t)]
    if not text:
        return df
    df = df.copy(deep=False)
    for c in text:
        df[c] = df[c].astype(pd.StringDtype("pyarrow"))
    return df


def input_frame(loc: Location, pieces: Sequence[Piece], ts: TableSchema,
                run_id: str) -> dd.DataFrame:
    """A lazy frame with one partition per piece, columns under internal keys; re-reading it
    gives the same partitions.

    Its keys (and so the keys of everything computed from it) carry ``run_id``: two runs on one
    scheduler never share a task, even over the same paths.
    """
    return dd.from_map(read_frame, list(pieces), loc=loc, ts=ts,
                       meta=dask_strings(schema.empty_frame(ts)),
                       enforce_metadata=False, label=f"read-parquet-{run_id}")


def _routable(df: pd.DataFrame, ts: TableSchema, paths: Sequence[str],
              partition_info=None) -> pd.DataFrame:
    return schema.refuse_unroutable_rows(df, ts, paths[partition_info["number"]]
                                         if partition_info else "?")


def with_rows_checked(feats: dd.DataFrame, pieces: Sequence[Piece], ts: TableSchema
                      ) -> dd.DataFrame:
    """``feats`` whose partitions raise :class:`~recluster.errors.InputDataError` (naming the
    column and the piece's file) when an id is missing or a numeric feature is infinite, as
    they are read."""
    return feats.map_partitions(_routable, ts, [p.url for p in pieces], meta=feats._meta)


def initial_state(feats: dd.DataFrame, ts: TableSchema, cfg: JobConfig) -> dd.DataFrame:
    id_dtype = feats._meta[ts.id_key].dtype
    return feats.map_partitions(
        routing.initial_state, ts.id_key, ts.stratum_key, cfg.seed, cfg.embedding.n_components,
        meta=routing.state_meta(id_dtype, 0, cfg.embedding.n_components))


def _stats_frame(df: pd.DataFrame, ts: TableSchema, paths: Sequence[str],
                 partition_info=None) -> pd.DataFrame:
    path = paths[partition_info["number"]] if partition_info else "?"
    return pd.DataFrame({"stats": [json.dumps(schema.partition_stats(df, ts, path))]})


#: Up to this many rows (the footers' count), the validation pass counts the distinct ids by a
#: tree of reductions over the rows' draws (``_u``, 8 bytes a row, a function of the id's value)
#: instead of Dask's shuffle of the ids: the peer-to-peer shuffle's set-up cost ~0.8 s of wall
#: time on every run (a 2,000-row table: 0.84-1.0 s, against 0.12-0.16 s), more than a small
#: table's whole validation. Its last task holds every draw (8 MB and pandas' hash table of them
#: at 1M rows); beyond, the shuffle's set-up is a small part of the run.
TREE_DISTINCT_ROWS = 1_000_000


def validation_frames(feats: dd.DataFrame, state: dd.DataFrame, pieces: Sequence[Piece],
                      ts: TableSchema):
    """Per-partition stats (one JSON row each) and a lazy count that equals the number of rows
    exactly when the ids are distinct: the distinct draws (``_u``) of a table of at most
    :data:`TREE_DISTINCT_ROWS` rows, else the distinct ids. Equal draws mean equal ids or a
    hash collision (~n²/2⁵⁴: 6e-5 at 1M rows), so a count short of the rows is rechecked
    exactly (:func:`distinct_ids`) before anything is refused.

    Computed together with the node counts, they share one read of the input.
    """
    stats = feats.map_partitions(_stats_frame, ts, [p.url for p in pieces],
                                 meta=pd.DataFrame({"stats": pd.Series([], dtype=object)}))
    if counts_draws(pieces):
        return stats, state[U_COLUMN].nunique(split_out=1)
    return stats, distinct_ids(state)


def counts_draws(pieces: Sequence[Piece]) -> bool:
    """Whether :func:`validation_frames` counts distinct draws (not ids) for these pieces."""
    return sum(p.n_rows for p in pieces) <= TREE_DISTINCT_ROWS


def distinct_ids(state: dd.DataFrame):
    """The exact number of distinct ids (lazy; Dask's shuffle)."""
    return state["__id__"].nunique()


def distinct_counts(feats: dd.DataFrame, keys: Sequence[str]) -> list:
    """The exact number of distinct values of each column ``keys`` (lazy)."""
    return [feats[k].nunique() for k in keys]


def _file_values(df: pd.DataFrame, key: str, files: Sequence[int],
                 partition_info=None) -> pd.DataFrame:
    f = files[partition_info["number"]] if partition_info else -1
    return pd.DataFrame({"file": np.full(len(df), f, dtype=np.int64),
                         "value": df[key].to_numpy(dtype=np.float64, na_value=np.nan)})


def distinct_per_file(feats: dd.DataFrame, keys: Sequence[str], pieces: Sequence[Piece]) -> list:
    """The exact number of distinct (file, value) pairs of each numeric column ``keys`` (lazy):
    as many as the input has rows when no value repeats within a file (a numbering restarting
    in each file, :func:`recluster.compute.schema.per_file_numberings`)."""
    index: dict[str, int] = {}
    files = [index.setdefault(p.path, len(index)) for p in pieces]
    meta = pd.DataFrame({"file": pd.Series([], dtype=np.int64),
                         "value": pd.Series([], dtype=np.float64)})
    return [feats.map_partitions(_file_values, k, files, meta=meta).drop_duplicates()
            .map_partitions(len).sum() for k in keys]


def most_repeated_ids(state: dd.DataFrame, k: int = 3) -> dd.Series:
    """The ``k`` most frequent ids with their counts (to name duplicates; a failing run only)."""
    return state["__id__"].value_counts().nlargest(k)


def _ids_with_paths(state: pd.DataFrame, ids: np.ndarray, paths: Sequence[str],
                    partition_info=None) -> pd.DataFrame:
    rows = routing.rows_with_ids(state, ids)[["__id__"]]
    return rows.assign(path=paths[partition_info["number"]] if partition_info else "?")


def id_files(state: dd.DataFrame, ids: np.ndarray, pieces: Sequence[Piece]) -> dd.DataFrame:
    """Every row whose id is one of ``ids``: ``__id__`` and the ``path`` of its file."""
    meta = state._meta[["__id__"]].assign(path=pd.Series([], dtype=object))
    return state.map_partitions(_ids_with_paths, dask.delayed(ids), [p.url for p in pieces],
                                meta=meta)


def repeated_id_files(client: Client, state: dd.DataFrame, pieces: Sequence[Piece]) -> pd.DataFrame:
    """Where some repeated ids are (for the refusal; two more passes, a failing run only): every
    row holding one of the most repeated ids, with its file (:func:`id_files`)."""
    top = client.compute(most_repeated_ids(state), sync=True)
    return client.compute(id_files(state, top.index.to_numpy(), pieces), sync=True)


def parse_stats(frame: pd.DataFrame) -> list[dict]:
    return [json.loads(s) for s in frame["stats"]]


def count_nodes(state: dd.DataFrame) -> dd.DataFrame:
    meta = routing.node_counts(state._meta)
    return state.map_partitions(routing.node_counts, meta=meta)


def sum_counts(parts: pd.DataFrame) -> pd.DataFrame:
    """Sum per-partition node counts: (cluster, depth, stratum) -> rows."""
    return parts.groupby(["cluster", "depth", routing.STRATUM], sort=True)["rows"].sum().reset_index()


def sample_frame(feats: dd.DataFrame, state: dd.DataFrame, level: int,
                 thresholds: Mapping[tuple[str, str], float], ts: TableSchema) -> dd.DataFrame:
    cols = [ts.id_key, *ts.feature_keys]
    meta = feats._meta[cols].assign(**{U_COLUMN: pd.Series([], dtype="float64"),
                                       "_node": pd.Series([], dtype=object)})
    return dd.map_partitions(routing.select_sample, feats, state, level, dict(thresholds), cols,
                             meta=meta, align_dataframes=False)


def thin_sample(drawn: dd.DataFrame, thresholds: Mapping[tuple[str, str], float]) -> dd.DataFrame:
    """The sample of :func:`sample_frame` at ``thresholds``, from a sample drawn ahead at upper
    bounds of them (:func:`recluster.compute.sampling.covers`), without reading the input: one
    stratum per node (``thresholds`` keyed by (path, stratum), one entry a path)."""
    by_path = {p: v for (p, _), v in thresholds.items()}
    if len(by_path) != len(thresholds):
        raise ValueError("a sample drawn ahead is thinned per node: one stratum each")
    return drawn.map_partitions(routing.thin_sample, by_path, meta=drawn._meta)


def _node_rows(sample: pd.DataFrame, path: str) -> pd.DataFrame:
    return sample[sample["_node"] == path].drop(columns="_node")


def _prep_from_sample(sample: pd.DataFrame, path: str, ts: TableSchema, cfg: JobConfig):
    """The node's preprocessing (or None: too few rows) and the seconds it took."""
    imports_ready()
    t = time.perf_counter()
    pre = node_preprocessing(_node_rows(sample, path), ts.numeric_keys, ts.categorical_keys,
                             ts.id_key, cfg)
    return pre, time.perf_counter() - t


def submit_preps(client: Client, sample: Future, paths: Sequence[str], ts: TableSchema,
                 cfg: JobConfig, run_id: str) -> dict[str, Future]:
    """One task per node fitting its preprocessing on its sample, which the node's fit and all
    its stability resamples then share (each had fitted the same one again)."""
    return {p: client.submit(_prep_from_sample, sample, p, ts, cfg, pure=False, priority=2,
                             key=f"prep-node-{p}-{cfg.seed}-{run_id}")
            for p in paths}


def _fit_from_sample(sample: pd.DataFrame, prep, path: str, ts: TableSchema,
                     cfg: JobConfig) -> NodeFit:
    imports_ready()
    pre, seconds = prep
    fit = fit_node(_node_rows(sample, path), path, ts.numeric_keys, ts.categorical_keys,
                   ts.id_key, cfg, pre=pre)
    if pre is not None:  # the preprocessing's own task counts as the fit's
        for k in ("preprocess", "total"):
            if k in fit.seconds:
                fit.seconds[k] += seconds
    return fit


def _resample_from_sample(sample: pd.DataFrame, prep, path: str, i: int, ts: TableSchema,
                          cfg: JobConfig):
    imports_ready()
    return stability.resample_node(_node_rows(sample, path), path, i, ts.numeric_keys,
                                   ts.categorical_keys, ts.id_key, cfg, pre=prep[0])


def submit_resamples(client: Client, sample: Future, preps: Mapping[str, Future],
                     paths: Sequence[str], ts: TableSchema, cfg: JobConfig, run_id: str,
                     start: int = 0, stop: int | None = None) -> dict[str, list[Future]]:
    """Resamples ``start`` .. ``stop`` (default: all ``stability.resamples``) of each node:
    independent refits at a lower priority than the fits themselves, so they fill workers the
    fits leave idle instead of waiting for them (``preps``: each node's preprocessing,
    :func:`submit_preps`)."""
    stop = cfg.stability.resamples if stop is None else stop
    return {p: [client.submit(_resample_from_sample, sample, preps[p], p, i, ts, cfg,
                              pure=False, priority=-1 if i == 0 else -2,
                              key=f"resample-node-{p}-{i}-{cfg.seed}-{run_id}")
                for i in range(start, stop)]
            for p in paths}


def submit_fits(client: Client, sample: Future, preps: Mapping[str, Future],
                paths: Sequence[str], ts: TableSchema, cfg: JobConfig,
                run_id: str) -> dict[str, Future]:
    """One independent task per node; they run in parallel across workers. Keys carry the run
    id: a run sharing the scheduler with another never receives the other's fit."""
    return {p: client.submit(_fit_from_sample, sample, preps[p], p, ts, cfg,
                             key=f"fit-node-{p}-{cfg.seed}-{run_id}", pure=False, priority=1)
            for p in paths}


def _settle_from_sample(sample: pd.DataFrame, fit: NodeFit, results: list, ts: TableSchema,
                        cfg: JobConfig):
    imports_ready()
    rows = _node_rows(sample, fit.path)
    return stability.settle_node(fit, rows, ts.id_key, list(results), cfg)


def submit_settles(client: Client, sample: Future,
                   todo: Mapping[str, tuple[Future, list[Future]]], ts: TableSchema,
                   cfg: JobConfig, run_id: str) -> dict[str, Future]:
    """One task per node that scores its clusters on its resamples and settles its clustering
    (the fit and the resamples stay on the workers). A node may be settled twice, on its first
    resample and then on all: the key says on how many."""
    return {p: client.submit(_settle_from_sample, sample, fit, list(rs), ts, cfg, pure=False,
                             priority=1, key=f"settle-node-{p}-{len(rs)}-{cfg.seed}-{run_id}")
            for p, (fit, rs) in todo.items()}


def assign_frame(feats: dd.DataFrame, state: dd.DataFrame, level: int,
                 fits: Mapping[str, NodeFit] | Future | Delayed, id_dtype, n_components: int) -> dd.DataFrame:
    meta = routing.state_meta(id_dtype, level, n_components)
    return dd.map_partitions(_assign_partition, feats, state, level, fits, meta=meta,
                             align_dataframes=False)


def _assign_partition(df: pd.DataFrame, state: pd.DataFrame, level: int,
                      fits: Mapping[str, NodeFit]) -> pd.DataFrame:
    imports_ready()  # assign.method umap imports umap.layouts in the task
    return routing.assign_level(df, state, level, fits)


def _pandas_reads_back(id_type: pa.DataType) -> bool:
    """Whether pandas parses the name it writes into a Parquet file's metadata for an
    Arrow-backed column of ``id_type`` (extension types, such as ``arrow.uuid``, stay
    Arrow-backed: pyarrow restores them by their own metadata)."""
    if isinstance(id_type, pa.BaseExtensionType):
        return True
    try:
        pd.api.types.pandas_dtype(str(pd.ArrowDtype(id_type)))
    except (TypeError, ValueError, NotImplementedError):
        return False
    return True


def labels_table(state: pd.DataFrame, id_column: str, levels: int,
                 id_type: pa.DataType | None = None) -> pd.DataFrame:
    """The published labels of one partition: the state minus internal columns, the id under
    its own name and (given ``id_type``) as an Arrow-typed column of the input's id type, in
    the labels contract (:func:`recluster.compute.routing.label_columns`); ``levels`` is the
    run's ``recursion.max_depth``, so that ``level_1 .. level_<levels>`` are always there."""
    out = routing.plain_dtypes(state.drop(columns=[U_COLUMN, routing.STRATUM]))
    out = out.rename(columns={"__id__": id_column})
    if id_type is not None:
        ids = schema.id_arrow(out[id_column], id_type)
        # Where pandas cannot read back its own name of the Arrow-backed type (a dictionary,
        # fixed_size_binary(16) UUIDs: ``pd.read_parquet`` of the labels failed), the id is a
        # plain pandas column (categorical, bytes) and the file keeps the input's Arrow type
        # through the schema :func:`labels_bytes` gives it.
        out[id_column] = pd.arrays.ArrowExtensionArray(ids) if _pandas_reads_back(id_type) \
            else ids.to_pandas()
    for lvl in range(1, levels + 1):
        if f"level_{lvl}" not in out:
            out[f"level_{lvl}"] = pd.array([pd.NA] * len(out), dtype="Int64")
    n_emb = sum(1 for c in out.columns if c.startswith("umap_"))
    return out[routing.label_columns(id_column, levels, n_emb)]


def labels_bytes(state: pd.DataFrame, id_column: str, levels: int,
                 id_type: pa.DataType | None = None) -> tuple[bytes, int]:
    """One partition's labels file (:func:`labels_table` as Parquet, the id in the input's Arrow
    type) and its row count."""
    table = labels_table(state, id_column, levels, id_type)
    arrow = None
    if id_type is not None:  # the input's exact type, also where the frame holds plain values
        arrow = pa.Schema.from_pandas(table, preserve_index=False)
        arrow = arrow.set(arrow.get_field_index(id_column), pa.field(id_column, id_type))
    return parquet_bytes(table, dictionary_columns=["cluster"], schema=arrow,
                         keep=[id_column]), len(table)


def _write_labels(state: pd.DataFrame, store: OutputStore, rel: str, id_column: str,
                  levels: int, id_type: pa.DataType | None) -> int:
    data, rows = labels_bytes(state, id_column, levels, id_type)
    store.write_staged(rel, data)
    return rows


def write_labels(state: dd.DataFrame, store: OutputStore, ts: TableSchema, levels: int):
    """Delayed writes of every partition's labels to the run's staging area (``store``, which
    tokenizes by run id); each returns its row count."""
    return [dask.delayed(_write_labels)(part, store, f"labels/part-{i:05d}.parquet", ts.id_column,
                                        levels, ts.id_type)
            for i, part in enumerate(state.to_delayed())]


def clusters_of(state: dd.DataFrame, ids: np.ndarray) -> dd.DataFrame:
    """The final ``cluster`` path of the rows with these ids (a few thousand: the map sample)."""
    return state.map_partitions(routing.rows_with_ids, dask.delayed(ids),
                                meta=state._meta[["__id__", "cluster"]])
