"""What a run writes to its staging area, and its manifest: ``models/`` (the index, each split
node's files and the explanation models), the SHAP summary and profiles, ``labels/`` and
``tree.json``, ``facts``/``segments``/``exemplars``, the report's map and page.

Publication itself (manifest last, ``_SUCCESS``) is :meth:`recluster.storage.outputs.OutputStore.publish`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from distributed import Client

from recluster.compute import segments
from recluster.compute.node import NodeFit
from recluster.compute.paths import ROOT, NodePath, sorted_paths
from recluster.compute.routing import LABELS_SCHEMA_VERSION
from recluster.compute.schema import TableSchema, degraded_inputs
from recluster.compute.tree import TreeNode
from recluster.config import JobConfig
from recluster.errors import StageError
from recluster.job.growth import Growth
from recluster.job.inputs import NOT_PARQUET, RunPlan, Validated, versions
from recluster.parallel import passes
from recluster.parallel.explain import explain_nodes
from recluster.progress import Timer
from recluster.report import data as report_data
from recluster.report import html as report_html
from recluster.storage import models as modelstore
from recluster.storage.fs import normalize_url
from recluster.storage.outputs import (
    MANIFEST_VERSION,
    OutputStore,
    commit_labels_table,
    frame_from_parquet_bytes,
    parquet_bytes,
)


def write_models_and_explanations(client: Client, store: OutputStore, feats, g: Growth,
                                  ts: TableSchema, cfg: JobConfig, timer: Timer,
                                  echo: Callable[[str], None]) -> list[str]:
    """Stage ``models/``, and (if enabled) the explanation models, SHAP summary and profiles.

    A run whose root was not split still has ``models/index.json`` (no nodes): ``recluster
    score`` then labels every new row ``root`` after checking its columns, as the run labelled
    its own rows (it refused such a model, "its root node was never split", so a scheduled
    scoring broke the day a run found no structure)."""
    outputs = ["models/"]
    store.write_staged("models/index.json", json.dumps(
        model_index(g.nodes, g.split_nodes, ts, cfg), indent=1).encode())
    if not g.split_nodes:
        return outputs
    for path, fit in g.split_nodes.items():
        for name, data in modelstore.node_files(fit).items():
            store.write_staged(f"models/{path}/{name}", data)
    if not cfg.explain.enabled:
        return outputs
    with timer.stage(f"explain {len(g.split_nodes)} node(s)", total=len(g.split_nodes)) as st:
        todo = {p: (g.nodes[p].depth, g.nodes[p].size, f, g.nodes[p].children)
                for p, f in g.split_nodes.items()}
        explained = explain_nodes(client, feats, g.state, todo, ts, cfg.explain, cfg.seed, st.step,
                                  run_id=store.run_id, drawn=g.drawn)  # (emptied)
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
    if frame.empty:  # typed as the rows would be (all-empty columns were published as text)
        frame = frame.astype({"path": "str", "rank": "int64",
                              "id": g.state._meta["__id__"].dtype})
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



def write_labels_and_tree(client: Client, store: OutputStore, g: Growth, ts: TableSchema,
                          cfg: JobConfig, total: int) -> int:
    """Stage ``labels/`` (every level column of the contract, however deep the tree grew; a
    Delta commit with ``output.format: delta``) and ``tree.json``; returns the rows written.

    Raises :class:`~recluster.errors.StageError` unless every input row got one output row.
    """
    writes = passes.write_labels(g.state, store, ts, cfg.recursion.max_depth)
    rows_out = int(sum(client.compute(writes, sync=True)))
    if rows_out != total:
        raise StageError(f"stage 'write labels' wrote {rows_out} rows for {total} input rows")
    if cfg.output.format == "delta":
        commit_labels_table(store)
    tree = [g.nodes[p].record() for p in sorted_paths(g.nodes)]
    store.write_staged("tree.json", json.dumps(tree, indent=2).encode())
    return rows_out


def run_manifest(cfg: JobConfig, run_id: str, plan: RunPlan, checked: Validated, g: Growth,
                 strata: dict[str, Any] | None, seconds: dict[str, float], rows_out: int,
                 outputs: list[str]) -> dict[str, Any]:
    """The run's manifest as far as the labels: config, versions, input, rows, tree size,
    assignment agreement, degraded inputs, timings so far and the outputs staged so far."""
    ts, infos, summary = checked.schema, plan.infos, checked.summary
    return {
        "recluster_manifest": MANIFEST_VERSION,
        "labels_schema_version": LABELS_SCHEMA_VERSION,
        "run_id": run_id,
        "fingerprint": plan.fingerprint,
        "config": cfg.redacted(),
        "versions": versions(),
        "seed": cfg.seed,
        # Resolved here (a relative local path means this run's working folder): what
        # ``score`` and ``report`` compare their targets with, from wherever they run.
        "input": {"location": normalize_url(cfg.input.path),
                  "files": len(infos), "partitions": len(plan.pieces),
                  "empty_files": sum(1 for i in infos if i.n_rows == 0),
                  "fingerprint": plan.input_fingerprint, "table": plan.table,
                  "columns": {"id": ts.id_column, "numeric": list(ts.numeric),
                              "categorical": list(ts.categorical), "stratify_by": ts.stratify_by,
                              "describe": list(ts.describe)}},
        "rows": {"in": checked.rows, "out": rows_out},
        "missing_values": summary["missing"],
        "levels": g.levels_done,
        "nodes": len(g.nodes),
        "leaves": sum(1 for n in g.nodes.values() if not n.children),
        "assignment": {**cfg.assign.model_dump(),
                       "holdout_ari": {p: round(a, 6) for p, a in g.agreements.items()
                                       if a is not None}},
        "degraded": [*degraded_inputs(summary, infos, ts), *([strata] if strata else []),
                     *({"file": f, "what": NOT_PARQUET}
                       for f in plan.table.get("skipped_files", [])),
                     *g.degraded],
        "timings_s": {**seconds, "node_fits": g.node_seconds},
        "outputs": outputs,
    }
