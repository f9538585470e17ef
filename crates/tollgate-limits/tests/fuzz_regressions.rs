//! The memory-store fuzzer's saved inputs, replayed on stable (see `fuzz/README.md`):
//! every crash it found stays fixed, every seed keeps passing.

use std::time::Duration;

use tollgate_limits::{Bucket, Limit, ManualClock, MemoryStore, Op, Quota};

#[path = "../../../fuzz/harness/input.rs"]
mod input;
#[path = "../../../fuzz/harness/memory_store.rs"]
mod memory_store;
#[path = "../../../fuzz/harness/replay.rs"]
mod replay;

#[test]
fn memory_store_inputs() {
    replay::replay(
        env!("CARGO_MANIFEST_DIR"),
        "memory_store",
        memory_store::run,
    );
}

/// Found by the `memory_store` fuzzer: an exact (sliding-log) window keeps its total
/// saturating, but takes each entry's cost off it as the entry ages out, so once
/// penalties have pushed the total past `u64::MAX` the total goes below zero: a panic
/// with overflow checks, a wrapped total (a key refused or admitted wrongly) without.
#[test]
fn exact_window_penalties_past_u64_max_age_out_cleanly() {
    let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
    let store = MemoryStore::builder().clock(clock.clone()).build();
    let limit = Limit::sliding_exact(Quota::per_second(5));
    let bucket = Bucket::new("exact", "client", limit);
    let huge = bucket.clone().with_cost(u64::MAX);
    let _ = store
        .apply_now(Op::Penalize, std::slice::from_ref(&huge))
        .unwrap();
    clock.advance(Duration::from_millis(1));
    let _ = store
        .apply_now(Op::Penalize, std::slice::from_ref(&huge))
        .unwrap();
    // Both penalties leave the window: the key is fresh again.
    clock.advance(Duration::from_secs(2));
    let decision = store.charge(std::slice::from_ref(&bucket)).unwrap();
    assert!(decision.allowed);
    assert_eq!(decision.buckets[0].remaining, 4);
}
