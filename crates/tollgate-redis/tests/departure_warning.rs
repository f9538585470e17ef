//! A departure from the primary short of an outage (one call failed; memory decides until
//! a check passes) is logged at `warn`, at most once a minute: a review's three instances
//! without a divisor admitted up to 252 of 100 from memory while their calls timed out one
//! at a time, and nothing was logged above `debug` (the outage's warning waits for the
//! circuit breaker's threshold). The return from a departure so warned about is an `info`.
//! In a test binary of its own: tracing caches a callsite's interest process-wide.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{primary, wait_for_mode};
use tollgate_limits::{Batch, Bucket, Limit, MemoryStore, Quota, Store};
use tollgate_redis::{FallbackConfig, FallbackStore, Mode};
use tollgate_testkit::EventLog;

#[test]
fn a_departure_short_of_an_outage_is_warned_about_at_most_once_a_minute() {
    let events = EventLog::during(async {
        let (primary, down) = primary();
        // No outage: the breaker's threshold is out of reach.
        let config = FallbackConfig::default().with_failure_threshold(1000);
        let store =
            FallbackStore::connect_with_memory(primary.clone(), MemoryStore::new(), config).await;
        let batch = Batch::charge(vec![Bucket::new(
            "api",
            "client",
            Limit::sliding(Quota::per_minute(100)),
        )]);
        for _ in 0..3 {
            down.store(true, Ordering::SeqCst);
            // Decided from memory: admitted all the same.
            assert!(store.apply(&batch).await.unwrap().allowed);
            assert_eq!(store.mode(), Mode::Fallback);
            down.store(false, Ordering::SeqCst);
            wait_for_mode(&store, Mode::Primary, Duration::from_secs(3)).await;
        }
    });
    let warned: Vec<&String> = events
        .iter()
        .filter(|line| line.contains("deciding from memory until a check of the primary passes"))
        .collect();
    assert_eq!(warned.len(), 1, "{events:#?}");
    assert!(
        warned[0].starts_with("WARN tollgate::store:")
            && warned[0].contains(r#"reason="rate-limit store unavailable: down""#)
            && warned[0].contains("departures=1"),
        "{}",
        warned[0]
    );
    // Each departure is still a `debug` event; none was an outage.
    let left = events
        .iter()
        .filter(|line| line.contains("deciding from memory until the primary is checked"))
        .count();
    assert_eq!(left, 3, "{events:#?}");
    assert!(
        !events
            .iter()
            .any(|line| line.contains("switched to the in-memory fallback")),
        "{events:#?}"
    );
    // The return from the departure warned about is said, once, right after it (a short
    // pause logged its departure and never its end); the two not warned about, not.
    let back: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, line)| line.starts_with("INFO") && line.contains("back on the primary"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(back.len(), 1, "{events:#?}");
    let warned_at = events.iter().position(|line| line == warned[0]).unwrap();
    assert!(back[0] > warned_at, "{events:#?}");
}
