"""An nginx instance running the project's ``nginx/nginx.conf`` unchanged.

The instance directory holds a symlink to the shipped nginx.conf and the
include files it reads from its own directory: the shipped defaults, then
the instance's own listen ports (loopback, free), upstream, access log (a
file the test can read) and whatever ``files`` the caller passes. nginx runs
with that directory as its prefix, so the pid file and the temp directories
are the instance's too: parallel instances never share a path.
"""

import json
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from . import ports, procs

SHIPPED = procs.REPO / "nginx"


def tls_conf(port: int, cert: Path, key: Path) -> str:
    """The shipped tls.conf on a loopback port with these files: its directives
    (``http2 on``, ...) are the image's own."""
    text = (SHIPPED / "tls.conf").read_text()
    for shipped, own in (("listen 8443 ", f"listen 127.0.0.1:{port} "),
                         ("/run/secrets/tls_cert", str(cert)), ("/run/secrets/tls_key", str(key))):
        if shipped not in text:
            raise ValueError(f"nginx/tls.conf no longer says {shipped!r}")
        text = text.replace(shipped, own)
    return text


def _instance_dir(upstream, files, port, status_port, access_log: bool) -> Path:
    directory = Path(tempfile.mkdtemp(prefix="user-api-nginx-"))
    for include in SHIPPED.glob("*.conf"):
        if include.name != "nginx.conf":
            shutil.copyfile(include, directory / include.name)
    (directory / "nginx.conf").symlink_to(SHIPPED / "nginx.conf")
    servers = [upstream] if isinstance(upstream, str) else list(upstream)
    own = {
        "upstream.conf": "".join(f"server {s};\n" for s in servers),
        # backlog as the shipped listen.conf (nginx/listen.conf says why)
        "listen.conf": f"listen 127.0.0.1:{port} default_server backlog=4096;\n",
        "status-listen.conf": f"listen 127.0.0.1:{status_port};\n",
        # Plain HTTP only, unless the caller asks for TLS (Nginx.start's tls).
        "tls.conf": "",
        # Unbuffered: a test reads its line right after the response.
        "access-log.conf": (
            f"access_log {directory / 'access.log'} json_access;\n" if access_log else "access_log off;\n"
        ),
    }
    for name, text in {**own, **(files or {})}.items():
        if name == "nginx.conf" or "/" in name:
            raise ValueError(f"{name}: only include files next to nginx.conf can be replaced")
        (directory / name).write_text(text)
    return directory


def _argv(directory: Path, *extra, wrapper=()):
    return [*wrapper, procs.program("nginx"), *extra, "-p", f"{directory}/", "-e", "stderr", "-c", str(directory / "nginx.conf")]


def check(files=None, wrapper=()) -> subprocess.CompletedProcess:
    """``nginx -t`` of the shipped config with a loopback upstream (``wrapper``: a command
    prefix, e.g. the proxy image's preflight)."""
    directory = _instance_dir(f"127.0.0.1:{ports.free_port()}", files, ports.free_port(), ports.free_port(), True)
    try:
        return subprocess.run(_argv(directory, "-t", wrapper=wrapper), capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class Nginx:
    def __init__(self, directory: Path, port: int, status_port: int, process, tls_port=None):
        self.dir = directory
        self.port = port
        self.status_port = status_port
        self.tls_port = tls_port
        self.process = process

    @classmethod
    def start(cls, upstream, files=None, access_log=True, workers=None, within=10, wrapper=(),
              tls=None) -> "Nginx":
        """``upstream``: "host:port" or a list of them. ``files``: include
        files by name, replacing the shipped ones (e.g. ``limits.conf``).
        ``wrapper``: a command prefix for nginx (the profiler's valgrind).
        ``tls``: (certificate, key) files for the shipped TLS listener, on
        ``tls_port``."""
        # A free port may be taken before nginx binds it: retry on that only.
        for attempt in range(3):
            port, status_port = ports.free_port(), ports.free_port()
            tls_port = ports.free_port() if tls else None
            own = dict(files or {})
            if tls:
                own.setdefault("tls.conf", tls_conf(tls_port, *tls))
            directory = _instance_dir(upstream, own, port, status_port, access_log)
            if workers:
                (directory / "workers.conf").write_text(f"worker_processes {workers};\n")
            process = procs.spawn(_argv(directory, wrapper=wrapper), directory / "error.log")
            proxy = cls(directory, port, status_port, process, tls_port)
            try:
                ports.wait_until(proxy._answers, within, "nginx", alive=proxy.running)
                return proxy
            except (TimeoutError, RuntimeError) as e:
                log = proxy.error_log()
                proxy.close()
                if "Address already in use" in log and attempt < 2:
                    continue
                raise RuntimeError(f"{e}:\n{log}") from None
        raise AssertionError("unreachable")

    def _answers(self) -> bool:
        # The status listener is not rate limited: stub_status proves it is
        # this nginx; the public port only by connecting, so no request
        # takes a token from a rate limit under test.
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}/nginx_status", timeout=1) as r:
                if not r.read().startswith(b"Active connections:"):
                    return False
        except OSError:
            return False
        return ports.port_answers(self.port)

    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def pids(self):
        """The master and its workers."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [self.process.pid, *map(int, children.read_text().split())]
        except OSError:
            return [self.process.pid]

    def error_log(self) -> str:
        try:
            return (self.dir / "error.log").read_text(errors="replace")
        except OSError:
            return ""

    def access_log(self):
        """Every complete access log line so far, parsed."""
        try:
            text = (self.dir / "access.log").read_text()
        except OSError:
            return []
        return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]

    def describe(self) -> dict:
        return {"port": self.port, "status_port": self.status_port, "dir": str(self.dir), "pid": self.process.pid}

    def close(self, keep_files=False):
        """SIGQUIT: the graceful stop the image uses too."""
        procs.stop(self.process, signal.SIGQUIT, within=5)
        if not keep_files:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
