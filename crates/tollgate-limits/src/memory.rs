//! [`MemoryStore`]: bucket state in this process, sharded and bounded.
//!
//! ```
//! use std::time::Duration;
//! use tollgate_limits::{Bucket, Limit, ManualClock, MemoryStore, Quota};
//!
//! let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
//! let store = MemoryStore::builder().max_entries(10_000).clock(clock.clone()).build();
//! let bucket = Bucket::new("login", "alice@example.com", Limit::sliding_exact(Quota::parse("5/30min")?));
//! for _ in 0..5 {
//!     assert!(store.charge(std::slice::from_ref(&bucket))?.allowed);
//! }
//! let refused = store.charge(std::slice::from_ref(&bucket))?;
//! assert_eq!(refused.retry_after(), Some(Duration::from_secs(30 * 60)));
//! clock.advance(Duration::from_secs(30 * 60));
//! assert!(store.charge(std::slice::from_ref(&bucket))?.allowed);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Bounds
//!
//! - Each bucket (by [`Bucket::name`]) has a share of its own: at most `max_entries` keys
//!   per bucket name, so a flood of keys into one bucket (spoofed IPs, random API keys)
//!   never evicts another bucket's state. Bucket names come from configuration, so the
//!   store holds at most `max_entries` × the number of bucket names.
//! - An entry is dropped once its state is back to fresh (nothing counted against it):
//!   lazily, when a shard grows to twice its size since its last sweep, and when a share is
//!   full.
//! - When a bucket's share is full, the store drops fresh entries, then evicts an eighth
//!   of that bucket's keys that are *not* at their limit: those that spent least first
//!   (by binary order of magnitude: 1, 2-3, 4-7, ... 128 or more requests or points,
//!   counted against what the limit holds at once, a token bucket's burst), least
//!   recently seen first among equals. A key is at its limit when nothing remains: a
//!   request refused for costing more than the key has left does not put it there. So a
//!   flood of invented keys cannot free a limited client, and a flood of keys seen once
//!   makes room among its own keys, not with a client that spent more: to evict a client that spent `n`, a flood must spend about
//!   `n` on each of its keys (up to 128), or hold so many keys of that order that fewer
//!   than an eighth of the share are below it. If fewer than an eighth of the share's
//!   keys in the key's shard are below their limit, the share counts as full of keys at
//!   their limit there (evicting
//!   its last few would let a few new keys take turns in their slots, each counted
//!   afresh), and the bucket's [`WhenFull`] decides: by default the new key is refused
//!   ([`Refusal::StoreFull`](crate::Refusal::StoreFull), with the time until the first
//!   held key expires) and no limited key is ever evicted, so a lockout stays locked
//!   whatever an attacker invents; [`WhenFull::EvictLimited`] evicts the least recently
//!   seen limited keys instead ([`MemoryStats::evicted_limited`] counts them);
//!   [`WhenFull::KeepCounts`] evicts no key that still counts, and refuses the new key
//!   once only such keys are left.
//! - What a full share costs: a key not at its limit loses its count when it is evicted.
//!   A flood of as many keys as the share holds wipes the partial counts of keys that
//!   stopped sending (a lockout at 4 of 5 is back at 0; not under
//!   [`WhenFull::KeepCounts`]); and keys taking turns faster
//!   than the share's least recently seen eighth turns over are each counted afresh
//!   (after a flood of limited keys, that takes more than an eighth of the share in
//!   distinct keys taking turns: about 12,500 addresses at the default 100,000, 150 at
//!   1,024; it took 2 before). Meanwhile, a share whose keys are mostly at their limit
//!   (85% or more, in a review) refuses some new keys that it used to admit. A flood costs
//!   the share's size in distinct keys, each spending its limit; size the store for the
//!   distinct keys a window sees.
//! - What making room costs in CPU: a full share looks through its shard, whose tables
//!   hold every bucket's keys, once per eighth of the share it makes room for. Keys below
//!   their limit go an eighth at a time; under [`WhenFull::EvictLimited`], the look
//!   chooses the eighth of the limited keys seen least recently, which then go a
//!   sixty-fourth of the share each time a new key finds it full (a key seen again since
//!   keeps its place, a look makes up a batch the chosen keys run short of, and a change
//!   that would choose otherwise, such as a key dropping below its limit, ends the
//!   choice), keeping 16 bytes per chosen key meanwhile (2 per key of a full share). A
//!   flood of new keys so costs a look at about 8 slots per new key for each share in the
//!   shard that is as full: `cargo run --release -p tollgate-bench --bin
//!   bench-full-shares`. (Fresh entries of other buckets go with the next sweep as the
//!   shard grows, not with every batch.)
//! - An entry is one slot of a hash table of its kind, the key kept as a 64-bit keyed hash
//!   of `<name>:<key>` (the store never holds the key itself): 28 bytes for a token bucket
//!   (one timestamp and the emission interval it counts in), 40 for a fixed window, 128
//!   (two cache lines, aligned) for a sliding window of up to 10 segments whose segments
//!   are shorter than 71 minutes, and 32 plus an allocation for anything else (an exact
//!   log: 16 bytes per distinct admission time).
//!   Tables grow by doubling, so a table is between 44% and 88% full.
//!   `cargo run --release -p tollgate-bench --bin bench-memory` measures bytes per live key.
//! - No global lock: keys hash to one of `shards` mutexes; a request whose buckets fall in
//!   several shards locks them in index order. The mutexes are `parking_lot`'s, which spin
//!   a little before sleeping: threads deciding for one hot key (a global bucket) mostly
//!   take turns without a system call, where with the standard library's mutex a decision
//!   took about twice the time (two threads, the engine bench's "one hot key").

use std::fmt;
use std::hash::BuildHasher;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hashbrown::HashTable;
use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;

use crate::algorithm::{Fit, Interval, Ring, State, Undo};
use crate::clock::{real_wait, Clock, FastClock, Timestamp};
use crate::decision::{BucketState, Decision};
use crate::limit::{Algorithm, Limit};
use crate::sampled::Sampled;
use crate::store::{validate_buckets, Batch, BoxFuture, Bucket, Op, Store, StoreError, WhenFull};

/// At most one warning per this many microseconds, per bucket, about new keys refused for
/// a full share.
const FULL_WARNING_EVERY_US: u64 = 10_000_000;

/// The buckets whose full shares are warned about each on their own ([`FullWarnings`]);
/// past so many (configuration names buckets: no client makes one), the rest share one
/// warning.
const FULL_WARNED_SHARES: usize = 64;

/// The default for [`MemoryStoreBuilder::max_entries`]: keys per bucket name.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

type Hasher = foldhash::quality::RandomState;

/// Set in a slot's `seen` while the entry is at its limit.
const LIMITED: u64 = 1 << 63;

/// Where a slot's `seen` word keeps how much the entry has spent short of its limit: 3 bits
/// under [`PART_SHIFT`], the binary order of magnitude of what it spent (0 for 1 or
/// nothing, 1 for 2 or 3, ... 7 for 128 or more, in requests or points). Eviction takes
/// keys of the lowest order first, and among them the least recently seen: a flood of keys
/// seen once makes room among its own keys, not with a client that spent more, and a flood
/// that would evict a client who spent `n` must spend about `n` on each of its keys.
const SPENT_SHIFT: u32 = 52;

/// The bits of a slot's `seen` word that hold [`SPENT_SHIFT`]'s order.
const SPENT_BITS: u64 = 0b111 << SPENT_SHIFT;

/// `seen`'s flags: [`LIMITED`] and the order of what it spent ([`SPENT_BITS`]).
const FLAGS: u64 = LIMITED | SPENT_BITS;

/// Where a slot's `seen` word keeps the share it counts in (its index in
/// [`Shard::parts`]): the 8 bits under [`LIMITED`]. Under them, [`SPENT_BITS`], and the
/// time in microseconds (2^52 of them: 142 years from 1970).
const PART_SHIFT: u32 = 55;

/// The bits of a slot's `seen` word that hold its share.
const PART_BITS: u64 = 0xff << PART_SHIFT;

/// The most bucket names a shard accounts for separately; further names share one share.
const MAX_PARTS: usize = 256;

/// The share of bucket names past [`MAX_PARTS`].
const OVERFLOW_PART: u32 = u32::MAX;

/// A stored key: its hash (its identity, and its place in the table), the share it counts
/// in, when it was last seen and its state in the form of its kind.
#[derive(Debug)]
struct Slot<K: Kept> {
    hash: Word,
    /// When it was last charged or checked (microseconds), with [`LIMITED`] set while it
    /// is at its limit (else the order of what it spent, [`SPENT_BITS`]), and its share in
    /// [`PART_BITS`]. Eviction takes the smallest [`Slot::seen`] of a share first: keys
    /// that spent least, least recently seen first, before any at its limit.
    seen_part: Word,
    kept: K,
    _align: K::Align,
}

impl<K: Kept> Slot<K> {
    fn new(hash: u64, part: u8, seen: u64, kept: K) -> Self {
        Slot {
            hash: Word(hash),
            seen_part: Word(with_part(seen, part)),
            kept,
            _align: Default::default(),
        }
    }

    fn hash(&self) -> u64 {
        self.hash.get()
    }

    /// When it was last seen, with [`LIMITED`] and [`SPENT_BITS`] (its share's bits
    /// cleared).
    fn seen(&self) -> u64 {
        self.seen_part.get() & !PART_BITS
    }

    /// Its share: an index in [`Shard::parts`].
    fn part(&self) -> u8 {
        ((self.seen_part.get() & PART_BITS) >> PART_SHIFT) as u8
    }

    fn set_seen(&mut self, seen: u64) {
        self.seen_part = Word(with_part(seen, self.part()));
    }
}

/// `seen` (microseconds, with [`FLAGS`]) and share `part` in one word; a time past 2^52
/// microseconds is kept as that.
fn with_part(seen: u64, part: u8) -> u64 {
    let micros = (seen & !FLAGS).min((1 << SPENT_SHIFT) - 1);
    (seen & FLAGS) | (u64::from(part) << PART_SHIFT) | micros
}

/// A `u64` at 4-byte alignment, so that a slot whose state needs no more (a token
/// bucket's) has no padding: 28 bytes, not 32.
#[derive(Debug, Clone, Copy)]
#[repr(C, packed(4))]
struct Word(u64);

impl Word {
    fn get(self) -> u64 {
        self.0
    }
}

/// Aligns a [`Slot`] to a cache line (zero-sized).
#[derive(Debug, Default, Clone, Copy)]
#[repr(align(64))]
struct Align64;

/// A state in the form one table keeps it.
trait Kept: Sized {
    /// The alignment its [`Slot`] takes (a zero-sized marker): a slot of two cache lines
    /// starts on one, so that finding a key reads two lines, not three.
    type Align: Default + fmt::Debug;
    /// Keeps `state`, which expires at `expires_at`; gives it back if it is not of this
    /// table's kind.
    fn keep(state: State, expires_at: u64) -> Result<Self, State>;
    /// Runs `f` on the state, which answers when the state expires now (`None`:
    /// unchanged); gives the state back in `moved` (which the caller set to `None`) if it
    /// no longer has this table's form. (Through a place of the caller's, not returned: an
    /// `Option<State>` returned was written out whole, a hundred bytes, on every call.)
    fn update<R>(
        &mut self,
        moved: &mut Option<State>,
        f: impl FnOnce(&mut State) -> (R, Option<u64>),
    ) -> R;
    /// When the state is back to fresh.
    fn expires_at(&self) -> u64;
    /// Reads the end of the kept state, to bring its last cache line in.
    fn tail_word(&self) -> u64 {
        0
    }
}

/// A token bucket: its theoretical arrival time, which is also when it is fresh again, and
/// the emission interval it counts in (its [`Interval`] code, a `u32`). Packed to 4-byte
/// alignment (12 bytes, not 16), so that its slot is 28 bytes.
#[derive(Debug, Clone, Copy)]
#[repr(C, packed(4))]
struct Tat {
    tat: u64,
    interval: Interval,
}

impl Kept for Tat {
    type Align = ();

    fn keep(state: State, _: u64) -> Result<Self, State> {
        match state {
            State::Tat { tat, interval } => Ok(Tat { tat, interval }),
            other => Err(other),
        }
    }

    #[inline]
    fn update<R>(
        &mut self,
        moved: &mut Option<State>,
        f: impl FnOnce(&mut State) -> (R, Option<u64>),
    ) -> R {
        // Not dropped here: a token bucket's state holds nothing to drop, and one of
        // another form is moved out (a state left to drop cost a call of its drop glue,
        // which matches on every form, at every decision).
        let mut state = ManuallyDrop::new(State::Tat {
            tat: self.tat,
            interval: self.interval,
        });
        let (r, _) = f(&mut state);
        match *state {
            State::Tat { tat, interval } => *self = Tat { tat, interval },
            _ => *moved = Some(ManuallyDrop::into_inner(state)),
        }
        r
    }

    fn expires_at(&self) -> u64 {
        self.tat
    }
}

/// A fixed window.
#[derive(Debug)]
struct Fixed {
    window: u64,
    used: u64,
    period: u64,
}

impl Kept for Fixed {
    type Align = ();

    fn keep(state: State, _: u64) -> Result<Self, State> {
        match state {
            State::Fixed {
                window,
                used,
                period,
            } => Ok(Fixed {
                window,
                used,
                period,
            }),
            other => Err(other),
        }
    }

    #[inline]
    fn update<R>(
        &mut self,
        moved: &mut Option<State>,
        f: impl FnOnce(&mut State) -> (R, Option<u64>),
    ) -> R {
        let mut state = State::Fixed {
            window: self.window,
            used: self.used,
            period: self.period,
        };
        let (r, _) = f(&mut state);
        match Fixed::keep(state, 0) {
            Ok(kept) => *self = kept,
            Err(other) => *moved = Some(other),
        }
        r
    }

    fn expires_at(&self) -> u64 {
        if self.used == 0 {
            0
        } else {
            self.window.saturating_add(1).saturating_mul(self.period)
        }
    }
}

/// A sliding window whose segments are held inline ([`State::Segments`] of a narrow ring,
/// kept as the state itself so that a call works on it in place). When it is fresh again
/// is read off the ring ([`Ring::expiry_bound`]) rather than kept beside it, so that the
/// slot fits in two cache lines.
#[derive(Debug)]
struct Window(State);

impl Kept for Window {
    type Align = Align64;

    fn keep(state: State, _: u64) -> Result<Self, State> {
        match state {
            State::Segments(ref ring) if ring.is_narrow() => Ok(Window(state)),
            other => Err(other),
        }
    }

    #[inline]
    fn update<R>(
        &mut self,
        moved: &mut Option<State>,
        f: impl FnOnce(&mut State) -> (R, Option<u64>),
    ) -> R {
        let (r, _) = f(&mut self.0);
        match &self.0 {
            State::Segments(ring) if ring.is_narrow() => {}
            // Widened (or of another algorithm): the caller moves it to the boxed table
            // and drops this entry.
            _ => {
                let empty = State::Tat {
                    tat: 0,
                    interval: Interval::of(0),
                };
                *moved = Some(std::mem::replace(&mut self.0, empty));
            }
        }
        r
    }

    fn expires_at(&self) -> u64 {
        match &self.0 {
            State::Segments(ring) => ring.expiry_bound(),
            _ => 0,
        }
    }

    fn tail_word(&self) -> u64 {
        match &self.0 {
            State::Segments(ring) => ring.tail_word(),
            _ => 0,
        }
    }
}

/// Any other state (an exact log, a sliding window of many segments), in an allocation.
#[derive(Debug)]
struct Boxed {
    state: Box<State>,
    expires_at: u64,
}

impl Kept for Boxed {
    type Align = ();

    fn keep(state: State, expires_at: u64) -> Result<Self, State> {
        Ok(Boxed {
            state: Box::new(state),
            expires_at,
        })
    }

    #[inline]
    fn update<R>(
        &mut self,
        _: &mut Option<State>,
        f: impl FnOnce(&mut State) -> (R, Option<u64>),
    ) -> R {
        let (r, expires_at) = f(&mut self.state);
        if let Some(at) = expires_at {
            self.expires_at = at;
        }
        r
    }

    fn expires_at(&self) -> u64 {
        self.expires_at
    }
}

/// Which table a limit's keys live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tat,
    Fixed,
    Window,
    Boxed,
}

impl Kind {
    fn of(limit: &Limit) -> Kind {
        match limit.algorithm() {
            Algorithm::TokenBucket { .. } => Kind::Tat,
            Algorithm::FixedWindow => Kind::Fixed,
            Algorithm::SlidingWindow { segments } => {
                if Ring::fits_inline(usize::from(segments) + 1, limit.segment_micros()) {
                    Kind::Window
                } else {
                    Kind::Boxed
                }
            }
            _ => Kind::Boxed,
        }
    }
}

/// One independently locked part of the store: a table per kind of state, and how many
/// keys each bucket name holds in it.
#[derive(Debug, Default)]
struct Shard {
    tat: HashTable<Slot<Tat>>,
    fixed: HashTable<Slot<Fixed>>,
    window: HashTable<Slot<Window>>,
    boxed: HashTable<Slot<Boxed>>,
    /// One per bucket name seen in this shard.
    parts: Vec<Part>,
    /// The size after the last sweep of fresh entries.
    swept_len: usize,
    /// No entry expires before this (as of the last sweep, lowered by every insert).
    min_expiry: u64,
}

/// One share of a shard: the keys of one bucket name.
#[derive(Debug)]
struct Part {
    /// The share's id (its bucket name's hash, or [`OVERFLOW_PART`]).
    id: u32,
    /// How many keys it holds here.
    held: u32,
    /// Until when what the last look through the full share found holds (the soonest
    /// expiry of its keys then); 0 when nothing does. A change that may make room, or put
    /// a key before those in `victims`, ends it ([`Part::forget`]): a key that drops below
    /// its limit or is fresh sooner ([`update_in`]), a new key below its limit or fresh
    /// sooner ([`Shard::insert`]), and, while `victims` is empty, any key in or out
    /// ([`count`]).
    until: u64,
    /// What that look found. Empty: no room, so that a flood of new keys into a full share
    /// is refused without scanning the shard for each. Else the next keys at their limit
    /// that [`WhenFull::EvictLimited`] evicts, in the order it takes them (the least
    /// recently seen last, taken first), so that it looks through the shard, whose tables
    /// hold every bucket's keys, once per eighth of the share it evicts and not once per
    /// batch (a review: a flood of new keys into a full share cost 13 times an ordinary
    /// request with 24 shares full). A key seen since that look is not evicted: its slot's
    /// `seen` is no longer the one kept here. (16 bytes a key, an eighth of the share at
    /// most: 2 bytes per key the share holds.)
    victims: Vec<Picked>,
    /// While keys are chosen: when that look was, or the last time a chosen key was seen
    /// if later (a clock set back); else 0. A key seen before it (a clock set back) would
    /// rank before chosen ones: it ends the choice ([`update_in`], [`Shard::insert`]), and
    /// a clock showing an earlier time does not use it.
    looked_at: u64,
}

impl Part {
    /// Ends what the last look through the full share found.
    fn forget(&mut self) {
        self.until = 0;
        self.victims = Vec::new();
        self.looked_at = 0;
    }
}

/// Counters describing what a [`MemoryStore`] did to stay bounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryStats {
    /// Entries held now.
    pub entries: usize,
    /// Entries dropped because their state was fresh again.
    pub expired: u64,
    /// Entries evicted (least recently seen, those not at their limit first) to make room.
    pub evicted: u64,
    /// Of those, entries that were at their limit ([`WhenFull::EvictLimited`] only).
    pub evicted_limited: u64,
    /// New keys refused because their bucket's share was full of limited keys
    /// ([`WhenFull::RefuseNewKeys`]).
    pub refused_full: u64,
}

#[derive(Default)]
struct Counters {
    expired: AtomicU64,
    evicted: AtomicU64,
    evicted_limited: AtomicU64,
    refused_full: AtomicU64,
    /// Warnings about refused new keys (µs of the store's clock).
    full_warned: FullWarnings,
}

/// When each bucket's full share was last warned about, and how many of its new keys were
/// refused since: a bucket filling up is warned about when it happens, with its own count,
/// whatever other bucket was warned about just before (a review: one warning for the whole
/// store told of a second bucket's full share 11 s late, its count holding the first's
/// refusals too). A bucket is known by its name's hash, as its share is; without a lock,
/// as a flood of new keys into a full share meets it on each request.
struct FullWarnings {
    /// Up to [`FULL_WARNED_SHARES`] buckets: the name's hash + 1 (0: a free place), from
    /// the place the hash names on, and its warnings.
    named: [(AtomicU64, Sampled); FULL_WARNED_SHARES],
    /// The buckets past those.
    rest: Sampled,
}

impl Default for FullWarnings {
    fn default() -> Self {
        Self {
            named: std::array::from_fn(|_| (AtomicU64::new(0), Sampled::new())),
            rest: Sampled::new(),
        }
    }
}

impl FullWarnings {
    /// A new key of the bucket whose name hashes to `name_hash` refused at `now`: `Some(n)`
    /// if it is to be warned about, `n` being that bucket's refusals not warned about since
    /// ([`Sampled::due`]).
    fn due(&self, name_hash: u32, now: u64) -> Option<u64> {
        let id = u64::from(name_hash) + 1;
        let first = name_hash as usize % FULL_WARNED_SHARES;
        for i in 0..FULL_WARNED_SHARES {
            let (held, sampled) = &self.named[(first + i) % FULL_WARNED_SHARES];
            let mine = match held.load(Ordering::Relaxed) {
                0 => match held.compare_exchange(0, id, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => true,
                    Err(other) => other == id,
                },
                other => other == id,
            };
            if mine {
                return sampled.due(now, FULL_WARNING_EVERY_US);
            }
        }
        self.rest.due(now, FULL_WARNING_EVERY_US)
    }
}

struct Inner {
    shards: Box<[Padded]>,
    /// Keys per bucket name per shard.
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
            .field("max_entries_per_bucket", &self.capacity())
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
            clock: Arc::new(FastClock::new()),
        }
    }
}

impl MemoryStoreBuilder {
    /// The most keys the store holds per bucket name; at least 1. Default
    /// [`DEFAULT_MAX_ENTRIES`].
    pub fn max_entries(mut self, max_entries: usize) -> Self {
        self.max_entries = max_entries.max(1);
        self
    }

    /// How many independently locked shards; rounded to a power of two, and lowered so
    /// that each shard holds at least 64 keys of a bucket. Default: 16 per core.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards.clamp(1, 1 << 16).next_power_of_two();
        self
    }

    /// The clock to decide by. Default [`FastClock`].
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The store. The shares of all shards add up to at most `max_entries` per bucket.
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
    /// A store with the default bounds and clock.
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
    ///
    /// # Errors
    ///
    /// As [`MemoryStore::apply_now`].
    pub fn charge(&self, buckets: &[Bucket]) -> Result<Decision, StoreError> {
        self.apply_now(Op::Charge, buckets)
    }

    /// Applies `op` to `buckets` at the clock's current time. The synchronous form of
    /// [`Store::apply`].
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidBatch`] for what [`Store::apply`] refuses too, which would
    /// count wrongly: no bucket, a charge costing 0, a key named twice.
    pub fn apply_now(&self, op: Op, buckets: &[Bucket]) -> Result<Decision, StoreError> {
        validate_buckets(op, buckets)?;
        Ok(self.decide(op, buckets))
    }

    /// [`MemoryStore::apply_now`] of a valid batch.
    fn decide(&self, op: Op, buckets: &[Bucket]) -> Decision {
        let mut states = vec![BucketState::default(); buckets.len()];
        let now = self.apply_into(op, buckets, &mut states);
        Decision {
            allowed: states.iter().all(|s| s.allowed),
            now,
            buckets: states,
        }
    }

    /// Applies `op` to `buckets` at the clock's current time, one state per bucket into
    /// `states`; returns that time. Nothing here allocates for up to four buckets (unless
    /// a share is full and must be made room in). (Inlined into its two callers, with the
    /// path of one bucket; the path of several buckets and [`Inner::apply_one`] are not
    /// inlined, so that the common request, a charge of one held key, sets up small call
    /// frames.)
    #[inline(always)]
    fn apply_into(&self, op: Op, buckets: &[Bucket], states: &mut [BucketState]) -> Timestamp {
        let (now, ahead) = self.inner.clock.now_and_ahead();
        let now_us = now.as_micros();
        if let ([bucket], [state]) = (buckets, &mut *states) {
            self.apply_alone(op, bucket, state, now_us);
        } else {
            self.apply_several(op, buckets, states, now_us);
        }
        // A clock that slews a step back runs at half speed: the waits told are real ones.
        if ahead > 0 {
            for state in states {
                state.reset_after = real_wait(state.reset_after, ahead);
                state.retry_after = state.retry_after.map(|w| real_wait(w, ahead));
            }
        }
        now
    }

    /// [`MemoryStore::apply_into`] of one bucket (the common request) at `now_us`: one
    /// lock, no scratch space. (Inlined: its one caller is on every request's path.)
    #[inline(always)]
    fn apply_alone(&self, op: Op, bucket: &Bucket, state: &mut BucketState, now_us: u64) {
        let inner = &*self.inner;
        let mut p = inner.place(bucket);
        let mut shard = lock(&inner.shards[p.shard]);
        // A charge of a key held in its kind's own table: the common request, through a
        // path of its own (`apply_one` handles every call, and costs for it). A key it
        // found absent is not looked for again.
        if op == Op::Charge {
            if charge_held(&mut shard, &p, bucket, now_us, |_| {}, state) {
                return;
            }
            p.absent = true;
        }
        inner.apply_one(&mut shard, &p, op, bucket, false, None, now_us, state);
    }

    /// [`MemoryStore::apply_into`] of several buckets at `now_us`. (Not inlined: its
    /// scratch space makes a large call frame, which a call of one bucket does not set up.)
    #[inline(never)]
    fn apply_several(&self, op: Op, buckets: &[Bucket], states: &mut [BucketState], now_us: u64) {
        let inner = &*self.inner;
        // The scratch vectors are filled by `push`, which inlines (collecting into them
        // does not, and costs more than the rest of this function).
        let mut placed: Scratch<Placed> = Scratch::new();
        let mut order: Scratch<usize> = Scratch::new();
        for bucket in buckets {
            let p = inner.place(bucket);
            order.push(p.shard);
            placed.push(p);
        }
        // Bring each key's slot into cache first, one shard at a time, so that the locks
        // below are held for the work and not for cache misses: a shard every request
        // shares (a global key) would otherwise stay locked while this one waits on memory
        // for its other keys. A shard another call holds is skipped rather than waited
        // for. Only reads: nothing is changed here.
        for p in &placed {
            if let Some(shard) = try_lock(&inner.shards[p.shard]) {
                std::hint::black_box(shard.touch(p));
            }
        }
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

        if op != Op::Charge {
            // Any other call decides each bucket on its own.
            for ((bucket, p), state) in buckets.iter().zip(&placed).zip(states) {
                let shard = &mut guards[p.guard];
                inner.apply_one(shard, p, op, bucket, false, None, now_us, state);
            }
            return;
        }
        // A charge of several buckets: each held key is charged as if alone, what it held
        // kept aside; a new key is only seen to fit (and to have room, as a charge would
        // make). The first bucket that refuses gives the ones before it back, exactly as
        // they were, and the ones after it are only looked at; if none refuses, the new
        // keys are stored. So no bucket is charged unless all admit, and a refused charge
        // stores nothing. (One lookup of each held key when all admit, where seeing whether
        // all fit first took two.)
        let mut held: Scratch<Held> = Scratch::new();
        let mut refused = None;
        for (k, ((bucket, p), state)) in buckets
            .iter()
            .zip(&mut placed)
            .zip(&mut *states)
            .enumerate()
        {
            let mut before = Held::New;
            let shard = &mut guards[p.guard];
            // A held key through the charge's own path (as for one bucket); a new one
            // through `apply_one`, which does not look for it again.
            let record = |state: &State| before = Held::Was(state.undo_record());
            if !charge_held(shard, p, bucket, now_us, record, state) {
                p.absent = true;
                inner.apply_one(
                    shard,
                    p,
                    op,
                    bucket,
                    false,
                    Some(&mut before),
                    now_us,
                    state,
                );
                // The second pass (below) looks for it again, as it always did.
                p.absent = false;
            }
            if !state.allowed {
                refused = Some(k);
                break;
            }
            held.push(before);
        }
        let Some(k) = refused else {
            for (j, before) in held.into_iter().enumerate() {
                if let Held::New = before {
                    let (bucket, p) = (&buckets[j], &placed[j]);
                    let shard = &mut guards[p.guard];
                    inner.apply_one(shard, p, op, bucket, true, None, now_us, &mut states[j]);
                }
            }
            return;
        };
        for (j, before) in held.into_iter().enumerate() {
            let (bucket, p) = (&buckets[j], &placed[j]);
            states[j] = inner.give_back(&mut guards[p.guard], p, bucket, before, now_us);
        }
        for j in k + 1..buckets.len() {
            let (bucket, p) = (&buckets[j], &placed[j]);
            states[j] = inner.look(&mut guards[p.guard], p, bucket, now_us);
        }
    }

    /// Sets `bucket`'s key to what another store reported for it: `used` counted against
    /// its limit (in the limit's units: the capacity minus what was remaining), and fresh
    /// again in `fresh_in` (the report's `reset_after`). What was counted is taken as
    /// admitted as late as `fresh_in` allows (see below), so the key admits no sooner here
    /// than it would have there. A `used` of 0 (or a `fresh_in` of zero) forgets the key.
    ///
    /// A new key takes room like a charge does, and where a charge would be refused for want
    /// of room (a share full of keys at their limit, or under [`WhenFull::KeepCounts`] of
    /// keys that count) it takes the place of keys that spent no more than it, the least
    /// recently seen of those that spent least first: the store holds the other store's
    /// counts of the keys that spent most, and a flood of keys each at one cannot keep out a
    /// lockout reached since. If every key there spent more, it is not stored, and this
    /// returns `false`.
    ///
    /// tollgate-redis's `FallbackStore` calls it with
    /// every answer of Redis, so that deciding from memory starts from Redis's counts.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate_limits::{Bucket, Limit, MemoryStore, Quota};
    ///
    /// let store = MemoryStore::new();
    /// let lockout = Bucket::new("login", "alice", Limit::sliding_exact(Quota::parse("5/30min")?));
    /// // Redis said: 1 remaining of 5, fresh again in 20 minutes.
    /// store.mirror(&lockout, 4, Duration::from_secs(20 * 60));
    /// assert!(store.charge(std::slice::from_ref(&lockout))?.allowed);
    /// let refused = store.charge(std::slice::from_ref(&lockout))?;
    /// assert!(!refused.allowed);
    /// assert!(refused.retry_after().unwrap() <= Duration::from_secs(20 * 60));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// How a count is placed: a sliding window's or an exact log's whole count at the last
    /// admission (`fresh_in` before the window ends), so it all leaves when that one does;
    /// a token bucket's time `fresh_in` ahead (at most `used` tokens' worth); a fixed
    /// window's count in the current window.
    pub fn mirror(&self, bucket: &Bucket, used: u64, fresh_in: std::time::Duration) -> bool {
        let inner = &*self.inner;
        let now = inner.clock.now().as_micros();
        let p = inner.place(bucket);
        let limit = &bucket.limit;
        let fresh_in = u64::try_from(fresh_in.as_micros()).unwrap_or(u64::MAX);
        let state = State::assumed(limit, used, fresh_in, now);
        let (_, a) = reported(&state, limit, Fit::Now, 1, now);
        let mut shard = lock(&inner.shards[p.shard]);
        if a.expires_at <= now {
            let _ = shard.remove(p.hash);
            return true;
        }
        let (seen, expires_at) = (a.seen, a.expires_at);
        let mut pending = Some(state);
        shard.update(&p, now, |kept| {
            if let Some(state) = pending.take() {
                *kept = state;
            }
            ((), Some(a))
        });
        let Some(state) = pending else {
            return true;
        };
        match inner.make_room(&mut shard, bucket, now, Some(seen & FLAGS)) {
            Ok(part) => {
                shard.insert(p.hash, part, seen, state, expires_at);
                true
            }
            Err(_) => false,
        }
    }

    /// Drops every entry whose state is back to fresh; returns how many went.
    pub fn purge_expired(&self) -> usize {
        let now = self.inner.clock.now().as_micros();
        self.inner
            .shards
            .iter()
            .map(|s| self.inner.sweep(&mut lock(s), now, None).0)
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
            refused_full: c.refused_full.load(Ordering::Relaxed),
        }
    }

    /// How many keys the store holds.
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most keys the store will hold per bucket name (what
    /// [`MemoryStoreBuilder::max_entries`] was, rounded down to a multiple of the shard
    /// count).
    pub fn capacity(&self) -> usize {
        self.inner.shard_cap * self.inner.shards.len()
    }
}

/// Per-request scratch space, on the stack for up to `INLINE` buckets.
type Scratch<T> = SmallVec<[T; INLINE]>;

/// How many buckets a request may have before its scratch space is allocated.
const INLINE: usize = 4;

/// Where one bucket of a request lives: its key's hash, its shard, the index of that
/// shard's guard among the request's locks, and the table of its kind.
struct Placed {
    hash: u64,
    shard: usize,
    guard: usize,
    kind: Kind,
    /// Known not to be held (a charge looked for it already): `Inner::apply_one` does not
    /// look again.
    absent: bool,
}

/// What a bucket held before a charge of several buckets charged it: a new key (not
/// stored until every bucket admits), or what puts its state back ([`Undo`]).
enum Held {
    New,
    Was(Undo),
}

/// Bits of a key's hash below the ones that choose its shard (at most 2^16 shards, under
/// the table's 7-bit tag at the top).
const SHARD_SHIFT: u32 = 40;

/// What to do with an entry after a call: keep it until `expires_at` (and note when it
/// was seen), or drop it.
struct After {
    seen: u64,
    expires_at: u64,
}

/// Runs `f` on the state of the key with `hash` in `table`, if it is there; keeps what
/// `f` answers about the entry (`None`: nothing to note; a state fresh again is dropped).
/// A state that no longer has the table's form moves to `boxed`. Gives `f` back if the key
/// is not in `table`, to look elsewhere.
fn update_in<K: Kept, R, F: FnOnce(&mut State) -> (R, Option<After>)>(
    table: &mut HashTable<Slot<K>>,
    boxed: &mut HashTable<Slot<Boxed>>,
    parts: &mut [Part],
    hash: u64,
    now: u64,
    f: F,
) -> Result<R, F> {
    let Ok(mut found) = table.find_entry(hash, |s| s.hash() == hash) else {
        return Err(f);
    };
    let slot = found.get_mut();
    let mut noted = None;
    let mut moved = None;
    let r = slot.kept.update(&mut moved, |state| {
        let (r, a) = f(state);
        let expires_at = a.as_ref().map(|a| a.expires_at);
        noted = a;
        (r, expires_at)
    });
    let after = match noted {
        Some(after) => after,
        // Nothing noted: leave the entry as it was (it may move if its form changed).
        None => After {
            seen: slot.seen(),
            expires_at: u64::MAX,
        },
    };
    let was_limited = slot.seen() & LIMITED != 0;
    slot.set_seen(after.seen);
    let part = slot.part();
    let expires_at = if after.expires_at == u64::MAX {
        slot.kept.expires_at()
    } else {
        after.expires_at
    };
    // A key no longer at its limit, or fresh again sooner than the share's last look
    // holds, may make room; one seen before the last key that look chose (a clock set
    // back) ranks before the chosen ones: the share is looked at afresh (a key dropped
    // does so in `count`). A refused charge of a key at its limit, or a look, leaves it: a
    // flood that mixes known keys with new ones is refused as cheaply as one of new keys
    // alone.
    if let Some(share) = parts.get_mut(usize::from(part)) {
        if (was_limited && after.seen & LIMITED == 0)
            || expires_at < share.until
            || after.seen & !FLAGS < share.looked_at
        {
            share.forget();
        }
    }
    if after.expires_at <= now {
        found.remove();
        count(parts, part, -1);
    } else if let Some(state) = moved {
        found.remove();
        let kept = Boxed {
            state: Box::new(state),
            expires_at,
        };
        boxed.insert_unique(hash, Slot::new(hash, part, after.seen, kept), Slot::hash);
    }
    Ok(r)
}

/// Adds to (or takes from) the count of share `part`. A key in or out decides a refusal
/// for want of room afresh; the keys a full share chose to evict stay chosen (each is
/// checked as it goes, and [`Shard::insert`] ends the choice when a new key may rank
/// before them).
fn count(parts: &mut [Part], part: u8, delta: i32) {
    if let Some(share) = parts.get_mut(usize::from(part)) {
        share.held = share.held.saturating_add_signed(delta);
        if share.victims.is_empty() {
            share.until = 0;
        }
    }
}

/// Drops the entries of `table` that `keep` does not keep, counting them out of their
/// shares; returns how many went.
fn retain_in<K: Kept>(
    table: &mut HashTable<Slot<K>>,
    parts: &mut [Part],
    mut keep: impl FnMut(&Slot<K>) -> bool,
) -> usize {
    let before = table.len();
    table.retain(|slot| {
        let kept = keep(slot);
        if !kept {
            count(parts, slot.part(), -1);
        }
        kept
    });
    before - table.len()
}

impl Shard {
    fn len(&self) -> usize {
        self.tat.len() + self.fixed.len() + self.window.len() + self.boxed.len()
    }

    /// Runs `f` on the key's state, wherever it is kept.
    fn update<R>(
        &mut self,
        p: &Placed,
        now: u64,
        f: impl FnOnce(&mut State) -> (R, Option<After>),
    ) -> Option<R> {
        let Shard {
            tat,
            fixed,
            window,
            boxed,
            parts,
            ..
        } = self;
        let hash = p.hash;
        match p.kind {
            Kind::Tat => update_in(tat, boxed, parts, hash, now, f),
            Kind::Fixed => update_in(fixed, boxed, parts, hash, now, f),
            // A window that outgrew its slot (a count past 2^32) lives with the boxed: one
            // probe of its own table, and of the boxed only when that misses.
            Kind::Window => match update_in(window, boxed, parts, hash, now, f) {
                Err(f) if !boxed.is_empty() => {
                    update_in(boxed, &mut HashTable::new(), parts, hash, now, f)
                }
                other => other,
            },
            Kind::Boxed => update_in(boxed, &mut HashTable::new(), parts, hash, now, f),
        }
        .ok()
    }

    /// Reads the key's slot (without changing it), so that a call which then holds
    /// several shards' locks finds it in cache.
    fn touch(&self, p: &Placed) -> u64 {
        fn read<K: Kept>(table: &HashTable<Slot<K>>, hash: u64) -> u64 {
            table
                .find(hash, |s| s.hash() == hash)
                .map_or(0, |s| s.seen_part.get() ^ s.kept.tail_word())
        }
        match p.kind {
            Kind::Tat => read(&self.tat, p.hash),
            Kind::Fixed => read(&self.fixed, p.hash),
            Kind::Window => read(&self.window, p.hash),
            Kind::Boxed => read(&self.boxed, p.hash),
        }
    }

    /// Removes the key, wherever it is kept; whether it was there.
    fn remove(&mut self, hash: u64) -> bool {
        self.remove_if(hash, |_| true)
    }

    /// Removes the key, wherever it is kept, if its slot's `seen` (with [`FLAGS`]) is one
    /// `seen` takes; whether it went.
    fn remove_if(&mut self, hash: u64, seen: impl Fn(u64) -> bool + Copy) -> bool {
        fn take<K: Kept>(
            table: &mut HashTable<Slot<K>>,
            hash: u64,
            seen: impl Fn(u64) -> bool,
        ) -> Option<u8> {
            let found = table
                .find_entry(hash, |s| s.hash() == hash && seen(s.seen()))
                .ok()?;
            Some(found.remove().0.part())
        }
        let part = take(&mut self.tat, hash, seen)
            .or_else(|| take(&mut self.fixed, hash, seen))
            .or_else(|| take(&mut self.window, hash, seen))
            .or_else(|| take(&mut self.boxed, hash, seen));
        if let Some(part) = part {
            count(&mut self.parts, part, -1);
        }
        part.is_some()
    }

    /// Stores a key absent from the table of its state's form (a state of another form,
    /// left by a limit that changed, is dropped: the key starts afresh).
    fn insert(&mut self, hash: u64, part: u8, seen: u64, state: State, expires_at: u64) {
        let _ = self.remove(hash);
        fn put<K: Kept>(
            table: &mut HashTable<Slot<K>>,
            hash: u64,
            part: u8,
            seen: u64,
            state: State,
            expires_at: u64,
        ) -> Result<(), State> {
            let kept = K::keep(state, expires_at)?;
            table.insert_unique(hash, Slot::new(hash, part, seen, kept), Slot::hash);
            Ok(())
        }
        let state = put(&mut self.tat, hash, part, seen, state, expires_at)
            .or_else(|s| put(&mut self.fixed, hash, part, seen, s, expires_at))
            .or_else(|s| put(&mut self.window, hash, part, seen, s, expires_at))
            .err();
        if let Some(state) = state {
            // `Boxed` keeps anything.
            let _ = put(&mut self.boxed, hash, part, seen, state, expires_at);
        }
        count(&mut self.parts, part, 1);
        // A key below its limit may change how a full share makes room (those below are
        // evicted first); one fresh sooner ends its last look's hold, and one seen before
        // the last key that look chose (a clock set back) ranks before them.
        if let Some(share) = self.parts.get_mut(usize::from(part)) {
            if seen & LIMITED == 0 || expires_at < share.until || seen & !FLAGS < share.looked_at {
                share.forget();
            }
        }
        self.min_expiry = self.min_expiry.min(expires_at);
    }

    /// The share a bucket name's keys count in here (registering it if new): its index in
    /// `parts`, which only grows.
    fn part_of(&mut self, name_hash: u32) -> u8 {
        let index = |parts: &[Part], id: u32| parts.iter().position(|p| p.id == id);
        if let Some(i) = index(&self.parts, name_hash) {
            return i as u8;
        }
        let id = if self.parts.len() < MAX_PARTS - 1 {
            name_hash
        } else {
            OVERFLOW_PART
        };
        let i = index(&self.parts, id).unwrap_or_else(|| {
            self.parts.push(Part {
                id,
                held: 0,
                until: 0,
                victims: Vec::new(),
                looked_at: 0,
            });
            self.parts.len() - 1
        });
        // At most MAX_PARTS entries (the overflow share's the last).
        i as u8
    }

    /// How many keys share `part` holds here.
    fn held(&self, part: u8) -> usize {
        self.parts
            .get(usize::from(part))
            .map_or(0, |share| share.held as usize)
    }
}

/// A key of a full share that a sweep kept, as eviction chooses among them: its `seen`
/// (with [`FLAGS`]: the order eviction takes keys in) and its hash.
#[derive(Debug, Clone, Copy)]
struct Picked {
    seen: u64,
    hash: u64,
}

/// What a sweep kept of one share ([`Inner::sweep`]): every key, and the soonest expiry
/// among them.
#[derive(Debug, Default)]
struct ShareKeys {
    keys: Vec<Picked>,
    soonest: u64,
}

/// What a call answered, as an entry remembers it: when the state is fresh again, and
/// when it was seen (with whether it is at its limit, else the order of what it spent).
/// `expires_at` is when the state is fresh again (as [`State::report_and_expiry`] says).
///
/// Both are read from what the key holds, not from whether this call was admitted: a
/// refusal of a request costing more than the key has left leaves it where it was (a
/// review: a flood of keys that each spent 1 point and then asked for 100 took them for
/// keys at their limit, evicting a client at its own, or refusing every new key). What it
/// spent is measured against what the limit can hold at once ([`Limit::capacity`]: a token
/// bucket's burst, not its sustained count, which may be larger or smaller).
#[inline]
fn after(report: &BucketState, limit: &Limit, expires_at: u64, now: u64) -> After {
    let limited = report.remaining == 0;
    let flag = if limited {
        LIMITED
    } else {
        let spent = limit.capacity().saturating_sub(report.remaining).max(1);
        u64::from(spent.ilog2().min(7)) << SPENT_SHIFT
    };
    After {
        seen: (now & !FLAGS) | flag,
        expires_at: expires_at.max(now),
    }
}

/// `state`'s report for verdict `fit`, and what its entry notes ([`after`]).
#[inline]
fn reported(state: &State, limit: &Limit, fit: Fit, cost: u64, now: u64) -> (BucketState, After) {
    let (report, expires_at) = state.report_and_expiry(limit, fit, cost, now);
    let a = after(&report, limit, expires_at, now);
    (report, a)
}

/// [`Op::Charge`] of one bucket whose key the store holds: fit, add and report in one;
/// `false` (nothing done) if the key is not there, for [`Inner::apply_one`] to store it.
/// Every charge of a held key goes through here, the common request among them, which so
/// does not pay for the closures and arguments `apply_one` takes for every other call.
/// `before` sees the state as it is before the charge (brought up to `now`): the first
/// pass of a charge of several buckets records what puts it back there (a function of each
/// caller's own, so that a single bucket's path has nothing of it).
#[inline]
fn charge_held(
    shard: &mut Shard,
    p: &Placed,
    bucket: &Bucket,
    now: u64,
    mut before: impl FnMut(&State),
    out: &mut BucketState,
) -> bool {
    let (limit, cost) = (&bucket.limit, bucket.cost);
    // A closure of its own for each table (a macro), so that each is inlined where the
    // state's form is known and the matches on it fold away.
    macro_rules! charge {
        () => {
            |state: &mut State| {
                catch_up(state, limit, now);
                before(state);
                let expires_at = state.charge(limit, cost, now, out).1;
                ((), Some(after(out, limit, expires_at, now)))
            }
        };
    }
    // A token bucket's and an inline window's table looked up here, each with its own
    // closure (the common requests); the others as `Shard::update` finds them.
    let Shard {
        tat,
        window,
        boxed,
        parts,
        ..
    } = &mut *shard;
    match p.kind {
        Kind::Tat => update_in(tat, boxed, parts, p.hash, now, charge!()).is_ok(),
        Kind::Window if boxed.is_empty() => {
            update_in(window, boxed, parts, p.hash, now, charge!()).is_ok()
        }
        Kind::Window | Kind::Fixed | Kind::Boxed => shard.update(p, now, charge!()).is_some(),
    }
}

/// Brings the state up to `now`; a state of another algorithm (the limit changed) starts
/// afresh.
#[inline(always)]
fn catch_up(state: &mut State, limit: &Limit, now: u64) {
    if !state.fits_algorithm(limit) {
        *state = State::fresh(limit, now);
    }
    state.advance(limit, now);
}

impl Inner {
    /// Where `bucket`'s key lives: its hash, its shard and the table of its kind (the
    /// guard's index is set by a call that locks several shards).
    #[inline]
    fn place(&self, bucket: &Bucket) -> Placed {
        let hash = self.hasher.hash_one(bucket.key.as_bytes());
        Placed {
            hash,
            shard: self.shard_of(hash),
            guard: 0,
            kind: Kind::of(&bucket.limit),
            absent: false,
        }
    }

    /// The shard of a key with this hash. It comes from bits the table does not use to
    /// place keys (it uses the low bits for the position and the top 7 as a tag).
    fn shard_of(&self, hash: u64) -> usize {
        (hash >> SHARD_SHIFT) as usize & (self.shards.len() - 1)
    }

    /// The share of a bucket's name.
    fn name_hash(&self, bucket: &Bucket) -> u32 {
        self.hasher.hash_one(bucket.name().as_bytes()) as u32
    }

    /// What a bucket of a charge of several that another bucket refused reports: what a
    /// charge of it alone would answer (a new key without room says so), without charging
    /// it.
    fn look(&self, shard: &mut Shard, p: &Placed, bucket: &Bucket, now: u64) -> BucketState {
        let (limit, cost) = (&bucket.limit, bucket.cost);
        let found = shard.update(p, now, |state| {
            catch_up(state, limit, now);
            let fit = state.fit(limit, cost, now);
            let (report, a) = reported(state, limit, fit, cost, now);
            (report, Some(a))
        });
        found.unwrap_or_else(|| {
            let state = State::fresh(limit, now);
            let fit = match state.fit(limit, cost, now) {
                Fit::Now => match self.make_room(shard, bucket, now, None) {
                    Ok(_) => Fit::Now,
                    Err(wait) => Fit::Full(wait),
                },
                other => other,
            };
            state.report(limit, fit, cost, now)
        })
    }

    /// Applies `op` to one bucket and reports it in `out` (the caller's slot: a report
    /// returned through the table's update was copied at each step). `admitted`: every
    /// bucket of a charge of several admitted, so this one (a new key) is charged without
    /// deciding again. `held`, for the first pass of such a charge, is set to what puts the
    /// bucket back as it was if it admits; a new key is then only seen to fit and have
    /// room, and not stored. (Not inlined: a charge of a held key, the common request,
    /// goes through `charge_held`, and its caller's call frame is not made for this.)
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn apply_one(
        &self,
        shard: &mut Shard,
        p: &Placed,
        op: Op,
        bucket: &Bucket,
        admitted: bool,
        held: Option<&mut Held>,
        now: u64,
        out: &mut BucketState,
    ) {
        let (limit, cost) = (&bucket.limit, bucket.cost);
        if op == Op::Reset {
            shard.remove(p.hash);
            *out = State::fresh(limit, now).report(limit, Fit::Now, cost, now);
            return;
        }
        // What to answer for this bucket, and whether its state changes.
        let decide = |state: &State| match op {
            _ if admitted => (Fit::Now, true),
            Op::Charge => {
                let fit = state.fit(limit, cost, now);
                (fit, fit == Fit::Now)
            }
            Op::Peek => (state.fit(limit, cost, now), false),
            Op::Refund | Op::RefundAt(_) | Op::Penalize | Op::Reset => (Fit::Now, true),
        };
        // A held key's charge went through `charge_held`, which found this one absent.
        debug_assert!(op != Op::Charge || admitted || p.absent);
        let found = if p.absent {
            None
        } else {
            shard.update(p, now, |state| {
                catch_up(state, limit, now);
                let (fit, changes) = decide(state);
                if changes {
                    match op {
                        Op::Charge | Op::Penalize => state.add(limit, cost, now),
                        Op::Refund => state.sub(limit, cost, None, now),
                        Op::RefundAt(at) => state.sub(limit, cost, Some(at.as_micros()), now),
                        Op::Peek | Op::Reset => {}
                    }
                }
                let expires_at;
                (*out, expires_at) = state.report_and_expiry(limit, fit, cost, now);
                ((), Some(after(out, limit, expires_at, now)))
            })
        };
        if found.is_some() {
            return;
        }
        let mut state = State::fresh(limit, now);
        let (fit, changes) = decide(&state);
        if !(changes && matches!(op, Op::Charge | Op::Penalize)) {
            // Nothing to remember: a refusal or a peek of a fresh key, or a refund of
            // nothing.
            *out = state.report(limit, fit, cost, now);
            return;
        }
        // A charge (or a penalty) of a new key: make room first.
        let part = match self.make_room(shard, bucket, now, None) {
            Ok(part) => part,
            Err(wait) => {
                *out = state.report(limit, Fit::Full(wait), cost, now);
                return;
            }
        };
        if let Some(held) = held {
            // Stored, and reported, once every bucket of the charge admits (`held` stays
            // `New`); until then it only admits.
            debug_assert!(matches!(held, Held::New));
            *out = BucketState {
                allowed: true,
                ..BucketState::default()
            };
            return;
        }
        state.add(limit, cost, now);
        let a;
        (*out, a) = reported(&state, limit, fit, cost, now);
        if a.expires_at > now {
            shard.insert(p.hash, part, a.seen, state, a.expires_at);
        }
    }

    /// Puts a bucket a charge admitted back as it was `before` it (a later bucket of the
    /// same charge refused), and reports it as a look at it would.
    fn give_back(
        &self,
        shard: &mut Shard,
        p: &Placed,
        bucket: &Bucket,
        before: Held,
        now: u64,
    ) -> BucketState {
        let (limit, cost) = (&bucket.limit, bucket.cost);
        let found = match before {
            Held::Was(undo) => shard.update(p, now, |state| {
                state.undo(undo);
                let (report, a) = reported(state, limit, Fit::Now, cost, now);
                (report, Some(a))
            }),
            // Never stored: nothing to put back.
            Held::New => None,
        };
        found.unwrap_or_else(|| State::fresh(limit, now).report(limit, Fit::Now, cost, now))
    }

    /// Drops fresh entries from `shard`; returns how many, and the keys it kept of share
    /// `of` if one is given (for eviction to choose among: gathered in the same pass, so
    /// that a full share costs one look through the shard, whose tables hold every
    /// bucket's keys).
    fn sweep(&self, shard: &mut Shard, now: u64, of: Option<u8>) -> (usize, ShareKeys) {
        let mut share = ShareKeys {
            keys: Vec::with_capacity(of.map_or(0, |part| shard.held(part))),
            soonest: u64::MAX,
        };
        let parts = &mut shard.parts;
        let mut min = u64::MAX;
        let mut keep = |hash: u64, part: u8, seen: u64, at: u64| {
            let kept = at > now;
            if kept {
                min = min.min(at);
                if of == Some(part) {
                    share.keys.push(Picked { seen, hash });
                    share.soonest = share.soonest.min(at);
                }
            }
            kept
        };
        macro_rules! sweep {
            ($table:ident) => {
                retain_in(&mut shard.$table, parts, |s| {
                    keep(s.hash(), s.part(), s.seen(), s.kept.expires_at())
                })
            };
        }
        let gone = sweep!(tat) + sweep!(fixed) + sweep!(window) + sweep!(boxed);
        shard.swept_len = shard.len();
        // A share no longer full needs no keys chosen to evict (a look chooses again when
        // it is full again): their memory goes (a review: an eighth of a share's keys
        // stayed chosen after a purge emptied it).
        for share in &mut shard.parts {
            if (share.held as usize) < self.shard_cap && !share.victims.is_empty() {
                share.forget();
            }
        }
        shard.min_expiry = min;
        self.counters
            .expired
            .fetch_add(gone as u64, Ordering::Relaxed);
        (gone, share)
    }

    /// Counts a new key of `bucket` (whose name hashes to `name_hash`) refused because its
    /// share is full of keys at their limit, and warns about it at most once every
    /// [`FULL_WARNING_EVERY_US`] per bucket ([`FullWarnings`]): a full share refuses every
    /// new client of that bucket (a sign-in lockout refuses accounts it never saw), which
    /// an operator must hear about.
    fn refused_for_room(&self, bucket: &Bucket, name_hash: u32, now: u64) {
        self.counters.refused_full.fetch_add(1, Ordering::Relaxed);
        let Some(unreported) = self.counters.full_warned.due(name_hash, now) else {
            return;
        };
        tracing::warn!(
            target: "tollgate",
            bucket = bucket.name(),
            share = self.shard_cap * self.shards.len(),
            refused = unreported + 1,
            when_full = ?bucket.when_full,
            "the memory store refuses new keys of this bucket: its share is full of keys it \
             keeps (at their limit, or under WhenFull::KeepCounts still counting), so every \
             key it has not seen is refused until one of them expires (a caller may admit \
             such keys uncounted); raise max_entries, or choose WhenFull::EvictLimited for \
             this bucket"
        );
    }

    /// Refuses a new key of `bucket` (share `index` of `shard`) for want of room until
    /// `soonest`, when the first of the share's keys expires (remembered: until then, or
    /// until one of them changes, the share is not looked at again); the wait.
    fn refuse_for_room(
        &self,
        shard: &mut Shard,
        index: usize,
        bucket: &Bucket,
        soonest: u64,
        now: u64,
    ) -> u64 {
        self.refused_for_room(bucket, self.name_hash(bucket), now);
        let share = &mut shard.parts[index];
        share.forget();
        share.until = soonest;
        soonest.saturating_sub(now).max(1)
    }

    /// Makes room for one more key of `bucket`'s share in `shard`: drops fresh entries,
    /// then evicts the least recently seen eighth of the share's keys not at their limit.
    /// If every key of the share is at its limit, evicts the least recently seen
    /// sixty-fourth of them ([`WhenFull::EvictLimited`]) or answers how long until the
    /// first of them expires ([`WhenFull::RefuseNewKeys`]). Under [`WhenFull::KeepCounts`]
    /// it evicts nothing but fresh entries, and answers that wait once none is left.
    /// Returns the share.
    ///
    /// A count mirrored from another store ([`MemoryStore::mirror`]) brings `mirrored`, the
    /// [`FLAGS`] its entry will have: where the share would refuse it, it takes the place of
    /// keys that spent no more than it, those that spent least and were least recently
    /// seen first (a sixty-fourth of the share, at least one). Memory holds a copy of the
    /// other store's counts then, and the copy should hold the keys that spent most: a
    /// flood of keys each at one must not keep out a lockout reached since (a review: a
    /// locked account answered 10 of 10 through the fallback, its count never copied into
    /// a share that such a flood had filled).
    fn make_room(
        &self,
        shard: &mut Shard,
        bucket: &Bucket,
        now: u64,
        mirrored: Option<u64>,
    ) -> Result<u8, u64> {
        let name_hash = self.name_hash(bucket);
        let part = shard.part_of(name_hash);
        let len = shard.len();
        let full = shard.held(part) >= self.shard_cap;
        let index = usize::from(part);
        // Keys at their limit still to evict for this key: a batch goes each time a new
        // key finds the share full, whether the look's chosen keys last it out or not.
        let batch = (self.shard_cap / 64).max(1);
        let mut owed = None;
        // The share was looked through, full, and none of its keys changed since in a way
        // that makes room: until the soonest of them expires, a new key is refused, or
        // takes the place of the keys that look chose to evict.
        let looked = &shard.parts[index];
        if full && now < looked.until {
            if looked.victims.is_empty() {
                if mirrored.is_none() {
                    self.refused_for_room(bucket, name_hash, now);
                    return Err(looked.until - now);
                }
            } else if bucket.when_full == WhenFull::EvictLimited && now >= looked.looked_at {
                let gone = self.evict_chosen(shard, index, batch, true);
                if gone == batch {
                    return Ok(part);
                }
                // The chosen keys ran out (or were seen since) before a batch went: a look
                // evicts the rest, as one look would have evicted the whole batch.
                owed = Some(batch - gone);
            }
        }
        // Sweep when the shard doubled since the last sweep, or grew by an eighth and some
        // entry has expired since: amortized, a sweep costs a few steps per insert.
        let grown = len >= 2 * shard.swept_len + 64
            || (now >= shard.min_expiry && len >= shard.swept_len + shard.swept_len / 8 + 16);
        let mut share = ShareKeys::default();
        if grown || full {
            share = self.sweep(shard, now, full.then_some(part)).1;
        }
        if shard.held(part) < self.shard_cap && owed.is_none() {
            return Ok(part);
        }
        // (Still full after a sweep, or a batch is owed: it was full before, and the sweep
        // gathered its keys.)
        let ShareKeys {
            keys: mut seen,
            soonest,
        } = share;
        // Under `KeepCounts` every key left counts something (fresh ones were just swept):
        // none makes room but for a mirrored count (below).
        let keep = bucket.when_full == WhenFull::KeepCounts;
        let free = seen.iter().filter(|k| k.seen & LIMITED == 0).count();
        // Keys below their limit make room while they are an eighth of the share or more
        // (the least recently seen eighth goes). Fewer, the share counts as full of keys
        // at their limit: evicting its last few keys below their limit would let a few new
        // keys take turns in their slots, evicting each other before they reach their
        // limit and each counted afresh (50 addresses were admitted 45,100 requests
        // against 20 each once a flood had filled the share with limited ones).
        let eighth = (self.shard_cap / 8).max(1);
        // How many keys to choose (those that spent least and were least recently seen),
        // how many of them go now, and whether the rest are kept for later new keys
        // ([`Part::victims`]).
        let (chosen, now_gone, limited) = if !keep && free >= eighth {
            (eighth, eighth, false)
        } else if !keep && bucket.when_full == WhenFull::EvictLimited {
            // A batch of limited keys goes now, and the next ones are chosen with it: up to
            // an eighth of the share, evicted a batch at a time by the new keys to come.
            seen.retain(|k| k.seen & LIMITED != 0);
            (eighth, owed.unwrap_or(batch), true)
        } else if let Some(flags) = mirrored {
            // A mirrored count takes the place of keys that spent no more than it: a
            // sixty-fourth of the share (at least one), those that spent least and were
            // least recently seen first.
            seen.retain(|k| k.seen & FLAGS <= flags);
            if seen.is_empty() {
                return Err(self.refuse_for_room(shard, index, bucket, soonest, now));
            }
            (batch, batch, false)
        } else {
            return Err(self.refuse_for_room(shard, index, bucket, soonest, now));
        };
        if seen.is_empty() {
            return Ok(part);
        }
        let nth = chosen.min(seen.len()) - 1;
        seen.select_nth_unstable_by_key(nth, |k| k.seen);
        seen.truncate(nth + 1);
        let share = &mut shard.parts[index];
        if limited {
            // Kept for the new keys to come (the others all go now): no larger than the
            // keys chosen (it was made for the whole share), taken from the end, the least
            // recently seen last. A key seen after the last chosen one ranks after them all.
            seen.shrink_to_fit();
            seen.sort_unstable_by_key(|k| std::cmp::Reverse(k.seen));
            let last_seen = seen.first().map_or(0, |k| k.seen & !FLAGS);
            (share.until, share.looked_at) = (soonest, now.max(last_seen));
        }
        share.victims = seen;
        self.evict_chosen(shard, index, now_gone, limited);
        shard.swept_len = shard.len();
        Ok(part)
    }

    /// Evicts up to `batch` keys the share's last look chose ([`Part::victims`]), from the
    /// end (`limited`: keys at their limit, counted as such); a key seen since is passed
    /// over. Returns how many went; when none is left to choose, the look is over.
    fn evict_chosen(&self, shard: &mut Shard, index: usize, batch: usize, limited: bool) -> usize {
        let mut evicted = 0;
        while evicted < batch {
            let Some(key) = shard.parts[index].victims.pop() else {
                break;
            };
            evicted += usize::from(shard.remove_if(key.hash, |seen| seen == key.seen));
        }
        if shard.parts[index].victims.is_empty() {
            shard.parts[index].forget();
        }
        self.counters
            .evicted
            .fetch_add(evicted as u64, Ordering::Relaxed);
        if limited {
            self.counters
                .evicted_limited
                .fetch_add(evicted as u64, Ordering::Relaxed);
        }
        evicted
    }
}

/// A shard's lock on a cache line of its own, so that threads working in different
/// shards do not invalidate each other's lines.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded(Mutex<Shard>);

/// Locks a shard.
fn lock(shard: &Padded) -> MutexGuard<'_, Shard> {
    shard.0.lock()
}

/// Locks a shard if no one holds it.
fn try_lock(shard: &Padded) -> Option<MutexGuard<'_, Shard>> {
    shard.0.try_lock()
}

impl Store for MemoryStore {
    fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
        let result = batch
            .validate()
            .map(|()| self.decide(batch.op, &batch.buckets));
        Box::pin(std::future::ready(result))
    }

    fn apply_sync(
        &self,
        op: Op,
        buckets: &[Bucket],
        states: &mut [BucketState],
    ) -> Option<Result<Timestamp, StoreError>> {
        if states.len() != buckets.len() {
            return Some(Err(StoreError::InvalidBatch(
                "one state per bucket is needed",
            )));
        }
        Some(validate_buckets(op, buckets).map(|()| self.apply_into(op, buckets, states)))
    }
}

// What one key costs in its table (plus a control byte per slot); see the module docs.
const _: () = assert!(std::mem::size_of::<Slot<Tat>>() == 28);
const _: () = assert!(std::mem::size_of::<Slot<Fixed>>() == 40);
const _: () = assert!(std::mem::size_of::<Slot<Boxed>>() == 32);
const _: () = assert!(std::mem::size_of::<Slot<Window>>() == 128);

#[cfg(test)]
mod tests {
    use super::{FullWarnings, FULL_WARNED_SHARES, FULL_WARNING_EVERY_US};

    /// Each bucket's full share is warned about on its own schedule, with its own count;
    /// past [`FULL_WARNED_SHARES`] buckets, the rest share one.
    #[test]
    fn full_shares_are_warned_about_per_bucket() {
        let warnings = FullWarnings::default();
        let later = 1 + FULL_WARNING_EVERY_US;
        assert_eq!(warnings.due(7, 1), Some(0));
        assert_eq!(warnings.due(7, 2), None);
        assert_eq!(warnings.due(7, 3), None);
        // Another bucket (on the same place: hashes equal modulo the places) is not held
        // back by the first's warning.
        let same_place = 7 + FULL_WARNED_SHARES as u32;
        assert_eq!(warnings.due(same_place, 3), Some(0));
        assert_eq!(warnings.due(7, later), Some(2));
        assert_eq!(warnings.due(same_place, later + 2), Some(0));
        // Every place taken (two above, these): the others share one warning.
        for hash in 1000..1000 + FULL_WARNED_SHARES as u32 - 2 {
            assert_eq!(warnings.due(hash, 5), Some(0), "{hash}");
        }
        assert_eq!(warnings.due(u32::MAX, 5), Some(0));
        assert_eq!(warnings.due(u32::MAX - 1, 6), None);
        assert_eq!(warnings.due(7, later + 3), None, "still its own");
    }
}
