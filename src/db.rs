//! The pooled MySQL/MariaDB connection, managed by rocket_db_pools, and the
//! users table's queries.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rocket::figment::Figment;
use rocket_db_pools::Database;
use sqlx::mysql::{MySql, MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::{ConnectOptions, Connection};

use crate::config::DatabaseSettings;
use crate::domain::{PageSize, User, UserId, UserName};
use crate::error::ApiError;
use crate::log;
use crate::metrics::PoolMetrics;

#[derive(Database)]
#[database("users")]
pub struct Db(UserPool);

pub struct UserPool {
    pool: MySqlPool,
    query_timeout: Duration,
    reachability: Arc<Reachability>,
    metrics: Arc<PoolMetrics>,
}

/// A pooled connection idle for longer is pinged before it is handed out.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

/// How often a database known to be down is tried again.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// Whether the database is known to be down. sqlx retries a refused
/// connection until the acquire timeout, so without this every request
/// would wait that long for its 503 while the database is away. Once an
/// attempt to reach it has failed, requests get their 503 at once, and one
/// background probe connects every [`PROBE_INTERVAL`] until the database
/// answers again. (No pool or circuit-breaker crate fits between
/// rocket_db_pools and sqlx; this is the whole of it.)
struct Reachability {
    down: AtomicBool,
    /// A one-off check after a connection broke under a statement.
    checking: AtomicBool,
    options: MySqlConnectOptions,
    connect_timeout: Duration,
    metrics: Arc<PoolMetrics>,
}

impl Reachability {
    fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    fn mark_down(self: &Arc<Self>, pool: &MySqlPool, reason: &dyn std::fmt::Display) {
        if self.down.swap(true, Ordering::AcqRel) {
            return;
        }
        self.metrics.set_reachable(false);
        log::warn(&format!(
            "database unreachable ({reason}): answering 503 at once until it answers again"
        ));
        let (this, pool) = (self.clone(), pool.clone());
        tokio::spawn(async move { this.probe_until_up(pool).await });
    }

    /// A pooled connection broke or a statement ran out of time: the server
    /// may have restarted (then the other pooled connections are dead too),
    /// be gone or stalled, or only be slow (a lock, a long query). One
    /// connection attempt decides, off the request path.
    fn suspect(self: &Arc<Self>, pool: &MySqlPool, reason: String) {
        if self.is_down() || self.checking.swap(true, Ordering::AcqRel) {
            return;
        }
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
                log::info(&format!(
                    "database reachable again after {:.1?}",
                    started.elapsed()
                ));
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

/// Why the pool could not start; its text is safe to log.
#[derive(Debug)]
pub struct StartupError(String);

impl std::fmt::Display for StartupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartupError {}

#[rocket::async_trait]
impl rocket_db_pools::Pool for UserPool {
    type Connection = PoolConnection<MySql>;
    type Error = StartupError;

    async fn init(figment: &Figment) -> Result<Self, Self::Error> {
        let result = start(figment).await;
        if let Err(e) = &result {
            log::error(&format!("cannot start: {e}"));
        }
        result.map_err(StartupError)
    }

    async fn get(&self) -> Result<Self::Connection, Self::Error> {
        self.pool
            .acquire()
            .await
            .map_err(|e| StartupError(e.to_string()))
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
    log::info(&format!("database ready at {}", settings.describe()));
    let metrics = Arc::new(PoolMetrics::new(pool.clone(), settings.max_connections));
    Ok(UserPool {
        pool,
        query_timeout: settings.query_timeout(),
        reachability: Arc::new(Reachability {
            down: AtomicBool::new(false),
            checking: AtomicBool::new(false),
            options,
            connect_timeout: settings.connect_timeout(),
            metrics: metrics.clone(),
        }),
        metrics,
    })
}

/// Applies the embedded migrations under a server-side lock, so replicas
/// starting together apply each migration once. sqlx 0.7 locks with
/// `GET_LOCK(name, -1)` and ignores the answer, but MariaDB takes a negative
/// timeout as "do not wait" and answers NULL at once: replicas then raced
/// into the same migration (duplicate key in `_sqlx_migrations`, an exit 1).
/// So the lock is taken here, with a real timeout, and must be granted.
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
        log::warn(&format!(
            "database at {} not reachable (attempt {attempt}): {error}; retrying in {delay:.2?}",
            settings.describe()
        ));
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    unreachable!("the attempt counter is unbounded")
}

impl UserPool {
    /// The pool's metrics, for the `/metrics` registry.
    pub fn metrics(&self) -> Arc<PoolMetrics> {
        self.metrics.clone()
    }

    /// Counts a failed call by kind on its way out.
    fn counted<T>(&self, result: Result<T, ApiError>) -> Result<T, ApiError> {
        if let Err(error) = &result {
            self.metrics.failed(error.code());
        }
        result
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

    /// Closes the connections politely once every request has finished.
    pub async fn close_after_shutdown(&self) {
        self.pool.close().await;
    }

    /// A pooled connection, and the deadline of the whole database call
    /// (the query timeout, the wait for the connection included). When this
    /// fails nothing was sent, so the client may simply retry.
    async fn connection(&self) -> Result<(PoolConnection<MySql>, Instant), ApiError> {
        let deadline = Instant::now() + self.query_timeout;
        if self.reachability.is_down() {
            return Err(ApiError::database_unavailable());
        }
        match self.acquire_by(deadline).await {
            Ok(connection) => Ok((connection, deadline)),
            Err(e) => {
                self.after_acquire_failure(&e);
                Err(e.into())
            }
        }
    }

    /// Bounds a statement once sent, by the call's deadline: a server that
    /// stalls mid-query yields a 503 too, never a hung request. Then, as
    /// when the connection drops under it, the outcome is unknown (a write
    /// may still land), and the error says so.
    async fn bounded<T>(
        &self,
        deadline: Instant,
        statement: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<Result<T, sqlx::Error>, ApiError> {
        match tokio::time::timeout_at(deadline.into(), statement).await {
            Err(_) => {
                let reason = "a statement got no answer within the query timeout".to_owned();
                self.reachability.suspect(&self.pool, reason);
                Err(ApiError::database_interrupted())
            }
            Ok(Err(e)) if ApiError::is_interruption(&e) => {
                self.reachability.suspect(&self.pool, e.to_string());
                Err(ApiError::database_interrupted())
            }
            Ok(result) => Ok(result),
        }
    }

    /// Relies on the primary key, not on a read first: of many concurrent
    /// creates of one id exactly one succeeds.
    pub async fn create(&self, user: &User) -> Result<(), ApiError> {
        self.counted(self.try_create(user).await)
    }

    async fn try_create(&self, user: &User) -> Result<(), ApiError> {
        let (mut connection, deadline) = self.connection().await?;
        let insert = sqlx::query("INSERT INTO users (userid, username) VALUES (?, ?)")
            .bind(user.userid.get())
            .bind(user.username.as_str())
            .execute(&mut *connection);
        match self.bounded(deadline, insert).await? {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(ApiError::user_exists())
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn find(&self, userid: UserId) -> Result<Option<User>, ApiError> {
        self.counted(self.try_find(userid).await)
    }

    async fn try_find(&self, userid: UserId) -> Result<Option<User>, ApiError> {
        let (mut connection, deadline) = self.connection().await?;
        let select = sqlx::query_as::<_, (u32, String)>(
            "SELECT userid, username FROM users WHERE userid = ?",
        )
        .bind(userid.get())
        .fetch_optional(&mut *connection);
        Ok(self.bounded(deadline, select).await??.map(user_from_row))
    }

    /// `false` when no such user exists.
    pub async fn rename(&self, userid: UserId, username: &UserName) -> Result<bool, ApiError> {
        self.counted(self.try_rename(userid, username).await)
    }

    async fn try_rename(&self, userid: UserId, username: &UserName) -> Result<bool, ApiError> {
        let (mut connection, deadline) = self.connection().await?;
        // The connection sets CLIENT_FOUND_ROWS: an unchanged name still
        // counts as a matched row.
        let update = sqlx::query("UPDATE users SET username = ? WHERE userid = ?")
            .bind(username.as_str())
            .bind(userid.get())
            .execute(&mut *connection);
        Ok(self.bounded(deadline, update).await??.rows_affected() > 0)
    }

    /// `false` when no such user exists.
    pub async fn delete(&self, userid: UserId) -> Result<bool, ApiError> {
        self.counted(self.try_delete(userid).await)
    }

    async fn try_delete(&self, userid: UserId) -> Result<bool, ApiError> {
        let (mut connection, deadline) = self.connection().await?;
        let delete = sqlx::query("DELETE FROM users WHERE userid = ?")
            .bind(userid.get())
            .execute(&mut *connection);
        Ok(self.bounded(deadline, delete).await??.rows_affected() > 0)
    }

    /// One page in userid order after `after`, and the cursor of the next
    /// page when there is one.
    pub async fn list(
        &self,
        after: Option<UserId>,
        size: PageSize,
    ) -> Result<(Vec<User>, Option<UserId>), ApiError> {
        self.counted(self.try_list(after, size).await)
    }

    async fn try_list(
        &self,
        after: Option<UserId>,
        size: PageSize,
    ) -> Result<(Vec<User>, Option<UserId>), ApiError> {
        let (mut connection, deadline) = self.connection().await?;
        let select = sqlx::query_as::<_, (u32, String)>(
            "SELECT userid, username FROM users WHERE userid > ? ORDER BY userid LIMIT ?",
        )
        .bind(after.map_or(0, UserId::get))
        .bind(u32::from(size.get()) + 1)
        .fetch_all(&mut *connection);
        let mut users: Vec<User> = self
            .bounded(deadline, select)
            .await??
            .into_iter()
            .map(user_from_row)
            .collect();
        let next = if users.len() > usize::from(size.get()) {
            users.truncate(size.get().into());
            users.last().map(|u| u.userid)
        } else {
            None
        };
        Ok((users, next))
    }

    /// Readiness: the database answers `SELECT 1` within `within`.
    pub async fn ping(&self, within: Duration) -> Result<(), ApiError> {
        self.counted(self.try_ping(within).await)
    }

    async fn try_ping(&self, within: Duration) -> Result<(), ApiError> {
        if self.reachability.is_down() {
            return Err(ApiError::database_unavailable());
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
                Err(ApiError::database_unavailable())
            }
            // A slow answer is not yet a lost database: requests decide that.
            Err(_) => Err(ApiError::database_unavailable()),
        }
    }
}

fn user_from_row((userid, username): (u32, String)) -> User {
    User {
        userid: UserId::from_stored(userid),
        username: UserName::from_stored(username),
    }
}
