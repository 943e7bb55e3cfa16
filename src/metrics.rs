//! Prometheus metrics at `GET /metrics`, on the API's own port only (the
//! public proxy answers 404 there).
//!
//! `rocket_prometheus` counts and times every request that matched a route,
//! labelled by the route's *template* (`/users/<userid>`, never the raw
//! path, so the label set stays bounded): `rocket_http_requests_total` and
//! `rocket_http_requests_duration_seconds`, labels `endpoint`, `method`,
//! `status`. What it leaves out is added here:
//! - requests that matched no route (404, 405): the same two metrics, with
//!   `endpoint` = [`UNMATCHED`];
//! - `user_api_errors_total{code}`, one series per [`ErrorCode`];
//! - the database pool's gauges and counters and `user_api_database_failures_total{kind}`
//!   ([`PoolMetrics`], fed by `db.rs`);
//! - `user_api_build_info{version, revision}`;
//! - the process's RSS, CPU, open fds (`process_*`, the prometheus crate's collector).
//!
//! Each server gets a registry of its own (the tests run many in one process).

use std::sync::Arc;
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use rocket::fairing::{AdHoc, Fairing, Info, Kind};
use rocket::{Build, Request, Response, Rocket};
use rocket_db_pools::Database;
use rocket_prometheus::PrometheusMetrics;
use sqlx::mysql::MySqlPool;

use crate::db::Db;
use crate::error::ErrorCode;
use crate::request_id::Started;

/// The `endpoint` label of requests that matched no route. Route templates
/// all start with `/`, so it cannot collide with one.
pub const UNMATCHED: &str = "unmatched";

/// The git revision the binary was built from, when the build said (the Nix
/// build sets `USER_API_REVISION`); cargo rebuilds when it changes.
pub const REVISION: &str = match option_env!("USER_API_REVISION") {
    Some(revision) => revision,
    None => "unknown",
};

const NAMESPACE: &str = "user_api";

/// What the request path needs: managed state, cheap to reach.
pub struct Metrics {
    http: PrometheusMetrics,
    /// Indexed by `ErrorCode as usize` ([`ErrorCode::ALL`] is in declaration
    /// order): no label lookup per error.
    errors: Vec<IntCounter>,
}

impl Metrics {
    /// Counts one error answer.
    pub fn error(&self, code: ErrorCode) {
        self.errors[code as usize].inc();
    }
}

/// Attaches the metrics to a server whose database fairing is attached
/// already, and mounts `GET /metrics`.
pub fn attach(rocket: Rocket<Build>) -> Rocket<Build> {
    let http = PrometheusMetrics::new();
    let registry = http.registry().clone();
    let errors = IntCounterVec::new(
        Opts::new("errors_total", "API error answers, by error code").namespace(NAMESPACE),
        &["code"],
    )
    .expect("valid metric");
    // Every code from the start: a rate over a series that appears only
    // with its first error would miss that error.
    let errors_by_code = ErrorCode::ALL
        .iter()
        .map(|code| errors.with_label_values(&[code.as_str()]))
        .collect();
    let build_info = IntGaugeVec::new(
        Opts::new(
            "build_info",
            "Always 1; the labels say which build is running",
        )
        .namespace(NAMESPACE),
        &["version", "revision"],
    )
    .expect("valid metric");
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), REVISION])
        .set(1);
    register(&registry, errors);
    register(&registry, build_info);
    register(
        &registry,
        prometheus::process_collector::ProcessCollector::for_self(),
    );
    let metrics = Metrics {
        http: http.clone(),
        errors: errors_by_code,
    };
    rocket
        .attach(http.clone())
        .attach(Unmatched)
        .attach(AdHoc::on_ignite(
            "database metrics",
            move |rocket| async move {
                if let Some(db) = Db::fetch(&rocket) {
                    register(&registry, PoolCollector(db.metrics()));
                }
                rocket
            },
        ))
        .manage(metrics)
        .mount("/metrics", http)
}

fn register(registry: &Registry, collector: impl Collector + 'static) {
    registry
        .register(Box::new(collector))
        .expect("metric names are unique");
}

/// Counts the requests `rocket_prometheus` skips: those no route matched.
struct Unmatched;

#[rocket::async_trait]
impl Fairing for Unmatched {
    fn info(&self) -> Info {
        Info {
            name: "metrics of requests no route matched",
            kind: Kind::Response,
        }
    }

    async fn on_response<'r>(&self, request: &'r Request<'_>, response: &mut Response<'r>) {
        if request.route().is_some() {
            return;
        }
        let Some(metrics) = request.rocket().state::<Metrics>() else {
            return;
        };
        let status = response.status().code.to_string();
        // Rocket's `Method` is a closed set: the label stays bounded.
        let labels = [UNMATCHED, request.method().as_str(), status.as_str()];
        metrics
            .http
            .http_requests_total()
            .with_label_values(&labels)
            .inc();
        metrics
            .http
            .http_requests_duration_seconds()
            .with_label_values(&labels)
            .observe(Started::of(request).elapsed().as_secs_f64());
    }
}

/// The database pool as seen by the API. Counters are fed by `db.rs` on the
/// request path (a few atomic increments); the gauges are read from the pool
/// when Prometheus scrapes.
pub struct PoolMetrics {
    pool: MySqlPool,
    max: IntGauge,
    size: IntGauge,
    idle: IntGauge,
    in_use: IntGauge,
    reachable: IntGauge,
    waits: IntCounter,
    acquire_failures: IntCounter,
    acquire_seconds: Histogram,
    failures: IntCounterVec,
    unavailable: IntCounter,
    interrupted: IntCounter,
}

impl PoolMetrics {
    pub fn new(pool: MySqlPool, max_connections: u32) -> Self {
        let gauge = |name: &str, help: &str| {
            IntGauge::with_opts(Opts::new(name, help).namespace(NAMESPACE)).expect("valid metric")
        };
        let counter = |name: &str, help: &str| {
            IntCounter::with_opts(Opts::new(name, help).namespace(NAMESPACE)).expect("valid metric")
        };
        let failures = IntCounterVec::new(
            Opts::new(
                "database_failures_total",
                "Database calls that failed, by kind: database_unavailable (nothing was sent) \
                 or database_interrupted (the database stopped answering after a statement was sent)",
            )
            .namespace(NAMESPACE),
            &["kind"],
        )
        .expect("valid metric");
        let unavailable = failures.with_label_values(&[ErrorCode::DatabaseUnavailable.as_str()]);
        let interrupted = failures.with_label_values(&[ErrorCode::DatabaseInterrupted.as_str()]);
        let max = gauge(
            "db_pool_max_connections",
            "The most connections the pool opens",
        );
        max.set(i64::from(max_connections));
        let reachable = gauge(
            "database_reachable",
            "0 while the API knows the database to be unreachable (it answers 503 at once), else 1",
        );
        reachable.set(1);
        Self {
            pool,
            max,
            size: gauge("db_pool_connections", "Open connections in the pool"),
            idle: gauge("db_pool_idle_connections", "Open connections not in use"),
            in_use: gauge(
                "db_pool_in_use_connections",
                "Connections lent to a request",
            ),
            reachable,
            waits: counter(
                "db_pool_acquire_waits_total",
                "Acquisitions that found no idle connection and had to wait for one (or for a new one)",
            ),
            acquire_failures: counter(
                "db_pool_acquire_failures_total",
                "Acquisitions that failed or timed out",
            ),
            acquire_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "db_pool_acquire_duration_seconds",
                    "Time to get a connection from the pool",
                )
                .namespace(NAMESPACE)
                .buckets(vec![
                    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 3.0,
                ]),
            )
            .expect("valid metric"),
            failures,
            unavailable,
            interrupted,
        }
    }

    /// Whether an acquisition now would have to wait: call before it.
    pub fn will_wait(&self) -> bool {
        self.pool.num_idle() == 0
    }

    pub fn acquired(&self, waited: bool, took: Duration, ok: bool) {
        if waited {
            self.waits.inc();
        }
        if !ok {
            self.acquire_failures.inc();
        }
        self.acquire_seconds.observe(took.as_secs_f64());
    }

    /// Counts a failed database call by kind; other errors are not the
    /// database's failures.
    pub fn failed(&self, code: ErrorCode) {
        match code {
            ErrorCode::DatabaseUnavailable => self.unavailable.inc(),
            ErrorCode::DatabaseInterrupted => self.interrupted.inc(),
            _ => {}
        }
    }

    pub fn set_reachable(&self, reachable: bool) {
        self.reachable.set(i64::from(reachable));
    }

    fn collectors(&self) -> [&dyn Collector; 9] {
        [
            &self.max,
            &self.size,
            &self.idle,
            &self.in_use,
            &self.reachable,
            &self.waits,
            &self.acquire_failures,
            &self.acquire_seconds,
            &self.failures,
        ]
    }
}

/// Registers a pool's metrics; reads the gauges at scrape time.
struct PoolCollector(Arc<PoolMetrics>);

impl Collector for PoolCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.0
            .collectors()
            .into_iter()
            .flat_map(|c| c.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let m = &self.0;
        let size = i64::from(m.pool.size());
        let idle = i64::try_from(m.pool.num_idle()).unwrap_or(i64::MAX);
        m.size.set(size);
        m.idle.set(idle);
        m.in_use.set((size - idle).max(0));
        m.collectors()
            .into_iter()
            .flat_map(|c| c.collect())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry trusts a collector's descriptors to refuse a second
    /// collector of the same names (which would make the scrape
    /// ambiguous): the pool's must describe exactly the families it yields.
    #[tokio::test]
    async fn the_pool_collector_describes_every_family_it_collects() {
        // Lazy: nothing connects, the gauges read an empty pool.
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .connect_lazy("mysql://nobody@127.0.0.1:1/none")
            .unwrap();
        let collector = PoolCollector(Arc::new(PoolMetrics::new(pool, 3)));
        let mut described: Vec<String> =
            collector.desc().iter().map(|d| d.fq_name.clone()).collect();
        let mut collected: Vec<String> = collector
            .collect()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        described.sort();
        collected.sort();
        assert_eq!(described.len(), 9, "{described:?}");
        assert_eq!(described, collected);
    }
}
