//! One store used from several tokio runtimes, one after another, as a limiter in a
//! `static` is by `#[tokio::test]`s (each test's runtime ends with it) or by a runtime used
//! only at start-up: each runtime's calls are decided by Redis, and counted there.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tollgate_limits::{Batch, Bucket, Limit, Quota, Store};
use tollgate_redis::{FallbackConfig, FallbackStore, Mode, RedisStore};
use tollgate_testkit::RedisServer;

/// A runtime as a `#[tokio::test]` makes: one thread, ended when dropped.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A store made outside any runtime (a `static`), then used by five runtimes in turn,
/// ten charges each: every charge is decided and counted by Redis, and the store never
/// leaves it. Before, each runtime after the first found the connection of the one before
/// (its driver ended with that runtime) broken; the store left Redis, and its check ended
/// with the runtime that started it: on memory for good from the second runtime on, what
/// it admitted never charged to Redis.
#[test]
fn a_store_made_outside_a_runtime_decides_on_redis_in_each_of_several() {
    let server = RedisServer::start();
    let store = store(&server);
    in_turn(&store);
}

/// The same for a store made in the first runtime (a `LazyLock` first used by one test).
#[test]
fn a_store_made_in_a_runtime_decides_on_redis_in_each_that_follows() {
    let server = RedisServer::start();
    let store = runtime().block_on(async { store(&server) });
    in_turn(&store);
}

fn store(server: &RedisServer) -> FallbackStore<RedisStore> {
    FallbackStore::with_config(
        RedisStore::open(&server.url()).unwrap(),
        FallbackConfig::default().with_timeout(Duration::from_millis(500)),
    )
}

/// Five runtimes in turn, ten charges each, every one decided and counted by Redis.
fn in_turn(store: &FallbackStore<RedisStore>) {
    let bucket = Bucket::new("user", "alice", Limit::sliding(Quota::per_hour(1_000)));
    let batch = Batch::charge(vec![bucket]);
    for round in 0..5 {
        runtime().block_on(async {
            for n in 0..10 {
                let decision = store.apply(&batch).await.unwrap();
                assert!(decision.allowed);
                assert_eq!(store.mode(), Mode::Primary, "round {round}, charge {n}");
                assert_eq!(
                    decision.buckets[0].remaining,
                    1_000 - (round * 10 + n + 1),
                    "round {round}, charge {n}"
                );
            }
        });
    }
    assert_eq!(store.fallbacks(), 0, "left Redis");
}

/// Panics anywhere in this process (tokio catches those of its tasks, and prints them).
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// A store that connected (and found Redis down) in a runtime used only at start-up: in
/// the next runtime, with Redis up, it connects afresh and is back on Redis at once, and
/// nothing panics. Before, its connection, made on the ended runtime, was used again: its
/// reconnection's timer belonged to that runtime, and the checks started in the next one
/// panicked ("A Tokio 1.x context was found, but it is being shutdown"), about twice per
/// request, until the connection was renewed a second later (a review: 85 panics).
#[test]
fn a_connection_made_in_an_ended_runtime_is_made_afresh_in_the_next() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    let mut server = RedisServer::start();
    server.kill();
    let config = FallbackConfig::default();
    let start_up = runtime();
    let store = start_up.block_on(async {
        let redis = RedisStore::builder()
            .url(server.url())
            .for_fallback(&config)
            .build()
            .unwrap();
        FallbackStore::connect(redis, config.clone()).await
    });
    assert_eq!(store.mode(), Mode::Fallback, "Redis is down");
    drop(start_up);
    server.restart();
    let batch = Batch::charge(vec![Bucket::new(
        "user",
        "alice",
        Limit::sliding(Quota::per_hour(1_000)),
    )]);
    let later = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let back_after = later.block_on(async {
        let began = Instant::now();
        while store.mode() != Mode::Primary && began.elapsed() < Duration::from_secs(5) {
            assert!(store.apply(&batch).await.unwrap().allowed);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        began.elapsed()
    });
    assert_eq!(store.mode(), Mode::Primary);
    assert!(
        back_after < Duration::from_millis(500),
        "back on Redis after {back_after:?}"
    );
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
}
