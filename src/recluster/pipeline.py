"""The orchestrator: sequences the stages of one run on a given Dask client and logs each step.

plan (claim the output folder, footers, schema) -> validate (one pass) -> grow the tree (per
level: sample pass, node fits as parallel tasks, stability, assignment pass) -> the previous
run's paths -> models and explanations -> labels, ``tree.json`` -> segments and report ->
publish (manifest last). The stages live in :mod:`recluster.job`; this module only orders them
and bounds the run by ``runtime.run_timeout_s``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from typing import Any

from distributed import Client

from recluster.compute.paths import ROOT
from recluster.config import JobConfig
from recluster.errors import StageError
from recluster.job.growth import counts_by_node, folded_strata, grow_tree, root_ahead_bounds
from recluster.job.inputs import check_locations, decide, output_location, plan_run, validate
from recluster.job.outputs import (
    run_manifest,
    write_labels_and_tree,
    write_models_and_explanations,
    write_report,
    write_segments,
)
from recluster.parallel import passes
from recluster.progress import Progress, Timer, as_progress
from recluster.storage import models as modelstore
from recluster.storage.outputs import claim

log = logging.getLogger("recluster")


#: What :func:`run` is given to reach Dask: a connected client, or a callable that connects
#: (starts a local cluster, say) and returns a context that yields the client and closes it.
Connect = Client | Callable[[], AbstractContextManager[Client]]


def run(cfg: JobConfig, client: Connect,
        echo: Callable[[str], None] | Progress = log.info) -> dict[str, Any]:
    """Run the whole job and publish it; returns the manifest.

    ``client``: a connected client, or a callable that connects (:data:`Connect`): it is called
    only once the plan holds (the output claimed, the input's schema checked) and the run has
    rows to process, so that a refused input or a rerun with nothing to do answers without
    starting a cluster; the context it returns is closed with the run's claims (by the caller's
    thread, also when the run times out).

    ``echo`` takes human progress lines; pass a :class:`~recluster.progress.Progress` for
    per-node progress and structured (quiet) output. The run is bounded by
    ``runtime.run_timeout_s``: on expiry it raises a :class:`StageError` naming the stage in
    progress, and no later stage (publication included) starts; a publication under way is
    finished (the run then succeeds).
    """
    echo = as_progress(echo)
    timer = Timer(echo)
    check_locations(cfg)
    # The output folder's claim (lock, staging) is released here, in the caller's thread, also
    # when the run times out while its thread is still busy.
    with _Claims(timer) as claims:
        return _within(cfg.runtime.run_timeout_s, timer,
                       lambda: _run(cfg, client, timer, echo, claims))


class _Claims(ExitStack):
    """The run's claims on its output: entered by the run's thread, released by the caller's.

    A claim the run's thread reaches after the caller has let go (the run timed out on its way
    there) is not taken: that thread stops instead (:class:`StageError`). Entered on the plain
    stack, it was taken after its release had run, so that the output folder's lock stayed held
    until the garbage collector found the claim, or its lease ran out. A claim being entered
    when the caller lets go is released once it is entered (by the caller, which waits for it;
    by the run's thread if the caller is stopped again while it waits).
    """

    def __init__(self, timer: Timer):
        super().__init__()
        self._timer, self._guard, self._closed = timer, threading.Lock(), False

    def enter_context(self, cm):
        with self._guard:
            if self._closed:
                raise StageError(self._timer.stopped or "the run was stopped")
            value = super().enter_context(cm)
            if self._closed:  # the caller let go while it was entered (see __exit__)
                super().__exit__(None, None, None)
                raise StageError(self._timer.stopped or "the run was stopped")
            return value

    def __exit__(self, *exc_details) -> bool:
        try:
            with self._guard:  # (a claim being entered, a cluster starting: seconds)
                self._closed = True
        except BaseException:
            # Stopped again while waiting (a second Ctrl-C or SIGTERM as the cluster starts):
            # what is held (the output's lock) is released now, not left to its lease; the
            # claim being entered is released by the run's thread once entered.
            self._closed = True
            super().__exit__(*exc_details)
            raise
        return super().__exit__(*exc_details)


def _within(limit_s: float, timer: Timer, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``body()`` in a thread of its own, waited for at most ``limit_s`` seconds; on expiry a
    :class:`StageError` naming the stage in progress (the thread is not stopped; the caller
    releases the output's claim), unless that stage is the publication, which is finished."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = body()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=target, name="recluster-run", daemon=True)
    worker.start()
    worker.join(limit_s)
    if worker.is_alive() and timer.current == "publish":
        # Past the point of no return: a publication stopped halfway would leave neither the
        # previous run nor this one published; it is a few moves and the manifest, bounded by
        # the storage timeouts, so it is finished and the run has succeeded.
        worker.join()
    if worker.is_alive():
        timer.stop(f"the run did not finish within runtime.run_timeout_s={limit_s:g}s; "
                   f"stage in progress: '{timer.current}'")
        raise StageError(timer.stopped)
    if "error" in box:
        raise box["error"]
    return box["result"]


def _run(cfg: JobConfig, connect: Connect, timer: Timer, echo: Progress,
         claims: _Claims) -> dict[str, Any]:
    """The method, one stage a line: plan, validate, grow, name, explain, write, report, publish."""
    with timer.stage("plan") as st:
        store = claims.enter_context(claim(output_location(cfg), cfg.output.lock_lease_s, "run"))
        plan = plan_run(cfg, echo, st.counts)
        decision = decide(cfg, store, plan.fingerprint, echo)
    if decision.action in ("reuse", "repaired"):
        # Batch logs (--quiet) see no human line: they get the outcome as the last event.
        prev = decision.previous
        echo.event("published", path=cfg.output.path, rows=prev["rows"]["out"],
                   levels=prev["levels"], nodes=prev["nodes"],
                   seconds=round(echo.elapsed(), 3), reused=decision.action)
        return prev
    if isinstance(connect, Client):
        client = connect
    else:
        # Not a stage of its own (the cluster's line says it), but what a timeout names while
        # a cluster starts or a scheduler is reached: the plan was over by then.
        timer.current = "connect"
        client = claims.enter_context(connect())
    ts = plan.schema
    feats = passes.input_frame(plan.location, plan.pieces, ts, store.run_id)
    with timer.stage("validate") as st:
        checked = validate(client, feats, plan, cfg, echo,
                           root_ahead_bounds(sum(p.n_rows for p in plan.pieces), ts, cfg))
        st.counts["rows"] = checked.rows
    if checked.schema != ts:  # row-number columns left out: keys are positions, read anew
        ts = checked.schema
        feats = passes.input_frame(plan.location, plan.pieces, ts, store.run_id)

    counts = counts_by_node(checked.counts)
    strata = folded_strata(counts.get((ROOT, 0), {}), ts, cfg)
    if strata:
        echo(f"  {strata['what']}")
    g = grow_tree(client, feats, checked.state, counts, checked.rows, ts, cfg, timer, echo,
                  store.run_id, checked.take_ahead())
    previous = None
    if plan.previous is not None:  # before anything is written: every output uses the final paths
        from recluster.comparing import apply_previous

        with timer.stage("previous run's paths"):
            previous = apply_previous(client, g, ts, plan.previous, cfg.previous.min_jaccard, echo)
    outputs = ["labels/", "tree.json",
               *write_models_and_explanations(client, store, feats, g, ts, cfg, timer, echo)]
    with timer.stage("write labels") as st:
        rows_out = st.counts["rows"] = write_labels_and_tree(client, store, g, ts, cfg,
                                                             checked.rows)

    manifest = run_manifest(cfg, store.run_id, plan, checked, g, strata, timer.seconds, rows_out,
                            outputs)
    if previous is not None:
        manifest["previous"] = previous
    with timer.stage("report") as st:
        manifest["outputs"] += write_segments(client, store, g, ts, cfg, manifest, plan.names)
        manifest["outputs"] += write_report(client, store, g, ts, manifest)
        st.counts["nodes"] = len(g.nodes)
    with timer.stage("publish"):
        manifest[modelstore.DIGESTS] = modelstore.staged_digests(store)  # score/report verify
        manifest = store.publish(manifest, decision.previous)
    echo(f"published {cfg.output.path} ({rows_out} rows, {g.levels_done} level(s), "
         f"{len(g.nodes)} nodes)")
    echo.event("published", path=cfg.output.path, rows=rows_out, levels=g.levels_done,
               nodes=len(g.nodes), seconds=round(echo.elapsed(), 3))
    return manifest
