//! A bucket's share of the memory store full of keys at their limit: by default a new key
//! is refused (`Refusal::StoreFull`) and no limited key is ever evicted, so a flood of
//! keys (addresses, e-mails, API keys) never frees a limited client; a policy that prefers
//! serving new keys evicts the least recently seen limited keys instead
//! (`WhenFull::EvictLimited`).

mod common;

use std::time::Duration;

use common::{echo, request, Body};
use http::StatusCode;
use tollgate::{Key, Limiter, ManualClock, MemoryStore, Policy, Refusal, WhenFull};
use tower::{service_fn, ServiceBuilder, ServiceExt};

/// A store of 64 keys per bucket name, one shard, on a manual clock.
fn small_store() -> MemoryStore {
    small_store_on(ManualClock::new(Duration::from_secs(1_717_200_000)))
}

/// [`small_store`] on `clock`.
fn small_store_on(clock: ManualClock) -> MemoryStore {
    MemoryStore::builder()
        .max_entries(64)
        .shards(1)
        .clock(clock)
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

/// 64 addresses, each at its limit (5 admitted, then refused), fill the share; each a
/// second after the one before when `clock` is given (so which was seen least recently is
/// defined).
async fn flood(limiter: &Limiter, clock: Option<&ManualClock>) {
    for i in 0..64 {
        if let Some(clock) = clock {
            clock.advance(Duration::from_secs(1));
        }
        let peer = format!("198.51.100.{i}:4000");
        let got = statuses(limiter, &peer, 6).await;
        assert_eq!(got[..5], [StatusCode::OK; 5], "{peer}");
        assert_eq!(got[5], StatusCode::TOO_MANY_REQUESTS, "{peer}");
    }
}

#[tokio::test]
async fn a_flood_of_limited_addresses_never_frees_one_and_new_ones_wait() {
    let limiter = Limiter::builder()
        .store(small_store())
        .route("/*", Policy::named("sign-in").per_ip("5/30min"))
        .build()
        .unwrap();
    flood(&limiter, None).await;
    assert_eq!(
        statuses(&limiter, "203.0.113.9:4000", 1).await,
        [StatusCode::TOO_MANY_REQUESTS]
    );
    assert_eq!(
        statuses(&limiter, "198.51.100.0:4000", 1).await,
        [StatusCode::TOO_MANY_REQUESTS],
        "the least recently seen stays limited"
    );
}

#[tokio::test]
async fn a_policy_can_serve_new_addresses_when_full() {
    // The clock moves: on a clock that stands still every key was seen at the same time,
    // and which was evicted was left to the table's order (1 run in 50 evicted the client
    // still sending).
    let clock = ManualClock::new(Duration::from_secs(1_717_200_000));
    let limiter = Limiter::builder()
        .store(small_store_on(clock.clone()))
        .route(
            "/*",
            Policy::named("sign-in")
                .per_ip("5/30min")
                .when_full(WhenFull::EvictLimited),
        )
        .build()
        .unwrap();
    flood(&limiter, Some(&clock)).await;
    clock.advance(Duration::from_secs(1));
    // A new client gets its own five: the least recently seen limited key made room.
    let fresh = statuses(&limiter, "203.0.113.9:4000", 6).await;
    assert_eq!(fresh[..5], [StatusCode::OK; 5]);
    assert_eq!(fresh[5], StatusCode::TOO_MANY_REQUESTS);
    // A client still sending stays limited: only the least recently seen were evicted.
    assert_eq!(
        statuses(&limiter, "198.51.100.63:4000", 1).await,
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

/// A handler's own bucket refuses new keys when full, whatever they look like.
#[tokio::test]
async fn a_direct_bucket_refuses_new_keys_when_full() {
    let limiter = Limiter::builder()
        .store(small_store())
        .bucket("lockout", "5/30min")
        .build()
        .unwrap();
    for i in 0..64 {
        for _ in 0..5 {
            let key = format!("198.51.100.{i}");
            assert!(limiter.check("lockout", &key).await.unwrap().allowed);
        }
    }
    for new in ["new@example.com", "203.0.113.9"] {
        let refused = limiter.check("lockout", new).await.unwrap();
        assert!(!refused.allowed, "{new}");
        assert_eq!(refused.buckets[0].refusal, Some(Refusal::StoreFull));
    }
}

/// A handler's bucket declared with `WhenFull::EvictLimited` serves a new key when its share
/// is full of keys at their limit, and a key still being refused stays refused.
#[tokio::test]
async fn a_direct_bucket_can_serve_new_keys_when_full() {
    let clock = ManualClock::new(Duration::from_secs(1_717_200_000));
    let limiter = Limiter::builder()
        .store(small_store_on(clock.clone()))
        .bucket_when_full("sign-in-per-ip", "5/30min", WhenFull::EvictLimited)
        .build()
        .unwrap();
    let admitted = |key: String| {
        let limiter = limiter.clone();
        async move {
            let decision = limiter.check("sign-in-per-ip", &key).await.unwrap();
            (decision.allowed, decision.buckets[0].refusal)
        }
    };
    for i in 0..64 {
        clock.advance(Duration::from_secs(1));
        for _ in 0..5 {
            assert!(admitted(format!("198.51.100.{i}")).await.0);
        }
        assert!(!admitted(format!("198.51.100.{i}")).await.0);
    }
    clock.advance(Duration::from_secs(1));
    for attempt in 0..5 {
        assert_eq!(
            admitted("203.0.113.9".into()).await,
            (true, None),
            "attempt {attempt} of a new key"
        );
    }
    assert!(!admitted("203.0.113.9".into()).await.0);
    // The most recently seen of the flood is still limited.
    assert!(!admitted("198.51.100.63".into()).await.0);
}

/// `Policy::failed_auth_per_ip`'s share full of addresses at their limit does not turn new
/// clients away: the guard runs before credentials are checked, so refusing every new
/// address would refuse valid requests too.
#[tokio::test]
async fn the_failed_auth_guard_serves_new_addresses_when_full() {
    let clock = ManualClock::new(Duration::from_secs(1_717_200_000));
    let limiter = Limiter::builder()
        .store(small_store_on(clock.clone()))
        .build()
        .unwrap();
    // The handler: 401 without an API key (a failed sign-in), 200 with one.
    let svc = ServiceBuilder::new()
        .layer(limiter.guard(Policy::failed_auth_per_ip("5/30min")))
        .service(service_fn(|req: http::Request<Body>| async move {
            let status = if req.headers().contains_key("x-api-key") {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            };
            let mut response = http::Response::new(Body::default());
            *response.status_mut() = status;
            Ok::<_, std::convert::Infallible>(response)
        }));
    let call = |peer: String, key: Option<&'static str>| {
        let svc = svc.clone();
        async move {
            svc.oneshot(request("/x", Some(&peer), key))
                .await
                .unwrap()
                .status()
        }
    };
    for i in 0..64 {
        clock.advance(Duration::from_secs(1));
        let peer = format!("198.51.100.{i}:4000");
        for _ in 0..5 {
            assert_eq!(call(peer.clone(), None).await, StatusCode::UNAUTHORIZED);
        }
        assert_eq!(
            call(peer.clone(), Some("valid")).await,
            StatusCode::TOO_MANY_REQUESTS,
            "{peer} is at its limit"
        );
    }
    clock.advance(Duration::from_secs(1));
    // A new client with valid credentials is served, and its failures are counted.
    assert_eq!(
        call("203.0.113.9:4000".into(), Some("valid")).await,
        StatusCode::OK
    );
    for _ in 0..5 {
        assert_eq!(
            call("203.0.113.9:4000".into(), None).await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        call("203.0.113.9:4000".into(), Some("valid")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The most recently seen of the flood is still limited.
    assert_eq!(
        call("198.51.100.63:4000".into(), Some("valid")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// The limiter of configuration `yaml` on a [`small_store`] reading `clock`, or the error
/// building it, as text.
fn from_yaml(yaml: &str, clock: &ManualClock) -> Result<Limiter, String> {
    tollgate::config::Config::from_yaml(yaml)
        .and_then(|config| config.apply(Limiter::builder(), "limits.yaml"))
        .map_err(|e| e.to_string())?
        .store(small_store_on(clock.clone()))
        .build()
        .map_err(|e| e.to_string())
}

/// A new address, after [`flood`], is admitted by the limiter of configuration `yaml`.
async fn serves_a_new_address_after_a_flood(yaml: &str) -> Limiter {
    let clock = ManualClock::new(Duration::from_secs(1_717_200_000));
    let limiter = from_yaml(yaml, &clock).unwrap();
    flood(&limiter, Some(&clock)).await;
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        statuses(&limiter, "203.0.113.9:4000", 1).await,
        [StatusCode::OK],
        "{yaml}"
    );
    limiter
}

/// A configuration file chooses too: `when_full: evict_limited` on a route, on a bucket for
/// direct use and on a global limit with a key; on one of a route's limits, or on the one
/// bucket for everyone, it is an error that says why.
#[tokio::test]
async fn a_configuration_file_can_serve_new_keys_when_full() {
    let limiter = serves_a_new_address_after_a_flood(
        "routes:\n  - path: /*\n    name: sign-in\n    when_full: evict_limited\n    \
         limits: [{ per: ip, limit: 5/30min }]\n\
         buckets:\n  per-ip: { limit: 5/30min, when_full: evict_limited }\n  \
         lockout: { limit: 5/30min }\n",
    )
    .await;
    for bucket in ["per-ip", "lockout"] {
        for i in 0..64 {
            for _ in 0..5 {
                let key = format!("198.51.100.{i}");
                assert!(limiter.check(bucket, &key).await.unwrap().allowed);
            }
        }
    }
    assert!(limiter.check("per-ip", "new").await.unwrap().allowed);
    assert!(!limiter.check("lockout", "new").await.unwrap().allowed);
    serves_a_new_address_after_a_flood(
        "global:\n  - { per: ip, limit: 5/30min, when_full: evict_limited }\n",
    )
    .await;

    let clock = ManualClock::new(Duration::from_secs(1_717_200_000));
    let err = from_yaml(
        "routes:\n  - path: /*\n    limits: [{ per: ip, limit: 5/30min, when_full: evict_limited }]\n",
        &clock,
    )
    .unwrap_err();
    assert!(
        err.contains("routes[0].limits[0].when_full") && err.contains("set it on the route"),
        "{err}"
    );
    let err = from_yaml(
        "gateway: { global_rate_limit: { sustained: 1000/min, when_full: evict_limited } }\n",
        &clock,
    )
    .unwrap_err();
    assert!(
        err.contains("gateway.global_rate_limit.when_full") && err.contains("per: ip"),
        "{err}"
    );
}

/// `when_full: keep_counts` in a file: a bucket that keeps every key that still counts. A
/// key at 4 of 5 keeps its count through a flood of new keys (the flood's keys are refused
/// for room once the share is full), where the default bucket beside it evicts the count
/// (a flood whose keys spend as much, four each: keys that spent less go first).
#[tokio::test]
async fn a_configuration_file_can_keep_every_count() {
    let clock = ManualClock::new(Duration::from_secs(1_717_200_000));
    let limiter = from_yaml(
        "buckets:\n  kept: { limit: 5/30min, when_full: keep_counts }\n  \
         evicted: { limit: 5/30min }\n",
        &clock,
    )
    .unwrap();
    for bucket in ["kept", "evicted"] {
        for _ in 0..4 {
            assert!(limiter.check(bucket, "victim").await.unwrap().allowed);
        }
        let mut refused_for_room = 0;
        for i in 0..128 {
            clock.advance(Duration::from_millis(1));
            let junk = format!("junk-{i}");
            let d = limiter.check(bucket, &junk).await.unwrap();
            for _ in 0..3 {
                let _ = limiter.check(bucket, &junk).await.unwrap();
            }
            if d.buckets[0].refusal == Some(Refusal::StoreFull) {
                refused_for_room += 1;
            }
        }
        let left = limiter.peek_bucket(bucket, "victim").await.unwrap();
        match bucket {
            "kept" => assert_eq!((left.buckets[0].remaining, refused_for_room), (1, 65)),
            _ => assert_eq!((left.buckets[0].remaining, refused_for_room), (5, 0)),
        }
    }
}
