#!/usr/bin/env python3
"""Run a flake check's commands in the environment a Nix build gives them, on a machine without
Nix builds (issue 24, item 2).

nix/tests/check.sh proves the flake evaluates; it cannot prove the checks' commands pass in the
sandbox, where PATH holds only the declared inputs, HOME (/homeless-shelter) does not exist, the
working directory is /build, the network is loopback only and the source is exactly the
derivation's fileset. A check that runs `ss` without iproute2 among its inputs, reads a file its
fileset lacks or writes to HOME passes in the work tree and fails only on GitHub. This runner
plays that sandbox here:

* what runs is what the derivation says: its attributes come from `nix eval` against the
  stand-in nixpkgs (as check.sh evaluates, into a private store), so the script is the
  derivation's own text and the flake files it names (`${./tests/image_contract.py}`, the
  filesets) are the copies evaluation put in that store; `writeText` outputs are written from
  their text; any other store path the script names that no evaluation can make stops the run;
* PATH: one directory per declared input, at the input's (stand-in) store path, holding only the
  Debian programs nix/build-inputs.json maps it to, then stdenv's initial PATH from the same
  table; an input missing from the table stops the run;
* a new mount, network and pid namespace (`unshare`, which CI has; not bubblewrap, which it does
  not): a read-only root of the host's /usr, /etc (with the sandbox's passwd, group and hosts)
  and /dev, a fresh /proc, /tmp and /nix/store, /build (TMPDIR, NIX_BUILD_TOP, the working
  directory) and no /homeless-shelter; loopback up and nothing else; the commands run as uid
  1000, gid 100 (nixbld, as in the sandbox), so a read-only store file stays read-only;
* the environment: cleared, then what Nix and stdenv set and what the derivation's attributes
  export (name, out, buildCommand, env.*, ...).

Forky's programs (nginx 1.30, MariaDB 11.8) run from the tests' forky root through a chroot in
the same namespaces; the build user keeps CAP_SYS_CHROOT only for that. Not played: the sandbox
hides /usr and /bin/sh is busybox there; here the host's /usr is visible (read-only) to a
program that names an absolute path, so only PATH lookups are held to the declared inputs.

    python3 nix/tests/build_env.py nginx-config       # a runCommand check's buildCommand
    python3 nix/tests/build_env.py image-config
    python3 nix/tests/build_env.py user-api           # cargoCheckHook's `cargo test` (minutes)
    python3 nix/tests/build_env.py --devshell         # `cargo test` as a `nix develop` user
    python3 nix/tests/build_env.py --flake DIR ...    # a scratch copy (mutations)
    python3 nix/tests/build_env.py image-config --unbuilt absent   # without the image contents,
                                                      # which only a Nix build makes
    python3 nix/tests/build_env.py user-api --cargo-target-dir DIR # reuse a target dir (faster,
                                                      # for development; not the sandbox)

Needs root (namespaces, mounts), unshare, setpriv and chroot (util-linux, coreutils), and the
forky root (tests/harness/toolchain.py: Nix 2.34 for the evaluation, the servers).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
STAND_IN = HERE / "stand-in"
TABLE = REPO / "nix" / "build-inputs.json"
SYSTEM = "x86_64-linux"
RUST_TARGET = "x86_64-unknown-linux-gnu"

sys.path.insert(0, str(REPO / "tests"))
from harness import toolchain  # noqa: E402  (tests/ is not a package on sys.path by default)

# The sandbox's build user and group, /etc files and fixed variables, as Nix's Linux builder
# (src/libstore/unix/build/linux-derivation-builder.cc and derivation-builder.cc) writes them.
BUILD_UID, BUILD_GID = 1000, 100
PASSWD = ("root:x:0:0:Nix build user:/build:/noshell\n"
          f"nixbld:x:{BUILD_UID}:{BUILD_GID}:Nix build user:/build:/noshell\n"
          "nobody:x:65534:65534:Nobody:/:/noshell\n")
GROUP = f"root:x:0:\nnixbld:!:{BUILD_GID}:\nnogroup:x:65534:\n"
HOSTS = "127.0.0.1 localhost\n::1 localhost\n"
NIX_ENV = {
    "HOME": "/homeless-shelter",
    "NIX_BUILD_TOP": "/build",
    "TMPDIR": "/build", "TEMPDIR": "/build", "TMP": "/build", "TEMP": "/build",
    "PWD": "/build",
    "NIX_STORE": "/nix/store",
    "NIX_LOG_FD": "2",
    "TERM": "xterm-256color",
}
# What stdenv's setup.sh exports before any phase (pkgs/stdenv/generic/setup.sh).
STDENV_ENV = {
    "SOURCE_DATE_EPOCH": "315532800",
    "SSL_CERT_FILE": "/no-cert-file.crt",
    "SHELL": "bash",
    "CONFIG_SHELL": "bash",
}

# The part of stdenv's setup.sh the checks' scripts use, in bash (the sandbox has no python for a
# runCommand without python3 among its inputs): strict mode as setup.sh sets it, runHook, and
# substitute / substituteInPlace with --replace-fail, --replace-warn, --replace-quiet.
SETUP_SH = r"""
set -eu
set -o pipefail
shopt -s inherit_errexit
# runHook NAME: the derivation's NAME attribute (preCheck, postCheck); no hook arrays here.
runHook() {
  local hook="$1"
  eval "${!hook-}"
  return 0
}
substitute() {
  local input="$1" output="$2"
  shift 2
  if [ ! -f "$input" ]; then
    echo "substitute(): ERROR: file '$input' does not exist" >&2
    return 1
  fi
  local content
  content="$(cat "$input"; printf x)"
  content="${content%x}"
  while (($#)); do
    local mode="$1" pattern="$2" replacement="$3"
    case "$mode" in
      --replace-fail | --replace-warn | --replace-quiet)
        shift 3
        if [[ "$content" != *"$pattern"* ]]; then
          if [ "$mode" = --replace-fail ]; then
            echo "substitute(): ERROR: pattern $pattern doesn't match anything in file '$input'" >&2
            return 1
          elif [ "$mode" = --replace-warn ]; then
            echo "substitute(): WARNING: pattern $pattern doesn't match anything in file '$input'" >&2
          fi
        fi
        content="${content//"$pattern"/$replacement}"
        ;;
      *)
        echo "substitute(): ERROR: this runner's setup.sh does not implement $mode" >&2
        return 1
        ;;
    esac
  done
  printf %s "$content" >"$output"
}
substituteInPlace() {
  local file="$1"
  shift
  substitute "$file" "$file" "$@"
}
"""


class BuildEnvError(RuntimeError):
    """The check cannot be played here; the message says why (a missing input, a store path
    only a build could make, a missing tool)."""


# ---- evaluation ---------------------------------------------------------------------------------

class Evaluator:
    """`nix eval` against the stand-in into one private store, as check.sh evaluates: the store
    then holds the flake's files and filesets at the paths the derivations name."""

    def __init__(self, flake: Path, work: Path):
        self.flake = flake
        self.store = work / "store"
        nix = shutil.which("nix")
        if not nix:
            nix = str(toolchain.build() / "bin" / "nix")
        self.nix = nix
        self.env = {**os.environ, "XDG_CACHE_HOME": str(work / "cache")}

    def _run(self, *argv: str) -> str:
        out = subprocess.run(
            [self.nix, "--extra-experimental-features", "nix-command flakes",
             "--option", "eval-cache", "false", "--store", str(self.store), *argv],
            capture_output=True, text=True, env=self.env)
        if out.returncode != 0:
            raise BuildEnvError(f"nix {' '.join(argv[:3])}... failed:\n{out.stderr[-3000:]}")
        return out.stdout

    def flake_attr(self, attr: str, apply: str = "x: x") -> object:
        ref = f"path:{self.flake}" if not (self.flake / ".git").exists() else str(self.flake)
        return json.loads(self._run("eval", "--json", "--override-input", "nixpkgs",
                                    f"path:{STAND_IN}", f"{ref}#{attr}", "--apply", apply))

    def out_paths(self, expressions: list[str]) -> dict[str, str]:
        """nixpkgs expression -> the stand-in's store path for it."""
        body = " ".join(f"{json.dumps(e)} = ({e}).outPath;" for e in expressions)
        expr = (f'let pkgs = (builtins.getFlake "path:{STAND_IN}").legacyPackages.{SYSTEM}; '
                f"in with pkgs; {{ {body} }}")
        return json.loads(self._run("eval", "--impure", "--json", "--expr", expr))

    def derivations(self, drv_path: str) -> dict[str, dict]:
        """Every derivation in drv_path's closure, by its output path: its environment."""
        shown = json.loads(self._run("derivation", "show", "--recursive", drv_path))
        shown = shown.get("derivations", shown)
        by_out = {}
        for drv in shown.values():
            out = drv.get("env", {}).get("out")
            if out:
                by_out[out] = drv["env"]
        return by_out

    def physical(self, store_path: str) -> Path:
        return self.store / store_path.lstrip("/")


@dataclass
class Check:
    """What a check's derivation runs, read from its stand-in derivation."""

    name: str
    function: str
    args: dict
    out: str
    drv_path: str

    @property
    def inputs(self) -> list[str]:
        """Store paths on PATH, in setup.sh's order: nativeBuildInputs, then (doCheck) the check
        inputs, which make-derivation.nix appends to them."""
        paths = list(self.args.get("nativeBuildInputs", []))
        if self.args.get("doCheck"):
            paths += self.args.get("nativeCheckInputs", [])
        return paths

    def environment(self) -> dict[str, str]:
        """What the derivation exports: every attribute mkDerivation passes (`env` flattened),
        as Nix turns values into strings (lists joined by spaces, true -> 1, false -> "")."""
        env = {}
        skipped = {"meta", "passthru", "env", "nativeCheckInputs", "checkInputs"}
        for key, value in {**self.args, **self.args.get("env", {})}.items():
            if key in skipped or value is None or isinstance(value, dict):
                continue
            if isinstance(value, bool):
                env[key] = "1" if value else ""
            elif isinstance(value, list):
                env[key] = " ".join(str(v) for v in value)
            else:
                env[key] = str(value)
        env["out"] = self.out
        env["name"] = self.args.get("name") or f"{self.args['pname']}-{self.args['version']}"
        env["system"] = SYSTEM
        return env


def read_check(ev: Evaluator, attr: str) -> Check:
    got = ev.flake_attr(attr, "d: { args = builtins.fromJSON (builtins.unsafeDiscardStringContext "
                              "d.standInArgs); function = d.standInFunction; out = d.outPath; "
                              "drv = d.drvPath; }")
    return Check(attr, got["function"], got["args"], got["out"], got["drv"])


# ---- the inputs table ---------------------------------------------------------------------------

@dataclass
class Table:
    """nix/build-inputs.json: nixpkgs input -> the Debian programs that play it."""

    inputs: dict[str, list[str]]
    implicit: dict
    path: Path = TABLE
    _by_out: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path = TABLE) -> "Table":
        data = json.loads(path.read_text())
        return cls(data["inputs"], data["implicit"], path)

    def index(self, ev: Evaluator):
        self._by_out = {out: key for key, out in ev.out_paths(list(self.inputs)).items()}

    def key_of(self, store_path: str, who: str) -> str:
        """The table's key for a declared input, or the error that the table lacks it."""
        if store_path not in self._by_out:
            raise BuildEnvError(
                f"{who} declares the input {store_path}, which no entry of {self.path.name} "
                "maps to Debian programs: add its nixpkgs attribute there")
        return self._by_out[store_path]

    def initial_path(self, with_cc: bool) -> list[str]:
        names = list(self.implicit["stdenv"]) if with_cc else []
        return names + list(self.implicit["stdenvNoCC"])


def resolve(source: str) -> tuple[str, str, str] | None:
    """One table source -> (name on PATH, kind, target), or None when this machine lacks it.
    kind: 'host' (a symlink to a host program), 'forky' (run in the forky root), or 'link'
    ('share/mariadb=forky:/usr/share/mariadb': a path under the input's prefix, a symlink that
    means the forky root's file to the forky programs that read it)."""
    name, _, rest = source.rpartition("=") if "=" in source else ("", "", source)
    if rest.startswith("forky:"):
        path = rest.removeprefix("forky:")
        root = toolchain.build() / "root"
        if not (root / path.lstrip("/")).exists():
            return None
        if "/" in name:  # a file or directory of the package's prefix, read in the forky root
            return name, "link", path
        return name or Path(path).name, "forky", path
    if rest.startswith("rustup:"):
        prog = rest.removeprefix("rustup:")
        out = subprocess.run(["rustup", "which", prog], capture_output=True, text=True, cwd=REPO)
        if out.returncode != 0:
            return None
        return name or prog, "host", out.stdout.strip()
    if os.path.exists(rest):
        return name or Path(rest).name, "host", rest
    return None


def dpkg_programs(package: str) -> list[str]:
    out = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True)
    if out.returncode != 0:
        return []
    return sorted(line for line in out.stdout.splitlines()
                  if re.match(r"^/(usr/)?s?bin/[^/]+$", line) and os.path.isfile(line))


def programs(sources: list[str]) -> tuple[list[tuple[str, str, str]], list[str]]:
    """The programs of one input and the sources this machine lacks."""
    found, missing = [], []
    for source in sources:
        if source.startswith("dpkg:"):
            listed = dpkg_programs(source.removeprefix("dpkg:"))
            found += [(Path(p).name, "host", p) for p in listed]
            if not listed:
                missing.append(source)
            continue
        got = resolve(source)
        if got:
            found.append(got)
        else:
            missing.append(source)
    return found, missing


# ---- PATH ---------------------------------------------------------------------------------------

FORKY_MOUNT = "/.forky"


def forky_wrapper(path_in_root: str, in_sandbox: bool) -> str:
    """A forky program as the very process its caller starts (exec all the way, as the harness's
    wrappers do). In the sandbox the forky root is already assembled at /.forky and only a chroot
    is needed (the build user keeps CAP_SYS_CHROOT for it); inside the forky root the program is
    at its own path. Outside (the dev shell) the harness's own enter script does the binds, with
    util-linux on PATH only for itself."""
    if in_sandbox:
        return ("#!/bin/sh\n"
                f"if [ -d {FORKY_MOUNT} ]; then\n"
                f"  exec /usr/sbin/chroot {FORKY_MOUNT} /bin/sh -c "
                "'cd \"$1\" || exit 127; shift; exec \"$@\"' sh \"$PWD\" "
                f"{path_in_root} \"$@\"\n"
                "fi\n"
                f"exec {path_in_root} \"$@\"\n")
    home = toolchain.build()
    dirs = " ".join(sorted(toolchain.SYSTEM_DIRS))
    files = " ".join(toolchain.HOST_FILES)
    return ("#!/bin/sh\n"
            "_path=$PATH\n"
            f"SYSTEM_DIRS='{dirs}' HOST_FILES='{files}' PATH=/usr/sbin:/usr/bin:/sbin:/bin \\\n"
            "  exec unshare --mount --propagation private /bin/sh "
            f"'{home / 'bin' / '.enter'}' '{home / 'root'}' /usr/bin/env -u SYSTEM_DIRS "
            f"-u HOST_FILES PATH=\"$_path\" {path_in_root} \"$@\"\n")


@dataclass
class PathDir:
    """One PATH entry: where it is in the sandbox, and the host directory that fills it."""

    where: str
    host: Path
    label: str
    missing: list[str]


def make_path(table: Table, keys: list[tuple[str, str]], with_cc: bool, work: Path,
              in_sandbox: bool) -> list[PathDir]:
    """keys: (table key, where its directory goes). Each directory holds bin/ with only the
    mapped programs: a symlink per host program, a small exec wrapper per forky one."""
    entries = [(key, where, table.inputs[key]) for key, where in keys]
    for name in table.initial_path(with_cc):
        entries.append((name, f"/.build-env/initial-path/{name}", table.implicit["programs"][name]))
    dirs = []
    for i, (key, where, sources) in enumerate(entries):
        host = work / "path" / f"{i:02d}"
        (host / "bin").mkdir(parents=True)
        found, missing = programs(sources)
        if not sources:
            missing = ["nothing plays it here (an empty entry in the table)"]
        for name, kind, target in found:
            link = host / name if "/" in name else host / "bin" / name
            if link.exists() or link.is_symlink():
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            if kind == "forky":
                link.write_text(forky_wrapper(target, in_sandbox))
                link.chmod(0o755)
            else:
                link.symlink_to(target)
        dirs.append(PathDir(where if in_sandbox else str(host), host, key, missing))
    return dirs


def host_prefixes(dirs: list[PathDir]) -> dict[str, str]:
    """Host directories outside /usr that PATH's symlinks point into (a rustup toolchain under
    /root, which the build user cannot enter): bound read-only at /.host/<n> in the sandbox,
    the symlinks rewritten to go there."""
    prefixes: dict[str, str] = {}
    for d in dirs:
        for link in (d.host / "bin").iterdir():
            if not link.is_symlink():
                continue
            target = os.readlink(link)
            if target.startswith(("/usr/", "/bin/", "/sbin/")):
                continue
            prefix = str(Path(target).parent.parent)
            mount = prefixes.setdefault(prefix, f"/.host/{len(prefixes)}")
            link.unlink()
            link.symlink_to(mount + target[len(prefix):])
    return prefixes


# ---- the sandbox --------------------------------------------------------------------------------

@dataclass
class Sandbox:
    """Everything one run binds into its namespace."""

    work: Path
    store_paths: dict[str, Path] = field(default_factory=dict)  # sandbox store path -> host
    binds_ro: dict[str, Path] = field(default_factory=dict)  # other read-only binds
    binds_rw: dict[str, Path] = field(default_factory=dict)  # writable ones (development aids)
    path: list[PathDir] = field(default_factory=list)

    def script(self, env: dict[str, str], command: str) -> str:
        """The shell script unshare runs as root: assemble the root, bring lo up, become the
        build user in /build."""
        new = self.work / "root"
        new.mkdir()
        forky = toolchain.build() / "root"
        for d in ("build", "nix/store", ".build-env"):  # mount points in the forky root (empty)
            (forky / d).mkdir(parents=True, exist_ok=True)
        files = self.work / "etc"
        files.mkdir()
        for name, text in (("passwd", PASSWD), ("group", GROUP), ("hosts", HOSTS)):
            (files / name).write_text(text)
        build = self.work / "build"
        build.mkdir()
        os.chown(build, BUILD_UID, BUILD_GID)
        build.chmod(0o700)
        q = shlex.quote
        lines = ["set -euo pipefail", f"new={q(str(new))}",
                 'mount -t tmpfs -o mode=0755 sandbox-root "$new"']
        for d in ("usr", "etc", "bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            if os.path.islink(f"/{d}"):
                lines.append(f'ln -s {q(os.readlink(f"/{d}"))} "$new/{d}"')
            elif os.path.isdir(f"/{d}"):
                lines += [f'mkdir "$new/{d}"', f'mount --rbind /{d} "$new/{d}"',
                          f'mount -o remount,bind,ro "$new/{d}"']
        lines += [
            'mkdir -p "$new/dev" "$new/proc" "$new/build" "$new/tmp" "$new/nix/store"',
            'mount --rbind /dev "$new/dev"',
            'mount -t tmpfs -o mode=1777 shm "$new/dev/shm"',
            'mount -t proc proc "$new/proc"',
            f'mount --bind {q(str(build))} "$new/build"',
            'mount -t tmpfs -o mode=1777 tmp "$new/tmp"',
            f'mount -t tmpfs -o mode=1775,gid={BUILD_GID} store "$new/nix/store"',
        ]
        for name in ("passwd", "group", "hosts"):
            lines.append(f'mount --bind {q(str(files / name))} "$new/etc/{name}"')

        def bind_ro(host: Path, where: str):
            make = "mkdir -p" if host.is_dir() else "touch"
            lines.extend([f'mkdir -p "$new"{q(str(Path(where).parent))}',
                          f'{make} "$new"{q(where)}',
                          f'mount --rbind {q(str(host))} "$new"{q(where)}',
                          f'mount -o remount,bind,ro "$new"{q(where)}'])

        for where, host in sorted(self.store_paths.items()):
            bind_ro(host, where)
        for d in self.path:
            bind_ro(d.host, d.where)
        for where, host in sorted(self.binds_ro.items()):
            bind_ro(host, where)
        for where, host in sorted(self.binds_rw.items()):
            lines.extend([f'mkdir -p "$new"{q(where)}',
                          f'mount --bind {q(str(host))} "$new"{q(where)}'])
        # The forky root, assembled once for the chroot of every forky program: the sandbox's
        # /build, store, /tmp, /dev, /proc and /etc files inside it, all of it read-only but
        # those the build user may write.
        lines += [
            f'mkdir "$new{FORKY_MOUNT}"',
            f'mount --rbind {q(str(forky))} "$new{FORKY_MOUNT}"',
        ]
        # /.build-env: stdenv's initial PATH, which forky's scripts (mariadb-install-db: sed,
        # uname, mkdir) find on the PATH they inherit; its symlinks name /usr/bin programs, which
        # are then forky's own.
        lines.append('mkdir -p "$new/.build-env"')
        for d in ("build", "nix/store", "tmp", "dev", "proc", ".build-env"):
            lines.append(f'mount --rbind "$new/{d}" "$new{FORKY_MOUNT}/{d}"')
        for name in ("passwd", "group", "hosts"):
            lines.append(f'mount --bind {q(str(files / name))} "$new{FORKY_MOUNT}/etc/{name}"')
        lines += [
            f'mount -o remount,bind,ro "$new{FORKY_MOUNT}"',
            'mount -o remount,bind,ro "$new"',
            "ip link set lo up",
        ]
        env_args = " ".join(q(f"{k}={v}") for k, v in sorted(env.items()))
        lines.append(
            f'exec chroot "$new" /usr/bin/setpriv --reuid={BUILD_UID} --regid={BUILD_GID} '
            "--clear-groups --inh-caps=-all,+sys_chroot --ambient-caps=-all,+sys_chroot "
            "--bounding-set=-all,+sys_chroot "
            f"/usr/bin/env -i {env_args} /usr/bin/bash -c {q('cd /build && ' + command)}")
        return "\n".join(lines) + "\n"

    def run(self, env: dict[str, str], command: str, timeout: float | None = None) -> int:
        script = self.work / "sandbox.sh"
        script.write_text(self.script(env, command))
        argv = ["unshare", "--net", "--mount", "--pid", "--fork", "--propagation", "private",
                "/usr/bin/bash", str(script)]
        return subprocess.run(argv, timeout=timeout, stdin=subprocess.DEVNULL).returncode


def check_tools():
    if os.geteuid() != 0:
        raise BuildEnvError("the build environment needs root (namespaces, mounts, chroot)")
    for tool in ("unshare", "setpriv", "chroot", "ip"):
        if not shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin"):
            raise BuildEnvError(f"{tool} is missing (util-linux, coreutils, iproute2)")


# ---- store paths the script names ---------------------------------------------------------------

STORE_PATH = re.compile(r"/nix/store/[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+._?=-]+")


def materialise(ev: Evaluator, check: Check, text: str, work: Path,
                unbuilt: str = "fail", skip: set[str] = frozenset()) -> dict[str, Path]:
    """sandbox store path -> host file or directory, for every store path `text` names and, in
    turn, every one a written file names (Nix registers those as references, so the real sandbox
    has the whole closure): what evaluation copied (the flake's files, filesets), or a writeText
    output written from its text. Another derivation's output needs a build: with unbuilt
    "fail" the run stops naming them; with "absent" they stay missing and the run goes on (the
    script then fails where it reads them)."""
    derivations: dict[str, dict] | None = None
    found: dict[str, Path] = {}
    needs_build: list[str] = []
    pending = sorted(set(STORE_PATH.findall(text)))
    while pending:
        path = pending.pop(0)
        if path in found or path in needs_build or path in skip:
            continue
        host = ev.physical(path)
        if host.exists():
            found[path] = host
            continue
        if derivations is None:
            derivations = ev.derivations(check.drv_path)
        drv = derivations.get(path)
        if drv and drv.get("standInFunction") == "writeTextFile":
            args = json.loads(drv["standInArgs"])
            target = work / "made" / Path(path).name
            dest = target / args["env"]["destination"].lstrip("/") \
                if args["env"]["destination"] else target
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(args["env"]["text"])
            dest.chmod(0o555 if args["env"]["executable"] else 0o444)
            found[path] = target
            pending += sorted(set(STORE_PATH.findall(args["env"]["text"])))
            continue
        what = drv.get("standInFunction", "?") if drv else "not in the check's closure"
        needs_build.append(f"{path} ({what})")
    if needs_build and unbuilt == "fail":
        raise BuildEnvError(
            f"{check.name} needs {len(needs_build)} store path(s) only a Nix build can make "
            "(--unbuilt absent runs it without them):\n  " + "\n  ".join(needs_build))
    for path in needs_build:
        print(f"build_env: absent (needs a build): {path}", file=sys.stderr)
    return found


# ---- the runs -----------------------------------------------------------------------------------

def input_dirs(table: Table, check: Check) -> list[tuple[str, str]]:
    return [(table.key_of(p, check.name), p) for p in check.inputs]


def run_command_check(ev: Evaluator, table: Table, check: Check, work: Path,
                      timeout: float | None, unbuilt: str = "fail") -> int:
    """A runCommand check: setup.sh's strict mode, then `eval "$buildCommand"` in /build, as
    genericBuild does when buildCommand is set. runCommand uses stdenvNoCC: no C compiler."""
    sandbox = Sandbox(work)
    sandbox.path = make_path(table, input_dirs(table, check), False, work, True)
    sandbox.binds_ro.update({w: Path(h) for h, w in host_prefixes(sandbox.path).items()})
    # The store paths the script names, and those its variables hold (`cd "$src"`); not the
    # inputs, whose directories PATH already has.
    env_text = "\n".join(v for k, v in check.environment().items()
                         if k not in ("nativeBuildInputs", "out"))
    sandbox.store_paths = materialise(ev, check, env_text, work, unbuilt,
                                      skip=set(check.inputs))
    env = {**NIX_ENV, **check.environment(), **STDENV_ENV,
           "NIX_BUILD_CORES": str(os.cpu_count() or 1),
           "PATH": ":".join(f"{d.where}/bin" for d in sandbox.path)}
    (work / "setup.sh").write_text(SETUP_SH)
    sandbox.binds_ro["/.build-env/setup.sh"] = work / "setup.sh"
    report_missing(sandbox.path)
    return sandbox.run(env, 'source /.build-env/setup.sh; eval "$buildCommand"', timeout)


def vendor_dir(cache: Path) -> Path:
    """`cargo vendor` of Cargo.lock's crates, outside the sandbox and before it (the stand-in for
    importCargoLock's vendor directory, a store path under Nix); cached by Cargo.lock."""
    digest = hashlib.sha256((REPO / "Cargo.lock").read_bytes()).hexdigest()[:12]
    target = cache / f"vendor-{digest}"
    if (target / ".ready").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    argv = ["cargo", "vendor", "--locked", "--versioned-dirs", str(target)]
    out = subprocess.run([*argv, "--offline"], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        # Crates for other platforms (Cargo.lock lists them all; a directory source must hold
        # them all) are often not in ~/.cargo's cache: fetched by cargo from crates.io, checked
        # against Cargo.lock's checksums, as importCargoLock fetches them for Nix.
        print("build_env: cargo vendor --offline lacks crates; cargo vendor from crates.io",
              file=sys.stderr)
        shutil.rmtree(target, ignore_errors=True)
        out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise BuildEnvError(f"cargo vendor failed:\n{out.stderr[-2000:]}")
    # Readable by the build user, as a store path is (some crates ship 0600 files).
    subprocess.run(["chmod", "-R", "a+rX", str(target)], check=True)
    (target / ".ready").touch()
    return target


def cargo_check(ev: Evaluator, table: Table, check: Check, work: Path,
                timeout: float | None, cache: Path, target_dir: Path | None = None) -> int:
    """A buildRustPackage check with doCheck: the unpack phase (the source copied to
    /build/source, made writable), cargoSetupHook's vendored sources, then preCheck and
    cargoCheckHook's command in /build/source:
    `cargo test -j $NIX_BUILD_CORES --profile <cargoCheckType> --target <host> --offline
    -- --test-threads=$NIX_BUILD_CORES` (pkgs/build-support/rust/hooks/cargo-check-hook.sh).
    buildRustPackage uses stdenv: the C compiler (rustc's linker) is on PATH."""
    if check.function != "rustPlatform.buildRustPackage" or not check.args.get("doCheck"):
        raise BuildEnvError(f"{check.name} is not a buildRustPackage with doCheck")
    sandbox = Sandbox(work)
    sandbox.path = make_path(table, input_dirs(table, check), True, work, True)
    sandbox.binds_ro.update({w: Path(h) for h, w in host_prefixes(sandbox.path).items()})
    src = check.args["src"]
    sandbox.store_paths = materialise(ev, check, src, work)
    sandbox.binds_ro["/build-env-vendor"] = vendor_dir(cache)
    cargo_home = work / "cargo-home"
    cargo_home.mkdir()
    (cargo_home / "config.toml").write_text(
        '[source.crates-io]\nreplace-with = "vendored-sources"\n\n'
        '[source.vendored-sources]\ndirectory = "/build/cargo-vendor-dir"\n')
    sandbox.binds_ro["/.build-env/cargo-home"] = cargo_home
    if target_dir:
        # A development aid, not the sandbox: the target directory of an earlier run, so that
        # only what changed compiles again (its paths are /build/source's in every run).
        target_dir.mkdir(parents=True, exist_ok=True)
        os.chown(target_dir, BUILD_UID, BUILD_GID)
        sandbox.binds_rw["/.build-env/target"] = target_dir
    report_missing(sandbox.path)
    cores = str(os.cpu_count() or 1)
    env = {**NIX_ENV, **check.environment(), **STDENV_ENV, "NIX_BUILD_CORES": cores,
           "PATH": ":".join(f"{d.where}/bin" for d in sandbox.path)}
    profile = check.args.get("cargoCheckType", "release")
    flags = ["-j", cores] + (["--profile", profile] if profile != "debug" else [])
    flags += ["--target", RUST_TARGET, "--offline", *check.args.get("cargoTestFlags", []),
              "--", f"--test-threads={cores}", *check.args.get("checkFlags", [])]
    (work / "setup.sh").write_text(SETUP_SH)
    sandbox.binds_ro["/.build-env/setup.sh"] = work / "setup.sh"
    command = "\n".join([
        "source /.build-env/setup.sh",
        # unpackPhase: the source directory, writable, owned by the build user.
        f"cp -r --preserve=timestamps {shlex.quote(src)} source",
        "chmod -R u+w source",
        # cargoSetupHook: the vendored crates beside the source (nixpkgs copies its store path
        # there); the configuration in a CARGO_HOME of its own, nothing read from HOME.
        "ln -s /build-env-vendor cargo-vendor-dir",
        "mkdir cargo-home && cp /.build-env/cargo-home/config.toml cargo-home/",
        "export CARGO_HOME=/build/cargo-home",
        "cd source",
        "if [ -d /.build-env/target ]; then ln -s /.build-env/target target; fi",
        'runHook preCheck',
        "echo 'cargoCheckHook: cargo test " + " ".join(flags) + "'",
        "cargo test " + " ".join(shlex.quote(f) for f in flags),
        'runHook postCheck',
    ])
    return sandbox.run(env, command, timeout)


def devshell(ev: Evaluator, table: Table, work: Path, timeout: float | None,
             cargo_args: list[str]) -> int:
    """`cargo test` as a `nix develop` user runs it: PATH is the dev shell's packages (mkShell
    uses stdenv: its initial PATH and the C compiler after them), HOME the user's, the work
    tree as it is; nothing else of the caller's environment (`nix develop -i`)."""
    shell = read_check(ev, f"devShells.{SYSTEM}.default")
    keys = [(table.key_of(p, shell.name), "") for p in shell.inputs]
    dirs = make_path(table, keys, True, work, False)
    report_missing(dirs)
    env = {"HOME": os.environ.get("HOME", "/root"), "PATH": ":".join(f"{d.host}/bin" for d in dirs),
           "TERM": os.environ.get("TERM", "dumb"), "USER": os.environ.get("USER", "root")}
    env.update({k: v for k, v in shell.environment().items() if k in shell.args.get("env", {})})
    for var in ("RUSTUP_HOME", "CARGO_HOME"):  # where the user's toolchain and crates are
        if var in os.environ:
            env[var] = os.environ[var]
    return subprocess.run(["cargo", "test", *cargo_args], cwd=REPO, env=env, timeout=timeout,
                          executable=shutil.which("cargo", path=env["PATH"])).returncode


def report_missing(dirs: list[PathDir]):
    for d in dirs:
        if d.missing:
            print(f"build_env: {d.label}: not on this machine: {', '.join(d.missing)}",
                  file=sys.stderr)


def run(check_name: str | None, flake: Path = REPO, table_path: Path = TABLE,
        timeout: float | None = None, cargo_args: list[str] | None = None,
        unbuilt: str = "fail", target_dir: Path | None = None) -> int:
    """Run one check (or, with None, the dev shell's `cargo test`); the exit status."""
    check_tools()
    cache = toolchain.CACHE / "build-env"
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-env-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        try:
            ev = Evaluator(flake, work)
            table = Table.load(table_path)
            table.index(ev)
            if check_name is None:
                return devshell(ev, table, work, timeout, cargo_args or [])
            check = read_check(ev, f"checks.{SYSTEM}.{check_name}")
            if "buildCommand" in check.args:
                return run_command_check(ev, table, check, work, timeout, unbuilt)
            return cargo_check(ev, table, check, work, timeout, cache, target_dir)
        finally:
            # the private store's files are read-only: make them deletable
            subprocess.run(["chmod", "-R", "u+w", str(work)], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("check", nargs="?", help="a checks.<system> attribute (nginx-config, "
                        "image-config, user-api, ...)")
    parser.add_argument("--devshell", action="store_true",
                        help="cargo test as a `nix develop` user (arguments after -- go to it)")
    parser.add_argument("--flake", type=Path, default=REPO, help="the flake (a scratch copy)")
    parser.add_argument("--table", type=Path, default=TABLE, help="the inputs table")
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--unbuilt", choices=("fail", "absent"), default="fail",
                        help="a store path only a build makes: stop (default), or leave it out")
    parser.add_argument("--cargo-target-dir", type=Path, default=None,
                        help="reuse this target directory across runs (development aid)")
    args, rest = parser.parse_known_args(argv)
    if bool(args.check) == args.devshell:
        parser.error("name one check, or --devshell")
    started = time.monotonic()
    try:
        code = run(None if args.devshell else args.check, args.flake, args.table,
                   args.timeout, [a for a in rest if a != "--"], args.unbuilt,
                   args.cargo_target_dir)
    except BuildEnvError as e:
        print(f"build_env: {e}", file=sys.stderr)
        return 2
    what = "dev shell cargo test" if args.devshell else f"checks.{SYSTEM}.{args.check}"
    print(f"build_env: {what}: exit {code} ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
