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
//!   at their limit, so a flood of invented keys cannot free a limited client. Only if
//!   every entry of a shard is at its limit does it evict the least recently seen of those
//!   (a sixty-fourth): junk keys written once go before a client that is still being
//!   refused, which is seen at every request ([`MemoryStats::evicted_limited`] counts
//!   them). A new key is always stored, so it is always limited.
//! - An entry is one 128-byte slot of its shard's hash table, which holds keys of up to
//!   22 bytes and a sliding window of up to 15 segments; plus the key if longer, plus
//!   (k + 1) × 8 bytes of counters for a sliding window of more segments (or one that
//!   counted more than 2^32 − 1 in a segment), or 16 bytes per distinct admission time
//!   for an exact log. Tables grow by doubling, so the cap costs at most about
//!   2 × 128 bytes per entry before those extras (26 MB for the default 100,000).
//! - No global lock: keys hash to one of `shards` mutexes; a request whose buckets fall in
//!   several shards locks them in index order.

use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hashbrown::HashTable;
use smallvec::SmallVec;

use crate::algorithm::{Fit, State};
use crate::clock::{Clock, SystemClock, Timestamp};
use crate::decision::{BucketState, Decision};
use crate::limit::Limit;
use crate::store::{Batch, BoxFuture, Bucket, Op, Store, StoreError};

/// The default for [`MemoryStoreBuilder::max_entries`].
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

type Hasher = foldhash::fast::RandomState;

/// A key's state and what keeps the store bounded. In this order (`repr(C)`): what every
/// decision reads comes first, a sliding window's counters last (see [`Slot`]).
/// Set in [`Entry::seen`] while the entry is at its limit.
const LIMITED: u64 = 1 << 63;

#[derive(Debug)]
#[repr(C)]
struct Entry {
    /// When the state is back to fresh (microseconds); the entry may go then.
    expires_at: u64,
    /// When it was last charged or checked (microseconds), with [`LIMITED`] set while it
    /// is at its limit (the last check was refused, or nothing remains). Eviction takes the
    /// smallest first: entries not at their limit, least recently seen, before any that is.
    seen: u64,
    state: State,
}

/// A stored key. Short keys (a bucket name and an IPv4 address or a user id fit) are
/// held in the table itself, so finding one does not follow a second pointer.
#[derive(Debug)]
enum Key {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(Box<[u8]>),
}

/// The longest key held inline (the key then takes as much room as a boxed one plus 8).
const INLINE_KEY: usize = 22;

impl Key {
    fn new(key: &[u8]) -> Self {
        match u8::try_from(key.len()) {
            Ok(len) if key.len() <= INLINE_KEY => {
                let mut bytes = [0; INLINE_KEY];
                bytes[..key.len()].copy_from_slice(key);
                Key::Inline { len, bytes }
            }
            _ => Key::Heap(key.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Heap(bytes) => bytes,
        }
    }
}

/// One key of a shard's table and its entry: 128 bytes (two cache lines), aligned so
/// that finding a key and deciding on it touch only them. The key, the two times and a
/// token bucket's or fixed window's state share the first line; a sliding window's
/// counters (up to 16, held inline) run on into the second, which the processor fetches
/// alongside the first rather than after it (there is no pointer to follow).
#[derive(Debug)]
#[repr(C)]
struct Slot {
    key: Key,
    entry: Entry,
}

// A key, two times and a state with a window of up to 15 segments fit the slot; growing
// any of them costs a third cache line.
const _: () = assert!(std::mem::size_of::<Slot>() <= 256);

/// One independently locked part of the store. Its table is looked up with the hash the
/// store computed once per bucket (which also chose the shard).
#[derive(Debug, Default)]
struct Shard {
    table: HashTable<Slot>,
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
    /// Entries evicted (least recently seen, those not at their limit first) to make room.
    pub evicted: u64,
    /// Of those, entries that were at their limit: evicted because their shard held
    /// nothing else.
    pub evicted_limited: u64,
}

#[derive(Default)]
struct Counters {
    expired: AtomicU64,
    evicted: AtomicU64,
    evicted_limited: AtomicU64,
}

struct Inner {
    shards: Box<[Padded]>,
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
            shards: (0..shards).map(|_| Padded::default()).collect(),
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
        let now_us = now.as_micros();
        let inner = &*self.inner;
        // Up to `INLINE` buckets, nothing here allocates but the answer. The scratch
        // vectors are filled by `push`, which inlines (collecting into them does not,
        // and costs more than the rest of this function).
        let mut placed: Scratch<Placed> = Scratch::new();
        let mut order: Scratch<usize> = Scratch::new();
        for bucket in buckets {
            let hash = inner.hash(&bucket.key);
            let shard = inner.shard_of(hash);
            placed.push(Placed {
                hash,
                shard,
                guard: 0,
            });
            order.push(shard);
        }
        // The answer is allocated before locking: the locks are held only to decide.
        let mut states = Vec::with_capacity(buckets.len());
        // Lock the shards this request touches, each once, in index order (no deadlock
        // between requests that share several shards).
        order.sort_unstable();
        order.dedup();
        let mut guards: Scratch<MutexGuard<'_, Shard>> = Scratch::new();
        for &shard in &order {
            guards.push(lock(&inner.shards[shard]));
        }
        for p in &mut placed {
            p.guard = order.binary_search(&p.shard).unwrap_or_default();
        }

        // A charge of several buckets first sees whether every cost fits, and changes a
        // bucket only if all do. Any other call decides each bucket on its own.
        let mut verdicts: Scratch<Fit> = Scratch::new();
        if op == Op::Charge && buckets.len() > 1 {
            for (bucket, p) in buckets.iter().zip(&placed) {
                verdicts.push(guards[p.guard].fit(p.hash, bucket, now_us));
            }
        }
        let all_fit = verdicts.iter().all(|f| *f == Fit::Now);

        for (i, (bucket, p)) in buckets.iter().zip(&placed).enumerate() {
            let verdict = verdicts.get(i).map(|&fit| (fit, all_fit));
            let shard = &mut guards[p.guard];
            states.push(inner.apply_one(shard, p.hash, op, bucket, verdict, now_us));
        }
        drop(guards);
        Decision {
            allowed: states.iter().all(|s| s.allowed),
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
            evicted_limited: c.evicted_limited.load(Ordering::Relaxed),
        }
    }

    /// How many keys the store holds.
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(s).table.len()).sum()
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

/// Per-request scratch space, on the stack for up to `INLINE` buckets.
type Scratch<T> = SmallVec<[T; INLINE]>;

/// How many buckets a request may have before its scratch space is allocated.
const INLINE: usize = 4;

/// Where one bucket of a request lives: its key's hash, its shard, and the index of that
/// shard's guard among the request's locks.
struct Placed {
    hash: u64,
    shard: usize,
    guard: usize,
}

/// Bits of a key's hash below the ones that choose its shard (at most 2^16 shards, under
/// the table's 7-bit tag at the top).
const SHARD_SHIFT: u32 = 40;

impl Shard {
    fn get_mut(&mut self, hash: u64, key: &str) -> Option<&mut Entry> {
        self.table
            .find_mut(hash, |slot| slot.key.as_bytes() == key.as_bytes())
            .map(|slot| &mut slot.entry)
    }

    fn remove(&mut self, hash: u64, key: &str) {
        if let Ok(found) = self
            .table
            .find_entry(hash, |slot| slot.key.as_bytes() == key.as_bytes())
        {
            found.remove();
        }
    }

    /// Adds a key known to be absent.
    fn insert(&mut self, hash: u64, key: &str, entry: Entry, hasher: &Hasher) {
        let slot = Slot {
            key: Key::new(key.as_bytes()),
            entry,
        };
        self.table
            .insert_unique(hash, slot, |s| hasher.hash_one(s.key.as_bytes()));
    }

    /// Keeps the entries `keep` says to keep; returns how many went.
    fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) -> usize {
        let before = self.table.len();
        self.table.retain(|slot| keep(&slot.entry));
        before - self.table.len()
    }

    /// Brings `bucket`'s entry up to `now` and says whether its cost fits.
    fn fit(&mut self, hash: u64, bucket: &Bucket, now: u64) -> Fit {
        let limit = &bucket.limit;
        match self.get_mut(hash, &bucket.key) {
            Some(entry) => {
                entry.catch_up(limit, now);
                entry.state.fit(limit, bucket.cost, now)
            }
            None => State::fresh(limit, now).fit(limit, bucket.cost, now),
        }
    }
}

impl Entry {
    /// Notes what a call answered: when the state is fresh again, when it was seen,
    /// whether it is at its limit.
    fn remember(&mut self, report: &BucketState, now: u64) {
        // `reset_after` is the time until the state is fresh (zero if it already is).
        let reset = u64::try_from(report.reset_after.as_micros()).unwrap_or(u64::MAX);
        self.expires_at = now.saturating_add(reset);
        let limited = !report.allowed || report.remaining == 0;
        self.seen = (now & !LIMITED) | if limited { LIMITED } else { 0 };
    }

    /// Brings the state up to `now`; a state of another algorithm (the limit changed)
    /// starts afresh.
    fn catch_up(&mut self, limit: &Limit, now: u64) {
        if !self.state.fits_algorithm(limit) {
            self.state = State::fresh(limit, now);
        }
        self.state.advance(limit, now);
    }
}

impl Inner {
    /// A key's hash: chooses its shard and places it in the shard's table.
    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key.as_bytes())
    }

    /// The shard of a key with this hash. It comes from bits the table does not use to
    /// place keys (it uses the low bits for the position and the top 7 as a tag).
    fn shard_of(&self, hash: u64) -> usize {
        (hash >> SHARD_SHIFT) as usize & (self.shards.len() - 1)
    }

    /// Applies `op` to one bucket and reports it. `verdict`, for a charge of several
    /// buckets, is this bucket's fit and whether every bucket fits.
    fn apply_one(
        &self,
        shard: &mut Shard,
        hash: u64,
        op: Op,
        bucket: &Bucket,
        verdict: Option<(Fit, bool)>,
        now: u64,
    ) -> BucketState {
        let (key, limit, cost) = (bucket.key.as_str(), &bucket.limit, bucket.cost);
        if op == Op::Reset {
            shard.remove(hash, key);
            return State::fresh(limit, now).report(limit, Fit::Now, cost, now);
        }
        // What to answer for this bucket, and whether its state changes.
        let decide = |state: &State| match (op, verdict) {
            (Op::Charge, Some((fit, all))) => (fit, all),
            (Op::Charge, None) => {
                let fit = state.fit(limit, cost, now);
                (fit, fit == Fit::Now)
            }
            (Op::Peek, _) => (state.fit(limit, cost, now), false),
            (Op::Refund | Op::Penalize | Op::Reset, _) => (Fit::Now, true),
        };
        if let Some(entry) = shard.get_mut(hash, key) {
            entry.catch_up(limit, now);
            let (fit, changes) = decide(&entry.state);
            if changes {
                match op {
                    Op::Charge | Op::Penalize => entry.state.add(limit, cost, now),
                    Op::Refund => entry.state.sub(limit, cost, now),
                    Op::Peek | Op::Reset => {}
                }
            }
            let report = entry.state.report(limit, fit, cost, now);
            entry.remember(&report, now);
            if entry.expires_at <= now {
                shard.remove(hash, key);
            }
            return report;
        }
        let mut state = State::fresh(limit, now);
        let (fit, changes) = decide(&state);
        if !(changes && matches!(op, Op::Charge | Op::Penalize)) {
            // Nothing to remember: a refusal or a peek of a fresh key, or a refund of
            // nothing.
            return state.report(limit, fit, cost, now);
        }
        state.add(limit, cost, now);
        let report = state.report(limit, fit, cost, now);
        let mut entry = Entry {
            state,
            expires_at: 0,
            seen: 0,
        };
        entry.remember(&report, now);
        if entry.expires_at > now {
            self.make_room(shard, now);
            shard.insert(hash, key, entry, &self.hasher);
        }
        report
    }

    /// Drops fresh entries from `shard`; returns how many.
    fn sweep(&self, shard: &mut Shard, now: u64) -> usize {
        let gone = shard.retain(|e| e.expires_at > now);
        shard.swept_len = shard.table.len();
        self.counters
            .expired
            .fetch_add(gone as u64, Ordering::Relaxed);
        gone
    }

    /// Makes room for one more entry in `shard`: drops fresh entries, then evicts the least
    /// recently seen eighth of the entries not at their limit or, if every entry is at its
    /// limit, the least recently seen sixty-fourth of those.
    fn make_room(&self, shard: &mut Shard, now: u64) {
        let len = shard.table.len();
        if len >= 2 * shard.swept_len + 64 || len >= self.shard_cap {
            self.sweep(shard, now);
        }
        if shard.table.len() < self.shard_cap {
            return;
        }
        let mut seen: Vec<u64> = shard.table.iter().map(|s| s.entry.seen).collect();
        let free = seen.iter().filter(|&&t| t & LIMITED == 0).count();
        let batch = if free > 0 {
            (self.shard_cap / 8).clamp(1, free)
        } else {
            (self.shard_cap / 64).clamp(1, seen.len())
        };
        let (_, &mut cutoff, _) = seen.select_nth_unstable(batch - 1);
        let mut left = batch;
        let evicted = shard.retain(|e| {
            if left > 0 && e.seen <= cutoff {
                left -= 1;
                false
            } else {
                true
            }
        });
        self.counters
            .evicted
            .fetch_add(evicted as u64, Ordering::Relaxed);
        if free == 0 {
            self.counters
                .evicted_limited
                .fetch_add(evicted as u64, Ordering::Relaxed);
        }
        shard.swept_len = shard.table.len();
    }
}

/// A shard's lock on a cache line of its own, so that threads working in different
/// shards do not invalidate each other's lines.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded(Mutex<Shard>);

/// Locks a shard; a poisoned lock (a panic elsewhere) still holds valid state.
fn lock(shard: &Padded) -> MutexGuard<'_, Shard> {
    shard.0.lock().unwrap_or_else(|e| e.into_inner())
}

impl Store for MemoryStore {
    fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
        let result = batch
            .validate()
            .map(|()| self.apply_now(batch.op, &batch.buckets));
        Box::pin(std::future::ready(result))
    }
}
