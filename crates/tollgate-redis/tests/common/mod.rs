//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tollgate_limits::{Batch, BoxFuture, Decision, Limit, MemoryStore, Quota, Store, StoreError};
use tollgate_redis::{redis, FallbackStore, Mode, Primary, RedisStore};

/// A small deterministic generator (SplitMix64), so failures replay from their seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

pub fn quota(count: u64, millis: u64) -> Quota {
    Quota::new(count, Duration::from_millis(millis)).unwrap()
}

/// Limits of every algorithm, short enough that real time moves windows during a test.
///
/// Exact logs share their window length: when a key's window length changes (a config
/// change), the memory store's answer depends on when it swept the key, while Redis has
/// expired it by the old window. A fixed window of another period is another window (a key
/// of its own) on both stores; a sliding window whose shape changes carries its count over
/// on Redis (see decide.lua) where the memory store starts afresh, so the equivalence tests
/// change a sliding window's count only.
pub fn short_limits() -> Vec<Limit> {
    vec![
        Limit::sliding(quota(5, 40)),
        Limit::sliding_segments(quota(7, 30), 3).unwrap(),
        Limit::sliding_segments(quota(3, 15), 5).unwrap(),
        Limit::sliding_exact(quota(4, 30)),
        Limit::sliding_exact(quota(9, 30)),
        Limit::token_bucket(quota(10, 50), 4).unwrap(),
        Limit::token_bucket(quota(3, 20), 1).unwrap(),
        Limit::fixed(quota(6, 35)),
        Limit::fixed(quota(2, 35)),
    ]
}

/// A plain connection for checks from the outside.
pub async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Waits until `store` decides in `mode` (fails after `within`, on Tokio's clock: paused
/// time too); how long it took.
pub async fn wait_for_mode<P: Primary>(
    store: &FallbackStore<P>,
    mode: Mode,
    within: Duration,
) -> Duration {
    let started = tokio::time::Instant::now();
    while store.mode() != mode {
        assert!(
            started.elapsed() < within,
            "still {} after {within:?}, expected {mode}",
            store.mode()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

/// A Redis store on `server` without a refusal cache: every call reaches Redis.
pub fn uncached(server: &tollgate_testkit::RedisServer) -> RedisStore {
    RedisStore::builder()
        .url(server.url())
        .refusal_cache(0)
        .build()
        .unwrap()
}

/// How many of `n` charges of `bucket` through `store` are admitted, one after another,
/// `pause` apart.
pub async fn admitted(
    store: &impl tollgate_limits::Store,
    bucket: &tollgate_limits::Bucket,
    n: usize,
    pause: Duration,
) -> usize {
    let mut admitted = 0;
    for _ in 0..n {
        let d = store
            .apply(&tollgate_limits::Batch::charge(vec![bucket.clone()]))
            .await
            .unwrap();
        admitted += usize::from(d.allowed);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    admitted
}

/// How many times Redis ran `command`, from the text of `INFO commandstats`.
pub fn calls_in(info: &str, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// A store on Redis Cluster `cluster` without a refusal cache: every call reaches Redis.
pub fn cluster_store(cluster: &tollgate_testkit::RedisCluster) -> RedisStore {
    RedisStore::builder()
        .cluster(cluster.urls())
        .refusal_cache(0)
        .build()
        .unwrap()
}

/// A primary deciding in a memory store of its own, failing every call at once while
/// `down`.
#[derive(Debug)]
pub struct Switchable {
    /// Where it decides.
    pub remote: MemoryStore,
    /// Whether every call fails (`StoreError::Unavailable("down")`).
    pub down: Arc<AtomicBool>,
}

impl Primary for Switchable {}

impl Store for Switchable {
    fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
        let down = self.down.load(Ordering::SeqCst);
        Box::pin(async move {
            if down {
                return Err(StoreError::Unavailable("down".into()));
            }
            self.remote.apply_now(batch.op, &batch.buckets)
        })
    }
}

/// A primary, and the switch that takes it down.
pub fn primary() -> (Arc<Switchable>, Arc<AtomicBool>) {
    let down = Arc::new(AtomicBool::new(false));
    let primary = Arc::new(Switchable {
        remote: MemoryStore::new(),
        down: down.clone(),
    });
    (primary, down)
}
