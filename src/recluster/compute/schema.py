"""Input schema checks that need only Parquet footers, and per-partition data checks.

Everything here is pure: footers (:class:`recluster.storage.FileInfo`) or a pandas partition
in, a resolved :class:`TableSchema`, a stats dict or an :class:`InputDataError` out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from recluster.config import InputConfig
from recluster.errors import InputDataError


@dataclass(frozen=True)
class TableSchema:
    """The columns a run reads and what each is."""

    id_column: str
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    stratify_by: str | None

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @property
    def columns(self) -> list[str]:
        cols = [self.id_column, *self.features]
        if self.stratify_by and self.stratify_by not in cols:
            cols.append(self.stratify_by)
        return cols


def _kind(t: pa.DataType) -> str:
    """A type's identity for cross-file comparison (string flavours count as one)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    return str(t)


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) \
        or pa.types.is_decimal(t)


def resolve_schema(infos: Sequence, cfg: InputConfig, stratify_by: str | None) -> TableSchema:
    """Check footers against the config and decide each column's role.

    Raises
    ------
    InputDataError
        naming the file and column: a missing id or feature column, a column whose type differs
        between files, or a non-numeric feature not declared categorical.
    """
    first = infos[0]
    if cfg.features is None:
        features = [n for n in first.schema.names if n != cfg.id_column]
        if stratify_by in features and stratify_by not in cfg.categorical:
            features.remove(stratify_by)
    else:
        features = list(cfg.features)
    if not features:
        raise InputDataError(f"{first.path} has no feature columns besides the id '{cfg.id_column}'")
    unknown = [c for c in cfg.categorical if c not in features]
    if unknown:
        raise InputDataError(
            f"input.categorical names column '{unknown[0]}', which is not a feature column of "
            f"{first.path}")
    needed = [cfg.id_column, *features] + ([stratify_by] if stratify_by else [])
    types: dict[str, tuple[str, str, pa.DataType]] = {}
    for info in infos:
        names = set(info.schema.names)
        for col in needed:
            if col not in names:
                role = "id column" if col == cfg.id_column else (
                    "stratify_by column" if col == stratify_by else "feature column")
                raise InputDataError(f"{role} '{col}' is missing from {info.path}")
            t = info.schema.field(col).type
            if col in types and types[col][0] != _kind(t):
                raise InputDataError(
                    f"column '{col}' has type {t} in {info.path} but {types[col][2]} in "
                    f"{types[col][1]}: the files' schemas disagree")
            types.setdefault(col, (_kind(t), info.path, t))
    id_type = types[cfg.id_column][2]
    if not (pa.types.is_integer(id_type) or _kind(id_type) == "string"):
        raise InputDataError(f"id column '{cfg.id_column}' must be integer or string, not {id_type}")
    categorical = [c for c in features if c in cfg.categorical]
    numeric = []
    for c in features:
        if c in cfg.categorical:
            continue
        if not _is_numeric(types[c][2]):
            raise InputDataError(
                f"feature column '{c}' has type {types[c][2]} (in {types[c][1]}); "
                f"declare it under input.categorical or leave it out of input.features")
        numeric.append(c)
    return TableSchema(cfg.id_column, tuple(numeric), tuple(categorical), stratify_by)


def partition_stats(df: pd.DataFrame, schema: TableSchema, path: str) -> dict:
    """Counts one partition contributes to the validation pass.

    Returns
    -------
    dict with ``rows``, ``null_ids``, ``inf``, ``missing`` and ``span`` ([min, max] of the finite
    values, per numeric column), ``path``
    """
    inf = {}
    missing = {}
    span = {}
    for c in schema.numeric:
        x = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        inf[c] = int(np.isinf(x).sum())
        missing[c] = int(np.isnan(x).sum())
        finite = x[np.isfinite(x)]
        span[c] = [float(finite.min()), float(finite.max())] if finite.size else None
    for c in schema.categorical:
        missing[c] = int(df[c].isna().sum())
    return {"rows": len(df), "null_ids": int(df[schema.id_column].isna().sum()),
            "inf": inf, "missing": missing, "span": span, "path": path}


def check_stats(stats: Sequence[dict], n_unique_ids: int, schema: TableSchema,
                min_rows: int) -> dict:
    """Combine per-partition stats and raise on what makes the input unusable.

    Returns
    -------
    dict with ``rows``, ``missing`` (per column, only columns with missing values) and
    ``constant`` (numeric columns with a single value: they carry no information)
    """
    rows = sum(s["rows"] for s in stats)
    for s in stats:
        if s["null_ids"]:
            raise InputDataError(
                f"id column '{schema.id_column}' has {s['null_ids']} missing values in {s['path']}")
        bad = {c: n for c, n in s["inf"].items() if n}
        if bad:
            c, n = sorted(bad.items())[0]
            raise InputDataError(
                f"column '{c}' has {n} infinite values in {s['path']}; replace them (e.g. by null "
                f"to have them imputed) or drop the column")
    if n_unique_ids != rows:
        raise InputDataError(
            f"id column '{schema.id_column}' has duplicate values: {rows} rows but "
            f"{n_unique_ids} distinct ids")
    if rows < min_rows:
        raise InputDataError(
            f"input has {rows} rows; the embedding needs at least {min_rows} "
            f"(embedding.n_neighbors + 2)")
    missing: dict[str, int] = {}
    for s in stats:
        for c, n in s["missing"].items():
            missing[c] = missing.get(c, 0) + n
    all_missing = sorted(c for c, n in missing.items() if n == rows)
    if all_missing:
        raise InputDataError(f"feature column '{all_missing[0]}' has no values at all")
    spans: dict[str, list[float]] = {}
    for s in stats:
        for c, sp in s.get("span", {}).items():
            if sp is not None:
                lo, hi = spans.get(c, sp)
                spans[c] = [min(lo, sp[0]), max(hi, sp[1])]
    constant = sorted(c for c, (lo, hi) in spans.items() if lo == hi)
    return {"rows": rows, "missing": {c: n for c, n in missing.items() if n}, "constant": constant}


def degraded_inputs(summary: dict, infos: Sequence, schema: TableSchema) -> list[dict]:
    """The manifest's ``degraded`` entries the input itself causes (each a defined behaviour):
    empty files skipped, missing values imputed, constant columns that carry nothing."""
    out: list[dict] = [{"file": i.path, "what": "no rows: skipped"} for i in infos if i.n_rows == 0]
    for c, n in sorted(summary["missing"].items()):
        how = ("as the level '__missing__'" if c in schema.categorical
               else "with the median of each node's sample")
        out.append({"column": c, "what": f"{n} missing values imputed {how}"})
    for c in summary["constant"]:
        out.append({"column": c, "what": "constant: one value in every row, carries no "
                    "information (scaled to 0)"})
    return out
