"""The input table's schema: which columns a run reads, what each is, the one type each is read
with, and the internal names the job works under; plus the per-partition data checks.

Everything here is pure: footers (:class:`recluster.storage.inputs.FileInfo`), an Arrow table
or a pandas partition in; a :class:`TableSchema`, a pandas frame, a stats dict or an
:class:`InputDataError` out.

**Internal names.** Every column read is renamed to a key ``c0``, ``c1``, ... (the id first,
then the numeric features, the categorical features, and the ``stratify_by`` column if it is
not a feature). The job's own columns (``_u``, ``_node``, ``_child``, ``__id__``, ...) are never
of that form, so no user column can take or shadow one, and names XGBoost refuses (``[``, ``]``,
``<``) never reach it. Everything a person reads (messages, ``tree.json``, SHAP and profile
tables, the report, the manifest) shows the original names: :meth:`TableSchema.name`.

**Ids** are read as their canonical value: integers as integers, every string flavour
(``string``, ``large_string``, ``dictionary<string>``) as text, binary ids (``binary``,
``fixed_size_binary(16)`` UUIDs) as lowercase hex text; :func:`id_arrow` turns them back into
the input's Arrow type for the labels. Other binary columns (levels of a categorical or
``input.describe`` column) are read as hex text too.
"""

from __future__ import annotations

import datetime
import decimal
import difflib
import functools
import operator
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recluster.compute import temporal
from recluster.compute.preprocess import MISSING, OTHER, categorical_strings
from recluster.config import InputConfig
from recluster.errors import ConfigError, InputDataError

#: Columns pandas writes for an unnamed index (a RangeIndex is metadata only, no column).
_PANDAS_INDEX = re.compile(r"__index_level_\d+__")
#: Why such a column is no feature, in every message that says so.
PANDAS_INDEX_LEFT_OUT = ("named as pandas names an unnamed index: left out of the features "
                         "(list it in input.features or input.categorical to use it)")


@dataclass(frozen=True)
class TableSchema:
    """The columns a run reads, what each is, and their types (original names throughout).

    ``read_types`` is the one Arrow type each column is read with in every file; ``id_type``
    the id's type in the input, which the labels keep.
    """

    id_column: str
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    stratify_by: str | None
    id_type: pa.DataType = pa.int64()
    read_types: tuple[tuple[str, pa.DataType], ...] = ()
    #: ``input.describe``: read and profiled, never a feature (keys after every other column)
    describe: tuple[str, ...] = ()
    #: Columns named as pandas names an unnamed index (``__index_level_0__``): never read, and
    #: never a feature unless the config names them; kept here so that the run says so.
    index_columns: tuple[str, ...] = ()

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @property
    def columns(self) -> list[str]:
        cols = [self.id_column, *self.features]
        if self.stratify_by and self.stratify_by not in cols:
            cols.append(self.stratify_by)
        return cols + [c for c in self.describe if c not in cols]

    @property
    def describe_numeric(self) -> list[str]:
        """Descriptive columns read as numbers (profiled by mean and effect size): numbers, and
        dates, times and durations (:attr:`describe_temporal`). Not booleans: described, they
        are levels ``false`` / ``true``, as where declared categorical."""
        types = dict(self.read_types)
        temporal = set(self.describe_temporal)
        return [c for c in self.describe if c in types and (
            (_is_numeric(types[c]) and not pa.types.is_boolean(types[c])) or c in temporal)]

    @property
    def describe_temporal(self) -> list[str]:
        """Descriptive columns of a date, timestamp, time or duration type: read as numbers in
        the unit :mod:`recluster.compute.temporal` documents (:attr:`time_units`), profiled as
        quantities and shown as dates and times. Not the ``stratify_by`` column, whose values
        are the strata's levels."""
        types = dict(self.read_types)
        return [c for c in self.describe if c in types and c != self.stratify_by
                and temporal.unit_of(_decoded(types[c])) is not None]

    @property
    def time_units(self) -> dict[str, tuple[str, str | None]]:
        """Descriptive column -> ``(unit, time zone)`` of each of :attr:`describe_temporal`
        (see :data:`recluster.compute.temporal.UNITS`)."""
        types = dict(self.read_types)
        return {c: (temporal.unit_of(_decoded(types[c])), temporal.time_zone(_decoded(types[c])))
                for c in self.describe_temporal}

    @property
    def describe_categorical(self) -> list[str]:
        """Descriptive columns read as text (profiled by level)."""
        numeric = set(self.describe_numeric)
        return [c for c in self.describe if c not in numeric]

    def without(self, numeric: Sequence[str]) -> TableSchema:
        """This schema with the numeric features ``numeric`` no longer read (keys are positions:
        a frame read with the old schema has other keys)."""
        keep = [c for c in self.numeric if c not in numeric]
        gone = set(self.numeric) - set(keep) - {self.stratify_by, *self.describe}
        return replace(self, numeric=tuple(keep),
                       read_types=tuple((c, t) for c, t in self.read_types if c not in gone))

    @cached_property
    def keys(self) -> dict[str, str]:
        """Original column name -> internal key (``c0`` is the id). Built once per schema (its
        fields never change): rebuilt on every :meth:`key`, the keys of a 500-column table's
        features cost a quarter of a million steps each time, in every partition's stats."""
        return {c: f"c{i}" for i, c in enumerate(self.columns)}

    def key(self, name: str) -> str:
        return self.keys[name]

    def name(self, key: str) -> str:
        """The original name of an internal key (anything else is returned unchanged)."""
        return self._names.get(key, key)

    @cached_property
    def _names(self) -> dict[str, str]:
        return {k: c for c, k in self.keys.items()}

    @property
    def id_key(self) -> str:
        return self.key(self.id_column)

    @property
    def numeric_keys(self) -> list[str]:
        return [self.key(c) for c in self.numeric]

    @property
    def categorical_keys(self) -> list[str]:
        return [self.key(c) for c in self.categorical]

    @property
    def feature_keys(self) -> list[str]:
        return [self.key(c) for c in self.features]

    @property
    def stratum_key(self) -> str | None:
        return self.key(self.stratify_by) if self.stratify_by else None

    @property
    def read_schema(self) -> pa.Schema:
        """Every column read, under its original name, with the type all files are read as."""
        return pa.schema(list(self.read_types))


# ---------------------------------------------------------------------------- types


def _decoded(t: pa.DataType) -> pa.DataType:
    """The type of the values: a dictionary's value type, an extension type's storage (e.g.
    ``arrow.uuid``, what a Parquet UUID column reads as, is ``fixed_size_binary(16)``)."""
    if isinstance(t, pa.BaseExtensionType):
        t = t.storage_type
    return t.value_type if pa.types.is_dictionary(t) else t


def _kind(t: pa.DataType) -> str:
    """A type's family for cross-file comparison: flavours of one family are unified."""
    t = _decoded(t)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t) \
            or pa.types.is_fixed_size_binary(t):
        return "binary"
    if pa.types.is_signed_integer(t):
        return "signed integer"
    if pa.types.is_unsigned_integer(t):
        return "unsigned integer"
    if pa.types.is_floating(t):
        return "floating point"
    return str(t)


#: Kinds of number that one column may mix across files (pandas writes an integer column that
#: holds a null as float64, so one file of a table written in pieces has floats where the
#: others have integers): read as float64, as every numeric feature is used.
_NUMBERS = ("signed integer", "unsigned integer", "floating point")


def _family(t: pa.DataType, key: bool) -> str:
    """What must agree across files for one column: its kind (:func:`_kind`), except that a
    column other than the id (``key``) may mix integers and floats."""
    kind = _kind(t)
    return "number" if kind in _NUMBERS and not key else kind


def _unify(types: Sequence[pa.DataType]) -> pa.DataType:
    """The one type a column of these types (one :func:`_family`) is read as."""
    plain = [_decoded(t) for t in types]
    if len({_kind(t) for t in plain}) > 1:  # integers and floats, or signed and unsigned
        return pa.float64()
    kind = _kind(plain[0])
    if kind == "string":
        return pa.string()
    if kind == "binary":
        first = plain[0]
        return first if all(t == first for t in plain) and pa.types.is_fixed_size_binary(first) \
            else pa.binary()
    if kind in ("signed integer", "unsigned integer", "floating point"):
        return max(plain, key=lambda t: t.bit_width)
    return plain[0]


def _typed(found: Sequence[tuple[str, pa.DataType]]) -> list[tuple[str, pa.DataType]]:
    """``(path, type)`` pairs without Arrow's null type (a column with no values), unless
    every file has it."""
    return [(p, t) for p, t in found if not pa.types.is_null(t)] or list(found)


def _is_numeric(t: pa.DataType) -> bool:
    """Read as numbers; null (no value in any file) too, so validation names it as empty."""
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) \
        or pa.types.is_decimal(t) or pa.types.is_null(t)


def _refuse_undeclared(numeric: Sequence[str], read: dict[str, pa.DataType],
                       seen: dict[str, list[tuple[str, pa.DataType]]], inferred: bool,
                       model: str | None = None) -> None:
    """Refuse feature columns that are not numbers and not declared categorical, all of them in
    one message (a table with five text columns is one fix, not five runs). ``model``: the run
    whose models fixed the roles (``score``), so the fix is the input's, not a setting's."""
    bad = [c for c in numeric if not _is_numeric(read[c])]
    if not bad:
        return
    path = seen[bad[0]][0][0]
    kinds = ", ".join(f"'{c}' ({seen[c][0][1]})" for c in bad)
    if model is not None:
        raise InputDataError(
            f"feature column{'s' if len(bad) > 1 else ''} {kinds} "
            f"{'are' if len(bad) > 1 else 'is'} not numeric (in {path}), but the run at {model} "
            f"was fitted on {'them' if len(bad) > 1 else 'it'} as numbers: write "
            f"{'them' if len(bad) > 1 else 'it'} as numbers (integers or floats) to score")
    text = [c for c in bad if _kind(read[c]) in ("string", "binary", "dictionary")]
    hint = (f"declare text columns to use under input.categorical (e.g. categorical: "
            f"[{', '.join(text)}]), " if text else "")
    where = ("input.features is not given, so every column but the id is one; leave columns "
             "out with input.exclude, " if inferred else "")
    raise InputDataError(
        f"feature column{'s' if len(bad) > 1 else ''} {kinds} "
        f"{'are' if len(bad) > 1 else 'is'} not numeric (in {path}): {where}{hint}or list the "
        f"features to use in input.features. Dates and times are not features: leave them out, "
        f"or write a number such as days since an event")


def _check_id_type(name: str, t: pa.DataType, path: str) -> None:
    kind = _kind(t)
    if kind in ("string", "binary", "signed integer", "unsigned integer"):
        return
    why = ("floating-point values are not exact keys" if kind == "floating point" else
           "nested values are not keys" if pa.types.is_nested(t) else "not a supported key type")
    raise InputDataError(
        f"id column '{name}' has type {t} in {path}: {why}. Ids must be integers (int8..int64, "
        f"uint8..uint64), strings (string, large_string, dictionary<string>) or binary (binary, "
        f"fixed_size_binary, e.g. UUIDs, also as Parquet's UUID type)")


def _check_names(info) -> None:
    seen: dict[str, int] = {}
    for n in info.schema.names:
        seen[n] = seen.get(n, 0) + 1
    dup = sorted(n for n, k in seen.items() if k > 1)
    if dup:
        where = (" (once as a column of the file, once as its Hive partition folder "
                 f"'{dup[0]}=...')" if dup[0] in getattr(info, "partition_columns", ()) else "")
        raise InputDataError(
            f"column '{dup[0]}' appears {seen[dup[0]]} times in {info.url}{where}; column names "
            f"must be unique")


def _looks(name: str) -> str:
    return unicodedata.normalize("NFKC", name).casefold().strip()


def _near_names(name: str, names: Sequence[str]) -> str:
    """A hint naming the file's columns that differ from ``name`` only in case, surrounding
    whitespace or Unicode normalisation (``'é'`` typed as one character or as ``e`` + accent
    look the same in a message), or ``""``."""
    def shown(n: str) -> str:  # escaped where it would print like the name asked for
        return ascii(n) if unicodedata.normalize("NFC", n) == unicodedata.normalize("NFC", name) \
            else repr(n)

    near = [shown(n) for n in names if n != name and _looks(n) == _looks(name)]
    return f" (it has {', '.join(near)}: names must match exactly)" if near else ""


def resolve_schema(infos: Sequence, cfg: InputConfig, stratify_by: str | None,
                   model: str | None = None) -> TableSchema:
    """Check footers against the config and decide each column's role and read type.

    ``model`` is the location of the run whose columns ``cfg`` repeats (``recluster score``):
    messages then say what the input must be, not which setting to change.

    Raises
    ------
    InputDataError
        naming the file and column: a duplicate column name, a missing id, feature or
        ``stratify_by`` column, a column whose type is of a different kind in two files, an id
        of an unsupported type, or a non-numeric feature not declared categorical.
    """
    first = infos[0]
    for info in infos:
        _check_names(info)
    if cfg.features is None:
        stray = [c for c in cfg.exclude if c not in first.schema.names]
        if stray:
            raise InputDataError(f"input.exclude names column '{stray[0]}', which {first.url} "
                                 f"does not have" + _near_names(stray[0], first.schema.names))
        candidates = [n for n in first.schema.names if n != cfg.id_column
                      and n not in cfg.describe and n not in cfg.exclude]
        as_index = [n for n in candidates  # (the stratify_by column is read, for its role)
                    if _PANDAS_INDEX.fullmatch(n) and n not in cfg.categorical
                    and n != stratify_by]
        features = [n for n in candidates if n not in as_index]
        if stratify_by in features and stratify_by not in cfg.categorical:
            features.remove(stratify_by)
    else:
        features, as_index = list(cfg.features), []
    if not features:
        why = (f" ('{as_index[0]}' is named as pandas names an index, so it is no feature by "
               f"default: list it in input.features or input.categorical to use it)"
               if as_index else "")
        raise InputDataError(f"{first.url} has no feature columns besides the id "
                             f"'{cfg.id_column}'{why}")
    unknown = [c for c in cfg.categorical if c not in features]
    if unknown:
        raise InputDataError(
            f"input.categorical names column '{unknown[0]}', which is not a feature column of "
            f"{first.url}")
    needed = [cfg.id_column, *features] + ([stratify_by] if stratify_by else []) \
        + list(cfg.describe)
    seen: dict[str, list[tuple[str, pa.DataType]]] = {}
    for info in infos:
        names = set(info.schema.names)
        for col in needed:
            if col not in names:
                role = "id column" if col == cfg.id_column else (
                    "stratify_by column" if col == stratify_by else
                    "describe column (input.describe)" if col in cfg.describe else "feature column")
                raise InputDataError(f"{role} '{col}' is missing from {info.url}"
                                     + _near_names(col, info.schema.names))
            t = info.schema.field(col).type
            # Only files that hold values decide the kind: a file listed earlier whose column
            # has none (Arrow's null type) agrees with any type.
            typed = _typed(seen.get(col, []))
            key = col == cfg.id_column
            if typed and not pa.types.is_null(typed[0][1]) and not pa.types.is_null(t) \
                    and _family(typed[0][1], key) != _family(t, key):
                path0, t0 = typed[0]
                raise InputDataError(
                    f"column '{col}' has type {t} in {info.url} but {t0} in {path0}: the files' "
                    f"schemas disagree")
            seen.setdefault(col, []).append((info.url, t))
    # A file whose column holds no value at all (pandas writes an all-None or empty object column
    # with Arrow's null type) fits any type: the other files decide it.
    seen = {c: _typed(v) for c, v in seen.items()}
    for path, t in seen[cfg.id_column]:
        _check_id_type(cfg.id_column, t, path)
    id_types = {t for _, t in seen[cfg.id_column]}
    read = {c: _unify([t for _, t in seen[c]]) for c in dict.fromkeys(needed)}
    if _kind(read[cfg.id_column]) in ("signed integer", "unsigned integer") and \
            len({_kind(t) for t in id_types}) > 1:
        raise InputDataError(
            f"id column '{cfg.id_column}' is signed in some files and unsigned in others; "
            f"write it with one integer type")
    id_type = id_types.pop() if len(id_types) == 1 else read[cfg.id_column]
    for c in cfg.describe:
        path, t = seen[c][0]
        if pa.types.is_nested(read[c]):
            raise InputDataError(f"describe column '{c}' has type {t} (in {path}): nested values "
                                 "cannot be profiled; leave it out of input.describe")
        why = temporal.refusal(c, _decoded(read[c]), path)
        if why:
            raise InputDataError(why)
    categorical = [c for c in features if c in cfg.categorical]
    numeric = [c for c in features if c not in cfg.categorical]
    # A list, struct or map declared categorical (or the strata) was read as levels named by
    # numpy's repr of the value ("['a' 'b']"), in facts, names and the model files.
    for c in dict.fromkeys([*categorical, *([stratify_by] if stratify_by else [])]):
        if pa.types.is_nested(_decoded(read[c])):
            path, t = seen[c][0]
            role = "input.categorical" if c in categorical else "sample.stratify_by"
            raise InputDataError(
                f"{'categorical' if c in categorical else 'stratify_by'} column '{c}' has type "
                f"{t} (in {path}): nested values (lists, structs, maps) are not levels; leave "
                f"it out of {role} (and the features: input.exclude), or write it as text")
    _refuse_undeclared(numeric, read, seen, cfg.features is None, model)
    ts = TableSchema(cfg.id_column, tuple(numeric), tuple(categorical), stratify_by, id_type,
                     describe=tuple(cfg.describe))
    return TableSchema(ts.id_column, ts.numeric, ts.categorical, ts.stratify_by, id_type,
                       tuple((c, read[c]) for c in ts.columns), ts.describe, tuple(as_index))


# ---------------------------------------------------------------------------- values


def _hex(arr: pa.Array) -> np.ndarray:
    return np.array([None if v is None else v.hex() for v in arr.to_pylist()], dtype=object)


def table_to_frame(table: pa.Table, ts: TableSchema) -> pd.DataFrame:
    """A piece read under internal keys, as the pandas frame the stages work on.

    The id becomes its canonical value (see the module docstring); booleans become 0/1 floats
    (null as NaN), or the texts ``false`` / ``true`` where read as levels; strings stay text;
    any binary column becomes lowercase hex text (its bytes need not be UTF-8, and Dask would
    decode them as such). Integer levels (categorical or
    ``stratify_by`` columns) stay exact integers where the piece holds nulls, instead of
    pandas' float64 (which rounds values beyond 2**53, so that one level would read as two in
    pieces with and without nulls).
    A descriptive date, time or duration (:attr:`TableSchema.describe_temporal`) becomes
    float64 in its unit (:func:`recluster.compute.temporal.to_numbers`; missing as NaN).

    Parameters
    ----------
    table : pyarrow.Table (n, k) with columns named by :attr:`TableSchema.keys`

    Returns
    -------
    pandas.DataFrame (n, k)
    """
    return tables_to_frame([table], ts, table.column_names)


def _level_keys(ts: TableSchema) -> set[str]:
    """Keys of the columns read as levels (categorical, the stratum, descriptive categorical)."""
    return {*ts.categorical_keys, ts.stratum_key, *(ts.key(c) for c in ts.describe_categorical)}


def _in_block(key: str, t: pa.DataType, levels: set[str]) -> bool:
    """Whether a column goes into the float block: float64 and not read as levels."""
    return key not in levels and pa.types.is_float64(t)


def read_groups(ts: TableSchema, size: int) -> list[list[tuple[str, str]]]:
    """The groups of ``(column, key)`` a piece is read in, in turn (:func:`tables_to_frame`):
    every column at once, or, where more than ``size`` columns go into the float block, the
    other columns and then the block's ``size`` at a time. A piece's decoded Arrow columns
    then take one group's memory instead of all of them (500 columns of 50,000 rows: a worker's
    Arrow high-water mark 874 -> 365 MB at 100 a group), and a fresh worker's first reads touch
    that much less new memory."""
    columns = list(ts.keys.items())
    types, levels = dict(ts.read_types), _level_keys(ts)
    floats = [(c, k) for c, k in columns if c in types and _in_block(k, types[c], levels)]
    if len(floats) <= size:
        return [columns]
    block = set(floats)
    others = [ck for ck in columns if ck not in block]
    return ([others] if others else []) + [floats[i:i + size] for i in range(0, len(floats), size)]


def _column_values(col: pa.ChunkedArray, level: bool, number: bool = False):
    """One column that is not in the float block, as pandas holds it (see
    :func:`table_to_frame`; ``level``: read as levels: integers exact where nulls are, booleans
    as the texts ``false`` / ``true``, their spelling in Arrow, SQL and ``input.filters``;
    ``number``: also a numeric feature (a ``stratify_by`` column listed in ``input.features``),
    whose booleans stay 0/1 and whose integers with nulls are floats, as a feature's are:
    Python integers and ``NA`` stopped the fit)."""
    col = col.combine_chunks()
    if isinstance(col.type, pa.BaseExtensionType):
        col = col.storage
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if _kind(col.type) == "binary":  # bytes need not be UTF-8: hex text, like the id
        return pd.Series(_hex(col), dtype="str")
    if pa.types.is_boolean(col.type):
        # As a level, not 0/1: a bool declared categorical was profiled and explained as
        # "flag = 0", a number its reader had to decode.
        col = pc.cast(col, pa.string() if level and not number else pa.float64())
    return col.to_pandas(integer_object_nulls=level and not number
                         and pa.types.is_integer(col.type) and col.null_count > 0)


def tables_to_frame(tables: Iterable[pa.Table], ts: TableSchema,
                    order: Sequence[str]) -> pd.DataFrame:
    """:func:`table_to_frame` of a piece whose columns come in several tables of the same rows
    (:func:`read_groups`), taken one after the other: each table's float64 columns are copied
    into the block as it comes and the table let go before the next is read.

    Parameters
    ----------
    tables : iterable of pyarrow.Table (n, k_i), columns named by :attr:`TableSchema.keys`
    order : every column's key, in the frame's order
    """
    levels = _level_keys(ts)
    numeric = set(ts.numeric_keys)
    types = {ts.key(c): t for c, t in ts.read_types}
    times = {ts.key(c) for c in ts.describe_temporal}
    cols, values, filled = {}, None, 0
    floats: list[str] | None = None
    row: dict[str, int] = {}
    for table in tables:
        if floats is None:  # the block's columns: every float64 column that is not a level
            given = {name: table.schema.field(name).type for name in table.column_names}
            floats = [k for k in order
                      if _in_block(k, given.get(k, types.get(k, pa.null())), levels)]
            if len(floats) > 1:
                values = _block_values(len(floats), table.num_rows)
                row = {k: j for j, k in enumerate(floats)}
        for name in table.column_names:
            if name in row:
                _fill(values[row[name]], table.column(name))
                filled += 1
            elif name in times:  # a date or time described: a number in its unit
                cols[name] = temporal.to_numbers(table.column(name))
            else:
                cols[name] = _column_values(table.column(name), name in levels,
                                            name in numeric)
        del table
    if values is None:
        return pd.DataFrame(cols)[list(order)] if cols else pd.DataFrame(cols)
    if filled != len(row):
        raise ValueError(f"{len(row) - filled} float column(s) of the block were not read")
    # copy=False: pandas 3 copies an array given to the constructor, which was a second copy
    # of every value (same layout either way: one (k, n) C-ordered block).
    block = pd.DataFrame(values.T, columns=list(row), copy=False)
    # Under copy-on-write, the concatenation and the reordering are views of both frames.
    return pd.concat([pd.DataFrame(cols, index=block.index), block], axis=1)[list(order)]


def _block_values(k: int, n: int) -> np.ndarray:
    """A (k, n) float64 array in Arrow's memory, the float block's values.

    The block's memory comes from Arrow's memory pool (the one that decoded the piece), not
    from ``malloc``: glibc maps a block this large afresh for every read and unmaps it when the
    frame goes, so that each pass paid the first touch of hundreds of MB again (the operating
    system's page faults: several times the copy itself on a VM that hands freed memory back
    to its host). Arrow's pool reuses what the previous read freed (see
    :data:`recluster.parallel.client.WORKER_ENV`).
    """
    return np.frombuffer(pa.allocate_buffer(8 * k * n), dtype=np.float64).reshape(k, n)


def _fill(row: np.ndarray, column: pa.ChunkedArray) -> None:
    """Copy a float64 column into its row of the block, each Arrow chunk once (nulls as NaN,
    as ``to_pandas`` gives them). Column by column, ``to_pandas`` and the frame's
    consolidation of the columns into one block copied every value twice; for a table of
    hundreds of numeric columns, reading a piece then cost more than decoding it."""
    start = 0
    for chunk in column.chunks:
        row[start:start + len(chunk)] = chunk.to_numpy(zero_copy_only=False)
        start += len(chunk)


def empty_frame(ts: TableSchema) -> pd.DataFrame:
    """The zero-row frame of :func:`table_to_frame` (Dask's ``meta``)."""
    schema = pa.schema([(ts.key(c), t) for c, t in ts.read_types])
    return table_to_frame(schema.empty_table(), ts)


def id_arrow(ids: pd.Series | np.ndarray, id_type: pa.DataType) -> pa.Array:
    """Canonical id values (see :func:`table_to_frame`) back as an array of the input's type."""
    values = pd.Series(ids).to_numpy()
    if _kind(id_type) == "binary":
        data = pa.array([bytes.fromhex(v) for v in values], type=pa.binary())
    elif _kind(id_type) == "string":
        data = pa.array(values.astype(object), type=pa.string())
    else:
        data = pa.array(values)
    return data.cast(id_type)


# ---------------------------------------------------------------------------- partition checks


def partition_stats(df: pd.DataFrame, schema: TableSchema, path: str) -> dict:
    """Counts one partition (columns under internal keys) contributes to the validation pass.

    Returns
    -------
    dict with ``rows``, ``null_ids``, ``inf``, ``missing``, ``span`` ([min, max] of the finite
    values, per numeric column), ``distinct_whole`` (numeric columns whose values here are
    distinct whole numbers, see :func:`row_number_candidates`) and ``levels`` (up to two
    distinct levels, per categorical column), ``reserved`` (per categorical column, the rows
    whose value is spelt like a level the job makes, ``__missing__`` or ``__other__``), keyed
    by original column names; ``path``
    """
    inf = {}
    missing = {}
    span = {}
    distinct_whole = []
    levels = {}
    reserved = {}
    for c in schema.numeric:
        x = _numeric_values(df, schema, c)
        lo, hi = (x.min(), x.max()) if x.size else (np.nan, np.nan)
        if np.isfinite(lo) and np.isfinite(hi):  # the common column: two reductions say it all
            inf[c], missing[c], span[c] = 0, 0, [float(lo), float(hi)]
            if _distinct_whole(x, lo, hi):
                distinct_whole.append(c)
            continue
        inf[c] = int(np.isinf(x).sum())
        missing[c] = int(np.isnan(x).sum())
        finite = x[np.isfinite(x)]
        span[c] = [float(finite.min()), float(finite.max())] if finite.size else None
        if _distinct_whole(x):
            distinct_whole.append(c)
    for c in schema.categorical:
        col = df[schema.key(c)]
        missing[c] = int(col.isna().sum())
        strings = categorical_strings(col)
        levels[c] = sorted(pd.unique(strings))[:2]
        spelt = _spelt_reserved(strings, missing[c])
        if spelt:
            reserved[c] = spelt
    return {"rows": len(df), "null_ids": int(df[schema.id_key].isna().sum()),
            "inf": inf, "missing": missing, "span": span, "distinct_whole": distinct_whole,
            "levels": levels, "reserved": reserved, "path": path}


def _spelt_reserved(strings: np.ndarray, missing: int) -> dict[str, int]:
    """Rows of a categorical column (its :func:`categorical_strings`, ``missing`` of them null)
    whose value is spelt ``__missing__`` or ``__other__``, by value (only those present)."""
    spelt = {v: int(np.count_nonzero(strings == v)) for v in (MISSING, OTHER)}
    spelt[MISSING] -= missing
    return {v: n for v, n in spelt.items() if n}


def _reserved_levels(stats: Sequence[dict]) -> InputDataError | None:
    """Categorical values spelt like the levels the job makes (all of them in one message):
    a value '__missing__' was counted as missing (a segment's facts said "kind = missing" of
    rows that hold a value) and one '__other__' vanished into the bucket of rare levels, which
    no fact names, even in a column of three levels."""
    found: dict[tuple[str, str], list] = {}
    for s in stats:
        for c, spelt in s.get("reserved", {}).items():
            for v, n in spelt.items():
                rows_path = found.setdefault((c, v), [0, s["path"]])
                rows_path[0] += n
    if not found:
        return None
    what = {MISSING: "missing values", OTHER: "the bucket of rare levels"}
    listed = "; ".join(f"categorical column '{c}' holds the value '{v}' in {n} rows (e.g. in "
                       f"{path}), the name recluster gives {what[v]}"
                       for (c, v), (n, path) in found.items())
    return InputDataError(f"{listed}: those rows would be taken for them; rename the value "
                          "(or write null where it means missing)")


def _distinct_whole(x: np.ndarray, lo: float | None = None, hi: float | None = None) -> bool:
    """Whether ``x`` (n,) holds distinct whole numbers and nothing else (no missing value). The
    range test rejects most columns (years, counts, measurements) before any sort; ``lo`` and
    ``hi``, if given, are ``x.min()`` and ``x.max()``."""
    if x.size == 0:
        return True
    if lo is None or hi is None:
        lo, hi = x.min(), x.max()
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi - lo + 1 < x.size \
            or not np.array_equal(x, np.floor(x)):
        return False
    return bool(np.all(np.diff(np.sort(x)) > 0))


#: Whole numbers that never repeat in ``k`` rows although they lie within ``w`` values: drawn
#: at random they would all differ with probability about ``exp(-k**2 / (2 w))``, under 1% from
#: ``k**2 >= 10 w`` on. Such a column numbers the rows of some table this input is a slice of
#: (``input.filters``, a Hive partition, R's ``rownames`` kept through a subset: AER's
#: CPS1985 holds 534 of 1..1100) or keys them; it measures nothing.
_NUMBERING_EVIDENCE = 10
#: Why a column counts as a row number, in every message that says so.
ROW_NUMBER_EVIDENCE = ("distinct whole numbers packed too densely to be chance, over the input "
                       "or from 0 or 1 in each file")


def row_number_candidates(stats: Sequence[dict], schema: TableSchema) -> list[str]:
    """Numeric columns that may number the rows: distinct whole numbers in every partition,
    either exactly as many values between the smallest and the largest as the input has rows,
    or so many rows within that range that values drawn at random would repeat (see
    ``_NUMBERING_EVIDENCE``). They number the rows if, besides, no value repeats across
    partitions (the caller counts).

    Such a column (an index written out as ``rownames``, ``Unnamed: 0``, ``...1``, also with
    the gaps a filter or a subset leaves) says where a row sat in some file, nothing about it;
    as a feature it would put a sort order into the embedding and the explanations.

    Parameters
    ----------
    stats : per-partition dicts of :func:`partition_stats`
    schema : TableSchema

    Returns
    -------
    list of column names, in the schema's order
    """
    rows = sum(s["rows"] for s in stats)
    if rows < 3:
        return []
    out = []
    for c in schema.numeric:
        if not all(c in s.get("distinct_whole", ()) for s in stats):
            continue
        spans = [s["span"][c] for s in stats if s["rows"]]
        width = max(hi for _, hi in spans) - min(lo for lo, _ in spans) + 1
        if width == rows or rows * rows >= _NUMBERING_EVIDENCE * width:
            out.append(c)
    return out


def per_file_numberings(stats: Sequence[dict], schema: TableSchema,
                        overlapping: bool = False) -> list[str]:
    """Numeric columns that number the rows of each file afresh: in every file of two or more,
    exactly the whole numbers ``0..n-1`` or ``1..n`` for its ``n`` rows, in any order.

    Each file exported on its own (R's ``rownames`` per export, ``df.reset_index()`` per
    shard, ``Unnamed: 0`` of each CSV) restarts its numbering, so the values repeat across
    files and :func:`row_number_candidates` does not see a numbering; as a feature it would
    put each row's position in its file into the segments. Proven from the stats alone: the
    pieces of one file hold distinct whole numbers in spans that do not overlap, so no value
    repeats within the file. At least 10 rows beyond one per file, as no numbering is evidence
    with one row.

    Parameters
    ----------
    stats : per-partition dicts of :func:`partition_stats` (``path``: the piece's file)
    schema : TableSchema
    overlapping : also the columns whose pieces of one file hold spans that overlap (a file
        read in several pieces, its numbering not in row order): candidates only, as the
        stats cannot tell whether a value repeats across the pieces; the caller counts
        (``recluster.parallel.passes.distinct_per_file``)

    Returns
    -------
    list of column names, in the schema's order
    """
    files: dict[str, list[dict]] = {}
    for s in stats:
        if s["rows"]:
            files.setdefault(s["path"], []).append(s)
    if len(files) < 2:
        return []
    out = []
    for c in schema.numeric:
        if not all(c in s.get("distinct_whole", ()) and s["span"].get(c) for s in stats
                   if s["rows"]):
            continue
        extra = 0
        for parts in files.values():
            spans = sorted(s["span"][c] for s in parts)
            rows = sum(s["rows"] for s in parts)
            lo, hi = spans[0][0], max(h for _, h in spans)
            if lo not in (0, 1) or hi - lo + 1 != rows or not overlapping and \
                    any(b[0] <= a[1] for a, b in zip(spans, spans[1:], strict=False)):
                break
            extra += rows - 1
        else:
            if extra >= _NUMBERING_EVIDENCE:
                out.append(c)
    return out


def _numeric_values(df: pd.DataFrame, schema: TableSchema, column: str) -> np.ndarray:
    """Numeric feature ``column`` of a partition as float64, missing values as NaN; shape (n,)
    (a read-only view of a float64 column)."""
    col = df[schema.key(column)]
    if col.dtype == np.float64:  # already what the conversion gives: no copy per column
        return col.to_numpy()
    return pd.to_numeric(df[schema.key(column)], errors="coerce").to_numpy(dtype=np.float64,
                                                                            na_value=np.nan)


def null_ids(id_column: str, n: int, path: str) -> InputDataError:
    """The refusal of an id column with ``n`` missing values in file ``path``."""
    return InputDataError(f"id column '{id_column}' has {n} missing values in {path}")


def _infinite(column: str, n: int, path: str) -> InputDataError:
    return InputDataError(f"column '{column}' has {n} infinite values in {path}; replace them "
                          f"(e.g. by null to have them imputed) or drop the column")


def refuse_unroutable_rows(df: pd.DataFrame, schema: TableSchema, path: str) -> pd.DataFrame:
    """``df`` (a partition under internal keys) unchanged, or an error naming the column and
    ``path`` if an id is missing or a numeric feature is infinite: a row without an id cannot be
    labelled, an infinite value would be routed as some finite one, and a categorical value
    spelt ``__missing__`` or ``__other__`` as a missing value or a rare level, silently (used
    where there is no validation pass, e.g. ``recluster score``; the checks :func:`check_stats`
    makes of a run)."""
    n = int(df[schema.id_key].isna().sum())
    if n:
        raise null_ids(schema.id_column, n, path)
    for c in schema.numeric:
        x = _numeric_values(df, schema, c)
        if x.size and np.isfinite(x.min()) and np.isfinite(x.max()):
            continue  # nothing infinite (nor missing): cheaper than counting
        n = int(np.isinf(x).sum())
        if n:
            raise _infinite(c, n, path)
    for c in schema.categorical:  # new rows spelling the job's own levels would be routed as them
        col = df[schema.key(c)]
        spelt = _spelt_reserved(categorical_strings(col), int(col.isna().sum()))
        if spelt:
            raise _reserved_levels([{"reserved": {c: spelt}, "path": path}])
    return df


def duplicate_examples(found: pd.DataFrame) -> str:
    """Where some duplicated ids are, for the error message.

    Parameters
    ----------
    found : DataFrame (n, 2) with ``__id__`` and ``path``: one row per input row that holds one
        of the duplicated ids looked up

    Returns
    -------
    str, e.g. ``"; e.g. 'a' (2 rows: in x.parquet, y.parquet)"``, or ``""``
    """
    out = []
    for value, rows in found.groupby("__id__", sort=True):
        if len(rows) > 1:
            files = ", ".join(dict.fromkeys(rows["path"]))
            out.append(f"{value!r} ({len(rows)} rows: in {files})")
    return "; e.g. " + "; ".join(out) if out else ""


def duplicate_ids(id_column: str, rows: int, n_unique: int,
                  duplicates: pd.DataFrame | None = None, where: str = "") -> InputDataError:
    """The refusal of an id column that repeats values (labels are keyed by the id: a
    repeated one could not be told apart); ``duplicates`` as :func:`duplicate_examples` takes,
    ``where`` e.g. ``" of s3://b/new/"``."""
    return InputDataError(
        f"id column '{id_column}'{where} has duplicate values: {rows} rows but {n_unique} "
        "distinct ids" + ("" if duplicates is None else duplicate_examples(duplicates)))


def check_stats(stats: Sequence[dict], n_unique_ids: int, schema: TableSchema,
                min_rows: int, duplicates: pd.DataFrame | None = None,
                what: str = "input") -> dict:
    """Combine per-partition stats and raise on what makes the input unusable.

    ``duplicates`` (see :func:`duplicate_examples`) names where some duplicated ids are;
    ``what`` the rows read, in messages (e.g. the slice ``input.filters`` keeps).

    Returns
    -------
    dict with ``rows``, ``missing`` (per column, only columns with missing values) and
    ``constant`` (columns with a single value, numeric or categorical: they carry no information)
    """
    rows = sum(s["rows"] for s in stats)
    for s in stats:
        if s["null_ids"]:
            raise null_ids(schema.id_column, s["null_ids"], s["path"])
        bad = {c: n for c, n in s["inf"].items() if n}
        if bad:
            c, n = sorted(bad.items())[0]
            raise _infinite(c, n, s["path"])
    if n_unique_ids != rows:
        raise duplicate_ids(schema.id_column, rows, n_unique_ids, duplicates)
    reserved = _reserved_levels(stats)
    if reserved is not None:
        raise reserved
    if rows < min_rows:
        raise InputDataError(
            f"{what} has {rows} rows; the embedding needs at least {min_rows} "
            f"(embedding.n_neighbors + 2)")
    missing: dict[str, int] = {}
    for s in stats:
        for c, n in s["missing"].items():
            missing[c] = missing.get(c, 0) + n
    # All of them in one message, in the table's order: a table with eleven empty columns
    # (tidyr's billboard, weeks 66-76) is one fix, not eleven runs.
    all_missing = [c for c in schema.features if missing.get(c) == rows]
    if all_missing:
        names = ", ".join(f"'{c}'" for c in all_missing)
        one = len(all_missing) == 1
        raise InputDataError(
            f"feature column{'' if one else 's'} {names} {'has' if one else 'have'} no values "
            f"at all in {what if what.startswith('the ') else 'the ' + what}: leave "
            f"{'it' if one else 'them'} out with input.exclude (or "
            f"list the features to use in input.features)")
    spans: dict[str, list[float]] = {}
    levels: dict[str, set[str]] = {}
    for s in stats:
        for c, sp in s.get("span", {}).items():
            if sp is not None:
                lo, hi = spans.get(c, sp)
                spans[c] = [min(lo, sp[0]), max(hi, sp[1])]
        for c, lv in s.get("levels", {}).items():
            levels.setdefault(c, set()).update(lv)
    constant = sorted([c for c, (lo, hi) in spans.items() if lo == hi]
                      + [c for c, lv in levels.items() if len(lv) == 1])
    return {"rows": rows, "missing": {c: n for c, n in missing.items() if n}, "constant": constant}


def degraded_inputs(summary: dict, infos: Sequence, schema: TableSchema) -> list[dict]:
    """The manifest's ``degraded`` entries the input itself causes (each a defined behaviour):
    empty files skipped, missing values imputed, constant columns that carry nothing, row-number
    columns left out of the features."""
    out: list[dict] = [{"file": i.url, "what": "no rows: skipped"} for i in infos if i.n_rows == 0]
    for c, n in sorted(summary["missing"].items()):
        how = ("as the level '__missing__'" if c in schema.categorical
               else "with the median of each node's sample")
        out.append({"column": c, "what": f"{n} missing values imputed {how}"})
    for c in summary["constant"]:
        what = ("constant: one level in every row, carries no information" if c in
                schema.categorical else "constant: one value in every row, carries no "
                "information (scaled to 0)")
        out.append({"column": c, "what": what})
    for c in summary.get("row_numbers", ()):
        out.append({"column": c, "what": f"a row number ({ROW_NUMBER_EVIDENCE}): left out of "
                                         "the features"})
    for c in schema.index_columns:
        out.append({"column": c, "what": PANDAS_INDEX_LEFT_OUT})
    return out



# ---------------------------------------------------------------------------- filters


@dataclass(frozen=True)
class RowFilter:
    """``input.filters`` checked against the table: terms with values typed for their column.

    ``dnf`` holds conjunctions (any may hold) of ``(column, op, value)`` terms (all must hold);
    ``value`` is a ``pyarrow.Scalar`` of the column's type (a list of them for ``in`` and
    ``not in``). ``types`` is each filtered column's Arrow type, as the table is read.
    """

    dnf: tuple[tuple[tuple[str, str, Any], ...], ...]
    types: tuple[tuple[str, pa.DataType], ...]

    @property
    def columns(self) -> list[str]:
        return [c for c, _ in self.types]

    def expression(self, only: Sequence[str] | None = None) -> pc.Expression | None:
        """The filter as a ``pyarrow.compute.Expression``; with ``only``, terms on other columns
        are left out (taken as holding), which gives a filter on those columns alone that keeps
        everything the whole filter keeps (None: nothing to test)."""
        ors = []
        for group in self.dnf:
            ands = [_term(c, op, v) for c, op, v in group if only is None or c in only]
            if not ands:  # this conjunction may hold whatever those columns are
                return None
            ors.append(functools.reduce(operator.and_, ands))
        return functools.reduce(operator.or_, ors)

    def record(self) -> list[list[list[Any]]]:
        """The filter as plain data (the manifest's ``input.filters``)."""
        def plain(v):
            return [plain(x) for x in v] if isinstance(v, list) else _plain(v.as_py())
        return [[[c, op, plain(v)] for c, op, v in group] for group in self.dnf]


def _plain(v: Any) -> Any:
    if isinstance(v, decimal.Decimal):  # JSON for the manifest, exact
        return int(v) if v == v.to_integral_value() else \
            float(v) if decimal.Decimal(repr(float(v))) == v else str(v)
    return v.isoformat() if hasattr(v, "isoformat") else v.hex() if isinstance(v, bytes) else v


def _value_set(value: list[pa.Scalar]) -> pa.Array:
    """The values of an ``in`` list as one array. Decimals of several scales get the finest
    at full precision (``isin`` casts the column to the set's type: 94.55 alone would make it
    decimal(4, 2), which a column value of 1089.0 does not fit)."""
    kind = value[0].type
    if pa.types.is_decimal(kind):
        kind = pa.decimal128(38, max(v.type.scale for v in value))
    return pa.array([v.as_py() for v in value], type=kind)


def _term(col: str, op: str, value: Any) -> pc.Expression:
    f = pc.field(col)
    if op == "in":
        return f.isin(_value_set(value))
    if op == "not in":
        return ~f.isin(_value_set(value)) & f.is_valid()
    return {"=": f.__eq__, "!=": f.__ne__, "<": f.__lt__, "<=": f.__le__, ">": f.__gt__,
            ">=": f.__ge__}[op](value)


def _time_scalar(value: str | datetime.date, t: pa.DataType) -> pa.Scalar:
    """A date or time (ISO-8601 text, or as YAML reads it) as a scalar of the date or timestamp
    type ``t``: a date is its midnight, a time without an offset is UTC. A time is no date:
    a time of day other than midnight, or an offset, on a date column raises ValueError (cast,
    it would be cut to its day and ``< 2024-01-01T12:00`` would leave out that day)."""
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value.strip())
    if pa.types.is_date(t):
        if isinstance(value, datetime.datetime):
            if value.tzinfo is not None or value.time() != datetime.time():
                raise ValueError("a time for a date")
            value = value.date()
        return pa.scalar(value, t)
    if not isinstance(value, datetime.datetime):
        value = datetime.datetime(value.year, value.month, value.day)
    if t.tz is not None and value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return pa.scalar(value).cast(t)


def _filter_value(col: str, t: pa.DataType, value: Any) -> pa.Scalar:
    """``value`` as a scalar to compare column ``col`` (type ``t``) with, or an error naming
    the column, the value and the type."""
    plain = _decoded(t)
    kind = _kind(plain)
    if kind in ("signed integer", "unsigned integer", "floating point") \
            or pa.types.is_decimal(plain):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        want = "a number"
    elif pa.types.is_boolean(plain):
        ok, want = isinstance(value, bool), "true or false"
    elif kind == "string":
        ok, want = isinstance(value, str), "text (quote it in YAML)"
    elif kind == "binary":
        ok, want = isinstance(value, bytes | str), "bytes or text"
    elif pa.types.is_date(plain):
        ok = isinstance(value, str | datetime.date) and not isinstance(value, bool)
        want = "a date (e.g. 2024-01-01; the column holds dates, not times)"
    elif pa.types.is_temporal(plain):
        ok = isinstance(value, str | datetime.date) and not isinstance(value, bool)
        want = "a date or time (e.g. 2024-01-01 or 2024-01-01T12:00:00)"
    else:
        raise ConfigError(f"input.filters: column '{col}' has type {t}, which a filter "
                             f"cannot compare")
    if ok:
        try:
            if kind == "binary" and isinstance(value, str):
                value = value.encode()
            if pa.types.is_date(plain) or pa.types.is_timestamp(plain):
                return _time_scalar(value, plain)
            if pa.types.is_decimal(plain):  # exact, at (at least) the column's scale
                exact = decimal.Decimal(str(value))
                return pa.scalar(exact, pa.decimal128(
                    38, max(plain.scale, -int(exact.as_tuple().exponent))))
            if pa.types.is_temporal(plain):
                return pa.scalar(value).cast(plain)
            return pa.scalar(value, plain) if kind in ("string", "binary") else pa.scalar(value)
        except (pa.ArrowException, ValueError, TypeError, OverflowError):
            pass
    raise ConfigError(f"input.filters: value {value!r} ({type(value).__name__}) cannot be "
                         f"compared with column '{col}' of type {t}; give {want}")


def resolve_filters(dnf: Sequence[Sequence[Sequence[Any]]], types: dict[str, pa.DataType],
                    where: str, only: Sequence[str] | None = None) -> RowFilter:
    """Check ``input.filters`` (canonical DNF, :func:`recluster.config.filter_dnf`) against the
    table's columns and type each value.

    Parameters
    ----------
    dnf : conjunctions of ``[column, op, value]``
    types : every column of the table (partition columns included) -> its Arrow type
    where : what the columns were read from (named in messages)
    only : check and keep only the terms on these columns (None: all, and every column must
        exist)

    Raises
    ------
    ConfigError
        naming the column: unknown (with near names), or a value its type cannot be compared
        with (naming value and type).
    """
    groups = []
    for group in dnf:
        terms = []
        for col, op, value in group:
            if only is not None and col not in only:
                continue
            if col not in types:
                near = _near_names(col, list(types)) or _similar(col, list(types))
                raise ConfigError(f"input.filters names column '{col}', which {where} does "
                                     f"not have{near}")
            t = types[col]
            typed = [_filter_value(col, t, v) for v in value] if isinstance(value, list) \
                else _filter_value(col, t, value)
            terms.append((col, op, typed))
        groups.append(tuple(terms))
    used = dict.fromkeys(c for g in groups for c, _, _ in g)
    return RowFilter(tuple(groups), tuple((c, types[c]) for c in used))


def _similar(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def column_types(infos: Sequence) -> dict[str, pa.DataType]:
    """Every column of the files (partition columns included) -> the one type it is read as
    (flavours unified as :func:`resolve_schema` does; the first file's kind where kinds differ).
    """
    found: dict[str, list[pa.DataType]] = {}
    for info in infos:
        for f in info.schema:
            found.setdefault(f.name, []).append(f.type)
    out = {}
    for name, types in found.items():
        typed = [t for _, t in _typed([("", t) for t in types])]
        same = [t for t in typed if _family(t, False) == _family(typed[0], False)]
        out[name] = _unify(same)
    return out
