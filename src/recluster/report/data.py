"""What the report is made of, and where it comes from.

:class:`RunData` holds a run's outputs already loaded (tree records, SHAP summary, profiles, map
sample, manifest). :func:`map_table` builds the map sample from the root node's fit (pure);
:func:`load_run` reads a run's outputs through :mod:`recluster.storage` (published or staged),
so the pipeline and ``recluster report`` build the page from the same files; a published run's
files are verified against the SHA-256 digests of its manifest first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from recluster.compute import segments
from recluster.compute.paths import NodePath
from recluster.compute.routing import older_labels_schema
from recluster.config import MAX_CONFIG_BYTES, check_names, safe_yaml
from recluster.errors import ConfigError, InputDataError, OutputConflictError
from recluster.storage.fs import Location, refuse_overlap, storage_errors
from recluster.storage.models import PublishedFiles
from recluster.storage.outputs import OutputStore, frame_from_parquet_bytes, run_input_location

#: At most this many points are plotted on the map (the root's sample, in hash order), and on
#: the zoomed-in map of each split cluster (its own sample on its own embedding).
MAP_CAP = 20_000
ZOOM_CAP = 4_000
MAP_FILE = "report/map.parquet"
REPORT_FILE = "report.html"
#: At the output root: every segment's facts, one row per node, representative ids.
FACTS_FILE = "facts.parquet"
SEGMENTS_FILE = "segments.parquet"
EXEMPLARS_FILE = "exemplars.parquet"
#: A person's names for segments (path -> name), honoured by ``recluster report`` and
#: ``recluster score`` when it lies in a run's folder.
NAMES_FILE = "names.yaml"


class RunNotReadyError(InputDataError):
    """The location holds no complete, published run to report on (exit code 3)."""


@dataclass
class RunData:
    """Everything the page shows, already loaded.

    Attributes
    ----------
    manifest : the run's manifest (its config is the redacted one)
    tree : ``tree.json`` records, root first
    shap : ``shap_summary.parquet`` or None (explanations disabled / nothing split)
    profiles : ``profiles.parquet`` or None
    map : DataFrame with ``node``, ``x``, ``y``, ``first`` and ``leaf`` paths, or None: the
        root's sample (at most MAP_CAP rows) and each split cluster's (at most ZOOM_CAP)
    facts : ``facts.parquet`` or None (runs before facts, explanations disabled)
    segments : ``segments.parquet`` (names, stop reasons in words) or None
    exemplars : ``exemplars.parquet`` or None
    """

    manifest: dict[str, Any]
    tree: list[dict[str, Any]]
    shap: pd.DataFrame | None = None
    profiles: pd.DataFrame | None = None
    map: pd.DataFrame | None = None
    facts: pd.DataFrame | None = None
    segments: pd.DataFrame | None = None
    exemplars: pd.DataFrame | None = None

    def names(self) -> dict[str, str]:
        """Segment path -> name (the generated names, or a person's where given)."""
        if self.segments is None:
            return {}
        return dict(zip(self.segments["path"], self.segments["name"], strict=True))


def inside(loc: Location, rel: str) -> Location:
    """The location of ``rel`` inside the folder ``loc`` (same options)."""
    return replace(loc, url=loc.url.rstrip("/") + "/" + rel)


def parse_names(text: str, source: str) -> dict[str, str]:
    """A names file's mapping (segment path -> name), checked like ``output.names``."""
    data = safe_yaml(text, source)
    try:
        return check_names(data if data is not None else {}, source)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def read_names(loc: Location, missing_ok: bool = False) -> dict[str, str] | None:
    """Read a names file (YAML, path -> name); None if it is absent and ``missing_ok``.

    Raises
    ------
    ConfigError
        naming the file when it is missing (unless ``missing_ok``), too big, not YAML or not a
        mapping of segment paths to unique names.
    """
    fs, path = loc.fs()
    with storage_errors(loc, "reading segment names"):
        try:
            size = fs.size(path)
        except FileNotFoundError:
            if missing_ok:
                return None
            raise ConfigError(f"names file {loc.url} does not exist") from None
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"names file {loc.url} is larger than {MAX_CONFIG_BYTES} bytes")
        raw = fs.cat_file(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"names file {loc.url} is not UTF-8 text") from None
    return parse_names(text, f"names file {loc.url}")


def with_names(table: pd.DataFrame, chosen: dict[str, str]) -> pd.DataFrame:
    """``segments.parquet``'s rows with a person's names applied (unique; unknown paths
    ignored)."""
    names, _ = segments.apply_names(dict(zip(table["path"], table["name"], strict=True)), chosen)
    return table.assign(name=table["path"].map(names))


def first_level(path: str) -> str:
    """The first-level cluster a path lies in (``root`` for first-level noise)."""
    p = NodePath.parse(path)
    return str(p.ancestor(min(1, p.depth)))


def map_table(node: str, sample_ids: np.ndarray, embedding: np.ndarray, leaf_of: pd.DataFrame,
              id_column: str, cap: int = MAP_CAP) -> pd.DataFrame:
    """The plotted sample of one node: its fitted embedding with each row's final labels.

    Parameters
    ----------
    node : the node's path (``root`` for the main map)
    sample_ids : ndarray (n,) ids of the node's sample rows, in hash order
    embedding : ndarray (n, k) the node's UMAP embedding of those rows (k >= 2)
    leaf_of : DataFrame with ``id_column`` and ``cluster`` (the final path) for those rows
    cap : keep the first ``cap`` rows (hash order: an unbiased subsample)

    Returns
    -------
    DataFrame (min(n, cap), 6): ``node``, ``id_column``, ``x``, ``y`` (first two components),
    ``first``, ``leaf``
    """
    n = min(len(sample_ids), cap)
    frame = pd.DataFrame({"node": node, id_column: sample_ids[:n],
                          "x": embedding[:n, 0].astype(np.float32),
                          "y": embedding[:n, 1].astype(np.float32)})
    leaf = leaf_of.drop_duplicates(id_column).set_index(id_column)["cluster"]
    frame["leaf"] = frame[id_column].map(leaf).astype(object)
    if frame["leaf"].isna().any():
        raise ValueError("map sample rows without a final label")
    frame["first"] = [first_level(p) for p in frame["leaf"]]
    return frame[["node", id_column, "x", "y", "first", "leaf"]]


def folder_names(loc: Location) -> dict[str, str] | None:
    """The names of a ``names.yaml`` a person placed in the published run's folder at ``loc``
    (None without one); see :func:`read_names` for what is refused."""
    return read_names(inside(loc, NAMES_FILE), missing_ok=True)


def run_segments(files: PublishedFiles, chosen: dict[str, str] | None) -> pd.DataFrame | None:
    """A published run's ``segments.parquet`` (verified against its manifest) with ``chosen``
    (:func:`folder_names`) applied; None for runs published before segments had names.
    """
    if SEGMENTS_FILE not in files.digests:
        return None
    table = frame_from_parquet_bytes(files.read(SEGMENTS_FILE))
    return with_names(table, chosen) if chosen else table


def check_target(run: Location, out: Location) -> None:
    """Refuse, before anything is read, where ``recluster report --out`` must not write the page.

    Not into the run (any spelling): its files are listed in its manifest and digested, so a
    page there breaks the run's integrity, makes its folder refuse the next run as foreign, or,
    written as ``manifest.json``, destroys the run. Not into the input the run read: the next
    run would read the page as input. And not onto an existing folder.

    Raises
    ------
    OutputConflictError
        naming ``--out`` and the location it collides with (exit code 4).
    """
    others = {"the run": run}
    trained_on = run_input_location(OutputStore(run).published_manifest())
    if trained_on is not None:
        others["the run's input.path"] = trained_on
    refuse_overlap(out, others, what="--out")
    fs, path = out.fs()
    with storage_errors(out, "looking at the report's target"):
        if fs.isdir(path):
            raise OutputConflictError(f"--out {out.url} is an existing folder: give the page a "
                                      "file name, e.g. report.html")


def load_run(store: OutputStore, manifest: dict[str, Any] | None = None,
             staged: bool = False, manifest_sha256: str | None = None) -> RunData:
    """Read what the report needs from a run's outputs.

    ``staged=True`` reads the staging area of a run being written (the pipeline passes its
    manifest); otherwise the run must be published and complete, and every file read is
    checked against the SHA-256 its manifest records (a changed, missing or unlisted file is
    an :class:`~recluster.errors.IntegrityError`); ``manifest_sha256`` also pins the manifest.
    """
    if staged:
        def read(rel: str) -> bytes | None:
            return store.read(rel, staged=True)
    else:
        if store.published_manifest() is None:
            raise RunNotReadyError(f"{store.loc.url} holds no published run (no manifest.json): "
                                   "a report is built only from a finished run")
        if not store.is_complete():
            raise RunNotReadyError(f"{store.loc.url} is not completely published "
                                   "(manifest.json without _SUCCESS)")
        published = PublishedFiles(store, manifest_sha256)
        manifest = published.manifest
        read = published.read
    assert manifest is not None
    older = older_labels_schema(manifest, store.loc.url)
    if older:
        raise RunNotReadyError(older)
    tree_bytes = read("tree.json")
    if tree_bytes is None:
        raise RunNotReadyError(f"{store.loc.url} has no tree.json")
    outputs = set(manifest.get("outputs", []))
    data = RunData(manifest=manifest, tree=json.loads(tree_bytes))
    for attr, rel in (("shap", "shap_summary.parquet"), ("profiles", "profiles.parquet"),
                      ("map", MAP_FILE), ("facts", FACTS_FILE), ("segments", SEGMENTS_FILE),
                      ("exemplars", EXEMPLARS_FILE)):
        if rel in outputs:
            raw = read(rel)
            if raw is None:
                raise RunNotReadyError(f"{store.loc.url}: {rel} is listed in the manifest "
                                       "but missing")
            setattr(data, attr, frame_from_parquet_bytes(raw))
    if data.facts is None and data.profiles is not None:  # a run published before facts
        data.facts = segments.facts_table(data.profiles)
    if data.segments is None:
        names = segments.generated_names(data.tree, data.facts if data.facts is not None
                                         else segments.facts_table(None))
        data.segments = segments.segments_table(data.tree, names)
    if not staged:
        # A person's names.yaml placed in the run's folder after publication: their text only
        # (escaped on the page), so it needs no digest, and it overrides the run's names.
        chosen = folder_names(store.loc)
        if chosen:
            data.segments = with_names(data.segments, chosen)
    return data
