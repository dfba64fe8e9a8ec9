"""Two runs over time, compared row by row: segment paths per level, flows between segments,
the kind of every flow (same, split, merged, new, gone, moved), and the matching that lets a new
run reuse an old run's paths (``run --previous``).

Pure pandas/numpy/scipy over small frames (per partition, or the aggregated flow counts);
no Dask, no storage.

Vocabulary. A *segment at level L* is the path a row's final ``cluster`` path has when cut to
its first ``L`` components (``3.1`` is ``3`` at level 1; ``root`` and ``3`` stay what they
are at any level); the *leaf* level is the final path itself. A *flow* is a pair (old path, new
path) with the number of rows (ids, matched by value) it holds; a row present in only one run
flows from or to ``None``.

Kinds of a flow (o, n) with ``shared`` rows. Sizes are counted on the rows present in both
runs (``|o|``, ``|n|``; a segment's rows absent from the other run are reported apart, as flows
from or to None), and the Jaccard is ``shared / (|o| + |n| - shared)``; ``main`` (X, default
0.5), ``same_jaccard`` (Y, 0.5) and ``min_share`` (A, 0.1) are :class:`CompareRule`. A flow is
*significant* when it holds at least A of ``|o|`` and at least A of ``|n|``. A segment *vanished*
when fewer than A of all its rows are in the other run (it *appeared*, for a new segment). The
first rule that holds gives the kind:

1. ``same``: ``shared > X|o|`` and ``shared > X|n|`` (strictly) and Jaccard ``>= Y``, neither
   vanished nor appeared (the two are mostly each other: at most one such flow per segment);
2. ``split``: significant, ``o`` has at least two significant flows into new segments, ``n``
   comes mostly from ``o`` (``shared >= X|n|``), ``o`` did not vanish;
3. ``merged``: significant, ``n`` has at least two significant flows from old segments, ``o``
   goes mostly into ``n`` (``shared >= X|o|``), ``n`` did not appear;
4. ``new``: the rows are not in the old run (``o`` is None), ``n`` appeared, or ``n`` has no
   significant flow from any old segment;
5. ``gone``: the rows are not in the new run (``n`` is None), ``o`` vanished, or ``o`` has no
   significant flow into any new segment;
6. ``moved``: any other flow (rows that changed segment without changing the structure).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recluster.compute.paths import ROOT, NodePath, is_path_text

LEAF = "leaf"
#: Stands for "not in this run" while counting (group keys cannot be None everywhere).
ABSENT = "\x00absent"
KINDS = ("same", "split", "merged", "new", "gone", "moved")
#: What a published run's ``cluster`` value is: ``root`` or child numbers joined by dots.


def bad_paths(paths: Sequence[object]) -> list[object]:
    """The values of a labels ``cluster`` column that are not segment paths (null included),
    each once, in order of appearance: what a run recluster wrote never has any.

    Parameters
    ----------
    paths : sequence (n,) of the column's values

    Returns
    -------
    list of the offending values (empty when every value is a path)
    """
    seen: dict[object, None] = {}
    for p in paths:
        if (not isinstance(p, str) or not is_path_text(p)) and repr(p) not in seen:
            seen[repr(p)] = p
    return list(seen.values())


@dataclass(frozen=True)
class CompareRule:
    """Thresholds of the kinds (see the module docstring)."""

    main: float = 0.5
    same_jaccard: float = 0.5
    min_share: float = 0.1


def cut_paths(paths: np.ndarray, level: int | None) -> np.ndarray:
    """Each path cut to its first ``level`` components (None: unchanged, the leaf level).

    Parameters
    ----------
    paths : ndarray (n,) of str (``root``, ``3``, ``3.1``) or :data:`ABSENT`
    level : int >= 1, or None

    Returns
    -------
    ndarray (n,) of str
    """
    if level is None:
        return paths
    out = np.empty(len(paths), dtype=object)
    for i, p in enumerate(paths):
        node = None if p == ABSENT else NodePath.parse(p)
        out[i] = p if node is None or node.depth <= level else str(node.ancestor(level))
    return out


def level_name(level: int | None) -> str:
    return LEAF if level is None else f"level_{level}"


def flow_counts(joined: pd.DataFrame, levels: Sequence[int | None]) -> pd.DataFrame:
    """Rows per (level, old path, new path) in one partition of the joined runs.

    Parameters
    ----------
    joined : DataFrame (n, >= 2) with ``old`` and ``new`` final paths (None or NaN where a row is
        in one run only)
    levels : the levels to count (None: leaf)

    Returns
    -------
    DataFrame (k, 4): ``level`` (str), ``old``, ``new`` (str, :data:`ABSENT` for no row), ``rows``
    """
    old = joined["old"].astype(object).where(joined["old"].notna(), ABSENT).to_numpy()
    new = joined["new"].astype(object).where(joined["new"].notna(), ABSENT).to_numpy()
    frames = []
    for level in levels:
        f = pd.DataFrame({"old": cut_paths(old, level), "new": cut_paths(new, level)})
        g = f.groupby(["old", "new"], sort=True).size().rename("rows").reset_index()
        g.insert(0, "level", level_name(level))
        frames.append(g)
    if not frames or not len(joined):
        return empty_flows()
    return pd.concat(frames, ignore_index=True).astype({"rows": "int64"})


def empty_flows() -> pd.DataFrame:
    return pd.DataFrame({"level": pd.Series([], dtype=object), "old": pd.Series([], dtype=object),
                         "new": pd.Series([], dtype=object), "rows": pd.Series([], dtype="int64")})


def classify(flows: pd.DataFrame, rule: CompareRule | None = None) -> pd.DataFrame:
    """The kind of every flow of one level (see the module docstring).

    Parameters
    ----------
    flows : DataFrame (k, >= 3): ``old``, ``new`` (:data:`ABSENT` for rows in one run only),
        ``rows``; one row per pair
    rule : CompareRule

    Returns
    -------
    DataFrame (k, 10): ``old_path``, ``new_path`` (None for rows in one run only),
    ``shared_rows``, ``old_rows``, ``new_rows`` (the segments' sizes), ``old_rows_in_both``,
    ``new_rows_in_both`` (their rows present in both runs), ``jaccard`` (on rows in both runs),
    ``kind``, ``significant``
    """
    rule = rule or CompareRule()
    f = flows.groupby(["old", "new"], sort=True)["rows"].sum().reset_index()
    o_abs = (f["old"] == ABSENT).to_numpy()
    n_abs = (f["new"] == ABSENT).to_numpy()
    real = ~o_abs & ~n_abs
    s = f["rows"].to_numpy(dtype=np.float64)
    both = pd.Series(np.where(real, s, 0.0))

    def size(side: str, values: pd.Series) -> np.ndarray:
        out = f[side].map(values.groupby(f[side].to_numpy()).sum()).to_numpy(dtype=np.float64,
                                                                             copy=True)
        out[(f[side] == ABSENT).to_numpy()] = 0.0  # a side absent from a run has no size there
        return out

    o_all, n_all = size("old", pd.Series(s)), size("new", pd.Series(s))
    o_both, n_both = size("old", both), size("new", both)
    jac = np.where(real, s / np.maximum(o_both + n_both - s, 1.0), 0.0)
    sig = real & (s >= rule.min_share * o_both) & (s >= rule.min_share * n_both)
    n_out = f["old"].map(pd.Series(sig).groupby(f["old"].to_numpy()).sum()).to_numpy()
    n_in = f["new"].map(pd.Series(sig).groupby(f["new"].to_numpy()).sum()).to_numpy()
    vanished = ~o_abs & (o_both < rule.min_share * o_all)  # o's rows are mostly not in NEW
    appeared = ~n_abs & (n_both < rule.min_share * n_all)  # n's rows are mostly not in OLD
    kind = np.full(len(f), "moved", dtype=object)
    undecided = np.ones(len(f), dtype=bool)
    for name, cond in (
            ("same", real & (s > rule.main * o_both) & (s > rule.main * n_both)
             & (jac >= rule.same_jaccard) & ~vanished & ~appeared),
            ("split", sig & (n_out >= 2) & (s >= rule.main * n_both) & ~vanished),
            ("merged", sig & (n_in >= 2) & (s >= rule.main * o_both) & ~appeared),
            ("new", o_abs | appeared | (real & (n_in == 0))),
            ("gone", n_abs | vanished | (real & (n_out == 0)))):
        hit = undecided & cond
        kind[hit] = name
        undecided &= ~hit
    return pd.DataFrame({
        "old_path": f["old"].where(~o_abs, None).astype(object),
        "new_path": f["new"].where(~n_abs, None).astype(object),
        "shared_rows": f["rows"].astype("int64"),
        "old_rows": o_all.astype(np.int64),
        "new_rows": n_all.astype(np.int64),
        "old_rows_in_both": o_both.astype(np.int64),
        "new_rows_in_both": n_both.astype(np.int64),
        "jaccard": np.round(jac, 6),
        "kind": kind,
        "significant": sig,
    })


def matches_table(flows: pd.DataFrame, rule: CompareRule | None = None) -> pd.DataFrame:
    """:func:`classify` of every level of ``flows`` (leaf first, then ``level_1``, ...), with a
    ``level`` column first."""
    frames = []
    for level in sorted(flows["level"].unique(), key=level_order):
        m = classify(flows[flows["level"] == level], rule)
        m.insert(0, "level", level)
        frames.append(m)
    return pd.concat(frames, ignore_index=True) if frames else classify(empty_flows()).assign(
        level=pd.Series([], dtype=object))


def level_order(name: str) -> int:
    return 0 if name == LEAF else int(name.split("_", 1)[1])


def segment_fates(matches: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Per level, how many old segments are same / split / merged / gone / moved and how many new
    segments are new. An old segment is ``split`` if any of its flows is a split, else ``same``
    if one is, else ``merged`` if one is, else ``gone`` if all its flows are; else ``moved``. A
    new segment is ``new`` when every flow into it is.

    Returns
    -------
    dict level -> {"old segments", "new segments", "same", "split", "merged", "gone", "moved",
    "new", "rows only in old", "rows only in new"}
    """
    out = {}
    for level, m in matches.groupby("level", sort=False):
        real_o = m[m["old_path"].notna()]
        real_n = m[m["new_path"].notna()]
        fates = {"old segments": int(real_o["old_path"].nunique()),
                 "new segments": int(real_n["new_path"].nunique())}
        fates.update({k: 0 for k in KINDS})
        for _, g in real_o.groupby("old_path"):
            kinds = set(g["kind"])
            fate = next((k for k in ("split", "same", "merged") if k in kinds),
                        "gone" if kinds == {"gone"} else "moved")
            fates[fate] += 1
        fates["new"] = int(sum(set(g["kind"]) == {"new"} for _, g in real_n.groupby("new_path")))
        fates["rows only in old"] = int(m.loc[m["new_path"].isna(), "shared_rows"].sum())
        fates["rows only in new"] = int(m.loc[m["old_path"].isna(), "shared_rows"].sum())
        out[level] = fates
    return out


# ---------------------------------------------------------------------------- stable paths


def _components(path: str) -> list[int]:
    return list(NodePath.parse(path).parts)


def child_of(parent: str, k: int) -> str:
    return str(NodePath.parse(parent).child(k))


def stable_paths(children: Mapping[str, Sequence[str]], flows: pd.DataFrame,
                 old_children: Mapping[str, Sequence[str]], min_jaccard: float,
                 ) -> dict[str, str]:
    """Final paths for a new tree whose nodes reuse the paths of an old tree where they match.

    Level by level from the root: the children of a new node whose final path is ``P`` are
    matched to the old run's children of ``P`` by maximum-weight matching on shared rows
    (:func:`scipy.optimize.linear_sum_assignment`); a matched pair is kept when its Jaccard at
    that level is at least ``min_jaccard``, and the new child takes the old child's path. The
    other children take fresh numbers under ``P``, above every number the old run used there
    (in their own order), so that no new segment takes a path the old run gave another one.

    Parameters
    ----------
    children : new node path (internal) -> its children's internal paths, ``root`` included
    flows : DataFrame with ``level`` (``level_L``), ``old`` (old path cut to L), ``new``
        (internal new path cut to L), ``rows``: the new rows flowing between them
    old_children : old node path -> the old run's children paths of it
    min_jaccard : float

    Returns
    -------
    dict internal path -> final path, every node of ``children`` (and their children) included
    """
    from scipy.optimize import linear_sum_assignment

    final = {ROOT: ROOT}
    frontier = [ROOT]
    depth = 0
    while frontier:
        depth += 1
        level = flows[flows["level"] == level_name(depth)]
        old_size = level.groupby("old")["rows"].sum()
        new_size = level.groupby("new")["rows"].sum()
        shared = {(o, n): r for o, n, r in level[["old", "new", "rows"]].itertuples(index=False)}
        nxt = []
        for parent in frontier:
            kids = list(children.get(parent, []))
            if not kids:
                continue
            target = final[parent]
            olds = list(old_children.get(target, []))
            taken: dict[str, str] = {}
            if olds:
                w = np.array([[shared.get((o, n), 0) for o in olds] for n in kids], dtype=float)
                rows, cols = linear_sum_assignment(w, maximize=True)
                for i, j in zip(rows, cols, strict=True):
                    s = w[i, j]
                    union = old_size.get(olds[j], 0) + new_size.get(kids[i], 0) - s
                    if s > 0 and s / max(union, 1.0) >= min_jaccard:
                        taken[kids[i]] = olds[j]
            used = [_components(o)[-1] for o in olds]
            fresh = max(used, default=-1) + 1
            for kid in kids:
                if kid in taken:
                    final[kid] = taken[kid]
                else:
                    final[kid] = child_of(target, fresh)
                    fresh += 1
            nxt += kids
        frontier = nxt
    return final


def rename_state(state: pd.DataFrame, final: Mapping[str, str]) -> pd.DataFrame:
    """A partition's labels state (or labels) with every path renamed by ``final``: ``cluster``
    and ``level_1..`` (each row's level values up to its path's length are that path's
    components; deeper ones, -1 or null, stay).

    Parameters
    ----------
    state : DataFrame (n, ...) with ``cluster`` and ``level_<L>`` columns
    final : internal path -> final path (paths not in it are kept)

    Returns
    -------
    DataFrame (n, ...), a copy
    """
    out = state.copy()
    if not len(out):
        return out
    paths = out["cluster"].to_numpy()
    renamed = np.array([final.get(p, p) for p in paths], dtype=object)
    out["cluster"] = pd.Categorical(renamed) if isinstance(state["cluster"].dtype,
                                                           pd.CategoricalDtype) else renamed
    levels = sorted(int(c.split("_", 1)[1]) for c in out.columns
                     if c.startswith("level_") and c.split("_", 1)[1].isdigit())
    if not levels:
        return out
    comps = [_components(p) for p in renamed]
    for lvl in levels:
        col = f"level_{lvl}"
        has = np.array([len(c) >= lvl for c in comps], dtype=bool)
        if has.any():
            values = out[col].astype("Int64").to_numpy(dtype=object, na_value=pd.NA)
            values[has] = [c[lvl - 1] for c, h in zip(comps, has, strict=True) if h]
            out[col] = pd.array(values, dtype="Int64").astype(state[col].dtype)
    return out
