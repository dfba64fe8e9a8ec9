"""Kubernetes manifests for a run: a dask-kubernetes ``DaskJob`` plus a ``ConfigMap``.

Pure functions, dicts in and out; nothing here talks to a cluster. ``recluster render-k8s``
prints :func:`render_manifests` as multi-document YAML for ``kubectl apply -f -``.

One image serves the runner, the scheduler and the workers. The runner pod runs
``recluster run /config/job.yaml --quiet`` with the config mounted from the ConfigMap; the
operator gives it ``DASK_SCHEDULER_ADDRESS``, so the rendered config leaves
``runtime.scheduler`` unset. S3 credentials reach the runner and the workers as environment
variables taken from a Kubernetes Secret (``secretKeyRef``); the manifests hold only the
Secret's name and key names, never a value.

Resources are consistent by construction: ``dask worker --nthreads`` equals the container's
CPU limit, and ``--memory-limit`` is :data:`WORKER_MEMORY_FRACTION` of the container's memory
limit (the nanny process and allocator slack live in the rest), so Dask spills, pauses and
restarts a worker before the kernel's OOM killer does. Requests equal limits (Guaranteed QoS:
the pods are not the first evicted under node memory pressure).
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml

from recluster.config import JobConfig, parse_config, redacted_paths
from recluster.errors import ConfigError

API_VERSION = "kubernetes.dask.org/v1"
CONFIG_DIR = "/config"
CONFIG_FILE = "job.yaml"

#: Share of the worker container's memory limit given to ``dask worker --memory-limit``.
WORKER_MEMORY_FRACTION = 0.9
#: Smallest worker container: the imports alone (numba, UMAP, XGBoost, pyarrow) take ~0.4 GiB
#: per process; a node fit adds ~0.3 GiB at 40k sample rows (measured, see deploy/README.md).
MIN_WORKER_MEMORY_GIB = 2.0
#: ... and per thread, since every thread can run a node fit at the same time.
MIN_MEMORY_GIB_PER_THREAD = 1.0
#: The operator names worker deployments ``<name>-default-worker-<10 hex>``; Kubernetes names
#: and label values stop at 63 characters.
MAX_NAME_LENGTH = 63 - len("-default-worker-") - 10

#: Fixed sizes of the two small pods (requests = limits).
SCHEDULER_RESOURCES = {"cpu": "1", "memory": "2Gi"}
RUNNER_RESOURCES = {"cpu": "1", "memory": "2Gi"}
#: A runner that has not finished after this long is failed (then the operator deletes the
#: cluster); bounds the restarts of ``restartPolicy: OnFailure``.
RUNNER_DEADLINE_S = 24 * 3600

UID = 10001  # the image's non-root user (deploy/Dockerfile)

#: (variable, required) read from the Secret: botocore/s3fs pick them up from the environment.
SECRET_ENV = (
    ("AWS_ACCESS_KEY_ID", True),
    ("AWS_SECRET_ACCESS_KEY", True),
    ("AWS_SESSION_TOKEN", False),
    ("AWS_ENDPOINT_URL", False),
    ("AWS_DEFAULT_REGION", False),
)

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # RFC 1035 label (Service names)
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LOCAL_PROTOCOLS = {None, "", "file", "local", "memory"}


def worker_memory_mib(worker_memory_gib: float) -> int:
    """The worker container's memory limit in MiB (whole MiB, rounded down)."""
    return int(math.floor(worker_memory_gib * 1024))


def dask_memory_limit_mib(container_mib: int) -> int:
    """What ``dask worker --memory-limit`` gets for a container limit of ``container_mib``."""
    return int(math.floor(container_mib * WORKER_MEMORY_FRACTION))


def _protocol(url: str) -> str | None:
    return url.split("://", 1)[0].lower() if "://" in url else None


def check_args(cfg: JobConfig, image: str, workers: int, worker_cpu: int,
               worker_memory_gib: float, secret: str, name: str) -> None:
    """Refuse arguments that would render a job that cannot work; messages name the argument."""
    problems = []
    if not image or any(c.isspace() for c in image):
        problems.append("--image must be an image reference like registry.example.com/recluster:0.1.0")
    else:
        last = image.rsplit("/", 1)[-1]
        if "@" not in last and (":" not in last or last.endswith(":latest")):
            problems.append(f"--image {image}: name an exact tag or digest (not latest/untagged), so "
                            "that the runner, the scheduler, every worker and a re-run use the same build")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        problems.append(f"--workers must be a whole number >= 1, got {workers!r}")
    if isinstance(worker_cpu, bool) or not isinstance(worker_cpu, int) or worker_cpu < 1:
        problems.append(f"--worker-cpu must be a whole number >= 1 (it is also dask worker "
                        f"--nthreads), got {worker_cpu!r}")
    elif not isinstance(worker_memory_gib, int | float) or not math.isfinite(worker_memory_gib):
        problems.append(f"--worker-memory-gib must be a number, got {worker_memory_gib!r}")
    else:
        need = max(MIN_WORKER_MEMORY_GIB, MIN_MEMORY_GIB_PER_THREAD * worker_cpu)
        if worker_memory_gib < need:
            problems.append(
                f"--worker-memory-gib {worker_memory_gib:g} is too small for --worker-cpu "
                f"{worker_cpu}: need at least {need:g} GiB ({MIN_WORKER_MEMORY_GIB:g} GiB per "
                f"worker and {MIN_MEMORY_GIB_PER_THREAD:g} GiB per thread; every thread can fit "
                "a node at the same time)")
    if not secret or len(secret) > 253 or not _DNS_SUBDOMAIN.match(secret):
        problems.append(f"--secret {secret!r} is not a valid Kubernetes Secret name "
                        "(lowercase letters, digits, '-' and '.')")
    if not name or len(name) > MAX_NAME_LENGTH or not _DNS_LABEL.match(name):
        problems.append(f"--name {name!r} must be a lowercase DNS label of at most "
                        f"{MAX_NAME_LENGTH} characters (letters, digits, '-'; starting with a "
                        "letter), so that the names the operator derives from it stay valid")
    for section in ("input", "output"):
        url = getattr(cfg, section).path
        if _protocol(url) in _LOCAL_PROTOCOLS:
            problems.append(f"{section}.path {url!r} is local to this machine; on Kubernetes the "
                            "runner and the workers run in other pods: use object storage (s3://...)")
    if problems:
        raise ConfigError("cannot render the Kubernetes job:\n" + "\n".join(f"  {p}" for p in problems))


def config_for_cluster(cfg: JobConfig) -> dict[str, Any]:
    """The config as the runner pod reads it: ``runtime.scheduler`` unset, nothing secret.

    A ConfigMap is readable by anyone who may read the namespace, so a storage option that is
    not on the allowlist of harmless ones (:data:`recluster.config.SAFE_STORAGE_OPTIONS`) is
    refused rather than written (or redacted, which would hand the runner a wrong value).
    """
    hidden = [f"{section}.storage_options.{p}" for section in ("input", "output")
              for p in redacted_paths(getattr(cfg, section).storage_options)]
    if hidden:
        raise ConfigError(
            "cannot render the Kubernetes job: " + ", ".join(hidden) + " would be written into "
            "the ConfigMap, and only harmless storage options may be (endpoint_url, region_name, "
            "anon, ...; see README 'Config'): give the runner and workers such settings through "
            "the Secret's environment variables instead")
    data = cfg.redacted()
    data["runtime"]["scheduler"] = None
    parse_config(data, source="rendered config")  # must load back as it is
    return data


def _secret_env(secret: str) -> list[dict[str, Any]]:
    return [{"name": var, "valueFrom": {"secretKeyRef": {
        "name": secret, "key": var, **({} if required else {"optional": True})}}}
        for var, required in SECRET_ENV]


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _pod_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _resources(res: dict[str, str]) -> dict[str, dict[str, str]]:
    return {"requests": dict(res), "limits": dict(res)}


def render_daskjob(cfg: JobConfig, image: str, workers: int = 2, worker_cpu: int = 2,
                   worker_memory_gib: float = 8.0, secret: str = "recluster-s3",
                   name: str = "recluster") -> dict[str, Any]:
    """The ``DaskJob`` for ``cfg``; the ConfigMap it mounts is :func:`render_configmap`.

    Parameters
    ----------
    cfg : JobConfig
        The job (its input and output must be object storage the pods can reach).
    image : str
        Image built from ``deploy/Dockerfile``, with an exact tag or digest.
    workers : int
        Worker pods.
    worker_cpu : int
        CPU limit (= request) of a worker pod, and its ``dask worker --nthreads``.
    worker_memory_gib : float
        Memory limit (= request) of a worker pod; ``--memory-limit`` gets
        :data:`WORKER_MEMORY_FRACTION` of it.
    secret : str
        Name of the Secret holding ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and,
        optionally, ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``.
    name : str
        Name of the DaskJob; the scheduler Service is ``<name>-scheduler``, the runner pod
        ``<name>-runner``, the ConfigMap ``<name>-config``.

    Returns
    -------
    dict
        The DaskJob manifest.
    """
    check_args(cfg, image, workers, worker_cpu, worker_memory_gib, secret, name)
    container_mib = worker_memory_mib(worker_memory_gib)
    dask_mib = dask_memory_limit_mib(container_mib)
    labels = {"app.kubernetes.io/name": "recluster", "app.kubernetes.io/instance": name}

    runner = {
        "metadata": {"labels": dict(labels)},
        "spec": {
            # OnFailure: a runner that dies (lost scheduler connection, OOM kill, a storage
            # error) is restarted in place against the same cluster. Re-running is safe: each
            # attempt stages under <output>/_recluster/staging/<run-id>/ and publishes by
            # creating manifest.json exclusively, so a second attempt of the same config on the
            # same input either redoes an unpublished run or finds it published and does nothing
            # (one that restarts within output.lock_lease_s of a killed attempt is refused by
            # that attempt's lock until its lease runs out).
            # activeDeadlineSeconds bounds the retries of a failure that is not transient.
            "restartPolicy": "OnFailure",
            "activeDeadlineSeconds": RUNNER_DEADLINE_S,
            "securityContext": _pod_security(),
            "containers": [{
                "name": "runner",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "args": ["recluster", "run", f"{CONFIG_DIR}/{CONFIG_FILE}", "--quiet"],
                "env": _secret_env(secret),
                "resources": _resources(RUNNER_RESOURCES),
                "securityContext": _container_security(),
                "volumeMounts": [{"name": "job-config", "mountPath": CONFIG_DIR, "readOnly": True}],
            }],
            "volumes": [{"name": "job-config", "configMap": {"name": f"{name}-config"}}],
        },
    }
    scheduler = {
        "metadata": {"labels": dict(labels)},
        "spec": {
            "securityContext": _pod_security(),
            "containers": [{
                "name": "scheduler",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "args": ["dask", "scheduler", "--port", "8786", "--dashboard-address", ":8787"],
                "ports": [{"name": "tcp-comm", "containerPort": 8786, "protocol": "TCP"},
                          {"name": "http-dashboard", "containerPort": 8787, "protocol": "TCP"}],
                "readinessProbe": {"httpGet": {"port": "http-dashboard", "path": "/health"},
                                   "initialDelaySeconds": 5, "periodSeconds": 10},
                "livenessProbe": {"httpGet": {"port": "http-dashboard", "path": "/health"},
                                  "initialDelaySeconds": 15, "periodSeconds": 20},
                "resources": _resources(SCHEDULER_RESOURCES),
                "securityContext": _container_security(),
            }],
        },
        "service": {
            "type": "ClusterIP",  # never exposed outside the cluster: kubectl port-forward
            "selector": {"dask.org/cluster-name": name, "dask.org/component": "scheduler"},
            "ports": [{"name": "tcp-comm", "protocol": "TCP", "port": 8786, "targetPort": "tcp-comm"},
                      {"name": "http-dashboard", "protocol": "TCP", "port": 8787,
                       "targetPort": "http-dashboard"}],
        },
    }
    worker = {
        "replicas": workers,
        "metadata": {"labels": dict(labels)},
        "spec": {
            "securityContext": _pod_security(),
            "containers": [{
                "name": "worker",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                # The scheduler address comes from DASK_SCHEDULER_ADDRESS (set by the operator).
                "args": ["dask", "worker", "--name", "$(DASK_WORKER_NAME)",
                         "--nworkers", "1", "--nthreads", str(worker_cpu),
                         "--memory-limit", f"{dask_mib}MiB",
                         "--dashboard-address", ":8788"],
                "ports": [{"name": "http-dashboard", "containerPort": 8788, "protocol": "TCP"}],
                "env": [
                    *_secret_env(secret),
                    # The nanny pins OpenMP/BLAS to one thread per worker process, but not numba,
                    # whose default is the node's CPU count rather than this container's limit.
                    {"name": "NUMBA_NUM_THREADS", "value": "1"},
                ],
                "resources": _resources({"cpu": str(worker_cpu), "memory": f"{container_mib}Mi"}),
                "securityContext": _container_security(),
            }],
        },
    }
    return {
        "apiVersion": API_VERSION,
        "kind": "DaskJob",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {"job": runner, "cluster": {"spec": {"scheduler": scheduler, "worker": worker}}},
    }


def render_configmap(cfg: JobConfig, name: str = "recluster") -> dict[str, Any]:
    """The ConfigMap ``<name>-config`` holding the job config as ``job.yaml``."""
    body = yaml.safe_dump(config_for_cluster(cfg), sort_keys=False)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-config",
                     "labels": {"app.kubernetes.io/name": "recluster",
                                "app.kubernetes.io/instance": name}},
        "data": {CONFIG_FILE: body},
    }


def render_manifests(cfg: JobConfig, image: str, workers: int = 2, worker_cpu: int = 2,
                     worker_memory_gib: float = 8.0, secret: str = "recluster-s3",
                     name: str = "recluster") -> list[dict[str, Any]]:
    """``[DaskJob, ConfigMap]``; the runner pod waits for the ConfigMap if it comes second."""
    job = render_daskjob(cfg, image, workers, worker_cpu, worker_memory_gib, secret, name)
    return [job, render_configmap(cfg, name)]


class _Dumper(yaml.SafeDumper):
    """No anchors/aliases (kubectl users read these files), multi-line strings as ``|`` blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_manifests(docs: list[dict[str, Any]]) -> str:
    """Multi-document YAML."""
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, explicit_start=True)
