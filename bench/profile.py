#!/usr/bin/env python3
"""Where the API's instructions go for a proxied GET: callgrind's top functions, by crate.

    bench/profile.py --bin <user-api with symbols> [--requests 3000]

The release profile strips the binary; build one with symbols (same optimisation) first:

    CARGO_PROFILE_RELEASE_STRIP=none CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \\
        cargo build --release --target-dir target/profile

A throwaway MariaDB and nginx on the shipped config (tests/harness, as bench.py uses them), the
API under `valgrind --tool=callgrind` with collection off until it is ready; then N sequential
`GET /users/<id>` through nginx with collection on, and off again before the shutdown, so that
startup, migrations and shutdown are not counted. Callgrind counts instructions, which other
processes on this machine do not change (bench.py's CPU times move by tens of percent between
runs). Only the API: nginx and MariaDB are Debian's stripped binaries here. Valgrind serialises
the API's threads, so this is the work per request, not its latency.

Debian: apt-get install valgrind mariadb-server mariadb-client nginx.
"""

import argparse
import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))
from harness import procs  # noqa: E402
from harness.mariadb import MariaDB  # noqa: E402
from harness.nginx import Nginx  # noqa: E402
from harness.ports import free_port, wait_http  # noqa: E402

SEEDED = 100

# callgrind_annotate's function lines: "12,345 (5.0%)  file:function [object]".
LINE = re.compile(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(\S.*)$")


def callgrind_control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


FUNCTION = re.compile(r"^(?P<file>[^:]*):(?P<fn>.*?)(?:\s+\[(?P<obj>[^\]]+)\])?$")


def owner(function: str) -> str:
    """The crate of a Rust symbol (`hyper::proto::...` -> hyper; `<core::hash::sip::Hasher as
    ...>::write` -> core), else the shared object callgrind names (libc, ...)."""
    m = FUNCTION.match(function)
    name, obj = (m.group("fn"), m.group("obj")) if m else (function, None)
    rust = re.match(r"<?([a-z_][a-z0-9_]*)::", name)
    if rust:
        return rust.group(1)
    if obj:
        return Path(obj).name.split(".so")[0]
    return "?"


def callers(dump: Path, pattern: str, top: int) -> list[str]:
    """The callers of the functions matching ``pattern``, by inclusive cost (callgrind_annotate
    --tree=caller)."""
    text = subprocess.run(["callgrind_annotate", "--auto=no", "--tree=caller", "--inclusive=yes",
                           "--threshold=100", str(dump)], capture_output=True, text=True,
                          check=True).stdout
    out, block = [], []
    for line in text.splitlines():
        if not line.strip():
            if block and re.search(pattern, block[-1]):
                out.extend(block[:top] + [block[-1]])
            block = []
        elif "<" in line[:40] or "*" in line[:40]:
            block.append(line.rstrip())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", required=True, help="a user-api build with symbols")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()

    directory = Path(tempfile.mkdtemp(prefix="user-api-profile-"))
    out = directory / "callgrind.out"
    db = MariaDB.start()
    url = db.create_database("app")
    port = free_port()
    api = procs.spawn(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", args.bin],
        directory / "api.log",
        env={"PATH": "/usr/bin:/bin", "ROCKET_ADDRESS": "127.0.0.1", "ROCKET_PORT": str(port),
             "DATABASE_URL": url, "ROCKET_PROFILE": "release"},
        cwd=BENCH.parent,  # the shipped Rocket.toml, as bench.py runs it
    )
    nginx = None
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", 180, "user-api under valgrind",
                  alive=lambda: api.poll() is None)
        # (the API's migrations made the table)
        db.sql("INSERT INTO users (userid, username) VALUES "
               + ",".join(f"({i}, 'user{i}')" for i in range(1, SEEDED + 1)), database="app")
        nginx = Nginx.start(f"127.0.0.1:{port}", files={"rate_limit_exempt.conf": '127.0.0.1 "";\n'},
                            access_log=False)
        # Warm: the pool's connections, prepared statements, nginx's upstream keep-alive.
        for n in range(50):
            urllib.request.urlopen(f"http://127.0.0.1:{nginx.port}/users/{1 + n % SEEDED}", timeout=60).read()
        callgrind_control(api.pid, "--zero")
        callgrind_control(api.pid, "--instr=on")
        t0 = time.monotonic()
        for n in range(args.requests):
            with urllib.request.urlopen(f"http://127.0.0.1:{nginx.port}/users/{1 + n % SEEDED}", timeout=60) as r:
                assert r.status == 200
                r.read()
        seconds = time.monotonic() - t0
        callgrind_control(api.pid, "--instr=off")
        callgrind_control(api.pid, "--dump=requests")
    finally:
        if nginx:
            nginx.close()
        procs.stop(api, signal.SIGTERM, within=120)
        db.close()
    dumps = sorted(directory.glob("callgrind.out*"), key=lambda p: p.stat().st_mtime)
    dump = next(p for p in dumps if "requests" in p.read_text(errors="replace")[:2000])
    text = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100", str(dump)], capture_output=True,
                          text=True, check=True).stdout
    total, functions = None, []
    for line in text.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        count, what = int(m.group(1).replace(",", "")), m.group(2).strip()
        if "PROGRAM TOTALS" in what:
            total = count
        elif total is not None:
            functions.append((count, what))
    if not total:
        sys.exit(f"no totals in callgrind_annotate's output:\n{text[:2000]}")
    per_request = total / args.requests
    print(f"{args.requests} GET /users/<id> through nginx in {seconds:.1f} s under callgrind: "
          f"{total:,} instructions in the API, {per_request:,.0f} per request")
    by_owner = collections.Counter()
    for count, what in functions:
        by_owner[owner(what)] += count
    print("\nby crate / library (self instructions per request, share):")
    for name, count in by_owner.most_common(15):
        print(f"  {count / args.requests:>9,.0f}  {100 * count / total:5.1f} %  {name}")
    print(f"\ntop {args.top} functions (self):")
    for count, what in functions[: args.top]:
        print(f"  {count / args.requests:>9,.0f}  {100 * count / total:5.1f} %  {what[:150]}")
    print("\nwho calls SipHash (std's default HashMap hasher), inclusive:")
    for line in callers(dump, r"sip::Hasher.*::write \[", 8)[:20]:
        print("  " + line.strip()[:160])
    if os.environ.get("PROFILE_KEEP") != "1":
        subprocess.run(["rm", "-rf", str(directory)], check=False)
    else:
        print(f"\ncallgrind output: {dump}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
