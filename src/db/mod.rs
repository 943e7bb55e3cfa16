//! The pooled MySQL/MariaDB connection, managed by rocket_db_pools: start-up
//! and migrations here, reachability, error classification, the pool's
//! metrics and the users table's queries in the modules below.

mod error;
mod metrics;
mod reachability;
mod users;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rocket::figment::Figment;
use rocket_db_pools::Database;
use sqlx::mysql::{MySql, MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::{ConnectOptions, Connection};

use crate::config::DatabaseSettings;
pub use error::DbError;
use metrics::PoolMetrics;
pub use metrics::{NAMESPACE, PoolCollector};
use reachability::Reachability;

#[derive(Database)]
#[database("users")]
pub struct Db(UserPool);

/// sqlx 0.8's pool behind rocket_db_pools' public `Pool` trait (its own
/// implementation is for sqlx 0.7), with what every call shares: the query
/// timeout, reachability and metrics.
pub struct UserPool {
    pool: MySqlPool,
    query_timeout: Duration,
    reachability: Arc<Reachability>,
    metrics: Arc<PoolMetrics>,
}

/// A pooled connection idle for longer is pinged before it is handed out.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

/// Why the pool could not start, or (for rocket_db_pools' `Connection`
/// guard, which no route uses) lend a connection; its text is safe to log.
#[derive(Debug)]
pub struct PoolError(String);

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PoolError {}

#[rocket::async_trait]
impl rocket_db_pools::Pool for UserPool {
    type Connection = PoolConnection<MySql>;
    type Error = PoolError;

    async fn init(figment: &Figment) -> Result<Self, Self::Error> {
        let started = start(figment).await;
        if let Err(e) = &started {
            tracing::error!(reason = %e, "cannot start");
        }
        started.map_err(PoolError)
    }

    async fn get(&self) -> Result<Self::Connection, Self::Error> {
        self.pool
            .acquire()
            .await
            .map_err(|e| PoolError(e.to_string()))
    }

    /// rocket_db_pools calls this from its shutdown fairing, which Rocket runs
    /// as soon as shutdown is *requested*, before the grace period: closing
    /// then would turn requests still in flight into 503s. The pool is
    /// closed by [`UserPool::close_after_shutdown`] once the server is done.
    async fn close(&self) {}
}

async fn start(figment: &Figment) -> Result<UserPool, String> {
    let settings: DatabaseSettings = figment
        .extract()
        .map_err(|e| format!("invalid database settings: {e}"))?;
    let options = settings.connect_options()?;
    wait_for_server(&settings, &options).await?;
    let pool = MySqlPoolOptions::new()
        // Pinging every connection before each use cost 9 % CPU per create
        // (bench/README.md). Like HikariCP, ping only a connection that sat
        // idle for a while: one used within the last second is very likely
        // alive, and if it is not, the statement fails as it would have
        // failed a moment later (503 `database_interrupted`, documented).
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= IDLE_BEFORE_PING {
                    connection.ping().await?;
                }
                Ok(true)
            })
        })
        .max_connections(settings.max_connections)
        .min_connections(settings.min_connections.min(settings.max_connections))
        .acquire_timeout(settings.connect_timeout())
        .idle_timeout(Some(settings.idle_timeout()).filter(|d| !d.is_zero()))
        .connect_lazy_with(options.clone());
    migrate(&pool, settings.startup_timeout()).await?;
    tracing::info!(database = %settings.describe(), "database ready");
    let metrics = Arc::new(PoolMetrics::new(pool.clone(), settings.max_connections));
    Ok(UserPool {
        pool,
        query_timeout: settings.query_timeout(),
        reachability: Arc::new(Reachability::new(
            options,
            settings.connect_timeout(),
            metrics.clone(),
        )),
        metrics,
    })
}

/// Applies the embedded migrations under a server-side lock, so replicas
/// starting together apply each migration once. sqlx-mysql (0.7, and 0.8.6
/// still) locks with `GET_LOCK(name, -1)` and ignores the answer, but
/// MariaDB takes a negative timeout as "do not wait" and answers NULL at
/// once: replicas then raced into the same migration (duplicate key in
/// `_sqlx_migrations`, an exit 1). So the lock is taken here, with a real
/// timeout, and must be granted.
async fn migrate(pool: &MySqlPool, wait: Duration) -> Result<(), String> {
    let failed = |e: sqlx::Error| format!("database migrations failed: {e}");
    let mut connection = pool.acquire().await.map_err(failed)?;
    let lock = "CONCAT('user-api-migrations:', SHA1(DATABASE()))";
    let granted: Option<i64> =
        sqlx::query_scalar(&format!("SELECT CAST(GET_LOCK({lock}, ?) AS SIGNED)"))
            .bind(wait.as_secs().max(1))
            .fetch_one(&mut *connection)
            .await
            .map_err(failed)?;
    if granted != Some(1) {
        return Err(format!(
            "database migrations not applied: another instance held the migration lock for {wait:.0?}"
        ));
    }
    let mut migrator = sqlx::migrate!();
    migrator.set_locking(false);
    let applied = migrator.run_direct(&mut *connection).await;
    // Released with the connection too, should this fail.
    let _ = sqlx::query(&format!("SELECT RELEASE_LOCK({lock})"))
        .execute(&mut *connection)
        .await;
    applied.map_err(|e| format!("database migrations failed: {e}"))
}

/// Containers start in any order: retry with backoff, one line per failed
/// attempt, until the startup deadline.
async fn wait_for_server(
    settings: &DatabaseSettings,
    options: &MySqlConnectOptions,
) -> Result<(), String> {
    let started = Instant::now();
    let deadline = started + settings.startup_timeout();
    let mut delay = Duration::from_millis(250);
    for attempt in 1.. {
        let error = match tokio::time::timeout(settings.connect_timeout(), options.connect()).await
        {
            Ok(Ok(connection)) => {
                let _ = connection.close().await;
                return Ok(());
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connection attempt timed out".to_owned(),
        };
        if Instant::now() + delay > deadline {
            return Err(format!(
                "database at {} not reachable after {attempt} attempts in {:.0?}: {error}",
                settings.describe(),
                started.elapsed()
            ));
        }
        tracing::warn!(
            database = %settings.describe(),
            attempt,
            error = %error,
            retry_in_ms = delay.as_millis() as u64,
            "database not reachable; retrying"
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    unreachable!("the attempt counter is unbounded")
}

/// One statement (or a few on one connection), given the connection. Boxed:
/// a closure cannot otherwise return a future that borrows its argument.
type Statement<'c, T> = Pin<Box<dyn Future<Output = Result<T, sqlx::Error>> + Send + 'c>>;

impl UserPool {
    /// The pool's metrics, for a `/metrics` registry.
    pub fn collector(&self) -> PoolCollector {
        PoolCollector(self.metrics.clone())
    }

    /// Closes the connections politely once every request has finished.
    pub async fn close_after_shutdown(&self) {
        self.pool.close().await;
    }

    /// Every database call of a request: a pooled connection, then the
    /// statement, both within the query timeout (a stalled server yields a
    /// 503 too, never a hung request). Failures are classified, counted and
    /// acted upon (reachability) here, once.
    async fn run<T: Send>(
        &self,
        statement: impl for<'c> FnOnce(&'c mut MySqlConnection) -> Statement<'c, T> + Send,
    ) -> Result<T, DbError> {
        let deadline = Instant::now() + self.query_timeout;
        if self.reachability.is_down() {
            return Err(self.failed(DbError::Unavailable));
        }
        let mut connection = match self.acquire_by(deadline).await {
            Ok(connection) => connection,
            Err(e) => {
                self.after_acquire_failure(&e);
                return Err(self.failed(DbError::before_sending(&e)));
            }
        };
        match tokio::time::timeout_at(deadline.into(), statement(&mut connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                if error::is_interruption(&e) {
                    self.reachability.suspect(&self.pool, e.to_string());
                }
                Err(self.failed(DbError::after_sending(&e)))
            }
            Err(_) => {
                let reason = "a statement got no answer within the query timeout".to_owned();
                self.reachability.suspect(&self.pool, reason);
                Err(self.failed(DbError::Interrupted))
            }
        }
    }

    fn failed(&self, error: DbError) -> DbError {
        self.metrics.failed(&error);
        error
    }

    /// What a failed acquire says about the server. With every connection
    /// open and lent out, the pool is saturated (slow statements, a lock):
    /// the server answers, so only a probe may conclude it is down. Any
    /// other failure means a new connection could not be made.
    fn after_acquire_failure(&self, error: &sqlx::Error) {
        let saturated = self.pool.size() >= self.pool.options().get_max_connections()
            && self.pool.num_idle() == 0;
        match error {
            sqlx::Error::PoolClosed => {}
            sqlx::Error::PoolTimedOut if saturated => {
                self.reachability.suspect(&self.pool, error.to_string())
            }
            _ => self.reachability.mark_down(&self.pool, error),
        }
    }

    /// A pooled connection by `deadline`, timed and counted. A timeout is
    /// sqlx's own `PoolTimedOut`: the same answer, whichever deadline hit.
    async fn acquire_by(&self, deadline: Instant) -> Result<PoolConnection<MySql>, sqlx::Error> {
        let waited = self.metrics.will_wait();
        let started = Instant::now();
        let acquired = tokio::time::timeout_at(deadline.into(), self.pool.acquire())
            .await
            .unwrap_or(Err(sqlx::Error::PoolTimedOut));
        self.metrics
            .acquired(waited, started.elapsed(), acquired.is_ok());
        acquired
    }

    /// Readiness: the database answers `SELECT 1` within `within`.
    pub async fn ping(&self, within: Duration) -> Result<(), DbError> {
        if self.reachability.is_down() {
            return Err(self.failed(DbError::Unavailable));
        }
        let ping = async {
            let mut connection = self.acquire_by(Instant::now() + within).await?;
            sqlx::query_scalar::<_, i32>("SELECT 1")
                .fetch_one(&mut *connection)
                .await
        };
        match tokio::time::timeout(within, ping).await {
            Ok(Ok(_)) => Ok(()),
            // A pool that lends no connection within `within` is slow,
            // like a slow answer below, not known to be down.
            Ok(Err(e)) => {
                if !matches!(e, sqlx::Error::PoolClosed | sqlx::Error::PoolTimedOut) {
                    self.reachability.mark_down(&self.pool, &e);
                }
                Err(self.failed(DbError::Unavailable))
            }
            // A slow answer is not yet a lost database: requests decide that.
            Err(_) => Err(self.failed(DbError::Unavailable)),
        }
    }
}
