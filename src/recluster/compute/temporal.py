"""Dates, times and durations in ``input.describe``: read as numbers in one documented unit,
profiled as quantities, shown as dates and times.

Pure (Arrow in, numpy out; numbers in, text out). A descriptive column of a date, timestamp,
time-of-day or duration type is profiled like a numeric one (mean, quartiles, effect size,
above/below the rest's median, missing share), on these numbers (:data:`UNITS`):

- ``date``: days since 1970-01-01 (``date32``, ``date64``);
- ``timestamp``: seconds since 1970-01-01T00:00:00 UTC, the instant (a zoned timestamp), or
  the wall-clock time read as UTC (a timestamp without a zone); the zone is kept beside it
  (``time_zone``) so that values are shown in it;
- ``time``: seconds since midnight (``time32``, ``time64``);
- ``duration``: seconds (``duration``).

Every place a person reads such a value shows it as a date, a time or a duration
(:func:`shown`), never as its number; ``profiles.parquet`` and ``facts.parquet`` keep the
numbers with ``unit`` and ``time_zone`` so that a reader can convert them
(:func:`as_python`). Calendar intervals (months of varying length) are no quantity:
:func:`refusal` says so, naming the column.
"""

from __future__ import annotations

import datetime
import math
import re
import zoneinfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: unit -> what its numbers count (the profiles' and facts' contract, see the README).
UNITS = {
    "date": "days since 1970-01-01",
    "timestamp": "seconds since 1970-01-01T00:00:00 UTC",
    "time": "seconds since midnight",
    "duration": "seconds",
}

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_DAY = 86_400.0
#: seconds per tick of an Arrow time unit
_TICK = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def unit_of(t: pa.DataType) -> str | None:
    """The :data:`UNITS` entry a column whose values are of Arrow type ``t`` is profiled in, or
    None (not a date, time or duration). ``t`` is the values' type: a dictionary's value type,
    an extension type's storage (``recluster.compute.schema`` decodes them)."""
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamp"
    if pa.types.is_time(t):
        return "time"
    if pa.types.is_duration(t):
        return "duration"
    return None


def time_zone(t: pa.DataType) -> str | None:
    """The zone a timestamp type carries (``"America/New_York"``, ``"+05:30"``, ``"UTC"``), or
    None."""
    return t.tz if pa.types.is_timestamp(t) else None


def refusal(name: str, t: pa.DataType, path: str) -> str | None:
    """Why a descriptive column of type ``t`` cannot be profiled as a quantity or a level, or
    None: a calendar interval (``month_day_nano_interval``) has no length in one unit (a month
    is 28 to 31 days)."""
    if pa.types.is_interval(t):
        return (f"describe column '{name}' has type {t} (in {path}): a calendar interval has no "
                "length in one unit (a month is 28 to 31 days), so it cannot be profiled; write "
                "it as a duration or a number (e.g. days), or leave it out of input.describe")
    return None


def to_numbers(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A date, timestamp, time or duration column as float64 in its :data:`UNITS` (missing as
    NaN).

    Returns
    -------
    ndarray (n,) float64
    """
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if isinstance(col.type, pa.BaseExtensionType):
        col = col.storage
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    t = col.type
    if pa.types.is_date32(t):
        ticks, scale = col.cast(pa.int32()), 1.0
    elif pa.types.is_date64(t):  # milliseconds
        ticks, scale = col.cast(pa.int64()), 1e-3 / _DAY
    elif pa.types.is_time32(t):
        ticks, scale = col.cast(pa.int32()), _TICK[t.unit]
    elif pa.types.is_timestamp(t) or pa.types.is_duration(t) or pa.types.is_time64(t):
        # a zoned timestamp's integers are the UTC instant; a plain one's its wall-clock time
        ticks, scale = col.cast(pa.int64()), _TICK[t.unit]
    else:
        raise TypeError(f"not a date, time or duration: {t}")
    out = pc.cast(ticks, pa.float64()).to_numpy(zero_copy_only=False)
    out = np.array(out, dtype=np.float64)  # writable (nulls are NaN already)
    return out * scale if scale != 1.0 else out


def _zone(tz: str | None) -> datetime.tzinfo | None:
    if not tz:
        return None
    m = re.fullmatch(r"([+-])(\d\d):?(\d\d)", tz)
    if m:
        sign = 1 if m[1] == "+" else -1
        return datetime.timezone(sign * datetime.timedelta(hours=int(m[2]), minutes=int(m[3])))
    try:
        return zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return datetime.UTC  # an unknown zone: shown in UTC, which :func:`shown` says


def zone_name(tz: str | None) -> str | None:
    """The zone values of time zone ``tz`` are shown in: ``tz`` itself, or "UTC" where this
    machine's time-zone database does not know it; None for no zone."""
    return None if not tz else "UTC" if _zone(tz) is datetime.UTC else tz


def as_python(v: float, unit: str, tz: str | None = None):
    """A number of :data:`UNITS` back as Python's value: a ``datetime.date``, a
    ``datetime.datetime`` (in its zone; naive for a timestamp without one), a
    ``datetime.time`` or a ``datetime.timedelta``. Raises OverflowError beyond years
    1..9999."""
    if unit == "date":
        return datetime.date(1970, 1, 1) + datetime.timedelta(days=math.floor(v))
    if unit == "duration":
        return datetime.timedelta(seconds=v)
    if unit == "time":
        s = v % _DAY
        return (datetime.datetime(2000, 1, 1) + datetime.timedelta(seconds=s)).time()
    instant = _EPOCH + datetime.timedelta(seconds=v)
    zone = _zone(tz)
    return instant.replace(tzinfo=None) if zone is None else instant.astimezone(zone)


#: Resolutions :func:`shown` writes a date, time or timestamp at.
RESOLUTIONS = ("day", "minute", "second")


def resolution(*values: float, spread: float | None = None) -> str:
    """How finely to show values that should read apart: to the day when they (or ``spread``)
    are at least two days apart, else to the minute, else to the second."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    gap = spread if spread is not None and math.isfinite(spread) else \
        (max(finite) - min(finite) if len(finite) > 1 else float("inf"))
    if gap >= 2 * _DAY:
        return "day"
    return "minute" if gap >= 120 else "second"


def _duration(v: float) -> str:
    """A duration in words with three significant digits: 45 s, 12.5 min, 3.2 h, 4.1 days."""
    sign, a = ("-" if v < 0 else ""), abs(v)
    for size, name in ((_DAY, "days"), (3600.0, "h"), (60.0, "min"), (1.0, "s")):
        if a >= size or size == 1.0:
            x = a / size
            text = f"{x:,.0f}" if x >= 100 else f"{x:.3g}"
            return f"{sign}{text} {name}"
    return f"{sign}{a:.3g} s"  # (unreached)


def shown(v: float | None, unit: str, tz: str | None = None, res: str = "day") -> str:
    """A number of :data:`UNITS` as a person reads it: ``2013-08-14`` (a date, or a timestamp
    at ``res`` "day", in its zone), ``2013-08-14 02:00 EDT`` (to the minute, the zone's
    abbreviation after it; none for a timestamp without a zone), ``14:05`` (a time of day),
    ``3.5 h`` (a duration); "–" for a missing value. A zone this machine does not know is
    shown in UTC, and says so."""
    if v is None or not math.isfinite(v):
        return "–"
    if unit == "duration":
        return _duration(v)
    try:
        value = as_python(v, unit, tz)
    except (OverflowError, ValueError):  # beyond years 1..9999
        return f"{v:.6g} ({UNITS[unit]})"
    if unit == "date":
        return value.isoformat()
    if unit == "time":
        return value.strftime("%H:%M" if res != "second" else "%H:%M:%S")
    if res == "day":
        return value.strftime("%Y-%m-%d")
    text = value.strftime("%Y-%m-%d %H:%M" if res == "minute" else "%Y-%m-%d %H:%M:%S")
    zone = value.tzname() if value.tzinfo is not None else None
    return f"{text} {zone}" if zone else text


def words(unit: str) -> tuple[str, str]:
    """The comparatives of a quantity in this unit, greater first: later/earlier for dates and
    times, longer/shorter for durations."""
    return ("longer", "shorter") if unit == "duration" else ("later", "earlier")


def sides(unit: str) -> tuple[str, str]:
    """Where members stand against the rest's median, greater first: after/before, or
    above/below for durations."""
    return ("above", "below") if unit == "duration" else ("after", "before")


def short_words(unit: str) -> tuple[str, str]:
    """Name fragments of a greater or smaller quantity: Late/Early, Long/Short."""
    return ("Long", "Short") if unit == "duration" else ("Late", "Early")
