//! A server that does not give the limiter the peer address (axum served without
//! `into_make_service_with_connect_info`): by default such requests share one per-IP bucket
//! and are counted; with `require_peer_address` they are refused with a 500 that says how
//! to fix the deployment.

mod common;

use axum::routing::get;
use axum::Router;
use tollgate::{Limiter, Policy};

/// Serves `app` WITHOUT the peer address (the deployment mistake).
async fn serve_without_peer(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn app(limiter: &Limiter) -> Router {
    Router::new()
        .route("/api/items", get(|| async { "items" }))
        .route("/hooks/stripe", get(|| async { "hook" }))
        .layer(limiter.layer())
}

fn builder() -> tollgate::LimiterBuilder {
    Limiter::builder()
        .read_env(false)
        .route("/api/*", Policy::named("api").per_ip("2/min"))
        .route("/hooks/*", Policy::exempt())
}

#[tokio::test]
async fn without_the_option_requests_without_a_peer_share_one_bucket_and_are_counted() {
    let limiter = builder().build().unwrap();
    let base = serve_without_peer(app(&limiter)).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = client
            .get(format!("{base}/api/items"))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(limiter.stats().no_peer, 3);

    // An operator reaches the shared bucket by its name, `unknown-peer`: a lookup shows it
    // spent, and a reset lets such requests through again.
    let state = limiter.peek_bucket("api:ip", "unknown-peer").await.unwrap();
    assert_eq!((state.buckets[0].limit, state.buckets[0].remaining), (2, 0));
    assert_eq!(
        limiter.stored_key("api:ip", "unknown-peer").unwrap(),
        "unknown-peer"
    );
    let _ = limiter
        .reset_bucket("api:ip", "unknown-peer")
        .await
        .unwrap();
    let r = client
        .get(format!("{base}/api/items"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn with_the_option_a_request_without_a_peer_gets_a_500_that_says_how_to_fix_it() {
    let limiter = builder().require_peer_address().build().unwrap();
    let base = serve_without_peer(app(&limiter)).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    let r = client
        .get(format!("{base}/api/items"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 500);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    let body = r.text().await.unwrap();
    assert!(
        body.contains("cannot see the client's address")
            && body.contains("into_make_service_with_connect_info::<SocketAddr>()"),
        "{body}"
    );
    // Exempt routes pass, and are not counted.
    let r = client
        .get(format!("{base}/hooks/stripe"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(limiter.stats().no_peer, 1);
    assert_eq!(limiter.stats().admitted, 0);

    // Served with the peer address, the same limiter limits per client.
    let server = common::serve(app(&limiter)).await;
    assert_eq!(server.statuses("/api/items", 3).await, [200, 200, 429]);
    assert_eq!(limiter.stats().no_peer, 1);
}

/// A per-route policy refuses a request without a peer under the option too (its layer may
/// be the only one the request meets); an exempt per-route policy passes it, uncounted.
#[tokio::test]
async fn with_the_option_a_per_route_policy_refuses_a_request_without_a_peer() {
    let limiter = builder().require_peer_address().build().unwrap();
    let app = Router::new()
        .route(
            "/api/chat",
            get(|| async { "chat" }).layer(limiter.policy(Policy::named("chat").per_ip("5/min"))),
        )
        .route(
            "/api/health",
            get(|| async { "ok" }).layer(limiter.policy(Policy::exempt())),
        );
    let base = serve_without_peer(app).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let status = |path: &'static str| {
        let request = client.get(format!("{base}{path}"));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("/api/chat").await, 500);
    assert_eq!(status("/api/health").await, 200);
    assert_eq!(limiter.stats().no_peer, 1);
    assert_eq!(limiter.stats().admitted, 0);
}

#[tokio::test]
async fn the_option_is_refused_on_reload() {
    let limiter = builder().build().unwrap();
    let err = limiter
        .reload(builder().require_peer_address())
        .unwrap_err();
    assert!(
        matches!(err, tollgate::BuildError::NotReloadable { setting } if setting == "require_peer_address"),
        "{err:?}"
    );
}
