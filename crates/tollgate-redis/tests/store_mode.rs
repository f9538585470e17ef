//! `Store::mode`: where each store decides now, as an operator's page shows it, also through
//! `Arc<dyn Store>` / `Box<dyn Store>` (how a limiter holds its store).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::wait_for_mode;
use tollgate_limits::{MemoryStore, Store, StoreMode};
use tollgate_redis::{EnvStore, FallbackConfig, FallbackStore, Mode, RedisStore};
use tollgate_testkit::RedisServer;

const RECOVERY: Duration = Duration::from_secs(4);

#[test]
fn memory_is_memory_and_wrappers_forward() {
    let memory = MemoryStore::new();
    assert_eq!(memory.mode(), StoreMode::Memory);
    let shared: Arc<dyn Store> = Arc::new(EnvStore::Memory(MemoryStore::new()));
    assert_eq!(shared.mode(), StoreMode::Memory);
    assert_eq!(StoreMode::Fallback.to_string(), "fallback");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_is_shared_and_the_fallback_store_says_when_it_is_on_memory() {
    let mut server = RedisServer::start();
    let redis = RedisStore::open(&server.url()).unwrap();
    assert_eq!(redis.mode(), StoreMode::Shared);

    let fallback = FallbackStore::connect(
        RedisStore::open(&server.url()).unwrap(),
        FallbackConfig::default().with_timeout(Duration::from_millis(50)),
    )
    .await;
    let env = EnvStore::Redis(fallback.clone());
    let as_dyn: Arc<dyn Store> = Arc::new(env.clone());
    let boxed: Box<dyn Store> = Box::new(fallback.clone());
    assert_eq!(fallback.mode(), Mode::Primary);
    for mode in [
        Store::mode(&fallback),
        env.mode(),
        as_dyn.mode(),
        boxed.mode(),
    ] {
        assert_eq!(mode, StoreMode::Shared);
    }

    server.kill();
    // The circuit opens after three failed calls in a row.
    let batch = tollgate_limits::Batch::charge(vec![tollgate_limits::Bucket::new(
        "mode-test",
        "k",
        tollgate_limits::Limit::sliding(tollgate_limits::Quota::per_minute(10)),
    )]);
    for _ in 0..3 {
        let _ = fallback.apply(&batch).await.unwrap(); // answered from memory: never an error
    }
    assert_eq!(fallback.mode(), Mode::Fallback);
    for mode in [
        Store::mode(&fallback),
        env.mode(),
        as_dyn.mode(),
        boxed.mode(),
    ] {
        assert_eq!(mode, StoreMode::Fallback);
    }

    server.restart();
    wait_for_mode(&fallback, Mode::Primary, RECOVERY).await;
    assert_eq!(as_dyn.mode(), StoreMode::Shared);
}
