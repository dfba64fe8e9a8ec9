"""Giving every row a cluster once a node is fitted on its sample: the hot path.

Three assigners share one interface (``predict(X) -> labels, probability, embedding``):

* :class:`ClassifierAssigner` — the default: gradient-boosted trees trained on the node's labelled
  sample (scaled features -> cluster, noise included as a class) plus a tree regressor for the
  embedding coordinates. ~15x faster than kNN at equal held-out agreement (jobs/benchmark_assign.py).
* :class:`KnnAssigner` — majority vote of the ``k`` nearest labelled sample rows in the node's
  scaled feature space; the embedding is the mean position of the agreeing neighbours.
  Deterministic per row, so labels do not depend on partitioning.
* :class:`UmapAssigner` — the design card's way: UMAP's ``transform`` then
  ``hdbscan.approximate_predict``. Slower, and UMAP's SGD epochs depend on the batch size,
  so results shift with partition size.

Every assigner saves itself as portable files and comes back from them (``to_files`` /
:func:`assigner_from_files`): JSON for settings, XGBoost's ``.ubj`` for boosters, and ``.npz``
arrays read with ``allow_pickle=False``. Nothing here ever unpickles: a model file can hold
numbers, never code. Pure compute: arrays and bytes in, arrays and bytes out.
"""

from __future__ import annotations

import io
import json
import threading

import numpy as np
from sklearn.neighbors import NearestNeighbors

#: The settings file every saved assigner has; its ``kind`` says which class reads the rest.
ASSIGNER_JSON = "assigner.json"
#: The arrays of a kNN or UMAP assigner.
ASSIGNER_NPZ = "assigner.npz"


#: XGBoost's prediction settings for :func:`booster_predict` (those of ``inplace_predict``'s
#: defaults: values, all trees, NaN as missing), encoded once.
_PREDICT_ARGS = json.dumps({"type": 0, "training": False, "iteration_begin": 0,
                            "iteration_end": 0, "missing": float("nan"),
                            "strict_shape": False, "cache_id": 0}).encode()


class _ProxyMatrix:
    """An XGBoost proxy matrix (the handle a prediction gives its input through), freed with
    this object."""

    def __init__(self):
        import ctypes

        from xgboost.core import _LIB, _check_call

        self.handle = ctypes.c_void_p()
        _check_call(_LIB.XGProxyDMatrixCreate(ctypes.byref(self.handle)))
        self._free = _LIB.XGDMatrixFree  # held: no import while the interpreter shuts down

    def __del__(self):
        try:
            self._free(self.handle)
        except Exception:  # nothing to do about it on the way out
            pass


#: Each thread's proxy matrix (:func:`_thread_proxy`), freed when the thread ends.
_threads = threading.local()


def _thread_proxy():
    """This thread's proxy matrix, made on its first prediction.

    A prediction without one makes and drops a proxy per call, and making one reads the
    machine's CPU quota from its cgroup files and its CPU affinity (about ten system calls,
    ~25-50 µs a call here). A proxy is given the call's array each time, a change to the proxy:
    one per thread.
    """
    proxy = getattr(_threads, "proxy", None)
    if proxy is None:
        proxy = _threads.proxy = _ProxyMatrix()
    return proxy.handle


def booster_predict(booster, X: np.ndarray) -> np.ndarray:
    """``booster.inplace_predict(X)``, the same values, through XGBoost's C function directly.

    A pass calls a node's booster once per partition, on that node's rows only; at hundreds of
    nodes most calls are on a few hundred rows, where the Python wrapper's per-call work (a dozen
    type probes, two JSON encodings, a class defined per call, which also wakes the garbage
    collector) and a fresh proxy matrix per call (:func:`_thread_proxy`) cost as much as the
    prediction: one row, 60 trees, 4 classes, ~150 µs through ``inplace_predict``, ~42 µs here.
    The settings are encoded once, the array is described directly (numpy's array interface,
    version 3) and the thread's proxy is reused, so a call costs little more than XGBoost's own
    work.

    Parameters
    ----------
    booster : xgboost.Booster
    X : ndarray (m, d), float32 or convertible

    Returns
    -------
    ndarray of float32: (m,) for one output (binary, regression), (m, k) for k outputs

    Raises
    ------
    ValueError
        when ``X`` has not the booster's number of columns (``d`` != its features).
    """
    import ctypes

    from xgboost.core import _LIB, _check_call, c_bst_ulong

    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2 or len(X) == 0:
        return booster.inplace_predict(X)
    if X.shape[1] != booster.num_features():  # XGBoost's own refusal is a C++ check and trace
        raise ValueError(f"the booster was trained on {booster.num_features()} features; "
                         f"given {X.shape[1]} columns")
    described = json.dumps({"data": [X.ctypes.data, True], "shape": list(X.shape),
                            "strides": None, "typestr": "<f4", "version": 3}).encode()
    shape = ctypes.POINTER(c_bst_ulong)()
    dims = c_bst_ulong()
    out = ctypes.POINTER(ctypes.c_float)()
    _check_call(_LIB.XGBoosterPredictFromDense(
        booster.handle, described, _PREDICT_ARGS, _thread_proxy(), ctypes.byref(shape),
        ctypes.byref(dims), ctypes.byref(out)))
    # XGBoost owns ``out`` until the booster's next call: copied out
    return np.ctypeslib.as_array(out, shape=tuple(int(shape[i]) for i in range(dims.value))).copy()


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _npz_arrays(raw: bytes, expected: dict[str, tuple[str, int]]) -> dict[str, np.ndarray]:
    """Read ``.npz`` bytes without pickles; every expected array with its dtype kind and rank.

    Parameters
    ----------
    raw : bytes of an ``.npz`` file
    expected : name -> (dtype kinds allowed, e.g. ``"f"`` or ``"iu"``, number of dimensions)

    Raises
    ------
    ValueError
        naming the array that is missing, of the wrong type or shape, or an object array.
    """
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        names = set(npz.files)
        if names != set(expected):
            raise ValueError(f"{ASSIGNER_NPZ} holds arrays {sorted(names)}, expected "
                             f"{sorted(expected)}")
        out = {}
        for name, (kinds, ndim) in expected.items():
            a = npz[name]  # an object array raises here: it would need a pickle
            if a.dtype.kind not in kinds or a.ndim != ndim:
                raise ValueError(f"{ASSIGNER_NPZ}: array {name!r} is {a.dtype}, {a.ndim}-d; "
                                 f"expected {ndim}-d of kind {kinds!r}")
            out[name] = a
    return out


def _settings(files: dict[str, bytes], kind: str) -> dict:
    meta = json.loads(files[ASSIGNER_JSON])
    if not isinstance(meta, dict) or meta.get("kind") != kind:
        raise ValueError(f"{ASSIGNER_JSON} is not a {kind} assigner")
    return meta


class KnnAssigner:
    """Label rows by their nearest labelled neighbours in the scaled space.

    Parameters
    ----------
    k : int
        Neighbours consulted per row.
    """

    def __init__(self, k: int = 10):
        self.k = k

    def fit(self, X: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
            embedding: np.ndarray) -> KnnAssigner:
        """Index the labelled rows.

        Parameters
        ----------
        X : ndarray (n, d) scaled features of the labelled rows
        labels : ndarray (n,) int, ``-1`` for noise
        probabilities : ndarray (n,) membership strengths
        embedding : ndarray (n, c) embedding coordinates
        """
        self.k_ = int(min(self.k, len(X)))
        self.X_ = np.asarray(X, dtype=np.float32)
        self.index_ = NearestNeighbors(n_neighbors=self.k_).fit(self.X_)
        self.labels_ = np.asarray(labels, dtype=np.int64)
        self.probabilities_ = np.asarray(probabilities, dtype=np.float64)
        self.embedding_ = np.asarray(embedding, dtype=np.float32)
        self.n_labels_ = int(self.labels_.max()) + 2 if len(self.labels_) else 1
        return self

    def predict(self, X: np.ndarray, embedding: bool = True
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Assign rows.

        Parameters
        ----------
        X : ndarray (m, d)
        embedding : bool
            whether to place the rows on the node's map (only the first level's map is kept:
            below it the coordinates are not computed)

        Returns
        -------
        labels : ndarray (m,) int64
        probability : ndarray (m,) float64, 0 for noise
        embedding : ndarray (m, c) float32, or None when ``embedding`` is false
        """
        m = len(X)
        c = self.embedding_.shape[1]
        if m == 0:
            return np.empty(0, np.int64), np.empty(0), np.empty((0, c), np.float32)
        _, idx = self.index_.kneighbors(np.asarray(X, dtype=np.float32))
        neigh = self.labels_[idx] + 1  # shift so noise is column 0
        votes = np.zeros((m, self.n_labels_), dtype=np.int32)
        np.add.at(votes, (np.repeat(np.arange(m), self.k_), neigh.ravel()), 1)
        best = votes.max(axis=1)
        # Ties go to the label of the nearest neighbour among the tied ones.
        tied = votes[np.arange(m)[:, None], neigh] == best[:, None]
        first = np.argmax(tied, axis=1)
        winner = neigh[np.arange(m), first]
        agree = neigh == winner[:, None]
        n_agree = agree.sum(axis=1)
        prob = (self.probabilities_[idx] * agree).sum(axis=1) / self.k_
        labels = winner.astype(np.int64) - 1
        prob[labels < 0] = 0.0
        if not embedding:
            return labels, prob, None
        emb = (self.embedding_[idx] * agree[:, :, None]).sum(axis=1) / n_agree[:, None]
        return labels, prob, emb.astype(np.float32)

    def to_files(self) -> dict[str, bytes]:
        """``assigner.json`` (k) and ``assigner.npz``: the labelled rows (n, d), their labels
        (n,), membership strengths (n,) and embedding (n, c). The neighbour index is rebuilt
        from the rows on load (exact search: the same neighbours, so the same answers)."""
        meta = {"kind": "knn", "k": int(self.k), "k_fitted": self.k_}
        return {ASSIGNER_JSON: json.dumps(meta).encode(),
                ASSIGNER_NPZ: _npz_bytes(X=self.X_,
                                         labels=self.labels_, probabilities=self.probabilities_,
                                         embedding=self.embedding_)}

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> KnnAssigner:
        """The inverse of :meth:`to_files` (raises ``ValueError`` on malformed files)."""
        meta = _settings(files, "knn")
        a = _npz_arrays(files[ASSIGNER_NPZ], {"X": ("f", 2), "labels": ("iu", 1),
                                              "probabilities": ("f", 1), "embedding": ("f", 2)})
        n = len(a["X"])
        if not (len(a["labels"]) == len(a["probabilities"]) == len(a["embedding"]) == n > 0):
            raise ValueError(f"{ASSIGNER_NPZ}: arrays of different lengths")
        if int(meta["k_fitted"]) != min(int(meta["k"]), n):
            raise ValueError(f"{ASSIGNER_JSON}: k_fitted={meta['k_fitted']} does not match "
                             f"k={meta['k']} and {n} rows")
        return cls(int(meta["k"])).fit(a["X"], a["labels"], a["probabilities"], a["embedding"])


#: UMAP settings that its ``transform`` uses, as :class:`UmapAssigner` saves them.
_UMAP_SETTINGS = ("n_neighbors", "local_connectivity", "a", "b", "n_epochs", "transform_seed",
                  "repulsion_strength", "initial_alpha", "negative_sample_rate")


def _hdbscan_changed_params(clusterer) -> dict:
    """The clusterer's settings that differ from HDBSCAN's defaults (JSON-ready)."""
    import hdbscan

    defaults = hdbscan.HDBSCAN().get_params()
    out = {}
    for key, value in clusterer.get_params().items():
        if key in ("memory", "prediction_data", "core_dist_n_jobs") or value == defaults.get(key):
            continue
        if not isinstance(value, str | int | float | bool):
            raise ValueError(f"HDBSCAN setting {key}={value!r} cannot be saved portably")
        out[key] = value
    return out


class UmapAssigner:
    """Embed rows with UMAP's transform, then ``hdbscan.approximate_predict``.

    The transform is UMAP's own (``umap.umap_.transform``'s steps, with UMAP's functions:
    membership strengths of each row's ``n_neighbors`` nearest sample rows, initial position
    as their weighted mean, then UMAP's SGD against the fixed sample embedding), computed
    from arrays: the node's scaled sample (n, d) and its embedding (n, c). Neighbours are
    found exactly (scikit-learn) rather than with pynndescent's approximate index, which
    cannot be saved without a pickle; below 4,096 sample rows UMAP searches exactly too.
    The clusterer is rebuilt on load by refitting HDBSCAN, which is deterministic, on the
    saved embedding with the saved settings; a refit that does not give the saved labels is
    refused. So a saved node predicts as the job did, and no pickle is involved.

    Parameters
    ----------
    reducer : umap.UMAP
        Fitted (euclidean input and output metric). Only its arrays and settings are kept.
    clusterer : hdbscan.HDBSCAN
        Fitted on ``reducer.embedding_`` with ``prediction_data=True``.
    relabel : ndarray (k + 1,)
        Maps HDBSCAN's labels (+1, so noise is 0) to the node's labels.
    """

    def __init__(self, reducer, clusterer, relabel: np.ndarray):
        self.reducer = reducer
        self.clusterer = clusterer
        self.relabel = relabel
        if reducer is not None:
            self._keep(reducer)

    def _keep(self, reducer) -> None:
        if reducer.metric != "euclidean" or reducer.output_metric != "euclidean":
            raise ValueError("UmapAssigner supports euclidean UMAP only")
        self.settings_ = {
            "n_neighbors": int(reducer._n_neighbors),
            "local_connectivity": float(reducer.local_connectivity),
            "a": float(reducer._a), "b": float(reducer._b),
            "n_epochs": None if reducer.n_epochs is None else int(reducer.n_epochs),
            "transform_seed": int(reducer.transform_seed),
            "repulsion_strength": float(reducer.repulsion_strength),
            "initial_alpha": float(reducer._initial_alpha),
            "negative_sample_rate": float(reducer.negative_sample_rate)}
        self.X_ = np.ascontiguousarray(reducer._raw_data, dtype=np.float32)
        self.embedding_ = np.ascontiguousarray(reducer.embedding_, dtype=np.float32)
        self.reducer = None  # its pynndescent index is neither needed nor portable
        self._index = None

    def with_clusters(self, clusterer, relabel: np.ndarray) -> UmapAssigner:
        """The same embedding with other clusters: ``clusterer`` refitted on ``embedding_``
        (e.g. with a coarser ``min_cluster_size``) and its ``relabel``."""
        other = UmapAssigner(None, clusterer, relabel)
        other.settings_, other.X_, other.embedding_ = self.settings_, self.X_, self.embedding_
        other._index = None
        return other

    def _neighbours(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._index is None:
            self._index = NearestNeighbors(n_neighbors=self.settings_["n_neighbors"]).fit(self.X_)
        dists, idx = self._index.kneighbors(X)
        return idx.astype(np.int32), dists.astype(np.float32)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Embed rows X (m, d) against the fitted sample: (m, c) float32."""
        import scipy.sparse
        from umap.layouts import optimize_layout_euclidean
        from umap.umap_ import (
            INT32_MAX,
            INT32_MIN,
            compute_membership_strengths,
            init_graph_transform,
            make_epochs_per_sample,
            smooth_knn_dist,
        )

        p = self.settings_
        X = np.ascontiguousarray(X, dtype=np.float32)
        m, n = len(X), len(self.X_)
        idx, dists = self._neighbours(X)
        sigmas, rhos = smooth_knn_dist(dists, float(p["n_neighbors"]),
                                       local_connectivity=max(0.0, p["local_connectivity"] - 1.0))
        rows, cols, vals, _ = compute_membership_strengths(idx, dists, sigmas, rhos, bipartite=True)
        graph = scipy.sparse.coo_matrix((vals, (rows, cols)), shape=(m, n))
        csr = graph.tocsr()
        csr.eliminate_zeros()
        emb = init_graph_transform(csr, self.embedding_)
        if p["n_epochs"] is None:
            n_epochs = 100 if m <= 10_000 else 30  # UMAP's rule: hence batch-dependent results
        else:
            n_epochs = int(p["n_epochs"] // 3.0)
        graph.data[graph.data < graph.data.max() / float(n_epochs)] = 0.0
        graph.eliminate_zeros()
        rng_state = np.random.RandomState(p["transform_seed"]).randint(
            INT32_MIN, INT32_MAX, 3).astype(np.int64)
        emb = optimize_layout_euclidean(
            np.asarray(emb, dtype=np.float32), self.embedding_.copy(), graph.row, graph.col,
            n_epochs, n, make_epochs_per_sample(graph.data, n_epochs), p["a"], p["b"], rng_state,
            p["repulsion_strength"], p["initial_alpha"] / 4.0, p["negative_sample_rate"],
            parallel=False, verbose=False, tqdm_kwds={"disable": True})
        return np.asarray(emb, dtype=np.float32)

    def predict(self, X: np.ndarray, embedding: bool = True
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Assign rows X (m, d): labels (m,), probability (m,), embedding (m, c) or None (see
        :meth:`KnnAssigner.predict`; the transform is needed for the labels anyway)."""
        import hdbscan

        c = self.embedding_.shape[1]
        if len(X) == 0:
            return np.empty(0, np.int64), np.empty(0), np.empty((0, c), np.float32)
        emb = self.transform(X)
        raw, prob = hdbscan.approximate_predict(self.clusterer, emb)
        labels = self.relabel[np.asarray(raw) + 1]
        prob = np.where(labels < 0, 0.0, prob)
        return (labels.astype(np.int64), prob.astype(np.float64),
                emb.astype(np.float32) if embedding else None)

    def to_files(self) -> dict[str, bytes]:
        """``assigner.json`` (UMAP and HDBSCAN settings) and ``assigner.npz``: the scaled sample
        ``X`` (n, d), its ``embedding`` (n, c), HDBSCAN's raw ``hdbscan_labels`` (n,) and
        ``relabel`` (k + 1,)."""
        meta = {"kind": "umap", "umap": self.settings_,
                "hdbscan": _hdbscan_changed_params(self.clusterer)}
        return {ASSIGNER_JSON: json.dumps(meta).encode(),
                ASSIGNER_NPZ: _npz_bytes(X=self.X_, embedding=self.embedding_,
                                         hdbscan_labels=np.asarray(self.clusterer.labels_,
                                                                   dtype=np.int64),
                                         relabel=np.asarray(self.relabel, dtype=np.int64))}

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> UmapAssigner:
        """The inverse of :meth:`to_files`: HDBSCAN is refitted on the saved embedding and must
        give the saved labels (raises ``ValueError`` otherwise, or on malformed files)."""
        import hdbscan

        meta = _settings(files, "umap")
        a = _npz_arrays(files[ASSIGNER_NPZ], {"X": ("f", 2), "embedding": ("f", 2),
                                              "hdbscan_labels": ("iu", 1), "relabel": ("iu", 1)})
        if not len(a["X"]) == len(a["embedding"]) == len(a["hdbscan_labels"]) > 1:
            raise ValueError(f"{ASSIGNER_NPZ}: arrays of different lengths")
        settings = meta.get("umap")
        if not isinstance(settings, dict) or set(settings) != set(_UMAP_SETTINGS):
            raise ValueError(f"{ASSIGNER_JSON}: 'umap' must hold exactly {list(_UMAP_SETTINGS)}")
        params = meta.get("hdbscan")
        if not isinstance(params, dict) or not set(params) <= set(hdbscan.HDBSCAN().get_params()):
            raise ValueError(f"{ASSIGNER_JSON}: 'hdbscan' holds unknown settings")
        clusterer = hdbscan.HDBSCAN(**params, prediction_data=True, core_dist_n_jobs=1).fit(
            a["embedding"])
        if not np.array_equal(np.asarray(clusterer.labels_, dtype=np.int64), a["hdbscan_labels"]):
            raise ValueError("HDBSCAN refitted on the saved embedding does not give the saved "
                             "labels (a different hdbscan version?)")
        if len(a["relabel"]) != int(a["hdbscan_labels"].max()) + 2:
            raise ValueError(f"{ASSIGNER_NPZ}: 'relabel' does not match the clusters")
        self = cls(None, clusterer, a["relabel"])
        self.settings_ = dict(settings)
        self.X_, self.embedding_ = a["X"], a["embedding"]
        self._index = None
        return self


class ClassifierAssigner:
    """Label rows with a multi-class XGBoost model fitted on the labelled sample.

    ``probability`` is the model's probability of the assigned cluster (0 for noise), and the
    embedding comes from a multi-output tree regressor on the same features. Both are kept as
    plain boosters so that a saved node (``.ubj``) predicts exactly as the job did.

    Parameters
    ----------
    n_estimators, max_depth, learning_rate : XGBoost settings
    seed : int
    """

    def __init__(self, n_estimators: int = 60, max_depth: int = 6, learning_rate: float = 0.3,
                 seed: int = 0):
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.seed = seed

    def _params(self) -> dict:
        return dict(n_estimators=self.n_estimators, max_depth=self.max_depth,
                    learning_rate=self.learning_rate, tree_method="hist", n_jobs=1,
                    random_state=self.seed)

    def fit(self, X: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
            embedding: np.ndarray, place: bool = True) -> ClassifierAssigner:
        """Fit on labelled rows: X (n, d), labels (n,), probabilities (n,), embedding (n, c).

        With ``place`` false the embedding regressor is not trained: the node's rows are only
        labelled, never placed on its map (only the first level's map is kept, so below the
        root the regressor would never be evaluated), and ``predict`` refuses ``embedding``.
        """
        import xgboost as xgb

        X = np.asarray(X, dtype=np.float32)
        self.classes_ = np.unique(np.asarray(labels, dtype=np.int64))
        self.n_components_ = int(embedding.shape[1])
        self.label_booster_ = None
        if len(self.classes_) > 1:
            y = np.searchsorted(self.classes_, labels)
            self.label_booster_ = xgb.XGBClassifier(**self._params()).fit(X, y).get_booster()
        self.embed_booster_ = xgb.XGBRegressor(**self._params()).fit(
            X, np.asarray(embedding)).get_booster() if place else None
        return self

    def predict(self, X: np.ndarray, embedding: bool = True
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Assign rows X (m, d): labels (m,), probability (m,), embedding (m, c) or None (see
        :meth:`KnnAssigner.predict`: below the first level the regressor is not evaluated)."""
        m = len(X)
        if m == 0:
            return np.empty(0, np.int64), np.empty(0), np.empty((0, self.n_components_), np.float32)
        X = np.asarray(X, dtype=np.float32)
        if self.label_booster_ is None:
            labels = np.full(m, self.classes_[0], dtype=np.int64)
            prob = np.ones(m)
        else:
            proba = np.asarray(booster_predict(self.label_booster_, X), dtype=np.float64)
            if proba.ndim == 1:  # two classes: binary:logistic gives P(class 1)
                proba = np.column_stack([1 - proba, proba])
            best = proba.argmax(axis=1)
            labels = self.classes_[best]
            prob = proba[np.arange(m), best]
        prob[labels < 0] = 0.0
        if not embedding:
            return labels, prob, None
        if self.embed_booster_ is None:
            raise ValueError("this assigner labels rows only: it was fitted without its "
                             "embedding regressor (a node below the root has no kept map)")
        emb = np.asarray(booster_predict(self.embed_booster_, X), dtype=np.float32).reshape(m, -1)
        return labels, prob, emb

    def to_files(self) -> dict[str, bytes]:
        """The assigner as files: JSON metadata and two ``.ubj`` boosters."""
        files = {ASSIGNER_JSON: json.dumps({"kind": "classifier", "classes": self.classes_.tolist(),
                                              "n_components": self.n_components_}).encode()}
        if self.embed_booster_ is not None:
            files["assigner-embedding.ubj"] = bytes(self.embed_booster_.save_raw("ubj"))
        if self.label_booster_ is not None:
            files["assigner-labels.ubj"] = bytes(self.label_booster_.save_raw("ubj"))
        return files

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> ClassifierAssigner:
        """The inverse of :meth:`to_files` (raises ``ValueError`` on malformed files)."""
        import xgboost as xgb

        meta = _settings(files, "classifier")
        self = cls()
        self.classes_ = np.asarray(meta["classes"], dtype=np.int64)
        self.n_components_ = int(meta["n_components"])

        def load(name):
            b = xgb.Booster()
            b.load_model(bytearray(files[name]))
            b.set_param({"nthread": 1})
            return b

        self.label_booster_ = load("assigner-labels.ubj") if "assigner-labels.ubj" in files else None
        self.embed_booster_ = (load("assigner-embedding.ubj")
                               if "assigner-embedding.ubj" in files else None)
        return self


_KINDS = {"classifier": ClassifierAssigner, "knn": KnnAssigner, "umap": UmapAssigner}


def assigner_from_files(files: dict[str, bytes]):
    """Rebuild a saved assigner of any kind from its files (``assigner.json`` names the kind).

    Raises
    ------
    ValueError
        when the files do not hold a portable assigner this version can read.
    """
    if ASSIGNER_JSON not in files:
        raise ValueError(f"no {ASSIGNER_JSON}")
    try:
        kind = json.loads(files[ASSIGNER_JSON]).get("kind")
    except (ValueError, AttributeError):
        raise ValueError(f"{ASSIGNER_JSON} is not a JSON object") from None
    if kind not in _KINDS:
        raise ValueError(f"{ASSIGNER_JSON} names an unknown assigner kind {kind!r}")
    try:
        return _KINDS[kind].from_files(files)
    except (KeyError, TypeError, ValueError, OSError) as exc:  # OSError: a broken .npz/zip
        raise ValueError(f"{kind} assigner files are malformed: {exc}") from None
