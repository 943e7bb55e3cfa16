"""HTTPS at the edge: the shipped nginx config with the shipped TLS listener
(nginx/tls.conf), a certificate from nix/local-tls.sh (what `nix run .#up`
makes), in front of the release binary on a throwaway MariaDB. Every check is
a real TLS handshake from Python's ssl module (OpenSSL) or the TLS scanner
testssl.sh (production's nginx and the scanner from the forky root).
"""

import http.client
import json
import socket
import ssl
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from harness import testssl, tls
from harness.api import Api
from harness.mariadb import MariaDB
from harness.nginx import Nginx

REPO = Path(__file__).resolve().parents[2]


def local_tls(directory: Path) -> dict[str, Path]:
    subprocess.run(["bash", REPO / "nix" / "local-tls.sh", directory], check=True, capture_output=True)
    return {name: directory / f"{name}.pem" for name in ("tls_cert", "tls_key", "local-ca")}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return local_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def api():
    with MariaDB.start() as db:
        with Api(db.create_database("tls"), env={"ROCKET_ACCESS_LOG": "false"}) as api:
            yield api


@pytest.fixture(scope="module")
def proxy(api, files):
    with Nginx.start(f"127.0.0.1:{api.port}", tls=(files["tls_cert"], files["tls_key"])) as proxy:
        yield proxy


def trusting(files, **versions) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=files["local-ca"])
    for name, value in versions.items():
        setattr(context, name, value)
    return context


def https(proxy, files, method, target, body=None, headers=None):
    """One request, the name checked against the certificate (nginx listens on 127.0.0.1 only;
    a refused ::1 is skipped)."""
    connection = http.client.HTTPSConnection("localhost", proxy.tls_port, context=trusting(files), timeout=10)
    connection.request(method, target, body=body, headers=headers or {})
    response = connection.getresponse()
    answer = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    connection.close()
    return answer


def handshake(proxy, context, server_hostname="localhost"):
    with socket.create_connection(("127.0.0.1", proxy.tls_port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=server_hostname) as tls:
            return tls.version(), tls.selected_alpn_protocol(), tls.getpeercert()


def test_the_chain_verifies_against_the_local_ca_for_localhost_and_127_0_0_1(proxy, files):
    version, _, cert = handshake(proxy, trusting(files))
    assert version == "TLSv1.3"
    assert ("DNS", "localhost") in cert["subjectAltName"]
    # By address, as `curl https://127.0.0.1/...` does.
    _, _, cert = handshake(proxy, trusting(files), server_hostname="127.0.0.1")
    assert ("IP Address", "127.0.0.1") in cert["subjectAltName"]
    # And not against the system's roots: nothing but the local CA vouches for it.
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(proxy, ssl.create_default_context())


def test_http2_by_alpn_and_http_1_1_for_clients_without_it(proxy, files):
    context = trusting(files)
    context.set_alpn_protocols(["h2", "http/1.1"])
    assert handshake(proxy, context)[1] == "h2"
    context = trusting(files)
    context.set_alpn_protocols(["http/1.1"])
    assert handshake(proxy, context)[1] == "http/1.1"


def test_only_tls_1_2_and_1_3(proxy, files):
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = trusting(files, minimum_version=version, maximum_version=version)
        assert handshake(proxy, context)[0] == version.name.replace("v1_", "v1.")
    # Kept out twice over: ssl_protocols names neither, and no cipher of ssl_ciphers exists before
    # TLS 1.2 (the scanner below checks the protocols alone).
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        context = trusting(files, minimum_version=version, maximum_version=version)
        # OpenSSL refuses to offer them below security level 0.
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        with pytest.raises(ssl.SSLError):
            handshake(proxy, context)


def test_an_unknown_name_gets_the_default_certificate(proxy, files):
    context = trusting(files)
    context.check_hostname = False
    with socket.create_connection(("127.0.0.1", proxy.tls_port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="unknown.example") as tls:
            served = ssl.DER_cert_to_PEM_cert(tls.getpeercert(binary_form=True))
    assert served.strip() == files["tls_cert"].read_text().strip()


def test_the_gateway_behaves_on_https_as_on_http(proxy, files):
    status, headers, body = https(proxy, files, "POST", "/create_user?userid=7&username=Tls")
    assert status == 201, body
    status, headers, body = https(proxy, files, "GET", "/get_user?userid=7")
    assert (status, json.loads(body)) == (200, {"userid": 7, "username": "Tls"})
    for name, value in (("x-content-type-options", "nosniff"), ("x-frame-options", "DENY"),
                        ("referrer-policy", "no-referrer"),
                        ("content-security-policy", "default-src 'none'; frame-ancestors 'none'")):
        assert headers.get(name) == value, (name, headers)
    assert len(headers["x-request-id"]) == 32
    # The local default sends no HSTS: a browser would pin it on localhost.
    assert "strict-transport-security" not in headers
    for method, target, body, extra, status, code in (
        ("GET", "/metrics", None, {}, 404, "not_found"),
        ("POST", "/users", b"x" * 20_000, {"Content-Type": "application/json"}, 413, "payload_too_large"),
        ("GET", "/get_user?userid=1", None, {"X-Big": "x" * 9000}, 431, "request_headers_too_large"),
        ("GET", "/get_user?userid=nope", None, {}, 400, "invalid_userid"),
    ):
        answer, headers, raw = https(proxy, files, method, target, body, extra)
        assert (answer, json.loads(raw)["error"]) == (status, code), (target, raw)
        assert headers["x-content-type-options"] == "nosniff"


def test_the_plain_port_takes_http2_with_prior_knowledge_and_http_1_1_as_before(proxy):
    """`http2 on` is per server: 8080 answers a client that opens with HTTP/2's preface."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as plain:
        plain.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
        frame = plain.recv(9)
    assert len(frame) == 9 and frame[3] == 4, frame  # the server's SETTINGS frame
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as plain:
        plain.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert plain.recv(65536).startswith(b"HTTP/1.1 200"), "HTTP/1.1 on 8080"


def curl_h2(proxy, files, target, *args):
    """curl over HTTP/2 (what browsers speak on 8443): (exit status, status, body)."""
    run = subprocess.run(
        ["curl", "-sS", "--http2", "--cacert", files["local-ca"], "-w", "\n%{http_code} %{http_version}",
         f"https://localhost:{proxy.tls_port}{target}", *args],
        capture_output=True, text=True, timeout=30)
    body, _, tail = run.stdout.rpartition("\n")
    status, _, version = tail.partition(" ")
    assert run.returncode != 0 or version == "2", run.stdout
    return run.returncode, status, body


def test_the_gateway_errors_are_json_over_http2_too(proxy, files):
    for target, args, status, code in (
        ("/metrics", (), "404", "not_found"),
        ("/get_user?userid=nope", (), "400", "invalid_userid"),
        # nginx's own 413: over HTTP/2 the body is discarded differently, and the error page's
        # location once raised a second 413 that came out as nginx's HTML page (nginx.conf).
        ("/users", ("-X", "POST", "-H", "Content-Type: application/json", "--data-binary", "x" * 20_000),
         "413", "payload_too_large"),
    ):
        exit_status, answer, body = curl_h2(proxy, files, target, *args)
        assert (exit_status, answer, json.loads(body)["error"]) == (0, status, code), (target, body)
    # A header field over 8 KiB: HTTP/2 has no request yet to answer 431 to; nginx ends the
    # connection instead (nginx/README.md). Refused either way, never passed on.
    exit_status, answer, _ = curl_h2(proxy, files, "/get_user?userid=1", "-H", "X-Big: " + "~" * 9000)
    assert exit_status != 0 and answer == "000", (exit_status, answer)


def test_plain_http_on_the_tls_port_gets_a_json_400(proxy):
    with socket.create_connection(("127.0.0.1", proxy.tls_port), timeout=10) as plain:
        plain.sendall(b"GET /get_user?userid=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := plain.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), raw
    assert json.loads(body)["error"] == "bad_request"


def test_hsts_where_a_deployment_turns_it_on_and_only_on_https(api, files):
    hsts = {"hsts.conf": 'on "max-age=63072000";\n'}
    with Nginx.start(f"127.0.0.1:{api.port}", files=hsts, tls=(files["tls_cert"], files["tls_key"])) as proxy:
        for target in ("/get_user?userid=1", "/metrics"):
            _, headers, _ = https(proxy, files, "GET", target)
            assert headers.get("strict-transport-security") == "max-age=63072000", target
        plain = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        plain.request("GET", "/get_user?userid=1")
        assert plain.getresponse().getheader("Strict-Transport-Security") is None


BAD_FILES = {
    # fault: (which file, how it is broken, what nginx's one line says)
    "missing certificate": ("tls_cert", None, "cannot load certificate"),
    "missing key": ("tls_key", None, "cannot load certificate key"),
    "a key that is no key": ("tls_key", "-----BEGIN PRIVATE KEY-----\nbm8=\n-----END PRIVATE KEY-----\n",
                             "cannot load certificate key"),
    "the key of another certificate": ("tls_key", "other", "key values mismatch"),
}


@pytest.mark.parametrize("fault", BAD_FILES)
def test_a_bad_certificate_or_key_stops_nginx_at_start_with_one_line(api, files, tmp_path, fault):
    which, content, says = BAD_FILES[fault]
    chosen = {"tls_cert": files["tls_cert"], "tls_key": files["tls_key"]}
    chosen[which] = tmp_path / f"{which}.pem"
    if content == "other":
        chosen[which] = local_tls(tmp_path / "other")[which]
    elif content is not None:
        chosen[which].write_text(content)
    with pytest.raises(RuntimeError) as failed:
        Nginx.start(f"127.0.0.1:{api.port}", tls=(chosen["tls_cert"], chosen["tls_key"]), within=5)
    emerg = [line for line in str(failed.value).splitlines() if "[emerg]" in line]
    assert len(emerg) == 1 and says in emerg[0], str(failed.value)


def test_the_scanner_finds_nothing_of_medium_severity_or_above(proxy, files, tmp_path):
    findings = testssl.scan(f"https://localhost:{proxy.tls_port}/get_user?userid=7", files["local-ca"], tmp_path)
    assert not testssl.serious(findings), json.dumps(testssl.serious(findings), indent=1)
    assert {(f["id"], f["finding"]) for f in findings} >= testssl.NOT_THE_SERVERS
    offered = testssl.protocols(findings)
    for old in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert offered[old].startswith("not offered"), (old, offered[old])
    assert offered["TLS1_2"].startswith("offered") and offered["TLS1_3"].startswith("offered")


# ---- nix/local-tls.sh: what `nix run .#up` does with the files it finds ----------------------------


def certificate(directory: Path, issuer: str, not_after: datetime, not_before=None) -> None:
    """A self-signed tls_cert.pem / tls_key.pem pair issued by ``issuer`` with these dates."""
    tls.self_signed(directory / "tls_cert.pem", directory / "tls_key.pem", issuer,
                    not_after=not_after, not_before=not_before)


def run_local_tls(directory: Path):
    before = {p.name: p.read_bytes() for p in directory.glob("*.pem")}
    run = subprocess.run(["bash", REPO / "nix" / "local-tls.sh", directory], capture_output=True, text=True)
    after = {p.name: p.read_bytes() for p in directory.glob("*.pem")}
    return run, before != after


NOW = datetime.now(timezone.utc)


def test_up_replaces_its_own_certificate_within_30_days_of_expiry(tmp_path):
    certificate(tmp_path, "user-api local CA 2025-12-01T00:00:00Z", NOW + timedelta(days=10))
    run, changed = run_local_tls(tmp_path)
    assert run.returncode == 0 and changed, run.stderr
    check = subprocess.run(["openssl", "x509", "-in", tmp_path / "tls_cert.pem", "-noout", "-checkend",
                            str(300 * 86400)], capture_output=True)
    assert check.returncode == 0, "the new certificate is not good for the next 300 days"
    # And keeps a fresh one as it is.
    run, changed = run_local_tls(tmp_path)
    assert run.returncode == 0 and not changed, run.stderr


def test_a_new_pair_lands_in_a_0700_directory_and_in_place(tmp_path):
    secrets = tmp_path / "secrets"
    run, _ = run_local_tls(secrets)
    assert run.returncode == 0, run.stderr
    assert secrets.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in secrets.glob("*.pem"))
    # Its own, broken (the key of another pair): made anew, in the same files (inodes), which a
    # running proxy's bind mounts keep seeing.
    inodes = {p.name: p.stat().st_ino for p in secrets.glob("*.pem")}
    other = local_tls(tmp_path / "other")
    (secrets / "tls_key.pem").write_bytes(other["tls_key"].read_bytes())
    run, changed = run_local_tls(secrets)
    assert run.returncode == 0 and changed, run.stderr
    assert {p.name: p.stat().st_ino for p in secrets.glob("*.pem")} == inodes


@pytest.mark.parametrize("missing", ["tls_cert.pem", "tls_key.pem"])
def test_half_a_pair_of_yours_is_refused_and_left_alone(tmp_path, missing):
    certificate(tmp_path, "Example Corp CA", NOW + timedelta(days=200))
    (tmp_path / missing).unlink()
    run, changed = run_local_tls(tmp_path)
    assert run.returncode == 1 and not changed, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "without its" in run.stderr, run.stderr


@pytest.mark.parametrize("case", ["valid", "expiring", "expired", "mismatched key"])
def test_up_never_replaces_your_own_certificate_and_refuses_one_that_cannot_work(tmp_path, case):
    ends = {"valid": NOW + timedelta(days=200), "expiring": NOW + timedelta(days=10),
            "expired": NOW - timedelta(days=1), "mismatched key": NOW + timedelta(days=200)}[case]
    certificate(tmp_path, "Example Corp CA", ends)
    if case == "mismatched key":
        certificate(tmp_path / "other", "Example Corp CA", ends)
        (tmp_path / "tls_key.pem").write_bytes((tmp_path / "other" / "tls_key.pem").read_bytes())
    run, changed = run_local_tls(tmp_path)
    assert not changed, f"{case}: local-tls.sh changed the files"
    lines = run.stderr.strip().splitlines()
    if case == "valid":
        assert run.returncode == 0 and lines == [], run.stderr
    elif case == "expiring":
        assert run.returncode == 0 and len(lines) == 1 and "within 30 days" in lines[0], run.stderr
    else:
        assert run.returncode == 1 and len(lines) == 1, run.stderr
        assert ("expired on" if case == "expired" else "is not the key of") in lines[0], lines
