"""Benchmark: what each step of the three full-data passes costs, in one process on one thread.

The passes of a depth-2 run (validation, level-1 assignment, level-2 assignment) are replayed
piece by piece, outside Dask, with the models of a published run (``models/`` of the output of
``jobs/benchmark.py wide DATA OUT``): each piece is read three times as the passes read it, and
every step's CPU seconds (and, of them, system seconds: the kernel's page faults of fresh
memory) are summed per 100,000 rows. Comparing the printout for a 32-column and a 500-column run
says which steps grow with the width; what Dask adds on top (scheduling, transfers) is the
difference to the stage CPU that ``jobs/benchmark.py --wide`` prints.

    .venv/bin/python jobs/benchmark.py wide DATA OUT          # once: a run and its models
    .venv/bin/python jobs/benchmark_pass_steps.py DATA OUT
    .venv/bin/python jobs/benchmark_pass_steps.py DATA OUT --workers 2

``--workers N`` replays the same steps as one task in each of N workers of a recluster local
cluster (one thread each), all at once: what a worker's process and N processes sharing the
machine's caches and memory add to the one-process cost, without Dask's scheduling of pieces.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):  # one thread, as a worker's task
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark import _bench_config  # noqa: E402

from recluster.compute import explain, routing, schema  # noqa: E402
from recluster.job.inputs import plan  # noqa: E402
from recluster.parallel import passes  # noqa: E402
from recluster.parallel.explain import _draw_columns  # noqa: E402
from recluster.scoring import load_models  # noqa: E402
from recluster.storage.fs import Location  # noqa: E402


def _cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_stime


def pass_steps(data: Path, out: Path, train_rows: int = 50_000) -> tuple[dict, int]:
    """CPU and system seconds of each pass step over every piece of ``data``, with the split
    nodes of the run published at ``out``; and the table's rows."""
    cfg = _bench_config(data, Path("/nonexistent-output"), 2, 0, [])
    loc, _, ts, pieces = plan(cfg)
    _, _, fits = load_models(Location.of(str(out)))
    first = {p: f for p, (depth, f) in fits.items() if depth == 0}
    second = {p: f for p, (depth, f) in fits.items() if depth == 1}
    cols = [ts.id_key, *ts.feature_keys]
    steps: dict[str, list[float]] = {}

    def timed(name, fn, *args):
        c0, s0 = _cpu()
        out_ = fn(*args)
        c1, s1 = _cpu()
        t = steps.setdefault(name, [0.0, 0.0])
        t[0] += c1 - c0
        t[1] += s1 - s0
        return out_

    rows = 0
    for piece in pieces:
        # validation pass: read, checks, the rows' state, stats, the root's sample drawn ahead
        df = timed("validation: read", passes.read_frame, piece, loc, ts)
        rows += len(df)
        timed("validation: checks", schema.refuse_unroutable_rows, df, ts, piece.url)
        state0 = timed("validation: state", routing.initial_state, df, ts.id_key,
                       ts.stratum_key, cfg.seed, cfg.embedding.n_components)
        timed("validation: stats", schema.partition_stats, df, ts, piece.url)
        timed("validation: root sample", routing.select_sample, df, state0, 1,
              {(routing.ROOT, routing.NO_STRATUM): 0.1}, cols)
        del df
        # level 1: assign, the root's explanation rows, the level-2 samples drawn ahead
        df = timed("level 1: read", passes.read_frame, piece, loc, ts)
        state1 = timed("level 1: assign", routing.assign_level, df, state0, 1, first)
        timed("level 1: level-2 samples", routing.select_sample, df, state1, 2,
              {(p, routing.NO_STRATUM): 0.25 for p in second}, cols)
        timed("level 1: explanation rows", explain.select_training_rows, df, state1,
              {p: (0, min(1.0, train_rows / 300_000)) for p in first}, _draw_columns(ts))
        del df
        # level 2: assign, the level-2 nodes' explanation rows
        df = timed("level 2: read", passes.read_frame, piece, loc, ts)
        state2 = timed("level 2: assign", routing.assign_level, df, state1, 2, second)
        timed("level 2: explanation rows", explain.select_training_rows, df, state2,
              {p: (1, 0.5) for p in second}, _draw_columns(ts))
        del df, state2
    return steps, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="the table's folder, as jobs/benchmark.py generates it")
    ap.add_argument("out", help="the output of a `jobs/benchmark.py wide DATA OUT` run on it")
    ap.add_argument("--workers", type=int, default=0,
                    help="replay in this many local workers at once (default: in this process)")
    a = ap.parse_args()
    if a.workers < 1:
        _print_steps(*pass_steps(Path(a.data), Path(a.out)), "this process")
        return
    from recluster.config import RuntimeConfig
    from recluster.parallel.client import dask_client

    with dask_client(RuntimeConfig(n_workers=a.workers)) as client:
        workers = list(client.scheduler_info()["workers"])
        futures = [client.submit(pass_steps, Path(a.data), Path(a.out), pure=False, workers=[w])
                   for w in workers]
        for i, f in enumerate(futures):
            _print_steps(*f.result(), f"worker {i + 1} of {len(workers)}, all at once")


def _print_steps(steps: dict, rows: int, where: str) -> None:
    per = 100_000 / rows
    print(f"{'step':<30} {'CPU s':>8} {'sys s':>8}   per 100k rows, one thread, {where} "
          f"({rows:,} rows)")
    for name, (c, s) in steps.items():
        print(f"{name:<30} {c * per:>8.2f} {s * per:>8.2f}")
    print(f"{'all passes':<30} {sum(c for c, _ in steps.values()) * per:>8.2f}"
          f" {sum(s for _, s in steps.values()) * per:>8.2f}")


if __name__ == "__main__":
    main()
