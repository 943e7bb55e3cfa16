"""Production's versions of every server the tests start: a Debian forky root.

The images come from nixpkgs 26.05 (nginx 1.30, MariaDB 11.4, Prometheus 3); this machine is
Debian bookworm (nginx 1.22, MariaDB 10.11, Prometheus 2.42, Nix 2.8). Debian's forky serves
nginx 1.30, MariaDB 11.8, Prometheus 3.5, the exporters nixpkgs ships and Nix 2.34, but its
glibc must never replace bookworm's, so they live in a root of their own: built once per machine
by ``mmdebstrap`` (cached, under a file lock, rebuilt when :data:`PACKAGES` changes) and run from
there by small wrappers, one per program, in ``<cache>/bin``.

Each wrapper enters a private mount namespace (``unshare --mount``), binds the host's own
directories (``/tmp``, the checkout, the caches, ``/proc``, ``/dev``...) over the root's, and
``chroot``s: every step ``exec``s, so the server IS the process the harness spawned. That is why
not bubblewrap: bwrap stays in between as a parent that does not forward signals, and the harness
addresses the server's own pid (SIGQUIT for a graceful stop, SIGSTOP and waitpid(WUNTRACED) for a
stalled database, SIGKILL for a crash, PR_SET_PDEATHSIG, /proc/<pid>). The price: root (or
CAP_SYS_ADMIN), which CI and these machines have.

Which servers run is chosen by ``USER_API_TOOLCHAIN``:
  ``forky``  this root (``tests/run``'s default; built on first use);
  ``path``   whatever PATH holds (the default when unset: ``nix develop``, the Nix check sandbox).
It is never a silent fallback: with ``forky``, a root that cannot be built stops the run with one
line naming the cause.

    python3 -m harness toolchain          # build (or find) the root, print its bin directory
    python3 -m harness versions           # what the harness runs now, one line
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "user-api-tests"

SUITE = "forky"
# Debian's forky Release files are past their Valid-Until on the mirror these machines reach.
APT_OPTIONS = ('Acquire::Check-Valid-Until "false"',)
PACKAGES = (
    "nginx",                       # 1.30: the proxy (nixpkgs' nginx: 1.30)
    "mariadb-server", "mariadb-client",  # 11.8 (nixpkgs' mariadb: 11.4)
    "prometheus",                  # 3.5, and promtool
    "prometheus-nginx-exporter",   # 1.5
    "prometheus-mysqld-exporter",  # 0.19
    "nix-bin",                     # 2.34: the flake's evaluation (nix/tests/check.sh)
    "busybox-static",              # the stand-in images' healthcheck wget and sh
    "testssl.sh",                  # the TLS scanner of tests/tls (and the openssl it runs)
    "certbot",                     # 5.5: the acme image's client (nixpkgs' certbot: 5.5.0)
    "pebble",                      # 2.10: Let's Encrypt's ACME test server (tests/tls)
    "prometheus-blackbox-exporter",  # 0.28: certificate expiry (monitoring profile)
    "prometheus-node-exporter",    # the backups' metrics (textfile collector; monitoring profile)
    # The release path against a local registry (tests/ci/test_release.py): the registry, and the
    # tools .github/scripts/images.sh runs (on GitHub from the flake's nixpkgs).
    "docker-registry", "skopeo", "cosign", "docker-buildx",
)

# Run in the root once its packages are in: what a machine with these packages has and mmdebstrap
# does not do (nix-bin leaves its build group to systemd-sysusers, which a chroot does not run;
# without it Nix 2.34 as root warns on every call).
CUSTOMIZE = ('chroot "$1" groupadd --system nixbld',)

# The programs the harness, the suites and nix/tests/check.sh call, by name -> path in the root.
PROGRAMS = {
    "nginx": "/usr/sbin/nginx",
    "mariadbd": "/usr/sbin/mariadbd",
    "mariadb-install-db": "/usr/bin/mariadb-install-db",
    "mariadb": "/usr/bin/mariadb",
    "mariadb-admin": "/usr/bin/mariadb-admin",
    "mariadb-dump": "/usr/bin/mariadb-dump",
    "mariadb-binlog": "/usr/bin/mariadb-binlog",
    "prometheus": "/usr/bin/prometheus",
    "promtool": "/usr/bin/promtool",
    "prometheus-nginx-exporter": "/usr/bin/prometheus-nginx-exporter",
    "prometheus-mysqld-exporter": "/usr/bin/prometheus-mysqld-exporter",
    "nix": "/usr/bin/nix",
    "nix-instantiate": "/usr/bin/nix-instantiate",
    "testssl": "/usr/bin/testssl",
    # 3.5: -not_before/-not_after (3.4+), for certificates dated in the past.
    "openssl": "/usr/bin/openssl",
    "certbot": "/usr/bin/certbot",
    "pebble": "/usr/bin/pebble",
    "prometheus-blackbox-exporter": "/usr/bin/prometheus-blackbox-exporter",
    "prometheus-node-exporter": "/usr/bin/prometheus-node-exporter",
    "docker-registry": "/usr/bin/docker-registry",
    "skopeo": "/usr/bin/skopeo",
    "cosign": "/usr/bin/cosign",
    "docker-buildx": "/usr/libexec/docker/cli-plugins/docker-buildx",
}

# The root's own system; every other top-level directory of the host is bound over it.
SYSTEM_DIRS = {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "var", "boot",
               "lost+found"}
# Host files that must be the host's inside: names and the network as this machine knows them.
HOST_FILES = ("/etc/hosts", "/etc/resolv.conf")

# mmdebstrap's root is about 0.85 GB; with room for apt's downloads.
NEEDED_BYTES = 2 * 1024**3


class ToolchainError(RuntimeError):
    """The root cannot be built or used; the message is one line naming the cause."""


def mode() -> str:
    chosen = os.environ.get("USER_API_TOOLCHAIN", "path")
    if chosen not in ("forky", "path"):
        raise ToolchainError(f"USER_API_TOOLCHAIN={chosen}: use 'forky' or 'path'")
    return chosen


def key() -> str:
    """Names the root: a new package list or suite builds a new one."""
    text = json.dumps([SUITE, APT_OPTIONS, sorted(PACKAGES), CUSTOMIZE])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _wrappers_key() -> str:
    """Names the wrappers: rewritten (in seconds, the root kept) when they change."""
    text = json.dumps([sorted(PROGRAMS.items()), _ENTER_SCRIPT, sorted(SYSTEM_DIRS), HOST_FILES])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def home(cache: Path = CACHE) -> Path:
    return cache / f"{SUITE}-{key()}"


# Runs as the host's /bin/sh inside the fresh mount namespace: binds, then becomes the program.
_ENTER_SCRIPT = r"""#!/bin/sh
# Written by tests/harness/toolchain.py. Runs inside `unshare --mount`: the binds below are
# private to this process. Usage: enter ROOT PROGRAM [ARG...]
set -e
root=$1
shift
for dir in /*/; do
  dir=${dir%/}
  name=${dir#/}
  [ -L "$dir" ] && continue
  case " $SYSTEM_DIRS " in *" $name "*) continue ;; esac
  mkdir -p "$root$dir"
  mount --rbind "$dir" "$root$dir"
done
for file in $HOST_FILES; do
  if [ -e "$file" ]; then
    [ -e "$root$file" ] || : >"$root$file"
    mount --bind "$file" "$root$file"
  fi
done
# chroot starts in /: back to the caller's working directory (bound above), so that relative
# paths mean what they mean outside.
exec chroot "$root" /bin/sh -c 'cd "$1" 2>/dev/null || cd /; shift; exec "$@"' sh "$PWD" "$@"
"""


def _wrapper(root: Path, enter: Path, path_in_root: str) -> str:
    return (
        "#!/bin/sh\n"
        "# Written by tests/harness/toolchain.py: runs forky's program as this very process.\n"
        f"SYSTEM_DIRS='{' '.join(sorted(SYSTEM_DIRS))}' HOST_FILES='{' '.join(HOST_FILES)}' \\\n"
        f"  exec unshare --mount --propagation private /bin/sh '{enter}' '{root}' "
        f"'{path_in_root}' \"$@\"\n"
    )


def _one_line(output: str) -> str:
    """The cause in mmdebstrap's output, as one line."""
    patterns = (
        r"Unable to locate package (\S+)",
        r"Package '?(\S+?)'? has no installation candidate",
        r"(\S+) : Depends: .*",
    )
    for pattern in patterns:
        m = re.search(pattern, output)
        if m:
            return f"package {m.group(1)} cannot be installed from {SUITE}: {m.group(0).strip()}"
    if "No space left on device" in output:
        return "no space left on device while building the root"
    errors = [line for line in output.splitlines() if line.startswith("E:")]
    return errors[-1] if errors else (output.strip().splitlines() or ["no output"])[-1]


def _current(target: Path) -> bool:
    try:
        return (target / "ready").read_text() == _wrappers_key()
    except OSError:
        return False


def build(cache: Path = CACHE, packages=PACKAGES, needed_bytes: int = NEEDED_BYTES) -> Path:
    """The root's home (``root/``, ``bin/``), built if missing; raises :class:`ToolchainError`."""
    target = home(cache) if packages == PACKAGES else \
        cache / f"{SUITE}-custom-{hashlib.sha256(' '.join(packages).encode()).hexdigest()[:12]}"
    if _current(target):
        return target
    if os.geteuid() != 0:
        raise ToolchainError("the forky root needs root (mmdebstrap, mount namespaces, chroot); "
                             "run as root or set USER_API_TOOLCHAIN=path")
    for tool in ("mmdebstrap", "unshare", "chroot"):
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
            raise ToolchainError(f"{tool} is missing: apt-get install mmdebstrap "
                                 "(bookworm's; .ci/run installs it)")
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{SUITE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _current(target):  # built by another process meanwhile
            return target
        if not (target / "ready").exists():
            _build_root(target, packages, needed_bytes)
        _write_wrappers(target)
        (target / "ready").write_text(_wrappers_key())
        for old in cache.glob(f"{SUITE}-*"):  # earlier package lists' roots
            if old != target and old.is_dir() and not old.name.startswith(f"{SUITE}-custom-"):
                shutil.rmtree(old, ignore_errors=True)
    return target


def _build_root(target: Path, packages, needed_bytes: int):
    free = shutil.disk_usage(target.parent).free
    if free < needed_bytes:
        raise ToolchainError(f"no space for the {SUITE} root: {free / 1e9:.1f} GB free in "
                             f"{target.parent}, it needs {needed_bytes / 1e9:.1f} GB")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    argv = ["mmdebstrap", "--variant=apt",
            *(f"--aptopt={o}" for o in APT_OPTIONS),
            *(f"--customize-hook={hook}" for hook in CUSTOMIZE),
            f"--include={','.join(packages)}", SUITE, str(target / "root")]
    out = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        raise ToolchainError(f"building the {SUITE} root failed: "
                             f"{_one_line(out.stdout + out.stderr)}")


def _write_wrappers(target: Path):
    """bin/: the enter script and one wrapper per program, each replaced by a rename, so that a
    process starting a server meanwhile runs a whole file, old or new."""
    bin_dir = target / "bin"
    bin_dir.mkdir(exist_ok=True)
    enter = bin_dir / ".enter"
    files = {".enter": _ENTER_SCRIPT}
    for name, path in PROGRAMS.items():
        if not (target / "root" / path.lstrip("/")).exists():
            raise ToolchainError(f"{path} is not in the {SUITE} root: PROGRAMS names a program "
                                 "no package in PACKAGES installs")
        files[name] = _wrapper(target / "root", enter, path)
    for name, text in files.items():
        partial = bin_dir / f".{name}.partial"
        partial.write_text(text)
        partial.chmod(0o755)
        partial.replace(bin_dir / name)


def active_home() -> Path | None:
    """The root in use, or None when servers come from PATH."""
    if mode() == "path":
        return None
    return build()


def root() -> Path:
    """Where the servers' files are: the forky root, or / for PATH's."""
    home_dir = active_home()
    return home_dir / "root" if home_dir else Path("/")


def wrapper(name: str) -> str | None:
    """The program's wrapper in the forky root, if one is in use and names it."""
    home_dir = active_home()
    if home_dir and name in PROGRAMS:
        return str(home_dir / "bin" / name)
    return None


def versions() -> dict[str, str]:
    """program -> version, of what the harness runs now."""
    from . import procs

    def first(argv, pattern):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"? ({e})"
        m = re.search(pattern, out.stdout + out.stderr)
        return m.group(1) if m else "?"

    def run(name, *args, pattern=r"version (\S+)"):
        try:
            return first([procs.program(name), *args], pattern)
        except FileNotFoundError:
            return "not installed"

    return {
        "nginx": run("nginx", "-v", pattern=r"nginx/(\S+)"),
        "MariaDB": run("mariadbd", "--version", pattern=r"Ver (\d[^-\s]*)"),
        "Prometheus": run("prometheus", "--version", pattern=r"version (\d[^+\s]*)"),
        "nginx-exporter": run("prometheus-nginx-exporter", "--version", pattern=r"version (\d[^+\s]*)"),
        "mysqld-exporter": run("prometheus-mysqld-exporter", "--version", pattern=r"version (\d[^+\s]*)"),
        "Nix": run("nix", "--version", pattern=r"(\d+\.\d+\.\d+)"),
    }


def describe() -> str:
    """One line for a suite's header: the versions, and where they come from."""
    where = f"Debian {SUITE} root {home()}" if mode() == "forky" else "PATH"
    return "servers: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + f" (from {where})"
