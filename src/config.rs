//! Configuration: Rocket's figment (Rocket.toml + `ROCKET_*`), plus
//! `DATABASE_*` variables mapped onto `databases.users.*`, the table
//! rocket_db_pools hands to the pool.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use rocket::config::LogLevel;
use rocket::figment::providers::{Env, Format, Serialized, Toml};
use rocket::figment::{Figment, Profile, value::Value};
use serde::{Deserialize, Serialize};
use sqlx::ConnectOptions;
use sqlx::mysql::MySqlConnectOptions;

use crate::log::LogFormat;

/// The figment the server and the `healthcheck` subcommand read: Rocket's
/// own layering (defaults < Rocket.toml < `ROCKET_*`) with this service's
/// defaults slotted in above Rocket's, and `DATABASE_*` on top.
pub fn figment() -> Figment {
    defaults()
        .merge(Toml::file(Env::var_or("ROCKET_CONFIG", "Rocket.toml")).nested())
        .merge(Env::prefixed("ROCKET_").ignore(&["PROFILE"]).global())
        .merge(
            Env::prefixed("DATABASE_")
                .map(|key| format!("databases.users.{key}").into())
                .global(),
        )
        .select(Profile::from_env_or(
            "ROCKET_PROFILE",
            rocket::Config::DEFAULT_PROFILE,
        ))
}

/// Rocket's defaults, and this service's above them: every default of the
/// service is stated once, in the `Default` impls below (src/README.md's
/// configuration table is checked against this figment).
pub fn defaults() -> Figment {
    Figment::from(rocket::Config::default()).merge(Serialized::defaults(ServiceDefaults::default()))
}

#[derive(Default, Serialize)]
struct ServiceDefaults {
    /// Rocket's own setting, turned off: no `Server: Rocket` header, nothing
    /// to fingerprint.
    ident: bool,
    #[serde(flatten)]
    app: AppSettings,
    databases: Databases,
}

#[derive(Default, Serialize)]
struct Databases {
    users: DatabaseSettings,
}

/// Application settings that live beside Rocket's own at the top level.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AppSettings {
    pub log_format: LogFormat,
    /// Rocket's own records (its `log_level`), bridged into the same log.
    /// Off: the service's own log (one line per request, startup and
    /// shutdown events, in text or JSON) replaces Rocket's multi-line
    /// output, which costs more than the request itself and would break
    /// JSON logs.
    pub log_level: LogLevel,
    /// One line per request; off only to measure what logging costs.
    pub access_log: bool,
    /// `GET /metrics` and the request metrics; off only to measure what
    /// they cost (the pool's counters stay: a few atomic increments).
    pub metrics: bool,
    /// The listening socket's backlog (see `listener`); the kernel caps it
    /// at `net.core.somaxconn`. 0 leaves Rocket's (std's 128).
    pub listen_backlog: u32,
    /// Seconds to stay alive after a clean stop, the listener closed: new
    /// connections are refused (reset) instead of meeting an address that
    /// is gone, until every proxy that finds replicas by name has dropped
    /// this one (compose: 3, over nginx's 2 s re-resolve). 0: exit at once.
    pub exit_linger: u64,
    /// `PUT` and `DELETE /users/<id>` without `If-Match` get 428: every
    /// client must say which version it replaces. Off: they behave as
    /// without conditions.
    pub require_if_match: bool,
    /// Swagger UI at `/docs/`. Off: `/docs` is a 404 like any unknown path.
    pub docs: bool,
}

impl Default for AppSettings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            log_level: LogLevel::Off,
            access_log: true,
            metrics: true,
            listen_backlog: 4096,
            exit_linger: 0,
            require_if_match: false,
            docs: true,
        }
    }
}

/// `databases.users`: either `url`, or `host` + `port` + `name` + `user` +
/// `password_file`. Timeouts are in seconds and may be fractional.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DatabaseSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password_file: Option<PathBuf>,
    /// Present only to refuse it: passwords come from files.
    #[serde(skip_serializing)]
    password: Option<Value>,
    pub max_connections: u32,
    pub min_connections: u32,
    /// Bounds one connection attempt and the wait for a pooled connection.
    connect_timeout: f64,
    idle_timeout: f64,
    /// Keeps retrying the database at start-up for this long.
    startup_timeout: f64,
    /// Bounds a whole database call (waiting for a connection included),
    /// so a stalled server answers 503 as fast as an unreachable one.
    query_timeout: f64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: None,
            host: None,
            port: 3306,
            name: None,
            user: None,
            password_file: None,
            password: None,
            max_connections: 16,
            min_connections: 2,
            connect_timeout: 3.0,
            idle_timeout: 300.0,
            startup_timeout: 60.0,
            query_timeout: 3.0,
        }
    }
}

impl DatabaseSettings {
    pub fn connect_timeout(&self) -> Duration {
        seconds(self.connect_timeout)
    }

    pub fn idle_timeout(&self) -> Duration {
        seconds(self.idle_timeout)
    }

    pub fn startup_timeout(&self) -> Duration {
        seconds(self.startup_timeout)
    }

    pub fn query_timeout(&self) -> Duration {
        seconds(self.query_timeout)
    }

    /// Where the server is, for log lines: never includes credentials.
    pub fn describe(&self) -> String {
        match (&self.url, &self.host) {
            (Some(url), _) => match MySqlConnectOptions::from_str(url) {
                Ok(o) => format!(
                    "{}:{}/{}",
                    o.get_host(),
                    o.get_port(),
                    o.get_database().unwrap_or("")
                ),
                Err(_) => "the configured DATABASE_URL".into(),
            },
            (None, Some(host)) => format!(
                "{host}:{}/{}",
                self.port,
                self.name.as_deref().unwrap_or("")
            ),
            (None, None) => "nowhere".into(),
        }
    }

    /// Builds the connection options, reading the password file. Errors name
    /// the setting at fault and never contain the password.
    pub fn connect_options(&self) -> Result<MySqlConnectOptions, String> {
        if self.password.is_some() {
            return Err(
                "DATABASE_PASSWORD (databases.users.password) is not read: put the \
                        password in a file and set DATABASE_PASSWORD_FILE to its path"
                    .into(),
            );
        }
        let options = match (&self.url, &self.host) {
            (Some(_), Some(_)) => {
                return Err(
                    "give the database either as DATABASE_URL or as DATABASE_HOST \
                            (+ PORT, NAME, USER, PASSWORD_FILE), not both"
                        .into(),
                );
            }
            (None, None) => {
                return Err(
                    "no database configured: set DATABASE_URL, or DATABASE_HOST, \
                            DATABASE_NAME, DATABASE_USER and DATABASE_PASSWORD_FILE"
                        .into(),
                );
            }
            (Some(url), None) => MySqlConnectOptions::from_str(url)
                .map_err(|e| format!("DATABASE_URL is not a valid mysql:// URL: {e}"))?,
            (None, Some(host)) => {
                let name = self.name.as_deref().ok_or("DATABASE_NAME is not set")?;
                let user = self.user.as_deref().ok_or("DATABASE_USER is not set")?;
                let mut options = MySqlConnectOptions::new()
                    .host(host)
                    .port(self.port)
                    .database(name)
                    .username(user);
                if let Some(path) = &self.password_file {
                    options = options.password(&read_password(path)?);
                }
                options
            }
        };
        Ok(options.charset("utf8mb4").disable_statement_logging())
    }
}

fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value).unwrap_or(Duration::ZERO)
}

/// The whole file minus one trailing line break, as `echo pw > file` leaves.
fn read_password(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read DATABASE_PASSWORD_FILE {}: {e}", path.display()))?;
    let password = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if password.is_empty() {
        return Err(format!(
            "DATABASE_PASSWORD_FILE {} is empty",
            path.display()
        ));
    }
    Ok(password.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rocket::figment::providers::Serialized;

    fn settings(pairs: &[(&str, &str)]) -> DatabaseSettings {
        let mut figment = Figment::new();
        for (key, value) in pairs {
            figment = figment.merge(Serialized::default(key, value));
        }
        figment.extract().unwrap()
    }

    #[test]
    fn password_file_is_read_without_its_line_break() {
        let dir = std::env::temp_dir().join(format!("user-api-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert_eq!(read_password(&file).unwrap(), "s3cret");
        std::fs::write(&file, "").unwrap();
        assert!(read_password(&file).unwrap_err().contains("is empty"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(read_password(&file).unwrap_err().contains("cannot read"));
    }

    #[test]
    fn password_in_a_setting_is_refused() {
        let s = settings(&[("host", "db"), ("password", "hunter2")]);
        let err = s.connect_options().unwrap_err();
        assert!(err.contains("DATABASE_PASSWORD_FILE") && !err.contains("hunter2"));
    }

    #[test]
    fn url_and_host_together_are_refused() {
        let s = settings(&[("host", "db"), ("url", "mysql://a@b/c")]);
        assert!(s.connect_options().unwrap_err().contains("not both"));
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        // Without the figment's defaults (serde's, from the same `Default`),
        // and through the accessors: seconds become durations.
        let s = settings(&[("url", "mysql://u@dbhost/app")]);
        assert_eq!((s.max_connections, s.min_connections), (16, 2));
        assert_eq!(s.connect_timeout(), Duration::from_secs(3));
        assert_eq!(s.idle_timeout(), Duration::from_secs(300));
        assert_eq!(s.query_timeout(), Duration::from_secs(3));
        assert_eq!(s.startup_timeout(), Duration::from_secs(60));

        let app: AppSettings = Figment::new().extract().unwrap();
        assert_eq!(app.log_format, LogFormat::Text);
        assert_eq!(app.log_level, LogLevel::Off);
        assert!(app.access_log);
        assert_eq!(app.listen_backlog, 4096);
        assert_eq!(app.exit_linger, 0);

        // Rocket reads its own keys from the same defaults.
        let rocket = rocket::Config::from(defaults());
        assert_eq!(rocket.log_level, LogLevel::Off);
        assert_eq!(rocket.ident.as_str(), None);
    }

    /// One `| `key` | `ENV` | default | ... |` row per setting.
    fn readme_rows() -> Vec<(String, String, String)> {
        let readme = include_str!("README.md");
        let section = readme
            .split("## Configuration")
            .nth(1)
            .expect("src/README.md has a Configuration section");
        section
            .lines()
            .take_while(|l| !l.starts_with("## "))
            .filter(|l| l.starts_with("| `"))
            .map(|row| {
                // No cell of the table holds a `|`.
                let cells: Vec<&str> = row.split('|').skip(1).map(str::trim).collect();
                let unquote = |cell: &str| cell.trim_matches('`').to_owned();
                (unquote(cells[0]), unquote(cells[1]), cells[2].to_owned())
            })
            .collect()
    }

    /// A default as the table writes it: `3`, not `3.0`.
    fn rendered(value: &serde_json::Value) -> String {
        match value {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => {
                format!("{}", n.as_f64().unwrap() as i64)
            }
            other => other.to_string(),
        }
    }

    fn leaf_keys(prefix: &str, value: &serde_json::Value, keys: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(fields) => {
                for (name, inner) in fields {
                    leaf_keys(&format!("{prefix}{name}."), inner, keys);
                }
            }
            _ => keys.push(prefix.trim_end_matches('.').to_owned()),
        }
    }

    #[test]
    fn the_readme_table_states_every_default() {
        let rows = readme_rows();
        assert!(rows.len() > 20, "{rows:?}");
        let figment = defaults();
        let ours = serde_json::to_value(ServiceDefaults::default()).unwrap();
        let mut own_keys = Vec::new();
        leaf_keys("", &ours, &mut own_keys);
        for key in &own_keys {
            assert!(
                rows.iter().any(|(k, _, _)| k == key),
                "src/README.md's table misses `{key}`"
            );
        }
        for (key, env, default) in &rows {
            let expected_env = match key.strip_prefix("databases.users.") {
                Some(setting) => format!("DATABASE_{}", setting.to_uppercase()),
                None => format!("ROCKET_{}", key.split('.').next().unwrap().to_uppercase()),
            };
            assert_eq!(env, &expected_env, "`{key}`");
            let value = figment.find_value(key).ok().map(|v| {
                v.deserialize::<serde_json::Value>()
                    .expect("a default is plain data")
            });
            match (
                default.strip_prefix('`').and_then(|d| d.strip_suffix('`')),
                value,
            ) {
                (Some(stated), Some(value)) => {
                    assert_eq!(stated, rendered(&value), "`{key}`'s default")
                }
                (Some(stated), None) => panic!("`{key}`: the table says `{stated}`, no default"),
                (None, Some(value)) => assert!(
                    default.starts_with('(') && !own_keys.contains(key),
                    "`{key}`: the table gives no default, the code gives {value}"
                ),
                (None, None) => assert!(default.is_empty(), "`{key}`: {default:?}"),
            }
        }
    }

    #[test]
    fn timeouts_may_be_fractional_and_never_negative() {
        let s: DatabaseSettings = Figment::new()
            .merge(Serialized::default("url", "mysql://u@dbhost/app"))
            .merge(Serialized::default("query_timeout", 0.25))
            .merge(Serialized::default("connect_timeout", -1.0))
            .extract()
            .unwrap();
        assert_eq!(s.query_timeout(), Duration::from_millis(250));
        assert_eq!(s.connect_timeout(), Duration::ZERO);
    }

    #[test]
    fn describe_leaves_credentials_out() {
        let s = settings(&[("url", "mysql://u:topsecret@dbhost:3307/app")]);
        assert_eq!(s.describe(), "dbhost:3307/app");
    }
}
