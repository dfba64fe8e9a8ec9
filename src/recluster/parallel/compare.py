"""The Dask layer of ``recluster compare`` and ``run --previous``: a published run's labels as a
lazy frame, the outer join of two runs on the id (``dask.dataframe.merge``), the flow counts per
partition, and the staged writes of ``moves.parquet``.

Only counts (one row per pair of paths) ever reach the client; rows stay on the workers.
"""

from __future__ import annotations

from collections.abc import Sequence

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recluster.compute import compare
from recluster.compute.schema import _hex, _kind
from recluster.errors import InputDataError, IntegrityError
from recluster.storage.fs import Location, storage_errors
from recluster.storage.outputs import OutputStore, parquet_bytes

#: The id column of ``moves.parquet`` (whatever the runs call it, as in ``report/map.parquet``).
ID = "id"


def id_family(t: pa.DataType) -> str:
    """``string``, ``binary`` or ``integer``: ids of one family compare by value."""
    kind = _kind(t)
    return "integer" if kind.endswith("integer") else kind


def join_dtype(a: pa.DataType, b: pa.DataType, where: tuple[str, str]) -> str:
    """How ids of two runs are held for the join: ``str`` (text, binary as lowercase hex, or
    integers of mixed signedness beyond int64 as decimal text), ``int64`` or ``uint64``.

    Raises
    ------
    InputDataError
        the two runs' ids are of different families (text vs integers, ...).
    """
    fa, fb = id_family(a), id_family(b)
    if fa != fb:
        raise InputDataError(
            f"the two runs' ids cannot be compared: {where[0]} has {fa} ids ({a}), {where[1]} "
            f"has {fb} ids ({b}); ids are matched by value, so both runs must use the same id "
            "column type (integers, text or binary)")
    if fa != "integer":
        return "str"
    unsigned = [_kind(t) == "unsigned integer" and pa.types.is_uint64(_plain(t)) for t in (a, b)]
    signed = [_kind(t) == "signed integer" for t in (a, b)]
    if any(unsigned) and any(signed):
        return "str"
    return "uint64" if all(_kind(t) == "unsigned integer" for t in (a, b)) else "int64"


def _plain(t: pa.DataType) -> pa.DataType:
    if isinstance(t, pa.BaseExtensionType):
        t = t.storage_type
    return t.value_type if pa.types.is_dictionary(t) else t


def canonical_ids(values, dtype: str) -> pd.Series:
    """Id values (an Arrow array, or canonical pandas values of a run's state) as ``dtype``."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        if isinstance(values.type, pa.BaseExtensionType):
            values = values.storage
        if pa.types.is_dictionary(values.type):
            values = values.dictionary_decode()
        if _kind(values.type) == "binary":
            return pd.Series(_hex(values), dtype=object)
        values = values.to_pandas()
    s = pd.Series(values)
    if dtype == "str":
        return s.astype(object).map(str) if s.dtype.kind in "iu" else s.astype(object)
    return s.astype(dtype)


def label_file_id_type(loc: Location, rel: str, id_column: str) -> pa.DataType:
    fs, root = loc.fs()
    with storage_errors(loc, f"reading {rel}"), fs.open(f"{root}/{rel}", "rb") as f:
        schema = pq.read_schema(f)
    if id_column not in schema.names:
        raise InputDataError(f"{loc.url}/{rel} has no id column '{id_column}'")
    return schema.field(id_column).type


def _read_labels(rel: str, loc: Location, id_column: str, dtype: str, side: str) -> pd.DataFrame:
    fs, root = loc.fs()
    with storage_errors(loc, f"reading {rel}"), fs.open(f"{root}/{rel}", "rb") as f:
        table = pq.read_table(f, columns=[id_column, "cluster"])
    paths = table.column("cluster").to_pandas().astype(object)
    bad = compare.bad_paths(paths.unique())
    if bad:  # a null would read as "not in this run", a foreign value breaks the levels
        raise IntegrityError(f"{loc.url}/{rel}: column 'cluster' holds {len(bad)} value(s) that "
                             f"are not segment paths (e.g. {bad[0]!r}); recluster never writes "
                             "such labels: the run was changed after publication")
    if table.column(id_column).null_count:
        raise IntegrityError(f"{loc.url}/{rel}: id column '{id_column}' holds "
                             f"{table.column(id_column).null_count} null(s); a published run's "
                             "ids are never null: the run was changed after publication")
    return pd.DataFrame({ID: canonical_ids(table.column(id_column), dtype), side: paths})


def labels_frame(loc: Location, files: Sequence[str], id_column: str, dtype: str,
                 side: str) -> dd.DataFrame:
    """A published run's labels as a lazy frame (one partition per file): ``id`` (as
    ``dtype``) and ``side`` (``old`` or ``new``: the row's final path)."""
    meta = pd.DataFrame({ID: pd.Series([], dtype=object if dtype == "str" else dtype),
                         side: pd.Series([], dtype=object)})
    return dd.from_map(_read_labels, list(files), loc=loc, id_column=id_column, dtype=dtype,
                       side=side, meta=meta, enforce_metadata=False,
                       label=f"compare-labels-{side}")


def _state_paths(state: pd.DataFrame, dtype: str) -> pd.DataFrame:
    return pd.DataFrame({ID: canonical_ids(state["__id__"].to_numpy(), dtype),
                         "new": state["cluster"].astype(object).to_numpy()})


def state_frame(state: dd.DataFrame, dtype: str) -> dd.DataFrame:
    """A run's row state (``__id__``, ``cluster``) as ``id`` and ``new`` (the internal path)."""
    meta = pd.DataFrame({ID: pd.Series([], dtype=object if dtype == "str" else dtype),
                         "new": pd.Series([], dtype=object)})
    return state.map_partitions(_state_paths, dtype, meta=meta)


def join(old: dd.DataFrame, new: dd.DataFrame) -> dd.DataFrame:
    """Outer join on ``id``: every row of either run once, ``old``/``new`` null where absent."""
    return dd.merge(old, new, on=ID, how="outer")


def flows(joined: dd.DataFrame, levels: Sequence[int | None]) -> dd.DataFrame:
    """Rows per (level, old path, new path) of every partition (summed by :func:`sum_flows`)."""
    return joined.map_partitions(compare.flow_counts, list(levels), meta=compare.empty_flows())


def sum_flows(parts: pd.DataFrame) -> pd.DataFrame:
    return parts.groupby(["level", "old", "new"], sort=True)["rows"].sum().reset_index()


def _paths(s: pd.Series) -> np.ndarray:
    """Paths as Python strings, None where the row is not in that run (NaN or pd.NA)."""
    return s.astype(object).where(s.notna(), None).to_numpy()


def _moves(joined: pd.DataFrame) -> pd.DataFrame:
    old, new = _paths(joined["old"]), _paths(joined["new"])
    changed = np.array([a is None or b is None or a != b for a, b in zip(old, new, strict=True)],
                       dtype=bool)
    return pd.DataFrame({ID: joined[ID].to_numpy()[changed],
                         "old_path": old[changed], "new_path": new[changed]})


def _write_moves(part: pd.DataFrame, store: OutputStore, rel: str) -> int:
    moves = _moves(part)
    store.write_staged(rel, parquet_bytes(moves, dictionary_columns=["old_path", "new_path"]))
    return len(moves)


def write_moves(joined: dd.DataFrame, store: OutputStore, folder: str) -> list:
    """Delayed writes of every partition's moved rows to ``folder/part-NNNNN.parquet`` in the
    store's staging area; each returns its row count."""
    return [dask.delayed(_write_moves)(part, store, f"{folder}/part-{i:05d}.parquet")
            for i, part in enumerate(joined.to_delayed())]
