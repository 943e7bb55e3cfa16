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
//! - `user_api_errors_total{code}`, one series per [`ErrorCode`], counted
//!   from the code the answer left in the request's cache ([`Answered`]);
//! - the database pool's gauges and counters and `user_api_database_failures_total{kind}`
//!   (`db::PoolCollector`);
//! - `user_api_build_info{version, revision}`;
//! - the process's RSS, CPU, open fds (`process_*`, the prometheus crate's collector).
//!
//! Each server gets a registry of its own (the tests run many in one process).

use prometheus::core::Collector;
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};
use rocket::fairing::{AdHoc, Fairing, Info, Kind};
use rocket::{Build, Request, Response, Rocket};
use rocket_db_pools::Database;
use rocket_prometheus::PrometheusMetrics;

use crate::db::{Db, NAMESPACE};
use crate::error::Answered;
use crate::error_code::ErrorCode;
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
    rocket
        .attach(http.clone())
        .attach(Answers {
            http: http.clone(),
            errors: errors_by_code,
        })
        .attach(AdHoc::on_ignite(
            "database metrics",
            move |rocket| async move {
                if let Some(db) = Db::fetch(&rocket) {
                    register(&registry, db.collector());
                }
                rocket
            },
        ))
        .mount("/metrics", http)
}

fn register(registry: &Registry, collector: impl Collector + 'static) {
    registry
        .register(Box::new(collector))
        .expect("metric names are unique");
}

/// Counts every error answer by its code, and the requests
/// `rocket_prometheus` skips: those no route matched.
struct Answers {
    http: PrometheusMetrics,
    /// Indexed by `ErrorCode as usize` ([`ErrorCode::ALL`] is in declaration
    /// order): no label lookup per error.
    errors: Vec<IntCounter>,
}

#[rocket::async_trait]
impl Fairing for Answers {
    fn info(&self) -> Info {
        Info {
            name: "metrics of error answers and of requests no route matched",
            kind: Kind::Response,
        }
    }

    async fn on_response<'r>(&self, request: &'r Request<'_>, response: &mut Response<'r>) {
        if let Some(code) = Answered::of(request) {
            self.errors[code as usize].inc();
        }
        if request.route().is_some() {
            return;
        }
        let status = response.status().code.to_string();
        // Rocket's `Method` is a closed set: the label stays bounded.
        let labels = [UNMATCHED, request.method().as_str(), status.as_str()];
        self.http
            .http_requests_total()
            .with_label_values(&labels)
            .inc();
        self.http
            .http_requests_duration_seconds()
            .with_label_values(&labels)
            .observe(Started::of(request).elapsed().as_secs_f64());
    }
}
