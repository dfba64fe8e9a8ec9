"""The job's configuration: one frozen, strictly validated tree loaded once at the edge.

Every section is a pydantic model with ``extra="forbid"`` so that a misspelt key is an
error naming the key, not a silently ignored setting. Credentials never live here: they
come from the environment (``AWS_*``, ``FSSPEC_S3_*``) and are read by the storage layer.
"""

from __future__ import annotations

import copy
import datetime
import math
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recluster.compute.paths import NodePath
from recluster.errors import ConfigError

#: How long an output folder's lock stays held without renewal (``output.lock_lease_s``).
DEFAULT_LEASE_S = 120.0
#: The longest any timeout of the config may be (a year; waits beyond ~292 years overflow).
MAX_TIMEOUT_S = 365 * 86_400.0
#: A config file larger than this is refused unread (real configs are a few KiB).
MAX_CONFIG_BYTES = 1 << 20
#: YAML aliases (``*name``) beyond this many are refused: nested aliases expand exponentially
#: (the "billion laughs"), and a config needs a handful at most.
MAX_YAML_ALIASES = 32
#: Lists and mappings nested deeper than this are refused (a config needs about 4 levels;
#: thousands of ``[`` exhausted the loader's recursion with a traceback).
MAX_YAML_DEPTH = 32

#: ``storage_options`` entries harmless enough to write down (manifest, report, logs, the
#: Kubernetes ConfigMap), as dotted paths into nested options. Every other entry is treated as
#: secret: accepted if it does not look like a credential, but always redacted.
SAFE_STORAGE_OPTIONS = frozenset({
    "anon", "requester_pays", "use_ssl", "endpoint_url", "region_name", "auto_mkdir",
    "version_aware", "cache_regions", "default_block_size", "default_cache_type",
    "default_fill_cache", "use_listings_cache", "listings_expiry_time", "skip_instance_cache",
    "max_concurrency", "fixed_upload_size",
    "client_kwargs.endpoint_url", "client_kwargs.region_name", "client_kwargs.use_ssl",
    "client_kwargs.verify",
    "config_kwargs.connect_timeout", "config_kwargs.read_timeout", "config_kwargs.region_name",
    "config_kwargs.signature_version", "config_kwargs.max_pool_connections",
    "config_kwargs.retries.max_attempts", "config_kwargs.retries.total_max_attempts",
    "config_kwargs.retries.mode", "config_kwargs.s3.addressing_style",
    "s3_additional_kwargs.ServerSideEncryption", "s3_additional_kwargs.StorageClass",
    "s3_additional_kwargs.ACL", "s3_additional_kwargs.RequestPayer",
})
#: Name fragments of credentials (compared lower-case without ``_``, ``-`` or ``.``): such an
#: entry is refused in a config file, wherever it is nested.
CREDENTIAL_WORDS = ("secret", "token", "password", "passwd", "credential", "connectionstring",
                    "accountkey", "sas", "auth", "cookie", "privatekey", "apikey")
REDACTED = "***"
#: What :func:`has_url_credentials` refuses, in words (for messages).
URL_CREDENTIALS = ("a password, a token as an HTTP user name, or a signature, token or key in "
                   "the query string, as in a presigned or SAS URL")


def _number_only(annotation) -> bool:
    """Whether a field's type takes numbers and no ``bool`` (``int``, ``float | None``, ...)."""
    import types
    import typing

    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) or \
        typing.get_origin(annotation) is typing.Union else (annotation,)
    return bool({int, float} & set(args)) and bool not in args and Any not in args


class _Strict(BaseModel):
    # No ``.inf`` or ``.nan``: an infinite timeout overflowed the thread wait (a traceback, and
    # a run left running in the background while the command exited).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value, info):
        # pydantic reads true as 1 in a number: `explain.max_features: true` silently trained
        # every wide model on one feature, `recursion.max_depth: yes` stopped at depth 1.
        if isinstance(value, bool) and _number_only(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"a number is expected, not {str(value).lower()}")
        return value


def _credential_like(key: str) -> bool:
    """Does this option name look like it holds a credential (``key``, ``account_key``,
    ``aws_access_key_id``, ``sse_customer_key``, ``connection_string``, ``credential``, …)?"""
    k = "".join(c for c in key.lower() if c not in "_-.")
    return (k.endswith(("key", "keyid", "keys")) or k in ("pwd", "pass")
            or any(w in k for w in CREDENTIAL_WORDS))


def _credential_param(name: str) -> bool:
    """A URL query parameter that carries a credential: a presigned S3 URL's ``Signature``,
    ``X-Amz-Signature``, ``X-Amz-Credential``, ``X-Amz-Security-Token`` or ``AWSAccessKeyId``,
    an Azure SAS's ``sig``, a signed GCS URL's ``X-Goog-Signature``, any ``token`` or key."""
    k = "".join(c for c in name.lower() if c not in "_-.")
    return _credential_like(name) or "signature" in k or k == "sig"


def has_url_credentials(value: Any) -> bool:
    """A URL that carries a credential: a password (``scheme://user:password@host``), a user
    name on an HTTP(S) URL (where a token goes), or a credential in its query string (a
    presigned or SAS URL)."""
    if not isinstance(value, str) or "://" not in value:
        return False
    scheme, rest = value.split("://", 1)
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    if "@" in netloc:
        userinfo = netloc.rsplit("@", 1)[0]
        if ":" in userinfo or scheme.lower() in ("http", "https"):
            return True
    query = rest.split("?", 1)[1].split("#", 1)[0] if "?" in rest else ""
    return any(_credential_param(k) for k, _ in parse_qsl(query, keep_blank_values=True))


def secret_values(options: Any, prefix: str = "") -> list[str]:
    """The values :func:`redact_options` hides (as text), those long enough to recognise (4 or
    more characters): e.g. to keep them out of an error message a library wrote."""
    found: list[str] = []
    for k, v in (options.items() if isinstance(options, dict) else ()):
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            found += secret_values(v, path + ".")
        elif path not in SAFE_STORAGE_OPTIONS or has_url_credentials(v):
            found += [text for text in _texts(v) if len(text) >= 4]
    return found


def _texts(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [t for v in value.values() for t in _texts(v)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _texts(v)]
    return [str(value)]


def _credential_paths(options: Any, prefix: str = "") -> list[str]:
    """Dotted paths of credential-like entries anywhere in nested options."""
    found = []
    if isinstance(options, dict):
        for k, v in options.items():
            path = f"{prefix}{k}"
            if _credential_like(str(k)) or has_url_credentials(v):
                found.append(path)
            found += _credential_paths(v, path + ".")
    elif isinstance(options, list):
        for i, v in enumerate(options):
            found += _credential_paths(v, f"{prefix}{i}.") if isinstance(v, dict | list) else (
                [f"{prefix}{i}"] if has_url_credentials(v) else [])
    return found


def _no_credentials(options: dict[str, Any], where: str) -> dict[str, Any]:
    found = sorted(_credential_paths(options))
    if found:
        raise ValueError(
            f"{where}.storage_options must not hold credentials ({', '.join(found)}); "
            "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or FSSPEC_S3_*) in the environment"
        )
    return options


#: Names of the columns ``labels/`` holds besides the id (``parallel.passes.labels_table``).
OUTPUT_COLUMNS = re.compile(r"cluster|depth|probability|level_[0-9]+|umap_[0-9]+")


#: ``input.catalog`` (pyiceberg catalog properties) entries harmless enough to write down.
SAFE_CATALOG_OPTIONS = frozenset({
    "name", "type", "uri", "warehouse", "s3.endpoint", "s3.region", "client.region",
    "py-io-impl", "init_catalog_tables",
})


def redact_options(options: Any, prefix: str = "",
                   safe: frozenset[str] = SAFE_STORAGE_OPTIONS) -> Any:
    """Storage options as they may be written down: entries not on ``safe`` (by default
    :data:`SAFE_STORAGE_OPTIONS`) become ``"***"`` (their names stay, their values never)."""
    if not isinstance(options, dict):
        return options
    out = {}
    for k, v in options.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out[k] = redact_options(v, path + ".", safe)
        elif path in safe and not has_url_credentials(v):
            out[k] = v
        else:
            out[k] = REDACTED
    return out


def redacted_paths(options: Any, prefix: str = "",
                   safe: frozenset[str] = SAFE_STORAGE_OPTIONS) -> list[str]:
    """Dotted paths of the entries :func:`redact_options` hides."""
    if not isinstance(options, dict):
        return []
    found = []
    for k, v in options.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            found += redacted_paths(v, path + ".", safe)
        elif path not in safe or has_url_credentials(v):
            found.append(path)
    return found


def _check_path(url: str, where: str) -> str:
    if has_url_credentials(url):
        raise ValueError(f"{where}.path carries a credential ({URL_CREDENTIALS}); credentials "
                         "come from the environment, never from the config")
    return url


class InputConfig(_Strict):
    """Where the table is and which of its columns matter."""

    path: str = Field(description="fsspec URL or local folder of Parquet files")
    id_column: str
    features: list[str] | None = Field(
        default=None, description="feature columns; default: every column except the id"
    )
    exclude: list[str] = Field(
        default_factory=list, description="columns left out when input.features is not given "
        "(timestamps, names, free text): every column except the id and these is a feature")
    categorical: list[str] = Field(default_factory=list)
    storage_options: dict[str, Any] = Field(default_factory=dict)
    rows_per_partition: int = Field(
        default=250_000, ge=1_000, description="row groups are grouped into pieces of about this many rows"
    )
    format: Literal["parquet", "delta", "iceberg"] = Field(
        default="parquet", description="parquet: a folder of Parquet files (Hive partitions "
        "too); delta: a Delta Lake table at input.path; iceberg: input.table of input.catalog, "
        "whose location is input.path")
    filters: list[Any] | None = Field(
        default=None, description="the slice to read, as pyarrow and dask accept it: a list of "
        "[column, op, value] (all must hold) or a list of such lists (any of them); op is one of "
        "= == != < <= > >= in 'not in'. Partitions and row groups outside it are never read")
    version: int | None = Field(default=None, ge=0, description="delta: the table version to read")
    timestamp: str | None = Field(
        default=None, description="delta: read the table as of this ISO-8601 time")
    table: str | None = Field(default=None, description="iceberg: the table, 'namespace.name'")
    catalog: dict[str, Any] = Field(
        default_factory=dict, description="iceberg: pyiceberg catalog properties (name, type, "
        "uri, warehouse, s3.endpoint, ...); credentials come from the environment")
    snapshot_id: int | None = Field(default=None, description="iceberg: the snapshot to read")
    describe: list[str] = Field(
        default_factory=list, description="descriptive columns: read and profiled per segment "
        "(facts.parquet, the report), never used for the embedding, clustering or classifiers"
    )

    @field_validator("storage_options")
    @classmethod
    def _check_options(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _no_credentials(v, "input")

    @field_validator("path")
    @classmethod
    def _check_url(cls, v: str) -> str:
        return _check_path(v, "input")

    @field_validator("catalog")
    @classmethod
    def _check_catalog(cls, v: dict[str, Any]) -> dict[str, Any]:
        found = sorted(_credential_paths(v))
        if found:
            raise ValueError(f"input.catalog must not hold credentials ({', '.join(found)}); "
                             "pyiceberg reads them from the environment (AWS_*, "
                             "PYICEBERG_CATALOG__<NAME>__...)")
        return v

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp_text(cls, v: Any) -> Any:
        # YAML reads an unquoted 2024-06-01T00:00:00Z as a datetime (2024-06-01 as a date): the
        # same time as text. One spelling for every ISO-8601 form (delta-rs parses only RFC 3339
        # with an offset): a date is its midnight, a time without an offset is UTC.
        if v is None or isinstance(v, bool) or not isinstance(v, str | datetime.date):
            return v
        when = iso_time(v)
        if when is None:
            raise ValueError(f"input.timestamp {v!r} is not an ISO-8601 date or time (e.g. "
                             "2024-06-01 or 2024-06-01T12:00:00Z)")
        return when.isoformat()

    @field_validator("filters")
    @classmethod
    def _check_filters(cls, v: list[Any] | None) -> list[list[list[Any]]] | None:
        return None if v is None else filter_dnf(v)

    @model_validator(mode="after")
    def _check_format(self) -> InputConfig:
        own = {"delta": ("version", "timestamp"), "iceberg": ("table", "catalog", "snapshot_id")}
        for fmt, keys in own.items():
            for key in keys:
                if fmt != self.format and getattr(self, key) not in (None, {}):
                    raise ValueError(f"input.{key} is for input.format: {fmt} (this input is "
                                     f"{self.format})")
        if self.version is not None and self.timestamp is not None:
            raise ValueError("input.version and input.timestamp name two versions: give one")
        if self.format == "iceberg" and not self.table:
            raise ValueError("input.format: iceberg needs input.table ('namespace.name')")
        return self

    @model_validator(mode="after")
    def _check_columns(self) -> InputConfig:
        if self.features is not None:
            if not self.features:
                raise ValueError("input.features is empty; omit it to use every column except the id")
            if self.id_column in self.features:
                raise ValueError(f"input.features lists the id column '{self.id_column}'")
            dup = sorted({f for f in self.features if self.features.count(f) > 1})
            if dup:
                raise ValueError(f"input.features lists {dup} more than once")
            stray = sorted(set(self.categorical) - set(self.features))
            if stray:
                raise ValueError(f"input.categorical names {stray}, which are not in input.features")
        if self.exclude:
            if self.features is not None:
                raise ValueError("input.exclude is for a table whose features are every other "
                                 "column; with input.features, leave the column out of that list")
            if self.id_column in self.exclude:
                raise ValueError(f"input.exclude names ['{self.id_column}'], which is the id "
                                 f"column (never a feature; it labels the rows)")
            both = sorted(set(self.exclude) & set(self.categorical))
            if both:
                raise ValueError(f"input.exclude names {both}, which input.categorical lists as "
                                 f"features; leave {'them' if len(both) > 1 else 'it'} out of "
                                 f"one of the two")
        if self.id_column in self.categorical:
            raise ValueError(f"input.categorical lists the id column '{self.id_column}'")
        self._check_describe()
        if OUTPUT_COLUMNS.fullmatch(self.id_column):
            raise ValueError(
                f"input.id_column '{self.id_column}' is also the name of a column recluster writes "
                f"to labels/ (cluster, level_1.., depth, probability, umap_0..), so the labels "
                f"could not hold both; rename the id column in the input (a feature may keep "
                f"such a name)")
        return self

    def _check_describe(self) -> None:
        """``describe`` columns: no repeats, never the id, never a feature or categorical."""
        dup = sorted({c for c in self.describe if self.describe.count(c) > 1})
        if dup:
            raise ValueError(f"input.describe lists {dup} more than once")
        if self.id_column in self.describe:
            raise ValueError(f"input.describe lists the id column '{self.id_column}'")
        for other, cols in (("input.features", self.features or []),
                            ("input.categorical", self.categorical)):
            both = sorted(set(self.describe) & set(cols))
            if both:
                raise ValueError(f"input.describe names {both}, which {other} lists too: a "
                                 "descriptive column is never a feature")


def iso_time(v: str | datetime.date) -> datetime.datetime | None:
    """An ISO-8601 date or time (text, or as YAML reads it) as an aware datetime: a date is its
    midnight, a time without an offset is UTC. None if ``v`` is not one."""
    if isinstance(v, str):
        try:
            v = datetime.datetime.fromisoformat(v.strip())
        except ValueError:
            return None
    if not isinstance(v, datetime.datetime):
        v = datetime.datetime(v.year, v.month, v.day)
    return v if v.tzinfo is not None else v.replace(tzinfo=datetime.UTC)


#: Comparison operators of ``input.filters`` (as ``pyarrow.parquet.filters_to_expression``).
FILTER_OPS = ("=", "==", "!=", "<", "<=", ">", ">=", "in", "not in")


def filter_dnf(filters: list[Any]) -> list[list[list[Any]]]:
    """``input.filters`` in its one canonical shape: a list of conjunctions (any may hold), each a
    list of ``[column, op, value]`` terms (all must hold). One flat list of terms is one
    conjunction. Checks the shape and the operators only; the columns and value types are
    checked against the table (:func:`recluster.compute.schema.resolve_filters`).
    """
    def is_term(t: Any) -> bool:
        return isinstance(t, list | tuple) and len(t) == 3 and isinstance(t[0], str)

    if not filters:
        raise ValueError("input.filters is empty; omit it to read the whole table")
    groups = [filters] if all(is_term(t) for t in filters) else filters
    out = []
    for i, group in enumerate(groups):
        if not isinstance(group, list | tuple) or not group or not all(is_term(t) for t in group):
            raise ValueError(
                f"input.filters[{i}] is not a [column, op, value] term nor a non-empty list of "
                "them; write e.g. [[country, '=', SE], [day, '>=', 2024-01-01]] (all hold), or a "
                "list of such lists (any holds)")
        terms = []
        for col, op, value in group:
            op = str(op).strip().lower()
            if op not in FILTER_OPS:
                raise ValueError(f"input.filters: operator {op!r} on column '{col}' is not one "
                                 f"of {', '.join(FILTER_OPS)}")
            if op in ("in", "not in") and (not isinstance(value, list | tuple) or not value):
                raise ValueError(f"input.filters: '{op}' on column '{col}' needs a non-empty "
                                 "list of values")
            if op not in ("in", "not in") and (value is None or isinstance(value, list | tuple
                                                                           | dict)):
                raise ValueError(f"input.filters: '{op}' on column '{col}' needs one value "
                                 f"(not {value!r}); use 'in' for a list")
            bad = [x for x in (value if isinstance(value, list | tuple) else [value])
                   if isinstance(x, float) and not math.isfinite(x)]
            if bad:  # NaN equals nothing, not even NaN; numbers in a config are finite
                raise ValueError(f"input.filters: value {bad[0]} on column '{col}' is not a "
                                 "finite number")
            terms.append([col, "=" if op == "==" else op, list(value) if op in (
                "in", "not in") else value])
        out.append(terms)
    return out


def parse_filters(text: str | None, source: str) -> list[list[list[Any]]] | None:
    """Filters given as YAML text (``recluster score --filter``), in canonical form."""
    if text is None:
        return None
    try:
        return filter_dnf(safe_yaml(text, source))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source}: {str(exc).replace('input.filters', 'the filter')}") from None


def check_names(names: Any, where: str) -> dict[str, str]:
    """A names mapping (segment path -> name) as given by the user, checked.

    Raises
    ------
    ValueError
        naming ``where`` and the offending key or name.
    """
    if not isinstance(names, dict):
        raise ValueError(f"{where} must map segment paths (root.0, root.2.1, ...) to names")
    out: dict[str, str] = {}
    for key, name in names.items():
        try:  # the labels' own text form (compute/paths.py), which YAML reads as text
            path = str(NodePath.parse(key))
        except ValueError:
            raise ValueError(f"{where}: {key!r} is not a segment path (root.0, root.2.1, ...: "
                             "as in the labels' cluster column)") from None
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise ValueError(f"{where}: the name of segment {path} must be text of 1-200 "
                             "characters")
        out[path] = name.strip()
    taken: dict[str, str] = {}
    for path, name in out.items():
        if name in taken:
            raise ValueError(f"{where}: segments {taken[name]} and {path} are both named "
                             f"{name!r}; names must be unique")
        taken[name] = path
    return out


class OutputConfig(_Strict):
    path: str
    storage_options: dict[str, Any] = Field(default_factory=dict)
    overwrite: bool = Field(
        default=False, description="replace a different recluster run already published at this "
        "path (only the files its manifest lists, and only once this run is fully staged)"
    )
    format: Literal["parquet", "delta"] = Field(
        default="parquet", description="parquet: labels/ as Parquet files; delta: labels/ as a "
        "Delta Lake table (one atomic commit; the rest of the output is the same)")
    lock_lease_s: float = Field(
        default=DEFAULT_LEASE_S, ge=1.0, le=86_400.0,
        description="the output folder's lock stays held this long without renewal (a running "
        "job renews it every quarter lease): a killed run blocks the folder at most this long")
    names: dict[str, str] | str | None = Field(
        default=None, description="segment names chosen by a person, overriding the generated "
        "ones: a mapping (segment path -> name) or the location of a YAML file holding one "
        "(e.g. a names.yaml edited from a run's segments.parquet)")

    @field_validator("names", mode="before")
    @classmethod
    def _check_names(cls, v: Any) -> Any:
        # Before pydantic's types: an unquoted path (YAML's 0 or 1.10) gets check_names' words,
        # as in a names file, not "dict[str,str].0.[key]: Input should be a valid string".
        if isinstance(v, dict):
            return check_names(v, "output.names")
        if isinstance(v, str):
            if has_url_credentials(v):
                raise ValueError(f"output.names carries a credential ({URL_CREDENTIALS})")
        return v

    @field_validator("storage_options")
    @classmethod
    def _check_options(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _no_credentials(v, "output")

    @field_validator("path")
    @classmethod
    def _check_url(cls, v: str) -> str:
        return _check_path(v, "output")


class SampleConfig(_Strict):
    """The per-node sample every fit runs on, drawn by hashing the id (partitioning-independent)."""

    size: int = Field(default=20_000, ge=100)
    stratify_by: str | None = None
    min_per_stratum: int = Field(
        default=50, ge=0, description="each stratum gets at least this many sample rows (or all it "
        "has, or the node's sample target / number of strata if that is smaller: sample.size, or "
        "its share of sample.level_size below the root; the floors never more than double the "
        "sample)"
    )
    max_strata: int = Field(
        default=100, ge=2, description="stratify_by levels beyond this many are folded into one "
        "stratum (the largest max_strata - 1 keep their own), reported in the manifest's "
        "'degraded' and on the terminal"
    )
    holdout_fraction: float = Field(
        default=0.2, gt=0.0, lt=0.5,
        description="share of sample rows held out from the assigner to measure its agreement",
    )
    level_size: int | None = Field(
        default=None, ge=0, description="sample rows shared by all nodes fitted at one level: a "
        "node targets level_size x its share of the level's rows (at least min_node_size, at most "
        "size and its rows). null: size, so that a level costs about what the root does (measured, "
        "README 'Performance'); 0: no budget, every node targets size rows (the behaviour before). At least size, so a level "
        "of one node (the root) is sampled as without it, and a table of at most level_size rows "
        "is sampled as without it at every level"
    )
    min_node_size: int = Field(
        default=5_000, ge=100, description="with a level budget: the floor of a node's sample "
        "target (a node with fewer rows is sampled whole)"
    )

    @model_validator(mode="after")
    def _level_size_covers_size(self) -> SampleConfig:
        if self.level_size and self.level_size < self.size:
            raise ValueError(f"sample.level_size ({self.level_size}) must be at least sample.size "
                             f"({self.size}), or 0 for no level budget: a level's budget covers "
                             "its largest node")
        return self

    @property
    def level_budget(self) -> int | None:
        """Rows a level's nodes share (``level_size``, by default ``size``); None: none."""
        if self.level_size is None:
            return self.size
        return self.level_size or None


class PreprocessConfig(_Strict):
    skew_threshold: float = Field(
        default=1.0, ge=0.0, description="non-negative columns with sample skewness above this get log1p"
    )
    max_categories: int = Field(default=20, ge=1, description="rarer levels fold into '__other__'")
    categorical_scale: Literal["auto", "unit", "column", "standard"] = Field(
        default="auto",
        description="unit: a one-hot level's column is 0/1; column: standard-scaled (1/std of the "
        "0/1 column in the node's sample) and divided by sqrt(levels), so that a categorical "
        "column weighs as one numeric column; standard: as the one-level recipe, a column of L "
        "levels weighs as L numeric columns. Heavier weights won on flavia (whose categoricals "
        "are the signal) and lost on penguins' island and the synthetic country. auto: per node, "
        "standard unless a level large enough to be a cluster is one the other features do not "
        "reproduce (neighbour vote ARI below recursion.min_split_agreement), then unit")
    binary_scale: Literal["auto", "standard"] = Field(
        default="auto",
        description="two-valued numeric columns (bool, 0/1 flags): standard: standard-scaled like "
        "any number (the values lie 1/sqrt(p(1-p)) apart); auto: per node, standard only if both "
        "values are cluster-sized and the other features reproduce the split (neighbour vote ARI "
        ">= recursion.min_split_agreement), else weighed as a 0/1 flag (values 1 apart)")


class EmbeddingConfig(_Strict):
    """UMAP on each node's own scaled sample (every node gets a fresh embedding)."""

    n_components: int = Field(default=2, ge=2, le=16)
    n_neighbors: int = Field(default=15, ge=2, le=200)
    min_dist: float = Field(default=0.0, ge=0.0, le=1.0)
    n_epochs: int | None = Field(
        default=None, ge=10, description="UMAP's optimisation epochs; null: bounded by work -- "
        "500 up to 2,000 distinct rows, then 1,000,000 / rows, at least 200 (from 5,000 rows); "
        "a stability resample runs its node's count (README 'Performance')")
    reduce_above: int | None = Field(
        default=50, ge=2,
        description="a node whose scaled sample has more columns than this is projected on its "
        "own principal components (PCA fitted on the node's sample) before UMAP, and its assigner "
        "routes rows through the same projection; null turns the reduction off")
    reduce_to: int = Field(default=50, ge=2, le=500,
                           description="principal components kept by that reduction")

    @model_validator(mode="after")
    def _check_reduction(self) -> EmbeddingConfig:
        if self.reduce_above is not None and self.reduce_to > self.reduce_above:
            raise ValueError(f"embedding.reduce_to={self.reduce_to} must not exceed "
                             f"embedding.reduce_above={self.reduce_above}")
        return self


class ClusteringConfig(_Strict):
    """HDBSCAN parameters; ``min_cluster_size`` scales with each node's sample."""

    min_cluster_fraction: float = Field(
        default=0.02, gt=0.0, lt=0.5, description="min_cluster_size = this share of the node's sample"
    )
    min_cluster_size_floor: int = Field(
        default=25, ge=2, description="...but at least this many rows: the smallest segment "
        "(about what an explanation model needs: explain.min_child_rows)")
    min_samples: int = Field(
        default=10, ge=1, description="HDBSCAN's min_samples (at most min_cluster_size)")
    cluster_selection_method: Literal["eom", "leaf"] = "eom"


class AssignConfig(_Strict):
    """How every row (not only the sample) gets its cluster."""

    method: Literal["classifier", "knn", "umap"] = Field(
        default="classifier",
        description="classifier: boosted trees trained on the labelled sample; "
        "knn: neighbours of the labelled sample in the scaled space; "
        "umap: umap.transform + hdbscan.approximate_predict (slowest, depends on partition size)",
    )
    k: int = Field(default=10, ge=1, le=100, description="neighbours, for method knn")
    n_estimators: int = Field(default=60, ge=1, le=2000, description="trees, for method classifier")
    max_depth: int = Field(default=6, ge=1, le=16, description="tree depth, for method classifier")
    min_agreement: float = Field(
        default=0.95, ge=0.0, le=1.0,
        description="held-out ARI below this is recorded as a degraded node in the manifest",
    )


class RecursionConfig(_Strict):
    """When a node is zoomed into. Sizes are floors; the evidence decides (see the README)."""

    max_depth: int = Field(default=2, ge=1, le=10)
    min_node_rows: int = Field(
        default=50, ge=10,
        description="the smallest node recluster segments (room for two clusters of "
        "clustering.min_cluster_size_floor): smaller nodes, the whole table included, are not "
        "split, and say so")
    min_node_share: float = Field(
        default=0.0, ge=0.0, lt=1.0,
        description="optionally, nor nodes under this share of all rows (0: sizes are relative "
        "to the node only, so a small child of a huge table is zoomed into like a small table)")
    min_child_rows: int = Field(
        default=10, ge=1,
        description="a split needs two children estimated at this many rows or more")
    min_split_agreement: float = Field(
        default=0.5, ge=0.0, le=1.0,
        description="a split whose clusters the assigner cannot reproduce on held-out sample rows "
        "(ARI below this) is an artefact of the embedding, not structure: it is dropped")
    artefact_splits: Literal["no_recurse", "flag", "off"] = Field(
        default="no_recurse",
        description="a cluster that one discrete column separates on its own (all its rows share "
        "one level, and the other features do not reproduce it) is an artefact of the embedding: "
        "no_recurse: report it in tree.json and do not zoom into it; flag: report only; "
        "off: do not look")


class StabilityConfig(_Strict):
    """Refits on subsamples that score how reproducible each cluster is (Jaccard, Hennig)."""

    resamples: int = Field(default=3, ge=0, le=100, description="0 turns stability off")
    fraction: float = Field(default=0.8, gt=0.1, lt=1.0, description="subsample share of the node's sample")
    max_rows: int = Field(default=10_000, ge=100, description="cap on rows per resample fit")
    stable: float = Field(default=0.75, ge=0.0, le=1.0, description="Hennig: >= 0.75 is stable")
    unstable: Literal["noise", "no_recurse", "flag"] = Field(
        default="noise",
        description="a zoom (a node below the root) keeps the finest HDBSCAN setting whose "
        "clusters all reach `stable`; failing that, noise: its unstable clusters become noise "
        "(their rows stay in the parent's segment) and a zoom with fewer than 2 stable clusters "
        "is not split; no_recurse: unstable clusters are kept but not zoomed into; flag: record "
        "only. The root's unstable clusters are kept and not zoomed into (except with flag)")
    zoom_unstable_root: bool = Field(
        default=True,
        description="with unstable: noise, the root's unstable clusters (kept as segments) are "
        "zoomed into all the same: a cluster that resamples cut differently is often two groups "
        "one level merges, and its zoom keeps only clusters that are stable themselves")
    small_node_rows: int = Field(
        default=200, ge=0,
        description="a zoom with fewer sample rows that resampling refuses (at that size "
        "stability is weak evidence: real sub-structure of ~100 rows scores under 0.75) is split "
        "all the same, on its own clusters, when the Gaussian null test finds more than one "
        "Gaussian in it (its 2-means cluster index below that of Gaussians of its covariance, "
        "p <= null_alpha). 0: off")
    null_alpha: float = Field(
        default=0.05, gt=0.0, lt=1.0,
        description="significance of the Gaussian null test of small zooms (small_node_rows)")
    conclusive: float | None = Field(
        default=0.95, ge=0.0, le=1.0,
        description="a node whose clusters all score at least this on its first resample is "
        "settled on that one (its other resamples are cancelled or never run): the scores of a "
        "clearly separated cluster are ~1 on every resample. null: always every resample. "
        "Unset, it is stability.stable where that is higher")

    @model_validator(mode="before")
    @classmethod
    def _conclusive_follows_stable(cls, data):
        # Left unset, the early stop is never below a stricter ``stable``: a config that raised
        # only ``stable`` (valid before ``conclusive`` existed) is not refused over a key it
        # never names.
        if isinstance(data, dict) and "conclusive" not in data:
            stable = data.get("stable")
            default = cls.model_fields["conclusive"].default
            if isinstance(stable, int | float) and not isinstance(stable, bool) \
                    and stable > default:
                data = {**data, "conclusive": min(float(stable), 1.0)}
        return data

    @model_validator(mode="after")
    def _check_conclusive(self) -> StabilityConfig:
        if self.conclusive is not None and self.conclusive < self.stable:
            raise ValueError(f"stability.conclusive={self.conclusive} must be at least "
                             f"stability.stable={self.stable} (or null)")
        return self


class ExplainConfig(_Strict):
    """One-vs-rest XGBoost per child (xgboost.dask) and TreeSHAP aggregates."""

    enabled: bool = True
    train_rows: int = Field(default=50_000, ge=100, description="hash-drawn training rows per node")
    shap_rows: int = Field(default=20_000, ge=50, description="rows per node whose SHAP values are aggregated")
    holdout_fraction: float = Field(default=0.2, gt=0.0, lt=0.5)
    min_child_rows: int = Field(default=30, ge=1, description="children with fewer training rows get no model")
    n_estimators: int = Field(default=100, ge=1, le=5000)
    max_depth: int = Field(default=4, ge=1, le=16)
    learning_rate: float = Field(default=0.2, gt=0.0, le=1.0)
    gamma: float = Field(default=1.0, ge=0.0, description="minimum loss reduction per split: "
                         "keeps separable clusters from spending trees (and SHAP) on noise")
    min_child_weight: float = Field(default=5.0, ge=0.0)
    local_train_rows: int = Field(
        default=200_000, ge=0, description="a node with at most this many training rows trains "
        "each child's model as one ordinary Dask task (single-node XGBoost, one thread: side by "
        "side, the same result on any number of workers); larger nodes use xgboost.dask")
    retries: int = Field(default=2, ge=0, le=10, description="fresh attempts after a failed training")
    train_timeout_s: float = Field(default=1800.0, gt=0.0, le=MAX_TIMEOUT_S,
                                   description="one training may take this long")
    collective_timeout_s: int = Field(
        default=120, ge=1, le=86_400, description="one XGBoost collective operation (or its group start) may "
        "take this long: a worker whose peer died stops waiting, fails its task and frees its thread")
    max_features: int | None = Field(
        default=50, ge=1, description="on a node of more features, each child's model trains on "
        "only this many: the features that best separate the child from the rest of the node (standardised mean "
        "difference on its training rows); the others get zero SHAP. null: every feature")


class RuntimeConfig(_Strict):
    scheduler: str | None = Field(default=None, description="address of an existing Dask scheduler")
    n_workers: int | None = Field(default=None, ge=1)
    threads_per_worker: int = Field(default=1, ge=1)
    memory_limit: str = "auto"
    numba_cache_dir: str | None = None
    storage_timeout_s: float = Field(
        default=60.0, gt=0.0, le=3_600.0,
        description="connect and read timeout of one storage request")
    storage_retries: int = Field(
        default=5, ge=0, le=20,
        description="retries of a failed storage request (503 SlowDown, reset, timeout) with "
        "exponential backoff; a store that stays down fails the run after them")
    run_timeout_s: float = Field(
        default=86_400.0, gt=0.0, le=MAX_TIMEOUT_S,
        description="the whole run must finish within this; else it stops naming the stage in progress")


class PreviousConfig(_Strict):
    """``run --previous``: reuse an earlier published run's segment paths where segments match
    (README "Runs over time")."""

    path: str | None = Field(default=None, description="output path of an earlier published "
                             "run of the same kind of table (ids compared by value)")
    min_jaccard: float = Field(
        default=0.3, gt=0.0, le=1.0,
        description="a new node keeps the old path it is matched with when the two share at "
        "least this Jaccard of their rows at that level")

    @field_validator("path")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        return None if v is None else _check_path(v, "previous")


class JobConfig(_Strict):
    """The whole job."""

    input: InputConfig
    output: OutputConfig
    sample: SampleConfig = SampleConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    clustering: ClusteringConfig = ClusteringConfig()
    assign: AssignConfig = AssignConfig()
    recursion: RecursionConfig = RecursionConfig()
    stability: StabilityConfig = StabilityConfig()
    explain: ExplainConfig = ExplainConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    previous: PreviousConfig = PreviousConfig()
    seed: int = Field(default=0, ge=0, lt=2**31)

    @model_validator(mode="after")
    def _check_cross(self) -> JobConfig:
        if self.sample.stratify_by == self.input.id_column:
            raise ValueError("sample.stratify_by cannot be the id column")
        if self.assign.k > self.sample.size // 2:
            raise ValueError("assign.k must be at most half of sample.size")
        # A node sample below what UMAP needs stops the node (small_sample) whatever its rows:
        # refused here, so a big node is never left unsplit only because of its sample setting.
        need = self.embedding.n_neighbors + 2
        sizes = {"sample.size": self.sample.size}
        if self.sample.level_budget is not None:
            sizes["sample.min_node_size"] = self.sample.min_node_size
        for name, value in sizes.items():
            if value < need:
                raise ValueError(f"{name} ({value}) must be at least embedding.n_neighbors + 2 "
                                 f"({need}): a node sampled to fewer rows cannot be embedded")
        return self

    def redacted(self) -> dict[str, Any]:
        """The config as plain data with every storage option not on
        :data:`SAFE_STORAGE_OPTIONS` redacted (for manifests, reports and logs)."""
        data = self.model_dump(mode="json")
        for section in ("input", "output"):
            data[section]["storage_options"] = redact_options(data[section]["storage_options"])
        data["input"]["catalog"] = redact_options(data["input"]["catalog"],
                                                  safe=SAFE_CATALOG_OPTIONS)
        return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping (the loader keeps the
    last silently: ``overwrite: false`` ... ``overwrite: true`` would mean ``true``). Keys that
    come in through a merge (``<<: *base``) may be overridden, as YAML intends."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: set[tuple[str, str]] = set()
            for key, _ in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                    continue
                if (key.tag, key.value) in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found the key '{key.value}' twice", key.start_mark)
                seen.add((key.tag, key.value))
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 types a plain ``=`` as a "value" key the safe loader cannot build, so a filter term
# written [month, =, 2] failed as "could not determine a constructor": it is the text "=".
_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:value",
                                 lambda loader, node: loader.construct_scalar(node))


def safe_yaml(text: str, source: str) -> Any:
    """Parse YAML, refusing more than :data:`MAX_YAML_ALIASES` aliases and nesting deeper than
    :data:`MAX_YAML_DEPTH` before building anything, and a key written twice in a mapping.

    Errors name the source, the problem and the line and column, never the text around them
    (a config line may hold something that should not be echoed).
    """
    try:
        aliases = depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                aliases += 1
                if aliases > MAX_YAML_ALIASES:
                    raise ConfigError(
                        f"{source} uses more than {MAX_YAML_ALIASES} YAML aliases (*name); "
                        "nested aliases can expand to billions of entries: write the values out")
            elif isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    mark = event.start_mark
                    raise ConfigError(
                        f"{source} nests lists and mappings more than {MAX_YAML_DEPTH} levels "
                        f"deep (at line {mark.line + 1}, column {mark.column + 1}): not a "
                        "recluster config")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no tags that run code
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{source} is not valid YAML: {problem}{where}") from None


def _coerce_scalar(text: str, source: str) -> Any:
    return safe_yaml(text, source) if text != "" else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML scalars) to raw config data."""
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {key}: '{p}' is not a section")
            node = nxt
        node[parts[-1]] = _coerce_scalar(value, f"--set {key}")
    return out


def parse_config(data: dict[str, Any], source: str = "config") -> JobConfig:
    """Validate raw data into a :class:`JobConfig`, turning pydantic errors into one clear message."""
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError(f"invalid {source}:\n" + "\n".join(lines)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> JobConfig:
    """Read a YAML config file, apply ``--set`` overrides, validate."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    with open(p, "rb") as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{p} is larger than {MAX_CONFIG_BYTES // 1024} KiB: not a recluster "
                          "config (they are a few KiB)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{p} is not UTF-8 text") from None
    data = safe_yaml(text, str(p)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping at the top level")
    return parse_config(apply_overrides(data, overrides or []), source=str(p))
