"""N api replicas behind one proxy, a rolling deploy and a killed replica (issue 23), on the real
stack: nginx follows `api` by name (`server api:8000 resolve`, Docker's resolver), so replicas
come and go without a proxy restart.

- the connection budget of docker-compose.yml (`x-connection-budget`) holds for its most replicas,
  with the figures the file states and the server's real max_connections;
- `--scale api=3`: every replica gets a share of the requests through the proxy;
- `nix/deploy.sh` (what `nix run .#deploy` runs) replaces the three replicas one by one with a new
  image under steady GETs and POSTs: no request fails; p99 during the deploy is recorded;
- a replica SIGKILLed under traffic: no GET fails (nginx tries another replica, and the proxy's
  @fresh_try what nginx's own retry gives up on); what POSTs saw is recorded (README says what a
  POST can see);
- no replica at all: the proxy answers a JSON 503 with Retry-After, then serves again.

Runs last: it leaves the stack with one replica on the image it started with.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest
import requests
import yaml

import e2e_support as e2e
from harness import compose as harness_compose

REPO = harness_compose.COMPOSE_FILE.parent
DEPLOY = REPO / "nix" / "deploy.sh"


def replicas(stack) -> list[str]:
    return sorted(stack.compose("ps", "-q", "api").stdout.split())


def edge_address(stack, container_id: str) -> str:
    nets = harness_compose.inspect_container(container_id)["NetworkSettings"]["Networks"]
    return nets[f"{stack.name}_edge"]["IPAddress"]


def image_of(container_id: str) -> str:
    return harness_compose.inspect_container(container_id)["Image"]


def scale(stack, n: int):
    stack.compose("up", "-d", "--wait", "--wait-timeout", "120", "--no-deps", "--scale",
                  f"api={n}", "api", timeout=200)


def upstreams_of(stack, request_ids: set[str]) -> dict[str, str]:
    """request id -> the upstream address the proxy sent it to, from its JSON access log."""
    found = {}
    for line in stack.logs("proxy").splitlines():
        start = line.find("{")
        if start < 0:
            continue
        try:
            entry = json.loads(line[start:])
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("request_id") in request_ids:
            found[entry["request_id"]] = entry["upstream_addr"]
    return found


class Traffic:
    """Steady GETs of one user and POSTs of new users through the proxy, each from its own
    thread, paced to stay under the proxy's per-client rate limit (20 r/s shared by every test
    request)."""

    def __init__(self, stack, userid: int, first_new: int, get_interval=0.1, post_interval=0.2):
        self.writer = e2e.Writer(stack.base_url, first_new, "traffic", interval=post_interval)
        self.url = stack.url(f"/users/{userid}")
        self.interval = get_interval
        self.gets: list[tuple[float, float, int | str]] = []  # started, latency, status
        self._halt = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)

    def _read(self):
        with requests.Session() as s:
            while not self._halt.is_set():
                t0 = e2e.now()
                try:
                    status: int | str = s.get(self.url, timeout=(5, 15)).status_code
                except requests.RequestException as e:
                    status = type(e).__name__
                self.gets.append((t0, e2e.now() - t0, status))
                self._halt.wait(self.interval)

    def __enter__(self):
        self.writer.start()
        self._reader.start()
        return self

    def __exit__(self, *exc):
        self._halt.set()
        self._reader.join(30)
        self.writer.stop()

    def failed_gets(self):
        return [g for g in self.gets if g[2] != 200]

    def failed_posts(self):
        return [r for r in self.writer.results if r.status != 201]

    def p99_ms(self) -> float:
        latencies = sorted([g[1] for g in self.gets] + [r.latency for r in self.writer.results])
        return 1000 * latencies[max(0, int(len(latencies) * 0.99) - 1)]

    def counts(self) -> str:
        posts: dict[str, int] = {}
        for r in self.writer.results:
            key = str(r.status) + (f" {r.error}" if r.error else "")
            posts[key] = posts.get(key, 0) + 1
        gets: dict[str, int] = {}
        for g in self.gets:
            gets[str(g[2])] = gets.get(str(g[2]), 0) + 1
        return f"GET {gets}, POST {posts}"


@pytest.fixture(scope="module")
def reader_user(stack):
    r = requests.post(stack.url("/users"), json={"userid": 880_001, "username": "read me"}, timeout=10)
    assert r.status_code in (201, 409), r.text
    return 880_001


def test_the_connection_budget_holds_for_the_most_replicas(stack, record):
    text = (REPO / "docker-compose.yml").read_text()
    spec = yaml.safe_load(text)
    budget = spec["x-connection-budget"]
    api_env = spec["services"]["api"]["environment"]
    assert int(api_env["DATABASE_MAX_CONNECTIONS"]) == budget["pool_per_replica"]
    entrypoint = (REPO / "db" / "entrypoint.sh").read_text()
    exporter = {int(n) for n in re.findall(r"MAX_USER_CONNECTIONS (\d+)", entrypoint)}
    assert exporter == {budget["other_connections"]["mysqld-exporter"]}, exporter
    server = int(e2e.root_sql(stack, "SELECT @@max_connections;").strip())
    assert server == budget["max_connections"], f"the db runs max_connections={server}"
    used = (budget["pool_per_replica"] * (budget["max_replicas"] + budget["deploy_surge"])
            + sum(budget["other_connections"].values()))
    headroom = budget["max_connections"] - used
    assert headroom >= budget["max_connections"] // 10, f"{used} of {budget['max_connections']}"
    # The arithmetic the file's comment states is this one.
    stated = (f"{budget['pool_per_replica']} x ({budget['max_replicas']} + {budget['deploy_surge']}) + "
              + " + ".join(str(v) for v in budget["other_connections"].values()) + f" = {used}")
    assert stated in text, f"docker-compose.yml should state: {stated}"
    record(f"connection budget: {stated} of max_connections {server} ({headroom} spare)")


def test_three_replicas_share_the_load(stack, reader_user, record):
    scale(stack, 3)
    ids = replicas(stack)
    assert len(ids) == 3, ids
    addresses = {f"{edge_address(stack, i)}:8000" for i in ids}
    time.sleep(3)  # nginx re-resolves `api` every 2 s (nginx/resolver.conf)
    tag = f"share-{time.time_ns()}"
    sent = set()
    with requests.Session() as s:
        for n in range(60):
            rid = f"{tag}-{n}"
            r = s.get(stack.url(f"/users/{reader_user}"), headers={"X-Request-Id": rid}, timeout=10)
            assert r.status_code == 200, (r.status_code, r.text)
            sent.add(rid)
            time.sleep(1 / 12)
    deadline = time.monotonic() + 10
    while True:
        seen = upstreams_of(stack, sent)
        if len(seen) == len(sent) or time.monotonic() > deadline:
            break
        time.sleep(1)  # the access log is flushed every second
    assert len(seen) == len(sent), f"{len(seen)} of {len(sent)} requests in the proxy's log"
    share = {a: sum(1 for u in seen.values() if u == a) for a in addresses}
    assert set(seen.values()) == addresses, (share, set(seen.values()))
    assert min(share.values()) >= 10, share
    record(f"3 replicas: 60 GETs through the proxy, per replica {sorted(share.values())}")


@pytest.fixture(scope="module")
def next_api_image(stack):
    """The api image under a new reference and id (a label more): what a deploy rolls out."""
    current = stack.env["API_IMAGE"]
    new = f"{current}-next"
    build = subprocess.run(["docker", "build", "-q", "-t", new, "-"], text=True, capture_output=True,
                           input=f"FROM {current}\nLABEL io.github.user-api.deploy-test=next\n",
                           timeout=120)
    assert build.returncode == 0, build.stderr
    yield new
    # Back to one replica on the image the session started with, then the new image goes.
    stack.env["API_IMAGE"] = current
    stack.compose("up", "-d", "--wait", "--wait-timeout", "120", "--no-deps", "api", timeout=200)
    subprocess.run(["docker", "rmi", new], capture_output=True)


def test_a_rolling_deploy_under_traffic_fails_no_request(stack, reader_user, next_api_image, record):
    if len(replicas(stack)) != 3:
        scale(stack, 3)
    before = replicas(stack)
    new_image_id = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", next_api_image],
                                  capture_output=True, text=True, check=True).stdout.strip()
    assert {image_of(i) for i in before} != {new_image_id}
    env = dict(stack.env, API_IMAGE=next_api_image)
    with Traffic(stack, reader_user, 881_000) as traffic:
        time.sleep(2)
        t0 = time.monotonic()
        out = subprocess.run(["bash", str(DEPLOY), "-f", str(stack.compose_file),
                              "--project-directory", str(stack.dir), "-p", stack.name],
                             env=env, capture_output=True, text=True, timeout=600)
        took = time.monotonic() - t0
        time.sleep(2)
    assert out.returncode == 0, out.stdout + out.stderr
    stack.env["API_IMAGE"] = next_api_image  # what the project runs from now on
    after = replicas(stack)
    assert len(after) == 3 and not set(after) & set(before), (before, after)
    assert {image_of(i) for i in after} == {new_image_id}
    assert not traffic.failed_gets() and not traffic.failed_posts(), traffic.counts()
    assert len(traffic.gets) > 50 and len(traffic.writer.results) > 25, traffic.counts()
    record(f"rolling deploy of 3 replicas: {took:.1f} s, {traffic.counts()}, "
           f"p99 {traffic.p99_ms():.0f} ms, 0 failed")


def test_a_replica_killed_under_traffic_fails_no_get(stack, reader_user, record):
    """SIGKILL of a replica's process (a crash: Docker restarts it, `restart: unless-stopped`).
    GETs that meet it are tried on another replica, also the one whose connection into the
    vanished address was still waiting when nginx re-resolved `api` (nginx's own retries stop
    at a change of the addresses; the proxy's @fresh_try starts such a request once more).
    What cannot be retried: a POST that had reached it (the proxy's JSON 503), counted."""
    ids = replicas(stack)
    assert len(ids) >= 2, ids
    victim = ids[0]
    restarts = harness_compose.inspect_container(victim)["RestartCount"]
    pid = harness_compose.inspect_container(victim)["State"]["Pid"]
    with Traffic(stack, reader_user, 882_000, post_interval=0.3) as traffic:
        time.sleep(2)
        killed_at = e2e.now()
        os.kill(pid, signal.SIGKILL)
        time.sleep(8)
    assert any(g[0] > killed_at for g in traffic.gets)
    assert not traffic.failed_gets(), traffic.counts()
    for r in traffic.failed_posts():
        assert r.status == 503 and r.error == "service_unavailable", (r, traffic.counts())
    back = harness_compose.inspect_container(victim)
    assert back["RestartCount"] > restarts and back["State"]["Running"], back["State"]
    slowest = max(g[1] for g in traffic.gets)
    record(f"a replica SIGKILLed under traffic (restarted by Docker): {traffic.counts()}, "
           f"slowest GET {slowest:.2f} s")
    e2e.wait_healthy(stack, "api", after=0, within=60)


def test_no_replica_is_a_json_503_with_retry_after(stack, reader_user, record):
    scale(stack, 0)
    deadline = time.monotonic() + 10
    while True:
        r = requests.get(stack.url(f"/users/{reader_user}"), timeout=10)
        if r.status_code == 503 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.status_code == 503, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json()["error"] == "service_unavailable", r.text
    assert r.headers.get("Retry-After") == "1", dict(r.headers)
    scale(stack, 1)
    t0 = time.monotonic()
    while requests.get(stack.url(f"/users/{reader_user}"), timeout=10).status_code != 200:
        assert time.monotonic() - t0 < 15, "no 200 within 15 s of a replica being healthy again"
        time.sleep(0.2)
    record(f"no replica: JSON 503 with Retry-After; one replica back: 200 after "
           f"{time.monotonic() - t0:.1f} s")
