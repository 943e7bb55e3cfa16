"""HTTPS from ACME (docker-compose.acme.yml) against pebble, Let's Encrypt's test CA.

A project of its own (the other files share one stack): docker-compose.yml,
docker-compose.acme.yml and tests/e2e/fixtures/acme-pebble.yml, with the stand-in images and a
pebble image from Debian's package. certbot renews at every check here (ACME_FORCE_RENEWAL, every
4 s), so the renewals happen while the tests send traffic.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from harness import compose, images, tls

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "acme-pebble.yml"
DOMAIN = "www.user-api.test"
PEBBLE_IMAGE = "user-api-test-pebble:e2e"


def pebble_files(directory: Path) -> None:
    """pebble's config and the certificate of its own HTTPS endpoint (certbot trusts it through
    REQUESTS_CA_BUNDLE). Validations go to port 8080: the proxy's, inside the edge network."""
    directory.mkdir(mode=0o755)
    tls.self_signed(directory / "cert.pem", directory / "key.pem", "pebble", days=2,
                    san="DNS:pebble,IP:127.0.0.1")
    (directory / "key.pem").chmod(0o644)  # pebble runs as nobody; a test key
    (directory / "pebble.json").write_text(json.dumps({"pebble": {
        "listenAddress": "0.0.0.0:14000", "managementListenAddress": "0.0.0.0:15000",
        "certificate": "/etc/pebble/cert.pem", "privateKey": "/etc/pebble/key.pem",
        "httpPort": 8080, "tlsPort": 8443, "ocspResponderURL": "",
        "externalAccountBindingRequired": False}}))


@pytest.fixture(scope="module")
def acme_stack(stack_images, record):
    images.pebble_image(PEBBLE_IMAGE)
    env = {**images.compose_env(stack_images), "PEBBLE_IMAGE": PEBBLE_IMAGE,
           "PEBBLE_MANAGEMENT_PORT": str(compose.free_port()), "ACME_DOMAINS": DOMAIN,
           "ACME_FORCE_RENEWAL": "true", "ACME_CHECK_INTERVAL": "4"}
    with compose.Project(prefix="acme", env=env, overrides=[
            compose.REPO / "docker-compose.acme.yml", FIXTURE]) as p:
        p.make_secrets()
        # docker-compose.acme.yml's configs are ./nginx/acme/*, relative to the project directory
        (p.dir / "nginx").symlink_to(compose.REPO / "nginx")
        pebble_files(p.dir / "pebble")
        try:
            seconds = p.up(timeout=180)
        except compose.ComposeError as e:
            pytest.fail(f"up with ACME failed: {e}\n{p.logs('acme-init', 'acme', 'pebble', 'proxy', tail='30')}",
                        pytrace=False)
        record(f"ACME stack up (certificate issued by pebble): {seconds:.1f} s")
        p.pebble_port = int(env["PEBBLE_MANAGEMENT_PORT"])
        yield p
    subprocess.run(["docker", "image", "rm", PEBBLE_IMAGE], capture_output=True)


def pebble_roots(p, tmp_path: Path) -> Path:
    """pebble's current root (made anew at every pebble start), from its management API."""
    r = requests.get(f"https://127.0.0.1:{p.pebble_port}/roots/0",
                     verify=str(p.dir / "pebble" / "cert.pem"), timeout=5)
    r.raise_for_status()
    path = tmp_path / "pebble-root.pem"
    path.write_text(r.text)
    return path


def https_get(port: int, context: ssl.SSLContext, path: str) -> tuple[bytes, bytes]:
    """GET ``path`` from 127.0.0.1:``port`` on a new TLS connection for DOMAIN (its SNI, its
    name checked, its Host): the certificate's DER bytes and the whole answer."""
    request = f"GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with context.wrap_socket(sock, server_hostname=DOMAIN) as tls:
            certificate = tls.getpeercert(binary_form=True)
            tls.sendall(request)
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    return certificate, answer


def served_certificate(port: int, cafile: Path) -> tuple[bytes, dict]:
    """The certificate the proxy presents for DOMAIN, verified (chain and name) against
    ``cafile``: its DER bytes and the parsed fields."""
    context = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with context.wrap_socket(sock, server_hostname=DOMAIN) as tls:
            return tls.getpeercert(binary_form=True), tls.getpeercert()


class Traffic(threading.Thread):
    """GET /get_user over HTTPS, a new connection (and handshake) per request, verified against
    pebble's root, until stopped; every failure is kept."""

    def __init__(self, port: int, cafile: Path):
        super().__init__(daemon=True)
        self.port, self.cafile = port, cafile
        self.ok, self.failures, self.certificates = 0, [], set()
        self._done = threading.Event()

    def run(self):
        context = ssl.create_default_context(cafile=str(self.cafile))
        while not self._done.is_set():
            try:
                certificate, answer = https_get(self.port, context, "/get_user?userid=1")
                self.certificates.add(certificate)
                status = answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/") else b"?"
                if status in (b"200", b"404"):
                    self.ok += 1
                else:
                    self.failures.append(f"status {status!r}: {answer[:200]!r}")
            except (OSError, ssl.SSLError) as e:
                self.failures.append(repr(e))
            time.sleep(0.15)  # within the gateway's per-client rate limit (nginx/limit-zones.conf)

    def stop(self):
        self._done.set()
        self.join(10)


def test_the_certificate_comes_from_the_acme_ca(acme_stack, tmp_path):
    root = pebble_roots(acme_stack, tmp_path)
    _, fields = served_certificate(acme_stack.tls_port, root)
    issuer = dict(x[0] for x in fields["issuer"])
    assert issuer["commonName"].startswith("Pebble Intermediate CA"), fields
    assert ("DNS", DOMAIN) in fields["subjectAltName"]


def test_port_80_answers_the_challenge_only_and_sends_the_rest_to_https(acme_stack):
    r = requests.post(acme_stack.url("/create_user?userid=5&username=Redirected"),
                      allow_redirects=False, timeout=5)
    assert r.status_code == 308, r.text
    assert r.headers["Location"] == "https://127.0.0.1/create_user?userid=5&username=Redirected"
    # A token that is not there: the gateway's JSON 404, not a redirect.
    r = requests.get(acme_stack.url("/.well-known/acme-challenge/no-such-token"), timeout=5)
    assert r.status_code == 404
    assert r.json()["error"] == "not_found"


def test_https_answers_carry_hsts(acme_stack, tmp_path):
    root = pebble_roots(acme_stack, tmp_path)
    context = ssl.create_default_context(cafile=str(root))
    _, answer = https_get(acme_stack.tls_port, context, "/get_user?userid=1")
    head = answer.split(b"\r\n\r\n", 1)[0].decode()
    assert head.split(" ", 2)[1] in ("200", "404"), head
    assert "\r\nStrict-Transport-Security: max-age=63072000\r\n" in head + "\r\n", head


def test_renewals_under_traffic_fail_no_request(acme_stack, tmp_path, record):
    root = pebble_roots(acme_stack, tmp_path)
    traffic = [Traffic(acme_stack.tls_port, root) for _ in range(2)]
    for t in traffic:
        t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(set().union(*(t.certificates for t in traffic))) < 3:
        time.sleep(1)
    for t in traffic:
        t.stop()
    seen = set().union(*(t.certificates for t in traffic))
    failures = [f for t in traffic for f in t.failures]
    ok = sum(t.ok for t in traffic)
    record(f"ACME renewals under traffic: {len(seen)} certificates served in turn, {ok} HTTPS "
           f"requests (a new TLS connection each), {len(failures)} failed")
    assert len(seen) >= 3, "certbot renewed and nginx reloaded fewer than twice in 60 s"
    assert not failures, failures[:5]
    logs = acme_stack.logs("acme")
    assert "acme: installed the certificate for www.user-api.test and reloaded nginx" in logs


def test_a_failed_renewal_keeps_the_certificate_in_use_and_says_so(acme_stack, tmp_path):
    root = pebble_roots(acme_stack, tmp_path)
    acme_stack.compose("stop", "pebble")
    since = time.time()
    try:
        before, _ = served_certificate(acme_stack.tls_port, root)
        deadline = time.monotonic() + 30
        line = "acme: could not renew the certificate for www.user-api.test"
        while time.monotonic() < deadline:
            tail = acme_stack.compose("logs", "--no-color", "--since", str(int(since) - 1), "acme",
                                      check=False).stdout
            if line in tail:
                break
            time.sleep(1)
        else:
            pytest.fail(f"no failure line from acme in 30 s:\n{tail[-2000:]}")
        after, _ = served_certificate(acme_stack.tls_port, root)
        assert after == before
        assert acme_stack.inspect("acme")["State"]["Running"]
    finally:
        acme_stack.compose("start", "pebble")
