//! The Lua script (`decide.lua`) and the translation of a batch into its arguments and of its
//! reply into a [`Decision`].
//!
//! `EVALSHA <sha> <n> <key>... <op> (<alg> <capacity> <cost> <unit> <window> <tag>)...`,
//! answered by `[now, (wait, remaining, reset_after)...]`, all integers (microseconds for
//! times; a wait of 0 fits, -1 never fits). The request is admitted when every wait is 0.

use std::sync::LazyLock;
use std::time::Duration;

use redis::{Cmd, Value};
use tollgate_core::{
    Algorithm, BucketState, Decision, Limit, Op, Refusal, StoreError, Timestamp, MAX_COUNT,
};

/// The script's source.
pub(crate) const SOURCE: &str = include_str!("decide.lua");

/// The script's SHA1, what `EVALSHA` names it by.
pub(crate) static SHA: LazyLock<String> =
    LazyLock::new(|| redis::Script::new(SOURCE).get_hash().to_owned());

/// One bucket as the script sees it: its key (with the store's prefix) and the numbers of its
/// limit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arg<'a> {
    pub(crate) key: &'a str,
    pub(crate) limit: &'a Limit,
    pub(crate) cost: u64,
}

fn op_code(op: Op) -> u8 {
    match op {
        Op::Charge => 0,
        Op::Peek => 1,
        Op::Refund => 2,
        Op::Penalize => 3,
        Op::Reset => 4,
    }
}

/// The script's numbers for a limit: algorithm, unit and window (µs).
fn limit_args(limit: &Limit) -> Result<(u8, u64, u64), StoreError> {
    let window = limit.quota().period_micros();
    Ok(match limit.algorithm() {
        Algorithm::SlidingWindow { .. } => (1, limit.segment_micros(), window),
        Algorithm::SlidingLog => (2, window, window),
        Algorithm::TokenBucket { .. } => (3, limit.emission_interval(), window),
        Algorithm::FixedWindow => (4, window, window),
        _ => {
            return Err(StoreError::InvalidBatch(
                "this algorithm is not supported by the Redis store",
            ))
        }
    })
}

/// `EVALSHA` (or, with `source`, `EVAL`) of the script on `buckets`.
pub(crate) fn command(op: Op, buckets: &[Arg<'_>], source: bool) -> Result<Cmd, StoreError> {
    let mut cmd = if source {
        let mut c = redis::cmd("EVAL");
        c.arg(SOURCE);
        c
    } else {
        let mut c = redis::cmd("EVALSHA");
        c.arg(SHA.as_str());
        c
    };
    cmd.arg(buckets.len());
    for b in buckets {
        cmd.arg(b.key);
    }
    cmd.arg(op_code(op));
    for b in buckets {
        let (alg, unit, window) = limit_args(b.limit)?;
        // Lua numbers are exact up to 2^53; a cost above that is over any capacity.
        cmd.arg(alg)
            .arg(b.limit.capacity())
            .arg(b.cost.min(MAX_COUNT))
            .arg(unit)
            .arg(window);
        match b.limit.algorithm() {
            // What the stored state of a sliding window starts with: a window whose shape
            // changed starts afresh.
            Algorithm::SlidingWindow { segments } => cmd.arg(format!("{segments}:{unit}|")),
            _ => cmd.arg(""),
        };
    }
    Ok(cmd)
}

fn int(v: &Value) -> Result<i64, StoreError> {
    match v {
        Value::Int(i) => Ok(*i),
        other => Err(StoreError::Protocol(format!(
            "expected an integer in the script's reply, got {other:?}"
        ))),
    }
}

fn non_negative(v: &Value) -> Result<u64, StoreError> {
    u64::try_from(int(v)?).map_err(|_| {
        StoreError::Protocol(format!(
            "expected a non-negative integer in the script's reply, got {v:?}"
        ))
    })
}

/// The script's reply as a decision over `buckets`.
pub(crate) fn decision(reply: &Value, buckets: &[Arg<'_>]) -> Result<Decision, StoreError> {
    let Value::Array(items) = reply else {
        return Err(StoreError::Protocol(format!(
            "expected an array from the rate-limit script, got {reply:?}"
        )));
    };
    if items.len() != 1 + 3 * buckets.len() {
        return Err(StoreError::Protocol(format!(
            "the rate-limit script answered {} values for {} buckets",
            items.len(),
            buckets.len()
        )));
    }
    let now = Timestamp::from_micros(non_negative(&items[0])?);
    let states = buckets
        .iter()
        .zip(items[1..].chunks_exact(3))
        .map(|(b, v)| {
            let (retry_after, refusal) = match int(&v[0])? {
                0 => (None, None),
                -1 => (
                    None,
                    Some(Refusal::CostExceedsCapacity {
                        cost: b.cost,
                        capacity: b.limit.capacity(),
                    }),
                ),
                wait if wait > 0 => (
                    Some(Duration::from_micros(wait as u64)),
                    Some(Refusal::OverLimit),
                ),
                _ => {
                    return Err(StoreError::Protocol(format!(
                        "unexpected wait in the script's reply: {:?}",
                        v[0]
                    )))
                }
            };
            Ok(BucketState {
                allowed: refusal.is_none(),
                limit: b.limit.quota().count(),
                remaining: non_negative(&v[1])?,
                reset_after: Duration::from_micros(non_negative(&v[2])?),
                retry_after,
                refusal,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Decision {
        allowed: states.iter().all(|s| s.allowed),
        now,
        buckets: states,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::Quota;

    #[test]
    fn command_layout() {
        let limit = Limit::token_bucket(Quota::per_minute(100), 20).unwrap();
        let arg = Arg {
            key: "tollgate:x",
            limit: &limit,
            cost: u64::MAX,
        };
        let cmd = command(Op::Penalize, &[arg], false).unwrap();
        let args: Vec<String> = cmd
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => String::new(),
            })
            .collect();
        assert_eq!(
            args,
            [
                "EVALSHA",
                SHA.as_str(),
                "1",
                "tollgate:x",
                "3",
                "3",
                "20",
                &MAX_COUNT.to_string(),
                "600000",
                "60000000",
                ""
            ]
        );
        let sliding = Limit::sliding(Quota::per_minute(100));
        let arg = Arg {
            key: "k",
            limit: &sliding,
            cost: 2,
        };
        let cmd = command(Op::Charge, &[arg], false).unwrap();
        let tail: Vec<String> = cmd
            .args_iter()
            .skip(4)
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => String::new(),
            })
            .collect();
        assert_eq!(
            tail,
            ["0", "1", "100", "2", "6000000", "60000000", "10:6000000|"]
        );
    }

    #[test]
    fn reply_is_checked() {
        let limit = Limit::fixed(Quota::per_day(5));
        let arg = Arg {
            key: "k",
            limit: &limit,
            cost: 9,
        };
        let ok = Value::Array(
            [7, -1, 5, 0]
                .into_iter()
                .map(Value::Int)
                .collect::<Vec<_>>(),
        );
        let d = decision(&ok, &[arg]).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.now, Timestamp::from_micros(7));
        assert_eq!(
            d.buckets[0].refusal,
            Some(Refusal::CostExceedsCapacity {
                cost: 9,
                capacity: 5
            })
        );
        let waits = Value::Array([7, 30, 0, 40].into_iter().map(Value::Int).collect());
        let d = decision(&waits, &[arg]).unwrap();
        assert_eq!(d.buckets[0].retry_after, Some(Duration::from_micros(30)));
        assert_eq!(d.buckets[0].refusal, Some(Refusal::OverLimit));
        let bad = Value::Array([7, -2, 0, 0].into_iter().map(Value::Int).collect());
        assert!(matches!(
            decision(&bad, &[arg]),
            Err(StoreError::Protocol(_))
        ));
        let short = Value::Array(vec![Value::Int(7)]);
        assert!(matches!(
            decision(&short, &[arg]),
            Err(StoreError::Protocol(_))
        ));
        assert!(matches!(
            decision(&Value::Nil, &[arg]),
            Err(StoreError::Protocol(_))
        ));
    }
}
