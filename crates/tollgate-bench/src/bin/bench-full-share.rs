//! What the memory store spends on a new key it refuses for want of room: a share full of
//! keys it keeps (100,000 sign-in lockouts of 5 failures in 30 minutes, each at its limit),
//! then a flood of new keys alone, and one that mixes a refused retry of a locked key (a
//! thousand of them in turn) with each new key. Microseconds per call, one thread, `--release`; for `WhenFull::KeepCounts`
//! (the demo's lockout) and `WhenFull::RefuseNewKeys` (the default).
//!
//! ```text
//! cargo run --release -p tollgate-bench --bin bench-full-share
//! ```

use std::time::{Duration, Instant};

use tollgate_limits::{Bucket, Limit, ManualClock, MemoryStore, Quota, WhenFull};

/// Keys the store holds per bucket name.
const ENTRIES: usize = 100_000;
/// Calls timed per case.
const CALLS: usize = 20_000;

fn main() {
    let lockout = Limit::sliding_exact(Quota::parse("5/30min").expect("a quota"));
    println!("| when full | new keys only (µs per call) | a locked key's retry, then a new key (µs per call) |");
    println!("|---|---|---|");
    for mode in [WhenFull::KeepCounts, WhenFull::RefuseNewKeys] {
        let key = |name: &str| Bucket::new("sign-in", name, lockout).with_when_full(mode);
        let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
        let store = MemoryStore::builder()
            .max_entries(ENTRIES)
            .clock(clock.clone())
            .build();
        // Locked keys until the share refuses new ones a thousand times.
        let (mut i, mut refused) = (0u64, 0);
        while refused < 1_000 {
            let held = key(&format!("held-{i}"));
            i += 1;
            for _ in 0..5 {
                if !store
                    .charge(std::slice::from_ref(&held))
                    .expect("memory")
                    .allowed
                {
                    refused += 1;
                    break;
                }
            }
        }
        clock.advance(Duration::from_secs(1));
        let time = |mixed: bool, from: usize| {
            let started = Instant::now();
            for j in 0..CALLS {
                if mixed {
                    // Locked keys in turn, one in every shard.
                    let locked = key(&format!("held-{}", j % 1_000));
                    let _ = store.charge(std::slice::from_ref(&locked));
                }
                let _ = store.charge(std::slice::from_ref(&key(&format!("new-{}", from + j))));
            }
            started.elapsed().as_secs_f64() * 1e6 / (CALLS * (1 + usize::from(mixed))) as f64
        };
        let alone = time(false, 0);
        let mixed = time(true, CALLS);
        println!("| {mode:?} | {alone:.2} | {mixed:.2} |");
    }
}
