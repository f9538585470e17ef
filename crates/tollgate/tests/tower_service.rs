//! The layer on a plain tower service (no axum router), and what it logs.

mod common;

use std::convert::Infallible;

use std::time::Duration;

use common::{echo, request, Body};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tollgate::{Limiter, ManualClock, MemoryStore, Policy, ResponseBody};
use tower::{service_fn, ServiceBuilder, ServiceExt};

async fn body_text(r: Response<ResponseBody<Body>>) -> (StatusCode, String) {
    let status = r.status();
    let bytes = r.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

fn limiter() -> Limiter {
    let clock = ManualClock::new(Duration::from_secs(1_717_200_000));
    Limiter::builder()
        .store(MemoryStore::builder().clock(clock).build())
        .route("/*", Policy::named("default").per_ip("3/min"))
        .build()
        .unwrap()
}

#[tokio::test]
async fn any_tower_service_with_one_body_type() {
    let limiter = limiter();
    let svc = ServiceBuilder::new()
        .layer(limiter.layer())
        .service(service_fn(echo));
    let peer = Some("192.0.2.1:5000");
    for _ in 0..3 {
        let r = svc
            .clone()
            .oneshot(request("/x", peer, None))
            .await
            .unwrap();
        assert_eq!(body_text(r).await, (StatusCode::OK, "hello".into()));
    }
    let (status, body) = body_text(
        svc.clone()
            .oneshot(request("/x", peer, None))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        body.starts_with(r#"{"error":"Too Many Requests""#),
        "{body}"
    );
    // Clones share one limit; another peer has its own.
    let other = svc
        .clone()
        .oneshot(request("/x", Some("192.0.2.2:1"), None))
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_per_route_policy_without_axum_replaces_the_class_on_every_request() {
    let limiter = limiter();
    // Without MatchedPath the central layer cannot learn the route: it charges
    // provisionally each time and the per-route layer gives the charge back.
    let route = ServiceBuilder::new()
        .layer(limiter.layer())
        .layer(limiter.policy(Policy::named("special").per_ip("5/min")))
        .service(service_fn(echo));
    let plain = ServiceBuilder::new()
        .layer(limiter.layer())
        .service(service_fn(echo));
    let peer = Some("192.0.2.1:5000");
    for _ in 0..5 {
        let r = route
            .clone()
            .oneshot(request("/special", peer, None))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = route
        .clone()
        .oneshot(request("/special", peer, None))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // The central class still has its 3.
    for _ in 0..3 {
        let r = plain
            .clone()
            .oneshot(request("/x", peer, None))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = plain
        .clone()
        .oneshot(request("/x", peer, None))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[test]
fn layer_and_service_are_clone_debug_send_sync() {
    fn check<T: Clone + std::fmt::Debug + Send + Sync + 'static>() {}
    check::<Limiter>();
    check::<tollgate::RateLimitLayer>();
    check::<
        tollgate::RateLimit<
            tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>,
        >,
    >();
    check::<Policy>();
    check::<tollgate::Key>();
    check::<tollgate::Rate>();
}

/// A layer's and a service's `Debug` say which layer it is: the central table, or the
/// per-route policy by name.
#[test]
fn debug_names_the_central_layer_or_the_per_route_policy() {
    let limiter = limiter();
    let central = format!("{:?}", limiter.layer());
    assert!(central.contains("scope: Central"), "{central}");
    let chat = limiter.policy(Policy::named("chat").per_ip("5/min"));
    let layer = format!("{chat:?}");
    assert!(layer.contains("scope: Route(chat)"), "{layer}");
    let service = format!("{:?}", tower::Layer::layer(&chat, service_fn(echo)));
    assert!(service.contains("scope: Route(chat)"), "{service}");
}
