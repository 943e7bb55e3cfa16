//! The process's own log: one line per event on stdout, human-readable by
//! default, JSON when `log_format = "json"`, through `tracing`.
//!
//! Lines are formatted on the thread that logs and written by
//! tracing-appender's worker thread, which drains everything queued and
//! writes it with one `write(2)`: the request path never waits for stdout,
//! and a line reaches stdout as soon as the worker is scheduled. The queue
//! blocks rather than drops when full (no line is lost under load), and
//! [`finish`] writes out what is queued before the process exits. Rocket's
//! own `log` records are bridged into the same output, filtered by its
//! `log_level` (off by default: its per-request trace is chattier than the
//! request itself).

use std::io::BufWriter;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use rocket::config::LogLevel;
use serde::{Deserialize, Serialize};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `Default` only for the access line's fallback, before any `init`:
    /// the configured default is `config::AppSettings`'.
    #[default]
    Text,
    Json,
}

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Dropped by [`finish`]: the worker writes out its queue, then stops.
static WORKER: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Room for bursts: at ~150 bytes a line, 64 KiB is one `write(2)` per
/// ~400 lines.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Installs the process's subscriber; `main` calls it once, before anything
/// logs. A second call changes nothing (the tests build many servers in one
/// process).
pub fn init(format: LogFormat, rocket_level: LogLevel) {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        .finish(BufWriter::with_capacity(
            WRITE_BUFFER_BYTES,
            std::io::stdout(),
        ));
    let filter = Targets::new()
        .with_target(env!("CARGO_CRATE_NAME"), LevelFilter::INFO)
        .with_default(rocket_filter(rocket_level));
    let layer = fmt::layer()
        .with_writer(writer)
        .with_ansi(false)
        .with_target(false);
    let installed = match format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(layer.with_filter(filter))
            .try_init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(
                layer
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_filter(filter),
            )
            .try_init(),
    };
    if installed.is_ok() {
        let _ = FORMAT.set(format);
        *WORKER.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard);
    }
}

fn rocket_filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Off => LevelFilter::OFF,
        LogLevel::Critical => LevelFilter::WARN,
        LogLevel::Normal => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::TRACE,
    }
}

/// Writes out every queued line; call it last, before the process exits.
pub fn finish() {
    drop(WORKER.lock().unwrap_or_else(|e| e.into_inner()).take());
}

/// The access log line. The query string is left out on purpose: it carries
/// user data (usernames) that has no business in logs.
pub fn request(method: &str, path: &str, status: u16, latency: Duration, request_id: &str) {
    let latency_ms = (latency.as_secs_f64() * 1_000_000.0).round() / 1000.0;
    match FORMAT.get().copied().unwrap_or_default() {
        // What a person scans for first, then the id to grep for.
        LogFormat::Text => tracing::info!(
            request_id = %request_id,
            "{method} {path} {status} {latency_ms:.2}ms"
        ),
        LogFormat::Json => tracing::info!(
            method = %method,
            path = %path,
            status,
            latency_ms,
            request_id = %request_id,
            "request"
        ),
    }
}
