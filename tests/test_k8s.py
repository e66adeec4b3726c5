"""k8s/: the KubeRay manifests, checked offline, and the README's "Running on Kubernetes" commands.

No Kubernetes cluster is reachable from the test machines. Every RayJob and RayCluster document in
k8s/*.yaml is therefore validated against the openAPIV3Schema that the API server applies to it: the
KubeRay operator's CRDs, copied unchanged into ../shared/kuberay/ (its README says which release).
The schema is OpenAPI v3 with Kubernetes extensions, which plain jsonschema ignores. Here they are
enforced the way the API server enforces them on `kubectl apply` (strict field validation, kubectl's
default):

- unknown fields are errors: every object schema that lists its properties is closed
  (additionalProperties: false) unless it carries x-kubernetes-preserve-unknown-fields;
- x-kubernetes-list-type: set and map (keyed by x-kubernetes-list-map-keys, with the keys' defaults)
  reject duplicate items and duplicate keys;
- x-kubernetes-int-or-string: the schemas pair it with anyOf [integer, string] (checked by jsonschema,
  as is the quantity pattern beside it); a bare one is checked here too;
- format int32 / int64 / date-time, and nullable;
- x-kubernetes-validations: the CEL rules of these CRDs are re-stated in Python (CEL_RULES). Transition
  rules (those that read oldSelf) apply to updates only and are skipped on create; a rule not in the
  table fails the check instead of passing unchecked;
- x-kubernetes-map-type only says how server-side apply merges a map: no constraint on one object.

test_crd_schemas_use_only_what_the_validator_enforces fails when a new CRD brings a keyword, extension,
format or CEL rule that the validator does not know. The root metadata, which the CRDs leave open, is
checked by hand with the name rules of KubeRay's own validation (DNS-1035 labels, length limits), and a
few of the operator's cross-field rules (ray-operator/controllers/ray/utils/validation.go) are checked
too. Other documents (PersistentVolumeClaim, Pod, Service) get a minimal structural check.

The tests skip where ../shared/kuberay/ is absent (a user's clone has no shared/); the checks of the
project's own properties (exposure, versions, mounts, the entrypoint, the README) run everywhere.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import io
import re
import shlex
import tomllib
from datetime import datetime
from pathlib import Path, PurePosixPath

import jsonschema
import pytest
import yaml
from jsonschema.exceptions import ValidationError
from packaging.requirements import Requirement
from packaging.version import Version

from raybench.sweep import parse_args

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
DOCKERFILE = K8S / "Dockerfile"
README = ROOT / "README.md"
PYPROJECT = ROOT / "pyproject.toml"
CRD_DIR = ROOT.parent / "shared" / "kuberay"
CRD_FILES = {"RayJob": "ray.io_rayjobs.yaml", "RayCluster": "ray.io_rayclusters.yaml"}
SWEEP_COMMAND = ["python", "-m", "raybench.sweep"]
GPU = "nvidia.com/gpu"

needs_crds = pytest.mark.skipif(
    not CRD_DIR.is_dir(),
    reason=f"{CRD_DIR} is absent (only the project's shared folder has the KubeRay CRD schemas; a user's clone "
           "has no ../shared/): the manifests cannot be validated against them offline")


# --- the manifests --------------------------------------------------------------------------------

def load_documents() -> list[tuple[str, dict]]:
    """Every non-empty YAML document in k8s/*.yaml, named file#index."""
    return [(f"{path.name}#{i}", doc)
            for path in sorted(K8S.glob("*.yaml"))
            for i, doc in enumerate(yaml.safe_load_all(path.read_text()))
            if doc is not None]


DOCS = load_documents()
RAY_DOCS = [pytest.param(doc, id=f"{where}-{doc['kind']}") for where, doc in DOCS if doc.get("kind") in CRD_FILES]


def only(kind: str) -> dict:
    found = [doc for _, doc in DOCS if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} document in k8s/*.yaml, found {len(found)}"
    return found[0]


def ray_cluster_specs(doc: dict) -> list[dict]:
    if doc.get("kind") == "RayCluster":
        return [doc["spec"]]
    if doc.get("kind") == "RayJob" and "rayClusterSpec" in doc["spec"]:
        return [doc["spec"]["rayClusterSpec"]]
    return []


def ray_pod_templates(doc: dict) -> list[tuple[str, dict]]:
    """(group, pod template) of every Ray pod: the head and each worker group."""
    out = []
    for spec in ray_cluster_specs(doc):
        out.append(("head", spec["headGroupSpec"]["template"]))
        out += [(f"worker group {g['groupName']}", g["template"]) for g in spec.get("workerGroupSpecs", [])]
    return out


def pod_specs(doc: dict) -> list[tuple[str, dict]]:
    """Every pod spec a document creates: Ray pods, the RayJob's submitter, a plain Pod."""
    out = [(where, tpl["spec"]) for where, tpl in ray_pod_templates(doc)]
    if doc.get("kind") == "RayJob" and "submitterPodTemplate" in doc["spec"]:
        out.append(("submitter", doc["spec"]["submitterPodTemplate"]["spec"]))
    if doc.get("kind") == "Pod":
        out.append((doc["metadata"]["name"], doc["spec"]))
    return out


def containers(pod_spec: dict) -> list[dict]:
    return pod_spec.get("initContainers", []) + pod_spec["containers"]


_SUFFIX = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(q: int | float | str) -> float:
    """A Kubernetes quantity ("500m", "16Gi", 4) as a number."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti|)", str(q))
    assert m, f"not a quantity this test reads: {q!r}"
    return float(m[1]) * _SUFFIX[m[2]]


def under(path: str, folder: str) -> bool:
    return PurePosixPath(path).is_relative_to(PurePosixPath(folder))


def sweep_args(argv: list[str]):
    """The sweep CLI's own parse of a `python -m raybench.sweep ...` command line."""
    assert argv[:3] == SWEEP_COMMAND, f"not a sweep command: {shlex.join(argv)}"
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parse_args(argv[3:])
    except SystemExit:
        raise AssertionError(f"{shlex.join(argv)}: the sweep's parser refuses it: {err.getvalue().strip()}") from None


# --- the validator --------------------------------------------------------------------------------

# CEL rules (x-kubernetes-validations) of the CRDs, re-stated; rules reading oldSelf are skipped on create.
CEL_RULES = {
    "self in ['ray.io/kuberay-operator', 'kueue.x-k8s.io/multikueue']":
        lambda s: s in ("ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"),
    "!(has(self.jobStatus) && has(self.jobDeploymentStatus))":
        lambda s: not ("jobStatus" in s and "jobDeploymentStatus" in s),
    "has(self.jobStatus) || has(self.jobDeploymentStatus)":
        lambda s: "jobStatus" in s or "jobDeploymentStatus" in s,
    "!((has(self.onSuccess) || has(self.onFailure)) && has(self.deletionRules))":
        lambda s: not (("onSuccess" in s or "onFailure" in s) and "deletionRules" in s),
    "((has(self.onSuccess) && has(self.onFailure)) || has(self.deletionRules))":
        lambda s: ("onSuccess" in s and "onFailure" in s) or "deletionRules" in s,
}
# Extensions and annotations the validator enforces or knowingly leaves alone (see the docstring).
EXTENSIONS = {"x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-int-or-string",
              "x-kubernetes-validations", "x-kubernetes-map-type", "x-kubernetes-preserve-unknown-fields"}
ANNOTATIONS = {"description", "default", "nullable", "example", "title"}

_draft4_type = jsonschema.Draft4Validator.VALIDATORS["type"]


def _type(validator, types, instance, schema):
    if instance is None and schema.get("nullable"):
        return
    yield from _draft4_type(validator, types, instance, schema)


def _list_type(validator, list_type, instance, schema):
    if not validator.is_type(instance, "array"):
        return
    if list_type == "set":
        for i, item in enumerate(instance):
            if item in instance[:i]:
                yield ValidationError(f"item {i} {item!r} is a duplicate (x-kubernetes-list-type: set)")
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        props = schema.get("items", {}).get("properties", {})
        seen: dict[tuple, int] = {}
        for i, item in enumerate(instance):
            if not isinstance(item, dict):
                continue
            key = tuple(item.get(k, props.get(k, {}).get("default")) for k in keys)
            if key in seen:
                named = dict(zip(keys, key, strict=True))
                yield ValidationError(f"items {seen[key]} and {i} have the same key {named} "
                                      "(x-kubernetes-list-type: map)")
            seen.setdefault(key, i)
    elif list_type != "atomic":
        yield ValidationError(f"unknown x-kubernetes-list-type {list_type!r}")


def _int_or_string(validator, value, instance, schema):
    if value and not (validator.is_type(instance, "integer") or validator.is_type(instance, "string")):
        yield ValidationError(f"{instance!r} is neither an integer nor a string (x-kubernetes-int-or-string)")


def _cel(validator, rules, instance, schema):
    for rule in rules:
        text = rule["rule"]
        if "oldSelf" in text:
            continue  # a transition rule: the API server evaluates it on updates only
        check = CEL_RULES.get(text)
        if check is None:
            yield ValidationError(f"CEL rule {text!r} is not re-stated in tests/test_k8s.py CEL_RULES, "
                                  "so it cannot be checked offline")
        elif not check(instance):
            yield ValidationError(f"{rule.get('message', text)} (CEL: {text})")


KubeValidator = jsonschema.validators.extend(jsonschema.Draft4Validator, {
    "type": _type,
    "x-kubernetes-list-type": _list_type,
    "x-kubernetes-int-or-string": _int_or_string,
    "x-kubernetes-validations": _cel,
})

FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("int32")
def _int32(value) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@FORMATS.checks("int64")
def _int64(value) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value) -> bool:
    return not isinstance(value, str) or bool(datetime.fromisoformat(value.replace("Z", "+00:00")))


def schema_nodes(schema: dict):
    """Every schema object in a schema, the root included."""
    yield schema
    for child in schema.get("properties", {}).values():
        yield from schema_nodes(child)
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            yield from schema_nodes(schema[key])
    for key in ("anyOf", "allOf", "oneOf"):
        for child in schema.get(key, []):
            yield from schema_nodes(child)


def closed(schema: dict) -> dict:
    """A copy in which every object that lists its properties rejects any other (strict field validation)."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: closed(child) for name, child in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = closed(out[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [closed(child) for child in out[key]]
    return out


def with_defaults(instance, schema: dict):
    """The instance with the schema's defaults filled in, as the API server does before it validates."""
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        for name, child in props.items():
            if name not in instance and "default" in child:
                instance[name] = copy.deepcopy(child["default"])
        for name, value in instance.items():
            child = props.get(name, schema.get("additionalProperties") if name not in props else None)
            if isinstance(child, dict):
                instance[name] = with_defaults(value, child)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        return [with_defaults(item, schema["items"]) for item in instance]
    return instance


@functools.cache
def crd(kind: str) -> dict:
    return yaml.safe_load((CRD_DIR / CRD_FILES[kind]).read_text())


def crd_version_schema(kind: str, version: str) -> dict:
    versions = {v["name"]: v for v in crd(kind)["spec"]["versions"] if v.get("served")}
    assert version in versions, f"{kind}: API version {version!r} is not served (served: {sorted(versions)})"
    return versions[version]["schema"]["openAPIV3Schema"]


@functools.cache
def validator(kind: str, version: str) -> jsonschema.protocols.Validator:
    return KubeValidator(closed(crd_version_schema(kind, version)), format_checker=FORMATS)


DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# KubeRay v1.7 utils/constant.go: MaxRayClusterNameLength 53, MaxRayJobNameLength = 53 - 6.
MAX_NAME = {"RayCluster": 53, "RayJob": 47}
OBJECT_META = {"name", "generateName", "namespace", "labels", "annotations"}


def metadata_errors(doc: dict, name_rule: re.Pattern = DNS1035, max_len: int = 63) -> list[str]:
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        return ["metadata: missing"]
    errors = [f"metadata.{k}: not a field this check knows for a new object" for k in meta if k not in OBJECT_META]
    name = meta.get("name")
    if not isinstance(name, str) or not name_rule.fullmatch(name) or len(name) > max_len:
        errors.append(f"metadata.name: {name!r} must be a DNS label ({name_rule.pattern}) of at most {max_len} "
                      "characters")
    for field in ("labels", "annotations"):
        value = meta.get(field, {})
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            errors.append(f"metadata.{field}: must map strings to strings")
    return errors


def operator_errors(doc: dict) -> list[str]:
    """A few of the checks KubeRay's controller makes before it creates anything (validation.go)."""
    errors = []
    spec = doc["spec"]
    if doc["kind"] == "RayJob":
        if not spec.get("shutdownAfterJobFinishes", False) and spec.get("ttlSecondsAfterFinished", 0) > 0:
            errors.append("ttlSecondsAfterFinished > 0 needs shutdownAfterJobFinishes: true")
        if "rayClusterSpec" not in spec and not spec.get("clusterSelector"):
            errors.append("one of rayClusterSpec and clusterSelector must be set")
        for field in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
            if field in spec and spec[field] <= 0:
                errors.append(f"{field} must be positive")
        for field in ("backoffLimit", "ttlSecondsAfterFinished"):
            if spec.get(field, 0) < 0:
                errors.append(f"{field} must not be negative")
        if spec.get("submissionMode") == "InteractiveMode" and spec.get("backoffLimit", 0) > 0:
            errors.append("backoffLimit is incompatible with InteractiveMode")
        if spec.get("rayClusterSpec", {}).get("authOptions", {}).get("enableK8sTokenAuth"):
            errors.append("K8s token auth is not supported for RayJob")
    for cluster in ray_cluster_specs(doc):
        autoscaling = cluster.get("enableInTreeAutoscaling", False)
        workers = cluster.get("workerGroupSpecs", [])
        groups = [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in workers]
        for name, group in groups:
            if not group["template"]["spec"].get("containers"):
                errors.append(f"{name}: no container")
            starts = group.get("rayStartParams", {})
            if any(starts.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")) and group.get("resources"):
                errors.append(f"{name}: resources set both in rayStartParams and in resources")
            if "labels" in starts:
                errors.append(f"{name}: rayStartParams['labels'] is not supported; use labels")
        for name, group in groups[1:]:
            lo, hi, n = group.get("minReplicas"), group.get("maxReplicas"), group.get("replicas", 0)
            if not autoscaling and (lo is None or hi is None):
                errors.append(f"worker group {name}: minReplicas and maxReplicas must be set without autoscaling")
            elif lo is not None and hi is not None and not 0 <= lo <= n <= hi:
                errors.append(f"worker group {name}: needs 0 <= minReplicas {lo} <= replicas {n} <= maxReplicas {hi}")
        if cluster.get("authOptions", {}).get("mode") == "token":
            if Version(cluster.get("rayVersion", "0")) < Version("2.52.0"):
                errors.append("authOptions.mode token needs rayVersion >= 2.52.0")
    return errors


def kube_errors(doc: dict) -> list[str]:
    """Everything the API server (and the KubeRay operator) would refuse in a RayJob or RayCluster: the
    schema's defaults are filled in first, as the API server does on create."""
    kind = doc.get("kind")
    group = crd(kind)["spec"]["group"]
    api_group, _, version = str(doc.get("apiVersion", "")).rpartition("/")
    if api_group != group:
        return [f"apiVersion {doc.get('apiVersion')!r} is not {group}/<version>"]
    errors = metadata_errors(doc, DNS1035, MAX_NAME[kind])
    doc = with_defaults(copy.deepcopy(doc), crd_version_schema(kind, version))
    errors += [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
               for e in sorted(validator(kind, version).iter_errors(doc), key=lambda e: list(map(str, e.path)))]
    if not errors:
        errors += operator_errors(doc)
    return errors


# --- Ray manifests against the KubeRay CRDs --------------------------------------------------------

def test_k8s_has_the_manifests():
    kinds = sorted(doc.get("kind", "?") for _, doc in DOCS)
    assert kinds == ["PersistentVolumeClaim", "Pod", "RayCluster", "RayJob"], kinds
    assert {p.name for p in K8S.glob("*.yaml")} == {"rayjob.yaml", "raycluster.yaml", "pvc.yaml", "volume-pod.yaml"}


@needs_crds
def test_crd_schemas_use_only_what_the_validator_enforces():
    known = set(jsonschema.Draft4Validator.VALIDATORS) | EXTENSIONS | ANNOTATIONS
    for kind in CRD_FILES:
        nodes = list(schema_nodes(crd_version_schema(kind, "v1")))
        used = {k for node in nodes for k in node}
        assert used <= known, f"{kind}: keywords the validator does not know: {sorted(used - known)}"
        formats = {node["format"] for node in nodes if "format" in node}
        assert formats <= set(FORMATS.checkers), f"{kind}: unchecked formats {sorted(formats - set(FORMATS.checkers))}"
        rules = {r["rule"] for node in nodes for r in node.get("x-kubernetes-validations", [])}
        unknown = {r for r in rules if "oldSelf" not in r} - set(CEL_RULES)
        assert not unknown, f"{kind}: CEL rules not re-stated in CEL_RULES: {sorted(unknown)}"
        list_types = {node["x-kubernetes-list-type"] for node in nodes if "x-kubernetes-list-type" in node}
        assert list_types <= {"atomic", "set", "map"}, list_types


@needs_crds
@pytest.mark.parametrize("doc", RAY_DOCS)
def test_manifest_validates_against_the_kuberay_crd(doc):
    assert kube_errors(doc) == []


def _job() -> dict:
    return copy.deepcopy(only("RayJob"))


def _head_container(job: dict) -> dict:
    return job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


def _cpu_group(job: dict) -> dict:
    return job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]


MUTATIONS = {
    # name: (change the RayJob in place, a piece of the error the validator must report)
    "unknown field": (lambda j: _head_container(j).update(resource={"limits": {"cpu": "1"}}),
                      "'resource' was unexpected"),
    "unknown top-level spec field": (lambda j: j["spec"].update(shutdownAfterJobFinished=True),
                                     "'shutdownAfterJobFinished' was unexpected"),
    "wrong type": (lambda j: _cpu_group(j).update(replicas="2"), "'2' is not of type 'integer'"),
    "int32 out of range": (lambda j: j["spec"].update(ttlSecondsAfterFinished=2**31), "is not a 'int32'"),
    "bad quantity": (lambda j: _head_container(j)["resources"]["limits"].update(memory="8GB"), "does not match"),
    "enum": (lambda j: j["spec"]["rayClusterSpec"]["authOptions"].update(mode="on"), "'on' is not one of"),
    "required field": (lambda j: _head_container(j).pop("name"), "'name' is a required property"),
    "duplicate list-map key": (lambda j: _head_container(j)["ports"].append({"containerPort": 8265, "name": "again"}),
                               "have the same key"),
    "CEL rule": (lambda j: j["spec"].update(managedBy="someone-else"), "managedBy field value must be"),
    "bad name": (lambda j: j["metadata"].update(name="Raybench_Scalability"), "metadata.name"),
    "operator rule": (lambda j: _cpu_group(j).update(maxReplicas=1), "minReplicas 2 <= replicas 2 <= maxReplicas 1"),
}


@needs_crds
@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_validator_rejects_a_broken_rayjob(mutation):
    """The validator is a real check: the RayJob passes, and each single mistake in it is reported."""
    change, expected = MUTATIONS[mutation]
    job = _job()
    assert kube_errors(job) == []
    change(job)
    errors = kube_errors(job)
    assert any(expected in e for e in errors), errors


@needs_crds
def test_validator_rejects_an_unevaluated_cel_rule():
    schema = {"type": "object", "properties": {"a": {"type": "string"}},
              "x-kubernetes-validations": [{"rule": "self.a.startsWith('x')", "message": "a starts with x"}]}
    errors = [e.message for e in KubeValidator(closed(schema)).iter_errors({"a": "xyz"})]
    assert errors and "cannot be checked offline" in errors[0]


def test_other_documents_are_well_formed():
    """PersistentVolumeClaim, Pod, Service: the fields the API server requires, by hand; no other kinds."""
    for where, doc in DOCS:
        kind = doc.get("kind")
        if kind in CRD_FILES:
            continue
        assert kind in {"PersistentVolumeClaim", "Pod", "Service"}, f"{where}: {kind} is not checked by this test"
        assert doc.get("apiVersion") == "v1", where
        assert metadata_errors(doc, DNS1123, 253 if kind == "PersistentVolumeClaim" else 63) == [], where
        spec = doc["spec"]
        if kind == "PersistentVolumeClaim":
            assert spec["accessModes"] and set(spec["accessModes"]) <= {
                "ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"}, where
            assert quantity(spec["resources"]["requests"]["storage"]) > 0, where
        elif kind == "Pod":
            assert spec.get("restartPolicy", "Always") in {"Always", "OnFailure", "Never"}, where
            volumes = {v["name"] for v in spec.get("volumes", [])}
            for c in containers(spec):
                assert DNS1123.fullmatch(c["name"]) and c["image"], f"{where}: container {c.get('name')}"
                assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes, f"{where}: {c['name']}"
        else:
            assert spec["ports"] and all(1 <= p["port"] <= 65535 for p in spec["ports"]), where


# --- the project's properties ----------------------------------------------------------------------

def test_dashboard_is_not_exposed_outside_the_cluster():
    for where, doc in DOCS:
        kind = doc.get("kind")
        assert kind not in {"Ingress", "Route", "Gateway", "HTTPRoute", "GRPCRoute"}, where
        if kind == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", f"{where}: {doc['spec'].get('type')}"
        for spec in ray_cluster_specs(doc):
            head = spec["headGroupSpec"]
            assert head.get("serviceType") == "ClusterIP", f"{where}: head serviceType {head.get('serviceType')}"
            assert not head.get("enableIngress", False), where
            assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP", where
            assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: Ray token authentication is off"
        for name, pod in pod_specs(doc):
            assert not pod.get("hostNetwork"), f"{where} {name}: hostNetwork puts Ray's ports on the node"
            for c in containers(pod):
                assert all("hostPort" not in p for p in c.get("ports", [])), f"{where} {name}: hostPort"


def test_rayjob_entrypoint_parses_with_the_sweeps_own_parser():
    job = only("RayJob")
    args = sweep_args(shlex.split(job["spec"]["entrypoint"]))
    assert args.sweep == "scalability" and (ROOT / "sweeps" / f"{args.sweep}.yaml").is_file()
    assert args.address == "auto"
    assert args.results == "/mnt/results" and args.data == "/mnt/data"
    assert not (args.smoke or args.dry_run or args.resume)
    assert job["spec"].get("submissionMode", "K8sJobMode") == "K8sJobMode"
    assert job["spec"]["shutdownAfterJobFinishes"] is True and job["spec"]["ttlSecondsAfterFinished"] >= 0


def _pyproject() -> tuple[str, Requirement, str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    ray = next(Requirement(d) for d in project["dependencies"] if Requirement(d).name == "ray")
    return project["version"], ray, project["requires-python"]


def test_images_are_pinned_to_the_versions_in_pyproject():
    version, ray_req, requires_python = _pyproject()
    images = {c["image"] for _, doc in DOCS for _, pod in pod_specs(doc) for c in containers(pod)}
    assert len(images) == 1, f"one image for every pod, got {sorted(images)}"
    image = images.pop()
    m = re.fullmatch(r"(?P<repo>[a-z0-9][a-z0-9._\-/]*/raybench):(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.\-]*)", image)
    assert m, f"{image}: not <registry>/raybench:<tag>"
    tag = re.fullmatch(rf"{re.escape(version)}-ray(?P<ray>\d+\.\d+\.\d+)-py(?P<py>3\d+)", m["tag"])
    assert tag, f"{image}: tag must be {version}-ray<X.Y.Z>-py<3NN> (raybench {version} from pyproject.toml)"
    assert ray_req.specifier.contains(tag["ray"]), f"{image}: Ray {tag['ray']} is not {ray_req}"
    python = f"3.{tag['py'][1:]}"
    assert Requirement(f"python{requires_python}").specifier.contains(python), f"Python {python}: {requires_python}"
    for _, doc in DOCS:
        for spec in ray_cluster_specs(doc):
            assert spec["rayVersion"] == tag["ray"], "rayVersion must be the image's Ray"
    base = re.search(r"^FROM rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>3\d+)(-[a-z0-9]+)?$",
                     DOCKERFILE.read_text(), re.MULTILINE)
    assert base, "k8s/Dockerfile must start FROM a pinned rayproject/ray:<X.Y.Z>-py<3NN>[-variant] tag"
    assert (base["ray"], base["py"]) == (tag["ray"], tag["py"]), "the manifests' tag and k8s/Dockerfile's base differ"
    assert re.search(r"^RUN pip install .*-e \.", DOCKERFILE.read_text(), re.MULTILINE), \
        "k8s/Dockerfile installs the checkout editable (sweep names resolve against its sweeps/)"


def test_every_container_has_requests_and_limits():
    for where, doc in DOCS:
        for name, pod in pod_specs(doc):
            for c in containers(pod):
                res = c.get("resources", {})
                for resource in ("cpu", "memory"):
                    req, lim = res.get("requests", {}).get(resource), res.get("limits", {}).get(resource)
                    assert req is not None and lim is not None, f"{where} {name} {c['name']}: {resource}"
                    assert quantity(req) <= quantity(lim), f"{where} {name} {c['name']}: {resource} {req} > {lim}"


def test_head_takes_no_trials_and_groups_hold_the_sweep():
    job = only("RayJob")
    args = sweep_args(shlex.split(job["spec"]["entrypoint"]))
    sweep = yaml.safe_load((ROOT / "sweeps" / f"{args.sweep}.yaml").read_text())
    largest = max(sweep["workers"]) * sweep.get("cpus_per_worker", 1)
    for where, doc in DOCS:
        for spec in ray_cluster_specs(doc):
            assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", f"{where}: the head runs trials"
            assert spec.get("enableInTreeAutoscaling", False) is False, where
            cpu, gpu = [], []
            for g in spec["workerGroupSpecs"]:
                (c,) = [c for c in g["template"]["spec"]["containers"] if c["name"] == "ray-worker"]
                gpus = int(c["resources"]["limits"].get(GPU, 0))
                (gpu if gpus else cpu).append((g, c))
                if gpus:
                    assert int(c["resources"]["requests"].get(GPU, gpus)) == gpus, f"{where}: {GPU} request != limit"
            assert cpu and gpu, f"{where}: needs a CPU worker group and a GPU worker group"
            assert all(int(c["resources"]["limits"][GPU]) >= 1 for _, c in gpu)
            held = sum(g["replicas"] * quantity(c["resources"]["limits"]["cpu"]) for g, c in cpu)
            assert held >= largest, \
                f"{where}: the CPU groups hold {held:g} CPUs; {args.sweep}'s largest trial needs {largest}"


def _claim_mounts() -> tuple[str, dict[str, set[str | None]]]:
    """The PVC's name and, per mount path in the Ray containers, the subPaths they mount there."""
    claim = only("PersistentVolumeClaim")
    assert "ReadWriteMany" in claim["spec"]["accessModes"], "every Ray pod mounts the claim, on any node"
    name = claim["metadata"]["name"]
    seen: dict[str, set[str | None]] = {}
    for _, doc in DOCS:
        for _, tpl in ray_pod_templates(doc):
            spec = tpl["spec"]
            claims = {v["name"] for v in spec.get("volumes", [])
                      if v.get("persistentVolumeClaim", {}).get("claimName") == name}
            ray = spec["containers"][0]  # KubeRay's Ray container is the first
            for m in ray.get("volumeMounts", []):
                if m["name"] in claims:
                    seen.setdefault(m["mountPath"], set()).add(m.get("subPath"))
    return name, seen


def _sweep_commands() -> list[tuple[str, object]]:
    job = only("RayJob")
    out = [("rayjob entrypoint", sweep_args(shlex.split(job["spec"]["entrypoint"])))]
    out += [("README ray job submit", sweep_args(argv[argv.index("--") + 1:])) for argv in readme_ray_job_submits()]
    return out


def test_every_ray_pod_mounts_the_claim_where_the_commands_look():
    name, seen = _claim_mounts()
    for where, args in _sweep_commands():
        for flag, path, writable in (("--results", args.results, True), ("--data", args.data, False)):
            assert path, f"{where}: {flag} must be given (a folder on the claim)"
            for _, doc in DOCS:
                for group, tpl in ray_pod_templates(doc):
                    mounts = [m for m in tpl["spec"]["containers"][0].get("volumeMounts", [])
                              if under(path, m["mountPath"])]
                    assert mounts, f"{where}: {flag} {path} is not on a volume in {doc['kind']} {group}"
                    m = max(mounts, key=lambda m: len(m["mountPath"]))
                    vol = next(v for v in tpl["spec"]["volumes"] if v["name"] == m["name"])
                    assert vol.get("persistentVolumeClaim", {}).get("claimName") == name, \
                        f"{where}: {flag} {path} in {doc['kind']} {group} is not on the claim {name}"
                    assert not (writable and m.get("readOnly")), f"{doc['kind']} {group}: {m['mountPath']} read-only"
    assert all(len(subpaths) == 1 for subpaths in seen.values()), f"every pod sees the same folders: {seen}"
    # The volume pod mounts the whole claim and creates every subPath the Ray pods mount.
    pod = only("Pod")
    (root,) = {m["mountPath"] for c in containers(pod["spec"]) for m in c.get("volumeMounts", [])
               if "subPath" not in m}
    prepare = " ".join(" ".join(c.get("command", [])) for c in pod["spec"].get("initContainers", []))
    for (subpath,) in seen.values():
        if subpath:
            assert f"{root}/{subpath}" in prepare, f"k8s/volume-pod.yaml does not create {root}/{subpath}"


def test_gpu_group_requests_gpus():
    for where, doc in DOCS:
        for spec in ray_cluster_specs(doc):
            gpu = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"]
            assert gpu, f"{where}: no worker group named gpu"
            (c,) = gpu[0]["template"]["spec"]["containers"]
            assert int(c["resources"]["limits"][GPU]) >= 1, f"{where}: the gpu group has no {GPU} limit"
            assert any(t.get("key") == GPU for t in gpu[0]["template"]["spec"].get("tolerations", [])), \
                f"{where}: the gpu group does not tolerate the {GPU} taint of GPU node pools"


# --- the README ------------------------------------------------------------------------------------

def readme_section() -> str:
    text = README.read_text()
    headings = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert "Running on Kubernetes" in headings, "README has no '## Running on Kubernetes' section"
    i = headings.index("Running on Kubernetes")
    assert headings[i - 1] == "Running on a cluster", "the section follows 'Running on a cluster'"
    start = text.index("\n## Running on Kubernetes\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def readme_commands() -> list[list[str]]:
    """Every simple command in the section's bash blocks, as argv (continuations joined, comments and
    environment assignments dropped, split on | && || ;)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", readme_section(), re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            argv: list[str] = []
            for token in [*shlex.split(line, comments=True), ";"]:
                if token in {"|", "&&", "||", ";"}:
                    while argv and re.fullmatch(r"[A-Za-z_]\w*=.*", argv[0]):
                        argv.pop(0)
                    if argv and argv[0] != "export":
                        out.append(argv)
                    argv = []
                else:
                    argv.append(token)
    return out


def readme_ray_job_submits() -> list[list[str]]:
    return [argv for argv in readme_commands() if argv[:3] == ["ray", "job", "submit"]]


def test_readme_kubernetes_commands_name_files_that_exist():
    section = readme_section()
    named = set(re.findall(r"\bk8s/[\w./\-]*\w", section))
    assert named, "the section names no k8s/ file"
    missing = sorted(p for p in named if not (ROOT / p).is_file())
    assert not missing, f"README names files that do not exist: {missing}"
    manifests = {f"k8s/{p.name}" for p in K8S.glob("*.yaml")} | {"k8s/Dockerfile"}
    assert manifests <= named, f"README never uses {sorted(manifests - named)}"
    commands = readme_commands()
    applied = {a for argv in commands if argv[:2] in (["kubectl", "apply"], ["kubectl", "delete"])
               for flag, a in zip(argv, argv[1:], strict=False) if flag == "-f"}
    assert applied and all((ROOT / a).is_file() for a in applied), applied
    # The build tags the image the manifests name (after the registry placeholder is replaced).
    (image,) = {c["image"] for _, doc in DOCS for _, pod in pod_specs(doc) for c in containers(pod)}
    builds = [argv for argv in commands if argv[:2] == ["docker", "build"]]
    assert builds and builds[0][builds[0].index("-f") + 1] == "k8s/Dockerfile"
    assert builds[0][builds[0].index("-t") + 1].endswith("/" + image.rsplit("/", 1)[1]), builds[0]
    placeholder = image.rsplit("/", 1)[0]
    seds = [argv for argv in commands if argv[0] == "sed" and any(placeholder in a for a in argv)]
    with_placeholder = {f"k8s/{p.name}" for p in K8S.glob("*.yaml") if placeholder in p.read_text()}
    assert seds and with_placeholder <= set(seds[0]), f"the registry sed misses {with_placeholder - set(seds[0])}"


def test_readme_kubernetes_commands_match_the_manifests():
    commands = readme_commands()
    job, cluster, pod = only("RayJob"), only("RayCluster"), only("Pod")
    forwards = [argv for argv in commands if argv[:2] == ["kubectl", "port-forward"]]
    assert ["kubectl", "port-forward", f"svc/{cluster['metadata']['name']}-head-svc", "8265:8265"] in forwards
    assert all(a[2] in {f"svc/{cluster['metadata']['name']}-head-svc", f"svc/{job['metadata']['name']}-head-svc"}
               for a in forwards), forwards
    assert any(argv[:3] == ["kubectl", "logs", "-f"] and argv[3] == f"job/{job['metadata']['name']}"
               for argv in commands), "README follows the RayJob's submitter: kubectl logs -f job/<rayjob>"
    # kubectl cp into and out of the volume pod: inside its mount of the claim, in the folders the Ray pods mount.
    _, seen = _claim_mounts()
    (root,) = {m["mountPath"] for c in pod["spec"]["containers"] for m in c.get("volumeMounts", [])}
    folders = {path: f"{root}/{next(iter(subpaths))}" for path, subpaths in seen.items()}
    args = sweep_args(shlex.split(job["spec"]["entrypoint"]))
    copies = [a for argv in commands if argv[:2] == ["kubectl", "cp"] for a in argv[2:] if ":" in a]
    assert copies, "README copies data in and results out with kubectl cp"
    for a in copies:
        name, path = a.split(":", 1)
        assert name == pod["metadata"]["name"], a
        assert any(under(path, f) for f in folders.values()), f"{a} is outside {sorted(folders.values())}"
    assert f"{pod['metadata']['name']}:{folders[args.data]}/cifar-10-batches-py" in copies, "CIFAR-10 goes in"
    assert f"{pod['metadata']['name']}:{folders[args.results]}/{args.sweep}" in copies, "results come out"


def test_readme_ray_job_submit_parses_with_the_sweeps_own_parser():
    submits = readme_ray_job_submits()
    assert submits, "README has no `ray job submit` command"
    for argv in submits:
        assert argv[argv.index("--address") + 1] == "http://127.0.0.1:8265", "through the port-forward"
        assert argv[argv.index("--working-dir") + 1] == "."
        args = sweep_args(argv[argv.index("--") + 1:])
        assert (ROOT / "sweeps" / f"{args.sweep}.yaml").is_file()
        assert args.address == "auto" and args.results == "/mnt/results" and args.data == "/mnt/data"
