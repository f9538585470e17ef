//! What memory admitted during an outage is given back to the primary when it answers
//! again, as far as it still counts then: a client that stayed under its rate through the
//! outage is not refused afterwards for as long as the outage lasted, and one that spent
//! its budget just before the primary came back is still refused.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tollgate_limits::{
    Batch, BoxFuture, Bucket, Clock, Decision, Limit, ManualClock, MemoryStore, Op, Quota, Store,
    StoreError,
};
use tollgate_redis::{FallbackConfig, FallbackStore, Mode, Primary};

/// A primary deciding in a memory store of its own (on the test's clock), failing every
/// call at once while `down`; `restart_empty` gives it a new, empty store and a new
/// incarnation (a Redis restarted without persistence).
#[derive(Debug)]
struct Switchable {
    clock: ManualClock,
    remote: Mutex<MemoryStore>,
    incarnation: AtomicU64,
    down: Arc<AtomicBool>,
}

impl Primary for Switchable {
    fn incarnation(&self) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        let id = self.incarnation.load(Ordering::SeqCst);
        Box::pin(async move { Ok(Some(id.to_string())) })
    }
}

impl Store for Switchable {
    fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
        let down = self.down.load(Ordering::SeqCst);
        let remote = self.remote.lock().unwrap().clone();
        Box::pin(async move {
            if down {
                return Err(StoreError::Unavailable("down".into()));
            }
            remote.apply_now(batch.op, &batch.buckets)
        })
    }
}

struct Setup {
    clock: ManualClock,
    down: Arc<AtomicBool>,
    store: FallbackStore<Arc<Switchable>>,
    primary: Arc<Switchable>,
    bucket: Bucket,
}

async fn setup(limit: Limit) -> Setup {
    setup_with(limit, MemoryStore::builder()).await
}

async fn setup_with(limit: Limit, memory: tollgate_limits::MemoryStoreBuilder) -> Setup {
    let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
    let down = Arc::new(AtomicBool::new(false));
    let primary = Arc::new(Switchable {
        clock: clock.clone(),
        remote: Mutex::new(MemoryStore::builder().clock(clock.clone()).build()),
        incarnation: AtomicU64::new(1),
        down: down.clone(),
    });
    let memory = memory.clock(clock.clone()).build();
    let store =
        FallbackStore::connect_with_memory(primary.clone(), memory, FallbackConfig::default())
            .await;
    assert_eq!(store.mode(), Mode::Primary);
    Setup {
        clock,
        down,
        store,
        primary,
        bucket: Bucket::new("api", "client", limit),
    }
}

impl Setup {
    /// Sends `n` requests `gap` apart; how many were admitted.
    async fn send(&self, n: u32, gap: Duration) -> u32 {
        self.send_as(&self.bucket, n, gap).await
    }

    async fn send_as(&self, bucket: &Bucket, n: u32, gap: Duration) -> u32 {
        let mut admitted = 0;
        for _ in 0..n {
            let batch = Batch::charge(vec![bucket.clone()]);
            if self.store.apply(&batch).await.unwrap().allowed {
                admitted += 1;
            }
            self.clock.advance(gap);
        }
        admitted
    }

    async fn outage(&self) {
        self.down.store(true, Ordering::SeqCst);
    }

    /// The primary comes back empty, as a new incarnation.
    fn restart_empty(&self) {
        *self.primary.remote.lock().unwrap() = MemoryStore::builder()
            .clock(self.primary.clock.clone())
            .build();
        self.primary.incarnation.fetch_add(1, Ordering::SeqCst);
    }

    /// The primary answers again; returns once the store is back on it (its give-back
    /// done).
    async fn recover(&self) {
        self.down.store(false, Ordering::SeqCst);
        for _ in 0..200 {
            if self.store.mode() == Mode::Primary {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("not back on the primary");
    }
}

fn bucket_2_per_s_burst_5() -> Limit {
    Limit::token_bucket(Quota::per_second(2), 5).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_token_bucket_client_under_its_rate_is_not_refused_after_an_outage() {
    let s = setup(bucket_2_per_s_burst_5()).await;
    let second = Duration::from_secs(1);
    assert_eq!(s.send(5, second).await, 5);
    s.outage().await;
    // 15 s on memory at half the sustained rate: all admitted.
    assert_eq!(s.send(15, second).await, 15);
    assert_eq!(s.store.mode(), Mode::Fallback);
    s.recover().await;
    // Still half the rate, now on the primary again.
    assert_eq!(s.send(10, second).await, 10);
}

#[tokio::test(start_paused = true)]
async fn a_budget_spent_on_memory_just_before_the_primary_returns_still_counts() {
    let s = setup(bucket_2_per_s_burst_5()).await;
    s.outage().await;
    // The whole burst at once on memory, then the primary answers at once.
    assert_eq!(s.send(5, Duration::ZERO).await, 5);
    s.recover().await;
    assert_eq!(
        s.send(1, Duration::ZERO).await,
        0,
        "a sixth in the same instant"
    );
}

#[tokio::test(start_paused = true)]
async fn a_fixed_window_counts_on_the_primary_only_what_memory_admitted_in_the_current_window() {
    let s = setup(Limit::fixed(Quota::per_minute(10))).await;
    // Start at a window's beginning.
    let secs = s.clock.now().as_micros() / 1_000_000;
    s.clock.advance(Duration::from_secs(60 - secs % 60));
    s.outage().await;
    // 8 in this minute on memory, then the next minute begins.
    assert_eq!(s.send(8, Duration::from_secs(1)).await, 8);
    s.clock.advance(Duration::from_secs(60 - 8));
    s.recover().await;
    // The new window is whole on the primary: 10, not 2.
    assert_eq!(s.send(12, Duration::ZERO).await, 10);
}

/// Every algorithm: what memory admitted during an outage still counts after the primary
/// restarted empty (its restored count is not what memory's cap is read from).
#[tokio::test(start_paused = true)]
async fn after_an_empty_restart_what_memory_admitted_still_counts() {
    let limits = [
        Limit::sliding(Quota::per_minute(10)),
        Limit::sliding_exact(Quota::per_minute(10)),
        Limit::fixed(Quota::per_minute(10)),
        Limit::token_bucket(Quota::per_minute(10), 10).unwrap(),
    ];
    for limit in limits {
        let s = setup(limit).await;
        let secs = s.clock.now().as_micros() / 1_000_000;
        s.clock.advance(Duration::from_secs(60 - secs % 60)); // a fixed window's start
        assert_eq!(s.send(2, Duration::ZERO).await, 2);
        s.clock.advance(Duration::from_secs(1));
        s.outage().await;
        assert_eq!(s.send(8, Duration::ZERO).await, 8, "{limit}");
        s.restart_empty();
        s.recover().await;
        assert_eq!(
            s.send(20, Duration::ZERO).await,
            0,
            "{limit}: more than 10 in a minute"
        );
    }
}

/// A penalty beyond a token bucket's burst (a lockout) given back in full.
#[tokio::test(start_paused = true)]
async fn a_penalty_past_the_burst_is_given_back_whole() {
    let s = setup(Limit::token_bucket(Quota::per_minute(1), 5).unwrap()).await;
    s.outage().await;
    let penalty = Batch::new(Op::Penalize, vec![s.bucket.clone().with_cost(20)]);
    let _ = s.store.apply(&penalty).await.unwrap();
    s.recover().await;
    s.clock.advance(Duration::from_secs(120));
    assert_eq!(
        s.send(1, Duration::ZERO).await,
        0,
        "20 minutes owed, 2 passed"
    );
}
