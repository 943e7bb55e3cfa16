"""The release path (.github/workflows/release.yml), run here against a local registry.

The workflow's own script, .github/scripts/images.sh, runs each of its jobs' steps in a scratch
copy of the repository against Debian's docker-registry (TLS and a login, tests/harness/
registry.py): `tags` for a v<version> tag, `login`, `push amd64` (skopeo, the SBOM attested and
the image signed by cosign with a key pair), `manifest` (buildx's index, signed; the production
overlay's digests written). Then nix/README.md's "Pulling the images" commands pull the release
and start it with compose, and cosign refuses an unsigned image, an image altered under the
signed tag, and another key.

What differs from GitHub (the test plays it, or it cannot run here): `images.sh build` and
`reproduce` need Nix (the stand-ins are pushed, through the ./image-<name> scripts `build`
leaves); one architecture (amd64; the arm64 runner is GitHub's); keyless signing needs GitHub's
OIDC token, Fulcio and Rekor (a key pair, no transparency log); syft is not packaged for Debian
(tests/e2e/fixtures/syft writes the SPDX document); GHCR's login and package settings.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from harness import compose, images, procs
from harness.registry import Registry

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# The three images the release publishes (images.sh's `images`), by compose service.
RELEASED = {"api-image": "api", "proxy-image": "proxy", "db-image": "db"}
OVERLAY_IMAGES = "k8s/overlays/production/release/kustomization.yaml"
# cosign verify's words for an image without a signature by the key.
NO_SIGNATURE = "no signatures found"


class Release:
    """A scratch copy of the repository where images.sh runs as a release job would."""

    def __init__(self, work: Path, registry: Registry, stack_images: dict[str, str]):
        self.work = work
        self.checkout = work / "checkout"
        tracked = subprocess.run(["git", "ls-files", "-z"], cwd=procs.REPO, capture_output=True,
                                 check=True).stdout.decode().split("\0")
        for name in filter(None, tracked):
            source = procs.REPO / name
            if source.is_file():
                (self.checkout / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, self.checkout / name)
        # What `images.sh build` leaves: a stream script per image writing its docker-archive.
        for attr, service in RELEASED.items():
            script = self.checkout / f"image-{attr}"
            script.write_text(f"#!/bin/sh\nexec docker save {stack_images[service]}\n")
            script.chmod(0o755)
        self.registry = registry
        self.stack_images = stack_images
        self.version = images.version()
        self.sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=procs.REPO, capture_output=True,
                                  text=True, check=True).stdout.strip()
        # buildx is a docker CLI plugin: the toolchain's, in a docker config of the release's own
        # (where `login` writes the credentials that cosign and buildx read).
        self.docker_config = work / "docker"
        (self.docker_config / "cli-plugins").mkdir(parents=True)
        (self.docker_config / "cli-plugins" / "docker-buildx").symlink_to(procs.program("docker-buildx"))
        (work / "runner-temp").mkdir()
        self.env = {
            **os.environ,
            **registry.client_env(),
            # The tools are on PATH (the toolchain's skopeo and cosign, the syft stand-in), not
            # from `nix shell`.
            "IMAGES_SH_TOOLS": "1",
            "PATH": f"{FIXTURES}:{os.environ['PATH']}",
            "DOCKER_CONFIG": str(self.docker_config),
            "REGISTRY": f"{registry.address}/user-api",
            "GITHUB_SHA": self.sha,
            "GITHUB_REF": f"refs/tags/v{self.version}",
            "GITHUB_ACTOR": registry.username,
            "RUNNER_TEMP": str(work / "runner-temp"),
            "GITHUB_STEP_SUMMARY": str(work / "summary.md"),
            "COSIGN_PASSWORD": "release-test",
        }

    def step(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        """One workflow step: images.sh with the step's env, and what it exported to later steps
        (GITHUB_ENV) applied as Actions applies it; its outputs (GITHUB_OUTPUT) returned."""
        files = {name: self.work / f"{name.lower()}-{args[0]}" for name in ("GITHUB_ENV", "GITHUB_OUTPUT")}
        for f in files.values():
            f.write_text("")
        out = subprocess.run(["bash", ".github/scripts/images.sh", *args], cwd=self.checkout,
                             env={**self.env, **{k: str(v) for k, v in files.items()}, **env},
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"images.sh {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
        for line in files["GITHUB_ENV"].read_text().splitlines():
            key, _, value = line.partition("=")
            self.env[key] = value
        out.outputs = dict(line.split("=", 1) for line in files["GITHUB_OUTPUT"].read_text().splitlines())
        return out

    def tool(self, *argv: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """A command as a user of the release runs it: the registry's CA trusted, the login's
        credentials in DOCKER_CONFIG."""
        out = subprocess.run(argv, cwd=cwd or self.work, env=self.env, capture_output=True, text=True,
                             timeout=300)
        assert not check or out.returncode == 0, f"{' '.join(argv)}:\n{out.stdout}\n{out.stderr}"
        return out

    def repo(self, attr: str) -> str:
        return f"{self.env['REGISTRY']}/{images.contract()[RELEASED[attr]]['image']}"

    def verify(self, ref: str, key: Path | None = None) -> subprocess.CompletedProcess:
        return self.tool(procs.program("cosign"), "verify", "--key", str(key or self.work / "cosign.pub"),
                         "--insecure-ignore-tlog", ref, check=False)

    def tag_digest(self, ref: str) -> str:
        """The digest ``ref`` resolves to in the registry: of its manifest as served."""
        raw = self.tool("skopeo", "inspect", "--raw", f"docker://{ref}").stdout.encode()
        return "sha256:" + hashlib.sha256(raw).hexdigest()

    def pins(self) -> dict[str, str]:
        """The production overlay's images as the release wrote them: repo -> digest."""
        component = yaml.safe_load((self.checkout / OVERLAY_IMAGES).read_text())
        return {i["newName"]: i["digest"] for i in component["images"]}


@pytest.fixture(scope="module")
def release(stack_images, tmp_path_factory, record):
    with Registry() as registry:
        r = Release(tmp_path_factory.mktemp("release"), registry, stack_images)
        r.tool(procs.program("cosign"), "generate-key-pair")
        r.env["COSIGN_KEY"] = str(r.work / "cosign.key")
        tags = r.step("tags").outputs
        assert tags == {"tags": f"{r.version} {r.sha}", "version": r.version}, tags
        r.step("login", GITHUB_TOKEN=registry.password)
        r.step("push", "amd64")
        r.step("manifest", TAGS=tags["tags"])
        r.digests = dict(line.split() for line in (r.checkout / "digests-amd64.txt").read_text().splitlines())
        record(f"release against a local registry ({registry.address}, TLS, login): "
               + "; ".join(f"{repo.rpartition('/')[2]}@{d[:19]}" for repo, d in r.digests.items()))
        try:
            yield r
        finally:
            subprocess.run(["docker", "image", "rm", "-f", *(f"{r.repo(a)}:{t}" for a in RELEASED
                                                              for t in ("0.1.0-altered", r.version))],
                           capture_output=True)


def test_the_release_pushed_signed_indexes_of_the_signed_images(release):
    for attr in RELEASED:
        repo = release.repo(attr)
        for tag in (release.version, release.sha):
            index = json.loads(release.tool("skopeo", "inspect", "--raw", f"docker://{repo}:{tag}").stdout)
            assert index["mediaType"].endswith("manifest.list.v2+json") or index["mediaType"].endswith(
                "image.index.v1+json"), index
            assert [(m["digest"], m["platform"]["architecture"]) for m in index["manifests"]] == [
                (release.digests[repo], "amd64")], index
            assert release.verify(f"{repo}:{tag}").returncode == 0
        # The per-architecture image the index points at is signed too.
        assert release.verify(f"{repo}@{release.digests[repo]}").returncode == 0
    summary = (release.work / "summary.md").read_text()
    assert all(release.repo(a) in summary for a in RELEASED), summary


def test_each_image_carries_its_sbom_attested(release):
    for attr in RELEASED:
        repo = release.repo(attr)
        ref = f"{repo}@{release.digests[repo]}"
        out = release.tool(procs.program("cosign"), "verify-attestation", "--key", str(release.work / "cosign.pub"),
                           "--insecure-ignore-tlog", "--type", "spdxjson", ref)
        (envelope,) = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        statement = json.loads(base64.b64decode(envelope["payload"]))
        assert statement["predicateType"] == "https://spdx.dev/Document", statement["predicateType"]
        assert statement["subject"][0]["digest"]["sha256"] == release.digests[repo].removeprefix("sha256:")
        sbom = statement["predicate"]
        assert sbom["spdxVersion"] == "SPDX-2.3" and sbom["packages"][0]["versionInfo"] == release.digests[repo]


def test_the_production_overlay_is_pinned_to_the_released_digests(release):
    rendered = subprocess.run(["kubectl", "kustomize", str(release.checkout / "k8s/overlays/production")],
                              capture_output=True, text=True, check=True).stdout
    used = set(re.findall(r"^\s*(?:- )?image: (\S+)$", rendered, re.M))
    expected = {f"{release.repo(a)}@{release.tag_digest(release.repo(a) + ':' + release.version)}"
                for a in RELEASED}
    assert used == expected, (used, expected)
    assert release.pins() == {release.repo(a): release.tag_digest(f"{release.repo(a)}:{release.sha}")
                              for a in RELEASED}
    # Written, so the committed example (zeros) is not what rendered.
    assert "0" * 64 not in rendered


def test_the_readme_s_commands_pull_verify_and_run_the_release(release, record):
    """nix/README.md's "Pulling the images" block, with the local registry for ghcr.io/<owner>
    and the key pair's flags for keyless' identity flags."""
    block = re.search(r"### Pulling the images\n\n```sh\n(.*?)```",
                      (procs.REPO / "nix" / "README.md").read_text(), re.S).group(1)
    block = block.replace("ghcr.io/<owner>", release.env["REGISTRY"]).replace("0.2.0", release.version)
    lines = block.replace("\\\n", " ").splitlines()
    pulls = [line.split("#")[0].split() for line in lines if line.startswith("docker pull ")]
    assert [p[2] for p in pulls] == [release.repo(a) + ":" + release.version for a in RELEASED], pulls
    for argv in pulls:
        release.tool("docker", *argv[1:])
    (verify,) = [line for line in lines if line.startswith("cosign verify ")]
    assert verify.split()[2] == release.repo("api-image") + ":" + release.version
    assert release.verify(verify.split()[2]).returncode == 0
    (up,) = [line for line in lines if "docker compose up" in line]
    assignments = dict(word.split("=", 1) for word in up.split("docker compose")[0].split())
    assert set(assignments) == {"API_IMAGE", "PROXY_IMAGE", "DB_IMAGE"}, assignments
    with compose.Project(prefix="release", env=assignments) as p:
        p.make_secrets()
        seconds = p.up()
        created = requests.post(p.url("/create_user?userid=1&username=John"), timeout=10)
        assert created.status_code == 201, created.text
        fetched = requests.get(p.url("/get_user?userid=1"), timeout=10)
        assert fetched.status_code == 200 and "John" in fetched.text, fetched.text
        running = {s: p.inspect(s)["Config"]["Image"] for s in ("api", "proxy", "db")}
    assert running == {RELEASED[a]: release.repo(a) + ":" + release.version for a in RELEASED}
    record(f"the release pulled, verified (cosign, key pair) and up with compose in {seconds:.1f} s; "
           "the README's two calls answered 201 and 200")


def test_cosign_refuses_an_unsigned_image_an_altered_one_and_another_key(release):
    repo = release.repo("api-image")
    # Unsigned: an image the release never published (the acme stand-in), pushed beside it.
    archive = release.work / "unsigned.tar"
    release.tool("docker", "save", "-o", str(archive), release.stack_images["acme"])
    release.tool("skopeo", "copy", f"docker-archive:{archive}", f"docker://{repo}:unsigned")
    out = release.verify(f"{repo}:unsigned")
    assert out.returncode != 0 and NO_SIGNATURE in out.stderr.lower(), out.stderr
    # Altered: one more label on the signed image, pushed over the release's tag as someone with
    # write access to the registry could.
    signed = f"{repo}:{release.version}"
    altered = f"{repo}:0.1.0-altered"
    release.tool("docker", "pull", "-q", signed)
    container = release.tool("docker", "create", signed).stdout.strip()
    try:
        release.tool("docker", "commit", "--change", "LABEL altered=yes", container, altered)
    finally:
        release.tool("docker", "rm", container)
    release.tool("docker", "tag", altered, signed)
    release.tool("docker", "push", "-q", signed)
    out = release.verify(signed)
    assert out.returncode != 0 and NO_SIGNATURE in out.stderr.lower(), out.stderr
    # The overlay's pin still names the signed index, which still verifies.
    assert release.verify(f"{repo}@{release.pins()[repo]}").returncode == 0
    # Another key pair: the release's signature is not its.
    other = release.work / "other"
    other.mkdir()
    release.tool(procs.program("cosign"), "generate-key-pair", cwd=other)
    out = release.verify(f"{repo}@{release.digests[repo]}", key=other / "cosign.pub")
    assert out.returncode != 0, out.stdout
