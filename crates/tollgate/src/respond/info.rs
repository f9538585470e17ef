//! [`RateLimitOutcome`]: what one request's rate limiting came to, bucket by bucket, in the
//! terms of headers and bodies.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde::ser::{Serialize, SerializeStruct, Serializer};
use tollgate_limits::{BucketState, Decision, Quota, Refusal, Timestamp};

use super::decision::RateLimitDecision;

/// The outcome for one bucket of a request: the bucket's name, the quota it was charged
/// against, and the state the store answered with (remaining, reset, refusal). One element
/// of [`RateLimitOutcome::buckets`].
///
/// Serializes (serde) as `{"name":"default:ip","limit":500,"window":60,"remaining":499,
/// "reset":60,"retry_after":null}`: the window, `reset` and `retry_after` in whole seconds
/// rounded up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BucketOutcome {
    /// The bucket's name, as the policy names it (`"default:ip"`, `"auth"`), without the
    /// client's key. The IETF fields use it as the policy identifier, as a
    /// structured-field string with `:` written `-` (`"default-ip"`).
    pub name: Arc<str>,
    /// The quota the bucket was charged against (after per-key overrides), as responses
    /// show it ([`Limit::shown_quota`](tollgate_limits::Limit::shown_quota): a token bucket
    /// whose burst is above its count shows its burst): its period is the window headers
    /// and bodies show.
    pub quota: Quota,
    /// What the store answered for this bucket.
    pub state: BucketState,
}

/// The outcome of one request's rate limiting, in full: everything its rate-limit headers
/// and its 429 body are made of. One [`BucketOutcome`] per bucket the request spent, which of them is the most restrictive, the
/// time the store decided at, and the request's method and path.
///
/// Build it with [`RateLimitOutcome::from_decision`]. Serializes (serde) as `{"allowed":false,
/// "policy":"default","method":"GET","path":"/api/x","retry_after":23,"most_restrictive":0,
/// "buckets":[...]}` (see [`BucketOutcome`]), so a custom body can embed it whole.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitOutcome {
    /// The name of the policy (route class) that applied.
    pub policy: Arc<str>,
    /// The buckets, in the order they were given to the store.
    pub buckets: Vec<BucketOutcome>,
    /// The index in `buckets` of the bucket the `X-RateLimit-*` headers describe (see
    /// [`Decision::most_restrictive`]); `0` when `buckets` is empty.
    pub most_restrictive: usize,
    /// When the store decided (for the Redis store, the Redis server's clock, or the
    /// instance's when the request includes a fixed window); reset times are counted from it.
    pub now: Timestamp,
    /// The request's method.
    pub method: Method,
    /// The request's path, without the query.
    pub path: String,
    /// Whether the request was admitted.
    pub allowed: bool,
}

impl RateLimitOutcome {
    /// Pairs a store's [`Decision`] with the names and quotas of its buckets, given in the
    /// same order as the buckets of the batch. Extra entries on either side are ignored.
    ///
    /// ```
    /// use std::time::Duration;
    /// use http::Method;
    /// use tollgate::RateLimitOutcome;
    /// use tollgate::{Bucket, Limit, MemoryStore, Quota};
    ///
    /// let store = MemoryStore::new();
    /// let (ip, user) = (Quota::per_minute(500), Quota::per_hour(10_000));
    /// let decision = store.charge(&[
    ///     Bucket::new("default:ip", "203.0.113.7", Limit::sliding(ip)),
    ///     Bucket::new("default:user", "u_42", Limit::sliding(user)),
    /// ])?;
    /// let info = RateLimitOutcome::from_decision(
    ///     "default",
    ///     &decision,
    ///     [("default:ip", ip), ("default:user", user)],
    ///     Method::GET,
    ///     "/api/invoices",
    /// );
    /// assert!(info.allowed);
    /// assert_eq!(&*info.most_restrictive_bucket().unwrap().name, "default:ip");
    /// assert_eq!(info.retry_after_secs(), None);
    /// # Ok::<(), tollgate::StoreError>(())
    /// ```
    pub fn from_decision<I, N>(
        policy: impl Into<Arc<str>>,
        decision: &Decision,
        buckets: I,
        method: Method,
        path: impl Into<String>,
    ) -> Self
    where
        I: IntoIterator<Item = (N, Quota)>,
        N: Into<Arc<str>>,
    {
        let buckets: Vec<BucketOutcome> = buckets
            .into_iter()
            .zip(&decision.buckets)
            .map(|((name, quota), state)| BucketOutcome {
                name: name.into(),
                quota,
                state: state.clone(),
            })
            .collect();
        let most_restrictive = decision
            .most_restrictive()
            .filter(|&i| i < buckets.len())
            .unwrap_or(0);
        Self {
            policy: policy.into(),
            buckets,
            most_restrictive,
            now: decision.now,
            method,
            path: path.into(),
            allowed: decision.allowed,
        }
    }

    /// The bucket the `X-RateLimit-*` headers describe; `None` if there are no buckets.
    pub fn most_restrictive_bucket(&self) -> Option<&BucketOutcome> {
        self.buckets.get(self.most_restrictive)
    }

    /// How long a refused request should wait before retrying; `None` if it was admitted,
    /// or if waiting cannot help (see [`RateLimitOutcome::never_fits`]).
    pub fn retry_after(&self) -> Option<Duration> {
        self.most().retry_after()
    }

    /// [`RateLimitOutcome::retry_after`] in whole seconds, rounded up and never 0: what
    /// `Retry-After` says. 1 µs is 1, exactly 2 s is 2, 2.000001 s is 3.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.most().retry_after_secs()
    }

    /// When the most restrictive bucket is back to its full state (nothing counted against
    /// it): what `X-RateLimit-Reset` says (unless [`HeaderStyle::with_reset_at_retry`]
    /// makes it say when a refused request can be retried). Saturates instead of
    /// overflowing.
    ///
    /// [`HeaderStyle::with_reset_at_retry`]: crate::HeaderStyle::with_reset_at_retry
    pub fn reset_at(&self) -> Option<Timestamp> {
        self.most().reset_at()
    }

    /// The decision as the request's extensions carry it: the most restrictive bucket's.
    /// `None` if there are no buckets.
    pub fn decision(&self) -> Option<RateLimitDecision> {
        let bucket = self.most_restrictive_bucket()?;
        Some(RateLimitDecision::new(
            self.policy.to_string().into(),
            bucket.name.to_string().into(),
            &bucket.state,
            self.now,
            self.allowed,
        ))
    }

    /// Set when the request was refused because it costs more than a bucket can ever
    /// hold: `(cost, capacity)`. Retrying cannot help, so there is no `Retry-After`.
    pub fn never_fits(&self) -> Option<(u64, u64)> {
        self.most().never_fits()
    }

    /// What the methods above read: the most restrictive bucket's state, the time and
    /// whether the request was admitted.
    pub(crate) fn most(&self) -> Most<'_> {
        Most {
            state: self.most_restrictive_bucket().map(|b| &b.state),
            now: self.now,
            allowed: self.allowed,
        }
    }
}

/// The part of a [`RateLimitOutcome`] its wait, its reset and whether it can ever fit are
/// read from, without the outcome: a ready 429 body is made of these alone, so the layer
/// reads them from the store's answer and builds no outcome when nothing else needs one.
#[derive(Clone, Copy)]
pub(crate) struct Most<'a> {
    /// The most restrictive bucket's state (`None`: no bucket shows).
    pub(crate) state: Option<&'a BucketState>,
    /// When the store decided.
    pub(crate) now: Timestamp,
    /// Whether the request was admitted.
    pub(crate) allowed: bool,
}

impl Most<'_> {
    /// [`RateLimitOutcome::retry_after`].
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        if self.allowed {
            return None;
        }
        self.state?.retry_after
    }

    /// [`RateLimitOutcome::retry_after_secs`].
    pub(crate) fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after().map(retry_secs)
    }

    /// [`RateLimitOutcome::reset_at`].
    pub(crate) fn reset_at(&self) -> Option<Timestamp> {
        Some(self.now.saturating_add(self.state?.reset_after))
    }

    /// [`RateLimitOutcome::never_fits`].
    pub(crate) fn never_fits(&self) -> Option<(u64, u64)> {
        if self.allowed {
            return None;
        }
        match self.state?.refusal? {
            Refusal::CostExceedsCapacity { cost, capacity } => Some((cost, capacity)),
            _ => None,
        }
    }
}

impl Serialize for BucketOutcome {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("BucketOutcome", 6)?;
        s.serialize_field("name", &*self.name)?;
        s.serialize_field("limit", &self.quota.count())?;
        s.serialize_field("window", &ceil_secs(self.quota.period()))?;
        s.serialize_field("remaining", &self.state.remaining)?;
        s.serialize_field("reset", &ceil_secs(self.state.reset_after))?;
        let retry = (!self.state.allowed)
            .then_some(self.state.retry_after)
            .flatten();
        s.serialize_field("retry_after", &retry.map(retry_secs))?;
        s.end()
    }
}

impl Serialize for RateLimitOutcome {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("RateLimitOutcome", 7)?;
        s.serialize_field("allowed", &self.allowed)?;
        s.serialize_field("policy", &*self.policy)?;
        s.serialize_field("method", self.method.as_str())?;
        s.serialize_field("path", &self.path)?;
        s.serialize_field("retry_after", &self.retry_after_secs())?;
        s.serialize_field("most_restrictive", &self.most_restrictive)?;
        s.serialize_field("buckets", &self.buckets)?;
        s.end()
    }
}

/// A wait as `Retry-After` says it: whole seconds, rounded up, never 0 (1 µs is 1).
pub(crate) fn retry_secs(wait: Duration) -> u64 {
    ceil_secs(wait).max(1)
}

/// How long until more of a bucket is available, as the IETF `RateLimit` field's `t` says
/// it (draft-ietf-httpapi-ratelimit-headers-10: "until additional quota ... is made
/// available"): for a bucket that refused the request and that waiting helps, until enough
/// of it is back for the request (what `Retry-After` says for that bucket, so the two
/// agree); otherwise until it is full again (for a sliding window or a token bucket, some
/// of it comes back sooner: an upper bound).
pub(crate) fn shown_reset(state: &BucketState) -> Duration {
    match state.retry_after {
        Some(wait) if !state.allowed => wait,
        _ => state.reset_after,
    }
}

/// Whole seconds in `d`, rounded up (a wait or a reset is never announced early).
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A refused or admitted bucket state, built by hand.
    pub(crate) fn state(
        limit: u64,
        remaining: u64,
        reset_after: Duration,
        retry_after: Option<Duration>,
    ) -> BucketState {
        BucketState {
            allowed: retry_after.is_none(),
            limit,
            remaining,
            reset_after,
            retry_after,
            refusal: retry_after.map(|_| Refusal::OverLimit),
        }
    }

    /// A refusal of a 12-point request by a bucket that holds at most 10 at once (waiting
    /// will not help), at 2024-06-01T00:00:00Z, for bucket `name` of 10/min.
    pub(crate) fn never_fits(name: &str, method: Method, path: &str) -> RateLimitOutcome {
        let decision = Decision {
            allowed: false,
            now: Timestamp::from_micros(1_717_200_000_000_000),
            buckets: vec![BucketState {
                allowed: false,
                limit: 10,
                remaining: 10,
                reset_after: Duration::ZERO,
                retry_after: None,
                refusal: Some(Refusal::CostExceedsCapacity {
                    cost: 12,
                    capacity: 10,
                }),
            }],
        };
        let policy = name.split(':').next().unwrap_or(name);
        RateLimitOutcome::from_decision(
            policy,
            &decision,
            [(name, Quota::per_minute(10))],
            method,
            path,
        )
    }

    /// An info for one bucket named `name`.
    pub(crate) fn single(
        name: &str,
        quota: Quota,
        now: Timestamp,
        state: BucketState,
        path: &str,
    ) -> RateLimitOutcome {
        let decision = Decision {
            allowed: state.allowed,
            now,
            buckets: vec![state],
        };
        RateLimitOutcome::from_decision("p", &decision, [(name, quota)], Method::GET, path)
    }

    fn refused_after(wait: Duration) -> RateLimitOutcome {
        single(
            "b",
            Quota::per_minute(10),
            Timestamp::from_micros(0),
            state(10, 0, Duration::from_secs(60), Some(wait)),
            "/",
        )
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        let secs = |d| refused_after(d).retry_after_secs();
        assert_eq!(secs(Duration::from_micros(1)), Some(1));
        assert_eq!(secs(Duration::from_nanos(1)), Some(1));
        assert_eq!(secs(Duration::ZERO), Some(1));
        assert_eq!(secs(Duration::from_secs(2)), Some(2));
        assert_eq!(secs(Duration::from_micros(2_000_001)), Some(3));
        assert_eq!(secs(Duration::from_millis(22_400)), Some(23));
        assert_eq!(secs(Duration::MAX), Some(u64::MAX));
    }

    #[test]
    fn admitted_has_no_retry_after() {
        let info = single(
            "b",
            Quota::per_minute(10),
            Timestamp::from_micros(5),
            state(10, 9, Duration::from_secs(6), None),
            "/",
        );
        assert_eq!(info.retry_after_secs(), None);
        assert_eq!(info.never_fits(), None);
        assert_eq!(info.reset_at(), Some(Timestamp::from_micros(6_000_005)));
    }

    #[test]
    fn most_restrictive_follows_the_decision() {
        let ip = state(
            500,
            0,
            Duration::from_secs(60),
            Some(Duration::from_secs(3)),
        );
        let user = state(
            10_000,
            0,
            Duration::from_secs(3600),
            Some(Duration::from_secs(40)),
        );
        let decision = Decision {
            allowed: false,
            now: Timestamp::from_micros(0),
            buckets: vec![ip, user],
        };
        let info = RateLimitOutcome::from_decision(
            "default",
            &decision,
            [
                ("default:ip", Quota::per_minute(500)),
                ("default:user", Quota::per_hour(10_000)),
            ],
            Method::POST,
            "/api/x",
        );
        assert_eq!(info.most_restrictive, 1);
        assert_eq!(info.retry_after_secs(), Some(40));
        assert_eq!(info.reset_at(), Some(Timestamp::from_micros(3_600_000_000)));
    }

    #[test]
    fn info_serializes_and_names_its_decision() {
        let info = refused_after(Duration::from_millis(22_400));
        assert_eq!(
            serde_json::to_string(&info).unwrap(),
            r#"{"allowed":false,"policy":"p","method":"GET","path":"/","retry_after":23,"most_restrictive":0,"buckets":[{"name":"b","limit":10,"window":60,"remaining":0,"reset":60,"retry_after":23}]}"#
        );
        // `json!` takes it whole (the policy is an `Arc<str>`).
        let value = serde_json::json!({ "info": info, "policy": info.policy });
        assert_eq!(value["policy"], "p");
        let decision = info.decision().unwrap();
        assert_eq!((&*decision.bucket, decision.limit), ("b", 10));
        assert_eq!(decision.retry_after_secs(), Some(23));
    }

    #[test]
    fn a_most_restrictive_bucket_left_without_a_name_falls_back_to_the_first() {
        // The second bucket refused, but only the first was named: the first describes the
        // request, as when there is no most restrictive bucket.
        let decision = Decision {
            allowed: false,
            now: Timestamp::from_micros(0),
            buckets: vec![
                state(10, 5, Duration::from_secs(60), None),
                state(
                    10,
                    0,
                    Duration::from_secs(60),
                    Some(Duration::from_secs(30)),
                ),
            ],
        };
        assert_eq!(decision.most_restrictive(), Some(1));
        let info = RateLimitOutcome::from_decision(
            "p",
            &decision,
            [("a", Quota::per_minute(10))],
            Method::GET,
            "/",
        );
        assert_eq!(info.most_restrictive, 0);
        assert_eq!(&*info.most_restrictive_bucket().unwrap().name, "a");
        assert_eq!(info.reset_at(), Some(Timestamp::from_micros(60_000_000)));
    }

    #[test]
    fn mismatched_or_empty_bucket_lists_do_not_panic() {
        let decision = Decision {
            allowed: false,
            now: Timestamp::from_micros(u64::MAX),
            buckets: vec![state(1, 0, Duration::MAX, Some(Duration::MAX))],
        };
        let none: [(&str, Quota); 0] = [];
        let info = RateLimitOutcome::from_decision("p", &decision, none, Method::GET, "/");
        assert!(info.buckets.is_empty());
        assert_eq!(info.most_restrictive_bucket(), None);
        assert_eq!(info.retry_after_secs(), None);
        assert_eq!(info.reset_at(), None);

        let info = RateLimitOutcome::from_decision(
            "p",
            &decision,
            [("a", Quota::per_second(1)), ("b", Quota::per_second(1))],
            Method::GET,
            "/",
        );
        assert_eq!(info.buckets.len(), 1);
        assert_eq!(info.reset_at(), Some(Timestamp::from_micros(u64::MAX)));
    }
}
