"""Shared by the tests of k8s/: the rendered overlays and helpers over them
(a module of its own name: every suite's conftest.py is a module `conftest`).

Every overlay (and the base) is rendered once per session with the real
``kubectl kustomize`` (offline; kubectl >= 1.27 ships kustomize v5), exactly
what ``kubectl apply -k`` would send to a cluster.
"""

import functools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
TESTS = REPO / "tests"
if str(TESTS) not in sys.path:  # `from harness import ...` without PYTHONPATH=tests too
    sys.path.insert(0, str(TESTS))

OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
# What is rendered and checked: the base on its own and every overlay.
TARGETS = ["base", *(f"overlays/{name}" for name in OVERLAYS)]

NAMESPACE = "user-api"


def kubectl() -> str:
    found = shutil.which("kubectl")
    if not found:
        pytest.fail("kubectl is not installed (kubectl >= 1.27 with built-in kustomize is needed)")
    return found


@functools.cache
def render_text(target: str) -> str:
    out = subprocess.run(
        [kubectl(), "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=120
    )
    if out.returncode != 0:
        hint = ""
        if not (REPO / "nginx" / "kustomization.yaml").exists():
            hint = (
                "\nnginx/kustomization.yaml is missing: k8s/base lists nginx/ as a resource "
                "(the ConfigMap generator over the shipped nginx files), see k8s/README.md"
            )
        pytest.fail(f"kubectl kustomize k8s/{target} failed:\n{out.stderr}{hint}")
    return out.stdout


def render(target: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(render_text(target)) if doc]


def objects(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind, name):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind} {name}, found {len(found)}"
    return found[0]


def workloads(docs):
    """(object, pod spec) of everything that runs pods."""
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
            yield d, d["spec"]["template"]["spec"]
        elif d["kind"] == "CronJob":
            yield d, d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            yield d, d["spec"]


def containers(pod_spec):
    return [*pod_spec.get("initContainers", []), *pod_spec.get("containers", [])]


def env_of(container) -> dict:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def labels_match(selector: dict, labels: dict) -> bool:
    """A LabelSelector (matchLabels + matchExpressions) against labels."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True
