//! Quota text (`Quota::parse`) and the `Rate` / `Limit` built from it.
//!
//! Invariants: no panic; a quota parses exactly when a separate reading of the documented
//! grammar accepts it, to the same count and period; `Overflow` is answered only when some
//! number is too large, and always when that is the only fault; `Display` reads back to the
//! same quota; `Rate` agrees with `Quota`; limits built from the quota keep their bounds.
#![allow(dead_code)]

use std::time::Duration;

use tollgate::{Limit, Rate};
use tollgate_limits::{Algorithm, Quota, QuotaError, MAX_COUNT, MAX_PERIOD};

/// What the grammar in `Quota::parse`'s documentation says about a text.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    /// A valid quota.
    Quota { count: u64, period_ms: u64 },
    /// Valid in form, but a number is too large.
    TooLarge,
    /// Not a quota; `too_large` if some number in it is too large anyway.
    Invalid { too_large: bool },
}

fn unit_ms(unit: &str) -> Option<u128> {
    // `M` alone is no unit: a month to many, refused rather than read as a minute.
    if unit == "M" {
        return None;
    }
    const UNITS: [(&[&str], u128); 6] = [
        (&["ms", "msec", "msecs", "millisecond", "milliseconds"], 1),
        (&["s", "sec", "secs", "second", "seconds"], 1_000),
        (&["m", "min", "mins", "minute", "minutes"], 60_000),
        (&["h", "hr", "hrs", "hour", "hours"], 3_600_000),
        (&["d", "day", "days"], 86_400_000),
        (&["w", "wk", "week", "weeks"], 604_800_000),
    ];
    UNITS
        .iter()
        .find(|(names, _)| names.iter().any(|n| n.eq_ignore_ascii_case(unit)))
        .map(|&(_, ms)| ms)
}

/// The leading run of characters in `allowed`, and the rest.
fn leading(text: &str, allowed: impl Fn(char) -> bool) -> (&str, &str) {
    let end = text
        .char_indices()
        .find(|&(_, c)| !allowed(c))
        .map_or(text.len(), |(i, _)| i);
    text.split_at(end)
}

/// The value of the digits in `text` (`None` if there are none; `u128::MAX` if huge).
fn digits_value(text: &str) -> Option<u128> {
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    if digits.is_empty() {
        return None;
    }
    Some(digits.parse::<u128>().unwrap_or(u128::MAX))
}

fn expected(input: &str) -> Expected {
    let max_period_ms = MAX_PERIOD.as_millis();
    let text = input.trim();
    let Some((count_part, period_part)) = text.split_once('/') else {
        return Expected::Invalid { too_large: false };
    };
    // Count: digits with `,` / `_` separators between groups of three, then at most one
    // word saying what is counted.
    const WORDS: [&str; 12] = [
        "request", "requests", "req", "reqs", "call", "calls", "point", "points", "token",
        "tokens", "hit", "hits",
    ];
    let (count_digits, word) = leading(count_part.trim(), |c| {
        c.is_ascii_digit() || c == ',' || c == '_'
    });
    let word = word.trim();
    let word_ok = word.is_empty() || WORDS.iter().any(|w| word.eq_ignore_ascii_case(w));
    let mut groups = count_digits.split([',', '_']);
    let first = groups.next().unwrap_or_default();
    let grouping_ok = !first.is_empty()
        && (count_digits.len() == first.len() || first.len() <= 3)
        && groups.all(|g| g.len() == 3);
    let count_ok_form = word_ok && grouping_ok;
    let count = digits_value(count_digits);
    // Period: an optional multiplier (digits, `_`), then a unit.
    let (multiplier_text, unit) = leading(period_part.trim(), |c| c.is_ascii_digit() || c == '_');
    let unit = unit.trim();
    let multiplier = if multiplier_text.is_empty() {
        Some(1)
    } else {
        digits_value(multiplier_text)
    };
    let unit = unit_ms(unit);

    let count_too_large = count_ok_form && count.is_some_and(|c| c > u128::from(MAX_COUNT));
    let multiplier_too_large = multiplier.is_some_and(|m| {
        m > max_period_ms || unit.is_some_and(|u| m.saturating_mul(u) > max_period_ms)
    });
    let too_large = count_too_large || multiplier_too_large;

    let form_ok = count_ok_form
        && count.is_some_and(|c| c > 0)
        && multiplier.is_some_and(|m| m > 0)
        && unit.is_some();
    match (form_ok, too_large) {
        (true, true) => Expected::TooLarge,
        (true, false) => Expected::Quota {
            count: count.unwrap_or_default() as u64,
            period_ms: (multiplier.unwrap_or_default() * unit.unwrap_or_default()) as u64,
        },
        (false, too_large) => Expected::Invalid { too_large },
    }
}

/// Checks one text.
pub fn check_text(text: &str) {
    let parsed = Quota::parse(text);
    let expected = expected(text);
    match (&parsed, &expected) {
        (Ok(q), Expected::Quota { count, period_ms }) => {
            assert_eq!(
                (q.count(), q.period()),
                (*count, Duration::from_millis(*period_ms)),
                "{text:?}"
            );
        }
        (Err(QuotaError::Overflow { .. }), Expected::TooLarge)
        | (Err(QuotaError::Overflow { .. }), Expected::Invalid { too_large: true }) => {}
        (Err(QuotaError::Overflow { .. }), _) => {
            panic!("{text:?}: Overflow, but no number is too large ({expected:?})")
        }
        (Err(e), Expected::TooLarge) => panic!("{text:?}: {e:?}, expected Overflow"),
        (Err(_), Expected::Invalid { .. }) => {}
        (Ok(q), _) => panic!("{text:?}: parsed as {q:?}, expected {expected:?}"),
        (Err(e), Expected::Quota { .. }) => panic!("{text:?}: {e:?}, expected {expected:?}"),
    }
    // Messages never panic and say something.
    if let Err(e) = &parsed {
        assert!(!e.to_string().is_empty());
    }
    let Ok(quota) = parsed else {
        let rate = Rate::from(text).limit();
        assert_eq!(rate.map_err(|e| e.source), Err(parsed.unwrap_err()));
        return;
    };
    check_quota(text, quota);
}

fn check_quota(text: &str, quota: Quota) {
    assert!((1..=MAX_COUNT).contains(&quota.count()), "{text:?}");
    assert!(
        quota.period() >= Duration::from_millis(1) && quota.period() <= MAX_PERIOD,
        "{text:?}"
    );
    assert_eq!(quota.period().subsec_nanos() % 1_000_000, 0, "{text:?}");
    assert_eq!(Quota::new(quota.count(), quota.period()), Ok(quota));
    // Display reads back.
    let shown = quota.to_string();
    assert_eq!(
        Quota::parse(&shown),
        Ok(quota),
        "{text:?} shown as {shown:?}"
    );
    assert_eq!(Quota::parse(&format!(" {text} ")), Ok(quota), "{text:?}");

    // Rate agrees with Quota, for every algorithm.
    let sliding = Rate::from(text).limit().expect("a parsed quota is a rate");
    assert_eq!(sliding.quota(), quota);
    assert_eq!(sliding, Limit::sliding(quota));
    assert_eq!(Rate::exact(text).limit().map(|l| l.quota()), Ok(quota));
    assert_eq!(Rate::fixed(text).limit().map(|l| l.quota()), Ok(quota));
    let Algorithm::SlidingWindow { segments } = sliding.algorithm() else {
        panic!("{text:?}: Rate::from is not a sliding window");
    };
    assert!(segments >= 1 && u128::from(segments) <= quota.period().as_millis());
    check_limit(sliding);

    for burst in [0, 1, 2, quota.count(), MAX_COUNT, u64::MAX] {
        let bucket = Rate::token_bucket(text, burst).limit();
        match bucket {
            Ok(limit) => {
                assert_eq!(limit.capacity(), burst);
                assert_eq!(limit.quota(), quota);
                let refill = u128::from(burst) * u128::from(limit.emission_interval());
                assert!(refill <= MAX_PERIOD.as_micros(), "{text:?} burst {burst}");
                check_limit(limit);
            }
            Err(e) => assert!(
                burst == 0
                    || quota.count() > quota.period_micros()
                    || u128::from(burst) * u128::from(Limit::sliding(quota).emission_interval())
                        > MAX_PERIOD.as_micros(),
                "{text:?} burst {burst}: {e}"
            ),
        }
    }
    let ms = quota.period().as_millis();
    for segments in [
        0,
        1,
        10,
        1000,
        1001,
        ms.min(u128::from(u32::MAX)) as u32,
        u32::MAX,
    ] {
        match Limit::sliding_segments(quota, segments) {
            Ok(limit) => {
                assert!((1..=1000).contains(&segments) && u128::from(segments) <= ms);
                check_limit(limit);
            }
            Err(_) => assert!(segments == 0 || segments > 1000 || u128::from(segments) > ms),
        }
    }
}

fn check_limit(limit: Limit) {
    let _ = limit.to_string();
    assert!(limit.emission_interval() >= 1);
    assert!(limit.segment_micros() >= 1);
    for divisor in [0, 1, 3, u32::MAX] {
        let divided = limit.divided_by(divisor);
        assert!(divided.capacity() >= 1 && divided.capacity() <= limit.capacity());
        assert_eq!(divided.quota().period(), limit.quota().period());
    }
}

/// The fuzz target: the bytes as text (invalid UTF-8 replaced).
pub fn run(data: &[u8]) {
    check_text(&String::from_utf8_lossy(data));
}
