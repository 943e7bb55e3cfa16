"""What the flake check `checks.<system>.k8s-manifests` relies on, proven
without Nix (nix/checks.nix; nixpkgs' kubectl and kubeconform cannot be built
here, and kubeconform is not packaged for Debian or PyPI).

The check runs nix/k8s-schemas.py on nixpkgs' kubernetes-validate (its
shipped schemas, no download) and nix/k8s-manifests.sh on k8s/ and nginx/.
Here both run on PyPI kubernetes-validate 1.37.0 (tests/requirements.txt), the
closest copy available (nixpkgs ships an older release: its newest Kubernetes
version is older than 1.37, which the check handles by taking the newest one
it finds). kubeconform is replaced by tests/k8s/kubeconform_standin.py, which
looks schemas up with kubeconform's own path template logic and validates with
python-jsonschema (a real validation, by another validator: kubeconform's Go
validator itself is only run by the flake check on a machine with Nix).
"""

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import referencing
import referencing.exceptions

from k8s_manifests import OVERLAYS, REPO, kubectl, render, render_text
from kubeconform_standin import schema_path

SCHEMAS = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
CHECK_SCRIPT = REPO / "nix" / "k8s-manifests.sh"
CONVERT = REPO / "nix" / "k8s-schemas.py"
STANDIN = Path(__file__).with_name("kubeconform_standin.py")
# What nix/checks.nix passes to k8s-schemas.py, and what that picks from kubernetes-validate 1.37.0.
OLDEST, NEWEST = "1.25", "1.37"
VERSIONS = ["1.25.0", "1.37.0"]
# The -schema-location template the check passes (nix/k8s-manifests.sh), the original's layout.
STANDALONE = "{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json"
SHIPPED = "{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json"


def test_the_check_passes_the_same_versions_and_template():
    """The values here are the check's own (nix/checks.nix, nix/k8s-manifests.sh)."""
    checks = (REPO / "nix" / "checks.nix").read_text()
    assert f'k8sOldest = "{OLDEST}";' in checks and f'k8sNewest = "{NEWEST}";' in checks
    script = CHECK_SCRIPT.read_text()
    assert "'/" + STANDALONE + "'" in script
    assert "kubeconform -strict -summary -kubernetes-version" in script
    assert "ignore-missing-schemas" not in script.replace("Never -ignore-missing-schemas", "")
    assert 'kubectl kustomize "$src/k8s/overlays/$overlay"' in script


@pytest.fixture(scope="module")
def schemas(tmp_path_factory):
    out = tmp_path_factory.mktemp("schemas")
    done = subprocess.run(
        [sys.executable, CONVERT, SCHEMAS, out, OLDEST, NEWEST], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == VERSIONS, done.stdout
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_has_its_schema_file(overlay, schemas):
    """For every object an overlay renders, the file kubeconform's template
    resolves to exists, for each version: in kubernetes-validate as shipped
    and in the standalone copy the check makes of it."""
    missing = []
    for obj in render(f"overlays/{overlay}"):
        for version in VERSIONS:
            for base, template in ((SCHEMAS, SHIPPED), (schemas, STANDALONE)):
                path = Path(schema_path(f"{base}/{template}", obj["kind"], obj["apiVersion"], version, True))
                if not path.is_file():
                    missing.append(f"{obj['kind']} {obj['apiVersion']} {version}: {path}")
    assert not missing, "\n".join(missing)


def _no_retrieval(uri):
    raise referencing.exceptions.NoSuchResource(ref=uri)


@pytest.mark.parametrize("version", VERSIONS)
def test_standalone_schemas_need_nothing_else_and_still_bite(version, schemas):
    """Each standalone schema validates with no other document available
    (kubeconform in the sandbox cannot fetch one; the shipped schema cannot do
    that), accepts the rendered objects and rejects an unknown field and a
    wrong type, as the shipped schema does through kubernetes-validate."""
    empty = referencing.Registry(retrieve=_no_retrieval)
    api = next(o for o in render("base") if o["kind"] == "Deployment" and o["metadata"]["name"] == "api")
    shipped = json.loads((SCHEMAS / f"v{version}-local-strict" / "deployment-apps-v1.json").read_text())
    with pytest.raises(referencing.exceptions.Unresolvable):
        jsonschema.Draft202012Validator(shipped, registry=empty).validate(api)

    standalone = json.loads((schemas / f"v{version}-standalone-strict" / "deployment-apps-v1.json").read_text())
    validator = jsonschema.Draft202012Validator(standalone, registry=empty)
    validator.validate(api)
    typo = copy.deepcopy(api)
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(typo)
    wrong_type = copy.deepcopy(api)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(wrong_type)


def run_check(tmp_path, schemas, source=REPO):
    """nix/k8s-manifests.sh as the flake check runs it, with the stand-in as `kubeconform`."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    shim = bindir / "kubeconform"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN}" "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{Path(kubectl()).parent}:{os.environ.get('PATH', '')}"}
    work = tmp_path / "rendered"
    done = subprocess.run(
        ["bash", CHECK_SCRIPT, source, schemas, work, *VERSIONS], capture_output=True, text=True, env=env, timeout=600
    )
    return done, work


def test_the_check_script_passes_and_renders_what_the_tests_render(tmp_path, schemas):
    done, work = run_check(tmp_path, schemas)
    assert done.returncode == 0, done.stdout + done.stderr
    for overlay in OVERLAYS:
        # The same command, the same bytes: what the other tests here check is what the check validates.
        assert (work / f"{overlay}.yaml").read_text() == render_text(f"overlays/{overlay}")
        count = len(render(f"overlays/{overlay}"))
        for version in VERSIONS:
            assert f"k8s/overlays/{overlay} ({count} objects), Kubernetes {version}:" in done.stdout
    summaries = [line for line in done.stdout.splitlines() if line.startswith("Summary: ")]
    assert len(summaries) == len(OVERLAYS) * len(VERSIONS), done.stdout
    assert all("Invalid: 0, Errors: 0, Skipped: 0" in line for line in summaries), done.stdout


def copy_source(tmp_path):
    """What the check's lib.fileset source holds: k8s/ and nginx/."""
    source = tmp_path / "source"
    for part in ("k8s", "nginx"):
        shutil.copytree(REPO / part, source / part)
    return source


def test_the_check_script_fails_on_an_unknown_field(tmp_path, schemas):
    source = copy_source(tmp_path)
    patch = source / "k8s" / "overlays" / "local" / "kustomization.yaml"
    patch.write_text(
        patch.read_text()
        + """  - target:
      kind: Deployment
      name: api
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/readinesProbe
        value: {}
"""
    )
    done, _ = run_check(tmp_path, schemas, source)
    assert done.returncode != 0
    assert "Deployment api is invalid" in done.stdout and "readinesProbe" in done.stdout, done.stdout


def test_the_check_script_fails_on_a_kind_without_schema(tmp_path, schemas):
    source = copy_source(tmp_path)
    (source / "k8s" / "overlays" / "local" / "extra.yaml").write_text(
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n"
    )
    kustomization = source / "k8s" / "overlays" / "local" / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("  - ../../base\n", "  - ../../base\n  - extra.yaml\n", 1))
    done, _ = run_check(tmp_path, schemas, source)
    assert done.returncode != 0
    assert "could not find schema for Widget" in done.stdout, done.stdout


def test_the_conversion_refuses_a_missing_oldest_version(tmp_path):
    """nixpkgs' kubernetes-validate without 1.25 schemas fails the check at once, by name."""
    done = subprocess.run(
        [sys.executable, CONVERT, SCHEMAS, tmp_path, "1.19", NEWEST], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and "no strict schemas for Kubernetes 1.19" in done.stderr
