"""A throwaway OCI registry: Debian's docker-registry (distribution 2.8) from the toolchain,
with TLS and a login, as a private registry or GHCR is reached.

It listens on the Docker bridge's gateway address, not on 127.0.0.1: buildx (and containerd's
resolver under it) talks plain HTTP to any loopback registry, so a loopback one would never
prove the TLS path. The Go clients (skopeo, cosign, buildx) trust its certificate through
``SSL_CERT_FILE`` (:meth:`Registry.client_env`); the Docker Engine through
``/etc/docker/certs.d/<host:port>/ca.crt``, Docker's documented place for a private CA, which
:meth:`Registry.close` removes again.
"""

from __future__ import annotations

import json
import secrets
import shutil
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt

from . import ports, procs, tls

CERTS_D = Path("/etc/docker/certs.d")


def bridge_gateway() -> str:
    """The address of the host on Docker's default bridge (docker0): reachable from the host
    and from the Engine, not loopback."""
    out = subprocess.run(["docker", "network", "inspect", "bridge"], capture_output=True, text=True,
                         check=True)
    (network,) = json.loads(out.stdout)
    for config in network["IPAM"]["Config"]:
        if "Gateway" in config:
            return config["Gateway"]
    # Engines that leave the gateway out of IPAM (20.10 does): docker0's own address.
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True,
                         text=True, check=True)
    return out.stdout.split()[3].split("/")[0]


class Registry:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="user-api-registry-"))
        self.host = bridge_gateway()
        self.port = ports.free_port()
        self.address = f"{self.host}:{self.port}"
        self.username = "release"
        self.password = secrets.token_urlsafe(18)
        self.cert, key = tls.self_signed(self.dir / "registry.pem", self.dir / "registry.key", "registry",
                                         days=2, san=f"IP:{self.host}")
        (self.dir / "htpasswd").write_text(
            f"{self.username}:{bcrypt.hashpw(self.password.encode(), bcrypt.gensalt()).decode()}\n")
        config = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.dir / "data")},
                        "delete": {"enabled": True}},
            "auth": {"htpasswd": {"realm": "user-api-test", "path": str(self.dir / "htpasswd")}},
            "http": {"addr": self.address, "secret": secrets.token_hex(16),
                     "tls": {"certificate": str(self.cert), "key": str(key)}},
        }
        # JSON is YAML: the registry reads it as its config file.
        (self.dir / "config.yml").write_text(json.dumps(config))
        self.engine_ca = CERTS_D / self.address / "ca.crt"
        self.engine_ca.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.cert, self.engine_ca)
        self.process = procs.spawn([procs.program("docker-registry"), "serve", self.dir / "config.yml"],
                                   self.dir / "registry.log")
        try:
            ports.wait_until(self._answers, 20, "docker-registry", alive=self.running)
        except (TimeoutError, RuntimeError) as e:
            log = self.log()
            self.close()
            raise RuntimeError(f"{e}:\n{log}") from None

    def _answers(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.cert))
        try:
            urllib.request.urlopen(f"https://{self.address}/v2/", timeout=1, context=context)
        except urllib.error.HTTPError as e:
            return e.code == 401  # up, and asking for the login
        except OSError:
            return False
        return False

    def running(self) -> bool:
        return self.process.poll() is None

    def client_env(self) -> dict[str, str]:
        """What the Go clients need to trust the registry's certificate."""
        return {"SSL_CERT_FILE": str(self.cert)}

    def log(self) -> str:
        return (self.dir / "registry.log").read_text(errors="replace")

    def close(self):
        procs.stop(self.process)
        shutil.rmtree(self.engine_ca.parent, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc):
        self.close()
