"""The Dask layer of the explanations: one-vs-rest XGBoost per child with ``xgboost.dask``,
held-out quality, TreeSHAP aggregates (``pred_contribs``) and profiles per node.

One pass over the data draws every explained node's training sample at once (labels are final
by then); trainings run one after another (many concurrent ``xgboost.dask`` trainings can hang),
each retried a bounded number of times with a fresh ``DaskDMatrix`` if a worker is lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import dask.dataframe as dd
import numpy as np
import pandas as pd
from distributed import Client, Future, wait
from sklearn.metrics import average_precision_score, roc_auc_score

from recluster.compute import explain
from recluster.compute.node import U_COLUMN, NodeFit, node_seed
from recluster.compute.paths import NodePath
from recluster.compute.schema import TableSchema
from recluster.config import ExplainConfig
from recluster.errors import StageError


@dataclass
class NodeExplanation:
    """What explaining one node produced."""

    quality: dict[str, dict] = field(default_factory=dict)  # child path -> metrics or skip reason
    models: dict[str, bytes] = field(default_factory=dict)  # child path -> booster (.ubj)
    shap: list[pd.DataFrame] = field(default_factory=list)
    profiles: pd.DataFrame | None = None


def child_number(path: str) -> int:
    """A child's number among its parent's children: its path's last component."""
    return NodePath.parse(path).index


def _profiles_task(rows: pd.DataFrame, fit: NodeFit, path: str, children: list[str],
                   names: dict[str, str], describe: tuple[list[str], list[str]] = ([], [])
                   ) -> pd.DataFrame:
    """Profiles of each child against its siblings: the features, then the ``describe``
    columns (numeric keys, categorical keys), which no model sees."""
    child = rows["_child"].to_numpy()
    numeric = [*fit.preprocessor.numeric, *describe[0]]
    categorical = [*fit.preprocessor.categorical, *describe[1]]
    frames = [explain.profiles(rows, child == child_number(cp), numeric, categorical, path, cp,
                               names, {*describe[0], *describe[1]})
              for cp in children]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _message(exc: BaseException) -> str:
    """An exception's message without the C++ stack trace XGBoost appends to its errors."""
    return str(exc).split("\nStack trace:", 1)[0].rstrip()


def _train(client: Client, params: dict, X: dd.DataFrame, y: dd.Series, rounds: int,
           retries: int, timeout_s: float, what: str, collective_timeout_s: int = 120):
    """Train with ``xgboost.dask``: bounded retries with fresh data handles, bounded time.

    When a worker dies mid-training, xgboost.dask's task on a surviving worker would wait in its
    collective for the dead peer forever, holding that worker's only thread, so that every later
    task there (the retry included) queues behind it. The collective timeout ends that wait.
    """
    import xgboost as xgb
    import xgboost.dask  # noqa: F401  (registers xgb.dask)
    from xgboost.collective import Config

    coll = Config(timeout=collective_timeout_s, tracker_timeout=collective_timeout_s)

    def attempt():
        # A node's rows may all lie in some partitions (a small table, clusters that follow
        # the files): xgboost.dask refuses categorical data on a worker with empty input, so
        # only partitions that hold rows are trained on.
        sizes = client.compute(y.map_partitions(len), sync=True)
        keep = [i for i, n in enumerate(sizes) if n] or [0]
        dtrain = xgb.dask.DaskDMatrix(client, X.partitions[keep], y.partitions[keep],
                                      enable_categorical=True)
        return xgb.dask.train(client, params, dtrain, num_boost_round=rounds,
                              verbose_eval=False, coll_cfg=coll)["booster"]

    last: BaseException | None = None
    for _ in range(retries + 1):
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            return pool.submit(attempt).result(timeout=timeout_s)
        except FutureTimeout:
            raise StageError(f"stage 'explain' failed: training {what} did not finish within "
                             f"explain.train_timeout_s={timeout_s:g}s") from None
        except Exception as exc:  # xgboost.dask raises on a lost worker; retry with fresh data
            last = exc
        finally:
            pool.shutdown(wait=False)
    cause = last.__cause__ or last.__context__ if last is not None else None
    detail = f"{type(last).__name__}: {_message(last)}" + (
        f" (from {type(cause).__name__}: {_message(cause)})" if cause is not None else "")
    raise StageError(f"stage 'explain' failed: training {what} failed {retries + 1} times: {detail}")


def _fit_booster(X: pd.DataFrame, child: pd.Series, k: int, params: dict,
                 rounds: int) -> bytes:
    """One single-node XGBoost model on one worker thread: ``child == k`` against the rest.

    Parameters
    ----------
    X : DataFrame (n, features), the node's raw training rows
    child : Series (n,), each row's child number
    """
    import xgboost as xgb

    d = xgb.DMatrix(X, label=(child.to_numpy() == k).astype("int32"), enable_categorical=True,
                    nthread=1)
    booster = xgb.train({**params, "nthread": 1}, d, num_boost_round=rounds, verbose_eval=False)
    return bytes(booster.save_raw("ubj"))


def _train_local(client: Client, X: Future, child: Future, k: int, params: dict, rounds: int,
                 retries: int, timeout_s: float, what: str):
    """Train one model as an ordinary task (Dask retries it elsewhere if its worker dies): the
    same result whatever the number of workers, no collective, models of a node side by side."""
    import xgboost as xgb

    fut = client.submit(_fit_booster, X, child, k, params, rounds, retries=retries, pure=False)
    try:
        raw = fut.result(timeout=timeout_s)
    except (TimeoutError, FutureTimeout):
        fut.cancel()
        raise StageError(f"stage 'explain' failed: training {what} did not finish within "
                         f"explain.train_timeout_s={timeout_s:g}s") from None
    except Exception as exc:
        raise StageError(f"stage 'explain' failed: training {what} failed {retries + 1} times: "
                         f"{type(exc).__name__}: {_message(exc)}") from None
    booster = xgb.Booster()
    booster.load_model(bytearray(raw))
    return booster


def explain_nodes(client: Client, feats: dd.DataFrame, state: dd.DataFrame,
                  nodes: Mapping[str, tuple[int, int, NodeFit, list[str]]], ts: TableSchema,
                  cfg: ExplainConfig, seed: int,
                  echo: Callable[[str], None]) -> dict[str, NodeExplanation]:
    """Explain every split node.

    Parameters
    ----------
    nodes : path -> (node depth, node rows, fitted node, child paths)
    """
    import xgboost as xgb
    import xgboost.dask  # noqa: F401  (registers xgb.dask)

    spec = {p: (d, min(1.0, cfg.train_rows / max(1, size))) for p, (d, size, _, _) in nodes.items()}
    # Descriptive columns ride along in the training rows for the profiles only: raw_frame
    # (what the models see) takes the node's features and nothing else.
    describe = ([ts.key(c) for c in ts.describe_numeric],
                [ts.key(c) for c in ts.describe_categorical])
    cols = [*ts.feature_keys, *(k for k in describe[0] + describe[1]
                                if k not in ts.feature_keys)]
    names = {k: c for c, k in ts.keys.items()}  # what people read: the columns' own names
    meta = explain.select_training_rows(feats._meta, state._meta, {}, cols)
    # One pass draws every node's rows; they are few (train_rows per node), so they are merged
    # into one partition per worker: every DaskDMatrix and query below then costs a handful of
    # tasks instead of a few per input partition (at 4M rows in 80 files that was most of it).
    n_parts = max(1, len(client.scheduler_info().get("workers", {})))
    train_all = dd.map_partitions(explain.select_training_rows, feats, state, spec, cols,
                                  meta=meta, align_dataframes=False)
    train_all = train_all.repartition(npartitions=min(n_parts, train_all.npartitions)).persist()
    out: dict[str, NodeExplanation] = {}
    for path, (_, size, fit, children) in nodes.items():
        t0 = time.perf_counter()
        res = out[path] = NodeExplanation()
        threshold = spec[path][1]
        rows = train_all[train_all["_node"] == path]
        if not all(rows.map_partitions(len).compute()):
            # A small node's rows can sit in one worker's partition only; xgboost.dask then gives
            # the other worker an empty DMatrix, which categorical features make an error. The
            # merged rows are persisted before anything is built on them: a Repartition inside
            # the expressions below let this thread and the scheduler's graph-materialising
            # thread deadlock on dask-expr's cached properties (Python 3.11 locks them per class).
            rows = rows.repartition(npartitions=1).persist()
            wait(rows)
        prof = client.submit(_profiles_task, client.compute(rows), fit, path, children, names,
                             describe)
        raw_meta = explain.raw_frame(feats._meta, fit.preprocessor)
        X = rows.map_partitions(explain.raw_frame, fit.preprocessor, meta=raw_meta)
        u = rows[U_COLUMN]
        hold = u < cfg.holdout_fraction * threshold
        shap_cut = min(threshold, cfg.shap_rows / max(1, size))
        X_train, child_train = X[~hold], rows["_child"][~hold]
        X_hold, child_hold = client.compute([X[hold], rows["_child"][hold]], sync=True)
        X_shap = X[u < shap_cut].persist()
        child_shap = rows["_child"][u < shap_cut].compute()
        counts = child_train.value_counts().compute()
        # A node's training rows are few (explain.train_rows): up to explain.local_train_rows
        # each model is one ordinary task on rows held once per node; beyond, xgboost.dask.
        local = int(counts.sum()) <= cfg.local_train_rows
        if local:
            X_train_f, child_train_f = client.compute([X_train, child_train])
        dshap = xgb.dask.DaskDMatrix(client, X_shap, enable_categorical=True)
        for cp in children:
            k = child_number(cp)  # its level value (children[i] need not be number i)
            n_pos = int(counts.get(k, 0))
            n_neg = int(counts.sum() - n_pos)
            n_pos_hold = int((child_hold == k).sum())
            if n_pos < cfg.min_child_rows or n_neg < cfg.min_child_rows or n_pos_hold < 5:
                res.quality[cp] = {"model": None, "skip_reason":
                                   f"{n_pos} training / {n_pos_hold} held-out members, "
                                   f"{n_neg} non-members: below explain.min_child_rows="
                                   f"{cfg.min_child_rows}"}
                continue
            params = explain.classifier_params(n_pos, n_neg, cfg, node_seed(seed, cp))
            what = f"the model of cluster {cp}"
            if local:
                booster = _train_local(client, X_train_f, child_train_f, k, params,
                                       cfg.n_estimators, cfg.retries, cfg.train_timeout_s, what)
            else:
                booster = _train(client, params, X_train, (child_train == k).astype("int32"),
                                 cfg.n_estimators, cfg.retries, cfg.train_timeout_s, what,
                                 cfg.collective_timeout_s)
            booster.set_param({"nthread": 1})
            p_hold = booster.predict(xgb.DMatrix(X_hold, enable_categorical=True))
            y_hold = (child_hold.to_numpy() == k).astype(int)
            contribs = np.asarray(xgb.dask.predict(client, booster, dshap, pred_contribs=True)
                                  .compute())
            margin = np.asarray(xgb.dask.predict(client, booster, dshap, output_margin=True)
                                .compute())
            additivity = float(np.max(np.abs(contribs.sum(axis=1) - margin))) if len(margin) else 0.0
            member = child_shap.to_numpy() == k
            res.shap.append(explain.shap_summary(contribs, member,
                                                 [names[k] for k in raw_meta.columns], path, cp))
            res.models[cp] = bytes(booster.save_raw("ubj"))
            res.quality[cp] = {
                "model": f"child-{k}.ubj", "trainer": "task" if local else "xgboost.dask",
                "auc": round(float(roc_auc_score(y_hold, p_hold)), 6),
                "average_precision": round(float(average_precision_score(y_hold, p_hold)), 6),
                "n_train": n_pos + n_neg, "n_train_members": n_pos, "n_holdout": len(y_hold),
                "n_shap_rows": int(len(member)), "shap_additivity_max_error": additivity,
            }
        res.profiles = prof.result()
        aucs = [q["auc"] for q in res.quality.values() if q.get("model")]
        echo(f"  explained node {path}: {len(aucs)}/{len(children)} models"
             + (f", AUC {min(aucs):.3f}-{max(aucs):.3f}" if aucs else "")
             + f" ({time.perf_counter() - t0:.1f}s)")
        del dshap, X_shap
    del train_all
    return out
