//! What a new key costs the memory store when its bucket's share is full of keys at their
//! limit (`WhenFull::EvictLimited`, as the demo's per-IP buckets), with that share alone
//! full and with other buckets' shares full beside it: every bucket's keys live in the
//! same shards. Microseconds per call, one thread, `--release`.
//!
//! ```text
//! cargo run --release -p tollgate-bench --bin bench-full-shares
//! ```

use std::time::{Duration, Instant};

use tollgate_limits::{Bucket, Limit, ManualClock, MemoryStore, Quota, WhenFull};

/// Keys the store holds per bucket name.
const ENTRIES: usize = 10_000;
/// New keys timed per case.
const CALLS: usize = 20_000;

fn main() {
    let limit = Limit::sliding(Quota::parse("1/h").expect("a quota"));
    println!("| buckets whose shares are full | µs per new key |");
    println!("|---|---|");
    // `FULL_SHARES=<n>`: that case alone (under callgrind, say:
    // `--toggle-collect='bench_full_shares::new_keys'` counts the timed calls alone).
    let only: Option<usize> = std::env::var("FULL_SHARES")
        .ok()
        .and_then(|n| n.parse().ok());
    for full in [1, 6, 24]
        .into_iter()
        .filter(|n| only.is_none_or(|o| o == *n))
    {
        let key = |bucket: usize, name: &str| {
            Bucket::new(&format!("b{bucket}"), name, limit).with_when_full(WhenFull::EvictLimited)
        };
        let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
        let store = MemoryStore::builder()
            .max_entries(ENTRIES)
            .clock(clock.clone())
            .build();
        // Each share filled past its size with keys at their limit (one request of 1 an
        // hour each).
        for bucket in 0..full {
            for i in 0..ENTRIES + ENTRIES / 4 {
                let _ = store.charge(&[key(bucket, &format!("fill-{i}"))]);
                clock.advance(Duration::from_micros(1));
            }
        }
        let start = Instant::now();
        new_keys(&store, &clock, &key);
        let us = start.elapsed().as_secs_f64() * 1e6 / CALLS as f64;
        println!("| {full} | {us:.2} |");
    }
}

/// The timed calls: a new key of the first bucket each, the clock a microsecond on.
#[inline(never)]
fn new_keys(store: &MemoryStore, clock: &ManualClock, key: &dyn Fn(usize, &str) -> Bucket) {
    for i in 0..CALLS {
        let _ = store.charge(&[key(0, &format!("new-{i}"))]);
        clock.advance(Duration::from_micros(1));
    }
}
