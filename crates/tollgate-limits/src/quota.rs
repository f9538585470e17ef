//! Quotas: "N per period", as users type them (`100/min`, `20/15m`, `10000/day`).
//!
//! ```
//! use std::time::Duration;
//! use tollgate_limits::Quota;
//!
//! let q: Quota = "20/15min".parse()?;
//! assert_eq!(q.count(), 20);
//! assert_eq!(q.period(), Duration::from_secs(15 * 60));
//! assert_eq!(q.to_string(), "20/15min");
//! assert_eq!(Quota::parse("10,000 / hour")?, Quota::per_hour(10_000));
//! assert!(Quota::parse("10/fortnight").is_err());
//! # Ok::<(), tollgate_limits::QuotaError>(())
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Examples shown in every parse error, so the message says what is accepted.
const EXAMPLES: &str = "expected a count and a period such as `100/min`, `20/15m`, `5/30 minutes`, `10000/day` or `60/60s`";

/// The largest count a quota may have (2^53 − 1: below 2^53, where the Redis store's
/// script, computing in Lua numbers, saturates its counts and costs, so that it decides
/// exactly like the memory store; at 2^53 a saturated count fitted the quota again).
pub const MAX_COUNT: u64 = (1 << 53) - 1;

/// The longest period a quota may have: 400 days.
pub const MAX_PERIOD: Duration = Duration::from_secs(400 * 86_400);

/// At most the first 64 characters of `text`, then `…` if it was longer: what an error
/// echoes of an input (a rate sent to an admin endpoint may be 100 KB).
fn excerpt(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// Why a quota (or a burst) could not be built. Each message names the input and shows
/// what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuotaError {
    /// The input was empty.
    #[error("empty quota: {EXAMPLES}")]
    Empty,
    /// The input has no `/` between count and period.
    #[error("`{input}` has no `/`: {EXAMPLES}")]
    MissingSlash {
        /// The input as given (at most its first 64 characters, then `…`).
        input: String,
    },
    /// The count is not a whole number.
    #[error("`{input}`: `{count}` is not a whole number: {EXAMPLES}")]
    BadCount {
        /// The input as given (at most its first 64 characters, then `…`).
        input: String,
        /// The part that should have been the count.
        count: String,
    },
    /// The count is zero; a quota of zero would refuse everything.
    #[error("`{input}`: the count must be at least 1 as in `100/min` (to not limit a route, make it exempt)")]
    ZeroCount {
        /// The input as given (at most its first 64 characters, then `…`).
        input: String,
    },
    /// The period's multiplier is not a whole number.
    #[error("`{input}`: `{period}` is not a period: {EXAMPLES}")]
    BadPeriod {
        /// The input as given (at most its first 64 characters, then `…`).
        input: String,
        /// The part that should have been the period.
        period: String,
    },
    /// The period is zero, or shorter than a millisecond, or not a whole number of milliseconds.
    #[error("`{input}`: the period must be a whole number of milliseconds, at least 1 ms, as in `60/60s` or `100/min`")]
    ZeroPeriod {
        /// The input as given (at most its first 64 characters, then `…`).
        input: String,
    },
    /// The time unit is not one tollgate knows.
    #[error("`{input}`: unknown time unit `{unit}`; use ms, s/sec/second, m/min/minute, h/hr/hour, d/day or w/week, as in `100/min`, `20/15m` or `10000/day`")]
    UnknownUnit {
        /// The input as given (at most its first 64 characters, then `…`).
        input: String,
        /// The unit that was not recognised.
        unit: String,
    },
    /// The count is above [`MAX_COUNT`] or the period above [`MAX_PERIOD`].
    #[error("`{input}`: too large; a count may be at most 2^53 - 1 and a period at most 400 days")]
    Overflow {
        /// The input as given (at most its first 64 characters, then `…`).
        input: String,
    },
    /// A burst (token bucket capacity) of zero.
    #[error("a burst (bucket capacity) must be at least 1 (a token bucket's burst in code, or `burst: 20/s` in a configuration file)")]
    ZeroBurst,
    /// A token bucket whose capacity takes longer than [`MAX_PERIOD`] to refill.
    #[error("a token bucket of burst {burst} refilling at {sustained} takes longer than 400 days to refill")]
    BurstTooLarge {
        /// The burst (capacity).
        burst: u64,
        /// The sustained rate.
        sustained: Quota,
    },
    /// A token bucket refilling faster than one token a microsecond, the finest step it
    /// counts in (it would be slowed to that without a word).
    #[error("a token bucket refills at most one token a microsecond (1000000/s); {sustained} is faster: use a sliding window, or count in larger units")]
    TokenBucketTooFast {
        /// The sustained rate.
        sustained: Quota,
    },
    /// A sliding window split into zero segments, or more segments than milliseconds.
    #[error("a sliding window of {period:?} cannot be split into {segments} segments (1 to 1000, at most one per millisecond)")]
    BadSegments {
        /// The window.
        period: Duration,
        /// The number of segments asked for.
        segments: u32,
    },
}

/// A number of requests (or points) allowed per period: "100 per minute".
///
/// The count is at least 1 and at most [`MAX_COUNT`]; the period is a whole number of
/// milliseconds between 1 ms and [`MAX_PERIOD`]. A `Quota` says nothing about how requests
/// are counted; that is the [`Limit`](crate::Limit)'s algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    count: u64,
    period_ms: u64,
}

impl Quota {
    /// A quota of `count` per `period`.
    ///
    /// # Errors
    ///
    /// A zero count, a period of zero or not a whole number of milliseconds, or values above
    /// [`MAX_COUNT`] / [`MAX_PERIOD`].
    pub fn new(count: u64, period: Duration) -> Result<Self, QuotaError> {
        let input = || format!("{count} per {period:?}");
        if count == 0 {
            return Err(QuotaError::ZeroCount { input: input() });
        }
        // (Too large first: `Duration::MAX` is not whole milliseconds either, and its
        // fault is its size.)
        if count > MAX_COUNT || period > MAX_PERIOD {
            return Err(QuotaError::Overflow { input: input() });
        }
        if period.is_zero() || !period.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(QuotaError::ZeroPeriod { input: input() });
        }
        Ok(Self {
            count,
            period_ms: period.as_millis() as u64,
        })
    }

    const fn fixed(count: u64, period_ms: u64) -> Self {
        assert!(count > 0, "a quota's count must be at least 1");
        assert!(
            count <= MAX_COUNT,
            "a quota's count must be at most 2^53 - 1"
        );
        Self { count, period_ms }
    }

    /// `count` per second.
    ///
    /// # Panics
    ///
    /// If `count` is zero or above [`MAX_COUNT`] (at compile time when used in a `const`).
    /// Use [`Quota::new`] for counts that come from input.
    pub const fn per_second(count: u64) -> Self {
        Self::fixed(count, 1_000)
    }

    /// `count` per minute. Panics like [`Quota::per_second`].
    pub const fn per_minute(count: u64) -> Self {
        Self::fixed(count, 60_000)
    }

    /// `count` per hour. Panics like [`Quota::per_second`].
    pub const fn per_hour(count: u64) -> Self {
        Self::fixed(count, 3_600_000)
    }

    /// `count` per day. Panics like [`Quota::per_second`].
    pub const fn per_day(count: u64) -> Self {
        Self::fixed(count, 86_400_000)
    }

    /// Parses a quota as users write it: `count/period`, where the period is an optional
    /// whole multiplier and a unit (`ms`, `s`/`sec`/`second`, `m`/`min`/`minute`,
    /// `h`/`hr`/`hour`, `d`/`day`, `w`/`week`, plurals too, any case, except `M` alone: a
    /// month to many, it is refused rather than read as a minute). Spaces are allowed
    /// around the parts, the count may use `,` or `_` as thousands separators (between
    /// groups of three digits) and may be followed by a word for what is counted
    /// (`60 requests / 60 s`; also `calls`, `points`, `tokens`, `hits`, `req`).
    ///
    /// # Errors
    ///
    /// A [`QuotaError`] saying what was wrong and what is accepted.
    pub fn parse(input: &str) -> Result<Self, QuotaError> {
        let text = input.trim();
        if text.is_empty() {
            return Err(QuotaError::Empty);
        }
        let owned = || excerpt(text);
        let (count_part, period_part) = text
            .split_once('/')
            .ok_or_else(|| QuotaError::MissingSlash { input: owned() })?;
        let count = parse_count(count_part).map_err(|fault| match fault {
            CountFault::TooLarge => QuotaError::Overflow { input: owned() },
            CountFault::NotACount => QuotaError::BadCount {
                input: owned(),
                count: excerpt(count_part.trim()),
            },
        })?;
        if count == 0 {
            return Err(QuotaError::ZeroCount { input: owned() });
        }
        let period = period_part.trim();
        let split = period
            .find(|c: char| !c.is_ascii_digit() && c != '_')
            .unwrap_or(period.len());
        let (multiplier, unit) = period.split_at(split);
        let unit = unit.trim();
        let multiplier: u64 = if multiplier.is_empty() {
            1
        } else {
            let digits = multiplier.replace('_', "");
            if digits.is_empty() {
                return Err(QuotaError::BadPeriod {
                    input: owned(),
                    period: excerpt(period),
                });
            }
            digits
                .parse()
                .map_err(|_| QuotaError::Overflow { input: owned() })?
        };
        // No unit, or a multiplier that is not a whole number (`0.5s`: not a unit `.5s`).
        if unit.is_empty() || unit.starts_with(['.', ',']) {
            return Err(QuotaError::BadPeriod {
                input: owned(),
                period: excerpt(period),
            });
        }
        let unit_ms = unit_millis(unit).ok_or_else(|| QuotaError::UnknownUnit {
            input: owned(),
            unit: excerpt(unit),
        })?;
        if multiplier == 0 {
            return Err(QuotaError::ZeroPeriod { input: owned() });
        }
        let period_ms = multiplier
            .checked_mul(unit_ms)
            .ok_or_else(|| QuotaError::Overflow { input: owned() })?;
        if count > MAX_COUNT || period_ms > MAX_PERIOD.as_millis() as u64 {
            return Err(QuotaError::Overflow { input: owned() });
        }
        Ok(Self { count, period_ms })
    }

    /// How many requests (or points) the quota allows per period.
    pub const fn count(&self) -> u64 {
        self.count
    }

    /// The period.
    pub const fn period(&self) -> Duration {
        Duration::from_millis(self.period_ms)
    }

    /// The period in microseconds, the unit every algorithm counts time in.
    pub const fn period_micros(&self) -> u64 {
        self.period_ms * 1_000
    }

    /// The same period with `count` divided by `divisor` (rounded down, at least 1): what
    /// each of `divisor` instances may admit when they cannot share state.
    pub fn divided_by(&self, divisor: u32) -> Self {
        let count = (self.count / u64::from(divisor.max(1))).max(1);
        Self { count, ..*self }
    }
}

/// Why a count did not parse.
enum CountFault {
    /// Not digits (with separators) and at most one word.
    NotACount,
    /// Digits, but more than a `u64` holds.
    TooLarge,
}

/// The words a count may be followed by (`60 requests / 60 s`): what is counted, never a
/// unit of time (`20 hours/min` is a mistake, not 20 a minute).
const COUNT_WORDS: [&str; 12] = [
    "request", "requests", "req", "reqs", "call", "calls", "point", "points", "token", "tokens",
    "hit", "hits",
];

fn parse_count(part: &str) -> Result<u64, CountFault> {
    let part = part.trim();
    // An optional trailing word: "60 requests".
    let digits_end = part
        .find(|c: char| !(c.is_ascii_digit() || c == ',' || c == '_'))
        .unwrap_or(part.len());
    let (digits, rest) = part.split_at(digits_end);
    let rest = rest.trim();
    if !rest.is_empty() && !COUNT_WORDS.iter().any(|w| rest.eq_ignore_ascii_case(w)) {
        return Err(CountFault::NotACount);
    }
    // Separators only between groups of three digits: `10,000`, `1_000_000`; not `1,0,0`.
    let mut groups = digits.split([',', '_']);
    let first = groups.next().unwrap_or_default();
    let grouped = digits.len() > first.len();
    if first.is_empty()
        || (grouped && first.len() > 3)
        || groups.any(|g| g.len() != 3 || !g.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(CountFault::NotACount);
    }
    let digits: String = digits.chars().filter(|c| c.is_ascii_digit()).collect();
    digits.parse().map_err(|_| CountFault::TooLarge)
}

fn unit_millis(unit: &str) -> Option<u64> {
    // Units are read in any case, but `M` alone is a month to many (`10000/M`): read as a
    // minute, such a quota would be 43,200 times what was meant. Months are no unit.
    if unit == "M" {
        return None;
    }
    let unit = unit.to_ascii_lowercase();
    let ms = match unit.as_str() {
        "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => 1,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        "w" | "wk" | "week" | "weeks" => 604_800_000,
        _ => return None,
    };
    Some(ms)
}

impl FromStr for Quota {
    type Err = QuotaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Quota {
    /// Prints the quota in the syntax [`Quota::parse`] reads, in the largest unit that
    /// divides the period: `100/min`, `20/15min`, `10000/day`, `5/90s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str, &str); 5] = [
            (86_400_000, "day", "d"),
            (3_600_000, "h", "h"),
            (60_000, "min", "min"),
            (1_000, "s", "s"),
            (1, "ms", "ms"),
        ];
        for (ms, one, many) in UNITS {
            if self.period_ms.is_multiple_of(ms) {
                let n = self.period_ms / ms;
                return if n == 1 {
                    write!(f, "{}/{one}", self.count)
                } else {
                    write!(f, "{}/{n}{many}", self.count)
                };
            }
        }
        unreachable!("every period is a whole number of milliseconds")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quota {
        Quota::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_what_users_type() {
        assert_eq!(q("100/min"), Quota::per_minute(100));
        assert_eq!(q("20/15m").period(), Duration::from_secs(900));
        assert_eq!(q("20/15min"), q("20/15m"));
        assert_eq!(q("5/30 minutes").period(), Duration::from_secs(1800));
        assert_eq!(q("10000/day"), Quota::per_day(10_000));
        assert_eq!(q("12000/h"), Quota::per_hour(12_000));
        assert_eq!(q("60/60s"), Quota::per_minute(60));
        assert_eq!(q("1000/1d"), Quota::per_day(1000));
        assert_eq!(q("10,000 / hour"), Quota::per_hour(10_000));
        assert_eq!(q("60 requests / 60 s"), Quota::per_minute(60));
        assert_eq!(q("20/S").period(), Duration::from_secs(1));
        assert_eq!(q("3/250ms").period(), Duration::from_millis(250));
        assert_eq!(q("1/2w").period(), Duration::from_secs(14 * 86_400));
        // A first group of three digits before a separator is a thousands group too.
        assert_eq!(q("100,000/min"), Quota::per_minute(100_000));
        assert_eq!(q("999_999 requests/day"), Quota::per_day(999_999));
    }

    /// The largest count (2^53 − 1) and the longest period (400 days) are quotas, in text
    /// and in code; one more of either is [`QuotaError::Overflow`].
    #[test]
    fn the_largest_count_and_period_are_accepted_and_one_more_is_not() {
        let largest = q("9007199254740991/min");
        assert_eq!(largest.count(), 9_007_199_254_740_991);
        assert_eq!(largest.count(), MAX_COUNT);
        assert!(matches!(
            Quota::parse("9007199254740992/min"),
            Err(QuotaError::Overflow { .. })
        ));
        assert!(matches!(
            Quota::parse("18446744073709551615/min"),
            Err(QuotaError::Overflow { .. })
        ));
        assert_eq!(q("1/400d").period(), Duration::from_secs(400 * 86_400));
        assert_eq!(q("1/400d").period(), MAX_PERIOD);
        assert_eq!(q("1/34560000000ms"), q("1/400d"));
        assert!(matches!(
            Quota::parse("1/34560000001ms"),
            Err(QuotaError::Overflow { .. })
        ));
        assert!(matches!(
            Quota::parse("1/401d"),
            Err(QuotaError::Overflow { .. })
        ));
        assert_eq!(
            Quota::new(MAX_COUNT, MAX_PERIOD),
            Ok(q("9007199254740991/400d"))
        );
        // The longest `Duration` is too long, though not whole milliseconds either (it
        // was called a zero period).
        assert!(matches!(
            Quota::new(1, Duration::MAX),
            Err(QuotaError::Overflow { .. })
        ));
        assert!(matches!(
            Quota::new(1, MAX_PERIOD + Duration::from_millis(1)),
            Err(QuotaError::Overflow { .. })
        ));
    }

    #[test]
    fn bad_input_is_a_typed_error_that_shows_examples() {
        assert_eq!(Quota::parse(""), Err(QuotaError::Empty));
        assert_eq!(Quota::parse("   "), Err(QuotaError::Empty));
        assert!(matches!(
            Quota::parse("0/min"),
            Err(QuotaError::ZeroCount { .. })
        ));
        assert!(matches!(
            Quota::parse("10/0s"),
            Err(QuotaError::ZeroPeriod { .. })
        ));
        assert!(matches!(
            Quota::parse("abc"),
            Err(QuotaError::MissingSlash { .. })
        ));
        assert!(matches!(
            Quota::parse("abc/min"),
            Err(QuotaError::BadCount { .. })
        ));
        assert!(matches!(
            Quota::parse("-5/min"),
            Err(QuotaError::BadCount { .. })
        ));
        assert!(matches!(
            Quota::parse("1.5/min"),
            Err(QuotaError::BadCount { .. })
        ));
        // A word after the count says what is counted, never a unit of time; separators
        // come between groups of three digits.
        for bad in [
            "20 hours/min",
            "5 x/min",
            "1,0,0/min",
            "1,00/min",
            "1000,000/min",
            "_1/s",
            "1,/s",
        ] {
            assert!(
                matches!(Quota::parse(bad), Err(QuotaError::BadCount { .. })),
                "{bad}: {:?}",
                Quota::parse(bad)
            );
        }
        assert_eq!(q("1_000_000 calls/day"), Quota::per_day(1_000_000));
        assert_eq!(q("100 Points / min"), Quota::per_minute(100));
        let fortnight = Quota::parse("10/fortnight").unwrap_err();
        assert!(
            matches!(fortnight, QuotaError::UnknownUnit { ref unit, .. } if unit == "fortnight")
        );
        assert!(fortnight.to_string().contains("`100/min`"), "{fortnight}");
        // A period that is not a whole number is named whole, not as a unit `.5s`.
        for bad in ["1/0.5s", "1/1,5min"] {
            let error = Quota::parse(bad).unwrap_err();
            assert!(
                matches!(error, QuotaError::BadPeriod { ref period, .. } if bad.ends_with(period.as_str())),
                "{bad}: {error}"
            );
        }
        assert!(matches!(
            Quota::parse("99999999999999999999999/min"),
            Err(QuotaError::Overflow { .. })
        ));
        assert!(matches!(
            Quota::parse("10/99999999999999999999d"),
            Err(QuotaError::Overflow { .. })
        ));
        assert!(matches!(
            Quota::parse("10/500d"),
            Err(QuotaError::Overflow { .. })
        ));
        assert!(matches!(
            Quota::parse("10/"),
            Err(QuotaError::BadPeriod { .. })
        ));
        assert!(matches!(
            Quota::parse("10/15"),
            Err(QuotaError::BadPeriod { .. })
        ));
        // Only a number that is too large is "too large".
        assert!(matches!(
            Quota::parse("999999999999999999=9990/min"),
            Err(QuotaError::BadCount { .. })
        ));
        assert!(matches!(
            Quota::parse("10/_s"),
            Err(QuotaError::BadPeriod { .. })
        ));
        for bad in ["", "abc", "0/min", "10/0s", "10/fortnight"] {
            let msg = Quota::parse(bad).unwrap_err().to_string();
            assert!(msg.contains("min"), "{bad}: {msg}");
        }
        // `M` alone may mean a month: not read as a minute (a review: `100/M` was 100 a
        // minute), in any spelling of the period; `m` and `MIN` still are minutes.
        for month in ["100/M", "10000/1M", "5/ 2 M"] {
            assert!(
                matches!(Quota::parse(month), Err(QuotaError::UnknownUnit { .. })),
                "{month}"
            );
        }
        for minute in ["100/m", "100/MIN", "100/Min"] {
            assert_eq!(
                Quota::parse(minute).unwrap(),
                Quota::per_minute(100),
                "{minute}"
            );
        }
        // A huge input is echoed cut (an admin endpoint answered a 100 KB rate whole).
        let huge = format!("5/{}", "é".repeat(100_000));
        let msg = Quota::parse(&huge).unwrap_err().to_string();
        assert!(msg.len() < 600, "{} bytes", msg.len());
        assert!(msg.contains(&format!("`5/{}…`", "é".repeat(62))), "{msg}");
    }

    #[test]
    fn new_validates() {
        assert!(Quota::new(0, Duration::from_secs(1)).is_err());
        assert!(Quota::new(1, Duration::ZERO).is_err());
        assert!(Quota::new(1, Duration::from_micros(1500)).is_err());
        assert!(Quota::new(MAX_COUNT + 1, Duration::from_secs(1)).is_err());
        assert_eq!(
            Quota::new(500, Duration::from_secs(60)),
            Ok(Quota::per_minute(500))
        );
    }

    #[test]
    fn display_round_trips() {
        for (input, shown) in [
            ("100/min", "100/min"),
            ("20/15m", "20/15min"),
            ("10000/day", "10000/day"),
            ("60/60s", "60/min"),
            ("5/90s", "5/90s"),
            ("1/2w", "1/14d"),
            ("7/1500ms", "7/1500ms"),
            ("12000/h", "12000/h"),
        ] {
            assert_eq!(q(input).to_string(), shown);
            assert_eq!(q(shown), q(input));
        }
    }

    #[test]
    fn divided_by_keeps_at_least_one() {
        assert_eq!(Quota::per_minute(100).divided_by(4).count(), 25);
        assert_eq!(Quota::per_minute(3).divided_by(4).count(), 1);
        assert_eq!(Quota::per_minute(3).divided_by(0).count(), 3);
    }
}
