"""Helpers of tests/monitoring (a module of its own name: several suites
have a conftest.py, and one pytest run collects them all). A real monitoring stack of local processes on free loopback ports: MariaDB,
the release user-api, nginx with the shipped config (and its TLS listener), the
nginx, mysqld and blackbox exporters, node_exporter serving the metrics db/backup.sh writes, and
Prometheus (all from Debian), scraping each other with the repository's monitoring/prometheus.yml
(targets and intervals rewritten).
"""

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from harness import procs, tls
from harness.api import Api
from harness.mariadb import MariaDB
from harness.nginx import Nginx
from harness.ports import free_port, wait_http, wait_until

MONITORING = procs.REPO / "monitoring"

# Production scrapes every 15 s; here every second, so that a test takes
# seconds. Range windows in expressions shrink by the same factor (see
# `scaled`), so they hold as many samples as in production.
SCRAPE_SECONDS = 1
PRODUCTION_SCRAPE_SECONDS = 15

# The mysqld exporter's own user, with the grants db/entrypoint.sh gives it
# (see monitoring/README.md): nothing that reads the application's rows.
EXPORTER_USER = "exporter"
EXPORTER_GRANTS = "PROCESS, REPLICATION CLIENT, SLAVE MONITOR"
# The backup account's, as db/entrypoint.sh grants them (the archiver reads the binary log).
BACKUP_USER = "backup"
BACKUP_GRANTS = ("SELECT, SHOW VIEW, TRIGGER, EVENT ON app.*", "REPLICATION SLAVE, BINLOG MONITOR ON *.*")
# The binary log as db/entrypoint.sh writes it.
BINLOG_ARGS = ("--log-bin=binlog-monitoring", "--server-id=1", "--binlog-format=ROW", "--sync-binlog=1")
# db/backup.sh's size of the backups' filesystem here (a tmpfs, when root may mount one): small
# enough for a test to fill it.
BACKUPS_TMPFS = "8m"


def program(name: str) -> str:
    try:
        return procs.program(name)
    except FileNotFoundError:
        pytest.fail(
            f"{name} is not installed: apt-get install prometheus prometheus-nginx-exporter "
            "prometheus-mysqld-exporter mariadb-server mariadb-client nginx"
        )


def scaled(expr: str) -> str:
    """``expr`` with each range window scaled to the test's scrape interval,
    never below four scrapes (what Grafana's $__rate_interval guarantees),
    and Grafana's $__rate_interval as it would be for a 1 s scrape."""
    import re

    def window(match):
        seconds = int(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]
        return f"[{max(4, seconds * SCRAPE_SECONDS // PRODUCTION_SCRAPE_SECONDS)}s]"

    expr = expr.replace("$__rate_interval", f"{4 * SCRAPE_SECONDS}s")
    return re.sub(r"\[(\d+)([smh])\]", window, expr)


class Prometheus:
    def __init__(self, targets: dict[str, str], probers: dict[str, str] | None = None):
        """``targets``: job -> the one local target. ``probers``: job -> the local address of
        the exporter a probing job's scrape goes to (the blackbox exporter of the job `tls`,
        whose target is what it probes)."""
        self.dir = Path(tempfile.mkdtemp(prefix="user-api-prometheus-"))
        self.port = free_port()
        targets = {**targets, "prometheus": f"127.0.0.1:{self.port}"}
        config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
        jobs = {job["job_name"] for job in config["scrape_configs"]}
        assert jobs == set(targets), f"jobs in prometheus.yml {jobs} vs the test's {set(targets)}"
        config["global"].update(
            scrape_interval=f"{SCRAPE_SECONDS}s",
            scrape_timeout=f"{SCRAPE_SECONDS}s",
            evaluation_interval=f"{SCRAPE_SECONDS}s",
        )
        # The very rule files Prometheus loads in compose, by absolute path.
        config["rule_files"] = [str(MONITORING / rule) for rule in config["rule_files"]]
        for job in config["scrape_configs"]:
            # Each job's discovery (static, or DNS for the api's replicas) becomes the one
            # local target: there is no Docker DNS here.
            for discovery in [k for k in job if k.endswith("_configs") and k != "relabel_configs"]:
                del job[discovery]
            job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
            for rule in job.get("relabel_configs", []):
                if rule.get("target_label") == "__address__":
                    rule["replacement"] = (probers or {})[job["job_name"]]
        self.config = self.dir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.process = procs.spawn(
            [
                program("prometheus"),
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
            ],
            self.dir / "prometheus.log",
        )
        wait_http(self.url("/-/ready"), 60, "prometheus", alive=self.running)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def running(self) -> bool:
        return self.process.poll() is None

    def api(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(self.url(f"/api/v1/{path}?{query}"), timeout=10) as r:
            answer = json.load(r)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict]:
        """An instant query: the result vector (each with a float value)."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return data["result"]

    def wait_for(self, expr: str, within: float, what: str, condition=bool) -> list[dict]:
        found = []

        def holds():
            nonlocal found
            found = self.query(expr)
            return condition(found)

        wait_until(holds, within, what, alive=self.running, interval=0.5)
        return found

    def log(self) -> str:
        return (self.dir / "prometheus.log").read_text(errors="replace")

    def close(self):
        procs.stop(self.process)
        shutil.rmtree(self.dir, ignore_errors=True)


class Exporter:
    def __init__(self, name: str, argv: list[str], port: int, env=None):
        self.dir = Path(tempfile.mkdtemp(prefix=f"user-api-{name}-"))
        self.port = port
        self.process = procs.spawn(argv, self.dir / "exporter.log", env=env)
        wait_http(f"http://127.0.0.1:{port}/metrics", 30, name, alive=self.running)

    def running(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return (self.dir / "exporter.log").read_text(errors="replace")

    def close(self):
        procs.stop(self.process)
        shutil.rmtree(self.dir, ignore_errors=True)


def nginx_exporter(nginx: Nginx) -> Exporter:
    port = free_port()
    return Exporter(
        "nginx-exporter",
        [
            program("prometheus-nginx-exporter"),
            f"-nginx.scrape-uri=http://127.0.0.1:{nginx.status_port}/nginx_status",
            f"-web.listen-address=127.0.0.1:{port}",
        ],
        port,
    )


def blackbox_exporter() -> Exporter:
    """The repository's monitoring/blackbox.yml, as the image holds it."""
    port = free_port()
    return Exporter(
        "blackbox-exporter",
        [
            program("prometheus-blackbox-exporter"),
            f"--config.file={MONITORING / 'blackbox.yml'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        port,
    )


def certificate(directory: Path, days: int) -> tuple[Path, Path]:
    """A self-signed certificate for localhost ending ``days`` from now, and its key."""
    return tls.self_signed(directory / f"cert-{days}d.pem", directory / f"key-{days}d.pem", "localhost",
                           days=days)


def backup_exporter(metrics_dir: Path) -> Exporter:
    """node_exporter as the image runs it (nix/contract.json's entrypoint), on ``metrics_dir``."""
    port = free_port()
    contract = json.loads((procs.REPO / "nix" / "contract.json").read_text())["backup-exporter"]
    flags = [f"--collector.textfile.directory={metrics_dir}" if f.startswith("--collector.textfile.directory=")
             else f for f in contract["entrypoint"][1:]]
    return Exporter(
        "backup-exporter",
        [program("prometheus-node-exporter"), *flags, f"--web.listen-address=127.0.0.1:{port}"],
        port,
    )


class BackupScript:
    """db/backup.sh itself, run here against the stack's MariaDB into ``backups``: the server
    programs it calls by name are the harness's (production's versions)."""

    def __init__(self, db: MariaDB, password: str, backups: Path):
        self.dir = Path(tempfile.mkdtemp(prefix="user-api-db-backup-"))
        (self.dir / "bin").mkdir()
        for name in ("mariadb", "mariadb-dump", "mariadb-binlog"):
            (self.dir / "bin" / name).symlink_to(program(name))
        secret = self.dir / "backup_password"
        secret.write_text(password)
        self.backups = backups
        self.env = {
            **os.environ,
            "PATH": f"{self.dir / 'bin'}:{os.environ['PATH']}",
            "TMPDIR": str(self.dir),
            "DB_HOST": "127.0.0.1",
            "DB_PORT": str(db.port),
            "DB_NAME": "app",
            "BACKUP_USER": BACKUP_USER,
            "BACKUP_PASSWORD_FILE": str(secret),
            "BACKUP_DIR": str(backups),
        }

    def run(self, *args, env=None) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", procs.REPO / "db" / "backup.sh", *args], env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=120)

    def spawn(self, *args, log: Path) -> subprocess.Popen:
        return procs.spawn(["bash", str(procs.REPO / "db" / "backup.sh"), *args], log, env=self.env)

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def mysqld_exporter(db: MariaDB, password: str) -> Exporter:
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="user-api-mysqld-exporter-cnf-"))
    cnf = directory / "my.cnf"
    # The exporter reads its login from a my.cnf; in compose that file is
    # written from the password secret at start (monitoring/README.md).
    cnf.write_text(
        f"[client]\nuser={EXPORTER_USER}\npassword={password}\nhost=127.0.0.1\nport={db.port}\n"
    )
    cnf.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k != "DATA_SOURCE_NAME"}
    exporter = Exporter(
        "mysqld-exporter",
        [
            program("prometheus-mysqld-exporter"),
            f"--config.my-cnf={cnf}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        port,
        env=env,
    )
    exporter.cnf_dir = directory
    return exporter


class Stack:
    """Everything, started once per test module."""

    def __init__(self):
        self.closers = []
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self):
        self.db = MariaDB.start(extra_args=BINLOG_ARGS)
        self.closers.append(self.db.close)
        self.database_url = self.db.create_database("app")
        self.backup_password = "bk-" + os.urandom(8).hex()
        self.db.sql(f"CREATE USER '{BACKUP_USER}'@'%' IDENTIFIED BY '{self.backup_password}'")
        for grant in BACKUP_GRANTS:
            self.db.sql(f"GRANT {grant} TO '{BACKUP_USER}'@'%'")
        # ./backups: a small tmpfs where root may mount one, so that a test can fill it
        self.backups = Path(tempfile.mkdtemp(prefix="user-api-backups-"))
        self.closers.append(lambda: shutil.rmtree(self.backups, ignore_errors=True))
        self.backups_is_tmpfs = procs.running_as_root()
        if self.backups_is_tmpfs:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={BACKUPS_TMPFS},mode=0700", "tmpfs",
                            self.backups], check=True)
            self.closers.append(lambda: subprocess.run(["umount", "-l", self.backups], check=False))
        (self.backups / "metrics").mkdir(mode=0o700)
        self.backup_script = BackupScript(self.db, self.backup_password, self.backups)
        self.closers.append(self.backup_script.close)
        self.backup_exporter = backup_exporter(self.backups / "metrics")
        self.closers.append(self.backup_exporter.close)
        self.exporter_password = "exp-" + os.urandom(8).hex()
        self.db.sql(
            f"CREATE USER '{EXPORTER_USER}'@'%' IDENTIFIED BY '{self.exporter_password}' "
            "WITH MAX_USER_CONNECTIONS 3"
        )
        self.db.sql(f"GRANT {EXPORTER_GRANTS} ON *.* TO '{EXPORTER_USER}'@'%'")
        # A small pool and short timeouts: the tests saturate it and hold
        # statements past the query timeout.
        self.api = Api(
            self.database_url,
            env={
                "DATABASE_MAX_CONNECTIONS": "2",
                "DATABASE_MIN_CONNECTIONS": "1",
                "DATABASE_QUERY_TIMEOUT": "1",
                "DATABASE_CONNECT_TIMEOUT": "1",
                "ROCKET_ACCESS_LOG": "false",
            },
        )
        self.closers.append(self.api.close)
        # The shipped rate limit would turn the test's traffic into 429s. HTTPS with a
        # certificate of a year, which the blackbox exporter reads; the files are replaced (and
        # nginx reloaded) to provoke the expiry alerts.
        self.tls_dir = Path(tempfile.mkdtemp(prefix="user-api-monitoring-tls-"))
        self.closers.append(lambda: shutil.rmtree(self.tls_dir, ignore_errors=True))
        self.tls_cert, self.tls_key = self.tls_dir / "tls_cert.pem", self.tls_dir / "tls_key.pem"
        for made, served in zip(certificate(self.tls_dir, 365), (self.tls_cert, self.tls_key)):
            shutil.copyfile(made, served)
        self.nginx = Nginx.start(
            f"127.0.0.1:{self.api.port}", files={"rate_limit_exempt.conf": '127.0.0.1 "";\n'}, access_log=False,
            tls=(self.tls_cert, self.tls_key),
        )
        self.closers.append(self.nginx.close)
        self.nginx_exporter = nginx_exporter(self.nginx)
        self.closers.append(self.nginx_exporter.close)
        self.blackbox_exporter = blackbox_exporter()
        self.closers.append(self.blackbox_exporter.close)
        self.mysqld_exporter = mysqld_exporter(self.db, self.exporter_password)
        self.closers.append(self.mysqld_exporter.close)
        self.closers.append(lambda: shutil.rmtree(self.mysqld_exporter.cnf_dir, ignore_errors=True))
        self.prometheus = Prometheus(
            {
                "api": f"127.0.0.1:{self.api.port}",
                "nginx": f"127.0.0.1:{self.nginx_exporter.port}",
                "mysql": f"127.0.0.1:{self.mysqld_exporter.port}",
                "tls": f"127.0.0.1:{self.nginx.tls_port}",
                "backups": f"127.0.0.1:{self.backup_exporter.port}",
            },
            probers={"tls": f"127.0.0.1:{self.blackbox_exporter.port}"},
        )
        self.closers.append(self.prometheus.close)

    def logs(self) -> str:
        parts = [
            ("prometheus", self.prometheus.log()),
            ("user-api", self.api.log()),
            ("nginx exporter", self.nginx_exporter.log()),
            ("mysqld exporter", self.mysqld_exporter.log()),
            ("blackbox exporter", self.blackbox_exporter.log()),
            ("backup exporter", self.backup_exporter.log()),
        ]
        return "\n".join(f"---- {name}\n{text[-3000:]}" for name, text in parts)

    def close(self):
        for closer in reversed(self.closers):
            try:
                closer()
            except Exception as e:  # noqa: BLE001 - the others must still run
                print(f"cleanup: {e}")


def http(method: str, url: str, body: dict | None = None, timeout: float = 10) -> int:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code


def wait(seconds: float):
    time.sleep(seconds)
