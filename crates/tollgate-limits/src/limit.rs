//! Limits: a [`Quota`] and the algorithm that counts against it.
//!
//! | algorithm | guarantee | state per key |
//! |---|---|---|
//! | [`Algorithm::SlidingWindow`] (default) | never more than N in any interval of length W; a refused client is told the true wait, at most W; refuses only when the last W + W/k held more than N − cost | k+1 counters and times |
//! | [`Algorithm::SlidingLog`] | exactly: admits iff the interval (now−W, now] plus this cost stays within N | one entry per admitted request |
//! | [`Algorithm::TokenBucket`] | GCRA: a bucket of `burst` tokens refilled at N per W; in any interval of length L at most `burst + L·N/W` | one timestamp (and the emission interval it counts in) |
//! | [`Algorithm::FixedWindow`] | at most N per calendar window aligned to the Unix epoch (UTC midnight for days) | a counter and the window |
//!
//! ```
//! use tollgate_limits::{Limit, Quota};
//!
//! let rolling = Limit::sliding(Quota::parse("500/min")?);
//! let exact = Limit::sliding_exact(Quota::parse("60/60s")?);
//! let bucket = Limit::token_bucket(Quota::parse("100/min")?, 20)?;
//! let daily = Limit::fixed(Quota::parse("10000/day")?);
//! assert_eq!(bucket.capacity(), 20);
//! assert_eq!(daily.to_string(), "10000/day fixed");
//! # Ok::<(), tollgate_limits::QuotaError>(())
//! ```

use std::fmt;

use crate::quota::{Quota, QuotaError, MAX_COUNT, MAX_PERIOD};

/// How many segments [`Limit::sliding`] splits its window into.
pub const DEFAULT_SEGMENTS: u16 = 10;

/// The counting algorithm of a [`Limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// Rolling window counted in `segments` (k) equal segments of W/k (rounded up to a
    /// microsecond). Each segment keeps what it counted and the time of its last admission,
    /// and counts until W after that time. A request is admitted iff the costs of the
    /// segments that still count, plus this cost, stay within N.
    ///
    /// **Bound**: in every interval of length W at most N are admitted (a request admitted
    /// less than W ago sits in a segment whose last admission is at least as recent, so it
    /// is counted). It errs only towards refusing: a request is refused only if more than
    /// N − cost were admitted in the last W + ⌈W/k⌉ µs. The wait a refused request is told
    /// is the true one (a retry then is admitted, if nothing else was charged meanwhile) and
    /// never longer than W; so is the reset time. (On a clock that has gone back, counts
    /// made at the later time still count until W after it: the wait is then longer than
    /// W by as much as the clock went back, as nothing is un-spent.)
    SlidingWindow {
        /// Segments per window, 1 to 1000.
        segments: u16,
    },
    /// Exact rolling window: a log of admitted requests. Admitted iff the costs admitted in
    /// (now − W, now] plus this cost stay within N. Memory grows with N per key.
    SlidingLog,
    /// GCRA (a token bucket kept as one timestamp): capacity `burst`, refilled at the
    /// quota's rate, one token every W/N (rounded up to a microsecond). A key's state
    /// records the interval it counts in: when the sustained rate changes (a reload), what
    /// was counted carries over in tokens, and refills at the new rate from then on.
    TokenBucket {
        /// The bucket's capacity: how much may be spent at once.
        burst: u64,
    },
    /// Fixed window aligned to the Unix epoch: `10000/day` resets at 00:00 UTC.
    FixedWindow,
}

/// A quota and the algorithm that enforces it. Cheap to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    quota: Quota,
    algorithm: Algorithm,
    /// The algorithm's time unit in microseconds, worked out once (a division the store
    /// would otherwise make on every call): a token bucket's emission interval, a sliding
    /// window's segment length, the window for the others. A function of the two fields
    /// above, so equality and hashing are unchanged by it.
    unit: u64,
}

impl Limit {
    /// `quota` counted by `algorithm` (already checked), with its time unit worked out.
    const fn new(quota: Quota, algorithm: Algorithm) -> Self {
        let period = quota.period_micros();
        let unit = match algorithm {
            Algorithm::SlidingWindow { segments } => period.div_ceil(segments as u64),
            Algorithm::TokenBucket { .. } => period.div_ceil(quota.count()),
            Algorithm::SlidingLog | Algorithm::FixedWindow => period,
        };
        Self {
            quota,
            algorithm,
            unit,
        }
    }

    /// A rolling window in [`DEFAULT_SEGMENTS`] segments (see [`Algorithm::SlidingWindow`]).
    pub fn sliding(quota: Quota) -> Self {
        let segments = u64::from(DEFAULT_SEGMENTS).min(quota.period().as_millis() as u64) as u16;
        Self::new(quota, Algorithm::SlidingWindow { segments })
    }

    /// A rolling window in `segments` segments.
    ///
    /// # Errors
    ///
    /// [`QuotaError::BadSegments`] if `segments` is 0, above 1000, or above the number of
    /// milliseconds in the window.
    pub fn sliding_segments(quota: Quota, segments: u32) -> Result<Self, QuotaError> {
        let ms = quota.period().as_millis() as u64;
        if segments == 0 || segments > 1000 || u64::from(segments) > ms {
            return Err(QuotaError::BadSegments {
                period: quota.period(),
                segments,
            });
        }
        Ok(Self::new(
            quota,
            Algorithm::SlidingWindow {
                segments: segments as u16,
            },
        ))
    }

    /// An exact rolling window (see [`Algorithm::SlidingLog`]).
    pub fn sliding_exact(quota: Quota) -> Self {
        Self::new(quota, Algorithm::SlidingLog)
    }

    /// A token bucket of capacity `burst` refilled at `sustained` (see
    /// [`Algorithm::TokenBucket`]). A sustained rate of 100/min with bursts of 20 is
    /// `token_bucket(Quota::per_minute(100), 20)`.
    ///
    /// # Errors
    ///
    /// [`QuotaError::ZeroBurst`], [`QuotaError::TokenBucketTooFast`] above a token a
    /// microsecond, or [`QuotaError::BurstTooLarge`] if refilling the whole bucket would take
    /// longer than 400 days.
    pub fn token_bucket(sustained: Quota, burst: u64) -> Result<Self, QuotaError> {
        if burst == 0 {
            return Err(QuotaError::ZeroBurst);
        }
        if sustained.count() > sustained.period_micros() {
            return Err(QuotaError::TokenBucketTooFast { sustained });
        }
        let limit = Self::new(sustained, Algorithm::TokenBucket { burst });
        let refill = u128::from(burst) * u128::from(limit.emission_interval());
        if refill > MAX_PERIOD.as_micros() {
            return Err(QuotaError::BurstTooLarge { burst, sustained });
        }
        Ok(limit)
    }

    /// A fixed window aligned to the clock (see [`Algorithm::FixedWindow`]).
    pub fn fixed(quota: Quota) -> Self {
        Self::new(quota, Algorithm::FixedWindow)
    }

    /// The quota.
    pub const fn quota(&self) -> Quota {
        self.quota
    }

    /// The quota a response describes (its limit, `RateLimit-Policy`'s `q` and `w`): the
    /// quota, except for a token bucket whose burst is above the quota's count, which shows
    /// its burst per the time the bucket takes to refill it at the quota's rate
    /// (`10/min burst 30` shows 30 per 180 s). So what a response shows remaining, at most
    /// the burst, never exceeds the limit it shows, and the two still give the rate.
    ///
    /// ```
    /// use tollgate_limits::{Limit, Quota};
    ///
    /// let wide = Limit::token_bucket(Quota::per_minute(10), 30)?;
    /// assert_eq!(wide.shown_quota(), Quota::parse("30/180s")?);
    /// let narrow = Limit::token_bucket(Quota::per_minute(100), 20)?;
    /// assert_eq!(narrow.shown_quota(), Quota::per_minute(100));
    /// # Ok::<(), tollgate_limits::QuotaError>(())
    /// ```
    #[inline]
    pub fn shown_quota(&self) -> Quota {
        match self.wide() {
            Some((burst, refill_ms)) => {
                Quota::new(burst, std::time::Duration::from_millis(refill_ms)).unwrap_or(self.quota)
            }
            None => self.quota,
        }
    }

    /// [`Limit::shown_quota`]'s count (the burst of a token bucket wider than its count,
    /// the quota's count otherwise), without working out its window.
    ///
    /// ```
    /// use tollgate_limits::{Limit, Quota};
    ///
    /// let wide = Limit::token_bucket(Quota::per_minute(10), 30)?;
    /// assert_eq!(wide.shown_count(), wide.shown_quota().count());
    /// # Ok::<(), tollgate_limits::QuotaError>(())
    /// ```
    #[inline]
    pub const fn shown_count(&self) -> u64 {
        match self.wide() {
            Some((burst, _)) => burst,
            None => self.quota.count(),
        }
    }

    /// A token bucket wider than its count whose refill time is a quota's window: its burst,
    /// and that time in milliseconds (rounded up).
    const fn wide(&self) -> Option<(u64, u64)> {
        match self.algorithm {
            Algorithm::TokenBucket { burst } if burst > self.quota.count() => {
                let refill_ms = burst.saturating_mul(self.unit).div_ceil(1000);
                if burst <= MAX_COUNT && refill_ms <= MAX_PERIOD.as_millis() as u64 {
                    Some((burst, refill_ms))
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// The algorithm.
    pub const fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The largest cost one request can ever be admitted with: the burst of a token bucket,
    /// the quota's count otherwise.
    pub const fn capacity(&self) -> u64 {
        match self.algorithm {
            Algorithm::TokenBucket { burst } => burst,
            _ => self.quota.count(),
        }
    }

    /// The token bucket's time per token in microseconds, W/N rounded up (so the sustained
    /// rate is never above the quota). For other algorithms, the same number.
    #[inline]
    pub const fn emission_interval(&self) -> u64 {
        match self.algorithm {
            Algorithm::TokenBucket { .. } => self.unit,
            _ => self.quota.period_micros().div_ceil(self.quota.count()),
        }
    }

    /// The sliding window's segment length in microseconds (W/k rounded up); the window
    /// itself for other algorithms.
    #[inline]
    pub const fn segment_micros(&self) -> u64 {
        match self.algorithm {
            Algorithm::SlidingWindow { .. } => self.unit,
            _ => self.quota.period_micros(),
        }
    }

    /// The same limit with its count (and burst) divided by `divisor`, at least 1: what each
    /// of `divisor` app instances may admit while they cannot share a store.
    pub fn divided_by(&self, divisor: u32) -> Self {
        let algorithm = match self.algorithm {
            Algorithm::TokenBucket { burst } => Algorithm::TokenBucket {
                burst: (burst / u64::from(divisor.max(1))).max(1),
            },
            other => other,
        };
        Self::new(self.quota.divided_by(divisor), algorithm)
    }
}

impl fmt::Display for Limit {
    /// `500/min sliding`, `60/min exact`, `100/min burst 20`, `10000/day fixed`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.algorithm {
            Algorithm::SlidingWindow { .. } => write!(f, "{} sliding", self.quota),
            Algorithm::SlidingLog => write!(f, "{} exact", self.quota),
            Algorithm::TokenBucket { burst } => write!(f, "{} burst {burst}", self.quota),
            Algorithm::FixedWindow => write!(f, "{} fixed", self.quota),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The count a response shows is the shown quota's, whatever built the limit (a
    /// fleet's share of a token bucket may refill in longer than a quota's longest window,
    /// and then shows its quota).
    #[test]
    fn the_shown_count_is_the_shown_quotas() {
        let day = Quota::new(5, std::time::Duration::from_secs(86_400)).unwrap();
        let mut limits = vec![
            Limit::sliding(Quota::per_minute(10)),
            Limit::fixed(day),
            Limit::token_bucket(Quota::per_minute(10), 30).unwrap(),
            Limit::token_bucket(Quota::per_minute(100), 20).unwrap(),
            Limit::token_bucket(day, 2000).unwrap(),
        ];
        for divisor in [2, 3, 7, 1000] {
            limits.extend(limits.clone().iter().map(|l| l.divided_by(divisor)));
        }
        for limit in &limits {
            assert_eq!(limit.shown_count(), limit.shown_quota().count(), "{limit}");
        }
        let share = Limit::token_bucket(day, 2000).unwrap().divided_by(2);
        assert_eq!(share.shown_count(), 2, "{share}");
    }

    /// A token bucket whose burst is its count shows its quota as written, even when the
    /// count does not divide the window: 7/min burst 7 refills in 60.000003 s and shows
    /// 7/min, not 7 per 60.001 s; only a burst above the count shows the refill time.
    #[test]
    fn a_bucket_whose_burst_is_its_count_shows_its_quota_as_written() {
        let even = Limit::token_bucket(Quota::per_minute(7), 7).unwrap();
        assert_eq!(even.shown_quota(), Quota::per_minute(7));
        assert_eq!(even.shown_count(), 7);
        let wider = Limit::token_bucket(Quota::per_minute(7), 8).unwrap();
        assert_eq!(
            wider.shown_quota(),
            Quota::new(8, std::time::Duration::from_millis(68_572)).unwrap()
        );
        assert_eq!(wider.shown_count(), 8);
    }

    #[test]
    fn constructors_validate() {
        let q = Quota::per_minute(100);
        assert_eq!(Limit::token_bucket(q, 0), Err(QuotaError::ZeroBurst));
        assert!(matches!(
            Limit::token_bucket(Quota::per_day(1), 1000),
            Err(QuotaError::BurstTooLarge { .. })
        ));
        // A token a microsecond is the finest a token bucket counts in: faster is refused,
        // not slowed without a word (3,000,000/s admitted 1,000,000/s).
        let fast = Quota::parse("3000000/s").unwrap();
        assert_eq!(
            Limit::token_bucket(fast, 3_000_000),
            Err(QuotaError::TokenBucketTooFast { sustained: fast })
        );
        assert!(Limit::token_bucket(Quota::parse("1000000/s").unwrap(), 10).is_ok());
        assert!(Limit::sliding_segments(q, 0).is_err());
        assert!(Limit::sliding_segments(q, 1001).is_err());
        assert!(Limit::sliding_segments(Quota::parse("1/5ms").unwrap(), 6).is_err());
        // 1000 segments are the most a window may have, and may be had.
        let finest = Limit::sliding_segments(q, 1000).unwrap();
        assert_eq!(
            finest.algorithm(),
            Algorithm::SlidingWindow { segments: 1000 }
        );
        assert_eq!(finest.segment_micros(), 60_000);
        assert_eq!(
            Limit::sliding(Quota::parse("1/5ms").unwrap()).algorithm(),
            Algorithm::SlidingWindow { segments: 5 }
        );
    }

    #[test]
    fn derived_numbers() {
        let l = Limit::token_bucket(Quota::per_minute(100), 20).unwrap();
        assert_eq!(l.capacity(), 20);
        assert_eq!(l.emission_interval(), 600_000);
        assert_eq!(
            Limit::token_bucket(Quota::per_minute(7), 1)
                .unwrap()
                .emission_interval(),
            8_571_429
        );
        assert_eq!(
            Limit::sliding(Quota::per_minute(6)).segment_micros(),
            6_000_000
        );
        let d = l.divided_by(3);
        assert_eq!(d.quota().count(), 33);
        assert_eq!(d.capacity(), 6);
    }
}
