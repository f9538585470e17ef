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

/// Two applications on one Redis, each with its own `store.prefix`, keep their buckets of
/// the same name apart; two instances of one application (one prefix) share them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_with_their_own_prefix_keep_same_named_buckets_apart() {
    let redis = RedisServer::start();
    let app = |prefix: &str| {
        let yaml = format!(
            "store: {{ kind: redis, url: \"{}\", prefix: \"{prefix}\" }}\n\
             routes:\n  - {{ path: /*, name: failed-auth, limits: [{{ per: ip, limit: 2/min }}] }}\n",
            redis.url()
        );
        let limiter = tollgate::config::Config::from_yaml(&yaml)
            .unwrap()
            .apply(Limiter::builder().read_env(false), "test")
            .unwrap()
            .build()
            .unwrap();
        Router::new()
            .route("/x", get(|| async { "ok" }))
            .layer(limiter.layer())
    };
    let billing = serve(app("tollgate:billing:")).await;
    let billing_too = serve(app("tollgate:billing:")).await;
    let support = serve(app("tollgate:support:")).await;
    let status = |server: &common::Server| {
        let request = server.get("/x");
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let mut statuses = Vec::new();
    for server in [
        &billing,
        &billing_too,
        &billing_too,
        &support,
        &support,
        &support,
    ] {
        statuses.push(status(server).await);
    }
    assert_eq!(statuses, vec![200, 200, 429, 200, 200, 429]);
    let keys = redis.cli(["KEYS", "*"]);
    assert!(keys.contains("tollgate:billing:failed-auth:ip:"), "{keys}");
    assert!(keys.contains("tollgate:support:failed-auth:ip:"), "{keys}");
}
