//! One keyed decision with 100,000 live keys: tollgate's [`MemoryStore`] beside governor's
//! keyed limiter (`governor::DefaultKeyedRateLimiter`), same quota, same keys, same random
//! key order, in the same run.
//!
//! ```text
//! cargo bench -p tollgate-limits --bench decide -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! - Keys: 100,000 strings `bench:<n>`, all live (decided once before measuring); each
//!   decision picks the next n of one pre-drawn uniform random sequence and writes its key
//!   into a reused buffer, as a middleware builds a key per request.
//! - Quota: 1,000,000 per day per key (burst 1,000,000 for the token buckets). The load
//!   never exhausts it, so every decision takes the common path (admitted), and every
//!   key's state stays live between two visits (with a quota of, say, 1000/s a GCRA state
//!   is back to fresh 1 ms after a charge, and tollgate drops fresh entries: that would
//!   measure re-inserting keys, not deciding on live ones). Both read their default clock.
//! - tollgate: the default sliding window (1,000,000 per hour: 10 segments of 6 minutes,
//!   held inline in the table; over a day, in a row of its own, segments of 2.4 hours are
//!   past what the inline form holds and the state is boxed) and the GCRA token bucket
//!   (1,000,000 per day), in a store whose cap
//!   (1,000,000) leaves room for every key, so nothing is evicted while measuring.
//! - Threads: 1 and 2. With 2 threads each does half the decisions; the figure is wall
//!   time per decision (the inverse of throughput), so perfect scaling halves it.
//! - After criterion's figures, the same contenders run again interleaved (one chunk of
//!   each, round after round) and the median per-round ratio to governor is printed: on a
//!   machine shared with other work, that ratio is the comparable figure. Only that part:
//!   `cargo bench -p tollgate-limits --bench decide -- interleaved`.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use governor::{DefaultKeyedRateLimiter, Quota as GovernorQuota, RateLimiter};
use tollgate_limits::{Bucket, BucketState, Limit, MemoryStore, Op, Quota, Store};

const KEYS: usize = 100_000;
/// The per-key quota: this many per day, all of it at once if need be.
const PER_DAY: u32 = 1_000_000;
/// Length of the pre-drawn key order (a power of two).
const ORDER: usize = 1 << 20;

/// What is benchmarked: one decision for the key with an index. Each thread gets its own
/// caller, which builds the key as a middleware does for each request (writing
/// `bench:<n>` into a reused buffer), so both contenders start from a key in cache and
/// only the limiter's own work differs.
trait Decide: Sync {
    fn caller(&self) -> Box<dyn FnMut(u32) -> bool + Send + '_>;
}

/// Writes `bench:<n>`, as every contender names key n.
fn write_key(buf: &mut String, n: u32) {
    buf.clear();
    buf.push_str("bench:");
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.push_str(std::str::from_utf8(&digits[at..]).expect("ASCII digits"));
}

struct Tollgate {
    store: MemoryStore,
    limit: Limit,
}

impl Decide for Tollgate {
    fn caller(&self) -> Box<dyn FnMut(u32) -> bool + Send + '_> {
        // The bucket is named `bench`, so its store key is `bench:<n>` too.
        let mut bucket = Bucket::new("bench", "", self.limit);
        let mut key = String::with_capacity(32);
        Box::new(move |n| {
            write_key(&mut key, n);
            bucket.key.truncate(0);
            bucket.key.push_str(&key);
            charge_sync(&self.store, std::slice::from_ref(&bucket))
        })
    }
}

/// One charge through the synchronous store call the layer makes (`Store::apply_sync`),
/// into a state buffer on the stack: no `Decision` to allocate.
fn charge_sync(store: &MemoryStore, buckets: &[Bucket]) -> bool {
    let mut states: [BucketState; 3] = Default::default();
    let states = &mut states[..buckets.len()];
    matches!(store.apply_sync(Op::Charge, buckets, states), Some(Ok(_)))
        && states.iter().all(|s| s.allowed)
}

/// The same key every time (one hot client).
struct TollgateHot {
    store: MemoryStore,
    limit: Limit,
}

impl Decide for TollgateHot {
    fn caller(&self) -> Box<dyn FnMut(u32) -> bool + Send + '_> {
        let bucket = Bucket::new("bench", "hot", self.limit);
        Box::new(move |_| charge_sync(&self.store, std::slice::from_ref(&bucket)))
    }
}

/// Three buckets in one decision: key n's IP, its user, and one global bucket.
struct Tollgate3 {
    store: MemoryStore,
    limit: Limit,
}

impl Decide for Tollgate3 {
    fn caller(&self) -> Box<dyn FnMut(u32) -> bool + Send + '_> {
        let mut buckets = [
            Bucket::new("ip", "", self.limit),
            Bucket::new("user", "", self.limit),
            Bucket::new("global", "all", self.limit),
        ];
        let mut key = String::with_capacity(32);
        Box::new(move |n| {
            write_key(&mut key, n);
            for (bucket, name) in buckets.iter_mut().zip(["ip:", "user:"]) {
                bucket.key.truncate(0);
                bucket.key.push_str(name);
                bucket.key.push_str(&key);
            }
            charge_sync(&self.store, &buckets)
        })
    }
}

/// governor doing the same: two keyed limiters and one direct.
struct Governor3 {
    ip: DefaultKeyedRateLimiter<String>,
    user: DefaultKeyedRateLimiter<String>,
    global: governor::DefaultDirectRateLimiter,
}

impl Decide for Governor3 {
    fn caller(&self) -> Box<dyn FnMut(u32) -> bool + Send + '_> {
        let mut key = String::with_capacity(32);
        Box::new(move |n| {
            write_key(&mut key, n);
            self.ip.check_key(&key).is_ok()
                && self.user.check_key(&key).is_ok()
                && self.global.check().is_ok()
        })
    }
}

/// governor with the same key every time.
struct GovernorHot {
    limiter: DefaultKeyedRateLimiter<String>,
}

impl Decide for GovernorHot {
    fn caller(&self) -> Box<dyn FnMut(u32) -> bool + Send + '_> {
        let key = "bench:hot".to_string();
        Box::new(move |_| self.limiter.check_key(&key).is_ok())
    }
}

struct Governor {
    limiter: DefaultKeyedRateLimiter<String>,
}

impl Decide for Governor {
    fn caller(&self) -> Box<dyn FnMut(u32) -> bool + Send + '_> {
        let mut key = String::with_capacity(32);
        Box::new(move |n| {
            write_key(&mut key, n);
            self.limiter.check_key(&key).is_ok()
        })
    }
}

fn tollgate(limit: Limit) -> Tollgate {
    Tollgate {
        store: MemoryStore::builder().max_entries(1_000_000).build(),
        limit,
    }
}

fn governor_quota() -> GovernorQuota {
    governor_quota_at(PER_DAY)
}

/// `per_day` per key sustained, a burst of [`burst_at`].
fn governor_quota_at(per_day: u32) -> GovernorQuota {
    let burst = NonZeroU32::new(burst_at(per_day)).expect("non-zero");
    GovernorQuota::with_period(Duration::from_secs(86_400) / per_day)
        .expect("non-zero period")
        .allow_burst(burst)
}

fn governor() -> Governor {
    Governor {
        limiter: RateLimiter::keyed(governor_quota()),
    }
}

/// A uniform random key order (xorshift64*, fixed seed), shared by every contender.
fn key_order() -> Vec<u32> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..ORDER)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
            (((r >> 32) * KEYS as u64) >> 32) as u32
        })
        .collect()
}

/// Makes every key live, and checks that the quota admits the benchmark's load.
fn warm(contender: &dyn Decide) {
    let mut decide = contender.caller();
    for n in 0..KEYS as u32 {
        assert!(decide(n), "the warm-up must be admitted");
    }
}

/// Runs `iters` decisions on `threads` threads (each from its own place in the key
/// order) and returns the wall time.
fn run(contender: &dyn Decide, order: &[u32], threads: usize, iters: u64) -> Duration {
    let per_thread = iters.div_ceil(threads as u64) as usize;
    let work = |t: usize| {
        let mut decide = contender.caller();
        let offset = t * (ORDER / threads);
        move || {
            for i in 0..per_thread {
                black_box(decide(order[(offset + i) & (ORDER - 1)]));
            }
        }
    };
    if threads == 1 {
        let mut one = work(0);
        let start = Instant::now();
        one();
        return start.elapsed();
    }
    let barrier = Barrier::new(threads + 1);
    thread::scope(|s| {
        for t in 0..threads {
            let (barrier, mut decide) = (&barrier, work(t));
            s.spawn(move || {
                barrier.wait();
                decide();
            });
        }
        barrier.wait();
        Instant::now()
    })
    .elapsed()
}

/// The contenders, each with every key live.
fn contenders() -> Vec<(&'static str, Box<dyn Decide>)> {
    contenders_at(PER_DAY)
}

/// The contenders with a sustained rate of `per_day` per key (burst [`burst_at`]), each
/// with every key live.
fn contenders_at(per_day: u32) -> Vec<(&'static str, Box<dyn Decide>)> {
    let q = Quota::per_day(u64::from(per_day));
    let contenders: Vec<(&str, Box<dyn Decide>)> = vec![
        (
            "governor",
            Box::new(Governor {
                limiter: RateLimiter::keyed(governor_quota_at(per_day)),
            }),
        ),
        (
            "tollgate_sliding",
            Box::new(tollgate(Limit::sliding(Quota::per_hour(u64::from(
                per_day,
            ))))),
        ),
        (
            "tollgate_sliding_day",
            Box::new(tollgate(Limit::sliding(q))),
        ),
        (
            "tollgate_gcra",
            Box::new(tollgate(
                Limit::token_bucket(q, u64::from(burst_at(per_day))).expect("valid burst"),
            )),
        ),
    ];
    for (_, contender) in &contenders {
        warm(contender.as_ref());
    }
    contenders
}

fn decide(c: &mut Criterion) {
    let order = key_order();
    let contenders = contenders();
    let mut group = c.benchmark_group("decide_100k_keys");
    group.throughput(Throughput::Elements(1));
    for threads in [1, 2] {
        for (name, contender) in &contenders {
            group.bench_with_input(BenchmarkId::new(*name, threads), &threads, |b, &threads| {
                b.iter_custom(|iters| run(contender.as_ref(), &order, threads, iters));
            });
        }
    }
    group.finish();
}

/// The same decisions again, interleaved: each round times one chunk of every contender
/// back to back, so all see the same load from the rest of the machine, and the ratio
/// to governor is taken per round (median over rounds). Criterion's figures above run
/// the contenders minutes apart; on a shared machine only these ratios are comparable.
/// What is compared, the governor contender, and tollgate's contenders.
type Group = (
    &'static str,
    Box<dyn Decide>,
    Vec<(&'static str, Box<dyn Decide>)>,
);

fn interleaved() {
    // `DECIDE_ROUNDS=<n>`: fewer rounds (for a quick look).
    let rounds = std::env::var("DECIDE_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(21);
    const CHUNK: u64 = 200_000;
    let order = key_order();
    let q = Quota::per_day(u64::from(PER_DAY));
    // The sliding window over an hour: segments of 6 minutes, held inline in the table.
    // Over a day its segments (2.4 hours) are too long for that and the state is boxed:
    // that form has a row of its own.
    let sliding = Limit::sliding(Quota::per_hour(u64::from(PER_DAY)));
    let sliding_day = Limit::sliding(q);
    let gcra = Limit::token_bucket(q, u64::from(PER_DAY)).expect("valid burst");
    let store = || MemoryStore::builder().max_entries(1_000_000).build();
    // (what is compared, the governor contender, tollgate's contenders)
    let groups: Vec<Group> = vec![
        (
            "one keyed decision, 100,000 live keys",
            Box::new(governor()),
            vec![
                (
                    "tollgate sliding window",
                    Box::new(tollgate(sliding)) as Box<dyn Decide>,
                ),
                (
                    "tollgate sliding window over a day (boxed state)",
                    Box::new(tollgate(sliding_day)),
                ),
                ("tollgate token bucket", Box::new(tollgate(gcra))),
            ],
        ),
        (
            "one hot key",
            Box::new(GovernorHot {
                limiter: RateLimiter::keyed(governor_quota()),
            }),
            vec![
                (
                    "tollgate sliding window",
                    Box::new(TollgateHot {
                        store: store(),
                        limit: sliding,
                    }) as Box<dyn Decide>,
                ),
                (
                    "tollgate token bucket",
                    Box::new(TollgateHot {
                        store: store(),
                        limit: gcra,
                    }),
                ),
            ],
        ),
        (
            "IP + user + global in one decision, 100,000 live keys",
            Box::new(Governor3 {
                ip: RateLimiter::keyed(governor_quota()),
                user: RateLimiter::keyed(governor_quota()),
                global: RateLimiter::direct(governor_quota()),
            }),
            vec![
                (
                    "tollgate sliding window",
                    Box::new(Tollgate3 {
                        store: store(),
                        limit: sliding,
                    }) as Box<dyn Decide>,
                ),
                (
                    "tollgate token bucket",
                    Box::new(Tollgate3 {
                        store: store(),
                        limit: gcra,
                    }),
                ),
            ],
        ),
    ];
    let mut out = String::new();
    out.push_str("## Engine: one decision on the memory store beside governor\n\n");
    out.push_str("`cargo bench -p tollgate-limits --bench decide -- interleaved`: ");
    out.push_str(&format!(
        "{rounds} interleaved rounds of {CHUNK} decisions per contender; quota 1,000,000 per day, per hour for the sliding window (never refused).\n"
    ));
    out.push_str("Time per decision is wall time (with 2 threads, each does half). Governor is `governor`'s keyed limiter with `String` keys (two keyed and one direct limiter for the three-bucket row).\n\n");
    out.push_str("| case | contender | threads | ns per decision | vs governor (median of per-round ratios) |\n|---|---|---|---|---|\n");
    // `DECIDE_CASE=<text>`: only the cases whose name contains it (for a quick look).
    let only = std::env::var("DECIDE_CASE").ok();
    for (case, gov, tollgates) in &groups {
        if only.as_deref().is_some_and(|o| !case.contains(o)) {
            continue;
        }
        warm(gov.as_ref());
        for (_, t) in tollgates {
            warm(t.as_ref());
        }
        for threads in [1, 2] {
            let mut ns: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); tollgates.len() + 1];
            for _ in 0..rounds {
                let elapsed = run(gov.as_ref(), &order, threads, CHUNK);
                ns[0].push(elapsed.as_nanos() as f64 / CHUNK as f64);
                for (i, (_, t)) in tollgates.iter().enumerate() {
                    let elapsed = run(t.as_ref(), &order, threads, CHUNK);
                    ns[i + 1].push(elapsed.as_nanos() as f64 / CHUNK as f64);
                }
            }
            let names = std::iter::once("governor").chain(tollgates.iter().map(|(n, _)| *n));
            for (i, name) in names.enumerate() {
                let mut ratios: Vec<f64> = ns[i].iter().zip(&ns[0]).map(|(t, g)| t / g).collect();
                out.push_str(&format!(
                    "| {case} | {name} | {threads} | {:.1} | {:.2} |\n",
                    median(&mut ns[i].clone()),
                    median(&mut ratios)
                ));
            }
        }
    }
    print!("\n{out}");
    if let Ok(path) = std::env::var("TOLLGATE_BENCH_OUT") {
        std::fs::write(path, out).expect("writing the bench output");
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

criterion_group!(benches, decide);

/// The sustained rate per key per day of [`profile`]'s contenders: a token (43.2 s) outlasts
/// a round of the 100,000 keys under callgrind. At 100,000 per day (0.864 s a token) a
/// round took longer than that: keys were back to fresh between two visits, and some swept
/// and stored again, so the count depended on how fast the machine ran (a token bucket
/// 830 to 1136 instructions per decision on one build, with a build beside it or not).
const PROFILE_PER_DAY: u32 = 2_000;

/// The token buckets' burst at `per_day`: [`PER_DAY`], or as much as refills in 400 days
/// (the most a limit allows) at a lower rate ([`PROFILE_PER_DAY`]: 800,000, which the
/// global bucket's 400,000 decisions of a profile run stay within).
fn burst_at(per_day: u32) -> u32 {
    PER_DAY.min(400 * per_day)
}

/// `DECIDE_PROFILE=<contender> DECIDE_ITERS=<n>`: warms one contender (or one of
/// [`profile_other`]'s) and runs `n` decisions on one thread, nothing else, for instruction
/// counts under callgrind (`bench/callgrind-decide.sh`). The sustained rate is
/// [`PROFILE_PER_DAY`], so that under callgrind's slowdown a token bucket's state stays
/// live between two visits.
fn profile(name: &str) {
    let iters: u64 = std::env::var("DECIDE_ITERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let order = key_order();
    if let Some(contender) = profile_other(name) {
        warm(contender.as_ref());
        run(contender.as_ref(), &order, 1, iters);
        return;
    }
    let contenders = contenders_at(PROFILE_PER_DAY);
    let Some((_, contender)) = contenders.iter().find(|(n, _)| *n == name) else {
        panic!("no contender named {name}");
    };
    run(contender.as_ref(), &order, 1, iters);
}

/// The interleaved run's other cases, by name, for [`profile`]: `governor_hot`,
/// `tollgate_sliding_hot`, `tollgate_gcra_hot` (one key, each decision for it, as the "one
/// hot key" rows) and `governor_3`, `tollgate_sliding_3`, `tollgate_gcra_3` (IP + user +
/// global for key n, as the three-bucket rows). The token buckets as [`profile`]'s
/// ([`PROFILE_PER_DAY`], burst [`burst_at`]), but the hot key's at 100,000 per day (burst
/// 1,000,000); the sliding window 1,000,000 per hour, as in the interleaved run: the hot key
/// (and the global bucket) takes every decision, warm-up included, which 100,000 per hour
/// would refuse.
fn profile_other(name: &str) -> Option<Box<dyn Decide>> {
    // The hot key is charged at every decision, its state always live: the rate is the
    // interleaved run's tenth (a burst of 1,000,000 takes all 400,000 decisions of a run).
    let per_day = if name.ends_with("_hot") {
        PER_DAY / 10
    } else {
        PROFILE_PER_DAY
    };
    let q = Quota::per_day(u64::from(per_day));
    let sliding = Limit::sliding(Quota::per_hour(u64::from(PER_DAY)));
    let gcra = Limit::token_bucket(q, u64::from(burst_at(per_day))).expect("valid burst");
    let store = || MemoryStore::builder().max_entries(1_000_000).build();
    let gov = || RateLimiter::keyed(governor_quota_at(per_day));
    Some(match name {
        "governor_hot" => Box::new(GovernorHot { limiter: gov() }),
        "tollgate_sliding_hot" => Box::new(TollgateHot {
            store: store(),
            limit: sliding,
        }),
        "tollgate_gcra_hot" => Box::new(TollgateHot {
            store: store(),
            limit: gcra,
        }),
        "governor_3" => Box::new(Governor3 {
            ip: gov(),
            user: gov(),
            global: RateLimiter::direct(governor_quota_at(per_day)),
        }),
        "tollgate_sliding_3" => Box::new(Tollgate3 {
            store: store(),
            limit: sliding,
        }),
        "tollgate_gcra_3" => Box::new(Tollgate3 {
            store: store(),
            limit: gcra,
        }),
        _ => return None,
    })
}

fn main() {
    if let Ok(name) = std::env::var("DECIDE_PROFILE") {
        profile(&name);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Only on a real benchmark run (not `--list`, `--profile-time` or a `cargo test` pass
    // over the benches).
    let args: Vec<String> = std::env::args().collect();
    let measuring = args.iter().any(|a| a == "--bench")
        && !args
            .iter()
            .any(|a| a == "--list" || a == "--profile-time" || a == "--test");
    if measuring {
        interleaved();
    }
}
