//! Decisions per second through [`RedisStore`], beside `redis-benchmark` sending the very
//! same script call (`EVALSHA`, same keys, same arguments) to the same `redis-server`, in one
//! run. The bench starts its own `redis-server` on a free loopback port.
//!
//! ```text
//! cargo bench -p tollgate-redis                 # 64 requests in flight, ~3 s per row
//! BENCH_SECS=5 BENCH_IN_FLIGHT=32 cargo bench -p tollgate-redis
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
fn measure(store: Arc<dyn Store>, in_flight: usize, secs: f64, key: Option<Bucket>) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
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
        env("BENCH_SECS", 3) as f64
    };
    let in_flight = env("BENCH_IN_FLIGHT", 64);
    let server = RedisServer::start();
    let url = server.url();

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
        "redis-server {} on 127.0.0.1:{}; {in_flight} requests in flight; {secs} s per row; keys from {KEYSPACE}",
        server.cli(["INFO", "server"]).lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap_or("?").trim(),
        server.port()
    );
    println!("command: {}", args.join(" "));

    let rb_conns = redis_benchmark(server.port(), in_flight, 1, secs, &args);
    let rb_pipe = redis_benchmark(server.port(), 1, in_flight, secs, &args);
    let manager = measure(Arc::new(plain), in_flight as usize, secs, None);
    let cached = measure(
        Arc::new(RedisStore::open(&url).unwrap()),
        in_flight as usize,
        secs,
        None,
    );
    let mut config = deadpool_redis::Config::from_url(url.clone());
    config.pool = Some(deadpool_redis::PoolConfig::new(in_flight as usize));
    let pool = config
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let pooled = measure(
        Arc::new(
            RedisStore::builder()
                .pool(pool)
                .refusal_cache(0)
                .build()
                .unwrap(),
        ),
        in_flight as usize,
        secs,
        None,
    );

    // One refused key, hammered.
    let refused = Bucket::new("bench", "refused", Limit::sliding(Quota::per_hour(1)));
    let hammer = |cache: usize| {
        let store = RedisStore::builder()
            .url(&url)
            .refusal_cache(cache)
            .build()
            .unwrap();
        measure(
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
