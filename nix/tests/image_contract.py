#!/usr/bin/env python3
"""Compare the images the flake builds with the runtime contract and with docker-compose.yml.

Input: the image manifest (nix/images.nix `manifest`, as JSON: per service the image reference,
the image config, the content trees and the files the contract needs in the image's root) and
the compose file. Checks:

  * each image's User, Entrypoint, Cmd, exposed ports, healthcheck, stop signal and Env against
    the contract, nix/contract.json (the same file nix/contract.nix and the e2e stand-in images
    read: one statement of it);
  * with --nginx-conf: every file nginx.conf includes from its own directory is in the proxy
    image's config directory (contract: configDir);
  * the compose files (docker-compose.yml and the files merged over it): image references (defaults of ${VAR:-...}), user/entrypoint/stop_signal
    overrides, healthcheck commands (exec form, executable present in the image), published and
    exposed ports, ROCKET_* overrides, and the secret files that `nix run .#up` creates;
  * with --check-files (inside the Nix sandbox, where the contents are built): the files exist in
    the contents, and /etc/passwd and /etc/group know the image's uid and gid.

Used by checks.<system>.image-config (with --check-files) and by nix/tests/check.sh (without:
the stand-in's contents are never built). Needs Python 3 and PyYAML. Exit 1 on any failure.
"""

import argparse
import json
import os
import re
import shlex
import sys

import yaml

# The files each image must hold beyond what the contract names (entrypoint and healthcheck
# executables are derived from it; the proxy's nginx files from nginx.conf's includes).
REQUIRED_FILES = {
    "api": ["bin/user-api"],
    "proxy": ["bin/proxy-preflight", "bin/nginx", "bin/wget"],
    "db": ["bin/db-entrypoint", "bin/healthcheck.sh", "bin/db-backup", "bin/mariadb-dump",
           "bin/mariadb-binlog"],
    "prometheus": ["bin/prometheus", "bin/wget", "etc/prometheus/prometheus.yml"],
    "grafana": ["bin/grafana", "bin/wget", "share/grafana"],
    "nginx-exporter": ["bin/nginx-prometheus-exporter", "bin/wget"],
    "mysqld-exporter": ["bin/mysqld-exporter-entrypoint", "bin/mysqld_exporter", "bin/sh", "bin/wget"],
    "blackbox-exporter": ["bin/blackbox_exporter", "bin/wget", "etc/blackbox_exporter/blackbox.yml"],
    "backup-exporter": ["bin/node_exporter", "bin/wget"],
    "acme": ["bin/acme", "bin/certbot", "bin/sh", "etc/ssl/certs/ca-certificates.crt"],
}


def load_contract(path):
    """nix/contract.json, the one statement of the contract, with the defaults this script
    compares against (no env, no stop signal, no cmd unless the contract names one)."""
    with open(path) as f:
        raw = json.load(f)
    contract = {}
    for service, spec in raw.items():
        if service.startswith("_"):
            continue
        contract[service] = {
            **spec,
            "env": env_dict(spec.get("env")),
            "stop_signal": spec.get("stopSignal"),
            "cmd": spec.get("cmd"),
            "files": list(REQUIRED_FILES.get(service, [])),
        }
    return contract


def nginx_includes(conf_path):
    """The files nginx.conf includes by a relative name (globs excepted: they may match none)."""
    names = []
    with open(conf_path) as f:
        for line in f:
            m = re.match(r"\s*include\s+([^;\s]+)\s*;", line.split("#", 1)[0])
            if m and "/" not in m.group(1) and not any(c in m.group(1) for c in "*?["):
                names.append(m.group(1))
    return names


# The secrets `nix run .#up` creates (nix/apps.nix).
UP_SECRETS = {
    "secrets/db_password.txt",
    "secrets/db_root_password.txt",
    "secrets/db_backup_password.txt",
    "secrets/db_exporter_password.txt",
    "secrets/grafana_admin_password.txt",
    # nix/local-tls.sh, which `up` runs on secrets/.
    "secrets/tls_cert.pem",
    "secrets/tls_key.pem",
}

DOCKER_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Report:
    def __init__(self):
        self.passed = 0
        self.failures = []

    def check(self, ok, what):
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)
            print(f"FAIL {what}", file=sys.stderr)
        return ok


def env_dict(entries):
    out = {}
    for entry in entries or []:
        key, _, value = entry.partition("=")
        out[key] = value
    return out


def compose_env(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        return env_dict(env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def default_of(value):
    """The value compose uses when no variable is set: ${VAR:-default} -> default."""

    def repl(m):
        return m.group(3) if m.group(2) else ""

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?-([^}]*))?\}", repl, str(value))


def container_ports(service):
    """Container-side ports of `ports:` and `expose:`, as "N/proto"."""
    found = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            target, proto = str(entry["target"]), entry.get("protocol", "tcp")
        else:
            text = default_of(entry)
            text, _, proto = text.partition("/")
            target = text.rsplit(":", 1)[-1]
            proto = proto or "tcp"
        found.append(f"{target}/{proto}")
    for entry in service.get("expose") or []:
        text, _, proto = default_of(entry).partition("/")
        found.append(f"{text}/{proto or 'tcp'}")
    return found


def in_image(name, image):
    """Whether an executable named in an exec-form command is in the image's root."""
    files = set(image["files"])
    if name.startswith("/"):
        return name.lstrip("/") in files
    path = env_dict(image["config"].get("Env")).get("PATH", DOCKER_DEFAULT_PATH)
    return any(f"{d.strip('/')}/{name}" in files for d in path.split(":") if d)


def check_image(report, contract, service, image):
    want = contract[service]
    config = image["config"]
    ref = image["ref"]
    report.check(ref.split(":", 1)[0] == want["image"], f"{service}: image name {ref} is not {want['image']}:<tag>")
    report.check(config.get("User") == want["user"], f"{service}: User {config.get('User')!r} != {want['user']!r}")
    report.check(
        config.get("Entrypoint") == want["entrypoint"],
        f"{service}: Entrypoint {config.get('Entrypoint')} != {want['entrypoint']}",
    )
    ports = sorted((config.get("ExposedPorts") or {}).keys())
    report.check(ports == sorted(want["ports"]), f"{service}: ExposedPorts {ports} != {want['ports']}")
    if want["cmd"] is not None or "Cmd" in config:
        report.check(config.get("Cmd") == want["cmd"], f"{service}: Cmd {config.get('Cmd')} != {want['cmd']}")
    test = (config.get("Healthcheck") or {}).get("Test")
    report.check(test == want["healthcheck"], f"{service}: Healthcheck.Test {test} != {want['healthcheck']}")
    report.check(
        config.get("StopSignal") == want["stop_signal"],
        f"{service}: StopSignal {config.get('StopSignal')!r} != {want['stop_signal']!r}",
    )
    env = env_dict(config.get("Env"))
    for key, value in want["env"].items():
        report.check(env.get(key) == value, f"{service}: Env {key}={env.get(key)!r}, want {value!r}")
    for needed in want["files"]:
        report.check(needed in image["files"], f"{service}: the manifest does not promise /{needed}")
    report.check(in_image(want["entrypoint"][0], image), f"{service}: entrypoint {want['entrypoint'][0]} not in the image")
    report.check(in_image(want["healthcheck"][1], image), f"{service}: healthcheck {want['healthcheck'][1]} not in the image")
    labels = config.get("Labels") or {}
    for label in ("title", "version", "revision"):
        report.check(
            bool(labels.get(f"org.opencontainers.image.{label}")),
            f"{service}: label org.opencontainers.image.{label} missing",
        )


def check_compose(report, compose, manifest):
    services = compose.get("services") or {}
    for service, image in manifest.items():
        spec = services.get(service)
        if not report.check(spec is not None, f"compose: no service {service!r}"):
            continue
        config = image["config"]
        ref = default_of(spec.get("image", ""))
        report.check(ref == image["ref"], f"compose {service}: image defaults to {ref!r}, the flake builds {image['ref']!r}")
        if "user" in spec:
            # with its variables unset (BACKUP_UID for the backup exporter): the image's user
            report.check(
                default_of(spec["user"]) == config.get("User"),
                f"compose {service}: user {spec['user']!r} != image User {config.get('User')!r}",
            )
        if "entrypoint" in spec:
            entry = spec["entrypoint"]
            entry = shlex.split(entry) if isinstance(entry, str) else entry
            report.check(
                entry == config.get("Entrypoint"),
                f"compose {service}: entrypoint {entry} != image Entrypoint {config.get('Entrypoint')}",
            )
        if "stop_signal" in spec:
            report.check(
                spec["stop_signal"] == config.get("StopSignal", "SIGTERM"),
                f"compose {service}: stop_signal {spec['stop_signal']} != image {config.get('StopSignal')}",
            )
        health = spec.get("healthcheck") or {}
        if "test" in health and not health.get("disable"):
            test = health["test"]
            if isinstance(test, str):
                test = ["CMD-SHELL", test]
            report.check(
                test == (config.get("Healthcheck") or {}).get("Test"),
                f"compose {service}: healthcheck {test} differs from the image's",
            )
            if report.check(
                test[:1] == ["CMD"] and len(test) > 1,
                f"compose {service}: healthcheck must be exec form [\"CMD\", ...] (no shell in the image)",
            ):
                report.check(in_image(test[1], image), f"compose {service}: healthcheck runs {test[1]}, not in the image")
        exposed = set((config.get("ExposedPorts") or {}).keys())
        for port in container_ports(spec):
            report.check(port in exposed, f"compose {service}: container port {port} is not exposed by the image {sorted(exposed)}")
        env = compose_env(spec)
        image_env = env_dict(config.get("Env"))
        for key in ("ROCKET_ADDRESS", "ROCKET_PORT"):
            if key in env and key in image_env:
                report.check(env[key] == image_env[key], f"compose {service}: {key}={env[key]} overrides the image's {image_env[key]}")
    for name, secret in (compose.get("secrets") or {}).items():
        if isinstance(secret, dict) and "file" in secret:
            path = os.path.normpath(default_of(secret["file"]))
            report.check(path in UP_SECRETS, f"compose secret {name}: file {secret['file']} is not one that `nix run .#up` creates {sorted(UP_SECRETS)}")


def merge_compose(base, override):
    """`docker compose -f base -f override`'s merge, as far as these checks read it: services
    and top-level maps merged by name, a service's keys replaced by the override's."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            inner = dict(merged[key])
            for name, spec in value.items():
                if key == "services" and isinstance(inner.get(name), dict):
                    inner[name] = {**inner[name], **spec}
                else:
                    inner[name] = spec
            merged[key] = inner
        else:
            merged[key] = value
    return merged


def find_file(image, rel):
    for root in image["contents"]:
        path = os.path.join(root, rel)
        if os.path.lexists(path):
            return path
    return None


def check_files(report, service, image):
    for rel in image["files"]:
        path = find_file(image, rel)
        report.check(path is not None and os.path.exists(path), f"{service}: /{rel} is not in the image contents")
        if path and rel.startswith("bin/"):
            report.check(os.access(path, os.X_OK), f"{service}: /{rel} is not executable")
    uid, _, gid = image["config"]["User"].partition(":")
    passwd, group = find_file(image, "etc/passwd"), find_file(image, "etc/group")
    if report.check(passwd is not None and group is not None, f"{service}: no /etc/passwd or /etc/group"):
        with open(passwd) as f:
            uids = {line.split(":")[2] for line in f if line.count(":") >= 6}
        with open(group) as f:
            gids = {line.split(":")[2] for line in f if line.count(":") >= 3}
        report.check(uid in uids, f"{service}: uid {uid} has no /etc/passwd entry")
        report.check(gid in gids, f"{service}: gid {gid} has no /etc/group entry")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contract", required=True, help="nix/contract.json")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--compose", required=True, nargs="+",
                        help="docker-compose.yml, then the files users merge over it (docker-compose.acme.yml)")
    parser.add_argument("--nginx-conf", help="nginx/nginx.conf: its includes must be in the proxy image")
    parser.add_argument("--check-files", action="store_true")
    args = parser.parse_args()

    with open(args.manifest) as f:
        manifest = json.load(f)
    compose = {}
    for path in args.compose:
        with open(path) as f:
            compose = merge_compose(compose, yaml.safe_load(f) or {})

    contract = load_contract(args.contract)
    if args.nginx_conf:
        config_dir = contract["proxy"]["configDir"].strip("/")
        contract["proxy"]["files"] += [f"{config_dir}/{name}" for name in ["nginx.conf", *nginx_includes(args.nginx_conf)]]

    report = Report()
    report.check(sorted(manifest) == sorted(contract), f"manifest services {sorted(manifest)} != {sorted(contract)}")
    for service in contract:
        if service in manifest:
            check_image(report, contract, service, manifest[service])
            if args.check_files:
                check_files(report, service, manifest[service])
    check_compose(report, compose, {s: manifest[s] for s in contract if s in manifest})

    print(f"image-contract: {report.passed} passed, {len(report.failures)} failed")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
