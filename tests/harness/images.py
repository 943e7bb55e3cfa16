"""The images compose runs: stand-ins built from this machine's files, or the Nix ones.

The stack is meant to run the images the Nix flake builds (``nix run .#load``). Where Nix cannot
run (CI), :func:`build_stand_ins` builds **stand-ins** from this machine's own files: the release
binary ``target/release/user-api`` with the host's libraries, and from the servers' root
(:mod:`harness.toolchain`: production's versions in the Debian forky root, or the host's own with
``USER_API_TOOLCHAIN=path``) nginx, busybox-static and MariaDB, and for the compose profile
``monitoring`` prometheus, prometheus-nginx-exporter, prometheus-mysqld-exporter,
prometheus-blackbox-exporter and prometheus-node-exporter, and certbot for
docker-compose.acme.yml's acme image. Grafana has no stand-in: it is packaged neither for Debian
nor on PyPI, so the e2e starts the profile without it (:data:`NO_STAND_IN`). They keep
the runtime contract of their Nix twins, read from ``nix/contract.json`` (the one statement of
it): user, entrypoint, cmd, exposed ports, env, stop signal, healthcheck, the nginx config
directory and the db's data directory.

Each stand-in is written as a docker-archive tarball of the format
``dockerTools.streamLayeredImage`` writes (``<sha256>/layer.tar`` per layer, ``<sha256>.json``
the image config, ``manifest.json`` naming both and the tag) and ``docker load``-ed, so the
healthcheck, stop signal and the rest live in the image, as in the Nix image. Two layers, like
the Nix ones: the binaries with every library ``ldd`` lists, then a customisation layer (users,
config files, scripts, directories).

:func:`check_present` is the other way round: it reads the config of images already loaded (the
real Nix images) and lists every difference from the contract.

Standard library only; needs the ``docker`` CLI, ``ldd`` and, for the stand-ins, Debian's
``nginx``, ``busybox-static`` and ``mariadb-server`` packages in the servers' root.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import toolchain

REPO = Path(__file__).resolve().parents[2]
CONTRACT_FILE = REPO / "nix" / "contract.json"
STAND_IN_LABEL = "io.github.user-api.stand-in"

# Fixed timestamps: the same inputs give the same layers and the same image id.
MTIME = 1
CREATED = "1970-01-01T00:00:01+00:00"

# Image healthcheck timings, as nix/images.nix sets them (compose overrides them anyway; they
# matter for a plain `docker run`). Nanoseconds.
_S = 1_000_000_000
HEALTHCHECK_TIMINGS = {"Interval": 10 * _S, "Timeout": 5 * _S, "StartPeriod": 30 * _S, "Retries": 3}

# Tools the db entrypoint, healthcheck.sh, backup.sh and mariadb-install-db call.
DB_TOOLS = (
    "cat chmod cp date dirname basename env head id ln ls mkdir mv od readlink rm sleep "
    "stat sync timeout touch tr uname sed grep mawk gzip sha256sum tail mktemp df"
).split()
DB_CLIENTS = ("mariadb", "mariadb-admin", "mariadb-dump", "mariadb-binlog", "my_print_defaults",
              "resolveip")

# Services of nix/contract.json this machine cannot build a stand-in of.
NO_STAND_IN = ("grafana",)


class ContractError(Exception):
    """A loaded image does not match nix/contract.json."""


def contract() -> dict:
    data = json.loads(CONTRACT_FILE.read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def version() -> str:
    """The image tag: Cargo.toml's package version."""
    with open(REPO / "Cargo.toml", "rb") as f:
        return tomllib.load(f)["package"]["version"]


def refs(tag: str | None = None) -> dict[str, str]:
    """service -> image reference: the one compose expects by default (``user-api:0.1.0``
    ...), or the same names with another ``tag``."""
    v = tag or version()
    return {service: f"{c['image']}:{v}" for service, c in contract().items()}


def compose_env(references: dict[str, str]) -> dict[str, str]:
    """The variables that make docker-compose.yml run these images: ``API_IMAGE``,
    ``NGINX_EXPORTER_IMAGE``, ... (the service name, upper case, ``-`` as ``_``)."""
    return {f"{service.upper().replace('-', '_')}_IMAGE": ref
            for service, ref in references.items()}


# ---- layers ------------------------------------------------------------------------------------

def _in_root(path: str) -> str:
    """A path inside the usr-merged root (Debian's layout): /bin, /sbin, /lib, /lib64 are links
    into usr/, so every entry is written below usr/ (a layer must not write through a link)."""
    parts = Path(path.lstrip("/")).parts
    if parts and parts[0] in ("bin", "sbin", "lib", "lib64"):
        parts = ("usr",) + parts
    return "/".join(parts)


@dataclass
class _Entry:
    kind: str  # "dir", "file", "link"
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    data: bytes | None = None
    src: Path | None = None
    target: str | None = None


def resolve(root: Path, path: str) -> Path:
    """``path`` as a process chrooted in ``root`` sees it, every link followed inside ``root``
    (``os.path.realpath`` would follow an absolute link, /etc/alternatives/awk, out to the host)."""
    pending, current, hops = list(Path(path).parts[1:]), root, 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            current = current.parent if current != root else root
            continue
        candidate = current / part
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise OSError(f"{path}: too many levels of links in {root}")
            target = os.readlink(candidate)
            pending = list(Path(target).parts[1 if target.startswith("/") else 0:]) + pending
            if target.startswith("/"):
                current = root
        else:
            current = candidate
    return current


@dataclass
class Layer:
    """The entries of one layer tar; parents are created as needed (0755, root). Sources are
    read from ``root``: the servers' (the forky root), or the host's / for the API."""

    root: Path = Path("/")
    entries: dict[str, _Entry] = field(default_factory=dict)

    def _parents(self, path: str):
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            self.entries.setdefault(p, _Entry("dir"))

    def dir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0):
        p = _in_root(path)
        self._parents(p)
        self.entries[p] = _Entry("dir", mode, uid, gid)

    def file(self, path: str, *, src: Path | str | None = None, data: bytes | None = None,
             mode: int = 0o644):
        p = _in_root(path)
        self._parents(p)
        self.entries[p] = _Entry("file", mode, data=data, src=Path(src) if src else None)

    def link(self, path: str, target: str):
        p = path.lstrip("/")  # the usr-merge links themselves live at the top
        if p not in ("bin", "sbin", "lib", "lib64"):
            p = _in_root(path)
        self._parents(p)
        self.entries[p] = _Entry("link", 0o777, target=target)

    def binary(self, src: str, dest: str | None = None):
        """An executable of the layer's root (links resolved) at ``dest`` (default: its path
        there), with every shared library it loads and the dynamic loader, at their paths."""
        self.file(dest or src, src=resolve(self.root, src), mode=0o755)
        self.libraries(shared_libraries(src, self.root))

    def libraries(self, paths: list[str]):
        """Shared libraries (as ``ldd`` lists them) from the layer's root, each once."""
        for lib in paths:
            if _in_root(lib) not in self.entries:
                self.file(lib, src=resolve(self.root, lib), mode=0o755)

    def tree(self, src: str, dest: str | None = None):
        """A directory tree of the layer's root, files 0644 (0755 if executable), links kept."""
        base = resolve(self.root, src)
        if not base.is_dir():
            raise FileNotFoundError(f"{src} is not a directory in {self.root}")
        dest = dest or src
        for dirpath, dirnames, filenames in os.walk(base):
            rel = Path(dirpath).relative_to(base)
            self.dir(str(Path(dest) / rel))
            for name in dirnames + filenames:
                full = Path(dirpath) / name
                target = str(Path(dest) / rel / name)
                if full.is_symlink():
                    self.link(target, os.readlink(full))
                elif full.is_file():
                    mode = 0o755 if os.access(full, os.X_OK) else 0o644
                    self.file(target, src=full, mode=mode)

    def write(self, fileobj):
        with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(self.entries):
                e = self.entries[path]
                ti = tarfile.TarInfo(path)
                ti.mtime, ti.mode, ti.uid, ti.gid = MTIME, e.mode, e.uid, e.gid
                ti.uname = ti.gname = ""
                if e.kind == "dir":
                    ti.type = tarfile.DIRTYPE
                    tar.addfile(ti)
                elif e.kind == "link":
                    ti.type, ti.linkname = tarfile.SYMTYPE, e.target
                    tar.addfile(ti)
                else:
                    data = e.data if e.data is not None else e.src.read_bytes()
                    ti.size = len(data)
                    tar.addfile(ti, io.BytesIO(data))


def shared_libraries(binary: str, root: Path = Path("/")) -> list[str]:
    """The absolute paths ``ldd`` lists (libraries and the loader) as ``root`` sees them (ldd
    runs chrooted there: its own loader decides); none for a static binary."""
    argv = ["ldd", binary] if root == Path("/") else ["chroot", str(root), "/usr/bin/ldd", binary]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:  # "not a dynamic executable"
        return []
    libs = []
    for line in r.stdout.splitlines():
        words = line.split()
        if len(words) >= 3 and words[1] == "=>" and words[2].startswith("/"):
            libs.append(words[2])
        elif words and words[0].startswith("/"):
            libs.append(words[0])
    return libs


def base_layer(root: Path) -> Layer:
    """An empty usr-merged root, its programs read from ``root``."""
    layer = Layer(root)
    for d in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64"):
        layer.dir(d)
    for name in ("bin", "sbin", "lib", "lib64"):
        layer.link(name, f"usr/{name}")
    return layer


def users_layer(extra_users: dict[str, tuple[int, int, str]] | None = None) -> Layer:
    """The customisation layer's common part: passwd/group (root, nobody, and extra users),
    nsswitch.conf, /tmp 1777, /run and /var."""
    layer = Layer()
    users = {"root": (0, 0, "/root"), **(extra_users or {}), "nobody": (65534, 65534, "/nonexistent")}
    groups = {"root": 0, **{n: g for n, (_, g, _) in (extra_users or {}).items()}, "nogroup": 65534}
    layer.file("/etc/passwd", data="".join(
        f"{n}:x:{u}:{g}:{n}:{h}:/sbin/nologin\n" for n, (u, g, h) in users.items()).encode())
    layer.file("/etc/group", data="".join(f"{n}:x:{g}:\n" for n, g in groups.items()).encode())
    layer.file("/etc/nsswitch.conf", data=b"passwd: files\ngroup: files\nhosts: files dns\n")
    layer.dir("/tmp", 0o1777)
    layer.dir("/run")
    layer.dir("/var")
    return layer


# ---- the docker-archive ------------------------------------------------------------------------

def write_archive(out: Path, ref: str, layers: list[Layer], config: dict) -> None:
    """``out``: a docker-archive of ``layers`` (bottom first) with image ``config``, tagged
    ``ref``; the layout dockerTools.streamLayeredImage writes."""
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp, tarfile.open(out, "w") as archive:
        layer_paths, diff_ids = [], []
        for i, layer in enumerate(layers):
            tmp_tar = Path(tmp) / f"layer{i}.tar"
            with open(tmp_tar, "wb") as f:
                layer.write(f)
            digest = _sha256_file(tmp_tar)
            name = f"{digest}/layer.tar"
            ti = archive.gettarinfo(str(tmp_tar), arcname=name)
            ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = MTIME, 0, 0, "", ""
            with open(tmp_tar, "rb") as f:
                archive.addfile(ti, f)
            layer_paths.append(name)
            diff_ids.append(f"sha256:{digest}")
        image = {
            "created": CREATED,
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": CREATED, "comment": f"stand-in layer {i + 1}"}
                        for i in range(len(layers))],
        }
        image_json = json.dumps(image, indent=4).encode()
        config_name = f"{hashlib.sha256(image_json).hexdigest()}.json"
        _add_bytes(archive, config_name, image_json)
        manifest = [{"Config": config_name, "RepoTags": [ref], "Layers": layer_paths}]
        _add_bytes(archive, "manifest.json", json.dumps(manifest, indent=4).encode())


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes):
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime = len(data), MTIME
    archive.addfile(ti, io.BytesIO(data))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def docker_load(archive: Path) -> None:
    r = subprocess.run(["docker", "load", "-i", str(archive)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"docker load -i {archive} failed: {r.stderr.strip()}")


# ---- the three stand-ins -----------------------------------------------------------------------

def _config(c: dict, title: str, **extra) -> dict:
    config = {
        "User": c["user"],
        "Entrypoint": c["entrypoint"],
        "ExposedPorts": {p: {} for p in c["ports"]},
        "Healthcheck": {"Test": c["healthcheck"], **HEALTHCHECK_TIMINGS},
        "Labels": {
            "org.opencontainers.image.title": title,
            "org.opencontainers.image.version": version(),
            STAND_IN_LABEL: "built by tests/harness/images.py from this machine's files",
        },
    }
    if "cmd" in c:
        config["Cmd"] = c["cmd"]
    if "env" in c:
        config["Env"] = list(c["env"])
    if "stopSignal" in c:
        config["StopSignal"] = c["stopSignal"]
    config.update(extra)
    return config


def _require(path: str, package: str) -> Path:
    """The servers' root, once it holds ``path``."""
    root = toolchain.root()
    if not resolve(root, path).exists():
        where = "" if root == Path("/") else f" in {root} (tests/harness/toolchain.py PACKAGES)"
        raise FileNotFoundError(f"{path} is missing{where}: install Debian's {package} package "
                                f"(apt-get install {package})")
    return root


def api_image(c: dict, api_bin: Path) -> tuple[list[Layer], dict]:
    if not os.access(api_bin, os.X_OK):
        raise FileNotFoundError(f"API binary {api_bin} not found: run `cargo build --release` "
                                "first (or set E2E_API_BIN)")
    libs = base_layer(Path("/"))  # built here, against the host's libraries
    libs.binary(str(api_bin), c["entrypoint"][0])
    return [libs, users_layer()], _config(c, "user-api (stand-in)")


def proxy_image(c: dict, preflight_bin: Path) -> tuple[list[Layer], dict]:
    root = _require("/usr/sbin/nginx", "nginx")
    _require("/bin/busybox", "busybox-static")
    if not os.access(preflight_bin, os.X_OK):
        raise FileNotFoundError(f"{preflight_bin} not found: run `cargo build --release` first")
    preflight, nginx_bin, conf_dir = c["entrypoint"][0], c["entrypoint"][1], c["configDir"]
    wget = c["healthcheck"][1]
    libs = base_layer(root)
    # Built here, against the host's glibc; the root's libraries of the same names (forky's,
    # newer) run it.
    libs.file(preflight, src=preflight_bin, mode=0o755)
    libs.libraries(shared_libraries(str(preflight_bin)))
    libs.binary("/usr/sbin/nginx", nginx_bin)
    libs.binary("/bin/busybox", "/bin/busybox")
    custom = users_layer()
    # busybox picks the applet from argv[0]: /bin/wget -> busybox is the wget applet.
    custom.link(wget, "busybox")
    # Every file of nginx/: nginx.conf includes the others from its own directory.
    custom.dir(conf_dir)
    for path, source in config_files("proxy", c).items():
        custom.file(path, src=source)
    return [libs, custom], _config(c, "user-api-proxy (stand-in)")


def db_image(c: dict) -> tuple[list[Layer], dict]:
    root = _require("/usr/sbin/mariadbd", "mariadb-server")
    libs = base_layer(root)
    libs.binary("/usr/bin/bash")
    libs.binary("/usr/bin/dash", "/usr/bin/sh")
    for tool in DB_TOOLS:
        path = next((f"{d}/{tool}" for d in ("/usr/bin", "/usr/sbin")
                     if resolve(root, f"{d}/{tool}").exists()), None)
        if not path:
            raise FileNotFoundError(f"{tool} is not in {root} (needed in the db stand-in)")
        libs.binary(path, f"/usr/bin/{tool}")
    libs.link("/usr/bin/awk", "mawk")
    libs.binary("/usr/sbin/mariadbd")
    for client in DB_CLIENTS:
        libs.binary(f"/usr/bin/{client}")
    libs.file("/usr/bin/mariadb-install-db", src=resolve(root, "/usr/bin/mariadb-install-db"), mode=0o755)
    # The SQL files and messages mariadb-install-db and mariadbd read: share/mysql up to 10.x,
    # share/mariadb in Debian's 11.x.
    shares = [d for d in ("/usr/share/mysql", "/usr/share/mariadb") if resolve(root, d).is_dir()]
    if not shares:
        raise FileNotFoundError(f"neither /usr/share/mysql nor /usr/share/mariadb is in {root}")
    for share in shares:
        libs.tree(share)
    custom = users_layer({"mysql": (c["uid"], c["gid"], c["dataDir"])})
    # The same two scripts the Nix image installs, under the names of the contract.
    custom.file(c["entrypoint"][0], src=REPO / "db" / "entrypoint.sh", mode=0o755)
    custom.file(f"/usr/bin/{c['healthcheck'][1]}", src=REPO / "db" / "healthcheck.sh", mode=0o755)
    custom.file(c["backupCommand"], src=REPO / "db" / "backup.sh", mode=0o755)
    # Owned by mysql, so that a fresh named volume mounted there inherits the owner. No
    # /run/mysqld: compose mounts a tmpfs there (see nix/images.nix for why it must not exist).
    custom.dir(c["dataDir"], 0o750, c["uid"], c["gid"])
    # The backup service's mount point (compose binds ./backups over it).
    custom.dir(c["backupDir"], 0o750, c["uid"], c["gid"])
    config = _config(c, "user-api-db (stand-in)",
                     Env=["PATH=/usr/bin:/usr/sbin"], Volumes={c["dataDir"]: {}})
    return [libs, custom], config


def _monitoring_layers(c: dict, program: str, dest: str) -> tuple[Layer, Layer]:
    """The shape of the Nix monitoring images: the program at ``dest``, busybox as /bin/wget
    for the healthcheck, users, and the data directory (if any) owned by the image's user."""
    root = _require(program, program.rsplit("/", 1)[-1])
    _require("/bin/busybox", "busybox-static")
    libs = base_layer(root)
    libs.binary(program, dest)
    libs.binary("/bin/busybox", "/bin/busybox")
    custom = users_layer()
    custom.link(c["healthcheck"][1], "busybox")
    if "dataDir" in c:
        uid, gid = (int(x) for x in c["user"].split(":"))
        custom.dir(c["dataDir"], 0o750, uid, gid)
    return libs, custom


def _monitoring_config(c: dict, title: str) -> dict:
    extra = {"Volumes": {c["dataDir"]: {}}} if "dataDir" in c else {}
    return _config(c, title, **extra)


def prometheus_image(c: dict) -> tuple[list[Layer], dict]:
    libs, custom = _monitoring_layers(c, "/usr/bin/prometheus", c["entrypoint"][0])
    # Debian's build serves its web UI from here; the API and /-/ready do not need it.
    if resolve(libs.root, "/usr/share/prometheus/web").is_dir():
        libs.tree("/usr/share/prometheus/web")
    for path, source in config_files("prometheus", c).items():
        custom.file(path, src=source)
    return [libs, custom], _monitoring_config(c, "user-api-prometheus (stand-in)")


def nginx_exporter_image(c: dict) -> tuple[list[Layer], dict]:
    libs, custom = _monitoring_layers(c, "/usr/bin/prometheus-nginx-exporter", c["entrypoint"][0])
    return [libs, custom], _monitoring_config(c, "user-api-nginx-exporter (stand-in)")


def mysqld_exporter_image(c: dict) -> tuple[list[Layer], dict]:
    libs, custom = _monitoring_layers(c, "/usr/bin/prometheus-mysqld-exporter",
                                      "/bin/mysqld_exporter")
    # The entrypoint script runs on busybox's sh, as in the Nix image.
    custom.link("/bin/sh", "busybox")
    for path, source in config_files("mysqld-exporter", c).items():
        custom.file(path, src=source, mode=0o755)
    return [libs, custom], _monitoring_config(c, "user-api-mysqld-exporter (stand-in)")


# The busybox applets nginx/acme/acme.sh calls (nix/images.nix: acmeApplets).
ACME_APPLETS = ("sh", "cat", "cp", "mv", "tr", "xargs", "echo", "sleep", "kill")


def acme_image(c: dict) -> tuple[list[Layer], dict]:
    """certbot with the Python it runs on (Debian's: /usr/bin/python3 and its standard library,
    certbot's packages in dist-packages, every shared library their extension modules load),
    busybox for the script and its applets, the state directories owned by the image's user."""
    root = _require("/usr/bin/certbot", "certbot")
    _require("/bin/busybox", "busybox-static")
    libs = base_layer(root)
    python = os.path.realpath(resolve(root, "/usr/bin/python3")).rsplit("/", 1)[-1]
    libs.binary(f"/usr/bin/{python}")
    libs.link("/usr/bin/python3", python)
    for tree in (f"/usr/lib/{python}", "/usr/lib/python3/dist-packages"):
        libs.tree(tree)
        for so in sorted(resolve(root, tree).rglob("*.so*")):
            libs.libraries(shared_libraries("/" + str(so.relative_to(root)), root))
    # OpenSSL's providers (cryptography loads the legacy one and warns without it).
    for modules in root.glob("usr/lib/*-linux-gnu/ossl-modules"):
        libs.tree("/" + str(modules.relative_to(root)))
    libs.file("/usr/bin/certbot", src=resolve(root, "/usr/bin/certbot"), mode=0o755)
    libs.binary("/bin/busybox", "/bin/busybox")
    custom = users_layer()
    for applet in ACME_APPLETS:
        custom.link(f"/bin/{applet}", "busybox")
    for path, source in config_files("acme", c).items():
        custom.file(path, src=source, mode=0o755)
    bundle = resolve(root, "/etc/ssl/certs/ca-certificates.crt")
    if bundle.is_file():
        custom.file("/etc/ssl/certs/ca-certificates.crt", src=bundle)
    uid, gid = (int(x) for x in c["user"].split(":"))
    custom.dir(c["stateDir"], 0o755, uid, gid)
    for sub in c["stateSubdirs"]:
        custom.dir(f"{c['stateDir']}/{sub}", 0o755 if sub == "webroot" else 0o700, uid, gid)
    return [libs, custom], _config(c, "user-api-acme (stand-in)")


def pebble_image(ref: str) -> str:
    """Let's Encrypt's ACME test server (Debian's pebble), for the tests only: no contract, no
    Nix twin. Loaded as ``ref``; its config and certificate are mounted by the test."""
    root = _require("/usr/bin/pebble", "pebble")
    libs = base_layer(root)
    libs.binary("/usr/bin/pebble", "/bin/pebble")
    config = {"User": "65534:65534", "Entrypoint": ["/bin/pebble"],
              "Labels": {STAND_IN_LABEL: "Debian's pebble, for tests/e2e only"}}
    with tempfile.TemporaryDirectory(prefix="user-api-images.") as tmp:
        archive = Path(tmp) / "pebble.tar"
        write_archive(archive, ref, [libs, users_layer()], config)
        docker_load(archive)
    return ref


def blackbox_exporter_image(c: dict) -> tuple[list[Layer], dict]:
    libs, custom = _monitoring_layers(c, "/usr/bin/prometheus-blackbox-exporter", c["entrypoint"][0])
    for path, source in config_files("blackbox-exporter", c).items():
        custom.file(path, src=source)
    return [libs, custom], _monitoring_config(c, "user-api-blackbox-exporter (stand-in)")


def backup_exporter_image(c: dict) -> tuple[list[Layer], dict]:
    libs, custom = _monitoring_layers(c, "/usr/bin/prometheus-node-exporter", c["entrypoint"][0])
    return [libs, custom], _monitoring_config(c, "user-api-backup-exporter (stand-in)")


def default_api_bin() -> Path:
    if os.environ.get("E2E_API_BIN"):
        return Path(os.environ["E2E_API_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "release" / "user-api"


def build_stand_ins(api_bin: Path | None = None, workdir: Path | None = None,
                    tag: str | None = None) -> dict[str, str]:
    """Builds and loads the stand-ins (every service of the contract but :data:`NO_STAND_IN`);
    returns service -> reference. Under a ``tag`` of the run's own (e.g.
    ``0.1.0-standin-<pid>``), two runs on one engine never untag each other's images; compose is
    pointed at them with :func:`compose_env`."""
    c = contract()
    tags = {s: r for s, r in refs(tag).items() if s not in NO_STAND_IN}
    builders = {
        "api": lambda: api_image(c["api"], api_bin or default_api_bin()),
        "proxy": lambda: proxy_image(c["proxy"], (api_bin or default_api_bin()).parent / "proxy-preflight"),
        "db": lambda: db_image(c["db"]),
        "prometheus": lambda: prometheus_image(c["prometheus"]),
        "nginx-exporter": lambda: nginx_exporter_image(c["nginx-exporter"]),
        "mysqld-exporter": lambda: mysqld_exporter_image(c["mysqld-exporter"]),
        "blackbox-exporter": lambda: blackbox_exporter_image(c["blackbox-exporter"]),
        "backup-exporter": lambda: backup_exporter_image(c["backup-exporter"]),
        "acme": lambda: acme_image(c["acme"]),
    }
    assert set(builders) == set(tags), f"stand-in builders {sorted(builders)} != {sorted(tags)}"
    with tempfile.TemporaryDirectory(prefix="user-api-images.", dir=workdir) as tmp:
        for service, build in builders.items():
            layers, config = build()
            archive = Path(tmp) / f"{service}.tar"
            write_archive(archive, tags[service], layers, config)
            docker_load(archive)
    return tags


def image_id(ref: str) -> str | None:
    r = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", ref],
                       capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def remove(ref_ids: dict[str, str]) -> None:
    """Untags the images this run loaded: only while the tag still names the image loaded, and
    never by force (an image another run's container uses stays)."""
    for ref, loaded in ref_ids.items():
        if image_id(ref) == loaded:
            subprocess.run(["docker", "rmi", ref], capture_output=True)
    # Stand-ins an earlier load left untagged (a new build took the tag), unless still in use.
    dangling = subprocess.run(["docker", "image", "ls", "-q", "--filter", "dangling=true",
                               "--filter", f"label={STAND_IN_LABEL}"],
                              capture_output=True, text=True).stdout.split()
    for iid in dangling:
        subprocess.run(["docker", "rmi", iid], capture_output=True)


# ---- present images against the contract --------------------------------------------------------

def inspect_config(ref: str) -> dict:
    r = subprocess.run(["docker", "image", "inspect", ref], capture_output=True, text=True)
    if r.returncode != 0:
        raise ContractError(f"image {ref} is not loaded: {r.stderr.strip()} "
                            "(load the Nix images with `nix run .#load`, or unset E2E_IMAGES to "
                            "build stand-ins)")
    return json.loads(r.stdout)[0]["Config"] or {}


def differences(service: str, c: dict, config: dict) -> list[str]:
    """Every way an image config differs from the service's contract (empty: none)."""
    out = []

    def want(key, expected, actual):
        if expected != actual:
            out.append(f"{service}: {key} is {actual!r}, the contract says {expected!r}")

    want("User", c["user"], config.get("User"))
    want("Entrypoint", c["entrypoint"], config.get("Entrypoint"))
    if "cmd" in c:
        want("Cmd", c["cmd"], config.get("Cmd"))
    want("ExposedPorts", sorted(c["ports"]), sorted((config.get("ExposedPorts") or {}).keys()))
    want("Healthcheck.Test", c["healthcheck"], (config.get("Healthcheck") or {}).get("Test"))
    if "stopSignal" in c:
        want("StopSignal", c["stopSignal"], config.get("StopSignal"))
    env = config.get("Env") or []
    for e in c.get("env", []):
        if e not in env:
            out.append(f"{service}: Env lacks {e!r} (has {env!r})")
    if "dataDir" in c and c["dataDir"] not in (config.get("Volumes") or {}):
        out.append(f"{service}: Volumes lacks {c['dataDir']!r}")
    labels = config.get("Labels") or {}
    if STAND_IN_LABEL in labels:
        out.append(f"{service}: this is a stand-in image ({labels[STAND_IN_LABEL]}), "
                   "not the Nix-built one")
    return out


def config_files(service: str, c: dict) -> dict[str, Path]:
    """The repository's files the contract puts in a service's image: path in the image ->
    file here (nix/images.nix installs the same ones)."""
    monitoring = REPO / "monitoring"
    if service == "proxy":
        return {f"{c['configDir']}/{f.name}": f for f in sorted((REPO / "nginx").glob("*.conf"))}
    if service == "prometheus":
        return {f"{c['configDir']}/prometheus.yml": monitoring / "prometheus.yml",
                **{f"{c['configDir']}/rules/{f.name}": f
                   for f in sorted((monitoring / "rules").glob("*.rules.yml"))}}
    if service == "grafana":
        provisioning = monitoring / "grafana" / "provisioning"
        return {**{f"{c['configDir']}/provisioning/{f.relative_to(provisioning)}": f
                   for f in sorted(provisioning.rglob("*.yml"))},
                **{f"{c['dashboardsDir']}/{f.name}": f
                   for f in sorted((monitoring / "grafana" / "dashboards").glob("*.json"))}}
    if service == "mysqld-exporter":
        return {c["entrypoint"][0]: monitoring / "mysqld-exporter-entrypoint.sh"}
    if service == "blackbox-exporter":
        return {f"{c['configDir']}/blackbox.yml": monitoring / "blackbox.yml"}
    if service == "acme":
        return {c["entrypoint"][0]: REPO / "nginx" / "acme" / "acme.sh"}
    return {}


def file_differences(service: str, c: dict, ref: str) -> list[str]:
    """The files of :func:`config_files` in the image, byte for byte (the proxy's nginx/*.conf,
    Prometheus' config and rules, Grafana's provisioning and dashboard, ...)."""
    wanted = config_files(service, c)
    if not wanted:
        return []
    out = []
    created = subprocess.run(["docker", "create", "--pull", "never", ref], capture_output=True,
                             text=True)
    if created.returncode != 0:
        return [f"{service}: docker create {ref} failed: {created.stderr.strip()}"]
    cid = created.stdout.strip()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i, (path, source) in enumerate(wanted.items()):
                got = Path(tmp) / str(i)
                cp = subprocess.run(["docker", "cp", "-L", f"{cid}:{path}", str(got)],
                                    capture_output=True, text=True)
                if cp.returncode != 0 or not got.is_file():
                    out.append(f"{service}: {path} is missing from {ref}: {cp.stderr.strip()}")
                elif got.read_bytes() != source.read_bytes():
                    out.append(f"{service}: {path} in {ref} differs from "
                               f"{source.relative_to(REPO)}")
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
    return out


def check_present() -> dict[str, str]:
    """The loaded images against nix/contract.json; raises ContractError listing every
    difference. Returns service -> reference."""
    c, tags, problems = contract(), refs(), []
    for service, ref in tags.items():
        try:
            problems += differences(service, c[service], inspect_config(ref))
            problems += file_differences(service, c[service], ref)
        except ContractError as e:
            problems.append(str(e))
    if problems:
        raise ContractError("the loaded images do not match nix/contract.json:\n  "
                            + "\n  ".join(problems))
    return tags


def describe(ref: str) -> str:
    """``ref`` with its id and size, for the test report."""
    r = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}} {{.Size}}", ref],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return f"{ref} (not loaded)"
    iid, size = r.stdout.split()
    return f"{ref} {iid[7:19]} {int(size) / 1e6:.0f} MB"
