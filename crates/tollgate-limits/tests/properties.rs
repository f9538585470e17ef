//! Property tests of the four algorithms, through [`MemoryStore`] on a [`ManualClock`]:
//! random quotas, arrival times and costs, checked against brute-force references of what
//! each algorithm documents (see `Algorithm` in `limit.rs`).
//!
//! Every case replays one random history against one key and checks, per request:
//! - the verdict and `remaining` against a reference model of the documented rule;
//! - the documented bound over every interval of the whole history;
//! - `retry_after` is exact: charging at `now + retry_after − 1µs` is refused, at
//!   `now + retry_after` admitted;
//! - `reset_after` is exact: at `now + reset_after − 1µs` something is still counted, at
//!   `now + reset_after` the bucket is full again;
//! - a cost above the capacity is refused with `CostExceedsCapacity` and no retry time.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tollgate_limits::{
    Algorithm, Bucket, Decision, Limit, ManualClock, MemoryStore, Op, Quota, Refusal, Timestamp,
};

/// 2023-11-14, far from the epoch so no window index saturates.
const BASE: u64 = 1_700_000_000_000_000;

type CaseResult = Result<(), TestCaseError>;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A store on its own manual clock.
fn manual_store() -> (MemoryStore, ManualClock) {
    let clock = ManualClock::new(Duration::ZERO);
    let store = MemoryStore::builder().clock(clock.clone()).build();
    (store, clock)
}

fn set(clock: &ManualClock, t: u64) {
    clock.set(Timestamp::from_micros(t));
}

fn bucket(name: &str, limit: Limit, cost: u64) -> Bucket {
    Bucket::new(name, "203.0.113.7", limit).with_cost(cost)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).expect("durations in these tests fit in u64")
}

// ---------------------------------------------------------------------------------------
// Strategies.

/// Periods chosen to exercise segment rounding (1 ms or 1.5 s in 7 segments is not a whole
/// number of microseconds) and calendar alignment (a day).
fn period_ms() -> impl Strategy<Value = u64> {
    prop::sample::select(vec![1u64, 3, 7, 50, 1_000, 1_500, 60_000, 86_400_000])
}

fn quota() -> impl Strategy<Value = Quota> {
    (1u64..=12, period_ms())
        .prop_map(|(n, ms)| Quota::new(n, Duration::from_millis(ms)).expect("valid quota"))
}

fn sliding_limit() -> impl Strategy<Value = Limit> {
    quota()
        .prop_flat_map(|q| {
            let most = u32::try_from(q.period().as_millis())
                .unwrap_or(u32::MAX)
                .min(12);
            (Just(q), 1..=most)
        })
        .prop_map(|(q, k)| Limit::sliding_segments(q, k).expect("valid segments"))
}

fn token_limit() -> impl Strategy<Value = Limit> {
    (quota(), 1u64..=12).prop_map(|(q, burst)| Limit::token_bucket(q, burst).expect("valid burst"))
}

fn any_limit() -> impl Strategy<Value = Limit> {
    prop_oneof![
        sliding_limit(),
        quota().prop_map(Limit::sliding_exact),
        token_limit(),
        quota().prop_map(Limit::fixed),
    ]
}

/// Gaps between arrivals scaled to the window: many simultaneous, many within a window,
/// some across several windows, some a microsecond apart.
fn gap(period_us: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => Just(0u64),
        2 => 1..=3u64,
        4 => 0..=period_us / 6,
        2 => 0..=period_us * 2,
    ]
}

/// Costs: mostly 1, some up to the capacity, some above it.
fn cost(capacity: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => Just(1u64),
        3 => 1..=capacity,
        1 => capacity + 1..=capacity + 2,
    ]
}

/// A limit, a start time (anywhere in a day, so calendar windows are hit at every
/// offset), and (gap, cost) arrivals.
fn history(
    limit: impl Strategy<Value = Limit>,
) -> impl Strategy<Value = (Limit, u64, Vec<(u64, u64)>)> {
    limit.prop_flat_map(|limit| {
        let period = limit.quota().period_micros();
        let arrivals = prop::collection::vec((gap(period), cost(limit.capacity())), 1..40);
        (Just(limit), 0..86_400_000_000u64, arrivals)
    })
}

// ---------------------------------------------------------------------------------------
// Reference models, from the documented rules, written without the engine's state.

/// What `limit` has counted at `t`, given the admitted (time, cost) history.
fn used(limit: &Limit, admitted: &[(u64, u64)], t: u64) -> u64 {
    let w = limit.quota().period_micros();
    match limit.algorithm() {
        Algorithm::SlidingWindow { .. } => {
            // Every admission in a segment whose last admission is within (t − W, t].
            let s = limit.segment_micros();
            let last_of = |seg: u64| {
                admitted
                    .iter()
                    .filter(|(ti, _)| ti / s == seg)
                    .map(|(ti, _)| *ti)
                    .max()
                    .unwrap_or(0)
            };
            admitted
                .iter()
                .filter(|(ti, _)| last_of(ti / s) + w > t)
                .map(|(_, c)| c)
                .sum()
        }
        // The exact window (t − W, t].
        Algorithm::SlidingLog => admitted
            .iter()
            .filter(|(ti, _)| ti + w > t)
            .map(|(_, c)| c)
            .sum(),
        // Tokens missing from a full bucket: ceil((TAT − t) / T).
        Algorithm::TokenBucket { .. } => {
            let tat = gcra_tat(limit, admitted);
            tat.saturating_sub(t).div_ceil(limit.emission_interval())
        }
        // The calendar window t lies in.
        Algorithm::FixedWindow => admitted
            .iter()
            .filter(|(ti, _)| ti / w == t / w)
            .map(|(_, c)| c)
            .sum(),
        other => unreachable!("no model for {other:?}"),
    }
}

/// GCRA's theoretical arrival time after the admitted history.
fn gcra_tat(limit: &Limit, admitted: &[(u64, u64)]) -> u64 {
    let t = limit.emission_interval();
    admitted.iter().fold(0, |tat, &(ti, c)| tat.max(ti) + c * t)
}

/// Whether the reference admits `cost` at `t`.
fn model_admits(limit: &Limit, admitted: &[(u64, u64)], t: u64, cost: u64) -> bool {
    if cost > limit.capacity() {
        return false;
    }
    match limit.algorithm() {
        // GCRA in its textbook form: admitted iff the new TAT is within the tolerance
        // (burst × T) of now.
        Algorithm::TokenBucket { burst } => {
            let e = limit.emission_interval();
            gcra_tat(limit, admitted).max(t) + cost * e - t <= burst * e
        }
        _ => used(limit, admitted, t) + cost <= limit.capacity(),
    }
}

// ---------------------------------------------------------------------------------------
// Running a history.

struct Step {
    t: u64,
    cost: u64,
    decision: Decision,
}

/// Charges every arrival against one key; checks each verdict and `remaining` against the
/// reference as it goes. Returns the steps.
fn run(limit: Limit, start: u64, arrivals: &[(u64, u64)]) -> Result<Vec<Step>, TestCaseError> {
    let (store, clock) = manual_store();
    let mut t = BASE + start;
    let mut admitted: Vec<(u64, u64)> = Vec::new();
    let mut steps = Vec::with_capacity(arrivals.len());
    for &(gap, cost) in arrivals {
        t += gap;
        set(&clock, t);
        let expect = model_admits(&limit, &admitted, t, cost);
        let decision = store.charge(&[bucket("p", limit, cost)]).unwrap();
        prop_assert_eq!(
            decision.allowed,
            expect,
            "verdict at {} cost {}",
            t - BASE,
            cost
        );
        prop_assert_eq!(decision.now.as_micros(), t);
        if expect {
            admitted.push((t, cost));
        }
        let b = &decision.buckets[0];
        prop_assert_eq!(b.allowed, decision.allowed);
        prop_assert_eq!(b.limit, limit.shown_quota().count());
        let want_remaining = limit.capacity().saturating_sub(used(&limit, &admitted, t));
        prop_assert_eq!(b.remaining, want_remaining, "remaining at {}", t - BASE);
        steps.push(Step { t, cost, decision });
    }
    Ok(steps)
}

/// A fresh store that has admitted exactly `admitted` (each charge must be admitted).
fn replay(
    limit: Limit,
    admitted: &[(u64, u64)],
) -> Result<(MemoryStore, ManualClock), TestCaseError> {
    let (store, clock) = manual_store();
    for &(t, c) in admitted {
        set(&clock, t);
        prop_assert!(
            store.charge(&[bucket("p", limit, c)]).unwrap().allowed,
            "replay refused"
        );
    }
    Ok((store, clock))
}

/// The checks every algorithm shares: refusal reasons, exact `retry_after`, exact
/// `reset_after`.
fn check_timings(limit: Limit, steps: &[Step]) -> CaseResult {
    let capacity = limit.capacity();
    let mut admitted: Vec<(u64, u64)> = Vec::new();
    for step in steps {
        let b = &step.decision.buckets[0];
        if step.cost > capacity {
            prop_assert!(!b.allowed);
            prop_assert_eq!(
                b.refusal,
                Some(Refusal::CostExceedsCapacity {
                    cost: step.cost,
                    capacity
                })
            );
            prop_assert_eq!(b.retry_after, None);
            prop_assert_eq!(step.decision.retry_after(), None);
            continue;
        }
        if b.allowed {
            prop_assert_eq!(b.refusal, None);
            prop_assert_eq!(b.retry_after, None);
            admitted.push((step.t, step.cost));
            // reset_after: the bucket is full again exactly then.
            let reset = micros(b.reset_after);
            prop_assert!(reset > 0, "something was just counted");
            let (scratch, clock) = replay(limit, &admitted)?;
            let probe = [bucket("p", limit, 1)];
            set(&clock, step.t + reset - 1);
            let before = scratch.apply_now(Op::Peek, &probe).unwrap();
            prop_assert!(
                before.buckets[0].remaining < capacity,
                "full 1µs before reset_after"
            );
            set(&clock, step.t + reset);
            let after = scratch.apply_now(Op::Peek, &probe).unwrap();
            prop_assert_eq!(
                after.buckets[0].remaining,
                capacity,
                "not full at reset_after"
            );
            // Full again: nothing to wait for, but a fixed window (full again because a
            // new window began) reports its window's end, a whole period away.
            let full_reset = match limit.algorithm() {
                Algorithm::FixedWindow => limit.quota().period(),
                _ => Duration::ZERO,
            };
            prop_assert_eq!(after.buckets[0].reset_after, full_reset);
        } else {
            prop_assert_eq!(b.refusal, Some(Refusal::OverLimit));
            let wait = b.retry_after.map(micros);
            prop_assert!(matches!(wait, Some(w) if w > 0), "retry_after {:?}", wait);
            prop_assert_eq!(step.decision.retry_after(), b.retry_after);
            let wait = wait.unwrap_or_default();
            // retry_after: refused 1µs before, admitted at.
            let (scratch, clock) = replay(limit, &admitted)?;
            let again = [bucket("p", limit, step.cost)];
            set(&clock, step.t + wait - 1);
            prop_assert!(
                !scratch.charge(&again).unwrap().allowed,
                "admitted 1µs before retry_after"
            );
            set(&clock, step.t + wait);
            prop_assert!(
                scratch.charge(&again).unwrap().allowed,
                "refused at retry_after"
            );
        }
    }
    Ok(())
}

fn admitted_of(steps: &[Step]) -> Vec<(u64, u64)> {
    steps
        .iter()
        .filter(|s| s.decision.allowed)
        .map(|s| (s.t, s.cost))
        .collect()
}

/// No half-open interval [a, a + W) holds more than N admitted (the maximum is reached
/// by an interval starting at an admission).
fn check_rolling_bound(limit: Limit, admitted: &[(u64, u64)]) -> CaseResult {
    let w = limit.quota().period_micros();
    for &(a, _) in admitted {
        let sum: u64 = admitted
            .iter()
            .filter(|(t, _)| *t >= a && *t < a + w)
            .map(|(_, c)| c)
            .sum();
        prop_assert!(
            sum <= limit.quota().count(),
            "{} admitted in [{}, +W)",
            sum,
            a - BASE
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The properties.

proptest! {
    #![proptest_config(config(96))]

    /// Sliding window (segmented): the documented rule exactly; never more than N in any
    /// interval of length W; never tells a client to wait longer than W; never refuses
    /// when the last W + ⌈W/k⌉ held at most N − cost.
    #[test]
    fn sliding_window_bounds((limit, start, arrivals) in history(sliding_limit())) {
        let steps = run(limit, start, &arrivals)?;
        check_timings(limit, &steps)?;
        let admitted = admitted_of(&steps);
        check_rolling_bound(limit, &admitted)?;
        let w = limit.quota().period_micros();
        let reach = w + limit.segment_micros();
        for step in &steps {
            if let Some(wait) = step.decision.retry_after() {
                prop_assert!(micros(wait) <= w, "told to wait {:?}, longer than W", wait);
            }
            for b in &step.decision.buckets {
                prop_assert!(micros(b.reset_after) <= w, "reset after {:?}", b.reset_after);
            }
        }
        let mut so_far: Vec<(u64, u64)> = Vec::new();
        for step in &steps {
            if step.decision.allowed {
                so_far.push((step.t, step.cost));
            } else if step.cost <= limit.capacity() {
                let recent: u64 = so_far.iter().filter(|(t, _)| t + reach > step.t).map(|(_, c)| c).sum();
                prop_assert!(
                    recent + step.cost > limit.quota().count(),
                    "refused at {} with only {} in the last {}µs", step.t - BASE, recent, reach
                );
            }
        }
    }

    /// Sliding log: admits iff (now − W, now] plus the cost stays within N; so never more
    /// than N in any interval of length W.
    #[test]
    fn sliding_log_is_exact((limit, start, arrivals) in history(quota().prop_map(Limit::sliding_exact))) {
        let steps = run(limit, start, &arrivals)?;
        check_timings(limit, &steps)?;
        check_rolling_bound(limit, &admitted_of(&steps))?;
    }

    /// Token bucket: admits exactly when GCRA does; in any interval of length L at most
    /// burst + L/T (T = the emission interval, ⌈W/N⌉), so at most burst + L·N/W.
    #[test]
    fn token_bucket_is_gcra((limit, start, arrivals) in history(token_limit())) {
        let steps = run(limit, start, &arrivals)?;
        check_timings(limit, &steps)?;
        let admitted = admitted_of(&steps);
        let e = limit.emission_interval();
        prop_assert!(e * limit.quota().count() >= limit.quota().period_micros());
        for (i, &(a, _)) in admitted.iter().enumerate() {
            let mut sum = 0;
            for &(t, c) in &admitted[i..] {
                sum += c;
                // sum ≤ burst + (t − a)/T, in integers.
                prop_assert!(sum * e <= limit.capacity() * e + (t - a),
                    "{} admitted in [{}, {}]", sum, a - BASE, t - BASE);
            }
        }
    }

    /// Fixed window: at most N per window aligned to the epoch, and admitted whenever the
    /// window has room.
    #[test]
    fn fixed_window_is_aligned((limit, start, arrivals) in history(quota().prop_map(Limit::fixed))) {
        let steps = run(limit, start, &arrivals)?;
        check_timings(limit, &steps)?;
        let w = limit.quota().period_micros();
        let admitted = admitted_of(&steps);
        for &(a, _) in &admitted {
            let sum: u64 = admitted.iter().filter(|(t, _)| t / w == a / w).map(|(_, c)| c).sum();
            prop_assert!(sum <= limit.quota().count());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Several buckets at once.

/// 2 to 4 buckets of any algorithms (small quotas, so refusals are frequent) and arrivals
/// with a cost per bucket.
#[allow(clippy::type_complexity)]
fn multi_history() -> impl Strategy<Value = (Vec<Limit>, u64, Vec<(u64, Vec<u64>)>)> {
    prop::collection::vec(any_limit(), 2..=4).prop_flat_map(|limits| {
        let shortest = limits
            .iter()
            .map(|l| l.quota().period_micros())
            .min()
            .unwrap_or(1);
        let costs: Vec<_> = limits.iter().map(|l| cost(l.capacity())).collect();
        let arrivals = prop::collection::vec((gap(shortest), costs), 1..40);
        (Just(limits), 0..86_400_000_000u64, arrivals)
    })
}

fn batch(limits: &[Limit], costs: &[u64]) -> Vec<Bucket> {
    limits
        .iter()
        .zip(costs)
        .enumerate()
        .map(|(i, (&limit, &cost))| bucket(&format!("b{i}"), limit, cost))
        .collect()
}

proptest! {
    #![proptest_config(config(96))]

    /// A multi-bucket charge admits iff every bucket admits; a refused one changes no
    /// bucket (peeks before and after are equal, and equal what the charge answered); and
    /// each bucket ends up exactly as if it had been charged alone with the admitted
    /// requests only.
    #[test]
    fn refused_batch_changes_no_bucket((limits, start, arrivals) in multi_history()) {
        let (store, clock) = manual_store();
        // The same buckets, each charged alone, only when the batch was admitted.
        let (alone, alone_clock) = manual_store();
        let mut t = BASE + start;
        for (gap, costs) in &arrivals {
            t += gap;
            set(&clock, t);
            set(&alone_clock, t);
            let buckets = batch(&limits, costs);
            let before = store.apply_now(Op::Peek, &buckets).unwrap();
            let decision = store.charge(&buckets).unwrap();
            prop_assert_eq!(decision.allowed, decision.buckets.iter().all(|b| b.allowed));
            prop_assert_eq!(decision.allowed, before.allowed);
            if decision.allowed {
                for (i, b) in buckets.iter().enumerate() {
                    let single = alone.charge(std::slice::from_ref(b)).unwrap();
                    prop_assert!(single.allowed);
                    prop_assert_eq!(&single.buckets[0], &decision.buckets[i]);
                }
            } else {
                let after = store.apply_now(Op::Peek, &buckets).unwrap();
                prop_assert_eq!(&after, &before, "a refused charge changed a bucket");
                prop_assert_eq!(&decision, &before, "peek did not say what charge answers");
                for (i, b) in buckets.iter().enumerate() {
                    let single = alone.apply_now(Op::Peek, std::slice::from_ref(b)).unwrap();
                    prop_assert_eq!(&single.buckets[0], &decision.buckets[i]);
                }
                let worst = decision.most_restrictive().expect("a refusing bucket");
                prop_assert!(!decision.buckets[worst].allowed);
                prop_assert_eq!(decision.retry_after(), decision.buckets[worst].retry_after);
                let never = decision.buckets.iter().any(|b| b.retry_after.is_none() && !b.allowed);
                let longest = decision.buckets.iter().filter_map(|b| b.retry_after).max();
                prop_assert_eq!(decision.retry_after(), if never { None } else { longest });
            }
        }
    }

    /// Refunding an admitted charge at once leaves every bucket as if the charge had never
    /// happened, for the rest of the history. (A segmented sliding window gives the count
    /// back but keeps the segment's last admission time, so it may hold the segment a little
    /// longer: it is checked on its own below.)
    #[test]
    fn refund_undoes_a_charge(
        (limits, start, arrivals) in multi_history(),
        refund_mask in any::<u64>(),
    ) {
        let limits: Vec<Limit> = limits
            .into_iter()
            .map(|l| match l.algorithm() {
                Algorithm::SlidingWindow { .. } => Limit::sliding_exact(l.quota()),
                _ => l,
            })
            .collect();
        let (store, clock) = manual_store();
        let (never, never_clock) = manual_store();
        let mut t = BASE + start;
        for (i, (gap, costs)) in arrivals.iter().enumerate() {
            t += gap;
            set(&clock, t);
            set(&never_clock, t);
            let buckets = batch(&limits, costs);
            let decision = store.charge(&buckets).unwrap();
            let refund = decision.allowed && refund_mask & (1 << (i % 64)) != 0;
            if refund {
                let refunded = store.apply_now(Op::Refund, &buckets).unwrap();
                prop_assert!(refunded.allowed);
                let untouched = never.apply_now(Op::Peek, &buckets).unwrap();
                for (r, u) in refunded.buckets.iter().zip(&untouched.buckets) {
                    prop_assert_eq!(r.remaining, u.remaining);
                    prop_assert_eq!(r.reset_after, u.reset_after);
                }
            } else {
                let other = never.charge(&buckets).unwrap();
                prop_assert_eq!(&other, &decision);
            }
            prop_assert_eq!(
                store.apply_now(Op::Peek, &buckets).unwrap(),
                never.apply_now(Op::Peek, &buckets).unwrap()
            );
        }
    }
}

proptest! {
    #![proptest_config(config(96))]

    /// A segmented sliding window: a refund right after a charge gives back exactly what it
    /// charged (remaining as before the charge), never announces a reset later than W, and
    /// never makes the window looser than if the charge had not happened.
    #[test]
    fn sliding_window_refund_gives_the_count_back(
        (limit, start, arrivals) in history(sliding_limit()),
    ) {
        let (store, clock) = manual_store();
        let w = limit.quota().period_micros();
        let mut t = BASE + start;
        for (i, &(gap, cost)) in arrivals.iter().enumerate() {
            t += gap;
            set(&clock, t);
            let b = [bucket("p", limit, cost)];
            if i % 2 == 0 {
                let before = store.apply_now(Op::Peek, &b).unwrap();
                let charged = store.charge(&b).unwrap();
                if charged.allowed {
                    let refunded = store.apply_now(Op::Refund, &b).unwrap();
                    prop_assert_eq!(refunded.buckets[0].remaining, before.buckets[0].remaining);
                    prop_assert!(refunded.buckets[0].reset_after >= before.buckets[0].reset_after);
                    prop_assert!(micros(refunded.buckets[0].reset_after) <= w);
                }
            } else {
                let _ = store.charge(&b).unwrap();
            }
        }
    }
}
