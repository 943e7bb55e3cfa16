"""The stack as a user starts it: documented secrets, `up --wait`, the README's calls."""

import re
import stat
import subprocess
import time
from datetime import datetime, timezone

import requests

from harness import compose, testssl, tls

REPO = compose.REPO


def _normalized(text: str) -> str:
    """Comment markers and indentation out, one space between words."""
    lines = [re.sub(r"^\s*#?\s*", "", line) for line in text.splitlines()]
    return " ".join(" ".join(lines).split())


def test_the_secrets_one_liner_is_the_documented_one():
    one_liner = _normalized(compose.SECRETS_ONE_LINER)
    for doc in ("README.md", "docker-compose.yml"):
        assert one_liner in _normalized((REPO / doc).read_text()), (
            f"{doc} no longer documents the secrets one-liner the tests run:\n"
            f"{compose.SECRETS_ONE_LINER}")


def test_secrets_are_0644_files_in_a_0700_directory(project):
    d = project.dir / "secrets"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700, f"{d}: mode {oct(d.stat().st_mode)}"
    for name in compose.SECRETS:
        f = d / f"{name}.txt"
        mode = stat.S_IMODE(f.stat().st_mode)
        assert mode == 0o644, f"{f}: mode {oct(mode)}, want 0644 (uids 999/65534 read it)"
        assert len(project.secret(name)) >= 32, f"{f}: too short: {project.secret(name)!r}"


def test_compose_config_is_valid_and_holds_no_password(project):
    config = project.config()
    for name in compose.SECRETS:
        assert project.secret(name) not in config, f"the {name} value is in `compose config`"
    assert "pull_policy: never" in config
    password_vars = re.findall(r"^\s+([A-Z_]*PASSWORD[A-Z_]*): (.*)$", config, re.M)
    assert password_vars, "no *PASSWORD* variable at all: the config is not what we expect"
    for var, value in password_vars:
        assert var.endswith("_FILE") and value.startswith("/run/secrets/"), (
            f"{var}={value}: passwords reach the containers only as files (*_FILE)")


def test_up_wait_brings_db_api_and_proxy_up_healthy(stack):
    for service in ("db", "api", "proxy"):
        health = stack.inspect(service)["State"]["Health"]["Status"]
        assert health == "healthy", f"{service} is {health} after `up --wait`"
    # How long it took is a figure (conftest records it), not a bound: speed is the bench's.


def test_the_two_seed_calls_work_through_the_published_port(stack):
    # curl -X POST "localhost:80/create_user?userid=1&username=John"
    r = requests.post(stack.url("/create_user?userid=1&username=John"), timeout=10)
    assert r.status_code == 201, f"create_user: {r.status_code} {r.text}"
    assert r.headers["Location"] == "/users/1"
    # curl "localhost:80/get_user?userid=1"
    r = requests.get(stack.url("/get_user?userid=1"), timeout=10)
    assert r.status_code == 200, f"get_user: {r.status_code} {r.text}"
    assert r.json() == {"userid": 1, "username": "John"}


def test_https_on_the_published_port_with_the_local_ca_as_the_readme_says(stack):
    # curl --cacert secrets/local-ca.pem 'https://localhost/get_user?userid=1', on HTTPS_PORT.
    # curl checks the chain and the name; -w shows what ALPN chose.
    curl = subprocess.run(
        ["curl", "-sS", "--cacert", "secrets/local-ca.pem", "-D", "head.txt", "-o", "body.txt",
         "-w", "%{http_version}", f"https://localhost:{stack.tls_port}/get_user?userid=1"],
        cwd=stack.dir, capture_output=True, text=True, timeout=30)
    assert curl.returncode == 0, curl.stderr
    head, body = (stack.dir / "head.txt").read_text(), (stack.dir / "body.txt").read_text()
    assert curl.stdout == "2" and head.startswith("HTTP/2 200"), curl.stdout + head
    assert body == '{"userid":1,"username":"John"}', body
    # The local stack sends no HSTS: a browser would keep it for localhost.
    assert "strict-transport-security" not in head.lower(), head
    key = stack.dir / "secrets" / "tls_key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o644, "nginx's uid 65534 reads it via the bind mount"


def test_the_scanner_on_the_published_https_port_finds_nothing_of_medium_severity(stack, tmp_path, record):
    # The same judgement as tests/tls, on what compose publishes: the proxy image, its
    # entrypoint, the secrets as compose mounts them.
    started = time.monotonic()
    findings = testssl.scan(f"https://localhost:{stack.tls_port}/get_user?userid=1",
                            stack.dir / "secrets" / "local-ca.pem", tmp_path)
    assert not testssl.serious(findings), testssl.serious(findings)
    offered = testssl.protocols(findings)
    assert [p for p, says in offered.items() if says.startswith("offered")] == ["TLS1_2", "TLS1_3"], offered
    record(f"testssl.sh on the published HTTPS port: {len(findings)} findings, none of medium "
           f"severity or above but the local CA's; {time.monotonic() - started:.0f} s")


def test_the_proxy_image_refuses_an_expired_certificate_with_one_line(stack, stack_images, tmp_path):
    # nginx does not read dates: the image's entrypoint (proxy-preflight) does, then execs nginx.
    for name in ("tls_cert.pem", "tls_key.pem"):
        (tmp_path / name).unlink(missing_ok=True)
    tls.self_signed(tmp_path / "tls_cert.pem", tmp_path / "tls_key.pem", "localhost",
                    not_before=datetime(2025, 1, 1, tzinfo=timezone.utc),
                    not_after=datetime(2025, 2, 1, tzinfo=timezone.utc))
    for name in ("tls_cert.pem", "tls_key.pem"):
        (tmp_path / name).chmod(0o644)
    run = stack.docker_run(
        "--read-only", "--cap-drop", "ALL", "--tmpfs", "/tmp:mode=1777",
        "-v", f"{tmp_path / 'tls_cert.pem'}:/run/secrets/tls_cert:ro",
        "-v", f"{tmp_path / 'tls_key.pem'}:/run/secrets/tls_key:ro",
        stack_images["proxy"], check=False)
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stderr.strip().splitlines() == [
        "proxy: /run/secrets/tls_cert: the certificate expired on 2025-02-01T00:00:00Z (clients refuse it); "
        "nginx is not started"], run.stderr


def test_the_rest_api_works_through_the_proxy(stack):
    s, url = requests.Session(), stack.url

    def call(method, path, want, body=None):
        r = s.request(method, url(path), json=body, timeout=10)
        assert r.status_code == want, f"{method} {path}: {r.status_code} {r.text}, want {want}"
        assert r.headers.get("X-Request-Id"), f"{method} {path}: no X-Request-Id"
        return r.json() if r.content else None

    assert call("POST", "/users", 201, {"userid": 2, "username": "Ada"}) == \
        {"userid": 2, "username": "Ada"}
    call("POST", "/users", 201, {"userid": 3, "username": "Bob"})
    assert call("GET", "/users/2", 200) == {"userid": 2, "username": "Ada"}
    assert call("PUT", "/users/2", 200, {"username": "Ada L."})["username"] == "Ada L."
    assert call("GET", "/users/2", 200)["username"] == "Ada L."
    page = call("GET", "/users?limit=2", 200)
    assert [u["userid"] for u in page["users"]] == [1, 2] and page["next_after"] == 2
    assert [u["userid"] for u in call("GET", "/users?limit=2&after=2", 200)["users"]] == [3]
    assert call("POST", "/users", 409, {"userid": 2, "username": "Dup"})["error"]
    call("DELETE", "/users/3", 204)
    assert call("GET", "/users/3", 404)["error"]
    call("GET", "/readyz", 200)
    call("GET", "/healthz", 200)
