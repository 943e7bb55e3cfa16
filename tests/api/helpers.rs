//! Test support: a real MariaDB (a throwaway `mariadbd` from PATH unless
//! `TEST_DATABASE_URL` names one), a fresh database per test, the app served
//! in-process or as the real binary, and a tiny HTTP/1.1 client over TCP.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rocket::figment::Figment;
use rocket::local::asynchronous::Client;
use serde_json::Value;
use sqlx::Connection;
use sqlx::mysql::MySqlConnection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------- MariaDB

/// A MariaDB server reachable as root without a password on 127.0.0.1.
pub struct Server {
    pub port: u16,
    dir: Option<PathBuf>,
    /// Closing the wrapper's stdin stops mariadbd: the pipe also closes when
    /// the test process dies, so no server outlives a crashed test run.
    running: Option<(Child, ChildStdin)>,
    external_url: Option<String>,
}

static SHARED: OnceLock<Server> = OnceLock::new();
static SERIAL: AtomicUsize = AtomicUsize::new(0);

/// The server most tests share, started once per test binary.
pub fn shared_server() -> &'static Server {
    SHARED.get_or_init(|| match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Server {
            port: 0,
            dir: None,
            running: None,
            external_url: Some(url.trim_end_matches('/').to_owned()),
        },
        _ => Server::start_throwaway(true),
    })
}

impl Server {
    /// A server of the test's own, to stop and restart at will.
    pub fn start_dedicated() -> Server {
        Server::start_throwaway(false)
    }

    /// A dedicated server that will listen on `port` once [`Server::resume`]
    /// is called: for tests of what happens before the database exists.
    pub fn prepare_on(port: u16) -> Server {
        let dir = unique_temp_dir("mariadb");
        install(&dir);
        Server {
            port,
            dir: Some(dir),
            running: None,
            external_url: None,
        }
    }

    fn start_throwaway(remove_on_exit: bool) -> Server {
        let mut server = Server::prepare_on(free_port());
        server.launch(remove_on_exit);
        server
    }

    pub fn admin_url(&self) -> String {
        match &self.external_url {
            Some(url) => url.clone(),
            None => format!("mysql://root@127.0.0.1:{}", self.port),
        }
    }

    fn launch(&mut self, remove_on_exit: bool) {
        let dir = self
            .dir
            .clone()
            .expect("only throwaway servers can be started");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .unwrap();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(
                r#""$@" & pid=$!
                   read -r _ || true
                   kill "$pid" 2>/dev/null; wait "$pid"
                   if [ -n "$REMOVE_DIR" ]; then rm -rf "$REMOVE_DIR"; fi"#,
            )
            .arg("sh")
            .arg(program("mariadbd"))
            .args(server_args(&dir, self.port))
            .env(
                "REMOVE_DIR",
                if remove_on_exit {
                    dir.as_os_str()
                } else {
                    "".as_ref()
                },
            )
            .stdin(Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("sh runs");
        let stdin = child.stdin.take().unwrap();
        self.running = Some((child, stdin));
        wait_for_port(self.port, Duration::from_secs(60)).unwrap_or_else(|e| {
            panic!(
                "mariadbd did not start: {e}; see {}",
                dir.join("server.log").display()
            )
        });
    }

    /// Stops the server (a clean shutdown, like a container stop).
    pub fn stop(&mut self) {
        if let Some((mut child, stdin)) = self.running.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data directory.
    pub fn resume(&mut self) {
        self.launch(false);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A server program by name: PATH first, then the sbin directories that a
/// non-root PATH often lacks (Debian installs mariadbd and nginx there).
pub fn program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed (apt-get install mariadb-server nginx)"))
}

fn install(dir: &Path) {
    let output = Command::new(program("mariadb-install-db"))
        .arg("--no-defaults")
        .arg(format!("--datadir={}", dir.join("data").display()))
        .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
        .args(run_as_root_flag())
        .output()
        .expect("mariadb-install-db runs");
    assert!(
        output.status.success(),
        "mariadb-install-db failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn server_args(dir: &Path, port: u16) -> Vec<String> {
    vec![
        "--no-defaults".into(),
        format!("--datadir={}", dir.join("data").display()),
        format!("--socket={}", dir.join("mysqld.sock").display()),
        format!("--pid-file={}", dir.join("mysqld.pid").display()),
        format!("--port={port}"),
        "--bind-address=127.0.0.1".into(),
        "--skip-log-bin".into(),
        "--innodb-buffer-pool-size=64M".into(),
        // Tests need crash-consistency of nothing: skip the fsync per commit.
        "--innodb-flush-log-at-trx-commit=2".into(),
        "--max-connections=500".into(),
    ]
    .into_iter()
    .chain(run_as_root_flag())
    .collect()
}

/// mariadbd refuses to run as root unless told to (CI runs as root); as any
/// other user the flag would make mariadb-install-db try to chown and fail.
fn run_as_root_flag() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective_uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1));
    (effective_uid == Some("0")).then(|| "--user=root".to_owned())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_for_port(port: u16, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "nothing listens on 127.0.0.1:{port} after {within:?}"
    ))
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

/// A fresh, empty database on a server; dropped with the value.
pub struct TestDb {
    pub name: String,
    admin_url: String,
}

impl TestDb {
    pub async fn create(server: &Server) -> TestDb {
        let name = format!(
            "t{}_{}",
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

    /// The stored row, read behind the API's back.
    pub async fn stored_name(&self, userid: u32) -> Option<String> {
        sqlx::query_scalar("SELECT username FROM users WHERE userid = ?")
            .bind(userid)
            .fetch_optional(&mut self.connect().await)
            .await
            .unwrap()
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
            runtime.block_on(async {
                if let Ok(mut admin) = MySqlConnection::connect(&url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}

// ------------------------------------------------------------ the app

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

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
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
