"""Kubernetes manifests, checked offline: deploy/daskjob.yaml and every rendered DaskJob are
validated against the DaskJob CRD shipped in the installed dask-kubernetes package (its
``openAPIV3Schema``, translated to JSON Schema), and against the invariants the deployment
relies on (secrets only by reference, consistent worker resources, one image, a deliberate
restart policy, a cluster-internal scheduler service, a config without scheduler or secrets).
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
from jsonschema import Draft7Validator

from recluster.config import load_config, parse_config
from recluster.errors import ConfigError
from recluster.k8s import (
    WORKER_MEMORY_FRACTION,
    dump_manifests,
    render_configmap,
    render_daskjob,
    render_manifests,
)

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


def static_docs() -> tuple[dict, dict]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "daskjob.yaml").read_text()) if d]
    kinds = [d["kind"] for d in docs]
    assert sorted(kinds) == ["ConfigMap", "DaskJob"], kinds
    by_kind = {d["kind"]: d for d in docs}
    return by_kind["DaskJob"], by_kind["ConfigMap"]


SIZES = [  # workers, worker_cpu, worker_memory_gib, secret, name
    (1, 1, 2.0, "s3-creds", "r"),
    (4, 2, 8.0, "recluster-s3", "recluster"),
    (16, 8, 61.5, "team.lake-creds", "segments-2026-05"),
    (3, 4, 4.3, "x", "a" * 37),
]


def rendered(tmp_path: Path, size) -> tuple[dict, dict]:
    cfg = load_config(example_config(tmp_path))
    workers, cpu, mem, secret, name = size
    docs = yaml.safe_load_all(dump_manifests(render_manifests(cfg, IMAGE, workers, cpu, mem,
                                                              secret, name)))
    job, cm = list(docs)
    return job, cm


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


def check_invariants(job: dict, cm: dict, image: str, secret: str | None = None) -> None:
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
                if SECRET_LIKE.search(var["name"]):
                    assert "value" not in var, (role, var["name"])
                    ref = var["valueFrom"]["secretKeyRef"]
                    assert ref["key"] and ref["name"]
                    secrets_used.add(ref["name"])
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
    (mount,) = runner["volumeMounts"]
    assert mount["mountPath"] == "/config"
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


@pytest.mark.parametrize("size", SIZES, ids=[s[4][:12] for s in SIZES])
def test_rendered_manifests_are_valid_and_consistent(validator, tmp_path, size, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SENTINEL_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SENTINEL_SECRET)
    job, cm = rendered(tmp_path, size)
    assert errors(validator, job) == []
    check_invariants(job, cm, IMAGE, size[3])
    workers, cpu, mem, _, name = size
    assert job["metadata"]["name"] == name and cm["metadata"]["name"] == f"{name}-config"
    assert job["spec"]["cluster"]["spec"]["worker"]["replicas"] == workers
    (worker,) = containers(job)["worker"]
    assert quantity(worker["resources"]["limits"]["cpu"]) == cpu
    assert quantity(worker["resources"]["limits"]["memory"]) <= mem * 2**30
    text = dump_manifests([job, cm])
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
    job, cm = [d for d in yaml.safe_load_all(out) if d]
    assert job["kind"] == "DaskJob" and cm["kind"] == "ConfigMap"
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
    job, _ = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
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
