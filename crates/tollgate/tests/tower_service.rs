//! The layer on a plain tower service (no axum router), and what it logs.

mod common;

use std::convert::Infallible;

use std::time::Duration;

use common::{echo, request, Body, Down, Recording};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use tollgate::{FailureMode, Limiter, ManualClock, MemoryStore, Policy, ResponseBody, Store};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

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

/// The limiter's own answers (a 429; a 503 when the store is down) drop the request's body
/// unread. Over HTTP/1 a request that announced a body is answered `Connection: close`: the
/// connection cannot carry another request before that body, so the server closes it, and a
/// client told nothing would send its next request on it. A request without a body, or over
/// HTTP/2, keeps its connection. Alike whether the store decides at once (memory) or in a
/// future (any other).
#[tokio::test]
async fn an_answer_leaving_a_body_unread_closes_an_http1_connection() {
    let memory = || MemoryStore::builder().build();
    let (refused, down) = (
        StatusCode::TOO_MANY_REQUESTS,
        StatusCode::SERVICE_UNAVAILABLE,
    );
    answers_leaving_bodies_unread(memory(), "memory", StatusCode::OK, refused).await;
    answers_leaving_bodies_unread(
        Recording::new(memory()),
        "in a future",
        StatusCode::OK,
        refused,
    )
    .await;
    answers_leaving_bodies_unread(Down, "down", down, down).await;
}

/// After a first request (answered `first`), requests of several versions, methods and body
/// headers through a limiter of one request an hour on `store` (failing closed), each answered `answered`,
/// with `Connection: close` where the request announced a body over HTTP/1.
async fn answers_leaving_bodies_unread(
    store: impl Store,
    name: &str,
    first: StatusCode,
    answered: StatusCode,
) {
    let peer = Some("192.0.2.1:5000");
    let limiter = Limiter::builder()
        .store(store)
        .route(
            "/*",
            Policy::named("default")
                .per_ip("1/h")
                .on_store_failure(FailureMode::Closed),
        )
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(limiter.layer())
        .service(service_fn(echo));
    let r = svc
        .clone()
        .oneshot(request("/x", peer, None))
        .await
        .unwrap();
    assert_eq!(r.status(), first, "{name}");
    for (version, method, header, close) in [
        (
            Version::HTTP_11,
            Method::POST,
            Some(("content-length", "5")),
            "close",
        ),
        (
            Version::HTTP_11,
            Method::POST,
            Some(("transfer-encoding", "chunked")),
            "close",
        ),
        (
            Version::HTTP_10,
            Method::PUT,
            Some(("content-length", "5")),
            "close",
        ),
        (
            Version::HTTP_11,
            Method::POST,
            Some(("content-length", "0")),
            "",
        ),
        (Version::HTTP_11, Method::GET, None, ""),
        (
            Version::HTTP_2,
            Method::POST,
            Some(("content-length", "5")),
            "",
        ),
    ] {
        let mut req = request("/x", peer, None);
        *req.version_mut() = version;
        *req.method_mut() = method.clone();
        if let Some((header, value)) = header {
            req.headers_mut().insert(header, value.parse().unwrap());
        }
        let r = svc.clone().oneshot(req).await.unwrap();
        let connection = r
            .headers()
            .get("connection")
            .map_or("", |v| v.to_str().unwrap());
        assert_eq!(
            (r.status(), connection),
            (answered, close),
            "{name}: {version:?} {method} {header:?}"
        );
    }
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

/// A request refused at once does not keep what the inner service reserved for it in
/// `poll_ready`: behind a concurrency limit of one, a refused instance left idle does not
/// hold the permit its clones wait for (a review: it held it until its next call).
#[tokio::test]
async fn a_refusal_gives_up_what_the_inner_service_reserved_for_it() {
    let limiter = limiter();
    let svc = ServiceBuilder::new()
        .layer(limiter.layer())
        .concurrency_limit(1)
        .service(service_fn(echo));
    let peer = Some("192.0.2.1:5000");
    let mut one = svc.clone();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let ready = one.ready().await.unwrap();
        let r = ready.call(request("/x", peer, None)).await.unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    // `one` stays, idle: its refusal's permit is free for another instance.
    let mut other = svc.clone();
    let ready = tokio::time::timeout(Duration::from_secs(5), other.ready()).await;
    assert!(ready.is_ok(), "the refused instance still holds the permit");
    drop(one);
}

/// The layer around a whole `Router` (a `ServiceBuilder`, not `Router::layer`), served by
/// `axum::serve` with the peer address: its body mapped back to axum's `Body`, as the docs
/// of `Limiter::layer` say, the routes and the router's 404s are limited, with headers.
#[tokio::test]
async fn around_a_router_served_by_axum_with_its_body_mapped_back() {
    let limiter = Limiter::builder()
        .read_env(false)
        .route("/*", Policy::named("default").per_ip("3/min"))
        .build()
        .unwrap();
    let router = axum::Router::new().route("/x", axum::routing::get(|| async { "x" }));
    let svc = ServiceBuilder::new()
        .map_response(|r: Response<ResponseBody<axum::body::Body>>| r.map(axum::body::Body::new))
        .layer(limiter.layer())
        .service(router);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<
                std::net::SocketAddr,
            >(svc),
        )
        .await
        .unwrap()
    });
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut seen = Vec::new();
    for path in ["/x", "/nope", "/x", "/x"] {
        let r = client
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap();
        let remaining = r.headers()["x-ratelimit-remaining"]
            .to_str()
            .unwrap()
            .to_owned();
        seen.push((r.status().as_u16(), remaining));
    }
    let expected = [(200, "2"), (404, "1"), (200, "0"), (429, "0")];
    assert_eq!(seen, expected.map(|(s, r)| (s, r.to_owned())));
}
