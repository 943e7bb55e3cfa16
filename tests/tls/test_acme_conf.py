"""The proxy's ACME settings (nginx/acme/, mounted by docker-compose.acme.yml) on production's
nginx, in front of the release binary: the HTTP-01 challenge answered on plain HTTP, everything
else sent to HTTPS with a 308, HSTS on HTTPS. tests/e2e/test_90_acme.py runs the whole flow
with certbot and pebble on Docker.
"""

import http.client
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from harness.nginx import Nginx
from test_tls import REPO, api, https, local_tls  # noqa: F401 (api: the fixture)

ACME = REPO / "nginx" / "acme"
WEBROOT = "/var/lib/acme/webroot"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return local_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def webroot():
    # Outside pytest's 0700 base directory: nginx's workers run as nobody when the tests run as
    # root.
    root = Path(tempfile.mkdtemp(prefix="user-api-webroot-"))
    root.chmod(0o755)
    (root / ".well-known" / "acme-challenge").mkdir(parents=True)
    (root / ".well-known" / "acme-challenge" / "token-1").write_text("token-1.thumbprint")
    yield root
    shutil.rmtree(root)


@pytest.fixture(scope="module")
def proxy(api, files, webroot):
    challenge = (ACME / "challenge.conf").read_text()
    assert WEBROOT in challenge
    own = {"acme.conf": challenge.replace(WEBROOT, str(webroot)),
           "hsts.conf": (ACME / "hsts.conf").read_text()}
    with Nginx.start(f"127.0.0.1:{api.port}", files=own, tls=(files["tls_cert"], files["tls_key"])) as proxy:
        yield proxy


def plain(proxy, method, target, body=None):
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    connection.request(method, target, body=body, headers={"Host": "api.example.com"})
    response = connection.getresponse()
    answer = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    connection.close()
    return answer


def test_plain_http_sends_every_call_to_https_keeping_method_and_body(proxy):
    status, headers, _ = plain(proxy, "POST", "/create_user?userid=1&username=John")
    assert status == 308
    assert headers["location"] == "https://api.example.com/create_user?userid=1&username=John"
    status, headers, _ = plain(proxy, "GET", "/users/1")
    assert (status, headers["location"]) == (308, "https://api.example.com/users/1")


def test_plain_http_answers_the_challenge_from_the_webroot(proxy):
    status, headers, body = plain(proxy, "GET", "/.well-known/acme-challenge/token-1")
    assert (status, body) == (200, b"token-1.thumbprint")
    assert headers["content-type"] == "text/plain"
    # A token that is not there: the gateway's JSON 404 (its error page is an internal redirect,
    # which must not be sent to HTTPS), as for a malformed request.
    status, headers, body = plain(proxy, "GET", "/.well-known/acme-challenge/missing")
    assert status == 404
    assert headers["content-type"] == "application/json"
    assert b'"error":"not_found"' in body.replace(b" ", b"")
    status, headers, _ = plain(proxy, "GET", "/" + "x" * 9000)
    assert (status, headers["content-type"]) == (414, "application/json")


def test_https_is_served_and_carries_hsts(proxy, files):
    status, headers, _ = https(proxy, files, "GET", "/healthz")
    assert status == 200
    assert headers["strict-transport-security"] == "max-age=63072000"
    # Plain HTTP never does (a browser ignores it there anyway).
    _, headers, _ = plain(proxy, "GET", "/.well-known/acme-challenge/token-1")
    assert "strict-transport-security" not in headers


def test_the_acme_tls_conf_is_the_shipped_listener_with_other_files():
    shipped = (REPO / "nginx" / "tls.conf").read_text()
    acme = (ACME / "tls.conf").read_text()

    def directives(text):
        return [line for line in text.splitlines() if line and not line.startswith("#")]

    assert [d for d in directives(shipped) if "ssl_certificate" not in d] == \
        [d for d in directives(acme) if "ssl_certificate" not in d]
    assert "ssl_certificate     /var/lib/acme/live/tls_cert.pem;" in directives(acme)
    assert "ssl_certificate_key /var/lib/acme/live/tls_key.pem;" in directives(acme)


def test_the_client_script_passes_shellcheck_as_posix_sh():
    # The acme image runs it with busybox's sh: no bash-isms.
    result = subprocess.run(["shellcheck", "--shell=sh", ACME / "acme.sh"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
