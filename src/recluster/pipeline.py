"""The orchestrator: sequences the stages of one run on a given Dask client and logs each step.

plan (footers, schema) -> validate (one pass) -> per level: sample pass, node fits as parallel
tasks, assignment pass -> write labels, tree.json -> publish (manifest last).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import pandas as pd
from distributed import Client, as_completed, wait

from recluster import modelstore, passes, storage
from recluster.config import JobConfig
from recluster.errors import InputDataError, OutputConflictError, ReclusterError, StageError
from recluster.explain_dask import explain_nodes
from recluster.node import NodeFit
from recluster.routing import ROOT, STRATUM
from recluster.sampling import allocate
from recluster.schema import TableSchema, check_stats, resolve_schema
from recluster.storage import Location, OutputStore
from recluster.tree import TreeNode, accept_split, child_path, split_refusal

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


class Timer:
    """Wall time per stage, logged as one line each."""

    def __init__(self, echo: Callable[[str], None]):
        self.seconds: dict[str, float] = {}
        self.echo = echo
        self.t0 = time.perf_counter()

    def stage(self, name: str):
        timer = self

        class _Stage:
            def __enter__(self):
                self.t = time.perf_counter()
                timer.echo(f"[{time.perf_counter() - timer.t0:7.1f}s] {name} ...")
                return self

            def __exit__(self, et, ev, tb):
                dt = time.perf_counter() - self.t
                timer.seconds[name] = round(timer.seconds.get(name, 0.0) + dt, 3)
                if et is None:
                    timer.echo(f"[{time.perf_counter() - timer.t0:7.1f}s] {name} done in {dt:.1f}s")
                elif not issubclass(et, ReclusterError):
                    raise StageError(f"stage '{name}' failed: {et.__name__}: {ev}") from ev
                return False

        return _Stage()


def input_fingerprint(infos) -> str:
    h = hashlib.sha256()
    for info in infos:
        h.update(f"{info.path}\0{info.n_rows}\0{info.schema}\0".encode())
    return h.hexdigest()


def run_fingerprint(cfg: JobConfig, input_fp: str) -> str:
    body = json.dumps({"config": cfg.redacted(), "input": input_fp}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def plan(cfg: JobConfig):
    """Footers only: files, schema roles, pieces. Cheap; used by ``validate`` too."""
    loc = Location.of(cfg.input.path, cfg.input.storage_options, cfg.runtime.storage_timeout_s)
    files = storage.list_parquet_files(loc)
    infos = storage.read_footers(loc, files)
    ts = resolve_schema(infos, cfg.input, cfg.sample.stratify_by)
    pieces = storage.plan_pieces(infos, cfg.input.rows_per_partition)
    if not pieces:
        raise InputDataError(f"every Parquet file under {cfg.input.path} is empty")
    return loc, infos, ts, pieces


def _counts_by_node(counts: pd.DataFrame) -> dict[tuple[str, int], dict[str, int]]:
    out: dict[tuple[str, int], dict[str, int]] = {}
    for cluster, depth, stratum, rows in counts[["cluster", "depth", STRATUM, "rows"]].to_numpy():
        out.setdefault((cluster, int(depth)), {})[stratum] = int(rows)
    return out


def run(cfg: JobConfig, client: Client, echo: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Run the whole job and publish it; returns the manifest."""
    timer = Timer(echo)
    out_loc = Location.of(cfg.output.path, cfg.output.storage_options, cfg.runtime.storage_timeout_s)
    with timer.stage("plan"):
        loc, infos, ts, pieces = plan(cfg)
        rows_in_footers = sum(i.n_rows for i in infos)
        echo(f"  {len(infos)} files, {len(pieces)} partitions, {rows_in_footers} rows; "
             f"{len(ts.numeric)} numeric + {len(ts.categorical)} categorical features")
        fp = run_fingerprint(cfg, input_fingerprint(infos))
        store = OutputStore(out_loc)
        existing = store.published_manifest()
        if existing is not None:
            if existing.get("fingerprint") == fp:
                echo(f"  {cfg.output.path} already holds this run (same config and input): nothing to do")
                return existing
            if not cfg.output.overwrite:
                raise OutputConflictError(
                    f"{cfg.output.path} already holds a different published run; choose another "
                    f"output.path or set output.overwrite: true")
            echo("  output.overwrite: removing the previously published run")
            store.unpublish()
        store.reset_staging()

    feats = passes.input_frame(loc, pieces, infos[0].schema, ts.columns)
    id_dtype = feats._meta[ts.id_column].dtype
    n_comp = cfg.embedding.n_components
    with timer.stage("validate"):
        state = passes.initial_state(feats, ts, cfg)  # lazy: cheap to derive in later passes
        stats, n_unique = passes.validation_frames(feats, state, pieces, ts)
        stats, n_unique, counts = client.compute([stats, n_unique, passes.count_nodes(state)],
                                                 sync=True)
        summary = check_stats(passes.parse_stats(stats), int(n_unique), ts,
                              cfg.embedding.n_neighbors + 2)
        total = summary["rows"]
        counts = _counts_by_node(passes.sum_counts(counts))
        echo(f"  {total} rows, ids unique, no infinite values; missing values: "
             f"{summary['missing'] or 'none'}")

    nodes: dict[str, TreeNode] = {ROOT: TreeNode(ROOT, 0, total, 1.0)}
    frontier = [ROOT]
    levels_done = 0
    agreements: dict[str, float] = {}
    degraded: list[dict[str, Any]] = []
    node_seconds: dict[str, dict[str, float]] = {}
    split_nodes: dict[str, NodeFit] = {}
    for level in range(1, cfg.recursion.max_depth + 1):
        to_fit = []
        for path in frontier:
            node = nodes[path]
            reason = split_refusal(node, total, cfg.recursion)
            if reason:
                node.stop_reason = reason
            else:
                to_fit.append(path)
        if not to_fit:
            break
        thresholds = {}
        for path in to_fit:
            per_stratum = counts.get((path, level - 1), {})
            t = allocate(per_stratum, cfg.sample.size, cfg.sample.min_per_stratum)
            nodes[path].sample_threshold = t
            thresholds.update({(path, s): v for s, v in t.items()})
        with timer.stage(f"level {level}: sample {len(to_fit)} node(s)"):
            sample_df = passes.sample_frame(feats, state, level, thresholds, ts)
            sample = client.compute(sample_df)
            wait(sample)  # so that this stage's time is the sample pass itself
        with timer.stage(f"level {level}: fit {len(to_fit)} node(s)"):
            futs = passes.submit_fits(client, sample, to_fit, ts, cfg)
            fits = {}
            for _, fit in as_completed(list(futs.values()), with_results=True):
                fits[fit.path] = fit
                echo(f"  node {fit.path}: {fit.n_sample} sample rows -> {fit.n_children} children"
                     f" ({len(fits)}/{len(futs)} fitted, {fit.seconds.get('total', 0):.1f}s)"
                     + (f"; stops: {fit.stop_reason}" if fit.stop_reason else "")
                     + f"  [{', '.join(f'{k} {v:.1f}s' for k, v in fit.seconds.items())}]")
            del sample
        split = {}
        for path in to_fit:
            fit = fits[path]
            node = nodes[path]
            node_seconds[path] = {k: round(v, 3) for k, v in fit.seconds.items()}
            node.fit = {**fit.summary(), "sample_threshold": node.sample_threshold}
            reason = accept_split(fit, node.size, cfg.recursion)
            if reason:
                node.stop_reason = reason
                continue
            split[path] = fit
            split_nodes[path] = fit
            agreements[path] = fit.agreement
            if fit.agreement is not None and fit.agreement < cfg.assign.min_agreement:
                degraded.append({"node": path, "what": "assignment agreement below "
                                 f"assign.min_agreement ({fit.agreement:.3f})"})
        if not split:
            break
        with timer.stage(f"level {level}: assign all rows"):
            [shared] = client.scatter([{p: f.routing_view() for p, f in split.items()}],
                                      broadcast=True)
            new_state = passes.assign_frame(feats, state, level, shared, id_dtype, n_comp).persist()
            counts = _counts_by_node(passes.sum_counts(
                client.compute(passes.count_nodes(new_state), sync=True)))
            state = new_state
        levels_done = level
        frontier = []
        for path, fit in split.items():
            for k in range(fit.n_children):
                cp = child_path(path, k)
                size = sum(counts.get((cp, level), {}).values())
                nodes[cp] = TreeNode(cp, level, size, size / total,
                                     persistence=round(fit.persistence[k], 6))
                nodes[path].children.append(cp)
                frontier.append(cp)
    for path in frontier:
        node = nodes[path]
        if node.stop_reason is None:
            node.stop_reason = split_refusal(node, total, cfg.recursion) or "not reached"

    outputs = ["labels/", "tree.json"]
    if split_nodes:
        store.write_staged("models/index.json", json.dumps(model_index(nodes, split_nodes, ts, cfg),
                                                           indent=1).encode())
        for path, fit in split_nodes.items():
            for name, data in modelstore.node_files(fit).items():
                store.write_staged(f"models/{path}/{name}", data)
        outputs.append("models/")
    if cfg.explain.enabled and split_nodes:
        with timer.stage(f"explain {len(split_nodes)} node(s)"):
            todo = {p: (nodes[p].depth, nodes[p].size, f, nodes[p].children)
                    for p, f in split_nodes.items()}
            explained = explain_nodes(client, feats, state, todo, ts, cfg.explain, cfg.seed, echo)
            shap_frames, profile_frames = [], []
            for path, res in explained.items():
                for cp, q in res.quality.items():
                    nodes[cp].classifier = q
                    if q.get("model") is None:
                        degraded.append({"node": cp, "what": f"no explanation model: {q['skip_reason']}"})
                for cp, data in res.models.items():
                    k = cp.rsplit(".", 1)[-1]
                    store.write_staged(f"models/{path}/child-{k}.ubj", data)
                shap_frames += res.shap
                if res.profiles is not None and len(res.profiles):
                    profile_frames.append(res.profiles)
            if shap_frames:
                store.write_staged("shap_summary.parquet", storage.parquet_bytes(
                    pd.concat(shap_frames, ignore_index=True), ["node", "cluster", "feature"]))
                outputs.append("shap_summary.parquet")
            if profile_frames:
                store.write_staged("profiles.parquet", storage.parquet_bytes(
                    pd.concat(profile_frames, ignore_index=True), ["node", "cluster", "feature"]))
                outputs.append("profiles.parquet")

    with timer.stage("write labels"):
        writes = passes.write_labels(state, out_loc, ts.id_column, max(1, levels_done))
        rows_out = int(sum(client.compute(writes, sync=True)))
        if rows_out != total:
            raise StageError(f"stage 'write labels' wrote {rows_out} rows for {total} input rows")
        tree = [nodes[p].record() for p in sorted(nodes, key=_path_key)]
        store.write_staged("tree.json", json.dumps(tree, indent=2).encode())

    manifest = {
        "recluster_manifest": 1,
        "fingerprint": fp,
        "config": cfg.redacted(),
        "versions": versions(),
        "seed": cfg.seed,
        "input": {"files": len(infos), "partitions": len(pieces), "fingerprint": input_fingerprint(infos),
                  "columns": {"id": ts.id_column, "numeric": list(ts.numeric),
                              "categorical": list(ts.categorical), "stratify_by": ts.stratify_by}},
        "rows": {"in": total, "out": rows_out},
        "missing_values": summary["missing"],
        "levels": levels_done,
        "nodes": len(nodes),
        "leaves": sum(1 for n in nodes.values() if not n.children),
        "assignment": {**cfg.assign.model_dump(),
                       "holdout_ari": {p: round(a, 6) for p, a in agreements.items() if a is not None}},
        "degraded": degraded,
        "timings_s": {**timer.seconds, "node_fits": node_seconds},
        "outputs": outputs,
    }
    with timer.stage("publish"):
        store.publish(manifest)
    echo(f"published {cfg.output.path} ({rows_out} rows, {levels_done} level(s), {len(nodes)} nodes)")
    return manifest


def model_index(nodes: dict[str, TreeNode], split_nodes: dict[str, NodeFit], ts: TableSchema,
                cfg: JobConfig) -> dict[str, Any]:
    """``models/index.json``: what ``recluster score`` needs to route rows down the tree."""
    return {
        "id_column": ts.id_column, "numeric": list(ts.numeric), "categorical": list(ts.categorical),
        "n_components": cfg.embedding.n_components, "seed": cfg.seed,
        "nodes": [{"path": p, "depth": nodes[p].depth, "children": nodes[p].children}
                  for p in sorted(split_nodes, key=_path_key)],
    }


def _path_key(path: str) -> tuple:
    return () if path == ROOT else tuple(int(p) for p in path.split("."))


def describe_schema(ts: TableSchema) -> str:
    return (f"id '{ts.id_column}', numeric {list(ts.numeric)}, categorical {list(ts.categorical)}"
            + (f", stratified by '{ts.stratify_by}'" if ts.stratify_by else ""))
