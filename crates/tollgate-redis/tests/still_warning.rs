//! An outage that goes on is logged again at `warn` every 10 minutes, with the check's
//! error, until the primary answers: a primary that will not answer until someone acts (a
//! wrong password, a user without the commands, a replica as the URL) was logged once, at
//! start-up, while each instance counted alone in memory (a review: nothing more in 2.5
//! minutes of traffic). In a test binary of its own: tracing caches a callsite's interest
//! process-wide.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{primary, wait_for_mode};
use tollgate_limits::{Batch, Bucket, Limit, MemoryStore, Quota, Store};
use tollgate_redis::{FallbackConfig, FallbackStore, Mode};
use tollgate_testkit::EventLog;

const STILL: &str = "rate-limit store still deciding from memory";

#[test]
fn an_outage_that_goes_on_is_logged_every_ten_minutes() {
    let events = EventLog::during(async {
        tokio::time::pause();
        let (primary, down) = primary();
        let store = FallbackStore::connect_with_memory(
            primary,
            MemoryStore::new(),
            FallbackConfig::default(),
        )
        .await;
        let batch = Batch::charge(vec![Bucket::new(
            "api",
            "client",
            Limit::sliding(Quota::per_minute(100)),
        )]);
        down.store(true, Ordering::SeqCst);
        assert!(store.apply(&batch).await.unwrap().allowed);
        assert_eq!(store.mode(), Mode::Fallback);
        // 25 minutes of checks that fail (time moves on its own while all wait).
        tokio::time::sleep(Duration::from_secs(25 * 60)).await;
        assert_eq!(store.mode(), Mode::Fallback);
        down.store(false, Ordering::SeqCst);
        wait_for_mode(&store, Mode::Primary, Duration::from_secs(10)).await;
        // Back: nothing more is said of it.
        tokio::time::sleep(Duration::from_secs(15 * 60)).await;
    });
    let still: Vec<&String> = events.iter().filter(|line| line.contains(STILL)).collect();
    assert_eq!(still.len(), 2, "{events:#?}");
    for (line, minutes) in still.iter().zip([10, 20]) {
        assert!(
            line.starts_with("WARN tollgate::store:")
                && line.contains("rate-limit store unavailable: down")
                && line.contains(&format!("minutes={minutes}")),
            "{line}"
        );
    }
}
