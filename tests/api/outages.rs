//! The bounds the README promises while the database is away, with the
//! default timeouts: every request answered, a JSON 503 within 3.5 s, within
//! 0.1 s once the API knows the database is down, and service back within
//! 5 s of the database answering again. (Correctness bounds with a wide
//! margin, not speed targets: a refused request here takes about 1 ms.)

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{
    CountingProxy, HttpResponse, PoolSettings, Served, Server, TestDb, figment, get, post_json,
    request, serve, shared_server,
};

const FIRST_ANSWER: Duration = Duration::from_millis(3500);
const KNOWN_DOWN_ANSWER: Duration = Duration::from_millis(100);
const RECOVERY: Duration = Duration::from_secs(5);

enum Outage {
    Stopped,
    Crashed,
    Stalled,
}

async fn timed<F: Future<Output = std::io::Result<HttpResponse>>>(
    what: &str,
    call: F,
) -> (HttpResponse, Duration) {
    let asked = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer in 30 s"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    (response, asked.elapsed())
}

fn assert_database_503(what: &str, response: &HttpResponse, took: Duration, bound: Duration) {
    assert_eq!(response.status, 503, "{what}: {}", response.body);
    let code = response.error_code();
    assert!(
        code == "database_unavailable" || code == "database_interrupted",
        "{what}: {code}"
    );
    assert!(response.header("retry-after").is_some(), "{what}");
    assert!(took <= bound, "{what} took {took:?}, more than {bound:?}");
}

async fn create(addr: SocketAddr, userid: u32, name: &str) -> (HttpResponse, Duration) {
    let body = json!({"userid": userid, "username": name});
    timed(
        &format!("POST /users {userid}"),
        post_json(addr, "/users", &body),
    )
    .await
}

async fn drive(outage: Outage) {
    let mut server = Server::start_dedicated();
    let db = TestDb::create(&server).await;
    let app = serve(figment(&db.url())).await;
    let (created, _) = create(app.addr, 1, "before").await;
    assert_eq!(created.status, 201, "{}", created.body);

    match outage {
        Outage::Stopped => tokio::task::block_in_place(|| server.stop()),
        Outage::Crashed => tokio::task::block_in_place(|| server.crash()),
        Outage::Stalled => tokio::task::block_in_place(|| server.pause()),
    }

    // Every call is answered within the bound of a whole database call:
    // the first ones find out (a dead pooled connection fails its
    // statement, a refused connection is retried until the acquire
    // timeout, a stalled server is waited for until the query timeout).
    // Once the API has said `database_unavailable` it knows, and every
    // kind of call is refused at once.
    let mut known_down = false;
    let mut observe = |what: String, (response, took): (HttpResponse, Duration)| {
        let bound = if known_down {
            KNOWN_DOWN_ANSWER
        } else {
            FIRST_ANSWER
        };
        assert_database_503(&what, &response, took, bound);
        known_down |= response.error_code() == "database_unavailable";
    };
    for round in 0..10u32 {
        let read = timed("GET /users/1", get(app.addr, "/users/1")).await;
        observe(format!("read {round}"), read);
        let write = create(app.addr, 100 + round, "during").await;
        observe(format!("write {round}"), write);
        let ready = timed("GET /readyz", get(app.addr, "/readyz")).await;
        observe(format!("/readyz {round}"), ready);
    }
    assert!(
        known_down,
        "the API never concluded that the database is down"
    );
    let (live, _) = timed("GET /healthz", get(app.addr, "/healthz")).await;
    assert_eq!(live.status, 200, "liveness ignores the database");

    // `resume` returns once the server accepts connections again.
    match outage {
        Outage::Stalled => tokio::task::block_in_place(|| server.unpause()),
        _ => tokio::task::block_in_place(|| server.resume()),
    }
    let back = Instant::now();
    let mut userid = 1000;
    loop {
        userid += 1;
        let (response, took) = create(app.addr, userid, "after").await;
        if response.status == 201 {
            break;
        }
        assert_database_503("a write while recovering", &response, took, FIRST_ANSWER);
        assert!(
            back.elapsed() < RECOVERY,
            "no service {:?} after the database was back: {}",
            back.elapsed(),
            response.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        back.elapsed() < RECOVERY,
        "recovery took {:?}",
        back.elapsed()
    );
    assert_eq!(db.stored_name(1).await.as_deref(), Some("before"));
    assert_eq!(db.stored_name(userid).await.as_deref(), Some("after"));
    // Writes refused as `database_unavailable` were never sent; the others
    // may or may not have landed, which is what their answer says.
    drop(app);
    drop(db);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_database_is_a_fast_503_and_service_returns_when_it_does() {
    drive(Outage::Stopped).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_database_is_a_fast_503_and_service_returns_when_it_does() {
    drive(Outage::Crashed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_database_is_a_503_within_the_query_timeout() {
    drive(Outage::Stalled).await;
}

/// The app with user 1 stored, and a query timeout far beyond what the
/// tests below take, even under load.
async fn with_user_1(db: &TestDb) -> Served {
    let app = serve(figment(&db.url()).merge(("databases.users.query_timeout", 60.0))).await;
    let (created, _) = create(app.addr, 1, "before").await;
    assert_eq!(created.status, 201, "{}", created.body);
    app
}

async fn rename_user_1(addr: SocketAddr) -> (HttpResponse, Duration) {
    let body = br#"{"username":"after"}"#;
    let headers = [("Content-Type", "application/json")];
    timed(
        "PUT /users/1",
        request(addr, "PUT", "/users/1", &headers, Some(body)),
    )
    .await
}

/// The rename was answered `database_interrupted` ("a write may have
/// landed: read before retrying"), not `database_unavailable` ("nothing was
/// sent"); the killed statement was rolled back, and the pool serves on.
async fn assert_interrupted_and_served_on(db: &TestDb, app: &Served, response: HttpResponse) {
    assert_eq!(response.status, 503, "{}", response.body);
    assert_eq!(response.error_code(), "database_interrupted");
    assert_eq!(response.header("retry-after"), Some("1"));
    assert_eq!(db.stored_name(1).await.as_deref(), Some("before"));
    let (read, _) = timed("GET /users/1", get(app.addr, "/users/1")).await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.json()["username"], "before");
}

/// An admin kills the API's connection while its `UPDATE` waits on a row
/// lock. MariaDB closes the socket without an error packet (sqlx reports an
/// I/O error, "expected to read 4 bytes, got 0 bytes at EOF").
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_killed_under_a_statement_is_database_interrupted() {
    let db = TestDb::create(shared_server()).await;
    let app = with_user_1(&db).await;
    let mut holder = db.connect().await;
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT username FROM users WHERE userid = 1 FOR UPDATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let rename = tokio::spawn(rename_user_1(app.addr));

    // The API's connection, while its UPDATE waits for the lock.
    let mut admin = db.connect().await;
    let waited = Instant::now();
    let id: i64 = loop {
        let waiting: Option<i64> = sqlx::query_scalar(
            "SELECT ID FROM information_schema.PROCESSLIST \
             WHERE DB = ? AND INFO LIKE 'UPDATE users%'",
        )
        .bind(&db.name)
        .fetch_optional(&mut admin)
        .await
        .unwrap();
        if let Some(id) = waiting {
            break id;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "the API's UPDATE never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    sqlx::query(&format!("KILL CONNECTION {id}"))
        .execute(&mut admin)
        .await
        .unwrap();

    let (response, _) = rename.await.unwrap();
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    assert_interrupted_and_served_on(&db, &app, response).await;
}

/// The server itself ends the API's connection in the middle of its
/// `UPDATE` (a trigger that kills its own connection): then MariaDB does
/// answer the statement, with error 1927 "Connection was killed", before it
/// closes the socket: `database_interrupted` too (`ApiError::is_interruption`
/// reads the error number), not the `database_unavailable` a transient
/// server error gets when nothing was sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_error_1927_under_a_statement_is_database_interrupted() {
    let db = TestDb::create(shared_server()).await;
    let app = with_user_1(&db).await;
    sqlx::query("CREATE TRIGGER killer BEFORE UPDATE ON users FOR EACH ROW KILL CONNECTION_ID()")
        .execute(&mut db.connect().await)
        .await
        .unwrap();
    let (response, _) = rename_user_1(app.addr).await;
    sqlx::query("DROP TRIGGER killer")
        .execute(&mut db.connect().await)
        .await
        .unwrap();
    assert_interrupted_and_served_on(&db, &app, response).await;
}

/// A pooled connection idle for a second or more is pinged before it is
/// lent (src/db/mod.rs): after a database restart the API has not noticed, the
/// dead connections are replaced and the request is served, not a 503.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_restart_idle_connections_are_replaced_before_use() {
    let mut server = Server::start_dedicated();
    let db = TestDb::create(&server).await;
    let app = serve(figment(&db.url())).await;
    let (created, _) = create(app.addr, 1, "before").await;
    assert_eq!(created.status, 201, "{}", created.body);
    tokio::task::block_in_place(|| {
        server.stop();
        server.resume();
    });
    // Idle for longer than the ping threshold, however fast the restart.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (read, _) = timed("GET /users/1", get(app.addr, "/users/1")).await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.json()["username"], "before");
}

/// `idle_timeout`: the pool closes a connection unused for that long.
#[tokio::test(flavor = "multi_thread")]
async fn connections_idle_past_the_idle_timeout_are_closed() {
    let db = TestDb::create(shared_server()).await;
    let app = serve(
        figment(&db.url())
            .merge(("databases.users.min_connections", 0))
            .merge(("databases.users.idle_timeout", 1.0)),
    )
    .await;
    let (read, _) = timed("GET /users/1", get(app.addr, "/users/1")).await;
    assert_eq!(read.status, 404, "{}", read.body);
    let before = db.open_connections().await;
    assert!(before >= 1, "the API holds no connection");
    db.wait_until_no_connections(Duration::from_secs(15), "their last use")
        .await;
}

/// Statements that time out together raise one suspicion each, but one
/// connection attempt answers them all (`Reachability::suspect`): the
/// others return while that check runs. A check per statement would add
/// connection attempts to a struggling server, one per request.
#[tokio::test(flavor = "multi_thread")]
async fn statements_timing_out_together_start_one_reachability_check() {
    const STATEMENTS: usize = 4;
    let server = Server::start_dedicated();
    let db = TestDb::create(&server).await;
    let proxy = CountingProxy::start(SocketAddr::from(([127, 0, 0, 1], server.port))).await;
    let app = serve(
        PoolSettings {
            max_connections: STATEMENTS as u32,
            // No replacement connections to blur the count.
            min_connections: 0,
            // The check hangs on the held connection for that long.
            connect_timeout: 20.0,
            query_timeout: 1.0,
        }
        .on(figment(&format!("mysql://root@{}/{}", proxy.addr, db.name))),
    )
    .await;
    let mut admin = db.connect().await;
    sqlx::query("LOCK TABLES users WRITE")
        .execute(&mut admin)
        .await
        .unwrap();
    let reads: Vec<_> = (0..STATEMENTS)
        .map(|_| tokio::spawn(timed("GET /users/1", get(app.addr, "/users/1"))))
        .collect();
    db.wait_for_running_times(
        "SELECT userid, username, version FROM users",
        STATEMENTS as i64,
    )
    .await;
    // From here a new connection gets no answer: a check stays running.
    proxy.hold();
    let before = proxy.accepted();
    for read in reads {
        let (response, _) = read.await.unwrap();
        assert_eq!(response.status, 503, "{}", response.body);
        assert_eq!(response.error_code(), "database_interrupted");
    }
    let waited = Instant::now();
    while proxy.accepted() == before {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "no reachability check after {STATEMENTS} timed-out statements"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every check is counted before it is spawned, and spawned before its
    // request's answer: with every answer in, the count is final.
    let scrape = get(app.addr, "/metrics").await.unwrap();
    let checks: Vec<f64> = scrape
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("user_api_database_checks_total "))
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(checks, [1.0], "one check, not one per statement");
    sqlx::query("UNLOCK TABLES")
        .execute(&mut admin)
        .await
        .unwrap();
}
