//! The pool's own metrics: gauges read from sqlx's pool at scrape time, and
//! counters fed on the request path (a few atomic increments).

use std::sync::Arc;
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};
use sqlx::mysql::MySqlPool;

use super::error::DbError;
use crate::error_code::ErrorCode;

/// Every metric of this service is `user_api_*` (the HTTP ones too).
pub const NAMESPACE: &str = "user_api";

/// The database pool as seen by the API. Counters are fed by the pool on the
/// request path (a few atomic increments); the gauges are read from the pool
/// when Prometheus scrapes.
pub struct PoolMetrics {
    pool: MySqlPool,
    max: IntGauge,
    size: IntGauge,
    idle: IntGauge,
    in_use: IntGauge,
    reachable: IntGauge,
    checks: IntCounter,
    waits: IntCounter,
    acquire_failures: IntCounter,
    acquire_seconds: Histogram,
    failures: IntCounterVec,
    unavailable: IntCounter,
    interrupted: IntCounter,
}

impl PoolMetrics {
    pub(super) fn new(pool: MySqlPool, max_connections: u32) -> Self {
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
            checks: counter(
                "database_checks_total",
                "One-off reachability checks started (one connection attempt each) after a \
                 statement broke or got no answer; statements failing together share one",
            ),
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
    pub fn failed(&self, error: &DbError) {
        match error {
            DbError::Unavailable => self.unavailable.inc(),
            DbError::Interrupted => self.interrupted.inc(),
            DbError::Failed(_) => {}
        }
    }

    pub fn set_reachable(&self, reachable: bool) {
        self.reachable.set(i64::from(reachable));
    }

    pub fn check_started(&self) {
        self.checks.inc();
    }

    fn collectors(&self) -> [&dyn Collector; 10] {
        [
            &self.max,
            &self.size,
            &self.idle,
            &self.in_use,
            &self.reachable,
            &self.checks,
            &self.waits,
            &self.acquire_failures,
            &self.acquire_seconds,
            &self.failures,
        ]
    }
}

/// A pool's metrics for a registry; reads the gauges at scrape time.
pub struct PoolCollector(pub(super) Arc<PoolMetrics>);

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
        assert_eq!(described.len(), 10, "{described:?}");
        assert_eq!(described, collected);
    }
}
