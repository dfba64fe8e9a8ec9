"""What a stakeholder reads about each segment: facts ranked by effect size, a short unique
name, representative rows (exemplars), and why a segment was not split further, in words.

Pure (pandas/numpy in, pandas/dicts out; no Dask, no storage). The facts are derived from the
per-node profiles the explanation pass aggregates on the workers
(:func:`recluster.compute.explain.profiles`), never from all rows.

**Effect sizes on one scale.** A numeric column's effect is the standardised mean difference
(Cohen's *d*: members' mean minus the rest's, over the pooled standard deviation); a category
level's is Cohen's *h* for two proportions, ``2·asin(√p_members) − 2·asin(√p_rest)``. Both read
alike (0.2 small, 0.5 medium, 0.8 large), so numeric and categorical facts rank together.
A level is a fact only with a minimum support (:data:`MIN_SUPPORT` of the members hold it, for
an over-represented level; of the rest, for an under-represented one) and a lift (member share
over rest share) of at least :data:`MIN_LIFT` (or at most its inverse). A ratio with a zero
denominator is undefined, and worded so: "only in this segment", never "100% vs 0%".
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from recluster.compute import temporal
from recluster.compute.explain import OTHER_LEVELS
from recluster.compute.paths import ROOT, NodePath, path_key
from recluster.compute.preprocess import MISSING, OTHER

#: Facts below this absolute effect size (d or h) are not facts.
MIN_EFFECT = 0.2
#: A category level is a fact when its member share is at least this many times the rest's
#: (or at most the inverse) ...
MIN_LIFT = 1.5
#: ... and at least this share of the members (over-represented) or of the rest
#: (under-represented) hold it.
MIN_SUPPORT = 0.05
#: A name is built from facts that at least this share of the members stand behind, if any.
NAME_SUPPORT = 0.5
#: A level longer than this is cut (with "…") in a name fragment: names stay short when a
#: level is free text (the fact's ``text`` and ``level`` keep it whole).
NAME_LEVEL_CHARS = 40
#: Levels that are not values of the column (folded levels), never facts.
NOT_LEVELS = frozenset({OTHER, OTHER_LEVELS})

FACT_COLUMNS = ["path", "parent", "column", "level", "kind", "role", "direction", "effect",
                "lift", "member_value", "rest_value", "member_share", "rank", "text", "short",
                "unit", "time_zone"]
#: The numeric columns of :data:`FACT_COLUMNS` (the others are text): a table of no facts keeps
#: their types (else its all-empty columns were published as text).
FACT_NUMBERS = {"direction": "int64", "effect": "float64", "lift": "float64",
                "member_value": "float64", "rest_value": "float64", "member_share": "float64",
                "rank": "int64"}



# ---------------------------------------------------------------------------- numbers as words


def number(v: float) -> str:
    """A value for a sentence: 3 significant digits, thousands separated."""
    if v is None or not math.isfinite(v):
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def percent(v: float) -> str:
    if v >= 0.995 or v == 0 or v >= 0.1:
        return f"{100 * v:.0f}%"
    if v < 0.0005:  # a share that is not none is never written as one: "0.0%" of weather's
        # rest held rain, next to a lift of 1251 (two significant digits: "0.039%")
        return f"{100 * v:.2g}%"
    return f"{100 * v:.1f}%"


def times(ratio: float) -> str:
    """A lift as a sentence states it: "2.5×", "13.0×", "1,251×" (not "1251.0×")."""
    return f"{ratio:.1f}×" if ratio < 100 else f"{ratio:,.0f}×"


def _cohen_h(p1: float, p2: float) -> float:
    return 2 * math.asin(math.sqrt(min(1.0, max(0.0, p1)))) - \
        2 * math.asin(math.sqrt(min(1.0, max(0.0, p2))))


# ---------------------------------------------------------------------------- facts


#: How :func:`quoted` writes the characters that have a short escape.
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def quoted(text: str) -> str:
    """A column name or level as segment names and facts show it: as given, or in double quotes
    with escapes where it would not read as itself (empty, blank at either end, a line break or
    other character that is not printable): a column named "" made the segment "Low  · ...",
    one holding a line break broke the name over two lines. Inside the quotes every character
    that is not printable is escaped (``\\n``, ``\\u200b``): kept as it was, a zero-width
    space read as "", a right-to-left override turned the rest of the name around and a line
    separator still broke it."""
    if text and text == text.strip() and all(ch.isprintable() for ch in text):
        return text
    return '"' + "".join(_ESCAPES.get(ch) or (ch if ch.isprintable() else
                                              f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else
                                              f"\\U{ord(ch):08x}") for ch in text) + '"'


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def time_unit(r: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """A profile's or fact's ``(unit, time_zone)``: a date, time or duration column's
    (:data:`recluster.compute.temporal.UNITS`), ``(None, None)`` for anything else (and for
    runs published before dates were profiled as quantities)."""
    unit, tz = r.get("unit"), r.get("time_zone")
    if not (isinstance(unit, str) and unit in temporal.UNITS):
        return None, None
    return unit, tz if isinstance(tz, str) and tz else None


def _numeric_fact(r: Mapping[str, Any]) -> dict[str, Any] | None:
    low, high = r.get("two_valued_low"), r.get("two_valued_high")
    if _finite(low) and _finite(high) and low < high:
        return _two_valued_fact(r, float(low), float(high))
    d = r.get("effect_size")
    if d is None or not math.isfinite(d) or abs(d) < MIN_EFFECT:
        return None
    up = d > 0
    share = r.get("member_above_rest_median" if up else "member_below_rest_median")
    share = float(share) if share is not None and math.isfinite(share) else float("nan")
    # A share of all members, as a level's and a flag's are: the shares above and below the
    # rest's median are of the members with a value, and a member without one is on neither
    # side. planes' speed (3,299 of 3,322 missing) said "100% of members are below the rest's
    # median" of a segment 94% of whose members have no speed, and named it "Low speed".
    missing = r.get("member_missing")
    missing = float(missing) if _finite(missing) and missing > 0 else 0.0
    share *= 1.0 - missing
    col = quoted(r["feature"])
    unit, tz = time_unit(r)
    if unit is None:
        words, sides, shorts = ("higher", "lower"), ("above", "below"), ("High", "Low")
        values = f"mean {number(r['member_mean'])} vs {number(r['rest_mean'])}"
    else:  # a date, time or duration: later/earlier (longer/shorter), shown as one
        words, sides, shorts = temporal.words(unit), temporal.sides(unit), \
            temporal.short_words(unit)
        values = _time_values(r, unit, tz)
    pick = 0 if up else 1
    behind = f"; {percent(share)} of members are {sides[pick]} the rest's median" \
        if math.isfinite(share) else ""
    if missing:
        behind += f"; {percent(missing)} of members have no value"
    return {"column": r["feature"], "level": None, "kind": "numeric", "direction": 1 if up else -1,
            "effect": float(d), "lift": float("nan"), "member_value": float(r["member_mean"]),
            "rest_value": float(r["rest_mean"]), "member_share": share,
            "text": f"{words[pick]} {col}: {values} ({abs(d):.2f} sd){behind}",
            "short": f"{shorts[pick]} {col}"}


def _time_values(r: Mapping[str, Any], unit: str, tz: str | None) -> str:
    """A date, time or duration column's two sides as its fact states them: "median
    2013-08-14 vs 2013-04-02", in the profile's unit shown in its time zone
    (:func:`recluster.compute.temporal.shown`); the means where the medians read alike.
    (``member_value`` and ``rest_value`` stay the means, as a number's are.)"""
    what, (m, rest) = "median", (r.get("member_median"), r.get("rest_median"))
    res = temporal.resolution(m, rest)
    if not (_finite(m) and _finite(rest)) or \
            temporal.shown(m, unit, tz, res) == temporal.shown(rest, unit, tz, res):
        what, (m, rest) = "mean", (r["member_mean"], r["rest_mean"])
        res = temporal.resolution(m, rest)
    return f"{what} {temporal.shown(m, unit, tz, res)} vs {temporal.shown(rest, unit, tz, res)}"


def _share_fact(p1: float, p2: float, brief: str) -> dict[str, Any] | None:
    """A value held by ``p1`` of the members and ``p2`` of the rest as a fact (Cohen's h, the
    support and lift rules), or None: ``effect``, ``how`` (in words), ``share`` (of the members
    behind it), ``short`` (a name fragment on ``brief``, the value as a name shows it)."""
    h = _cohen_h(p1, p2)
    if abs(h) < MIN_EFFECT:
        return None
    if h > 0:
        if p1 < MIN_SUPPORT or (p2 > 0 and p1 / p2 < MIN_LIFT):
            return None
        if p2 == 0:
            how = f"only in this segment ({percent(p1)} of members, none of the rest)"
        else:
            how = f"{times(p1 / p2)} as common ({percent(p1)} of members vs {percent(p2)})"
        return {"effect": h, "how": how, "share": p1, "short": brief}
    if p2 < MIN_SUPPORT or (p1 > 0 and p2 / p1 < MIN_LIFT):
        return None
    if p1 == 0:
        how = f"never in this segment (none of members vs {percent(p2)} of the rest)"
        short = f"No {brief}"
    else:
        how = f"{times(p2 / p1)} rarer ({percent(p1)} of members vs {percent(p2)})"
        short = f"Few {brief}"
    # the members that do not hold the value stand behind "rarer"
    return {"effect": h, "how": how, "share": 1 - p1, "short": short}


def _level_fact(r: Mapping[str, Any]) -> dict[str, Any] | None:
    lvl = str(r["level"])
    if lvl in NOT_LEVELS:
        return None
    p1, p2 = float(r["member_share"]), float(r["rest_share"])
    col = quoted(r["feature"])
    shown = "missing" if lvl == MISSING else quoted(lvl)
    # cut before quoting: a cut quoted level lost its closing quote, or ended inside an escape
    brief = shown if lvl == MISSING or len(lvl) <= NAME_LEVEL_CHARS else \
        quoted(lvl[:NAME_LEVEL_CHARS - 1] + "…")
    f = _share_fact(p1, p2, f"{brief} {col}")  # a level as given: "iOS platform", not "IOS"
    if f is None:
        return None
    h = f["effect"]
    return {"column": r["feature"], "level": lvl, "kind": "categorical", "direction": 1 if h > 0 else -1,
            "effect": h, "lift": p1 / p2 if p2 > 0 else float("nan"), "member_value": p1,
            "rest_value": p2, "member_share": f["share"], "text": f"{col} = {shown}: {f['how']}",
            "short": f["short"]}


def _value(v: float) -> str:
    """A value of a two-valued column as itself: 1, 2016, 0.5 (not "2,016")."""
    # exactly (the shortest text that reads back as the value): rounded to 6 digits, two
    # values such as 1e15 and 1e15 + 2, or 0.1234567 and 0.1234568, read as one value
    return str(int(v)) if float(v).is_integer() and abs(v) < 2 ** 53 else repr(float(v))


def _two_valued_fact(r: Mapping[str, Any], low: float, high: float) -> dict[str, Any] | None:
    """A column of two values in the node (a flag, a 0/1 code) as the share of members holding
    one of them, as a two-level categorical is worded: "survived = 1: 2.9× as common (96% of
    members vs 33%)", not "higher survived: mean 0.96 vs 0.33; 0% of members are above the
    rest's median" (the median of values 0 and 1 is one of them: no member is above 1). The
    share of ``high`` is ``(mean - low) / (high - low)`` on each side; the value the members
    hold more often is worded first, the other where that is no fact (its lift is too small,
    say 100% vs 90%, while the other value is "never in this segment"). Named after the value
    the members lean to: a 0/1 column by itself ("survived") or "Not ..." (0), another column
    with the value ("cylinders 4"). ``level`` is that value's text, ``member_value`` and
    ``rest_value`` its shares, ``effect`` Cohen's h."""
    m, rest = r.get("member_mean"), r.get("rest_mean")
    if not (_finite(m) and _finite(rest)):
        return None
    p1 = min(1.0, max(0.0, (float(m) - low) / (high - low)))
    p2 = min(1.0, max(0.0, (float(rest) - low) / (high - low)))
    # Shares of all members (and of all the rest), as a level's are: a member without a value
    # holds neither value (the means are over the values only; "100% of members" was said of
    # a flag most members had no value of).
    held = [1.0 - (float(v) if _finite(v) else 0.0)
            for v in (r.get("member_missing"), r.get("rest_missing"))]
    shares = [(high, p1 * held[0], p2 * held[1]),
              (low, (1 - p1) * held[0], (1 - p2) * held[1])]
    col = quoted(r["feature"])
    lean = max(shares, key=lambda t: _cohen_h(t[1], t[2]))[0]  # (ties: high)
    unit, tz = time_unit(r)
    if unit is None:
        value_text = _value
    else:  # two dates (times, durations): each shown as one, finely enough to read apart
        res = temporal.resolution(low, high)
        value_text = lambda v: temporal.shown(v, unit, tz, res)  # noqa: E731
    flag = low == 0 and high == 1 and unit is None
    name = (col if lean == 1 else f"Not {col}") if flag else f"{col} {value_text(lean)}"
    for value, a, b in sorted(shares, key=lambda t: t[0] != lean):
        f = _share_fact(a, b, name)
        if f is None:
            continue
        # the fact's short is about the lean: "rarer 0" and "more 1" both lean to 1
        return {"column": r["feature"], "level": value_text(value), "kind": "numeric",
                "direction": 1 if lean == high else -1, "effect": f["effect"],
                "lift": a / b if b > 0 else float("nan"), "member_value": a, "rest_value": b,
                "member_share": f["share"],
                "text": f"{col} = {value_text(value)}: {f['how']}", "short": name}
    return None


def _no_facts() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=FACT_NUMBERS.get(c, "str")) for c in FACT_COLUMNS})


def facts_table(profiles: pd.DataFrame | None) -> pd.DataFrame:
    """Every segment's facts, ranked by absolute effect size within the segment.

    Parameters
    ----------
    profiles : ``profiles.parquet`` (rows per node × cluster × column [× level]), or None

    Returns
    -------
    DataFrame (n_facts, len(FACT_COLUMNS)): ``path`` (the segment), ``parent`` (the node it is
    compared within), ``column``, ``level`` (null for numeric), ``kind``, ``role`` (feature or
    describe), ``direction`` (+1 higher / more often, -1 lower / rarer), ``effect`` (d or h),
    ``lift`` (member share / rest share; null when undefined or numeric), ``member_value`` and
    ``rest_value`` (means, or shares of the level), ``member_share`` (share of members behind
    the fact), ``rank`` (1 = strongest in its segment), ``text`` (the fact in words),
    ``short`` (a name fragment), ``unit`` and ``time_zone`` (a date, time or duration
    column's, in which its means are: :data:`recluster.compute.temporal.UNITS`; else null)
    """
    if profiles is None or profiles.empty:
        return _no_facts()
    out = []
    has_role = "role" in profiles.columns
    for r in profiles.to_dict("records"):
        f = _numeric_fact(r) if r["kind"] == "numeric" else _level_fact(r)
        if f is not None:
            unit, tz = time_unit(r)
            out.append({"path": r["cluster"], "parent": r["node"],
                        "role": r["role"] if has_role else "feature", **f,
                        "unit": unit, "time_zone": tz})
    if not out:
        return _no_facts()
    df = pd.DataFrame(out)
    # The two levels of a two-level column have one effect, of opposite signs (Cohen's h of
    # complementary shares), equal but for rounding: the level the members hold more often
    # ranks first, so that a segment of survivors is "yes survived", not "No no survived"
    # (which of the two came first was the last bit of the effects, then the levels' order).
    df["_abs"] = df["effect"].abs().round(9)
    df = df.sort_values(["_abs", "column", "direction", "level"],
                        ascending=[False, True, False, True], na_position="first", kind="stable")
    df["rank"] = df.groupby("path", sort=False).cumcount() + 1
    order = {p: i for i, p in enumerate(sorted(df["path"].unique(), key=path_key))}
    df = df.assign(_order=df["path"].map(order)).sort_values(["_order", "rank"], kind="stable")
    return df[FACT_COLUMNS].reset_index(drop=True)


# ---------------------------------------------------------------------------- names


def generated_names(tree: Sequence[Mapping[str, Any]], facts: pd.DataFrame,
                    limit: int = 2) -> dict[str, str]:
    """A short unique name per segment from its strongest facts ("High spend · SE country").

    Facts that at least :data:`NAME_SUPPORT` of the members stand behind come first; a name
    that two segments would share takes one more fact, then the path. A segment without facts
    is "Segment <path>"; the root is "All rows".
    """
    shorts: dict[str, list[str]] = {}
    if not facts.empty:
        group = synonyms(facts)
        for path, part in facts.groupby("path", sort=False):
            part = part.sort_values("rank")
            records = part[["column", "direction", "short"]].to_dict("records")
            first: dict[tuple, str] = {}  # (column, direction) -> its best-ranked fragment
            for r in records:  # (a missing column or direction matches none, as in pandas)
                if pd.notna(r["column"]) and pd.notna(r["direction"]):
                    first.setdefault((r["column"], r["direction"]), r["short"])
            supported = part["member_share"].fillna(0).to_numpy() >= NAME_SUPPORT
            broad = [r for r, s in zip(records, supported, strict=True) if s]
            seq, taken = [], set()
            for r in [*broad, *records]:
                if len(seq) > limit:  # a name takes at most one fragment more than limit
                    break
                # One fragment per column ("female sex", not also "few male sex"), and per
                # group of columns that move together ("Low carat", not also "Low x · Low y").
                g = group.get(r["column"], r["column"])
                if g not in taken:
                    taken.add(g)
                    seq.append(first.get((g, r["direction"]), r["short"]))
            shorts[path] = seq
    paths = sorted((n["path"] for n in tree if n["path"] != ROOT), key=path_key)
    names = {p: " · ".join(shorts.get(p, [])[:limit]) or f"Segment {p}" for p in paths}
    seen: dict[frozenset[str], list[str]] = {}
    for p, n in names.items():
        seen.setdefault(_name_key(n), []).append(p)
    for group in seen.values():  # one more fact, no more: long names stop being names
        if len(group) > 1:
            for p in group:
                if len(shorts.get(p, [])) > limit:
                    names[p] = " · ".join(shorts[p][:limit + 1])
    names = _unique(names)
    return {ROOT: "All rows", **names}


def synonyms(facts: pd.DataFrame, min_corr: float = 0.9, min_segments: int = 4) -> dict[str, str]:
    """Numeric columns whose effects move together across segments (|correlation| of their
    signed effect sizes at least ``min_corr`` over at least ``min_segments`` segments, e.g. a
    diamond's carat, x, y and z): column -> the group's first column. A name says one of them.
    """
    num = facts[facts["kind"] == "numeric"]
    if num.empty:
        return {}
    # A two-valued column's effect is about its ``level`` (h > 0: members hold that value more
    # often), not about the column being higher: "more often 0" is a lower column. Its
    # ``direction`` says which value the members lean to (+1 the greater): the effect is turned
    # that way, as a measure's d is; else a flag (x > 0) never moved with x.
    if "level" in num.columns:
        two = num["level"].notna()
        num = num.assign(effect=num["effect"].where(~two, num["effect"].abs() * num["direction"]))
    wide = num.pivot_table(index="path", columns="column", values="effect", aggfunc="first")
    if len(wide) < min_segments:
        return {}
    wide = wide.fillna(0.0)
    wide = wide.loc[:, wide.std() > 0]
    corr = wide.corr().abs().to_numpy()
    columns = list(wide.columns)
    # Each column not yet grouped starts a group of every ungrouped column that moves with it
    # (itself included), in column order; a row of the matrix at a time (cell by cell through
    # pandas, 500 numeric columns took seconds).
    grouped = np.zeros(len(columns), dtype=bool)
    out: dict[str, str] = {}
    for i, c in enumerate(columns):
        if grouped[i]:
            continue
        joins = ~grouped & (corr[i] >= min_corr)
        for j in np.flatnonzero(joins):
            out[columns[j]] = c
        grouped |= joins
    return out


def _name_key(name: str) -> frozenset[str]:
    """What a name says: its fragments in any order ("Low balance · High income" and "High
    income · Low balance" are one name to a reader, and were kept as two)."""
    return frozenset(name.split(" · "))


def _unique(names: dict[str, str], keep: frozenset[str] = frozenset()) -> dict[str, str]:
    """Names shared by several segments (fragments in any order, :func:`_name_key`) get their
    path appended (those in ``keep`` stay)."""
    seen: dict[frozenset[str], list[str]] = {}
    for p, n in names.items():
        seen.setdefault(_name_key(n), []).append(p)
    out = dict(names)
    for group in seen.values():
        if len(group) > 1:
            for p in group:
                if p not in keep:
                    out[p] = f"{names[p]} ({p})"
    return out


def apply_names(generated: Mapping[str, str], chosen: Mapping[str, str]) -> tuple[dict[str, str],
                                                                              list[str]]:
    """Names chosen by a person (``output.names`` / ``names.yaml``) over the generated ones.

    Returns
    -------
    names : path -> name, unique (a generated name that equals a chosen one gets its path)
    unknown : the chosen paths this tree has no segment for
    """
    unknown = sorted((p for p in chosen if p not in generated), key=path_key)
    merged = {**generated, **{p: n for p, n in chosen.items() if p in generated}}
    return _unique(merged, frozenset(chosen)), unknown


# ---------------------------------------------------------------------------- stop reasons


def _below(v: float, limit: float) -> str:
    """``v`` with enough digits to show it is below ``limit`` (0.749, not 0.75)."""
    for digits in (2, 3, 4):
        if round(v, digits) < limit:
            return f"{v:.{digits}f}"
    return f"{v:.6f}"


_WORDS: list[tuple[re.Pattern, Any]] = [
    (re.compile(r"too small to segment: (\d+) rows is below recursion\.min_node_rows=(\d+)"),
     lambda m: f"too small: {int(m[1]):,} rows < {int(m[2]):,}"),
    (re.compile(r"share ([\d.]+) is below recursion\.min_node_share=([\d.eE-]+)"),
     lambda m: f"too small: {percent(float(m[1]))} of all rows < {percent(float(m[2]))}"),
    (re.compile(r"max_depth (\d+) reached"), lambda m: f"depth limit reached ({m[1]} levels)"),
    (re.compile(r"unstable: stability ([\d.]+) is below stability\.stable=([\d.]+)"),
     lambda m: f"unstable: {_below(float(m[1]), float(m[2]))} (stable from {float(m[2]):g})"),
    (re.compile(r"artefact split: splits on (.*) only"),
     lambda m: f"one column splits it: {m[1]}"),
    (re.compile(r"artefact split: every cluster is one level"),
     lambda m: "its sub-segments are each one value of a single column"),
    (re.compile(r"no stable sub-structure.*stability\.stable=([\d.]+).*\(([^)]*)\)"),
     lambda m: f"sub-segments unstable: {m[2]} (stable from {float(m[1]):.2f})"),
    (re.compile(r"held-out ARI ([\d.-]+) is below recursion\.min_split_agreement=([\d.]+)"),
     lambda m: f"sub-segments not reproducible: agreement {float(m[1]):.2f} < {float(m[2]):.2f}"),
    (re.compile(r"fewer than 2 children would reach recursion\.min_child_rows=(\d+)"),
     lambda m: f"sub-segments too small: fewer than 2 of {int(m[1]):,} rows or more"),
    (re.compile(r"sample of (\d+) rows is below the (\d+) the embedding needs"),
     lambda m: f"too small: {int(m[1]):,} sampled rows < {int(m[2]):,}"),
    (re.compile(r"every sample row has the same features"), lambda m: "all rows alike"),
    (re.compile(r"all noise"), lambda m: "no dense sub-groups"),
    (re.compile(r"a single cluster|too few distinct rows"), lambda m: "no sub-segments found"),
    (re.compile(r"^not reached$"), lambda m: "depth limit reached"),
]


def stop_words(reason: str | None) -> str:
    """Why a segment was not split further, in words with its numbers ("too small: 180 rows
    < 300", "unstable: 0.42 (stable from 0.75)", "one column splits it: plan = pro"); the
    reason itself when no wording is known; "" for a split node."""
    if not reason:
        return ""
    for pattern, words in _WORDS:
        m = pattern.search(reason)
        if m:
            return words(m)
    return reason


# ---------------------------------------------------------------------------- exemplars


def exemplar_candidates(ids: np.ndarray, embedding: np.ndarray, labels: np.ndarray,
                        n_children: int, k: int = 20) -> dict[int, list[Any]]:
    """Per child of a fitted node, its sample rows nearest its centre on the node's map.

    Parameters
    ----------
    ids : ndarray (n,) the node's sample ids
    embedding : ndarray (n, c) their coordinates on the node's embedding
    labels : ndarray (n,) their cluster in the node's fit (-1 noise)
    k : candidates per child, nearest first

    Returns
    -------
    dict child index -> up to ``k`` ids; the centre is the members' coordinate-wise median
    (robust to a few far-flung members)
    """
    out = {}
    for c in range(n_children):
        m = labels == c
        if not m.any():
            continue
        pts = embedding[m]
        centre = np.median(pts, axis=0)
        order = np.argsort(((pts - centre) ** 2).sum(axis=1), kind="stable")[:k]
        out[c] = list(ids[m][order])
    return out


def pick_exemplars(candidates: Sequence[Any], final: Mapping[Any, str], path: str,
                   n: int = 5) -> list[Any]:
    """The first ``n`` candidates whose final label lies in segment ``path`` (itself or below).
    """
    node = NodePath.parse(path)
    inside = [c for c in candidates if (lab := final.get(c)) is not None
              and node.is_ancestor_of(NodePath.parse(lab), strict=False)]
    return inside[:n]


# ---------------------------------------------------------------------------- segments


def segments_table(tree: Sequence[Mapping[str, Any]], names: Mapping[str, str]) -> pd.DataFrame:
    """One row per node of the tree (root included).

    Returns
    -------
    DataFrame (n_nodes, 14): ``path``, ``name``, ``parent``, ``depth``, ``rows``, ``share`` (of
    all rows), ``share_of_parent``, ``stability``, ``auc`` (the one-vs-rest classifier's
    held-out ROC AUC: how faithfully the features tell members from the rest of the parent),
    ``n_children``, ``final`` (not split further), ``stop`` (why, in words), ``stop_reason``
    (as in ``tree.json``), ``artefact``
    """
    by_path = {n["path"]: n for n in tree}
    rows = []
    for n in sorted(tree, key=lambda n: path_key(n["path"])):
        parent = by_path.get(n["parent"]) if n.get("parent") else None
        auc = (n.get("classifier") or {}).get("auc")
        rows.append({
            "path": n["path"], "name": names.get(n["path"], n["path"]), "parent": n.get("parent"),
            "depth": int(n["depth"]), "rows": int(n["size"]), "share": float(n["share"]),
            "share_of_parent": (n["size"] / parent["size"]) if parent and parent["size"]
            else None,
            "stability": n.get("stability"), "auc": auc, "n_children": len(n["children"]),
            "final": not n["children"], "stop": stop_words(n.get("stop_reason")),
            "stop_reason": n.get("stop_reason"), "artefact": n.get("artefact")})
    return pd.DataFrame(rows).astype({"share_of_parent": float, "stability": float,
                                      "auc": float})
