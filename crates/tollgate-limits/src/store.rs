//! The [`Store`] trait: where bucket state lives (memory, Redis), and what one call asks.
//!
//! ```
//! use tollgate_limits::{Batch, Bucket, Limit, MemoryStore, Quota, Store};
//!
//! # fn main() { futures_lite_block_on(async {
//! let store = MemoryStore::new();
//! let per_ip = Bucket::new("default", "ip:203.0.113.7", Limit::sliding(Quota::per_minute(2)));
//! let global = Bucket::new("global", "all", Limit::sliding(Quota::per_minute(1000)));
//! let batch = Batch::charge(vec![per_ip, global]);
//! assert!(store.apply(&batch).await.unwrap().allowed);
//! assert!(store.apply(&batch).await.unwrap().allowed);
//! let third = store.apply(&batch).await.unwrap();
//! assert!(!third.allowed);
//! assert_eq!(third.buckets[1].remaining, 998); // the refusal charged no bucket
//! # }); }
//! # fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     let waker = std::task::Waker::noop();
//! #     let mut cx = std::task::Context::from_waker(&waker);
//! #     let mut f = std::pin::pin!(f);
//! #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
//! # }
//! ```

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::clock::Timestamp;
use crate::decision::{BucketState, Decision};
use crate::limit::Limit;

/// A boxed, `Send` future: what [`Store`] methods return, so stores can be used as
/// `dyn Store`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One bucket of a request: whose budget (`key`), under which limit, at what cost.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Bucket {
    /// The bucket's full key, `<bucket name>:<key>` (see [`Bucket::new`]). Stores may add a
    /// prefix. State is per key: two limits must not share a key.
    pub key: StoreKey,
    /// The limit the key spends against.
    pub limit: Limit,
    /// What the request costs in this bucket (points); at least 1 for a charge.
    pub cost: u64,
    /// What a bounded store does when this bucket's share is full of keys at their limit
    /// and a new key comes.
    pub when_full: WhenFull,
    /// The length of the bucket name at the start of `key`.
    name_len: u16,
}

impl Bucket {
    /// A bucket named `name` for the key `key` (an IP, a user id, a hashed API key), at a
    /// cost of 1. The store key is `name:key`. Short keys are held inline: building one
    /// does not allocate.
    pub fn new(name: &str, key: &str, limit: Limit) -> Self {
        let mut full = Self::key_prefix(name);
        full.push_str(key);
        Self::from_key(full, name.len(), limit)
    }

    /// `name:`, the start of the store key of every bucket named `name`: written once,
    /// a caller that makes many of them ([`Bucket::from_key`]) adds each key to a copy.
    ///
    /// ```
    /// use tollgate_limits::{Bucket, Limit, Quota};
    ///
    /// let limit = Limit::sliding(Quota::per_minute(10));
    /// let mut key = Bucket::key_prefix("default:ip");
    /// key.push_str("203.0.113.7");
    /// let bucket = Bucket::from_key(key, "default:ip".len(), limit.clone());
    /// assert_eq!(bucket, Bucket::new("default:ip", "203.0.113.7", limit));
    /// ```
    pub fn key_prefix(name: &str) -> StoreKey {
        let mut prefix = StoreKey::new();
        prefix.push_str(name);
        prefix.push_str(":");
        prefix
    }

    /// A bucket whose full key `<name>:<key>` is already written, the name being its first
    /// `name_len` bytes.
    pub fn from_key(key: StoreKey, name_len: usize, limit: Limit) -> Self {
        Self {
            name_len: u16::try_from(name_len.min(key.len())).unwrap_or(u16::MAX),
            key,
            limit,
            cost: 1,
            when_full: WhenFull::default(),
        }
    }

    /// The bucket's name (the part of [`Bucket::key`] before the client's key). A bounded
    /// store keeps each name's keys within a share of its own.
    pub fn name(&self) -> &str {
        self.key
            .as_str()
            .get(..usize::from(self.name_len))
            .unwrap_or_default()
    }

    /// The same bucket at another cost.
    pub fn with_cost(mut self, cost: u64) -> Self {
        self.cost = cost;
        self
    }

    /// The same bucket with another [`WhenFull`].
    pub fn with_when_full(mut self, when_full: WhenFull) -> Self {
        self.when_full = when_full;
        self
    }
}

/// What a bounded store (the [`MemoryStore`](crate::MemoryStore)) does when a new key of a
/// bucket comes and the bucket's share of the store is full of keys at their limit (after
/// dropping every key whose state is fresh and every key not at its limit that it could).
///
/// A key at its limit (nothing remaining) is never evicted to make room under
/// [`WhenFull::RefuseNewKeys`], so a flood of invented keys cannot unlock a client that is
/// being refused for having nothing left (a sign-in lockout stays locked). The price is
/// that new keys of that bucket are refused until room frees up. A key refused a request
/// that costs more than it has left is not at its limit: it ranks by what it spent, as
/// below (a flood spending 1 point a key and then asking for more than it has must not
/// count as keys at their limit). So a client of a points API with less left than one
/// request costs is refused but evictable, by a flood that spends about what the client
/// spent (up to 128) on each of as many keys as the share holds. [`WhenFull::EvictLimited`] serves new keys instead, at the risk of forgetting a
/// limited key (it then starts afresh).
///
/// Which to choose depends on what a key costs a client. Keys anyone can invent for free
/// (e-mails, unchecked API keys) want `RefuseNewKeys`, so that inventing them never frees a
/// locked one. Keys that cost a client a real host (client addresses) usually want
/// `EvictLimited`: refusing every address the store has not seen lets a flood of addresses
/// turn every new client away until the window passes, while the address still sending is
/// the most recently seen and is evicted last.
///
/// Keys below their limit are evicted under both (the least recently seen first), so a
/// flood of as many keys as the share holds wipes the partial counts of keys that stopped
/// sending: a lockout at 4 of 5 is back at 0, and a guesser who floods between guesses
/// gets 4 more each time. [`WhenFull::KeepCounts`] evicts nothing that still counts, for
/// buckets where a partial count is what protects someone (a sign-in lockout per account).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum WhenFull {
    /// Refuse the new key (a refusal with [`Refusal::StoreFull`](crate::Refusal::StoreFull)
    /// and the time until the first held key expires). The default.
    #[default]
    RefuseNewKeys,
    /// Evict the least recently seen keys at their limit.
    EvictLimited,
    /// Evict nothing that still counts: once the share holds only keys whose state is not
    /// yet fresh, refuse the new key ([`Refusal::StoreFull`](crate::Refusal::StoreFull), with
    /// the time until the first held key expires). A flood of invented keys then cannot
    /// wipe a partial count; the price is that a flood of as many keys as the share holds,
    /// each counted once, refuses every new key until they expire (the caller may count
    /// such keys another way: the demo counts them per client network).
    KeepCounts,
}

/// The length of the longest key a [`StoreKey`] holds without allocating.
pub const INLINE_KEY: usize = 62;

/// A store key (`<bucket name>:<key>`): a string held inline up to [`INLINE_KEY`] bytes, so
/// that building the buckets of a request does not allocate. Reads as a `&str`.
#[derive(Clone)]
pub struct StoreKey(KeyRepr);

#[derive(Clone)]
enum KeyRepr {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(String),
}

impl StoreKey {
    /// An empty key.
    pub const fn new() -> Self {
        Self(KeyRepr::Inline {
            len: 0,
            bytes: [0; INLINE_KEY],
        })
    }

    /// Appends `s`.
    #[inline]
    pub fn push_str(&mut self, s: &str) {
        self.push_utf8(s.as_bytes());
    }

    /// Appends `s` if it is ASCII (checked a word at a time, where reading it as `&str`
    /// first would validate it as UTF-8); returns whether it did.
    pub fn push_ascii(&mut self, s: &[u8]) -> bool {
        let ascii = s.is_ascii();
        if ascii {
            self.push_utf8(s);
        }
        ascii
    }

    /// Appends `s`, which is UTF-8. (Inlined, with only the copy into an inline key: a
    /// key building up (a request's) had the heap's path's call frame set up at each.)
    #[inline]
    fn push_utf8(&mut self, s: &[u8]) {
        if let KeyRepr::Inline { len, bytes } = &mut self.0 {
            let at = usize::from(*len);
            if let Some(room) = bytes.get_mut(at..at + s.len()) {
                room.copy_from_slice(s);
                // At most INLINE_KEY (62): fits.
                *len = (at + s.len()) as u8;
                return;
            }
        }
        self.push_on_heap(s);
    }

    /// Appends `s` (UTF-8) to a key held on the heap, or too long for the inline one (which
    /// moves to the heap).
    #[cold]
    #[inline(never)]
    fn push_on_heap(&mut self, s: &[u8]) {
        match &mut self.0 {
            KeyRepr::Inline { len, bytes } => {
                let at = usize::from(*len);
                let mut heap = String::with_capacity(at + s.len());
                heap.push_str(inline_str(bytes, at));
                heap.push_str(&String::from_utf8_lossy(s));
                self.0 = KeyRepr::Heap(heap);
            }
            KeyRepr::Heap(heap) => heap.push_str(&String::from_utf8_lossy(s)),
        }
    }

    /// Shortens the key to at most `len` bytes: to the last character boundary at or
    /// before `len` (a character is never cut), whatever the key's length. (Inlined: a
    /// caller that reuses a bucket's key, `truncate(0)` then `push_str` per request, has
    /// it fold to setting the length.)
    #[inline]
    pub fn truncate(&mut self, len: usize) {
        // On the bytes: reading the key as `&str` validated it as UTF-8 each time (most of
        // what a caller that reuses a bucket, `truncate(0)` then `push_str`, paid per
        // request). The key is UTF-8, so a boundary is where no continuation byte
        // (`0b10xx_xxxx`) starts.
        let bytes = self.as_bytes();
        if len >= bytes.len() {
            return;
        }
        let len = (0..=len)
            .rev()
            .find(|&i| i == 0 || (bytes[i] as i8) >= -0x40)
            .unwrap_or(0);
        match &mut self.0 {
            KeyRepr::Inline { len: l, .. } => *l = u8::try_from(len).unwrap_or(u8::MAX),
            KeyRepr::Heap(heap) => heap.truncate(len),
        }
    }

    /// The key.
    #[inline]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            KeyRepr::Inline { len, bytes } => inline_str(bytes, usize::from(*len)),
            KeyRepr::Heap(heap) => heap,
        }
    }

    /// The key's length in bytes (without reading it as text, as `str::len` through
    /// `Deref` would).
    #[inline]
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the key is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }

    /// The key's bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            KeyRepr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            KeyRepr::Heap(heap) => heap.as_bytes(),
        }
    }
}

/// The first `len` bytes of an inline key: only whole `&str`s are ever copied in, and
/// `truncate` cuts at char boundaries.
fn inline_str(bytes: &[u8], len: usize) -> &str {
    let bytes = &bytes[..len];
    std::str::from_utf8(bytes).unwrap_or_else(|e| {
        // Unreachable for keys written through this type's methods; stay total anyway.
        std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default()
    })
}

impl Default for StoreKey {
    fn default() -> Self {
        Self::new()
    }
}

impl std::ops::Deref for StoreKey {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for StoreKey {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for StoreKey {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for StoreKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for StoreKey {}

impl PartialEq<str> for StoreKey {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for StoreKey {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl std::hash::Hash for StoreKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Write for StoreKey {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_str(s);
        Ok(())
    }
}

impl From<&str> for StoreKey {
    fn from(s: &str) -> Self {
        let mut key = Self::new();
        key.push_str(s);
        key
    }
}

impl From<String> for StoreKey {
    fn from(s: String) -> Self {
        if s.len() <= INLINE_KEY {
            Self::from(s.as_str())
        } else {
            Self(KeyRepr::Heap(s))
        }
    }
}

impl From<StoreKey> for String {
    fn from(k: StoreKey) -> Self {
        match k.0 {
            KeyRepr::Heap(s) => s,
            inline @ KeyRepr::Inline { .. } => StoreKey(inline).as_str().to_string(),
        }
    }
}

/// What a call does with its buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Admit iff every bucket admits its cost, and then charge every bucket; a refusal
    /// charges none.
    Charge,
    /// Say what [`Op::Charge`] would answer, changing nothing. One exception: a key a
    /// bounded store does not hold yet is answered by its count alone; whether the store
    /// has room for it ([`Refusal::StoreFull`](crate::Refusal::StoreFull)) is found only by
    /// a charge, which may have to make room.
    Peek,
    /// Give each bucket's cost back, newest counts first (a refund that does not know when
    /// the charge it undoes was made).
    Refund,
    /// Give back each bucket's cost charged by the call this store answered at the given
    /// time (that charge's [`Decision::now`](crate::Decision::now)), from what that charge
    /// counted: its fixed window, its sliding window's segment, its log entry, or, for a
    /// token bucket, its cost's time less the time since the charge (what refilled since
    /// may have gone to newer charges: a response slower than its cost's time gives a
    /// token bucket nothing back, even if the bucket was not full then and the charge not
    /// yet refilled). A charge that no longer counts (its
    /// window or segment over, its entry out of the log) gives nothing back, so a refund
    /// that comes late never frees room a newer charge took. (After a response that should
    /// not count: a 304, a sign-in that succeeded under a count-only-failures policy.)
    RefundAt(Timestamp),
    /// Charge each bucket's cost whether or not it fits (a penalty). Always "admitted".
    Penalize,
    /// Forget the buckets' state entirely.
    Reset,
}

/// What a store that cannot reach its backend should do for this call. Only stores that
/// can fail (Redis, the fallback store) read it; the memory store never fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum FailureMode {
    /// Answer from the fallback (memory) store, if the store has one (the default).
    #[default]
    Fallback,
    /// Return [`StoreError`]; the caller admits the request without rate-limit headers.
    Open,
    /// Return [`StoreError`]; the caller refuses the request (503).
    Closed,
}

/// One call to a store: an operation on every bucket of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// What to do.
    pub op: Op,
    /// The buckets, in the order the [`Decision`] answers them.
    pub buckets: Vec<Bucket>,
    /// What to do if the store's backend is unreachable.
    pub on_failure: FailureMode,
}

impl Batch {
    /// A batch doing `op` on `buckets`, falling back on failure.
    pub fn new(op: Op, buckets: Vec<Bucket>) -> Self {
        Self {
            op,
            buckets,
            on_failure: FailureMode::Fallback,
        }
    }

    /// [`Op::Charge`] on `buckets`.
    pub fn charge(buckets: Vec<Bucket>) -> Self {
        Self::new(Op::Charge, buckets)
    }

    /// Rejects batches no store should act on: no buckets, a charge of cost 0, or the same
    /// key twice.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidBatch`].
    pub fn validate(&self) -> Result<(), StoreError> {
        validate_buckets(self.op, &self.buckets)
    }

    /// The same batch with another failure mode.
    pub fn with_failure_mode(mut self, mode: FailureMode) -> Self {
        self.on_failure = mode;
        self
    }
}

/// [`Batch::validate`] for `op` on `buckets`.
///
/// # Errors
///
/// [`StoreError::InvalidBatch`].
#[inline]
pub fn validate_buckets(op: Op, buckets: &[Bucket]) -> Result<(), StoreError> {
    if buckets.is_empty() {
        return Err(StoreError::InvalidBatch(
            "a batch needs at least one bucket",
        ));
    }
    if op == Op::Charge && buckets.iter().any(|b| b.cost == 0) {
        return Err(StoreError::InvalidBatch("a charge must cost at least 1"));
    }
    // The same key twice would be checked twice against one state and could admit over
    // its limit; a request names each bucket once.
    let duplicate = buckets.len() > 1
        && buckets
            .iter()
            .enumerate()
            .any(|(i, b)| buckets[..i].iter().any(|a| a.key == b.key));
    if duplicate {
        return Err(StoreError::InvalidBatch("a batch names the same key twice"));
    }
    Ok(())
}

/// Why a store could not answer. Never a refusal: a store that fails has not decided.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend did not answer in time.
    #[error("rate-limit store did not answer within {0:?}")]
    Timeout(Duration),
    /// The backend is known to be down (e.g. a circuit breaker is open).
    #[error("rate-limit store unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with an error, or the connection failed.
    #[error("rate-limit store error: {0}")]
    Backend(#[source] Box<dyn StdError + Send + Sync>),
    /// The backend's answer could not be understood.
    #[error("rate-limit store answered something unexpected: {0}")]
    Protocol(String),
    /// The batch itself is wrong (e.g. no buckets, or a cost of zero to charge).
    #[error("invalid rate-limit batch: {0}")]
    InvalidBatch(&'static str),
}

/// Where bucket state lives. Implemented by [`MemoryStore`](crate::MemoryStore) and by
/// tollgate-redis's stores; all give the same answers for the same sequence of calls and
/// times (the algorithms are described on [`Algorithm`](crate::Algorithm)).
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Applies `batch` to its buckets, atomically: a [`Op::Charge`] that any bucket refuses
    /// charges no bucket.
    fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>>;

    /// The same as [`Store::apply`] for a store that can answer without waiting (the memory
    /// store): applies `op` to `buckets` now, writes one state per bucket into `states`
    /// (as long as `buckets`), and returns the time it decided at. `None` (the default)
    /// means "ask [`Store::apply`]": a store that may wait on a network never answers here.
    /// The caller has validated the buckets ([`Batch::validate`]).
    fn apply_sync(
        &self,
        op: Op,
        buckets: &[Bucket],
        states: &mut [BucketState],
    ) -> Option<Result<Timestamp, StoreError>> {
        let _ = (op, buckets, states);
        None
    }

    // --- store mode (for operators: where decisions are made now) -----------------------

    /// Where this store decides now: [`StoreMode::Memory`] unless the store says otherwise.
    /// Stores that share state between processes override it (the Redis store answers
    /// [`StoreMode::Shared`]; the fallback store [`StoreMode::Fallback`] while its primary
    /// is failing), and wrappers forward it.
    fn mode(&self) -> StoreMode {
        StoreMode::Memory
    }

    /// How many times this store has switched to deciding from its memory fallback since
    /// it was made: 0 unless the store says otherwise (the fallback store counts its
    /// departures from its primary), and wrappers forward it. Counted where the switch is
    /// made, so each counts once, however the answers around it interleave.
    fn fallbacks(&self) -> u64 {
        0
    }
}

impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
        (**self).apply(batch)
    }

    fn apply_sync(
        &self,
        op: Op,
        buckets: &[Bucket],
        states: &mut [BucketState],
    ) -> Option<Result<Timestamp, StoreError>> {
        (**self).apply_sync(op, buckets, states)
    }

    fn mode(&self) -> StoreMode {
        (**self).mode()
    }

    fn fallbacks(&self) -> u64 {
        (**self).fallbacks()
    }
}

impl<S: Store + ?Sized> Store for Box<S> {
    fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
        (**self).apply(batch)
    }

    fn apply_sync(
        &self,
        op: Op,
        buckets: &[Bucket],
        states: &mut [BucketState],
    ) -> Option<Result<Timestamp, StoreError>> {
        (**self).apply_sync(op, buckets, states)
    }

    fn mode(&self) -> StoreMode {
        (**self).mode()
    }

    fn fallbacks(&self) -> u64 {
        (**self).fallbacks()
    }
}

// --- store mode -------------------------------------------------------------------------

/// Where a [`Store`] makes its decisions now ([`Store::mode`]), for operators and health
/// pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreMode {
    /// In this process's memory: each process counts alone.
    Memory,
    /// In a store shared by every process (Redis).
    Shared,
    /// In memory, because the shared store is failing; each process counts alone until it
    /// is back.
    Fallback,
}

impl StoreMode {
    /// `memory`, `shared` or `fallback`.
    pub const fn as_str(self) -> &'static str {
        match self {
            StoreMode::Memory => "memory",
            StoreMode::Shared => "shared",
            StoreMode::Fallback => "fallback",
        }
    }
}

impl fmt::Display for StoreMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cut inside a character goes back to its start, inline or on the heap alike (a
    /// review: a long key panicked, a short one read `a` beside a length of 2).
    #[test]
    fn truncating_never_cuts_a_character() {
        for tail in ["", &"x".repeat(100)] {
            let mut key = StoreKey::from(format!("a\u{e9}{tail}").as_str());
            key.truncate(2);
            assert_eq!((key.as_str(), key.len()), ("a", 1), "{tail}");
            key.truncate(5);
            assert_eq!(key.as_str(), "a");
        }
    }

    /// A key reads as what was appended, held inline or (past [`INLINE_KEY`]) on the heap;
    /// `push_ascii` appends ASCII only, and leaves the key alone otherwise.
    #[test]
    fn a_key_reads_as_what_was_appended() {
        let mut key = StoreKey::new();
        let mut expected = String::new();
        for (i, part) in ["default:ip", ":", "203.0.113.7", "-", "é", "x"]
            .iter()
            .cycle()
            .take(40)
            .enumerate()
        {
            if i % 2 == 0 {
                key.push_str(part);
                expected.push_str(part);
            } else {
                let ascii = key.push_ascii(part.as_bytes());
                assert_eq!(ascii, part.is_ascii(), "{part:?}");
                if ascii {
                    expected.push_str(part);
                }
            }
            assert_eq!(key.as_str(), expected);
            assert_eq!(key.len(), expected.len());
        }
        assert!(expected.len() > INLINE_KEY, "the key went to the heap");
        assert!(!key.push_ascii(&[0xff]));
        assert_eq!(key.as_str(), expected);
    }
}
