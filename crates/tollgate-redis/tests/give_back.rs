//! What memory admitted during an outage is given back to the primary when it answers
//! again, as far as it still counts then: a client that stayed under its rate through the
//! outage is not refused afterwards for as long as the outage lasted, and one that spent
//! its budget just before the primary came back is still refused.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tollgate_core::{
    Batch, BoxFuture, Bucket, Clock, Decision, Limit, ManualClock, MemoryStore, Quota, Store,
    StoreError,
};
use tollgate_redis::{FallbackConfig, FallbackStore, Mode, Primary};

/// A primary deciding in a memory store of its own (on the test's clock), failing every
/// call at once while `down`.
#[derive(Debug)]
struct Switchable {
    remote: MemoryStore,
    down: Arc<AtomicBool>,
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

struct Setup {
    clock: ManualClock,
    down: Arc<AtomicBool>,
    store: FallbackStore<Switchable>,
    bucket: Bucket,
}

async fn setup(limit: Limit) -> Setup {
    let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
    let down = Arc::new(AtomicBool::new(false));
    let primary = Switchable {
        remote: MemoryStore::builder().clock(clock.clone()).build(),
        down: down.clone(),
    };
    let memory = MemoryStore::builder().clock(clock.clone()).build();
    let store =
        FallbackStore::connect_with_memory(primary, memory, FallbackConfig::default()).await;
    assert_eq!(store.mode(), Mode::Primary);
    Setup {
        clock,
        down,
        store,
        bucket: Bucket::new("api", "client", limit),
    }
}

impl Setup {
    /// Sends `n` requests `gap` apart; how many were admitted.
    async fn send(&self, n: u32, gap: Duration) -> u32 {
        let mut admitted = 0;
        for _ in 0..n {
            let batch = Batch::charge(vec![self.bucket.clone()]);
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
