//! [`DirectBucket`]: a bucket for direct use, named once (checked at start-up).

use std::sync::Arc;

use http::Method;
use tollgate_limits::Decision;

use crate::error::CheckError;
use crate::limiter::Limiter;
use crate::respond;

/// A bucket for direct use ([`LimiterBuilder::bucket`](crate::LimiterBuilder::bucket)),
/// named once, when the application starts: [`Limiter::direct_bucket`] refuses a name no
/// bucket has, so a misspelt name stops the start-up instead of answering `500` to the
/// first request that checks it (as [`Limiter::check`] with that name would). A reload
/// cannot take the bucket away ([`BuildError::DirectBucketDropped`](crate::BuildError::DirectBucketDropped)),
/// so its calls never fail for its name: only the store's errors remain.
///
/// Each method is the [`Limiter`] method of the same name for this bucket. Cheap to clone.
///
/// ```
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use tollgate::{Limiter, Rate};
///
/// let limiter = Limiter::builder()
///     .bucket("sign-in-failures", Rate::exact("5/30min"))
///     .build()?;
/// // At start-up: a typo here is an error now, not a 500 later.
/// let failures = limiter.direct_bucket("sign-in-failures")?;
/// assert!(limiter.direct_bucket("sign-in-failure").is_err());
///
/// // In the handler: each attempt is charged first (atomic: attempts sent together
/// // cannot all pass), and a success gives the failures back.
/// let attempt = failures.check("a@example.com").await?;
/// assert!(attempt.allowed); // else: locked, answer `failures.refusal(..)`
/// assert_eq!(attempt.buckets[0].remaining, 4);
/// let password_ok = true;
/// if password_ok {
///     let _ = failures.reset("a@example.com").await?;
/// }
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct DirectBucket {
    limiter: Limiter,
    name: Arc<str>,
}

impl DirectBucket {
    pub(crate) fn new(limiter: Limiter, name: &str) -> Self {
        Self {
            limiter,
            name: name.into(),
        }
    }

    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// [`Limiter::check`]: charges 1 for `key`, admitted iff it fits.
    ///
    /// # Errors
    ///
    /// The store's ([`CheckError::Store`]).
    pub async fn check(&self, key: &str) -> Result<Decision, CheckError> {
        self.limiter.check(&self.name, key).await
    }

    /// [`Limiter::check_cost`]: [`DirectBucket::check`] with a cost in points.
    ///
    /// # Errors
    ///
    /// As [`DirectBucket::check`].
    pub async fn check_cost(&self, key: &str, cost: u64) -> Result<Decision, CheckError> {
        self.limiter.check_cost(&self.name, key, cost).await
    }

    /// [`Limiter::peek`]: what [`DirectBucket::check`] would answer, changing nothing.
    ///
    /// # Errors
    ///
    /// As [`DirectBucket::check`].
    pub async fn peek(&self, key: &str) -> Result<Decision, CheckError> {
        self.limiter.peek(&self.name, key).await
    }

    /// [`Limiter::penalize`]: counts 1 against `key` whether or not it fits.
    ///
    /// # Errors
    ///
    /// As [`DirectBucket::check`].
    pub async fn penalize(&self, key: &str) -> Result<Decision, CheckError> {
        self.limiter.penalize(&self.name, key).await
    }

    /// [`Limiter::refund`]: gives 1 back to `key`.
    ///
    /// # Errors
    ///
    /// As [`DirectBucket::check`].
    pub async fn refund(&self, key: &str) -> Result<Decision, CheckError> {
        self.limiter.refund(&self.name, key).await
    }

    /// [`Limiter::reset`]: forgets everything counted against `key`.
    ///
    /// # Errors
    ///
    /// As [`DirectBucket::check`].
    pub async fn reset(&self, key: &str) -> Result<Decision, CheckError> {
        self.limiter.reset(&self.name, key).await
    }

    /// [`Limiter::refusal`]: the 429 the middleware would send for a refused `decision`.
    pub fn refusal(
        &self,
        decision: &Decision,
        method: &Method,
        path: &str,
    ) -> respond::TooManyRequests {
        self.limiter.refusal(&self.name, decision, method, path)
    }

    /// [`Limiter::rate_limit_headers`]: the rate-limit headers the middleware would send
    /// for `decision`.
    pub fn rate_limit_headers(&self, decision: &Decision) -> http::HeaderMap {
        self.limiter.rate_limit_headers(&self.name, decision)
    }
}
