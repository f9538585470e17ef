//! What a decision costs the Redis server, beside two lean reference scripts, and how many
//! decisions per second [`RedisStore`] gets through, all in one run on a `redis-server` of the
//! bench's own (a free loopback port, persistence off).
//!
//! ```text
//! cargo bench -p tollgate-redis --features deadpool --bench throughput
//! BENCH_CALLS=200000 BENCH_ROUNDS=9 cargo bench -p tollgate-redis --features deadpool --bench throughput
//! TOLLGATE_BENCH_OUT=redis.md cargo bench -p tollgate-redis --features deadpool --bench throughput
//! BENCH_STORE_ONLY=1 cargo bench -p tollgate-redis --features deadpool --bench throughput   # decisions/s only
//! ```
//!
//! **Server time per call.** `redis-benchmark -c 50 -P 16 -n <calls> -r 100000` sends
//! `EVALSHA` of a script with keys drawn from 100,000; the server's own time per call is
//! `usec_per_call` of `cmdstat_evalsha` in `INFO commandstats`, reset (`CONFIG RESETSTAT`)
//! before each run. Scripts: tollgate's (one sliding-window bucket; two, as IP + user; a token
//! bucket; a fixed window, which runs the store's own fixed-window script) and two references written for this bench: GCRA as the well-known
//! Redis rate limiters do it (`TIME`, `GET`, `SET` with an expiry) and a fixed window
//! (`INCRBY` and `PEXPIRE` per key, one key and two), and the same fixed window decided on
//! the server's clock and answered as tollgate's script answers (`TIME`, `INCRBY`,
//! `PEXPIREAT` at the window's end, four numbers back), what tollgate's fixed window did
//! before it was placed by the instance's clock. The rows take turns, round after
//! round, so that load from other processes weighs on all of them alike; each figure is the
//! median of the rounds, and each ratio the median of the ratios within a round.
//!
//! **Decisions per second** of [`RedisStore`] (one multiplexed connection, 64 tasks on one
//! thread, refusal cache on, as by default) charging two sliding-window buckets (IP + user),
//! and the same over a deadpool-redis pool of 64 connections; then 64 tasks hammering one
//! refused key with and without the refusal cache.
//!
//! Limits never refuse in the script rows and every key keeps its state between calls (a
//! token bucket of 1000/hour with a burst of 10^6 stays ahead of the clock), so each call
//! reads and writes a stored state, as a client's repeated requests do.
//!
//! The bench prints a Markdown section; with `TOLLGATE_BENCH_OUT` set it also writes it to
//! that file.

use std::fmt::Write as _;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_limits::{Batch, Bucket, Clock, Limit, Quota, Store, SystemClock};
use tollgate_redis::{deadpool_redis, RedisStore};
use tollgate_testkit::RedisServer;

/// Keys are drawn from this many (`redis-benchmark -r`).
const KEYSPACE: u64 = 100_000;

/// GCRA as go-redis/redis_rate and similar limiters do it: the server's clock, one `GET` of
/// the theoretical arrival time, one `SET` with an expiry. ARGV: emission interval (µs),
/// burst, cost. Written for this bench.
const GCRA_REF: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local interval = tonumber(ARGV[1])
local cost = tonumber(ARGV[3]) * interval
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat < now then
  tat = now
end
local new = tat + cost
local allow_at = new - tonumber(ARGV[2]) * interval
if allow_at > now then
  return { 0, 0, allow_at - now, tat - now }
end
redis.call('SET', KEYS[1], new, 'PX', math.ceil((new - now) / 1000))
return { 1, math.floor((now - allow_at) / interval), 0, new - now }
";

/// A fixed window as the simplest counters do it: `INCRBY` and `PEXPIRE` on each key.
/// ARGV: cost, window (ms). Written for this bench.
const FIXED_REF: &str = r"
local n = 0
for i = 1, #KEYS do
  n = redis.call('INCRBY', KEYS[i], ARGV[1])
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
return n
";

/// The same fixed window decided on the server's clock and answered like tollgate's script:
/// `TIME`, `INCRBY`, `PEXPIREAT` at the end of the window, and `{ now, wait, remaining,
/// reset_after }`. ARGV: cost, period (µs), capacity. Written for this bench, to show what
/// the clock and the reply cost beside the bare counter above (unlike tollgate's, it would
/// count a key left by a limit of another period as this window's).
const FIXED_CLOCK_REF: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local p = tonumber(ARGV[2])
local stop = now - now % p + p
local used = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], stop / 1000)
local cap = tonumber(ARGV[3])
if used > cap then
  redis.call('DECRBY', KEYS[1], ARGV[1])
  return { now, stop - now, math.max(cap - used + tonumber(ARGV[1]), 0), stop - now }
end
return { now, 0, cap - used, stop - now }
";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sliding() -> Limit {
    Limit::sliding(Quota::per_hour(1_000_000_000))
}

fn token_bucket() -> Limit {
    Limit::token_bucket(Quota::per_hour(1_000), 1_000_000).expect("a valid burst")
}

fn fixed() -> Limit {
    Limit::fixed(Quota::per_hour(1_000_000_000))
}

/// A script call for redis-benchmark: `EVALSHA <sha> <args>`.
struct Row {
    name: &'static str,
    args: Vec<String>,
}

/// The `EVALSHA` call tollgate's store sends for a charge of `buckets` now (the script's SHA
/// and its arguments), with `__rand_int__` in the keys (redis-benchmark replaces each with
/// its own random number).
fn tollgate_row(store: &RedisStore, name: &'static str, buckets: Vec<Bucket>) -> Row {
    let mut args = vec!["EVALSHA".to_owned()];
    args.extend(
        store
            .script_call(&Batch::charge(buckets), SystemClock.now())
            .expect("a valid batch"),
    );
    Row { name, args }
}

fn sha_of(server: &RedisServer, source: &str) -> String {
    server.cli(["SCRIPT", "LOAD", source]).trim().to_owned()
}

/// The CPU time the server's main thread has used, in µs.
fn main_thread_cpu(server: &RedisServer) -> f64 {
    let info = server.cli(["INFO", "cpu"]);
    info.lines()
        .filter(|l| {
            l.starts_with("used_cpu_sys_main_thread:")
                || l.starts_with("used_cpu_user_main_thread:")
        })
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum::<f64>()
        * 1e6
}

/// One redis-benchmark run of `args`: the server's µs per call (`usec_per_call`), its main
/// thread's CPU µs per call, and calls per second.
fn server_cost(server: &RedisServer, calls: u64, args: &[String]) -> (f64, f64, f64) {
    server.cli(["CONFIG", "RESETSTAT"]);
    let cpu_before = main_thread_cpu(server);
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &server.port().to_string()])
        .args(["-c", "50", "-P", "16", "-n", &calls.to_string()])
        .args(["-r", &KEYSPACE.to_string(), "--csv"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("`redis-benchmark` could not run ({e}); install redis-tools"));
    let text = String::from_utf8_lossy(&out.stdout);
    let rate: f64 = text
        .lines()
        .find(|l| l.starts_with("\"EVALSHA"))
        .and_then(|l| l.split("\",\"").nth(1))
        .and_then(|r| r.trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("unexpected redis-benchmark output: {text}"));
    let cpu = (main_thread_cpu(server) - cpu_before) / calls as f64;
    let info = server.cli(["INFO", "commandstats"]);
    let stats = info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
        .unwrap_or_else(|| panic!("no EVALSHA in INFO commandstats: {info}"));
    let field = |name: &str| -> f64 {
        stats
            .split(',')
            .find_map(|f| f.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {stats}"))
    };
    let failed = field("failed_calls=") + field("rejected_calls=");
    assert!(failed == 0.0, "script calls failed: {stats}");
    (field("usec_per_call="), cpu, rate)
}

/// Decisions per second of `in_flight` tasks charging `batch(k)` for `secs` (after a
/// warm-up), `k` random in the key space (or fixed if `batch` ignores it), and the server
/// main thread's CPU µs per decision over the timed run.
fn decisions_per_second(
    rt: &tokio::runtime::Runtime,
    server: &RedisServer,
    store: Arc<dyn Store>,
    in_flight: usize,
    secs: f64,
    batch: fn(u64) -> Batch,
) -> (f64, f64) {
    rt.block_on(async move {
        let run = |duration: Duration| {
            let counted = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let tasks: Vec<_> = (0..in_flight)
                .map(|t| {
                    let (store, counted, stop) = (store.clone(), counted.clone(), stop.clone());
                    tokio::spawn(async move {
                        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1);
                        while !stop.load(Ordering::Relaxed) {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            let _ = store
                                .apply(&batch(x % KEYSPACE))
                                .await
                                .expect("redis answers");
                            counted.fetch_add(1, Ordering::Relaxed);
                            // A refusal answered from the cache never waits: let the timer
                            // and the other tasks run now and then.
                            tokio::task::consume_budget().await;
                        }
                    })
                })
                .collect();
            async move {
                let cpu_before = main_thread_cpu(server);
                let started = Instant::now();
                tokio::time::sleep(duration).await;
                stop.store(true, Ordering::Relaxed);
                let n = counted.load(Ordering::Relaxed);
                let elapsed = started.elapsed();
                for t in tasks {
                    t.await.unwrap();
                }
                let cpu = (main_thread_cpu(server) - cpu_before)
                    / counted.load(Ordering::Relaxed).max(1) as f64;
                (n as f64 / elapsed.as_secs_f64(), cpu)
            }
        };
        run(Duration::from_millis(300)).await;
        run(Duration::from_secs_f64(secs)).await
    })
}

fn ip_and_user(k: u64) -> Batch {
    Batch::charge(vec![
        Bucket::new("bench:ip", &format!("{k:012}"), sliding()),
        Bucket::new(
            "bench:user",
            &format!("{:012}", k.wrapping_mul(7) % KEYSPACE),
            sliding(),
        ),
    ])
}

fn refused(_: u64) -> Batch {
    Batch::charge(vec![Bucket::new(
        "bench:refused",
        "k",
        Limit::sliding(Quota::per_hour(1)),
    )])
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn range(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// "12.3 (11.0–14.1)": the median and, with several rounds, the range.
fn spread(v: &[f64], digits: usize) -> String {
    let (lo, hi) = range(v);
    if v.len() > 1 {
        format!("{:.digits$} ({lo:.digits$}–{hi:.digits$})", median(v))
    } else {
        format!("{:.digits$}", median(v))
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {kernel}")
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too: keep it short then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let calls = if quick {
        2_000
    } else {
        env("BENCH_CALLS", 100_000)
    };
    let rounds = if quick {
        1
    } else {
        env("BENCH_ROUNDS", 5) as usize
    };
    let secs = if quick {
        0.2
    } else {
        env("BENCH_SECS", 2) as f64
    };
    let in_flight = 64;
    let server = RedisServer::start();
    let url = server.url();
    let version = server
        .cli(["INFO", "server"])
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_owned();
    // One thread, as redis-benchmark: on 2 cores, each side has one beside redis-server's.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let store = RedisStore::open(&url).unwrap();
    assert_eq!(
        sha_of(&server, RedisStore::script_source()),
        RedisStore::script_sha()
    );
    assert_eq!(
        sha_of(&server, RedisStore::fixed_window_script_source()),
        RedisStore::fixed_window_script_sha()
    );
    let gcra = sha_of(&server, GCRA_REF);
    let fixed_ref = sha_of(&server, FIXED_REF);
    let fixed_clock_ref = sha_of(&server, FIXED_CLOCK_REF);
    let period = fixed().quota().period_micros().to_string();
    let capacity = fixed().capacity().to_string();
    let key = |name: &str| format!("{name}:__rand_int__");
    let b = |name: &str, limit: Limit| Bucket::new(name, "__rand_int__", limit);
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let token = token_bucket();
    let interval = token.emission_interval().to_string();
    let rows = [
        tollgate_row(
            &store,
            "tollgate, 1 sliding-window bucket",
            vec![b("s1", sliding())],
        ),
        tollgate_row(
            &store,
            "tollgate, 2 sliding-window buckets (IP + user)",
            vec![b("s2ip", sliding()), b("s2user", sliding())],
        ),
        tollgate_row(&store, "tollgate, 1 token bucket", vec![b("tb", token)]),
        tollgate_row(&store, "tollgate, 1 fixed window", vec![b("fw", fixed())]),
        Row {
            name: "reference GCRA (TIME, GET, SET PX), 1 key",
            args: strings(&[
                "EVALSHA",
                &gcra,
                "1",
                &key("gcra"),
                &interval,
                "1000000",
                "1",
            ]),
        },
        Row {
            name: "reference fixed window (INCRBY, PEXPIRE), 1 key",
            args: strings(&["EVALSHA", &fixed_ref, "1", &key("fx1"), "1", "3600000"]),
        },
        Row {
            name: "reference fixed window (INCRBY, PEXPIRE), 2 keys",
            args: strings(&[
                "EVALSHA",
                &fixed_ref,
                "2",
                &key("fx2a"),
                &key("fx2b"),
                "1",
                "3600000",
            ]),
        },
        Row {
            name: "reference fixed window on the server clock, tollgate's reply (TIME, INCRBY, PEXPIREAT), 1 key",
            args: strings(&[
                "EVALSHA",
                &fixed_clock_ref,
                "1",
                &key("fxc"),
                "1",
                &period,
                &capacity,
            ]),
        },
    ];

    let mut config = deadpool_redis::Config::from_url(url.clone());
    config.pool = Some(deadpool_redis::PoolConfig::new(in_flight));
    let pool = config
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let multiplexed: Arc<dyn Store> = Arc::new(RedisStore::open(&url).unwrap());
    let pooled: Arc<dyn Store> = Arc::new(RedisStore::builder().pool(pool).build().unwrap());

    if std::env::var_os("BENCH_STORE_ONLY").is_some() {
        // Only the store's decisions per second (to compare builds run after one another).
        let (rates, cpus): (Vec<f64>, Vec<f64>) = (0..rounds)
            .map(|_| {
                decisions_per_second(
                    &rt,
                    &server,
                    multiplexed.clone(),
                    in_flight,
                    secs,
                    ip_and_user,
                )
            })
            .unzip();
        println!(
            "RedisStore, IP + user, decisions/s: {} (rounds: {rates:.0?}); server main-thread CPU µs per decision: {} (rounds: {cpus:.1?})",
            spread(&rates, 0),
            spread(&cpus, 1)
        );
        return;
    }
    let started = Instant::now();
    let mut cost: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    let mut rate: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    let mut store_rate = Vec::new();
    let mut store_cpu = Vec::new();
    let mut pool_rate = Vec::new();
    for round in 0..rounds {
        // Each round in another order, so that no row always runs after the same one.
        let n = rows.len();
        for i in (0..n).map(|i| (i + round) % n) {
            let (usec, cpu_usec, rps) = server_cost(&server, calls, &rows[i].args);
            cost[i].push(usec);
            cpu[i].push(cpu_usec);
            rate[i].push(rps);
        }
        let (r, c) = decisions_per_second(
            &rt,
            &server,
            multiplexed.clone(),
            in_flight,
            secs,
            ip_and_user,
        );
        store_rate.push(r);
        store_cpu.push(c);
        pool_rate.push(
            decisions_per_second(&rt, &server, pooled.clone(), in_flight, secs, ip_and_user).0,
        );
    }
    let hammer = |cache: usize| {
        let store = RedisStore::builder()
            .url(&url)
            .refusal_cache(cache)
            .build()
            .unwrap();
        decisions_per_second(&rt, &server, Arc::new(store), in_flight, secs, refused).0
    };
    let uncached = hammer(0);
    let cached = hammer(10_000);
    let took = started.elapsed();

    // Ratios within each round, then their median.
    let ratio = |of: &[Vec<f64>], a: usize, b: usize, times: f64| -> Vec<f64> {
        of[a]
            .iter()
            .zip(&of[b])
            .map(|(x, y)| x / (y * times))
            .collect()
    };
    let (s1, s2, tb, fw, g, f1, f2, fc) = (0, 1, 2, 3, 4, 5, 6, 7);
    let checks = [
        (s1, g, 1.0, "a GCRA call", Some(1.4)),
        (s2, g, 2.0, "two GCRA calls", Some(1.3)),
        (tb, g, 1.0, "a GCRA call", Some(1.2)),
        (fw, f1, 1.0, "a fixed-window reference call", Some(1.2)),
        (
            fw,
            fc,
            1.0,
            "the fixed-window reference on the server clock with tollgate's reply",
            None,
        ),
    ];

    let mut md = String::new();
    let _ = writeln!(md, "## Redis: server time per decision\n");
    let _ = writeln!(
        md,
        "Machine: {}. redis-server {version} of the bench's own on 127.0.0.1 (persistence off). {rounds} rounds of {calls} calls per row, rows interleaved; medians, ranges in brackets. The whole run took {:.0} s.\n",
        machine(),
        took.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "Command: `cargo bench -p tollgate-redis --features deadpool --bench throughput` (BENCH_CALLS={calls}, BENCH_ROUNDS={rounds}). Each row is `redis-benchmark -c 50 -P 16 -n {calls} -r {KEYSPACE} EVALSHA <sha> ...`; µs per call is `usec_per_call` of `cmdstat_evalsha` (`INFO commandstats`, after `CONFIG RESETSTAT`), the server's own time.\n"
    );
    let _ = writeln!(
        md,
        "| script | µs per call (`usec_per_call`) | main-thread CPU µs per call | calls/s (redis-benchmark) |"
    );
    let _ = writeln!(md, "|---|---|---|---|");
    for (i, row) in rows.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0}k |",
            row.name,
            spread(&cost[i], 1),
            spread(&cpu[i], 1),
            median(&rate[i]) / 1000.0
        );
    }
    let _ = writeln!(
        md,
        "\n| comparison (same rounds) | ratio of `usec_per_call` | ratio of CPU | target | met (`usec_per_call`) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for (a, b, times, what, target) in checks {
        let r = ratio(&cost, a, b, times);
        let (target, met) = match target {
            Some(t) => (
                format!("≤ {t}×"),
                if median(&r) <= t { "yes" } else { "no" },
            ),
            None => (String::new(), ""),
        };
        let _ = writeln!(
            md,
            "| {} / {what} | {}× | {}× | {target} | {met} |",
            rows[a].name,
            spread(&r, 2),
            spread(&ratio(&cpu, a, b, times), 2),
        );
    }
    let _ = writeln!(
        md,
        "| reference fixed window, 2 keys / 1 key | {}× | {}× | | |",
        spread(&ratio(&cost, f2, f1, 1.0), 2),
        spread(&ratio(&cpu, f2, f1, 1.0), 2)
    );
    let _ = writeln!(
        md,
        "\nThe CPU column is the server main thread's CPU time (`used_cpu_sys_main_thread` + `used_cpu_user_main_thread`) over the run divided by the calls: it includes reading requests and writing replies, and, unlike `usec_per_call` (wall time inside the command), not the time the server waited for a core while other processes ran."
    );
    let _ = writeln!(md, "\n| RedisStore, 64 tasks on one thread | decisions/s |");
    let _ = writeln!(md, "|---|---|");
    let _ = writeln!(
        md,
        "| IP + user (2 sliding-window buckets), one multiplexed connection | {} |",
        spread(&store_rate, 0)
    );
    let _ = writeln!(
        md,
        "| the same: server main-thread CPU µs per decision (a decision rate one core of the server sustains) | {} ({:.0}/s) |",
        spread(&store_cpu, 1),
        1e6 / median(&store_cpu)
    );
    let _ = writeln!(
        md,
        "| the same over a deadpool-redis pool of 64 | {} |",
        spread(&pool_rate, 0)
    );
    let _ = writeln!(
        md,
        "| one refused key hammered, refusal cache off (each a Redis call) | {uncached:.0} |"
    );
    let _ = writeln!(
        md,
        "| one refused key hammered, refusal cache on (default) | {cached:.0} ({:.0}× the above) |",
        cached / uncached
    );
    let per_round: Vec<f64> = store_rate
        .iter()
        .zip(&pool_rate)
        .map(|(m, p)| m / p)
        .collect();
    let _ = writeln!(
        md,
        "\nOne multiplexed connection / the pool: {}× (same rounds). IP + user on one multiplexed connection, round by round: {}.",
        spread(&per_round, 2),
        store_rate
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if quick {
        let _ = writeln!(
            md,
            "\n(Smoke run under `cargo test`: unoptimised and short, the figures mean nothing; use `cargo bench`.)"
        );
    }
    print!("{md}");
    if let Ok(path) = std::env::var("TOLLGATE_BENCH_OUT") {
        if !path.is_empty() {
            std::fs::write(&path, &md).unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
            eprintln!("written to {path}");
        }
    }
}
