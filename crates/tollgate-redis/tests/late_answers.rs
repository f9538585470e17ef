//! An answer of the primary that arrives after the store left it for memory (another call
//! timed out meanwhile) still answered its request: what it admitted counts in memory too,
//! and what it refused raises memory's count to the primary's.
//! (Found under load: with calls in flight when the fallback tripped, a parallel burst on
//! a 100-request limit admitted 109–157.)

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tollgate_limits::{
    Batch, BoxFuture, Bucket, Decision, Limit, MemoryStore, Op, Quota, Store, StoreError,
};
use tollgate_redis::{FallbackConfig, FallbackStore, Mode, Primary};

/// A primary that decides in a memory store of its own, each call answering after the
/// next delay of its script (`None`: never); once the script is spent, it never answers.
#[derive(Debug)]
struct Scripted {
    remote: MemoryStore,
    delays: Mutex<VecDeque<Option<Duration>>>,
}

impl Scripted {
    fn new(delays: impl IntoIterator<Item = Option<Duration>>) -> Self {
        Self {
            remote: MemoryStore::new(),
            delays: Mutex::new(delays.into_iter().collect()),
        }
    }
}

impl Primary for Scripted {}

impl Store for Scripted {
    fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
        let delay = self.delays.lock().unwrap().pop_front().flatten();
        Box::pin(async move {
            match delay {
                Some(delay) => {
                    tokio::time::sleep(delay).await;
                    self.remote.apply_now(batch.op, &batch.buckets)
                }
                None => std::future::pending().await,
            }
        })
    }
}

const TIMEOUT: Duration = Duration::from_millis(50);

#[tokio::test(start_paused = true)]
async fn what_a_late_answer_admitted_counts_in_memory() {
    // The startup check answers at once; then call B never answers (it times out at 50 ms
    // and trips the fallback), call A answers at 55 ms: after the switch, within its own
    // timeout. Every later call (the checks) never answers: the store stays on memory.
    let primary = Scripted::new([Some(Duration::ZERO), None, Some(Duration::from_millis(45))]);
    let store =
        FallbackStore::connect(primary, FallbackConfig::default().with_timeout(TIMEOUT)).await;
    assert_eq!(store.mode(), Mode::Primary);
    let bucket = Bucket::new("api", "k", Limit::sliding(Quota::per_minute(10)));
    let charge = || Batch::charge(vec![bucket.clone()]);
    let (first, second) = (charge(), charge());
    let (b, a) = tokio::join!(store.apply(&first), async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        store.apply(&second).await
    });
    // B was decided from memory, A by the primary: both admitted.
    assert!(b.unwrap().allowed);
    assert!(a.unwrap().allowed);
    assert_eq!(store.mode(), Mode::Fallback);
    // 8 more fit in a limit of 10, and no more.
    let mut admitted = 2;
    for _ in 0..20 {
        if store.apply(&charge()).await.unwrap().allowed {
            admitted += 1;
        }
    }
    assert_eq!(store.mode(), Mode::Fallback);
    assert_eq!(admitted, 10, "admitted {admitted} of a limit of 10");
}

#[tokio::test(start_paused = true)]
async fn a_late_answer_that_refused_counts_nothing_more() {
    // As above, with the key spent on the primary first: A's refusal adds nothing, and
    // memory (which had the primary's count of 10) refuses on.
    let mut script = vec![Some(Duration::ZERO)];
    script.extend(std::iter::repeat_n(Some(Duration::ZERO), 10));
    script.extend([None, Some(Duration::from_millis(45))]);
    let primary = Scripted::new(script);
    let store =
        FallbackStore::connect(primary, FallbackConfig::default().with_timeout(TIMEOUT)).await;
    let bucket = Bucket::new("api", "k", Limit::sliding(Quota::per_minute(10)));
    let charge = || Batch::charge(vec![bucket.clone()]);
    for _ in 0..10 {
        assert!(store.apply(&charge()).await.unwrap().allowed);
    }
    let (first, second) = (charge(), charge());
    let (b, a) = tokio::join!(store.apply(&first), async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        store.apply(&second).await
    });
    assert!(!b.unwrap().allowed);
    assert!(!a.unwrap().allowed);
    assert_eq!(store.mode(), Mode::Fallback);
    let peek = store
        .apply(&Batch::new(Op::Peek, vec![bucket.clone()]))
        .await
        .unwrap();
    assert_eq!(peek.buckets[0].remaining, 0);
}

/// B (cost 1) is sent first and never answers: the store trips to memory at 50 ms, which
/// admits it. A (cost `cost`), sent at 10 ms, is refused by the primary at 55 ms, where
/// other instances spent `spent` of the bucket's 10 meanwhile. Returns how many of `tries`
/// requests memory admits then.
async fn admitted_after_a_late_refusal(
    config: FallbackConfig,
    spent: usize,
    cost: u64,
    tries: usize,
) -> usize {
    let primary = Arc::new(Scripted::new([
        Some(Duration::ZERO),
        None,
        Some(Duration::from_millis(45)),
    ]));
    let store = FallbackStore::connect(primary.clone(), config.with_timeout(TIMEOUT)).await;
    assert_eq!(store.mode(), Mode::Primary);
    let bucket = Bucket::new("api", "k", Limit::sliding(Quota::per_minute(10)));
    for _ in 0..spent {
        let spent = primary
            .remote
            .charge(std::slice::from_ref(&bucket))
            .unwrap();
        assert!(spent.allowed, "spent by the other instances");
    }
    let (first, second) = (
        Batch::charge(vec![bucket.clone()]),
        Batch::charge(vec![bucket.clone().with_cost(cost)]),
    );
    let (b, a) = tokio::join!(store.apply(&first), async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        store.apply(&second).await
    });
    assert!(b.unwrap().allowed, "B, decided from memory");
    assert!(!a.unwrap().allowed, "A, refused by the primary");
    assert_eq!(store.mode(), Mode::Fallback);
    let admitted = common::admitted(&store, &bucket, tries, Duration::ZERO).await;
    assert_eq!(store.mode(), Mode::Fallback);
    admitted
}

#[tokio::test(start_paused = true)]
async fn a_late_refusal_raises_memory_to_the_primary_count_and_what_memory_admitted_since() {
    // Other instances spent 8 of 10 on the primary, so A (cost 3) is refused there, 2
    // remaining. Memory, which admitted B, is raised to the primary's 8 and B's 1 that the
    // primary does not have: 1 more fits (10 in all). Raised to the primary's count alone,
    // 2 fitted (11).
    let admitted = admitted_after_a_late_refusal(FallbackConfig::default(), 8, 3, 5).await;
    assert_eq!(admitted, 1, "admitted from memory after A's answer");
}

#[tokio::test(start_paused = true)]
async fn with_the_mirror_off_a_late_refusal_leaves_memory_as_it_was() {
    // With the mirror off (`with_mirror_keys(0)`), memory keeps no count of the primary's,
    // so A's late refusal (other instances spent 10 of 10) does not raise it: memory,
    // which admitted B, admits 9 more.
    let config = FallbackConfig::default().with_mirror_keys(0);
    let admitted = admitted_after_a_late_refusal(config, 10, 1, 10).await;
    assert_eq!(admitted, 9, "admitted from memory after A's answer");
}

#[tokio::test(start_paused = true)]
async fn calls_still_under_way_count_against_what_memory_admits() {
    // B never answers (the fallback trips at 50 ms); five calls sent at 10 ms are admitted
    // by the primary and answer at 55 ms; meanwhile, at 51 ms, ten more requests are
    // decided from memory. The five under way must count there, or 15 are admitted.
    let mut script = vec![Some(Duration::ZERO), None];
    script.extend(std::iter::repeat_n(Some(Duration::from_millis(45)), 5));
    let store = FallbackStore::connect(
        Scripted::new(script),
        FallbackConfig::default().with_timeout(TIMEOUT),
    )
    .await;
    let bucket = Bucket::new("api", "k", Limit::sliding(Quota::per_minute(10)));
    let charge = || Batch::charge(vec![bucket.clone()]);
    let admitted = |d: Result<Decision, StoreError>| u32::from(d.unwrap().allowed);
    let first = charge();
    let under_way: Vec<Batch> = (0..5).map(|_| charge()).collect();
    let later: Vec<Batch> = (0..10).map(|_| charge()).collect();
    let (b, a, m) = tokio::join!(
        store.apply(&first),
        async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let answers = futures_join_all(under_way.iter().map(|batch| store.apply(batch))).await;
            answers.into_iter().map(admitted).sum::<u32>()
        },
        async {
            tokio::time::sleep(Duration::from_millis(51)).await;
            let mut n = 0;
            for batch in &later {
                n += admitted(store.apply(batch).await);
            }
            n
        }
    );
    assert_eq!(a, 5, "the primary admitted the five under way");
    let total = admitted(b) + a + m;
    assert_eq!(total, 10, "admitted {total} of a limit of 10");
}

/// Polls every future to its end (no `futures` dependency for one join).
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut handles: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = handles.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (h, o) in handles.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match h.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

/// A store on memory (the fallback tripped at 50 ms) with a charge of `key` under way on
/// the primary until 55 ms, on `memory` (whose clock the test moves); returns at 51 ms.
async fn with_a_charge_under_way(memory: MemoryStore, key: &Bucket) -> FallbackStore<Scripted> {
    let script = [Some(Duration::ZERO), None, Some(Duration::from_millis(45))];
    let store = FallbackStore::connect_with_memory(
        Scripted::new(script),
        memory,
        FallbackConfig::default().with_timeout(TIMEOUT),
    )
    .await;
    let (first, under_way) = (
        Batch::charge(vec![Bucket::new("api", "other", key.limit)]),
        Batch::charge(vec![key.clone()]),
    );
    let tripping = store.clone();
    tokio::spawn(async move { tripping.apply(&first).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let sending = store.clone();
    tokio::spawn(async move { sending.apply(&under_way).await });
    tokio::time::sleep(Duration::from_millis(41)).await;
    assert_eq!(store.mode(), Mode::Fallback);
    store
}

/// Looking at a key while a charge of it is under way changes nothing in memory: no
/// later last admission for its window, no room made by dropping other keys.
#[tokio::test(start_paused = true)]
async fn a_look_while_a_charge_is_under_way_writes_nothing() {
    let clock = tollgate_limits::ManualClock::new(Duration::from_secs(1_700_000_000));
    let memory = MemoryStore::builder()
        .clock(clock.clone())
        .max_entries(64)
        .shards(1)
        .build();
    let key = Bucket::new("api", "k", Limit::sliding(Quota::per_minute(10)));
    let store = with_a_charge_under_way(memory.clone(), &key).await;
    // Memory full of other keys, half spent.
    for i in 0..64 {
        let other = Bucket::new("api", &format!("o{i}"), key.limit);
        for _ in 0..5 {
            let _ = store
                .apply(&Batch::charge(vec![other.clone()]))
                .await
                .unwrap();
        }
    }
    let evicted = memory.stats().evicted;
    let peek = Batch::new(Op::Peek, vec![key.clone()]);
    let _ = store.apply(&peek).await.unwrap();
    assert_eq!(
        memory.stats().evicted,
        evicted,
        "a look at a new key made room"
    );
    // The key spent at t0 (9 of 10 fit beside the one under way), looked at 2 s later,
    // in the same segment of its window.
    for _ in 0..10 {
        let _ = store
            .apply(&Batch::charge(vec![key.clone()]))
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(2));
    assert!(!store.apply(&peek).await.unwrap().allowed);
    // A minute and a bit after t0, the window is empty again.
    clock.advance(Duration::from_millis(58_500));
    let direct = memory
        .apply_now(Op::Peek, std::slice::from_ref(&key))
        .unwrap();
    assert_eq!(direct.buckets[0].remaining, 10, "{direct:?}");
}

/// A request that fits only if none of the charges under way is admitted is refused as
/// over the limit, with a wait, not as costing more than the bucket holds.
#[tokio::test(start_paused = true)]
async fn a_request_refused_for_charges_under_way_is_told_to_wait() {
    let key = Bucket::new("login", "alice", Limit::sliding(Quota::per_minute(1)));
    let store = with_a_charge_under_way(MemoryStore::new(), &key).await;
    let refused = store
        .apply(&Batch::charge(vec![key.clone()]))
        .await
        .unwrap();
    assert!(!refused.allowed);
    let state = &refused.buckets[0];
    assert_eq!(
        state.refusal,
        Some(tollgate_limits::Refusal::OverLimit),
        "{state:?}"
    );
    let wait = state.retry_after.expect("a wait");
    assert!(wait >= TIMEOUT && state.reset_after >= wait, "{state:?}");
    assert_eq!(state.remaining, 0, "the one under way spends the bucket");
    // A request that could never fit says so, at its own cost.
    let never = store
        .apply(&Batch::charge(vec![key.clone().with_cost(2)]))
        .await
        .unwrap();
    assert_eq!(
        never.buckets[0].refusal,
        Some(tollgate_limits::Refusal::CostExceedsCapacity {
            cost: 2,
            capacity: 1
        })
    );
}

/// What remains, on a refusal or a look, shows the charges under way as spent, as an
/// admitted charge's does.
#[tokio::test(start_paused = true)]
async fn what_remains_counts_the_charges_under_way() {
    let key = Bucket::new("api", "k", Limit::sliding(Quota::per_minute(10)));
    let store = with_a_charge_under_way(MemoryStore::new(), &key).await;
    let admitted = store
        .apply(&Batch::charge(vec![key.clone()]))
        .await
        .unwrap();
    assert_eq!(admitted.buckets[0].remaining, 8, "1 here, 1 under way");
    let look = store
        .apply(&Batch::new(Op::Peek, vec![key.clone()]))
        .await
        .unwrap();
    assert_eq!(look.buckets[0].remaining, 8);
    let refused = store
        .apply(&Batch::charge(vec![key.clone().with_cost(9)]))
        .await
        .unwrap();
    assert!(!refused.allowed);
    assert_eq!(refused.buckets[0].remaining, 8);
}

/// A primary serving one call at a time, 10 ms each, the others waiting their turn (a
/// pool of one connection): a call may wait there before it is sent.
#[derive(Debug)]
struct Pooled {
    remote: MemoryStore,
    slot: tokio::sync::Semaphore,
}

impl Primary for Pooled {}

impl Store for Pooled {
    fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(async move {
            let _connection = self
                .slot
                .acquire()
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            tokio::time::sleep(Duration::from_millis(10)).await;
            self.remote.apply_now(batch.op, &batch.buckets)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn calls_waiting_for_a_pooled_connection_are_cut_short_at_their_timeout() {
    // 110 charges at once on one connection serving 10 ms each: while answers come, the
    // calls behind them wait on (the primary is not failing), up to the patience's 20 timeouts
    // (1 s): the first 100 are decided on the primary, the last 10 are cut short there
    // and decided from memory. Left waiting longer, they would hold the checks back behind
    // them (a review: back on the primary after 771 ms, not 71) and be sent later, on top
    // of memory's give-back.
    let primary = std::sync::Arc::new(Pooled {
        remote: MemoryStore::new(),
        slot: tokio::sync::Semaphore::new(1),
    });
    let store = FallbackStore::connect(
        primary.clone(),
        FallbackConfig::default().with_timeout(TIMEOUT),
    )
    .await;
    let bucket = Bucket::new("api", "k", Limit::sliding(Quota::per_minute(1000)));
    let start = tokio::time::Instant::now();
    let burst: Vec<_> = (0..110)
        .map(|_| {
            let (store, bucket) = (store.clone(), bucket.clone());
            tokio::spawn(async move { store.apply(&Batch::charge(vec![bucket])).await })
        })
        .collect();
    for request in burst {
        assert!(request.await.unwrap().unwrap().allowed);
    }
    while store.mode() != Mode::Primary {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let back = start.elapsed();
    let cut = TIMEOUT * tollgate_redis::DEFAULT_PATIENCE;
    assert!(back >= cut, "back after {back:?}");
    assert!(
        back < cut + Duration::from_millis(200),
        "back after {back:?}"
    );
    tokio::time::sleep(Duration::from_secs(40)).await;
    let held = primary
        .remote
        .apply_now(Op::Peek, std::slice::from_ref(&bucket))
        .unwrap();
    assert_eq!(1000 - held.buckets[0].remaining, 110, "110 admitted");
}
