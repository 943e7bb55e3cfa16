"""Real client addresses behind a load balancer, with a real nginx (Debian's,
through tests/harness/nginx.py) running the shipped nginx.conf unchanged and
the include files the production overlay deploys.

The rate and concurrency limits are keyed on the client address. With
real-ip.conf trusting a hop (set_real_ip_from + real_ip_header
X-Forwarded-For + real_ip_recursive on), the clients behind that hop are
limited each on their own; a client that is not a trusted hop cannot choose
its key by sending X-Forwarded-For: all its requests share its own address.
The limits come from include files too (limit-zones.conf: the rate;
limits.conf: burst and concurrency): here 1 r/s with a burst of 4, so the
numbers do not depend on how fast this machine is.
"""

import http.client
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from k8s_manifests import one, render
from harness.nginx import Nginx

BURST = 4
LIMITS = {
    "limit-zones.conf": (
        "limit_req_zone  $rate_limit_key zone=per_client_rate:1m rate=1r/s;\n"
        "limit_conn_zone $rate_limit_key zone=per_client_conn:1m;\n"
    ),
    "limits.conf": f"limit_req zone=per_client_rate burst={BURST} nodelay;\nlimit_conn per_client_conn 20;\n",
}
# Documentation addresses (RFC 5737): only ever header values here, never contacted.
CLIENTS = [f"203.0.113.{i}" for i in range(1, 9)]


class Echo(BaseHTTPRequestHandler):
    """The upstream: answers every GET with the client headers nginx sent."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = json.dumps({
            "x_real_ip": self.headers.get("X-Real-IP"),
            "x_forwarded_for": self.headers.get("X-Forwarded-For"),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def production_real_ip() -> str:
    docs = render("overlays/production")
    proxy = one(docs, "Deployment", "proxy")["spec"]["template"]["spec"]
    name = next(v["configMap"]["name"] for v in proxy["volumes"] if "configMap" in v)
    return one(docs, "ConfigMap", name)["data"]["real-ip.conf"]


def trusting_loopback(conf: str) -> str:
    """The production file with its trusted ranges replaced by 127.0.0.1: on
    this machine the "load balancer" is the test client itself."""
    out, n = re.subn(r"^set_real_ip_from\s+\S+;", "set_real_ip_from 127.0.0.1;", conf, flags=re.M)
    assert n >= 1
    return re.sub(r"^(set_real_ip_from 127\.0\.0\.1;\n)+", "set_real_ip_from 127.0.0.1;\n", out, flags=re.M)


def get(conn, forwarded_for=None):
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    conn.request("GET", "/", headers=headers)
    r = conn.getresponse()
    body = r.read()
    return r.status, (json.loads(body) if r.status == 200 else None)


def test_production_real_ip_conf_does_not_trust_loopback():
    """The premise of the untrusted case below: production trusts its pod CIDR, not 127.0.0.1."""
    conf = production_real_ip()
    assert re.search(r"^set_real_ip_from\s+10\.244\.0\.0/16;", conf, re.M)
    assert not re.search(r"^set_real_ip_from\s+127\.", conf, re.M)


def test_clients_behind_a_trusted_hop_are_limited_separately(upstream):
    files = {**LIMITS, "real-ip.conf": trusting_loopback(production_real_ip())}
    with Nginx.start(upstream=upstream, files=files) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        # 1 + BURST requests for each of 8 clients, interleaved, through one
        # connection from the trusted hop: 40 requests, far past one key's
        # 1 + 4, and every one is answered, with the client's own address.
        for _ in range(1 + BURST):
            for client in CLIENTS:
                status, seen = get(conn, client)
                assert status == 200, f"client {client} limited by the others' requests"
                assert seen == {"x_real_ip": client, "x_forwarded_for": client}
        # Each client still has its own limit: the first one's next requests get 429.
        statuses = [get(conn, CLIENTS[0])[0] for _ in range(1 + BURST)]
        assert 429 in statuses, statuses
        # A client that puts its own entry in front of the hop's does not pick its address:
        # recursive real_ip takes the right-most untrusted address, the one the hop appended.
        status, seen = get(conn, f"198.51.100.66, {CLIENTS[1]}")
        assert status == 429 or seen["x_real_ip"] == CLIENTS[1], (status, seen)
        conn.close()
        time.sleep(1.2)  # the access log is flushed within 1 s
        addresses = {line["remote_addr"] for line in proxy.access_log()}
        assert addresses == set(CLIENTS), addresses


@pytest.mark.parametrize("real_ip", ["production", "shipped"])
def test_an_untrusted_client_cannot_spoof_its_address(upstream, real_ip):
    files = dict(LIMITS)
    if real_ip == "production":
        files["real-ip.conf"] = production_real_ip()  # trusts 10.244.0.0/16 only
    # "shipped": nginx/real-ip.conf as it is (nobody trusted).
    with Nginx.start(upstream=upstream, files=files) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        started = time.monotonic()
        results = [get(conn, client) for _ in range(1 + BURST) for client in CLIENTS]
        elapsed = time.monotonic() - started
        ok = [seen for status, seen in results if status == 200]
        limited = [status for status, _ in results if status == 429]
        assert len(ok) + len(limited) == len(results)
        # One key for all 40: at most 1 + BURST, plus what 1 r/s refilled meanwhile.
        assert len(ok) <= 1 + BURST + int(elapsed) + 1, (len(ok), elapsed)
        assert limited
        # The upstream sees the real peer, never a header value.
        assert all(seen == {"x_real_ip": "127.0.0.1", "x_forwarded_for": "127.0.0.1"} for seen in ok), ok
        conn.close()
        time.sleep(1.2)
        assert {line["remote_addr"] for line in proxy.access_log()} == {"127.0.0.1"}
