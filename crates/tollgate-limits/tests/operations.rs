//! Peek, refund, penalize, reset and oversized costs, for every algorithm, through
//! [`MemoryStore`] on a [`ManualClock`]; and the [`Store`] trait's validation.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tollgate_limits::{
    Algorithm, Batch, Bucket, Decision, Limit, ManualClock, MemoryStore, Op, Quota, Refusal, Store,
    StoreError, Timestamp,
};

const T0: Duration = Duration::from_secs(1_700_000_000);

/// One limit of capacity 5 per algorithm.
fn limits() -> [Limit; 4] {
    let q = Quota::per_minute(5);
    [
        Limit::sliding(q),
        Limit::sliding_exact(q),
        Limit::token_bucket(q, 5).expect("valid burst"),
        Limit::fixed(q),
    ]
}

fn manual_store() -> (MemoryStore, ManualClock) {
    let clock = ManualClock::new(T0);
    (MemoryStore::builder().clock(clock.clone()).build(), clock)
}

/// What a bucket that counts nothing reports as its reset at T0: nothing to wait for, but a
/// fixed window resets at its window's end whatever it holds (40 s after T0 for a minute).
fn empty_reset(limit: Limit) -> Duration {
    match limit.algorithm() {
        Algorithm::FixedWindow => {
            let period = limit.quota().period_micros();
            Duration::from_micros(period - T0.as_micros() as u64 % period)
        }
        _ => Duration::ZERO,
    }
}

fn one(limit: Limit, cost: u64) -> [Bucket; 1] {
    [Bucket::new("ops", "198.51.100.9", limit).with_cost(cost)]
}

fn apply(store: &MemoryStore, op: Op, limit: Limit, cost: u64) -> Decision {
    store.apply_now(op, &one(limit, cost)).unwrap()
}

/// Polls a future that is ready at once (the memory store never waits).
fn ready<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the memory store's future was not ready"),
    }
}

#[test]
fn a_cost_above_the_capacity_is_refused_with_no_retry_time() {
    for limit in limits() {
        let (store, clock) = manual_store();
        for _ in 0..2 {
            let d = apply(&store, Op::Charge, limit, 6);
            assert!(!d.allowed, "{limit}");
            let b = &d.buckets[0];
            assert_eq!(
                b.refusal,
                Some(Refusal::CostExceedsCapacity {
                    cost: 6,
                    capacity: 5
                }),
                "{limit}"
            );
            assert_eq!(b.retry_after, None, "{limit}");
            assert_eq!(d.retry_after(), None, "{limit}");
            assert_eq!(b.remaining, 5, "{limit}: a refusal charges nothing");
            assert_eq!(store.len(), 0, "{limit}: nothing to remember");
            // Waiting does not help.
            clock.advance(Duration::from_secs(86_400));
        }
        // The whole capacity at once is fine.
        assert!(apply(&store, Op::Charge, limit, 5).allowed, "{limit}");
    }
    // A token bucket's capacity is its burst, not its sustained count.
    let (store, _) = manual_store();
    let bucket = Limit::token_bucket(Quota::per_minute(100), 2).expect("valid burst");
    let d = apply(&store, Op::Charge, bucket, 3);
    assert_eq!(
        d.buckets[0].refusal,
        Some(Refusal::CostExceedsCapacity {
            cost: 3,
            capacity: 2
        })
    );
}

#[test]
fn an_impossible_bucket_beats_any_wait_in_a_batch() {
    let (store, _) = manual_store();
    let tight = Bucket::new("tight", "k", Limit::sliding(Quota::per_minute(1)));
    let small = Bucket::new("small", "k", Limit::fixed(Quota::per_hour(3))).with_cost(4);
    let roomy = Bucket::new("roomy", "k", Limit::sliding_exact(Quota::per_hour(100)));
    assert!(store.charge(std::slice::from_ref(&tight)).unwrap().allowed);
    let d = store.charge(&[tight.clone(), small, roomy]).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.most_restrictive(), Some(1));
    assert_eq!(d.retry_after(), None);
    assert!(d.buckets[0].retry_after.is_some());
    assert!(d.buckets[2].allowed);
    assert_eq!(
        d.buckets[2].remaining, 100,
        "refused: the roomy bucket was not charged"
    );
    // Without the impossible bucket, the wait is the tight bucket's.
    let d = store.charge(&[tight]).unwrap();
    assert_eq!(d.most_restrictive(), Some(0));
    assert_eq!(d.retry_after(), d.buckets[0].retry_after);
}

#[test]
fn peek_changes_nothing() {
    for limit in limits() {
        let (store, _) = manual_store();
        for _ in 0..10 {
            let d = apply(&store, Op::Peek, limit, 5);
            assert!(d.allowed, "{limit}");
            assert_eq!(d.buckets[0].remaining, 5, "{limit}");
        }
        assert_eq!(
            store.len(),
            0,
            "{limit}: a peek of a fresh key stores nothing"
        );
        assert!(apply(&store, Op::Charge, limit, 5).allowed, "{limit}");
        let d = apply(&store, Op::Peek, limit, 1);
        assert!(!d.allowed, "{limit}");
        assert_eq!(d.buckets[0].refusal, Some(Refusal::OverLimit), "{limit}");
    }
}

#[test]
fn penalize_counts_even_past_the_limit() {
    for limit in limits() {
        let (store, _) = manual_store();
        assert_eq!(apply(&store, Op::Charge, limit, 4).buckets[0].remaining, 1);
        let d = apply(&store, Op::Penalize, limit, 3);
        assert!(d.allowed, "{limit}: a penalty is not a refusal");
        assert_eq!(d.buckets[0].remaining, 0, "{limit}");
        let refused = apply(&store, Op::Charge, limit, 1);
        assert!(!refused.allowed, "{limit}");

        // The penalty counts beyond the limit: it takes at least as long to recover as a
        // plain exhaustion, and longer where the algorithm keeps the debt (GCRA).
        let (plain, _) = manual_store();
        let _ = apply(&plain, Op::Charge, limit, 5);
        let plain_wait = apply(&plain, Op::Charge, limit, 1).retry_after();
        assert!(refused.retry_after() >= plain_wait, "{limit}");
        if limit.to_string().contains("burst") {
            // 7 tokens owed at 12 s each, 5 forgiven by the burst: 2 + 1 to wait for.
            assert_eq!(refused.retry_after(), Some(Duration::from_secs(36)));
            assert_eq!(plain_wait, Some(Duration::from_secs(12)));
        }
    }
}

#[test]
fn penalize_stores_a_fresh_key() {
    for limit in limits() {
        let (store, _) = manual_store();
        let d = apply(&store, Op::Penalize, limit, 9);
        assert!(d.allowed, "{limit}");
        assert_eq!(d.buckets[0].remaining, 0, "{limit}");
        assert_eq!(store.len(), 1, "{limit}");
        assert!(!apply(&store, Op::Charge, limit, 1).allowed, "{limit}");
    }
}

#[test]
fn refund_gives_back_newest_first_and_never_below_empty() {
    for limit in limits() {
        let (store, _) = manual_store();
        // Refunding a key never charged stores nothing and changes nothing.
        let d = apply(&store, Op::Refund, limit, 3);
        assert!(d.allowed, "{limit}");
        assert_eq!(d.buckets[0].remaining, 5, "{limit}");
        assert_eq!(store.len(), 0, "{limit}");

        assert_eq!(apply(&store, Op::Charge, limit, 5).buckets[0].remaining, 0);
        assert_eq!(apply(&store, Op::Refund, limit, 2).buckets[0].remaining, 2);
        assert!(apply(&store, Op::Charge, limit, 2).allowed, "{limit}");
        assert!(!apply(&store, Op::Charge, limit, 1).allowed, "{limit}");
        // Refunding more than was counted empties the bucket, no further; the entry goes.
        let d = apply(&store, Op::Refund, limit, 50);
        assert_eq!(d.buckets[0].remaining, 5, "{limit}");
        assert_eq!(d.buckets[0].reset_after, empty_reset(limit), "{limit}");
        assert_eq!(store.len(), 0, "{limit}: a fresh state is not kept");
        assert_eq!(apply(&store, Op::Charge, limit, 5).buckets[0].remaining, 0);
        assert!(!apply(&store, Op::Charge, limit, 1).allowed, "{limit}");
    }
}

/// Charges of cost 1 until one is refused: how many were admitted.
fn admitted(store: &MemoryStore, limit: Limit) -> u64 {
    let mut n = 0;
    while apply(store, Op::Charge, limit, 1).allowed {
        n += 1;
        assert!(n <= 5, "{limit}: more than its capacity admitted");
    }
    n
}

#[test]
fn a_refund_of_a_charge_just_made_gives_it_back_whole() {
    for limit in limits() {
        let (store, clock) = manual_store();
        assert_eq!(apply(&store, Op::Charge, limit, 3).buckets[0].remaining, 2);
        let charged = apply(&store, Op::Charge, limit, 1);
        clock.advance(Duration::from_millis(200));
        let d = apply(&store, Op::RefundAt(charged.now), limit, 1);
        assert_eq!(d.buckets[0].remaining, 2, "{limit}");
        assert_eq!(admitted(&store, limit), 2, "{limit}");
    }
}

#[test]
fn a_refund_after_the_next_fixed_window_began_frees_nothing_in_it() {
    let limit = Limit::fixed(Quota::per_minute(5));
    let (store, clock) = manual_store();
    // T0 is 20 s into a minute: 57.3 s into it, then 0.3 s into the next.
    clock.advance(Duration::from_millis(37_300));
    let slow = apply(&store, Op::Charge, limit, 1);
    clock.advance(Duration::from_secs(3));
    assert_eq!(admitted(&store, limit), 5);
    let d = apply(&store, Op::RefundAt(slow.now), limit, 1);
    assert_eq!(
        d.buckets[0].remaining, 0,
        "the new window's count, as it is"
    );
    assert_eq!(admitted(&store, limit), 0, "a sixth in the window");
}

#[test]
fn a_refund_takes_its_own_charge_out_of_a_rolling_window_not_a_newer_one() {
    for limit in [
        Limit::sliding(Quota::per_minute(5)),
        Limit::sliding_exact(Quota::per_minute(5)),
    ] {
        let (store, clock) = manual_store();
        // T0 is 2 s into a 6 s segment: the slow request's charge is in one segment, the
        // next four (5 s later) in the next.
        let slow = apply(&store, Op::Charge, limit, 1);
        clock.advance(Duration::from_secs(5));
        assert_eq!(admitted(&store, limit), 4, "{limit}");
        clock.advance(Duration::from_secs(1));
        let _ = apply(&store, Op::RefundAt(slow.now), limit, 1);
        assert_eq!(admitted(&store, limit), 1, "{limit}");
        // A minute after the slow request: its charge, given back, leaves nothing to free;
        // the five after it count until a minute after them (the last, 6 s after it).
        clock.advance(Duration::from_millis(54_500));
        assert_eq!(admitted(&store, limit), 0, "{limit}: a sixth in a minute");
        clock.advance(Duration::from_secs(6));
        assert_eq!(admitted(&store, limit), 5, "{limit}");
    }
}

#[test]
fn a_token_bucket_refund_gives_back_its_cost_less_the_time_since_its_charge() {
    let limit = Limit::token_bucket(Quota::per_minute(5), 5).expect("valid burst");
    let (store, clock) = manual_store();
    let slow = apply(&store, Op::Charge, limit, 1);
    // Its token is back 12 s later; the bucket is full again when the burst comes.
    clock.advance(Duration::from_secs(30));
    assert_eq!(admitted(&store, limit), 5);
    let _ = apply(&store, Op::RefundAt(slow.now), limit, 1);
    assert_eq!(admitted(&store, limit), 0, "a sixth in the burst");
    // Half of a token's time refilled since the charge: half of it comes back.
    let (store, clock) = manual_store();
    let charged = apply(&store, Op::Charge, limit, 1);
    assert_eq!(admitted(&store, limit), 4);
    clock.advance(Duration::from_secs(6));
    let _ = apply(&store, Op::RefundAt(charged.now), limit, 1);
    assert_eq!(
        admitted(&store, limit),
        1,
        "6 s refilled and 6 s given back: one token"
    );
}

#[test]
fn a_refund_of_nothing_changes_nothing() {
    for limit in limits() {
        let (store, clock) = manual_store();
        let charged = apply(&store, Op::Charge, limit, 2);
        // A penalty of 0 10 s later: an exact log's newest entry counts nothing.
        clock.advance(Duration::from_secs(10));
        let _ = apply(&store, Op::Penalize, limit, 0);
        let before = apply(&store, Op::Peek, limit, 0);
        for op in [Op::Refund, Op::RefundAt(charged.now)] {
            let d = apply(&store, op, limit, 0);
            assert_eq!(d.buckets, before.buckets, "{limit}: {op:?}");
        }
        assert_eq!(apply(&store, Op::Peek, limit, 0).buckets, before.buckets);
    }
}

#[test]
fn reset_forgets_one_key() {
    for limit in limits() {
        let (store, _) = manual_store();
        let other = [Bucket::new("ops", "192.0.2.1", limit).with_cost(5)];
        assert!(apply(&store, Op::Charge, limit, 5).allowed);
        assert!(store.charge(&other).unwrap().allowed);
        assert_eq!(store.len(), 2);
        assert!(!apply(&store, Op::Charge, limit, 1).allowed, "{limit}");

        let d = apply(&store, Op::Reset, limit, 1);
        assert!(d.allowed, "{limit}");
        assert_eq!(d.buckets[0].remaining, 5, "{limit}");
        assert_eq!(d.buckets[0].reset_after, empty_reset(limit), "{limit}");
        assert_eq!(store.len(), 1, "{limit}");
        assert_eq!(apply(&store, Op::Charge, limit, 1).buckets[0].remaining, 4);
        // The other key is untouched.
        assert!(!store.charge(&other).unwrap().allowed, "{limit}");
        // Resetting a key that is not there is harmless.
        assert!(
            store
                .apply_now(Op::Reset, &one(Limit::fixed(Quota::per_day(1)), 1))
                .unwrap()
                .allowed
        );
    }
}

#[test]
fn a_clock_that_goes_back_unspends_nothing() {
    for limit in limits() {
        let (store, clock) = manual_store();
        assert!(apply(&store, Op::Charge, limit, 5).allowed);
        clock.set(Timestamp::from_micros(
            u64::try_from((T0 - Duration::from_secs(90)).as_micros()).expect("fits"),
        ));
        let d = apply(&store, Op::Charge, limit, 1);
        assert!(!d.allowed, "{limit}");
        assert!(d.retry_after().is_some(), "{limit}");
    }
}

#[test]
fn a_limit_changed_at_runtime_starts_its_key_afresh() {
    let (store, _) = manual_store();
    let [sliding, exact, bucket, fixed] = limits();
    assert!(apply(&store, Op::Charge, sliding, 5).allowed);
    for next in [exact, bucket, fixed, sliding] {
        let d = apply(&store, Op::Charge, next, 5);
        assert!(d.allowed, "{next}");
        assert_eq!(d.buckets[0].remaining, 0, "{next}");
    }
}

/// A token bucket of burst 2 whose sustained rate a reload raises from 5/min (a token
/// every 12 s) to 60/min (every second) frees a limited client within the new interval:
/// what was counted carries over in tokens (22 s ahead is 1.83 tokens of 12 s, so 1.83 s
/// of 1 s), not read as 22 tokens of the new second. A refusal keeps the conversion, so
/// the wait it tells is the true one.
#[test]
fn a_token_bucket_whose_sustained_rate_rises_frees_a_limited_client_within_the_new_interval() {
    let (store, clock) = manual_store();
    let slow = Limit::token_bucket(Quota::per_minute(5), 2).expect("valid burst");
    let fast = Limit::token_bucket(Quota::per_minute(60), 2).expect("valid burst");
    assert!(apply(&store, Op::Charge, slow, 1).allowed);
    assert!(apply(&store, Op::Charge, slow, 1).allowed);
    let refused = apply(&store, Op::Charge, slow, 1);
    assert_eq!(refused.retry_after(), Some(Duration::from_secs(12)));

    // Two seconds later the sustained rate is raised: 22 s ahead of 12 s tokens.
    clock.advance(Duration::from_secs(2));
    let d = apply(&store, Op::Charge, fast, 1);
    assert!(!d.allowed);
    assert_eq!(d.buckets[0].remaining, 0);
    assert_eq!(d.buckets[0].reset_after, Duration::from_micros(1_833_334));
    assert_eq!(d.retry_after(), Some(Duration::from_micros(833_334)));
    clock.advance(Duration::from_micros(833_333));
    assert_eq!(
        apply(&store, Op::Charge, fast, 1).retry_after(),
        Some(Duration::from_micros(1))
    );
    clock.advance(Duration::from_micros(1));
    let d = apply(&store, Op::Charge, fast, 1);
    assert!(d.allowed);
    assert_eq!(d.buckets[0].reset_after, Duration::from_secs(2));
}

/// The mirror image: lowering the sustained rate from 60/min to 5/min keeps what was
/// counted, in tokens: a client that spent its burst of 2 a moment ago has 2 tokens to
/// win back at one per 12 s, and is not admitted before the first is back (before, the 2 s
/// ahead were read as a sixth of a new token, and it was admitted at once).
#[test]
fn a_token_bucket_whose_sustained_rate_falls_admits_no_sooner_than_its_count_allows() {
    let (store, clock) = manual_store();
    let fast = Limit::token_bucket(Quota::per_minute(60), 2).expect("valid burst");
    let slow = Limit::token_bucket(Quota::per_minute(5), 2).expect("valid burst");
    assert!(apply(&store, Op::Charge, fast, 2).allowed);
    let peek = apply(&store, Op::Peek, slow, 1);
    assert_eq!(peek.buckets[0].remaining, 0);
    assert_eq!(peek.buckets[0].reset_after, Duration::from_secs(24));
    let d = apply(&store, Op::Charge, slow, 1);
    assert!(!d.allowed);
    assert_eq!(d.retry_after(), Some(Duration::from_secs(12)));
    clock.advance(Duration::from_secs(12) - Duration::from_micros(1));
    assert_eq!(
        apply(&store, Op::Charge, slow, 1).retry_after(),
        Some(Duration::from_micros(1))
    );
    clock.advance(Duration::from_micros(1));
    assert!(apply(&store, Op::Charge, slow, 1).allowed);
    assert_eq!(
        apply(&store, Op::Charge, slow, 1).retry_after(),
        Some(Duration::from_secs(12))
    );
}

/// An interval past the 71 minutes held exactly (1 a day, and 2 a day) is told apart too;
/// its count carries over with an error below a millionth, never in the client's favour.
#[test]
fn a_token_bucket_of_long_intervals_converts_its_count_too() {
    let (store, clock) = manual_store();
    let daily = Limit::token_bucket(Quota::per_day(1), 3).expect("valid burst");
    let twice = Limit::token_bucket(Quota::per_day(2), 3).expect("valid burst");
    let hourly = Limit::token_bucket(Quota::per_hour(1), 3).expect("valid burst");
    assert!(apply(&store, Op::Charge, daily, 2).allowed);
    clock.advance(Duration::from_secs(1));
    // Two days less a second ahead: 1.99999 tokens of a day.
    let ahead = 2 * 86_400_000_000u64 - 1_000_000;
    let within = |reset: Duration, exact: f64| {
        let us = reset.as_micros() as f64;
        assert!(
            us >= exact && us <= exact * (1.0 + 2e-6),
            "{reset:?} for {exact}"
        );
    };
    // As many tokens of half a day, then of an hour (exact).
    let peek = apply(&store, Op::Peek, twice, 1);
    assert_eq!(peek.buckets[0].remaining, 1);
    within(peek.buckets[0].reset_after, ahead as f64 / 2.0);
    let peek = apply(&store, Op::Peek, hourly, 1);
    assert_eq!(peek.buckets[0].remaining, 1);
    within(peek.buckets[0].reset_after, ahead as f64 / 24.0);
}

#[test]
fn admitted_decisions_describe_the_bucket_with_least_left() {
    let (store, clock) = manual_store();
    let per_ip = Bucket::new(
        "api:ip",
        "203.0.113.7",
        Limit::sliding(Quota::per_minute(500)),
    );
    let per_user = Bucket::new("api:user", "u_42", Limit::sliding_exact(Quota::per_hour(3)));
    let d = store.charge(&[per_ip, per_user]).unwrap();
    assert!(d.allowed);
    assert_eq!(d.most_restrictive(), Some(1));
    assert_eq!(d.most_restrictive_state().map(|b| b.remaining), Some(2));
    assert_eq!(d.retry_after(), None);
    assert_eq!(d.now, tollgate_limits::Clock::now(&clock));
    assert_eq!(d.buckets[1].reset_after, Duration::from_secs(3600));
    assert_eq!(d.buckets[1].limit, 3);
}

#[test]
fn the_store_trait_rejects_invalid_batches() {
    let (store, _) = manual_store();
    let store: Arc<dyn Store> = Arc::new(store);
    let limit = Limit::sliding(Quota::per_minute(5));
    let empty = Batch::charge(Vec::new());
    assert!(matches!(
        ready(store.apply(&empty)),
        Err(StoreError::InvalidBatch(_))
    ));
    let free = Batch::charge(vec![Bucket::new("x", "y", limit).with_cost(0)]);
    assert!(matches!(
        ready(store.apply(&free)),
        Err(StoreError::InvalidBatch(_))
    ));
    // A peek of cost 0 is a valid question.
    let peek = Batch::new(Op::Peek, vec![Bucket::new("x", "y", limit).with_cost(0)]);
    assert_eq!(
        ready(store.apply(&peek)).map(|d| d.allowed).ok(),
        Some(true)
    );
    let charge = Batch::charge(vec![Bucket::new("x", "y", limit)]);
    for left in (0..5).rev() {
        let d = ready(store.apply(&charge)).expect("the memory store does not fail");
        assert_eq!(d.buckets[0].remaining, left);
    }
    assert!(!ready(store.apply(&charge)).expect("no failure").allowed);
}

#[test]
fn a_batch_naming_one_key_twice_is_rejected_and_charges_nothing() {
    let store = MemoryStore::new();
    let limit = Limit::sliding(Quota::per_minute(1));
    let twice = Batch::charge(vec![
        Bucket::new("b", "k", limit),
        Bucket::new("b", "k", limit),
    ]);
    let err = ready(store.apply(&twice)).unwrap_err();
    assert!(matches!(err, StoreError::InvalidBatch(_)), "{err}");
    // Nothing was charged: the key still admits its one request.
    assert!(
        store
            .charge(&[Bucket::new("b", "k", limit)])
            .unwrap()
            .allowed
    );
}

#[test]
fn huge_penalties_on_an_exact_log_saturate_instead_of_overflowing() {
    let (store, _clock) = manual_store();
    let limit = Limit::sliding_exact(Quota::per_minute(5));
    let _ = apply(&store, Op::Penalize, limit, u64::MAX);
    let _ = apply(&store, Op::Penalize, limit, u64::MAX);
    let d = apply(&store, Op::Charge, limit, 1);
    assert!(!d.allowed);
    assert_eq!(d.buckets[0].refusal, Some(Refusal::OverLimit));
    assert!(d.buckets[0].retry_after.is_some());
}

/// `MemoryStore::charge` and `apply_now` refuse what `Store::apply` refuses: a key named
/// twice in one charge was checked twice against one state (3 admitted in a 2/min window),
/// and a charge costing 0 was admitted on a full bucket.
#[test]
fn the_synchronous_calls_refuse_batches_that_would_count_wrongly() {
    let store = MemoryStore::new();
    let bucket = Bucket::new("twice", "k", Limit::sliding(Quota::per_minute(2)));
    assert!(store.charge(std::slice::from_ref(&bucket)).unwrap().allowed);
    for (op, batch) in [
        (Op::Charge, vec![bucket.clone(), bucket.clone()]),
        (Op::Charge, vec![bucket.clone().with_cost(0)]),
        (Op::Peek, vec![]),
    ] {
        let err = store.apply_now(op, &batch).unwrap_err();
        assert!(matches!(err, StoreError::InvalidBatch(_)), "{err}");
    }
    // Nothing was charged by them: one more fits, then the window is full.
    assert!(store.charge(std::slice::from_ref(&bucket)).unwrap().allowed);
    assert!(!store.charge(std::slice::from_ref(&bucket)).unwrap().allowed);
}

/// At the far end of the clock's range (a clock gone wrong), every algorithm still counts:
/// nothing overflows (a debug build panicked adding an exact log's window to an
/// admission's time, a release build wrapped and admitted; a token bucket's time saturated
/// and it admitted everything), and a manual clock stops at its last microsecond.
#[test]
fn every_algorithm_at_the_end_of_time_refuses_without_overflowing() {
    let clock = ManualClock::new(Duration::from_micros(u64::MAX - 10_000_000));
    let store = MemoryStore::builder().clock(clock.clone()).build();
    for (i, limit) in limits().into_iter().enumerate() {
        let bucket = Bucket::new("login", &format!("alice-{i}"), limit);
        let charge = || store.charge(std::slice::from_ref(&bucket)).unwrap();
        // (A token bucket's next token is due past the end: it admits none.)
        let admitted = (0..8).filter(|_| charge().allowed).count();
        assert!(admitted <= 5, "{limit}: {admitted} of 8 admitted");
        let refused = charge();
        assert!(!refused.allowed, "{limit}");
        assert!(
            refused.retry_after().is_some_and(|w| w > Duration::ZERO),
            "{limit}"
        );
    }
    clock.advance(Duration::from_secs(3_600));
    assert_eq!(tollgate_limits::Clock::now(&clock).as_micros(), u64::MAX);
}
