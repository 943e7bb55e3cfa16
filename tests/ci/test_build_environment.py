"""The flake's checks run in the environment a Nix build gives them (nix/tests/build_env.py,
issue 24 item 2): PATH holding only the declared inputs (nix/build-inputs.json maps them to
Debian programs), no HOME, /build, loopback only, the source exactly the derivation's fileset.

The runs of the real checks prove they pass there; the mutations, each applied to a scratch
copy of the flake, prove the environment bites: a dropped input is a command not found, a file
outside the fileset is missing, HOME cannot be written, a non-loopback address is unreachable,
and an input the table lacks stops the run. The user-api check (minutes) and its mutations run
only with BUILD_ENV_CARGO=1 (.ci/run sets it); `python3 nix/tests/build_env.py user-api` is the
same run. The dev shell's `cargo test` (`build_env.py --devshell`) is tests/run's cargo stage.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "nix" / "tests" / "build_env.py"
sys.path.insert(0, str(RUNNER.parent))

import build_env  # noqa: E402  (nix/tests is not a package)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and mounts need root")


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The runner as CI calls it, its output (stdout and stderr) in .stdout."""
    return subprocess.run([sys.executable, str(RUNNER), *args], cwd=REPO, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def scratch_base(tmp_path_factory) -> Path:
    """The git-tracked files (what the flake sees), copied once; each mutation copies this."""
    base = tmp_path_factory.mktemp("flake") / "base"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (base / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, base / name)
    return base


@pytest.fixture
def mutant(scratch_base, tmp_path):
    """mutant(file, old, new) -> a scratch flake with `old` replaced by `new` in `file`."""

    def make(file: str, old: str, new: str) -> Path:
        flake = tmp_path / "flake"
        shutil.copytree(scratch_base, flake, symlinks=True)
        text = (flake / file).read_text()
        assert old in text, f"the mutation no longer applies: {old!r} is not in {file}"
        (flake / file).write_text(text.replace(old, new, 1))
        return flake

    return make


# nginx-config's script starts here; a mutation puts its own commands first.
NGINX_CONFIG_START = "        mkdir conf prefix\n"


def with_commands(mutant, commands: str) -> Path:
    return mutant("nix/checks.nix", NGINX_CONFIG_START, commands + NGINX_CONFIG_START)


# ---- the real checks ----------------------------------------------------------------------------

def test_nginx_config_passes_in_the_build_environment():
    out = run("nginx-config")
    assert out.returncode == 0, out.stdout
    assert "nginx.conf test is successful" in out.stdout, out.stdout


@pytest.mark.parametrize("check", ["db-scripts", "rustfmt"])
def test_the_lint_checks_pass_in_the_build_environment(check):
    """shellcheck on the scripts, rustfmt --check in the fileset's store copy (`cd "$src"`)."""
    out = run(check)
    assert out.returncode == 0, out.stdout


def test_image_config_passes_but_for_the_image_contents():
    """Its --check-files part reads the images' built contents (via the manifest's references),
    which only a Nix build makes: by default the runner refuses, naming them; without them,
    every other check of image_contract.py passes and only the contents' lines fail."""
    refused = run("image-config")
    assert refused.returncode == 2, refused.stdout
    assert "only a Nix build can make" in refused.stdout, refused.stdout
    assert "(runCommand)" in refused.stdout, refused.stdout

    out = run("image-config", "--unbuilt", "absent")
    failures = [line for line in out.stdout.splitlines() if line.startswith("FAIL")]
    contents = ("is not in the image contents", "no /etc/passwd or /etc/group")
    assert [f for f in failures if not f.endswith(contents)] == [], out.stdout
    summary = [line for line in out.stdout.splitlines() if line.startswith("image-contract:")]
    assert summary and int(summary[0].split()[1]) > 200, out.stdout


# ---- the table ----------------------------------------------------------------------------------

def test_every_declared_input_is_in_the_table(tmp_path):
    """Every check's and the dev shell's inputs map to table entries: a new input in
    checks.nix, rust.nix or devshell.nix without its Debian programs fails here; so does an
    entry no check or shell declares any more."""
    try:
        ev = build_env.Evaluator(REPO, tmp_path)
        table = build_env.Table.load()
        table.index(ev)
        names = ev.flake_attr(f"checks.{build_env.SYSTEM}", "builtins.attrNames")
        attrs = [f"checks.{build_env.SYSTEM}.{n}" for n in names]
        attrs.append(f"devShells.{build_env.SYSTEM}.default")
        seen = set()
        for attr in attrs:
            for path in build_env.read_check(ev, attr).inputs:
                seen.add(table.key_of(path, attr))
        # and no entry outlives the last input it plays
        assert sorted(set(table.inputs) - seen) == [], "entries no Nix file declares"
    finally:  # the private store's files are read-only
        subprocess.run(["chmod", "-R", "u+w", str(tmp_path)])


def test_an_input_the_table_lacks_stops_the_run(tmp_path):
    data = json.loads(build_env.TABLE.read_text())
    del data["inputs"]["openssl"]
    table = tmp_path / "build-inputs.json"
    table.write_text(json.dumps(data))
    out = run("nginx-config", "--table", str(table))
    assert out.returncode == 2, out.stdout
    assert "-openssl-0, which no entry of build-inputs.json maps" in out.stdout, out.stdout


# ---- the mutations ------------------------------------------------------------------------------

def test_a_dropped_input_is_a_command_not_found(mutant):
    flake = mutant("nix/checks.nix", "          nginx\n          openssl\n", "          nginx\n")
    out = run("nginx-config", "--flake", str(flake))
    assert out.returncode != 0, out.stdout
    assert "openssl: command not found" in out.stdout, out.stdout


def test_a_file_outside_the_fileset_is_missing(mutant):
    """The proxy's config directory is nginx/*.conf (images.nix's fileset): nginx/README.md, in
    the work tree, is not in it."""
    assert (REPO / "nginx" / "README.md").exists()
    flake = with_commands(mutant, "        cat ${images.proxyConfigDir}/README.md\n")
    out = run("nginx-config", "--flake", str(flake))
    assert out.returncode != 0, out.stdout
    assert "README.md: No such file or directory" in out.stdout, out.stdout


def test_home_cannot_be_written(mutant):
    flake = with_commands(mutant, '        mkdir -p "$HOME"\n')
    out = run("nginx-config", "--flake", str(flake))
    assert out.returncode != 0, out.stdout
    assert "cannot create directory '/homeless-shelter'" in out.stdout, out.stdout


def test_only_loopback_is_reachable(mutant):
    """A connection to 127.0.0.1 is refused (lo is up, nothing listens); one to any other
    address finds no network."""
    flake = with_commands(mutant, (
        "        if (exec 3<>/dev/tcp/127.0.0.1/9) 2>loopback.err; then exit 3; fi\n"
        "        grep -q 'Connection refused' loopback.err\n"
        "        exec 3<>/dev/tcp/192.0.2.1/80\n"))
    out = run("nginx-config", "--flake", str(flake))
    assert out.returncode != 0, out.stdout
    assert "192.0.2.1/80: Network is unreachable" in out.stdout, out.stdout


def test_the_environment_is_the_sandbox_s(mutant):
    """Who and where the script runs, and what its environment holds: nothing of the caller's."""
    flake = with_commands(mutant, (
        '        [ "$(id -u):$(id -g)" = 1000:100 ] || { echo "BAD uid $(id -u):$(id -g)"; exit 1; }\n'
        '        [ "$PWD" = /build ] && [ "$TMPDIR" = /build ] && [ "$NIX_BUILD_TOP" = /build ]\n'
        '        [ "$HOME" = /homeless-shelter ] && [ ! -e /homeless-shelter ]\n'
        '        case "$out" in /nix/store/*-user-api-nginx-config) ;; *) exit 1 ;; esac\n'
        '        if env | grep -E "^(USER_API_TOOLCHAIN|XDG_CACHE_HOME|USER|LOGNAME|VIRTUAL_ENV)="; '
        "then exit 1; fi\n"
        "        for p in python3 curl ss cargo; do if command -v $p; then exit 1; fi; done\n"
        '        if touch "$(dirname "$(command -v nginx)")/x" 2>/dev/null; then exit 1; fi\n'
        "        echo ENVIRONMENT-OK\n"))
    out = run("nginx-config", "--flake", str(flake))
    assert out.returncode == 0, out.stdout
    assert "ENVIRONMENT-OK" in out.stdout, out.stdout


# ---- cargo test: in the user-api check's sandbox, and as a `nix develop` user (minutes) ----------

cargo_runs = pytest.mark.skipif(
    os.environ.get("BUILD_ENV_CARGO") != "1",
    reason="minutes: BUILD_ENV_CARGO=1 (.ci/run sets it), or python3 nix/tests/build_env.py user-api")


def cargo_target() -> Path:
    """One target directory for the cargo runs here: the check's own run compiles, the
    mutations after it (one test each) reuse what it compiled. A Nix build starts without one;
    cargo's fingerprints make a reused one give the same result, only sooner."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "user-api-tests" \
        / "build-env" / "target"


@cargo_runs
def test_the_user_api_check_passes_in_the_build_environment():
    out = run("user-api", "--cargo-target-dir", str(cargo_target()), timeout=3600)
    assert out.returncode == 0, out.stdout[-20000:]
    assert "test result: ok" in out.stdout, out.stdout[-20000:]


@cargo_runs
def test_the_user_api_check_without_iproute2_fails_where_ss_runs(mutant):
    """Issue 24's defect, found again: the listen-backlog test runs `ss`; without iproute2 among
    the check's inputs, that test fails in the sandbox (and passes in the work tree). Only that
    test runs (checkFlags); the target directory is reused across runs to save the compile."""
    flake = mutant("nix/rust.nix", "        nginx\n        iproute2\n      ];",
                   '        nginx\n      ];\n      checkFlags = [ "the_listen_backlog_is_raised_as_configured" ];')
    out = run("user-api", "--flake", str(flake), "--cargo-target-dir", str(cargo_target()), timeout=3600)
    assert out.returncode != 0, out.stdout[-20000:]
    assert "test lifecycle::the_listen_backlog_is_raised_as_configured ... FAILED" in out.stdout, \
        out.stdout[-20000:]
    assert "1 failed" in out.stdout, out.stdout[-20000:]


@cargo_runs
def test_the_user_api_check_without_nginx_in_its_fileset_fails_where_the_proxy_runs(mutant):
    """The proxy tests run the shipped nginx/ config: a fileset without nginx/ fails them in the
    sandbox, though the work tree has it."""
    flake = mutant("nix/rust.nix", "    ../tests/harness\n    ../nginx\n", "    ../tests/harness\n")
    text = (flake / "nix" / "rust.nix").read_text()
    (flake / "nix" / "rust.nix").write_text(text.replace(
        "      doCheck = true;\n",
        '      doCheck = true;\n      checkFlags = [ "proxy::the_seed_journey_works_through_the_proxy" ];\n', 1))
    out = run("user-api", "--flake", str(flake), "--cargo-target-dir", str(cargo_target()), timeout=3600)
    assert out.returncode != 0, out.stdout[-20000:]
    assert "proxy::the_seed_journey_works_through_the_proxy ... FAILED" in out.stdout, \
        out.stdout[-20000:]
