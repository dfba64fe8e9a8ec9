"""``recluster score``: route new rows down a published run's tree with its saved models.

No UMAP or HDBSCAN is refitted: each split node's saved preprocessing and assigner (the same
functions the job used to label every row) send rows to children, level by level, in a single
pass over the new data. Output: ``labels/`` in the run's schema, published like a run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from distributed import Client

from recluster.compute.schema import resolve_schema
from recluster.config import DEFAULT_LEASE_S, InputConfig
from recluster.errors import InputDataError
from recluster.parallel import passes
from recluster.pipeline import input_fingerprint
from recluster.storage import inputs
from recluster.storage import models as modelstore
from recluster.storage.fs import Location, refuse_overlap
from recluster.storage.outputs import OutputStore, claim


def load_models(run: Location):
    """Read ``models/`` of a published run: the index and one routing node per split node."""
    store = OutputStore(run)
    manifest = store.published_manifest()
    if manifest is None:
        raise InputDataError(f"{run.url} is not a published recluster run (no manifest.json)")
    fs, root = store.fs, store.root
    try:
        index = json.loads(fs.cat_file(f"{root}/models/index.json"))
    except FileNotFoundError:
        raise InputDataError(f"{run.url} has no models/ (its root node was never split)") from None
    fits = {}
    for node in index["nodes"]:
        folder = f"{root}/models/{node['path']}"
        files = {p.rsplit("/", 1)[-1]: fs.cat_file(p) for p in fs.find(folder)
                 if not p.rsplit("/", 1)[-1].startswith("child-")}
        fits[node["path"]] = (node["depth"], modelstore.node_from_files(node["path"], files))
    return manifest, index, fits


def check_output(model_url: str, input_url: str, output_url: str, timeout_s: float = 60.0
                 ) -> tuple[Location, Location, Location]:
    """Refuse, before any work, an output that is, lies inside or contains the model run, the
    model run's own input or the new input, or that holds foreign files or is being written.

    Returns
    -------
    (model, input, output) locations
    """
    model_loc = Location.of(model_url, timeout_s=timeout_s)
    in_loc = Location.of(input_url, timeout_s=timeout_s)
    out_loc = Location.of(output_url, timeout_s=timeout_s)
    refuse_overlap(out_loc, {"--model": model_loc, "--input": in_loc}, what="--output")
    trained = OutputStore(model_loc).published_manifest()
    trained_on = ((trained or {}).get("config") or {}).get("input", {}).get("path")
    if trained_on:
        refuse_overlap(out_loc, {"the model run's input.path": Location.of(trained_on)},
                       what="--output")
    OutputStore(out_loc).preflight()
    return model_loc, in_loc, out_loc


def score_fingerprint(run_manifest: dict[str, Any], input_fp: str) -> str:
    """What a scoring output is: the model run (its fingerprint and run id) and the input."""
    body = json.dumps({"model": [run_manifest.get("fingerprint"), run_manifest.get("run_id")],
                       "input": input_fp}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def score(model_url: str, input_url: str, output_url: str, client: Client,
          echo: Callable[[str], None], overwrite: bool = False,
          timeout_s: float = 60.0, lease_s: float = DEFAULT_LEASE_S) -> dict[str, Any]:
    """Label the rows under ``input_url`` with the run at ``model_url``; publish to ``output_url``.

    The output is claimed like a run's (no overlap with the model run, its training input or the
    new input; no foreign files; a lock; staging; publication by manifest). Scoring the same
    input with the same model again is a no-op.
    """
    model_loc, in_loc, out_loc = check_output(model_url, input_url, output_url, timeout_s)
    run_manifest, index, fits = load_models(model_loc)
    with claim(out_loc, lease_s, "score") as out:
        files = inputs.list_parquet_files(in_loc)
        infos = inputs.read_footers(in_loc, files)
        cfg_in = InputConfig(path=input_url, id_column=index["id_column"],
                             features=[*index["numeric"], *index["categorical"]],
                             categorical=index["categorical"])
        ts = resolve_schema(infos, cfg_in, None)
        pieces = inputs.plan_pieces(infos, cfg_in.rows_per_partition)
        if not pieces:
            raise InputDataError(f"every Parquet file under {input_url} is empty")
        input_fp = input_fingerprint(infos, inputs.file_identities(in_loc, files))
        fp = score_fingerprint(run_manifest, input_fp)
        decision = out.prepare(fp, overwrite, "pass --overwrite")
        if decision.action in ("reuse", "repaired"):
            echo(f"{output_url} already holds these labels (same model and input): nothing to do")
            return decision.previous
        echo(f"scoring {sum(i.n_rows for i in infos)} rows from {len(files)} files with "
             f"{len(fits)} node models of {model_url}")
        feats = passes.input_frame(in_loc, pieces, infos[0].schema, ts.columns, out.run_id)
        id_dtype = feats._meta[ts.id_column].dtype
        n_comp = index["n_components"]
        state = feats.map_partitions(
            passes.routing.initial_state, ts.id_column, None, index["seed"], n_comp,
            meta=passes.routing.state_meta(id_dtype, 0, n_comp))
        levels = max(d for d, _ in fits.values()) + 1
        for level in range(1, levels + 1):
            at_level = {p: f for p, (d, f) in fits.items() if d == level - 1}
            [shared] = client.scatter([at_level], broadcast=True)
            state = passes.assign_frame(feats, state, level, shared, id_dtype, n_comp)
        rows_out = int(sum(client.compute(passes.write_labels(state, out, ts.id_column, levels),
                                          sync=True)))
        rows_in = sum(i.n_rows for i in infos)
        if rows_out != rows_in:
            raise InputDataError(f"scoring wrote {rows_out} rows for {rows_in} input rows")
        manifest = {"kind": "score", "model_run": model_url, "fingerprint": fp,
                    "model_fingerprint": run_manifest.get("fingerprint"),
                    "input": {"path": input_url, "files": len(files), "fingerprint": input_fp},
                    "rows": {"in": rows_in, "out": rows_out}, "levels": levels,
                    "outputs": ["labels/"]}
        manifest = out.publish(manifest, decision.previous)
    echo(f"published {output_url} ({rows_out} rows)")
    return manifest
