//! A Redis that stopped is a refused connection, not latency: the multiplexed connection
//! retries by itself, so the store's calls only time out, and its warnings said "did not
//! answer within 50ms" for a Redis killed outright (two reviews read that as a slow
//! network). The store asks a fresh connection why, and its warnings and the reason a
//! failing batch is given say the connection is refused; the diagnosis is warned about
//! once a minute, not at each departure of a Redis restarted again and again. In a test
//! binary of its own: tracing caches a callsite's interest process-wide.

use std::time::{Duration, Instant};

use tollgate_limits::{Batch, Bucket, FailureMode, Limit, Quota, Store};
use tollgate_redis::{FallbackConfig, FallbackStore, Mode, RedisStore};
use tollgate_testkit::{EventLog, RedisServer};

/// What a batch failing closed is told once the outage is declared (the circuit breaker's
/// threshold: the call that left and two checks), within 5 s.
async fn outage_reason(store: &FallbackStore<RedisStore>, closed: &Batch) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reason = match store.apply(closed).await {
            Err(e) => e.to_string(),
            Ok(d) => panic!("decided on a Redis that was killed: {d:?}"),
        };
        if reason.starts_with("rate-limit store unavailable: circuit open")
            || Instant::now() > deadline
        {
            return reason;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn a_killed_redis_is_reported_as_a_refused_connection() {
    let mut server = RedisServer::start();
    let mut reasons = Vec::new();
    let events = EventLog::during(async {
        let store = FallbackStore::connect(
            RedisStore::open(&server.url()).unwrap(),
            FallbackConfig::default(),
        )
        .await;
        let bucket = Bucket::new("refused", "k", Limit::sliding(Quota::per_minute(50)));
        let closed = Batch::charge(vec![bucket]).with_failure_mode(FailureMode::Closed);
        // Killed twice, started again in between.
        for _ in 0..2 {
            let deadline = Instant::now() + Duration::from_secs(5);
            while store.mode() != Mode::Primary && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(store.apply(&closed).await.unwrap().allowed);
            assert_eq!(store.mode(), Mode::Primary);
            server.kill();
            reasons.push(outage_reason(&store, &closed).await);
            server.restart();
        }
    });
    for reason in &reasons {
        assert!(
            reason.starts_with("rate-limit store unavailable: circuit open")
                && reason.contains("(a fresh connection fails: ")
                && reason.to_lowercase().contains("refused"),
            "{reason}"
        );
    }
    let diagnosed: Vec<&String> = events
        .iter()
        .filter(|line| line.contains("a fresh connection fails too"))
        .collect();
    assert_eq!(diagnosed.len(), 1, "{events:#?}");
    assert!(
        diagnosed[0].starts_with("WARN tollgate::store:")
            && diagnosed[0].to_lowercase().contains("refused"),
        "{}",
        diagnosed[0]
    );
    let outage: Vec<&String> = events
        .iter()
        .filter(|line| line.contains("switched to the in-memory fallback"))
        .collect();
    assert_eq!(outage.len(), 2, "{events:#?}");
    assert!(
        outage
            .iter()
            .all(|line| line.to_lowercase().contains("refused")),
        "{outage:#?}"
    );
}
