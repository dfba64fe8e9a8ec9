"""The orchestrator: sequences the stages of one run on a given Dask client and logs each step.

plan (claim the output folder, footers, schema) -> validate (one pass) -> per level: sample pass,
node fits as parallel tasks, assignment pass -> write labels, tree.json -> publish (manifest last).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import threading
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import dask
import numpy as np
import pandas as pd
from distributed import Client, as_completed, wait

from recluster.compute import segments
from recluster.compute.artefacts import rename_artefact
from recluster.compute.node import NodeFit
from recluster.compute.paths import ROOT, NodePath, sorted_paths
from recluster.compute.routing import LABELS_SCHEMA_VERSION, STRATUM
from recluster.compute.sampling import FOLDED, allocate, fold_strata
from recluster.compute.schema import TableSchema, check_stats, degraded_inputs, resolve_schema
from recluster.compute.tree import (
    StopReason,
    TreeNode,
    accept_split,
    split_refusal,
)
from recluster.config import JobConfig
from recluster.errors import InputDataError, StageError
from recluster.parallel import passes
from recluster.parallel.explain import explain_nodes
from recluster.progress import Progress, Timer, as_progress
from recluster.report import data as report_data
from recluster.report import html as report_html
from recluster.storage import inputs, tables
from recluster.storage import models as modelstore
from recluster.storage.fs import Location, normalize_url, refuse_overlap
from recluster.storage.outputs import (
    MANIFEST_VERSION,
    Decision,
    OutputStore,
    check_delta_labels,
    claim,
    commit_labels_table,
    frame_from_parquet_bytes,
    parquet_bytes,
)

log = logging.getLogger("recluster")

_VERSIONED = ("recluster", "numpy", "pandas", "pyarrow", "scikit-learn", "umap-learn",
              "pynndescent", "hdbscan", "numba", "dask", "distributed", "s3fs", "fsspec")


def versions() -> dict[str, str]:
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
    another version or slice of a table is another input."""
    h = hashlib.sha256()
    if table:
        h.update(json.dumps(table, sort_keys=True, default=str).encode() + b"\0")
    for info, ident in zip(infos, identities, strict=True):
        h.update(f"{info.path}\0{info.n_rows}\0{info.schema}\0{ident['size']}\0"
                 f"{ident['version']}\0".encode())
    return h.hexdigest()


def run_fingerprint(cfg: JobConfig, input_fp: str, previous_sha256: str | None = None) -> str:
    """What a run is: its config, its input's identity and, with ``--previous``, the SHA-256 of
    the earlier run's manifest (whose paths it takes: republished, it gives other paths)."""
    what = {"config": cfg.redacted(), "input": input_fp}
    if previous_sha256 is not None:
        what["previous_manifest_sha256"] = previous_sha256
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
    scan = tables.scan(cfg.input, loc)
    ts = resolve_schema(scan.infos, cfg.input, cfg.sample.stratify_by)
    if cfg.output.format == "delta":
        check_delta_labels(ts.id_column, ts.id_type)
    pieces = scan.plan(cfg.input.rows_per_partition)
    if not pieces:
        raise InputDataError(f"every Parquet file under {cfg.input.path} is empty"
                             if scan.row_filter is None else
                             f"input.filters select no row group of {cfg.input.path}: nothing "
                             "to segment")
    return loc, scan, ts, pieces


def input_record(scan, pieces) -> dict[str, Any]:
    """The manifest's ``input.table`` (format, Delta ``version`` / Iceberg ``snapshot_id``,
    ``filters``, data files of the table and files read): part of the input fingerprint."""
    record = dict(scan.table)
    record["filters"] = scan.row_filter.record() if scan.row_filter else None
    record["data_files"] = scan.files_total
    record["files_read"] = len({p.path for p in pieces})
    return record


def folded_strata(root_counts: dict[str, int], ts: TableSchema,
                  cfg: JobConfig) -> dict[str, Any] | None:
    """The manifest's ``degraded`` entry when ``stratify_by`` has more levels than
    ``sample.max_strata`` (the smallest are sampled as one stratum), else None."""
    folds = fold_strata(root_counts, cfg.sample.max_strata)
    folded = [s for s, g in folds.items() if g == FOLDED]
    if not folded:
        return None
    rows = sum(root_counts[s] for s in folded)
    return {"column": ts.stratify_by, "levels": len(folds), "folded_levels": len(folded),
            "folded_rows": rows,
            "what": f"sample.stratify_by '{ts.stratify_by}' has {len(folds)} levels, more than "
                    f"sample.max_strata={cfg.sample.max_strata}: its {len(folded)} smallest "
                    f"({rows} rows) are sampled as one stratum"}


def _counts_by_node(counts: pd.DataFrame) -> dict[tuple[str, int], dict[str, int]]:
    out: dict[tuple[str, int], dict[str, int]] = {}
    for cluster, depth, stratum, rows in counts[["cluster", "depth", STRATUM, "rows"]].to_numpy():
        out.setdefault((cluster, int(depth)), {})[stratum] = int(rows)
    return out


@dataclass
class Growth:
    """The tree as the level-synchronous recursion left it: the rows' state and one
    :class:`TreeNode` record per node (in the order the nodes were made: level by level)."""

    state: Any  # dask DataFrame of per-row state after the last level
    nodes: dict[str, TreeNode]
    levels_done: int = 0
    degraded: list[dict[str, Any]] = field(default_factory=list)
    root_fit: NodeFit | None = None  # kept even when the root is not split: its sample is the map

    @property
    def split_nodes(self) -> dict[str, NodeFit]:
        """The kept fit of every split node."""
        return {p: n.split for p, n in self.nodes.items() if n.split is not None}

    @property
    def agreements(self) -> dict[str, float | None]:
        """Held-out ARI of every split node's assigner."""
        return {p: n.agreement for p, n in self.nodes.items() if n.split is not None}

    @property
    def node_seconds(self) -> dict[str, dict[str, float]]:
        """Timings of every fitted node."""
        return {p: n.seconds for p, n in self.nodes.items() if n.seconds is not None}


def output_location(cfg: JobConfig) -> Location:
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


def _decide(cfg: JobConfig, store: OutputStore, fp: str, echo: Callable[[str], None]) -> Decision:
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


def _fit_level(client: Client, feats, state, level: int, to_fit: list[str],
               nodes: dict[str, TreeNode], counts, ts: TableSchema, cfg: JobConfig, timer: Timer,
               echo: Callable[[str], None], run_id: str):
    """Draw the samples of ``to_fit`` in one pass and fit each node as its own task.

    Returns the fits by path, their futures, the stability resamples of the splits worth
    scoring (futures by path) and the sample (a future: what later tasks of this level use).
    """
    thresholds = {}
    for path in to_fit:
        node_counts = counts.get((path, level - 1), {})
        t = allocate(node_counts, cfg.sample.size, cfg.sample.min_per_stratum,
                     cfg.sample.max_strata)
        folds = fold_strata(node_counts, cfg.sample.max_strata)
        nodes[path].sample_threshold = {folds[s]: v for s, v in t.items()}  # folded: one entry
        thresholds.update({(path, s): v for s, v in t.items()})
    with timer.stage(f"level {level}: sample {len(to_fit)} node(s)"):
        sample = client.compute(passes.sample_frame(feats, state, level, thresholds, ts))
        wait(sample)  # so that this stage's time is the sample pass itself
    with timer.stage(f"level {level}: fit {len(to_fit)} node(s)", total=len(to_fit)) as st:
        futs = passes.submit_fits(client, sample, to_fit, ts, cfg, run_id)
        # Stability refits need only the sample: they start now, on workers the fits leave idle.
        resamples = passes.submit_resamples(client, sample, to_fit, ts, cfg, run_id) \
            if cfg.stability.resamples else {}
        fits = {}
        for _, fit in as_completed(list(futs.values()), with_results=True):
            fits[fit.path] = fit
            st.step(f"node {fit.path}: {fit.n_sample} sample rows -> {fit.n_children} children"
                    f" ({len(fits)}/{len(futs)} fitted, {fit.seconds.get('total', 0):.1f}s)"
                    + (f"; stops: {fit.stop_reason}" if fit.stop_reason else "")
                    + f"  [{', '.join(f'{k} {v:.1f}s' for k, v in fit.seconds.items())}]")
            if not accept_split(fit, nodes[fit.path].size, cfg.recursion):
                client.cancel(resamples.pop(fit.path, []))  # only kept splits are worth scoring
        st.counts["sample_rows"] = sum(f.n_sample for f in fits.values())
    return fits, futs, resamples, sample


def _settle_level(client: Client, level: int, fits: dict[str, NodeFit], futs: dict, resamples: dict,
                  sample, ts: TableSchema, cfg: JobConfig, timer: Timer,
                  run_id: str) -> dict[str, list[float]]:
    """Score each kept split's clusters on its resamples and settle its clustering on that
    evidence (``stability.settle_node``); updates ``fits`` in place, returns the scores."""
    stability: dict[str, list[float]] = {}
    if not resamples:
        return stability
    with timer.stage(f"level {level}: stability of {len(resamples)} node(s), "
                     f"{cfg.stability.resamples} resamples each", total=len(resamples)) as st:
        todo = {p: (futs[p], rs) for p, rs in resamples.items()}
        settled = passes.submit_settles(client, sample, todo, ts, cfg, run_id)
        for _, (fit, scores) in as_completed(list(settled.values()), with_results=True):
            before = fits[fit.path]
            fits[fit.path], stability[fit.path] = fit, scores
            st.step(f"node {fit.path}: stability {scores}"
                    + (f"; min_cluster_size {before.min_cluster_size} -> {fit.min_cluster_size}"
                       if fit.min_cluster_size != before.min_cluster_size else "")
                    + (f"; clusters made noise: {fit.dropped}" if fit.dropped else "")
                    + (f"; stops: {fit.stop_reason}" if fit.stop_reason else ""))
    return stability


def _mark_unstable(child: TreeNode, cfg: JobConfig) -> bool:
    """Record that ``child`` is not zoomed into because it is unstable; True if so."""
    if child.stability is None or child.stability >= cfg.stability.stable or \
            cfg.stability.unstable == "flag":
        return False
    if child.depth == 1 and cfg.stability.unstable == "noise" and cfg.stability.zoom_unstable_root:
        return False  # kept as a segment, and zoomed into: its zoom's clusters must be stable
    child.stop_reason = StopReason.UNSTABLE.stop(stability=child.stability,
                                                 stable=cfg.stability.stable)
    return True


def _decide_splits(to_fit: list[str], fits: dict[str, NodeFit], g: Growth, ts: TableSchema,
                   cfg: JobConfig) -> dict[str, NodeFit]:
    """The splits of this level that hold; the others get their stop reason."""
    split = {}
    for path in to_fit:
        fit, node = fits[path], g.nodes[path]
        if path == ROOT:
            g.root_fit = fit
        node.seconds = {k: round(v, 3) for k, v in fit.seconds.items()}
        node.fit = {**fit.summary(), "sample_threshold": node.sample_threshold}
        if fit.preprocessor is not None:  # under the columns' own names
            node.fit["preprocess"] = fit.preprocessor.summary(ts.name)
        # Artefacts are found on the workers under internal keys; tree.json, segments.parquet
        # and the report name the column as the user does.
        fit.artefacts = [rename_artefact(a, ts.name) for a in fit.artefacts]
        decision = accept_split(fit, node.size, cfg.recursion)
        if fit.preprocessor is None:
            g.degraded.append({"node": path, "what": f"not fitted: {fit.stop_reason}"})
        if not decision:
            node.stop_reason = decision.stop
            continue
        split[path] = node.split = fit
        node.agreement = fit.agreement
        if fit.agreement is not None and fit.agreement < cfg.assign.min_agreement:
            g.degraded.append({"node": path, "what": "assignment agreement below "
                               f"assign.min_agreement ({fit.agreement:.3f})"})
    return split


def _child_stop(child: TreeNode, artefact: str | None, cfg: JobConfig) -> bool:
    """Record why ``child`` is not zoomed into (unstable, or an artefact split); True if so."""
    if _mark_unstable(child, cfg):
        return True
    if artefact and cfg.recursion.artefact_splits != "off":
        child.artefact = artefact
        if cfg.recursion.artefact_splits == "no_recurse":
            child.stop_reason = StopReason.ARTEFACT.stop(artefact=artefact)
            return True
    return False


def grow_tree(client: Client, feats, state, counts, total: int, ts: TableSchema, cfg: JobConfig,
              timer: Timer, echo: Callable[[str], None], run_id: str) -> Growth:
    """Level by level: fit the nodes that may split, keep the splits that hold, assign all rows.

    A level's stability refits are scored before its assignment pass: which clusters survive
    resampling decides which rows get a cluster and which children are zoomed into.
    """
    g = Growth(state=state, nodes={ROOT: TreeNode(ROOT, 0, total, 1.0)})
    id_dtype = feats._meta[ts.id_key].dtype
    frontier = [ROOT]
    for level in range(1, cfg.recursion.max_depth + 1):
        to_fit = []
        for path in frontier:
            reason = split_refusal(g.nodes[path], total, cfg.recursion)
            if reason:
                g.nodes[path].stop_reason = reason
            else:
                to_fit.append(path)
        if not to_fit:
            break
        fits, futs, resamples, sample = _fit_level(client, feats, g.state, level, to_fit,
                                                   g.nodes, counts, ts, cfg, timer, echo, run_id)
        stability = _settle_level(client, level, fits, futs, resamples, sample, ts, cfg, timer,
                                  run_id)
        split = _decide_splits(to_fit, fits, g, ts, cfg)
        if not split:
            break
        with timer.stage(f"level {level}: assign all rows") as st:
            st.counts["nodes"] = len(split)
            # A graph literal rather than scattered data: scattered data has no lineage, so a
            # worker lost while holding the only copy would lose the level for good.
            # (An impure delayed gets a fresh key, so runs sharing a scheduler never mix.)
            shared = dask.delayed({p: f.routing_view() for p, f in split.items()}, traverse=False)
            g.state = passes.assign_frame(feats, g.state, level, shared, id_dtype,
                                          cfg.embedding.n_components).persist()
            counts = _counts_by_node(passes.sum_counts(
                client.compute(passes.count_nodes(g.state), sync=True)))
        g.levels_done = level
        frontier = []
        for path, fit in split.items():
            for k in range(fit.n_children):
                cp = str(NodePath.parse(path).child(k))
                size = sum(counts.get((cp, level), {}).values())
                child = g.nodes[cp] = TreeNode(cp, level, size, size / total,
                                               persistence=round(fit.persistence[k], 6))
                g.nodes[path].children.append(cp)
                if stability.get(path):
                    child.stability = stability[path][k]
                if not _child_stop(child, fit.artefacts[k] if fit.artefacts else None, cfg):
                    frontier.append(cp)
    for path in frontier:
        node = g.nodes[path]
        if node.stop_reason is None:
            node.stop_reason = split_refusal(node, total, cfg.recursion) or \
                StopReason.NOT_REACHED.stop()
    root = g.nodes[ROOT]
    if not root.children:
        echo(f"  the table is not segmented: {root.stop_reason}; every row is labelled 'root'")
    return g


def write_models_and_explanations(client: Client, store: OutputStore, feats, g: Growth,
                                  ts: TableSchema, cfg: JobConfig, timer: Timer,
                                  echo: Callable[[str], None]) -> list[str]:
    """Stage ``models/``, and (if enabled) the explanation models, SHAP summary and profiles."""
    if not g.split_nodes:
        return []
    outputs = ["models/"]
    store.write_staged("models/index.json", json.dumps(
        model_index(g.nodes, g.split_nodes, ts, cfg), indent=1).encode())
    for path, fit in g.split_nodes.items():
        for name, data in modelstore.node_files(fit).items():
            store.write_staged(f"models/{path}/{name}", data)
    if not cfg.explain.enabled:
        return outputs
    with timer.stage(f"explain {len(g.split_nodes)} node(s)", total=len(g.split_nodes)) as st:
        todo = {p: (g.nodes[p].depth, g.nodes[p].size, f, g.nodes[p].children)
                for p, f in g.split_nodes.items()}
        explained = explain_nodes(client, feats, g.state, todo, ts, cfg.explain, cfg.seed, st.step,
                                 run_id=store.run_id)
        shap_frames, profile_frames = [], []
        for path, res in explained.items():
            for cp, q in res.quality.items():
                g.nodes[cp].classifier = q
                if q.get("model") is None:
                    g.degraded.append({"node": cp,
                                       "what": f"no explanation model: {q['skip_reason']}"})
            for cp, data in res.models.items():
                store.write_staged(f"models/{path}/child-{NodePath.parse(cp).index}.ubj", data)
            shap_frames += res.shap
            if res.profiles is not None and len(res.profiles):
                profile_frames.append(res.profiles)
        for name, frames in (("shap_summary.parquet", shap_frames),
                             ("profiles.parquet", profile_frames)):
            if frames:
                store.write_staged(name, parquet_bytes(
                    pd.concat(frames, ignore_index=True), ["node", "cluster", "feature"]))
                outputs.append(name)
    return outputs


def run(cfg: JobConfig, client: Client,
        echo: Callable[[str], None] | Progress = log.info) -> dict[str, Any]:
    """Run the whole job and publish it; returns the manifest.

    ``echo`` takes human progress lines; pass a :class:`~recluster.progress.Progress` for
    per-node progress and structured (quiet) output. The run is bounded by
    ``runtime.run_timeout_s``: on expiry it raises a :class:`StageError` naming the stage in
    progress, and no later stage (publication included) starts.
    """
    echo = as_progress(echo)
    timer = Timer(echo)
    check_locations(cfg)
    # The output folder's claim (lock, staging) is released here, in the caller's thread, also
    # when the run times out while its thread is still busy.
    with ExitStack() as claims:
        return _within(cfg.runtime.run_timeout_s, timer,
                       lambda: _run(cfg, client, timer, echo, claims))


def _within(limit_s: float, timer: Timer, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = body()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=target, name="recluster-run", daemon=True)
    worker.start()
    worker.join(limit_s)
    if worker.is_alive():
        timer.stopped = (f"the run did not finish within runtime.run_timeout_s={limit_s:g}s; "
                         f"stage in progress: '{timer.current}'")
        raise StageError(timer.stopped)
    if "error" in box:
        raise box["error"]
    return box["result"]


def _run(cfg: JobConfig, client: Client, timer: Timer, echo: Callable[[str], None],
         claims: ExitStack) -> dict[str, Any]:
    with timer.stage("plan") as st:
        store = claims.enter_context(claim(output_location(cfg), cfg.output.lock_lease_s, "run"))
        loc, scan, ts, pieces = plan_input(cfg)
        infos = scan.infos
        chosen_names = segment_names(cfg)  # a bad names file stops the run before any work
        st.counts.update(files=len(infos), partitions=len(pieces),
                         rows=sum(i.n_rows for i in infos))
        echo(f"  {len(infos)} files, {len(pieces)} partitions, {sum(i.n_rows for i in infos)} rows; "
             f"{len(ts.numeric)} numeric + {len(ts.categorical)} categorical features")
        table = input_record(scan, pieces)
        if scan.row_filter is not None:
            echo(f"  input.filters: {table['files_read']} of {scan.files_total} data files "
                 f"read, {sum(p.n_rows for p in pieces)} rows in the row groups selected")
        input_fp = input_fingerprint(infos, inputs.file_identities(loc, [i.path for i in infos]),
                                     table)
        prev_run = None
        if cfg.previous.path:  # read once: the run takes its paths from this very publication
            from recluster.comparing import PublishedRun
            from recluster.parallel.compare import join_dtype

            prev_run = PublishedRun(Location.of(cfg.previous.path, cfg.output.storage_options),
                                    "previous run")
            # ids of another family are refused now, not after the whole tree has grown
            join_dtype(prev_run.id_type, ts.id_type, (cfg.previous.path, "this run's input"))
            prev_run.tree()  # a damaged tree.json too
        fp = run_fingerprint(cfg, input_fp, prev_run and prev_run.manifest_sha256)
        decision = _decide(cfg, store, fp, echo)
        if decision.action in ("reuse", "repaired"):
            return decision.previous

    feats = passes.input_frame(loc, pieces, ts, store.run_id)
    with timer.stage("validate") as st:
        state = passes.initial_state(feats, ts, cfg)  # lazy: cheap to derive in later passes
        stats, n_unique = passes.validation_frames(feats, state, pieces, ts)
        stats, n_unique, counts = client.compute([stats, n_unique, passes.count_nodes(state)],
                                                 sync=True)
        stats = passes.parse_stats(stats)
        duplicates = None
        if int(n_unique) < sum(s["rows"] for s in stats) and not any(s["null_ids"] for s in stats):
            # Failing anyway: two more passes say which ids repeat, and in which files.
            top = client.compute(passes.most_repeated_ids(state), sync=True)
            duplicates = client.compute(passes.id_files(state, top.index.to_numpy(), pieces),
                                        sync=True)
        summary = check_stats(stats, int(n_unique), ts, cfg.embedding.n_neighbors + 2,
                              duplicates, "the slice input.filters keep" if cfg.input.filters
                              else "input")
        total = st.counts["rows"] = summary["rows"]
        echo(f"  {total} rows, ids unique, no infinite values; missing values: "
             f"{summary['missing'] or 'none'}")

    counts = _counts_by_node(passes.sum_counts(counts))
    strata = folded_strata(counts.get((ROOT, 0), {}), ts, cfg)
    if strata:
        echo(f"  {strata['what']}")
    g = grow_tree(client, feats, state, counts, total, ts, cfg, timer, echo, store.run_id)
    previous = None
    if prev_run is not None:  # before anything is written: every output uses the final paths
        from recluster.comparing import apply_previous

        with timer.stage("previous run's paths"):
            previous = apply_previous(client, g, ts, prev_run, cfg.previous.min_jaccard, echo)
    outputs = ["labels/", "tree.json",
               *write_models_and_explanations(client, store, feats, g, ts, cfg, timer, echo)]

    with timer.stage("write labels") as st:
        # Every level column of the contract, however deep the tree grew.
        writes = passes.write_labels(g.state, store, ts, cfg.recursion.max_depth)
        rows_out = st.counts["rows"] = int(sum(client.compute(writes, sync=True)))
        if rows_out != total:
            raise StageError(f"stage 'write labels' wrote {rows_out} rows for {total} input rows")
        if cfg.output.format == "delta":
            commit_labels_table(store)
        tree = [g.nodes[p].record() for p in sorted_paths(g.nodes)]
        store.write_staged("tree.json", json.dumps(tree, indent=2).encode())

    manifest = {
        "recluster_manifest": MANIFEST_VERSION,
        "labels_schema_version": LABELS_SCHEMA_VERSION,
        "run_id": store.run_id,
        "fingerprint": fp,
        "config": cfg.redacted(),
        "versions": versions(),
        "seed": cfg.seed,
        # Resolved here (a relative local path means this run's working folder): what
        # ``score`` and ``report`` compare their targets with, from wherever they run.
        "input": {"location": normalize_url(cfg.input.path),
                  "files": len(infos), "partitions": len(pieces),
                  "empty_files": sum(1 for i in infos if i.n_rows == 0),
                  "fingerprint": input_fp, "table": table,
                  "columns": {"id": ts.id_column, "numeric": list(ts.numeric),
                              "categorical": list(ts.categorical), "stratify_by": ts.stratify_by,
                              "describe": list(ts.describe)}},
        "rows": {"in": total, "out": rows_out},
        "missing_values": summary["missing"],
        "levels": g.levels_done,
        "nodes": len(g.nodes),
        "leaves": sum(1 for n in g.nodes.values() if not n.children),
        "assignment": {**cfg.assign.model_dump(),
                       "holdout_ari": {p: round(a, 6) for p, a in g.agreements.items()
                                       if a is not None}},
        "degraded": [*degraded_inputs(summary, infos, ts), *([strata] if strata else []),
                     *g.degraded],
        "timings_s": {**timer.seconds, "node_fits": g.node_seconds},
        "outputs": outputs,
    }
    if previous is not None:
        manifest["previous"] = previous
    with timer.stage("report") as st:
        manifest["outputs"] += write_segments(client, store, g, ts, cfg, manifest, chosen_names)
        manifest["outputs"] += write_report(client, store, g, ts, manifest)
        st.counts["nodes"] = len(g.nodes)
    with timer.stage("publish"):
        manifest[modelstore.DIGESTS] = modelstore.staged_digests(store)  # score/report verify
        manifest = store.publish(manifest, decision.previous)
    echo(f"published {cfg.output.path} ({rows_out} rows, {g.levels_done} level(s), "
         f"{len(g.nodes)} nodes)")
    echo.event("published", path=cfg.output.path, rows=rows_out, levels=g.levels_done,
               nodes=len(g.nodes), seconds=round(echo.elapsed(), 3))
    return manifest


def segment_names(cfg: JobConfig) -> dict[str, str]:
    """The names a person chose (``output.names``: a mapping, or a YAML file's location)."""
    if isinstance(cfg.output.names, str):
        return report_data.read_names(Location.of(
            cfg.output.names, cfg.output.storage_options, cfg.runtime.storage_timeout_s,
            cfg.runtime.storage_retries)) or {}
    return dict(cfg.output.names or {})


def write_segments(client: Client, store: OutputStore, g: Growth, ts: TableSchema,
                   cfg: JobConfig, manifest: dict[str, Any],
                   chosen: dict[str, str]) -> list[str]:
    """Stage ``facts.parquet`` (from the staged profiles), ``segments.parquet`` (one row per
    node, named) and ``exemplars.parquet`` (ids nearest each segment's centre on its parent's
    map, checked against the final labels in one pass over the row state)."""
    raw = store.read("profiles.parquet", staged=True)
    facts = segments.facts_table(None if raw is None else frame_from_parquet_bytes(raw))
    tree = [g.nodes[p].record() for p in sorted_paths(g.nodes)]
    names, unknown = segments.apply_names(segments.generated_names(tree, facts), chosen)
    for p in unknown:
        manifest["degraded"].append({"what": f"output.names names segment {p}, which this run "
                                             "does not have: ignored"})
    store.write_staged(report_data.FACTS_FILE, parquet_bytes(facts))
    store.write_staged(report_data.SEGMENTS_FILE, parquet_bytes(
        segments.segments_table(tree, names)))
    candidates: dict[str, list] = {}
    for path, fit in g.split_nodes.items():
        if fit.sample_embedding is None or fit.sample_labels is None:
            continue
        near = segments.exemplar_candidates(fit.sample_ids, fit.sample_embedding,
                                            fit.sample_labels, fit.n_children)
        candidates.update({str(NodePath.parse(path).child(k)): ids for k, ids in near.items()})
    rows = []
    if candidates:
        ids = np.unique(np.concatenate([np.asarray(c) for c in candidates.values()]))
        found = client.compute(passes.clusters_of(g.state, ids), sync=True)
        final = dict(zip(found["__id__"], found["cluster"], strict=True))
        for path in sorted_paths(candidates):
            picked = segments.pick_exemplars(candidates[path], final, path)
            rows += [{"path": path, "rank": i + 1, "id": v} for i, v in enumerate(picked)]
    frame = pd.DataFrame(rows, columns=["path", "rank", "id"])
    store.write_staged(report_data.EXEMPLARS_FILE, parquet_bytes(frame))
    return [report_data.FACTS_FILE, report_data.SEGMENTS_FILE, report_data.EXEMPLARS_FILE]


def write_report(client: Client, store: OutputStore, g: Growth, ts: TableSchema,
                 manifest: dict[str, Any]) -> list[str]:
    """Stage ``report/map.parquet`` (the root's sample on its embedding, with final labels) and
    ``report.html``, built from the staged outputs as ``recluster report`` builds it later."""
    outputs = []
    fits = {ROOT: g.root_fit, **{p: f for p, f in g.split_nodes.items() if p != ROOT}}
    caps = {p: report_data.MAP_CAP if p == ROOT else report_data.ZOOM_CAP for p in fits}
    fits = {p: f for p, f in fits.items() if f is not None and f.sample_embedding is not None
            and len(f.sample_ids)}
    if ROOT in fits:
        ids = np.unique(np.concatenate([f.sample_ids[:caps[p]] for p, f in fits.items()]))
        # The map's id column is "id" whatever the input calls it: "x", "y" or "node" are free.
        leaf = client.compute(passes.clusters_of(g.state, ids), sync=True).rename(
            columns={"__id__": "id"})
        frame = pd.concat([report_data.map_table(p, f.sample_ids, f.sample_embedding, leaf,
                                                 "id", caps[p])
                           for p, f in fits.items()], ignore_index=True)
        store.write_staged(report_data.MAP_FILE, parquet_bytes(
            frame, dictionary_columns=["node", "first", "leaf"]))
        outputs.append(report_data.MAP_FILE)
    # As publish will write it (keys sorted), so that ``recluster report`` rebuilds this page.
    as_published = json.loads(json.dumps({**manifest, "outputs": manifest["outputs"] + outputs},
                                         sort_keys=True))
    data = report_data.load_run(store, as_published, staged=True)
    store.write_staged(report_data.REPORT_FILE, report_html.render(data).encode())
    return [*outputs, report_data.REPORT_FILE]


def model_index(nodes: dict[str, TreeNode], split_nodes: dict[str, NodeFit], ts: TableSchema,
                cfg: JobConfig) -> dict[str, Any]:
    """``models/index.json``: what ``recluster score`` needs to route rows down the tree."""
    return {
        "id_column": ts.id_column, "numeric": list(ts.numeric), "categorical": list(ts.categorical),
        # The models' own files (preprocess.json, child-*.ubj) name columns by these keys.
        # Descriptive columns (keys after all others) are no model's input: score never reads them.
        "keys": {c: k for c, k in ts.keys.items() if c not in ts.describe or c == ts.stratify_by},
        "n_components": cfg.embedding.n_components, "seed": cfg.seed,
        "max_depth": cfg.recursion.max_depth,  # scored labels have the run's level columns
        "nodes": [{"path": p, "depth": nodes[p].depth, "children": nodes[p].children}
                  for p in sorted_paths(split_nodes)],
    }


def describe_schema(ts: TableSchema) -> str:
    return (f"id '{ts.id_column}', numeric {list(ts.numeric)}, categorical {list(ts.categorical)}"
            + (f", stratified by '{ts.stratify_by}'" if ts.stratify_by else "")
            + (f", descriptive {list(ts.describe)}" if ts.describe else ""))
