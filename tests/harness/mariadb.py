"""A throwaway MariaDB server on a loopback port: root without a password.

Installing a data directory takes seconds, so it is done once per machine
into a template (under a file lock, so parallel test runs never install at
the same time) and copied for each server.
"""

import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from . import ports, procs

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "user-api-tests"

# Durability is not what the tests measure (the benchmark asks for it
# explicitly): no fsync per commit, no binary log.
FAST = ("--innodb-flush-log-at-trx-commit=2", "--skip-log-bin")


def _root_flag():
    # mariadbd refuses to run as root unless told to; as any other user the
    # flag would make mariadb-install-db try to chown and fail.
    return ["--user=root"] if procs.running_as_root() else []


def _version() -> str:
    out = subprocess.run([procs.program("mariadbd"), "--version"], capture_output=True, text=True)
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in out.stdout.split(" Ver ")[-1].split()[0])


def _install_db(datadir: Path) -> list[str]:
    """mariadb-install-db's command line. `--basedir` always: nixpkgs builds MariaDB in the
    STANDALONE layout, whose script otherwise looks for ./bin/my_print_defaults relative to the
    working directory (nixpkgs issue 20585; NixOS's mysql module passes it too)."""
    return [
        procs.program("mariadb-install-db"),
        "--no-defaults",
        f"--basedir={procs.prefix('mariadbd')}",
        f"--datadir={datadir}",
        "--auth-root-authentication-method=normal",
        "--skip-test-db",
        *_root_flag(),
    ]


def _template() -> Path:
    """A freshly installed data directory, made once per MariaDB version."""
    base = CACHE / f"mariadb-template-{_version()}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "mariadb-template.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (base / "ready").exists():
            shutil.rmtree(base, ignore_errors=True)
            base.mkdir(parents=True)
            out = subprocess.run(_install_db(base / "data"), capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"mariadb-install-db failed:\n{out.stdout}\n{out.stderr}")
            (base / "ready").touch()
    return base / "data"


class MariaDB:
    """One server: its own directory, data directory and port.

    ``MariaDB.start()`` installs and starts; ``MariaDB.prepare()`` only
    installs, for tests of what happens before the database exists.
    ``stop()`` is a clean shutdown (SIGTERM), ``crash()`` a SIGKILL,
    ``resume()`` starts it again on the same port and data.
    """

    def __init__(self, port=None, extra_args=(), durable=False, root=None, wrapper=(), within: float = 60):
        """``wrapper``: a command prefix for mariadbd (the profiler's valgrind),
        ``within``: how long a start may take (longer under valgrind)."""
        self.dir = Path(tempfile.mkdtemp(prefix="user-api-mariadb-", dir=root))
        self.port = port or ports.free_port()
        self.extra_args = list(extra_args)
        self.durable = durable
        self.wrapper = list(wrapper)
        self.within = within
        self.process = None
        shutil.copytree(_template(), self.dir / "data", symlinks=True)

    @classmethod
    def prepare(cls, **kwargs) -> "MariaDB":
        return cls(**kwargs)

    @classmethod
    def start(cls, **kwargs) -> "MariaDB":
        server = cls(**kwargs)
        try:
            server.resume()
        except BaseException:
            server.close()
            raise
        return server

    @property
    def args(self):
        return [
            "--no-defaults",
            f"--datadir={self.dir / 'data'}",
            f"--socket={self.dir / 'mysqld.sock'}",
            f"--pid-file={self.dir / 'mysqld.pid'}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            "--innodb-buffer-pool-size=64M",
            "--max-connections=500",
            *(() if self.durable else FAST),
            *_root_flag(),
            *self.extra_args,
        ]

    @property
    def log_path(self) -> Path:
        return self.dir / "server.log"

    @property
    def admin_url(self) -> str:
        return f"mysql://root@127.0.0.1:{self.port}"

    def url(self, database: str) -> str:
        return f"{self.admin_url}/{database}"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def resume(self, within: float | None = None):
        if self.running():
            return
        within = self.within if within is None else within
        self.process = procs.spawn([*self.wrapper, procs.program("mariadbd"), *self.args], self.log_path)
        try:
            ports.wait_port(self.port, within, "mariadbd", alive=self.running)
        except (TimeoutError, RuntimeError) as e:
            raise RuntimeError(f"{e}; its log:\n{self.log()}") from None

    def stop(self):
        """A clean shutdown, as a container stop does."""
        if self.process is not None:
            procs.stop(self.process, signal.SIGTERM, within=60)
            self.process = None

    def crash(self):
        """SIGKILL: InnoDB recovers on the next start."""
        if self.process is not None:
            procs.stop(self.process, signal.SIGKILL)
            self.process = None

    def pause(self):
        """SIGSTOP: the server keeps its port and accepts, but never answers.

        Returns once every thread has stopped: the signal is only pending
        until each thread next leaves the kernel, and on a loaded machine a
        thread already at work answered one more statement after a bare
        kill() had returned (a test's "stalled" read got its 200)."""
        self.process.send_signal(signal.SIGSTOP)
        # The parent learns of a stop through waitpid(WUNTRACED), which
        # reports it only once the whole thread group has stopped.
        _, status = os.waitpid(self.process.pid, os.WUNTRACED)
        if not os.WIFSTOPPED(status):
            self.process.returncode = os.waitstatus_to_exitcode(status)
            raise RuntimeError(f"mariadbd exited instead of stopping ({self.process.returncode})")

    def unpause(self):
        self.process.send_signal(signal.SIGCONT)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def sql(self, statement: str, database: str | None = None) -> str:
        """Runs statements with the mariadb client as root; tab-separated rows."""
        argv = [
            procs.program("mariadb"),
            "--no-defaults",
            "--protocol=tcp",
            "-h127.0.0.1",
            f"-P{self.port}",
            "-uroot",
            "--batch",
            "--skip-column-names",
        ]
        if database:
            argv.append(database)
        out = subprocess.run(argv, input=statement, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"mariadb client failed: {out.stderr.strip()}")
        return out.stdout

    def create_database(self, name: str) -> str:
        self.sql(f"CREATE DATABASE `{name}`")
        return self.url(name)

    def close(self):
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def wait_ready(server: MariaDB, within: float = 30):
    """Until a login works (the port opens slightly before that)."""
    deadline = time.monotonic() + within
    while True:
        try:
            server.sql("SELECT 1")
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
