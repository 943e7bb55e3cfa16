"""The user-api dashboard, built with Grafana's typed builders.

    python3 monitoring/grafana/dashboard.py   # rewrites dashboards/user-api.json

The JSON Grafana provisions is the output of this file (grafana-foundation-sdk,
pinned in tests/requirements.txt): a panel type, field or option Grafana's
schema does not have cannot be written here, and tests/monitoring checks that
the committed JSON is exactly what this produces. Every expression in it is
run against a real Prometheus by tests/monitoring/test_prometheus.py.
"""

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.builders import stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import DashboardCursorSync, DataSourceRef

OUT = Path(__file__).parent / "dashboards" / "user-api.json"

# The provisioned datasource (provisioning/datasources/prometheus.yml).
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")

# Grafana picks the window: at least four scrape intervals (the datasource's
# timeInterval), so a rate never has fewer than two samples.
RATE = "$__rate_interval"


def query(expr: str, legend: str, ref: str) -> prom.Dataquery:
    return prom.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)


def series(title: str, unit: str, description: str, *queries, stacked=False, width=12):
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(8)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.RIGHT)
            .show_legend(True)
            .calcs(["mean", "max"])
        )
    )
    if stacked:
        panel = panel.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    for i, q in enumerate(queries):
        panel = panel.with_target(query(*q, ref=chr(ord("A") + i)))
    return panel


def single(title: str, unit: str, description: str, expr: str, legend: str, width=6):
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(4)
        .with_target(query(expr, legend, ref="A"))
    )


def build():
    api = 'job="api"'
    users = f'{api}, endpoint!="/metrics"'
    return (
        dash.Dashboard("user-api")
        .uid("user-api")
        .description("API calls, latency and errors; the database pool; nginx; MariaDB.")
        .tags(["user-api"])
        .time("now-1h", "now")
        .refresh("30s")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .readonly()
        # The first thing on screen: the sample's "how many API calls per second".
        .with_panel(
            single(
                "API calls per second",
                "reqps",
                "Every request the API answered (scrapes of /metrics left out).",
                f"sum(rate(rocket_http_requests_total{{{users}}}[{RATE}]))",
                "calls/s",
            )
        )
        .with_panel(
            single(
                "5xx share",
                "percentunit",
                "Share of answers that were server errors (503s of a database outage included).",
                # No 5xx series exists until the first 5xx: 0, not "No data".
                f'(sum(rate(rocket_http_requests_total{{{api}, status=~"5.."}}[{RATE}])) or vector(0)) '
                f"/ sum(rate(rocket_http_requests_total{{{api}}}[{RATE}]))",
                "5xx",
            )
        )
        .with_panel(
            single(
                "p99 latency",
                "s",
                "99th percentile of request latency, all routes.",
                "histogram_quantile(0.99, sum by (le) "
                f"(rate(rocket_http_requests_duration_seconds_bucket{{{users}}}[{RATE}])))",
                "p99",
            )
        )
        .with_panel(
            single(
                "Build",
                "none",
                "Which version and git revision the API runs.",
                f"max by (version, revision) (user_api_build_info{{{api}}})",
                "{{version}} {{revision}}",
            )
        )
        .with_row(dash.Row("API"))
        .with_panel(
            series(
                "API calls per second by route and status",
                "reqps",
                "Labelled by route template; requests no route matched are endpoint=\"unmatched\".",
                (
                    f"sum by (method, endpoint, status) (rate(rocket_http_requests_total{{{users}}}[{RATE}]))",
                    "{{method}} {{endpoint}} {{status}}",
                ),
                stacked=True,
            )
        )
        .with_panel(
            series(
                "Latency p50 / p95 / p99",
                "s",
                "Quantiles estimated from the request duration histogram, all routes.",
                *[
                    (
                        f"histogram_quantile({q}, sum by (le) "
                        f"(rate(rocket_http_requests_duration_seconds_bucket{{{users}}}[{RATE}])))",
                        f"p{int(q * 100)}",
                    )
                    for q in (0.5, 0.95, 0.99)
                ],
            )
        )
        .with_panel(
            series(
                "Errors per second by code",
                "reqps",
                "Every error answer by its code (the ErrorCode enum).",
                (f"sum by (code) (rate(user_api_errors_total{{{api}}}[{RATE}]))", "{{code}}"),
                stacked=True,
            )
        )
        .with_panel(
            series(
                "Latency p99 by route",
                "s",
                "Which route is slow.",
                (
                    "histogram_quantile(0.99, sum by (le, method, endpoint) "
                    f"(rate(rocket_http_requests_duration_seconds_bucket{{{users}}}[{RATE}])))",
                    "{{method}} {{endpoint}}",
                ),
            )
        )
        .with_row(dash.Row("Database pool"))
        .with_panel(
            series(
                "Pool saturation",
                "percentunit",
                "Connections lent out / the pool's maximum. Near 100 %, requests queue for a connection.",
                (
                    f"user_api_db_pool_in_use_connections{{{api}}} "
                    f"/ on (job, instance) user_api_db_pool_max_connections{{{api}}}",
                    "{{instance}} in use",
                ),
                (
                    f"user_api_db_pool_connections{{{api}}} "
                    f"/ on (job, instance) user_api_db_pool_max_connections{{{api}}}",
                    "{{instance}} open",
                ),
                width=8,
            )
        )
        .with_panel(
            series(
                "Pool waits and acquire time",
                "s",
                "p99 time to get a connection; waits: acquisitions that found no idle connection.",
                (
                    "histogram_quantile(0.99, sum by (le) "
                    f"(rate(user_api_db_pool_acquire_duration_seconds_bucket{{{api}}}[{RATE}])))",
                    "acquire p99",
                ),
                (f"sum(rate(user_api_db_pool_acquire_waits_total{{{api}}}[{RATE}]))", "waits/s"),
                width=8,
            )
        )
        .with_panel(
            series(
                "Database failures per second",
                "reqps",
                "database_unavailable: nothing was sent; database_interrupted: the database stopped "
                "answering mid-statement. reachable: 0 while the API knows it to be down.",
                (f"sum by (kind) (rate(user_api_database_failures_total{{{api}}}[{RATE}]))", "{{kind}}"),
                (f"sum(rate(user_api_db_pool_acquire_failures_total{{{api}}}[{RATE}]))", "acquire failures"),
                (f"min(user_api_database_reachable{{{api}}})", "reachable"),
                width=8,
            )
        )
        .with_row(dash.Row("nginx"))
        .with_panel(
            series(
                "nginx connections",
                "short",
                "From stub_status.",
                ('nginx_connections_active{job="nginx"}', "active"),
                ('nginx_connections_reading{job="nginx"}', "reading"),
                ('nginx_connections_writing{job="nginx"}', "writing"),
                ('nginx_connections_waiting{job="nginx"}', "waiting (keep-alive)"),
            )
        )
        .with_panel(
            series(
                "nginx requests per second",
                "reqps",
                "All requests the proxy handled, and connections accepted.",
                (f'sum(rate(nginx_http_requests_total{{job="nginx"}}[{RATE}]))', "requests/s"),
                (f'sum(rate(nginx_connections_accepted{{job="nginx"}}[{RATE}]))', "connections/s"),
            )
        )
        .with_row(dash.Row("MariaDB"))
        .with_panel(
            series(
                "MariaDB queries per second",
                "qps",
                "Statements the server executed (Queries) and those clients sent (Questions).",
                (f'sum(rate(mysql_global_status_queries{{job="mysql"}}[{RATE}]))', "queries/s"),
                (f'sum(rate(mysql_global_status_questions{{job="mysql"}}[{RATE}]))', "questions/s"),
            )
        )
        .with_panel(
            series(
                "MariaDB connections",
                "short",
                "Connected and running threads against max_connections.",
                ('mysql_global_status_threads_connected{job="mysql"}', "connected"),
                ('mysql_global_status_threads_running{job="mysql"}', "running"),
                ('mysql_global_variables_max_connections{job="mysql"}', "max_connections"),
                (f'sum(rate(mysql_global_status_aborted_connects{{job="mysql"}}[{RATE}]))', "aborted connects/s"),
            )
        )
        .build()
    )


def render() -> str:
    return json.dumps(build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    sys.stdout.write(f"wrote {OUT}\n")
