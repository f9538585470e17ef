//! What the script stores, and keys written by the script before 0.2 (`S<k>:<s>:<head>:
//! <counts>`, `T<tat>`, `F<period>:<window>:<used>`): they keep counting where they were,
//! and the next write stores them in the current format.

mod common;

use std::time::Duration;

use common::connect;
use tollgate_core::{Batch, Bucket, Limit, Op, Quota, Store};
use tollgate_redis::{redis, RedisStore};
use tollgate_testkit::RedisServer;

async fn server_micros(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    secs * 1_000_000 + micros
}

async fn get(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
}

async fn set(conn: &mut redis::aio::MultiplexedConnection, key: &str, value: &str, at_ms: u64) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .arg("PXAT")
        .arg(at_ms)
        .query_async(conn)
        .await
        .unwrap();
}

async fn get_bytes(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
}

/// A sliding-window segment as stored: index (6 bytes), count (7), offset of its last
/// admission from its start (6), big-endian.
fn segment(index: u64, count: u64, offset: u64) -> Vec<u8> {
    [(index, 6), (count, 7), (offset, 6)]
        .into_iter()
        .flat_map(|(n, width)| n.to_be_bytes()[8 - width..].to_vec())
        .collect()
}

fn store(server: &RedisServer) -> RedisStore {
    RedisStore::builder()
        .url(server.url())
        .refusal_cache(0)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_sliding_window_keeps_its_counts() {
    let server = RedisServer::start();
    let store = store(&server);
    let mut conn = connect(&server.url()).await;
    // 10 per hour in 10 segments of 6 minutes: 3 counted in the current segment, 4 in the
    // one before (written as the old script did, head first).
    let limit = Limit::sliding(Quota::per_hour(10));
    let (s, w) = (limit.segment_micros(), limit.quota().period_micros());
    let bucket = Bucket::new("old", "sliding", limit);
    let key = store.redis_key(&bucket);
    let head = server_micros(&mut conn).await / s;
    set(
        &mut conn,
        &key,
        &format!("S10:{s}:{head}:3,4"),
        (head + 11) * s / 1000,
    )
    .await;

    let d = store
        .apply(&Batch::charge(vec![bucket.clone().with_cost(2)]))
        .await
        .unwrap();
    assert!(d.allowed);
    assert_eq!(d.buckets[0].remaining, 1, "7 counted, 2 charged");
    // Stored now in the current format: the head segment (its last admission now), then the
    // one before, whose counts are taken as admitted at its very end.
    let now = d.now.as_micros();
    let mut expected = format!("10:{s}|").into_bytes();
    expected.extend(segment(head, 5, now - head * s));
    expected.extend(segment(head - 1, 4, s - 1));
    assert_eq!(get_bytes(&mut conn, &key).await.unwrap(), expected);

    let d = store
        .apply(&Batch::charge(vec![bucket.clone().with_cost(2)]))
        .await
        .unwrap();
    assert!(!d.allowed);
    // One more must leave: the older segment's 4, a window after its end.
    assert_eq!(
        d.buckets[0].retry_after,
        Some(Duration::from_micros(head * s - 1 + w - d.now.as_micros()))
    );
    assert!(d.buckets[0].retry_after.unwrap() <= Duration::from_micros(w));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_window_of_another_shape_starts_afresh() {
    let server = RedisServer::start();
    let store = store(&server);
    let mut conn = connect(&server.url()).await;
    let limit = Limit::sliding(Quota::per_hour(10));
    let s = limit.segment_micros();
    let bucket = Bucket::new("old", "shape", limit);
    let key = store.redis_key(&bucket);
    let head = server_micros(&mut conn).await / s;
    // 5 segments, not 10: another limit's state.
    set(
        &mut conn,
        &key,
        &format!("S5:{}:{}:9", 2 * s, head / 2),
        (head + 11) * s / 1000,
    )
    .await;
    let d = store.apply(&Batch::charge(vec![bucket])).await.unwrap();
    assert_eq!(d.buckets[0].remaining, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_token_bucket_and_fixed_window_keep_counting() {
    let server = RedisServer::start();
    let store = store(&server);
    let mut conn = connect(&server.url()).await;
    let now = server_micros(&mut conn).await;

    // A token bucket of 5, one token a second, 3 s ahead of the clock: 3 used.
    let tb = Bucket::new(
        "old",
        "tat",
        Limit::token_bucket(Quota::per_minute(60), 5).unwrap(),
    );
    let tb_key = store.redis_key(&tb);
    let tat = now + 3_000_000;
    set(&mut conn, &tb_key, &format!("T{tat}"), tat.div_ceil(1000)).await;
    let d = store.apply(&Batch::charge(vec![tb.clone()])).await.unwrap();
    assert!(d.allowed);
    assert_eq!(d.buckets[0].remaining, 1);
    assert_eq!(
        get(&mut conn, &tb_key).await.unwrap(),
        (tat + 1_000_000).to_string()
    );

    // A fixed window of 5 a day with 4 used.
    let fw = Bucket::new("old", "fixed", Limit::fixed(Quota::per_day(5)));
    let fw_key = store.redis_key(&fw);
    let day = 86_400_000_000u64;
    let (window, end) = (now / day, (now / day + 1) * day);
    set(
        &mut conn,
        &fw_key,
        &format!("F{day}:{window}:4"),
        end / 1000,
    )
    .await;
    let d = store.apply(&Batch::charge(vec![fw.clone()])).await.unwrap();
    assert!(d.allowed);
    assert_eq!(d.buckets[0].remaining, 0);
    // Now the count (negated) in a key that expires when the window ends.
    assert_eq!(get(&mut conn, &fw_key).await.unwrap(), "-5");
    let expiry: u64 = redis::cmd("PEXPIRETIME")
        .arg(&fw_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(expiry, end / 1000);
    let d = store.apply(&Batch::charge(vec![fw])).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(
        d.buckets[0].retry_after,
        Some(Duration::from_micros(end - d.now.as_micros()))
    );
}

/// On Redis a key holds one state: when its bucket's algorithm changes, the key starts
/// afresh under the new one, whatever the old state was (a string or an exact log's hash).
/// A refused charge of a fixed window gives back what it took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_algorithm_changes_starts_afresh() {
    let server = RedisServer::start();
    let store = store(&server);
    let q = Quota::per_hour(3);
    let limits = [
        Limit::sliding(q),
        Limit::sliding_exact(q),
        Limit::token_bucket(q, 3).unwrap(),
        Limit::fixed(q),
        Limit::sliding(q),
        Limit::fixed(q),
        Limit::sliding_exact(q),
        Limit::token_bucket(q, 3).unwrap(),
        Limit::sliding_exact(q),
    ];
    for (i, limit) in limits.into_iter().enumerate() {
        let bucket = Bucket::new("change", "k", limit);
        for _ in 0..3 {
            let d = store
                .apply(&Batch::charge(vec![bucket.clone()]))
                .await
                .unwrap_or_else(|e| panic!("step {i}, {limit}: {e}"));
            assert!(d.allowed, "step {i}, {limit}: a fresh start");
        }
        let d = store
            .apply(&Batch::charge(vec![bucket.clone()]))
            .await
            .unwrap();
        assert!(!d.allowed, "step {i}, {limit}");
        let peek = store
            .apply(&Batch::new(Op::Peek, vec![bucket]))
            .await
            .unwrap();
        assert_eq!(peek.buckets[0].remaining, 0, "step {i}, {limit}");
    }
}
