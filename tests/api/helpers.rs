//! Test support: a real MariaDB (a throwaway server from the project's test
//! harness unless `TEST_DATABASE_URL` names one), a fresh database per test,
//! nginx with the shipped config, the app served in-process or as the real
//! binary, and a tiny HTTP/1.1 client over TCP.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rocket::figment::Figment;
use rocket::local::asynchronous::Client;
use serde_json::Value;
use sqlx::Connection;
use sqlx::mysql::MySqlConnection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ------------------------------------------------------------ the harness

/// The project's test tooling lives in one place, the Python package
/// `tests/harness` (also used by the sweep, the benchmark and the e2e
/// tests); these tests drive it through `python3 -m harness`. A harness
/// process prints one JSON line when its server is ready, then takes
/// commands on stdin; when its stdin closes (the test is done, or the test
/// process died) it stops the server and removes its files, so nothing
/// outlives a crashed test run.
struct Harness {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Harness {
    fn command(args: &[&str]) -> Command {
        let mut command = Command::new("python3");
        command
            .arg("-m")
            .arg("harness")
            .args(args)
            .env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/tests"));
        command
    }

    /// Starts `python3 -m harness <args>` and waits for its ready line.
    fn spawn(args: &[&str]) -> (Harness, Value) {
        let mut child = Harness::command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs (the test harness needs it)");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut harness = Harness {
            child,
            stdin,
            stdout,
        };
        let ready = harness
            .read_line()
            .unwrap_or_else(|| panic!("python3 -m harness {args:?} failed (its error is above)"));
        (harness, ready)
    }

    fn read_line(&mut self) -> Option<Value> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).ok()?;
        serde_json::from_str(&line).ok()
    }

    /// Sends one command and returns its answer; panics on an error answer.
    fn send(&mut self, command: &str) -> Value {
        let stdin = self.stdin.as_mut().expect("the harness is running");
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        let answer = self.read_line().expect("the harness answers");
        if let Some(error) = answer.get("error") {
            panic!("{error}\n{}", answer["log"].as_str().unwrap_or(""));
        }
        answer
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    let output = Harness::command(&["free-port"])
        .output()
        .expect("python3 runs");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("the harness prints a port")
}

// ---------------------------------------------------------------- MariaDB

/// A MariaDB server reachable as root without a password on 127.0.0.1.
pub struct Server {
    pub port: u16,
    harness: Option<Harness>,
    external_url: Option<String>,
}

static SHARED: OnceLock<Server> = OnceLock::new();
static SERIAL: AtomicUsize = AtomicUsize::new(0);

/// The server most tests share, started once per test binary.
pub fn shared_server() -> &'static Server {
    SHARED.get_or_init(|| match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => {
            let url = url.trim_end_matches('/');
            Server {
                port: url
                    .rsplit(':')
                    .next()
                    .and_then(|port| port.parse().ok())
                    .expect("TEST_DATABASE_URL is mysql://root@127.0.0.1:PORT"),
                harness: None,
                external_url: Some(url.to_owned()),
            }
        }
        _ => Server::start_dedicated(),
    })
}

impl Server {
    /// A throwaway server of the test's own, to stop and restart at will.
    pub fn start_dedicated() -> Server {
        Server::launch(&["mariadb"])
    }

    /// A server that listens only once [`Server::resume`] is called: for
    /// tests of what happens before the database exists.
    pub fn prepare() -> Server {
        Server::launch(&["mariadb", "--no-start"])
    }

    fn launch(args: &[&str]) -> Server {
        let (harness, ready) = Harness::spawn(args);
        Server {
            port: ready["port"].as_u64().expect("a port") as u16,
            harness: Some(harness),
            external_url: None,
        }
    }

    pub fn admin_url(&self) -> String {
        match &self.external_url {
            Some(url) => url.clone(),
            None => format!("mysql://root@127.0.0.1:{}", self.port),
        }
    }

    fn send(&mut self, command: &str) {
        self.harness
            .as_mut()
            .expect("only throwaway servers can be stopped and started")
            .send(command);
    }

    /// Stops the server (a clean shutdown, like a container stop).
    pub fn stop(&mut self) {
        self.send("stop");
    }

    /// SIGKILL: InnoDB recovers on the next start.
    pub fn crash(&mut self) {
        self.send("crash");
    }

    /// SIGSTOP: the port still accepts connections, nothing answers.
    pub fn pause(&mut self) {
        self.send("pause");
    }

    pub fn unpause(&mut self) {
        self.send("unpause");
    }

    /// Starts it again on the same port and data directory.
    pub fn resume(&mut self) {
        self.send("start");
    }
}

pub fn unique_temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "user-api-test-{what}-{}-{}",
        std::process::id(),
        SERIAL.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A TCP relay in front of a server that counts the connections it
/// accepts and, once told to [`hold`](CountingProxy::hold), keeps new ones
/// open without relaying them: to the client, a server that accepts and
/// never answers, while the connections opened before keep working.
pub struct CountingProxy {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    holding: Arc<AtomicBool>,
    relay: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    pub async fn start(upstream: SocketAddr) -> CountingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let holding = Arc::new(AtomicBool::new(false));
        let (count, hold) = (accepted.clone(), holding.clone());
        let relay = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                if hold.load(Ordering::SeqCst) {
                    held.push(client);
                    continue;
                }
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        CountingProxy {
            addr,
            accepted,
            holding,
            relay,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn hold(&self) {
        self.holding.store(true, Ordering::SeqCst);
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.relay.abort();
    }
}

// ------------------------------------------------------------------ nginx

/// The project's nginx.conf, unchanged, in front of `upstream`, on free
/// loopback ports (the harness writes the instance's include files).
pub struct Nginx {
    pub public: SocketAddr,
    pub status: SocketAddr,
    pub dir: PathBuf,
    _harness: Harness,
}

impl Nginx {
    /// `files`: include files that replace the shipped ones, by name.
    pub fn start(upstream: SocketAddr, files: &[(&str, &str)]) -> Nginx {
        let upstream = upstream.to_string();
        let mut args = vec!["nginx".to_owned(), "--upstream".to_owned(), upstream];
        let scratch = unique_temp_dir("nginx-files");
        for (name, contents) in files {
            let path = scratch.join(name);
            std::fs::write(&path, contents).unwrap();
            args.push("--file".into());
            args.push(format!("{name}={}", path.display()));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (harness, ready) = Harness::spawn(&args);
        let _ = std::fs::remove_dir_all(&scratch);
        let port = |key: &str| ready[key].as_u64().expect("a port") as u16;
        Nginx {
            public: SocketAddr::from(([127, 0, 0, 1], port("port"))),
            status: SocketAddr::from(([127, 0, 0, 1], port("status_port"))),
            dir: PathBuf::from(ready["dir"].as_str().expect("a directory")),
            _harness: harness,
        }
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// Every complete access log line so far, each a JSON object.
    pub fn access_log(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
        // Only lines with their '\n': a write may be in progress.
        let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
        complete
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {line}"))
            })
            .collect()
    }
}

/// `nginx -t` of the shipped configuration: (success, stderr).
pub fn nginx_check() -> (bool, String) {
    let output = Harness::command(&["nginx-check"])
        .stdin(Stdio::null())
        .output()
        .expect("python3 runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A fresh, empty database on a server; dropped with the value.
pub struct TestDb {
    pub name: String,
    admin_url: String,
}

impl TestDb {
    pub async fn create(server: &Server) -> TestDb {
        // The time too: a pid comes back, and with a shared server
        // (TEST_DATABASE_URL) or a test runner that runs each test in a
        // process of its own (nextest), so would a pid-and-counter name.
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros();
        let name = format!(
            "t{}_{}_{micros}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed)
        );
        let admin_url = server.admin_url();
        let mut admin = MySqlConnection::connect(&admin_url)
            .await
            .expect("connect as admin");
        sqlx::query(&format!("CREATE DATABASE `{name}`"))
            .execute(&mut admin)
            .await
            .unwrap();
        TestDb { name, admin_url }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", self.admin_url, self.name)
    }

    pub async fn connect(&self) -> MySqlConnection {
        MySqlConnection::connect(&self.url()).await.unwrap()
    }

    /// Connections open to this database now, as the server lists them
    /// (asked over a connection of its own, to no database, closed
    /// politely: a dropped one would count as an aborted client).
    pub async fn open_connections(&self) -> i64 {
        let mut admin = MySqlConnection::connect(&self.admin_url).await.unwrap();
        let open =
            sqlx::query_scalar("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = ?")
                .bind(&self.name)
                .fetch_one(&mut admin)
                .await
                .unwrap();
        admin.close().await.unwrap();
        open
    }

    /// Waits until no connection to this database is open; fails after
    /// `within`, saying `what` was expected to close them.
    pub async fn wait_until_no_connections(&self, within: Duration, what: &str) {
        let deadline = Instant::now() + within;
        loop {
            let open = self.open_connections().await;
            if open == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{open} connections still open {within:?} after {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until a statement starting with `prefix` runs in this database
    /// (blocked on a lock, typically), as `information_schema.PROCESSLIST`
    /// shows it; fails after 30 s. This database's only: other tests run the
    /// same statements.
    pub async fn wait_for_running(&self, prefix: &str) {
        self.wait_for_running_times(prefix, 1).await;
    }

    /// [`TestDb::wait_for_running`], for `times` such statements at once.
    pub async fn wait_for_running_times(&self, prefix: &str, times: i64) {
        let mut watcher = self.connect().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let running: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                 WHERE DB = ? AND INFO LIKE CONCAT(?, '%')",
            )
            .bind(&self.name)
            .bind(prefix)
            .fetch_one(&mut watcher)
            .await
            .unwrap();
            if running >= times {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{running} of {times} `{prefix}...` statements ran within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// From now on every insert into users fails with the server error
    /// "refused by a trigger" (1644): an error that is no duplicate key and
    /// no reason to retry.
    pub async fn refuse_inserts(&self) {
        sqlx::query(
            "CREATE TRIGGER refuse BEFORE INSERT ON users FOR EACH ROW \
             SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by a trigger'",
        )
        .execute(&mut self.connect().await)
        .await
        .unwrap();
    }

    /// The stored row, read behind the API's back: its bytes, which must be
    /// UTF-8 (sqlx 0.8 decodes a binary-collated column only as bytes).
    pub async fn stored_name(&self, userid: u32) -> Option<String> {
        sqlx::query_scalar::<_, Vec<u8>>("SELECT username FROM users WHERE userid = ?")
            .bind(userid)
            .fetch_optional(&mut self.connect().await)
            .await
            .unwrap()
            .map(|bytes| String::from_utf8(bytes).expect("a stored name is UTF-8"))
    }

    pub async fn count(&self) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&mut self.connect().await)
            .await
            .unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs outside any runtime guarantee: use a thread of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            // Bounded: a test that failed while its server was paused
            // (SIGSTOP) drops this before the server; an unbounded connect
            // would hang the whole run instead of reporting the failure.
            // The timer is made inside the runtime: made outside, it panics
            // (no reactor) and the database is never dropped.
            runtime.block_on(async {
                let drop_database = async {
                    if let Ok(mut admin) = MySqlConnection::connect(&url).await {
                        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
                            .execute(&mut admin)
                            .await;
                    }
                };
                tokio::time::timeout(Duration::from_secs(10), drop_database).await
            })
        })
        .join();
    }
}

// ------------------------------------------------------------ the app

/// The pool settings a test chooses; the others keep their defaults.
pub struct PoolSettings {
    pub max_connections: u32,
    pub min_connections: u32,
    /// Seconds: one connection attempt, and the wait for a pooled connection.
    pub connect_timeout: f64,
    /// Seconds: a whole database call.
    pub query_timeout: f64,
}

impl PoolSettings {
    pub fn on(self, figment: Figment) -> Figment {
        figment
            .merge(("databases.users.max_connections", self.max_connections))
            .merge(("databases.users.min_connections", self.min_connections))
            .merge(("databases.users.connect_timeout", self.connect_timeout))
            .merge(("databases.users.query_timeout", self.query_timeout))
    }
}

/// The service's figment pointed at `url`, quiet, on a free port.
pub fn figment(url: &str) -> Figment {
    user_api::config::figment()
        .merge(("databases.users.url", url))
        .merge(("port", 0))
        .merge(("log_level", "off"))
        .merge(("access_log", false))
}

/// Rocket's local client: real routing, guards and database, no socket.
pub async fn client(db: &TestDb) -> Client {
    Client::tracked(user_api::build(figment(&db.url())))
        .await
        .expect("the app starts")
}

/// The app served in-process on a real TCP listener.
pub struct Served {
    pub addr: SocketAddr,
    shutdown: rocket::Shutdown,
}

pub async fn serve(figment: Figment) -> Served {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Mutex::new(Some(tx));
    let rocket = user_api::build(figment)
        .attach(rocket::fairing::AdHoc::on_liftoff(
            "test port",
            move |rocket| {
                let port = rocket.config().port;
                if let Some(tx) = tx.lock().unwrap().take() {
                    let _ = tx.send(port);
                }
                Box::pin(async {})
            },
        ))
        .ignite()
        .await
        .expect("the app starts");
    let shutdown = rocket.shutdown();
    tokio::spawn(rocket.launch());
    let port = tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .unwrap()
        .unwrap();
    Served {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        shutdown,
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.shutdown.clone().notify();
    }
}

/// The real `user-api` binary, its stdout and stderr captured.
pub struct ApiProcess {
    pub port: u16,
    child: Child,
    output: Arc<Mutex<String>>,
}

impl ApiProcess {
    pub fn spawn(env: &[(&str, &str)]) -> ApiProcess {
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_user-api"));
        for (key, _) in std::env::vars() {
            if key.starts_with("DATABASE_") || key.starts_with("ROCKET_") {
                command.env_remove(key);
            }
        }
        command
            .env("ROCKET_ADDRESS", "127.0.0.1")
            .env("ROCKET_PORT", port.to_string())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut all = output.lock().unwrap();
                    all.push_str(&line);
                    all.push('\n');
                }
            });
        }
        ApiProcess {
            port,
            child,
            output,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn logs(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until `/healthz` answers 200, or panics with the logs.
    pub async fn wait_healthy(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("user-api exited early ({status}):\n{}", self.logs());
            }
            if let Ok(r) = get(self.addr(), "/healthz").await
                && r.status == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("user-api not healthy after {within:?}:\n{}", self.logs());
    }

    /// Waits until the logs contain `needle`; panics with them if the
    /// process exits first or `within` passes.
    pub async fn wait_for_log(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.logs().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                panic!(
                    "user-api exited ({status}) before {needle:?}:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no {needle:?} after {within:?}:\n{}", self.logs());
    }

    /// SIGTERM, as `docker stop` and Kubernetes send it.
    pub fn terminate(&self) {
        terminate(self.child.id());
    }

    /// The exit code, or `None` if it did not exit in time.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader threads drain the pipes.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Some(status.code().unwrap_or(-1));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A password file in a temp dir of its own.
pub fn secret_file(contents: &str) -> PathBuf {
    let dir = unique_temp_dir("secret");
    let path = dir.join("db_password");
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(contents.as_bytes()).unwrap();
    path
}

// ------------------------------------------------------------ HTTP client

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: String,
}

impl HttpResponse {
    /// The value of a header that must appear at most once.
    pub fn header(&self, name: &str) -> Option<&str> {
        let values = self.headers.get(&name.to_ascii_lowercase())?;
        assert_eq!(
            values.len(),
            1,
            "header {name} appears {} times",
            values.len()
        );
        Some(&values[0])
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The API's error shape, with a JSON content type.
    pub fn error_code(&self) -> String {
        let content_type = self.header("content-type").unwrap_or("");
        assert!(
            content_type.starts_with("application/json"),
            "content-type {content_type:?}"
        );
        let body = self.json();
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code in {body}"))
            .to_owned()
    }
}

/// One request on a fresh connection (`Connection: close`), read to EOF.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<HttpResponse> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut head =
        format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    if let Some(body) = body {
        stream.write_all(body).await?;
    }
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 30 s"))??;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> std::io::Result<HttpResponse> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("bad status line"))?;
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            headers
                .entry(name.trim().to_ascii_lowercase())
                .or_default()
                .push(value.trim().to_owned());
        }
    }
    let mut body = raw[split + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.iter().any(|v| v.contains("chunked")))
    {
        body = dechunk(&body);
    }
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8(body).map_err(|_| invalid("body is not UTF-8"))?,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 2 + size + 2..];
    }
    out
}

pub async fn get(addr: SocketAddr, target: &str) -> std::io::Result<HttpResponse> {
    request(addr, "GET", target, &[], None).await
}

pub async fn post_json(
    addr: SocketAddr,
    target: &str,
    body: &Value,
) -> std::io::Result<HttpResponse> {
    let body = body.to_string();
    request(
        addr,
        "POST",
        target,
        &[("Content-Type", "application/json")],
        Some(body.as_bytes()),
    )
    .await
}

/// SIGTERM to a process, by the system call: no `kill` program needed on
/// PATH (the Nix check's sandbox has only what it declares).
pub fn terminate(pid: u32) {
    let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(
        sent,
        0,
        "kill({pid}, SIGTERM): {}",
        std::io::Error::last_os_error()
    );
}
