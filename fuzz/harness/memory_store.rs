//! The memory store's batch operations against a plain record of what was admitted.
//!
//! A few keys, each with its own limit (sliding window, exact window, fixed window, token
//! bucket), get random batches (charge, peek, refund, penalize, reset; several keys at
//! once, invalid batches too) between clock steps. The record keeps, per key, the
//! (time, cost) of every charge admitted and every penalty, a refund taking back the
//! newest first, as the store does.
//!
//! Invariants: no panic; a batch answers one state per bucket and is admitted iff every
//! bucket admits; a peek answers what the charge at the same instant does; a refused
//! charge and an invalid batch change nothing (every key peeks the same before and
//! after); a refusal says why and, unless the cost can never fit, when to retry; and by
//! the record: sliding and exact windows never hold more than N in any (t − W, t], a fixed
//! window never more than N per calendar window, a token bucket never more than
//! burst + L / T in an interval of length L; an exact or fixed window refuses only when
//! the count really is over, a sliding window only when the last W + W/k held more than
//! N − cost. A chaotic mode (clock going back, a tiny store that evicts) checks only the
//! first five.
#![allow(dead_code)]

use std::time::Duration;

use tollgate_limits::{
    Algorithm, Batch, Bucket, Clock, Decision, Limit, ManualClock, MemoryStore, Op, Refusal, Store,
    Timestamp,
};

use crate::input::{ready, Input};

const PERIODS_MS: [u64; 10] = [1, 2, 3, 7, 10, 60, 1_000, 1_500, 60_000, 86_400_000];

fn limit(input: &mut Input<'_>) -> Limit {
    input.limit(&PERIODS_MS, 8)
}

/// What was admitted against one key, newest last.
#[derive(Default, Clone)]
struct Record {
    entries: Vec<(u64, u64)>,
}

impl Record {
    fn add(&mut self, at: u64, cost: u64) {
        self.entries.push((at, cost));
    }

    fn refund(&mut self, mut cost: u64) {
        while cost > 0 {
            let Some((_, c)) = self.entries.last_mut() else {
                return;
            };
            let take = (*c).min(cost);
            *c -= take;
            cost -= take;
            if *c == 0 {
                self.entries.pop();
            }
        }
    }

    /// What the costs recorded at `at` (the charges of one call) add up to, saturating
    /// (penalties reach u64::MAX).
    fn held_at(&self, at: u64) -> u64 {
        self.entries
            .iter()
            .filter(|&&(t, _)| t == at)
            .fold(0, |sum, &(_, c)| sum.saturating_add(c))
    }

    /// Takes out every cost recorded at `at`.
    fn take_at(&mut self, at: u64) {
        self.entries.retain(|&(t, _)| t != at);
    }

    /// The costs recorded at times in `from..=to`.
    fn sum(&self, from: u64, to: u64) -> u128 {
        self.entries
            .iter()
            .filter(|&&(at, _)| from <= at && at <= to)
            .map(|&(_, c)| u128::from(c))
            .sum()
    }
}

struct Key {
    bucket: Bucket,
    record: Record,
}

fn batch_of(keys: &[Key], chosen: &[(usize, u64)], op: Op) -> Batch {
    Batch::new(
        op,
        chosen
            .iter()
            .map(|&(k, cost)| keys[k].bucket.clone().with_cost(cost))
            .collect(),
    )
}

/// Every key's state as a peek of cost 1 sees it.
fn snapshot(store: &MemoryStore, keys: &[Key]) -> Vec<Decision> {
    keys.iter()
        .map(|k| {
            store
                .apply_now(Op::Peek, std::slice::from_ref(&k.bucket))
                .unwrap()
        })
        .collect()
}

/// Checks what the record says about an admitted charge of `key` at `now` (the charge
/// already recorded).
fn check_admitted(key: &Key, now: u64) {
    let limit = key.bucket.limit;
    let n = u128::from(limit.quota().count());
    let w = limit.quota().period_micros();
    let record = &key.record;
    match limit.algorithm() {
        Algorithm::SlidingWindow { .. } | Algorithm::SlidingLog => {
            let held = record.sum((now + 1).saturating_sub(w), now);
            assert!(held <= n, "{}: {held} in the window ending at {now}", limit);
        }
        Algorithm::FixedWindow => {
            let start = now / w * w;
            let held = record.sum(start, now);
            assert!(held <= n, "{}: {held} in the window from {start}", limit);
        }
        Algorithm::TokenBucket { burst } => {
            let t = limit.emission_interval();
            for &(from, _) in &record.entries {
                if from > now {
                    continue;
                }
                let held = record.sum(from, now);
                let bound = u128::from(burst) + u128::from((now - from) / t);
                assert!(
                    held <= bound,
                    "{}: {held} in [{from}, {now}], at most {bound}",
                    limit
                );
            }
        }
        _ => {}
    }
}

/// Checks that a refusal of `cost` for `key` at `now` was due, by the record.
fn check_refused(key: &Key, cost: u64, now: u64) {
    let limit = key.bucket.limit;
    let n = u128::from(limit.quota().count());
    let w = limit.quota().period_micros();
    let record = &key.record;
    let held = match limit.algorithm() {
        Algorithm::SlidingWindow { segments } => {
            let seg = limit.segment_micros();
            record.sum(
                (now + 1).saturating_sub((u64::from(segments) + 1) * seg),
                now,
            )
        }
        Algorithm::SlidingLog => record.sum((now + 1).saturating_sub(w), now),
        Algorithm::FixedWindow => record.sum(now / w * w, now),
        _ => return,
    };
    assert!(
        held + u128::from(cost) > n,
        "{}: refused a cost of {cost} at {now} with {held} held",
        limit
    );
}

/// Checks one decision's shape and the refusals' reasons.
fn check_decision(batch: &Batch, decision: &Decision) {
    assert_eq!(decision.buckets.len(), batch.buckets.len());
    assert_eq!(decision.allowed, decision.buckets.iter().all(|b| b.allowed));
    for (bucket, state) in batch.buckets.iter().zip(&decision.buckets) {
        if state.allowed {
            assert_eq!(state.refusal, None);
            assert_eq!(state.retry_after, None);
            continue;
        }
        match state.refusal {
            Some(Refusal::CostExceedsCapacity { cost, capacity }) => {
                assert_eq!((cost, capacity), (bucket.cost, bucket.limit.capacity()));
                assert!(bucket.cost > bucket.limit.capacity());
                assert_eq!(state.retry_after, None);
            }
            Some(Refusal::OverLimit) => {
                assert!(bucket.cost <= bucket.limit.capacity());
                let wait = state.retry_after.expect("an over-limit refusal says when");
                assert!(!wait.is_zero());
            }
            Some(Refusal::StoreFull) => {
                // A new key while its bucket's share is full of keys at their limit.
                let wait = state
                    .retry_after
                    .expect("a full share says when a key expires");
                assert!(!wait.is_zero());
            }
            _ => panic!("a refusal without a reason: {state:?}"),
        }
    }
}

/// The fuzz target.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let chaotic = mode & 3 == 0;
    let start = input.u64() % (1 << 52);
    let clock = ManualClock::new(Duration::from_micros(start));
    let mut builder = MemoryStore::builder().clock(clock.clone());
    builder = if chaotic && mode & 4 != 0 {
        builder.max_entries(1 + input.below(8)).shards(1)
    } else {
        builder.max_entries(4096).shards(1 << input.below(4))
    };
    let store = builder.build();
    let mut keys: Vec<Key> = (0..1 + input.below(4))
        .map(|i| {
            let name = if input.byte() < 32 {
                format!("a-bucket-name-longer-than-inline-{i}")
            } else {
                format!("k{i}")
            };
            Key {
                bucket: Bucket::new(&name, "client", limit(&mut input)),
                record: Record::default(),
            }
        })
        .collect();

    for _ in 0..64 {
        if input.is_empty() {
            break;
        }
        let now = clock.now().as_micros();
        let op = input.below(16);
        if op < 4 {
            let step = u64::from(input.u16()) * [1, 1_000, 100_000, 10_000_000][input.below(4)];
            if chaotic && input.byte() < 32 {
                clock.set(Timestamp::from_micros(now.saturating_sub(step)));
            } else {
                clock.advance(Duration::from_micros(step));
            }
            continue;
        }
        if chaotic && op == 4 {
            // The limit of a key changes (its state starts afresh or carries on).
            let k = input.below(keys.len());
            keys[k].bucket.limit = limit(&mut input);
            continue;
        }
        // Which keys, at what cost; sometimes one twice or none at all (invalid).
        let mut chosen: Vec<(usize, u64)> = Vec::new();
        let mask = input.byte();
        for (k, key) in keys.iter().enumerate() {
            if mask & (1 << k) != 0 {
                let capacity = key.bucket.limit.capacity();
                let cost = match input.below(12) {
                    0 => 0,
                    1 => capacity,
                    2 => capacity.saturating_add(1),
                    // Penalties past u64::MAX, for every algorithm (an exact log's
                    // saturated total once underflowed: fuzz_regressions.rs in core).
                    3 if chaotic => u64::MAX,
                    4 => 2,
                    _ => 1,
                };
                chosen.push((k, cost));
            }
        }
        if mask & 0x80 != 0 && !chosen.is_empty() {
            chosen.push(chosen[0]);
        }
        // A refund of one earlier call's charges (`Op::RefundAt` at that call's time), of
        // what they cost each chosen key: the record takes them out, as if never charged,
        // and the checks below hold the store to that (it may give back less, never more).
        let refund_at = (op == 15).then(|| {
            let times: Vec<u64> = chosen
                .first()
                .map(|&(k, _)| keys[k].record.entries.iter().map(|&(t, _)| t).collect())
                .unwrap_or_default();
            let at = match times.len() {
                0 => now,
                n => times[input.below(n)],
            };
            for (k, cost) in &mut chosen {
                *cost = keys[*k].record.held_at(at);
            }
            at
        });
        let op = match op {
            5..=9 => Op::Charge,
            10 | 11 => Op::Peek,
            12 => Op::Refund,
            13 => Op::Penalize,
            14 => Op::Reset,
            15 => Op::RefundAt(Timestamp::from_micros(refund_at.unwrap_or(now))),
            _ => Op::Charge,
        };
        let batch = batch_of(&keys, &chosen, op);
        let before = snapshot(&store, &keys);
        let peek = (op == Op::Charge && batch.validate().is_ok())
            .then(|| ready(store.apply(&Batch::new(Op::Peek, batch.buckets.clone()))));
        let decision = match ready(store.apply(&batch)) {
            Ok(decision) => decision,
            Err(_) => {
                assert!(batch.validate().is_err(), "a valid batch failed");
                assert_eq!(
                    snapshot(&store, &keys),
                    before,
                    "an invalid batch changed state"
                );
                continue;
            }
        };
        assert_eq!(decision.now.as_micros(), now);
        check_decision(&batch, &decision);
        match op {
            Op::Charge => {
                let peek = peek.expect("peeked").expect("a valid peek");
                if decision.allowed {
                    assert!(peek.allowed, "the peek refused what the charge admitted");
                    for &(k, cost) in &chosen {
                        keys[k].record.add(now, cost);
                        if !chaotic {
                            check_admitted(&keys[k], now);
                        }
                    }
                } else {
                    // A peek does not look for room for a new key (see `Op::Peek`).
                    let full = |d: &Decision| {
                        d.buckets
                            .iter()
                            .any(|b| b.refusal == Some(Refusal::StoreFull))
                    };
                    if !full(&decision) {
                        assert_eq!(peek, decision, "a refused charge answers as its peek");
                    }
                    assert_eq!(
                        snapshot(&store, &keys),
                        before,
                        "a refused charge changed state"
                    );
                    if !chaotic {
                        for (&(k, cost), state) in chosen.iter().zip(&decision.buckets) {
                            // A full share refuses a new key whatever its count.
                            if !state.allowed && state.refusal != Some(Refusal::StoreFull) {
                                check_refused(&keys[k], cost, now);
                            }
                        }
                    }
                }
            }
            Op::Peek => {
                assert_eq!(snapshot(&store, &keys), before, "a peek changed state");
            }
            Op::Refund => {
                for &(k, cost) in &chosen {
                    keys[k].record.refund(cost);
                }
            }
            Op::RefundAt(at) => {
                for &(k, _) in &chosen {
                    keys[k].record.take_at(at.as_micros());
                }
            }
            Op::Penalize => {
                // Each bucket on its own; only a new key a full share has no room for is
                // refused.
                for (&(k, cost), state) in chosen.iter().zip(&decision.buckets) {
                    if state.allowed {
                        keys[k].record.add(now, cost);
                    } else {
                        assert_eq!(state.refusal, Some(Refusal::StoreFull), "{state:?}");
                    }
                }
            }
            Op::Reset => {
                for &(k, _) in &chosen {
                    keys[k].record = Record::default();
                }
            }
        }
    }
}
