"""A real Prometheus scrapes the real API, nginx (through its exporter), the
certificate nginx serves on HTTPS (through the blackbox exporter) and
MariaDB (through its exporter, as a least-privilege user); known traffic goes
in, then every expression of the dashboard and of the alert rules is run
through Prometheus' HTTP API.

The tests of this module run in file order on one stack: healthy first (the
alerts must stay quiet), then each alert's condition is provoked for real
(a certificate close to its end, a table lock, MariaDB stopped, nginx
stopped, the API stopped, an old backup, the binlog archive on a full disk)
and its expression must return data.
"""

import json
import math
import os
import signal
import subprocess
import threading
import time
import urllib.request

import yaml

from monitoring_stack import EXPORTER_USER, MONITORING, certificate, http, program, scaled

DASHBOARD = MONITORING / "grafana" / "dashboards" / "user-api.json"
RULES = sorted((MONITORING / "rules").glob("*.rules.yml"))


def dashboard_expressions() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((f"{panel['title']} / {target['refId']}", target["expr"]))
    return found


def alert_rules() -> dict[str, str]:
    rules = {}
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    rules[rule["alert"]] = rule["expr"]
    return rules


def finite(result: list[dict]) -> list[float]:
    return [float(r["value"][1]) for r in result if math.isfinite(float(r["value"][1]))]


class Traffic:
    """GET /users/<id> through nginx at a steady pace, in the background,
    with a few errors of known codes mixed in; counts what it sent."""

    def __init__(self, stack, per_second: float = 25):
        self.base = f"http://127.0.0.1:{stack.nginx.port}"
        self.interval = 1 / per_second
        self.sent = {"get_200": 0, "get_404": 0, "invalid": 0, "unmatched": 0}
        self.statuses = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.started = time.monotonic()
        self._thread.start()
        return self

    def _run(self):
        n = 0
        deadline = time.monotonic()
        while not self._stop.is_set():
            n += 1
            if n % 20 == 0:
                kind, status = "get_404", http("GET", f"{self.base}/users/999999")
            elif n % 20 == 10:
                kind, status = "invalid", http("GET", f"{self.base}/users/abc")
            elif n % 20 == 15:
                kind, status = "unmatched", http("GET", f"{self.base}/nope")
            else:
                kind, status = "get_200", http("GET", f"{self.base}/users/{1 + n % 5}")
            self.sent[kind] += 1
            self.statuses.append((kind, status))
            deadline += self.interval
            self._stop.wait(max(0, deadline - time.monotonic()))

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)
        self.elapsed = time.monotonic() - self.started


def test_every_target_is_up(stack):
    up = stack.prometheus.wait_for(
        "up", 30, "every target scraped", condition=lambda r: len(r) == 6 and all(x["value"][1] == "1" for x in r)
    )
    assert {r["metric"]["job"] for r in up} == {"api", "nginx", "mysql", "tls", "backups", "prometheus"}
    # The exporters reach what they export, the mysqld one as its own user.
    assert finite(stack.prometheus.wait_for('nginx_up{job="nginx"}', 10, "nginx_up")) == [1.0]
    assert finite(stack.prometheus.wait_for('mysql_up{job="mysql"}', 10, "mysql_up")) == [1.0], stack.logs()
    assert finite(stack.prometheus.wait_for('probe_success{job="tls"}', 10, "probe_success")) == [1.0], stack.logs()


def test_the_exporter_s_user_can_collect_but_not_read_the_data(stack):
    # Every collector the exporter runs by default works with its grants: none of
    # them failed in any scrape so far (mysqld_exporter >= 0.15 reports each
    # collector's last result; the older last_scrape_error and scrape_errors_total
    # are gone)...
    success = stack.prometheus.wait_for('mysql_exporter_collector_success{job="mysql"}', 10, "exporter scrape result")
    collectors = {r["metric"]["collector"]: float(r["value"][1]) for r in success}
    assert {"collect.global_status", "collect.global_variables"} <= set(collectors), collectors
    assert set(collectors.values()) == {1.0}, (collectors, stack.logs())
    failed = stack.prometheus.query('min_over_time(mysql_exporter_collector_success{job="mysql"}[1h]) < 1')
    assert not failed, (failed, stack.logs())
    # (the global status and variables the dashboard uses among them)
    for metric in ("mysql_global_status_queries", "mysql_global_variables_max_connections"):
        assert stack.prometheus.query(f'{metric}{{job="mysql"}}'), metric
    # ... and it cannot read the application's rows.
    out = subprocess.run(
        [
            program("mariadb"), "--no-defaults", "--protocol=tcp", "-h127.0.0.1", f"-P{stack.db.port}",
            f"-u{EXPORTER_USER}", f"-p{stack.exporter_password}", "-e", "SELECT * FROM app.users",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0 and "denied" in out.stderr, out


def test_prometheus_loaded_every_alert_rule(stack):
    def loaded():
        groups = stack.prometheus.api("rules")["groups"]
        return {r["name"]: r for g in groups for r in g["rules"] if r["type"] == "alerting"}

    deadline = time.monotonic() + 15
    while True:
        rules = loaded()
        if set(rules) == set(alert_rules()) and all(r["health"] == "ok" for r in rules.values()):
            break
        assert time.monotonic() < deadline, rules
        time.sleep(0.5)


def test_dashboard_expressions_return_data_and_the_rate_matches_the_traffic(stack):
    for userid in range(1, 6):
        status = http("POST", f"http://127.0.0.1:{stack.api.port}/users", {"userid": userid, "username": f"u{userid}"})
        assert status == 201
    metric = 'sum(rocket_http_requests_total{job="api", endpoint="/users/<userid>", method="GET"})'
    before_result = stack.prometheus.query(metric)
    before = float(before_result[0]["value"][1]) if before_result else 0.0
    with Traffic(stack) as traffic:
        # Long enough for four-scrape windows to fill with traffic.
        time.sleep(8)
        missing = []
        for name, expr in dashboard_expressions():
            result = stack.prometheus.query(scaled(expr))
            if not finite(result):
                missing.append((name, scaled(expr), result))
        rate = finite(stack.prometheus.query(f"rate({metric.removeprefix('sum(').removesuffix(')')}[5s])"))
    assert not missing, "dashboard expressions without data:\n" + "\n".join(map(str, missing)) + stack.logs()
    codes = [s for _, s in traffic.statuses]
    assert all(c in (200, 400, 404) for c in codes), sorted(set(codes))

    # Every request sent is counted once, under its route template: the
    # value Prometheus scraped last equals what was sent, once a scrape
    # after the traffic has landed.
    sent = traffic.sent["get_200"] + traffic.sent["get_404"] + traffic.sent["invalid"]
    stack.prometheus.wait_for(
        metric, 10, f"{sent} requests counted", condition=lambda r: r and float(r[0]["value"][1]) - before == sent
    )
    # The rate Prometheus computes matches the pace the traffic kept,
    # within reason (the window's edges, the scheduler of a shared machine).
    pace = sent / traffic.elapsed
    assert rate and 0.6 * pace <= sum(rate) <= 1.4 * pace, (rate, pace)
    unmatched = stack.prometheus.query('sum(rocket_http_requests_total{job="api", endpoint="unmatched", status="404"})')
    assert float(unmatched[0]["value"][1]) >= traffic.sent["unmatched"]
    invalid = stack.prometheus.query('user_api_errors_total{job="api", code="invalid_userid"}')
    assert float(invalid[0]["value"][1]) == traffic.sent["invalid"]
    # nginx saw at least as many (its own status requests come on top).
    nginx = stack.prometheus.query('nginx_http_requests_total{job="nginx"}')
    assert float(nginx[0]["value"][1]) >= sum(traffic.sent.values())


def test_promtool_check_metrics_on_the_api_s_real_output(stack):
    with urllib.request.urlopen(stack.api.url("/metrics"), timeout=10) as r:
        text = r.read().decode()
    assert "rocket_http_requests_total{" in text and "user_api_errors_total{" in text
    out = subprocess.run([program("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_alert_fires_while_all_is_well(stack):
    with Traffic(stack):
        time.sleep(3)
        firing = {name: stack.prometheus.query(scaled(expr)) for name, expr in alert_rules().items()}
    assert not any(firing.values()), {k: v for k, v in firing.items() if v}


def renew(stack, days: int):
    """A certificate of ``days`` served as nginx/acme/acme.sh installs one: each file renamed over
    the served one, then SIGHUP. Renamed, not rewritten: since 1.27 nginx keeps a certificate
    across a reload while the file's inode and mtime (whole seconds) are unchanged, so two
    in-place writes within one second left the first one served (seen here, 2 runs in 5)."""
    for made, served in zip(certificate(stack.tls_dir, days), (stack.tls_cert, stack.tls_key)):
        os.replace(made, served)
    os.kill(stack.nginx.process.pid, signal.SIGHUP)


def test_certificate_expiry_alerts_when_the_served_certificate_ends_soon(stack):
    """The blackbox exporter reads the certificate nginx serves; with 10 and then 5 days left
    (files replaced, nginx reloaded, as a renewal does), the expiry alerts' expressions return
    data and Prometheus holds the alert."""
    rules = alert_rules()
    (year,) = stack.prometheus.wait_for('probe_ssl_earliest_cert_expiry{job="tls"}', 30, "the probe")
    assert 364 * 86400 < float(year["value"][1]) - time.time() < 366 * 86400
    try:
        for days, alerts in ((10, ["TlsCertificateExpiresSoon"]),
                             (5, ["TlsCertificateExpiresSoon", "TlsCertificateExpiresVerySoon"])):
            renew(stack, days)
            for alert in alerts:
                # Once a probe after the reload has been scraped: the value is the new end.
                (left,) = stack.prometheus.wait_for(
                    scaled(rules[alert]), 30, f"{alert} data for {days} days",
                    condition=lambda r: r and float(r[0]["value"][1]) <= days * 86400)
                assert (days - 1) * 86400 < float(left["value"][1])
        stack.prometheus.wait_for('ALERTS{alertname="TlsCertificateExpiresVerySoon"}', 30, "the alert pending")
    finally:
        renew(stack, 365)
    stack.prometheus.wait_for(scaled(rules["TlsCertificateExpiresSoon"]), 30, "the alert's data gone",
                              condition=lambda r: not r)


class TableLock:
    """LOCK TABLES users WRITE, held by a client session until closed."""

    def __init__(self, stack):
        self.client = subprocess.Popen(
            [
                program("mariadb"), "--no-defaults", "--protocol=tcp", "-h127.0.0.1",
                f"-P{stack.db.port}", "-uroot", "app",
            ],
            stdin=subprocess.PIPE,
            text=True,
        )
        self.client.stdin.write("LOCK TABLES users WRITE;\nSELECT 1;\n")
        self.client.stdin.flush()

    def close(self):
        self.client.stdin.write("UNLOCK TABLES;\n")
        self.client.stdin.close()
        self.client.wait(30)


def test_latency_saturation_and_5xx_alerts_under_a_table_lock(stack):
    rules = alert_rules()
    lock = TableLock(stack)
    stop = threading.Event()

    def writer(offset):
        n = 0
        while not stop.is_set():
            n += 1
            http("POST", f"http://127.0.0.1:{stack.api.port}/users", {"userid": 1000 + offset * 10000 + n, "username": "w"})

    # More writers than pooled connections: both connections held by
    # statements waiting on the lock until the 1 s query timeout.
    writers = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(6)]
    for w in writers:
        w.start()
    try:
        for name in ("DatabasePoolSaturated", "ApiHighLatencyP99", "ApiHigh5xxRate"):
            stack.prometheus.wait_for(scaled(rules[name]), 60, f"{name} to return data")
        interrupted = stack.prometheus.query('user_api_database_failures_total{kind="database_interrupted"}')
        assert float(interrupted[0]["value"][1]) > 0
    finally:
        stop.set()
        for w in writers:
            w.join(30)
        lock.close()


def test_database_unreachable_alert_when_mariadb_stops(stack):
    rules = alert_rules()
    stack.db.stop()
    try:
        # The API finds out on its next database call.
        for _ in range(3):
            assert http("GET", f"http://127.0.0.1:{stack.api.port}/users/1") == 503
        result = stack.prometheus.wait_for(scaled(rules["DatabaseUnreachable"]), 30, "DatabaseUnreachable data")
        assert {r["metric"]["job"] for r in result} <= {"mysql", "api"}
        # Prometheus evaluates the loaded rule itself: pending (its `for` is 1 min).
        stack.prometheus.wait_for('ALERTS{alertname="DatabaseUnreachable"}', 30, "the alert pending")
    finally:
        stack.db.resume()
    stack.prometheus.wait_for('mysql_up{job="mysql"} == 1', 30, "mysql_up back")
    stack.prometheus.wait_for('user_api_database_reachable{job="api"} == 1', 30, "the API sees it back")


def test_target_down_alert_when_nginx_stops(stack):
    stack.nginx.close(keep_files=True)
    stack.prometheus.wait_for(scaled(alert_rules()["MonitoringTargetDown"]), 30, "MonitoringTargetDown data")
    # No handshake with HTTPS either.
    (failing,) = stack.prometheus.wait_for(scaled(alert_rules()["TlsHandshakeFailing"]), 30, "TlsHandshakeFailing data")
    assert failing["metric"]["job"] == "tls"


def test_api_down_alert_when_the_api_stops(stack):
    stack.api.close()
    result = stack.prometheus.wait_for(scaled(alert_rules()["ApiDown"]), 30, "ApiDown data")
    assert [r["metric"]["job"] for r in result] == ["api"]
    # The only replica down is no replica up.
    stack.prometheus.wait_for(scaled(alert_rules()["ApiNoReplicaUp"]), 30, "ApiNoReplicaUp data")


def test_a_backup_s_metrics_and_the_backup_age_alert(stack):
    """db/backup.sh's own metrics file, read by node_exporter: fresh after a backup, no alert;
    the same file with its time three intervals back, and BackupTooOld holds."""
    r = stack.backup_script.run("backup", env={"BACKUP_INTERVAL_HOURS": "1"})
    assert r.returncode == 0, r.stderr
    (taken,) = finite(stack.prometheus.wait_for("db_backup_last_success_timestamp_seconds", 30, "the backup's metrics"))
    assert abs(taken - time.time()) < 60, taken
    assert finite(stack.prometheus.query('db_backup_interval_seconds{job="backups"}')) == [3600.0]
    assert not stack.prometheus.query(scaled(alert_rules()["BackupTooOld"]))
    metrics = stack.backups / "metrics" / "backup.prom"
    text = metrics.read_text()
    metrics.write_text(text.replace(f"db_backup_last_success_timestamp_seconds {int(taken)}",
                                    f"db_backup_last_success_timestamp_seconds {int(taken) - 3 * 3600}"))
    try:
        stack.prometheus.wait_for(scaled(alert_rules()["BackupTooOld"]), 30, "BackupTooOld data")
        stack.prometheus.wait_for('ALERTS{alertname="BackupTooOld"}', 30, "the alert pending")
    finally:
        metrics.write_text(text)


def test_the_archive_streams_and_a_full_disk_stalls_it_while_the_database_goes_on(stack):
    """The real archiver (db/backup.sh archive) streams the binary log, its metrics say so; then
    its filesystem fills: the stream ends, MariaDB keeps taking writes, and BinlogArchiveStalled
    holds (the metrics file goes stale: it cannot be written either)."""
    if not stack.backups_is_tmpfs:
        import pytest
        pytest.skip("needs root to mount the small filesystem it fills")
    log = stack.backup_script.dir / "archive.log"
    archiver = stack.backup_script.spawn("archive", log=log)
    filler = stack.backups / "filler"
    try:
        stack.db.sql("CREATE TABLE app.padding (id INT PRIMARY KEY, pad LONGTEXT) ENGINE=InnoDB")
        stack.db.sql("INSERT INTO app.padding VALUES (1, REPEAT('x', 1000))")
        stack.prometheus.wait_for('db_binlog_archive_streaming{job="backups"} == 1 and db_binlog_archive_lag_bytes == 0',
                                  40, "the archiver streaming, caught up")
        assert not stack.prometheus.query(alert_rules()["BinlogArchiveStalled"])
        free = os.statvfs(stack.backups)
        with open(filler, "wb") as f:
            f.write(b"\0" * (free.f_bavail * free.f_frsize - 64 * 1024))
        t0 = time.monotonic()
        for i in range(2, 42):   # 40 x 100 KB of binary log, more than is left
            stack.db.sql(f"INSERT INTO app.padding VALUES ({i}, REPEAT('y', 100000))")
        assert stack.db.sql("SELECT COUNT(*) FROM app.padding").split()[-1] == "41"
        stack.prometheus.wait_for(alert_rules()["BinlogArchiveStalled"], 180, "BinlogArchiveStalled data")
        stack.prometheus.wait_for('ALERTS{alertname="BinlogArchiveStalled"}', 30, "the alert pending")
        assert "the stream ended" in log.read_text(), log.read_text()[-2000:]
        # the database never waited for the archive
        stack.db.sql("INSERT INTO app.padding VALUES (100, 'after')")
        print(f"archive stalled on a full disk: alert data after {time.monotonic() - t0:.0f} s")
    finally:
        archiver.terminate()
        archiver.wait(30)
        filler.unlink(missing_ok=True)
