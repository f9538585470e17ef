//! Instances share a primary, with a divisor of 2. After an outage the first instance
//! back must not admit on the primary what another, still deciding from memory, spent
//! meanwhile: the primary does not have it until that instance gives it back. So for a
//! time after its return an instance charges its own share too; what it counts then, and
//! what it starts the next outage from, are the other tests here, and what an instance
//! counts when the primary restarted and answers (an admission, a refusal) before the
//! instance knows, or decides a request the moment it returns.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{primary, Switchable};
use tollgate_limits::{
    Batch, BoxFuture, Bucket, Decision, Limit, ManualClock, MemoryStore, Op, Quota, Store,
    StoreError, Timestamp,
};
use tollgate_redis::{FallbackConfig, FallbackStore, Mode, Primary};
use tollgate_testkit::EventLog;

/// The client every test counts: 100 a minute, a sliding window.
fn client() -> Bucket {
    Bucket::new("api", "client", Limit::sliding(Quota::per_minute(100)))
}

/// Waits until `done` holds, for 3 s at most.
async fn until(done: impl Fn() -> bool) {
    for _ in 0..300 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_first_instance_back_admits_no_more_than_its_share_until_the_others_can_be() {
    let (primary, down) = primary();
    let a = instance(&primary, fleet(LONG)).await;
    // B checks the primary again only a minute after its first check fails.
    let b = instance(&primary, slow(LONG, Duration::from_secs(60))).await;
    let bucket = client();
    // 40 before the outage, spread over both instances (one each in turn).
    for _ in 0..20 {
        assert_eq!(
            common::admitted(&a, &bucket, 1, Duration::ZERO).await
                + common::admitted(&b, &bucket, 1, Duration::ZERO).await,
            2
        );
    }

    down.store(true, Ordering::SeqCst);
    // Each spends its share of what the primary last told it remained: 31 of 61 on A,
    // 30 of 60 on B (the README's bound: the limit plus one per instance).
    let during = common::admitted(&a, &bucket, 60, Duration::ZERO).await
        + common::admitted(&b, &bucket, 60, Duration::ZERO).await;
    assert_eq!(during, 61);
    assert_eq!((a.mode(), b.mode()), (Mode::Fallback, Mode::Fallback));
    // Each instance's first check (made at once) finds the primary down.
    tokio::time::sleep(Duration::from_millis(50)).await;

    down.store(false, Ordering::SeqCst);
    until(|| a.mode() == Mode::Primary).await;
    assert_eq!((a.mode(), b.mode()), (Mode::Primary, Mode::Fallback));
    // The primary holds the 40 and what A gave back (31), not B's 30: on the primary alone
    // A would admit 29 more, 130 in all.
    let peek = primary
        .remote
        .apply_now(Op::Peek, std::slice::from_ref(&bucket))
        .unwrap();
    assert_eq!(peek.buckets[0].remaining, 29);
    let after = common::admitted(&a, &bucket, 50, Duration::ZERO).await;
    assert_eq!(40 + during + after, 101, "{after} admitted by A once back");
    // What A refused shows the primary's limit, as every answer does.
    let refused = a.apply(&Batch::charge(vec![bucket.clone()])).await.unwrap();
    assert!(!refused.allowed);
    assert_eq!(refused.buckets[0].limit, 100);
}

#[tokio::test]
async fn once_back_a_charge_that_fits_its_share_is_charged_on_both_and_counted_once() {
    let (primary, down) = primary();
    let a = instance(&primary, fleet(LONG)).await;
    let bucket = client();
    assert_eq!(common::admitted(&a, &bucket, 10, Duration::ZERO).await, 10);
    down.store(true, Ordering::SeqCst);
    // A's share of the 90 remaining is 45: 10 of them spent on memory.
    assert_eq!(common::admitted(&a, &bucket, 10, Duration::ZERO).await, 10);
    down.store(false, Ordering::SeqCst);
    until(|| a.mode() == Mode::Primary).await;
    assert_eq!(a.mode(), Mode::Primary);
    // Back: 35 more fit the share (and the primary, which holds 20), then none.
    assert_eq!(common::admitted(&a, &bucket, 50, Duration::ZERO).await, 35);
    let peek = primary
        .remote
        .apply_now(Op::Peek, std::slice::from_ref(&bucket))
        .unwrap();
    assert_eq!(
        peek.buckets[0].remaining, 45,
        "the primary counted each once"
    );
}

/// An instance of a fleet of two (a divisor of 2) whose charges must fit its share for
/// `grace` after a return.
fn fleet(grace: Duration) -> FallbackConfig {
    FallbackConfig::default()
        .with_fallback_divisor(2)
        .with_return_grace(grace)
}

/// The same, checking a failed primary every `backoff`.
fn slow(grace: Duration, backoff: Duration) -> FallbackConfig {
    fleet(grace).with_probe_backoff(backoff, backoff)
}

/// An instance on `primary` (a memory store of its own) with `config`.
async fn instance(
    primary: &Arc<Switchable>,
    config: FallbackConfig,
) -> FallbackStore<Arc<Switchable>> {
    FallbackStore::connect_with_memory(primary.clone(), MemoryStore::new(), config).await
}

/// That time, in the tests that do not wait for its end.
const LONG: Duration = Duration::from_secs(30);

/// An outage in which each of `spending` admits its number of charges of `bucket` from
/// memory, in turn; the primary answers again 50 ms later (each instance's first check,
/// made at once, has found it down).
async fn outage(
    down: &AtomicBool,
    bucket: &Bucket,
    spending: &[(&FallbackStore<Arc<Switchable>>, usize)],
) {
    down.store(true, Ordering::SeqCst);
    for &(store, n) in spending {
        assert_eq!(common::admitted(store, bucket, n, Duration::ZERO).await, n);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    down.store(false, Ordering::SeqCst);
}

/// The primary fails a call of each of `stores` (on a key of its own), then answers again:
/// returns once every one of them is back on it.
async fn blip(down: &AtomicBool, stores: &[&FallbackStore<Arc<Switchable>>]) {
    down.store(true, Ordering::SeqCst);
    let other = Bucket::new("api", "other", Limit::sliding(Quota::per_minute(100)));
    for store in stores {
        let _ = store.apply(&Batch::charge(vec![other.clone()])).await;
        assert_eq!(store.mode(), Mode::Fallback);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    down.store(false, Ordering::SeqCst);
    until(|| stores.iter().all(|s| s.mode() == Mode::Primary)).await;
    assert!(stores.iter().all(|s| s.mode() == Mode::Primary));
}

#[tokio::test]
async fn just_back_what_is_given_back_or_reset_frees_the_share_too() {
    let bucket = Bucket::new("api", "client", Limit::sliding(Quota::per_minute(10)));
    let (primary, down) = primary();
    let store = instance(&primary, fleet(LONG)).await;
    blip(&down, &[&store]).await;
    let charge = || Batch::charge(vec![bucket.clone()]);
    // Each charge given back at once (a 304 under `refund_if`): nothing is spent, on the
    // primary or on the share (5 of 10).
    for i in 0..8 {
        let decision = store.apply(&charge()).await.unwrap();
        assert!(decision.allowed, "request {i} refused");
        let refund = Batch::new(Op::RefundAt(decision.now), vec![bucket.clone()]);
        let _ = store.apply(&refund).await.unwrap();
    }
    // The share spent (5), then an operator's reset: admitted again.
    assert_eq!(
        common::admitted(&store, &bucket, 10, Duration::ZERO).await,
        5
    );
    let _ = store
        .apply(&Batch::new(Op::Reset, vec![bucket.clone()]))
        .await
        .unwrap();
    assert!(store.apply(&charge()).await.unwrap().allowed);
}

#[tokio::test]
async fn just_back_each_instance_spends_its_own_share_whatever_the_others_spent() {
    // Both instances back, a client new to both: one instance spends its whole share,
    // then the other may still spend its own (the primary's count, split evenly, would
    // have left it a quarter: a review saw 386 to 468 of 500 in a burst after a Redis
    // restart).
    let (primary, down) = primary();
    let (a, b) = (
        instance(&primary, fleet(LONG)).await,
        instance(&primary, fleet(LONG)).await,
    );
    blip(&down, &[&a, &b]).await;
    let bucket = client();
    assert_eq!(common::admitted(&a, &bucket, 60, Duration::ZERO).await, 50);
    assert_eq!(common::admitted(&b, &bucket, 60, Duration::ZERO).await, 50);
}

#[tokio::test]
async fn after_that_time_memory_counts_what_the_fleet_spent_again() {
    // B, never away, spends 8 of 10 on the primary; A comes back from a blip and spends 1
    // within its share. Once that time is over, a new outage must start A from its share
    // of what the primary counted (9 of 10: 1 left, A's share of it 1), not from the 1 A
    // spent itself (a review: 4 admitted).
    let (primary, down) = primary();
    let short = fleet(Duration::from_millis(200));
    let (a, b) = (
        instance(&primary, short.clone()).await,
        instance(&primary, short).await,
    );
    let bucket = Bucket::new("api", "client", Limit::sliding(Quota::per_minute(10)));
    assert_eq!(common::admitted(&b, &bucket, 8, Duration::ZERO).await, 8);
    blip(&down, &[&a]).await;
    assert_eq!(common::admitted(&a, &bucket, 1, Duration::ZERO).await, 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    down.store(true, Ordering::SeqCst);
    assert_eq!(common::admitted(&a, &bucket, 10, Duration::ZERO).await, 1);
    assert_eq!(a.mode(), Mode::Fallback);
}

#[tokio::test]
async fn just_back_a_penalty_counts_on_the_share_too() {
    // A lockout reached in that time (a penalty of 5 on 5 a minute) holds through the
    // next outage (a review: 2 admitted there).
    let (primary, down) = primary();
    let store = instance(&primary, fleet(LONG)).await;
    blip(&down, &[&store]).await;
    let lockout = Bucket::new("login", "alice", Limit::sliding(Quota::per_minute(5)));
    let penalty = Batch::new(Op::Penalize, vec![lockout.clone().with_cost(5)]);
    let _ = store.apply(&penalty).await.unwrap();
    // Redis fails again (a call on another key finds it), still within that time.
    down.store(true, Ordering::SeqCst);
    let other = Bucket::new("api", "other", Limit::sliding(Quota::per_minute(100)));
    let _ = store.apply(&Batch::charge(vec![other])).await;
    assert_eq!(store.mode(), Mode::Fallback);
    assert_eq!(
        common::admitted(&store, &lockout, 5, Duration::ZERO).await,
        0
    );
}

#[tokio::test]
async fn just_back_a_charge_above_the_share_is_left_to_the_primary_and_one_at_it_must_fit() {
    // A share of 5 of 10. A charge of 6 could never fit it: the primary alone decides it
    // (10 left there: admitted), and it then counts on the share, which is spent: 1 more
    // is refused though the primary has 4 left. A charge of exactly 5 must fit what is
    // left of the share: after 1, it does not, though the primary has 9 left.
    let (primary, down) = primary();
    let store = instance(&primary, fleet(LONG)).await;
    blip(&down, &[&store]).await;
    let limit = Limit::sliding(Quota::per_minute(10));
    let costing = |bucket: &Bucket, cost| Batch::charge(vec![bucket.clone().with_cost(cost)]);
    let above = Bucket::new("api", "above", limit);
    assert!(store.apply(&costing(&above, 6)).await.unwrap().allowed);
    assert!(!store.apply(&costing(&above, 1)).await.unwrap().allowed);
    let at = Bucket::new("api", "at", limit);
    assert!(store.apply(&costing(&at, 1)).await.unwrap().allowed);
    assert!(!store.apply(&costing(&at, 5)).await.unwrap().allowed);
    let peek = primary
        .remote
        .apply_now(Op::Peek, &[above.clone(), at.clone()])
        .unwrap();
    assert_eq!(
        (peek.buckets[0].remaining, peek.buckets[1].remaining),
        (4, 9),
        "what the primary counted"
    );
}

#[tokio::test]
async fn without_a_divisor_memory_takes_the_primarys_counts_at_once_after_a_return() {
    // One instance's limits are not divided: there is no time after a return, so the
    // primary's answers are memory's counts at once. B spends 8 of 10 on the primary, A
    // (back from a blip) 1: a new outage starts A from the primary's 9, not from its own 1.
    let (primary, down) = primary();
    let whole = FallbackConfig::default().with_return_grace(LONG);
    let (a, b) = (
        instance(&primary, whole.clone()).await,
        instance(&primary, whole).await,
    );
    blip(&down, &[&a]).await;
    let bucket = Bucket::new("api", "client", Limit::sliding(Quota::per_minute(10)));
    assert_eq!(common::admitted(&b, &bucket, 8, Duration::ZERO).await, 8);
    assert_eq!(common::admitted(&a, &bucket, 1, Duration::ZERO).await, 1);
    down.store(true, Ordering::SeqCst);
    assert_eq!(common::admitted(&a, &bucket, 10, Duration::ZERO).await, 1);
    assert_eq!(a.mode(), Mode::Fallback);
}

/// An instance whose memory runs on the manual clock returned, just back on the primary
/// after a blip, at the start of the time after its return (`grace` long).
async fn just_back(grace: Duration) -> (FallbackStore<Arc<Switchable>>, ManualClock) {
    let (primary, down) = primary();
    let clock = ManualClock::new(Duration::from_secs(1_000_000));
    let memory = MemoryStore::builder().clock(clock.clone()).build();
    let store = FallbackStore::connect_with_memory(primary.clone(), memory, fleet(grace)).await;
    blip(&down, &[&store]).await;
    (store, clock)
}

#[tokio::test]
async fn that_time_ends_on_memorys_clock_exactly_when_it_says() {
    // That time is 1 s on memory's clock (a manual one here). A microsecond before its
    // end a charge must still fit the share (5 of 10); at its end the primary alone
    // decides (10 of 10).
    let (store, clock) = just_back(Duration::from_secs(1)).await;
    let limit = Limit::sliding(Quota::per_minute(10));
    clock.advance(Duration::from_micros(999_999));
    let before = Bucket::new("api", "before", limit);
    assert_eq!(
        common::admitted(&store, &before, 12, Duration::ZERO).await,
        5
    );
    clock.advance(Duration::from_micros(1));
    let at = Bucket::new("api", "at", limit);
    assert_eq!(common::admitted(&store, &at, 12, Duration::ZERO).await, 10);
}

/// Memory's clock (the system's) put back a day after that time ended (a clock a day
/// ahead corrected): that time does not begin again, and the primary alone decides (10 of
/// 10). Before, it lasted again as long as the step: a review's instance refused every
/// request for the day, its charges made on memory's share.
#[tokio::test(start_paused = true)]
async fn that_time_does_not_begin_again_when_memorys_clock_is_put_back() {
    let (store, clock) = just_back(Duration::from_secs(1)).await;
    clock.advance(Duration::from_secs(2));
    tokio::time::advance(Duration::from_secs(2)).await;
    clock.set(Timestamp::from_micros((1_000_000 - 86_400) * 1_000_000));
    let limit = Limit::sliding(Quota::per_minute(10));
    let back = Bucket::new("api", "back", limit);
    assert_eq!(
        common::admitted(&store, &back, 12, Duration::ZERO).await,
        10
    );
}

#[tokio::test]
async fn what_another_instance_gave_back_first_does_not_take_from_this_ones_share() {
    // Both decide a new client from memory in an outage: A spends 40 of its 50, B 10. A
    // gives back first (its checks come sooner); then B's give-back finds 50 on the
    // primary. Split evenly (25 each) that would leave B 25 of its share, not 40 (a review:
    // 408 to 497 of 500 in a burst after a restart).
    let (primary, down) = primary();
    let a = instance(&primary, fleet(LONG)).await;
    let b = instance(&primary, slow(LONG, Duration::from_millis(400))).await;
    let bucket = client();
    outage(&down, &bucket, &[(&a, 40), (&b, 10)]).await;
    until(|| a.mode() == Mode::Primary).await;
    assert_eq!(b.mode(), Mode::Fallback);
    until(|| b.mode() == Mode::Primary).await;
    assert_eq!(b.mode(), Mode::Primary);
    assert_eq!(common::admitted(&b, &bucket, 60, Duration::ZERO).await, 40);
    assert_eq!(common::admitted(&a, &bucket, 60, Duration::ZERO).await, 10);
}

#[tokio::test]
async fn after_that_time_a_key_given_back_counts_what_the_fleet_spent() {
    // In an outage B spends 40 of a client's 100, A 10; B gives back first, then A (its
    // checks come later), whose give-back finds 50 on the primary. The client is not seen
    // again until the next outage, after that time: A starts it from its share of the 50
    // (25, so 25 left), not from the 10 it spent (40 left).
    let (primary, down) = primary();
    let short = Duration::from_millis(200);
    let a = instance(&primary, slow(short, Duration::from_millis(400))).await;
    let b = instance(&primary, fleet(short)).await;
    let bucket = client();
    outage(&down, &bucket, &[(&b, 40), (&a, 10)]).await;
    until(|| (a.mode(), b.mode()) == (Mode::Primary, Mode::Primary)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    down.store(true, Ordering::SeqCst);
    assert_eq!(common::admitted(&a, &bucket, 50, Duration::ZERO).await, 25);
    assert_eq!(a.mode(), Mode::Fallback);
}

/// A primary that restarts empty: a memory store of its own and a run id, reached by each
/// instance through a connection of its own that the restart breaks (the instance's next
/// call fails with a broken pipe; the connection is made again for the calls after it).
/// Asking its run id takes a round trip of 5 ms.
#[derive(Debug)]
struct Restarting {
    remote: Mutex<MemoryStore>,
    run_id: AtomicU64,
}

impl Restarting {
    /// A primary at its first run id, holding nothing.
    fn new() -> Arc<Self> {
        Arc::new(Restarting {
            remote: Mutex::new(MemoryStore::new()),
            run_id: AtomicU64::new(1),
        })
    }

    fn restart(&self) {
        *self.remote.lock().unwrap() = MemoryStore::new();
        self.run_id.fetch_add(1, Ordering::SeqCst);
    }
}

/// An instance's connection to a [`Restarting`] primary: the run id it last reached.
#[derive(Debug)]
struct Connection {
    primary: Arc<Restarting>,
    reached: AtomicU64,
}

impl Primary for Connection {
    fn incarnation(&self) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(Some(self.primary.run_id.load(Ordering::SeqCst).to_string()))
        })
    }

    fn connection_broke(&self, error: &StoreError) -> bool {
        matches!(error, StoreError::Backend(e) if e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
    }
}

impl Store for Connection {
    fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
        let run_id = self.primary.run_id.load(Ordering::SeqCst);
        let broke = self.reached.swap(run_id, Ordering::SeqCst) != run_id;
        let answer = if broke {
            let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
            Err(StoreError::Backend(Box::new(pipe)))
        } else {
            let remote = self.primary.remote.lock().unwrap();
            remote.apply_now(batch.op, &batch.buckets)
        };
        Box::pin(std::future::ready(answer))
    }
}

/// An instance of a fleet of two on `primary`, through a connection of its own.
async fn connected(primary: &Arc<Restarting>) -> FallbackStore<Connection> {
    let connection = Connection {
        primary: primary.clone(),
        reached: AtomicU64::new(primary.run_id.load(Ordering::SeqCst)),
    };
    FallbackStore::connect_with_memory(connection, MemoryStore::new(), fleet(LONG)).await
}

/// Two charges of `bucket` on `store`, the second 1 ms after the first: the first finds
/// the connection to a restarted primary broken and asks whether it restarted (5 ms), the
/// second goes through the fresh connection meanwhile. Whether each was admitted.
async fn broken_then_answered(store: &FallbackStore<Connection>, bucket: &Bucket) -> (bool, bool) {
    let charge = || Batch::charge(vec![bucket.clone()]);
    let (first, second) = (charge(), charge());
    let (found, answered) = tokio::join!(store.apply(&first), async {
        tokio::time::sleep(Duration::from_millis(1)).await;
        store.apply(&second).await
    });
    (found.unwrap().allowed, answered.unwrap().allowed)
}

/// B, connected to a primary that has just restarted (B does not know yet).
async fn restarted_under_b() -> (Arc<Restarting>, FallbackStore<Connection>) {
    let primary = Restarting::new();
    let b = connected(&primary).await;
    primary.restart();
    (primary, b)
}

/// The fleet's other instances spend all 100 of the [`client`] on the restarted `primary`;
/// then a burst reaches `b`: its first call finds the restart ([`broken_then_answered`]),
/// its second is refused through the fresh connection. What `b` then admits from memory:
/// whether the first call, and how many of 60 more.
async fn refused_then_decided_from_memory(
    primary: &Restarting,
    b: &FallbackStore<Connection>,
) -> (bool, usize) {
    let bucket = &client();
    {
        let remote = primary.remote.lock().unwrap();
        for _ in 0..100 {
            let spent = remote.charge(std::slice::from_ref(bucket)).unwrap();
            assert!(spent.allowed, "spent by the other instances");
        }
    }
    let (found, answered) = broken_then_answered(b, bucket).await;
    assert!(!answered, "refused by the restarted primary");
    assert_eq!(b.mode(), Mode::Fallback);
    let later = common::admitted(b, bucket, 60, Duration::ZERO).await;
    assert_eq!(b.mode(), Mode::Fallback);
    (found, later)
}

#[tokio::test(start_paused = true)]
async fn an_answer_of_a_restarted_primary_before_the_instance_knows_is_its_own_admission() {
    // The primary restarts empty while both instances are idle. A finds out first and,
    // back, spends 40 of a new client's 100 on its share. Then a burst reaches B: its first
    // call finds the connection broken and asks whether the primary restarted; meanwhile
    // another goes through the fresh connection and is answered by the restarted primary
    // (41 counted, A's 40 among them). Taken as B's count (its share of 41: 20), it would
    // have cost B A's spending a second time: B then admitted 31 of its 50 (81 of 100 in
    // all, as a review's 364 to 500 of 500 in a burst after an idle restart). Counted as
    // what B admitted, B spends its whole share.
    let primary = Restarting::new();
    let (a, b) = (connected(&primary).await, connected(&primary).await);
    assert_eq!((a.mode(), b.mode()), (Mode::Primary, Mode::Primary));
    primary.restart();
    let bucket = client();
    let charge = || Batch::charge(vec![bucket.clone()]);
    // A's first call finds the restart; decided from memory, then given back.
    assert!(a.apply(&charge()).await.unwrap().allowed);
    assert_eq!(a.mode(), Mode::Fallback);
    until(|| a.mode() == Mode::Primary).await;
    assert_eq!(common::admitted(&a, &bucket, 39, Duration::ZERO).await, 39);

    let (found, answered) = broken_then_answered(&b, &bucket).await;
    assert!(found, "decided from memory");
    assert!(answered, "answered by the restarted primary");
    assert_eq!(b.mode(), Mode::Fallback);
    until(|| b.mode() == Mode::Primary).await;
    assert_eq!(b.mode(), Mode::Primary);
    let from_b = 2 + common::admitted(&b, &bucket, 60, Duration::ZERO).await;
    let from_a = 40 + common::admitted(&a, &bucket, 60, Duration::ZERO).await;
    assert_eq!((from_a, from_b), (50, 50), "admitted by A and by B");
}

#[tokio::test(start_paused = true)]
async fn a_refusal_of_a_restarted_primary_before_the_instance_knows_is_kept_in_memory() {
    // The primary restarts, and the fleet's other instances spend a client's 100 on it
    // again. Then B's first call finds its connection broken and asks whether the primary
    // restarted; meanwhile another goes through the fresh connection and is refused: the
    // primary holds the client full. The restart found, B decides from memory, which knew
    // nothing of the client: it admitted the call that found the restart and its whole
    // share after it (50 more than the client's 100). Kept as memory's count, the refusal
    // refuses them.
    let (primary, b) = restarted_under_b().await;
    let (found, later) = refused_then_decided_from_memory(&primary, &b).await;
    assert_eq!(usize::from(found) + later, 0, "admitted from memory");
}

#[tokio::test(start_paused = true)]
async fn a_refusal_answered_in_the_time_after_a_return_before_the_instance_knows_is_kept_too() {
    // As above, in the time after B's return, when a charge is counted on B's share as
    // well: the refused charge's share is given back, and the refusal was dropped with it
    // (B admitted its whole share, 50, from memory after the restart was found). Kept, it
    // leaves one: the call that found the restart held a charge on the share when the
    // refusal raised memory's count, gave it back when it failed, and was then decided
    // from memory (one past what remains, as each instance of a fleet may admit).
    let (primary, b) = restarted_under_b().await;
    let other = Bucket::new("api", "other", Limit::sliding(Quota::per_minute(100)));
    assert!(b.apply(&Batch::charge(vec![other])).await.unwrap().allowed);
    assert_eq!(b.mode(), Mode::Fallback);
    until(|| b.mode() == Mode::Primary).await;
    assert_eq!(
        b.mode(),
        Mode::Primary,
        "back, in the time after its return"
    );
    primary.restart();
    let (found, later) = refused_then_decided_from_memory(&primary, &b).await;
    assert!(
        found,
        "the call that found the restart, decided from memory"
    );
    assert_eq!(later, 0, "admitted from memory after it");
}

#[tokio::test]
async fn a_request_decided_the_moment_an_instance_returns_is_charged_on_its_share() {
    // In an outage A spends its share of a new client (50 of 100) on memory, and gives it
    // back first. B, the moment it returns, decides a request of the client on another
    // thread. Decided on the primary alone, outside that time, its answer took B's count
    // as its share of the primary's 51 (25): B then admitted 26 of its 50.
    let (primary, down) = primary();
    let a = instance(&primary, fleet(LONG)).await;
    let b = instance(
        &primary,
        slow(LONG, Duration::from_millis(400)).with_failure_threshold(1),
    )
    .await;
    let bucket = client();
    down.store(true, Ordering::SeqCst);
    assert_eq!(common::admitted(&a, &bucket, 60, Duration::ZERO).await, 50);
    let other = Bucket::new("api", "other", Limit::sliding(Quota::per_minute(100)));
    let _ = b.apply(&Batch::charge(vec![other])).await;
    assert_eq!((a.mode(), b.mode()), (Mode::Fallback, Mode::Fallback));
    tokio::time::sleep(Duration::from_millis(50)).await;
    down.store(false, Ordering::SeqCst);
    until(|| a.mode() == Mode::Primary).await;
    assert_eq!((a.mode(), b.mode()), (Mode::Primary, Mode::Fallback));

    let decided = Arc::new(Mutex::new(None));
    let request = {
        let (b, bucket, decided) = (b.clone(), bucket.clone(), decided.clone());
        move || {
            let allowed = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap();
                let batch = Batch::charge(vec![bucket]);
                runtime.block_on(b.apply(&batch)).unwrap().allowed
            })
            .join()
            .unwrap();
            *decided.lock().unwrap() = Some(allowed);
        }
    };
    // Run when B logs its return (after an outage: its failures reached the threshold),
    // and waited for: as another worker thread of the runtime decides a request woken by
    // the return, before the task that returned takes its next step.
    let request = Mutex::new(Some(request));
    let at_return = EventLog::with_hook(move |line| {
        if line.contains(" message=rate-limit store back on the primary") {
            if let Some(run) = request.lock().unwrap().take() {
                run();
            }
        }
    });
    let _hook = tracing::subscriber::set_default(at_return);
    until(|| b.mode() == Mode::Primary).await;
    assert_eq!(
        *decided.lock().unwrap(),
        Some(true),
        "the request at the return"
    );
    assert_eq!(
        1 + common::admitted(&b, &bucket, 60, Duration::ZERO).await,
        50,
        "admitted by B"
    );
}

/// Memory's clock put back two seconds one second into a ten-second time after a return:
/// that time goes on (5 of 10, the share), and ends when it has lasted its ten seconds on
/// the monotonic clock, whatever memory's says. (A first fix ended it at such a step.)
#[tokio::test(start_paused = true)]
async fn that_time_goes_on_through_a_small_step_back_and_lasts_no_longer() {
    let (store, clock) = just_back(Duration::from_secs(10)).await;
    let limit = Limit::sliding(Quota::per_minute(10));
    clock.advance(Duration::from_secs(1));
    tokio::time::advance(Duration::from_secs(1)).await;
    clock.set(Timestamp::from_micros(999_999 * 1_000_000));
    let during = Bucket::new("api", "during", limit);
    assert_eq!(
        common::admitted(&store, &during, 12, Duration::ZERO).await,
        5
    );
    tokio::time::advance(Duration::from_secs(9)).await;
    let after = Bucket::new("api", "after", limit);
    assert_eq!(
        common::admitted(&store, &after, 12, Duration::ZERO).await,
        10
    );
}
