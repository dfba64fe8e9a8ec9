"""A job's input side: plan the input from its footers, fingerprint the input and the run, check
the output location, decide what to do about a run already published there, and validate every
row in one pass before any fit.

Used by ``run`` (:mod:`recluster.pipeline`), ``validate`` (the CLI) and ``score``
(:mod:`recluster.scoring`).
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from distributed import Client

from recluster.compute.schema import (
    PANDAS_INDEX_LEFT_OUT,
    ROW_NUMBER_EVIDENCE,
    TableSchema,
    check_stats,
    null_ids,
    per_file_numberings,
    resolve_schema,
    row_number_candidates,
)
from recluster.config import InputConfig, JobConfig
from recluster.errors import ConfigError, InputDataError
from recluster.parallel import passes
from recluster.report import data as report_data
from recluster.storage import inputs, tables
from recluster.storage.fs import Location, refuse_overlap
from recluster.storage.outputs import Decision, OutputStore, check_delta_labels

_VERSIONED = ("recluster", "numpy", "pandas", "pyarrow", "scikit-learn", "umap-learn",
              "pynndescent", "hdbscan", "numba", "dask", "distributed", "s3fs", "fsspec")


def versions() -> dict[str, str]:
    """The manifest's ``versions``: Python's and each library's that shapes a result."""
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def input_fingerprint(infos, identities: Sequence[dict[str, Any]],
                      table: dict[str, Any] | None = None) -> str:
    """What the input is: each file's path, rows and schema (footers) and its identity (size and
    ETag or modification time, :func:`recluster.storage.inputs.file_identities`), so that a file
    rewritten in place with the same rows and schema still counts as new input; and ``table``
    (the manifest's ``input.table``: format, Delta version or Iceberg snapshot, filters), so that
    another version or slice of a table is another input. Not the files it does not read
    (``skipped_files``): a readme added to the input folder made the same run a different one,
    refused at its own output."""
    h = hashlib.sha256()
    table = {k: v for k, v in (table or {}).items() if k != "skipped_files"}
    if table:
        h.update(json.dumps(table, sort_keys=True, default=str).encode() + b"\0")
    for info, ident in zip(infos, identities, strict=True):
        h.update(f"{info.path}\0{info.n_rows}\0{info.schema}\0{ident['size']}\0"
                 f"{ident['version']}\0".encode())
    return h.hexdigest()


def run_fingerprint(cfg: JobConfig, input_fp: str, previous_sha256: str | None = None,
                    names: dict[str, str] | None = None) -> str:
    """What a run is: its config, its input's identity, with ``--previous`` the SHA-256 of the
    earlier run's manifest (whose paths it takes: republished, it gives other paths) and, when
    ``output.names`` is a file's location, the ``names`` read from it (the config holds only
    the location: an edited file must not be answered with the old names)."""
    what: dict[str, Any] = {"config": cfg.redacted(), "input": input_fp}
    if previous_sha256 is not None:
        what["previous_manifest_sha256"] = previous_sha256
    if isinstance(cfg.output.names, str):
        what["names_file"] = names
    body = json.dumps(what, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def plan(cfg: JobConfig):
    """Footers only: files, schema roles, pieces. Cheap; used by ``validate`` too."""
    loc, scan, ts, pieces = plan_input(cfg)
    return loc, scan.infos, ts, pieces


def plan_input(cfg: JobConfig):
    """:func:`plan`, with the :class:`~recluster.storage.tables.TableScan` in place of the
    footers: the table's format and version and the filter (``input.format``,
    ``input.filters``)."""
    loc = Location.of(cfg.input.path, cfg.input.storage_options, cfg.runtime.storage_timeout_s,
                      cfg.runtime.storage_retries)
    scan, ts, pieces = scan_input(cfg.input, loc, cfg.sample.stratify_by)
    if cfg.output.format == "delta":
        check_delta_labels(ts.id_column, ts.id_type)
    return loc, scan, ts, pieces


def scan_input(cfg_in: InputConfig, loc: Location, stratify_by: str | None,
               filters_name: str = "input.filters", model: str | None = None):
    """Read the footers of the input at ``loc`` (a table's files, the slice ``cfg_in.filters``
    keeps), resolve the schema's roles and cut the pieces; what ``run`` and ``score`` share.

    ``filters_name`` is what messages call the filter (``--filter`` for ``score``); ``model``
    the run whose columns ``cfg_in`` repeats (``score``, see :func:`resolve_schema`).

    Returns
    -------
    scan : TableScan
    ts : TableSchema
    pieces : list of pieces (about ``cfg_in.rows_per_partition`` rows each), not empty
    """
    try:
        scan = tables.scan(cfg_in, loc)
    except (ConfigError, InputDataError) as exc:
        if filters_name == "input.filters":
            raise
        raise type(exc)(str(exc).replace("input.filters", filters_name)) from None
    ts = resolve_schema(scan.infos, cfg_in, stratify_by, model)
    for info in scan.infos:  # by the footers' statistics, before the validation pass reads it
        if info.nulls:
            raise null_ids(cfg_in.id_column, info.nulls, info.url)
    pieces = scan.plan(cfg_in.rows_per_partition)
    if not pieces:
        raise InputDataError(f"every Parquet file under {cfg_in.path} is empty"
                             if scan.row_filter is None else
                             f"{filters_name} select no row group of {cfg_in.path}: nothing to "
                             + ("segment" if filters_name == "input.filters" else "score"))
    return scan, ts, pieces


#: Which files under a Parquet folder are read, in every message about those that are not.
PARQUET_NAMES = (f"a Parquet file's name ends {', '.join(inputs.PARQUET_ENDINGS)} in any case, "
                 "or has no ending")
#: A file under the input that is not read (the manifest's ``degraded`` entry of each).
NOT_PARQUET = f"not read: not named as a Parquet file ({PARQUET_NAMES})"


def skipped_line(table: Mapping[str, Any]) -> str | None:
    """The line that names the files under a Parquet folder that are not read (or None)."""
    skipped = table.get("skipped_files") or []
    if not skipped:
        return None
    shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
    return (f"{len(skipped)} file(s) not read, not named as Parquet files ({PARQUET_NAMES}): "
            f"{shown}")


def input_record(scan, pieces) -> dict[str, Any]:
    """The manifest's ``input.table`` (format, Delta ``version`` / Iceberg ``snapshot_id``,
    ``filters``, data files of the table and files read): part of the input fingerprint."""
    record = dict(scan.table)
    record["filters"] = scan.row_filter.record() if scan.row_filter else None
    record["data_files"] = scan.files_total
    record["files_read"] = len({p.path for p in pieces})
    return record



def output_location(cfg: JobConfig) -> Location:
    """``output.path`` with its storage options, timeout and retries."""
    return Location.of(cfg.output.path, cfg.output.storage_options,
                       cfg.runtime.storage_timeout_s, cfg.runtime.storage_retries)


def check_locations(cfg: JobConfig) -> None:
    """Refuse (before any work) an output that is, lies inside, or contains the input."""
    refuse_overlap(output_location(cfg), {"input.path": Location.of(
        cfg.input.path, cfg.input.storage_options)})


def check_output(cfg: JobConfig) -> None:
    """Every refusal that needs no cluster, read-only: overlap with the input, an output that is
    a file or holds foreign files, an output another run is writing."""
    check_locations(cfg)
    OutputStore(output_location(cfg)).preflight()


def decide(cfg: JobConfig, store: OutputStore, fp: str, echo: Callable[[str], None]) -> Decision:
    """What to do about the run published at the output (see :meth:`OutputStore.prepare`)."""
    decision = store.prepare(fp, cfg.output.overwrite, "set output.overwrite: true")
    if decision.action == "reuse":
        echo(f"  {cfg.output.path} already holds this run (same config and input): nothing to do")
    elif decision.action == "repaired":
        echo(f"  {cfg.output.path} already holds this run, but its publication had not finished: "
             "every listed file is there with its size; wrote _SUCCESS")
    elif decision.previous is not None:
        problems = decision.problems
        echo(f"  {cfg.output.path}: " + (
            f"this run is there, but {problems[0]}" + (
                f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else "")
            + "; running it again" if problems else
            "output.overwrite: the published run is replaced once this one is fully staged"))
    return decision



def segment_names(cfg: JobConfig) -> dict[str, str]:
    """The names a person chose (``output.names``: a mapping, or a YAML file's location)."""
    if isinstance(cfg.output.names, str):
        return report_data.read_names(Location.of(
            cfg.output.names, cfg.output.storage_options, cfg.runtime.storage_timeout_s,
            cfg.runtime.storage_retries)) or {}
    return dict(cfg.output.names or {})



#: Columns of one role ``recluster validate`` names; the others are counted: mosaicData's
#: HELPfull (781 numeric features) was one line of 6,400 characters.
ROLE_NAMED = 20


def _role(names: Sequence[str], shown: Sequence[str] | None = None) -> str:
    """A role's columns as ``describe_schema`` lists them (``shown``: each as written)."""
    shown = list(shown if shown is not None else map(repr, names))
    more = len(shown) - ROLE_NAMED
    return "[" + ", ".join(shown[:ROLE_NAMED]) + (f", ... and {more} more" if more > 0 else "") \
        + "]" + (f" ({len(shown)} columns)" if more > 0 else "")


def describe_schema(ts: TableSchema) -> str:
    """One line on the columns' roles, as ``recluster validate`` prints it: at most
    :data:`ROLE_NAMED` columns of each role by name, and the descriptive columns that are dates,
    times or durations with their unit (profiled as quantities, shown as dates)."""
    units = ts.time_units
    described = [repr(c) + (f" ({units[c][0]}"
                            + (f", {units[c][1]}" if units[c][1] else "") + ")"
                            if c in units else "") for c in ts.describe]
    return (f"id '{ts.id_column}', numeric {_role(ts.numeric)}, "
            f"categorical {_role(ts.categorical)}"
            + (f", stratified by '{ts.stratify_by}'" if ts.stratify_by else "")
            + (f", descriptive {_role(ts.describe, described)}" if ts.describe else "")
            + (f", left out as a pandas index {_role(ts.index_columns)}"
               if ts.index_columns else ""))


@dataclass
class RunPlan:
    """What a run reads and what it is, known from footers alone (the ``plan`` stage)."""

    location: Location
    scan: tables.TableScan
    schema: TableSchema
    pieces: list  # of storage.inputs pieces: (file, row groups) of about input.rows_per_partition
    table: dict[str, Any]  # the manifest's input.table (input_record)
    input_fingerprint: str
    fingerprint: str  # the run's: config, input and --previous
    names: dict[str, str]  # output.names, read (a bad names file stops the run here)
    previous: Any = None  # recluster.comparing.PublishedRun of previous.path, read once

    @property
    def infos(self) -> list:
        """The footers of the files read (:class:`~recluster.storage.inputs.FileInfo`)."""
        return self.scan.infos


def plan_run(cfg: JobConfig, echo: Callable[[str], None], counts: dict[str, int]) -> RunPlan:
    """The ``plan`` stage of a run after the output is claimed: input, schema, pieces, names,
    the previous run (``--previous``, read and checked once) and the fingerprints.

    ``counts`` (the stage's counters) gets the files, partitions and rows.
    """
    loc, scan, ts, pieces = plan_input(cfg)
    infos = scan.infos
    names = segment_names(cfg)  # a bad names file stops the run before any work
    counts.update(files=len(infos), partitions=len(pieces), rows=sum(i.n_rows for i in infos))
    echo(f"  {len(infos)} files, {len(pieces)} partitions, {sum(i.n_rows for i in infos)} rows; "
         f"{len(ts.numeric)} numeric + {len(ts.categorical)} categorical features")
    table = input_record(scan, pieces)
    if skipped_line(table):
        echo(f"  {skipped_line(table)}")
    if scan.row_filter is not None:
        echo(f"  input.filters: {table['files_read']} of {scan.files_total} data files "
             f"read, {sum(p.n_rows for p in pieces)} rows in the row groups selected")
    input_fp = input_fingerprint(infos, inputs.file_identities(loc, [i.path for i in infos]), table)
    prev_run = None
    if cfg.previous.path:  # read once: the run takes its paths from this very publication
        from recluster.comparing import PublishedRun
        from recluster.parallel.compare import join_dtype

        prev_run = PublishedRun(Location.of(cfg.previous.path, cfg.output.storage_options),
                                "previous run")
        # ids of another family are refused now, not after the whole tree has grown
        join_dtype(prev_run.id_type, ts.id_type, (cfg.previous.path, "this run's input"))
        prev_run.tree()  # a damaged tree.json too
    fp = run_fingerprint(cfg, input_fp, prev_run and prev_run.manifest_sha256, names)
    return RunPlan(loc, scan, ts, pieces, table, input_fp, fp, names, prev_run)


@dataclass
class Validated:
    """What the validation pass learnt: the rows' initial state and how many rows each stratum
    of the root holds."""

    state: Any  # dask DataFrame of per-row state (lazy)
    counts: Any  # pandas DataFrame: rows per (cluster, depth, stratum), summed
    summary: dict[str, Any]  # check_stats: rows, missing values per column; row_numbers
    schema: TableSchema  # the plan's, without the row-number columns left out of the features
    #: (bounds, rows): the root's sample drawn ahead by the same read (see ``validate``), or None
    ahead: tuple[dict, Any] | None = None

    @property
    def rows(self) -> int:
        """Rows validated: every row of the input (of its slice with ``input.filters``)."""
        return self.summary["rows"]

    def take_ahead(self) -> tuple[dict, Any] | None:
        """The root's sample drawn ahead, handed over: no longer held here, so that the workers
        let it go once the first level has thinned it (held here, it stayed in their memory
        through every level of the growth)."""
        ahead, self.ahead = self.ahead, None
        return ahead


#: Columns with missing values named on the terminal; the others are counted (all of them are
#: in the manifest's ``missing_values``): a wide table's 117 columns were one line of 4,000
#: characters.
MISSING_NAMED = 8


def missing_line(missing: dict[str, int]) -> str:
    """The validation's missing values for the terminal: the columns with the most (at most
    :data:`MISSING_NAMED`, each with its count), and how many more there are."""
    if not missing:
        return "none"
    top = sorted(missing.items(), key=lambda kv: (-kv[1], kv[0]))
    named = ", ".join(f"{c} {n}" for c, n in top[:MISSING_NAMED])
    more = len(top) - MISSING_NAMED
    return named + (f" and {more} more column{'s' if more > 1 else ''} (all in the manifest's "
                    "missing_values)" if more > 0 else "")


def validate(client: Client, feats, plan: RunPlan, cfg: JobConfig,
             echo: Callable[[str], None], ahead: dict | None = None) -> Validated:
    """The ``validate`` stage: one pass over every row (ids unique and present, no infinite
    values, enough rows, missing values counted), two more only to name repeated ids.

    ``ahead``: upper bounds of the root's sample thresholds, keyed (path, stratum); the same
    read then draws the root's sample at them (``Validated.ahead``), for the first level to
    thin instead of reading every column again.

    Raises :class:`~recluster.errors.InputDataError` naming the column and the file.
    """
    ts, pieces = plan.schema, plan.pieces
    state = passes.initial_state(feats, ts, cfg)  # lazy: cheap to derive in later passes
    stats, n_unique = passes.validation_frames(feats, state, pieces, ts)
    wanted = [stats, n_unique, passes.count_nodes(state)]
    drawn = None
    if ahead:
        *wanted, drawn = client.persist([*wanted, passes.sample_frame(feats, state, 1, ahead, ts)])
    stats, n_unique, counts = client.compute(wanted, sync=True)
    stats = passes.parse_stats(stats)
    if passes.counts_draws(pieces) and int(n_unique) < sum(s["rows"] for s in stats):
        # draws may collide: the ids say (the shuffle's count of ids is exact already)
        n_unique = client.compute(passes.distinct_ids(state), sync=True)
    duplicates = None
    if int(n_unique) < sum(s["rows"] for s in stats) and not any(s["null_ids"] for s in stats):
        # Failing anyway: two more passes say which ids repeat, and in which files.
        duplicates = passes.repeated_id_files(client, state, pieces)
    summary = check_stats(stats, int(n_unique), ts, cfg.embedding.n_neighbors + 2,
                          duplicates, "the slice input.filters keep" if cfg.input.filters
                          else "input")
    echo(f"  {summary['rows']} rows, ids unique, no infinite values; missing values: "
         f"{missing_line(summary['missing'])}")
    # Only features the run chose itself: a column named in input.features is the user's call.
    dropped = row_number_candidates(stats, ts) if cfg.input.features is None else []
    if dropped:  # rare: one more pass counts their distinct values across partitions
        distinct = client.compute(passes.distinct_counts(feats, [ts.key(c) for c in dropped]),
                                  sync=True)
        dropped = [c for c, n in zip(dropped, distinct, strict=True) if n == summary["rows"]]
    if cfg.input.features is None:  # numbered afresh in each file: proven by the stats alone
        dropped += [c for c in per_file_numberings(stats, ts) if c not in dropped]
        # ... unless a file is read in pieces whose values' spans overlap: then one more pass
        # counts (rare); the same table was left out or not by input.rows_per_partition.
        maybe = [c for c in per_file_numberings(stats, ts, overlapping=True) if c not in dropped]
        if maybe:
            distinct = client.compute(passes.distinct_per_file(
                feats, [ts.key(c) for c in maybe], pieces), sync=True)
            dropped += [c for c, n in zip(maybe, distinct, strict=True) if n == summary["rows"]]
    summary["row_numbers"] = dropped
    if ts.index_columns:
        echo(f"  left out of the features: {', '.join(map(repr, ts.index_columns))} -- "
             f"{PANDAS_INDEX_LEFT_OUT}")
    if dropped:
        ts = ts.without(dropped)
        if not ts.features:
            raise InputDataError(
                f"the only feature column{'s' if len(dropped) > 1 else ''} "
                f"({', '.join(map(repr, dropped))}) number the rows ({ROW_NUMBER_EVIDENCE}); "
                f"a row's position is not something to segment on. Name the features in "
                f"input.features")
        echo(f"  left out of the features: {', '.join(map(repr, dropped))} -- a row number: "
             f"{ROW_NUMBER_EVIDENCE}; name the features in "
             f"input.features to use {'them' if len(dropped) > 1 else 'it'}")
    # The sample drawn ahead has the columns of the schema read: not the schema without them.
    return Validated(state, passes.sum_counts(counts), summary, ts,
                     (ahead, drawn) if drawn is not None and not dropped else None)
