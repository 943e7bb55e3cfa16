"""What the end-to-end tests share: HTTP through the proxy, a writer, the users listing, the
running processes' /proc and cgroup files, health and log timing."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import requests

# The bounds of issue 9, asserted on the compose stack.
ANSWER_WITHIN = 3.5        # every request while the database is unreachable: a JSON 503
FAIL_FAST_WITHIN = 0.1     # ... once the API already knows the database is down
BACK_WITHIN = 5.0          # service back after the database is healthy again
DB_ERRORS = {"database_unavailable", "database_interrupted"}

# MariaDB's own log lines (the same words from 10.x to 11.8).
CRASH_RECOVERY = "crash recovery"          # "InnoDB: Starting crash recovery from checkpoint"
NORMAL_SHUTDOWN = "Normal shutdown"        # "mariadbd (initiated by: ...): Normal shutdown"
SHUTDOWN_COMPLETE = "Shutdown complete"    # "mariadbd: Shutdown complete"
READY = "ready for connections"


def now() -> float:
    return time.time()


_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def parse_ts(ts: str) -> float:
    """Docker's RFC 3339 timestamps (up to nanoseconds) as epoch seconds."""
    m = _TS.match(ts.strip())
    if not m:
        raise ValueError(f"not a timestamp: {ts!r}")
    base, frac, tz = m.groups()
    t = datetime.fromisoformat(base + ("+00:00" if tz == "Z" else tz)).timestamp()
    return t + (float("0." + frac) if frac else 0.0)


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---- HTTP ----------------------------------------------------------------------------------------

def is_db_503(r: requests.Response) -> bool:
    """The API's JSON 503 for a database it cannot use, with its Retry-After."""
    if r.status_code != 503 or "Retry-After" not in r.headers:
        return False
    try:
        body = r.json()
    except ValueError:
        return False
    return body.get("error") in DB_ERRORS and isinstance(body.get("message"), str)


def all_users(base: str) -> dict[int, str]:
    """userid -> username of every stored user, paging GET /users (429s waited out)."""
    users, after = {}, None
    with requests.Session() as s:
        while True:
            url = f"{base}/users?limit=100" + (f"&after={after}" if after is not None else "")
            for _ in range(20):
                r = s.get(url, timeout=10)
                if r.status_code != 429:
                    break
                time.sleep(float(r.headers.get("Retry-After", "1")))
            assert r.status_code == 200, f"GET {url}: {r.status_code} {r.text}"
            page = r.json()
            users.update({u["userid"]: u["username"] for u in page["users"]})
            after = page["next_after"]
            if after is None:
                return users


@dataclass
class Result:
    userid: int
    username: str
    started: float
    latency: float
    status: int | None          # None: no answer at all (timeout, connection error)
    error: str | None = None    # the JSON "error", or the exception
    db_503: bool = False

    @property
    def ended(self) -> float:
        return self.started + self.latency


class Writer(threading.Thread):
    """POSTs /users with fresh ids until stopped; keeps every request's outcome.

    Paced (``interval`` between requests) to stay below the proxy's per-client rate limit,
    20 r/s, which every test request shares (they all come from the same address).
    """

    def __init__(self, base: str, first_id: int, tag: str, interval: float = 0.1):
        super().__init__(daemon=True, name=f"writer-{tag}")
        self.base, self.next_id, self.tag, self.interval = base, first_id, tag, interval
        self.results: list[Result] = []
        self._halt = threading.Event()

    def run(self):
        with requests.Session() as s:
            while not self._halt.is_set():
                uid = self.next_id
                self.next_id += 1
                name = f"{self.tag} n°{uid}"
                t0 = now()
                try:
                    r = s.post(f"{self.base}/users", json={"userid": uid, "username": name},
                               timeout=(5, 15))
                    res = Result(uid, name, t0, now() - t0, r.status_code, db_503=is_db_503(r))
                    if r.status_code != 201:
                        try:
                            res.error = r.json().get("error")
                        except ValueError:
                            res.error = r.text[:80]
                except requests.RequestException as e:
                    res = Result(uid, name, t0, now() - t0, None, error=type(e).__name__)
                self.results.append(res)
                self._halt.wait(self.interval)

    def stop(self) -> list[Result]:
        self._halt.set()
        self.join(30)
        return self.results

    def acked(self) -> dict[int, str]:
        return {r.userid: r.username for r in self.results if r.status == 201}

    def wait_for_success_after(self, t: float, within: float) -> bool:
        """Waits until a request that started after ``t`` got a 201."""
        deadline = now() + within
        while now() < deadline:
            if any(r.status == 201 and r.started > t for r in list(self.results)):
                return True
            time.sleep(0.1)
        return False


def summary(results: list[Result]) -> str:
    counts: dict[str, int] = {}
    for r in results:
        key = str(r.status) if r.error is None else f"{r.status} {r.error}"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))


@dataclass
class Outage:
    first_failure: float | None
    last_failure: float | None
    back: float | None            # end of the first 201 that started after the last failure
    slowest: Result | None

    @property
    def seconds(self) -> float:
        if self.first_failure is None:
            return 0.0
        return (self.back or now()) - self.first_failure


def outage(results: list[Result]) -> Outage:
    failed = [r for r in results if r.status != 201]
    slowest = max(results, key=lambda r: r.latency) if results else None
    if not failed:
        return Outage(None, None, None, slowest)
    last = max(r.started for r in failed)
    back = min((r.ended for r in results if r.status == 201 and r.started > last), default=None)
    return Outage(min(r.started for r in failed), last, back, slowest)


def bound_violations(results: list[Result]) -> list[str]:
    """Every request that broke "an answer within 3.5 s, a JSON 503 if not a 201"."""
    out = []
    for r in results:
        if r.status is None:
            out.append(f"POST /users {r.userid}: no answer ({r.error}) after {r.latency:.2f} s")
        elif r.latency > ANSWER_WITHIN:
            out.append(f"POST /users {r.userid}: {r.status} after {r.latency:.2f} s "
                       f"(> {ANSWER_WITHIN} s)")
        elif r.status != 201 and not r.db_503:
            out.append(f"POST /users {r.userid}: {r.status} {r.error!r}, not 201 nor the JSON "
                       f"503 database_unavailable/database_interrupted")
    return out


# ---- processes and cgroups -----------------------------------------------------------------------

def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (host PIDs)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                pass  # the task ended meanwhile; any other error is the caller's to see
    return out


def all_command_lines() -> str:
    """Every process's command line, as `ps -eo args` shows them (one per line)."""
    lines = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                lines.append((d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except (FileNotFoundError, ProcessLookupError):
                pass  # the process ended meanwhile; an unreadable one must not pass unread
    return "\n".join(lines)


class CommandLineWatch(threading.Thread):
    """Reads every process's command line every ``interval`` seconds until stopped, keeping the
    lines that hold one of ``secrets`` and the set of program names seen: a password on a
    command line for a moment (a healthcheck's client, a backup's dump) is caught while it is
    there, not only if it happens to be there when a test looks once."""

    def __init__(self, secrets: dict[str, str], interval: float = 0.02):
        super().__init__(daemon=True, name="command-line-watch")
        self.secrets, self.interval = secrets, interval
        self.found: dict[str, str] = {}
        self.programs: set[str] = set()
        self.samples = 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            for line in all_command_lines().splitlines():
                self.programs.add(line.split(" ", 1)[0].rsplit("/", 1)[-1])
                for name, value in self.secrets.items():
                    if value in line:
                        self.found[name] = line
            self.samples += 1
            self._halt.wait(self.interval)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self._halt.set()
        self.join(10)


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        fields[k] = v.strip()
    return fields


def root_mount_options(pid: int) -> list[str]:
    """Mount options of the process's root (/), from its mountinfo."""
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        parts = line.split()
        if parts[4] == "/":
            return parts[5].split(",")
    return []


def cgroup_dir(pid: int, controller: str) -> Path:
    """The process's cgroup directory for ``controller`` (v1), or its v2 directory."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return Path(f"/sys/fs/cgroup/{controller}{path}")
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return Path(f"/sys/fs/cgroup{line[3:]}")
    raise FileNotFoundError(f"no {controller} cgroup for pid {pid}")


def _first(d: Path, *names: str) -> str | None:
    for n in names:
        try:
            return (d / n).read_text().strip()
        except OSError:
            continue
    return None


def memory_limit(pid: int) -> int | None:
    v = _first(cgroup_dir(pid, "memory"), "memory.limit_in_bytes", "memory.max")
    return None if v in (None, "max") else int(v)


def memory_usage(pid: int) -> int:
    return int(_first(cgroup_dir(pid, "memory"), "memory.usage_in_bytes", "memory.current"))


def memory_peak(pid: int) -> int | None:
    v = _first(cgroup_dir(pid, "memory"), "memory.max_usage_in_bytes", "memory.peak")
    return int(v) if v else None


def pids_limit(pid: int) -> int | None:
    v = _first(cgroup_dir(pid, "pids"), "pids.max")
    return None if v in (None, "max") else int(v)


def pids_current(pid: int) -> int:
    return int(_first(cgroup_dir(pid, "pids"), "pids.current"))


def cpu_seconds(pid: int) -> float:
    """CPU time of the container's cgroup so far (all processes, healthcheck execs too)."""
    d = cgroup_dir(pid, "cpuacct")
    v = _first(d, "cpuacct.usage")
    if v is not None:
        return int(v) / 1e9
    stat = _first(d, "cpu.stat") or ""
    for line in stat.splitlines():
        k, _, val = line.partition(" ")
        if k == "usage_usec":
            return int(val) / 1e6
    raise FileNotFoundError(f"no CPU accounting for pid {pid}")


class Sampler(threading.Thread):
    """Samples each container's memory use and pids every ``interval`` seconds."""

    def __init__(self, pids: dict[str, int], interval: float = 0.2):
        super().__init__(daemon=True, name="sampler")
        self.pids, self.interval = pids, interval
        self.peak_mem = {s: 0 for s in pids}
        self.peak_pids = {s: 0 for s in pids}
        self.samples = {s: 0 for s in pids}
        self.errors: dict[str, str] = {}
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            for s, p in self.pids.items():
                try:
                    self.peak_mem[s] = max(self.peak_mem[s], memory_usage(p))
                    self.peak_pids[s] = max(self.peak_pids[s], pids_current(p))
                    self.samples[s] += 1
                except (OSError, ValueError, TypeError) as e:
                    self.errors[s] = f"{type(e).__name__}: {e}"
            self._halt.wait(self.interval)

    def stop(self):
        """Stops sampling; a service that was never read is an error, not a peak of 0."""
        self._halt.set()
        self.join(5)
        unread = {s: self.errors.get(s, "no sample") for s, n in self.samples.items() if n == 0}
        assert not unread, f"the sampler could not read {unread}"


# ---- health and logs -----------------------------------------------------------------------------

def first_healthy_check(state: dict, after: float) -> float | None:
    """End time of the first passing healthcheck that started after ``after``, from the
    container's State.Health.Log (docker keeps the last five)."""
    for entry in (state.get("Health") or {}).get("Log") or []:
        if entry.get("ExitCode") == 0 and parse_ts(entry["Start"]) > after:
            return parse_ts(entry["End"])
    return None


def wait_healthy(project, service: str, after: float, within: float) -> float:
    """Waits until the service's container is healthy with a check that started after
    ``after``; returns when that check passed."""
    deadline = now() + within
    last = "?"
    while now() < deadline:
        try:
            state = project.inspect(service)["State"]
        except Exception as e:  # noqa: BLE001 (recreate: a moment without a container)
            last = str(e)
        else:
            last = (state.get("Health") or {}).get("Status", "no healthcheck")
            t = first_healthy_check(state, after)
            if t is not None and last == "healthy":
                return t
        time.sleep(0.2)
    raise AssertionError(f"{service} not healthy within {within:.0f} s (last: {last})")


def log_lines(container: str, since: float) -> list[tuple[float, str]]:
    """(time, text) of a container's log lines since ``since`` (every run of that container)."""
    from harness.compose import docker

    r = docker("logs", "--timestamps", "--since", rfc3339(since), container, check=False)
    return _parse_log((r.stdout + r.stderr).splitlines())


class LogFollower:
    """``docker logs -f`` of a container from ``since`` on: its lines survive the container
    (a recreate removes the old container, and its log with it)."""

    def __init__(self, container: str, since: float):
        import subprocess

        self._proc = subprocess.Popen(
            ["docker", "logs", "--follow", "--timestamps", "--since", rfc3339(since), container],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._raw: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self._proc.stdout:
            self._raw.append(line.rstrip("\n"))

    def lines(self, wait: float = 5) -> list[tuple[float, str]]:
        """The lines so far; waits up to ``wait`` s for the follow to end (container stopped)."""
        try:
            self._proc.wait(wait)
        except Exception:  # noqa: BLE001 (still running: the container runs on)
            self._proc.kill()
            self._proc.wait()
        self._reader.join(5)
        return _parse_log(self._raw)


def _parse_log(raw: list[str]) -> list[tuple[float, str]]:
    lines = []
    for line in raw:
        ts, _, text = line.partition(" ")
        try:
            lines.append((parse_ts(ts), text))
        except ValueError:
            lines.append((0.0, line))
    lines.sort(key=lambda x: x[0])
    return lines


def first_line(lines, needle: str, after: float = 0.0) -> float | None:
    return next((t for t, text in lines if needle in text and t >= after), None)


def dump(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)


def backups_dir(p) -> Path:
    """The project's ./backups, made as the docs say: 0700, owned by the backup services' uid
    999 (compose would make a missing one as root, which they cannot write)."""
    d = p.dir / "backups"
    d.mkdir(mode=0o700, exist_ok=True)
    os.chown(d, 999, 999)
    return d


def root_sql(p, statements: str) -> str:
    """SQL as root over the db container's socket; the password goes through an option file on
    a pipe, never on a command line."""
    # (the entrypoint falls back to /tmp/mysqld when /run/mysqld is not writable: after a
    # `compose restart` on Engine 20.10 it is not)
    script = ('s=/run/mysqld/mysqld.sock; [ -S "$s" ] || s=/tmp/mysqld/mysqld.sock; '
              'exec mariadb --defaults-extra-file=<(printf "[client]\\nuser=root\\npassword=%s\\n" '
              '"$(cat /run/secrets/db_root_password)") --socket="$s" --batch --skip-column-names '
              'user_api')
    return p.exec("db", "bash", "-c", script, input=statements).stdout
