//! The real binary: startup before the database, outage and recovery,
//! graceful stop, secrets handling, the healthcheck subcommand, JSON logs.

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::Connection;
use sqlx::mysql::MySqlConnection;

use crate::helpers::{
    ApiProcess, HttpResponse, Server, TestDb, figment, free_port, get, post_json, request,
    secret_file, serve, shared_server,
};

#[tokio::test(flavor = "multi_thread")]
async fn startup_waits_for_a_late_database() {
    let mut server = Server::prepare();
    let port = server.port;
    let url = format!("mysql://root@127.0.0.1:{port}/mysql");
    let mut api = ApiProcess::spawn(&[("DATABASE_URL", &url)]);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        get(api.addr(), "/healthz").await.is_err(),
        "it must not serve before its database"
    );
    server.resume();

    api.wait_healthy(Duration::from_secs(30)).await;
    let logs = api.logs();
    assert!(logs.contains("database not reachable; retrying"), "{logs}");
    // The retries back off, doubling from 250 ms (up to 5 s).
    for (attempt, delay) in [(1, 250), (2, 500)] {
        let line = logs
            .lines()
            .find(|l| l.contains(&format!(" attempt={attempt} ")))
            .unwrap_or_else(|| panic!("no attempt {attempt} in {logs}"));
        assert!(line.ends_with(&format!(" retry_in_ms={delay}")), "{line}");
    }
    assert!(logs.contains("database ready"), "{logs}");
    let ready = get(api.addr(), "/readyz").await.unwrap();
    assert_eq!(ready.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_gives_up_at_the_deadline_with_a_clear_message() {
    let port = free_port();
    let url = format!("mysql://root@127.0.0.1:{port}/nothing");
    let started = Instant::now();
    // Rocket's own records on, for the line rocket_db_pools writes.
    let mut api = ApiProcess::spawn(&[
        ("DATABASE_URL", &url),
        ("DATABASE_STARTUP_TIMEOUT", "1.5"),
        ("ROCKET_LOG_LEVEL", "critical"),
    ]);
    let code = api.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(code, Some(1), "{}", api.logs());
    assert!(started.elapsed() < Duration::from_secs(15));
    let logs = api.logs();
    assert!(
        logs.contains(&format!(
            "database at 127.0.0.1:{port}/nothing not reachable after"
        )),
        "{logs}"
    );
    assert!(!logs.contains("panicked"), "{logs}");
    // rocket_db_pools reports the failed pool with the error's text (the
    // `PoolError`'s): the reason must be there too, not an empty one.
    let reported = logs
        .lines()
        .find(|l| l.contains("failed to initialize database"))
        .unwrap_or_else(|| panic!("Rocket did not report the pool: {logs}"));
    assert!(
        reported.contains(&format!(
            "database at 127.0.0.1:{port}/nothing not reachable after"
        )),
        "{reported}"
    );
    // It gives up once the next retry would end past the deadline, not
    // after: the time it logs (from its first attempt) stays within 1.5 s
    // plus a margin for a loaded machine.
    let took = logs
        .split_once(" attempts in ")
        .and_then(|(_, rest)| rest.split_once(':'))
        .map(|(took, _)| took)
        .unwrap_or_else(|| panic!("no time in {logs}"));
    let seconds = match took.strip_suffix("ms") {
        Some(ms) => ms.parse::<f64>().unwrap() / 1000.0,
        None => took.strip_suffix('s').unwrap().parse::<f64>().unwrap(),
    };
    assert!(seconds <= 2.5, "gave up after {took}: {logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_outage_gives_503_then_recovers_by_itself() {
    let mut server = Server::start_dedicated();
    let db = TestDb::create(&server).await;
    let app = serve(figment(&db.url()).merge(("databases.users.connect_timeout", 1))).await;
    let created = post_json(
        app.addr,
        "/users",
        &json!({"userid": 1, "username": "before"}),
    )
    .await
    .unwrap();
    assert_eq!(created.status, 201);

    server.stop();
    for (target, codes) in [
        // A pooled connection used within the last second is not pinged
        // first (src/db/mod.rs): the first statement may find it dead, after
        // it was sent, and say so. Then the API knows the database is down.
        (
            "/users/1",
            &["database_interrupted", "database_unavailable"][..],
        ),
        ("/readyz", &["database_unavailable"][..]),
    ] {
        let asked = Instant::now();
        let response = get(app.addr, target).await.unwrap();
        assert_eq!(response.status, 503, "{target}: {}", response.body);
        let code = response.error_code();
        assert!(codes.contains(&code.as_str()), "{target}: {code}");
        assert_eq!(response.header("retry-after"), Some("1"));
        assert!(
            asked.elapsed() < Duration::from_secs(4),
            "{target} took {:?}",
            asked.elapsed()
        );
    }
    let write = post_json(
        app.addr,
        "/users",
        &json!({"userid": 2, "username": "during"}),
    )
    .await
    .unwrap();
    assert_eq!(write.status, 503);
    assert_eq!(
        get(app.addr, "/healthz").await.unwrap().status,
        200,
        "liveness ignores the database"
    );

    server.resume();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ready = get(app.addr, "/readyz").await.unwrap();
        if ready.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not ready again: {}", ready.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = post_json(
        app.addr,
        "/users",
        &json!({"userid": 3, "username": "after"}),
    )
    .await
    .unwrap();
    assert_eq!(after.status, 201, "{}", after.body);
    assert_eq!(db.stored_name(1).await.as_deref(), Some("before"));
    assert_eq!(
        db.stored_name(2).await,
        None,
        "a refused write is not stored"
    );
    drop(app);
    drop(db);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_requests_in_flight_then_exits_0() {
    let db = TestDb::create(shared_server()).await;
    let mut api = ApiProcess::spawn(&[("DATABASE_URL", &db.url())]);
    api.wait_healthy(Duration::from_secs(30)).await;

    let (mut blocker, in_flight) = sigterm_while_a_write_waits(&api, &db, 77, "late").await;
    let addr = api.addr();
    // The write goes on only once the API is shutting down.
    api.wait_for_log(
        "shutting down: finishing requests in flight",
        Duration::from_secs(10),
    )
    .await;
    sqlx::query("UNLOCK TABLES")
        .execute(&mut blocker)
        .await
        .unwrap();

    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status, 201, "{}", response.body);
    assert_eq!(
        api.wait_exit(Duration::from_secs(15)).await,
        Some(0),
        "{}",
        api.logs()
    );
    assert_eq!(db.stored_name(77).await.as_deref(), Some("late"));
    assert!(
        get(addr, "/healthz").await.is_err(),
        "nothing listens after the stop"
    );
    // exit_linger is 0 by default: no linger, not even a word of it.
    assert!(!api.logs().contains("exit_linger"), "{}", api.logs());
}

/// A write held past Rocket's own shutdown wait (grace + mercy + 1 s; here
/// a table lock, and a query timeout longer than that wait), SIGTERM sent.
/// Rocket 0.5.2 then gives up and returns from `launch()` with the request
/// still in flight, as it does when it loses its shutdown race.
async fn a_write_held_past_rockets_shutdown_wait(db: &TestDb) -> (ApiProcess, MySqlConnection) {
    let url = db.url();
    let mut api = ApiProcess::spawn(&[
        ("DATABASE_URL", url.as_str()),
        ("DATABASE_QUERY_TIMEOUT", "60"),
        // Rocket waits 2 + 0 + 1 = 3 s, and so does the API after it.
        ("ROCKET_SHUTDOWN", "{grace=2,mercy=0}"),
    ]);
    api.wait_healthy(Duration::from_secs(30)).await;
    // Its client is cut off at the end of the grace period: only the write
    // itself is checked.
    let (blocker, _client) = sigterm_while_a_write_waits(&api, db, 78, "later").await;
    (api, blocker)
}

/// Holds the users table (the returned session: `UNLOCK TABLES` lets the
/// write go on), sends a create that waits for it, then SIGTERM.
async fn sigterm_while_a_write_waits(
    api: &ApiProcess,
    db: &TestDb,
    userid: u32,
    username: &str,
) -> (
    MySqlConnection,
    tokio::task::JoinHandle<std::io::Result<HttpResponse>>,
) {
    let mut blocker = db.connect().await;
    sqlx::query("LOCK TABLES users WRITE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let addr = api.addr();
    let body = json!({"userid": userid, "username": username});
    let in_flight = tokio::spawn(async move { post_json(addr, "/users", &body).await });
    // SIGTERM only once the write waits on the lock: in flight, for certain.
    db.wait_for_running("INSERT").await;
    api.terminate();
    (blocker, in_flight)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_that_outlives_rockets_shutdown_wait_is_still_finished_then_exits_0() {
    let db = TestDb::create(shared_server()).await;
    let (mut api, mut blocker) = a_write_held_past_rockets_shutdown_wait(&db).await;
    api.wait_for_log(
        "shutting down: waiting for the requests still in flight",
        Duration::from_secs(30),
    )
    .await;
    sqlx::query("UNLOCK TABLES")
        .execute(&mut blocker)
        .await
        .unwrap();
    assert_eq!(
        api.wait_exit(Duration::from_secs(15)).await,
        Some(0),
        "{}",
        api.logs()
    );
    assert_eq!(db.stored_name(78).await.as_deref(), Some("later"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_still_held_after_the_apis_own_wait_is_abandoned_with_exit_1() {
    let db = TestDb::create(shared_server()).await;
    let (mut api, blocker) = a_write_held_past_rockets_shutdown_wait(&db).await;
    let code = api.wait_exit(Duration::from_secs(30)).await;
    drop(blocker);
    let logs = api.logs();
    assert_eq!(code, Some(1), "{logs}");
    assert!(
        logs.contains("stopped reason=abandoned the requests still in flight after waiting 3 s"),
        "{logs}"
    );
}

/// A server that cannot start says why on its last line, and exits 1: the
/// port is taken, or Rocket refuses a setting (read after the database
/// fairing, so the database is there).
#[tokio::test(flavor = "multi_thread")]
async fn a_taken_port_or_a_refused_setting_stops_it_with_the_reason() {
    let db = TestDb::create(shared_server()).await;
    let url = db.url();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port().to_string();
    for (setting, value, reason) in [
        (
            "ROCKET_PORT",
            taken_port.as_str(),
            "stopped reason=cannot listen: ",
        ),
        (
            "ROCKET_KEEP_ALIVE",
            "forever",
            "stopped reason=invalid configuration: ",
        ),
    ] {
        let mut api = ApiProcess::spawn(&[("DATABASE_URL", url.as_str()), (setting, value)]);
        let code = api.wait_exit(Duration::from_secs(30)).await;
        let logs = api.logs();
        assert_eq!(code, Some(1), "{setting}={value}: {logs}");
        let last = logs.lines().last().unwrap_or_default();
        assert!(
            last.contains(reason) && last.len() > last.find(reason).unwrap() + reason.len(),
            "{setting}={value}: the last line gives no reason: {logs}"
        );
    }
}

/// After a stop the pool's connections are closed politely (`COM_QUIT`),
/// not dropped with the process: the server counts a connection dropped
/// without one as an aborted client. A server of its own, so that no other
/// test's connections move the count.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_closes_the_database_connections_politely() {
    let server = Server::start_dedicated();
    let db = TestDb::create(&server).await;
    let mut api = ApiProcess::spawn(&[("DATABASE_URL", &db.url())]);
    api.wait_healthy(Duration::from_secs(30)).await;
    let created = post_json(api.addr(), "/users", &json!({"userid": 5, "username": "a"}))
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{}", created.body);

    let mut admin = MySqlConnection::connect(&server.admin_url()).await.unwrap();
    const ABORTED: &str = "SHOW GLOBAL STATUS LIKE 'Aborted_clients'";
    let open = db.open_connections().await;
    assert!(open >= 1, "the API holds no connection");
    let (_, before): (String, String) =
        sqlx::query_as(ABORTED).fetch_one(&mut admin).await.unwrap();

    api.terminate();
    assert_eq!(
        api.wait_exit(Duration::from_secs(15)).await,
        Some(0),
        "{}",
        api.logs()
    );
    // Counted once the server has let every connection of the API go, politely or not.
    db.wait_until_no_connections(Duration::from_secs(10), "the API's exit")
        .await;
    let (_, after): (String, String) = sqlx::query_as(ABORTED).fetch_one(&mut admin).await.unwrap();
    assert_eq!(
        before, after,
        "{open} connections open before the stop; aborted clients {before} -> {after}"
    );
}

/// An app user with a password, as the db container creates it.
async fn app_user(db: &TestDb, user: &str, password: &str) {
    let mut admin = MySqlConnection::connect(&shared_server().admin_url())
        .await
        .unwrap();
    for statement in [
        format!("CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"),
        format!("GRANT ALL ON `{}`.* TO '{user}'@'%'", db.name),
    ] {
        sqlx::query(&statement).execute(&mut admin).await.unwrap();
    }
}

fn container_style_env<'a>(
    db: &'a TestDb,
    user: &'a str,
    password_file: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("DATABASE_HOST", "127.0.0.1"),
        ("DATABASE_NAME", &db.name),
        ("DATABASE_USER", user),
        ("DATABASE_PASSWORD_FILE", password_file),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn the_password_comes_from_its_file_and_never_reaches_the_logs() {
    let server = shared_server();
    let db = TestDb::create(server).await;
    let user = format!("app{}", free_port());
    let password = format!("pw-{}-Zq9!x", free_port());
    app_user(&db, &user, &password).await;
    let file = secret_file(&format!("{password}\n"));
    let file = file.to_str().unwrap();
    let port = server.port.to_string();
    let mut env = container_style_env(&db, &user, file);
    // Rocket's own records too, at their most talkative (its configuration, the pool's): they
    // are off by default, and a leak there would pass unseen with them off.
    env.extend([
        ("DATABASE_PORT", port.as_str()),
        ("ROCKET_LOG_LEVEL", "debug"),
    ]);

    let mut api = ApiProcess::spawn(&env);
    api.wait_healthy(Duration::from_secs(30)).await;
    let addr = api.addr();
    assert_eq!(
        request(
            addr,
            "POST",
            "/create_user?userid=1&username=John",
            &[],
            None
        )
        .await
        .unwrap()
        .status,
        201
    );
    assert_eq!(get(addr, "/get_user?userid=1").await.unwrap().status, 200);
    assert_eq!(get(addr, "/get_user?userid=x").await.unwrap().status, 400);
    assert_eq!(get(addr, "/readyz").await.unwrap().status, 200);
    api.terminate();
    assert_eq!(api.wait_exit(Duration::from_secs(15)).await, Some(0));
    let logs = api.logs();
    assert!(
        logs.contains("POST /create_user 201"),
        "the access log is on: {logs}"
    );
    assert!(
        logs.contains("Configured for"),
        "Rocket's own records are on: {logs}"
    );
    assert!(
        !logs.contains(&password),
        "the password leaked into the logs:\n{logs}"
    );

    // A wrong password: a clear refusal, still without the password.
    let wrong = secret_file("not-the-password");
    let wrong = wrong.to_str().unwrap();
    let mut env = container_style_env(&db, &user, wrong);
    env.extend([
        ("DATABASE_PORT", port.as_str()),
        ("DATABASE_STARTUP_TIMEOUT", "1"),
        ("ROCKET_LOG_LEVEL", "debug"),
    ]);
    let mut api = ApiProcess::spawn(&env);
    assert_eq!(api.wait_exit(Duration::from_secs(20)).await, Some(1));
    let logs = api.logs();
    assert!(logs.contains("Access denied"), "{logs}");
    assert!(
        !logs.contains("not-the-password") && !logs.contains(&password),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_or_empty_password_file_or_a_password_in_env_is_refused_clearly() {
    let db = TestDb::create(shared_server()).await;
    let empty = secret_file("");
    let cases = [
        (
            Some("/nonexistent/db_password"),
            None,
            "cannot read DATABASE_PASSWORD_FILE /nonexistent/db_password",
        ),
        (Some(empty.to_str().unwrap()), None, "is empty"),
        (
            None,
            Some("EnvSecret-123"),
            "DATABASE_PASSWORD (databases.users.password) is not read",
        ),
    ];
    for (file, env_password, expected) in cases {
        let mut env = vec![
            ("DATABASE_HOST", "127.0.0.1"),
            ("DATABASE_NAME", db.name.as_str()),
            ("DATABASE_USER", "app"),
        ];
        if let Some(file) = file {
            env.push(("DATABASE_PASSWORD_FILE", file));
        }
        if let Some(password) = env_password {
            env.push(("DATABASE_PASSWORD", password));
        }
        let mut api = ApiProcess::spawn(&env);
        assert_eq!(
            api.wait_exit(Duration::from_secs(10)).await,
            Some(1),
            "{}",
            api.logs()
        );
        let logs = api.logs();
        assert!(logs.contains(expected), "expected {expected:?} in:\n{logs}");
        assert!(!logs.contains("EnvSecret-123"), "{logs}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_healthcheck_subcommand_reports_the_server_state() {
    let db = TestDb::create(shared_server()).await;
    let mut api = ApiProcess::spawn(&[("DATABASE_URL", &db.url())]);
    api.wait_healthy(Duration::from_secs(30)).await;
    let healthcheck_at = |address: &str, port: u16| {
        std::process::Command::new(env!("CARGO_BIN_EXE_user-api"))
            .arg("healthcheck")
            .env("ROCKET_ADDRESS", address)
            .env("ROCKET_PORT", port.to_string())
            .output()
            .unwrap()
    };
    let healthcheck = |port: u16| healthcheck_at("0.0.0.0", port);
    assert!(healthcheck(api.port).status.success());
    let down = healthcheck(free_port());
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("healthcheck:"));

    // A server bound to one address is probed there, not on loopback: the
    // server listens on 127.0.0.1 only, so 127.0.0.2 finds nobody, and the
    // IPv4-mapped IPv6 form of 127.0.0.1 finds it.
    let elsewhere = healthcheck_at("127.0.0.2", api.port);
    assert_eq!(elsewhere.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&elsewhere.stderr);
    assert!(
        stderr.contains(&format!("http://127.0.0.2:{}/healthz", api.port)),
        "{stderr}"
    );
    assert!(
        healthcheck_at("::ffff:127.0.0.1", api.port)
            .status
            .success()
    );
}

/// The command line: `--version` and `--help` answer on stdout with exit
/// 0, anything else is a usage error (exit 2, the usage on stderr).
#[test]
fn the_command_line_offers_version_and_help() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_user-api"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let version = format!("user-api {}\n", env!("CARGO_PKG_VERSION"));
    for flag in ["--version", "-V"] {
        let out = run(&[flag]);
        assert_eq!(out.status.code(), Some(0), "{flag}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), version, "{flag}");
    }
    for flag in ["--help", "-h"] {
        let out = run(&[flag]);
        assert_eq!(out.status.code(), Some(0), "{flag}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.starts_with("usage: user-api"), "{flag}: {stdout}");
        assert!(out.stderr.is_empty(), "{flag}");
    }
    for wrong in [&["--bogus"][..], &["healthcheck", "extra"]] {
        let out = run(wrong);
        assert_eq!(out.status.code(), Some(2), "{wrong:?}");
        assert!(out.stdout.is_empty(), "{wrong:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("usage: user-api"), "{wrong:?}: {stderr}");
    }
}

/// `exit_linger`: after a clean stop the process stays alive that long with
/// its listener closed, so a new connection is refused at once (a proxy
/// moves it to another replica) instead of meeting an address that is gone.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_stop_it_lingers_refusing_connections_then_exits_0() {
    let db = TestDb::create(shared_server()).await;
    let mut api = ApiProcess::spawn(&[("DATABASE_URL", &db.url()), ("ROCKET_EXIT_LINGER", "2")]);
    api.wait_healthy(Duration::from_secs(30)).await;
    let addr = api.addr();
    api.terminate();
    api.wait_for_log(
        "stopped listening; exiting after exit_linger exit_linger_s=2",
        Duration::from_secs(10),
    )
    .await;
    let lingering = Instant::now();
    let refused = tokio::net::TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert_eq!(api.wait_exit(Duration::from_secs(10)).await, Some(0));
    assert!(
        lingering.elapsed() >= Duration::from_millis(1500),
        "exited {:?} after the linger began",
        lingering.elapsed()
    );
}

/// `pre-stop SECONDS`, Kubernetes' preStop hook: waits that long and exits
/// 0; a number out of range or not a number is refused at once (exit 2).
#[test]
fn pre_stop_waits_the_seconds_asked_and_refuses_anything_else() {
    let run = |args: &[&str]| {
        let started = Instant::now();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_user-api"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (out, started.elapsed())
    };
    let (out, took) = run(&["pre-stop", "1"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(took >= Duration::from_secs(1), "{took:?}");
    let (out, took) = run(&["pre-stop", "0"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    for wrong in ["61", "-1", "five", ""] {
        let (out, took) = run(&["pre-stop", wrong]);
        assert_eq!(out.status.code(), Some(2), "{wrong:?}: {out:?}");
        assert!(took < Duration::from_secs(1), "{wrong:?}: {took:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("from 0 to 60"), "{wrong:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line() {
    let db = TestDb::create(shared_server()).await;
    let mut api = ApiProcess::spawn(&[("DATABASE_URL", &db.url()), ("ROCKET_LOG_FORMAT", "json")]);
    api.wait_healthy(Duration::from_secs(30)).await;
    let response = request(
        api.addr(),
        "GET",
        "/users/12",
        &[("X-Request-Id", "json-log-1")],
        None,
    )
    .await
    .unwrap();
    assert_eq!(response.status, 404);
    // A database failure: its application line carries the request's id.
    db.refuse_inserts().await;
    let failed = request(
        api.addr(),
        "POST",
        "/users",
        &[
            ("X-Request-Id", "json-log-2"),
            ("Content-Type", "application/json"),
        ],
        Some(br#"{"userid": 1, "username": "Ada"}"#),
    )
    .await
    .unwrap();
    assert_eq!(failed.status, 500, "{}", failed.body);
    api.terminate();
    assert_eq!(api.wait_exit(Duration::from_secs(15)).await, Some(0));
    let logs = api.logs();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let access = lines
        .iter()
        .find(|l| l["request_id"] == "json-log-1")
        .unwrap_or_else(|| panic!("no access line in {logs}"));
    assert_eq!(access["method"], "GET");
    assert_eq!(access["path"], "/users/12");
    assert_eq!(access["status"], 404);
    assert!(access["latency_ms"].as_f64().is_some());
    let failure = lines
        .iter()
        .find(|l| l["request_id"] == "json-log-2" && l["level"] == "ERROR")
        .unwrap_or_else(|| panic!("no line with the failed request's id in {logs}"));
    assert_eq!(failure["message"], "request failed");
    assert_eq!(failure["code"], "internal");
    assert!(
        failure["cause"]
            .as_str()
            .is_some_and(|c| c.contains("refused by a trigger")),
        "{failure}"
    );
    // Every line is a message with fields, none a sentence with values in it.
    let ready = lines
        .iter()
        .find(|l| l["message"] == "database ready")
        .unwrap_or_else(|| panic!("no start-up line in {logs}"));
    assert!(ready["database"].as_str().is_some(), "{ready}");
}

/// The access log is written off the request path (src/log.rs): under a
/// burst from many clients every request still gets its line, and the
/// lines still queued when SIGTERM arrives are written before the exit.
#[tokio::test(flavor = "multi_thread")]
async fn under_load_every_request_gets_its_access_log_line_also_at_exit() {
    const CLIENTS: u32 = 32;
    const REQUESTS_EACH: u32 = 60;
    let db = TestDb::create(shared_server()).await;
    let mut api = ApiProcess::spawn(&[("DATABASE_URL", &db.url()), ("ROCKET_LOG_FORMAT", "json")]);
    api.wait_healthy(Duration::from_secs(30)).await;
    let addr = api.addr();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            tokio::spawn(async move {
                for n in 0..REQUESTS_EACH {
                    let id = format!("burst-{client}-{n}");
                    let target = format!("/users/{}", 1 + n);
                    let response = request(addr, "GET", &target, &[("X-Request-Id", &id)], None)
                        .await
                        .unwrap();
                    assert_eq!(response.status, 404, "{}", response.body);
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    // At once: whatever the writer thread has not written yet must be
    // written before the process exits.
    api.terminate();
    assert_eq!(api.wait_exit(Duration::from_secs(15)).await, Some(0));
    let logs = api.logs();
    let logged: std::collections::BTreeSet<String> = logs
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))
        })
        .filter_map(|l| l["request_id"].as_str().map(str::to_owned))
        .filter(|id| id.starts_with("burst-"))
        .collect();
    let expected = (CLIENTS * REQUESTS_EACH) as usize;
    assert_eq!(
        logged.len(),
        expected,
        "access lines for {} of {expected} requests",
        logged.len()
    );
}

/// Lines still queued at exit are written before the process ends
/// (`log::finish`), even when stdout is slow: here a pipe nobody reads
/// until after SIGTERM, so that most of the burst's lines are still queued
/// (behind a full pipe) when the server stops.
#[tokio::test(flavor = "multi_thread")]
async fn lines_queued_behind_a_slow_stdout_are_written_before_the_exit() {
    use std::io::Read;
    const REQUESTS: u32 = 1500;
    let db = TestDb::create(shared_server()).await;
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_user-api"))
        .env("DATABASE_URL", db.url())
        .env("ROCKET_ADDRESS", "127.0.0.1")
        .env("ROCKET_PORT", port.to_string())
        .env("ROCKET_LOG_FORMAT", "json")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !get(addr, "/healthz").await.is_ok_and(|r| r.status == 200) {
        assert!(Instant::now() < deadline, "not healthy in 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // About 200 bytes a line: far more than the pipe (64 KiB) and the
    // writer's buffer (64 KiB) hold together.
    let clients: Vec<_> = (0..8)
        .map(|client| {
            tokio::spawn(async move {
                for n in (client..REQUESTS).step_by(8) {
                    let id = format!("queued-{n}");
                    let response = request(addr, "GET", "/healthz", &[("X-Request-Id", &id)], None)
                        .await
                        .unwrap();
                    assert_eq!(response.status, 200);
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    crate::helpers::terminate(child.id());
    // Well within the second the writer is given to drain its queue.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut stdout = child.stdout.take().unwrap();
    let logs = tokio::task::spawn_blocking(move || {
        let mut logs = String::new();
        stdout.read_to_string(&mut logs).unwrap();
        logs
    })
    .await
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let logged = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| {
            l["request_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("queued-"))
        })
        .count();
    assert_eq!(
        logged, REQUESTS as usize,
        "access lines of {REQUESTS} requests"
    );
}

/// The access log's latency covers the whole request, from when it arrived:
/// a rename that waits 300 ms for a row lock, released only once the
/// server is seen waiting, is logged as taking at least that.
#[tokio::test(flavor = "multi_thread")]
async fn the_access_log_times_the_request_from_its_arrival() {
    let db = TestDb::create(shared_server()).await;
    let mut api = ApiProcess::spawn(&[("DATABASE_URL", &db.url()), ("ROCKET_LOG_FORMAT", "json")]);
    api.wait_healthy(Duration::from_secs(30)).await;
    let created = post_json(
        api.addr(),
        "/users",
        &json!({"userid": 12, "username": "a"}),
    )
    .await
    .unwrap();
    assert_eq!(created.status, 201);

    let mut holder = db.connect().await;
    for statement in [
        "BEGIN",
        "SELECT userid FROM users WHERE userid = 12 FOR UPDATE",
    ] {
        sqlx::query(statement).execute(&mut holder).await.unwrap();
    }
    let addr = api.addr();
    let rename = tokio::spawn(async move {
        let sent = Instant::now();
        let response = request(
            addr,
            "PUT",
            "/users/12",
            &[
                ("Content-Type", "application/json"),
                ("X-Request-Id", "slow-1"),
            ],
            Some(br#"{"username": "b"}"#),
        )
        .await
        .unwrap();
        (response, sent.elapsed())
    });
    let mut watcher = db.connect().await;
    loop {
        // This test's database only: other tests run UPDATEs too.
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
             WHERE DB = ? AND INFO LIKE 'UPDATE users%'",
        )
        .bind(&db.name)
        .fetch_one(&mut watcher)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            !rename.is_finished(),
            "the rename did not wait for the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    let (renamed, round_trip) = rename.await.unwrap();
    assert_eq!(renamed.status, 200);

    api.terminate();
    assert_eq!(api.wait_exit(Duration::from_secs(15)).await, Some(0));
    let logs = api.logs();
    let access: serde_json::Value = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["request_id"] == "slow-1")
        .unwrap_or_else(|| panic!("no access line in {logs}"));
    let latency = access["latency_ms"].as_f64().unwrap();
    assert!(latency >= 300.0, "logged {latency} ms: {access}");
    // In milliseconds, to the microsecond, and never more than the client
    // waited for the answer.
    let waited_ms = round_trip.as_secs_f64() * 1000.0;
    assert!(
        latency <= waited_ms,
        "logged {latency} ms, the client waited {waited_ms} ms"
    );
    let micros = latency * 1000.0;
    assert!(
        (micros - micros.round()).abs() < 1e-6,
        "logged {latency} ms"
    );
}

/// The backlog the kernel reports for the listening socket on `port`
/// (`ss`'s Send-Q column for a socket in LISTEN).
fn listen_backlog_on(port: u16) -> u32 {
    let out = std::process::Command::new("ss")
        .args(["-ltnH", "sport", "=", &format!(":{port}")])
        .output()
        .expect("ss runs (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .next()
        .unwrap_or_else(|| panic!("nothing listens on {port}"));
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// Rocket 0.5 listens with std's backlog of 128, too few for nginx's
/// bursts of upstream connections (bench/README.md); the API raises it to
/// `listen_backlog`, as far as the kernel allows, or leaves it when 0.
#[tokio::test(flavor = "multi_thread")]
async fn the_listen_backlog_is_raised_as_configured() {
    let db = TestDb::create(shared_server()).await;
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for (setting, expected) in [
        (None, 4096.min(somaxconn)),
        (Some("1000"), 1000.min(somaxconn)),
        (Some("0"), 128),
    ] {
        let mut env = vec![("DATABASE_URL", db.url())];
        if let Some(backlog) = setting {
            env.push(("ROCKET_LISTEN_BACKLOG", backlog.to_owned()));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut api = ApiProcess::spawn(&env);
        api.wait_healthy(Duration::from_secs(30)).await;
        assert_eq!(listen_backlog_on(api.port), expected, "{setting:?}");
        assert!(
            !api.logs().contains("listen backlog left"),
            "{}",
            api.logs()
        );
    }
}
