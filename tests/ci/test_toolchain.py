"""The forky root (tests/harness/toolchain.py): what production runs, run from it as the very
process the harness spawned, and a root that cannot be built stops with its cause."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness import nginx, procs, toolchain

FORKY = os.environ.get("USER_API_TOOLCHAIN") == "forky"
forky_only = pytest.mark.skipif(not FORKY, reason="USER_API_TOOLCHAIN=path: PATH's servers")


def major_minor(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version)[:2])


@forky_only
def test_the_servers_are_production_s_versions():
    v = toolchain.versions()
    assert major_minor(v["nginx"]) >= (1, 30), v  # nixpkgs 26.05: 1.30; `resolve` since 1.27.3
    assert major_minor(v["MariaDB"]) >= (11, 4), v  # nixpkgs: 11.4
    assert major_minor(v["Prometheus"]) >= (3, 0), v
    assert major_minor(v["Nix"]) >= (2, 34), v
    assert major_minor(v["mysqld-exporter"]) >= (0, 15), v  # no DATA_SOURCE_NAME since 0.15
    assert major_minor(v["nginx-exporter"]) >= (1, 0), v


@forky_only
def test_a_server_is_the_process_the_harness_spawned():
    """Signals and /proc/<pid> reach the server itself: no process stands in between."""
    home = toolchain.home()
    with nginx.Nginx.start("127.0.0.1:9") as proxy:
        exe = os.readlink(f"/proc/{proxy.process.pid}/exe")
        assert Path(exe).is_relative_to(home / "root"), exe
        assert Path(os.readlink(f"/proc/{proxy.process.pid}/root")) == home / "root"
    assert proxy.process.returncode == 0  # SIGQUIT reached nginx: a graceful exit


@forky_only
def test_a_wrapped_program_starts_in_the_caller_s_directory():
    """chroot alone would start it in /: a relative path must mean what it means outside."""
    out = subprocess.run([procs.program("promtool"), "check", "config", "prometheus.yml"],
                         cwd=procs.REPO / "monitoring", capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "SUCCESS" in out.stdout + out.stderr, out


def test_path_mode_runs_path_s_programs(monkeypatch):
    monkeypatch.setenv("USER_API_TOOLCHAIN", "path")
    assert toolchain.wrapper("nginx") is None
    assert toolchain.root() == Path("/")


def test_an_unknown_mode_is_refused(monkeypatch):
    monkeypatch.setenv("USER_API_TOOLCHAIN", "bookworm")
    with pytest.raises(toolchain.ToolchainError, match="use 'forky' or 'path'"):
        toolchain.mode()


def harness(*args, env=None):
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=procs.REPO / "tests",
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=600)


@pytest.mark.skipif(os.geteuid() != 0, reason="building a root needs root")
def test_a_package_missing_from_the_mirror_is_named(tmp_path):
    with pytest.raises(toolchain.ToolchainError) as failed:
        toolchain.build(tmp_path, packages=(*toolchain.PACKAGES, "user-api-no-such-package"))
    message = str(failed.value)
    assert "\n" not in message
    assert "user-api-no-such-package" in message, message
    assert not list(tmp_path.glob("forky-*"))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small filesystem needs root")
def test_no_space_stops_with_one_line_and_builds_nothing(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(small)], check=True)
    try:
        out = harness("toolchain", env={"XDG_CACHE_HOME": str(small), "USER_API_TOOLCHAIN": "forky"})
        assert out.returncode == 1
        assert out.stderr.count("\n") == 1, out.stderr
        assert "no space for the forky root" in out.stderr and "GB free" in out.stderr, out.stderr
        assert not list((small / "user-api-tests").glob("forky-*/ready"))
    finally:
        subprocess.run(["umount", "-l", str(small)])
