//! `Key::network(bits)` (`Policy::per_network`, `per: network:<bits>` in files): a limit per
//! client network beside the per-IP one. An IPv6 client is keyed by its /64, and a client
//! holding a /48 holds 65,536 of them: a review spread guesses over ten /64s of one /48 and
//! had 180 answered against a guard of 20 a minute per IP. A limit per /48 bounds them all.

mod common;

use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use common::{clock_and_store, header, serve, Server};
use tollgate::config::Config;
use tollgate::{BuildError, ClientIp, Key, Limiter, Policy, WhenFull};

async fn authenticate(request: Request, next: Next) -> Response {
    if request.headers().get("x-api-key").map(|v| v.as_bytes()) != Some(b"key-acme") {
        return (StatusCode::UNAUTHORIZED, "unknown API key").into_response();
    }
    next.run(request).await
}

/// A guard of 5 failures a minute per IP and 8 per /48, before authentication.
async fn guarded() -> (Server, Limiter, tollgate::ManualClock) {
    let (clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .client_ip(ClientIp::peer().trust_proxies(["127.0.0.1/32"]))
        .route("/v1/*", Policy::named("api").per_ip("1000/min"))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/v1/items", get(|| async { "items" }))
        .layer(limiter.layer())
        .layer(middleware::from_fn(authenticate))
        .layer(limiter.guard(Policy::failed_auth_per_ip("5/min").per_network(48, "8/min")));
    (serve(app).await, limiter, clock)
}

async fn send(server: &Server, ip: &str, key: &str) -> reqwest::Response {
    server
        .get("/v1/items")
        .header("x-forwarded-for", ip)
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
}

async fn statuses(server: &Server, ip: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(send(server, ip, "guess").await.status().as_u16());
    }
    out
}

#[tokio::test]
async fn guesses_spread_over_many_64s_of_one_48_are_bounded_by_the_network_limit() {
    let (server, _limiter, clock) = guarded().await;
    // One /64: its own limit of 5.
    assert_eq!(
        statuses(&server, "2001:db8:aa:1::1", 7).await,
        [401, 401, 401, 401, 401, 429, 429]
    );
    // The next /64 of the same /48: 3 left of the network's 8, then refused; the refusal
    // names the network's bucket (its headers describe the bucket that refused).
    assert_eq!(
        statuses(&server, "2001:db8:aa:2::1", 3).await,
        [401, 401, 401]
    );
    let refused = send(&server, "2001:db8:aa:2::1", "guess").await;
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "x-ratelimit-limit"), "8");
    assert_eq!(header(&refused, "x-ratelimit-remaining"), "0");
    // Every other /64 of the /48 is refused too, however many it holds: 8 answered in all.
    for n in 3..40 {
        let ip = format!("2001:db8:aa:{n:x}::7");
        assert_eq!(send(&server, &ip, "guess").await.status(), 429, "{ip}");
    }
    // The /48 next door is another network.
    assert_eq!(statuses(&server, "2001:db8:ab:1::1", 1).await, [401]);
    // IPv4 addresses are each their own network.
    assert_eq!(statuses(&server, "198.51.100.7", 6).await[5], 429);
    assert_eq!(statuses(&server, "198.51.100.8", 1).await, [401]);
    // A minute on, the network may try again.
    clock.advance(Duration::from_secs(61));
    assert_eq!(statuses(&server, "2001:db8:aa:99::1", 1).await, [401]);
}

#[tokio::test]
async fn an_operator_finds_a_networks_count_by_any_address_in_it() {
    let (server, limiter, _clock) = guarded().await;
    assert_eq!(statuses(&server, "2001:db8:cc:1::1", 3).await, [401; 3]);
    assert_eq!(statuses(&server, "2001:db8:cc:2::1", 2).await, [401; 2]);
    // Looked up by an address of another /64 of it, or by the network as stored.
    for key in ["2001:db8:cc:ffff::9", "2001:db8:cc::/48"] {
        let seen = limiter
            .peek_bucket("failed-auth:network:48", key)
            .await
            .unwrap();
        assert_eq!(seen.buckets[0].remaining, 3, "{key}");
    }
    // A stored key of another prefix names no key of this bucket.
    assert!(limiter
        .peek_bucket("failed-auth:network:48", "2001:db8:cc::/64")
        .await
        .is_err());
    let _ = limiter
        .reset_bucket("failed-auth:network:48", "2001:db8:cc:5::5")
        .await
        .unwrap();
    let seen = limiter
        .peek_bucket("failed-auth:network:48", "2001:db8:cc::1")
        .await
        .unwrap();
    assert_eq!(seen.buckets[0].remaining, 8);
}

#[tokio::test]
async fn a_prefix_no_address_has_is_a_build_error() {
    let built = Limiter::builder()
        .route(
            "/*",
            Policy::named("api")
                .per_ip("10/min")
                .per_network(129, "50/min"),
        )
        .build();
    match built {
        Err(BuildError::BadNetworkPrefix { bucket, prefix }) => {
            assert_eq!((bucket.as_str(), prefix), ("api:network:129", 129));
        }
        other => panic!("expected BadNetworkPrefix, got {other:?}"),
    }
    assert_eq!(Key::network(64).kind(), "network:64");
    // `/128`, one address, is a prefix every address has: a policy's key and a bucket for
    // direct use may take it.
    let longest = Limiter::builder()
        .route("/*", Policy::named("api").per_network(128, "50/min"))
        .bucket_per_network("one", "5/min", WhenFull::EvictLimited, 128)
        .build();
    assert!(longest.is_ok(), "{:?}", longest.err());
}

#[tokio::test]
async fn a_file_declares_a_network_limit() {
    let yaml = "
routes:
  - path: /v1/*
    name: api
    limits:
      - { per: ip, limit: 2/min }
      - { per: network:56, limit: 3/min }
";
    let (_clock, store) = clock_and_store();
    let builder = Limiter::builder()
        .store(store)
        .client_ip(ClientIp::peer().trust_proxies(["127.0.0.1/32"]));
    let limiter = Config::from_yaml(yaml)
        .unwrap()
        .apply(builder, "limits.yaml")
        .unwrap()
        .build()
        .unwrap();
    let app = Router::new()
        .route("/v1/items", get(|| async { "items" }))
        .layer(limiter.layer());
    let server = serve(app).await;
    let mut got = Vec::new();
    // Two /64s of one /56, two requests each: the network's 3 run out on the fourth.
    for ip in [
        "2001:db8:0:100::1",
        "2001:db8:0:100::2",
        "2001:db8:0:1ff::1",
        "2001:db8:0:1ff::2",
    ] {
        got.push(send(&server, ip, "-").await.status().as_u16());
    }
    assert_eq!(got, [200, 200, 200, 429]);
    // Out of range in a file: an error naming what to write.
    let bad = "routes:\n  - path: /v1/*\n    limits: [{ per: network:200, limit: 3/min }]\n";
    let error = Config::from_yaml(bad).unwrap_err();
    assert!(error.to_string().contains("network:48"), "{error}");
}
