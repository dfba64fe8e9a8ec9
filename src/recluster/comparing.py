"""``recluster compare OLD NEW --output DIR`` and the stable paths of ``run --previous OLD``.

compare: both runs must be published (``manifest.json`` and ``_SUCCESS``) with their listed
label files; their labels are joined on the id on the workers (an outer join, so rows in one
run only are counted), the flows between segments are counted per level and classified
(:mod:`recluster.compute.compare`), and ``DIR`` is written like a run's output (claimed, staged,
published by manifest; foreign files refused; ``--overwrite`` replaces a different published
comparison): ``matches.parquet``, ``moves.parquet/`` (one part per joined partition) and
``compare.html``.

previous: after the tree has grown, :func:`apply_previous` renames the new run's nodes to the old
run's paths where they match (:func:`recluster.compute.compare.stable_paths`), in the row state,
the tree and the fitted nodes, before anything is written.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from distributed import Client

from recluster.compute import compare
from recluster.compute.paths import NodePath
from recluster.config import DEFAULT_LEASE_S, URL_CREDENTIALS, has_url_credentials
from recluster.errors import ConfigError, InputDataError, IntegrityError
from recluster.parallel import compare as pcompare
from recluster.report import compare_html
from recluster.storage.fs import Location, refuse_overlap, storage_errors
from recluster.storage.outputs import (
    DIGESTS,
    OutputStore,
    claim,
    manifest_files,
    parquet_bytes,
    sha256_hex,
)

MATCHES = "matches.parquet"
MOVES = "moves.parquet"
PAGE = "compare.html"


class PublishedRun:
    """A published run's labels, as ``compare`` and ``--previous`` read them.

    Raises
    ------
    InputDataError
        no ``manifest.json`` and ``_SUCCESS`` (not a finished run), or no labels.
    IntegrityError
        ``manifest.json`` does not parse, or a label file it lists is missing or has another
        size.
    """

    def __init__(self, loc: Location, what: str):
        self.loc, self.what = loc, what
        store = OutputStore(loc)
        with storage_errors(loc, f"reading {what}"):
            raw = store.read("manifest.json")
            if raw is None or not store.is_complete():
                raise InputDataError(f"{what} {loc.url} is not a published recluster run (no "
                                     "manifest.json and _SUCCESS)")
            self.manifest_sha256 = sha256_hex(raw)
            listing = store.listing()
        try:
            self.manifest = json.loads(raw)
            if not isinstance(self.manifest, dict):
                raise TypeError("not a JSON object")
            self.levels = int(self.manifest.get("levels") or 0)
            self.rows = int((self.manifest.get("rows") or {}).get("out") or 0)
            columns = (self.manifest.get("input") or {}).get("columns") or {}
            id_column = columns.get("id") or ((self.manifest.get("config") or {}).get("input")
                                              or {}).get("id_column")
        except (ValueError, TypeError, AttributeError) as exc:
            raise IntegrityError(f"{loc.url}/manifest.json is not a manifest recluster wrote: "
                                 f"{exc}") from None
        files = manifest_files(self.manifest, listing, loc.url)
        self.labels = sorted(rel for rel in files if rel.startswith("labels/")
                             and rel.endswith(".parquet"))
        if not self.labels:
            raise InputDataError(f"{what} {loc.url} lists no labels/ files: is it a run's output?")
        for rel in self.labels:
            if rel not in listing:
                raise IntegrityError(f"{loc.url}/{rel} is listed in its manifest.json but missing")
            if files[rel] is not None and listing[rel] != files[rel]:
                raise IntegrityError(f"{loc.url}/{rel} has {listing[rel]} bytes, its manifest.json "
                                     f"says {files[rel]}: the run was changed after publication")
        self.id_column = id_column
        if not isinstance(self.id_column, str):
            raise InputDataError(f"{what} {loc.url}: its manifest.json names no id column")
        self.id_type = pcompare.label_file_id_type(loc, self.labels[0], self.id_column)
        self._tree: list[dict[str, Any]] | None = None

    def frame(self, dtype: str, side: str):
        return pcompare.labels_frame(self.loc, self.labels, self.id_column, dtype, side)

    def tree(self) -> list[dict[str, Any]]:
        """The run's ``tree.json`` records (read once), checked against its manifest's digest.

        Raises
        ------
        IntegrityError
            missing, not the recorded file, or not a list of nodes with a ``path``.
        """
        if self._tree is None:
            with storage_errors(self.loc, f"reading {self.what}'s tree.json"):
                raw = OutputStore(self.loc).read("tree.json")
            digest = (self.manifest.get(DIGESTS) or {}).get("tree.json")
            if raw is None or (isinstance(digest, str) and sha256_hex(raw) != digest):
                raise IntegrityError(f"{self.loc.url}/tree.json is missing or not the file its "
                                     "manifest.json records")
            try:
                records = json.loads(raw)
                if not all(isinstance(r["path"], str) for r in records):
                    raise TypeError("a node's path is not text")
            except (ValueError, KeyError, TypeError) as exc:
                raise IntegrityError(f"{self.loc.url}/tree.json is not a recluster tree: "
                                     f"{exc}") from None
            self._tree = records
        return self._tree


def rule_of(main: float, same_jaccard: float, min_share: float) -> compare.CompareRule:
    for name, v in (("--main-share", main), ("--same-jaccard", same_jaccard),
                    ("--min-share", min_share)):
        if not 0.0 < v <= 1.0:
            raise ConfigError(f"{name} must be in (0, 1], got {v}")
    return compare.CompareRule(main=main, same_jaccard=same_jaccard, min_share=min_share)


def check_output(old_url: str, new_url: str, output_url: str, timeout_s: float = 60.0
                 ) -> tuple[Location, Location, Location]:
    """Refuse, before any work, locations carrying credentials and an output that is, lies in
    or contains either run, is a file, holds foreign files or is being written."""
    for flag, url in (("OLD", old_url), ("NEW", new_url), ("--output", output_url)):
        if has_url_credentials(url):
            raise ConfigError(f"{flag} carries a credential ({URL_CREDENTIALS}); credentials come "
                              "from the environment, never from a location")
    old, new, out = (Location.of(u, timeout_s=timeout_s) for u in (old_url, new_url, output_url))
    refuse_overlap(out, {"OLD": old, "NEW": new}, what="--output")
    OutputStore(out).preflight()
    return old, new, out


def compare_fingerprint(old: PublishedRun, new: PublishedRun, rule: compare.CompareRule) -> str:
    body = json.dumps({"old": old.manifest_sha256, "new": new.manifest_sha256,
                       "rule": rule.__dict__}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def run_compare(old_url: str, new_url: str, output_url: str, client: Client,
                echo: Callable[[str], None], overwrite: bool = False,
                rule: compare.CompareRule | None = None, timeout_s: float = 60.0,
                lease_s: float = DEFAULT_LEASE_S) -> dict[str, Any]:
    """Compare two published runs and publish the comparison to ``output_url``; returns its
    manifest (``summary`` holds the per-level segment fates)."""
    rule = rule or compare.CompareRule()
    old_loc, new_loc, out_loc = check_output(old_url, new_url, output_url, timeout_s)
    old, new = PublishedRun(old_loc, "OLD"), PublishedRun(new_loc, "NEW")
    dtype = pcompare.join_dtype(old.id_type, new.id_type, (old_url, new_url))
    with claim(out_loc, lease_s, "compare") as out:
        fp = compare_fingerprint(old, new, rule)
        decision = out.prepare(fp, overwrite, "pass --overwrite")
        if decision.action in ("reuse", "repaired"):
            echo(f"{output_url} already holds this comparison: nothing to do")
            return decision.previous
        levels = [None, *range(1, max(old.levels, new.levels, 1) + 1)]
        # One compute for both: the join's tasks run once and nothing is kept after.
        joined = pcompare.join(old.frame(dtype, "old"), new.frame(dtype, "new"))
        parts, writes = client.compute([pcompare.flows(joined, levels),
                                        pcompare.write_moves(joined, out, MOVES)], sync=True)
        flows = pcompare.sum_flows(parts)
        for run, side in ((old, "old"), (new, "new")):
            check_joined_rows(flows, side, run.rows, f"{run.what} {run.loc.url}")
        matches = compare.matches_table(flows, rule)
        fates = compare.segment_fates(matches)
        matches_bytes = parquet_bytes(matches, dictionary_columns=["level", "kind"])
        page = compare_html.render(matches, fates, old_url, new_url).encode()
        out.write_staged(MATCHES, matches_bytes)
        out.write_staged(PAGE, page)
        leaf = matches[matches["level"] == compare.LEAF]
        manifest = {
            "kind": "compare", "fingerprint": fp,
            "old": {"path": old_url, "manifest_sha256": old.manifest_sha256, "rows": old.rows},
            "new": {"path": new_url, "manifest_sha256": new.manifest_sha256, "rows": new.rows},
            "rule": rule.__dict__,
            "rows": {"both": int(leaf.loc[leaf["old_path"].notna() & leaf["new_path"].notna(),
                                          "shared_rows"].sum()),
                     "only_old": fates[compare.LEAF]["rows only in old"],
                     "only_new": fates[compare.LEAF]["rows only in new"],
                     "moves": int(sum(writes))},
            "summary": fates,
            "outputs": [MATCHES, f"{MOVES}/", PAGE],
            DIGESTS: {MATCHES: sha256_hex(matches_bytes), PAGE: sha256_hex(page)},
        }
        manifest = out.publish(manifest, decision.previous)
    for line in summary_lines(manifest):
        echo(line)
    echo(f"published {output_url} ({', '.join(manifest['outputs'])})")
    return manifest


def check_joined_rows(flows, side: str, expected: int, where: str) -> None:
    """Refuse a join on the id that did not find every row of one side exactly once: duplicate
    ids (the join multiplies them, here or on the other side) or label files holding other rows
    than the run's manifest counts.

    Parameters
    ----------
    flows : DataFrame of :func:`recluster.parallel.compare.sum_flows` (``level``, ``old``,
        ``new``, ``rows``); every level counts every joined row once
    side : ``old`` or ``new``
    expected : that side's rows (0: unknown, not checked)
    where : names that side in the message
    """
    first = flows["level"].iloc[0] if len(flows) else None
    found = int(flows.loc[(flows["level"] == first) & (flows[side] != compare.ABSENT),
                          "rows"].sum())
    if expected and found != expected:
        raise IntegrityError(f"{where}: joining the two runs on the id gave {found} rows for its "
                             f"{expected}: an id occurs more than once in a run (or its label "
                             "files were changed after publication)")


def summary_lines(manifest: dict[str, Any]) -> list[str]:
    """The terminal summary of a published comparison."""
    rows = manifest["rows"]
    lines = [f"compared {manifest['old']['path']} with {manifest['new']['path']}: "
             f"{rows['both']} rows in both, {rows['only_old']} only in OLD, "
             f"{rows['only_new']} only in NEW; {rows['moves']} rows changed path"]
    for level, f in sorted(manifest["summary"].items(), key=lambda kv: compare.level_order(kv[0])):
        lines.append(f"  {level}: {f['old segments']} old -> {f['new segments']} new segments; "
                     f"old: {f['same']} same, {f['split']} split, {f['merged']} merged, "
                     f"{f['gone']} gone, {f['moved']} moved; new: {f['new']} new")
    return lines


# ---------------------------------------------------------------------------- run --previous


def previous_paths(client: Client, state, id_dtype_arrow, nodes: dict[str, Any],
                   previous: PublishedRun, min_jaccard: float) -> dict[str, str]:
    """Final paths of a grown tree that reuse ``previous``'s paths where segments match.

    Parameters
    ----------
    state : dask DataFrame, the new run's row state (``__id__``, ``cluster``, internal paths)
    id_dtype_arrow : pyarrow type of the new run's id column
    nodes : internal path -> TreeNode (``children``; the root's ``size`` counts every row)
    previous : the old run
    min_jaccard : a matched pair's least Jaccard at its level (``previous.min_jaccard``)

    Returns
    -------
    dict internal path -> final path
    """
    dtype = pcompare.join_dtype(previous.id_type, id_dtype_arrow,
                                (previous.loc.url, "this run's input"))
    depth = max((n.depth for n in nodes.values()), default=0)
    levels = list(range(1, max(depth, previous.levels, 1) + 1))
    joined = pcompare.join(previous.frame(dtype, "old"), pcompare.state_frame(state, dtype))
    flows = pcompare.sum_flows(client.compute(pcompare.flows(joined, levels), sync=True))
    check_joined_rows(flows, "old", previous.rows, f"{previous.what} {previous.loc.url}")
    check_joined_rows(flows, "new", nodes[compare.ROOT].size, "this run's input")  # every row
    flows = flows[(flows["old"] != compare.ABSENT) & (flows["new"] != compare.ABSENT)]
    old_children: dict[str, list[str]] = {}
    for o in set(flows["old"]):
        path = o
        while path != compare.ROOT:
            parent = str(NodePath.parse(path).parent)
            kids = old_children.setdefault(parent, [])
            if path not in kids:
                kids.append(path)
            path = parent
    for rec in previous.tree():  # the old tree's own children, those no row of the new input reached too
        kids = old_children.setdefault(rec["path"], [])
        kids += [c for c in rec.get("children") or [] if c not in kids]
    children = {p: list(n.children) for p, n in nodes.items()}
    return compare.stable_paths(children, flows, old_children, min_jaccard)


def rename_growth(g, final: dict[str, str]) -> None:
    """Rename every path of a grown tree (``recluster.job.growth.Growth``) in place: the row state, the
    nodes (``children[k]`` stays the path of the assigner's class ``k``), the fitted nodes (their
    ``child_numbers`` route rows to the final numbers) and everything keyed by path."""
    g.state = g.state.map_partitions(compare.rename_state, final, meta=g.state._meta).persist()
    if any(final.get(p, p) != p for p in g.nodes):
        g.drawn = []  # drawn under the old paths and child numbers: explain draws anew
    # (Every path kept, as a run over unchanged segments keeps them: the explanation rows the
    # assignment passes drew are those of the final paths, and explain reads no column again.)
    nodes = {}
    for path, node in g.nodes.items():
        node.path = final.get(path, path)
        node.children = [final.get(c, c) for c in node.children]
        nodes[node.path] = node
    g.nodes = nodes
    # A node's record holds its kept fit (and its agreement and timings): rename the fit too.
    for node in nodes.values():
        if node.split is not None:
            node.split.path = node.path
            node.split.child_numbers = [NodePath.parse(c).index for c in node.children]
    if g.root_fit is not None and g.root_fit.path in final:
        g.root_fit.path = final[g.root_fit.path]
    for entry in g.degraded:
        if isinstance(entry.get("node"), str):
            entry["node"] = final.get(entry["node"], entry["node"])


def apply_previous(client: Client, g, ts, previous: PublishedRun, min_jaccard: float,
                   echo: Callable[[str], None]) -> dict[str, Any]:
    """Rename the grown tree ``g`` to the paths of the published run ``previous`` where its
    segments match; returns the manifest's ``previous`` entry."""
    previous_url = previous.loc.url
    final = previous_paths(client, g.state, ts.id_type, g.nodes, previous, min_jaccard)
    rename_growth(g, final)
    old_paths = _old_paths(previous)
    kept = sorted(p for p, f in final.items() if p != compare.ROOT and f in old_paths)
    fresh = sorted(f for p, f in final.items() if p != compare.ROOT and p not in kept)
    echo(f"  paths of {previous_url}: {len(kept)} node(s) matched and kept their old path, "
         f"{len(fresh)} new path(s)" + (f": {', '.join(fresh[:8])}" if fresh else ""))
    return {"path": previous_url, "manifest_sha256": previous.manifest_sha256,
            "min_jaccard": min_jaccard, "matched": len(kept), "fresh": fresh,
            "renamed": {p: f for p, f in sorted(final.items()) if p != f}}


def _old_paths(run: PublishedRun) -> set[str]:
    return {rec["path"] for rec in run.tree()}

