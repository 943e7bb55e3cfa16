"""Every rendered object validates strictly (no unknown field anywhere)
against the official OpenAPI-derived schemas of each Kubernetes minor version
claimed in k8s/README.md: 1.25 (oldest) to 1.37 (newest), all of them, offline
(PyPI kubernetes-validate ships the schemas)."""

import copy

import pytest

import kubernetes_validate  # PyPI kubernetes-validate (tests/requirements.txt): the schemas, offline
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError, all_versions
from packaging.version import Version

from k8s_manifests import TARGETS, render

OLDEST, NEWEST = Version("1.25"), Version("1.37")
# (all_versions() names each version twice: its plain and its strict schema directory.)
VERSIONS = sorted(
    {v for v in all_versions() if OLDEST <= Version(".".join(v.split(".")[:2])) <= NEWEST}, key=Version
)


def test_every_claimed_version_has_schemas():
    minors = [".".join(v.split(".")[:2]) for v in VERSIONS]
    assert minors == [f"1.{m}" for m in range(25, 38)], minors


def validate(obj, version):
    """The version actually used; raises on any violation or a missing schema
    (the CLI only warns about a kind it has no schema for: that is a failure here)."""
    return kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_objects_validate_strictly(target, version):
    errors = []
    for obj in render(target):
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            used = validate(obj, version)
            assert used == ".".join(version.split(".")[:2])
        except ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"{name}: {path}: {e.message}")
        except SchemaNotFoundError as e:
            errors.append(f"{name}: {e.message}")
    assert not errors, f"k8s/{target} against Kubernetes {version}:\n" + "\n".join(errors)


@pytest.mark.parametrize("version", [VERSIONS[0], VERSIONS[-1]])
def test_the_validation_bites(version):
    """The strict schemas reject an unknown field, a wrong type and a field
    that version does not have; otherwise a passing validation proves nothing."""
    api = next(o for o in render("base") if o["kind"] == "Deployment" and o["metadata"]["name"] == "api")
    validate(api, version)

    typo = copy.deepcopy(api)
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(ValidationError):
        validate(typo, version)

    wrong_type = copy.deepcopy(api)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(ValidationError):
        validate(wrong_type, version)

    with pytest.raises(SchemaNotFoundError):
        validate({**api, "apiVersion": "apps/v1beta1"}, version)


def test_an_old_version_rejects_a_newer_field():
    """`lifecycle.preStop.sleep` is in the API since 1.29 (alpha; on by
    default since 1.30), which is why the api's preStop hook runs the binary
    (`user-api pre-stop 5`) instead: 1.25's schema must refuse it, 1.37's
    accept it."""
    api = next(o for o in render("base") if o["kind"] == "Deployment" and o["metadata"]["name"] == "api")
    newer = copy.deepcopy(api)
    newer["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"] = {"sleep": {"seconds": 5}}
    validate(newer, VERSIONS[-1])
    with pytest.raises(ValidationError):
        validate(newer, VERSIONS[0])
