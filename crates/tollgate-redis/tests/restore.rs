//! What a `FallbackStore` writes back to a Redis that restarted empty
//! (`Primary::restore`): each key raised to at least the count it had, in one script call,
//! so instances restoring a key at the same moment raise it to the larger of their counts,
//! never to their sum (a fleet review: read first, then charge the difference, added them
//! up); and what a key lacks is placed to leave when it would have, not a whole window
//! after the write-back (a lockout restored 29 minutes in stayed for another 30).

mod common;

use std::time::Duration;

use tollgate_limits::{Batch, Bucket, Limit, Op, Quota, Store};
use tollgate_redis::{Primary, RedisStore};
use tollgate_testkit::RedisServer;

/// Every algorithm, 5 per 30 minutes (the token bucket: a burst of 5).
fn limits() -> Vec<(&'static str, Limit)> {
    let q = Quota::new(5, Duration::from_secs(30 * 60)).unwrap();
    vec![
        ("sliding", Limit::sliding(q)),
        ("exact", Limit::sliding_exact(q)),
        ("token", Limit::token_bucket(q, 5).unwrap()),
        ("fixed", Limit::fixed(q)),
    ]
}

async fn peek(store: &RedisStore, bucket: &Bucket) -> (u64, Duration) {
    let d = store
        .apply(&Batch::new(Op::Peek, vec![bucket.clone()]))
        .await
        .unwrap();
    (d.buckets[0].remaining, d.buckets[0].reset_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_restoring_a_key_at_once_raise_it_to_the_larger_count_never_the_sum() {
    let server = RedisServer::start();
    let (a, b) = (common::uncached(&server), common::uncached(&server));
    for (name, limit) in limits() {
        for round in 0..20 {
            let bucket = Bucket::new(name, &format!("k{round}"), limit);
            let fresh = Duration::from_secs(20 * 60);
            // Instance A last saw 3 counted, B 2; both write back at once, twice over.
            let from_a = [(bucket.clone().with_cost(3), fresh)];
            let from_b = [(bucket.clone().with_cost(2), fresh)];
            let (ra, rb, ra2, rb2) = tokio::join!(
                a.restore(&from_a),
                b.restore(&from_b),
                a.restore(&from_a),
                b.restore(&from_b)
            );
            for r in [ra, rb, ra2, rb2] {
                let _ = r.unwrap();
            }
            assert_eq!(
                peek(&a, &bucket).await.0,
                2,
                "{name} round {round}: 3 counted"
            );
            // A key that counts as much already is left alone.
            let _ = a
                .restore(&[(bucket.clone().with_cost(1), fresh)])
                .await
                .unwrap();
            assert_eq!(peek(&a, &bucket).await.0, 2, "{name} round {round}");
        }
    }
}

#[tokio::test]
async fn a_restored_count_leaves_when_it_would_have() {
    let server = RedisServer::start();
    let s = common::uncached(&server);
    for (name, limit) in limits() {
        // A minute left of a window's count; a token bucket 4 tokens (6 minutes each)
        // ahead, as it would report 4 counted.
        let fresh = if name == "token" {
            Duration::from_secs(24 * 60)
        } else {
            Duration::from_secs(60)
        };
        let bucket = Bucket::new(name, "placed", limit);
        let answer = s
            .restore(&[(bucket.clone().with_cost(4), fresh)])
            .await
            .unwrap();
        assert_eq!(answer.buckets.len(), 1);
        let (remaining, reset) = peek(&s, &bucket).await;
        assert_eq!(remaining, 1, "{name}");
        if name == "fixed" {
            // A fixed window's count is in the current window: it leaves at its end.
            assert!(reset <= Duration::from_secs(30 * 60), "{name}: {reset:?}");
        } else {
            // Fresh again when it would have been (the call's own time aside), not in 30
            // minutes.
            assert!(
                reset <= fresh && reset > fresh - Duration::from_secs(5),
                "{name}: fresh again in {reset:?}"
            );
        }
    }
    // Onto a key already counting (2 admitted now): only the difference, at its place; the
    // key is fresh again when its newest count leaves.
    let fresh = Duration::from_secs(24 * 60);
    for (name, limit) in limits() {
        let bucket = Bucket::new(name, "onto", limit);
        let _ = s
            .apply(&Batch::charge(vec![bucket.clone().with_cost(2)]))
            .await
            .unwrap();
        let _ = s
            .restore(&[(bucket.clone().with_cost(4), fresh)])
            .await
            .unwrap();
        assert_eq!(peek(&s, &bucket).await.0, 1, "{name}");
    }
}
