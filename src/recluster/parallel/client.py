"""Getting a Dask client: an existing scheduler if one is named, else a local cluster.

The scheduler address comes from ``--scheduler``, then ``DASK_SCHEDULER_ADDRESS`` (what the
dask-kubernetes DaskJob runner pod is given), then ``runtime.scheduler`` in the config.
A local cluster binds its scheduler and dashboard to 127.0.0.1 only.

**A quiet terminal.** Worker processes of a local cluster write to this process's terminal:
unless ``verbose``, they start with Python warnings off (``PYTHONWARNINGS``) and a worker plugin
(:class:`QuietWorker`) turns library warnings and logs off and points their stdout and stderr
at the null device, so that no UMAP, numba, scikit-learn or XGBoost line (XGBoost's collective
prints "got rank" from C++) reaches the user. Task errors still reach the client as exceptions.
Workers of an existing scheduler keep their output: it goes to their own logs.

**Warm workers.** Numba compiles UMAP's kernels in every fresh worker process on first use. Most
are declared ``cache=True`` and load from numba's on-disk cache (:func:`prepare_numba_cache`);
the few that are not (UMAP's parallel graph kernels, ~10-15 s of compilation per process) are
given the same on-disk cache by :func:`cache_umap_kernels`. A worker plugin
(:class:`WarmWorker`), registered as soon as a job's client is connected (local cluster or not),
does that and then one tiny UMAP + HDBSCAN fit in a background thread of each worker, so that
whatever is left to import, load or compile overlaps input listing, validation and planning
instead of delaying the first node fits. It is idempotent (once per worker process, however
many runs register it) and silent.

**Frame sizes.** Every job's client registers :class:`~recluster.parallel.frame_sizes.FrameSizes`
on the workers: they size the pandas frames tasks keep from their blocks, not a Series per
column (the same estimate; for a 500-column frame 16 ms less, twice per kept result).

A ``tls://`` scheduler is reached with mutual TLS: the CA file, client certificate and key come
from ``--tls-ca-file`` / ``--tls-cert`` / ``--tls-key`` (the flags ``dask scheduler`` and
``dask worker`` take), else from Dask's own config (``distributed.comm.tls.ca-file``,
``distributed.comm.tls.client.cert`` / ``.key``, e.g. the environment variables
``DASK_DISTRIBUTED__COMM__TLS__CA_FILE``, ``..._TLS__CLIENT__CERT``, ``..._TLS__CLIENT__KEY``),
and the client then requires encryption on every connection. They are checked (present,
readable, a key that matches the certificate) before connecting. A plain ``tcp://`` address
is refused when TLS files are given or ``distributed.comm.require-encryption`` is set, instead
of silently falling back to an unencrypted connection.
"""

from __future__ import annotations

import logging
import os
import pickletools
import ssl
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import dask
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.security import Security

from recluster.config import RuntimeConfig
from recluster.errors import ConfigError, StageError
from recluster.parallel.frame_sizes import FrameSizes
from recluster.progress import silence_libraries

#: How long the client tries to reach an existing scheduler.
CONNECT_TIMEOUT_S = 60

#: Environment of a local cluster's worker processes (where this process's environment does
#: not set a variable already): two settings of Arrow's memory pool (mimalloc)
#:
#: - ``MIMALLOC_PURGE_DELAY=-1``: keep the memory a read frees for the next read instead of
#:   handing it back to the operating system 10 ms later (its default): every pass over a wide
#:   table otherwise paid the first touch of each piece's decoded columns and float block afresh
#:   (with 500 columns, most of a pass's CPU time was the kernel's, not recluster's). A worker
#:   then holds Arrow's high-water mark: about two pieces' numeric columns per thread.
#: - ``MIMALLOC_ARENA_EAGER_COMMIT=0``: commit the pool's 1 GiB arena as it is used, not all at
#:   once. Committed at once, the arena is one region that the kernel backs with transparent
#:   huge pages, and a first touch of a 2 MB page cost ~3 ms of system CPU on the machine we
#:   measure on (a VM): a worker's first read of a 500-column piece (50,000 rows) took 563 such
#:   faults and 1.8-2.5 s, against 0.33-0.36 s in 4 KB pages committed as used (fresh
#:   processes, same file, back to back; /proc/vmstat thp_fault_alloc).
#:
#: Workers of an existing scheduler need them in their own environment (the Kubernetes
#: manifests, :mod:`recluster.k8s`, set them and :data:`SPAWN_ENV` in the worker container's).
#: A value that this process's environment or the user's Dask config
#: (``distributed.nanny.environ`` or ``.pre-spawn-environ``) gives wins.
WORKER_ENV = {"MIMALLOC_PURGE_DELAY": "-1", "MIMALLOC_ARENA_EAGER_COMMIT": "0"}

#: Two settings of glibc's ``malloc`` (numpy, XGBoost, UMAP's numba code) for a local
#: cluster's worker processes, so that the blocks of a few MiB that every task allocates and
#: frees are reused by the next task instead of being mapped afresh and their pages faulted in
#: again by the kernel. glibc reads them when a process starts: they go in distributed's
#: ``distributed.nanny.pre-spawn-environ`` (set in this process's environment before each
#: worker is spawned, and taken out of it again when the cluster closes: :func:`_spawn_environ`),
#: next to its own ``MALLOC_TRIM_THRESHOLD_``; a variable this process's environment sets wins,
#: and so does one the user's Dask config sets there (or unsets with ``null``).
#:
#: - ``MALLOC_MMAP_THRESHOLD_=33554432``: allocations up to 32 MiB come from the heap. glibc
#:   raises this threshold by itself as large blocks are freed, but not once
#:   ``MALLOC_TRIM_THRESHOLD_`` is set, which distributed does for every worker, so it stayed
#:   at 128 KiB.
#: - ``MALLOC_TRIM_THRESHOLD_=134217728``: the heap's free top is handed back beyond 128 MiB,
#:   not beyond distributed's 64 KiB (which returned a block freed at the top at once).
#:
#: Measured: README "Wide tables", fourth round.
SPAWN_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "134217728"}


@dataclass(frozen=True)
class TlsFiles:
    """TLS files for the client, as given on the command line (``None``: take Dask's config).

    Attributes
    ----------
    ca_file : PEM file of the CA that signed the scheduler's and workers' certificates
    cert : PEM file of this client's certificate (may also hold its key)
    key : PEM file of this client's private key
    """

    ca_file: str | None = None
    cert: str | None = None
    key: str | None = None

    def given(self) -> bool:
        return any((self.ca_file, self.cert, self.key))


def scheduler_address(runtime: RuntimeConfig, cli_address: str | None) -> str | None:
    return cli_address or os.environ.get("DASK_SCHEDULER_ADDRESS") or runtime.scheduler


def _scheme(address: str) -> str:
    return address.split("://", 1)[0].lower() if "://" in address else "tcp"


def _readable(path: str, flag: str, config_key: str) -> str:
    p = Path(path).expanduser()
    if not p.is_file() or not os.access(p, os.R_OK):
        raise ConfigError(f"{flag} / {config_key}: {path} is not a readable file")
    return str(p)


def _no_passphrase(path: str):
    """A ``password`` callback for :meth:`ssl.SSLContext.load_cert_chain`: without one, OpenSSL
    asks for a key's passphrase on the terminal ("Enter PEM pass phrase:", a hang in a batch
    job). Dask loads keys without a passphrase, so an encrypted key is a config error."""
    def refuse() -> bytes:
        raise ConfigError(f"--tls-key / distributed.comm.tls.client.key: {path} is encrypted "
                          "with a passphrase; Dask needs an unencrypted key (e.g. openssl pkey "
                          "-in encrypted.key -out tls.key), kept readable only by you")
    return refuse


def client_security(address: str | None, tls: TlsFiles | None = None) -> Security | None:
    """The :class:`~distributed.security.Security` for reaching ``address``; ``None`` for plain TCP.

    Raises
    ------
    ConfigError
        TLS asked for but incomplete, unreadable or inconsistent files, or a ``tcp://``
        address while TLS files are given or ``distributed.comm.require-encryption`` is set,
        or TLS files without a scheduler (the local cluster is loopback only).
    """
    tls = tls or TlsFiles()
    required = bool(dask.config.get("distributed.comm.require-encryption", None))
    if address is None:
        if tls.given():
            raise ConfigError("--tls-ca-file/--tls-cert/--tls-key are for an existing scheduler: "
                              "pass --scheduler tls://HOST:PORT (without it a LocalCluster on "
                              "127.0.0.1 runs the job)")
        if required:
            raise ConfigError("distributed.comm.require-encryption is set, but no scheduler is "
                              "named: pass --scheduler tls://HOST:PORT, or unset it for a "
                              "LocalCluster on 127.0.0.1")
        return None
    scheme = _scheme(address)
    if scheme != "tls":
        if tls.given() or required:
            why = "TLS files are given" if tls.given() else \
                "distributed.comm.require-encryption is set"
            raise ConfigError(f"--scheduler {address} is not encrypted, but {why}: use "
                              f"tls://{address.split('://', 1)[-1]}")
        return None
    ca = tls.ca_file or dask.config.get("distributed.comm.tls.ca-file", None)
    cert = tls.cert or dask.config.get("distributed.comm.tls.client.cert", None)
    key = tls.key or dask.config.get("distributed.comm.tls.client.key", None)
    if not ca or not cert:
        missing = [f for f, v in (("--tls-ca-file (or distributed.comm.tls.ca-file)", ca),
                                  ("--tls-cert (or distributed.comm.tls.client.cert)", cert)) if not v]
        raise ConfigError(f"--scheduler {address} uses TLS; missing {' and '.join(missing)}")
    ca = _readable(ca, "--tls-ca-file", "distributed.comm.tls.ca-file")
    cert = _readable(cert, "--tls-cert", "distributed.comm.tls.client.cert")
    key = key and _readable(key, "--tls-key", "distributed.comm.tls.client.key")
    try:
        ssl.create_default_context(cafile=ca)
    except ssl.SSLError as exc:
        raise ConfigError(f"--tls-ca-file {ca} is not a PEM CA certificate: {exc}") from None
    try:
        ssl.create_default_context().load_cert_chain(cert, key, password=_no_passphrase(
            key or cert))
    except ssl.SSLError as exc:
        raise ConfigError(f"--tls-cert {cert} / --tls-key {key or '(in the certificate file)'}: "
                          f"not a PEM certificate with its matching private key: {exc}") from None
    return Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key,
                    require_encryption=True)


def _cache_dir_problem(path: Path) -> str | None:
    """Why ``path`` cannot hold numba's on-disk cache (created if missing), or None."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".recluster-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return None


def _private_dir_problem(path: Path) -> str | None:
    """Why ``path`` (in a directory other users can write to) is not this user's own private
    directory, or None. numba's cache files are pickles: another user's would run their code."""
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        return "not a private directory of this user"
    return _cache_dir_problem(path)


def _damaged_cache_file(path: Path) -> str | None:
    """The first of numba's cache files under ``path`` that is not a whole pickle stream
    (an index ``.nbi`` holds two, a data file ``.nbc`` one), with what is wrong, or None.

    numba unpickles them without a guard: a damaged one failed every worker's first UMAP with
    an error that does not name it ("module 'umap' has no attribute 'UMAP'"). The streams are
    walked opcode by opcode (:func:`pickletools.genops`), nothing is unpickled.
    """
    for f in sorted([*path.rglob("*.nbi"), *path.rglob("*.nbc")]):
        try:
            data = f.read_bytes()
            for _ in range(2 if f.suffix == ".nbi" else 1):
                end = 0
                for _op, _arg, pos in pickletools.genops(data):
                    end = pos + 1
                data = data[end:]
        except (OSError, ValueError, IndexError, KeyError) as exc:
            return f"{f}: {type(exc).__name__}: {exc}"
    return None


def prepare_numba_cache(runtime: RuntimeConfig) -> str | None:
    """Point numba's on-disk cache somewhere persistent before any worker process starts.

    Local workers inherit the environment, so UMAP's cacheable kernels compile once per
    machine instead of once per process. Where: ``runtime.numba_cache_dir``, else
    ``NUMBA_CACHE_DIR``, else ``~/.cache/recluster/numba``; a home that cannot hold it (read-only,
    missing, as in many containers) falls back to a private ``recluster-numba-<uid>`` in the
    temporary directory, and if that fails too, numba keeps its own defaults (the run is only
    slower). The cache is an optimisation: only a directory named by the user, or a damaged
    cache file (:func:`_damaged_cache_file`), is an error.

    Returns
    -------
    str or None : the directory now in ``NUMBA_CACHE_DIR`` (None: left to numba)

    Raises
    ------
    ConfigError
        ``runtime.numba_cache_dir`` or ``NUMBA_CACHE_DIR`` names a directory that cannot be
        created or written; a cache file in the directory is damaged.
    """
    path = _choose_numba_cache(runtime)
    damaged = path and _damaged_cache_file(Path(path))
    if damaged:
        raise ConfigError(f"numba's on-disk cache (NUMBA_CACHE_DIR={path}) has a damaged file "
                          f"{damaged}; delete the file (numba compiles its kernels again)")
    return path


def _choose_numba_cache(runtime: RuntimeConfig) -> str | None:
    """The directory of :func:`prepare_numba_cache`, put in ``NUMBA_CACHE_DIR`` (or None)."""
    for setting, named in (("runtime.numba_cache_dir", runtime.numba_cache_dir),
                           ("NUMBA_CACHE_DIR", os.environ.get("NUMBA_CACHE_DIR"))):
        if named:
            path = str(Path(named).expanduser())
            problem = _cache_dir_problem(Path(path))
            if problem:
                raise ConfigError(f"{setting}={named}: numba's on-disk cache cannot be kept "
                                  f"there ({problem}); name a writable directory")
            os.environ["NUMBA_CACHE_DIR"] = path
            return path
    try:
        home = Path.home() / ".cache" / "recluster" / "numba"
    except (RuntimeError, KeyError):  # no HOME and no password entry
        home = None
    if home is not None and _cache_dir_problem(home) is None:
        path = str(home)
    else:
        private = Path(tempfile.gettempdir()) / f"recluster-numba-{os.getuid()}"
        if _private_dir_problem(private) is not None:
            return None
        path = str(private)
    os.environ["NUMBA_CACHE_DIR"] = path
    return path


class QuietWorker(WorkerPlugin):
    """Silences a local worker process: library warnings and logs off, stdout and stderr to the
    null device (also what C++ code such as XGBoost's collective prints)."""

    name = "recluster-quiet-worker"

    def setup(self, worker) -> None:
        silence_libraries()
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
        finally:
            os.close(devnull)


#: The warm-up thread of this (worker) process, once started: repeat registrations do nothing.
_warm_thread: threading.Thread | None = None
_log = logging.getLogger(__name__)


def cache_umap_kernels() -> list[str]:
    """Give UMAP's numba kernels that are compiled without ``cache=True`` numba's on-disk cache
    (``NUMBA_CACHE_DIR``) in this process, before their first call: their machine code is then
    compiled once per machine, not once per worker process. Same code, same results.

    Only into a cache directory someone chose (``NUMBA_CACHE_DIR``, which a local cluster's
    workers get from :func:`prepare_numba_cache`): without one numba would write next to UMAP's
    installed sources, inside the package (a worker of an external cluster started without it
    then compiles these kernels in each process, as it always did).

    Returns
    -------
    list of str : the kernels it turned caching on for (empty once done, or without a directory)
    """
    from numba.core import config

    if not config.CACHE_DIR:
        return []
    import umap.layouts
    import umap.umap_
    from numba.core.caching import NullCache
    from numba.core.registry import CPUDispatcher

    done = []
    for module in (umap.umap_, umap.layouts):
        for name, obj in vars(module).items():
            if (isinstance(obj, CPUDispatcher) and obj.__module__ == module.__name__
                    and isinstance(getattr(obj, "_cache", None), NullCache)):
                obj.enable_caching()
                done.append(f"{module.__name__}.{name}")
    return done


def warm_up() -> float:
    """Compile (or load from the on-disk cache) the numba code of a node fit in this process:
    :func:`cache_umap_kernels`, then UMAP and HDBSCAN on 300 rows of a fixed two-blob table,
    with the default embedding and clustering settings.

    Returns
    -------
    float : seconds it took
    """
    import time

    import numpy as np

    from recluster.compute.cluster import fit_clusters
    from recluster.compute.embed import fit_embedding
    from recluster.config import ClusteringConfig, EmbeddingConfig

    t = time.perf_counter()
    try:
        import hdbscan  # noqa: F401
        import pynndescent  # noqa: F401
        import umap  # noqa: F401

        cache_umap_kernels()
    finally:
        _imports_done.set()
    X = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32)
    X[:150] += 8.0
    _, emb = fit_embedding(X, EmbeddingConfig(n_epochs=20), seed=0)
    fit_clusters(emb, ClusteringConfig())
    return time.perf_counter() - t


def _warm_up_quietly() -> None:
    try:
        _log.debug("numba warm-up took %.1fs", warm_up())
    except Exception:  # a failed warm-up only means the first fit compiles, as before
        _log.debug("numba warm-up failed", exc_info=True)


#: Set by the warm-up thread once UMAP, HDBSCAN and pynndescent are imported and UMAP's kernels
#: made cacheable; see :func:`imports_ready`.
_imports_done = threading.Event()


def imports_ready(timeout_s: float = 300.0) -> None:
    """In a task about to fit nodes: wait until this worker's warm-up thread (if it has one)
    has imported the fitting libraries.

    Two threads importing ``umap`` at once can see a partially initialised module (umap's
    modules import each other; Python then hands one thread the half-built module rather than
    deadlock): "cannot import name 'optimize_layout_euclidean' from partially initialized module
    'umap.layouts'" failed a fit once. The imports take a few seconds; the wait is bounded and a
    warm-up that failed has set the event too.
    """
    if _warm_thread is not None:
        _imports_done.wait(timeout_s)


class WarmWorker(WorkerPlugin):
    """Starts :func:`warm_up` in a background thread of each worker, once per process; the
    worker takes tasks meanwhile (a fit that needs a kernel being compiled waits for it)."""

    name = "recluster-warm-worker"

    def setup(self, worker) -> None:
        global _warm_thread
        if _warm_thread is None:
            _warm_thread = threading.Thread(target=_warm_up_quietly, name="recluster-warm-up",
                                            daemon=True)
            _warm_thread.start()


def _users_nanny_env(*sections: str) -> set[str]:
    """The environment variables the user's Dask config gives a value (or ``null``: unset) in
    the ``distributed.nanny`` ``sections``, other than distributed's own defaults."""
    defaults = dask.config.merge(*dask.config.defaults)
    names: set[str] = set()
    for section in sections:
        key = f"distributed.nanny.{section}"
        given, default = dask.config.get(key, {}), dask.config.get(key, {}, config=defaults)
        names |= {n for n, v in given.items() if n not in default or str(v) != str(default[n])}
    return names


@contextmanager
def _spawn_environ(quiet: bool = True) -> Iterator[None]:
    """Distributed's ``pre-spawn-environ`` with :data:`SPAWN_ENV` where the user's Dask config
    keeps distributed's default, in force (Dask config) while a local cluster's nannies are made;
    ``quiet``: ``PYTHONWARNINGS=ignore`` too (unless set), which the worker processes inherit, so
    that what they print on import is covered.

    A nanny writes these variables into *this* process's environment before it spawns a worker
    (distributed's way to reach glibc before the worker starts): on exit, when the cluster is
    closed, each is put back as it was, so that nothing started later by this process (a
    subprocess, another cluster: a notebook's own, or the next job's) inherits them as if the
    user had set them."""
    key = "distributed.nanny.pre-spawn-environ"
    users = _users_nanny_env("pre-spawn-environ")
    spawn = {**dask.config.get(key, {}), **{k: v for k, v in SPAWN_ENV.items() if k not in users}}
    before = dict(os.environ)
    if quiet:
        os.environ.setdefault("PYTHONWARNINGS", "ignore")
    try:
        with dask.config.set({key: spawn}):
            yield
    finally:
        # (the nanny adds a hash seed of its own)
        for name in {*spawn, "PYTHONHASHSEED", "PYTHONWARNINGS"}:
            if name in before:
                os.environ[name] = before[name]
            else:
                os.environ.pop(name, None)


@contextmanager
def dask_client(runtime: RuntimeConfig, cli_address: str | None = None,
                tls: TlsFiles | None = None, verbose: bool = False,
                warm: bool = False) -> Iterator[Client]:
    """Yield a connected client; a local cluster started here is closed on exit (its workers
    silenced unless ``verbose``). ``warm``: register :class:`WarmWorker` (for jobs that fit
    nodes; scoring and comparing never run UMAP).

    Raises
    ------
    ConfigError
        see :func:`client_security`.
    StageError
        the scheduler cannot be reached (or refuses this client) within
        :data:`CONNECT_TIMEOUT_S`.
    """
    address = scheduler_address(runtime, cli_address)
    security = client_security(address, tls)
    if address:
        try:
            client = Client(address, timeout=f"{CONNECT_TIMEOUT_S}s", security=security)
        except (OSError, TimeoutError) as exc:
            hint = "" if security else (" (if it uses TLS: --scheduler tls://... with "
                                        "--tls-ca-file, --tls-cert and --tls-key)")
            raise StageError(f"stage 'connect' failed: cannot reach the Dask scheduler at "
                             f"{address}{hint}: {type(exc).__name__}: {exc}") from None
        with closing(client):  # (see below: not ``with client``)
            client.register_plugin(FrameSizes())
            if warm:
                client.register_plugin(WarmWorker())
            yield client
        return
    prepare_numba_cache(runtime)
    n_workers = runtime.n_workers or max(1, os.cpu_count() or 1)
    users = _users_nanny_env("environ", "pre-spawn-environ")
    with _spawn_environ(quiet=not verbose), LocalCluster(
        n_workers=n_workers,
        threads_per_worker=runtime.threads_per_worker,
        memory_limit=runtime.memory_limit,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:8787",
        processes=True,
        env={k: v for k, v in WORKER_ENV.items() if k not in os.environ and k not in users},
        # LocalCluster would set distributed's loggers to warnings; --verbose wants its info.
        silence_logs=False if verbose else logging.ERROR,
    ) as cluster, closing(Client(cluster)) as client:
        # closing(), not ``with Client``: that makes the client the current one of this thread's
        # context, which only that thread may undo, while a run connects in its own thread and
        # is closed by the caller's (:func:`recluster.pipeline.run`). The client is Dask's
        # default either way (set_as_default), for every thread.
        if not verbose:
            client.register_plugin(QuietWorker())
        client.register_plugin(FrameSizes())
        if warm:
            client.register_plugin(WarmWorker())
        yield client
