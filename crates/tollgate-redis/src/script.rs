//! The Lua script (`decide.lua`) and the translation of a batch into its arguments and of its
//! reply into a [`Decision`].
//!
//! `EVALSHA <sha> <n> <key>... <op> (<alg> <k> <capacity> <unit> <cost>)...`, answered by
//! `[allowed, now, (fit, wait, remaining, reset_after)...]`, all integers (microseconds for
//! times).

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

/// The script's numbers for a limit: algorithm, segments, capacity, unit (µs).
fn limit_args(limit: &Limit) -> Result<[u64; 4], StoreError> {
    let cap = limit.capacity();
    Ok(match limit.algorithm() {
        Algorithm::SlidingWindow { segments } => {
            [1, u64::from(segments), cap, limit.segment_micros()]
        }
        Algorithm::SlidingLog => [2, 0, cap, limit.quota().period_micros()],
        Algorithm::TokenBucket { .. } => [3, 0, cap, limit.emission_interval()],
        Algorithm::FixedWindow => [4, 0, cap, limit.quota().period_micros()],
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
        let [alg, k, cap, unit] = limit_args(b.limit)?;
        // Lua numbers are exact up to 2^53; a cost above that is over any capacity.
        cmd.arg(alg)
            .arg(k)
            .arg(cap)
            .arg(unit)
            .arg(b.cost.min(MAX_COUNT));
    }
    Ok(cmd)
}

fn int(v: &Value) -> Result<u64, StoreError> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as u64),
        other => Err(StoreError::Protocol(format!(
            "expected a non-negative integer in the script's reply, got {other:?}"
        ))),
    }
}

/// The script's reply as a decision over `buckets`.
pub(crate) fn decision(reply: &Value, buckets: &[Arg<'_>]) -> Result<Decision, StoreError> {
    let Value::Array(items) = reply else {
        return Err(StoreError::Protocol(format!(
            "expected an array from the rate-limit script, got {reply:?}"
        )));
    };
    if items.len() != 2 + 4 * buckets.len() {
        return Err(StoreError::Protocol(format!(
            "the rate-limit script answered {} values for {} buckets",
            items.len(),
            buckets.len()
        )));
    }
    let allowed = int(&items[0])? == 1;
    let now = Timestamp::from_micros(int(&items[1])?);
    let states = buckets
        .iter()
        .zip(items[2..].chunks_exact(4))
        .map(|(b, v)| {
            let (fit, wait) = (int(&v[0])?, int(&v[1])?);
            let (retry_after, refusal) = match fit {
                0 => (None, None),
                1 => (
                    Some(Duration::from_micros(wait.max(1))),
                    Some(Refusal::OverLimit),
                ),
                _ => (
                    None,
                    Some(Refusal::CostExceedsCapacity {
                        cost: b.cost,
                        capacity: b.limit.capacity(),
                    }),
                ),
            };
            Ok(BucketState {
                allowed: fit == 0,
                limit: b.limit.quota().count(),
                remaining: int(&v[2])?,
                reset_after: Duration::from_micros(int(&v[3])?),
                retry_after,
                refusal,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Decision {
        allowed,
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
                "0",
                "20",
                "600000",
                &MAX_COUNT.to_string()
            ]
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
            [0, 7, 2, 0, 5, 0]
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
        let short = Value::Array(vec![Value::Int(1), Value::Int(7)]);
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
