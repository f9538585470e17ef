//! [`MemoryStore`]: bucket state in this process, sharded and bounded.
//!
//! ```
//! use std::time::Duration;
//! use tollgate_core::{Bucket, Limit, ManualClock, MemoryStore, Quota};
//!
//! let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
//! let store = MemoryStore::builder().max_entries(10_000).clock(clock.clone()).build();
//! let bucket = Bucket::new("login", "alice@example.com", Limit::sliding_exact(Quota::parse("5/30min")?));
//! for _ in 0..5 {
//!     assert!(store.charge(std::slice::from_ref(&bucket)).allowed);
//! }
//! let refused = store.charge(std::slice::from_ref(&bucket));
//! assert_eq!(refused.retry_after(), Some(Duration::from_secs(30 * 60)));
//! clock.advance(Duration::from_secs(30 * 60));
//! assert!(store.charge(std::slice::from_ref(&bucket)).allowed);
//! # Ok::<(), tollgate_core::QuotaError>(())
//! ```
//!
//! # Bounds
//!
//! - An entry is dropped once its state is back to fresh (nothing counted against it):
//!   lazily, when a shard grows to twice its size since its last sweep, and when it is full.
//! - At most `max_entries` entries are held. When a shard is full, it first drops fresh
//!   entries, then evicts the least recently seen eighth of the entries that are *not*
//!   at their limit. Entries at their limit (the last call was refused, or nothing
//!   remains) are never evicted, so a flood of invented keys cannot free a limited client.
//!   If every entry of a shard is at its limit, a new key is decided as fresh and not
//!   stored ([`MemoryStats::not_stored`] counts them).
//! - No global lock: keys hash to one of `shards` mutexes; a request whose buckets fall in
//!   several shards locks them in index order.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::algorithm::{Fit, State};
use crate::clock::{Clock, SystemClock, Timestamp};
use crate::decision::Decision;
use crate::store::{Batch, BoxFuture, Bucket, Op, Store, StoreError};

/// The default for [`MemoryStoreBuilder::max_entries`].
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

type Hasher = foldhash::fast::RandomState;

#[derive(Debug)]
struct Entry {
    state: State,
    /// When the state is back to fresh (microseconds); the entry may go then.
    expires_at: u64,
    /// When it was last charged or checked.
    last_seen: u64,
    /// At its limit: the last check was refused, or nothing remains.
    limited: bool,
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<Box<str>, Entry, Hasher>,
    /// The size after the last sweep of fresh entries.
    swept_len: usize,
}

/// Counters describing what a [`MemoryStore`] did to stay bounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Entries held now.
    pub entries: usize,
    /// Entries dropped because their state was fresh again.
    pub expired: u64,
    /// Entries evicted (not at their limit, least recently seen) to make room.
    pub evicted: u64,
    /// New keys decided but not stored because their shard was full of limited keys.
    pub not_stored: u64,
}

#[derive(Default)]
struct Counters {
    expired: AtomicU64,
    evicted: AtomicU64,
    not_stored: AtomicU64,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    shard_cap: usize,
    hasher: Hasher,
    clock: Arc<dyn Clock>,
    counters: Counters,
}

/// An in-process [`Store`]: exact under concurrency, bounded in memory. Clones share one
/// state.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.inner.shards.len())
            .field(
                "max_entries",
                &(self.inner.shard_cap * self.inner.shards.len()),
            )
            .field("clock", &self.inner.clock)
            .finish()
    }
}

/// Builds a [`MemoryStore`].
#[derive(Debug, Clone)]
pub struct MemoryStoreBuilder {
    max_entries: usize,
    shards: usize,
    clock: Arc<dyn Clock>,
}

impl Default for MemoryStoreBuilder {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        Self {
            max_entries: DEFAULT_MAX_ENTRIES,
            shards: (cores * 16).next_power_of_two().clamp(16, 1024),
            clock: Arc::new(SystemClock),
        }
    }
}

impl MemoryStoreBuilder {
    /// The most entries (keys) the store holds; at least 1. Default [`DEFAULT_MAX_ENTRIES`].
    pub fn max_entries(mut self, max_entries: usize) -> Self {
        self.max_entries = max_entries.max(1);
        self
    }

    /// How many independently locked shards; rounded to a power of two, and lowered so
    /// that each shard holds at least 64 entries. Default: 16 per core.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards.clamp(1, 1 << 16).next_power_of_two();
        self
    }

    /// The clock to decide by. Default [`SystemClock`].
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The store. The caps of all shards add up to at most `max_entries`.
    pub fn build(self) -> MemoryStore {
        let mut shards = self.shards;
        while shards > 1 && self.max_entries / shards < 64 {
            shards /= 2;
        }
        let inner = Inner {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            shard_cap: self.max_entries / shards,
            hasher: Hasher::default(),
            clock: self.clock,
            counters: Counters::default(),
        };
        MemoryStore {
            inner: Arc::new(inner),
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store with the default bounds and the system clock.
    pub fn new() -> Self {
        MemoryStoreBuilder::default().build()
    }

    /// A builder to set the bounds and the clock.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder::default()
    }

    /// The time this store decides by.
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// [`Op::Charge`] on `buckets`, without going through a future.
    pub fn charge(&self, buckets: &[Bucket]) -> Decision {
        self.apply_now(Op::Charge, buckets)
    }

    /// Applies `op` to `buckets` at the clock's current time. The synchronous form of
    /// [`Store::apply`], which cannot fail here.
    pub fn apply_now(&self, op: Op, buckets: &[Bucket]) -> Decision {
        let now = self.inner.clock.now();
        let inner = &*self.inner;
        let mask = inner.shards.len() - 1;
        // Lock the shards this request touches, in index order (no deadlock between
        // requests that share several shards).
        let mut shard_of: [usize; 8] = [0; 8];
        let mut owned;
        let shard_of: &mut [usize] = if buckets.len() <= 8 {
            &mut shard_of[..buckets.len()]
        } else {
            owned = vec![0; buckets.len()];
            &mut owned
        };
        for (slot, bucket) in shard_of.iter_mut().zip(buckets) {
            *slot = inner.hasher.hash_one(bucket.key.as_str()) as usize & mask;
        }
        let mut order: Vec<usize> = shard_of.to_vec();
        order.sort_unstable();
        order.dedup();
        let mut guards: Vec<(usize, MutexGuard<'_, Shard>)> =
            order.iter().map(|&i| (i, lock(&inner.shards[i]))).collect();
        let shard = |i: usize| -> usize {
            guards
                .iter()
                .position(|(idx, _)| *idx == i)
                .unwrap_or_default()
        };
        let slots: Vec<usize> = shard_of.iter().map(|&i| shard(i)).collect();

        let now_us = now.as_micros();
        // Phase 1: bring every bucket up to now and see whether its cost fits.
        let mut fits = Vec::with_capacity(buckets.len());
        for (bucket, &slot) in buckets.iter().zip(&slots) {
            let shard = &mut guards[slot].1;
            let fit = match shard.map.get_mut(bucket.key.as_str()) {
                Some(entry) => {
                    if !entry.state.fits_algorithm(&bucket.limit) {
                        entry.state = State::fresh(&bucket.limit, now_us);
                    }
                    entry.state.advance(&bucket.limit, now_us);
                    entry.state.fit(&bucket.limit, bucket.cost, now_us)
                }
                None => State::fresh(&bucket.limit, now_us).fit(&bucket.limit, bucket.cost, now_us),
            };
            fits.push(fit);
        }
        let allowed = match op {
            Op::Charge | Op::Peek => fits.iter().all(|f| *f == Fit::Now),
            Op::Refund | Op::Penalize | Op::Reset => true,
        };

        // Phase 2: change the state (or not) and report.
        let mut states = Vec::with_capacity(buckets.len());
        for ((bucket, &slot), fit) in buckets.iter().zip(&slots).zip(fits) {
            let shard = &mut *guards[slot].1;
            let key = bucket.key.as_str();
            let limit = &bucket.limit;
            let report_fit = match op {
                Op::Charge | Op::Peek => fit,
                _ => Fit::Now,
            };
            let changes = match op {
                Op::Charge => allowed,
                Op::Peek => false,
                Op::Refund | Op::Penalize | Op::Reset => true,
            };
            if op == Op::Reset {
                shard.map.remove(key);
                let fresh = State::fresh(limit, now_us);
                states.push(fresh.report(limit, Fit::Now, bucket.cost, now_us));
                continue;
            }
            if !shard.map.contains_key(key) {
                let fresh = State::fresh(limit, now_us);
                let adds = changes && matches!(op, Op::Charge | Op::Penalize);
                if !adds {
                    // Nothing to remember: a refusal or a peek of a fresh key, or a refund
                    // of nothing.
                    states.push(fresh.report(limit, report_fit, bucket.cost, now_us));
                    continue;
                }
                if !inner.make_room(shard, now_us) {
                    let mut state = fresh;
                    state.add(limit, bucket.cost, now_us);
                    states.push(state.report(limit, report_fit, bucket.cost, now_us));
                    continue;
                }
                shard.map.insert(
                    key.into(),
                    Entry {
                        state: fresh,
                        expires_at: 0,
                        last_seen: now_us,
                        limited: false,
                    },
                );
            }
            let Some(entry) = shard.map.get_mut(key) else {
                continue;
            };
            if changes {
                match op {
                    Op::Charge | Op::Penalize => entry.state.add(limit, bucket.cost, now_us),
                    Op::Refund => entry.state.sub(limit, bucket.cost, now_us),
                    Op::Peek | Op::Reset => {}
                }
            }
            let state = entry.state.report(limit, report_fit, bucket.cost, now_us);
            entry.expires_at = entry.state.expires_at(limit);
            entry.last_seen = now_us;
            entry.limited = !state.allowed || state.remaining == 0;
            if entry.expires_at <= now_us {
                shard.map.remove(key);
            }
            states.push(state);
        }
        Decision {
            allowed,
            now,
            buckets: states,
        }
    }

    /// Drops every entry whose state is back to fresh; returns how many went.
    pub fn purge_expired(&self) -> usize {
        let now = self.inner.clock.now().as_micros();
        self.inner
            .shards
            .iter()
            .map(|s| self.inner.sweep(&mut lock(s), now))
            .sum()
    }

    /// What the store holds and what it dropped to stay bounded.
    pub fn stats(&self) -> MemoryStats {
        let c = &self.inner.counters;
        MemoryStats {
            entries: self.len(),
            expired: c.expired.load(Ordering::Relaxed),
            evicted: c.evicted.load(Ordering::Relaxed),
            not_stored: c.not_stored.load(Ordering::Relaxed),
        }
    }

    /// How many keys the store holds.
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most keys the store will hold (what [`MemoryStoreBuilder::max_entries`] was,
    /// rounded down to a multiple of the shard count).
    pub fn capacity(&self) -> usize {
        self.inner.shard_cap * self.inner.shards.len()
    }
}

impl Inner {
    /// Drops fresh entries from `shard`; returns how many.
    fn sweep(&self, shard: &mut Shard, now: u64) -> usize {
        let before = shard.map.len();
        shard.map.retain(|_, e| e.expires_at > now);
        let gone = before - shard.map.len();
        shard.swept_len = shard.map.len();
        self.counters
            .expired
            .fetch_add(gone as u64, Ordering::Relaxed);
        gone
    }

    /// Makes room for one more entry in `shard`; false if every entry is at its limit.
    fn make_room(&self, shard: &mut Shard, now: u64) -> bool {
        let len = shard.map.len();
        if len >= 2 * shard.swept_len + 64 || len >= self.shard_cap {
            self.sweep(shard, now);
        }
        if shard.map.len() < self.shard_cap {
            return true;
        }
        // Evict the least recently seen eighth of the entries not at their limit.
        let mut idle: Vec<u64> = shard
            .map
            .values()
            .filter(|e| !e.limited)
            .map(|e| e.last_seen)
            .collect();
        if idle.is_empty() {
            self.counters.not_stored.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let batch = (self.shard_cap / 8).clamp(1, idle.len());
        let (_, &mut cutoff, _) = idle.select_nth_unstable(batch - 1);
        let mut left = batch;
        shard.map.retain(|_, e| {
            if left > 0 && !e.limited && e.last_seen <= cutoff {
                left -= 1;
                false
            } else {
                true
            }
        });
        let evicted = batch - left;
        self.counters
            .evicted
            .fetch_add(evicted as u64, Ordering::Relaxed);
        shard.swept_len = shard.map.len();
        true
    }
}

/// Locks a shard; a poisoned lock (a panic elsewhere) still holds valid state.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

impl Store for MemoryStore {
    fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
        let result = batch
            .validate()
            .map(|()| self.apply_now(batch.op, &batch.buckets));
        Box::pin(std::future::ready(result))
    }
}
