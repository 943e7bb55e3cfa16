//! `X-Request-Id`: taken from the client (or nginx) when sane, generated
//! otherwise, returned on every response and written in the access log.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rocket::fairing::{Fairing, Info, Kind};
use rocket::http::Header;
use rocket::request::Request;
use rocket::{Data, Response};

use crate::log;

pub const HEADER: &str = "X-Request-Id";

#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    pub fn of<'r>(request: &'r Request<'_>) -> &'r RequestId {
        request.local_cache(|| {
            let given = request
                .headers()
                .get_one(HEADER)
                .filter(|id| is_acceptable(id));
            RequestId(given.map_or_else(generate, str::to_owned))
        })
    }
}

/// Visible ASCII without spaces or quotes, at most 128 bytes: safe to echo
/// in a header and to write in a log line.
fn is_acceptable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(&b))
}

/// 128 bits as 32 hex digits, like nginx's `$request_id`. Unique, not
/// secret: SipHash with per-process random keys over a counter.
fn generate() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static KEYS: std::sync::OnceLock<(RandomState, RandomState)> = std::sync::OnceLock::new();
    let (a, b) = KEYS.get_or_init(|| (RandomState::new(), RandomState::new()));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let half = |state: &RandomState| {
        let mut hasher = state.build_hasher();
        hasher.write_u64(n);
        hasher.finish()
    };
    format!("{:016x}{:016x}", half(a), half(b))
}

/// When the request arrived (the request fairing's first act); the metrics
/// time unmatched requests by it too, so no second timestamp is cached.
pub(crate) struct Started(Instant);

impl Started {
    pub(crate) fn of(request: &Request<'_>) -> Instant {
        request.local_cache(|| Started(Instant::now())).0
    }
}

/// Tags every response with its request id and, when enabled, writes the
/// access-log line.
pub struct RequestLog {
    pub enabled: bool,
}

#[rocket::async_trait]
impl Fairing for RequestLog {
    fn info(&self) -> Info {
        Info {
            name: "request id and access log",
            kind: Kind::Request | Kind::Response,
        }
    }

    async fn on_request(&self, request: &mut Request<'_>, _: &mut Data<'_>) {
        request.local_cache(|| Started(Instant::now()));
        RequestId::of(request);
    }

    async fn on_response<'r>(&self, request: &'r Request<'_>, response: &mut Response<'r>) {
        let id = RequestId::of(request);
        response.set_header(Header::new(HEADER, id.0.clone()));
        if self.enabled {
            let started = request.local_cache(|| Started(Instant::now()));
            log::request(
                request.method().as_str(),
                request.uri().path().as_str(),
                response.status().code,
                started.0.elapsed(),
                &id.0,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_unique_hex() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn only_sane_ids_are_taken_from_the_client() {
        assert!(is_acceptable("abc-123"));
        assert!(is_acceptable(&"a".repeat(128)));
        for bad in ["", "has space", "quote\"", "new\nline", &"a".repeat(129)] {
            assert!(!is_acceptable(bad), "{bad:?}");
        }
    }
}
