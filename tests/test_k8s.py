"""Kubernetes manifests, checked offline: deploy/daskjob.yaml and every rendered DaskJob are
validated against the DaskJob CRD shipped in the installed dask-kubernetes package (its
``openAPIV3Schema``, translated to JSON Schema), and against the invariants the deployment
relies on (secrets only by reference, consistent worker resources, one image, a deliberate
restart policy, a cluster-internal scheduler service, a config without scheduler or secrets,
mutual TLS on every pod, no Kubernetes API token). The NetworkPolicies are validated against
the JSON Schema of the Kubernetes client's own generated ``networking.k8s.io/v1`` models plus
the API reference's field rules, and their effect is checked by evaluating them for the pods
the operator's own code builds from the DaskJob.
"""

from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path

import pytest
import yaml
from dask.utils import parse_bytes
from helpers import run_cli
from jsonschema import Draft7Validator, Draft202012Validator

from recluster.config import load_config, parse_config
from recluster.errors import ConfigError
from recluster.k8s import (
    TLS_DIR,
    WORKER_MEMORY_FRACTION,
    dump_manifests,
    render_configmap,
    render_daskjob,
    render_manifests,
    render_network_policies,
)
from recluster.parallel.client import SPAWN_ENV, WORKER_ENV

pytestmark = pytest.mark.timeout(120)

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
IMAGE = "registry.example.com/recluster:0.1.0"
SECRET_ENV_NAMES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                    "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"}
SECRET_LIKE = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL|^AWS_", re.I)
# Stand-ins for real credentials in the environment of whoever renders: must never show up.
SENTINEL_KEY = "AKIARENDERSENTINEL00"
SENTINEL_SECRET = "render-sentinel-secret-Hq2vX8"


# --- the CRD and its translation to JSON Schema --------------------------------------------

def find_daskjob_crd() -> tuple[Path, dict]:
    """The fully resolved DaskJob CRD in the installed dask-kubernetes package.

    The package ships the CRD twice: a template with ``$ref``s into other files
    (``operator/customresources/daskjob.yaml``) and the resolved one the Helm chart installs
    (``operator/deployment/helm/.../crds/daskjob.yaml``). Take the one without references.
    """
    spec = importlib.util.find_spec("dask_kubernetes")
    assert spec is not None and spec.origin, "dask-kubernetes is not installed"
    root = Path(spec.origin).parent
    for path in sorted(root.rglob("*daskjob*.y*ml")):
        text = path.read_text()
        if "$ref" in text:
            continue
        doc = yaml.safe_load(text)
        if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
            continue
        if doc["spec"]["names"]["kind"] != "DaskJob":
            continue
        for version in doc["spec"]["versions"]:
            if version["name"] == "v1":
                return path, version["schema"]["openAPIV3Schema"]
    raise AssertionError(f"no resolved DaskJob CRD under {root}")


_INT_BOUNDS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


def k8s_to_jsonschema(node: dict, root: bool = False) -> dict:
    """Translate a Kubernetes structural schema (OpenAPI v3 subset) into JSON Schema.

    - ``x-kubernetes-int-or-string: true`` and ``format: int-or-string`` (how the resolved CRD
      spells IntOrString) accept an integer or a string;
    - ``nullable: true`` also accepts null;
    - ``format: int32 / int64`` become bounds;
    - an object with ``properties`` and neither ``additionalProperties`` nor
      ``x-kubernetes-preserve-unknown-fields`` refuses unknown fields (what ``kubectl apply``'s
      strict field validation reports, instead of silently pruning them);
    - other ``x-kubernetes-*`` keys (list/map types) carry no validation here and are dropped;
    - at the root, ``apiVersion``, ``kind`` and ``metadata`` (implicit for every resource).
    """
    out: dict = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: k8s_to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = k8s_to_jsonschema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [k8s_to_jsonschema(sub) for sub in value]
        elif key.startswith("x-kubernetes-") or key in ("format", "nullable", "description"):
            continue
        else:
            out[key] = value
    fmt = node.get("format")
    if node.get("x-kubernetes-int-or-string") or fmt == "int-or-string":
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    elif fmt in _INT_BOUNDS and node.get("type") == "integer":
        out["minimum"], out["maximum"] = _INT_BOUNDS[fmt]
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        elif "anyOf" in out:
            out["anyOf"] = [*out["anyOf"], {"type": "null"}]
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    embedded = node.get("x-kubernetes-embedded-resource") or root
    if embedded:
        out.setdefault("properties", {}).update({
            "apiVersion": {"type": "string"}, "kind": {"type": "string"},
            "metadata": {"type": "object"}})
    if node.get("type") == "object" and "properties" in out and "additionalProperties" not in node \
            and not preserve:
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    _, schema = find_daskjob_crd()
    js = k8s_to_jsonschema(schema, root=True)
    js["required"] = sorted({*js.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    js["properties"]["apiVersion"] = {"const": "kubernetes.dask.org/v1"}
    js["properties"]["kind"] = {"const": "DaskJob"}
    js["properties"]["metadata"] = {
        "type": "object", "required": ["name"],
        "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                       "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                       "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}}
    Draft7Validator.check_schema(js)
    return Draft7Validator(js)


def errors(validator: Draft7Validator, doc: dict) -> list[str]:
    return [f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
            for e in validator.iter_errors(doc)]


# --- manifests under test --------------------------------------------------------------------

def example_config(tmp_path: Path, **extra) -> Path:
    data = {"input": {"path": "s3://lake/events/", "id_column": "user_id", "categorical": ["country"]},
            "output": {"path": "s3://lake/segments/run-1/"},
            "sample": {"size": 20000, "stratify_by": "country"},
            "runtime": {"scheduler": "tcp://somewhere-else:8786"}}
    data.update(extra)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def static_all() -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / "daskjob.yaml").read_text()) if d]


def static_docs() -> tuple[dict, dict]:
    docs = static_all()
    kinds = [d["kind"] for d in docs]
    assert kinds == ["DaskJob", "ConfigMap", *["NetworkPolicy"] * 3], kinds
    return docs[0], docs[1]


SIZES = [  # workers, worker_cpu, worker_memory_gib, secret, name
    (1, 1, 2.0, "s3-creds", "r"),
    (4, 2, 8.0, "recluster-s3", "recluster"),
    (16, 8, 61.5, "team.lake-creds", "segments-2026-05"),
    (3, 4, 4.3, "x", "a" * 37),
]


def rendered(tmp_path: Path, size, **options) -> tuple[dict, dict, list[dict]]:
    """DaskJob, ConfigMap and NetworkPolicies, read back from the YAML text."""
    cfg = load_config(example_config(tmp_path))
    workers, cpu, mem, secret, name = size
    docs = list(yaml.safe_load_all(dump_manifests(render_manifests(
        cfg, IMAGE, workers, cpu, mem, secret, name, **options))))
    assert [d["kind"] for d in docs] == ["DaskJob", "ConfigMap", *["NetworkPolicy"] * 3]
    return docs[0], docs[1], docs[2:]


def pods(job: dict) -> dict[str, dict]:
    spec = job["spec"]
    return {"runner": spec["job"]["spec"], "scheduler": spec["cluster"]["spec"]["scheduler"]["spec"],
            "worker": spec["cluster"]["spec"]["worker"]["spec"]}


def env_values(container: dict) -> dict[str, str]:
    return {v["name"]: v["value"] for v in container.get("env", []) if "value" in v}


def check_tls(job: dict, tls: bool) -> None:
    """With TLS every pod mounts the one TLS Secret read-only, the scheduler and workers are
    started with its files, every Dask process requires encryption, and the runner and the
    workers are pointed at a tls:// address. Without, nothing of it, and tcp:// addresses."""
    name = job["metadata"]["name"]
    by_role = containers(job)
    (sched,) = by_role["scheduler"]
    (worker,) = by_role["worker"]
    (runner,) = by_role["runner"]
    for role in ("runner", "worker"):
        (c,) = by_role[role]
        assert env_values(c)["DASK_SCHEDULER_ADDRESS"] == \
            f"{'tls' if tls else 'tcp'}://{name}-scheduler:8786"
    if not tls:
        for role, (c,) in by_role.items():
            assert not any("TLS" in k or "ENCRYPTION" in k for k in env_values(c)), role
            assert not any(a.startswith("--tls") for a in c.get("args", [])), role
        assert "tls" not in sched["args"]
        return
    assert arg_value(sched["args"], "--protocol") == "tls"
    secret_names = set()
    for role, pod in pods(job).items():
        (c,) = by_role[role]
        vols = {v["name"]: v for v in pod["volumes"]}
        (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == TLS_DIR]
        assert mount["readOnly"] is True
        secret = vols[mount["name"]]["secret"]
        secret_names.add(secret["secretName"])
        assert secret["defaultMode"] == 0o440
        env = env_values(c)
        assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
        dask_role = {"runner": "CLIENT", "scheduler": "SCHEDULER", "worker": "WORKER"}[role]
        files = [env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"],
                 env[f"DASK_DISTRIBUTED__COMM__TLS__{dask_role}__CERT"],
                 env[f"DASK_DISTRIBUTED__COMM__TLS__{dask_role}__KEY"]]
        if role != "runner":  # the dask CLIs get the same files as flags
            assert files == [arg_value(c["args"], f) for f in
                             ("--tls-ca-file", "--tls-cert", "--tls-key")]
        assert all(f.startswith(TLS_DIR + "/") for f in files)
        assert len(set(files)) == 3
    assert len(secret_names) == 1


def containers(job: dict) -> dict[str, list[dict]]:
    spec = job["spec"]
    pods = {"runner": spec["job"]["spec"], "scheduler": spec["cluster"]["spec"]["scheduler"]["spec"],
            "worker": spec["cluster"]["spec"]["worker"]["spec"]}
    return {role: pod["containers"] + pod.get("initContainers", []) for role, pod in pods.items()}


_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T|m)?$")
_FACTOR = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(q: str) -> float:
    """A Kubernetes resource quantity (the forms these manifests use) in base units."""
    m = _QUANTITY.match(q)
    assert m, f"not a Kubernetes quantity: {q!r}"
    return float(m.group(1)) * _FACTOR[m.group(2)]


def arg_value(args: list[str], flag: str) -> str:
    assert args.count(flag) == 1, f"{flag} must appear once in {args}"
    return args[args.index(flag) + 1]


def check_invariants(job: dict, cm: dict, image: str, secret: str | None = None,
                     tls: bool = True) -> None:
    name = job["metadata"]["name"]
    by_role = containers(job)
    # One image for runner, scheduler and workers.
    images = {c["image"] for cs in by_role.values() for c in cs}
    assert images == {image}

    # Credentials only by reference: every credential-like variable comes from a Secret, on
    # the runner and on the workers (which read S3 themselves); envFrom only from Secrets.
    secrets_used = set()
    for role, cs in by_role.items():
        for c in cs:
            for src in c.get("envFrom", []):
                assert set(src) <= {"secretRef", "prefix"}, (role, src)
                secrets_used.add(src["secretRef"]["name"])
            for var in c.get("env", []):
                if SECRET_LIKE.search(var["name"]) and "value" in var:
                    # Only the path of a file of the mounted TLS Secret, never key material.
                    assert var["name"].startswith("DASK_DISTRIBUTED__COMM__TLS__"), (role, var)
                    assert var["value"].startswith(TLS_DIR + "/"), (role, var)
                elif SECRET_LIKE.search(var["name"]):
                    ref = var["valueFrom"]["secretKeyRef"]
                    assert ref["key"] and ref["name"]
                    secrets_used.add(ref["name"])
        if role == "worker":
            # The allocator settings a local cluster's workers get (read at process start).
            (c,) = cs
            values = {v["name"]: v.get("value") for v in c.get("env", [])}
            assert {k: values.get(k) for k in {**WORKER_ENV, **SPAWN_ENV}} == {
                **WORKER_ENV, **SPAWN_ENV}, values
        if role in ("runner", "worker"):
            (c,) = cs
            refs = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in c.get("env", [])
                    if "valueFrom" in v and "secretKeyRef" in v["valueFrom"]}
            for required in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert required in refs, (role, required)
                assert not refs[required].get("optional", False)
            assert "AWS_ENDPOINT_URL" in refs and refs["AWS_ENDPOINT_URL"]["optional"] is True
    assert len(secrets_used) == 1
    if secret is not None:
        assert secrets_used == {secret}

    # No pod holds a Kubernetes API token: none needs the API, and code run on a worker
    # must not be able to use one.
    for pod in pods(job).values():
        assert pod["automountServiceAccountToken"] is False
    check_tls(job, tls)

    # Workers: requests = limits; --nthreads = CPU limit; --memory-limit <= container limit.
    (worker,) = by_role["worker"]
    res = worker["resources"]
    assert res["requests"] == res["limits"]
    for q in (*res["limits"].values(), *res["requests"].values()):
        assert isinstance(q, str), "quantities must be strings (the CRD types them so)"
    cpu = quantity(res["limits"]["cpu"])
    mem = quantity(res["limits"]["memory"])
    args = worker["args"]
    assert args[:2] == ["dask", "worker"]
    assert int(arg_value(args, "--nthreads")) == cpu
    assert arg_value(args, "--nworkers") == "1"
    dask_limit = parse_bytes(arg_value(args, "--memory-limit"))
    assert dask_limit <= mem
    assert dask_limit >= 0.8 * mem, "most of the container should be usable by Dask"
    assert abs(dask_limit - WORKER_MEMORY_FRACTION * mem) <= 2**20
    assert job["spec"]["cluster"]["spec"]["worker"]["replicas"] >= 1
    for role in ("runner", "scheduler"):
        (c,) = by_role[role]
        assert c["resources"]["requests"] == c["resources"]["limits"]
        assert {"cpu", "memory"} <= set(c["resources"]["limits"])

    # The runner: a deliberate restart policy, the CLI on the mounted config.
    runner_pod = job["spec"]["job"]["spec"]
    assert runner_pod.get("restartPolicy") in ("OnFailure", "Never")
    (runner,) = by_role["runner"]
    assert runner["args"] == ["recluster", "run", "/config/job.yaml", "--quiet"]
    (mount,) = [m for m in runner["volumeMounts"] if m["mountPath"] == "/config"]
    vols = {v["name"]: v for v in runner_pod["volumes"]}
    assert vols[mount["name"]]["configMap"]["name"] == cm["metadata"]["name"]

    # Non-root everywhere.
    for role in ("runner", "scheduler", "worker"):
        pod = job["spec"]["job"]["spec"] if role == "runner" else \
            job["spec"]["cluster"]["spec"][role]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0

    # The scheduler: 8786 and 8787, cluster-internal only.
    sched = job["spec"]["cluster"]["spec"]["scheduler"]
    svc = sched["service"]
    assert svc["type"] == "ClusterIP"
    assert {p["port"] for p in svc["ports"]} == {8786, 8787}
    assert all("nodePort" not in p for p in svc["ports"])
    for key in ("externalIPs", "loadBalancerIP", "loadBalancerSourceRanges", "externalName"):
        assert key not in svc
    assert svc["selector"] == {"dask.org/cluster-name": name, "dask.org/component": "scheduler"}
    (sc,) = sched["spec"]["containers"]
    named = {p["name"]: p["containerPort"] for p in sc["ports"]}
    for p in svc["ports"]:
        assert named[p["targetPort"]] == p["port"]

    # The config: loads, no scheduler (the runner gets DASK_SCHEDULER_ADDRESS), no secrets.
    assert cm["apiVersion"] == "v1" and cm["kind"] == "ConfigMap"
    assert set(cm["data"]) == {"job.yaml"}
    cfg = parse_config(yaml.safe_load(cm["data"]["job.yaml"]))
    assert cfg.runtime.scheduler is None
    assert "***" not in cm["data"]["job.yaml"]


# --- tests -----------------------------------------------------------------------------------

def test_crd_is_the_resolved_one_from_the_installed_package():
    path, schema = find_daskjob_crd()
    assert "dask_kubernetes" in path.parts and path.name == "daskjob.yaml"
    spec = schema["properties"]["spec"]
    assert set(spec["required"]) == {"cluster", "job"}
    worker = spec["properties"]["cluster"]["properties"]["spec"]["properties"]["worker"]
    assert "containers" in worker["properties"]["spec"]["properties"]  # a full PodSpec


def test_static_manifest_is_valid_against_the_crd(validator):
    job, _ = static_docs()
    assert errors(validator, job) == []


def test_static_manifest_invariants():
    job, cm = static_docs()
    check_invariants(job, cm, IMAGE, "recluster-s3")


def test_static_manifest_is_what_render_k8s_produces():
    job, cm = static_docs()
    cfg = parse_config(yaml.safe_load(cm["data"]["job.yaml"]))
    assert render_daskjob(cfg, IMAGE, 4, 2, 8.0, "recluster-s3", "recluster") == job
    docs = render_manifests(cfg, IMAGE, 4, 2, 8.0, "recluster-s3", "recluster")
    assert docs[2:] == static_all()[2:]  # the NetworkPolicies (the ConfigMap is a short example)


@pytest.mark.parametrize("size", SIZES, ids=[s[4][:12] for s in SIZES])
def test_rendered_manifests_are_valid_and_consistent(validator, tmp_path, size, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SENTINEL_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SENTINEL_SECRET)
    job, cm, policies = rendered(tmp_path, size)
    assert errors(validator, job) == []
    check_invariants(job, cm, IMAGE, size[3])
    for policy in policies:
        assert networkpolicy_errors(policy) == []
    workers, cpu, mem, _, name = size
    assert job["metadata"]["name"] == name and cm["metadata"]["name"] == f"{name}-config"
    assert job["spec"]["cluster"]["spec"]["worker"]["replicas"] == workers
    (worker,) = containers(job)["worker"]
    assert quantity(worker["resources"]["limits"]["cpu"]) == cpu
    assert quantity(worker["resources"]["limits"]["memory"]) <= mem * 2**30
    text = dump_manifests([job, cm, *policies])
    assert SENTINEL_KEY not in text and SENTINEL_SECRET not in text


def test_rendered_config_drops_the_scheduler_and_keeps_everything_else(tmp_path):
    cfg = load_config(example_config(tmp_path))
    assert cfg.runtime.scheduler == "tcp://somewhere-else:8786"
    cm = render_configmap(cfg, "run-1")
    back = parse_config(yaml.safe_load(cm["data"]["job.yaml"]))
    assert back.runtime.scheduler is None
    assert back.model_dump(exclude={"runtime"}) == cfg.model_dump(exclude={"runtime"})
    assert back.runtime.model_dump(exclude={"scheduler"}) == \
        cfg.runtime.model_dump(exclude={"scheduler"})


# The validation must be able to fail: each mutation breaks the schema in one place.
def _set(path: str, value):
    def mutate(doc):
        node = doc
        keys = path.split("/")
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        if value is _DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return mutate


_DELETE = object()
WORKER = "spec/cluster/spec/worker"
WORKER_C0 = f"{WORKER}/spec/containers/0"
BAD = {
    "replicas as string": (_set(f"{WORKER}/replicas", "4"), "replicas"),
    "cpu limit as integer": (_set(f"{WORKER_C0}/resources/limits/cpu", 2), "cpu"),
    "args not a list": (_set(f"{WORKER_C0}/args", "dask worker"), "args"),
    "containerPort as string": (_set("spec/cluster/spec/scheduler/spec/containers/0/ports/0/containerPort", "8786"), "containerPort"),
    "restartPolicy as integer": (_set("spec/job/spec/restartPolicy", 1), "restartPolicy"),
    "unknown field (typo)": (_set(f"{WORKER}/replica", 4), "replica"),
    "missing containers": (_set("spec/job/spec/containers", _DELETE), "containers"),
    "secretKeyRef optional as string": (_set(f"{WORKER_C0}/env/2/valueFrom/secretKeyRef/optional", "yes"), "optional"),
    "targetPort as list": (_set("spec/cluster/spec/scheduler/service/ports/0/targetPort", [8786]), "targetPort"),
    "wrong kind": (_set("kind", "DaskCluster"), "kind"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_validation_rejects_a_wrong_field(validator, case):
    job, _ = static_docs()
    assert errors(validator, job) == []
    mutate, field = BAD[case]
    bad = copy.deepcopy(job)
    mutate(bad)
    found = errors(validator, bad)
    assert found, f"{case}: accepted"
    assert any(field in e for e in found), found


@pytest.mark.parametrize("target", [8786, "tcp-comm"])
def test_int_or_string_fields_take_either(validator, target):
    job, _ = static_docs()
    job["spec"]["cluster"]["spec"]["scheduler"]["service"]["ports"][0]["targetPort"] = target
    assert errors(validator, job) == []


def test_x_kubernetes_int_or_string_translation():
    v = Draft7Validator(k8s_to_jsonschema({
        "type": "object", "properties": {"port": {"x-kubernetes-int-or-string": True},
                                         "n": {"type": "integer", "format": "int32"},
                                         "free": {"type": "object",
                                                  "x-kubernetes-preserve-unknown-fields": True,
                                                  "properties": {"a": {"type": "string"}}}}}))
    for ok in ({"port": 80}, {"port": "http"}, {"n": 2**31 - 1}, {"free": {"a": "x", "b": 1}}):
        assert not list(v.iter_errors(ok)), ok
    for bad in ({"port": 1.5}, {"port": None}, {"port": [80]}, {"n": 2**31}, {"n": "1"},
                {"other": 1}, {"free": {"a": 1}}):
        assert list(v.iter_errors(bad)), bad


def test_render_k8s_cli_prints_both_documents(tmp_path, capsys):
    cfg = example_config(tmp_path)
    code = run_cli("render-k8s", cfg, "--set", "sample.size=30000", "--image", IMAGE,
                   "--workers", "3", "--worker-cpu", "4", "--worker-memory-gib", "16",
                   "--secret", "lake-creds", "--name", "seg-run")
    out = capsys.readouterr().out
    assert code == 0
    job, cm, *policies = [d for d in yaml.safe_load_all(out) if d]
    assert job["kind"] == "DaskJob" and cm["kind"] == "ConfigMap"
    assert [p["metadata"]["name"] for p in policies] == \
        ["seg-run-scheduler", "seg-run-worker", "seg-run-runner"]
    assert "kubectl port-forward service/seg-run-scheduler 8787:8787" in out.split(
        "kind: NetworkPolicy")[0]  # the comment above the scheduler's policy
    check_invariants(job, cm, IMAGE, "lake-creds")
    (worker,) = containers(job)["worker"]
    assert worker["args"][worker["args"].index("--nthreads") + 1] == "4"
    assert worker["resources"]["limits"] == {"cpu": "4", "memory": "16384Mi"}
    assert parse_bytes(arg_value(worker["args"], "--memory-limit")) == int(16384 * 0.9) * 2**20
    config = parse_config(yaml.safe_load(cm["data"]["job.yaml"]))
    assert config.sample.size == 30000 and config.runtime.scheduler is None
    assert "&id" not in out and "*id" not in out  # no YAML aliases for people to untangle


@pytest.mark.parametrize("args,message", [
    (["--worker-memory-gib", "1"], "--worker-memory-gib 1 is too small"),
    (["--worker-cpu", "8", "--worker-memory-gib", "6"], "need at least 8 GiB"),
    (["--worker-cpu", "0"], "--worker-cpu must be a whole number >= 1"),
    (["--workers", "0"], "--workers must be a whole number >= 1"),
    (["--name", "Run_1"], "--name 'Run_1' must be a lowercase DNS label"),
    (["--name", "a" * 38], "at most 37 characters"),
    (["--secret", "my secret"], "--secret 'my secret' is not a valid"),
], ids=["memory", "memory-per-thread", "cpu", "workers", "name", "name-length", "secret"])
def test_render_k8s_refuses_bad_arguments(tmp_path, capsys, args, message):
    code = run_cli("render-k8s", example_config(tmp_path), "--image", IMAGE, *args)
    captured = capsys.readouterr()
    assert code == ConfigError.exit_code
    assert message in captured.err
    assert captured.out == ""


@pytest.mark.parametrize("image", ["recluster", "registry.example.com:5000/recluster",
                                   "recluster:latest", ""])
def test_render_k8s_wants_a_pinned_image(tmp_path, capsys, image):
    assert run_cli("render-k8s", example_config(tmp_path), "--image", image) == 2
    assert "--image" in capsys.readouterr().err


@pytest.mark.parametrize("image", ["recluster:0.1.0", "registry.example.com:5000/team/recluster:0.1.0",
                                   "recluster@sha256:" + "a" * 64])
def test_render_k8s_takes_tags_and_digests(tmp_path, capsys, image):
    assert run_cli("render-k8s", example_config(tmp_path), "--image", image) == 0
    job, *_ = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert {c["image"] for cs in containers(job).values() for c in cs} == {image}


def test_render_k8s_refuses_local_paths(tmp_path, capsys):
    cfg = example_config(tmp_path, input={"path": str(tmp_path / "in"), "id_column": "user_id"})
    assert run_cli("render-k8s", cfg, "--image", IMAGE) == 2
    assert "input.path" in capsys.readouterr().err


def test_render_k8s_never_sees_credentials_in_the_config(tmp_path, capsys):
    cfg = example_config(tmp_path, input={"path": "s3://lake/events/", "id_column": "user_id",
                                          "storage_options": {"secret": "abc"}})
    assert run_cli("render-k8s", cfg, "--image", IMAGE) == 2
    captured = capsys.readouterr()
    assert "must not hold credentials" in captured.err
    assert captured.out == "" and "abc" not in captured.err


# --- NetworkPolicy: the Kubernetes client's schema + the API reference's field rules ---------

@pytest.fixture(scope="module")
def np_schema_validator() -> Draft202012Validator:
    return _np_validator()


def _np_validator() -> Draft202012Validator:
    """JSON Schema of ``networking.k8s.io/v1`` NetworkPolicy from the pinned ``kubernetes``
    client: its models are generated from the Kubernetes OpenAPI document as pydantic models
    that forbid unknown fields, so their JSON Schema types every field and refuses typos."""
    from kubernetes.client.models import V1NetworkPolicy

    js = V1NetworkPolicy.model_json_schema(by_alias=True, mode="validation")
    js["properties"]["apiVersion"] = {"const": "networking.k8s.io/v1"}
    js["properties"]["kind"] = {"const": "NetworkPolicy"}
    js["required"] = sorted({*js.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    Draft202012Validator.check_schema(js)
    return Draft202012Validator(js)


_NP_VALIDATOR: list[Draft202012Validator] = []
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_IANA_SVC = re.compile(r"^(?=.*[a-z])[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _label_key_problems(key: str) -> list[str]:
    prefix, _, name = key.rpartition("/")
    bad = []
    if prefix and (len(prefix) > 253 or not _DNS1123.match(prefix)):
        bad.append(f"label key prefix {prefix!r}")
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        bad.append(f"label key {key!r}")
    return bad


def _selector_problems(sel: dict, where: str) -> list[str]:
    bad = []
    for k, v in (sel.get("matchLabels") or {}).items():
        bad += [f"{where}: {p}" for p in _label_key_problems(k)]
        if not isinstance(v, str) or len(v) > 63 or (v and not _LABEL_NAME.match(v)):
            bad.append(f"{where}: label value {v!r}")
    for req in sel.get("matchExpressions") or []:
        op, values = req.get("operator"), req.get("values") or []
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            bad.append(f"{where}: operator {op!r}")
        elif (op in ("In", "NotIn")) != bool(values):
            bad.append(f"{where}: operator {op} with values {values}")
    return bad


def networkpolicy_errors(doc: dict) -> list[str]:
    """Schema errors, then the rules of the API reference the schema cannot express (what the
    API server's validation refuses): names, label syntax, policy types, protocols, port
    ranges and names, endPort, and which peer fields combine."""
    import ipaddress

    if not _NP_VALIDATOR:
        _NP_VALIDATOR.append(_np_validator())
    found = [f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
             for e in _NP_VALIDATOR[0].iter_errors(doc)]
    if found:
        return found
    name = doc["metadata"].get("name") or ""
    if len(name) > 253 or not _DNS1123.match(name):
        found.append(f"metadata/name: {name!r} is not a DNS subdomain")
    for k in (doc["metadata"].get("labels") or {}):
        found += [f"metadata/labels: {p}" for p in _label_key_problems(k)]
    spec = doc["spec"]
    found += _selector_problems(spec.get("podSelector") or {}, "spec/podSelector")
    types = spec.get("policyTypes") or []
    if not set(types) <= {"Ingress", "Egress"} or len(set(types)) != len(types):
        found.append(f"spec/policyTypes: {types}")
    for direction, peers_key in (("ingress", "from"), ("egress", "to")):
        for i, rule in enumerate(spec.get(direction) or []):
            where = f"spec/{direction}/{i}"
            for port in rule.get("ports") or []:
                proto, p, end = port.get("protocol", "TCP"), port.get("port"), port.get("endPort")
                if proto not in ("TCP", "UDP", "SCTP"):
                    found.append(f"{where}/ports: protocol {proto!r}")
                if isinstance(p, int) and not 1 <= p <= 65535:
                    found.append(f"{where}/ports: port {p} out of range")
                if isinstance(p, str) and (len(p) > 15 or not _IANA_SVC.match(p)):
                    found.append(f"{where}/ports: port name {p!r}")
                if end is not None and not (isinstance(p, int) and p <= end <= 65535):
                    found.append(f"{where}/ports: endPort {end} needs a numeric port <= it")
            for j, peer in enumerate(rule.get(peers_key) or []):
                pw = f"{where}/{peers_key}/{j}"
                keys = {k for k, v in peer.items() if v is not None}
                if not keys:
                    found.append(f"{pw}: empty peer")
                if "ipBlock" in keys:
                    if keys != {"ipBlock"}:
                        found.append(f"{pw}: ipBlock cannot be combined with selectors")
                    try:
                        ipaddress.ip_network(peer["ipBlock"]["cidr"])
                    except ValueError:
                        found.append(f"{pw}: cidr {peer['ipBlock']['cidr']!r}")
                for sel in ("podSelector", "namespaceSelector"):
                    if sel in keys:
                        found += _selector_problems(peer[sel], f"{pw}/{sel}")
    return found


def _policy_docs() -> list[dict]:
    return static_all()[2:]


def _sched_rule(doc: dict, i: int) -> dict:
    return doc["spec"]["ingress"][i]


def _pod_labels(doc: dict) -> dict:
    return doc["spec"]["podSelector"]["matchLabels"]


# Each mutation breaks the scheduler's policy in one place: first what the client's schema
# catches, then what only the API reference's rules catch.
NP_BAD = {
    "unknown field": (lambda d: d["spec"].update(ingres=[]), "ingres"),
    "port as list": (lambda d: _sched_rule(d, 1)["ports"][0].update(port=[8786]), "port"),
    "ingress not a list": (lambda d: d["spec"].update(ingress={"from": []}), "ingress"),
    "wrong apiVersion": (lambda d: d.update(apiVersion="extensions/v1beta1"), "apiVersion"),
    "matchLabels value as int": (lambda d: _pod_labels(d).update({"dask.org/component": 1}),
                                 "matchLabels"),
    "policy type": (lambda d: d["spec"].update(policyTypes=["Inbound"]), "policyTypes"),
    "protocol": (lambda d: _sched_rule(d, 1)["ports"][0].update(protocol="HTTP"), "protocol"),
    "port out of range": (lambda d: _sched_rule(d, 1)["ports"][0].update(port=70000),
                          "out of range"),
    "endPort with named port": (lambda d: _sched_rule(d, 1)["ports"][0].update(
        port="tcp-comm", endPort=9000), "endPort"),
    "bad label value": (lambda d: _pod_labels(d).update({"dask.org/component": "job runner"}),
                        "label value"),
    "ipBlock with selector": (lambda d: _sched_rule(d, 0)["from"][0].update(
        ipBlock={"cidr": "10.0.0.0/8"}), "ipBlock"),
    "bad cidr": (lambda d: _sched_rule(d, 0)["from"].__setitem__(
        0, {"ipBlock": {"cidr": "10.0.0.300/8"}}), "cidr"),
    "bad operator": (lambda d: d["spec"]["podSelector"].update(
        matchExpressions=[{"key": "a", "operator": "Equals", "values": ["b"]}]), "operator"),
    "name": (lambda d: d["metadata"].update(name="Scheduler_Policy"), "DNS subdomain"),
}


def test_static_network_policies_are_valid():
    for doc in _policy_docs():
        assert networkpolicy_errors(doc) == [], doc["metadata"]["name"]


@pytest.mark.parametrize("case", sorted(NP_BAD))
def test_network_policy_validation_rejects_a_wrong_field(case):
    doc = copy.deepcopy(_policy_docs()[0])
    assert networkpolicy_errors(doc) == []
    NP_BAD[case][0](doc)
    found = networkpolicy_errors(doc)
    assert found, f"{case}: accepted"
    assert any(NP_BAD[case][1] in e for e in found), found


# --- what the policies let through, for the pods the operator builds -------------------------

NAMESPACE = "team"


def operator_pods(job: dict) -> dict[str, dict]:
    """The pods dask-kubernetes' controller creates for this DaskJob (its own functions)."""
    from dask_kubernetes.operator.controller.controller import (
        build_job_pod_spec,
        build_scheduler_deployment_spec,
        build_worker_deployment_spec,
    )

    name = job["metadata"]["name"]
    labels = dict(job["metadata"]["labels"])
    spec = job["spec"]
    cluster = spec["cluster"]["spec"]
    return {
        "runner": build_job_pod_spec(name, name, NAMESPACE, spec["job"]["spec"], {},
                                     {**labels, **spec["job"]["metadata"]["labels"]}),
        "scheduler": build_scheduler_deployment_spec(
            name, cluster["scheduler"]["spec"], {},
            {**labels, **cluster["scheduler"]["metadata"]["labels"]})["spec"]["template"],
        "worker": build_worker_deployment_spec(
            f"{name}-default", NAMESPACE, name, "0123456789", cluster["worker"]["spec"], {},
            {**labels, **cluster["worker"]["metadata"]["labels"]})["spec"]["template"],
    }


def _selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for req in selector.get("matchExpressions") or []:
        has, value = req["key"] in labels, labels.get(req["key"])
        ok = {"In": has and value in req.get("values", []),
              "NotIn": not has or value not in req.get("values", []),
              "Exists": has, "DoesNotExist": not has}[req["operator"]]
        if not ok:
            return False
    return True


def admitted(policies: list[dict], target: dict, source: dict, port: int) -> bool:
    """NetworkPolicy ingress semantics for pods ``{"labels": ..., "namespace": ...}``: a pod
    no policy selects admits everything; otherwise a connection needs one rule (of any
    selecting policy) whose peers and ports both match. Namespaces carry the label
    ``kubernetes.io/metadata.name`` (set by Kubernetes since 1.21)."""
    selecting = [p for p in policies if p["metadata"].get("namespace", NAMESPACE) ==
                 target["namespace"] and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
                 and _selects(p["spec"].get("podSelector") or {}, target["labels"])]
    if not selecting:
        return True
    ns_labels = {"kubernetes.io/metadata.name": source["namespace"]}
    for policy in selecting:
        for rule in policy["spec"].get("ingress") or []:
            ports = rule.get("ports") or []
            if ports and not any(p.get("protocol", "TCP") == "TCP" and p.get("port") in (None, port)
                                 for p in ports):
                continue
            peers = rule.get("from") or []
            if not peers:
                return True
            for peer in peers:
                pod_sel, ns_sel = peer.get("podSelector"), peer.get("namespaceSelector")
                if ns_sel is None and source["namespace"] != target["namespace"]:
                    continue
                if ns_sel is not None and not _selects(ns_sel, ns_labels):
                    continue
                if pod_sel is not None and not _selects(pod_sel, source["labels"]):
                    continue
                return True
    return False


def _reach_table(policies: list[dict], job: dict) -> dict[tuple[str, str, int], bool]:
    own = {role: {"labels": pod["metadata"]["labels"], "namespace": NAMESPACE}
           for role, pod in operator_pods(job).items()}
    other_job = {"labels": {**own["worker"]["labels"], "dask.org/cluster-name": "other-job"},
                 "namespace": NAMESPACE}
    sources = {**own, "notebook": {"labels": {"app": "notebook"}, "namespace": NAMESPACE},
               "other-job-worker": other_job,
               "monitoring": {"labels": {"app": "prometheus"}, "namespace": "monitoring"},
               "other-namespace-worker": {**own["worker"], "namespace": "elsewhere"}}
    table = {}
    for target in ("scheduler", "worker", "runner"):
        for port in (8786, 8787, 41234):  # comm, dashboard, a random (worker / XGBoost) port
            for name, src in sources.items():
                if name != target:
                    table[(name, target, port)] = admitted(policies, own[target], src, port)
    return table


def _expected(dashboard_from: tuple[str, ...]) -> dict[tuple[str, str, int], bool]:
    allowed = {("worker", "scheduler", p) for p in (8786, 8787, 41234)}
    allowed |= {("runner", "scheduler", 8786)}
    allowed |= {(src, "worker", p) for src in ("scheduler", "runner") for p in (8786, 8787, 41234)}
    allowed |= {("monitoring", "scheduler", 8787)} if "monitoring" in dashboard_from else set()
    return allowed


@pytest.mark.parametrize("dashboard_from", [(), ("monitoring",)], ids=["default", "opt-in"])
def test_only_the_jobs_own_pods_reach_scheduler_and_workers(tmp_path, dashboard_from):
    job, _, policies = rendered(tmp_path, SIZES[1], dashboard_from=list(dashboard_from))
    table = _reach_table(policies, job)
    assert {k for k, ok in table.items() if ok} == _expected(dashboard_from)
    # The evaluation can fail: without the policies every pod reaches everything.
    assert all(_reach_table([], job).values())


def test_operator_keeps_the_tls_address_and_the_identity(tmp_path):
    job, _, _ = rendered(tmp_path, (4, 2, 8.0, None, "recluster"), service_account="lake-reader")
    made = operator_pods(job)
    for role in ("runner", "worker"):
        (c,) = made[role]["spec"]["containers"]
        addresses = [v["value"] for v in c["env"] if v["name"] == "DASK_SCHEDULER_ADDRESS"]
        assert addresses == ["tls://recluster-scheduler:8786"], role  # not the operator's tcp://
        assert made[role]["spec"]["serviceAccountName"] == "lake-reader"
    assert "serviceAccountName" not in made["scheduler"]["spec"]


# --- TLS, workload identity, opt-outs ---------------------------------------------------------

def test_service_account_replaces_the_key_secret(validator, tmp_path, capsys):
    code = run_cli("render-k8s", example_config(tmp_path), "--image", IMAGE,
                   "--service-account", "lake-reader")
    out = capsys.readouterr().out
    assert code == 0
    job, cm, *policies = [d for d in yaml.safe_load_all(out) if d]
    assert errors(validator, job) == []
    assert "AWS_" not in out and "secretKeyRef" not in out
    p = pods(job)
    assert p["runner"]["serviceAccountName"] == p["worker"]["serviceAccountName"] == "lake-reader"
    assert "serviceAccountName" not in p["scheduler"]
    assert all(pod["automountServiceAccountToken"] is False for pod in p.values())
    check_tls(job, tls=True)
    assert "service account lake-reader" in out.split("apiVersion")[0]


def test_no_tls_renders_plain_tcp_everywhere(validator, tmp_path):
    job, cm, policies = rendered(tmp_path, SIZES[1], tls_secret=None)
    assert errors(validator, job) == []
    check_invariants(job, cm, IMAGE, "recluster-s3", tls=False)
    assert all("volumes" not in pods(job)[r] for r in ("scheduler", "worker"))
    assert len(policies) == 3  # the policies do not depend on TLS


def _env_of(job: dict, role: str, var: str) -> dict:
    (entry,) = [v for v in pods(job)[role]["containers"][0]["env"] if v["name"] == var]
    return entry


TLS_BAD = {
    "scheduler without require-encryption": lambda j: _env_of(
        j, "scheduler", "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION").update(value="False"),
    "runner on tcp://": lambda j: _env_of(j, "runner", "DASK_SCHEDULER_ADDRESS").update(
        value="tcp://recluster-scheduler:8786"),
    "world-readable key": lambda j: pods(j)["worker"]["volumes"][0]["secret"].update(
        defaultMode=0o644),
    "worker flag and config disagree": lambda j: pods(j)["worker"]["containers"][0]["args"]
    .__setitem__(-1, "/etc/recluster/tls/other.key"),
    "scheduler on tcp": lambda j: pods(j)["scheduler"]["containers"][0]["args"].__setitem__(
        3, "tcp"),
}


@pytest.mark.parametrize("case", sorted(TLS_BAD))
def test_check_tls_can_fail(tmp_path, case):
    job, _, _ = rendered(tmp_path, SIZES[1])
    check_tls(job, tls=True)
    TLS_BAD[case](job)
    with pytest.raises(AssertionError):
        check_tls(job, tls=True)


@pytest.mark.parametrize("args,message", [
    (["--secret", "s3-creds", "--service-account", "lake-reader"], "are alternatives"),
    (["--service-account", "Lake_Reader"], "--service-account 'Lake_Reader' is not"),
    (["--tls-secret", "TLS certs"], "--tls-secret 'TLS certs' is not"),
    (["--dashboard-from", "Monitoring"], "--dashboard-from 'Monitoring' is not"),
], ids=["both", "account-name", "tls-secret-name", "namespace"])
def test_render_k8s_refuses_bad_security_arguments(tmp_path, capsys, args, message):
    code = run_cli("render-k8s", example_config(tmp_path), "--image", IMAGE, *args)
    captured = capsys.readouterr()
    assert code == ConfigError.exit_code
    assert message in captured.err and captured.out == ""


def test_network_policies_follow_the_job_name():
    names = [p["metadata"]["name"] for p in render_network_policies("seg-7", ["monitoring"])]
    assert names == ["seg-7-scheduler", "seg-7-worker", "seg-7-runner"]
    for p in render_network_policies("seg-7", ["monitoring"]):
        assert networkpolicy_errors(p) == []
        assert p["spec"]["podSelector"]["matchLabels"]["dask.org/cluster-name"] == "seg-7"
