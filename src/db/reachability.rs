//! Whether the database is known to be down, and the one background probe
//! that finds out when it is back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::mysql::{MySqlConnectOptions, MySqlPool};
use sqlx::{ConnectOptions, Connection};

use super::metrics::PoolMetrics;

/// How often a database known to be down is tried again.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// Whether the database is known to be down. sqlx retries a refused
/// connection until the acquire timeout, so without this every request
/// would wait that long for its 503 while the database is away. Once an
/// attempt to reach it has failed, requests get their 503 at once, and one
/// background probe connects every [`PROBE_INTERVAL`] until the database
/// answers again. (No pool or circuit-breaker crate fits between
/// rocket_db_pools and sqlx; this is the whole of it.)
pub(super) struct Reachability {
    down: AtomicBool,
    /// A one-off check after a connection broke under a statement.
    checking: AtomicBool,
    options: MySqlConnectOptions,
    connect_timeout: Duration,
    metrics: Arc<PoolMetrics>,
}

impl Reachability {
    pub(super) fn new(
        options: MySqlConnectOptions,
        connect_timeout: Duration,
        metrics: Arc<PoolMetrics>,
    ) -> Self {
        Self {
            down: AtomicBool::new(false),
            checking: AtomicBool::new(false),
            options,
            connect_timeout,
            metrics,
        }
    }

    pub(super) fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    pub(super) fn mark_down(self: &Arc<Self>, pool: &MySqlPool, reason: &dyn std::fmt::Display) {
        if self.down.swap(true, Ordering::AcqRel) {
            return;
        }
        self.metrics.set_reachable(false);
        tracing::warn!(
            reason = %reason,
            "database unreachable: answering 503 at once until it answers again"
        );
        let (this, pool) = (self.clone(), pool.clone());
        tokio::spawn(async move { this.probe_until_up(pool).await });
    }

    /// A pooled connection broke or a statement ran out of time: the server
    /// may have restarted (then the other pooled connections are dead too),
    /// be gone or stalled, or only be slow (a lock, a long query). One
    /// connection attempt decides, off the request path.
    pub(super) fn suspect(self: &Arc<Self>, pool: &MySqlPool, reason: String) {
        if self.is_down() || self.checking.swap(true, Ordering::AcqRel) {
            return;
        }
        self.metrics.check_started();
        let (this, pool) = (self.clone(), pool.clone());
        tokio::spawn(async move {
            if !this.answers().await {
                this.mark_down(&pool, &reason);
            }
            this.checking.store(false, Ordering::Release);
        });
    }

    async fn probe_until_up(&self, pool: MySqlPool) {
        let started = Instant::now();
        while !pool.is_closed() {
            tokio::time::sleep(PROBE_INTERVAL).await;
            if self.answers().await {
                self.down.store(false, Ordering::Release);
                self.metrics.set_reachable(true);
                tracing::info!(
                    down_ms = started.elapsed().as_millis() as u64,
                    "database reachable again"
                );
                return;
            }
        }
    }

    /// A fresh connection that answers `SELECT 1`, within the connect timeout.
    async fn answers(&self) -> bool {
        let attempt = async {
            let mut connection = self.options.connect().await?;
            sqlx::query("SELECT 1").execute(&mut connection).await?;
            connection.close().await
        };
        matches!(
            tokio::time::timeout(self.connect_timeout, attempt).await,
            Ok(Ok(()))
        )
    }
}
