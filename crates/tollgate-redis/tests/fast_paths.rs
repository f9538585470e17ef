//! The scripts' straight paths for a charge (one fixed window, `fixed.lua`; one or several
//! sliding windows, `decide.lua`): what they store and answer in the cases the random equivalence tests meet
//! rarely. Windows here are long, so nothing rolls over while a test runs.

mod common;

use std::time::Duration;

use common::connect;
use tollgate_limits::{
    Batch, Bucket, Clock, Limit, Op, Quota, Refusal, Store, SystemClock, Timestamp,
};
use tollgate_redis::{redis, RedisStore};
use tollgate_testkit::RedisServer;

async fn get(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
}

async fn expiry_ms(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PEXPIRETIME")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap()
}

/// A fixed window counts in its window's key (`<key>:<window index>`, which expires a second
/// after the window ends); a charge that does not fit takes nothing, and says when the
/// window ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_window_counts_to_its_end_and_a_refusal_takes_nothing() {
    let server = RedisServer::start();
    let store = common::uncached(&server);
    let mut conn = connect(&server.url()).await;
    let hour = 3_600_000_000u64;
    let bucket = Bucket::new("fw", "k", Limit::fixed(Quota::per_hour(5)));
    let mut key = String::new();
    for left in [3, 1] {
        let d = store
            .apply(&Batch::charge(vec![bucket.clone().with_cost(2)]))
            .await
            .unwrap();
        assert!(d.allowed);
        assert_eq!(d.buckets[0].remaining, left);
        let end = (d.now.as_micros() / hour + 1) * hour;
        assert_eq!(
            d.buckets[0].reset_after,
            Duration::from_micros(end - d.now.as_micros())
        );
        key = store.redis_key_at(&bucket, d.now);
        assert_eq!(
            key,
            format!("{}:{}", store.redis_key(&bucket), d.now.as_micros() / hour)
        );
        // A second after the window ends, set as a time to live from the instance's clock
        // (so a clock behind the server's sets no expiry already past): later by the time
        // the call took to reach the server.
        let at = expiry_ms(&mut conn, &key).await as u64;
        assert!((end / 1000 + 1000..end / 1000 + 2000).contains(&at), "{at}");
    }
    let d = store
        .apply(&Batch::charge(vec![bucket.clone().with_cost(2)]))
        .await
        .unwrap();
    assert!(!d.allowed);
    let end = (d.now.as_micros() / hour + 1) * hour;
    assert_eq!(d.buckets[0].refusal, Some(Refusal::OverLimit));
    assert_eq!(
        d.buckets[0].retry_after,
        Some(Duration::from_micros(end - d.now.as_micros()))
    );
    assert_eq!(d.buckets[0].remaining, 1);
    assert_eq!(get(&mut conn, &key).await.unwrap(), b"4");
    // A cost above the capacity never fits, and takes nothing either.
    let d = store
        .apply(&Batch::charge(vec![bucket.clone().with_cost(6)]))
        .await
        .unwrap();
    assert_eq!(
        d.buckets[0].refusal,
        Some(Refusal::CostExceedsCapacity {
            cost: 6,
            capacity: 5
        })
    );
    assert_eq!(d.buckets[0].remaining, 1);
    let d = store
        .apply(&Batch::charge(vec![bucket.clone()]))
        .await
        .unwrap();
    assert!(d.allowed);
    assert_eq!(d.buckets[0].remaining, 0);
    assert_eq!(get(&mut conn, &key).await.unwrap(), b"5");
}

/// A fixed window's count belongs to the window its key names: a count left by a limit of
/// another period is another window's, and the bucket starts afresh, as in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_window_of_another_period_starts_afresh() {
    let server = RedisServer::start();
    let store = common::uncached(&server);
    let hour = Limit::fixed(Quota::per_hour(4));
    let other = Limit::fixed(Quota::new(4, Duration::from_secs(59 * 60)).unwrap());
    let d = store
        .apply(&Batch::charge(vec![
            Bucket::new("fw", "p", hour).with_cost(4)
        ]))
        .await
        .unwrap();
    assert!(d.allowed);
    let d = store
        .apply(&Batch::charge(vec![Bucket::new("fw", "p", other)]))
        .await
        .unwrap();
    let now = d.now.as_micros();
    let end = |period: u64| (now / period + 1) * period;
    let o = 59 * 60_000_000;
    assert!(d.allowed, "another period's count counts for nothing");
    assert_eq!(d.buckets[0].remaining, 3);
    assert_eq!(
        d.buckets[0].reset_after,
        Duration::from_micros(end(o) - now)
    );
}

/// Several sliding windows charged together: if one refuses, none is written, and each
/// answers what it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_windows_charged_together_are_all_or_nothing() {
    let server = RedisServer::start();
    let store = common::uncached(&server);
    let mut conn = connect(&server.url()).await;
    let ip = Bucket::new("ip", "203.0.113.9", Limit::sliding(Quota::per_hour(10)));
    let user = Bucket::new("user", "u", Limit::sliding(Quota::per_hour(3)));
    let batch = Batch::charge(vec![ip.clone(), user.clone()]);
    for i in 0..3 {
        let d = store.apply(&batch).await.unwrap();
        assert!(d.allowed, "request {i}");
        assert_eq!(
            [d.buckets[0].remaining, d.buckets[1].remaining],
            [9 - i, 2 - i]
        );
    }
    let (ip_key, user_key) = (store.redis_key(&ip), store.redis_key(&user));
    let before = (
        get(&mut conn, &ip_key).await,
        get(&mut conn, &user_key).await,
    );
    let ip_expiry = expiry_ms(&mut conn, &ip_key).await;
    let d = store.apply(&batch).await.unwrap();
    assert!(!d.allowed);
    assert!(d.buckets[0].allowed && !d.buckets[1].allowed);
    assert_eq!([d.buckets[0].remaining, d.buckets[1].remaining], [7, 0]);
    let wait = d.buckets[1].retry_after.unwrap();
    assert!(wait > Duration::from_secs(3590) && wait <= Duration::from_secs(3600));
    assert_eq!(
        (
            get(&mut conn, &ip_key).await,
            get(&mut conn, &user_key).await
        ),
        before,
        "a refused request writes no bucket"
    );
    assert_eq!(expiry_ms(&mut conn, &ip_key).await, ip_expiry);
    // The IP bucket alone still has its 7.
    let d = store.apply(&Batch::charge(vec![ip])).await.unwrap();
    assert!(d.allowed);
    assert_eq!(d.buckets[0].remaining, 6);
}

/// A sliding window's key whose segments all left the window (Redis keeps it a little
/// longer only if its expiry was set further out) holds nothing: a charge starts it afresh,
/// and a refused charge drops it, as the memory store drops a key with nothing counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sliding_window_with_nothing_left_counts_for_nothing() {
    let server = RedisServer::start();
    let store = common::uncached(&server);
    let mut conn = connect(&server.url()).await;
    let limit = Limit::sliding(Quota::per_minute(4));
    let s = limit.segment_micros();
    let (now_s, _): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    // One segment of 4, an hour old, in a key that lives another hour.
    let old = now_s * 1_000_000 / s - 600;
    let mut value = format!("10:{s}|").into_bytes();
    value.extend_from_slice(&old.to_be_bytes()[2..]);
    value.extend_from_slice(&4u64.to_be_bytes()[1..]);
    value.extend_from_slice(&0u64.to_be_bytes()[2..]);
    for (name, cost, allowed) in [("a", 1, true), ("b", 5, false)] {
        let bucket = Bucket::new("stale", name, limit).with_cost(cost);
        let key = store.redis_key(&bucket);
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(&value)
            .arg("PX")
            .arg(3_600_000)
            .query_async(&mut conn)
            .await
            .unwrap();
        let d = store.apply(&Batch::charge(vec![bucket])).await.unwrap();
        assert_eq!(d.allowed, allowed, "{name}");
        assert_eq!(d.buckets[0].remaining, 4 - u64::from(allowed), "{name}");
        let stored = get(&mut conn, &key).await;
        if allowed {
            // Only the new segment is kept.
            assert_eq!(stored.unwrap().len(), format!("10:{s}|").len() + 19);
        } else {
            assert_eq!(stored, None, "the refusal dropped the key");
            assert_eq!(d.buckets[0].reset_after, Duration::ZERO);
        }
    }
}

/// A peek after the straight paths answers from what they stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_straight_paths_store_is_read_by_every_operation() {
    let server = RedisServer::start();
    let store = common::uncached(&server);
    let buckets = [
        Bucket::new("any", "fw", Limit::fixed(Quota::per_hour(5))),
        Bucket::new("any", "sw", Limit::sliding(Quota::per_hour(5))),
        Bucket::new(
            "any",
            "tb",
            Limit::token_bucket(Quota::per_hour(5), 5).unwrap(),
        ),
    ];
    for b in &buckets {
        let d = store
            .apply(&Batch::charge(vec![b.clone().with_cost(2)]))
            .await
            .unwrap();
        assert!(d.allowed);
    }
    let peek = store
        .apply(&Batch::new(Op::Peek, buckets.to_vec()))
        .await
        .unwrap();
    let remaining: Vec<u64> = peek.buckets.iter().map(|b| b.remaining).collect();
    assert_eq!(remaining, [3, 3, 3]);
    let refund = store
        .apply(&Batch::new(
            Op::Refund,
            buckets.iter().map(|b| b.clone().with_cost(1)).collect(),
        ))
        .await
        .unwrap();
    let remaining: Vec<u64> = refund.buckets.iter().map(|b| b.remaining).collect();
    assert_eq!(remaining, [4, 4, 4]);
}

/// A clock some time ahead of the system's.
#[derive(Debug)]
struct Ahead(Duration);

impl Clock for Ahead {
    fn now(&self) -> Timestamp {
        SystemClock.now().saturating_add(self.0)
    }
}

/// A fixed window is placed by the instance's clock: an instance whose clock runs an hour
/// ahead counts an hourly window in the next window's key, and says so in its decision's
/// time. Its other buckets, on their own, are decided on the server's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_window_is_placed_by_the_instances_clock() {
    let server = RedisServer::start();
    let store = common::uncached(&server);
    let ahead = RedisStore::builder()
        .url(server.url())
        .refusal_cache(0)
        .clock(Ahead(Duration::from_secs(3_600)))
        .build()
        .unwrap();
    let mut conn = connect(&server.url()).await;
    let bucket = Bucket::new("skew", "k", Limit::fixed(Quota::per_hour(2)));
    let charge = Batch::charge(vec![bucket.clone().with_cost(2)]);
    let d = store.apply(&charge).await.unwrap();
    assert!(d.allowed);
    assert!(!store.apply(&charge).await.unwrap().allowed);
    let d_ahead = ahead.apply(&charge).await.unwrap();
    assert!(d_ahead.allowed, "the next hour's window, afresh");
    assert!(d_ahead.now.as_micros() >= d.now.as_micros() + 3_600_000_000);
    let key = ahead.redis_key_at(&bucket, d_ahead.now);
    assert_ne!(key, store.redis_key_at(&bucket, d.now));
    assert_eq!(get(&mut conn, &key).await.unwrap(), b"2");
    // Only the two windows' keys.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("tollgate:skew:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    // A sliding window alone: the server's clock.
    let sliding = Batch::charge(vec![Bucket::new(
        "skew",
        "s",
        Limit::sliding(Quota::per_hour(2)),
    )]);
    let d_sliding = ahead.apply(&sliding).await.unwrap();
    assert!(d_sliding.now.as_micros() < d.now.as_micros() + 60_000_000);
}

/// An instance whose clock runs behind the server's (two minutes here) still limits: a
/// request with a fixed window is decided on the instance's clock, and every key it writes
/// lives as long from the server's now as it would from the instance's. With expiries
/// written as times on the instance's clock, Redis dropped each key as it was written (a
/// time already past), and nothing was ever counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_clock_runs_behind_still_limits() {
    let server = RedisServer::start();
    let behind = SystemClock.now().as_micros() - 120_000_000;
    let store = RedisStore::builder()
        .url(server.url())
        .refusal_cache(0)
        .clock(tollgate_limits::ManualClock::new(Duration::from_micros(
            behind,
        )))
        .build()
        .unwrap();
    let fixed = Bucket::new("skew", "fixed", Limit::fixed(Quota::per_minute(3)));
    let sliding = Bucket::new("skew", "sliding", Limit::sliding(Quota::per_minute(3)));
    let wide = Bucket::new("skew", "wide", Limit::fixed(Quota::per_minute(100)));
    // One fixed window (fixed.lua), then a fixed window beside a sliding one (decide.lua).
    for batch in [vec![fixed], vec![wide, sliding]] {
        let mut admitted = 0;
        for _ in 0..5 {
            let d = store.apply(&Batch::charge(batch.clone())).await.unwrap();
            admitted += usize::from(d.allowed);
        }
        assert_eq!(admitted, 3, "{} bucket(s)", batch.len());
    }
}
