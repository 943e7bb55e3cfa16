//! The wait `main` does itself when Rocket 0.5.2's `launch()` returns while
//! requests are still in flight: after a SIGTERM between two polls of
//! Rocket's shutdown select (a race no test can provoke on demand), or when
//! a request outlives Rocket's own wait. The wait lives here, where its
//! arithmetic and its exit conditions can be tested alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// Often enough that the exit follows the last request closely, rarely
/// enough to cost nothing.
const POLL: Duration = Duration::from_millis(20);

/// How long requests in flight may still take: each connection keeps
/// Rocket's grace and then its mercy period; both are whole seconds, so one
/// more covers a connection that started its grace just before ours.
pub fn in_flight_limit(shutdown: &rocket::config::Shutdown) -> Duration {
    Duration::from_secs(u64::from(shutdown.grace + shutdown.mercy) + 1)
}

/// Waits until `owned` has no other strong reference (true), or gives up
/// after `limit` (false). Every request Rocket still serves holds a clone of
/// its `Arc<Rocket>`: being the sole owner means none is in flight any more.
pub async fn wait_until_sole_owner<T>(owned: &Arc<T>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if Arc::strong_count(owned) == 1 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_grace_plus_mercy_plus_a_second() {
        let shutdown = |grace, mercy| rocket::config::Shutdown {
            grace,
            mercy,
            ..Default::default()
        };
        assert_eq!(in_flight_limit(&shutdown(5, 2)), Duration::from_secs(8));
        assert_eq!(in_flight_limit(&shutdown(0, 0)), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_sole_owner_is_reported_at_once_even_with_no_time_left() {
        assert!(wait_until_sole_owner(&Arc::new(()), Duration::ZERO).await);
    }

    #[tokio::test]
    async fn the_wait_ends_as_soon_as_no_one_else_holds_a_reference() {
        let owned = Arc::new(());
        let held = owned.clone();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(held);
        });
        let started = Instant::now();
        // Long before the limit (loaded machines delay timers: the margin
        // is wide).
        let wait = wait_until_sole_owner(&owned, Duration::from_secs(60));
        let ended = tokio::time::timeout(Duration::from_secs(20), wait).await;
        let waited = started.elapsed();
        release.await.unwrap();
        assert_eq!(ended, Ok(true), "still waiting 20 s after the release");
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
    }

    #[tokio::test]
    async fn the_wait_gives_up_at_the_limit_when_a_reference_stays() {
        let owned = Arc::new(());
        let _held = owned.clone();
        let limit = Duration::from_millis(500);
        let started = Instant::now();
        let wait = wait_until_sole_owner(&owned, limit);
        let ended = tokio::time::timeout(limit + Duration::from_secs(5), wait).await;
        let waited = started.elapsed();
        assert_eq!(ended, Ok(false), "still waiting 5 s past the limit");
        assert!(waited >= limit, "{waited:?}");
    }
}
