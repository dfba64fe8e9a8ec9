"""The Dask layer of the explanations: one-vs-rest XGBoost per child, held-out quality,
TreeSHAP aggregates (``pred_contribs``) and profiles per node, fanned out as tasks.

One pass over the data draws every explained node's training sample at once (labels are final
by then); every node's rows, profiles and per-child models are then tasks submitted together
(each model: single-node XGBoost on one thread, the same bytes on any number of workers).
Nodes with more training rows than ``explain.local_train_rows`` train with ``xgboost.dask``
after the tasks, one model at a time (many concurrent ``xgboost.dask`` trainings can hang),
each retried a bounded number of times with a fresh ``DaskDMatrix`` if a worker is lost.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import dask.dataframe as dd
import numpy as np
import pandas as pd
from dask.dataframe import methods
from distributed import Client, Future, as_completed, futures_of, wait

from recluster.compute import explain
from recluster.compute.node import U_COLUMN, NodeFit, node_seed
from recluster.compute.paths import NodePath
from recluster.compute.preprocess import Preprocessor
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


def _profiles_task(rows: list[pd.DataFrame], numeric: list[str], categorical: list[str],
                   path: str, children: list[str], names: dict[str, str],
                   describe: tuple[list[str], list[str]] = ([], []),
                   units: dict[str, tuple[str, str | None]] | None = None) -> pd.DataFrame:
    """Profiles of each child against its siblings (``rows``: the node's pieces,
    :func:`_node_pieces`): the node's features (``numeric``, ``categorical`` keys), then the
    ``describe`` columns (numeric keys, categorical keys), which no model sees; ``units``: the
    unit and time zone of each numeric describe key that holds dates or times
    (:attr:`~recluster.compute.schema.TableSchema.time_units`)."""
    child = np.concatenate([p["_child"].to_numpy() for p in rows])
    numeric = [*numeric, *describe[0]]
    categorical = [*categorical, *describe[1]]
    frames = explain.profiles_of(rows, [(child == child_number(cp), cp) for cp in children],
                                 numeric, categorical, path, names,
                                 {*describe[0], *describe[1]}, units)
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


def _by_node(*parts: pd.DataFrame) -> dict[str, list[pd.DataFrame]]:
    """Some partitions of the drawn rows (in input order, each input partition's levels in
    level order), split by ``_node``: each node's rows in that order, as the runs of rows that
    hold them, slices of the partitions (views, not copies: a draw emits each node's rows
    together, :func:`~recluster.compute.explain.select_training_rows`, so a node is one run
    per partition). Grouping by node copied every drawn row, and concatenating a node's rows
    from several partitions copied them again (500 columns: 200 MB a node); the tasks that
    take a node's rows take them as its pieces (:func:`_node_pieces`)."""
    pieces: dict[str, list[pd.DataFrame]] = {}
    for part in parts:
        node = part["_node"].to_numpy()
        if not len(node):
            continue
        starts = np.flatnonzero(np.concatenate([[True], node[1:] != node[:-1]]))
        for a, b in zip(starts, [*starts[1:], len(node)], strict=True):
            pieces.setdefault(str(node[a]), []).append(part.iloc[a:b])
    return pieces


def _pick(groups: dict[str, list[pd.DataFrame]], path: str) -> list[pd.DataFrame] | None:
    return groups.get(path)


def _node_pieces(empty: pd.DataFrame, *picked: list[pd.DataFrame] | None) -> list[pd.DataFrame]:
    """A node's rows from every partition, in partition order, as the list of pieces that hold
    any (``[empty]``, the frame's meta, when none does): the tasks that read them take them
    one after the other (:func:`~recluster.compute.explain.pieces_of`), never copied into one
    frame."""
    return [p for runs in picked if runs for p in runs if len(p)] or [empty]


def _evaluate_raw(rows: explain.NodeRows, raw: bytes, k: int, features: list[str], node: str,
                  cluster: str, kept=None) -> tuple[dict, pd.DataFrame]:
    """:func:`~recluster.compute.explain.evaluate_child` of a model trained elsewhere (given as
    its .ubj bytes), on the worker that holds the node's rows."""
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(bytearray(raw))
    return explain.evaluate_child(booster, rows, k, features, node, cluster, kept)


@dataclass
class _Node:
    """The client's book-keeping of one node while its tasks run."""

    path: str
    children: list[str]
    preprocessor: Preprocessor
    features: list[str]  # the names written for the models' columns
    rows: Future | None  # the node's drawn rows (their pieces), on a worker
    split: Future | None  # its NodeRows, on a worker
    counts: dict | None = None  # NodeRows.counts, once back
    local: bool = True  # its models train as tasks (else xgboost.dask)
    waiting: int = 0  # model tasks submitted and not yet back
    profiled: bool = False
    on_cluster: list[tuple] = field(default_factory=list)  # (cp, k, params, n_pos, n_neg)
    results: dict[str, tuple[bytes, dict, pd.DataFrame]] = field(default_factory=dict)
    seconds: float = 0.0  # spent training and evaluating its models


def _plan_models(node: _Node, res: NodeExplanation, cfg: ExplainConfig, seed: int):
    """From a node's child counts: record each child without a model and its reason, decide
    the trainer (a node's training rows are few, explain.train_rows: up to
    explain.local_train_rows each model is one ordinary task, beyond that xgboost.dask), and
    yield ``(child path, child number, XGBoost parameters, members, non-members)`` of the
    children that get a model."""
    train, hold = node.counts["train"], node.counts["hold"]
    n_train = sum(train.values())
    node.local = n_train <= cfg.local_train_rows
    for cp in node.children:
        k = child_number(cp)  # its level value (children[i] need not be number i)
        n_pos = train.get(k, 0)
        n_neg = n_train - n_pos
        reason = explain.skip_reason(n_pos, n_neg, hold.get(k, 0), cfg.min_child_rows)
        if reason is not None:
            res.quality[cp] = {"model": None, "skip_reason": reason}
            continue
        yield cp, k, explain.classifier_params(n_pos, n_neg, cfg, node_seed(seed, cp)), n_pos, n_neg


def _finish(node: _Node, res: NodeExplanation, echo: Callable[[str], None], how: str) -> None:
    """Put a node's results in its children's order (not the order they came back in), let
    its rows go and echo its line."""
    for cp in node.children:
        if cp in node.results:
            model, quality, shap = node.results[cp]
            res.models[cp], res.quality[cp] = model, quality
            res.shap.append(shap)
    res.quality = {cp: res.quality[cp] for cp in node.children if cp in res.quality}
    node.rows = node.split = None
    aucs = [q["auc"] for q in res.quality.values() if q.get("model")]
    echo(f"  explained node {node.path}: {len(aucs)}/{len(node.children)} models"
         + (f", AUC {min(aucs):.3f}-{max(aucs):.3f}" if aucs else "")
         + f" ({node.seconds:.1f}s {how})")


def _train_on_cluster(client: Client, train_all: dd.DataFrame, node: _Node,
                      res: NodeExplanation, threshold: float, cfg: ExplainConfig,
                      echo: Callable[[str], None], submit: Callable[..., Future]) -> None:
    """A node too large for one task (more than explain.local_train_rows training rows): each
    child's model trains with xgboost.dask, one at a time, then is judged and explained by one
    task on the node's rows (the same evaluation as the task path)."""
    t0 = time.perf_counter()
    rows = train_all[train_all["_node"] == node.path]
    if not all(rows.map_partitions(len).compute()):
        # A small node's rows can sit in one worker's partition only; xgboost.dask then gives
        # the other worker an empty DMatrix, which categorical features make an error. The
        # merged rows are persisted before anything is built on them: a Repartition inside
        # the expressions below let this thread and the scheduler's graph-materialising
        # thread deadlock on dask-expr's cached properties (Python 3.11 locks them per class).
        rows = rows.repartition(npartitions=1).persist()
        wait(rows)
    for cp, k, params, n_pos, n_neg in node.on_cluster:
        train = rows[~(rows[U_COLUMN] < cfg.holdout_fraction * threshold)]
        X_train = train.map_partitions(explain.raw_frame, node.preprocessor,
                                       meta=explain.raw_frame(train._meta, node.preprocessor))
        kept, score = submit(explain.NodeRows.screen, node.split, k, cfg.max_features,
                             key=f"screen-{cp}").result()
        if kept is not None:  # a wide node: the child's model sees its best-separating features
            X_train = X_train[[X_train.columns[j] for j in kept]]
        what = f"the model of cluster {cp}"
        booster = _train(client, params, X_train, (train["_child"] == k).astype("int32"),
                         cfg.n_estimators, cfg.retries, cfg.train_timeout_s, what,
                         cfg.collective_timeout_s)
        raw = bytes(booster.save_raw("ubj"))
        fut = submit(_evaluate_raw, node.split, raw, k, node.features, node.path, cp, kept,
                     key=f"evaluate-{cp}")
        try:
            metrics, shap = fut.result()
        except Exception as exc:
            raise StageError(f"stage 'explain' failed: judging {what} failed {cfg.retries + 1} "
                             f"times: {type(exc).__name__}: {_message(exc)}") from None
        node.results[cp] = (raw, explain.quality_entry(
            k, "xgboost.dask", n_pos, n_neg, metrics,
            explain.screen_entry(kept, node.features, score)), shap)
    node.seconds = time.perf_counter() - t0
    _finish(node, res, echo, "with xgboost.dask")


def draw_spec(nodes: Mapping[str, tuple[int, int]], cfg: ExplainConfig) -> dict[str, tuple[int, float]]:
    """Which rows explain each node: ``path -> (node depth, keep-threshold on _u)`` from
    ``path -> (node depth, node rows)``, about ``explain.train_rows`` rows per node."""
    return {p: (d, min(1.0, cfg.train_rows / max(1, size))) for p, (d, size) in nodes.items()}


def _draw_columns(ts: TableSchema) -> list[str]:
    """The columns drawn: the features, then the descriptive columns (which ride along in the
    training rows for the profiles only; :func:`~recluster.compute.explain.raw_frame`, what
    the models see, takes the node's features and nothing else)."""
    describe = [ts.key(c) for c in (*ts.describe_numeric, *ts.describe_categorical)]
    return [*ts.feature_keys, *(k for k in describe if k not in ts.feature_keys)]


def draw_frame(feats: dd.DataFrame, state: dd.DataFrame, spec: Mapping[str, tuple[int, float]],
               ts: TableSchema) -> dd.DataFrame:
    """The explanation rows of the nodes of ``spec`` (:func:`draw_spec`), lazily, one partition
    per input partition (:func:`~recluster.compute.explain.select_training_rows`). ``state``
    need only hold the nodes' child numbers: labels never change once a row's level is
    assigned, so a level's nodes can be drawn by the pass that assigns their children."""
    cols = _draw_columns(ts)
    meta = explain.select_training_rows(feats._meta, state._meta, {}, cols)
    return dd.map_partitions(explain.select_training_rows, feats, state, dict(spec), cols,
                             meta=meta, align_dataframes=False)


def _drawn_levels(drawn: Sequence[tuple[Mapping[str, tuple[int, float]], dd.DataFrame]],
                  spec: Mapping[str, tuple[int, float]]) -> list[dd.DataFrame] | None:
    """The rows drawn beforehand (by the assignment passes), a frame per level with a partition
    per input partition, if they are the rows ``spec`` draws (every node, at the same
    threshold), else None."""
    if not drawn:
        return None
    have: dict[str, tuple[int, float]] = {}
    for s, _ in drawn:
        have.update(s)
    if any(have.get(p) != v for p, v in spec.items()):
        return None
    frames = [f for _, f in drawn]
    if len({f.npartitions for f in frames}) > 1:
        return None
    return frames


def _merged(frames: Sequence[dd.DataFrame]) -> dd.DataFrame:
    """Each level's explanation rows (a partition per input partition) as one frame whose
    partition ``i`` holds input partition ``i``'s draws of every level, so that each node's
    rows come in input order, as one draw over the final state gives them (what xgboost.dask
    trains on)."""
    if len(frames) == 1:
        return frames[0]
    # One task per input partition concatenates its draws of every level: dd.concat of every
    # partition of every level as a frame of its own cost the client time growing with
    # partitions x columns to build (93 s for 500 partitions of 300 columns at depth 2).
    return dd.map_partitions(_levels_of_partition, *frames, meta=frames[0]._meta,
                             align_dataframes=False, enforce_metadata=False)


def _levels_of_partition(*levels: pd.DataFrame) -> pd.DataFrame:
    """One input partition's explanation rows drawn by each level, in level order, as Dask
    concatenates partitions (categoricals united): what the merge into fewer partitions
    would have made of them one by one."""
    return methods.concat(list(levels))


def explain_nodes(client: Client, feats: dd.DataFrame, state: dd.DataFrame,
                  nodes: Mapping[str, tuple[int, int, NodeFit, list[str]]], ts: TableSchema,
                  cfg: ExplainConfig, seed: int, echo: Callable[[str], None],
                  run_id: str | None = None,
                  drawn: Sequence[tuple[Mapping[str, tuple[int, float]], dd.DataFrame]] = ()
                  ) -> dict[str, NodeExplanation]:
    """Explain every split node: every (node, child) model is one task, all submitted at once.

    One pass draws every node's rows (:func:`~recluster.compute.explain.select_training_rows`);
    per node, tasks gather its rows from the partitions, split them into training, hold-out and
    SHAP rows (:func:`~recluster.compute.explain.split_node_rows`) and profile its children;
    these stay on the workers. As soon as a node's child counts are back, one task per child
    with enough members trains, judges and explains its model
    (:func:`~recluster.compute.explain.explain_child`) and returns only the model bytes, its
    quality and its SHAP summary. Nodes with more than ``explain.local_train_rows`` training
    rows train with ``xgboost.dask`` instead, one model at a time, after the tasks. Results do
    not depend on the number of workers or the order of completion.

    Parameters
    ----------
    nodes : path -> (node depth, node rows, fitted node, child paths)
    run_id : names every task's key (concurrent runs never share keys); a fresh one if None
    drawn : ``(spec, rows)`` pairs, the rows :func:`draw_frame` drew for the nodes of ``spec``
        in an earlier pass (the assignment passes draw them, saving a read of every column);
        used when they cover every node at its threshold, else the rows are drawn here; a
        list is emptied once they are merged, so that they are not held twice
    """
    run_id = run_id or uuid.uuid4().hex
    spec = draw_spec({p: (d, size) for p, (d, size, _, _) in nodes.items()}, cfg)
    describe = ([ts.key(c) for c in ts.describe_numeric],
                [ts.key(c) for c in ts.describe_categorical])
    names = {k: c for c, k in ts.keys.items()}  # what people read: the columns' own names
    units = {ts.key(c): u for c, u in ts.time_units.items()}
    meta = explain.select_training_rows(feats._meta, state._meta, {}, _draw_columns(ts))
    # Every node's rows come from one pass (or from the assignment passes, a frame per level);
    # they are few (train_rows per node), so one task per worker splits a run of input
    # partitions by node: the per-node tasks then cost a handful of picks instead of one per
    # input partition.
    n_parts = max(1, len(client.scheduler_info().get("workers", {})))
    levels = _drawn_levels(drawn, spec)  # persisted by the passes that drew them
    if levels is None:
        levels = [draw_frame(feats, state, spec, ts).persist()]
    if isinstance(drawn, list):
        drawn.clear()  # held here now: the caller's references are let go
    # Each level's persisted partitions, in partition order (keys ``(name, i)``): a node's rows
    # are gathered in that order, which the models' bytes depend on.
    by_level = []
    for frame in levels:
        parts = sorted(futures_of(frame), key=lambda f: f.key[1])
        if [f.key[1] for f in parts] != list(range(frame.npartitions)):
            raise RuntimeError(f"persisted explanation rows: unexpected keys {[f.key for f in parts]}")
        by_level.append(parts)
    # One task per run of input partitions splits their rows (every level's) by node.
    runs = np.array_split(np.arange(levels[0].npartitions), min(n_parts, levels[0].npartitions))

    tracked: dict[str, tuple[Future, str, str, str | None, str]] = {}  # awaited results

    def submit(fn, *args, key: str, track: tuple | None = None,
               where: list[str] | None = None) -> Future:
        """A task named by the run id, retried ``explain.retries`` times; ``track``:
        (kind, node, child, what) of a result the loop below waits for; ``where``: the
        workers it should run on while one of them is there."""
        placed = {"workers": where, "allow_other_workers": True} if where else {}
        fut = client.submit(fn, *args, key=f"explain-{key}-{run_id}", retries=cfg.retries,
                            pure=False, **placed)
        if track is not None:
            tracked[fut.key] = (fut, *track)
        return fut

    groups = [submit(_by_node, *(parts[j] for j in run for parts in by_level),
                     key=f"groups-{i}") for i, run in enumerate(runs)]
    # A node's rows are picked from each partition's groups on the worker that holds them.
    # Left to the scheduler, a pick could go to a less busy worker, which then received the
    # whole partition's groups (every node's rows: 235 MB a partition at 500 columns) to
    # keep a few of them. Loosely: if that worker is lost, the pick runs elsewhere.
    wait(groups)
    holder = client.who_has(groups)
    nodes_ = {}
    out = {p: NodeExplanation() for p in nodes}
    done = as_completed()
    rows = split = None
    for path, (_, size, fit, children) in nodes.items():
        rows = submit(_node_pieces, meta,
                      *(submit(_pick, g, path, key=f"pick-{path}-{i}", where=holder.get(g.key))
                        for i, g in enumerate(groups)),
                      key=f"rows-{path}")
        threshold = spec[path][1]
        split = submit(explain.split_node_rows, rows, fit.preprocessor, threshold,
                       cfg.holdout_fraction, min(threshold, cfg.shap_rows / max(1, size)),
                       cfg.max_features, key=f"split-{path}")
        raw_columns = explain.raw_frame(feats._meta, fit.preprocessor).columns
        nodes_[path] = _Node(path, list(children), fit.preprocessor,
                             [names[c] for c in raw_columns], rows, split)
        done.add(submit(explain.NodeRows.counts, split, key=f"counts-{path}",
                        track=("counts", path, None, f"selecting the rows of node {path}")))
        done.add(submit(_profiles_task, rows, fit.preprocessor.numeric,
                        fit.preprocessor.categorical, path, list(children), names, describe,
                        units,
                        key=f"profiles-{path}",
                        track=("profiles", path, None, f"profiling node {path}")))
    del groups, by_level, parts, rows, split  # the tasks hold what they need; the rest may go
    counts_left = len(nodes_)

    try:
        for fut in done:
            _, kind, path, cp, what = tracked.pop(fut.key)
            node, res = nodes_[path], out[path]
            if fut.status == "error":
                exc = fut.exception()
                raise StageError(f"stage 'explain' failed: {what} failed {cfg.retries + 1} "
                                 f"times: {type(exc).__name__}: {_message(exc)}")
            if fut.status != "finished":
                raise StageError(f"stage 'explain' failed: {what}: its task was {fut.status}")
            if kind == "counts":
                node.counts = fut.result()
                counts_left -= 1
                for cp_, k, params, n_pos, n_neg in _plan_models(node, res, cfg, seed):
                    if node.local:
                        node.waiting += 1
                        done.add(submit(explain.explain_child, node.split, k, params,
                                        cfg.n_estimators, cfg.train_timeout_s, node.features,
                                        path, cp_, cfg.max_features, key=f"model-{cp_}",
                                        track=("model", path, cp_,
                                               f"training the model of cluster {cp_}")))
                    else:
                        node.on_cluster.append((cp_, k, params, n_pos, n_neg))
                if not counts_left and all(n.local for n in nodes_.values()):
                    levels = None  # only xgboost.dask reads them again: let them go
            elif kind == "profiles":
                node.profiled, res.profiles = True, fut.result()
            else:
                node.waiting -= 1
                child = fut.result()
                if child.timed_out:
                    raise StageError(f"stage 'explain' failed: {what} did not finish within "
                                     f"explain.train_timeout_s={cfg.train_timeout_s:g}s")
                node.results[cp] = child.model, child.quality, child.shap
                node.seconds += child.seconds
            if node.counts is not None and node.profiled and not node.waiting and node.local:
                _finish(node, res, echo, "in tasks")
    except BaseException:
        client.cancel([f for f, *_ in tracked.values()])
        raise
    train_all = None
    for path, node in nodes_.items():
        if not node.local:
            if train_all is None:  # every node's rows as one frame, a partition per worker
                merged = _merged(levels)
                train_all = merged.repartition(
                    npartitions=min(n_parts, merged.npartitions)).persist()
            _train_on_cluster(client, train_all, node, out[path], spec[path][1], cfg, echo,
                              submit)
    return out
