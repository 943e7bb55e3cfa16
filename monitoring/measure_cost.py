"""Instructions per request of the release user-api, metrics on vs off.

    PYTHONPATH=tests python3 monitoring/measure_cost.py [--requests 500,2000]

The benchmark (bench/run.sh) measures CPU time, which on a shared machine
moves by tens of percent between runs. This counts instructions instead
(valgrind's cachegrind, no cache simulation), which other processes do not
change: the API runs under valgrind on a throwaway MariaDB, serves N
sequential GET /users/<id> (direct, no proxy), and stops; two values of N
per variant, so that startup and shutdown cancel out of the difference.
Debian: apt-get install valgrind mariadb-server mariadb-client.
"""

import argparse
import re
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from harness import procs
from harness.api import Api, binary
from harness.mariadb import MariaDB
from harness.ports import free_port, wait_http

VARIANTS = {"metrics on": {}, "metrics off": {"ROCKET_METRICS": "false"}}


def instructions(db_url: str, env: dict, requests: int) -> int:
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="user-api-cost-"))
    log = directory / "valgrind.log"
    process = procs.spawn(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--branch-sim=no",
         f"--cachegrind-out-file={directory / 'out'}", binary()],
        directory / "api.log",
        env={
            "PATH": "/usr/bin:/bin", "ROCKET_ADDRESS": "127.0.0.1", "ROCKET_PORT": str(port),
            "DATABASE_URL": db_url, "ROCKET_ACCESS_LOG": "false", "ROCKET_WORKERS": "2", **env,
        },
        cwd=directory,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", 120, "user-api under valgrind", alive=lambda: process.poll() is None)
        for n in range(requests):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/users/{1 + n % 100}", timeout=30) as r:
                assert r.status == 200
                r.read()
    finally:
        procs.stop(process, signal.SIGTERM, within=60)
    text = (directory / "api.log").read_text(errors="replace")
    match = re.search(r"I\s+refs:\s+([\d,]+)", text)
    assert match, text[-2000:]
    subprocess.run(["rm", "-rf", str(directory)], check=False)
    return int(match.group(1).replace(",", ""))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", default="500,2000")
    args = parser.parse_args()
    low, high = map(int, args.requests.split(","))
    with MariaDB.start() as db:
        url = db.create_database("cost")
        # One start outside valgrind applies the migrations; then 100 users.
        with Api(url):
            pass
        values = ",".join(f"({i},'user{i}')" for i in range(1, 101))
        db.sql(f"INSERT INTO users (userid, username) VALUES {values}", "cost")
        per_request = {}
        for name, env in VARIANTS.items():
            counts = {}
            for n in (low, high):
                started = time.monotonic()
                counts[n] = instructions(url, env, n)
                print(f"{name}: {n} requests, {counts[n]:,} instructions ({time.monotonic() - started:.0f} s)", flush=True)
            per_request[name] = (counts[high] - counts[low]) / (high - low)
        on, off = per_request["metrics on"], per_request["metrics off"]
        print(f"instructions per request: metrics on {on:,.0f}, off {off:,.0f}: {on / off - 1:+.2%}")


if __name__ == "__main__":
    main()
