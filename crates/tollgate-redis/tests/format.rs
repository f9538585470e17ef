//! What the scripts store, and keys written by earlier versions (before 0.2: `S<k>:<s>:
//! <head>:<counts>`, `T<tat>`, `F<period>:<window>:<used>`; before the fixed window had a key
//! per window: `-<used>` in the bucket's key, expiring when the window ends; before a token
//! bucket stored its emission interval: `<tat>`): they keep counting where they were, and
//! the next write stores them in the current format.

mod common;

use std::time::Duration;

use common::connect;
use tollgate_limits::{Batch, Bucket, Limit, Op, Quota, Store, Timestamp};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_sliding_window_keeps_its_counts() {
    let server = RedisServer::start();
    let store = common::uncached(&server);
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

/// A window of another shape in the format before 0.2 (another limit's state, mid-rollout)
/// still counts: what it counts carries over, here all 9 of the 10.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_window_of_another_shape_carries_its_count_over() {
    let server = RedisServer::start();
    let store = common::uncached(&server);
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
    let d = store
        .apply(&Batch::charge(vec![bucket.clone()]))
        .await
        .unwrap();
    assert!(d.allowed);
    assert_eq!(d.buckets[0].remaining, 0);
    let d = store.apply(&Batch::charge(vec![bucket])).await.unwrap();
    assert!(!d.allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_token_bucket_and_fixed_window_keep_counting() {
    let server = RedisServer::start();
    let store = common::uncached(&server);
    let mut conn = connect(&server.url()).await;
    let now = server_micros(&mut conn).await;

    // A token bucket of 5, one token a second, 3 s ahead of the clock: 3 used. Written
    // before 0.2 (`T<tat>`), and before the interval was stored (`<tat>`): each is read in
    // the limit's interval, and written back with it.
    let limit = Limit::token_bucket(Quota::per_minute(60), 5).unwrap();
    let tat = now + 3_000_000;
    for (name, value) in [("tat", format!("T{tat}")), ("plain", tat.to_string())] {
        let tb = Bucket::new("old", name, limit);
        let tb_key = store.redis_key(&tb);
        set(&mut conn, &tb_key, &value, tat.div_ceil(1000)).await;
        let d = store.apply(&Batch::charge(vec![tb.clone()])).await.unwrap();
        assert!(d.allowed, "{value}");
        assert_eq!(d.buckets[0].remaining, 1, "{value}");
        assert_eq!(
            get(&mut conn, &tb_key).await.unwrap(),
            format!("{}:1000000", tat + 1_000_000),
            "{value}"
        );
    }

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
    // Now the count in the window's key, which expires a second after the window ends; the
    // old key is gone.
    let window_key = format!("{fw_key}:{window}");
    assert_eq!(get(&mut conn, &window_key).await.unwrap(), "5");
    assert_eq!(get(&mut conn, &fw_key).await, None);
    assert_expires_about(expiry_ms(&mut conn, &window_key).await, end / 1000 + 1000);
    let d = store.apply(&Batch::charge(vec![fw])).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(
        d.buckets[0].retry_after,
        Some(Duration::from_micros(end - d.now.as_micros()))
    );
}

/// A fixed window's key expires a second after the window ends on the instance's clock, set
/// as a time to live from it (a clock behind the server's must not set an expiry already
/// past): `at` is `want` on the server's clock, later by the time the call took to get there.
fn assert_expires_about(at: u64, want: u64) {
    assert!(
        (want..want + 1000).contains(&at),
        "expires at {at}, want {want}"
    );
}

async fn expiry_ms(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("PEXPIRETIME")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap()
}

async fn exists(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(conn)
        .await
        .unwrap()
        == 1
}

/// A fixed window keeps its count, a plain integer, in a key of its own per window: the
/// bucket's key and `:<window index>` (microseconds since the epoch / period), expiring a
/// second after the window ends (an instance whose clock runs behind still finds it). A
/// refused charge leaves it as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_window_counts_in_its_windows_key() {
    let server = RedisServer::start();
    let store = common::uncached(&server);
    let mut conn = connect(&server.url()).await;
    let day = 86_400_000_000u64;
    let bucket = Bucket::new("now", "fixed", Limit::fixed(Quota::per_day(5)));
    let d = store
        .apply(&Batch::charge(vec![bucket.clone().with_cost(2)]))
        .await
        .unwrap();
    assert!(d.allowed);
    let window = d.now.as_micros() / day;
    let key = format!("tollgate:now:fixed:{window}");
    assert_eq!(store.redis_key_at(&bucket, d.now), key);
    assert_eq!(get(&mut conn, &key).await.unwrap(), "2");
    assert_expires_about(
        expiry_ms(&mut conn, &key).await,
        (window + 1) * day / 1000 + 1000,
    );
    assert!(!exists(&mut conn, &store.redis_key(&bucket)).await);
    // Refused: not counted.
    let d = store
        .apply(&Batch::charge(vec![bucket.clone().with_cost(4)]))
        .await
        .unwrap();
    assert!(!d.allowed);
    assert_eq!(get(&mut conn, &key).await.unwrap(), "2");
    // The general script (a penalty, a charge of two buckets) writes the same.
    let other = Bucket::new("now", "sliding", Limit::sliding(Quota::per_day(5)));
    let _ = store
        .apply(&Batch::new(Op::Penalize, vec![bucket.clone()]))
        .await
        .unwrap();
    let d = store
        .apply(&Batch::charge(vec![other, bucket.clone()]))
        .await
        .unwrap();
    assert!(d.allowed);
    assert_eq!(d.buckets[1].remaining, 1);
    assert_eq!(get(&mut conn, &key).await.unwrap(), "4");
    assert_expires_about(
        expiry_ms(&mut conn, &key).await,
        (window + 1) * day / 1000 + 1000,
    );
}

/// A fixed window's count in the format before window keys (`-<used>` in the bucket's own
/// key, expiring when the window ends) carries over into the window's key, once, whichever
/// script meets it first; the old key goes then. A count of another window (expiring
/// later) does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_window_in_the_format_before_window_keys_keeps_counting() {
    let server = RedisServer::start();
    let store = common::uncached(&server);
    let mut conn = connect(&server.url()).await;
    let day = 86_400_000_000u64;
    let now = server_micros(&mut conn).await;
    let (window, end) = (now / day, (now / day + 1) * day);
    let limit = Limit::fixed(Quota::per_day(5));
    let old = |name: &str| Bucket::new("before", name, limit);
    for name in ["charge", "peek", "pair", "reset", "later"] {
        let at = if name == "later" {
            end + 3_600_000_000
        } else {
            end
        };
        set(&mut conn, &store.redis_key(&old(name)), "-4", at / 1000).await;
    }
    let window_key = |name: &str| format!("{}:{window}", store.redis_key(&old(name)));

    // The charge script: 4 counted, 1 fits, the next does not.
    let d = store
        .apply(&Batch::charge(vec![old("charge")]))
        .await
        .unwrap();
    assert!(d.allowed);
    assert_eq!(d.buckets[0].remaining, 0);
    assert_eq!(get(&mut conn, &window_key("charge")).await.unwrap(), "5");
    assert!(!exists(&mut conn, &store.redis_key(&old("charge"))).await);
    let d = store
        .apply(&Batch::charge(vec![old("charge")]))
        .await
        .unwrap();
    assert!(!d.allowed);
    assert_eq!(
        d.buckets[0].retry_after,
        Some(Duration::from_micros(end - d.now.as_micros()))
    );

    // The general script: a peek reads it (and changes nothing), a refund moves it.
    let peek = Batch::new(Op::Peek, vec![old("peek")]);
    assert_eq!(store.apply(&peek).await.unwrap().buckets[0].remaining, 1);
    assert!(exists(&mut conn, &store.redis_key(&old("peek"))).await);
    let refund = Batch::new(Op::Refund, vec![old("peek")]);
    assert_eq!(store.apply(&refund).await.unwrap().buckets[0].remaining, 2);
    assert_eq!(get(&mut conn, &window_key("peek")).await.unwrap(), "3");
    assert!(!exists(&mut conn, &store.redis_key(&old("peek"))).await);
    assert_eq!(store.apply(&peek).await.unwrap().buckets[0].remaining, 2);

    // A charge of two buckets.
    let ip = Bucket::new("before", "ip", Limit::sliding(Quota::per_day(5)));
    let d = store
        .apply(&Batch::charge(vec![ip, old("pair")]))
        .await
        .unwrap();
    assert!(d.allowed);
    assert_eq!(d.buckets[1].remaining, 0);
    assert_eq!(get(&mut conn, &window_key("pair")).await.unwrap(), "5");

    // A reset clears both.
    let _ = store
        .apply(&Batch::new(Op::Reset, vec![old("reset")]))
        .await
        .unwrap();
    assert!(!exists(&mut conn, &store.redis_key(&old("reset"))).await);
    let d = store
        .apply(&Batch::charge(vec![old("reset")]))
        .await
        .unwrap();
    assert_eq!(d.buckets[0].remaining, 4);

    // Another window's count (it expires after this window ends) is not carried.
    let d = store
        .apply(&Batch::charge(vec![old("later")]))
        .await
        .unwrap();
    assert_eq!(d.buckets[0].remaining, 4);
}

/// On Redis a key holds one state: when its bucket's algorithm changes, what the key's
/// state still counts carries over into the new one (a string or an exact log's hash), so
/// a key spent under one algorithm stays spent under the next. A fixed window counts in
/// keys of its own (one per window, one window per period): its first use starts afresh,
/// and its count outlives a change to another algorithm and back within the window, as in
/// memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_algorithm_changes_carries_its_count_over() {
    let server = RedisServer::start();
    let store = common::uncached(&server);
    let q = Quota::per_hour(3);
    // Each limit, and how many of 4 charges it admits after the ones before.
    let limits = [
        (Limit::sliding(q), 3),
        (Limit::sliding_exact(q), 0),
        (Limit::token_bucket(q, 3).unwrap(), 0),
        (Limit::fixed(q), 3),
        (Limit::sliding(q), 0),
        // Another period: another window.
        (
            Limit::fixed(Quota::new(3, Duration::from_secs(7_200)).unwrap()),
            3,
        ),
        (Limit::sliding_exact(q), 0),
        (Limit::token_bucket(q, 3).unwrap(), 0),
        (Limit::sliding_exact(q), 0),
    ];
    for (i, (limit, admits)) in limits.into_iter().enumerate() {
        let bucket = Bucket::new("change", "k", limit);
        let mut admitted = 0;
        for _ in 0..4 {
            let d = store
                .apply(&Batch::charge(vec![bucket.clone()]))
                .await
                .unwrap_or_else(|e| panic!("step {i}, {limit}: {e}"));
            admitted += usize::from(d.allowed);
        }
        assert_eq!(admitted, admits, "step {i}, {limit}");
        let peek = store
            .apply(&Batch::new(Op::Peek, vec![bucket]))
            .await
            .unwrap();
        assert_eq!(peek.buckets[0].remaining, 0, "step {i}, {limit}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_windows_count_outlives_a_change_of_algorithm() {
    let server = RedisServer::start();
    let store = common::uncached(&server);
    let q = Quota::per_hour(3);
    let fixed = Bucket::new("change", "k", Limit::fixed(q));
    let sliding = Bucket::new("change", "k", Limit::sliding(q));
    for bucket in [&fixed, &fixed, &sliding, &sliding, &sliding] {
        let d = store
            .apply(&Batch::charge(vec![bucket.clone()]))
            .await
            .unwrap();
        assert!(d.allowed);
    }
    let d = store
        .apply(&Batch::charge(vec![fixed.clone()]))
        .await
        .unwrap();
    assert!(d.allowed);
    assert_eq!(d.buckets[0].remaining, 0, "the window's 2 still count");
}

/// A token bucket stores its TAT with the emission interval it was worked out with,
/// `<tat>:<interval>` (µs). When the sustained rate changes (a reload), what was counted
/// carries over in tokens and the key is written back in the new interval at once, a
/// refusal too: raising 5/min (burst 2) to 60/min frees a limited client within the new
/// second. Before, the TAT was read as if worked out in seconds: 22 s ahead were 22 tokens,
/// and the client waited 21 s more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_bucket_whose_sustained_rate_rises_frees_a_limited_client_within_the_new_interval()
{
    let server = RedisServer::start();
    let store = common::uncached(&server);
    let mut conn = connect(&server.url()).await;
    let slow = Limit::token_bucket(Quota::per_minute(5), 2).unwrap();
    let fast = Limit::token_bucket(Quota::per_minute(60), 2).unwrap();
    let bucket = |limit| Bucket::new("reload", "client", limit);
    let key = store.redis_key(&bucket(slow));
    let d = store
        .apply(&Batch::charge(vec![bucket(slow).with_cost(2)]))
        .await
        .unwrap();
    assert!(d.allowed);
    let tat = d.now.as_micros() + 24_000_000;
    let stored = get(&mut conn, &key).await.unwrap();
    assert!(
        !store
            .apply(&Batch::charge(vec![bucket(slow)]))
            .await
            .unwrap()
            .allowed
    );

    // Raised: what is left of 2 tokens of 12 s is as many tokens of 1 s.
    let d = store
        .apply(&Batch::charge(vec![bucket(fast)]))
        .await
        .unwrap();
    let now = d.now.as_micros();
    let converted = now + (tat - now).div_ceil(12);
    assert!(!d.allowed);
    let wait = d.buckets[0].retry_after.expect("a wait");
    assert_eq!(wait, Duration::from_micros(converted - now - 1_000_000));
    assert!(wait <= Duration::from_secs(1), "{wait:?}");
    assert_eq!(d.buckets[0].remaining, 0);
    assert_eq!(
        d.buckets[0].reset_after,
        Duration::from_micros(converted - now)
    );
    assert_eq!(stored, format!("{tat}:12000000"));
    assert_eq!(
        get(&mut conn, &key).await.unwrap(),
        format!("{converted}:1000000")
    );
    // Once that wait is over (real time: the server's clock decides), admitted.
    tokio::time::sleep(wait).await;
    let d = store
        .apply(&Batch::charge(vec![bucket(fast)]))
        .await
        .unwrap();
    assert!(d.allowed, "{d:?}");
    assert_eq!(
        get(&mut conn, &key).await.unwrap(),
        format!("{}:1000000", converted + 1_000_000)
    );
}

/// The mirror image: lowering 6/min (burst 2) to 1/min keeps the 2 tokens just spent,
/// now worth a minute each (a peek converts and writes back too), and the client is not
/// admitted before one is back. Before, the 20 s ahead were read as a third of a minute's
/// token, and it was admitted at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_bucket_whose_sustained_rate_falls_admits_no_sooner_than_its_count_allows() {
    let server = RedisServer::start();
    let store = common::uncached(&server);
    let mut conn = connect(&server.url()).await;
    let fast = Limit::token_bucket(Quota::per_minute(6), 2).unwrap();
    let slow = Limit::token_bucket(Quota::per_minute(1), 2).unwrap();
    let bucket = |limit| Bucket::new("reload", "client", limit);
    let key = store.redis_key(&bucket(fast));
    let d = store
        .apply(&Batch::charge(vec![bucket(fast).with_cost(2)]))
        .await
        .unwrap();
    assert!(d.allowed);
    let tat = d.now.as_micros() + 20_000_000;

    let peek = store
        .apply(&Batch::new(Op::Peek, vec![bucket(slow)]))
        .await
        .unwrap();
    let at = peek.now.as_micros();
    let converted = at + 6 * (tat - at);
    assert_eq!(peek.buckets[0].remaining, 0);
    assert_eq!(
        peek.buckets[0].reset_after,
        Duration::from_micros(converted - at)
    );
    assert_eq!(
        get(&mut conn, &key).await.unwrap(),
        format!("{converted}:60000000")
    );
    let d = store
        .apply(&Batch::charge(vec![bucket(slow)]))
        .await
        .unwrap();
    assert!(!d.allowed);
    assert_eq!(
        d.buckets[0].retry_after,
        Some(Duration::from_micros(
            converted - 60_000_000 - d.now.as_micros()
        ))
    );
}

/// [`RedisStore::script_call`] is what the store sends, under its prefix: replayed by hand
/// (`EVALSHA` and those arguments, as the benchmark replays them), it charges the key the
/// store charges, [`RedisStore::script_decision`] reads its reply as the store would, and
/// [`RedisStore::script_args`] is the same call without the SHA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_call_replayed_by_hand_charges_the_stores_key() {
    let server = RedisServer::start();
    let store = RedisStore::builder()
        .url(server.url())
        .prefix("app:")
        .refusal_cache(0)
        .build()
        .unwrap();
    assert_eq!(store.prefix(), "app:");
    let mut conn = connect(&server.url()).await;
    let batch = Batch::charge(vec![Bucket::new(
        "login",
        "ip",
        Limit::sliding_exact(Quota::per_hour(3)),
    )]);
    // Only a fixed window is placed by the time given.
    let at = Timestamp::from_micros(0);
    let call = store.script_call(&batch, at).unwrap();
    assert_eq!(call[..3], [RedisStore::script_sha(), "1", "app:login:ip"]);
    assert_eq!(store.script_args(&batch).unwrap(), call[1..]);
    let _: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(RedisStore::script_source())
        .query_async(&mut conn)
        .await
        .unwrap();
    let reply: redis::Value = redis::cmd("EVALSHA")
        .arg(&call)
        .query_async(&mut conn)
        .await
        .unwrap();
    let d = store.script_decision(&batch, at, &reply).unwrap();
    assert!(d.allowed);
    assert_eq!(d.buckets[0].remaining, 2);
    // The store counts on in the same key.
    assert_eq!(store.apply(&batch).await.unwrap().buckets[0].remaining, 1);
    assert!(exists(&mut conn, "app:login:ip").await);
}
