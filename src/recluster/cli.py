"""Command line: ``recluster run | validate | score | compare | report | demo | render-k8s``.

Errors we can explain exit non-zero with one message naming the column, file, setting or stage;
credentials are never printed (they are not in the config to begin with).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from recluster.config import JobConfig, load_config, parse_config, parse_filters
from recluster.errors import ReclusterError

if TYPE_CHECKING:
    from distributed import Client


def _echo_factory(quiet: bool):
    log = logging.getLogger("recluster")

    def echo(msg: str) -> None:
        if quiet:
            log.info(msg)
        else:
            print(msg, flush=True)

    return echo


def cmd_run(args: argparse.Namespace) -> int:
    extra = [f"previous.path={args.previous}"] if args.previous else []
    cfg = load_config(args.config, [*args.set, *extra])
    if cfg.previous.path:  # before a cluster starts: a run that is not there is refused now
        from recluster.comparing import PublishedRun
        from recluster.storage.fs import Location

        PublishedRun(Location.of(cfg.previous.path, cfg.output.storage_options), "previous run")
    _run(cfg, args.scheduler, args.quiet, _tls(args), args.verbose)
    return 0


def _tls(args: argparse.Namespace):
    from recluster.parallel.client import TlsFiles

    return TlsFiles(args.tls_ca_file, args.tls_cert, args.tls_key)


def _run(cfg: JobConfig, scheduler: str | None, quiet: bool, tls=None,
         verbose: bool = False) -> dict:
    from recluster.job.inputs import check_output
    from recluster.parallel.client import client_security, dask_client, scheduler_address
    from recluster.pipeline import run
    from recluster.progress import Progress

    check_output(cfg)  # before a cluster starts
    client_security(scheduler_address(cfg.runtime, scheduler), tls)  # (TLS) before the plan
    progress = Progress(quiet=quiet)

    @contextmanager
    def connect() -> Iterator[Client]:
        """The cluster, started once the plan holds (the run starts it when it has work)."""
        with dask_client(cfg.runtime, scheduler, tls, verbose, warm=True) as client:
            progress.start(len(client.scheduler_info().get("workers", {})),
                           client.dashboard_link)
            yield client

    return run(cfg, connect, progress)


def cmd_report(args: argparse.Namespace) -> int:
    from recluster.report import data as report_data
    from recluster.report import html as report_html
    from recluster.storage import fs as storage_fs
    from recluster.storage.outputs import OutputStore, write_file

    run = storage_fs.Location.of(args.run_path)
    report_data.check_target(run, storage_fs.Location.of(args.out))
    page = report_html.render(report_data.load_run(OutputStore(run),
                                                   manifest_sha256=args.manifest_sha256))
    target = write_file(args.out, page.encode())
    print(f"report of {args.run_path} written to {target}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from recluster.job.inputs import (
        check_output,
        describe_schema,
        plan_input,
        segment_names,
        skipped_line,
    )

    cfg = load_config(args.config, args.set)
    check_output(cfg)
    _, scan, ts, pieces = plan_input(cfg)
    infos = scan.infos
    segment_names(cfg)  # an output.names file: read and checked as the run will
    rows = sum(i.n_rows for i in infos)
    print(f"config OK; input: {len(infos)} files, {rows} rows, {len(pieces)} partitions; "
          f"{describe_schema(ts)}")
    if skipped_line(scan.table):
        print(skipped_line(scan.table))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import fsspec

    from recluster.demo import make_table, write_partitioned

    root = Path(args.dir).resolve()
    input_dir = root / "input"
    t = time.perf_counter()
    if not input_dir.exists() or args.regenerate:
        fs = fsspec.filesystem("file")
        if input_dir.exists():
            fs.rm(str(input_dir), recursive=True)
        table, truth = make_table(args.rows, seed=args.seed)
        write_partitioned(table, fs, str(input_dir), n_files=args.files)
        truth.to_parquet(root / "truth.parquet", index=False)
        print(f"generated {args.rows} rows in {args.files} files under {input_dir} "
              f"({time.perf_counter() - t:.1f}s)")
    out_dir = root / "output" / f"run-{args.rows}-seed{args.seed}"
    data = {
        "input": {"path": str(input_dir), "id_column": "user_id", "categorical": ["country"]},
        "output": {"path": str(out_dir), "overwrite": True},
        "sample": {"size": min(args.rows, 20_000), "stratify_by": "country"},
        "seed": args.seed,
    }
    cfg_path = root / "demo.yaml"
    cfg_path.write_text(yaml.safe_dump(data, sort_keys=False))
    cfg = parse_config(data, source=str(cfg_path))
    manifest = _run(cfg, args.scheduler, quiet=False, tls=_tls(args), verbose=args.verbose)
    print(f"\noutputs: {out_dir}/  ({', '.join(manifest['outputs'])}, manifest.json)\n"
          f"config:  {cfg_path}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from recluster.compute.drift import DriftRule
    from recluster.config import RuntimeConfig
    from recluster.errors import ConfigError
    from recluster.parallel.client import dask_client
    from recluster.scoring import check_output, score

    echo = _echo_factory(args.quiet)
    if not (0.0 <= args.drift_max_outside <= 1.0 and args.drift_max_psi >= 0.0
            and args.drift_min_rows >= 0):
        raise ConfigError("--drift-max-outside must be in [0, 1], --drift-max-psi and "
                          "--drift-min-rows at least 0")
    rule = DriftRule(args.drift_max_outside, args.drift_max_psi, args.drift_min_rows)
    check_output(args.model, args.input, args.output)  # before a cluster starts
    with dask_client(RuntimeConfig(), args.scheduler, _tls(args), args.verbose) as client:
        score(args.model, args.input, args.output, client, echo, overwrite=args.overwrite,
              manifest_sha256=args.manifest_sha256,
              filters=parse_filters(args.filter, "--filter"), drift_rule=rule,
              fail_on_drift=args.fail_on_drift)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from recluster.comparing import check_output, rule_of, run_compare
    from recluster.config import RuntimeConfig
    from recluster.parallel.client import dask_client

    echo = _echo_factory(args.quiet)
    rule = rule_of(args.main_share, args.same_jaccard, args.min_share)
    check_output(args.old, args.new, args.output)  # before a cluster starts
    with dask_client(RuntimeConfig(), args.scheduler, _tls(args), args.verbose) as client:
        run_compare(args.old, args.new, args.output, client, echo, overwrite=args.overwrite,
                    rule=rule)
    return 0


def cmd_render_k8s(args: argparse.Namespace) -> int:
    from recluster.k8s import dump_manifests, render_manifests

    cfg = load_config(args.config, args.set)
    docs = render_manifests(cfg, image=args.image, workers=args.workers,
                            worker_cpu=args.worker_cpu, worker_memory_gib=args.worker_memory_gib,
                            secret=args.secret, name=args.name,
                            service_account=args.service_account,
                            tls_secret=None if args.no_tls else args.tls_secret,
                            dashboard_from=args.dashboard_from)
    sys.stdout.write(dump_manifests(docs))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="recluster",
        description="Explainable, recursive segmentation of Parquet tables on Dask: UMAP -> "
                    "HDBSCAN -> zoom into each cluster, with XGBoost + SHAP saying why each "
                    "segment exists.",
        epilog="`recluster COMMAND --help` for a command's options; `recluster demo` for a first "
               "run on this machine.")
    sub = p.add_subparsers(dest="command", required=True)

    def verbose(sp):
        sp.add_argument("--verbose", action="store_true",
                        help="also show the libraries' own logs and warnings (Dask, XGBoost, "
                        "UMAP, numba), from this process and the local workers")

    def common(sp):
        sp.add_argument("config", help="YAML config file")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set sample.size=20000")

    def scheduler(sp):
        sp.add_argument("--scheduler", help="address of an existing Dask scheduler, tcp://HOST:PORT "
                        "or tls://HOST:PORT (default: $DASK_SCHEDULER_ADDRESS, else a LocalCluster "
                        "on 127.0.0.1)")
        g = sp.add_argument_group(
            "TLS", "for a tls:// scheduler (mutual TLS, encryption required). Default: Dask's "
            "config, e.g. DASK_DISTRIBUTED__COMM__TLS__CA_FILE, ..._TLS__CLIENT__CERT, "
            "..._TLS__CLIENT__KEY")
        g.add_argument("--tls-ca-file", metavar="PEM", help="CA certificate that signed the "
                       "scheduler's and workers' certificates")
        g.add_argument("--tls-cert", metavar="PEM", help="this client's certificate")
        g.add_argument("--tls-key", metavar="PEM", help="this client's private key")

    def pin(sp):
        sp.add_argument("--manifest-sha256", metavar="HEX",
                        help="refuse the run unless its manifest.json has this SHA-256 (the "
                        "manifest holds the digests every file is checked against)")

    r = sub.add_parser("run", help="run a segmentation job")
    common(r)
    scheduler(r)
    r.add_argument("--quiet", action="store_true", help="one JSON line per stage (for batch logs) "
                   "instead of terminal progress")
    r.add_argument("--previous", metavar="OLD", help="output path of an earlier published run: "
                   "segments that match one of its segments keep its path (config: "
                   "previous.path)")
    verbose(r)
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("validate", help="check the config and the input schema without running")
    common(v)
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser("score", help="route new rows down a published run's tree (no refit)")
    s.add_argument("--model", required=True, help="output path of a published run")
    s.add_argument("--input", required=True, help="Parquet files to label (same columns)")
    s.add_argument("--output", required=True, help="where to publish their labels")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--filter", help="label only this slice of --input, as input.filters "
                   "(YAML), e.g. '[[month, \"=\", 2]]'")
    g = s.add_argument_group("drift", "per node: the share of scored rows outside the training "
                             "support and each feature's population stability index (PSI)")
    g.add_argument("--fail-on-drift", action="store_true",
                   help="exit with code 8 (after publishing the labels) when a node passes a "
                   "threshold")
    g.add_argument("--drift-max-outside", type=float, default=0.05, metavar="SHARE",
                   help="a node drifts when more of its rows lie outside the training support "
                   "(default 0.05; 0.01 is expected)")
    g.add_argument("--drift-max-psi", type=float, default=0.25, metavar="PSI",
                   help="a node drifts when a feature's PSI is above this (default 0.25)")
    g.add_argument("--drift-min-rows", type=int, default=100, metavar="N",
                   help="nodes with fewer scored rows are reported, never flagged (default 100)")
    scheduler(s)
    pin(s)
    s.add_argument("--quiet", action="store_true")
    verbose(s)
    s.set_defaults(func=cmd_score)

    c = sub.add_parser("compare", help="compare two published runs: which segments are the "
                       "same, split, merged, new or gone, and which rows moved")
    c.add_argument("old", help="output path of the earlier published run")
    c.add_argument("new", help="output path of the later published run")
    c.add_argument("--output", required=True, help="where to publish matches.parquet, "
                   "moves.parquet and compare.html")
    c.add_argument("--overwrite", action="store_true",
                   help="replace a different comparison published at --output")
    c.add_argument("--main-share", type=float, default=0.5, metavar="X",
                   help="'mostly': a flow holding at least this share of a segment's rows "
                   "(default 0.5)")
    c.add_argument("--same-jaccard", type=float, default=0.5, metavar="Y",
                   help="least Jaccard of a 'same' pair (default 0.5)")
    c.add_argument("--min-share", type=float, default=0.1, metavar="A",
                   help="a flow is significant when it holds this share of both segments' rows "
                   "(default 0.1)")
    scheduler(c)
    c.add_argument("--quiet", action="store_true")
    verbose(c)
    c.set_defaults(func=cmd_compare)

    rp = sub.add_parser("report", help="rebuild report.html from a published run's outputs")
    rp.add_argument("run_path", help="output path of a published run")
    rp.add_argument("--out", default="report.html",
                    help="where to write the page (default: report.html in this folder)")
    pin(rp)
    rp.set_defaults(func=cmd_report)

    d = sub.add_parser("demo", help="generate a demo table and segment it on this machine")
    d.add_argument("--rows", type=int, default=100_000)
    d.add_argument("--files", type=int, default=8)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--dir", default="demo-data")
    d.add_argument("--regenerate", action="store_true")
    scheduler(d)
    verbose(d)
    d.set_defaults(func=cmd_demo)

    k = sub.add_parser("render-k8s", help="print a dask-kubernetes DaskJob, its ConfigMap and "
                       "NetworkPolicies for this config (kubectl apply -f -)")
    common(k)
    k.add_argument("--image", required=True,
                   help="image built from deploy/Dockerfile, with an exact tag or digest")
    k.add_argument("--workers", type=int, default=2, help="worker pods (default: 2)")
    k.add_argument("--worker-cpu", type=int, default=2,
                   help="CPU limit of a worker pod, also its dask worker --nthreads (default: 2)")
    k.add_argument("--worker-memory-gib", type=float, default=8.0,
                   help="memory limit of a worker pod in GiB; dask worker --memory-limit gets "
                   "90%% of it (default: 8)")
    k.add_argument("--secret", default=None,
                   help="Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and optionally "
                   "AWS_SESSION_TOKEN, AWS_ENDPOINT_URL, AWS_DEFAULT_REGION (default: recluster-s3, "
                   "unless --service-account is given)")
    k.add_argument("--service-account", default=None, metavar="NAME",
                   help="instead of --secret: the runner and workers run as this Kubernetes "
                   "service account, which grants storage access through workload identity "
                   "(EKS IRSA or Pod Identity); no key Secret is referenced")
    k.add_argument("--tls-secret", default="recluster-tls", metavar="NAME",
                   help="Secret with ca.crt, tls.crt and tls.key: scheduler, workers and runner "
                   "talk mutual TLS (tls://) and require encryption (default: recluster-tls)")
    k.add_argument("--no-tls", action="store_true",
                   help="plain TCP between the pods (only NetworkPolicies restrict who connects)")
    k.add_argument("--dashboard-from", action="append", default=[], metavar="NAMESPACE",
                   help="also let pods in this namespace reach the scheduler's dashboard (8787), "
                   "e.g. a monitoring namespace; repeatable. Default: no pod; use kubectl "
                   "port-forward")
    k.add_argument("--name", default="recluster", help="name of the DaskJob (default: recluster)")
    k.set_defaults(func=cmd_render_k8s)
    return p


class _LiveStderr(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (it may be swapped, e.g. by pytest)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr, flush=True)


def _setup_logging() -> None:
    log = logging.getLogger("recluster")
    if not any(isinstance(h, _LiveStderr) for h in log.handlers):
        handler = _LiveStderr()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    # Before distributed is imported (here and in worker processes, which inherit it): its
    # warnings (e.g. one per P2P shuffle) are chatter to a user; --verbose shows its info logs.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "info" if verbose else "error")
    if verbose:
        logging.getLogger("distributed").setLevel(logging.INFO)
    else:
        from recluster.progress import silence_libraries

        silence_libraries()
    _setup_logging()
    previous = _exit_on_sigterm()
    try:
        return args.func(args)
    except ReclusterError as exc:
        print(f"recluster: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, Stopped) as exc:  # the run's clean-up has run on the way here
        signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
        print(f"recluster: stopped by {signal.Signals(signum).name}: nothing unfinished was "
              "published", file=sys.stderr)
        return 128 + signum
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Stopped(BaseException):
    """SIGTERM arrived (Kubernetes deleting the pod, ``kill``). Like ``KeyboardInterrupt`` for
    Ctrl-C it is no ``Exception``, so it unwinds the whole run: the output folder's lock is
    released and the staging area removed on the way out."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _terminated(signum, frame) -> None:
    raise Stopped(signum)


def _exit_on_sigterm():
    """Turn SIGTERM into :class:`Stopped`. Only in the main thread (where Python delivers
    signals); returns the handler it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _terminated)


if __name__ == "__main__":
    sys.exit(main())
