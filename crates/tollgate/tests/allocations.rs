//! Heap allocations of one request through the layer on the memory store, counted by a
//! global allocator (this test binary only). The counts are asserted exactly, so a change
//! that adds an allocation to the request path fails here; lower them when a change
//! removes one. A warmed-up limiter (keys already stored, per-thread caches filled) is
//! measured: the steady state of a server.
//!
//! What allocates today, per admitted request: the `RateLimit` header value (it varies
//! with every request), the response's header map growing to hold the five rate-limit
//! headers (two: its index and its entries), the decision in the request's extensions
//! (`RateLimitDecision`: extensions box what they hold; the request already carries
//! extensions, as every axum request does), and, with a per-user limit, the `String` the
//! identity function returns. A refusal adds its own header map (made with room for the
//! rate-limit headers, so it does not grow: two allocations); its body, of a ready shape,
//! is made once per thread while its inputs stay the same (a client far over its limit
//! gets the same body until the wait it is told changes), from the most restrictive
//! bucket's state without building the outcome a refusal hook or a custom body is given.
//!
//! Without the decision in the request (`decision_in_request(false)`) an admitted request
//! costs the same: it carries a mark of the limiter instead (so that a layer of the same
//! limiter further in does not charge it again), boxed as the decision is. With it in the response too (`decision_in_response(true)`, off by
//! default) a response whose extensions are empty costs three more: the map, its table
//! and the value. With the `metrics` feature, incrementing the counters allocates nothing
//! (they are registered when the limiter is built).

use std::alloc::System;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tollgate::{Limiter, MemoryStore, Policy};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Realistic limits (numbers below 10,000 are written from a static table; larger
/// `X-RateLimit-Remaining` values cost one allocation each; `X-RateLimit-Limit` is made
/// once per limit, at build).
const NEVER: &str = "5000/min";

fn limiter(policy: Policy, global: bool) -> Limiter {
    limiter_with(policy, global, |b| b)
}

fn limiter_with(
    policy: Policy,
    global: bool,
    configure: impl FnOnce(tollgate::LimiterBuilder) -> tollgate::LimiterBuilder,
) -> Limiter {
    let mut builder = Limiter::builder()
        .store(MemoryStore::builder().max_entries(10_000).build())
        .read_env(false)
        .identity(|p| {
            p.headers
                .get("x-user")
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        })
        .route("/api/*", policy);
    if global {
        builder = builder.global(NEVER);
    }
    configure(builder).build().unwrap()
}

fn request() -> Request<Full<Bytes>> {
    let mut req = Request::get("/api/items/42")
        .header("x-user", "u_42")
        .body(Full::new(Bytes::new()))
        .unwrap();
    req.extensions_mut()
        .insert(SocketAddr::from(([203, 0, 113, 7], 4000)));
    req
}

/// Polls a future that is ready without waiting.
fn now<F: std::future::Future>(f: F) -> F::Output {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// Allocations made by the layer for one request: through `limiter`'s layer, minus the
/// same request straight to the handler (building the request and the handler's response
/// are not the layer's).
fn allocations(limiter: &Limiter, expect: StatusCode) -> usize {
    let handler = service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let mut layered = ServiceBuilder::new()
        .layer(limiter.layer())
        .service(handler);
    let mut bare = handler;
    let count = |f: &mut dyn FnMut() -> StatusCode| {
        // Warm up: keys stored, caches filled.
        for _ in 0..3 {
            f();
        }
        let region = Region::new(GLOBAL);
        let status = f();
        let stats = region.change();
        (status, stats.allocations + stats.reallocations)
    };
    let (status, with_layer) = count(&mut || {
        let req = request();
        let response = now(async { layered.ready().await.unwrap().call(req).await.unwrap() });
        response.status()
    });
    assert_eq!(status, expect);
    let (_, without) = count(&mut || {
        let req = request();
        let response = now(async { bare.ready().await.unwrap().call(req).await.unwrap() });
        response.status()
    });
    with_layer - without
}

#[test]
fn allocations_per_request_are_counted() {
    // One test, so the counts of one case are not mixed with another's on other threads.
    let one = limiter(Policy::named("default").per_ip(NEVER), false);
    let three = limiter(Policy::named("default").per_ip(NEVER).per_user(NEVER), true);
    let refusing = limiter(Policy::named("default").per_ip("1/h"), false);
    let refusing_three = limiter(Policy::named("default").per_ip("1/h").per_user(NEVER), true);
    let without_decision = limiter_with(Policy::named("default").per_ip(NEVER), false, |b| {
        b.decision_in_request(false)
    });
    let decision_in_response = limiter_with(Policy::named("default").per_ip(NEVER), false, |b| {
        b.decision_in_response(true)
    });
    let refusing_decision_in_response =
        limiter_with(Policy::named("default").per_ip("1/h"), false, |b| {
            b.decision_in_response(true)
        });
    let counts = [
        (
            "one per-IP limit, admitted",
            allocations(&one, StatusCode::OK),
        ),
        (
            "IP + user + global, admitted",
            allocations(&three, StatusCode::OK),
        ),
        (
            "one per-IP limit, refused",
            allocations(&refusing, StatusCode::TOO_MANY_REQUESTS),
        ),
        (
            "IP + user + global, refused",
            allocations(&refusing_three, StatusCode::TOO_MANY_REQUESTS),
        ),
        (
            "one per-IP limit, admitted, no decision in the request",
            allocations(&without_decision, StatusCode::OK),
        ),
        (
            "one per-IP limit, admitted, decision in the response too",
            allocations(&decision_in_response, StatusCode::OK),
        ),
        (
            "one per-IP limit, refused, decision in the response",
            allocations(
                &refusing_decision_in_response,
                StatusCode::TOO_MANY_REQUESTS,
            ),
        ),
    ];
    println!("{counts:#?}");
    assert_eq!(
        counts.map(|(_, n)| n),
        [
            EXPECTED_ONE,
            EXPECTED_THREE,
            EXPECTED_REFUSED,
            EXPECTED_REFUSED_THREE,
            EXPECTED_ONE,
            EXPECTED_ONE + 3,
            EXPECTED_REFUSED + 3,
        ],
        "{counts:#?}"
    );
}

const EXPECTED_ONE: usize = 4;
const EXPECTED_THREE: usize = 5;
const EXPECTED_REFUSED: usize = 3;
const EXPECTED_REFUSED_THREE: usize = 4;
