"""Reading the input table with ``pyarrow.dataset``: listing the Parquet files, their footers
and Hive partition folders, cutting them into pieces of row groups, and reading one piece.

The listing is ours (hidden and ``_`` files skipped, Parquet extensions or none); everything
after it is ``pyarrow.dataset``: Hive partition folders (``country=SE/part-0.parquet``) are
parsed into typed partition columns, each file's footer gives its physical schema and row
groups, and a piece is read as a fragment restricted to its row groups, cast to the one schema
every file is read with (:func:`recluster.compute.schema.read_schema` decides it), so that a
column dictionary-encoded in one file and plain in another, or ``int32`` here and ``int64``
there, reads the same everywhere.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import posixpath
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from recluster.errors import InputDataError
from recluster.storage.fs import Location, is_folder_entry, is_local, storage_errors


@dataclass(frozen=True)
class FileInfo:
    """What a Parquet footer and the file's folder say about one file.

    ``schema`` holds the file's physical columns followed by its Hive partition columns;
    ``partition`` the partition values of its folder, as ``(column, value)`` pairs.
    """

    path: str
    schema: pa.Schema
    row_group_rows: tuple[int, ...]
    partition: tuple[tuple[str, Any], ...] = ()
    #: The row groups a filter may select (by their statistics); None: all of them.
    row_groups: tuple[int, ...] | None = None
    #: ``(table name, name in the file)`` of columns the file names otherwise (Iceberg: by
    #: field id); ``schema`` holds the table's names.
    renamed: tuple[tuple[str, str], ...] = ()
    #: How messages and records name the file (:meth:`Location.shown`); ``path`` if not given.
    url: str = ""
    #: Missing values of the column :func:`read_footers` was asked to count (the id), as the
    #: footer's statistics say; None: not counted, or a row group without the statistic.
    nulls: int | None = None

    def __post_init__(self) -> None:
        if not self.url:
            object.__setattr__(self, "url", self.path)

    @property
    def n_rows(self) -> int:
        return sum(self.row_group_rows)

    @property
    def partition_columns(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.partition)


@dataclass(frozen=True)
class Piece:
    """A unit of parallel work: some row groups of one file (and its partition values).

    With a filter (``input.filters``), ``filter`` is its expression, ``filter_fields`` the
    types of the columns it tests, and ``n_rows`` counts the row groups' rows before filtering.
    """

    index: int
    path: str
    row_groups: tuple[int, ...]
    n_rows: int
    partition: tuple[tuple[str, Any], ...] = ()
    filter: Any = None
    filter_fields: tuple[tuple[str, pa.DataType], ...] = ()
    renamed: tuple[tuple[str, str], ...] = ()
    #: How messages name the piece's file (:attr:`FileInfo.url`); ``path`` if not given.
    url: str = ""

    def __post_init__(self) -> None:
        if not self.url:
            object.__setattr__(self, "url", self.path)


#: What a Parquet data file is called: one of these endings, in any case, or no ending at all
#: (Hive's ``000000_0``).
PARQUET_ENDINGS = (".parquet", ".parq", ".pq")


def list_parquet_files(loc: Location) -> list[str]:
    """All Parquet data files under the input location, sorted (hidden and ``_`` files skipped)."""
    return scan_parquet_files(loc)[0]


def scan_parquet_files(loc: Location) -> tuple[list[str], list[str]]:
    """The Parquet data files under the input location (:func:`list_parquet_files`), and the
    other files there that are not hidden (``readme.txt``, ``part-1.parquet.gz``), which are not
    read: both sorted, as fsspec paths. Those were skipped without a word (819 of 1,319 rows in
    a ``.PARQUET`` file and a ``.parquet.gz`` one)."""
    fs, root = loc.fs()
    fs.invalidate_cache(root)  # a long-lived process must see the files as they are now
    try:
        with storage_errors(loc, "listing the input"):
            if fs.isfile(root):
                _refuse_inside_table(loc, fs, root)
                return [root], []
            found = fs.find(root, detail=True)
    except FileNotFoundError:
        raise InputDataError(f"input path does not exist: {loc.url}") from None
    files, skipped = [], []
    for p, info in found.items():
        if is_folder_entry(p, info):  # e.g. the marker an S3 console's "Create folder" leaves
            continue
        rel = p[len(root):].lstrip("/")
        table = _table_format(rel)
        if table:
            raise InputDataError(
                f"{loc.url} is {table[0]} table ({table[1]} is there): read as a folder of "
                "Parquet files it would include the files its log no longer lists (deleted and "
                f"rewritten rows); give input.format: {table[2]} (recluster score reads "
                "Parquet folders only)")
        if any(part.startswith(("_", ".")) for part in rel.split("/")):
            continue
        if info.get("type") == "other":  # fsspec's word for a link to a folder, a FIFO, ...
            raise InputDataError(
                f"{loc.shown(p)} under input.path is not a file" + (
                    f" but a link to the folder {info['destination']}" if info.get("islink") and
                    "destination" in info else "") + ": links to folders inside the input are "
                "not followed (one could lead into the output); give that folder as input.path "
                "of its own, or copy its files in")
        if p.lower().endswith(PARQUET_ENDINGS) or "." not in posixpath.basename(p):
            files.append(p)
        else:
            skipped.append(p)
    if not files:
        raise InputDataError(f"no Parquet files found under {loc.url}" + (
            f" (not read, by their names: {_listed([loc.shown(p) for p in sorted(skipped)])}; "
            f"a Parquet file's name ends {', '.join(PARQUET_ENDINGS)} or has no ending)"
            if skipped else ""))
    _refuse_inside_table(loc, fs, root)
    return sorted(files), sorted(skipped)


def _listed(names: Sequence[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more"
                                       if len(names) > shown else "")


def _refuse_inside_table(loc: Location, fs, root: str) -> None:
    """Refuse an input that is a part of a Delta Lake or Iceberg table's folder: a partition
    folder (``table/month=1/``, or a file in one) or an Iceberg table's ``data/`` folder.

    Read as loose Parquet, such a folder would include the files the table's log no longer lists.
    The folders above ``root`` are walked up while they are Hive partitions (``name=value``);
    the first folder above them that holds ``_delta_log/`` is a Delta table, a ``data/`` folder
    beside ``metadata/*.metadata.json`` an Iceberg table (a request or two).
    """
    folder = root.rstrip("/")
    if not fs.isdir(folder):
        folder = posixpath.dirname(folder)
    parts = []
    while "=" in posixpath.basename(folder) and posixpath.dirname(folder) not in ("", folder):
        parts.append(posixpath.basename(folder))
        folder = posixpath.dirname(folder)
    table, what, fmt = folder, None, None
    with storage_errors(loc, "looking for a table above the input"):
        if parts and fs.isdir(posixpath.join(folder, "_delta_log")):
            what, fmt = "the Delta Lake table", "delta"
        elif posixpath.basename(folder) == "data" and fs.glob(
                posixpath.join(posixpath.dirname(folder), "metadata", "*.metadata.json")):
            table, what, fmt = posixpath.dirname(folder), "the Iceberg table", "iceberg"
    if what is None:
        return
    filters = ", ".join(f"[{p.split('=', 1)[0]}, ==, {p.split('=', 1)[1]}]" for p in reversed(parts))
    raise InputDataError(
        f"{loc.url} is inside {what} at {loc.shown(table)}: read as loose Parquet files it would include the "
        "files the table's log no longer lists (deleted and rewritten rows); give that table as "
        f"input.path with input.format: {fmt}"
        + (f" and input.filters: [{filters}]" if filters else ""))


def _table_format(rel: str) -> tuple[str, str, str] | None:
    """(what, its log, input.format) if ``rel`` (a path under the input) is a Delta Lake or
    Iceberg table's log at the input's top: the folder is a table, not loose Parquet files."""
    if rel.startswith("_delta_log/") and rel.endswith(".json"):
        return "a Delta Lake", "_delta_log/", "delta"
    if rel.startswith("metadata/") and rel.endswith(".metadata.json"):
        return "an Iceberg", "metadata/*.metadata.json", "iceberg"
    return None


def _arrow_fs(loc: Location) -> pafs.FileSystem:
    fs, _ = loc.fs()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def _partitions(loc: Location, files: Sequence[str]) -> tuple[pa.Schema, list[dict[str, Any]]]:
    """Hive partition columns and each file's values, by pyarrow's discovery over all paths.

    A column is an integer where pyarrow infers one (``month=01`` .. ``month=12`` are 1..12)
    unless two folders write one number differently: then it is text, so that ``code=01`` and
    ``code=1`` stay two values.
    """
    _, root = loc.fs()
    base = root if len(files) != 1 or files[0] != root else posixpath.dirname(root)

    def discover(partitioning: ds.Partitioning | None):
        opts = ds.FileSystemFactoryOptions(partition_base_dir=base)
        if partitioning is None:
            opts.partitioning_factory = ds.HivePartitioning.discover(infer_dictionary=False)
        else:
            opts.partitioning = partitioning
        factory = ds.FileSystemDatasetFactory(_arrow_fs(loc), list(files),
                                              ds.ParquetFileFormat(), opts)
        schema = factory.inspect(fragments=0)  # paths only: the files' columns come from footers
        by_path = {f.path: ds.get_partition_keys(f.partition_expression)
                   for f in factory.finish(schema).get_fragments()}
        return schema, [by_path.get(p, {}) for p in files]

    inferred, _ = discover(None)
    if not len(inferred):
        return inferred, [{} for _ in files]
    _, texts = discover(ds.HivePartitioning(pa.schema([(n, pa.string()) for n in inferred.names])))
    fields = []
    for f in inferred:
        raw = {v[f.name] for v in texts if v.get(f.name) is not None}
        integer = pa.types.is_integer(f.type) and len({int(v) for v in raw}) == len(raw)
        fields.append(f if integer else pa.field(f.name, pa.string()))
    schema = pa.schema(fields)
    values = [{k: (None if v is None else int(v) if pa.types.is_integer(schema.field(k).type)
                   else v) for k, v in t.items()} for t in texts]
    return schema, values


def _by_field_id(physical: pa.Schema, names: dict[int, str]) -> tuple[tuple[str, str], ...]:
    """``(table name, file name)`` of the file's columns whose Parquet field id names another
    column of the table (Iceberg writers sanitise names such as ``flight id``)."""
    out = []
    for f in physical:
        fid = (f.metadata or {}).get(b"PARQUET:field_id")
        if fid is not None and int(fid) in names and names[int(fid)] != f.name:
            out.append((names[int(fid)], f.name))
    return tuple(out)


def _read_footer(loc: Location, afs: pafs.FileSystem, path: str, part_schema: pa.Schema,
                 values: dict[str, Any], fragments: dict[str, Any] | None = None,
                 field_names: dict[int, str] | None = None,
                 count_nulls: str | None = None) -> FileInfo:
    piece = Piece(0, path, (), 0, tuple((k, values[k]) for k in part_schema.names if k in values))
    try:
        with storage_errors(loc, f"reading the footer of {loc.shown(path)}"):
            frag = _parquet_format(loc).make_fragment(
                path, filesystem=afs, partition_expression=_partition_expression(piece,
                                                                                 part_schema))
            meta = frag.metadata
            physical = frag.physical_schema
    except (OSError, pa.ArrowException) as exc:  # not the store's fault: the bytes
        raise InputDataError(f"cannot read Parquet file {loc.shown(path)}: {exc}") from None
    rows = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    renamed = _by_field_id(physical, field_names) if field_names else ()
    if fragments is not None and not renamed:  # its footer, kept for prune_row_groups
        fragments[path] = frag
    table_name = {f: t for t, f in renamed}
    fields = [f.with_name(table_name.get(f.name, f.name)) for f in physical] + [
        part_schema.field(k) for k in part_schema.names if k in values]
    return FileInfo(path=path, url=loc.shown(path),
                    schema=pa.schema(fields, metadata=physical.metadata),
                    row_group_rows=rows,
                    partition=tuple((k, values[k]) for k in part_schema.names if k in values),
                    renamed=renamed,
                    nulls=None if count_nulls is None else _footer_nulls(
                        meta, dict(renamed).get(count_nulls, count_nulls)))


def _footer_nulls(meta: pq.FileMetaData, name: str) -> int | None:
    """The missing values of top-level column ``name`` by the row groups' statistics (None: the
    file has no such column, or a row group does not count them)."""
    leaf = next((j for j in range(meta.num_columns) if meta.schema.column(j).path == name), None)
    if leaf is None:
        return None
    total = 0
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(leaf).statistics
        if stats is None or not stats.has_null_count:
            return None
        total += stats.null_count
    return total


def hive_partitions(loc: Location, files: Sequence[str]
                    ) -> tuple[pa.Schema, list[dict[str, Any]]]:
    """The Hive partition columns of ``files`` (folder names only) and each file's values."""
    try:
        with storage_errors(loc, "reading the partition folders"):
            return _partitions(loc, files)
    except (OSError, pa.ArrowException) as exc:
        raise InputDataError(f"cannot read the Hive partition folders under {loc.url}: "
                             f"{exc}") from None


def read_footers(loc: Location, files: Sequence[str], threads: int = 16,
                 partitions: tuple[pa.Schema, Sequence[dict[str, Any]]] | None = None,
                 fragments: dict[str, Any] | None = None,
                 field_names: dict[int, str] | None = None,
                 count_nulls: str | None = None) -> list[FileInfo]:
    """Every file's footer (physical schema, row groups) and partition values, in file order.

    ``partitions`` (the partition columns and each file's values) is what a table format's log
    says; by default the Hive folder names are parsed (:func:`hive_partitions`). ``fragments``,
    if given, receives each file's fragment (path -> fragment, its footer read) for
    :func:`prune_row_groups` (files with renamed columns are left out: all their row groups
    are read). ``field_names`` (Parquet field id -> the table's column name) names columns as
    the table does where a file names them otherwise. ``count_nulls``: a column whose missing
    values each file's statistics count (:attr:`FileInfo.nulls`).
    """
    part_schema, values = partitions or hive_partitions(loc, files)
    afs = _arrow_fs(loc)
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(files)))) as pool:
        return list(pool.map(lambda pv: _read_footer(loc, afs, pv[0], part_schema, pv[1],
                                                     fragments, field_names, count_nulls),
                             zip(files, values, strict=True)))


def prune_files(partition_schema: pa.Schema, values: Sequence[dict[str, Any]],
                expression: Any) -> list[int]:
    """The indices of the files whose partition values ``expression`` (on partition columns
    only) may select: the others are never opened.

    Parameters
    ----------
    partition_schema : the partition columns
    values : (n,) each file's partition values
    expression : pyarrow.compute.Expression on partition columns, or None (keep all)
    """
    if expression is None:
        return list(range(len(values)))
    index = "__file__"
    while index in partition_schema.names:  # a partition column may be named so
        index += "_"
    table = pa.table({f.name: pa.array([v.get(f.name) for v in values], type=f.type)
                      for f in partition_schema}).append_column(
        index, pa.array(range(len(values)), pa.int64()))
    return table.filter(expression).column(index).to_pylist()


def prune_row_groups(infos: Sequence[FileInfo], fragments: dict[str, Any], expression: Any,
                     schema: pa.Schema) -> list[FileInfo]:
    """``infos`` with the row groups ``expression`` may select by their statistics (min, max,
    null count in the footer); rows of those row groups are filtered as they are read.

    Parameters
    ----------
    fragments : path -> fragment, as :func:`read_footers` kept them (footers read: no I/O here)
    expression : pyarrow.compute.Expression on the table's columns
    schema : the type of every column ``expression`` tests (partition columns included)
    """
    out = []
    for info in infos:
        if info.path not in fragments:
            out.append(info)
            continue
        try:
            kept = fragments[info.path].subset(filter=expression, schema=schema).row_groups
        except pa.ArrowException as exc:
            raise InputDataError(f"cannot apply input.filters to {info.url}: {exc}") from None
        out.append(dataclasses.replace(info, row_groups=tuple(rg.id for rg in kept)))
    return out


def plan_pieces(infos: Sequence[FileInfo], rows_per_piece: int, row_filter: Any = None,
                filter_fields: Sequence[tuple[str, pa.DataType]] = ()) -> list[Piece]:
    """Group consecutive row groups of each file into pieces of about ``rows_per_piece`` rows.

    Files with no rows give no piece, and only the row groups a filter may select
    (:attr:`FileInfo.row_groups`) are planned; each piece carries ``row_filter`` (a
    ``pyarrow.compute.Expression``) and the types of the columns it tests. The plan depends
    only on the files and the filter, so every pass over the data sees the same pieces in the
    same order.
    """
    pieces: list[Piece] = []
    for info in infos:
        extra = {"filter": row_filter, "filter_fields": tuple(filter_fields),
                 "renamed": info.renamed, "url": info.url}
        group: list[int] = []
        n = 0
        kept = set(range(len(info.row_group_rows)) if info.row_groups is None
                   else info.row_groups)
        for rg, rows in enumerate(info.row_group_rows):
            if rows == 0 or rg not in kept:
                continue
            if group and n + rows > rows_per_piece:
                pieces.append(Piece(len(pieces), info.path, tuple(group), n, info.partition,
                                    **extra))
                group, n = [], 0
            group.append(rg)
            n += rows
        if group:
            pieces.append(Piece(len(pieces), info.path, tuple(group), n, info.partition,
                                **extra))
    return pieces


def _partition_expression(piece: Piece, schema: pa.Schema) -> ds.Expression | None:
    terms = []
    for k, v in piece.partition:
        if k not in schema.names:  # a partition column this run does not read
            continue
        field = ds.field(k)
        terms.append(field.is_null() if v is None else field == pa.scalar(v, schema.field(k).type))
    return functools.reduce(operator.and_, terms) if terms else None


def _parquet_format(loc: Location) -> ds.ParquetFileFormat:
    """How a piece is read. Arrow's pre-buffering fetches a row group's column chunks in a few
    coalesced ranges: what an object store needs (one request per chunk would be hundreds per
    piece of a wide table), but on a local disk it only adds a copy of every chunk, which for
    500 columns made a read 4x dearer in CPU."""
    return ds.ParquetFileFormat(default_fragment_scan_options=ds.ParquetFragmentScanOptions(
        pre_buffer=not is_local(loc.url)))


def _piece_fs(loc: Location) -> pafs.FileSystem:
    """The filesystem a piece is read through: Arrow's own for a local disk, else the location's
    (fsspec) filesystem. Through fsspec every read of a local file went into a fresh Python
    buffer; on a wide table that is hundreds of megabytes of new memory per piece and pass,
    and a worker process paid its page faults again on every pass (measured: 0.1-2 CPU s per
    500-column piece of 50,000 rows, against 0.1 s through Arrow's reader). Not memory-mapped:
    a file truncated while it is read must fail as an error, not kill the worker."""
    return pafs.LocalFileSystem() if is_local(loc.url) else _arrow_fs(loc)


def _fragment(piece: Piece, loc: Location, schema: pa.Schema) -> ds.ParquetFileFragment:
    """The piece's row groups of its file; its footer is read by the first read of it and
    kept for the next ones."""
    return _parquet_format(loc).make_fragment(
        piece.path, filesystem=_piece_fs(loc),
        partition_expression=_partition_expression(piece, schema),
        row_groups=list(piece.row_groups))


def _filter_schema(piece: Piece, schema: pa.Schema) -> pa.Schema:
    """``schema`` and the columns the piece's filter tests (read too, then dropped)."""
    if piece.filter is None:
        return schema
    return pa.schema([*schema, *(pa.field(c, t) for c, t in piece.filter_fields
                                 if c not in schema.names)])


def _read(piece: Piece, loc: Location, schema: pa.Schema, names: Sequence[str],
          frag: ds.ParquetFileFragment | None = None) -> pa.Table:
    """Columns ``names`` of one piece under the table's names, cast to ``schema``, filtered
    (through ``frag``, :func:`_fragment`, when given)."""
    schema = _filter_schema(piece, schema)
    in_file = dict(piece.renamed)
    if frag is None:
        frag = _fragment(piece, loc, schema)
    if not in_file:
        return frag.to_table(schema=schema, columns=list(names), filter=piece.filter,
                             use_threads=False)
    # read under the file's names, filtered under the table's
    needed = [*names, *(c for c, _ in piece.filter_fields if c not in names)]
    table = frag.to_table(
        schema=pa.schema([f.with_name(in_file.get(f.name, f.name)) for f in schema]),
        columns=[in_file.get(c, c) for c in needed], use_threads=False
    ).rename_columns(needed)
    if piece.filter is not None:
        table = table.filter(piece.filter)
    return table.select(list(names))


def _failing_column(piece: Piece, loc: Location, schema: pa.Schema, names: Sequence[str],
                    exc: Exception) -> str:
    """`` (column 'x')`` when a value of one column could not be read as the type every file is
    read with (an integer beyond 2^53 in a column read as float64 because another file holds
    floats: Arrow names the value, not the column), found by reading each column alone (on
    the failure path only); else ""."""
    if not isinstance(exc, pa.ArrowInvalid) or len(names) < 2:
        return ""
    alone = dataclasses.replace(piece, filter=None, filter_fields=())
    for c in names:
        try:
            _read(alone, loc, schema, [c])
        except pa.ArrowInvalid:
            return f" (column '{c}')"
        except Exception:  # noqa: BLE001 -- the store failing now: the file is named anyway
            return ""
    return ""


def read_piece(piece: Piece, loc: Location, schema: pa.Schema,
               columns: Sequence[tuple[str, str]]) -> pa.Table:
    """Read some columns of one piece, cast to ``schema``.

    Parameters
    ----------
    piece : Piece
    loc : Location of the input
    schema : pyarrow.Schema
        The type of every column as all files are read (partition columns included).
    columns : sequence of ``(column name, name in the result)``
        Only these columns are read; the result's columns are renamed as given.

    Returns
    -------
    pyarrow.Table, shape (piece.n_rows, len(columns)), no schema metadata
    """
    return next(read_piece_groups(piece, loc, schema, [columns]))


def read_piece_groups(piece: Piece, loc: Location, schema: pa.Schema,
                      groups: Sequence[Sequence[tuple[str, str]]]) -> Iterator[pa.Table]:
    """:func:`read_piece` of each group of columns in turn, the same rows each time, through
    one fragment (its footer read once): a wide piece read a group at a time, so that only one
    group's decoded columns are in memory at once (this generator keeps no reference to a
    group it has handed out)."""
    frag: list[ds.ParquetFileFragment] = []
    for columns in groups:
        yield _read_group(piece, loc, schema, columns, frag)


def _read_group(piece: Piece, loc: Location, schema: pa.Schema,
                columns: Sequence[tuple[str, str]], frag: list) -> pa.Table:
    """One group of :func:`read_piece_groups`; ``frag`` holds the piece's fragment once made."""
    names = [c for c, _ in columns]
    try:
        with storage_errors(loc, f"reading {piece.url}"):
            if not frag:
                frag.append(_fragment(piece, loc, _filter_schema(piece, schema)))
            table = _read(piece, loc, schema, names, frag[0])
    except (OSError, pa.ArrowException) as exc:
        column = _failing_column(piece, loc, schema, names, exc)
        raise InputDataError(f"cannot read {piece.url}{column}: {exc}") from None
    return table.rename_columns([k for _, k in columns]).replace_schema_metadata(None)


def file_identities(loc: Location, paths: Sequence[str]) -> list[dict[str, object]]:
    """What each input file is right now, beyond its path: size and ETag (object stores) or
    modification time (local disks), from fsspec ``info``. A file rewritten in place changes
    its identity even when its row count and schema stay the same.

    Parameters
    ----------
    loc : the input location
    paths : (n,) file paths as listed under ``loc``

    Returns
    -------
    list of n dicts ``{"path", "size", "version"}``, in the order of ``paths``; ``version`` is the
    ETag (quotes stripped) or the modification time, whichever the store gives (ETag first).
    """
    fs, root = loc.fs()
    with storage_errors(loc, "reading the input files' identities"):
        fs.invalidate_cache(root)
        try:
            found = fs.find(root, detail=True) if not fs.isfile(root) else {}
        except FileNotFoundError:
            found = {}
        missing = [p for p in paths if p not in found]
        if missing:
            with ThreadPoolExecutor(max_workers=max(1, min(16, len(missing)))) as pool:
                found = {**found, **dict(zip(missing, pool.map(fs.info, missing), strict=True))}
    out = []
    for p in paths:
        info = found[p]
        version = info.get("ETag") or info.get("etag") or info.get("mtime") \
            or info.get("LastModified") or info.get("last_modified")
        if isinstance(version, str):
            version = version.strip('"')
        out.append({"path": p, "size": int(info.get("size") or 0), "version": str(version)})
    return out
