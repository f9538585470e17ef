//! The Lua scripts and the translation of a batch into their arguments and of their replies
//! into a [`Decision`].
//!
//! `decide.lua` decides any batch: `EVALSHA <sha> <n> <key>... <op> (<alg> <capacity> <cost>
//! <unit> <window> <tag>)... [<now>]`, answered by `[now, (wait, remaining, reset_after)...]`,
//! all integers (microseconds for times; a wait of 0 fits, -1 never fits). The request is
//! admitted when every wait is 0. `<now>` (µs) is sent when a bucket is a fixed window: its
//! window is placed by the instance's clock, and the script then decides by that clock.
//!
//! `fixed.lua` charges one fixed window: `EVALSHA <sha> 1 <window key> <cost> <capacity>
//! <ms to live> [-]`, answered by one integer (the count after the charge, or minus one minus
//! the count before a refused one); the rest of the decision is worked out here from the
//! instance's clock.

use std::sync::LazyLock;
use std::time::Duration;

use redis::{Cmd, Value};
use tollgate_limits::{
    Algorithm, BucketState, Decision, Limit, Op, Refusal, StoreError, Timestamp, MAX_COUNT,
};

/// Where the script's numbers saturate: 2^53, the largest integer up to which Lua's numbers
/// are exact. Above every capacity ([`MAX_COUNT`] is one less), so a cost sent as this is
/// refused as the cost itself would be.
const SATURATED: u64 = MAX_COUNT + 1;

/// The general script's source.
pub(crate) const SOURCE: &str = include_str!("decide.lua");

/// The general script's SHA1, what `EVALSHA` names it by.
pub(crate) static SHA: LazyLock<String> =
    LazyLock::new(|| redis::Script::new(SOURCE).get_hash().to_owned());

/// The source of the script that charges one fixed window.
pub(crate) const FIXED_SOURCE: &str = include_str!("fixed.lua");

/// Its SHA1.
pub(crate) static FIXED_SHA: LazyLock<String> =
    LazyLock::new(|| redis::Script::new(FIXED_SOURCE).get_hash().to_owned());

/// One bucket as the scripts see it: its key (with the store's prefix; for a fixed window,
/// its window's key) and the numbers of its limit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arg<'a> {
    pub(crate) key: &'a str,
    pub(crate) limit: &'a Limit,
    pub(crate) cost: u64,
    /// A fixed window whose bucket's key in the format before the window keys is on
    /// another Redis Cluster slot: the scripts must not read it.
    pub(crate) no_migration: bool,
    /// A count placed by its freshness (see `decide.lua`): a restore or a give-back. A call
    /// places if any of its buckets has it.
    pub(crate) placed: Option<Placed>,
}

/// How [`Arg::placed`] places `cost`: fresh again in `fresh` microseconds, raising the key
/// to at least `cost` counted (a restore, after Redis restarted empty) or adding `cost` to
/// it (`add`: a give-back of what a fallback admitted while Redis failed).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placed {
    pub(crate) fresh: u64,
    pub(crate) add: bool,
}

/// How long every key outlives its state (decide.lua adds the same): an instance whose clock
/// runs behind the server's by less still finds what counts (a fixed window's key names its
/// window, and a state read after it is fresh again reads as fresh, so a later expiry
/// changes no decision).
const EXPIRY_SLACK_US: u64 = 1_000_000;

/// A fixed window of `period` µs at `now`: its index, where it ends (µs) and when its key
/// expires (Unix ms).
pub(crate) fn fixed_window(period: u64, now: u64) -> (u64, u64, u64) {
    let index = now / period;
    let end = (index + 1).saturating_mul(period);
    let expiry = end.saturating_add(EXPIRY_SLACK_US).div_ceil(1000);
    (index, end, expiry)
}

/// One call of a script: the operation, the buckets and, for a request with a fixed window,
/// the instance's clock (µs) that placed its window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    pub(crate) op: Op,
    pub(crate) buckets: &'a [Arg<'a>],
    pub(crate) now: Option<u64>,
}

impl Call<'_> {
    /// Whether `fixed.lua` takes the call: a charge of one fixed window, at a cost (a charge
    /// of 0 changes nothing, which `decide.lua` knows).
    pub(crate) fn is_fixed(&self) -> bool {
        matches!(
            (self.op, self.buckets, self.now),
            (Op::Charge, [b], Some(_)) if b.cost > 0 && matches!(b.limit.algorithm(), Algorithm::FixedWindow)
        )
    }

    /// The SHA of the script this call runs, and its source.
    pub(crate) fn script(&self) -> (&'static str, &'static str) {
        if self.is_fixed() {
            (FIXED_SHA.as_str(), FIXED_SOURCE)
        } else {
            (SHA.as_str(), SOURCE)
        }
    }

    /// `EVALSHA` (or, with `source`, `EVAL`) of the call.
    pub(crate) fn command(&self, source: bool) -> Result<Cmd, StoreError> {
        let (sha, text) = self.script();
        let mut cmd = if source {
            let mut c = redis::cmd("EVAL");
            c.arg(text);
            c
        } else {
            let mut c = redis::cmd("EVALSHA");
            c.arg(sha);
            c
        };
        if let (true, [b], Some(now)) = (self.is_fixed(), self.buckets, self.now) {
            let (_, _, expiry) = fixed_window(b.limit.quota().period_micros(), now);
            // How long the key lives from now: relative, as the instance's clock may differ
            // from the server's.
            let ttl = expiry.saturating_sub(now / 1000).max(1);
            cmd.arg(1)
                .arg(b.key)
                .arg(b.cost.min(SATURATED))
                .arg(b.limit.capacity())
                .arg(ttl);
            if b.no_migration {
                cmd.arg("-");
            }
            return Ok(cmd);
        }
        cmd.arg(self.buckets.len());
        for b in self.buckets {
            cmd.arg(b.key);
        }
        let placed = self.buckets.iter().find_map(|b| b.placed);
        match (self.op, placed) {
            (_, Some(Placed { add: false, .. })) => cmd.arg(RESTORE),
            (_, Some(Placed { add: true, .. })) => cmd.arg(GIVE_BACK),
            // The refund of a charge answered at `at`: `2:<at>` (µs, on the clock that answered).
            (Op::RefundAt(at), None) => cmd.arg(format!("{}:{}", op_code(self.op), at.as_micros())),
            (op, None) => cmd.arg(op_code(op)),
        };
        for b in self.buckets {
            let (alg, unit, window) = limit_args(b.limit)?;
            // Lua numbers are exact up to 2^53; a cost of that or more is over any capacity.
            cmd.arg(alg)
                .arg(b.limit.capacity())
                .arg(b.cost.min(SATURATED));
            match (b.limit.algorithm(), self.now) {
                // The key's expiry (ms) in place of the unit.
                (Algorithm::FixedWindow, Some(now)) => cmd.arg(fixed_window(window, now).2),
                _ => cmd.arg(unit),
            };
            cmd.arg(window);
            match b.limit.algorithm() {
                // What the stored state of a sliding window starts with: the state of a
                // window whose shape changed is another shape's, whose count carries over.
                Algorithm::SlidingWindow { segments } => cmd.arg(format!("{segments}:{unit}|")),
                Algorithm::FixedWindow if b.no_migration => cmd.arg("-"),
                _ => cmd.arg(""),
            };
        }
        if placed.is_some() {
            for b in self.buckets {
                cmd.arg(b.placed.map_or(0, |p| p.fresh).min(SATURATED));
            }
        }
        if let Some(now) = self.now {
            cmd.arg(now);
        }
        Ok(cmd)
    }

    /// The script's reply as a decision.
    pub(crate) fn decision(&self, reply: &Value) -> Result<Decision, StoreError> {
        match (self.is_fixed(), self.buckets, self.now) {
            (true, [b], Some(now)) => fixed_decision(reply, b, now),
            _ => decision(reply, self.buckets),
        }
    }
}

/// `decide.lua`'s code for a restore (no [`Op`] of its own: only the fallback's write-back to
/// a Redis that restarted empty sends it).
const RESTORE: u8 = 5;

/// `decide.lua`'s code for a give-back placed by its freshness (no [`Op`] of its own: only
/// the fallback's give-back of what memory admitted while Redis failed sends it).
const GIVE_BACK: u8 = 6;

fn op_code(op: Op) -> u8 {
    match op {
        Op::Charge => 0,
        Op::Peek => 1,
        Op::Refund | Op::RefundAt(_) => 2,
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

/// `fixed.lua`'s reply (one integer) as the decision on `b` at `now`, as the memory store
/// reports a fixed window.
fn fixed_decision(reply: &Value, b: &Arg<'_>, now: u64) -> Result<Decision, StoreError> {
    let (_, end, _) = fixed_window(b.limit.quota().period_micros(), now);
    let left = Duration::from_micros(end - now);
    let cap = b.limit.capacity();
    let state = match int(reply)? {
        n if n > 0 => BucketState {
            allowed: true,
            limit: b.limit.shown_count(),
            remaining: cap.saturating_sub(n as u64),
            reset_after: left,
            retry_after: None,
            refusal: None,
        },
        r if r < 0 => {
            let used = (-1 - r) as u64;
            let (retry_after, refusal) = if b.cost > cap {
                (
                    None,
                    Refusal::CostExceedsCapacity {
                        cost: b.cost,
                        capacity: cap,
                    },
                )
            } else {
                (Some(left), Refusal::OverLimit)
            };
            BucketState {
                allowed: false,
                limit: b.limit.shown_count(),
                remaining: cap.saturating_sub(used),
                // The window resets at its end, whether or not it counts anything.
                reset_after: left,
                retry_after,
                refusal: Some(refusal),
            }
        }
        _ => {
            return Err(StoreError::Protocol(format!(
                "unexpected reply from the fixed-window script: {reply:?}"
            )))
        }
    };
    Ok(Decision {
        allowed: state.allowed,
        now: Timestamp::from_micros(now),
        buckets: vec![state],
    })
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

/// `decide.lua`'s reply as a decision over `buckets`.
fn decision(reply: &Value, buckets: &[Arg<'_>]) -> Result<Decision, StoreError> {
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
                limit: b.limit.shown_count(),
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
    use tollgate_limits::Quota;

    fn strings(cmd: &Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => String::new(),
            })
            .collect()
    }

    fn call<'a>(op: Op, buckets: &'a [Arg<'a>], now: Option<u64>) -> Call<'a> {
        Call { op, buckets, now }
    }

    #[test]
    fn command_layout() {
        let limit = Limit::token_bucket(Quota::per_minute(100), 20).unwrap();
        let arg = Arg {
            key: "tollgate:x",
            limit: &limit,
            cost: u64::MAX,
            no_migration: false,
            placed: None,
        };
        let args = strings(&call(Op::Penalize, &[arg], None).command(false).unwrap());
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
                &SATURATED.to_string(),
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
            no_migration: false,
            placed: None,
        };
        let tail = strings(&call(Op::Charge, &[arg], None).command(false).unwrap())[4..].to_vec();
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
            no_migration: false,
            placed: None,
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

    #[test]
    fn fixed_window_layout() {
        // 10 a minute; a minute is 60,000,000 µs: window 1000 ends at 60,060,000,000 µs.
        let limit = Limit::fixed(Quota::per_minute(10));
        let now = 60_000_000_000 + 1_234;
        assert_eq!(
            fixed_window(60_000_000, now),
            (1000, 60_060_000_000, 60_061_000)
        );
        assert_eq!(fixed_window(10_000, 25_000), (2, 30_000, 1_030));
        let arg = Arg {
            key: "tollgate:f:k:1000",
            limit: &limit,
            cost: 3,
            no_migration: false,
            placed: None,
        };
        let charge = call(Op::Charge, std::slice::from_ref(&arg), Some(now));
        assert!(charge.is_fixed());
        assert_eq!(
            strings(&charge.command(false).unwrap()),
            [
                "EVALSHA",
                FIXED_SHA.as_str(),
                "1",
                "tollgate:f:k:1000",
                "3",
                "10",
                // How long the key lives: to a second after the window ends, from `now`.
                "60999"
            ]
        );
        let moved = Arg {
            no_migration: true,
            ..arg
        };
        assert_eq!(
            strings(&call(Op::Charge, &[moved], Some(now)).command(true).unwrap())[2..],
            ["1", "tollgate:f:k:1000", "3", "10", "60999", "-"]
        );
        // Anything else runs decide.lua, with the instance's clock last.
        let peek = call(Op::Peek, std::slice::from_ref(&arg), Some(now));
        assert!(!peek.is_fixed());
        assert_eq!(
            strings(&peek.command(false).unwrap())[1..],
            [
                SHA.as_str(),
                "1",
                "tollgate:f:k:1000",
                "1",
                "4",
                "10",
                "3",
                "60061000",
                "60000000",
                "",
                &now.to_string()
            ]
        );
        let free = Arg { cost: 0, ..arg };
        assert!(!call(Op::Charge, &[free], Some(now)).is_fixed());

        // The reply: the count after an admitted charge, or -1 - the count before.
        let left = Duration::from_micros(60_060_000_000 - now);
        let d = charge.decision(&Value::Int(7)).unwrap();
        assert!(d.allowed);
        assert_eq!(d.now, Timestamp::from_micros(now));
        assert_eq!(
            (d.buckets[0].remaining, d.buckets[0].reset_after),
            (3, left)
        );
        let d = charge.decision(&Value::Int(-9)).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.buckets[0].remaining, 2);
        assert_eq!(d.buckets[0].retry_after, Some(left));
        assert_eq!(d.buckets[0].refusal, Some(Refusal::OverLimit));
        let huge = Arg { cost: 11, ..arg };
        let d = call(Op::Charge, &[huge], Some(now))
            .decision(&Value::Int(-1))
            .unwrap();
        assert_eq!(d.buckets[0].retry_after, None);
        assert_eq!(d.buckets[0].reset_after, left);
        assert_eq!(d.buckets[0].remaining, 10);
        assert!(matches!(
            charge.decision(&Value::Int(0)),
            Err(StoreError::Protocol(_))
        ));
    }
}
