"""Numbers and sentences the report states, derived from a run's outputs (pure, no I/O).

The per-cluster sentence comes from the data: features are taken in SHAP order (members' mean
contribution must push towards membership), and the direction of each comes from the profile
(member mean above or below the rest of the parent node; a category level over- or
under-represented). Nothing notable gives a sentence that says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from recluster.compute.routing import ROOT

#: A numeric difference is mentioned from this standardised effect size on.
MIN_EFFECT = 0.3
#: A category level is mentioned when its member share is this many times the rest's (or 1/x).
MIN_LIFT = 1.5
MIN_LEVEL_SHARE = 0.1


@dataclass(frozen=True)
class Finding:
    """One way members differ from the rest of their parent."""

    feature: str
    phrase: str  # e.g. "higher spend", "more often country = BR"
    direction: int  # +1 higher / more often, -1 lower / less often


def cluster_name(path: str) -> str:
    return "the whole table" if path == ROOT else f"cluster {path}"


def parent_phrase(parent: str | None) -> str:
    return "the rest of the population" if parent in (None, ROOT) else f"the rest of cluster {parent}"


def _numeric_finding(feature: str, row: pd.Series) -> Finding | None:
    d = row.get("effect_size")
    if d is None or not math.isfinite(d) or abs(d) < MIN_EFFECT:
        return None
    return Finding(feature, f"{'higher' if d > 0 else 'lower'} {feature}", 1 if d > 0 else -1)


def _categorical_finding(feature: str, rows: pd.DataFrame) -> Finding | None:
    over = rows[(rows["lift"] >= MIN_LIFT) & (rows["member_share"] >= MIN_LEVEL_SHARE)]
    if len(over):
        lvl = over.sort_values(["lift", "level"], ascending=[False, True]).iloc[0]["level"]
        return Finding(feature, f"more often {feature} = {lvl}", 1)
    under = rows[(rows["lift"] <= 1 / MIN_LIFT) & (rows["rest_share"] >= MIN_LEVEL_SHARE)]
    if len(under):
        lvl = under.sort_values(["lift", "level"]).iloc[0]["level"]
        return Finding(feature, f"less often {feature} = {lvl}", -1)
    return None


def _profile_strength(feature: str, prof: pd.DataFrame) -> float:
    rows = prof[prof["feature"] == feature]
    if rows.empty:
        return 0.0
    if rows.iloc[0]["kind"] == "numeric":
        d = rows.iloc[0]["effect_size"]
        return abs(float(d)) if pd.notna(d) else 0.0
    return float((rows["member_share"] - rows["rest_share"]).abs().max() * 2)


def findings(shap: pd.DataFrame | None, prof: pd.DataFrame | None, limit: int = 3) -> list[Finding]:
    """The ``limit`` most important notable differences of one cluster.

    Parameters
    ----------
    shap : this cluster's rows of ``shap_summary.parquet`` (or None)
    prof : this cluster's rows of ``profiles.parquet`` (or None)
    """
    if prof is None or prof.empty:
        return []
    features = list(dict.fromkeys(prof["feature"]))
    if shap is not None and not shap.empty:
        pushes = shap[(shap["mean_abs_shap"] > 0) & (shap["mean_shap"] > 0)]
        order = list(pushes.sort_values("rank")["feature"])
    else:
        order = sorted(features, key=lambda f: (-_profile_strength(f, prof), f))
    out: list[Finding] = []
    for feature in order:
        rows = prof[prof["feature"] == feature]
        if rows.empty:
            continue
        f = (_numeric_finding(feature, rows.iloc[0]) if rows.iloc[0]["kind"] == "numeric"
             else _categorical_finding(feature, rows))
        if f is not None:
            out.append(f)
        if len(out) == limit:
            break
    return out


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def sentence(path: str, parent: str | None, found: list[Finding]) -> str:
    """E.g. "Members have higher f3 and f4, lower f0 and more often country = BR than the rest
    of cluster 3." Grouped by direction, in order of importance."""
    if not found:
        return (f"No single feature separates the members of {cluster_name(path)} clearly from "
                f"{parent_phrase(parent)}.")
    groups: dict[str, list[str]] = {}
    for f in found:
        word, _, rest = f.phrase.partition(" ")
        if word in ("more", "less"):  # "more often X = a"
            word, _, rest = f.phrase.partition(" often ")
            word += " often"
        groups.setdefault(word, []).append(rest)
    parts = [f"{word} {_join(items)}" for word, items in groups.items()]
    return f"Members have {_join(parts)} than {parent_phrase(parent)}."


def headline(found: list[Finding], limit: int = 2) -> str:
    """A short tag for the cluster's title, e.g. "higher f3, lower f0"."""
    return ", ".join(f.phrase for f in found[:limit])


_STOPS = (("max_depth", "depth limit reached"), ("min_node_rows", "too small to split"),
          ("min_node_share", "too small to split"), ("unstable", "not stable enough to split"),
          ("artefact split", "separated by one column only"),
          ("no stable sub-structure", "sub-clusters not stable"),
          ("sub-structure", "no further structure"), ("min_child_rows", "no sub-cluster big enough"),
          ("embedding needs", "too small to split"), ("not reached", "depth limit reached"))


def short_stop(reason: str) -> str:
    """Why a cluster is final, in a few plain words (the full reason goes in a tooltip)."""
    for key, words in _STOPS:
        if key in reason:
            return words
    return reason


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


def profile_rows(shap: pd.DataFrame | None, prof: pd.DataFrame | None,
                 pop: dict[tuple, float], limit: int = 8) -> list[dict[str, Any]]:
    """Rows of a cluster's profile table, most important features first.

    Numeric: member mean, member quartiles, rest mean, population mean, effect size.
    Categorical: the level that differs most (member share, rest share, population share, lift).
    """
    if prof is None or prof.empty:
        return []
    features = list(dict.fromkeys(prof["feature"]))
    if shap is not None and not shap.empty:
        ranked = list(shap.sort_values("rank")["feature"])
        features = [f for f in ranked if f in features] + [f for f in features if f not in ranked]
    else:
        features.sort(key=lambda f: (-_profile_strength(f, prof), f))
    rows = []
    for feature in features[:limit]:
        part = prof[prof["feature"] == feature]
        r = part.iloc[0]
        if r["kind"] == "numeric":
            rows.append({"feature": feature, "kind": "numeric", "member": r["member_mean"],
                         "q25": r["member_q25"], "q75": r["member_q75"], "rest": r["rest_mean"],
                         "population": pop.get((feature, None)), "effect": r["effect_size"]})
        else:
            diff = (part["member_share"] - part["rest_share"]).abs()
            lv = part.loc[diff.idxmax()]
            rows.append({"feature": feature, "kind": "categorical", "level": lv["level"],
                         "member": lv["member_share"], "rest": lv["rest_share"],
                         "population": pop.get((feature, lv["level"])), "lift": lv["lift"]})
    return rows
