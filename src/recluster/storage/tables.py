"""The input table as of one version, for each ``input.format``, and the slice of it a run reads.

What a table is: a folder of Parquet files (Hive partition folders parsed from the paths), a
Delta Lake table (the files its log lists at a version, with their partition values, read with
``deltalake``), or an Iceberg table (the data files of a snapshot, planned by ``pyiceberg``
from a catalog). Every format ends as the same thing, Parquet files with partition values
(:class:`~recluster.storage.inputs.FileInfo`), which the rest of the job reads unchanged.

What a run reads of it: ``input.filters`` first prunes whole files by their partition values
(Iceberg: by its manifests' partition and column statistics) before any file is opened, then
row groups by their footer statistics; the rows of the row groups left are filtered as they
are read.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import os
import posixpath
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import pyarrow as pa

from recluster.compute.schema import RowFilter, column_types, resolve_filters
from recluster.config import InputConfig, iso_time
from recluster.errors import ConfigError, InputDataError
from recluster.storage import inputs
from recluster.storage.fs import Location, is_local, normalize_url, storage_errors


@dataclass(frozen=True)
class TableScan:
    """The files a run reads and what it read them as.

    ``infos`` are the files the filter may select (footers read; ``row_groups`` pruned);
    ``table`` what the manifest records of the table (``format``, and the Delta ``version`` or
    the Iceberg ``snapshot_id`` read); ``files_total`` the table's data files before pruning.
    """

    infos: list[inputs.FileInfo]
    row_filter: RowFilter | None
    table: dict[str, Any]
    files_total: int

    @property
    def filter_fields(self) -> tuple[tuple[str, pa.DataType], ...]:
        return self.row_filter.types if self.row_filter else ()

    def plan(self, rows_per_piece: int) -> list[inputs.Piece]:
        expr = self.row_filter.expression() if self.row_filter else None
        return inputs.plan_pieces(self.infos, rows_per_piece, expr, self.filter_fields)


@dataclass(frozen=True)
class _Files:
    """A table's data files at one version: fsspec paths, partition columns and values."""

    paths: list[str]
    partition_schema: pa.Schema
    partitions: list[dict[str, Any]]
    table: dict[str, Any]
    types: dict[str, pa.DataType] | None = None  # the table's own schema, where it has one
    field_names: dict[int, str] | None = None  # Parquet field id -> column name (Iceberg)


# ---------------------------------------------------------------------------- S3 options


def _s3_endpoint(loc: Location) -> str | None:
    opts = dict(loc.storage_options)
    return (opts.get("endpoint_url") or dict(opts.get("client_kwargs") or {}).get("endpoint_url")
            or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))


def _s3_region(loc: Location) -> str:
    opts = dict(loc.storage_options)
    return (opts.get("region_name") or dict(opts.get("client_kwargs") or {}).get("region_name")
            or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            or "us-east-1")


def delta_storage_options(loc: Location) -> dict[str, str]:
    """``storage_options`` for ``deltalake`` (delta-rs) from the location's fsspec options:
    the endpoint (``AWS_ENDPOINT_URL``, plain HTTP allowed only when the endpoint is plain HTTP)
    and the region. Credentials are not copied: delta-rs reads ``AWS_*`` from the environment
    itself, as botocore does."""
    if is_local(loc.url):
        return {}
    out = {"AWS_REGION": _s3_region(loc)}
    endpoint = _s3_endpoint(loc)
    if endpoint:
        out["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            out["AWS_ALLOW_HTTP"] = "true"
    # Atomic commits on S3 without a lock table: a put that fails if the log entry exists.
    out["conditional_put"] = "etag"
    return out


def quiet_deltalake() -> None:
    """Keep ``deltalake``'s Rust log to errors (unless ``RUST_LOG`` is set): its default printed a
    warning per labels file on the terminal ("Skipping column ... because it's a binary field"
    for binary ids). Called before ``deltalake`` is first imported."""
    os.environ.setdefault("RUST_LOG", "error")


def delta_uri(loc: Location) -> str:
    """The table's URI as delta-rs spells it (a local folder as an absolute path)."""
    return normalize_url(loc.url)[len("file://"):] if is_local(loc.url) else \
        normalize_url(loc.url).replace("s3a://", "s3://", 1)


# ---------------------------------------------------------------------------- formats


def _parquet_files(cfg: InputConfig, loc: Location) -> _Files:
    paths, skipped = inputs.scan_parquet_files(loc)
    schema, values = inputs.hive_partitions(loc, paths)
    # (only when there are any: the record is part of the input's fingerprint)
    return _Files(paths, schema, values, {"format": "parquet", **(
        {"skipped_files": [loc.shown(p) for p in skipped]} if skipped else {})})


def _delta_files(cfg: InputConfig, loc: Location) -> _Files:
    quiet_deltalake()
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError, TableNotFoundError

    what = (f"input.version {cfg.version}" if cfg.version is not None else
            f"input.timestamp {cfg.timestamp}" if cfg.timestamp is not None else "latest version")
    uri, opts = delta_uri(loc), delta_storage_options(loc)
    try:
        dt = DeltaTable(uri, storage_options=opts)
        latest = dt.version()
        if cfg.version is not None and cfg.version > latest:
            raise InputDataError(f"input.version {cfg.version}: the Delta table at {loc.url} "
                                 f"has versions up to {latest}")
        if cfg.version is not None and cfg.version != latest:
            dt.load_as_version(cfg.version)
        if cfg.timestamp is not None:
            when = iso_time(cfg.timestamp)
            dt.load_as_version(when)
            # delta-rs falls back to the oldest version it has for a time before it
            committed = _delta_commit_time(loc, dt.version())
            if committed is not None and committed > when and (
                    dt.version() == 0 or _delta_commit_time(loc, dt.version() - 1) is None):
                raise InputDataError(
                    f"input.timestamp {cfg.timestamp} is before the Delta table at {loc.url} "
                    f"had a version (its oldest, {dt.version()}, was committed at "
                    f"{committed.isoformat()})")
    except TableNotFoundError:
        raise InputDataError(f"input.path {loc.url} is not a Delta table (no _delta_log/ with a "
                             "commit there)") from None
    except (DeltaError, ValueError, OSError) as exc:
        raise InputDataError(f"cannot read the Delta table at {loc.url} ({what}): "
                             f"{str(exc).splitlines()[0]}") from None
    features = set(dt.protocol().reader_features or ())
    if "columnMapping" in features:
        raise InputDataError(f"the Delta table at {loc.url} uses column mapping (its files' "
                             "column names are not the table's); recluster cannot read it")
    if "deletionVectors" in features:
        marked = pa.table(dt.deletion_vectors().read_all()).num_rows
        if marked:
            raise InputDataError(
                f"the Delta table at {loc.url} (version {dt.version()}) has deletion vectors on "
                f"{marked} files; recluster honours deletes only as rewritten files: purge them "
                "first (OPTIMIZE ... / REORG TABLE ... APPLY (PURGE))")
    actions = pa.table(dt.get_add_actions(flatten=True))
    schema = pa.schema(dt.schema().to_arrow())
    part_cols = list(dt.metadata().partition_columns)
    part_schema = pa.schema([schema.field(c) for c in part_cols])
    _, root = loc.fs()
    paths, values = [], []
    for row in actions.select(["path", *(f"partition.{c}" for c in part_cols)]).to_pylist():
        rel = unquote(row["path"])
        if "://" in rel or rel.startswith("/"):
            raise InputDataError(f"the Delta table at {loc.url} lists a data file outside its "
                                 f"folder ({rel}); recluster reads only files inside input.path")
        paths.append(posixpath.join(root, rel))
        values.append({c: row[f"partition.{c}"] for c in part_cols})
    order = sorted(range(len(paths)), key=paths.__getitem__)
    return _Files([paths[i] for i in order], part_schema, [values[i] for i in order],
                  {"format": "delta", "version": dt.version()},
                  {f.name: f.type for f in schema})


def _delta_commit_time(loc: Location, version: int) -> datetime.datetime | None:
    """When ``version`` of the Delta table was committed, as delta-rs's time travel takes it
    (its log entry's modification time); None if the store does not say."""
    fs, root = loc.fs()
    with storage_errors(loc, "reading the Delta table's log"):
        try:
            info = fs.info(posixpath.join(root, "_delta_log", f"{version:020d}.json"))
        except FileNotFoundError:  # logs before a checkpoint may be cleaned up
            return None
    when = info.get("LastModified") or info.get("mtime")
    if isinstance(when, int | float):
        return datetime.datetime.fromtimestamp(when, datetime.UTC)
    return when if isinstance(when, datetime.datetime) else None


def _iceberg_catalog(cfg: InputConfig, loc: Location):
    from pyiceberg.catalog import load_catalog

    props = {k: str(v) for k, v in cfg.catalog.items()}
    name = props.pop("name", "default")
    if not is_local(loc.url):
        endpoint = _s3_endpoint(loc)
        if endpoint:
            props.setdefault("s3.endpoint", endpoint)
        props.setdefault("s3.region", _s3_region(loc))
    try:
        return load_catalog(name, **props)
    except Exception as exc:  # noqa: BLE001 -- a catalog's client raises its own kinds
        raise ConfigError(f"input.catalog: cannot open the Iceberg catalog '{name}': "
                          f"{type(exc).__name__}: {(str(exc) or '?').splitlines()[0]}") from None


def _iceberg_expression(row_filter: RowFilter):
    """The filter as a pyiceberg row filter (for planning: its manifests' statistics)."""
    from pyiceberg import expressions as ice

    ops = {"=": ice.EqualTo, "!=": ice.NotEqualTo, "<": ice.LessThan, "<=": ice.LessThanOrEqual,
           ">": ice.GreaterThan, ">=": ice.GreaterThanOrEqual, "in": ice.In, "not in": ice.NotIn}

    types = dict(row_filter.types)

    def value(col: str, v: pa.Scalar) -> Any:
        py = v.as_py()
        if isinstance(py, decimal.Decimal):  # pyiceberg takes only the column's own scale
            exact = py.quantize(decimal.Decimal(1).scaleb(-types[col].scale))
            return exact if exact == py else None
        return py.isoformat() if hasattr(py, "isoformat") else py

    ors = []
    for group in row_filter.dnf:
        ands = []
        for col, op, v in group:
            vals = [value(col, x) for x in v] if isinstance(v, list) else [value(col, v)]
            if None not in vals:  # else left to the rows' filter: planning keeps more files
                ands.append(ops[op](col, set(vals) if isinstance(v, list) else vals[0]))
        if not ands:
            return ice.AlwaysTrue()
        ors.append(ands[0] if len(ands) == 1 else ice.And(*ands))
    return ors[0] if len(ors) == 1 else ice.Or(*ors)


def _iceberg_files(cfg: InputConfig, loc: Location) -> _Files:
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

    catalog = _iceberg_catalog(cfg, loc)
    try:
        table = catalog.load_table(cfg.table)
    except (NoSuchTableError, NoSuchNamespaceError, ValueError):
        raise InputDataError(f"input.table '{cfg.table}' is not in the Iceberg catalog "
                             f"'{cfg.catalog.get('name', 'default')}'") from None
    except Exception as exc:  # noqa: BLE001 -- the catalog's database or service failed
        raise ConfigError(f"input.catalog: cannot read table '{cfg.table}' from the Iceberg "
                          f"catalog: {type(exc).__name__}: "
                          f"{(str(exc) or '?').splitlines()[0]}") from None
    if normalize_url(table.location()) != normalize_url(loc.url):
        raise InputDataError(
            f"input.path {loc.url} is not the location of Iceberg table '{cfg.table}' "
            f"({table.location()}); input.path must be that location (the output is kept out of "
            "it)")
    snapshot = table.snapshot_by_id(cfg.snapshot_id) if cfg.snapshot_id is not None \
        else table.current_snapshot()
    if snapshot is None:
        current = table.current_snapshot()
        raise InputDataError(
            f"input.snapshot_id {cfg.snapshot_id}: Iceberg table '{cfg.table}' has no such "
            f"snapshot (its current one is {current.snapshot_id if current else 'none'})"
            if cfg.snapshot_id is not None else
            f"Iceberg table '{cfg.table}' has no snapshot (no data written yet)")
    types = {f.name: f.type for f in table.schema().as_arrow()}
    field_names = {f.field_id: f.name for f in table.schema().fields}
    row_filter = (resolve_filters(cfg.filters, types, f"Iceberg table '{cfg.table}'")
                  if cfg.filters else None)
    scan = table.scan(snapshot_id=snapshot.snapshot_id,
                      **({"row_filter": _iceberg_expression(row_filter)} if row_filter else {}))
    tasks = list(scan.plan_files())
    with_deletes = [t.file.file_path for t in tasks if t.delete_files]
    if with_deletes:
        raise InputDataError(
            f"Iceberg table '{cfg.table}' (snapshot {snapshot.snapshot_id}) has delete files "
            f"for {len(with_deletes)} data files (merge-on-read), e.g. {with_deletes[0]}; "
            "recluster honours deletes only as rewritten files: rewrite the data files first")
    fs, _ = loc.fs()
    paths = sorted(fs._strip_protocol(t.file.file_path) for t in tasks)
    total = int((snapshot.summary or {}).get("total-data-files", len(paths)))
    return _Files(paths, pa.schema([]), [{} for _ in paths],
                  {"format": "iceberg", "table": cfg.table, "snapshot_id": snapshot.snapshot_id,
                   "data_files": total}, types, field_names)


# ---------------------------------------------------------------------------- the slice


def _with_table_columns(infos: list[inputs.FileInfo], types: dict[str, pa.DataType] | None
                        ) -> list[inputs.FileInfo]:
    """Each file's schema with the table's columns it does not hold (a Delta or Iceberg file
    written before the column was added): they read as nulls, as the table format says."""
    if not types:
        return infos
    out = []
    for info in infos:
        missing = [pa.field(c, t) for c, t in types.items() if c not in info.schema.names]
        out.append(dataclasses.replace(info, schema=pa.schema(
            [*info.schema, *missing], metadata=info.schema.metadata)) if missing else info)
    return out


def scan(cfg: InputConfig, loc: Location) -> TableScan:
    """The table's files as of the version asked for, pruned by ``input.filters``, footers read.

    The filter is checked before any data file is opened where the table has a schema of its
    own (Delta, Iceberg), else against the partition folders and then the first footers read.

    Raises
    ------
    InputDataError
        naming the table, or the filtered column (unknown, or a value of the wrong type); also
        when the filter selects no file.
    """
    found = {"parquet": _parquet_files, "delta": _delta_files,
             "iceberg": _iceberg_files}[cfg.format](cfg, loc)
    total = found.table.get("data_files", len(found.paths))
    where = f"the table at {loc.url}"
    if not cfg.filters:
        # Every row is read: a file whose footer counts missing ids is refused before the data
        # is (Parquet folders; a Delta or Iceberg file may hold rows its log deletes).
        return TableScan(_with_table_columns(inputs.read_footers(
            loc, found.paths, partitions=(found.partition_schema, found.partitions),
            field_names=found.field_names,
            count_nulls=cfg.id_column if cfg.format == "parquet" else None), found.types),
            None, found.table, total)
    if found.types is not None:  # refused before any data file is opened
        resolve_filters(cfg.filters, found.types, where)
    parts = {f.name: f.type for f in found.partition_schema}
    on_parts = resolve_filters(cfg.filters, parts, where, only=list(parts))
    keep = inputs.prune_files(found.partition_schema, found.partitions,
                              on_parts.expression(only=list(parts)))
    paths = [found.paths[i] for i in keep] or found.paths[:1]  # one footer names the columns
    fragments: dict[str, Any] = {}
    infos = _with_table_columns(inputs.read_footers(loc, paths, partitions=(
        found.partition_schema, [found.partitions[i] for i in keep] or found.partitions[:1]),
        fragments=fragments, field_names=found.field_names), found.types)
    row_filter = resolve_filters(cfg.filters, found.types or column_types(infos),
                                 where if found.types else infos[0].url)
    if not keep:
        raise InputDataError(f"input.filters select no partition of {where} ({total} data "
                             "files): nothing to segment")
    filter_schema = pa.schema([pa.field(c, t) for c, t in row_filter.types])
    infos = inputs.prune_row_groups(infos, fragments, row_filter.expression(), filter_schema)
    return TableScan(infos, row_filter, found.table, total)
