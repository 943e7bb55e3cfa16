//! The shipped nginx config (nginx/nginx.conf, on the harness's nginx: 1.30) in front
//! of the real `user-api` binary and a throwaway MariaDB, or in front of a
//! fake upstream written here when a test must see exactly what nginx sends
//! (forwarded headers, upstream connections) or needs an API that stalls.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{
    ApiProcess, HttpResponse, Nginx, TestDb, get, nginx_check, post_json, request, shared_server,
};

// ------------------------------------------------------------ the proxy

/// A private nginx running the project's nginx.conf, unchanged: the harness
/// (tests/harness/nginx.py) gives each instance its own directory with the
/// include files nginx.conf reads next to it (free loopback ports, this
/// test's upstream, the access log as a file), so tests run in parallel.
struct Proxy {
    nginx: Nginx,
    public: SocketAddr,
    status: SocketAddr,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        Proxy::start_with(upstream, &[]).await
    }

    async fn start_with(upstream: SocketAddr, files: &[(&str, &str)]) -> Proxy {
        let nginx = tokio::task::block_in_place(|| Nginx::start(upstream, files));
        Proxy {
            public: nginx.public,
            status: nginx.status,
            nginx,
        }
    }

    fn stderr(&self) -> String {
        self.nginx.error_log()
    }

    fn access_log(&self) -> Vec<Value> {
        self.nginx.access_log()
    }

    /// The access log entry of a request.
    async fn log_entry(&self, request_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(entry) = self
                .access_log()
                .into_iter()
                .find(|e| e["request_id"] == request_id)
            {
                return entry;
            }
            assert!(
                Instant::now() < deadline,
                "no access log line for {request_id}:\n{:#?}",
                self.access_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A fresh database, the real binary on it, and nginx in front.
/// Fields drop in order: nginx first, then the API, then the database.
struct Stack {
    proxy: Proxy,
    api: ApiProcess,
    db: TestDb,
}

impl Stack {
    async fn start() -> Stack {
        let db = TestDb::create(shared_server()).await;
        let mut api = ApiProcess::spawn(&[("DATABASE_URL", &db.url())]);
        api.wait_healthy(Duration::from_secs(30)).await;
        let proxy = Proxy::start(api.addr()).await;
        Stack { proxy, api, db }
    }

    /// Waits for the API's (text) access log line of a request id.
    async fn api_logged(&self, request_id: &str) -> String {
        let needle = format!("request_id={request_id}");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let logs = self.api.logs();
            if let Some(line) = logs.lines().find(|l| l.ends_with(&needle)) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "API never logged {needle}:\n{logs}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ------------------------------------------------------ a fake upstream

#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// HTTP/1.1 keep-alive, `200` with a small JSON body and Content-Length.
    Answer,
    /// Accepts, reads the request, never answers.
    Stall,
    /// Accepts, reads the request, closes the connection: it may have been
    /// acted on, and nothing says so.
    Hangup,
}

/// One request as the upstream received it.
#[derive(Debug, Clone)]
struct Seen {
    /// The nginx side's port of the connection it came on.
    peer_port: u16,
    request_line: String,
    /// Names lowercased, in the order received.
    headers: Vec<(String, String)>,
}

impl Seen {
    fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn path(&self) -> &str {
        self.request_line.split(' ').nth(1).unwrap_or("")
    }
}

/// A stand-in for the API on a real socket, recording what nginx sends.
struct FakeUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl FakeUpstream {
    async fn start(behaviour: Behaviour) -> FakeUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let accept_loop = tokio::spawn({
            let seen = seen.clone();
            async move {
                while let Ok((stream, peer)) = listener.accept().await {
                    tokio::spawn(serve_upstream_connection(
                        stream,
                        peer.port(),
                        behaviour,
                        seen.clone(),
                    ));
                }
            }
        });
        FakeUpstream {
            addr,
            seen,
            accept_loop,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

async fn serve_upstream_connection(
    mut stream: tokio::net::TcpStream,
    peer_port: u16,
    behaviour: Behaviour,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let head_end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default().to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let body_len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while buffer.len() < head_end + 4 + body_len {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        buffer.drain(..head_end + 4 + body_len);
        let count = {
            let mut seen = seen.lock().unwrap();
            seen.push(Seen {
                peer_port,
                request_line,
                headers,
            });
            seen.len()
        };
        if behaviour == Behaviour::Stall {
            // Hold the connection open until the test's runtime ends.
            std::future::pending::<()>().await;
        }
        if behaviour == Behaviour::Hangup {
            return;
        }
        let body = json!({"upstream": "fake", "request": count}).to_string();
        // Headers nginx must hide: only its own copies reach the client.
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nX-Request-Id: from-the-upstream\r\n\
             X-Frame-Options: SAMEORIGIN\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

// ------------------------------------------------------------- checks

fn values<'a>(response: &'a HttpResponse, name: &str) -> Vec<&'a str> {
    response
        .headers
        .get(name)
        .map(|v| v.iter().map(String::as_str).collect())
        .unwrap_or_default()
}

/// The headers nginx adds to every response, each exactly once, and no
/// version in `Server`.
fn assert_edge_headers(response: &HttpResponse, what: &str) {
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        (
            "content-security-policy",
            "default-src 'none'; frame-ancestors 'none'",
        ),
        ("referrer-policy", "no-referrer"),
    ] {
        assert_eq!(values(response, name), [value], "{what}: {name}");
    }
    let server = values(response, "server");
    assert!(
        server.is_empty() || server == ["nginx"],
        "{what}: Server {server:?}"
    );
    let ids = values(response, "x-request-id");
    assert_eq!(ids.len(), 1, "{what}: X-Request-Id {ids:?}");
}

/// An error nginx made itself: its status, the API's JSON shape and code.
fn assert_proxy_error(response: &HttpResponse, status: u16, code: &str, what: &str) {
    assert_eq!(response.status, status, "{what}: {}", response.body);
    assert_eq!(response.error_code(), code, "{what}");
    assert_edge_headers(response, what);
}

fn is_hex_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

// -------------------------------------------------------------- tests

#[test]
fn the_shipped_config_passes_nginx_t() {
    let (ok, stderr) = nginx_check();
    assert!(ok, "nginx -t failed:\n{stderr}");
    assert!(stderr.contains("syntax is ok"), "{stderr}");
    assert!(stderr.contains("test is successful"), "{stderr}");
    for level in ["[warn]", "[emerg]", "[alert]", "[crit]", "[error]"] {
        assert!(!stderr.contains(level), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_journey_works_through_the_proxy() {
    let stack = Stack::start().await;
    let proxy = stack.proxy.public;

    let created = request(
        proxy,
        "POST",
        "/create_user?userid=1&username=John",
        &[("X-Request-Id", "seed-create")],
        None,
    )
    .await
    .unwrap();
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.header("location"), Some("/users/1"));
    assert!(
        created
            .header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    assert_eq!(created.json(), json!({"userid": 1, "username": "John"}));

    let fetched = get(proxy, "/get_user?userid=1").await.unwrap();
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.json(), json!({"userid": 1, "username": "John"}));

    let renamed = request(
        proxy,
        "PUT",
        "/users/1",
        &[("Content-Type", "application/json")],
        Some(br#"{"username":"Jane"}"#),
    )
    .await
    .unwrap();
    assert_eq!(renamed.status, 200, "{}", renamed.body);
    assert_eq!(renamed.json(), json!({"userid": 1, "username": "Jane"}));
    let listed = get(proxy, "/users").await.unwrap();
    assert_eq!(
        listed.json(),
        json!({"users": [{"userid": 1, "username": "Jane"}], "next_after": null})
    );
    let deleted = request(proxy, "DELETE", "/users/1", &[], None)
        .await
        .unwrap();
    assert_eq!(deleted.status, 204);
    assert_eq!(deleted.body, "");
    assert_eq!(get(proxy, "/users/1").await.unwrap().status, 404);
    assert_eq!(stack.db.count().await, 0);

    // nginx logged the path without the query string (it carries usernames).
    let entry = stack.proxy.log_entry("seed-create").await;
    assert_eq!(entry["method"], "POST");
    assert_eq!(entry["path"], "/create_user");
    assert_eq!(entry["status"], 201);
    assert_eq!(entry["upstream_status"], "201");
    assert_eq!(
        entry["upstream_addr"],
        stack.api.addr().to_string().as_str()
    );
    let raw_log = std::fs::read_to_string(stack.proxy.nginx.dir.join("access.log")).unwrap();
    assert!(!raw_log.contains("John"), "{raw_log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn request_ids_are_kept_or_generated_and_reach_the_api_log() {
    let stack = Stack::start().await;
    let proxy = stack.proxy.public;

    let given = "client-id_1.2:3/4+5=6@x";
    let response = request(proxy, "GET", "/users/5", &[("X-Request-Id", given)], None)
        .await
        .unwrap();
    assert_eq!(response.status, 404);
    assert_eq!(values(&response, "x-request-id"), [given]);
    let line = stack.api_logged(given).await;
    assert!(line.contains("GET /users/5 404"), "{line}");

    // None given, or one that breaks the rule: nginx makes a 32-hex id and
    // the API uses that one (its own generated ids never show up).
    let too_long = "a".repeat(129);
    let mut generated = Vec::new();
    for sent in [None, Some("has space"), Some("quote\"d"), Some(&*too_long)] {
        let headers: Vec<(&str, &str)> = sent.map(|id| ("X-Request-Id", id)).into_iter().collect();
        let response = request(proxy, "GET", "/healthz", &headers, None)
            .await
            .unwrap();
        assert_eq!(response.status, 200);
        let ids = values(&response, "x-request-id");
        assert_eq!(ids.len(), 1, "{sent:?}: {ids:?}");
        let id = ids[0].to_owned();
        assert!(is_hex_id(&id), "{sent:?}: {id}");
        let line = stack.api_logged(&id).await;
        assert!(line.contains("GET /healthz 200"), "{line}");
        generated.push(id);
    }
    let unique: BTreeSet<&String> = generated.iter().collect();
    assert_eq!(unique.len(), generated.len(), "{generated:?}");

    // nginx's access log has the same ids (its lines come within 1 s).
    assert_eq!(stack.proxy.log_entry(given).await["status"], 404);
    for id in &generated {
        assert_eq!(stack.proxy.log_entry(id).await["path"], "/healthz");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_gets_the_client_address_and_the_forwarded_headers() {
    // What nginx sends upstream, as the upstream receives it.
    let upstream = FakeUpstream::start(Behaviour::Answer).await;
    let proxy = Proxy::start(upstream.addr).await;
    let spoofed = [
        ("X-Request-Id", "forwarded-1"),
        ("X-Real-IP", "203.0.113.7"),
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-Proto", "https"),
        ("Forwarded", "for=203.0.113.7;proto=https"),
    ];
    let response = request(proxy.public, "GET", "/users/1?x=1", &spoofed, None)
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    // The upstream's own X-Request-Id and X-Frame-Options are hidden.
    assert_eq!(values(&response, "x-request-id"), ["forwarded-1"]);
    assert_edge_headers(&response, "proxied 200");

    let seen = upstream.seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    let request_seen = &seen[0];
    assert_eq!(request_seen.request_line, "GET /users/1?x=1 HTTP/1.1");
    for (name, value) in [
        ("x-real-ip", "127.0.0.1"),
        ("x-forwarded-for", "127.0.0.1"),
        ("x-forwarded-proto", "http"),
        ("host", "localhost"),
        ("x-request-id", "forwarded-1"),
    ] {
        assert_eq!(
            request_seen.values(name),
            [value],
            "{name}: {request_seen:#?}"
        );
    }
    assert_eq!(request_seen.values("forwarded"), Vec::<&str>::new());
    // Keep-alive to the upstream: `Connection ""` means no Connection header
    // at all (so not `close`) on an HTTP/1.1 request.
    assert_eq!(
        request_seen.values("connection"),
        Vec::<&str>::new(),
        "{request_seen:#?}"
    );

    // The real API behind the proxy: nginx saw the client's address and
    // forwarded to the API, which answered.
    let stack = Stack::start().await;
    let response = request(
        stack.proxy.public,
        "GET",
        "/healthz",
        &[("X-Request-Id", "address-1"), ("X-Real-IP", "203.0.113.7")],
        None,
    )
    .await
    .unwrap();
    assert_eq!(response.status, 200);
    let entry = stack.proxy.log_entry("address-1").await;
    assert_eq!(entry["remote_addr"], "127.0.0.1");
    assert_eq!(
        entry["upstream_addr"],
        stack.api.addr().to_string().as_str()
    );
    assert_eq!(entry["upstream_status"], "200");
    stack.api_logged("address-1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_carry_security_headers_and_no_server_version() {
    let stack = Stack::start().await;
    let proxy = stack.proxy.public;

    let ok = get(proxy, "/healthz").await.unwrap();
    assert_eq!(ok.status, 200);
    assert_edge_headers(&ok, "API 200");
    // Rocket's Shield headers that nginx does not replace pass through.
    let direct = get(stack.api.addr(), "/healthz").await.unwrap();
    assert_eq!(
        values(&ok, "permissions-policy"),
        values(&direct, "permissions-policy")
    );

    let not_found = get(proxy, "/users/999").await.unwrap();
    assert_eq!(not_found.status, 404);
    assert_eq!(not_found.error_code(), "user_not_found");
    assert_edge_headers(&not_found, "API 404");

    let big = json!({"userid": 1, "username": "x".repeat(17 * 1024)});
    let too_large = post_json(proxy, "/users", &big).await.unwrap();
    assert_proxy_error(&too_large, 413, "payload_too_large", "proxy 413");

    for response in [&ok, &not_found, &too_large] {
        assert!(response.header("retry-after").is_none(), "{response:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_of_exactly_16_kib_passes_the_proxy_and_the_api() {
    let stack = Stack::start().await;
    // Valid JSON padded with white space: nginx's client_max_body_size and
    // the API's own limit must agree, or the largest documented body fails.
    let json = json!({"userid": 7, "username": "edge"}).to_string();
    let body = format!("{json:16384}");
    assert_eq!(body.len(), 16 * 1024);
    let response = request(
        stack.proxy.public,
        "POST",
        "/users",
        &[("Content-Type", "application/json")],
        Some(body.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(response.status, 201, "{response:?}");
    assert_eq!(stack.db.stored_name(7).await.as_deref(), Some("edge"));
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_requests_get_json_errors_from_the_proxy() {
    let stack = Stack::start().await;
    let proxy = stack.proxy.public;

    let big = json!({"userid": 1, "username": "x".repeat(17 * 1024)});
    let body = big.to_string();
    assert!(body.len() > 17 * 1024);
    let response = request(
        proxy,
        "POST",
        "/users",
        &[
            ("Content-Type", "application/json"),
            ("X-Request-Id", "too-large"),
        ],
        Some(body.as_bytes()),
    )
    .await
    .unwrap();
    assert_proxy_error(&response, 413, "payload_too_large", "413");
    let entry = stack.proxy.log_entry("too-large").await;
    assert_eq!(
        (&entry["method"], &entry["path"]),
        (&json!("POST"), &json!("/users"))
    );
    assert_eq!(entry["upstream_addr"], "", "nginx answered alone");

    let long_uri = format!("/get_user?userid=1&pad={}", "a".repeat(9 * 1024));
    let response = request(
        proxy,
        "GET",
        &long_uri,
        &[("X-Request-Id", "too-long")],
        None,
    )
    .await
    .unwrap();
    assert_proxy_error(&response, 414, "uri_too_long", "414");

    // 431's status line is `HTTP/1.1 431 ` (no reason phrase).
    let big_header = "b".repeat(9 * 1024);
    let response = request(
        proxy,
        "GET",
        "/healthz",
        &[("X-Request-Id", "too-big-header"), ("X-Big", &big_header)],
        None,
    )
    .await
    .unwrap();
    assert_proxy_error(&response, 431, "request_headers_too_large", "431");

    // All three logged (workers flush their own buffers: any order), none
    // reached the API.
    let deadline = Instant::now() + Duration::from_secs(5);
    while stack.proxy.access_log().len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = stack.proxy.access_log();
    let mut statuses: Vec<u64> = log.iter().filter_map(|e| e["status"].as_u64()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [413, 414, 431], "{log:#?}");
    assert!(log.iter().all(|e| e["upstream_addr"] == ""), "{log:#?}");
    let header_entry = stack.proxy.log_entry("too-big-header").await;
    assert_eq!(header_entry["status"], 431);
    // The 414 came before the headers: nginx's own id, and no path (so no
    // query string either) in the log.
    let uri_entry = log.iter().find(|e| e["status"] == 414).unwrap();
    assert!(
        is_hex_id(uri_entry["request_id"].as_str().unwrap()),
        "{uri_entry}"
    );
    assert_eq!(uri_entry["path"], "", "{uri_entry}");
    let logs = stack.api.logs();
    assert!(
        !logs.contains("POST /users") && !logs.contains("/get_user"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_rate_limit_the_proxy_answers_429_with_retry_after() {
    let stack = Stack::start().await;
    let proxy = stack.proxy.public;

    // 20 r/s, burst 40, nodelay: a fresh address gets 41 at once, then 429s
    // until tokens come back at 20/s. Sequential requests to a fast path
    // outrun that by far; stop at the first few 429s.
    let mut statuses = Vec::new();
    let mut rejected = Vec::new();
    let started = Instant::now();
    while rejected.len() < 5 && statuses.len() < 400 {
        let response = get(proxy, "/healthz").await.unwrap();
        statuses.push(response.status);
        match response.status {
            200 => assert!(response.header("retry-after").is_none()),
            429 => rejected.push(response),
            other => panic!("unexpected {other}: {}", response.body),
        }
    }
    let elapsed = started.elapsed();
    assert!(
        statuses[..41].iter().all(|&s| s == 200),
        "the burst: {statuses:?}"
    );
    assert!(
        !rejected.is_empty(),
        "no 429 in {} requests ({elapsed:?})",
        statuses.len()
    );
    for response in &rejected {
        assert_proxy_error(response, 429, "too_many_requests", "429");
        assert_eq!(values(response, "retry-after"), ["1"]);
    }
    // The status listener is not limited.
    let status = get(stack.proxy.status, "/healthz").await.unwrap();
    assert_eq!(status.status, 200);
    println!(
        "rate limit: {} requests in {elapsed:?}, first 429 after {} requests",
        statuses.len(),
        statuses.iter().position(|&s| s == 429).unwrap()
    );
}

/// No replica accepts the connection: the proxy's own 503 with Retry-After
/// (nothing reached the API), never a 502 page, for reads and writes alike.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_api_is_a_json_503_with_retry_after() {
    let Stack { proxy, api, db } = Stack::start().await;
    assert_eq!(get(proxy.public, "/users/1").await.unwrap().status, 404);
    drop(api);

    let asked = Instant::now();
    let response = get(proxy.public, "/users/1").await.unwrap();
    assert_proxy_error(&response, 503, "service_unavailable", "GET 503");
    assert_eq!(values(&response, "retry-after"), ["1"]);
    let response = post_json(
        proxy.public,
        "/users",
        &json!({"userid": 1, "username": "nobody home"}),
    )
    .await
    .unwrap();
    assert_proxy_error(&response, 503, "service_unavailable", "POST 503");
    assert_eq!(values(&response, "retry-after"), ["1"]);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(db.count().await, 0);
}

/// A request that reached the upstream and got no answer (the connection
/// closed) is never sent again, by nginx's retries or by `@fresh_try`
/// (which only starts requests that never connected): a POST may have been
/// acted on. The proxy's JSON 503 with `Retry-After` instead.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_that_reached_the_upstream_is_never_sent_twice() {
    let upstream = FakeUpstream::start(Behaviour::Hangup).await;
    let proxy = Proxy::start(upstream.addr).await;
    let response = post_json(
        proxy.public,
        "/users",
        &json!({"userid": 1, "username": "once"}),
    )
    .await
    .unwrap();
    assert_proxy_error(&response, 503, "service_unavailable", "POST hung up");
    assert_eq!(values(&response, "retry-after"), ["1"]);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1, "sent {} times: {seen:?}", seen.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_upstream_is_a_json_504_after_the_read_timeout() {
    let upstream = FakeUpstream::start(Behaviour::Stall).await;
    let proxy = Proxy::start(upstream.addr).await;

    let started = Instant::now();
    let timed = |method: &'static str, id: &'static str, body: Option<&'static [u8]>| async move {
        let response = request(
            proxy.public,
            method,
            "/users/1",
            &[("X-Request-Id", id), ("Content-Type", "application/json")],
            body,
        )
        .await
        .unwrap();
        (response, started.elapsed())
    };
    let (read, write) = tokio::join!(
        timed("GET", "stalled-get", None),
        timed("PUT", "stalled-put", Some(br#"{"username":"x"}"#)),
    );
    for (what, (response, elapsed)) in [("GET", read), ("PUT", write)] {
        assert_proxy_error(&response, 504, "gateway_timeout", what);
        // proxy_read_timeout is 10 s; the upper bound only catches a hang
        // or a repeated timeout.
        assert!(
            elapsed >= Duration::from_millis(9500) && elapsed < Duration::from_secs(20),
            "{what} answered after {elapsed:?}"
        );
    }
    // Each reached the upstream once: a read timeout is never retried.
    assert_eq!(upstream.seen().len(), 2, "{:#?}", upstream.seen());
    for id in ["stalled-get", "stalled-put"] {
        let entry = proxy.log_entry(id).await;
        assert_eq!(entry["status"], 504);
        assert_eq!(entry["upstream_status"], "504");
    }
    assert!(
        proxy.stderr().contains("upstream timed out"),
        "{}",
        proxy.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn api_errors_pass_through_byte_for_byte() {
    let stack = Stack::start().await;
    let (proxy, direct) = (stack.proxy.public, stack.api.addr());
    let created = request(
        direct,
        "POST",
        "/create_user?userid=5&username=Ann",
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!(created.status, 201);

    // (method, target, (content type, body), the API's status)
    let json = "application/json";
    let cases = [
        ("GET", "/get_user?userid=abc", None, 400),
        ("GET", "/users/424242", None, 404),
        ("POST", "/create_user?userid=5&username=Bob", None, 409),
        (
            "POST",
            "/users",
            Some((json, r#"{"userid":5,"username":"Bob"}"#)),
            409,
        ),
        (
            "POST",
            "/users",
            Some((json, r#"{"userid":0,"username":"Bob"}"#)),
            422,
        ),
        ("POST", "/users", Some(("text/plain", "hello")), 415),
        ("PATCH", "/users/5", None, 405),
    ];
    for (method, target, content, status) in cases {
        let headers: Vec<(&str, &str)> = content
            .map(|(content_type, _)| ("Content-Type", content_type))
            .into_iter()
            .collect();
        let body = content.map(|(_, body)| body.as_bytes());
        let via_proxy = request(proxy, method, target, &headers, body)
            .await
            .unwrap();
        let from_api = request(direct, method, target, &headers, body)
            .await
            .unwrap();
        let what = format!("{method} {target}");
        assert_eq!(from_api.status, status, "{what}: {}", from_api.body);
        assert_eq!(via_proxy.status, from_api.status, "{what}");
        assert_eq!(via_proxy.body, from_api.body, "{what}");
        for name in ["content-type", "allow", "retry-after"] {
            assert_eq!(
                values(&via_proxy, name),
                values(&from_api, name),
                "{what}: {name}"
            );
        }
        assert_edge_headers(&via_proxy, &what);
    }
    assert_eq!(stack.db.stored_name(5).await.as_deref(), Some("Ann"));
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_connections_are_kept_alive_and_reused() {
    let upstream = FakeUpstream::start(Behaviour::Answer).await;
    // The README's hook for benchmarks: loopback exempt from the rate limit,
    // which would otherwise turn all but ~41 of these into 429s.
    let proxy = Proxy::start_with(
        upstream.addr,
        &[("rate_limit_exempt.conf", "127.0.0.1 \"\";\n")],
    )
    .await;

    for i in 0..200 {
        // A new client connection each time (`Connection: close`).
        let response = get(proxy.public, &format!("/users/{i}")).await.unwrap();
        assert_eq!(response.status, 200, "request {i}: {}", response.body);
    }
    let seen = upstream.seen();
    assert_eq!(seen.len(), 200);
    let connections: BTreeSet<u16> = seen.iter().map(|s| s.peer_port).collect();
    // worker_processes auto (2 here): each worker keeps its own idle cache.
    assert!(
        connections.len() <= 8,
        "{} upstream connections for 200 requests",
        connections.len()
    );
    assert!(seen.iter().all(|s| s.request_line.ends_with(" HTTP/1.1")));
    println!(
        "upstream keep-alive: 200 requests over {} connections",
        connections.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_listener_is_separate_and_metrics_are_hidden() {
    let upstream = FakeUpstream::start(Behaviour::Answer).await;
    let proxy = Proxy::start(upstream.addr).await;
    assert_ne!(proxy.status.port(), proxy.public.port());

    let stub = get(proxy.status, "/nginx_status").await.unwrap();
    assert_eq!(stub.status, 200);
    assert!(
        stub.body.starts_with("Active connections:"),
        "{}",
        stub.body
    );
    let health = get(proxy.status, "/healthz").await.unwrap();
    assert_eq!(health.status, 200);
    assert!(
        health
            .header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    assert_eq!(health.json(), json!({"status": "ok"}));
    let other = get(proxy.status, "/users/1").await.unwrap();
    assert_proxy_error(&other, 404, "not_found", "status port, unknown path");

    for target in [
        "/metrics",
        "/metrics/",
        "/metrics/x",
        "/%6detrics",
        "//metrics",
        "/x/../metrics",
        "/metrics?format=prometheus",
        "/_proxy_error",
    ] {
        let response = get(proxy.public, target).await.unwrap();
        assert_proxy_error(&response, 404, "not_found", target);
    }
    // Everything else is proxied, including the status port's paths.
    for target in ["/healthz", "/nginx_status", "/metricsx"] {
        let response = get(proxy.public, target).await.unwrap();
        assert_eq!(response.status, 200, "{target}");
        assert_eq!(response.json()["upstream"], "fake", "{target}");
    }
    let paths: Vec<String> = upstream
        .seen()
        .iter()
        .map(|s| s.path().to_owned())
        .collect();
    assert_eq!(paths, ["/healthz", "/nginx_status", "/metricsx"]);
}

/// Issue 6: a stalled database behind a slow endpoint must not take the
/// whole API (or the proxy) down with it.
#[tokio::test(flavor = "multi_thread")]
async fn a_locked_table_does_not_starve_other_requests() {
    // The API's bound on a whole database call, as the spawned binary reads
    // it (Rocket.toml in this directory, else the built-in default).
    let query_timeout = user_api::config::figment()
        .focus("databases.users")
        .extract::<user_api::config::DatabaseSettings>()
        .unwrap()
        .query_timeout();
    assert!(
        query_timeout >= Duration::from_secs(1) && query_timeout <= Duration::from_secs(6),
        "query_timeout {query_timeout:?}: this test's timeline needs revisiting"
    );
    // Two waves of blocked writes: the first outlives query_timeout while
    // the lock is held, the second is released halfway through its own.
    let margin = Duration::from_millis(1500);
    let hold = query_timeout + margin;
    let second_wave_at = hold - query_timeout / 2;

    let stack = Stack::start().await;
    let proxy = stack.proxy.public;
    let direct = stack.api.addr();
    let mut admin = stack.db.connect().await;
    sqlx::query("LOCK TABLES users WRITE")
        .execute(&mut admin)
        .await
        .unwrap();
    let locked_at = Instant::now();

    let post = move |userid: u32| {
        tokio::spawn(async move {
            let sent = Instant::now();
            let response = post_json(
                proxy,
                "/users",
                &json!({"userid": userid, "username": format!("blocked {userid}")}),
            )
            .await
            .unwrap();
            (userid, response, sent.elapsed())
        })
    };
    let first_wave: Vec<_> = (1..=5).map(post).collect();
    let mut second_wave = Vec::new();

    // Meanwhile the API answers whatever needs no lock, and still has pool
    // connections for a query (readyz: SELECT 1).
    let mut probes = 0;
    while locked_at.elapsed() < hold {
        if second_wave.is_empty() && locked_at.elapsed() >= second_wave_at {
            second_wave = (6..=10).map(post).collect();
        }
        for (addr, target) in [
            (proxy, "/healthz"),
            (direct, "/healthz"),
            (proxy, "/readyz"),
        ] {
            let asked = Instant::now();
            let response = get(addr, target).await.unwrap();
            assert_eq!(response.status, 200, "{addr} {target}: {}", response.body);
            assert!(
                asked.elapsed() < Duration::from_secs(2),
                "{addr} {target} took {:?}",
                asked.elapsed()
            );
            probes += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!second_wave.is_empty());
    sqlx::query("UNLOCK TABLES")
        .execute(&mut admin)
        .await
        .unwrap();

    let mut outcomes = Vec::new();
    for handle in first_wave.into_iter().chain(second_wave) {
        let (userid, response, elapsed) = tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("a blocked POST hung after the lock was released")
            .unwrap();
        outcomes.push((userid, response.status, elapsed.as_millis()));
        if userid <= 5 {
            // Held past query_timeout: the API's own 503, long before nginx's
            // 10 s read timeout could make it a 504. The INSERT was sent, so
            // the error says its outcome is unknown (it does land on unlock).
            assert_eq!(response.status, 503, "{userid}: {}", response.body);
            assert_eq!(response.error_code(), "database_interrupted");
            assert_eq!(values(&response, "retry-after"), ["1"]);
            assert!(
                elapsed + Duration::from_millis(500) >= query_timeout
                    && elapsed < query_timeout + margin,
                "{userid}: 503 after {elapsed:?}, query_timeout {query_timeout:?}"
            );
        } else {
            assert_eq!(response.status, 201, "{userid}: {}", response.body);
        }
    }
    // The pool recovered: a new write goes through at once.
    let after = post_json(proxy, "/users", &json!({"userid": 11, "username": "after"}))
        .await
        .unwrap();
    assert_eq!(after.status, 201, "{}", after.body);
    let mut stored = Vec::new();
    for userid in 1..=5 {
        stored.push(stack.db.stored_name(userid).await.is_some());
    }
    println!(
        "locked table ({query_timeout:?} query_timeout): {probes} probes answered; \
         POSTs (userid, status, ms) {outcomes:?}; rows of the 503'd writes stored \
         after the unlock: {stored:?}"
    );
}
