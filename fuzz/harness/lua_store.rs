//! The Redis store's Lua script on a real `redis-server` against the memory store: the
//! same random batches at the same instants give the same `Decision`, field for field.
//!
//! A few keys, each with its own limit (sliding window, sliding with k segments, exact,
//! fixed, token bucket; periods from 1 ms to a day), get random batches (charge, peek,
//! refund newest first or of the charge made at an earlier decision's time, penalize,
//! reset; one to three keys) between clock steps (none, microseconds,
//! about a segment or a window, a day). Both sides decide at the same instant: the scripts
//! are run as the store sends them (`RedisStore::script_call` at that instant, which places
//! fixed windows; a charge of one fixed window runs `fixed.lua`), `decide.lua` with its one
//! `TIME` call replaced by a read of the instant the harness sets (the only change), the
//! reply read as the store reads it (`RedisStore::script_decision`), and the memory store
//! runs on a `ManualClock` set to that instant. The instants start two days after
//! the real time, so that no key Redis holds expires by Redis's own clock during a run
//! (the script must answer from what a key holds, expired or not, as the memory store
//! does).
//!
//! The Redis server is the one at `TOLLGATE_FUZZ_REDIS_URL` (`fuzz/with-redis.sh` starts one; the
//! stable replay starts its own); each run begins with `FLUSHDB`, so it must be a server of
//! its own. Not covered: a key whose limit changes (the memory store keeps each
//! algorithm's state of a key apart, Redis one state per key; see `decide.lua`), and costs
//! or times near 2^53 (where Redis saturates and memory does not: a run ends once a reset
//! reaches 2^52 µs).
#![allow(dead_code)]

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tollgate_limits::{Batch, Bucket, Limit, ManualClock, MemoryStore, Op, Timestamp};
use tollgate_redis::redis::{self, Value};
use tollgate_redis::RedisStore;

use crate::input::{ready, Input};

/// The variable naming the Redis server the harness may flush.
pub const URL_VARIABLE: &str = "TOLLGATE_FUZZ_REDIS_URL";

/// Where the script reads the instant from instead of `TIME`.
const TIME_KEY: &str = "tollgate-fuzz:time";

const PERIODS_MS: [u64; 9] = [1, 3, 7, 10, 60, 1_000, 1_500, 60_000, 86_400_000];

struct Harness {
    url: String,
    conn: redis::Connection,
    script: redis::Script,
    /// `fixed.lua`, as it is.
    fixed: redis::Script,
    /// A store with no connection made: it only lays out the script's arguments.
    layout: RedisStore,
    /// Two days after the real time when the harness started, in µs.
    base: u64,
}

fn harness() -> &'static Mutex<Harness> {
    static HARNESS: OnceLock<Mutex<Harness>> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let url = std::env::var(URL_VARIABLE).unwrap_or_else(|_| {
            panic!("{URL_VARIABLE} must name a redis-server of its own (fuzz/with-redis.sh starts one)")
        });
        let conn = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        let source = RedisStore::script_source();
        let time = "redis.call('TIME')";
        assert_eq!(
            source.matches(time).count(),
            1,
            "the script reads TIME once"
        );
        let source = source.replace(
            time,
            &format!("redis.call('HMGET', '{TIME_KEY}', 's', 'u')"),
        );
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970");
        let base = (real + Duration::from_secs(2 * 86_400)).as_micros() as u64;
        Mutex::new(Harness {
            url,
            conn,
            script: redis::Script::new(&source),
            fixed: redis::Script::new(RedisStore::fixed_window_script_source()),
            layout: RedisStore::open("redis://127.0.0.1:1/").expect("a valid URL"),
            base,
        })
    })
}

fn limit(input: &mut Input<'_>) -> Limit {
    input.limit(&PERIODS_MS, 6)
}

/// A clock step in µs: none, a few µs, about a segment or a window of a key, a day.
fn step(input: &mut Input<'_>, limits: &[Limit]) -> u64 {
    let of = |input: &mut Input<'_>| limits[input.below(limits.len())];
    match input.below(8) {
        0 | 1 => 0,
        2 => u64::from(input.byte()),
        3 => {
            let l = of(input);
            (l.segment_micros() + u64::from(input.byte())).saturating_sub(128)
        }
        4 => {
            let l = of(input);
            (l.quota().period_micros() + u64::from(input.byte())).saturating_sub(128)
        }
        5 => of(input).quota().period_micros() * (1 + input.below(3) as u64),
        6 => 86_400_000_000,
        _ => u64::from(input.u32() % 5_000_000),
    }
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mut guard = harness().lock().unwrap_or_else(|e| e.into_inner());
    let h = &mut *guard;
    let flushed: Result<(), _> = redis::cmd("FLUSHDB").query(&mut h.conn);
    if let Err(e) = flushed {
        assert!(e.is_io_error(), "FLUSHDB: {e}");
        h.conn = redis::Client::open(h.url.as_str())
            .and_then(|c| c.get_connection())
            .unwrap_or_else(|e| panic!("cannot connect again: {e}"));
        let _: () = redis::cmd("FLUSHDB").query(&mut h.conn).expect("FLUSHDB");
    }

    let limits: Vec<Limit> = (0..1 + input.below(4)).map(|_| limit(&mut input)).collect();
    let keys: Vec<Bucket> = limits
        .iter()
        .enumerate()
        .map(|(i, l)| Bucket::new("fuzz", &format!("k{i}"), *l))
        .collect();
    let mut now = h.base + u64::from(input.u32());
    let clock = ManualClock::new(Duration::from_micros(now));
    let memory = MemoryStore::builder().clock(clock.clone()).build();

    // The times of the decisions so far: a refund may name one as its charge's.
    let mut times: Vec<Timestamp> = Vec::new();
    for _ in 0..48 {
        if input.is_empty() {
            break;
        }
        now += step(&mut input, &limits);
        clock.set(Timestamp::from_micros(now));
        let op = match input.below(10) {
            0..=4 => Op::Charge,
            5 => Op::Peek,
            // A refund of the charge made at an earlier decision's time, or newest first.
            6 if !times.is_empty() && input.bool() => Op::RefundAt(input.pick(&times)),
            6 => Op::Refund,
            7 => Op::Penalize,
            _ => Op::Reset,
        };
        // Distinct keys (a batch naming a key twice is invalid): n in a row from a start.
        let n = 1 + input.below(keys.len().min(3));
        let start = input.below(keys.len());
        let chosen: Vec<usize> = (0..n).map(|i| (start + i) % keys.len()).collect();
        let buckets = chosen
            .iter()
            .map(|&k| {
                let cap = keys[k].limit.capacity();
                let cost = match input.below(8) {
                    0 => cap + 1,
                    1 if op != Op::Charge => 0,
                    2 => 1 + u64::from(input.u16()),
                    _ => 1 + input.below(3) as u64,
                };
                keys[k].clone().with_cost(cost)
            })
            .collect();
        let batch = Batch::new(op, buckets);

        let at = Timestamp::from_micros(now);
        let call = h.layout.script_call(&batch, at).expect("a valid batch");
        let (sha, args) = call.split_first().expect("the script's SHA");
        let n_keys: usize = args[0].parse().expect("the key count");
        let script = if sha == RedisStore::fixed_window_script_sha() {
            &h.fixed
        } else {
            assert_eq!(sha, RedisStore::script_sha());
            &h.script
        };
        let mut invocation = script.prepare_invoke();
        for key in &args[1..=n_keys] {
            invocation.key(key);
        }
        for arg in &args[n_keys + 1..] {
            invocation.arg(arg);
        }
        let set: Result<(), _> = redis::cmd("HSET")
            .arg(TIME_KEY)
            .arg("s")
            .arg(now / 1_000_000)
            .arg("u")
            .arg(now % 1_000_000)
            .query(&mut h.conn);
        let reply = set.and_then(|()| invocation.invoke::<Value>(&mut h.conn));
        let reply = match reply {
            Ok(reply) => reply,
            // The socket, not the script: a signal cut a read short (libFuzzer's timer).
            // The run ends here, on a new connection for the next.
            Err(e) if e.is_io_error() => {
                h.conn = redis::Client::open(h.url.as_str())
                    .and_then(|c| c.get_connection())
                    .unwrap_or_else(|e| panic!("cannot connect again: {e}"));
                return;
            }
            Err(e) => panic!("the script failed: {e}"),
        };
        let on_redis = h
            .layout
            .script_decision(&batch, at, &reply)
            .unwrap_or_else(|e| panic!("the script answered {reply:?}: {e}"));
        let on_memory = ready(tollgate_limits::Store::apply(&memory, &batch)).expect("valid");
        // Times near 2^53 µs (a token bucket penalized for centuries) are not covered: the
        // run ends once memory's answer reaches 2^52 µs (Redis saturates at 2^53 - now).
        if on_memory
            .buckets
            .iter()
            .any(|b| b.reset_after >= Duration::from_micros(1 << 52))
        {
            return;
        }
        assert_eq!(
            on_redis, on_memory,
            "{batch:#?}\nat {now}: redis {on_redis:#?}\nmemory {on_memory:#?}"
        );
        times.push(on_memory.now);
    }
}
