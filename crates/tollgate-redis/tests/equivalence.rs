//! The Redis store decides exactly like the memory store: same `Decision`, field for field,
//! for random sequences of every operation over every algorithm, with costs, multi-bucket
//! batches and keys whose limit changes.
//!
//! Time: each Redis decision reports the Redis server's clock; the memory store's
//! `ManualClock` is set to that time before it decides the same batch. Real time passes
//! (windows here are 10 to 60 ms long, and the test sleeps now and then), so windows roll,
//! tokens refill and keys expire in Redis during the sequence.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{connect, short_limits, Rng};
use tollgate_limits::{
    Algorithm, Batch, Bucket, Decision, Limit, ManualClock, MemoryStore, Op, Quota, Store,
    Timestamp,
};
use tollgate_redis::{redis, RedisStore};
use tollgate_testkit::RedisServer;

fn same_algorithm(a: &Limit, b: &Limit) -> bool {
    std::mem::discriminant(&a.algorithm()) == std::mem::discriminant(&b.algorithm())
}

/// The limit of a key changed to another of the same algorithm that both stores read the
/// key's state in: a sliding window of the same shape (segments and segment length) with
/// another count, or another of `limits` of the algorithm (a log's window, a token bucket's
/// rate and a fixed window's period may change). A sliding window whose shape changes is
/// not compared: Redis carries its count over (tests/shape_change.rs), where the memory
/// store starts afresh.
fn changed(rng: &mut Rng, own: Limit, limits: &[Limit]) -> Limit {
    if let Algorithm::SlidingWindow { segments } = own.algorithm() {
        let q = own.quota();
        let count = q.count() + 1 + rng.below(3);
        return Limit::sliding_segments(
            Quota::new(count, q.period()).unwrap(),
            u32::from(segments),
        )
        .unwrap();
    }
    let same: Vec<Limit> = limits
        .iter()
        .filter(|l| same_algorithm(l, &own))
        .copied()
        .collect();
    *rng.pick(&same)
}

/// The Redis store on its own server (no refusal cache) and the memory store on a clock
/// that [`Both::apply`] sets to each Redis decision's time.
struct Both {
    redis: RedisStore,
    memory: MemoryStore,
    clock: ManualClock,
    /// The times of the latest decisions, for refunds of a charge made at one of them.
    times: std::sync::Mutex<Vec<Timestamp>>,
}

impl Both {
    fn new(server: &RedisServer) -> Self {
        let clock = ManualClock::new(Duration::ZERO);
        Both {
            redis: RedisStore::builder()
                .url(server.url())
                .refusal_cache(0)
                .build()
                .unwrap(),
            memory: MemoryStore::builder().clock(clock.clone()).build(),
            clock,
            times: Default::default(),
        }
    }

    /// Decides `batch` on Redis, then on memory at Redis's time; asserts both decided the
    /// same, field for field, and gives the decision.
    async fn apply(&self, batch: &Batch, seed: u64, step: usize) -> Decision {
        let on_redis = self.redis.apply(batch).await.unwrap();
        self.clock.set(on_redis.now);
        {
            let mut times = self.times.lock().unwrap();
            if times.len() == 16 {
                times.remove(0);
            }
            times.push(on_redis.now);
        }
        let on_memory = self.memory.apply(batch).await.unwrap();
        assert_eq!(
            on_redis, on_memory,
            "seed {seed} step {step}: {batch:#?}\nredis: {on_redis:#?}\nmemory: {on_memory:#?}"
        );
        on_redis
    }

    /// An operation drawn with these weights, in percent: charge, peek, refund and penalize
    /// (reset takes the rest). Half the refunds are of a charge made at the time of one of
    /// the latest decisions ([`Op::RefundAt`]).
    fn draw_op(&self, rng: &mut Rng, weights: [u64; 4]) -> Op {
        match draw_op(rng, weights) {
            Op::Refund if rng.below(2) == 0 => {
                let times = self.times.lock().unwrap();
                if times.is_empty() {
                    return Op::Refund;
                }
                Op::RefundAt(times[rng.below(times.len() as u64) as usize])
            }
            op => op,
        }
    }
}

/// An operation drawn with these weights, in percent: charge, peek, refund and penalize
/// (reset takes the rest).
fn draw_op(rng: &mut Rng, [charge, peek, refund, penalize]: [u64; 4]) -> Op {
    let n = rng.below(100);
    let mut at = 0;
    for (weight, op) in [
        (charge, Op::Charge),
        (peek, Op::Peek),
        (refund, Op::Refund),
        (penalize, Op::Penalize),
    ] {
        at += weight;
        if n < at {
            return op;
        }
    }
    Op::Reset
}

/// `n` distinct keys, each drawn by `draw` (a batch naming a key twice is invalid).
fn distinct_keys(rng: &mut Rng, n: usize, draw: impl Fn(&mut Rng) -> usize) -> Vec<usize> {
    let mut keys: Vec<usize> = Vec::with_capacity(n);
    while keys.len() < n {
        let k = draw(rng);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys
}

fn random_batch(both: &Both, rng: &mut Rng, seed: u64, limits: &[Limit]) -> Batch {
    let op = both.draw_op(rng, [60, 10, 12, 12]);
    let n = 1 + rng.below(3) as usize;
    let keys = distinct_keys(rng, n, |rng| rng.below(limits.len() as u64 + 2) as usize);
    let buckets = keys
        .into_iter()
        .map(|k| {
            // Each key has its own limit, except now and then (the limit changed, to another
            // of the same algorithm read in the same state: see `changed`; the memory store
            // keeps each algorithm's state of a key apart, Redis one state per key).
            let own = limits[k % limits.len()];
            let limit = if rng.below(20) == 0 {
                changed(rng, own, limits)
            } else {
                own
            };
            let cost = match rng.below(20) {
                0 => limit.capacity() + 1,
                1 if op != Op::Charge => 0,
                _ => 1 + rng.below(3),
            };
            Bucket::new(&format!("s{seed}"), &format!("k{k}"), limit).with_cost(cost)
        })
        .collect();
    Batch::new(op, buckets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_decisions_as_memory_for_random_sequences() {
    let server = RedisServer::start();
    let both = Both::new(&server);
    let limits = short_limits();
    let mut refused = 0;
    let mut admitted = 0;
    for seed in 0..12 {
        let mut rng = Rng::new(seed);
        for step in 0..250 {
            let batch = random_batch(&both, &mut rng, seed, &limits);
            let on_redis = both.apply(&batch, seed, step).await;
            if batch.op == Op::Charge {
                if on_redis.allowed {
                    admitted += 1;
                } else {
                    refused += 1;
                }
            }
            if rng.below(5) == 0 {
                tokio::time::sleep(Duration::from_millis(rng.below(8))).await;
            }
        }
    }
    // The sequences exercised both answers.
    assert!(
        admitted > 200 && refused > 200,
        "{admitted} admitted, {refused} refused"
    );
}

/// Sliding windows across segment and window boundaries, several buckets at once. Segments
/// of 1 to 12 ms (one of them 4.286 ms, not a whole number of milliseconds), windows of 6 to
/// 48 ms, pauses drawn around a segment's length: requests land in new segments, segments
/// leave the window one by one, whole windows pass. Batches of one to four buckets, most
/// of them all sliding windows (the script's fused path), the others mixed with the other
/// algorithms (its general path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_windows_across_segment_and_window_boundaries() {
    let server = RedisServer::start();
    let both = Both::new(&server);
    let mut conn = connect(&server.url()).await;
    let q = common::quota;
    let sliding = [
        Limit::sliding_segments(q(4, 6), 6).unwrap(),
        Limit::sliding_segments(q(5, 12), 3).unwrap(),
        Limit::sliding_segments(q(8, 20), 10).unwrap(),
        Limit::sliding_segments(q(3, 48), 4).unwrap(),
        Limit::sliding_segments(q(6, 10), 1).unwrap(),
        Limit::sliding_segments(q(10, 30), 7).unwrap(),
    ];
    let others = [
        Limit::token_bucket(q(5, 20), 2).unwrap(),
        Limit::fixed(q(4, 25)),
        Limit::sliding_exact(q(4, 20)),
    ];
    let (mut admitted, mut refused, mut readmitted, mut several_segments) = (0, 0, 0, 0);
    // Eight seeds, and more while the timing has not yet crossed enough boundaries (how
    // many it crosses depends on the machine's speed).
    let covered = |admitted: u32, refused: u32, readmitted: u32, several: usize| {
        admitted > 500 && refused > 200 && readmitted > 50 && several > 20
    };
    for seed in 100..140 {
        if seed >= 108 && covered(admitted, refused, readmitted, several_segments) {
            break;
        }
        let mut rng = Rng::new(seed);
        // Keys refused lately, to see them admitted again once segments have left.
        let mut was_refused = std::collections::HashSet::new();
        for step in 0..300 {
            let op = both.draw_op(&mut rng, [75, 8, 7, 7]);
            let mixed = rng.below(10) < 3;
            let n = 1 + rng.below(4) as usize;
            let keys = distinct_keys(&mut rng, n, |rng| {
                rng.below(if mixed { 9 } else { 6 }) as usize
            });
            let buckets: Vec<Bucket> = keys
                .iter()
                .map(|&k| {
                    let limit = match k {
                        0..=5 if rng.below(25) == 0 => changed(&mut rng, sliding[k], &sliding),
                        0..=5 => sliding[k],
                        _ => others[k - 6],
                    };
                    let cost = match rng.below(30) {
                        0 => limit.capacity() + 1,
                        1..=4 => 2 + rng.below(2),
                        _ => 1,
                    };
                    Bucket::new(&format!("b{seed}"), &format!("k{k}"), limit).with_cost(cost)
                })
                .collect();
            let batch = Batch::new(op, buckets);
            let on_redis = both.apply(&batch, seed, step).await;
            if op == Op::Charge {
                for (b, state) in batch.buckets.iter().zip(&on_redis.buckets) {
                    if state.refusal == Some(tollgate_limits::Refusal::OverLimit) {
                        was_refused.insert(b.key.to_string());
                    } else if on_redis.allowed && was_refused.remove(&b.key.to_string()) {
                        readmitted += 1;
                    }
                }
                if on_redis.allowed {
                    admitted += 1;
                } else {
                    refused += 1;
                }
            }
            if rng.below(8) == 0 {
                let key = both.redis.redis_key(&batch.buckets[0]);
                let value: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or(None);
                // A sliding window's value: "<k>:<s>|" and 19 bytes per segment.
                several_segments += usize::from(value.is_some_and(|v| {
                    v.iter()
                        .position(|&b| b == b'|')
                        .is_some_and(|tag| v.len() - tag > 2 * 19)
                }));
            }
            // Around a segment's length (1 to 12 ms): std's sleep, finer than tokio's timer.
            if rng.below(3) != 0 {
                std::thread::sleep(Duration::from_micros(rng.below(9_000)));
            }
        }
    }
    eprintln!(
        "{admitted} admitted, {refused} refused, {readmitted} admitted again, {several_segments} windows of several segments"
    );
    assert!(
        admitted > 500 && refused > 200,
        "{admitted} admitted, {refused} refused"
    );
    assert!(
        readmitted > 50,
        "{readmitted} keys admitted again after a refusal"
    );
    assert!(
        several_segments > 20,
        "{several_segments} stored windows with several segments seen"
    );
}

/// Long windows, so nothing expires while the test runs: the exact counts of a seed
/// scenario, and a refusal charging no bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_charges_no_bucket() {
    let server = RedisServer::start();
    let store = RedisStore::builder()
        .url(server.url())
        .refusal_cache(0)
        .build()
        .unwrap();
    let per_ip = Bucket::new(
        "generate:ip",
        "203.0.113.7",
        Limit::sliding(Quota::per_minute(3)),
    );
    let per_user = Bucket::new(
        "generate:user",
        "u_1",
        Limit::sliding_exact(Quota::per_hour(10)),
    );
    let daily = Bucket::new("generate:day", "u_1", Limit::fixed(Quota::per_day(100)));
    let burst = Bucket::new(
        "generate:burst",
        "u_1",
        Limit::token_bucket(Quota::per_minute(100), 20).unwrap(),
    );
    let batch = Batch::charge(vec![per_ip, per_user.clone(), daily.clone(), burst.clone()]);
    for i in 0..3 {
        let d = store.apply(&batch).await.unwrap();
        assert!(d.allowed, "request {i}");
        assert_eq!(d.buckets[0].remaining, 2 - i);
    }
    for _ in 0..5 {
        let d = store.apply(&batch).await.unwrap();
        assert!(!d.allowed);
        assert!(!d.buckets[0].allowed && d.buckets[1].allowed && d.buckets[2].allowed);
        let wait = d.retry_after().unwrap();
        // The three sit in one segment, which counts until a minute after its last
        // admission: the wait is the true one, never more than the window.
        assert!(
            wait > Duration::from_secs(59) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
    }
    // The four refusals charged nothing in the other buckets.
    let peek = store
        .apply(&Batch::new(Op::Peek, vec![per_user, daily, burst]))
        .await
        .unwrap();
    let remaining: Vec<u64> = peek.buckets.iter().map(|b| b.remaining).collect();
    assert_eq!(remaining, [7, 97, 17]);
}

/// Fixed windows across window boundaries, placed by the store's clock: windows of 5 to
/// 40 ms, pauses drawn around a window's length, so that requests land at the end of one
/// window and the start of the next, and whole windows pass. Most batches are a charge of
/// one fixed window (`fixed.lua`: one number back, the decision worked out from the clock);
/// the others (peeks, refunds, penalties, resets, and charges of several buckets, some of
/// them sliding windows or token buckets) run `decide.lua` on the same keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_windows_across_window_boundaries() {
    let server = RedisServer::start();
    let both = Both::new(&server);
    let q = common::quota;
    let fixed = [
        Limit::fixed(q(2, 5)),
        Limit::fixed(q(3, 7)),
        Limit::fixed(q(4, 12)),
        Limit::fixed(q(2, 25)),
        Limit::fixed(q(5, 40)),
    ];
    let others = [
        Limit::sliding_segments(q(5, 12), 3).unwrap(),
        Limit::token_bucket(q(5, 20), 2).unwrap(),
    ];
    let (mut alone, mut refused, mut readmitted) = (0, 0, 0);
    // Eight seeds, and more while the timing has not yet crossed enough boundaries (how
    // many it crosses depends on the machine's speed: a loaded machine crosses fewer).
    let covered = |alone: u32, refused: u32, readmitted: u32| {
        alone > 1000 && refused > 100 && readmitted > 50
    };
    for seed in 200..240 {
        if seed >= 208 && covered(alone, refused, readmitted) {
            break;
        }
        let mut rng = Rng::new(seed);
        let mut was_refused = std::collections::HashSet::new();
        for step in 0..300 {
            let op = both.draw_op(&mut rng, [80, 7, 6, 5]);
            let n = if rng.below(4) == 0 {
                2 + rng.below(2) as usize
            } else {
                1
            };
            // A multi-bucket batch may take a sliding window or a token bucket too.
            let keys = distinct_keys(&mut rng, n, |rng| {
                rng.below(if n > 1 { 7 } else { 5 }) as usize
            });
            let buckets: Vec<Bucket> = keys
                .iter()
                .map(|&k| {
                    let limit = match k {
                        // Now and then another capacity (not another period: see
                        // `common::short_limits`).
                        0..=4 if rng.below(30) == 0 => Limit::fixed(q(
                            fixed[k].capacity() + 1 + rng.below(3),
                            fixed[k].quota().period_micros() / 1000,
                        )),
                        0..=4 => fixed[k],
                        _ => others[k - 5],
                    };
                    let cost = match rng.below(30) {
                        0 => limit.capacity() + 1,
                        1 if op != Op::Charge => 0,
                        2..=5 => 2 + rng.below(2),
                        _ => 1,
                    };
                    Bucket::new(&format!("f{seed}"), &format!("k{k}"), limit).with_cost(cost)
                })
                .collect();
            let batch = Batch::new(op, buckets);
            let on_redis = both.apply(&batch, seed, step).await;
            if op == Op::Charge && n == 1 {
                alone += 1;
                let (b, state) = (&batch.buckets[0], &on_redis.buckets[0]);
                let window = on_redis.now.as_micros() / b.limit.quota().period_micros();
                let key = b.key.to_string();
                if state.refusal == Some(tollgate_limits::Refusal::OverLimit) {
                    refused += 1;
                    was_refused.insert((key, window));
                } else if state.allowed && was_refused.iter().any(|(k, w)| *k == key && *w < window)
                {
                    // Refused in an earlier window, admitted in this one.
                    readmitted += 1;
                    was_refused.retain(|(k, _)| *k != key);
                }
            }
            // Around a window's length (5 to 40 ms), often short: std's sleep, finer than
            // tokio's timer.
            match rng.below(8) {
                0 => std::thread::sleep(Duration::from_micros(rng.below(40_000))),
                1 | 2 => std::thread::sleep(Duration::from_micros(rng.below(3_000))),
                _ => {}
            }
        }
    }
    eprintln!("{alone} charges of one fixed window, {refused} refused, {readmitted} admitted again in a later window");
    assert!(
        alone > 1000 && refused > 100,
        "{alone} charges, {refused} refused"
    );
    assert!(
        readmitted > 50,
        "{readmitted} keys admitted again in a later window after a refusal"
    );
}

/// Every key written expires a second after its state is back to fresh (so that instances
/// whose clocks run behind the server's by less find what still counts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_expires_when_fresh_again() {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url()).unwrap();
    let limits = [
        Limit::sliding(Quota::per_minute(10)),
        Limit::sliding_exact(Quota::per_hour(10)),
        Limit::token_bucket(Quota::per_minute(100), 20).unwrap(),
        Limit::fixed(Quota::per_day(1000)),
    ];
    let mut conn = connect(&server.url()).await;
    for (i, limit) in limits.iter().enumerate() {
        let bucket = Bucket::new("ttl", &i.to_string(), *limit).with_cost(3);
        let d = store
            .apply(&Batch::charge(vec![bucket.clone()]))
            .await
            .unwrap();
        assert!(d.allowed);
        let slack = 1_000_000;
        let expected_ms = (d.now.as_micros() + d.buckets[0].reset_after.as_micros() as u64 + slack)
            .div_ceil(1000);
        let at: i64 = redis::cmd("PEXPIRETIME")
            .arg(store.redis_key_at(&bucket, d.now))
            .query_async(&mut conn)
            .await
            .unwrap();
        if matches!(limit.algorithm(), tollgate_limits::Algorithm::FixedWindow) {
            // Decided on the instance's clock, and set as a time to live from it (so a clock
            // behind the server's sets no expiry already past): later by the time the call
            // took to reach the server.
            assert!(
                (expected_ms..expected_ms + 1000).contains(&(at as u64)),
                "{limit}: {at}"
            );
        } else {
            assert_eq!(at as u64, expected_ms, "{limit}");
        }
    }
    // Keys are readable: the prefix, the bucket name and the key (and a fixed window's
    // index: the days since the epoch).
    let day = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    assert_eq!(
        keys,
        [
            "tollgate:ttl:0",
            "tollgate:ttl:1",
            "tollgate:ttl:2",
            &format!("tollgate:ttl:3:{day}")
        ]
    );
    // A refund back to nothing deletes the key instead of leaving it to expire.
    let bucket = Bucket::new("ttl", "0", limits[0]).with_cost(3);
    let _ = store
        .apply(&Batch::new(Op::Refund, vec![bucket]))
        .await
        .unwrap();
    let exists: i64 = redis::cmd("EXISTS")
        .arg("tollgate:ttl:0")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_batches_are_typed_errors_without_a_round_trip() {
    // No server at all: validation happens before any connection.
    let store = RedisStore::open("redis://127.0.0.1:1/").unwrap();
    let limit = Limit::sliding(Quota::per_minute(5));
    let twice = Batch::charge(vec![
        Bucket::new("a", "k", limit),
        Bucket::new("a", "k", limit),
    ]);
    let free = Batch::charge(vec![Bucket::new("a", "k", limit).with_cost(0)]);
    for batch in [twice, free, Batch::charge(vec![])] {
        let err = store.apply(&batch).await.unwrap_err();
        assert!(
            matches!(err, tollgate_limits::StoreError::InvalidBatch(_)),
            "{err}"
        );
    }
}

/// A penalty far beyond any capacity (2^53, or u64::MAX sent as 2^53) saturates the key's
/// state below 2^53 like the memory store's saturating arithmetic: later calls are normal
/// refusals, not errors, the key keeps a valid expiry, and the counts agree with memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_penalty_saturates_instead_of_poisoning_the_key() {
    let server = RedisServer::start();
    let both = Both::new(&server);
    let (redis, memory, clock) = (&both.redis, &both.memory, &both.clock);
    let mut conn = connect(&server.url()).await;
    let limits = [
        Limit::token_bucket(Quota::per_minute(100), 100).unwrap(),
        Limit::token_bucket(Quota::per_day(1), 1).unwrap(),
        Limit::sliding(Quota::per_day(1)),
        Limit::sliding_exact(Quota::per_day(1)),
        Limit::fixed(Quota::per_day(1)),
    ];
    // Twice 2^53 on one key (its saturated state is penalized again), twice u64::MAX on
    // another.
    let max = tollgate_limits::MAX_COUNT;
    for limit in limits {
        for (key, cost) in [("a", max), ("a", max), ("b", u64::MAX), ("b", u64::MAX)] {
            let bucket = Bucket::new("huge", &format!("{limit}:{key}"), limit);
            let mut at = tollgate_limits::Timestamp::default();
            let penalty = Batch::new(Op::Penalize, vec![bucket.clone().with_cost(cost)]);
            for batch in [penalty, Batch::charge(vec![bucket.clone()])] {
                let on_redis = redis
                    .apply(&batch)
                    .await
                    .unwrap_or_else(|e| panic!("{limit}, {:?} of {cost}: {e}", batch.op));
                clock.set(on_redis.now);
                at = on_redis.now;
                let on_memory = memory.apply(&batch).await.unwrap();
                let (r, m) = (&on_redis.buckets[0], &on_memory.buckets[0]);
                assert_eq!(
                    (
                        on_redis.allowed,
                        r.remaining,
                        r.refusal,
                        r.retry_after.is_some()
                    ),
                    (
                        on_memory.allowed,
                        m.remaining,
                        m.refusal,
                        m.retry_after.is_some()
                    ),
                    "{limit}, {:?} of {cost}\nredis: {on_redis:#?}\nmemory: {on_memory:#?}",
                    batch.op
                );
                if batch.op == Op::Charge {
                    assert!(!on_redis.allowed, "{limit}");
                }
            }
            let ttl: i64 = redis::cmd("PTTL")
                .arg(redis.redis_key_at(&bucket, at))
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(ttl > 0, "{limit}: the key keeps an expiry ({ttl})");
        }
    }
}

/// The Redis store on `server` and the memory store, both on one manual clock set to now:
/// a batch with a fixed window in it is decided on Redis at this clock's time.
fn on_one_clock(server: &RedisServer) -> (ManualClock, RedisStore, MemoryStore) {
    let start = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let clock = ManualClock::new(start);
    let redis = RedisStore::builder()
        .url(server.url())
        .refusal_cache(0)
        .clock(clock.clone())
        .build()
        .unwrap();
    let memory = MemoryStore::builder().clock(clock.clone()).build();
    (clock, redis, memory)
}

/// An exact log of 5 per `window` in bucket `name`, and a bucket to charge beside it at
/// no cost: a fixed window, so that the Redis store decides the batch at the instance's
/// (manual) clock's time.
fn log_on_the_clock(name: &str, window: Duration) -> (Bucket, Bucket) {
    let log = Bucket::new(
        name,
        "k",
        Limit::sliding_exact(Quota::new(5, window).unwrap()),
    );
    let clock = Bucket::new(name, "clock", Limit::fixed(Quota::per_day(1_000)));
    (log, clock)
}

/// An exact log's total saturates at 2^53 (u64::MAX is sent as 2^53, each entry saturates
/// too): once a saturated entry leaves the window, the total is recounted from the entries
/// still in it, as the memory store recounts a saturated total. The script took the
/// leaving entry's 2^53 off a total of 2^53 and admitted (4 remaining) while the second
/// penalty still counted. Decided on a manual clock (a fixed window in each batch: the
/// call is then decided on the instance's clock), the memory store on the same one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_log_is_recounted_when_a_penalty_leaves() {
    let server = RedisServer::start();
    let (clock, redis, memory) = on_one_clock(&server);
    let (log, clock_bucket) = log_on_the_clock("saturated", Duration::from_secs(2));
    let penalty = Batch::new(
        Op::Penalize,
        vec![
            log.clone().with_cost(u64::MAX),
            clock_bucket.clone().with_cost(0),
        ],
    );
    let charge = Batch::charge(vec![log.clone(), clock_bucket.clone()]);
    let steps = [
        (Duration::ZERO, &penalty),
        (Duration::from_secs(1), &penalty),
        // The first penalty has left the window; the second counts for 0.9 s more.
        (Duration::from_millis(1_100), &charge),
        (Duration::from_millis(500), &charge),
    ];
    for (i, (advance, batch)) in steps.into_iter().enumerate() {
        clock.advance(advance);
        let on_redis = redis.apply(batch).await.unwrap();
        let on_memory = memory.apply(batch).await.unwrap();
        let (r, m) = (&on_redis.buckets[0], &on_memory.buckets[0]);
        assert_eq!(
            (r.allowed, r.remaining, r.refusal, r.retry_after.is_some()),
            (m.allowed, m.remaining, m.refusal, m.retry_after.is_some()),
            "step {i}\nredis: {on_redis:#?}\nmemory: {on_memory:#?}"
        );
        if batch.op == Op::Charge {
            assert!(!r.allowed, "step {i}: the second penalty still counts");
            assert_eq!(r.remaining, 0, "step {i}");
        }
    }
    // Once the second penalty has left too, the key admits again.
    clock.advance(Duration::from_millis(500));
    let d = redis.apply(&charge).await.unwrap();
    assert!(d.allowed);
    assert_eq!(d.buckets[0].remaining, 4);
}

/// An exact log whose charges are all given back is empty again: full, and reset now, on
/// both stores. (A review: refunding an older entry left it counting 0, kept since a newer
/// one followed; refunding the newer one then dropped only that, and the entry counting 0
/// said the log was reset 800 ms later, while nothing counted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_given_back_whole_is_reset_at_once() {
    let server = RedisServer::start();
    let (clock, redis, memory) = on_one_clock(&server);
    let (log, clock_bucket) = log_on_the_clock("given-back", Duration::from_secs(1));
    let batch = |op: Op| Batch::new(op, vec![log.clone(), clock_bucket.clone()]);
    let first = tollgate_limits::Clock::now(&clock);
    let second = Timestamp::from_micros(first.as_micros() + 100_000);
    let steps = [
        (Duration::ZERO, batch(Op::Charge)),
        (Duration::from_millis(100), batch(Op::Charge)),
        // The older charge first: its entry stays, counting 0, the newer one counting.
        (Duration::from_millis(50), batch(Op::RefundAt(first))),
        (Duration::from_millis(50), batch(Op::RefundAt(second))),
        (Duration::from_millis(50), batch(Op::Peek)),
    ];
    let mut last = Vec::new();
    for (i, (advance, batch)) in steps.iter().enumerate() {
        clock.advance(*advance);
        let on_redis = redis.apply(batch).await.unwrap();
        let on_memory = memory.apply(batch).await.unwrap();
        let (r, m) = (&on_redis.buckets[0], &on_memory.buckets[0]);
        assert_eq!(
            (r.remaining, r.reset_after),
            (m.remaining, m.reset_after),
            "step {i}\nredis: {on_redis:#?}\nmemory: {on_memory:#?}"
        );
        last.push((r.remaining, r.reset_after));
    }
    assert_eq!(
        last[2..],
        [
            (4, Duration::from_millis(950)),
            (5, Duration::ZERO),
            (5, Duration::ZERO)
        ],
        "after each refund, then a look"
    );
}

/// An exact log keeps its entries when its window grows (as the memory store does), so its
/// expiry must grow too, even when the call that first sees the new window changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_whose_window_grows_lives_as_long_as_the_new_window() {
    let server = RedisServer::start();
    let redis = RedisStore::builder()
        .url(server.url())
        .refusal_cache(0)
        .build()
        .unwrap();
    let mut conn = connect(&server.url()).await;
    let short = Limit::sliding_exact(common::quota(2, 200));
    let long = Limit::sliding_exact(Quota::new(2, Duration::from_secs(10)).unwrap());
    let charge = |limit| Batch::charge(vec![Bucket::new("grow", "k", limit)]);
    for _ in 0..2 {
        assert!(redis.apply(&charge(short)).await.unwrap().allowed);
    }
    // The limit changes: the two entries count for 10 s now; a refusal writes nothing else.
    assert!(!redis.apply(&charge(long)).await.unwrap().allowed);
    let key = redis.redis_key(&Bucket::new("grow", "k", long));
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl > 5_000,
        "the key lives as long as its entries count ({ttl} ms)"
    );
    // Past the old window (real time: Redis expires keys by its own clock).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !redis.apply(&charge(long)).await.unwrap().allowed,
        "the entries still count under the 10 s window"
    );
}

/// The largest quota count (`MAX_COUNT`, 2^53 − 1) spent in full on Redis refuses the next
/// charge, for every algorithm, as memory does. (At 2^53, the script's saturated count fitted
/// the quota again: an exact log admitted every further charge.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_quota_spent_in_full_refuses_as_memory_does() {
    let server = RedisServer::start();
    let both = Both::new(&server);
    let (redis, memory, clock) = (&both.redis, &both.memory, &both.clock);
    let max = tollgate_limits::MAX_COUNT;
    let quota = Quota::new(max, Duration::from_secs(3600)).unwrap();
    let limits = [
        Limit::sliding(quota),
        Limit::sliding_exact(quota),
        // (A token bucket cannot hold that many: its burst is bounded by its rate.)
        Limit::fixed(quota),
    ];
    for limit in limits {
        let bucket = Bucket::new("largest", &limit.to_string(), limit);
        let mut answers = Vec::new();
        for cost in [max - 1, 1, 1, 1, 2] {
            let batch = Batch::charge(vec![bucket.clone().with_cost(cost)]);
            let on_redis = redis.apply(&batch).await.unwrap();
            clock.set(on_redis.now);
            let on_memory = memory.apply(&batch).await.unwrap();
            assert_eq!(
                (on_redis.allowed, on_redis.buckets[0].remaining),
                (on_memory.allowed, on_memory.buckets[0].remaining),
                "{limit}, cost {cost}"
            );
            answers.push(on_redis.allowed);
        }
        assert_eq!(answers, [true, true, false, false, false], "{limit}");
    }
}

/// A cost above the largest quota count (2^53 − 1) is more than any capacity: 2^53 and
/// u64::MAX (which the scripts receive as 2^53, where Lua's numbers stop being exact) are
/// refused on a fresh key of the largest quota as costing more than its capacity, for every
/// algorithm, as memory refuses them, and count nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cost_above_the_largest_quota_is_refused_as_over_capacity() {
    let server = RedisServer::start();
    let both = Both::new(&server);
    let max = tollgate_limits::MAX_COUNT;
    let quota = Quota::new(max, Duration::from_secs(3600)).unwrap();
    for (step, limit) in [
        Limit::sliding(quota),
        Limit::sliding_exact(quota),
        Limit::fixed(quota),
    ]
    .into_iter()
    .enumerate()
    {
        for cost in [max + 1, u64::MAX] {
            let bucket = Bucket::new("over", &format!("{limit}:{cost}"), limit);
            let d = both
                .apply(
                    &Batch::charge(vec![bucket.clone().with_cost(cost)]),
                    0,
                    step,
                )
                .await;
            assert!(!d.allowed, "{limit}, cost {cost}");
            assert_eq!(
                (d.buckets[0].refusal, d.buckets[0].remaining),
                (
                    Some(tollgate_limits::Refusal::CostExceedsCapacity {
                        cost,
                        capacity: max
                    }),
                    max
                ),
                "{limit}, cost {cost}"
            );
            let d = both.apply(&Batch::charge(vec![bucket]), 0, step).await;
            assert!(d.allowed, "{limit}, cost {cost}");
            assert_eq!(d.buckets[0].remaining, max - 1, "{limit}, cost {cost}");
        }
    }
}
