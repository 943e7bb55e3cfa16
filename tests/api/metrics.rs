//! `GET /metrics`: real requests over TCP, then the counters read back from
//! the server's own Prometheus text output.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rocket::http::Status;
use rocket_db_pools::Database;
use serde_json::json;
use user_api::db::Db;
use user_api::error_code::ErrorCode;

use crate::helpers::{
    HttpResponse, Nginx, PoolSettings, Served, Server, TestDb, client, figment, get, post_json,
    request, serve, shared_server,
};

/// One scrape: every sample as `(name, labels) -> value`.
struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    async fn of(addr: SocketAddr) -> Scrape {
        let response = get(addr, "/metrics").await.unwrap();
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(
            response.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        Scrape::parse(&response.body)
    }

    fn parse(text: &str) -> Scrape {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let parsed = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
        Scrape(
            parsed
                .samples
                .into_iter()
                .map(|s| {
                    let value = match s.value {
                        prometheus_parse::Value::Counter(v)
                        | prometheus_parse::Value::Gauge(v)
                        | prometheus_parse::Value::Untyped(v) => v,
                        // Histograms: their `_count` and `_sum` samples
                        // carry the numbers the tests need.
                        _ => f64::NAN,
                    };
                    let labels = s
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    (s.metric, labels, value)
                })
                .collect(),
        )
    }

    /// The sum over the samples of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|(_, v)| v).sum()
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = (&'a BTreeMap<String, String>, f64)> + 'a {
        self.0
            .iter()
            .filter(move |(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, l, v)| (l, *v))
    }

    /// The value of the one sample of `name` with exactly these labels.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = self
            .matching(name, labels)
            .filter(|(l, _)| l.len() == labels.len());
        let (_, value) = found.next()?;
        assert!(found.next().is_none(), "{name} {labels:?} twice");
        Some(value)
    }

    fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut values: Vec<String> = self
            .0
            .iter()
            .filter(|(n, _, _)| n == name)
            .filter_map(|(_, l, _)| l.get(label).cloned())
            .collect();
        values.sort();
        values.dedup();
        values
    }
}

const REQUESTS: &str = "rocket_http_requests_total";
const DURATIONS: &str = "rocket_http_requests_duration_seconds_count";

fn requests(scrape: &Scrape, endpoint: &str, method: &str, status: &str) -> f64 {
    let labels = [
        ("endpoint", endpoint),
        ("method", method),
        ("status", status),
    ];
    let counted = scrape.value(REQUESTS, &labels).unwrap_or(0.0);
    // Every counted request is timed too.
    assert_eq!(
        scrape.value(DURATIONS, &labels).unwrap_or(0.0),
        counted,
        "{labels:?}"
    );
    counted
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_are_counted_by_route_template_never_by_raw_path() {
    let db = TestDb::create(shared_server()).await;
    let app = serve(figment(&db.url())).await;
    let created = post_json(app.addr, "/users", &json!({"userid": 7, "username": "Ada"}))
        .await
        .unwrap();
    assert_eq!(created.status, 201);
    for _ in 0..3 {
        assert_eq!(get(app.addr, "/users/7").await.unwrap().status, 200);
    }
    assert_eq!(get(app.addr, "/users/99").await.unwrap().status, 404);
    assert_eq!(
        get(app.addr, "/get_user?userid=7").await.unwrap().status,
        200
    );
    assert_eq!(get(app.addr, "/users?limit=5").await.unwrap().status, 200);

    let scrape = Scrape::of(app.addr).await;
    assert_eq!(requests(&scrape, "/users", "POST", "201"), 1.0);
    assert_eq!(requests(&scrape, "/users/<userid>", "GET", "200"), 3.0);
    // A route that matched and answered an error keeps its template.
    assert_eq!(requests(&scrape, "/users/<userid>", "GET", "404"), 1.0);
    assert_eq!(requests(&scrape, "/get_user?<userid>", "GET", "200"), 1.0);
    assert_eq!(
        requests(&scrape, "/users?<limit>&<after>", "GET", "200"),
        1.0
    );
    let endpoints = scrape.label_values(REQUESTS, "endpoint");
    for endpoint in &endpoints {
        assert!(
            endpoint == "unmatched"
                || (endpoint.starts_with('/') && !endpoint.contains(|c: char| c.is_ascii_digit())),
            "a raw path leaked into the label set: {endpoints:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_no_route_matched_are_counted_under_one_label() {
    let db = TestDb::create(shared_server()).await;
    let app = serve(figment(&db.url())).await;
    for target in ["/nope", "/users/1/extra", "/nope?x=1"] {
        assert_eq!(get(app.addr, target).await.unwrap().status, 404, "{target}");
    }
    for (method, target) in [("DELETE", "/users"), ("POST", "/metrics")] {
        let response = request(app.addr, method, target, &[], None).await.unwrap();
        assert_eq!(response.status, 405, "{method} {target}");
    }
    let scrape = Scrape::of(app.addr).await;
    assert_eq!(requests(&scrape, "unmatched", "GET", "404"), 3.0);
    assert_eq!(requests(&scrape, "unmatched", "DELETE", "405"), 1.0);
    assert_eq!(requests(&scrape, "unmatched", "POST", "405"), 1.0);
    let endpoints = scrape.label_values(REQUESTS, "endpoint");
    assert!(
        !endpoints
            .iter()
            .any(|e| e.contains("nope") || e.contains("extra")),
        "{endpoints:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_counted_by_code_and_every_code_has_a_series() {
    let db = TestDb::create(shared_server()).await;
    let app = serve(figment(&db.url())).await;
    let before = Scrape::of(app.addr).await;
    let codes = before.label_values("user_api_errors_total", "code");
    let mut all: Vec<String> = ErrorCode::ALL.iter().map(|c| c.to_string()).collect();
    all.sort();
    assert_eq!(codes, all);
    assert_eq!(before.sum("user_api_errors_total", &[]), 0.0);

    let body = json!({"userid": 1, "username": "x"});
    assert_eq!(
        post_json(app.addr, "/users", &body).await.unwrap().status,
        201
    );
    assert_eq!(
        post_json(app.addr, "/users", &body).await.unwrap().status,
        409
    );
    for _ in 0..2 {
        assert_eq!(get(app.addr, "/users/abc").await.unwrap().status, 400);
    }
    assert_eq!(get(app.addr, "/nope").await.unwrap().status, 404);
    let wrong = request(app.addr, "PUT", "/healthz", &[], None)
        .await
        .unwrap();
    assert_eq!(wrong.status, 405);
    let malformed = request(
        app.addr,
        "POST",
        "/users",
        &[("Content-Type", "application/json")],
        Some(b"{nope"),
    )
    .await
    .unwrap();
    assert_eq!(malformed.status, 400);

    let after = Scrape::of(app.addr).await;
    let count = |code: ErrorCode| {
        after
            .value("user_api_errors_total", &[("code", code.as_str())])
            .unwrap()
    };
    assert_eq!(count(ErrorCode::UserExists), 1.0);
    assert_eq!(count(ErrorCode::InvalidUserid), 2.0);
    assert_eq!(count(ErrorCode::NotFound), 1.0);
    assert_eq!(count(ErrorCode::MethodNotAllowed), 1.0);
    assert_eq!(count(ErrorCode::MalformedJson), 1.0);
    assert_eq!(after.sum("user_api_errors_total", &[]), 6.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn pool_gauges_and_database_failures_follow_the_database() {
    let mut server = Server::start_dedicated();
    let db = TestDb::create(&server).await;
    let query_timeout = Duration::from_secs(1);
    let app = serve(
        PoolSettings {
            max_connections: 3,
            min_connections: 1,
            connect_timeout: 1.0,
            query_timeout: 1.0,
        }
        .on(figment(&db.url())),
    )
    .await;
    for userid in 1..=5 {
        let body = json!({"userid": userid, "username": "u"});
        assert_eq!(
            post_json(app.addr, "/users", &body).await.unwrap().status,
            201
        );
    }
    // The last request's connection goes back to the pool just after its
    // answer (a task of sqlx's): let it get there.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let healthy = Scrape::of(app.addr).await;
    let gauge = |s: &Scrape, name: &str| s.value(name, &[]).unwrap_or_else(|| panic!("{name}"));
    assert_eq!(gauge(&healthy, "user_api_db_pool_max_connections"), 3.0);
    let size = gauge(&healthy, "user_api_db_pool_connections");
    let idle = gauge(&healthy, "user_api_db_pool_idle_connections");
    assert!((1.0..=3.0).contains(&size), "{size}");
    // Nothing in flight between requests: every connection is idle.
    assert_eq!(idle, size);
    assert_eq!(gauge(&healthy, "user_api_db_pool_in_use_connections"), 0.0);
    assert_eq!(gauge(&healthy, "user_api_database_reachable"), 1.0);
    assert!(gauge(&healthy, "user_api_db_pool_acquire_duration_seconds_count") >= 5.0);
    assert_eq!(
        gauge(&healthy, "user_api_db_pool_acquire_failures_total"),
        0.0
    );
    let failures = |s: &Scrape, kind: ErrorCode| {
        s.value(
            "user_api_database_failures_total",
            &[("kind", kind.as_str())],
        )
        .unwrap()
    };
    assert_eq!(failures(&healthy, ErrorCode::DatabaseUnavailable), 0.0);
    assert_eq!(failures(&healthy, ErrorCode::DatabaseInterrupted), 0.0);

    // A statement held by a table lock past the query timeout: interrupted.
    let mut admin = db.connect().await;
    sqlx::query("LOCK TABLES users WRITE")
        .execute(&mut admin)
        .await
        .unwrap();
    let body = json!({"userid": 6, "username": "held"});
    let held = post_json(app.addr, "/users", &body).await.unwrap();
    assert_eq!(held.status, 503);
    assert_eq!(held.error_code(), "database_interrupted");
    let during = Scrape::of(app.addr).await;
    assert_eq!(failures(&during, ErrorCode::DatabaseInterrupted), 1.0);
    sqlx::query("UNLOCK TABLES")
        .execute(&mut admin)
        .await
        .unwrap();
    drop(admin);

    // The database stops: unavailable, counted, and known to be down.
    server.stop();
    let mut unavailable = 0;
    for _ in 0..3 {
        let response = get(app.addr, "/users/1").await.unwrap();
        assert_eq!(response.status, 503, "{}", response.body);
        if response.error_code() == "database_unavailable" {
            unavailable += 1;
        }
    }
    let down = Scrape::of(app.addr).await;
    // (Whether an acquire failed too depends on timing: a pooled connection
    // used within the last second is not pinged, so the first request may
    // find the server gone through it, and the API knows before any
    // acquire is tried.)
    assert_eq!(gauge(&down, "user_api_database_reachable"), 0.0);
    assert!(failures(&down, ErrorCode::DatabaseUnavailable) >= f64::from(unavailable));
    assert!(unavailable >= 2, "{unavailable}");
    assert_eq!(
        failures(&down, ErrorCode::DatabaseUnavailable)
            + failures(&down, ErrorCode::DatabaseInterrupted),
        down.value("user_api_errors_total", &[("code", "database_unavailable")])
            .unwrap()
            + down
                .value("user_api_errors_total", &[("code", "database_interrupted")])
                .unwrap(),
        "each failed call is one error answer"
    );

    // Back: the gauge says so once the background probe got through.
    server.resume();
    let deadline = Instant::now() + Duration::from_secs(20) + query_timeout;
    loop {
        let scrape = Scrape::of(app.addr).await;
        if gauge(&scrape, "user_api_database_reachable") == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "still unreachable");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And service with it: the pooled connections that died with the
    // server are pinged (idle > 1 s) and replaced, each new one within the
    // 1 s connect timeout; on a loaded machine one of those can run out
    // (a JSON 503, never anything else), so service is given a few tries.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let response = get(app.addr, "/users/1").await.unwrap();
        if response.status == 200 {
            break;
        }
        assert_eq!(response.status, 503, "{}", response.body);
        assert!(
            response.error_code().starts_with("database_"),
            "{}",
            response.body
        );
        assert!(
            Instant::now() < deadline,
            "no service 5 s after the database was back: {}",
            response.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `user_api_db_pool_acquire_waits_total` counts the acquisitions that
/// found no idle connection: none for requests one after another (the pool
/// lends the one it has), one for a request that must wait while the only
/// connection is held.
#[tokio::test(flavor = "multi_thread")]
async fn waits_for_a_connection_are_counted_and_only_those() {
    const WAITS: &str = "user_api_db_pool_acquire_waits_total";
    let db = TestDb::create(shared_server()).await;
    let app = one_connection_app(&db, 60.0, 60.0).await;
    let waits = |s: &Scrape| s.value(WAITS, &[]).unwrap_or_else(|| panic!("{WAITS}"));
    // The first request may have to wait for the first connection.
    assert_eq!(get(app.addr, "/users/1").await.unwrap().status, 404);
    let first = waits(&Scrape::of(app.addr).await);
    for _ in 0..5 {
        // A connection goes back to the pool just after the answer: give it
        // time to be idle again (a request right behind it would wait).
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(get(app.addr, "/users/1").await.unwrap().status, 404);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sequential = waits(&Scrape::of(app.addr).await);
    // All five if every acquisition were counted; leeway for a scheduler
    // that delays a connection's return past the pause.
    assert!(sequential <= first + 2.0, "{first} then {sequential}");

    // The only connection held by a request blocked on a table lock: the
    // next request waits for it.
    let (mut admin, holder) = hold_the_only_connection(&db, app.addr, "/users/2").await;
    let addr = app.addr;
    // (The holder's own acquisition may have waited for the connection's
    // return, see above.) A wait is counted once it is over.
    let before = waits(&Scrape::of(app.addr).await);
    let waiter = tokio::spawn(async move { get(addr, "/users/3").await.unwrap() });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "the second request did not wait");
    sqlx::query("UNLOCK TABLES")
        .execute(&mut admin)
        .await
        .unwrap();
    assert_eq!(holder.await.unwrap().status, 404);
    assert_eq!(waiter.await.unwrap().status, 404);
    assert_eq!(waits(&Scrape::of(app.addr).await), before + 1.0);
}

/// The API on a pool of exactly one connection, with these acquire (connect)
/// and query timeouts in seconds.
async fn one_connection_app(db: &TestDb, connect_timeout: f64, query_timeout: f64) -> Served {
    serve(
        PoolSettings {
            max_connections: 1,
            min_connections: 1,
            connect_timeout,
            query_timeout,
        }
        .on(figment(&db.url())),
    )
    .await
}

/// `LOCK TABLES users WRITE` from an admin session, then a `GET path` that
/// blocks on it, holding the pool's only connection; returns the admin session
/// (to `UNLOCK TABLES`) and the blocked request.
async fn hold_the_only_connection(
    db: &TestDb,
    addr: SocketAddr,
    path: &'static str,
) -> (
    sqlx::mysql::MySqlConnection,
    tokio::task::JoinHandle<HttpResponse>,
) {
    let mut admin = db.connect().await;
    sqlx::query("LOCK TABLES users WRITE")
        .execute(&mut admin)
        .await
        .unwrap();
    let holder = tokio::spawn(async move { get(addr, path).await.unwrap() });
    db.wait_for_running("SELECT userid, username, version FROM users")
        .await;
    (admin, holder)
}

/// A pool whose every connection is lent out and busy (here: held by a
/// request blocked on a table lock) times a request out, 503, but the
/// database answers: the API must not take it for down (which would answer
/// every request 503 at once until a probe got through).
#[tokio::test(flavor = "multi_thread")]
async fn a_saturated_pool_is_not_taken_for_a_database_that_is_down() {
    let db = TestDb::create(shared_server()).await;
    let app = one_connection_app(&db, 1.0, 10.0).await;
    assert_eq!(get(app.addr, "/users/1").await.unwrap().status, 404);
    let (mut admin, holder) = hold_the_only_connection(&db, app.addr, "/users/1").await;
    // No connection within the acquire timeout (1 s).
    let starved = get(app.addr, "/users/2").await.unwrap();
    assert_eq!(starved.status, 503, "{}", starved.body);
    assert_eq!(starved.error_code(), "database_unavailable");
    // Readiness waits 1 s for a connection, and does not conclude either.
    let unready = get(app.addr, "/readyz").await.unwrap();
    assert_eq!(unready.status, 503, "{}", unready.body);
    // Marked down, the gauge would read 0 until a probe 250 ms later.
    let scrape = Scrape::of(app.addr).await;
    assert_eq!(scrape.value("user_api_database_reachable", &[]), Some(1.0));
    sqlx::query("UNLOCK TABLES")
        .execute(&mut admin)
        .await
        .unwrap();
    assert_eq!(holder.await.unwrap().status, 404);
    assert_eq!(get(app.addr, "/users/2").await.unwrap().status, 404);
}

/// The other side of the test above: a pool with room for another
/// connection that cannot lend one within the acquire timeout (its idle
/// connection's ping, then any new connection, get no answer from a stalled
/// server) has found the database unreachable. It is marked down at once,
/// before the 503 goes out: the next request is refused without waiting.
#[tokio::test(flavor = "multi_thread")]
async fn a_pool_that_cannot_connect_finds_the_database_down_at_once() {
    let mut server = Server::start_dedicated();
    let db = TestDb::create(&server).await;
    let app = serve(
        PoolSettings {
            max_connections: 2,
            min_connections: 0,
            connect_timeout: 1.0,
            query_timeout: 10.0,
        }
        .on(figment(&db.url())),
    )
    .await;
    assert_eq!(get(app.addr, "/users/1").await.unwrap().status, 404);
    // Idle past the ping threshold (1 s): the next acquire pings it first.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    tokio::task::block_in_place(|| server.pause());
    // Everything is asserted once the server runs again: a paused server
    // left behind would hang the test's cleanup.
    let starved = get(app.addr, "/users/1").await.unwrap();
    let reachable = Scrape::of(app.addr)
        .await
        .value("user_api_database_reachable", &[]);
    let asked = Instant::now();
    let refused = get(app.addr, "/users/2").await.unwrap();
    let refused_in = asked.elapsed();
    tokio::task::block_in_place(|| server.unpause());
    assert_eq!(starved.status, 503, "{}", starved.body);
    assert_eq!(starved.error_code(), "database_unavailable");
    // A check in the background would still be waiting for its connection.
    assert_eq!(reachable, Some(0.0));
    assert_eq!(refused.error_code(), "database_unavailable");
    // Not another acquire timeout (1 s).
    assert!(refused_in < Duration::from_millis(500), "{refused_in:?}");
}

/// A closed pool (the server is stopping) is not a database that is down:
/// a request that still arrives gets its 503, and the API does not report
/// the database unreachable (a false alert at every stop).
#[rocket::async_test]
async fn a_closed_pool_is_not_taken_for_a_database_that_is_down() {
    let db = TestDb::create(shared_server()).await;
    let client = client(&db).await;
    let pool = Db::fetch(client.rocket()).expect("the database fairing");
    pool.close_after_shutdown().await;
    let response = client.get("/users/1").dispatch().await;
    assert_eq!(response.status(), Status::ServiceUnavailable);
    let body: serde_json::Value = response.into_json().await.unwrap();
    assert_eq!(body["error"], "database_unavailable");
    let metrics = client.get("/metrics").dispatch().await;
    let scrape = Scrape::parse(&metrics.into_string().await.unwrap());
    assert_eq!(scrape.value("user_api_database_reachable", &[]), Some(1.0));
}

/// One statement left unanswered by a stalled database is enough: a
/// background check (one connection attempt, bounded by the connect
/// timeout) finds the database gone and the API answers 503 at once from
/// then on, without waiting for other requests to find out. When the
/// database answers again, so does the API.
#[tokio::test(flavor = "multi_thread")]
async fn one_unanswered_statement_is_enough_to_find_a_stalled_database_down() {
    let mut server = Server::start_dedicated();
    let db = TestDb::create(&server).await;
    // One connection, so the request below gets the one just used, which
    // is not pinged first (used within the last second).
    let app = one_connection_app(&db, 1.0, 1.0).await;
    let reachable = |s: &Scrape| s.value("user_api_database_reachable", &[]);
    let body = json!({"userid": 1, "username": "before"});
    assert_eq!(
        post_json(app.addr, "/users", &body).await.unwrap().status,
        201
    );
    // sqlx pings a connection on its way back to the pool: paused before
    // that, the request below would wait for the connection, not the
    // statement.
    let back = Instant::now() + Duration::from_secs(10);
    while Scrape::of(app.addr)
        .await
        .value("user_api_db_pool_idle_connections", &[])
        != Some(1.0)
    {
        assert!(Instant::now() < back, "the connection never went back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::task::block_in_place(|| server.pause());
    // Everything is asserted once the server runs again: a paused server
    // left behind would hang the test's cleanup.
    let stalled = get(app.addr, "/users/1").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut found_down = false;
    while Instant::now() < deadline {
        if reachable(&Scrape::of(app.addr).await) == Some(0.0) {
            found_down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = get(app.addr, "/users/1").await.unwrap();
    tokio::task::block_in_place(|| server.unpause());
    assert_eq!(stalled.status, 503, "{}", stalled.body);
    assert_eq!(stalled.error_code(), "database_interrupted");
    assert!(
        found_down,
        "still taken for reachable 10 s after a stalled statement"
    );
    assert_eq!(refused.error_code(), "database_unavailable");

    let deadline = Instant::now() + Duration::from_secs(10);
    while reachable(&Scrape::of(app.addr).await) != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "still down 10 s after the database answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(app.addr, "/users/1").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn build_info_and_process_metrics_are_exported() {
    let db = TestDb::create(shared_server()).await;
    let app = serve(figment(&db.url())).await;
    let scrape = Scrape::of(app.addr).await;
    assert_eq!(
        scrape.value(
            "user_api_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("revision", user_api::metrics::REVISION)
            ]
        ),
        Some(1.0)
    );
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        let value = scrape.value(name, &[]).unwrap_or_else(|| panic!("{name}"));
        assert!(value > 0.0, "{name} {value}");
    }
    assert!(scrape.value("process_cpu_seconds_total", &[]).is_some());
    // The scrape counts itself, by its template.
    let again = Scrape::of(app.addr).await;
    assert!(requests(&again, "/metrics", "GET", "200") >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_can_be_turned_off_and_the_proxy_never_serves_them() {
    let db = TestDb::create(shared_server()).await;
    let off = serve(figment(&db.url()).merge(("metrics", false))).await;
    let response = get(off.addr, "/metrics").await.unwrap();
    assert_eq!(response.status, 404);
    assert_eq!(response.error_code(), "not_found");
    assert_eq!(get(off.addr, "/healthz").await.unwrap().status, 200);

    let on = serve(figment(&db.url())).await;
    let nginx = Nginx::start(on.addr, &[]);
    let hidden = get(nginx.public, "/metrics").await.unwrap();
    assert_eq!(hidden.status, 404);
    assert!(
        !hidden.body.contains("rocket_http_requests"),
        "{}",
        hidden.body
    );
    // The API itself does serve them, and never saw the proxied request.
    let scrape = Scrape::of(on.addr).await;
    assert_eq!(requests(&scrape, "/metrics", "GET", "200"), 0.0);
}
