"""What goes into ``models/`` and how it comes back: portable files, no pickles by default.

Per split node ``models/<path>/``: ``preprocess.json`` (medians, log flags, scales, levels),
the assigner that routed rows to the node's children (``assigner.json`` + ``.ubj`` boosters for
the default classifier; ``assigner.pkl`` for ``knn``/``umap``), and one one-vs-rest explanation
model per child (``child-<k>.ubj``). ``models/index.json`` lists the nodes and the input columns.
Pure (bytes in, objects out): storage is the caller's business.
"""

from __future__ import annotations

import json
import pickle
from typing import Any

from recluster.compute.assign import ClassifierAssigner
from recluster.compute.node import NodeFit
from recluster.compute.preprocess import Preprocessor

_FITTED = ("medians_", "log1p_", "means_", "scales_", "constant_", "missing_share_", "levels_",
           "feature_names_out_")


def preprocessor_to_json(pre: Preprocessor) -> bytes:
    data: dict[str, Any] = {"numeric": pre.numeric, "categorical": pre.categorical,
                            "skew_threshold": pre.skew_threshold,
                            "max_categories": pre.max_categories}
    data.update({k: getattr(pre, k) for k in _FITTED})
    return json.dumps(data, indent=1).encode()


def preprocessor_from_json(raw: bytes) -> Preprocessor:
    data = json.loads(raw)
    pre = Preprocessor(data["numeric"], data["categorical"], data["skew_threshold"],
                       data["max_categories"])
    for k in _FITTED:
        setattr(pre, k, data[k])
    return pre


def node_files(fit: NodeFit) -> dict[str, bytes]:
    """The files that let ``recluster score`` route rows through this node."""
    files = {"preprocess.json": preprocessor_to_json(fit.preprocessor)}
    if isinstance(fit.assigner, ClassifierAssigner):
        files.update(fit.assigner.to_files())
    else:
        files["assigner.pkl"] = pickle.dumps(fit.assigner)
    return files


def node_from_files(path: str, files: dict[str, bytes]) -> NodeFit:
    """A routing-only :class:`NodeFit` (preprocessor + assigner) from its saved files."""
    pre = preprocessor_from_json(files["preprocess.json"])
    if "assigner.json" in files:
        assigner = ClassifierAssigner.from_files(files)
    else:
        assigner = pickle.loads(files["assigner.pkl"])  # written by this project's own job
    fit = NodeFit(path=path, n_sample=0, preprocessor=pre, assigner=assigner)
    return fit
