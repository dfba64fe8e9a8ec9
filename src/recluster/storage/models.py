"""Model files and the integrity of a published run's files.

What goes into ``models/`` and how it comes back, in portable formats only: per split node
``models/<path>/`` holds ``preprocess.json`` (medians, log flags, scales, levels), the
assigner that routed rows to the node's children (``assigner.json`` plus ``.ubj`` boosters
for the default classifier, or ``assigner.npz`` arrays for ``knn`` and ``umap``; see
:mod:`recluster.compute.assign`), and one one-vs-rest explanation model per child
(``child-<k>.ubj``). ``models/index.json`` lists the nodes and the input columns. No pickle is
written, and none is ever loaded: a model file holds numbers, never code.

Integrity: at publication the manifest records the SHA-256 of every file a reader will trust
(:func:`staged_digests`, under the manifest key :data:`DIGESTS`). :class:`PublishedFiles`
reads a published run's files for ``recluster score`` and ``recluster report`` and refuses
any file whose bytes do not match, that the manifest does not list, or that is missing.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from recluster.compute.assign import assigner_from_files
from recluster.compute.drift import Reference
from recluster.compute.node import NodeFit
from recluster.compute.preprocess import Preprocessor
from recluster.compute.reduce import Projection
from recluster.errors import IntegrityError
from recluster.storage.fs import is_folder_entry
from recluster.storage.outputs import DIGESTS, MANIFEST, OutputStore, sha256_hex

#: Not digested: written by the workers in parallel and read by no recluster command; hashing
#: them would mean reading every label back.
UNDIGESTED_PREFIX = "labels/"
INDEX = "models/index.json"
_PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")

_FITTED = ("medians_", "log1p_", "means_", "scales_", "constant_", "missing_share_", "levels_",
           "feature_names_out_")


def preprocessor_to_json(pre: Preprocessor) -> bytes:
    data: dict[str, Any] = {"numeric": pre.numeric, "categorical": pre.categorical,
                            "skew_threshold": pre.skew_threshold,
                            "max_categories": pre.max_categories,
                            "categorical_scale": pre.categorical_scale,
                            "level_weights_": pre.level_weights_}
    data.update({k: getattr(pre, k) for k in _FITTED})
    return json.dumps(data, indent=1).encode()


def preprocessor_from_json(raw: bytes) -> Preprocessor:
    data = json.loads(raw)
    pre = Preprocessor(data["numeric"], data["categorical"], data["skew_threshold"],
                       data["max_categories"])
    for k in _FITTED:
        setattr(pre, k, data[k])
    # Saved before one-hot columns could be weighted: every level's column is 0/1.
    pre.categorical_scale = data.get("categorical_scale", "unit")
    pre.level_weights_ = data.get("level_weights_") or {
        c: [1.0] * (len(pre.levels_[c]) + 1) for c in pre.categorical}
    return pre


#: The node's linear reduction (wide tables), when it has one.
PROJECTION_FILE = "projection.npz"
#: What the node was trained on, for drift in ``recluster score`` (runs before issue 20 lack it).
DRIFT_FILE = "drift.json"


def node_files(fit: NodeFit) -> dict[str, bytes]:
    """The files that let ``recluster score`` route rows through this node: preprocessing, the
    projection of a wide node (if any) and the assigner."""
    files = {"preprocess.json": preprocessor_to_json(fit.preprocessor), **fit.assigner.to_files()}
    if fit.projection is not None:
        files[PROJECTION_FILE] = fit.projection.to_bytes()
    if fit.reference is not None:
        files[DRIFT_FILE] = fit.reference.to_json()
    return files


def node_from_files(path: str, files: dict[str, bytes], where: str = "models") -> NodeFit:
    """A routing-only :class:`NodeFit` (preprocessor + assigner) from its saved files.

    Parameters
    ----------
    path : the node's path
    files : file name -> bytes, the node's folder (explanation models may be left out)
    where : how to name the folder in errors (e.g. the run's URL + ``/models/<path>``)

    Raises
    ------
    IntegrityError
        for a pickle (never loaded), or files that do not hold a portable node.
    """
    pickles = sorted(n for n in files if n.endswith(_PICKLE_SUFFIXES))
    if pickles:
        raise IntegrityError(
            f"{where}/{pickles[0]} is a pickle: recluster never loads pickles (unpickling runs "
            "whatever code the file holds). Re-run the job with this version of recluster to "
            "save the node in portable files")
    try:
        pre = preprocessor_from_json(files["preprocess.json"])
    except KeyError:
        raise IntegrityError(f"{where}/preprocess.json is missing or incomplete") from None
    except ValueError as exc:
        raise IntegrityError(f"{where}/preprocess.json is not valid: {exc}") from None
    try:
        assigner = assigner_from_files(files)
        projection = (Projection.from_bytes(files[PROJECTION_FILE])
                      if PROJECTION_FILE in files else None)
        reference = Reference.from_json(files[DRIFT_FILE]) if DRIFT_FILE in files else None
    except (ValueError, KeyError) as exc:
        raise IntegrityError(f"{where}: the node's assigner cannot be loaded: {exc}") from None
    return NodeFit(path=path, n_sample=0, preprocessor=pre, assigner=assigner,
                   projection=projection, reference=reference)


def staged_digests(store: OutputStore) -> dict[str, str]:
    """SHA-256 of every file staged for publication except ``labels/``, by relative path.

    Read back from the store, so the digests are those of the bytes that will be published.
    """
    root = store.staged("").rstrip("/")
    store.fs.invalidate_cache()
    out = {}
    for path in sorted(store.fs.find(root)):
        rel = path[len(root) + 1:]
        if not rel.startswith(UNDIGESTED_PREFIX):
            out[rel] = sha256_hex(store.fs.cat_file(path))
    return out


class PublishedFiles:
    """A published run's files, each checked against the SHA-256 its manifest records.

    Parameters
    ----------
    store : the run's output location
    manifest_sha256 : optional SHA-256 (hex) that ``manifest.json`` itself must have. The
        digests live in the manifest, next to the files: whoever can rewrite both can pass the
        file checks. Pinning the manifest's own digest (taken when the run was published)
        closes that.

    Raises
    ------
    IntegrityError
        no manifest, a manifest that does not match ``manifest_sha256``, or one that records
        no digests (published before digests were recorded).
    """

    def __init__(self, store: OutputStore, manifest_sha256: str | None = None):
        self.store = store
        self.url = store.loc.url.rstrip("/")
        raw = store.read(MANIFEST)
        if raw is None:
            raise IntegrityError(f"{self.url} is not a published recluster run (no {MANIFEST})")
        self.manifest_sha256 = sha256_hex(raw)
        if manifest_sha256 is not None and not hmac.compare_digest(
                self.manifest_sha256, manifest_sha256.strip().lower()):
            raise IntegrityError(
                f"{self.url}/{MANIFEST} has SHA-256 {self.manifest_sha256}, not the pinned "
                f"{manifest_sha256.strip().lower()}: the run was changed after publication")
        self.manifest = json.loads(raw)
        digests = self.manifest.get(DIGESTS)
        if not isinstance(digests, dict) or not digests:
            raise IntegrityError(
                f"{self.url}/{MANIFEST} records no SHA-256 digests of the run's files (published "
                "by an older recluster), so they cannot be verified; re-run the job")
        self.digests: dict[str, str] = digests

    def read(self, rel: str) -> bytes:
        """The bytes of ``rel`` (relative to the run), verified.

        Raises
        ------
        IntegrityError
            the manifest does not list ``rel``, the file is missing, or its SHA-256 differs.
        """
        expected = self.digests.get(rel)
        if not isinstance(expected, str):
            raise IntegrityError(f"{self.url}/{rel} is not listed in {MANIFEST}'s digests: not a "
                                 "file this run published")
        data = self.store.read(rel)
        if data is None:
            raise IntegrityError(f"{self.url}/{rel} is listed in {MANIFEST} but missing")
        actual = sha256_hex(data)
        if not hmac.compare_digest(actual, expected):
            raise IntegrityError(
                f"{self.url}/{rel} has SHA-256 {actual}, but {MANIFEST} records {expected}: the "
                "file was changed after publication; refusing to use it")
        return data

    def read_all(self, prefix: str) -> dict[str, bytes]:
        """Every file under ``prefix`` (e.g. ``models/``), verified, by relative path.

        The files present and the files listed must be the same set: an extra file (say, a
        planted ``assigner.pkl``) or a missing one is refused before any is parsed.
        """
        fs, root = self.store.fs, self.store.root
        fs.invalidate_cache()
        present = {p[len(root) + 1:] for p, info in fs.find(f"{root}/{prefix}", detail=True).items()
                   if not is_folder_entry(p, info)}
        listed = {rel for rel in self.digests if rel.startswith(prefix)}
        extra, missing = sorted(present - listed), sorted(listed - present)
        if extra:
            raise IntegrityError(f"{self.url}/{extra[0]} is not listed in {MANIFEST}'s digests: "
                                 "not a file this run published; refusing to load the models"
                                 + (f" ({len(extra)} such files)" if len(extra) > 1 else ""))
        if missing:
            raise IntegrityError(f"{self.url}/{missing[0]} is listed in {MANIFEST} but missing")
        return {rel: self.read(rel) for rel in sorted(listed)}
