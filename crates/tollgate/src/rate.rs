//! [`Rate`]: a limit as a policy is written, `"300/min"` or a [`Limit`], checked when the
//! [`Limiter`](crate::Limiter) is built.

use std::fmt;

use tollgate_limits::{Limit, Quota, QuotaError};

/// A quota that did not parse, with the text it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source}")]
#[non_exhaustive]
pub struct RateError {
    /// The text as given (or a description of the values).
    pub input: String,
    /// What was wrong.
    #[source]
    pub source: QuotaError,
}

/// A [`Limit`] or the text of one, validated when the limiter is built.
///
/// From text or a [`Quota`] it is a sliding window ([`Limit::sliding`]); the constructors
/// choose another algorithm.
///
/// Policies take quotas as text so a table reads like the page it implements; a typo is a
/// [`BuildError`](crate::BuildError) from [`LimiterBuilder::build`](crate::LimiterBuilder::build),
/// never a panic or a failure at request time.
///
/// ```
/// use tollgate::{Limit, Quota, Rate};
///
/// let rolling: Rate = "500/min".into();                   // sliding window (segmented)
/// let exact = Rate::exact("60/60s");                       // sliding log, exact
/// let bucket = Rate::token_bucket("100/min", 20);          // sustained 100/min, burst 20
/// let daily = Rate::fixed("10000/day");                    // fixed window, UTC days
/// let typed: Rate = Limit::sliding(Quota::per_hour(10_000)).into();
/// assert_eq!(bucket.limit().unwrap().capacity(), 20);
/// assert_eq!(daily.limit().unwrap().to_string(), "10000/day fixed");
/// assert!(Rate::from("10/fortnight").limit().is_err());
/// # let _ = (rolling, exact, typed);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Rate(Result<Limit, RateError>);

impl Rate {
    /// A rolling window counted in segments ([`Limit::sliding`]): the default.
    pub fn sliding(quota: impl Into<Rate>) -> Self {
        Self::map_quota(quota, Limit::sliding)
    }

    /// A rolling window counted in `segments` segments ([`Limit::sliding_segments`]). A
    /// segment counts until a window after its last admission, so a client sending at a
    /// steady pace may be refused once it sends more than about `segments / (segments + 1)`
    /// of the limit per window: 91% with the default 10 segments, 98% with 60. More
    /// segments follow the window more closely, for more memory per key (and more work per
    /// call on Redis); a segment is at least a millisecond.
    ///
    /// ```
    /// use tollgate::Rate;
    ///
    /// let fine = Rate::sliding_segments("60/min", 60); // one-second segments
    /// assert!(fine.limit().is_ok());
    /// assert!(Rate::sliding_segments("60/min", 0).limit().is_err());
    /// ```
    pub fn sliding_segments(quota: impl Into<Rate>, segments: u32) -> Self {
        Self::try_map_quota(
            quota,
            |quota| Limit::sliding_segments(quota, segments),
            |quota| format!("{quota} in {segments} segments"),
        )
    }

    /// An exact rolling window ([`Limit::sliding_exact`]): memory grows with the count.
    pub fn exact(quota: impl Into<Rate>) -> Self {
        Self::map_quota(quota, Limit::sliding_exact)
    }

    /// A fixed window ([`Limit::fixed`]), aligned to the Unix epoch: `10000/day` resets at
    /// 00:00 UTC, `5/h` on the hour; a window of several days is counted from 1 January
    /// 1970, not from a calendar's week, month or year (`5/7d` resets on Thursdays at
    /// 00:00 UTC, `5/365d` on whatever day 365-day steps from 1970 reach).
    pub fn fixed(quota: impl Into<Rate>) -> Self {
        Self::map_quota(quota, Limit::fixed)
    }

    /// A token bucket ([`Limit::token_bucket`]) refilled at `sustained` holding at most
    /// `burst` tokens: a configuration file's `sustained: 100/min, burst: 20/s` is
    /// `Rate::token_bucket("100/min", 20)`.
    pub fn token_bucket(sustained: impl Into<Rate>, burst: u64) -> Self {
        Self::try_map_quota(
            sustained,
            |quota| Limit::token_bucket(quota, burst),
            |quota| format!("{quota} burst {burst}"),
        )
    }

    /// The limit, or why the text did not parse.
    ///
    /// # Errors
    ///
    /// [`RateError`] naming the input.
    pub fn limit(&self) -> Result<Limit, RateError> {
        self.0.clone()
    }

    fn map_quota(quota: impl Into<Rate>, f: fn(Quota) -> Limit) -> Self {
        Self(quota.into().0.map(|l| f(l.quota())))
    }

    /// [`Rate::map_quota`] with a constructor that can refuse the quota; `input` names
    /// what was asked in the error.
    fn try_map_quota(
        quota: impl Into<Rate>,
        f: impl FnOnce(Quota) -> Result<Limit, QuotaError>,
        input: impl FnOnce(Quota) -> String,
    ) -> Self {
        Self(quota.into().0.and_then(|l| {
            f(l.quota()).map_err(|source| RateError {
                input: input(l.quota()),
                source,
            })
        }))
    }
}

impl fmt::Debug for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Ok(limit) => write!(f, "Rate({limit})"),
            Err(e) => write!(f, "Rate(invalid {:?}: {})", e.input, e.source),
        }
    }
}

impl From<&str> for Rate {
    fn from(text: &str) -> Self {
        Self(
            Quota::parse(text)
                .map(Limit::sliding)
                .map_err(|source| RateError {
                    input: text.to_string(),
                    source,
                }),
        )
    }
}

impl From<String> for Rate {
    fn from(text: String) -> Self {
        Self::from(text.as_str())
    }
}

impl From<&String> for Rate {
    fn from(text: &String) -> Self {
        Self::from(text.as_str())
    }
}

impl From<Quota> for Rate {
    fn from(quota: Quota) -> Self {
        Self(Ok(Limit::sliding(quota)))
    }
}

impl From<Limit> for Rate {
    fn from(limit: Limit) -> Self {
        Self(Ok(limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_limits::Algorithm;

    #[test]
    fn text_and_constructors() {
        let r = Rate::from("300/min").limit().unwrap();
        assert_eq!(r.quota(), Quota::per_minute(300));
        assert!(matches!(r.algorithm(), Algorithm::SlidingWindow { .. }));
        assert_eq!(
            Rate::exact("60/60s").limit().unwrap().algorithm(),
            Algorithm::SlidingLog
        );
        assert_eq!(
            Rate::token_bucket("100/min", 20)
                .limit()
                .unwrap()
                .algorithm(),
            Algorithm::TokenBucket { burst: 20 }
        );
        let bad = Rate::fixed("12/fortnight").limit().unwrap_err();
        assert_eq!(bad.input, "12/fortnight");
        assert!(matches!(bad.source, QuotaError::UnknownUnit { .. }));
        let zero = Rate::token_bucket("1/min", 0).limit().unwrap_err();
        assert_eq!(zero.source, QuotaError::ZeroBurst);
    }

    /// A rate's debug output names its limit, or the text that did not parse and why.
    #[test]
    fn debug_shows_the_limit_or_the_bad_input() {
        assert_eq!(
            format!("{:?}", Rate::token_bucket("100/min", 20)),
            "Rate(100/min burst 20)"
        );
        assert_eq!(
            format!("{:?}", Rate::from("20/15m")),
            "Rate(20/15min sliding)"
        );
        let bad = format!("{:?}", Rate::exact("12/fortnight"));
        assert!(
            bad.starts_with("Rate(invalid \"12/fortnight\": `12/fortnight`: unknown time unit"),
            "{bad}"
        );
    }
}
