#!/usr/bin/env python3
"""Where the stack's instructions go for a proxied GET: callgrind's top functions per component.

    bench/profile.py --bin <user-api with symbols> [--requests 2000] [--components api,nginx,mariadb]

The release profile strips the binary; build one with symbols (same optimisation) first:

    CARGO_PROFILE_RELEASE_STRIP=none CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \\
        cargo build --release --target-dir target/profile

A throwaway MariaDB (bench.py's settings: thread pool, as the db image) and nginx on the shipped
config with its access log (tests/harness, as bench.py uses them) and the API; one component at a
time under `valgrind --tool=callgrind`, the other two native, collection off until everything is
ready; then N sequential `GET /users/<id>` through nginx with collection on, and off again before
the shutdown, so that startup, migrations and shutdown are not counted. Callgrind counts
instructions, which other processes on this machine do not change (bench.py's CPU times move by
tens of percent between runs). nginx and MariaDB are Debian's stripped binaries: their functions
are named from the symbols they export for their modules and plugins (ngx_*, most of mariadbd),
a static function shows as an address in its object. Valgrind serialises a process's threads,
so this is the work per request, not its latency; kernel time (syscalls, loopback TCP) is not
counted.

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
from bench import MariaDB as BenchMariaDB  # noqa: E402

SEEDED = 100

# callgrind_annotate's function lines: "12,345 (5.0%)  file:function [object]".
LINE = re.compile(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(\S.*)$")


def callgrind_control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


FUNCTION = re.compile(r"^(?P<file>[^:]*):(?P<fn>.*?)(?:\s+\[(?P<obj>[^\]]+)\])?$")


def owner(function: str, rust_crates: bool) -> str:
    """The crate of a Rust symbol (`hyper::proto::...` -> hyper; `<core::hash::sip::Hasher as
    ...>::write` -> core), else (and for C/C++ programs) the shared object callgrind names
    (nginx, libc, ...)."""
    m = FUNCTION.match(function)
    name, obj = (m.group("fn"), m.group("obj")) if m else (function, None)
    rust = re.match(r"<?([a-z_][a-z0-9_]*)::", name) if rust_crates else None
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


def callgrind(out: Path) -> list[str]:
    """valgrind's prefix: collection starts off, ``profile`` turns it on only for the requests."""
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]


class Stack:
    """MariaDB, the API and nginx; ``wrap`` names the valgrind prefix of those profiled."""

    def __init__(self, bin_path: str, directory: Path, wrap: dict[str, list[str]]):
        self.directory = directory
        # Under valgrind a start takes minutes (InnoDB's, migrations through an instrumented API).
        slow = 600
        # Under valgrind InnoDB cannot start as it does natively: valgrind implements no io_uring
        # (synchronous file I/O instead only changes how pages reach the disk, not a read served
        # from the buffer pool), and cannot reserve the address space of the largest buffer pool
        # a resize could reach (8 TiB by default; capped at the size the bench uses).
        under_valgrind = ["--innodb-use-native-aio=0", "--innodb-buffer-pool-size-max=256M"]
        db_args = BenchMariaDB.ARGS + (under_valgrind if wrap.get("mariadb") else [])
        self.db = MariaDB.start(extra_args=db_args, wrapper=wrap.get("mariadb", []), within=slow)
        self.api = self.nginx = None
        try:
            url = self.db.create_database("app")
            port = free_port()
            self.api = procs.spawn(
                [*wrap.get("api", []), bin_path],
                directory / "api.log",
                env={"PATH": "/usr/bin:/bin", "ROCKET_ADDRESS": "127.0.0.1", "ROCKET_PORT": str(port),
                     "DATABASE_URL": url, "ROCKET_PROFILE": "release"},
                cwd=BENCH.parent,  # the shipped Rocket.toml, as bench.py runs it
            )
            wait_http(f"http://127.0.0.1:{port}/readyz", slow, "user-api", alive=lambda: self.api.poll() is None)
            # (the API's migrations made the table)
            self.db.sql("INSERT INTO users (userid, username) VALUES "
                        + ",".join(f"({i}, 'user{i}')" for i in range(1, SEEDED + 1)), database="app")
            files = {"rate_limit_exempt.conf": '127.0.0.1 "";\n',
                     # as shipped (nginx/access-log.conf), into a file
                     "access-log.conf": f"access_log {directory}/access.log json_access buffer=4k flush=1s;\n"}
            if wrap.get("nginx"):
                # One process that is its own worker: valgrind's control (vgdb) does not reach a
                # forked worker. The same request path as a worker's.
                files["workers.conf"] = "worker_processes 1;\nmaster_process off;\n"
            self.nginx = Nginx.start(f"127.0.0.1:{port}", within=slow, wrapper=wrap.get("nginx", []), files=files)
        except BaseException:
            self.close()
            raise

    def get(self, n: int) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.nginx.port}/users/{1 + n % SEEDED}", timeout=60) as r:
            assert r.status == 200
            r.read()

    def close(self) -> None:
        if self.nginx:
            self.nginx.close()
        if self.api:
            procs.stop(self.api, signal.SIGTERM, within=120)
        self.db.close()


COMPONENTS = ("api", "nginx", "mariadb")


def profile(bin_path: str, component: str, requests: int, directory: Path) -> tuple[Path, float]:
    """Runs the requests with ``component`` under callgrind; its dump of them and the seconds."""
    stack = Stack(bin_path, directory, {component: callgrind(directory / f"{component}.%p")})
    try:
        profiled_pids = {"api": [stack.api.pid], "nginx": [stack.nginx.process.pid],
                         "mariadb": [stack.db.process.pid]}[component]
        # Warm: the pool's connections, prepared statements, nginx's upstream keep-alive.
        for n in range(50):
            stack.get(n)
        for pid in profiled_pids:
            callgrind_control(pid, "--zero")
            callgrind_control(pid, "--instr=on")
        t0 = time.monotonic()
        for n in range(requests):
            stack.get(n)
        seconds = time.monotonic() - t0
        for pid in profiled_pids:
            callgrind_control(pid, "--instr=off")
            callgrind_control(pid, "--dump=requests")
    finally:
        stack.close()
    dumps = sorted(directory.glob(f"{component}.*"), key=lambda p: p.stat().st_mtime)
    return next(p for p in dumps if "requests" in p.read_text(errors="replace")[:2000]), seconds


def report(component: str, dump: Path, requests: int, seconds: float, top: int) -> None:
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
    print(f"\n== {component}: {requests} GET /users/<id> through nginx in {seconds:.1f} s under callgrind: "
          f"{total:,} instructions, {total / requests:,.0f} per request")
    by_owner = collections.Counter()
    for count, what in functions:
        by_owner[owner(what, rust_crates=component == "api")] += count
    print("\nby crate / library (self instructions per request, share):")
    for name, count in by_owner.most_common(15):
        print(f"  {count / requests:>9,.0f}  {100 * count / total:5.1f} %  {name}")
    print(f"\ntop {top} functions (self):")
    for count, what in functions[:top]:
        print(f"  {count / requests:>9,.0f}  {100 * count / total:5.1f} %  {what[:150]}")
    if component == "api":
        print("\nwho calls SipHash (std's default HashMap hasher), inclusive:")
        for line in callers(dump, r"sip::Hasher.*::write \[", 8)[:20]:
            print("  " + line.strip()[:160])


# Frames that only say *how* memory was allocated (the allocator, Vec/BytesMut growth, hash
# tables), not *what for*: a site is the first frame below them.
PLUMBING = re.compile(r"\((?:library|/rustc)/|/library/(?:alloc|core|std)/|bytes_mut\.rs|raw_vec|hashbrown|"
                      r"UnknownInlinedFun|^(?:malloc|realloc|calloc|alloc::|<alloc::)|\?\?\?|\(in /usr/lib")


def heap_tree(lines: list[str], start: int) -> tuple[dict, int]:
    """One node of massif's tree (``n<children>: <bytes> <frame>``) and the line after it."""
    m = re.match(r"^\s*n(\d+): (\d+) (.*)$", lines[start])
    node = {"bytes": int(m.group(2)), "frame": re.sub(r"^0x[0-9A-Fa-f]+: ", "", m.group(3)), "children": []}
    at = start + 1
    for _ in range(int(m.group(1))):
        child, at = heap_tree(lines, at)
        node["children"].append(child)
    return node, at


def without_generics(frame: str) -> str:
    while (shorter := re.sub(r"<[^<>]*>", "", frame)) != frame:
        frame = shorter
    return frame


def allocation_sites(node: dict, sites: collections.Counter) -> None:
    """Attributes each byte to the first frame of its call chain that is not plumbing."""
    rest = node["bytes"]
    for child in node["children"]:
        rest -= child["bytes"]
        if PLUMBING.search(child["frame"]) or "below massif's threshold" in child["frame"]:
            allocation_sites(child, sites) if child["children"] else sites.update({"(small, elsewhere)": child["bytes"]})
        else:
            sites[without_generics(child["frame"])[:160]] += child["bytes"]
    if rest > 0 and node["children"]:
        sites["(small, elsewhere)"] += rest


def memory(bin_path: str, connections: int, seconds: int, directory: Path, top: int) -> None:
    """The API under massif while wrk keeps ``connections`` GETs in flight through nginx: its
    heap at the peak, by allocation site."""
    out = directory / "massif.out"
    stack = Stack(bin_path, directory, {"api": ["valgrind", "--tool=massif", "--depth=60",
                                                f"--massif-out-file={out}"]})
    try:
        for n in range(50):
            stack.get(n)
        wrk = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "60s",
                              f"http://127.0.0.1:{stack.nginx.port}/users/1"],
                             capture_output=True, text=True, check=True).stdout
    finally:
        stack.close()
    lines = out.read_text().splitlines()
    peak = next(i for i, line in enumerate(lines) if line == "heap_tree=peak")
    info = dict(line.split("=", 1) for line in lines[peak - 5:peak] if "=" in line)
    tree, _ = heap_tree(lines, peak + 1)
    sites = collections.Counter()
    allocation_sites(tree, sites)
    print(f"{connections} connections through nginx for {seconds} s, the API under massif:")
    print("  " + " / ".join(line.strip() for line in wrk.splitlines() if "requests in" in line or "Latency" in line))
    heap = int(info["mem_heap_B"])
    print(f"peak heap {heap / 2**20:.1f} MiB (+ {int(info['mem_heap_extra_B']) / 2**20:.1f} MiB allocator "
          f"overhead); by allocation site (MiB, KiB per connection):")
    for site, size in sites.most_common(top):
        print(f"  {size / 2**20:6.2f}  {size / 1024 / connections:5.1f}  {site}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", required=True, help="a user-api build with symbols")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--components", default="api",
                        help=f"comma-separated, of {', '.join(COMPONENTS)} (default: api)")
    parser.add_argument("--memory", type=int, metavar="CONNECTIONS",
                        help="instead: the API's heap at the peak of a wrk run at this many connections")
    parser.add_argument("--duration", type=int, default=20, help="of the --memory run, seconds")
    args = parser.parse_args()
    if args.memory:
        directory = Path(tempfile.mkdtemp(prefix="user-api-profile-"))
        try:
            memory(args.bin, args.memory, args.duration, directory, args.top)
        finally:
            subprocess.run(["rm", "-rf", str(directory)], check=False)
        return 0
    components = args.components.split(",")
    if unknown := set(components) - set(COMPONENTS):
        parser.error(f"unknown component(s): {', '.join(sorted(unknown))}")

    directory = Path(tempfile.mkdtemp(prefix="user-api-profile-"))
    for component in components:
        dump, seconds = profile(args.bin, component, args.requests, directory)
        report(component, dump, args.requests, seconds, args.top)
    if os.environ.get("PROFILE_KEEP") != "1":
        subprocess.run(["rm", "-rf", str(directory)], check=False)
    else:
        print(f"\ncallgrind output: {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
