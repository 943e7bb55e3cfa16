#!/usr/bin/env python3
"""Benchmark of the process stack: throwaway MariaDB, release user-api, nginx
with the project's nginx.conf, driven by wrk on loopback. Standard library
only. Run it through bench/run.sh (which builds the binary); see README.md.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
TICK = os.sysconf("SC_CLK_TCK")
SEEDED = 10_000
# Each run's creates use ids from BASE_STEP * run_number + SEEDED + 1 up:
# far above the seeded ones and never shared between runs.
BASE_STEP = 10_000_000

# ----------------------------------------------------------------- processes
# Every server comes from the project's test harness (tests/harness): the
# same throwaway MariaDB, API process and nginx instance the tests use.

sys.path.insert(0, str(REPO / "tests"))
from harness import procs  # noqa: E402
from harness.api import Api as HarnessApi  # noqa: E402
from harness.mariadb import MariaDB as HarnessMariaDB  # noqa: E402
from harness.nginx import Nginx as HarnessNginx  # noqa: E402
from harness.ports import free_port, wait_port  # noqa: E402

STARTED = []  # servers, closed in reverse order at exit


def stop_all():
    for server in reversed(list(STARTED)):
        server.close()
        STARTED.remove(server)


def program(name):
    try:
        return procs.program(name)
    except FileNotFoundError as e:
        sys.exit(str(e))


# --------------------------------------------------------------- /proc reads


def cpu_seconds(pid):
    """utime + stime of a live process (all its threads), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the ")": state is field 3, utime 14, stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / TICK


def children(pid):
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                kids.append(int(entry.name))
    return kids


def status_kib(pid, key):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def reset_peak_rss(pid):
    # "5" resets VmHWM to the current RSS (Linux >= 4.0); needs the same uid.
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def machine_jiffies():
    """(all, idle + iowait, irq + softirq, steal) jiffies of the machine. irq +
    softirq is mostly loopback TCP work. Without CONFIG_IRQ_TIME_ACCOUNTING
    (Debian's default) the kernel charges it to whichever process the tick
    lands on, so it is *part of* the processes' CPU time: reported apart for
    information, never added to them. steal: time the hypervisor gave this
    VM's CPUs to others (0.8 of a core seen on 2026-12-05): a run with steal
    had less than its 2 cores."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return sum(fields[:8]), fields[3] + fields[4], fields[5] + fields[6], fields[7]


# ------------------------------------------------------------------- MariaDB


class MariaDB:
    # Sized for a 2-core / few-GiB box that also runs the API, nginx and wrk.
    # The binary log as the db image writes it (db/entrypoint.sh): ROW, fsync'ed per commit.
    BINLOG = ["--log-bin=binlog-bench", "--server-id=1", "--binlog-format=ROW", "--sync-binlog=1"]
    ARGS = [
        *BINLOG,
        "--innodb-buffer-pool-size=256M",  # 10k seeded + ~1M created rows fit
        "--innodb-log-file-size=256M",  # fewer checkpoints under the create runs
        "--performance-schema=OFF",  # its per-statement accounting costs CPU
        "--thread-handling=pool-of-threads",  # as the db image (db/entrypoint.sh)
        "--skip-name-resolve",
        "--max-connections=500",
    ]

    # What the db image runs: MariaDB's default innodb_flush_log_at_trx_commit=1, an fsync of the
    # redo log per commit. --fast-commit (and the `commit` variants) measure 2, which the image
    # does not ship: the log is fsynced once a second, and a crash of the machine can lose it.
    FAST_COMMIT = "--innodb-flush-log-at-trx-commit=2"

    def __init__(self, root, extra_args=()):
        self.args = self.ARGS + list(extra_args)
        try:
            self.server = HarnessMariaDB.start(durable=True, extra_args=self.args, root=root)
        except RuntimeError as e:
            sys.exit(str(e))
        STARTED.append(self.server)
        self.port = self.server.port
        self.proc = self.server.process
        self.sql("CREATE DATABASE bench")
        self.migrated = False

    def sql(self, statement, db=None):
        try:
            return self.server.sql(statement, database=db)
        except RuntimeError as e:
            sys.exit(str(e))

    def url(self):
        return f"mysql://root@127.0.0.1:{self.port}/bench"

    def reseed(self):
        rows = ",".join(f"({i},'user{i}')" for i in range(1, SEEDED + 1))
        statement = f"TRUNCATE TABLE users; INSERT INTO users (userid, username) VALUES {rows};"
        try:
            self.server.sql(statement, database="bench")
        except RuntimeError as e:
            # Seen twice on 2026-12-05 (MariaDB 11.8), right after the Flask peer's 1,000-connection
            # run: the client's connection dropped ("Server has gone away") with the server up and
            # nothing in its log. Said, and tried once more; a second failure stops the run.
            if "gone away" not in str(e):
                raise
            print(f"reseed: {str(e).strip().splitlines()[-1][:120]}; trying once more", flush=True)
            self.sql(statement, "bench")
        count = int(self.sql("SELECT COUNT(*) FROM users", "bench"))
        assert count == SEEDED, count

    def stored(self, lo, hi):
        out = self.sql(
            f"SELECT userid, username FROM users WHERE userid BETWEEN {lo} AND {hi}",
            "bench",
        )
        return dict(line.split("\t", 1) for line in out.splitlines() if line)


# ------------------------------------------------------------------- the API


class Api:
    def __init__(self, root, binary, db_url, env_overrides, name):
        # cwd = the repo: the shipped Rocket.toml applies, as in a local run.
        try:
            self.server = HarnessApi(db_url, env=env_overrides, bin_path=binary, cwd=REPO)
        except RuntimeError as e:
            sys.exit(str(e))
        STARTED.append(self.server)
        self.port = self.server.port
        self.proc = self.server.process
        self.log = self.server.log_path

    def pids(self):
        return [self.proc.pid]

    def stop(self):
        self.server.close()
        STARTED.remove(self.server)


class FlaskPeer:
    """The original Flask + gunicorn sample (shared/peers/flask), on the same
    MariaDB and behind the same nginx: what this project replaces."""

    DIR = Path(os.environ.get("BENCH_FLASK_PEER", REPO.parent / "shared" / "peers" / "flask"))

    def __init__(self, root, db_url, workers, name):
        if not (self.DIR / "run").exists():
            sys.exit(f"no Flask peer at {self.DIR} (BENCH_FLASK_PEER names another)")
        venv = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flask-peer-venv"
        if not (venv / "bin" / "gunicorn").exists():
            subprocess.run(["bash", self.DIR / "setup"], check=True)
        self.port = free_port()
        env = dict(os.environ, APP_PORT=str(self.port), DATABASE_URL=db_url)
        self.proc = procs.spawn(["bash", self.DIR / "run", "--workers", str(workers)], root / f"flask-{name}.log", env=env)
        try:
            wait_port(self.port, 60, "the Flask peer", alive=lambda: self.proc.poll() is None)
        except (TimeoutError, RuntimeError) as e:
            sys.exit(str(e))
        self.log = root / f"flask-{name}.log"

    def pids(self):
        # bash execs gunicorn: the master and its sync workers.
        return [self.proc.pid] + children(self.proc.pid)

    def stop(self):
        procs.stop(self.proc)


# --------------------------------------------------------------------- nginx


class Nginx:
    """The project's nginx.conf, unchanged, through the harness: its include
    files point it at the API and exempt 127.0.0.1 from the per-address
    limits (wrk is one address); variants set the worker count or turn the
    access log off."""

    def __init__(self, root, api_port, workers, name, access_log=True):
        files = {"rate_limit_exempt.conf": '127.0.0.1 "";\n'}
        # The shipped TLS listener too, with the certificate `nix run .#up` makes (the HTTPS runs).
        tls = root / "tls"
        subprocess.run(["bash", REPO / "nix" / "local-tls.sh", tls], check=True, capture_output=True)
        if access_log:
            # As shipped: JSON lines to stdout, buffered, here into a file.
            files["access-log.conf"] = f"access_log {root}/nginx-{name}-access.log json_access buffer=4k flush=1s;\n"
        try:
            self.server = HarnessNginx.start(
                f"127.0.0.1:{api_port}", files=files, access_log=access_log, workers=workers,
                tls=(tls / "tls_cert.pem", tls / "tls_key.pem"),
            )
        except RuntimeError as e:
            sys.exit(str(e))
        STARTED.append(self.server)
        self.port, self.status_port = self.server.port, self.server.status_port
        self.tls_port = self.server.tls_port
        self.proc = self.server.process

    def pids(self):
        return self.server.pids

    def stop(self):
        self.server.close()
        STARTED.remove(self.server)


# ----------------------------------------------------------------------- wrk

RUNS = {
    # name: (script, through nginx?, writes?)
    "get_nginx": ("get.lua", True, False),
    "get_direct": ("get.lua", False, False),
    "post_nginx": ("post.lua", True, True),
    "post_direct": ("post.lua", False, True),
    "mix_nginx": ("mix.lua", True, True),
    # No database: the API's cost per connection without the pool queue.
    "healthz_direct": ("healthz.lua", False, False),
    # HTTPS beside HTTP (nginx/tls.conf), on kept-alive connections and with a new connection
    # per request (see HTTPS_RUNS and CLOSE_RUNS).
    "get_https": ("get.lua", True, False),
    "get_nginx_close": ("get.lua", True, False),
    "get_https_close": ("get.lua", True, False),
}
# Through nginx's TLS listener: TLS 1.3 (wrk's OpenSSL and nginx agree on it), HTTP/1.1 (wrk
# offers no ALPN).
HTTPS_RUNS = {"get_https", "get_https_close"}
# `Connection: close` on every request: nginx closes after each answer and wrk opens the next
# connection, on HTTPS with a full handshake (wrk resumes no TLS session).
CLOSE_RUNS = {"get_nginx_close", "get_https_close"}


class Stack:
    def __init__(self, db, api, nginx, legacy=False):
        self.db, self.api, self.nginx = db, api, nginx
        # The sample's two calls (GET /get_user, POST /create_user) instead
        # of the resource API: what both this API and the Flask peer serve.
        self.legacy = legacy

    def components(self):
        return {
            "mariadb": [self.db.proc.pid],
            "nginx": self.nginx.pids(),
            "api": self.api.pids(),
        }


RUN_COUNTER = [0]


def wrk(args, url, script, script_args, seconds, work, headers=()):
    env = dict(os.environ, LUA_PATH=f"{BENCH}/?.lua;;")
    argv = [
        program("wrk"),
        *(a for h in headers for a in ("-H", h)),
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(BENCH / script),
        url,
        "--",
    ] + script_args
    p = procs.spawn(argv, work / "wrk.out", env=env)
    # wait4: wrk's own CPU time, reaped here.
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    text = (work / "wrk.out").read_text()
    if p.returncode != 0:
        sys.exit(f"wrk failed ({p.returncode}):\n{text}")
    # The log is appended to (procs.spawn), and the warm-up wrote to it
    # first: this run's summary is the last one.
    line = next((l for l in reversed(text.splitlines()) if l.startswith("BENCH_JSON ")), None)
    if line is None:
        sys.exit(f"no summary from wrk:\n{text}")
    return json.loads(line[len("BENCH_JSON ") :]), usage.ru_utime + usage.ru_stime


# ------------------------------------------------- the API's own view of a run
# Where a request's time goes, from the API's /metrics before and after the run: its handler
# time (rocket_prometheus, from Rocket's request fairing to its response fairing) and the pool
# acquire time. Compared with wrk's latency, the rest is outside the handler: nginx, the
# kernel's queues, hyper and tokio before Rocket sees the request. Parsed by hand: the bench is
# standard library only (no prometheus_client), and the text format's sample lines are simple.


def scrape(port):
    """{(name, labels): value} of the API's /metrics; {} when metrics are off."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        pairs = tuple(sorted(
            tuple(kv.split("=", 1)) for kv in labels.rstrip("}").replace('"', "").split(",") if kv
        ))
        samples[(name, pairs)] = float(value)
    return samples


def histogram_delta(before, after, name, keep=lambda labels: True):
    """Cumulative bucket counts {le: count} of ``name`` over the run, summed over the label
    sets ``keep`` accepts."""
    buckets = {}
    for (metric, labels), value in after.items():
        if metric != f"{name}_bucket":
            continue
        d = dict(labels)
        if not keep(d):
            continue
        le = float(d.pop("le"))
        buckets[le] = buckets.get(le, 0.0) + value - before.get((metric, labels), 0.0)
    return dict(sorted(buckets.items()))


def bucket_quantile(q, buckets):
    """histogram_quantile() of Prometheus: linear within the bucket; None without data."""
    if not buckets or buckets.get(float("inf"), 0) <= 0:
        return None
    total, lower, below = buckets[float("inf")], 0.0, 0.0
    rank = q * total
    for le, count in buckets.items():
        if count >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * ((rank - below) / (count - below) if count > below else 0)
        lower, below = le, count
    return lower


def api_side(before, after, requests):
    if not before or not after:
        return None
    handler = histogram_delta(before, after, "rocket_http_requests_duration_seconds",
                              lambda l: l.get("endpoint") != "/metrics")
    acquire = histogram_delta(before, after, "user_api_db_pool_acquire_duration_seconds")
    waits = sum(v - before.get(k, 0.0) for k, v in after.items()
                if k[0] == "user_api_db_pool_acquire_waits_total")
    ms = lambda x: None if x is None else round(x * 1000, 3)  # noqa: E731
    return {
        "handler_p50_ms": ms(bucket_quantile(0.5, handler)),
        "handler_p99_ms": ms(bucket_quantile(0.99, handler)),
        "acquire_p50_ms": ms(bucket_quantile(0.5, acquire)),
        "acquire_p99_ms": ms(bucket_quantile(0.99, acquire)),
        "acquires": round(acquire.get(float("inf"), 0.0)),
        "acquire_waits_per_request": round(waits / requests, 3) if requests else None,
    }


def listen_overflows():
    """The kernel's count of connections dropped at a full listen queue (TcpExt ListenOverflows,
    as `nstat` shows it): machine-wide, which during a run is the stack's."""
    names, values = [line.split()[1:] for line in Path("/proc/net/netstat").read_text().splitlines()
                     if line.startswith("TcpExt:")][:2]
    return int(dict(zip(names, values))["ListenOverflows"])


def one_run(args, stack, kind, root):
    script, via_nginx, writes = RUNS[kind]
    port = stack.nginx.port if via_nginx else stack.api.port
    url = f"http://127.0.0.1:{port}"
    if kind in HTTPS_RUNS:
        url = f"https://127.0.0.1:{stack.nginx.tls_port}"
    headers = ["Connection: close"] if kind in CLOSE_RUNS else []
    RUN_COUNTER[0] += 1
    n = RUN_COUNTER[0]
    work = root / f"run-{n:03d}-{kind}"
    work.mkdir()

    legacy = ["legacy"] if stack.legacy else []

    def script_args(base):
        return ([str(base), str(work)] if writes else [str(SEEDED)]) + legacy

    # Warm-up: its creates use their own id range and are checked too.
    warm_base = BASE_STEP * (2 * n) + SEEDED + 1
    base = BASE_STEP * (2 * n + 1) + SEEDED + 1
    warm_acked = []
    if args.warmup > 0:
        wrk(args, url, script, script_args(warm_base), args.warmup, work, headers)
        warm_acked = read_acked(work) if writes else []
        if writes:
            for f in work.glob("acked.*"):
                f.unlink()
    pids = stack.components()
    api_pids = stack.api.pids()
    peak_reset = all([reset_peak_rss(p) for p in api_pids])
    for p in pids["nginx"] + pids["mariadb"]:
        reset_peak_rss(p)
    before = {name: sum(cpu_seconds(p) for p in ps) for name, ps in pids.items()}
    ours = isinstance(stack.api, Api)
    metrics0 = scrape(stack.api.port) if ours else {}
    total0, idle0, irq0, steal0 = machine_jiffies()
    overflows0 = listen_overflows()
    t0 = time.monotonic()
    summary, wrk_cpu = wrk(args, url, script, script_args(base), args.duration, work, headers)
    wall = time.monotonic() - t0
    overflows = listen_overflows() - overflows0
    metrics1 = scrape(stack.api.port) if ours else {}
    total1, idle1, irq1, steal1 = machine_jiffies()
    pids = stack.components()  # nginx workers are stable; re-read anyway
    after = {name: sum(cpu_seconds(p) for p in ps) for name, ps in pids.items()}
    cpu = {name: after[name] - before[name] for name in before}
    cpu["wrk"] = wrk_cpu
    busy = ((total1 - total0) - (idle1 - idle0)) / TICK
    cpu["steal"] = (steal1 - steal0) / TICK
    cpu["other"] = max(0.0, busy - sum(cpu.values()))
    cpu["irq"] = (irq1 - irq0) / TICK
    seconds = summary["duration_us"] / 1e6
    result = {
        "run": kind,
        "url": url,
        "seconds": round(seconds, 2),
        "requests": summary["requests"],
        "req_per_s": round(summary["requests"] / seconds, 1),
        "latency_ms": {
            k: round(v / 1000, 3) for k, v in summary["latency_us"].items()
        },
        "socket_errors": summary["errors"],
        # wrk counts status > 399 itself; the write scripts count every status.
        "non_2xx": (
            sum(v for k, v in summary["statuses"].items() if not k.startswith("2"))
            if summary["statuses"]
            else summary["errors"]["status"]
        ),
        "statuses": summary["statuses"],
        # SYNs dropped because a listener's accept queue was full (any listener of the machine:
        # here, nginx's or the API's); each is a client retrying a second later.
        "listen_overflows": overflows,
        # Summed over the app's processes (gunicorn: master + workers).
        "api_rss_kib": sum(status_kib(p, "VmRSS") for p in api_pids),
        "api_peak_rss_kib": sum(status_kib(p, "VmHWM") for p in api_pids),
        "api_peak_rss_is_per_run": peak_reset,
        # What the proxy's and the database's memory limits are sized from (nginx: master and
        # workers summed; MariaDB's includes its buffer pool as far as it was touched).
        "nginx_peak_rss_kib": sum(status_kib(p, "VmHWM") for p in pids["nginx"]),
        "mariadb_peak_rss_kib": sum(status_kib(p, "VmHWM") for p in pids["mariadb"]),
        # CPU seconds per wall second: 1.0 = one core busy all the time.
        "cores": {k: round(v / wall, 2) for k, v in cpu.items()},
        "machine_busy_cores": round(busy / wall, 2),
        "api_side": api_side(metrics0, metrics1, summary["requests"]),
    }
    if writes and stack.legacy:
        created = int((summary["statuses"] or {}).get("201", 0))
        result["check"] = check_created(stack.db, base, created)
    elif writes:
        result["check"] = check_acked(stack.db, read_acked(work) + warm_acked)
    return result


def read_acked(work):
    ids = []
    for f in sorted(work.glob("acked.*")):
        ids += [int(line) for line in f.read_text().split()]
    return ids


def check_created(db, base, created):
    """The sample's 201 names no id: as many rows as 201s in the run's id
    range, each with its name (its warm-up used another range)."""
    stored = db.stored(base, base + BASE_STEP - 1)
    wrong = [i for i, name in stored.items() if name != f"u{i}"]
    return {
        "acknowledged": created,
        "duplicates": 0,
        "missing": max(0, created - len(stored)),
        "missing_sample": [],
        "wrong_name": len(wrong),
    }


def check_acked(db, acked):
    """Every acknowledged create must be stored, with its name: per id."""
    if not acked:
        return {"acknowledged": 0, "missing": 0, "wrong_name": 0, "duplicates": 0}
    stored = db.stored(min(acked), max(acked))
    missing = [i for i in acked if str(i) not in stored]
    wrong = [i for i in acked if str(i) in stored and stored[str(i)] != f"u{i}"]
    return {
        "acknowledged": len(acked),
        "duplicates": len(acked) - len(set(acked)),
        "missing": len(missing),
        "missing_sample": missing[:10],
        "wrong_name": len(wrong),
    }


# ------------------------------------------------------------------ variants

# name -> settings. Keys: "env" (the API's environment on top of the defaults),
# "nginx_workers" (None = the shipped `auto`), "bin" (another user-api build),
# "db_args" (extra mariadbd options: that variant gets a MariaDB of its own),
# "nginx_access_log" (False: nginx.conf's access_log line becomes `off`).
VARIANT_SETS = {
    "default": {"default": {}},
    "workers": {
        "workers=1": {"env": {"ROCKET_WORKERS": "1"}},
        "workers=2 (default)": {},
        "workers=4": {"env": {"ROCKET_WORKERS": "4"}},
        "workers=8": {"env": {"ROCKET_WORKERS": "8"}},
    },
    "pool": {
        "pool=4": {"env": {"DATABASE_MAX_CONNECTIONS": "4"}},
        "pool=8": {"env": {"DATABASE_MAX_CONNECTIONS": "8"}},
        "pool=16 (default)": {},
        "pool=32": {"env": {"DATABASE_MAX_CONNECTIONS": "32"}},
    },
    "log": {
        "api access_log=on (default)": {},
        "api access_log=off": {"env": {"ROCKET_ACCESS_LOG": "false"}},
        "api log_format=json": {"env": {"ROCKET_LOG_FORMAT": "json"}},
    },
    "nginx": {
        "nginx workers=1": {"nginx_workers": 1},
        "nginx workers=auto (2, default)": {},
        "nginx access_log off": {"nginx_access_log": False},
    },
    "backlog": {
        "listen_backlog=4096 (default)": {},
        "listen_backlog=128 (Rocket's)": {"env": {"ROCKET_LISTEN_BACKLOG": "0"}},
    },
    "binlog": {
        "binary log ROW, sync_binlog=1 (db image)": {},
        "no binary log (before 2026-12-06)": {"db_args": ["--skip-log-bin"]},
    },
    "commit": {
        "flush_log_at_trx_commit=1 (db image)": {},
        "flush_log_at_trx_commit=2 (not shipped)": {"db_args": [MariaDB.FAST_COMMIT]},
    },
    "mariadb": {
        "mariadb one-thread-per-connection": {"db_args": ["--thread-handling=one-thread-per-connection"]},
        "mariadb thread pool (db image)": {},
    },
    # The original sample against this API, both on the sample's own calls.
    "peer": {
        "this API (sample's calls)": {"legacy": True},
        "Flask sample, gunicorn 4 sync": {"peer": "flask", "legacy": True},
    },
}


def parse_variant(spec):
    """NAME:KEY=VALUE,... with KEY an env var, nginx_workers, nginx_access_log
    (off), bin or db_arg (e.g. db_arg=--thread-handling=pool-of-threads)."""
    name, _, rest = spec.partition(":")
    settings = {"env": {}}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key == "nginx_workers":
            settings["nginx_workers"] = value
        elif key == "nginx_access_log":
            settings["nginx_access_log"] = value not in ("off", "false", "0")
        elif key == "bin":
            settings["bin"] = value
        elif key == "db_arg":
            settings.setdefault("db_args", []).append(value)
        elif key == "peer":
            settings["peer"] = value
        elif key == "peer_workers":
            settings["peer_workers"] = int(value)
        elif key == "legacy":
            settings["legacy"] = value not in ("off", "false", "0")
        else:
            settings["env"][key] = value
    return name, settings


# ---------------------------------------------------------------------- main


def fmt_table(results):
    head = (
        f"{'variant':<30} {'run':<11} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'non2xx':>6} {'err':>4} {'SYNdrop':>7} {'peakRSS':>8}  cores: api  nginx mariadb  wrk   irq other steal"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        c = r["cores"]
        errs = sum(r["socket_errors"][k] for k in ("connect", "read", "write", "timeout"))
        lines.append(
            f"{r['variant']:<30} {r['run']:<11} {r['req_per_s']:>8.0f} "
            f"{r['latency_ms']['p50']:>7.2f} {r['latency_ms']['p99']:>7.2f} "
            f"{r['non_2xx']:>6} {errs:>4} {r.get('listen_overflows', 0):>7} {r['api_peak_rss_kib'] / 1024:>6.1f}Mi  "
            f"      {c['api']:>4.2f} {c['nginx']:>5.2f} {c['mariadb']:>6.2f} "
            f"{c['wrk']:>4.2f} {c.get('irq', 0.0):>5.2f} {c['other']:>5.2f} {c.get('steal', 0.0):>5.2f}"
            + (
                f"  acked {r['check']['acknowledged']} missing {r['check']['missing']}"
                if "check" in r
                else ""
            )
        )
    return "\n".join(lines)


def cost_per_request(r):
    """CPU microseconds each component spent per request: what a change to
    one component moves, and far less sensitive than req/s to whatever else
    runs on the machine."""
    return {
        k: round(v / r["req_per_s"] * 1e6, 1) if r["req_per_s"] else None
        for k, v in r["cores"].items()
        if k not in ("other", "steal")
    }


def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def fmt_summary(results):
    """Medians over rounds, per variant and run, with the CPU cost per request
    and the rate the 2 cores would allow if the stack had them to itself
    (2 s of CPU per second / CPU seconds per request). irq (softirq, mostly
    loopback TCP) is already inside the processes' time: shown, not added."""
    groups = {}
    for r in results:
        groups.setdefault((r["variant"], r["run"]), []).append(r)
    head = (
        f"{'variant':<34} {'run':<11} {'n':>2} {'req/s':>7} {'p50':>6} {'p99':>6} "
        f"{'non2xx':>6}  CPU us/req: {'api':>5} {'nginx':>5} {'maria':>5} {'wrk':>5} {'irq':>5} "
        f"{'total':>6}  {'2-core cap':>10} {'other':>5} {'steal':>5}"
    )
    lines = [head, "-" * len(head)]
    for (variant, run), rs in groups.items():
        costs = [cost_per_request(r) for r in rs]
        m = {
        k: median([c.get(k) or 0.0 for c in costs])
        for k in ("api", "nginx", "mariadb", "wrk", "irq")
    }
        total = sum(v for k, v in m.items() if k != "irq")
        lines.append(
            f"{variant:<34} {run:<11} {len(rs):>2} "
            f"{median([r['req_per_s'] for r in rs]):>7.0f} "
            f"{median([r['latency_ms']['p50'] for r in rs]):>6.2f} "
            f"{median([r['latency_ms']['p99'] for r in rs]):>6.2f} "
            f"{sum(r['non_2xx'] for r in rs):>6}              "
            f"{m['api']:>5.1f} {m['nginx']:>5.1f} {m['mariadb']:>5.1f} {m['wrk']:>5.1f} "
            f"{m['irq']:>5.1f} "
            f"{total:>6.1f}  {2e6 / total:>10.0f} "
            f"{median([r['cores']['other'] for r in rs]):>5.2f} "
            f"{median([r['cores'].get('steal', 0.0) for r in rs]):>5.2f}"
        )
    return "\n".join(lines)


def fmt_api_side(results):
    """wrk's latency beside the API's own: handler time and pool acquire (medians over rounds;
    histogram buckets, so coarse: rocket_prometheus' are 5 ms, 10 ms, 25 ms, ...)."""
    groups = {}
    for r in results:
        if r.get("api_side"):
            groups.setdefault((r["variant"], r["run"]), []).append(r)
    if not groups:
        return ""
    head = (f"{'variant':<34} {'run':<11} {'wrk p50':>8} {'wrk p99':>8} {'handler p50':>11} "
            f"{'p99':>7} {'acquire p50':>11} {'p99':>7} {'waits/req':>9}")
    lines = [head, "-" * len(head)]
    for (variant, run), rs in groups.items():
        def m(key):
            values = [r["api_side"][key] for r in rs if r["api_side"][key] is not None]
            return median(values) if values else float("nan")
        lines.append(
            f"{variant:<34} {run:<11} {median([r['latency_ms']['p50'] for r in rs]):>8.2f} "
            f"{median([r['latency_ms']['p99'] for r in rs]):>8.2f} {m('handler_p50_ms'):>11.2f} "
            f"{m('handler_p99_ms'):>7.2f} {m('acquire_p50_ms'):>11.3f} {m('acquire_p99_ms'):>7.3f} "
            f"{m('acquire_waits_per_request'):>9.3f}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bin", default=str(REPO / "target/release/user-api"))
    parser.add_argument(
        "--runs",
        default="get_nginx,get_direct,post_nginx,mix_nginx",
        help="comma-separated, from: " + ", ".join(RUNS),
    )
    parser.add_argument("--duration", type=int, default=12, help="seconds per run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds before each run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--variants",
        default="default",
        help="comma-separated sets: " + ", ".join(VARIANT_SETS),
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="extra variant NAME:KEY=VALUE,... (KEY: an env var, nginx_workers, "
        "nginx_access_log, bin, db_arg)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat all variants")
    parser.add_argument(
        "--fast-commit",
        action="store_true",
        help="innodb_flush_log_at_trx_commit=2 for every variant, each labelled so (default 1, "
        "as the db image: see README.md)",
    )
    parser.add_argument("--out", default=str(BENCH / "results"))
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument(
        "--summarize", metavar="JSON", help="print the summary of an earlier run and exit"
    )
    args = parser.parse_args()
    if args.summarize:
        report = json.loads(Path(args.summarize).read_text())
        print(f"load average at start: {report['loadavg_at_start']}")
        print(fmt_summary(report["results"]))
        print(fmt_api_side(report["results"]))
        return 0

    variants = {}
    for set_name in filter(None, args.variants.split(",")):
        if set_name not in VARIANT_SETS:
            sys.exit(f"unknown variant set {set_name}")
        variants.update(VARIANT_SETS[set_name])
    for spec in args.variant:
        name, settings = parse_variant(spec)
        variants[name] = settings
    if args.fast_commit:
        variants = {
            f"{name} [fast commit]": {**s, "db_args": [*s.get("db_args", ()), MariaDB.FAST_COMMIT]}
            for name, s in variants.items()
        }
    kinds = [k for k in args.runs.split(",") if k]
    for k in kinds:
        if k not in RUNS:
            sys.exit(f"unknown run {k}")
    binary = Path(args.bin)
    if not binary.is_file():
        sys.exit(f"{binary} not found: cargo build --release (bench/run.sh does)")

    def on_signal(signum, _):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    root = Path(tempfile.mkdtemp(prefix="user-api-bench-"))
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    print(f"load average at start: {' '.join(loadavg)}; work dir {root}", flush=True)
    results = []
    try:
        dbs = {}

        def database(db_args):
            key = tuple(db_args)
            if key not in dbs:
                dbs[key] = MariaDB(root, db_args)
            return dbs[key]

        for round_no in range(args.rounds):
            for name, settings in variants.items():
                env = dict(settings.get("env", {}))
                db = database(settings.get("db_args", ()))
                label = f"{round_no}-{len(results)}"
                if settings.get("peer") == "flask":
                    if not db.migrated:
                        # The peer expects the table; this API's migrations make it.
                        Api(root, binary, db.url(), {}, label + "-migrate").stop()
                    api = FlaskPeer(root, db.url(), settings.get("peer_workers", 4), label)
                else:
                    api = Api(root, settings.get("bin", binary), db.url(), env, label)
                db.migrated = True
                db.reseed()
                nginx = Nginx(
                    root,
                    api.port,
                    settings.get("nginx_workers"),
                    f"{round_no}-{len(results)}",
                    access_log=settings.get("nginx_access_log", True),
                )
                stack = Stack(db, api, nginx, legacy=settings.get("legacy", False))
                for kind in kinds:
                    r = one_run(args, stack, kind, root)
                    r.update(variant=name, round=round_no, settings=settings)
                    results.append(r)
                    print(fmt_table([r]).splitlines()[-1], flush=True)
                nginx.stop()
                api.stop()
        stop_all()
    finally:
        stop_all()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    report = {
        "started_at": started_at,
        "loadavg_at_start": [float(x) for x in loadavg],
        "loadavg_at_end": [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]],
        "cpus": os.cpu_count(),
        "cpu_model": next(
            (
                l.split(":", 1)[1].strip()
                for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")
            ),
            "",
        ),
        "binary": str(binary),
        "wrk": {
            "threads": args.threads,
            "connections": args.connections,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
        },
        "mariadb_args": MariaDB.ARGS,
        "fast_commit": args.fast_commit,
        "seeded_users": SEEDED,
        "results": results,
    }
    for r in results:
        r["cpu_us_per_request"] = cost_per_request(r)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / (time.strftime("%Y%m%d-%H%M%S") + ".json")
    path.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(fmt_table(results))
    print()
    print(fmt_summary(results))
    print()
    print(fmt_api_side(results))
    print(f"\nload average: start {' '.join(loadavg)}, end {' '.join(map(str, report['loadavg_at_end']))}")
    print(f"results: {path}")
    lost = sum(r["check"]["missing"] + r["check"]["wrong_name"] for r in results if "check" in r)
    if lost:
        print(f"FAILED: {lost} acknowledged creates are not stored as sent")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
