"""``recluster score``: route new rows down a published run's tree with its saved models.

Nothing is refitted on the new rows: each split node's saved preprocessing and assigner (the
same functions the job used to label every row) send rows to children, level by level, in a
single pass over the new data. (With ``assign.method: umap`` the node's HDBSCAN is rebuilt from
its saved sample embedding, which reproduces the fitted clusterer exactly.) The model files are
verified against the run's manifest before any is parsed, and none is a pickle. Output:
``labels/`` in the run's schema, published like a run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from distributed import Client

from recluster.compute.schema import resolve_schema
from recluster.config import InputConfig
from recluster.errors import InputDataError, IntegrityError, OutputConflictError
from recluster.parallel import passes
from recluster.storage import inputs
from recluster.storage import models as modelstore
from recluster.storage.fs import Location
from recluster.storage.outputs import OutputStore


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
    if store.published_manifest() is None:
        raise InputDataError(f"{run.url} is not a published recluster run (no manifest.json)")
    files = modelstore.PublishedFiles(store, manifest_sha256)
    models = files.read_all("models/")
    if modelstore.INDEX not in models:
        raise InputDataError(f"{run.url} has no models/ (its root node was never split)")
    try:
        index = json.loads(models[modelstore.INDEX])
        nodes = [(str(n["path"]), int(n["depth"])) for n in index["nodes"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{files.url}/{modelstore.INDEX} is not a model index: {exc}") from None
    fits = {}
    for path, depth in nodes:
        folder = f"models/{path}/"
        own = {rel[len(folder):]: data for rel, data in models.items()
               if rel.startswith(folder) and "/" not in rel[len(folder):]
               and not rel[len(folder):].startswith("child-")}
        fits[path] = (depth, modelstore.node_from_files(path, own, where=files.url + "/" + folder[:-1]))
    return files, index, fits


def score(model_url: str, input_url: str, output_url: str, client: Client,
          echo: Callable[[str], None], overwrite: bool = False,
          timeout_s: float = 60.0, manifest_sha256: str | None = None) -> dict[str, Any]:
    """Label the rows under ``input_url`` with the run at ``model_url``; publish to ``output_url``.

    ``manifest_sha256`` pins the model run's ``manifest.json`` (see :func:`load_models`).
    """
    model_files, index, fits = load_models(Location.of(model_url, timeout_s=timeout_s),
                                           manifest_sha256)
    run_manifest = model_files.manifest
    loc = Location.of(input_url, timeout_s=timeout_s)
    files = inputs.list_parquet_files(loc)
    infos = inputs.read_footers(loc, files)
    cfg_in = InputConfig(path=input_url, id_column=index["id_column"],
                         features=[*index["numeric"], *index["categorical"]],
                         categorical=index["categorical"])
    ts = resolve_schema(infos, cfg_in, None)
    if index.get("keys") != ts.keys:  # same columns give the same keys; older runs had none
        raise InputDataError(f"models/index.json of {model_url} does not name its columns' keys "
                             f"as this recluster does; re-run the job to score with its models")
    pieces = inputs.plan_pieces(infos, cfg_in.rows_per_partition)
    if not pieces:
        raise InputDataError(f"every Parquet file under {input_url} is empty")
    out = OutputStore(Location.of(output_url, timeout_s=timeout_s))
    if out.published_manifest() is not None:
        if not overwrite:
            raise OutputConflictError(f"{output_url} already holds a published output; "
                                      f"pass --overwrite to replace it")
        out.unpublish()
    out.reset_staging()
    echo(f"model files of {model_url} verified against its manifest.json "
         f"(SHA-256 {model_files.manifest_sha256})")
    echo(f"scoring {sum(i.n_rows for i in infos)} rows from {len(files)} files with "
         f"{len(fits)} node models of {model_url}")
    feats = passes.input_frame(loc, pieces, ts)
    id_dtype = feats._meta[ts.id_key].dtype
    n_comp = index["n_components"]
    state = feats.map_partitions(
        passes.routing.initial_state, ts.id_key, None, index["seed"], n_comp,
        meta=passes.routing.state_meta(id_dtype, 0, n_comp))
    levels = max(d for d, _ in fits.values()) + 1
    for level in range(1, levels + 1):
        at_level = {p: f for p, (d, f) in fits.items() if d == level - 1}
        [shared] = client.scatter([at_level], broadcast=True)
        state = passes.assign_frame(feats, state, level, shared, id_dtype, n_comp)
    rows_out = int(sum(client.compute(passes.write_labels(state, out.loc, ts, levels),
                                      sync=True)))
    rows_in = sum(i.n_rows for i in infos)
    if rows_out != rows_in:
        raise InputDataError(f"scoring wrote {rows_out} rows for {rows_in} input rows")
    manifest = {"recluster_manifest": 1, "kind": "score", "model_run": model_url,
                "model_fingerprint": run_manifest.get("fingerprint"),
                "model_manifest_sha256": model_files.manifest_sha256,
                "input": {"path": input_url, "files": len(files)},
                "rows": {"in": rows_in, "out": rows_out}, "levels": levels,
                "outputs": ["labels/"]}
    out.publish(manifest)
    echo(f"published {output_url} ({rows_out} rows)")
    return manifest
