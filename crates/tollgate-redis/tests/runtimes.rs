//! One store used from several tokio runtimes, one after another, as a limiter in a
//! `static` is by `#[tokio::test]`s (each test's runtime ends with it) or by a runtime used
//! only at start-up: each runtime's calls are decided by Redis, and counted there.

use std::time::Duration;

use tollgate_core::{Batch, Bucket, Limit, Quota, Store};
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
