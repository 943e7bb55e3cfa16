"""The compose profile `monitoring` (issue 10) on the real stack: Prometheus and the two
exporters from docker-compose.yml, with stand-in images from Debian's packages here (Grafana has
none: it is packaged neither for Debian nor on PyPI, so it is not started; monitoring/README.md).

- the profile comes up beside the running stack, hardened like it, nothing published;
- Prometheus sees every target of monitoring/prometheus.yml `up`: the api's /metrics, nginx
  through the nginx exporter, MariaDB through the mysqld exporter, itself; the exporters really
  read what they watch (`nginx_up`, `mysql_up`), and the API's request counter counts the calls
  sent through the proxy; the alert rules are loaded;
- the exporter's account was made by the db image at the first start, with only its three
  grants: no table data;
- a new exporter password (with `#` and `;`, which an unquoted my.cnf value would cut) is taken
  over by the db at its next start and by the exporter at its next one;
- where a Grafana image is loaded (the Nix one, in CI's `e2e` job), Grafana too: healthy on
  127.0.0.1 only, the admin password from its secret, the provisioned datasource and the
  user-api dashboard, and the datasource's queries answered through Grafana. With the stand-ins
  that test is skipped, and says why.
"""

from __future__ import annotations

import calendar
import json
import re
import subprocess
import time

import pytest
import requests
import yaml

import e2e_support as e2e
from harness import compose

MONITORING = ("prometheus", "nginx-exporter", "mysqld-exporter", "blackbox-exporter", "backup-exporter")
# The backup exporter reads ./backups, so it runs as the uid that owns it (BACKUP_UID, 999).
USER = {"backup-exporter": "999:999"}
EXPORTER_GRANTS = {"PROCESS", "SLAVE MONITOR"}
# (MariaDB >= 10.5 shows REPLICATION CLIENT as its new name, BINLOG MONITOR)
EXPORTER_REPLICATION_GRANT = {"REPLICATION CLIENT", "BINLOG MONITOR"}


@pytest.fixture(scope="module")
def with_grafana(stack_images) -> bool:
    """Whether a Grafana image is there (the Nix one; there is no stand-in)."""
    return "grafana" in stack_images


@pytest.fixture(scope="module")
def mon(stack, with_grafana, record):
    """The stack with the monitoring profile's services up (Grafana only if it has an image)."""
    services = MONITORING + (("grafana",) if with_grafana else ())
    seconds = stack.up(*services, profiles=("monitoring",))
    record(f"monitoring profile up ({', '.join(services)}): {seconds:.1f} s")
    yield stack
    stack.compose("--profile", "monitoring", "rm", "-s", "-f", *services, check=False)


def prometheus_api(p, path: str) -> dict:
    """GET on Prometheus' HTTP API from inside its container (the port is never published)."""
    r = p.exec("prometheus", "/bin/wget", "-q", "-O", "-", f"http://127.0.0.1:9090{path}")
    body = json.loads(r.stdout)
    assert body["status"] == "success", body
    return body["data"]


def query(p, promql: str) -> list[dict]:
    return prometheus_api(p, "/api/v1/query?query=" + requests.utils.quote(promql))["result"]


def scalar(p, promql: str) -> float | None:
    result = query(p, promql)
    return float(result[0]["value"][1]) if result else None


def wait_for(what: str, check, within: float, every: float = 1.0, state=None):
    """Polls ``check()`` until it returns something truthy, and returns that; fails with
    ``state()`` (what was seen last) after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within:.0f} s" + (f" (seen: {state()})" if state else ""))
        time.sleep(every)


def _seconds(rfc3339: str) -> float:
    """Prometheus' timestamps (nanosecond digits) as Unix seconds."""
    whole, _, fraction = rfc3339.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float("0." + (fraction or "0"))


def targets_by_job(p) -> dict[str, list[dict]]:
    jobs: dict[str, list[dict]] = {}
    for t in prometheus_api(p, "/api/v1/targets?state=active")["activeTargets"]:
        jobs.setdefault(t["labels"]["job"], []).append(t)
    return jobs


def test_the_profile_is_hardened_and_publishes_nothing(mon):
    for service in MONITORING:
        info = mon.inspect(service)
        host = info["HostConfig"]
        assert info["Config"]["User"] == USER.get(service, "65534:65534"), \
            f"{service}: user {info['Config']['User']}"
        assert host["ReadonlyRootfs"] is True, f"{service}: root filesystem not read-only"
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"], f"{service}: {host['CapAdd']}"
        assert host["Memory"] > 0 and host["MemorySwap"] == host["Memory"], service
        published = {p: b for p, b in (info["NetworkSettings"]["Ports"] or {}).items() if b}
        assert not published, f"{service} publishes {published}"
        assert info["State"]["Health"]["Status"] == "healthy", f"{service}: {info['State']['Health']}"
    nets = set(mon.inspect("prometheus")["NetworkSettings"]["Networks"])
    assert nets == {f"{mon.name}_monitoring"}, f"prometheus networks: {nets}"


def test_prometheus_sees_every_target_up(mon, record):
    t0 = time.monotonic()
    # The first scrape of each job comes within one scrape interval (15 s) of the start.
    seen = {}

    def every_target_up():
        seen.update(targets_by_job(mon))
        return seen if seen and all(t["health"] == "up" for ts in seen.values() for t in ts) else None

    jobs = wait_for("every target up", every_target_up, within=60,
                    state=lambda: {j: [(t["health"], t["lastError"]) for t in ts] for j, ts in seen.items()})
    config = yaml.safe_load((compose.REPO / "monitoring" / "prometheus.yml").read_text())
    assert set(jobs) == {j["job_name"] for j in config["scrape_configs"]}
    for job, ts in jobs.items():
        for t in ts:
            assert t["lastError"] == "", f"{job}: {t['lastError']}"
    # `up` says the exporter answered; these say it read what it watches.
    assert scalar(mon, "nginx_up") == 1.0, "the nginx exporter cannot read stub_status"
    assert scalar(mon, "mysql_up") == 1.0, "the mysqld exporter cannot log in to MariaDB"
    assert scalar(mon, "user_api_database_reachable") == 1.0
    # The blackbox exporter's handshake with the proxy's HTTPS port, and the served
    # certificate's end as the one in secrets/ says it.
    assert scalar(mon, 'probe_success{job="tls"}') == 1.0, "no TLS handshake with proxy:8443"
    not_after = subprocess.run(
        ["openssl", "x509", "-noout", "-enddate", "-in", mon.dir / "secrets" / "tls_cert.pem"],
        capture_output=True, text=True, check=True).stdout.strip().removeprefix("notAfter=")
    expected = calendar.timegm(time.strptime(not_after, "%b %d %H:%M:%S %Y GMT"))
    assert scalar(mon, 'probe_ssl_earliest_cert_expiry{job="tls"}') == expected
    # The backups' metrics as the last backup wrote them (test_60 and test_65 take some; alone,
    # this file takes one).
    backup_metrics = e2e.backups_dir(mon) / "metrics" / "backup.prom"
    if not backup_metrics.exists():
        mon.compose("--profile", "backup", "run", "--rm", "-T", "backup")
    written = float(re.search(r"^db_backup_last_success_timestamp_seconds (\d+)$",
                              backup_metrics.read_text(), re.M).group(1))
    wait_for("the backup's metrics scraped",
             lambda: scalar(mon, 'db_backup_last_success_timestamp_seconds{job="backups"}') == written,
             within=30, state=lambda: scalar(mon, 'db_backup_last_success_timestamp_seconds{job="backups"}'))
    record(f"monitoring: every target up {time.monotonic() - t0:.1f} s after the profile: "
           + ", ".join(f"{job} ({ts[0]['scrapeUrl']})" for job, ts in sorted(jobs.items())))


def test_the_api_calls_sent_through_the_proxy_are_counted(mon):
    series = 'rocket_http_requests_total{job="api",endpoint="/users/<userid>",method="GET"}'

    def total():
        result = query(mon, f"sum({series})")
        return float(result[0]["value"][1]) if result else 0.0

    requests.post(mon.url("/users"), json={"userid": 70_001, "username": "monitored"}, timeout=10)
    # The series exists from its first request on (a restarted api starts without it): one
    # call, then a scrape that saw it, then the calls that are counted.
    assert requests.get(mon.url("/users/70001"), timeout=10).status_code == 200
    t0 = e2e.now()
    wait_for("a scrape after the first call",
             lambda: (scalar(mon, f"max(timestamp({series}))") or 0) > t0, within=40,
             state=lambda: query(mon, series))
    before = total()
    sent = 25
    for _ in range(sent):
        r = requests.get(mon.url("/users/70001"), timeout=10)
        assert r.status_code == 200, r.text
    wait_for(f"the counter to rise by {sent}", lambda: total() >= before + sent, within=40)
    assert total() == before + sent, "Prometheus counted other GET /users/<userid> requests"
    nginx = scalar(mon, 'nginx_http_requests_total{job="nginx"}')
    assert nginx is not None and nginx >= sent


def test_the_alert_rules_are_loaded_and_healthy(mon):
    groups = prometheus_api(mon, "/api/v1/rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    names = {r["name"] for r in rules}
    shipped = yaml.safe_load((compose.REPO / "monitoring" / "rules" / "user-api.rules.yml").read_text())
    assert names == {r["alert"] for g in shipped["groups"] for r in g["rules"]}
    assert all(r["health"] in ("ok", "unknown") for r in rules), [
        (r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] not in ("ok", "unknown")
    ]
    # Nothing is wrong with the stack: no alert fires, and none is even pending. Every rule
    # waits a minute or more (`for:`) and this Prometheus is younger than that, so the firing
    # list alone would be empty whatever the stack did: each expression itself must return
    # nothing now. Judged on an evaluation made from now on, every target being up (the test
    # before waits for that): one made before the first scrapes leaves `ApiNoReplicaUp`
    # pending until the next.
    since = float(prometheus_api(mon, "/api/v1/query?query=time()")["result"][1])

    def evaluated_since():
        groups = prometheus_api(mon, "/api/v1/rules")["groups"]
        return all(_seconds(g["lastEvaluation"]) > since for g in groups)

    wait_for("a rule evaluation after every target is up", evaluated_since, within=60)
    alerts = prometheus_api(mon, "/api/v1/alerts")["alerts"]
    assert not alerts, alerts
    conditions = {r["alert"]: r["expr"] for g in shipped["groups"] for r in g["rules"]}
    holding = {name: query(mon, expr) for name, expr in conditions.items()}
    assert not any(holding.values()), {k: v for k, v in holding.items() if v}


def test_the_exporter_account_has_its_three_grants_and_no_table_data(mon):
    grants = e2e.root_sql(mon, "SHOW GRANTS FOR 'exporter'@'%';")
    on_all = [g for g in grants.splitlines() if " ON *.* TO " in g]
    assert len(on_all) == 1 and len(grants.splitlines()) == 1, grants
    privs = set(re.match(r"GRANT (.*) ON", on_all[0]).group(1).split(", "))
    assert EXPORTER_GRANTS <= privs and len(privs & EXPORTER_REPLICATION_GRANT) == 1, privs
    assert len(privs) == 3, privs
    assert "MAX_USER_CONNECTIONS 3" in grants, grants
    r = mon.exec("db", "bash", "-c",
                 'exec mariadb --defaults-extra-file=<(printf "[client]\\nuser=exporter\\n'
                 'password=%s\\nhost=127.0.0.1\\n" "$(cat /run/secrets/db_exporter_password)") '
                 'user_api -e "SELECT COUNT(*) FROM users"', check=False)
    assert r.returncode != 0 and "denied" in r.stderr, r.stdout + r.stderr


def test_a_new_exporter_password_is_taken_over_by_the_db_and_the_exporter(mon, record):
    secret = mon.dir / "secrets" / "db_exporter_password.txt"
    new = "new#pass;word-" + secret.read_text().strip()[:16]
    # In place (the same inode): compose bind-mounts the file, a new file would not be seen.
    with open(secret, "r+") as f:
        f.truncate(0)
        f.write(new)
    t0 = e2e.now()
    mon.compose("restart", "db")
    e2e.wait_healthy(mon, "db", after=t0, within=120)
    lines = e2e.log_lines(mon.container_id("db"), t0)
    assert e2e.first_line(lines, "exporter account 'exporter' ready"), \
        "the db did not update the exporter account at its start"
    assert not e2e.first_line(lines, "backup account"), "the backup account was touched"
    t1 = e2e.now()
    mon.up("mysqld-exporter", profiles=("monitoring",), extra=("--force-recreate",))
    mon.up()  # the api and the proxy, after the db's restart
    # `mysql_up` is the exporter's own login result at each scrape: wait for a scrape of the
    # new exporter, then read it.
    wait_for("a scrape of the recreated exporter",
             lambda: (scalar(mon, "timestamp(mysql_up)") or 0) > t1, within=60,
             state=lambda: query(mon, "mysql_up"))
    assert scalar(mon, "mysql_up") == 1.0, "the exporter cannot log in with the new password"
    record("monitoring: a new exporter password (with # and ;) taken over at the next start "
           "of the db and of the exporter")


def test_grafana_serves_the_provisioned_dashboard_on_loopback_only(mon, with_grafana):
    if not with_grafana:
        pytest.skip("no Grafana image: Grafana has no stand-in (not packaged for Debian or PyPI); "
                    "CI's e2e job runs this against the loaded Nix image")
    info = mon.inspect("grafana")
    assert info["State"]["Health"]["Status"] == "healthy", info["State"]["Health"]
    bindings = info["NetworkSettings"]["Ports"]["3000/tcp"]
    assert {b["HostIp"] for b in bindings} == {"127.0.0.1"}, bindings
    base = f"http://127.0.0.1:{mon.env['GRAFANA_PORT']}"
    auth = ("admin", mon.secret("grafana_admin_password"))
    assert requests.get(f"{base}/api/search", auth=("admin", "admin"), timeout=10).status_code == 401
    (found,) = requests.get(f"{base}/api/search", params={"query": "user-api", "type": "dash-db"},
                            auth=auth, timeout=10).json()
    dashboard = requests.get(f"{base}/api/dashboards/uid/{found['uid']}", auth=auth, timeout=10)
    assert dashboard.status_code == 200 and dashboard.json()["meta"]["provisioned"], dashboard.text
    source = requests.get(f"{base}/api/datasources/uid/prometheus", auth=auth, timeout=10).json()
    assert source["url"] == "http://prometheus:9090", source
    # A query through Grafana's datasource proxy: Grafana reaches Prometheus over `monitoring`.
    r = requests.get(f"{base}/api/datasources/proxy/uid/prometheus/api/v1/query",
                     params={"query": "up"}, auth=auth, timeout=10)
    assert r.status_code == 200 and r.json()["data"]["result"], r.text
