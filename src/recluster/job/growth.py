"""Growing the tree: the level-synchronous recursion of a run.

Per level: one sample pass draws every node's stratified sample, each node is fitted as its own
task (embedding, clustering, assigner), stability resamples score the kept splits and settle
their clusterings, the splits that hold are kept (the others get their stop reason), and one
assignment pass routes every row one level down. :class:`Growth` is the result: the rows' state
and one :class:`~recluster.compute.tree.TreeNode` per node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dask
import pandas as pd
from dask.delayed import Delayed
from distributed import Client, as_completed, wait

from recluster.compute import stability as stability_mod
from recluster.compute.artefacts import rename_artefact
from recluster.compute.node import NodeFit
from recluster.compute.paths import ROOT, NodePath
from recluster.compute.routing import NO_STRATUM, STRATUM
from recluster.compute.sampling import (
    FOLDED,
    ahead_bound,
    allocate,
    covers,
    fold_strata,
    level_targets,
)
from recluster.compute.schema import TableSchema
from recluster.compute.segments import quoted
from recluster.compute.stops import score_text
from recluster.compute.tree import StopReason, TreeNode, accept_split, split_refusal
from recluster.config import JobConfig
from recluster.parallel import passes
from recluster.parallel.explain import draw_frame, draw_spec
from recluster.progress import Timer


def graph_literal(value: Any) -> Delayed:
    """``value`` (fitted nodes, for instance) as a literal in the task graph, for the tasks of a
    pass to share: how ``run`` and ``score`` ship models to the workers.

    A graph literal rather than scattered data: scattered data has no lineage, so a worker lost
    while holding the only copy would lose the pass for good. (An impure delayed gets a fresh
    key, so runs sharing a scheduler never mix.)
    """
    return dask.delayed(value, traverse=False)


def folded_strata(root_counts: dict[str, int], ts: TableSchema,
                  cfg: JobConfig) -> dict[str, Any] | None:
    """The manifest's ``degraded`` entry when ``stratify_by`` has more levels than
    ``sample.max_strata`` (the smallest are sampled as one stratum), else None."""
    folds = fold_strata(root_counts, cfg.sample.max_strata)
    folded = [s for s, g in folds.items() if g == FOLDED]
    if not folded:
        return None
    rows = sum(root_counts[s] for s in folded)
    return {"column": ts.stratify_by, "levels": len(folds), "folded_levels": len(folded),
            "folded_rows": rows,
            "what": f"sample.stratify_by '{ts.stratify_by}' has {len(folds)} levels, more than "
                    f"sample.max_strata={cfg.sample.max_strata}: its {len(folded)} smallest "
                    f"({rows} rows) are sampled as one stratum"}


def counts_by_node(counts: pd.DataFrame) -> dict[tuple[str, int], dict[str, int]]:
    """Rows per stratum of each node, keyed by (node path, depth), from the summed counts of
    :func:`recluster.parallel.passes.count_nodes`."""
    out: dict[tuple[str, int], dict[str, int]] = {}
    for cluster, depth, stratum, rows in counts[["cluster", "depth", STRATUM, "rows"]].to_numpy():
        out.setdefault((cluster, int(depth)), {})[stratum] = int(rows)
    return out


@dataclass
class Growth:
    """The tree as the level-synchronous recursion left it: the rows' state and one
    :class:`TreeNode` record per node (in the order the nodes were made: level by level)."""

    state: Any  # dask DataFrame of per-row state after the last level
    nodes: dict[str, TreeNode]
    levels_done: int = 0
    degraded: list[dict[str, Any]] = field(default_factory=list)
    root_fit: NodeFit | None = None  # kept even when the root is not split: its sample is the map
    #: the explanation rows each assignment pass drew for the nodes it split: (spec, rows), see
    #: :func:`recluster.parallel.explain.draw_frame` (empty with explain.enabled false)
    drawn: list[tuple[dict, Any]] = field(default_factory=list)

    @property
    def split_nodes(self) -> dict[str, NodeFit]:
        """The kept fit of every split node."""
        return {p: n.split for p, n in self.nodes.items() if n.split is not None}

    @property
    def agreements(self) -> dict[str, float | None]:
        """Held-out ARI of every split node's assigner."""
        return {p: n.agreement for p, n in self.nodes.items() if n.split is not None}

    @property
    def node_seconds(self) -> dict[str, dict[str, float]]:
        """Timings of every fitted node."""
        return {p: n.seconds for p, n in self.nodes.items() if n.seconds is not None}



def _fit_level(client: Client, feats, state, level: int, to_fit: list[str],
               nodes: dict[str, TreeNode], counts, ts: TableSchema, cfg: JobConfig, timer: Timer,
               echo: Callable[[str], None], run_id: str, ahead: tuple[dict, Any] | None = None):
    """Draw the samples of ``to_fit`` in one pass and fit each node as its own task.

    ``ahead``: ``(bounds, rows)``, a sample the previous pass drew at upper bounds of this
    level's thresholds (:func:`_ahead_bounds`); when the bounds cover the exact thresholds, the
    samples are thinned out of it instead of read (the same rows: a pass over every column fewer).

    Returns the fits by path, their futures, the stability resamples of the splits worth
    scoring (futures by path) and the sample (a future: what later tasks of this level use).
    """
    thresholds = {}
    targets = level_targets({p: nodes[p].size for p in to_fit}, cfg.sample.size,
                            cfg.sample.level_budget, cfg.sample.min_node_size)
    for path in to_fit:
        node_counts = counts.get((path, level - 1), {})
        nodes[path].sample_target = targets[path]
        t = allocate(node_counts, targets[path], cfg.sample.min_per_stratum,
                     cfg.sample.max_strata)
        folds = fold_strata(node_counts, cfg.sample.max_strata)
        nodes[path].sample_threshold = {folds[s]: v for s, v in t.items()}  # folded: one entry
        thresholds.update({(path, s): v for s, v in t.items()})
    with timer.stage(f"level {level}: sample {len(to_fit)} node(s)") as st:
        if ahead is not None and covers(ahead[0], thresholds):
            sample = client.compute(passes.thin_sample(ahead[1], thresholds))
            st.counts["drawn_ahead"] = 1
        else:
            sample = client.compute(passes.sample_frame(feats, state, level, thresholds, ts))
        wait(sample)  # so that this stage's time is the sample pass itself
    with timer.stage(f"level {level}: fit {len(to_fit)} node(s)", total=len(to_fit)) as st:
        # Each node's preprocessing first, once: its fit and its resamples share it.
        preps = passes.submit_preps(client, sample, to_fit, ts, cfg, run_id)
        futs = passes.submit_fits(client, sample, preps, to_fit, ts, cfg, run_id)
        # Stability refits need only the sample and the preprocessing: they start now, on workers
        # the fits leave idle.
        # With an early stop (stability.conclusive) only each node's first resample is sure to
        # count; the others are submitted now only where threads are left over beyond one fit
        # and one first resample per node, else when a node needs them. (At the root on two
        # workers the spare worker's extra resamples outlasted the fit, and as cancelled tasks
        # still run to their end, the first assignment pass ran on one worker: 3.3 s for 1.0.)
        threads = sum(client.nthreads().values())
        eager = not early_stability(cfg) or threads > 2 * len(to_fit)
        resamples = passes.submit_resamples(client, sample, preps, to_fit, ts, cfg, run_id,
                                            stop=None if eager else 1) \
            if cfg.stability.resamples else {}
        fits = {}
        for _, fit in as_completed(list(futs.values()), with_results=True):
            fits[fit.path] = fit
            st.step(f"node {fit.path}: {fit.n_sample} sample rows -> {fit.n_children} children"
                    f" ({len(fits)}/{len(futs)} fitted, {fit.seconds.get('total', 0):.1f}s)"
                    + (f"; stops: {fit.stop_reason}" if fit.stop_reason else "")
                    + f"  [{', '.join(f'{k} {v:.1f}s' for k, v in fit.seconds.items())}]")
            if not accept_split(fit, nodes[fit.path].size, cfg.recursion):
                client.cancel(resamples.pop(fit.path, []))  # only kept splits are worth scoring
        st.counts["sample_rows"] = sum(f.n_sample for f in fits.values())
    return fits, futs, resamples, sample, preps


def early_stability(cfg: JobConfig) -> bool:
    """Whether a node's stability may be settled on its first resample
    (``stability.conclusive``, :func:`recluster.compute.stability.conclusive`)."""
    return cfg.stability.conclusive is not None and cfg.stability.resamples > 1


def _settle_level(client: Client, level: int, fits: dict[str, NodeFit], futs: dict, resamples: dict,
                  sample, preps: dict, ts: TableSchema, cfg: JobConfig, timer: Timer,
                  run_id: str) -> dict[str, list[float]]:
    """Score each kept split's clusters on its resamples and settle its clustering on that
    evidence (``stability.settle_node``); updates ``fits`` in place, returns the scores."""
    stability: dict[str, list[float]] = {}
    if not resamples:
        return stability
    # Each node is first settled on its first resample; only a node that leaves open is settled
    # again on all of them (its other resamples are submitted then, or cancelled if they were).
    early = early_stability(cfg)
    with timer.stage(f"level {level}: stability of {len(resamples)} node(s), "
                     f"{cfg.stability.resamples} resamples each"
                     + (" at most" if early else ""), total=len(resamples)) as st:
        todo = {p: (futs[p], rs[:1] if early else rs) for p, rs in resamples.items()}
        first = passes.submit_settles(client, sample, todo, ts, cfg, run_id)
        pending = as_completed(list(first.values()), with_results=True)
        for fut, (fit, scores) in pending:
            path = fit.path
            if early and fut is first[path]:
                if not stability_mod.conclusive(fit, fits[path], scores, cfg):
                    resamples[path] += passes.submit_resamples(
                        client, sample, preps, [path], ts, cfg, run_id,
                        start=len(resamples[path]))[path]
                    again = passes.submit_settles(client, sample, {path: (futs[path],
                                                  resamples[path])}, ts, cfg, run_id)[path]
                    pending.add(again)
                    continue
                client.cancel(resamples[path][1:])
            used = 1 if early and fut is first[path] else len(resamples[path])
            before = fits[path]
            fit.stability_resamples = used
            fits[path], stability[path] = fit, scores
            st.step(settle_line(path, scores, used, before, fit, cfg))
    return stability


def settle_line(path: str, scores: list[float], used: int, before: NodeFit, fit: NodeFit,
                cfg: JobConfig) -> str:
    """The progress line of a node's settled stability: the clusters' scores on ``used``
    resamples, what settling changed (``before``: the fit), and a split kept on the Gaussian
    null test although resampling refused it (scores near 0 with no word on why it stands)."""
    stable = cfg.stability.stable
    g = fit.gaussian_null
    return (f"node {path}: stability [{', '.join(score_text(s, stable) for s in scores)}] on "
            f"{used} resample(s)"
            + (f"; min_cluster_size {before.min_cluster_size} -> {fit.min_cluster_size}"
               if fit.min_cluster_size != before.min_cluster_size else "")
            + (f"; clusters made noise: {made_noise(fit.dropped, stable)}" if fit.dropped else "")
            + (f"; split all the same on the Gaussian null test (p = {g['p_value']:.3g} <= "
               f"stability.null_alpha={cfg.stability.null_alpha}): resampling is weak evidence "
               f"at {g['rows']} rows" if g and not fit.stop_reason else "")
            + (f"; stops: {fit.stop_reason}" if fit.stop_reason else ""))


#: Clusters made noise listed one by one on the terminal; more are counted.
NOISE_LISTED = 6


def made_noise(dropped: dict[int, float], stable: float) -> str:
    """The clusters a node's stability made noise, for its progress line: each with its score
    (``{0: 0.61, 3: 0.48}``), or, beyond :data:`NOISE_LISTED`, how many and the range of their
    scores (weather's nodes printed dicts of 16 entries); scores below ``stable`` never shown
    as reaching it (:func:`~recluster.compute.stops.score_text`)."""
    if len(dropped) <= NOISE_LISTED:
        return "{" + ", ".join(f"{k}: {score_text(v, stable)}" for k, v in dropped.items()) + "}"
    return (f"{len(dropped)} of them, stability {score_text(min(dropped.values()), stable)}-"
            f"{score_text(max(dropped.values()), stable)}")


def _mark_unstable(child: TreeNode, cfg: JobConfig) -> bool:
    """Record that ``child`` is not zoomed into because it is unstable; True if so."""
    if child.stability is None or child.stability >= cfg.stability.stable or \
            cfg.stability.unstable == "flag":
        return False
    if child.depth == 1 and cfg.stability.unstable == "noise" and cfg.stability.zoom_unstable_root:
        return False  # kept as a segment, and zoomed into: its zoom's clusters must be stable
    child.stop_reason = StopReason.UNSTABLE.stop(stability=child.stability,
                                                 stable=cfg.stability.stable)
    return True


def _decide_splits(to_fit: list[str], fits: dict[str, NodeFit], g: Growth, ts: TableSchema,
                   cfg: JobConfig, echo: Callable[[str], None]) -> dict[str, NodeFit]:
    """The splits of this level that hold; the others get their stop reason."""
    split = {}
    for path in to_fit:
        fit, node = fits[path], g.nodes[path]
        if path == ROOT:
            g.root_fit = fit
        node.seconds = {k: round(v, 3) for k, v in fit.seconds.items()}
        node.fit = {**fit.summary(), "sample_target": node.sample_target,
                    "sample_threshold": node.sample_threshold}
        if fit.preprocessor is not None:  # under the columns' own names
            node.fit["preprocess"] = fit.preprocessor.summary(ts.name)
            blocker = node.fit["preprocess"].get("categorical_scale_auto")
            parent = g.nodes.get(str(NodePath.parse(path).parent)) if path != ROOT else None
            same = parent is not None and ((parent.fit or {}).get("preprocess") or {}).get(
                "categorical_scale") == node.fit["preprocess"].get("categorical_scale")
            if blocker and not same:  # auto fell back to 0/1 columns (said once down a branch)
                echo(f"  node {path}: categorical columns weighed 0/1, not as the recipe does: "
                     f"{blocker['column']} = {blocker['level']} ({blocker['rows']} rows) is not "
                     f"reproduced by the other features (ARI {blocker['ari']:.2f})")
            if path == ROOT:  # deeper nodes' folds are in tree.json (fit.preprocess.folded)
                for column, f in node.fit["preprocess"].get("folded", {}).items():
                    folded = f['levels'] - f['kept']
                    kept = f"the {f['kept']} most frequent are kept, the other {folded}" \
                        if f["kept"] else f"none is kept: all {folded}"
                    tied = f.get("tied_rows")
                    tie = (f"; levels of {tied} sample row{'s' if tied != 1 else ''} each tie "
                           "at the cut, none of them is picked by name") if tied else ""
                    what = (f"categorical column '{column}' has {f['levels']} levels in the "
                            f"root's sample: {kept} ({f['rows']} sample rows) are one level "
                            f"'__other__' (preprocess.max_categories{tie})"
                            + (f", its {f['missing']} missing values among them (not in "
                               "'__missing__')" if f.get("missing") else ""))
                    echo(f"  {what}")
                    g.degraded.append({"node": path, "column": column, "what": what})
        # Artefacts are found on the workers under internal keys; tree.json, segments.parquet
        # and the report name the column as the user does.
        fit.artefacts = [rename_artefact(a, ts.name, quoted) for a in fit.artefacts]
        decision = accept_split(fit, node.size, cfg.recursion)
        if fit.preprocessor is None:
            g.degraded.append({"node": path, "what": f"not fitted: {fit.stop_reason}"})
        if not decision:
            node.stop_reason = decision.stop
            continue
        split[path] = node.split = fit
        node.agreement = fit.agreement
        if fit.agreement is not None and fit.agreement < cfg.assign.min_agreement:
            g.degraded.append({"node": path, "what": "assignment agreement below "
                               f"assign.min_agreement ({fit.agreement:.3f})"})
    return split


def _child_stop(child: TreeNode, artefact: str | None, cfg: JobConfig) -> bool:
    """Record why ``child`` is not zoomed into (unstable, or an artefact split); True if so."""
    if _mark_unstable(child, cfg):
        return True
    if artefact and cfg.recursion.artefact_splits != "off":
        child.artefact = artefact
        if cfg.recursion.artefact_splits == "no_recurse":
            child.stop_reason = StopReason.ARTEFACT.stop(artefact=artefact)
            return True
    return False


def root_ahead_bounds(rows: int, ts: TableSchema, cfg: JobConfig) -> dict:
    """Upper bounds of the root's sample threshold for a table of about ``rows`` rows (the
    footers' count, before validation; ``input.filters`` may keep fewer), keyed (path,
    stratum), for the validation pass to draw the root's sample ahead; empty with
    ``sample.stratify_by`` (its strata are counted by that pass)."""
    if ts.stratify_by is not None or rows <= 0:
        return {}
    target = level_targets({ROOT: rows}, cfg.sample.size, cfg.sample.level_budget,
                           cfg.sample.min_node_size)[ROOT]
    t = allocate({NO_STRATUM: rows}, target, cfg.sample.min_per_stratum, cfg.sample.max_strata)
    return {(ROOT, NO_STRATUM): ahead_bound(t[NO_STRATUM], rows)} if NO_STRATUM in t else {}


def _ahead_bounds(split: dict[str, NodeFit], g: Growth, level: int, total: int,
                  stability: dict[str, list], ts: TableSchema, cfg: JobConfig) -> dict:
    """Upper bounds of the next level's sample thresholds, keyed (child path, stratum), so that
    the assignment pass of ``level`` can draw the next level's samples in the same read; empty
    where they cannot be told in advance.

    Each child's rows are estimated from its share of its parent's sample, its frontier from
    the rules the next level applies (size, share, stability, artefacts) and its threshold as
    the next level computes it (the level's budget shared by those children), then raised by
    :func:`~recluster.compute.sampling.ahead_bound`. An estimate that falls short only costs the
    pass it would have saved (:func:`_fit_level` reads the input when the bounds do not cover).
    Not with ``sample.stratify_by`` (the strata's counts per child are not known from the
    parent's sample), nor at the last level.
    """
    if ts.stratify_by is not None or level >= cfg.recursion.max_depth:
        return {}
    est: dict[str, float] = {}
    for path, fit in split.items():
        if fit.n_sample <= 0 or len(fit.child_sample_sizes) != fit.n_children:
            return {}
        size = g.nodes[path].size
        for k, n_k in enumerate(fit.child_sample_sizes):
            cp = str(NodePath.parse(path).child(k))
            rows = size * n_k / fit.n_sample
            child = TreeNode(cp, level, int(round(rows)), rows / max(1, total))
            if stability.get(path):
                child.stability = stability[path][k]
            if split_refusal(child, total, cfg.recursion) is None and \
                    not _child_stop(child, fit.artefacts[k] if fit.artefacts else None, cfg):
                est[cp] = rows
    # The budget _fit_level shares (level_budget: null is sample.size, 0 none), not the raw
    # level_size: with it, null drew every child at sample.size (ten times the rows a level of
    # ten children samples) and 0 at min_node_size (short of sample.size: never thinned).
    targets = level_targets({p: int(round(r)) for p, r in est.items()}, cfg.sample.size,
                            cfg.sample.level_budget, cfg.sample.min_node_size)
    bounds = {}
    for cp, rows in est.items():
        t = allocate({NO_STRATUM: int(round(rows))}, targets[cp], cfg.sample.min_per_stratum,
                     cfg.sample.max_strata)
        if NO_STRATUM in t:
            bounds[(cp, NO_STRATUM)] = ahead_bound(t[NO_STRATUM], rows)
    return bounds


def grow_tree(client: Client, feats, state, counts, total: int, ts: TableSchema, cfg: JobConfig,
              timer: Timer, echo: Callable[[str], None], run_id: str,
              ahead: tuple[dict, Any] | None = None) -> Growth:
    """Level by level: fit the nodes that may split, keep the splits that hold, assign all rows.

    A level's stability refits are scored before its assignment pass: which clusters survive
    resampling decides which rows get a cluster and which children are zoomed into.
    """
    g = Growth(state=state, nodes={ROOT: TreeNode(ROOT, 0, total, 1.0)})
    id_dtype = feats._meta[ts.id_key].dtype
    frontier = [ROOT]
    for level in range(1, cfg.recursion.max_depth + 1):
        to_fit = []
        for path in frontier:
            reason = split_refusal(g.nodes[path], total, cfg.recursion)
            if reason:
                g.nodes[path].stop_reason = reason
            else:
                to_fit.append(path)
        if not to_fit:
            break
        fits, futs, resamples, sample, preps = _fit_level(client, feats, g.state, level, to_fit,
                                                   g.nodes, counts, ts, cfg, timer, echo, run_id,
                                                   ahead)
        ahead = None  # thinned (or not usable): let it go
        stability = _settle_level(client, level, fits, futs, resamples, sample, preps, ts, cfg,
                                  timer, run_id)
        split = _decide_splits(to_fit, fits, g, ts, cfg, echo)
        if not split:
            break
        with timer.stage(f"level {level}: assign all rows") as st:
            st.counts["nodes"] = len(split)
            shared = graph_literal({p: f.routing_view() for p, f in split.items()})
            state = passes.assign_frame(feats, g.state, level, shared, id_dtype,
                                        cfg.embedding.n_components)
            # The same read draws what later stages would read every column again for: these
            # nodes' explanation rows (their children are known from here on) and the next
            # level's samples, at upper bounds of their thresholds (thinned once counted).
            spec = draw_spec({p: (g.nodes[p].depth, g.nodes[p].size) for p in split},
                             cfg.explain) if cfg.explain.enabled else None
            bounds = _ahead_bounds(split, g, level, total, stability, ts, cfg)
            g.state, *more = client.persist(
                [state, *([draw_frame(feats, state, spec, ts)] if spec else []),
                 *([passes.sample_frame(feats, state, level + 1, bounds, ts)] if bounds else [])])
            if spec:
                g.drawn.append((spec, more.pop(0)))
            ahead = (bounds, more.pop(0)) if bounds else None
            counts = counts_by_node(passes.sum_counts(
                client.compute(passes.count_nodes(g.state), sync=True)))
        g.levels_done = level
        frontier = []
        for path, fit in split.items():
            for k in range(fit.n_children):
                cp = str(NodePath.parse(path).child(k))
                size = sum(counts.get((cp, level), {}).values())
                child = g.nodes[cp] = TreeNode(cp, level, size, size / total,
                                               persistence=round(fit.persistence[k], 6))
                g.nodes[path].children.append(cp)
                if stability.get(path):
                    child.stability = stability[path][k]
                if not _child_stop(child, fit.artefacts[k] if fit.artefacts else None, cfg):
                    frontier.append(cp)
                if child.artefact:  # a segment that is one column's level: say so, by name
                    echo(f"  node {cp} ({size} rows) is an artefact split: {child.artefact} "
                         "(the other features do not separate it)"
                         + ("; not zoomed into" if child.stop_reason else ""))
    for path in frontier:
        node = g.nodes[path]
        if node.stop_reason is None:
            node.stop_reason = split_refusal(node, total, cfg.recursion) or \
                StopReason.NOT_REACHED.stop()
    root = g.nodes[ROOT]
    if not root.children:
        echo(f"  the table is not segmented: {root.stop_reason}; every row is labelled 'root'")
    return g

