//! Two app instances sharing one Redis (a throwaway redis-server on a free loopback port)
//! share every bucket, API keys included, and Redis never sees a raw API key.
#![cfg(feature = "redis")]

mod common;

use axum::routing::get;
use axum::Router;
use common::serve;
use tollgate::redis::RedisStore;
use tollgate::{Limiter, Policy};
use tollgate_testkit::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_budget_through_redis() {
    let redis = RedisServer::start();
    let instance = || {
        let store = RedisStore::builder().url(redis.url()).build().unwrap();
        let limiter = Limiter::builder()
            .store(store)
            .read_env(false)
            .route(
                "/*",
                Policy::named("keys").per_api_key("x-api-key", "5/min"),
            )
            .build()
            .unwrap();
        Router::new()
            .route("/x", get(|| async { "ok" }))
            .layer(limiter.layer())
    };
    let (a, b) = (serve(instance()).await, serve(instance()).await);
    let call = |server: &common::Server, key: &'static str| {
        let request = server.get("/x").header("x-api-key", key);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let mut statuses = Vec::new();
    for i in 0..7 {
        let server = if i % 2 == 0 { &a } else { &b };
        statuses.push(call(server, "sk_live_shared").await);
    }
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 429, 429]);
    assert_eq!(call(&b, "sk_live_other").await, 200);

    let keys = redis.cli(["KEYS", "*"]);
    assert!(!keys.contains("sk_live"), "{keys}");
    assert!(keys.contains("keys:api_key:#"), "{keys}");
}
