//! The engine of [tollgate](https://docs.rs/tollgate): quotas, rate-limit algorithms,
//! decisions over several buckets at once, the [`Store`] trait and the in-memory store.
//! No HTTP, no async runtime.
//!
//! ```
//! use tollgate_limits::{Bucket, Limit, MemoryStore, Quota};
//!
//! let store = MemoryStore::new();
//! let per_ip = Limit::sliding(Quota::parse("500/min")?);
//! let per_user = Limit::sliding(Quota::parse("10000/h")?);
//! let buckets = [
//!     Bucket::new("default:ip", "203.0.113.7", per_ip),
//!     Bucket::new("default:user", "u_42", per_user),
//! ];
//! let decision = store.charge(&buckets)?;
//! assert!(decision.allowed);
//! assert_eq!(decision.buckets[0].remaining, 499);
//! assert_eq!(decision.most_restrictive(), Some(0));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! - [`Quota`]: "N per period", parsed from `100/min`, `20/15m`, `10000/day`.
//! - [`Limit`]: a quota and its [`Algorithm`]: rolling window (segmented or exact), token
//!   bucket (burst + sustained), fixed calendar window.
//! - [`Store`]: applies a [`Batch`] ([`Op::Charge`], peek, refund, penalize, reset) to all the
//!   buckets of a request atomically, answering a [`Decision`].
//! - [`MemoryStore`]: sharded, exact under concurrency, bounded in memory.
//! - [`Clock`]: what the store reads the time from; [`ManualClock`] for tests.

mod algorithm;
pub mod clock;
pub mod decision;
pub mod limit;
pub mod memory;
pub mod quota;
pub mod redact;
pub mod sampled;
pub mod store;

#[cfg(feature = "serde")]
mod serde_impls;

pub use clock::{Clock, FastClock, ManualClock, SystemClock, Timestamp};
pub use decision::{most_restrictive, BucketState, Decision, Refusal};
pub use limit::{Algorithm, Limit, DEFAULT_SEGMENTS};
pub use memory::{MemoryStats, MemoryStore, MemoryStoreBuilder, DEFAULT_MAX_ENTRIES};
pub use quota::{Quota, QuotaError, MAX_COUNT, MAX_PERIOD};
pub use sampled::Sampled;
pub use store::{
    validate_buckets, Batch, BoxFuture, Bucket, FailureMode, Op, Store, StoreError, StoreKey,
    StoreMode, WhenFull, INLINE_KEY,
};
