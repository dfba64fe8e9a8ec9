"""Kubernetes manifests for a run: a dask-kubernetes ``DaskJob``, its ``ConfigMap`` and the
``NetworkPolicies`` that fence it in.

Pure functions, dicts in and out; nothing here talks to a cluster. ``recluster render-k8s``
prints :func:`render_manifests` as multi-document YAML for ``kubectl apply -f -``.

One image serves the runner, the scheduler and the workers. The runner pod runs
``recluster run /config/job.yaml --quiet`` with the config mounted from the ConfigMap and
``DASK_SCHEDULER_ADDRESS`` in its environment, so the rendered config leaves
``runtime.scheduler`` unset. Storage access reaches the runner and the workers either as
environment variables taken from a Kubernetes Secret (``secretKeyRef``: the manifests hold
only the Secret's name and key names, never a value) or through workload identity (a service
account that the platform maps to a cloud role, e.g. EKS IRSA); the scheduler gets neither.

Who can reach the cluster: a Dask scheduler runs whatever code a connected client submits,
on workers that hold the storage credentials. So by default the pods talk mutual TLS with
certificates from a Secret (:data:`TLS_DIR`; ``distributed.comm.require-encryption`` on
every pod: no plain-TCP fallback), and NetworkPolicies admit only the job's own pods to the
scheduler and the workers, the dashboard only from namespaces named explicitly (it is
reached with ``kubectl port-forward``). No pod mounts a Kubernetes API token.

Resources are consistent by construction: ``dask worker --nthreads`` equals the container's
CPU limit, and ``--memory-limit`` is :data:`WORKER_MEMORY_FRACTION` of the container's memory
limit (the nanny process and allocator slack live in the rest), so Dask spills, pauses and
restarts a worker before the kernel's OOM killer does. Requests equal limits (Guaranteed QoS:
the pods are not the first evicted under node memory pressure).
"""

from __future__ import annotations

import math
import re
import textwrap
from typing import Any

import yaml

from recluster.config import SAFE_CATALOG_OPTIONS, JobConfig, parse_config, redacted_paths
from recluster.errors import ConfigError
from recluster.parallel.client import SPAWN_ENV, WORKER_ENV

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

#: Secret used when neither ``secret`` nor ``service_account`` is given.
DEFAULT_SECRET = "recluster-s3"
#: Secret with the TLS CA and certificate (the keys cert-manager writes), and where it is mounted.
DEFAULT_TLS_SECRET = "recluster-tls"
TLS_DIR = "/etc/recluster/tls"
TLS_FILES = {"ca": "ca.crt", "cert": "tls.crt", "key": "tls.key"}
COMM_PORT = 8786
DASHBOARD_PORT = 8787
#: The operator's pod labels: ``dask.org/cluster-name`` is the DaskJob's name.
CLUSTER_LABEL = "dask.org/cluster-name"
COMPONENT_LABEL = "dask.org/component"
COMPONENTS = {"scheduler": "scheduler", "worker": "worker", "runner": "job-runner"}

#: (variable, required) read from the Secret: botocore/s3fs pick them up from the environment.
SECRET_ENV = (
    ("AWS_ACCESS_KEY_ID", True),
    ("AWS_SECRET_ACCESS_KEY", True),
    ("AWS_SESSION_TOKEN", False),
    ("AWS_ENDPOINT_URL", False),
    ("AWS_DEFAULT_REGION", False),
)

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # RFC 1035 label (Service names)
_DNS_LABEL_NS = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # RFC 1123 label (namespaces)
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
               worker_memory_gib: float, secret: str | None, name: str,
               service_account: str | None = None, tls_secret: str | None = None,
               dashboard_from: tuple[str, ...] | list[str] = ()) -> None:
    """Refuse arguments that would render a job that cannot work; messages name the argument.

    ``secret`` and ``service_account`` are alternatives: exactly one must be set (resolve the
    default first with :func:`storage_access`).
    """
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
    if secret is not None and service_account is not None:
        problems.append("--secret and --service-account are alternatives: give the pods static "
                        "keys from a Secret, or a service account with workload identity")
    elif secret is None and service_account is None:
        problems.append("name a --secret with storage keys or a --service-account")
    for flag, value in (("--secret", secret), ("--tls-secret", tls_secret)):
        if value is not None and (not value or len(value) > 253 or not _DNS_SUBDOMAIN.match(value)):
            problems.append(f"{flag} {value!r} is not a valid Kubernetes Secret name "
                            "(lowercase letters, digits, '-' and '.')")
    if service_account is not None and (not service_account or len(service_account) > 253
                                        or not _DNS_SUBDOMAIN.match(service_account)):
        problems.append(f"--service-account {service_account!r} is not a valid Kubernetes "
                        "service account name (lowercase letters, digits, '-' and '.')")
    for ns in dashboard_from:
        if not ns or len(ns) > 63 or not _DNS_LABEL_NS.match(ns):
            problems.append(f"--dashboard-from {ns!r} is not a Kubernetes namespace name")
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
    hidden += [f"input.catalog.{p}" for p in redacted_paths(cfg.input.catalog,
                                                              safe=SAFE_CATALOG_OPTIONS)]
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


def storage_access(secret: str | None, service_account: str | None) -> tuple[str | None, str | None]:
    """``(secret, service_account)`` with the default applied: the Secret
    :data:`DEFAULT_SECRET` unless a service account is named."""
    if secret is None and service_account is None:
        return DEFAULT_SECRET, None
    return secret, service_account


def _secret_env(secret: str | None) -> list[dict[str, Any]]:
    if secret is None:  # workload identity: the platform injects what botocore needs
        return []
    return [{"name": var, "valueFrom": {"secretKeyRef": {
        "name": secret, "key": var, **({} if required else {"optional": True})}}}
        for var, required in SECRET_ENV]


def scheduler_url(name: str, tls: bool) -> str:
    """The address the runner and the workers reach the scheduler at (the Service's name)."""
    return f"{'tls' if tls else 'tcp'}://{name}-scheduler:{COMM_PORT}"


def _tls_paths() -> dict[str, str]:
    return {k: f"{TLS_DIR}/{v}" for k, v in TLS_FILES.items()}


def _tls_flags() -> list[str]:
    """``dask scheduler`` / ``dask worker`` options for the mounted certificate."""
    p = _tls_paths()
    return ["--tls-ca-file", p["ca"], "--tls-cert", p["cert"], "--tls-key", p["key"]]


def _tls_env(role: str) -> list[dict[str, Any]]:
    """Dask config as environment: encryption required, and this role's certificate (``role``
    is Dask's: ``scheduler``, ``worker`` or ``client``)."""
    p = _tls_paths()
    prefix = f"DASK_DISTRIBUTED__COMM__TLS__{role.upper()}__"
    return [{"name": "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION", "value": "True"},
            {"name": "DASK_DISTRIBUTED__COMM__TLS__CA_FILE", "value": p["ca"]},
            {"name": prefix + "CERT", "value": p["cert"]},
            {"name": prefix + "KEY", "value": p["key"]}]


def _tls_volume(tls_secret: str) -> dict[str, Any]:
    # 0440 with the pods' fsGroup: readable by the runtime user, by no one else.
    return {"name": "dask-tls", "secret": {"secretName": tls_secret, "defaultMode": 0o440}}


def _tls_mount() -> dict[str, Any]:
    return {"name": "dask-tls", "mountPath": TLS_DIR, "readOnly": True}


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _pod_identity(service_account: str | None) -> dict[str, Any]:
    """No Kubernetes API token in any pod (none needs the API); the service account, if any,
    only for workload identity, whose webhook mounts its own cloud token."""
    return {**({"serviceAccountName": service_account} if service_account else {}),
            "automountServiceAccountToken": False}


def _pod_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _resources(res: dict[str, str]) -> dict[str, dict[str, str]]:
    return {"requests": dict(res), "limits": dict(res)}


def render_daskjob(cfg: JobConfig, image: str, workers: int = 2, worker_cpu: int = 2,
                   worker_memory_gib: float = 8.0, secret: str | None = None,
                   name: str = "recluster", service_account: str | None = None,
                   tls_secret: str | None = DEFAULT_TLS_SECRET) -> dict[str, Any]:
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
    secret : str or None
        Name of the Secret holding ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and,
        optionally, ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``.
        Default: :data:`DEFAULT_SECRET`, unless ``service_account`` is given.
    name : str
        Name of the DaskJob; the scheduler Service is ``<name>-scheduler``, the runner pod
        ``<name>-runner``, the ConfigMap ``<name>-config``.
    service_account : str or None
        Instead of ``secret``: the runner and the workers run as this service account, which
        workload identity (EKS IRSA / Pod Identity) maps to a storage role.
    tls_secret : str or None
        Secret with ``ca.crt``, ``tls.crt``, ``tls.key`` mounted at :data:`TLS_DIR`: the pods
        talk mutual TLS and require encryption. ``None``: plain TCP.

    Returns
    -------
    dict
        The DaskJob manifest.
    """
    secret, service_account = storage_access(secret, service_account)
    check_args(cfg, image, workers, worker_cpu, worker_memory_gib, secret, name,
               service_account, tls_secret)
    tls = tls_secret is not None
    container_mib = worker_memory_mib(worker_memory_gib)
    dask_mib = dask_memory_limit_mib(container_mib)
    labels = {"app.kubernetes.io/name": "recluster", "app.kubernetes.io/instance": name}
    # Set here, the operator does not add its own tcp:// address.
    address_env = [{"name": "DASK_SCHEDULER_ADDRESS", "value": scheduler_url(name, tls)}]
    tls_mounts = [_tls_mount()] if tls else []
    tls_volumes = [_tls_volume(tls_secret)] if tls else []

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
            **_pod_identity(service_account),
            "securityContext": _pod_security(),
            "containers": [{
                "name": "runner",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "args": ["recluster", "run", f"{CONFIG_DIR}/{CONFIG_FILE}", "--quiet"],
                "env": [*_secret_env(secret), *address_env,
                        *(_tls_env("client") if tls else [])],
                "resources": _resources(RUNNER_RESOURCES),
                "securityContext": _container_security(),
                "volumeMounts": [{"name": "job-config", "mountPath": CONFIG_DIR, "readOnly": True},
                                 *tls_mounts],
            }],
            "volumes": [{"name": "job-config", "configMap": {"name": f"{name}-config"}},
                        *tls_volumes],
        },
    }
    scheduler_args = ["dask", "scheduler", *(["--protocol", "tls"] if tls else []),
                      "--port", str(COMM_PORT), "--dashboard-address", f":{DASHBOARD_PORT}",
                      *(_tls_flags() if tls else [])]
    scheduler_container = {
        "name": "scheduler",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": scheduler_args,
        "ports": [{"name": "tcp-comm", "containerPort": COMM_PORT, "protocol": "TCP"},
                  {"name": "http-dashboard", "containerPort": DASHBOARD_PORT, "protocol": "TCP"}],
        # The kubelet probes from the node, which NetworkPolicies always admit; the dashboard
        # stays plain HTTP (it runs no code and is reached only through port-forward).
        "readinessProbe": {"httpGet": {"port": "http-dashboard", "path": "/health"},
                           "initialDelaySeconds": 5, "periodSeconds": 10},
        "livenessProbe": {"httpGet": {"port": "http-dashboard", "path": "/health"},
                          "initialDelaySeconds": 15, "periodSeconds": 20},
        "resources": _resources(SCHEDULER_RESOURCES),
        "securityContext": _container_security(),
    }
    if tls:
        scheduler_container["env"] = _tls_env("scheduler")
        scheduler_container["volumeMounts"] = tls_mounts
    scheduler = {
        "metadata": {"labels": dict(labels)},
        "spec": {
            **_pod_identity(None),  # the scheduler touches no data: no storage identity
            "securityContext": _pod_security(),
            "containers": [scheduler_container],
            **({"volumes": tls_volumes} if tls else {}),
        },
        "service": {
            "type": "ClusterIP",  # never exposed outside the cluster: kubectl port-forward
            "selector": {CLUSTER_LABEL: name, COMPONENT_LABEL: COMPONENTS["scheduler"]},
            "ports": [{"name": "tcp-comm", "protocol": "TCP", "port": COMM_PORT,
                       "targetPort": "tcp-comm"},
                      {"name": "http-dashboard", "protocol": "TCP", "port": DASHBOARD_PORT,
                       "targetPort": "http-dashboard"}],
        },
    }
    worker_container = {
        "name": "worker",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        # The scheduler address comes from DASK_SCHEDULER_ADDRESS.
        "args": ["dask", "worker", "--name", "$(DASK_WORKER_NAME)",
                 "--nworkers", "1", "--nthreads", str(worker_cpu),
                 "--memory-limit", f"{dask_mib}MiB",
                 "--dashboard-address", ":8788", *(_tls_flags() if tls else [])],
        "ports": [{"name": "http-dashboard", "containerPort": 8788, "protocol": "TCP"}],
        "env": [
            *_secret_env(secret),
            *address_env,
            *(_tls_env("worker") if tls else []),
            # The nanny pins OpenMP/BLAS to one thread per worker process, but not numba,
            # whose default is the node's CPU count rather than this container's limit.
            {"name": "NUMBA_NUM_THREADS", "value": "1"},
            # Arrow's and glibc's allocators set as on a local cluster (README "Wide tables"):
            # both read them when a process starts, and the nanny spawns the worker with this
            # environment (where distributed's own MALLOC_TRIM_THRESHOLD_ gives way to it).
            *({"name": k, "value": v} for k, v in {**WORKER_ENV, **SPAWN_ENV}.items()),
        ],
        "resources": _resources({"cpu": str(worker_cpu), "memory": f"{container_mib}Mi"}),
        "securityContext": _container_security(),
    }
    if tls:
        worker_container["volumeMounts"] = tls_mounts
    worker = {
        "replicas": workers,
        "metadata": {"labels": dict(labels)},
        "spec": {
            **_pod_identity(service_account),
            "securityContext": _pod_security(),
            "containers": [worker_container],
            **({"volumes": tls_volumes} if tls else {}),
        },
    }
    return {
        "apiVersion": API_VERSION,
        "kind": "DaskJob",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {"job": runner, "cluster": {"spec": {"scheduler": scheduler, "worker": worker}}},
    }


def _peer(name: str, role: str) -> dict[str, Any]:
    return {"podSelector": {"matchLabels": {CLUSTER_LABEL: name, COMPONENT_LABEL: COMPONENTS[role]}}}


def _policy(name: str, role: str, ingress: list[dict[str, Any]],
            annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"{name}-{role}",
                            "labels": {"app.kubernetes.io/name": "recluster",
                                       "app.kubernetes.io/instance": name}}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta,
            "spec": {"podSelector": _peer(name, role)["podSelector"],
                     "policyTypes": ["Ingress"], "ingress": ingress}}


def port_forward_hint(name: str) -> str:
    return (f"kubectl port-forward service/{name}-scheduler {DASHBOARD_PORT}:{DASHBOARD_PORT}, "
            f"then open http://127.0.0.1:{DASHBOARD_PORT}/status")


def render_network_policies(name: str = "recluster",
                            dashboard_from: tuple[str, ...] | list[str] = ()) -> list[dict[str, Any]]:
    """Ingress NetworkPolicies for the job's pods (labels set by the operator).

    - scheduler: from the job's workers on every port (Dask comms, and the XGBoost tracker
      that ``xgboost.dask`` starts on the scheduler at a random port), from the job's runner
      on the comm port only, and the dashboard port only from pods in ``dashboard_from``
      namespaces;
    - workers: from the job's scheduler, workers and runner (Dask comms, nannies, XGBoost's
      worker-to-worker collective), on any port, since workers listen on random ports;
    - runner: from nothing (it only makes connections).

    Everything else is refused once a policy selects a pod, with a CNI that enforces
    NetworkPolicies. The kubelet's probes come from the node and are always admitted, and
    ``kubectl port-forward`` enters the pod's own network namespace, so it still reaches the
    dashboard.
    """
    scheduler_in = [
        {"from": [_peer(name, "worker")]},
        {"from": [_peer(name, "runner")], "ports": [{"protocol": "TCP", "port": COMM_PORT}]},
    ]
    if dashboard_from:
        scheduler_in.append({
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}
                     for ns in dashboard_from],
            "ports": [{"protocol": "TCP", "port": DASHBOARD_PORT}]})
    return [
        _policy(name, "scheduler", scheduler_in,
                {"recluster.io/dashboard": port_forward_hint(name)}),
        _policy(name, "worker", [{"from": [_peer(name, r) for r in ("scheduler", "worker", "runner")]}]),
        _policy(name, "runner", []),
    ]


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
                     worker_memory_gib: float = 8.0, secret: str | None = None,
                     name: str = "recluster", service_account: str | None = None,
                     tls_secret: str | None = DEFAULT_TLS_SECRET,
                     dashboard_from: tuple[str, ...] | list[str] = ()) -> list[dict[str, Any]]:
    """``[DaskJob, ConfigMap, NetworkPolicy × 3]`` (see :func:`render_daskjob` and
    :func:`render_network_policies`); the runner pod waits for the ConfigMap."""
    secret, service_account = storage_access(secret, service_account)
    check_args(cfg, image, workers, worker_cpu, worker_memory_gib, secret, name,
               service_account, tls_secret, dashboard_from)
    job = render_daskjob(cfg, image, workers, worker_cpu, worker_memory_gib, secret, name,
                         service_account, tls_secret)
    return [job, render_configmap(cfg, name), *render_network_policies(name, dashboard_from)]


class _Dumper(yaml.SafeDumper):
    """No anchors/aliases (kubectl users read these files), multi-line strings as ``|`` blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def doc_comment(doc: dict[str, Any]) -> str:
    """What a person applying the document should know, as YAML comment lines ('' if nothing)."""
    name = doc.get("metadata", {}).get("name", "")
    text = ""
    if doc.get("kind") == "DaskJob":
        spec = doc["spec"]["job"]["spec"]
        secrets = sorted({v["valueFrom"]["secretKeyRef"]["name"]
                          for c in spec["containers"] for v in c.get("env", [])
                          if "secretKeyRef" in v.get("valueFrom", {})})
        tls = [v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v]
        text = (f"DaskJob {name} needs, in its namespace: "
                + (f"the Secret {secrets[0]} (storage keys)" if secrets else
                   f"the service account {spec.get('serviceAccountName')} (workload identity "
                   "for storage)")
                + (f" and the Secret {tls[0]} (ca.crt, tls.crt, tls.key: mutual TLS between "
                   "the pods)." if tls else
                   "; comms between the pods are plain TCP (rendered with --no-tls).")
                + " See deploy/README.md.")
    elif doc.get("kind") == "NetworkPolicy" and name.endswith("-scheduler"):
        text = ("Only this job's workers and runner reach the scheduler. The dashboard, from "
                "your machine:")
        command = f"  kubectl port-forward service/{name} {DASHBOARD_PORT}:{DASHBOARD_PORT}"
        after = (f"then open http://127.0.0.1:{DASHBOARD_PORT}/status. port-forward enters the "
                 "pod's own network namespace, which NetworkPolicies do not filter; other pods "
                 "reach the dashboard only from the namespaces given with render-k8s "
                 "--dashboard-from.")
        return "".join(f"# {line}\n" for line in [*textwrap.wrap(text, 96), command,
                                                    *textwrap.wrap(after, 96)])
    return "".join(f"# {line}\n" for line in textwrap.wrap(text, 96))


def dump_manifests(docs: list[dict[str, Any]]) -> str:
    """Multi-document YAML, each document preceded by its :func:`doc_comment`."""
    return "".join("---\n" + doc_comment(doc) + yaml.dump(doc, Dumper=_Dumper, sort_keys=False)
                   for doc in docs)
