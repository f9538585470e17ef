//! Every switch of the fallback store is a tracing event. In a test binary of its own: a
//! callsite first reached by a test on another thread (with no subscriber) could be cached
//! as uninteresting before this test's subscriber is set.

mod common;

use std::time::Duration;

use common::wait_for_mode;
use tollgate_redis::{FallbackConfig, FallbackStore, Mode, RedisStore};
use tollgate_testkit::{EventLog, RedisServer};

const RECOVERY: Duration = Duration::from_secs(4);

#[test]
fn every_transition_is_a_tracing_event_with_its_reason() {
    let events = EventLog::during(async {
        let mut server = RedisServer::start();
        server.kill();
        let store = FallbackStore::connect(
            RedisStore::open(&server.url()).unwrap(),
            FallbackConfig::default().with_timeout(Duration::from_millis(50)),
        )
        .await;
        assert_eq!(store.mode(), Mode::Fallback);
        server.restart();
        wait_for_mode(&store, Mode::Primary, RECOVERY).await;
    });
    let transitions: Vec<&String> = events
        .iter()
        .filter(|e| e.contains("tollgate::store") && !e.starts_with("DEBUG"))
        .collect();
    assert_eq!(transitions.len(), 2, "{events:#?}");
    assert!(
        transitions[0].starts_with("WARN")
            && transitions[0].contains("switched to the in-memory fallback")
            && transitions[0].contains("reason=\"at startup: rate-limit store"),
        "{}",
        transitions[0]
    );
    assert!(
        transitions[1].starts_with("INFO") && transitions[1].contains("back on the primary"),
        "{}",
        transitions[1]
    );
}
