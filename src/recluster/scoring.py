"""``recluster score``: route new rows down a published run's tree with its saved models.

Nothing is refitted on the new rows: each split node's saved preprocessing and assigner (the
same functions the job used to label every row) send rows to children, level by level, in a
single pass over the new data. (With ``assign.method: umap`` the node's HDBSCAN is rebuilt from
its saved sample embedding, which reproduces the fitted clusterer exactly.) The model files are
verified against the run's manifest before any is parsed, and none is a pickle. Output:
``labels/`` in the run's schema and ``segments.parquet`` (each segment's path and name, with
a ``names.yaml`` in the model run's folder applied), published like a run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pyarrow as pa
from distributed import Client

from recluster.compute.drift import SUPPORT_QUANTILE, DriftRule, judge
from recluster.compute.drift import summarise as drift_summary
from recluster.compute.paths import NodePath
from recluster.compute.routing import LABELS_SCHEMA_VERSION, older_labels_schema
from recluster.compute.schema import duplicate_ids
from recluster.config import DEFAULT_LEASE_S, URL_CREDENTIALS, InputConfig, has_url_credentials
from recluster.errors import ConfigError, DriftError, InputDataError, IntegrityError
from recluster.job.growth import graph_literal
from recluster.job.inputs import NOT_PARQUET, input_fingerprint, scan_input, skipped_line
from recluster.parallel import drift as pdrift
from recluster.parallel import passes
from recluster.progress import counted
from recluster.report import data as report_data
from recluster.storage import inputs
from recluster.storage import models as modelstore
from recluster.storage.fs import Location, refuse_overlap
from recluster.storage.outputs import OutputStore, claim, parquet_bytes, run_input_location


def load_models(run: Location, manifest_sha256: str | None = None):
    """Read ``models/`` of a published run: its manifest, the index and one routing node per
    split node.

    Every file under ``models/`` is checked against the SHA-256 the run's manifest records
    before any is parsed (see :class:`~recluster.storage.models.PublishedFiles`); a file that
    differs, is missing or is not listed is refused, and pickles are never loaded.

    Returns
    -------
    files : PublishedFiles (its ``manifest`` and ``manifest_sha256``)
    index : dict, ``models/index.json``
    fits : dict path -> (depth, routing-only NodeFit)
    """
    store = OutputStore(run)
    if store.published_manifest() is None or not store.is_complete():
        # (a manifest without _SUCCESS: a publication that did not finish, or one a later run
        # is replacing; compare and run --previous refuse it too)
        raise InputDataError(f"{run.url} is not a published recluster run (no manifest.json "
                             "and _SUCCESS)")
    files = modelstore.PublishedFiles(store, manifest_sha256)
    older = older_labels_schema(files.manifest, run.url)
    if older:
        raise InputDataError(older)
    models = files.read_all("models/")
    if modelstore.INDEX not in models:
        raise InputDataError(f"{run.url} has no models/index.json: its root was never split and "
                             f"an older recluster published it without one; re-run the job")
    try:
        index = json.loads(models[modelstore.INDEX])
        nodes = [(str(NodePath.parse(n["path"])), int(n["depth"])) for n in index["nodes"]]
        index["max_depth"] = int(index["max_depth"])  # the labels contract's level columns
        # children[k] is the path of the assigner's class k (renumbered by run --previous).
        numbers = {str(NodePath.parse(n["path"])): [NodePath.parse(c).index
                                                    for c in n.get("children", [])]
                   for n in index["nodes"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{files.url}/{modelstore.INDEX} is not a model index: {exc}") from None
    fits = {}
    for path, depth in nodes:
        folder = f"models/{path}/"
        own = {rel[len(folder):]: data for rel, data in models.items()
               if rel.startswith(folder) and "/" not in rel[len(folder):]
               and not rel[len(folder):].startswith("child-")}
        fit = modelstore.node_from_files(path, own, where=files.url + "/" + folder[:-1])
        if numbers.get(path) and numbers[path] != list(range(len(numbers[path]))):
            fit.child_numbers = numbers[path]
        fits[path] = (depth, fit)
    return files, index, fits


#: The levels a boolean categorical column had before recluster read booleans as levels
#: ``false`` / ``true`` (0/1 numbers, as an integer column's levels still are).
_BOOL_NUMBERS = frozenset({"0", "1", "0.0", "1.0"})


def refuse_bool_numbers(ts, fits: dict, model_url: str) -> None:
    """Refuse a categorical column that is boolean in the input where the run's models know it
    by the levels ``0`` / ``1`` (an older recluster read booleans so; or it was fitted on
    numbers), or numbers where they know ``false`` / ``true``: every row would hold a level
    the models never saw and be routed as such, with only a drift warning."""
    types = dict(ts.read_types)
    for c in ts.categorical:
        t = types.get(c, pa.null())
        is_bool = pa.types.is_boolean(t)
        if not (is_bool or pa.types.is_integer(t) or pa.types.is_floating(t)):
            continue
        key = ts.key(c)
        for _, fit in fits.values():
            known = set((getattr(fit.preprocessor, "levels_", None) or {}).get(key, ()))
            numbers, texts = known & _BOOL_NUMBERS, known & {"false", "true"}
            if is_bool and numbers and not texts:
                raise InputDataError(
                    f"categorical column '{c}' is boolean in the input, but the run at "
                    f"{model_url} knows it by the levels 0 / 1 (an older recluster read "
                    f"booleans so, or it was fitted on numbers), and booleans are now the levels "
                    f"false / true: re-run the job to score with its models")
            if not is_bool and texts and not numbers:
                raise InputDataError(
                    f"categorical column '{c}' is {t} in the input, but the run at {model_url} "
                    f"was fitted on it as a boolean (levels false / true): write it as a boolean "
                    f"to score")


def check_output(model_url: str, input_url: str, output_url: str, timeout_s: float = 60.0
                 ) -> tuple[Location, Location, Location]:
    """Refuse, before any work, a location that carries a credential, and an output that is,
    lies inside or contains the model run, the model run's own input or the new input, or that
    holds foreign files or is being written.

    Returns
    -------
    (model, input, output) locations
    """
    for flag, url in (("--model", model_url), ("--input", input_url), ("--output", output_url)):
        if has_url_credentials(url):  # the manifest and the messages would carry it
            raise ConfigError(f"{flag} carries a credential ({URL_CREDENTIALS}); credentials come "
                              "from the environment, never from a location")
    model_loc = Location.of(model_url, timeout_s=timeout_s)
    in_loc = Location.of(input_url, timeout_s=timeout_s)
    out_loc = Location.of(output_url, timeout_s=timeout_s)
    refuse_overlap(out_loc, {"--model": model_loc, "--input": in_loc}, what="--output")
    trained_on = run_input_location(OutputStore(model_loc).published_manifest())
    if trained_on is not None:
        refuse_overlap(out_loc, {"the model run's input.path": trained_on}, what="--output")
    OutputStore(out_loc).preflight()
    return model_loc, in_loc, out_loc


def score_fingerprint(run_manifest: dict[str, Any], input_fp: str,
                      names: dict[str, str] | None = None) -> str:
    """What a scoring output is: the model run (its fingerprint and run id), the input and the
    names of a ``names.yaml`` in the model run's folder (they are in ``segments.parquet``: an
    edited file must not be answered with the old names)."""
    what: dict[str, Any] = {"model": [run_manifest.get("fingerprint"), run_manifest.get("run_id")],
                            "input": input_fp}
    if names:
        what["names"] = names
    body = json.dumps(what, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def score(model_url: str, input_url: str, output_url: str, client: Client,
          echo: Callable[[str], None], overwrite: bool = False,
          timeout_s: float = 60.0, lease_s: float = DEFAULT_LEASE_S,
          manifest_sha256: str | None = None, filters: list | None = None,
          drift_rule: DriftRule | None = None, fail_on_drift: bool = False) -> dict[str, Any]:
    """Label the rows under ``input_url`` with the run at ``model_url``; publish to ``output_url``.

    ``filters`` (canonical ``input.filters``) labels only that slice of the input, read as a
    run reads it (:mod:`recluster.storage.tables`).

    The model files are verified against the run's manifest (pinned by ``manifest_sha256`` if
    given, see :func:`load_models`) before any is used. The output is claimed like a run's (no
    overlap with the model run, its training input or the new input; no foreign files; a lock;
    staging; publication by manifest). Scoring the same input with the same model again is a
    no-op.

    Drift (nodes whose models record a training reference): per node, the share of scored rows
    outside the training support and each feature's PSI, in the manifest's ``drift`` and on the
    terminal; with ``fail_on_drift`` a node past ``drift_rule`` raises :class:`DriftError` (exit
    8) once the labels are published.
    """
    drift_rule = drift_rule or DriftRule()
    model_loc, in_loc, out_loc = check_output(model_url, input_url, output_url, timeout_s)
    model_files, index, fits = load_models(model_loc, manifest_sha256)
    run_manifest = model_files.manifest
    # The segments' names as the model run (and a names.yaml in its folder) give them: a bad
    # names file is refused here, before any row is scored.
    chosen = report_data.folder_names(model_loc)
    named = report_data.run_segments(model_files, chosen)
    with claim(out_loc, lease_s, "score") as out:
        cfg_in = InputConfig(path=input_url, id_column=index["id_column"],
                             features=[*index["numeric"], *index["categorical"]],
                             categorical=index["categorical"], filters=filters)
        # Read as a run reads its input; the filter is --filter here.
        scan, ts, pieces = scan_input(cfg_in, in_loc, None, "--filter", model_url)
        infos = scan.infos
        files = [i.path for i in infos]
        # Same columns give the same keys (older runs recorded none). The run's index also keys
        # its sample.stratify_by column when that is no feature: scoring does not read it.
        known = index.get("keys") or {}
        if {c: known.get(c) for c in ts.keys} != ts.keys:
            raise InputDataError(f"models/index.json of {model_url} does not name its columns' "
                                 f"keys as this recluster does; re-run the job to score with its "
                                 f"models")
        refuse_bool_numbers(ts, fits, model_url)
        input_fp = input_fingerprint(infos, inputs.file_identities(in_loc, files),
                                     {"filters": filters} if filters else None)
        fp = score_fingerprint(run_manifest, input_fp, chosen)
        decision = out.prepare(fp, overwrite, "pass --overwrite")
        if decision.action in ("reuse", "repaired"):
            echo(f"{output_url} already holds these labels (same model and input): nothing to do")
            return report_drift(decision.previous, drift_rule, fail_on_drift, echo)
        echo(f"model files of {model_url} verified against its manifest.json "
             f"(SHA-256 {model_files.manifest_sha256})")
        sliced = "the rows --filter keeps of " if scan.row_filter is not None else ""
        echo(f"scoring {sliced}{counted(sum(i.n_rows for i in infos), 'row')} from "
             f"{counted(len(files), 'file')} with {counted(len(fits), 'node model')} of {model_url}")
        skipped = scan.table.get("skipped_files") or []
        if skipped:
            echo(f"  {skipped_line(scan.table)}")
        # No validation pass here: a missing id or an infinite value stops the scoring pass,
        # naming its column and file.
        feats = passes.with_rows_checked(passes.input_frame(in_loc, pieces, ts, out.run_id),
                                        pieces, ts)
        id_dtype = feats._meta[ts.id_key].dtype
        n_comp = index["n_components"]
        state = feats.map_partitions(
            passes.routing.initial_state, ts.id_key, None, index["seed"], n_comp,
            meta=passes.routing.state_meta(id_dtype, 0, n_comp))
        levels = max((d + 1 for d, _ in fits.values()), default=0)  # 0: the root never split
        for level in range(1, levels + 1):
            at_level = {p: f for p, (d, f) in fits.items() if d == level - 1}
            # Shipped as run ships a level's fits: a graph literal, not scattered data.
            state = passes.assign_frame(feats, state, level, graph_literal(at_level), id_dtype,
                                        n_comp)
        if any(f.reference is not None for _, f in fits.values()):
            state = state.persist()  # the drift pass reads the final labels again
        # The run's labels contract: level_1 .. level_<its recursion.max_depth>. Counted in the
        # same pass: the distinct ids (labels are keyed by the id, as the run's are).
        written, n_unique = client.compute(
            [passes.write_labels(state, out, ts, index["max_depth"]), state["__id__"].nunique()],
            sync=True)
        rows_out = int(sum(written))
        if int(n_unique) != rows_out:  # refused before anything is published
            found = passes.repeated_id_files(client, state, pieces)
            raise duplicate_ids(ts.id_column, rows_out, int(n_unique), found,
                                f" of {input_url}")
        rows_in = sum(i.n_rows for i in infos)
        if scan.row_filter is not None:  # the slice's rows, counted apart from the labels
            rows_in = int(client.compute(feats.map_partitions(len).sum(), sync=True))
            if rows_in == 0:  # as an input of empty files is refused: not an empty publication
                raise InputDataError(f"--filter keeps no row of {input_url}: nothing to label")
        if rows_out != rows_in:
            raise InputDataError(f"scoring wrote {rows_out} rows for {rows_in} input rows")
        outputs = ["labels/"]
        if named is not None:
            out.write_staged(report_data.SEGMENTS_FILE, parquet_bytes(
                named[["path", "name", "parent", "depth"]]))
            outputs.append(report_data.SEGMENTS_FILE)
        drift = drift_of(client, feats, state, fits, index, drift_rule)
        manifest = {"kind": "score", "model_run": model_url, "fingerprint": fp,
                    "model_fingerprint": run_manifest.get("fingerprint"),
                    "model_manifest_sha256": model_files.manifest_sha256,
                    "input": {"path": input_url, "files": len(files), "fingerprint": input_fp,
                              "filters": filters,
                              **({"skipped_files": skipped} if skipped else {})},
                    **({"degraded": [{"file": f, "what": NOT_PARQUET} for f in skipped]}
                       if skipped else {}),
                    "rows": {"in": rows_in, "out": rows_out}, "levels": levels,
                    "labels_schema_version": LABELS_SCHEMA_VERSION,
                    "outputs": outputs}
        if drift is not None:
            manifest["drift"] = drift
        manifest = out.publish(manifest, decision.previous)
    echo(f"published {output_url} ({rows_out} rows)")
    return report_drift(manifest, drift_rule, fail_on_drift, echo)


def drift_of(client: Client, feats, state, fits: dict[str, tuple[int, Any]], index: dict,
             rule: DriftRule) -> dict[str, Any] | None:
    """The manifest's ``drift`` entry: per node with a training reference, rows, share outside
    the support and PSI per feature (one more pass over the scored rows); None if no node of
    the model records a reference (runs published before drift existed)."""
    with_ref = {p: (d, f) for p, (d, f) in fits.items() if f.reference is not None}
    if not with_ref:
        return None
    counts = pdrift.total_counts(client.compute(
        pdrift.counts_frame(feats, state, graph_literal(with_ref)), sync=True))
    names = {key: name for name, key in (index.get("keys") or {}).items()}
    nodes = {p: drift_summary(with_ref[p][1].reference, c, names, rule)
             for p, c in sorted(counts.items())}
    return {"rule": {"max_outside": rule.max_outside, "max_psi": rule.max_psi,
                     "min_rows": rule.min_rows},
            "support_quantile": SUPPORT_QUANTILE, "nodes": nodes}


def report_drift(manifest: dict[str, Any], rule: DriftRule, fail: bool,
                 echo: Callable[[str], None]) -> dict[str, Any]:
    """Print the drift summary of a scoring manifest, judged by ``rule`` (the recorded numbers do
    not depend on it); with ``fail``, raise :class:`DriftError` if a node drifted."""
    drift = manifest.get("drift") if isinstance(manifest, dict) else None
    if isinstance(manifest, dict) and manifest.get("levels") == 0:
        # a model whose root was never split routes nothing: there is no node to drift
        echo("drift: no node to measure (the model run's root was never split: every row is "
             "'root')")
        return manifest
    if not isinstance(drift, dict) or not drift.get("nodes"):
        echo("drift: not measured (the model's nodes record no training reference; re-run the "
             "job with this recluster to get one)")
        if fail:
            raise DriftError("--fail-on-drift: the model records no training reference, so drift "
                             "cannot be measured; re-run the job with this recluster")
        return manifest
    verdicts = {p: judge(e, rule) for p, e in drift["nodes"].items()}
    drifted = [p for p, v in verdicts.items() if v["drifted"]]
    nodes = drift["nodes"]
    worst = max(nodes.items(), key=lambda kv: kv[1]["max_psi"]["psi"])
    echo(f"drift: {len(drifted)} of {len(nodes)} node(s) past a threshold (rows outside the "
         f"training support: up to {max(e['outside_share'] for e in nodes.values()):.1%}, "
         f"{1 - SUPPORT_QUANTILE:.0%} expected; largest PSI {worst[1]['max_psi']['psi']:.3f} "
         f"'{worst[1]['max_psi']['feature']}' in node {worst[0]})")
    for p in drifted:
        echo(f"  node {p} ({nodes[p]['rows']} rows): " + "; ".join(verdicts[p]["reasons"][:4])
             + (f" and {len(verdicts[p]['reasons']) - 4} more" if len(verdicts[p]["reasons"]) > 4
                else ""))
    if fail and drifted:
        raise DriftError(f"--fail-on-drift: {len(drifted)} node(s) drifted past the thresholds "
                         f"({', '.join(drifted[:5])}); the labels were published")
    return manifest
