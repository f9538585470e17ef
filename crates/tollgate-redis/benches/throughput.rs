//! Decisions per second through [`RedisStore`], beside `redis-benchmark` sending the very
//! same script call (`EVALSHA`, same keys, same arguments) to the same `redis-server`, in one
//! run. The bench starts its own `redis-server` on a free loopback port.
//!
//! ```text
//! cargo bench -p tollgate-redis     # 64 in flight, 3 rounds of 2 s per row, medians
//! BENCH_SECS=5 BENCH_ROUNDS=5 BENCH_IN_FLIGHT=32 cargo bench -p tollgate-redis
//! ```
//!
//! Rows:
//! - `redis-benchmark -c 64 -P 1`: 64 connections, one request in flight on each;
//! - `redis-benchmark -c 1 -P 64`: one connection, 64 requests pipelined;
//! - the store over one multiplexed connection (`ConnectionManager`), 64 tasks, refusal cache
//!   off and on (its cost when nothing is refused);
//! - the store over a deadpool-redis pool of 64 connections, 64 tasks;
//! - 64 tasks hammering one refused key, with and without the refusal cache.
//!
//! The store's client runs on one thread (a current-thread tokio runtime), as
//! `redis-benchmark` does, so on a 2-core machine each side has one core beside
//! redis-server's.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_core::{Batch, Bucket, Limit, Quota, Store};
use tollgate_redis::{deadpool_redis, RedisStore};
use tollgate_testkit::RedisServer;

/// Keys are drawn from this many (as `redis-benchmark -r`).
const KEYSPACE: u64 = 100_000;

fn limit() -> Limit {
    // Admits everything: every call reads and writes its key.
    Limit::sliding(Quota::per_hour(1_000_000_000))
}

fn bucket(k: u64) -> Bucket {
    // `redis-benchmark` writes `__rand_int__` as 12 zero-padded digits.
    Bucket::new("bench", &format!("{k:012}"), limit())
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Decisions per second of `in_flight` tasks calling `store` for `secs` (after a warm-up).
fn measure(
    rt: &tokio::runtime::Runtime,
    store: Arc<dyn Store>,
    in_flight: usize,
    secs: f64,
    key: Option<Bucket>,
) -> f64 {
    rt.block_on(async move {
        let run = |duration: Duration| {
            let counted = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let tasks: Vec<_> = (0..in_flight)
                .map(|t| {
                    let (store, counted, stop, key) =
                        (store.clone(), counted.clone(), stop.clone(), key.clone());
                    tokio::spawn(async move {
                        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1);
                        while !stop.load(Ordering::Relaxed) {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            let bucket = key.clone().unwrap_or_else(|| bucket(x % KEYSPACE));
                            store
                                .apply(&Batch::charge(vec![bucket]))
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
                let started = Instant::now();
                tokio::time::sleep(duration).await;
                stop.store(true, Ordering::Relaxed);
                let n = counted.load(Ordering::Relaxed);
                let elapsed = started.elapsed();
                for t in tasks {
                    t.await.unwrap();
                }
                n as f64 / elapsed.as_secs_f64()
            }
        };
        run(Duration::from_millis(500)).await;
        run(Duration::from_secs_f64(secs)).await
    })
}

/// `redis-benchmark` sending `args` (`EVALSHA <sha> ...`): requests per second.
fn redis_benchmark(port: u16, clients: u64, pipeline: u64, secs: f64, args: &[String]) -> f64 {
    let run = |n: u64| -> f64 {
        let out = Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-c", &clients.to_string(), "-P", &pipeline.to_string()])
            .args(["-n", &n.to_string(), "-r", &KEYSPACE.to_string(), "--csv"])
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!("`redis-benchmark` could not run ({e}); install redis-tools")
            });
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.starts_with("\"EVALSHA"))
            .unwrap_or_else(|| panic!("unexpected redis-benchmark output: {text}"));
        line.split("\",\"").nth(1).unwrap().parse().unwrap()
    };
    let rate = run(20_000);
    run((rate * secs) as u64)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too: keep it short then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let secs = if quick {
        0.3
    } else {
        env("BENCH_SECS", 2) as f64
    };
    let rounds = if quick { 1 } else { env("BENCH_ROUNDS", 3) };
    let in_flight = env("BENCH_IN_FLIGHT", 64);
    let server = RedisServer::start();
    let url = server.url();
    // One thread, as redis-benchmark: on 2 cores, each side has one beside redis-server's.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let plain = RedisStore::builder()
        .url(&url)
        .refusal_cache(0)
        .build()
        .unwrap();
    let template = Batch::charge(vec![Bucket::new("bench", "__rand_int__", limit())]);
    let mut args = vec!["EVALSHA".to_owned(), RedisStore::script_sha().to_owned()];
    args.extend(plain.script_args(&template).unwrap());
    let loaded = server.cli(["SCRIPT", "LOAD", RedisStore::script_source()]);
    assert_eq!(loaded.trim(), RedisStore::script_sha());

    println!(
        "redis-server {} on 127.0.0.1:{}; {in_flight} requests in flight; {rounds} rounds of {secs} s per row (median shown); keys from {KEYSPACE}",
        server.cli(["INFO", "server"]).lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap_or("?").trim(),
        server.port()
    );
    println!("command: {}", args.join(" "));
    if quick {
        println!("(smoke run under `cargo test`: unoptimised and short, the figures mean nothing; use `cargo bench`)");
    }

    let mut config = deadpool_redis::Config::from_url(url.clone());
    config.pool = Some(deadpool_redis::PoolConfig::new(in_flight as usize));
    let pool = config
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let plain: Arc<dyn Store> = Arc::new(plain);
    let cached: Arc<dyn Store> = Arc::new(RedisStore::open(&url).unwrap());
    let pooled: Arc<dyn Store> = Arc::new(
        RedisStore::builder()
            .pool(pool)
            .refusal_cache(0)
            .build()
            .unwrap(),
    );
    // The rows take turns, `rounds` times, and each reports its median: load from other
    // processes then weighs on every row alike.
    let mut samples: [Vec<f64>; 5] = Default::default();
    for _ in 0..rounds {
        samples[0].push(redis_benchmark(server.port(), in_flight, 1, secs, &args));
        samples[1].push(redis_benchmark(server.port(), 1, in_flight, secs, &args));
        samples[2].push(measure(&rt, plain.clone(), in_flight as usize, secs, None));
        samples[3].push(measure(&rt, cached.clone(), in_flight as usize, secs, None));
        samples[4].push(measure(&rt, pooled.clone(), in_flight as usize, secs, None));
    }
    let [rb_conns, rb_pipe, manager, cached, pooled] = samples.map(|mut v| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    });

    // One refused key, hammered.
    let refused = Bucket::new("bench", "refused", Limit::sliding(Quota::per_hour(1)));
    let hammer = |cache: usize| {
        let store = RedisStore::builder()
            .url(&url)
            .refusal_cache(cache)
            .build()
            .unwrap();
        measure(
            &rt,
            Arc::new(store),
            in_flight as usize,
            secs,
            Some(refused.clone()),
        )
    };
    let hammer_uncached = hammer(0);
    let hammer_cached = hammer(10_000);

    let best = rb_conns.max(rb_pipe);
    let row = |name: &str, rate: f64| {
        println!(
            "{name:<58} {rate:>10.0}/s  {:>5.0}% of -c {in_flight} -P 1  {:>5.0}% of -c 1 -P {in_flight}",
            100.0 * rate / rb_conns,
            100.0 * rate / rb_pipe
        );
    };
    println!();
    row(&format!("redis-benchmark -c {in_flight} -P 1"), rb_conns);
    row(&format!("redis-benchmark -c 1 -P {in_flight}"), rb_pipe);
    row(
        "RedisStore, ConnectionManager (multiplexed), no cache",
        manager,
    );
    row(
        "RedisStore, ConnectionManager, refusal cache on (default)",
        cached,
    );
    row(
        &format!("RedisStore, deadpool-redis pool of {in_flight}, no cache"),
        pooled,
    );
    println!("{:<58} {:>10.1}x", "multiplexed / pool", manager / pooled);
    println!();
    println!(
        "{:<58} {hammer_uncached:>10.0}/s",
        "one refused key hammered, no cache (each a Redis call)"
    );
    println!(
        "{:<58} {hammer_cached:>10.0}/s  ({:.0}x)",
        "one refused key hammered, refusal cache",
        hammer_cached / hammer_uncached
    );
    println!();
    println!(
        "ratio of the default store to redis-benchmark (best of the two): {:.0}%",
        100.0 * manager.max(cached) / best
    );
}
