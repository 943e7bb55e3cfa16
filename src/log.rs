//! The process's own log: one line per event on stdout, human-readable by
//! default, JSON when `log_format = "json"`. Rocket's chatty per-request
//! output is turned down in favour of [`request`].

use std::io::Write;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The first call wins: the format is fixed for the life of the process.
pub fn init(format: LogFormat) {
    let _ = FORMAT.set(format);
}

fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or_default()
}

pub fn info(message: &str) {
    event("info", message);
}

pub fn warn(message: &str) {
    event("warn", message);
}

pub fn error(message: &str) {
    event("error", message);
}

fn event(level: &str, message: &str) {
    let ts = timestamp(SystemTime::now());
    let line = match format() {
        LogFormat::Text => format!("{ts} {:<5} {message}\n", level.to_uppercase()),
        LogFormat::Json => format!("{}\n", json!({"ts": ts, "level": level, "msg": message})),
    };
    write_line(&line);
}

/// The access log line. The query string is left out on purpose: it carries
/// user data (usernames) that has no business in logs.
pub fn request(method: &str, path: &str, status: u16, latency: Duration, request_id: &str) {
    let ts = timestamp(SystemTime::now());
    let millis = latency.as_secs_f64() * 1000.0;
    let line = match format() {
        LogFormat::Text => {
            format!("{ts} INFO  {method} {path} {status} {millis:.2}ms request_id={request_id}\n")
        }
        LogFormat::Json => format!(
            "{}\n",
            json!({
                "ts": ts,
                "level": "info",
                "msg": "request",
                "method": method,
                "path": path,
                "status": status,
                "latency_ms": (millis * 1000.0).round() / 1000.0,
                "request_id": request_id,
            })
        ),
    };
    write_line(&line);
}

fn write_line(line: &str) {
    // One write per line (stdout is line-buffered), so lines from
    // concurrent requests never interleave.
    let _ = std::io::stdout().lock().write_all(line.as_bytes());
}

/// RFC 3339 UTC with milliseconds, without pulling in a date crate.
fn timestamp(now: SystemTime) -> String {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_790_635_395_123);
        assert_eq!(timestamp(t), "2026-09-28T22:43:15.123Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&timestamp(leap)[..10], "2000-02-29");
    }
}
