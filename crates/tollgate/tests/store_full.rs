//! A bucket's share of the memory store full of keys at their limit: what a new key gets
//! depends on whether a client can invent it. Addresses cannot be invented for free, so a
//! flood of limited addresses evicts the least recently seen of them rather than shutting
//! every new client out; e-mails and API keys can, so a flood of them never frees one.

mod common;

use std::time::Duration;

use common::{echo, request};
use http::StatusCode;
use tollgate::{Key, Limiter, ManualClock, MemoryStore, Policy, Refusal, WhenFull};
use tower::{service_fn, ServiceBuilder, ServiceExt};

/// A store of 64 keys per bucket name, one shard, on a manual clock.
fn small_store() -> MemoryStore {
    MemoryStore::builder()
        .max_entries(64)
        .shards(1)
        .clock(ManualClock::new(Duration::from_secs(1_717_200_000)))
        .build()
}

/// The statuses of `n` requests to `/x` from `peer` through a layer of `policy`.
async fn statuses(limiter: &Limiter, peer: &str, n: usize) -> Vec<StatusCode> {
    let svc = ServiceBuilder::new()
        .layer(limiter.layer())
        .service(service_fn(echo));
    let mut out = Vec::new();
    for _ in 0..n {
        let r = svc
            .clone()
            .oneshot(request("/x", Some(peer), None))
            .await
            .unwrap();
        out.push(r.status());
    }
    out
}

/// 64 addresses, each at its limit (5 admitted, then refused), fill the share.
async fn flood(limiter: &Limiter) {
    for i in 0..64 {
        let peer = format!("198.51.100.{i}:4000");
        let got = statuses(limiter, &peer, 6).await;
        assert_eq!(got[..5], [StatusCode::OK; 5], "{peer}");
        assert_eq!(got[5], StatusCode::TOO_MANY_REQUESTS, "{peer}");
    }
}

#[tokio::test]
async fn a_flood_of_limited_addresses_does_not_shut_new_clients_out() {
    let limiter = Limiter::builder()
        .store(small_store())
        .route("/*", Policy::named("sign-in").per_ip("5/30min"))
        .build()
        .unwrap();
    flood(&limiter).await;
    // A new client gets its own five (it was refused: the share held only limited keys).
    let fresh = statuses(&limiter, "203.0.113.9:4000", 6).await;
    assert_eq!(
        fresh,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    // A client still sending stays limited: only the least recently seen were evicted.
    assert_eq!(
        statuses(&limiter, "198.51.100.63:4000", 1).await,
        [StatusCode::TOO_MANY_REQUESTS]
    );
}

#[tokio::test]
async fn a_policy_can_still_refuse_new_addresses_when_full() {
    let limiter = Limiter::builder()
        .store(small_store())
        .route(
            "/*",
            Policy::named("sign-in")
                .per_ip("5/30min")
                .when_full(WhenFull::RefuseNewKeys),
        )
        .build()
        .unwrap();
    flood(&limiter).await;
    assert_eq!(
        statuses(&limiter, "203.0.113.9:4000", 1).await,
        [StatusCode::TOO_MANY_REQUESTS]
    );
}

#[tokio::test]
async fn invented_keys_never_free_a_limited_one() {
    let limiter = Limiter::builder()
        .store(small_store())
        .route(
            "/*",
            Policy::named("keys").limit(Key::api_key("x-api-key"), "5/30min"),
        )
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(limiter.layer())
        .service(service_fn(echo));
    let call = |key: String| {
        let svc = svc.clone();
        async move {
            svc.oneshot(request("/x", Some("192.0.2.1:1"), Some(&key)))
                .await
                .unwrap()
                .status()
        }
    };
    for i in 0..64 {
        for _ in 0..5 {
            assert_eq!(call(format!("junk-{i}")).await, StatusCode::OK);
        }
    }
    assert_eq!(call("new".into()).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(call("junk-0".into()).await, StatusCode::TOO_MANY_REQUESTS);
}

/// A handler's own bucket follows the same rule by the key it is given.
#[tokio::test]
async fn a_direct_buckets_addresses_evict_and_its_other_keys_refuse() {
    let limiter = Limiter::builder()
        .store(small_store())
        .bucket("auth", "5/30min")
        .bucket("lockout", "5/30min")
        .build()
        .unwrap();
    for i in 0..64 {
        for _ in 0..5 {
            let ip = format!("198.51.100.{i}");
            assert!(limiter.check("auth", &ip).await.unwrap().allowed);
            let email = format!("junk-{i}@example.com");
            assert!(limiter.check("lockout", &email).await.unwrap().allowed);
        }
    }
    assert!(limiter.check("auth", "203.0.113.9").await.unwrap().allowed);
    let refused = limiter.check("lockout", "new@example.com").await.unwrap();
    assert!(!refused.allowed);
    assert_eq!(refused.buckets[0].refusal, Some(Refusal::StoreFull));
}
