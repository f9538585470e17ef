//! What a store answers: per bucket and overall, admitted or not, and the numbers the
//! rate-limit headers are made of.

use std::time::Duration;

use crate::clock::Timestamp;

/// Why a bucket refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The bucket has too little left now; [`BucketState::retry_after`] says how long to wait.
    OverLimit,
    /// The request costs more than the bucket can ever hold; waiting will not help.
    CostExceedsCapacity {
        /// What the request costs.
        cost: u64,
        /// The most the bucket can admit at once ([`Limit::capacity`](crate::Limit::capacity)).
        capacity: u64,
    },
    /// A new key of this bucket could not be stored: the bucket's share of a bounded store
    /// is full of keys at their limit ([`WhenFull::RefuseNewKeys`](crate::WhenFull)).
    /// [`BucketState::retry_after`] says when the first of them expires; the state says
    /// nothing remains ([`BucketState::remaining`] 0) until then at least
    /// ([`BucketState::reset_after`] no sooner than the retry).
    StoreFull,
}

/// One bucket's answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BucketState {
    /// Whether this bucket admits the request.
    pub allowed: bool,
    /// The quota's count (the sustained count for a token bucket): what headers call the limit.
    pub limit: u64,
    /// What is left after this call (after the charge if the request was admitted; as it
    /// was if it was refused).
    pub remaining: u64,
    /// How long until the bucket is back to its full state (nothing counted against it);
    /// for a fixed window, until its window ends, even when it counts nothing (the window
    /// resets at its end whatever it holds).
    pub reset_after: Duration,
    /// Set when the bucket refused and waiting helps: how long until this request would
    /// be admitted (never zero).
    pub retry_after: Option<Duration>,
    /// Set when the bucket refused.
    pub refusal: Option<Refusal>,
}

/// The answer for every bucket of a request, in the order the buckets were given.
///
/// `#[must_use]`: a refusal is a decision with `allowed: false`, not an error, so a
/// decision dropped unread (`limiter.check(..).await?;`) would admit every request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a refused request is a `Decision` with `allowed: false`: read it, or nothing is limited"]
pub struct Decision {
    /// Admitted only if every bucket admitted. A refused request charged no bucket.
    pub allowed: bool,
    /// The time the store decided at (for the Redis store, the Redis server's clock, or the
    /// instance's when the request includes a fixed window), to turn `reset_after` into an
    /// absolute time.
    pub now: Timestamp,
    /// One state per bucket.
    pub buckets: Vec<BucketState>,
}

impl Decision {
    /// The index of the bucket headers should describe: when refused, the refusing bucket
    /// with the longest wait (one that can never admit beats any wait); when admitted, the
    /// bucket with the least remaining (the later reset on a tie). `None` for no buckets.
    pub fn most_restrictive(&self) -> Option<usize> {
        most_restrictive(self.allowed, &self.buckets)
    }

    /// The most restrictive bucket's state.
    pub fn most_restrictive_state(&self) -> Option<&BucketState> {
        self.most_restrictive().map(|i| &self.buckets[i])
    }

    /// How long a refused request should wait: the longest wait of the refusing buckets.
    /// `None` if admitted, or if some bucket can never admit it.
    pub fn retry_after(&self) -> Option<Duration> {
        if self.allowed {
            return None;
        }
        self.most_restrictive_state().and_then(|b| b.retry_after)
    }
}

/// [`Decision::most_restrictive`] for the states of a decision held elsewhere than in a
/// [`Decision`] (`allowed`: whether the request was admitted).
/// `states` is any sequence of them: a slice, or references gathered from one.
pub fn most_restrictive<'a>(
    allowed: bool,
    states: impl IntoIterator<Item = &'a BucketState>,
) -> Option<usize> {
    let wait = |b: &BucketState| match (b.refusal, b.retry_after) {
        (Some(Refusal::CostExceedsCapacity { .. }), _) => Duration::MAX,
        (_, Some(d)) => d,
        _ => Duration::ZERO,
    };
    let indexed = states.into_iter().enumerate();
    if allowed {
        indexed
            .min_by(|(_, a), (_, b)| {
                a.remaining
                    .cmp(&b.remaining)
                    .then(b.reset_after.cmp(&a.reset_after))
            })
            .map(|(i, _)| i)
    } else {
        indexed
            .filter(|(_, b)| !b.allowed)
            .max_by_key(|(_, b)| wait(b))
            .map(|(i, _)| i)
    }
}
