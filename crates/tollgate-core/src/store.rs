//! The [`Store`] trait: where bucket state lives (memory, Redis), and what one call asks.
//!
//! ```
//! use tollgate_core::{Batch, Bucket, Limit, MemoryStore, Quota, Store};
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

use crate::decision::Decision;
use crate::limit::Limit;

/// A boxed, `Send` future: what [`Store`] methods return, so stores can be used as
/// `dyn Store`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One bucket of a request: whose budget (`key`), under which limit, at what cost.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Bucket {
    /// The bucket's full key, `<bucket name>:<key>` (see [`Bucket::new`]). Stores may add a
    /// prefix. State is per key: two limits must not share a key.
    pub key: String,
    /// The limit the key spends against.
    pub limit: Limit,
    /// What the request costs in this bucket (points); at least 1 for a charge.
    pub cost: u64,
}

impl Bucket {
    /// A bucket named `name` for the key `key` (an IP, a user id, a hashed API key), at a
    /// cost of 1. The store key is `name:key`.
    pub fn new(name: &str, key: &str, limit: Limit) -> Self {
        let mut full = String::with_capacity(name.len() + 1 + key.len());
        full.push_str(name);
        full.push(':');
        full.push_str(key);
        Self {
            key: full,
            limit,
            cost: 1,
        }
    }

    /// The same bucket at another cost.
    pub fn with_cost(mut self, cost: u64) -> Self {
        self.cost = cost;
        self
    }
}

/// What a call does with its buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Admit iff every bucket admits its cost, and then charge every bucket; a refusal
    /// charges none.
    Charge,
    /// Say what [`Op::Charge`] would answer, changing nothing.
    Peek,
    /// Give each bucket's cost back (after a response that should not count).
    Refund,
    /// Charge each bucket's cost whether or not it fits (a penalty). Always "admitted".
    Penalize,
    /// Forget the buckets' state entirely.
    Reset,
}

/// What a store that cannot reach its backend should do for this call. Only stores that
/// can fail (Redis, the fallback store) read it; the memory store never fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
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
        if self.buckets.is_empty() {
            return Err(StoreError::InvalidBatch(
                "a batch needs at least one bucket",
            ));
        }
        if self.op == Op::Charge && self.buckets.iter().any(|b| b.cost == 0) {
            return Err(StoreError::InvalidBatch("a charge must cost at least 1"));
        }
        // The same key twice would be checked twice against one state and could admit
        // over its limit; a request names each bucket once.
        let duplicate = self
            .buckets
            .iter()
            .enumerate()
            .any(|(i, b)| self.buckets[..i].iter().any(|a| a.key == b.key));
        if duplicate {
            return Err(StoreError::InvalidBatch("a batch names the same key twice"));
        }
        Ok(())
    }

    /// The same batch with another failure mode.
    pub fn with_failure_mode(mut self, mode: FailureMode) -> Self {
        self.on_failure = mode;
        self
    }
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

    // --- store mode (for operators: where decisions are made now) -----------------------

    /// Where this store decides now: [`StoreMode::Memory`] unless the store says otherwise.
    /// Stores that share state between processes override it (the Redis store answers
    /// [`StoreMode::Shared`]; the fallback store [`StoreMode::Fallback`] while its primary
    /// is failing), and wrappers forward it.
    fn mode(&self) -> StoreMode {
        StoreMode::Memory
    }
}

impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
        (**self).apply(batch)
    }

    fn mode(&self) -> StoreMode {
        (**self).mode()
    }
}

impl<S: Store + ?Sized> Store for Box<S> {
    fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
        (**self).apply(batch)
    }

    fn mode(&self) -> StoreMode {
        (**self).mode()
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
