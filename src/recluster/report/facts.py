"""Numbers and sentences the report states, derived from a run's outputs (pure, no I/O).

The per-segment sentence comes from ``facts.parquet`` (:mod:`recluster.compute.segments`):
the strongest facts by effect size, one per column, grouped by direction; a level the rest
never has is worded as such. Nothing notable gives a sentence that says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from recluster.compute import temporal
from recluster.compute.paths import ROOT
from recluster.compute.preprocess import MISSING
from recluster.compute.segments import quoted, time_unit


@dataclass(frozen=True)
class Finding:
    """One way members differ from the rest of their parent (a row of ``facts.parquet``)."""

    feature: str
    word: str  # "higher", "lower", "later", "earlier", "longer", "shorter", "more often",
    # "less often", "only", "never"
    item: str  # "spend", "country = BR"
    direction: int  # +1 higher / more often, -1 lower / less often
    text: str  # the fact with its numbers, as facts.parquet words it

    @property
    def phrase(self) -> str:
        return f"{self.word} {self.item}"


def cluster_name(path: str) -> str:
    return "the whole table" if path == ROOT else f"segment {path}"


def parent_phrase(parent: str | None) -> str:
    return "the rest of the population" if parent in (None, ROOT) else f"the rest of segment {parent}"


def _finding(r: dict[str, Any]) -> Finding:
    # Names and levels as segment names show them: a column named "" made "higher , lower x".
    col, up = r["column"], r["direction"] > 0
    if r["kind"] == "numeric" and not isinstance(r.get("level"), str):
        unit = time_unit(r)[0]  # a date or time is later or earlier, a duration longer
        more, less = ("higher", "lower") if unit is None else temporal.words(unit)
        return Finding(col, more if up else less, quoted(col), r["direction"], r["text"])
    if r["kind"] == "numeric":
        # a two-valued column's fact is about one of its values, its ``level``, worded as a
        # category's ("more often survived = 1"): more or less often as its effect says (its
        # direction is the value the members lean to)
        up = r["effect"] > 0
    lvl = r["level"]
    item = f"{quoted(col)} = {'missing' if lvl == MISSING else quoted(lvl)}"
    if up:
        word = "only" if r["rest_value"] == 0 else "more often"
    else:
        word = "never" if r["member_value"] == 0 else "less often"
    return Finding(col, word, item, 1 if up else -1, r["text"])


def findings(facts: pd.DataFrame | None, limit: int = 3) -> list[Finding]:
    """The ``limit`` strongest facts of one segment, by effect size, one per column.

    Parameters
    ----------
    facts : this segment's rows of ``facts.parquet`` (or None)
    """
    if facts is None or facts.empty:
        return []
    out: list[Finding] = []
    seen: set[str] = set()
    for r in facts.sort_values("rank").to_dict("records"):
        if r["column"] in seen:
            continue
        seen.add(r["column"])
        out.append(_finding(r))
        if len(out) == limit:
            break
    return out


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def sentence(path: str, parent: str | None, found: list[Finding]) -> str:
    """E.g. "Members have higher f3 and f4, lower f0 and more often country = BR than the rest
    of segment 3." Grouped by direction, strongest first; a level the rest never has is said
    so ("Only members have plan = pro."), never as a ratio."""
    if not found:
        return (f"No single column separates the members of {cluster_name(path)} clearly from "
                f"{parent_phrase(parent)}.")
    groups: dict[str, list[str]] = {}
    for f in found:
        groups.setdefault(f.word, []).append(f.item)
    parts = [f"{word} {_join(items)}" for word, items in groups.items()
             if word not in ("only", "never")]
    out = [f"Members have {_join(parts)} than {parent_phrase(parent)}."] if parts else []
    if "only" in groups:
        out.append(f"Only members have {_join(groups['only'])}"
                   f" (no one in {parent_phrase(parent)} has it).")
    if "never" in groups:
        out.append(f"No member has {_join(groups['never'])}.")
    return " ".join(out)


def overview(tree: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows, clusters per level, leaves, and noise shares from ``tree.json``.

    ``noise_first``: share of rows in no first-level cluster; ``noise_total``: share of rows
    that were noise in some split (they stay in the node above, not in a leaf).
    """
    by_path = {n["path"]: n for n in tree}
    total = by_path[ROOT]["size"]
    per_level: dict[int, int] = {}
    for n in tree:
        if n["depth"] > 0:
            per_level[n["depth"]] = per_level.get(n["depth"], 0) + 1
    noise = {p: n["size"] - sum(by_path[c]["size"] for c in n["children"])
             for p, n in by_path.items() if n["children"]}
    return {
        "rows": total,
        "clusters_per_level": dict(sorted(per_level.items())),
        "leaves": sum(1 for n in tree if not n["children"] and n["path"] != ROOT),
        "noise_first": (noise.get(ROOT, 0) / total) if total else 0.0,
        "noise_total": (sum(noise.values()) / total) if total else 0.0,
        "split": bool(by_path[ROOT]["children"]),
    }


def population(tree: list[dict[str, Any]], profiles: pd.DataFrame | None) -> dict[tuple, float]:
    """Population mean of each numeric feature and share of each category level.

    Estimated from any first-level cluster's profile: ``s * member + (1 - s) * rest`` with
    ``s`` the cluster's share of all rows. Keys: ``(feature, None)`` or ``(feature, level)``.
    """
    if profiles is None or profiles.empty:
        return {}
    by_path = {n["path"]: n for n in tree}
    first = profiles[profiles["node"] == ROOT]
    if first.empty:
        return {}
    cluster = first["cluster"].iloc[0]
    s = by_path[cluster]["share"]
    out: dict[tuple, float] = {}
    for _, r in first[first["cluster"] == cluster].iterrows():
        if r["kind"] == "numeric":
            out[(r["feature"], None)] = s * r["member_mean"] + (1 - s) * r["rest_mean"]
        else:
            out[(r["feature"], r["level"])] = s * r["member_share"] + (1 - s) * r["rest_share"]
    return out


def _profile_strengths(prof: pd.DataFrame) -> dict[str, float]:
    """How much each column of a segment's profile differs between members and the rest: a
    numeric column's absolute effect size (0 when undefined), twice a categorical's largest
    level share difference. Every column at once (per column, selecting its rows and reading
    them row by row was quadratic in the width: a 1,503-column run's report took 42 s of 44)."""
    by = prof.groupby("feature", sort=False)
    numeric = by["kind"].first() == "numeric"
    effect = by["effect_size"].first().abs().fillna(0.0)
    share = (prof["member_share"] - prof["rest_share"]).abs().groupby(prof["feature"],
                                                                      sort=False).max() * 2
    return {f: float(effect[f] if numeric[f] else share[f]) for f in numeric.index}


def profile_rows(facts: pd.DataFrame | None, prof: pd.DataFrame | None,
                 pop: dict[tuple, float], limit: int = 8) -> list[dict[str, Any]]:
    """Rows of a segment's profile table, strongest fact first (then the other columns by how
    much they differ).

    Numeric: member mean, member quartiles, rest mean, population mean, effect size (and a
    date or time column's ``unit`` and ``time_zone``, in which they are).
    Categorical: the level of the strongest fact (else the one that differs most): member
    share, rest share, population share, lift (None when the rest has none).
    """
    if prof is None or prof.empty:
        return []
    columns = list(dict.fromkeys(prof["feature"]))
    strength = _profile_strengths(prof)
    top_level: dict[str, Any] = {}
    ranked: list[str] = []
    if facts is not None and not facts.empty:
        for r in facts.sort_values("rank").to_dict("records"):
            if r["column"] not in top_level:
                ranked.append(r["column"])
                top_level[r["column"]] = r["level"]
    rest = sorted((c for c in columns if c not in top_level),
                  key=lambda c: (-strength[c], c))
    rows = []
    for feature in [c for c in ranked if c in columns] + rest:
        part = prof[prof["feature"] == feature]  # at most ``limit`` columns get here
        r = part.iloc[0]
        role = r["role"] if "role" in part.columns else "feature"
        if r["kind"] == "numeric":
            unit, tz = time_unit(r)
            rows.append({"feature": feature, "kind": "numeric", "role": role,
                         "member": r["member_mean"], "q25": r["member_q25"],
                         "q75": r["member_q75"], "rest": r["rest_mean"],
                         "population": pop.get((feature, None)), "effect": r["effect_size"],
                         "unit": unit, "time_zone": tz})
        else:
            chosen = part[part["level"] == top_level.get(feature)]
            if chosen.empty:
                diff = (part["member_share"] - part["rest_share"]).abs()
                chosen = part.loc[[diff.idxmax()]]
            lv = chosen.iloc[0]
            rows.append({"feature": feature, "kind": "categorical", "role": role,
                         "level": lv["level"], "member": lv["member_share"],
                         "rest": lv["rest_share"], "population": pop.get((feature, lv["level"])),
                         "lift": lv["lift"] if lv["rest_share"] > 0 else None})
        if len(rows) == limit:
            break
    return rows
