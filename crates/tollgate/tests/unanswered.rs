//! Requests that get no response: a future dropped before its response (a client that
//! went away, a timeout further out) or an inner service that failed. What a policy that
//! counts only some responses reserved comes back; every other charge stays.

mod common;

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use common::{request, Body};
use http::{Response, StatusCode};
use tollgate::{Limiter, ManualClock, MemoryStore, Policy, Store};
use tollgate_limits::{Batch, BoxFuture, Decision, StoreError};
use tower::{service_fn, ServiceBuilder, ServiceExt};

const PEER: Option<&str> = Some("192.0.2.1:5000");

/// A memory store that answers only through its future, after yielding once: requests go
/// the asynchronous way (as on Redis), and a future dropped at its first poll is dropped
/// while the store is deciding.
#[derive(Clone, Debug)]
struct Later(MemoryStore);

impl Store for Later {
    fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(async move {
            tokio::task::yield_now().await;
            self.0.apply(batch).await
        })
    }
}

fn memory() -> MemoryStore {
    let clock = ManualClock::new(Duration::from_secs(1_717_200_000));
    MemoryStore::builder().clock(clock).build()
}

fn limiter(store: impl Store, policy: Policy) -> Limiter {
    Limiter::builder()
        .store(store)
        .route("/*", policy)
        .build()
        .unwrap()
}

/// Limiters of `policy` on each way a store answers: at once (the memory store: the service
/// calls the inner service itself), through its future (dropped while the handler runs),
/// and yielding first (the response future decides, then calls the inner service).
fn on_every_store(policy: impl Fn() -> Policy) -> [Limiter; 3] {
    [
        limiter(memory(), policy()),
        limiter(common::Recording::new(memory()), policy()),
        limiter(Later(memory()), policy()),
    ]
}

fn sign_in() -> Policy {
    Policy::named("sign-in")
        .per_ip("2/min")
        .count_only_if(|s| s == StatusCode::UNAUTHORIZED)
}

/// `/hang` never answers, `/fail` fails, `/wrong` is a 401, `/teapot` a 418, anything else
/// a 200.
async fn handler(req: http::Request<Body>) -> Result<Response<Body>, std::io::Error> {
    match req.uri().path() {
        "/hang" => std::future::pending().await,
        "/fail" => Err(std::io::Error::other("the backend failed")),
        path => {
            let mut response = Response::new(Body::default());
            match path {
                "/wrong" => *response.status_mut() = StatusCode::UNAUTHORIZED,
                "/teapot" => *response.status_mut() = StatusCode::IM_A_TEAPOT,
                _ => {}
            }
            Ok(response)
        }
    }
}

/// Counts, from now on, the panics (of any thread) whose message says `text`.
fn panics_saying(text: &'static str) -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.to_string().contains(text) {
            counted.fetch_add(1, Ordering::SeqCst);
        }
        previous(info);
    }));
    count
}

/// Polls `call` (up to three times) until it panics, then drops it, and lets what it
/// left to the background finish.
async fn panic_in<F: Future>(call: F) {
    let mut call = Box::pin(call);
    let mut cx = Context::from_waker(Waker::noop());
    let panicked = (0..3).any(|_| {
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            call.as_mut().poll(&mut cx).is_ready()
        }));
        assert!(!matches!(polled, Ok(true)), "answered");
        polled.is_err()
    });
    assert!(panicked, "it did not panic");
    drop(call);
    let_background_work_finish().await;
}

/// Polls `f` once, then drops it (what hyper does to a request whose client went away).
fn poll_once_and_drop<F: Future>(f: F) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    pin!(f).poll(&mut cx).is_ready()
}

/// Lets the tasks a dropped request left behind run to their end.
async fn let_background_work_finish() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

async fn statuses(limiter: &Limiter, path: &str, n: usize) -> Vec<u16> {
    let svc = ServiceBuilder::new()
        .layer(limiter.layer())
        .service(service_fn(handler));
    let mut all = Vec::new();
    for _ in 0..n {
        let r = svc
            .clone()
            .oneshot(request(path, PEER, None))
            .await
            .unwrap();
        all.push(r.status().as_u16());
    }
    all
}

async fn drop_requests(limiter: &Limiter, path: &str, n: usize) {
    let svc = ServiceBuilder::new()
        .layer(limiter.layer())
        .service(service_fn(handler));
    for _ in 0..n {
        let answered = poll_once_and_drop(svc.clone().oneshot(request(path, PEER, None)));
        assert!(!answered, "{path} must still be waiting when dropped");
        // A store that answers through its future gives back in the background, as it
        // gives back a response's charge.
        let_background_work_finish().await;
    }
}

#[tokio::test]
async fn a_dropped_request_gives_back_what_a_count_only_if_policy_reserved() {
    // (The store that yields first is dropped while it decides.)
    for limiter in on_every_store(sign_in) {
        drop_requests(&limiter, "/hang", 5).await;
        // No response came, so none counted: the whole budget of 2 failures is there.
        assert_eq!(statuses(&limiter, "/wrong", 3).await, vec![401, 401, 429]);
    }
}

#[tokio::test]
async fn a_failed_inner_service_gives_back_what_a_count_only_if_policy_reserved() {
    for limiter in [
        limiter(memory(), sign_in()),
        limiter(common::Recording::new(memory()), sign_in()),
    ] {
        let svc = ServiceBuilder::new()
            .layer(limiter.layer())
            .service(service_fn(handler));
        for _ in 0..5 {
            let failed = svc.clone().oneshot(request("/fail", PEER, None)).await;
            assert_eq!(failed.unwrap_err().to_string(), "the backend failed");
            let_background_work_finish().await;
        }
        assert_eq!(statuses(&limiter, "/wrong", 3).await, vec![401, 401, 429]);
    }
}

#[tokio::test]
async fn a_dropped_request_keeps_a_charge_that_counts() {
    // A plain limit counts every request, answered or not; a policy that gives back the
    // charge of some responses (`refund_if`) keeps it when there is no response.
    for policy in [
        Policy::named("plain").per_ip("2/min"),
        Policy::named("refunds-304")
            .per_ip("2/min")
            .refund_if(|s| s == StatusCode::NOT_MODIFIED),
    ] {
        for limiter in [
            limiter(memory(), policy.clone()),
            limiter(Later(memory()), policy.clone()),
        ] {
            drop_requests(&limiter, "/hang", 2).await;
            assert_eq!(statuses(&limiter, "/ok", 1).await, vec![429]);
        }
    }
}

#[tokio::test]
async fn an_inner_service_error_counts_as_the_500_it_ends_as() {
    let server_errors = || {
        Policy::named("server-errors")
            .per_ip("2/min")
            .count_only_if(|s| s.is_server_error())
    };
    for limiter in [
        limiter(memory(), server_errors()),
        limiter(common::Recording::new(memory()), server_errors()),
    ] {
        let svc = ServiceBuilder::new()
            .layer(limiter.layer())
            .service(service_fn(handler));
        for _ in 0..2 {
            let failed = svc.clone().oneshot(request("/fail", PEER, None)).await;
            assert!(failed.is_err());
            let_background_work_finish().await;
        }
        // Two server errors counted: the budget is spent.
        assert_eq!(statuses(&limiter, "/ok", 1).await, vec![429]);
    }
}

/// An inner service whose `call` panics.
#[derive(Clone)]
struct Panics;

impl tower::Service<http::Request<Body>> for Panics {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Response<Body>, std::convert::Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<Body>) -> Self::Future {
        panic!("the inner service panics in call");
    }
}

#[tokio::test]
async fn a_panic_in_the_inner_services_call_leaves_nothing_to_finish() {
    // A decided request's future, dropped by the panic's unwinding, started its finished
    // decision again in the background: a second panic ("resumed after completion").
    let resumed = panics_saying("resumed after completion");
    let limiter = limiter(Later(memory()), sign_in());
    let svc = ServiceBuilder::new().layer(limiter.layer()).service(Panics);
    let call = svc.oneshot(request("/ok", PEER, None));
    let mut call = Box::pin(call);
    let mut cx = Context::from_waker(Waker::noop());
    // The store yields once, then the inner service is called (and panics).
    assert!(call.as_mut().poll(&mut cx).is_pending());
    let panicked =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call.as_mut().poll(&mut cx)));
    assert!(panicked.is_err());
    drop(call);
    let_background_work_finish().await;
    assert_eq!(resumed.load(Ordering::SeqCst), 0);
}

/// A store whose future panics when polled.
#[derive(Clone, Copy, Debug)]
struct PanicsDeciding;

impl Store for PanicsDeciding {
    fn apply<'a>(&'a self, _: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(async { panic!("a store whose future panics") })
    }
}

/// A request whose store call panicked is not finished in the background when its future
/// is dropped: that only panicked again ("`async fn` resumed after panicking", in a task
/// of its own, a second panic blaming the limiter; a review).
#[tokio::test]
async fn a_store_call_that_panicked_is_not_run_again() {
    let resumed = panics_saying("resumed after panicking");
    let limiter = limiter(PanicsDeciding, sign_in());
    let svc = ServiceBuilder::new()
        .layer(limiter.layer())
        .service(service_fn(handler));
    panic_in(svc.oneshot(request("/ok", PEER, None))).await;
    assert_eq!(resumed.load(Ordering::SeqCst), 0);
}

/// An inner service whose `call` panics (a `map_request` in front of the handler, a
/// `service_fn` that panics before its future) gives no response through the layer: what
/// a policy that counts only some responses reserved comes back, as for a dropped future.
/// (A review: the reservation stayed, a failure counted, on every store.)
#[tokio::test]
async fn a_panic_in_the_inner_services_call_gives_back_what_a_count_only_if_policy_reserved() {
    for limiter in on_every_store(sign_in) {
        for _ in 0..5 {
            let svc = ServiceBuilder::new().layer(limiter.layer()).service(Panics);
            panic_in(svc.oneshot(request("/ok", PEER, None))).await;
        }
        assert_eq!(statuses(&limiter, "/wrong", 3).await, vec![401, 401, 429]);
    }
}

/// A policy's function judging a response's status that panics (a `count_only_if` given a
/// status it did not expect) leaves the response unsent: what the policy reserved comes
/// back, as for any request without a response. (A review: it stayed reserved for the
/// rest of the window, on every store.)
#[tokio::test]
async fn a_panic_judging_a_status_gives_back_what_a_count_only_if_policy_reserved() {
    let judged = || {
        Policy::named("sign-in").per_ip("2/min").count_only_if(|s| {
            assert_ne!(s, StatusCode::IM_A_TEAPOT, "a status function that panics");
            s == StatusCode::UNAUTHORIZED
        })
    };
    for limiter in on_every_store(judged) {
        let svc = ServiceBuilder::new()
            .layer(limiter.layer())
            .service(service_fn(handler));
        for _ in 0..3 {
            panic_in(svc.clone().oneshot(request("/teapot", PEER, None))).await;
        }
        assert_eq!(statuses(&limiter, "/wrong", 3).await, vec![401, 401, 429]);
    }
}

/// A per-route policy whose own code panics (its key function) on a request the central
/// layer charged provisionally to its class and the per-route layer took over: the
/// central charge comes back, as for every request the per-route layer takes. (A review:
/// on a store answering through its future, four such panics spent a central class of 2
/// a minute, which the route's requests never count in, and it then refused them all.)
#[tokio::test]
async fn a_per_route_policy_that_panics_gives_the_central_charge_back() {
    for limiter in on_every_store(|| Policy::named("central").per_ip("2/min")) {
        let route = limiter.policy(Policy::named("route").per_key(
            "k",
            |parts| {
                let boom = parts.headers.contains_key("x-api-key");
                assert!(!boom, "a key function that panics");
                Some("k".into())
            },
            "100/min",
        ));
        let svc = ServiceBuilder::new()
            .layer(limiter.layer())
            .layer(route)
            .service(service_fn(handler));
        for _ in 0..4 {
            panic_in(svc.clone().oneshot(request("/ok", PEER, Some("boom")))).await;
        }
        let mut all = Vec::new();
        for _ in 0..3 {
            let r = svc.clone().oneshot(request("/ok", PEER, None)).await;
            all.push(r.unwrap().status().as_u16());
        }
        assert_eq!(all, [200, 200, 200]);
    }
}

/// A guard's request dropped while it waits for a place at its key's gate (a key's
/// requests run no more at once than it has failures left) is dropped whole: a look
/// changes nothing, and its place frees itself. It was run on in the background, waiting
/// and then looking for a client gone (a review: 20,000 such requests kept 20,000 tasks
/// alive, 157 MB and 1.4 cores on Redis), and a look refused then was counted as a refusal
/// no client got.
#[tokio::test]
async fn a_guard_s_request_dropped_while_it_waits_for_a_place_is_dropped_whole() {
    let alive = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let memory_now = Limiter::builder().store(memory()).build().unwrap();
    let through_future = Limiter::builder().store(Later(memory())).build().unwrap();
    for limiter in [memory_now, through_future] {
        let release = std::sync::Arc::new(tokio::sync::Notify::new());
        let held = release.clone();
        let failing = service_fn(move |req: http::Request<Body>| {
            let held = held.clone();
            async move {
                if req.uri().path() == "/slow" {
                    held.notified().await;
                }
                let mut response = Response::new(Body::default());
                *response.status_mut() = StatusCode::UNAUTHORIZED;
                Ok::<_, std::io::Error>(response)
            }
        });
        let svc = ServiceBuilder::new()
            .layer(limiter.guard(Policy::failed_auth_per_ip("2/min")))
            .service(failing);
        // Two slow failures hold the key's two places.
        let slow: Vec<_> = (0..2)
            .map(|_| tokio::spawn(svc.clone().oneshot(request("/slow", PEER, None))))
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let tasks = alive();
        // A hundred more wait for a place, and are dropped.
        for _ in 0..100 {
            let one = svc.clone().oneshot(request("/fast", PEER, None));
            let waited = tokio::time::timeout(Duration::from_millis(1), one).await;
            assert!(waited.is_err(), "a request ran while the places were held");
        }
        let_background_work_finish().await;
        assert_eq!(alive(), tasks, "tasks left running by dropped requests");
        release.notify_waiters();
        for slow in slow {
            let response = slow.await.unwrap().unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        }
        // (Waiting requests look again at least every 200 ms.)
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(limiter.stats().refused, 0, "refusals no client got");
        // The two failures counted: the key's next request is refused.
        let next = svc.clone().oneshot(request("/fast", PEER, None)).await;
        assert_eq!(next.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limiter.stats().refused, 1);
    }
}

/// A probe (a request of a route left to a per-route layer that has not seen one yet: here
/// the layer is on another route) whose class's status function panics on its answer
/// counts as a request without one: a global limit keeps its charge. (A review: it was
/// counted nowhere, the probe's bookkeeping done before the panic and nothing left to the
/// drop.)
#[tokio::test]
async fn a_probe_whose_class_panics_judging_its_status_is_counted_as_unanswered() {
    use axum::extract::ConnectInfo;
    use axum::routing::get;
    let class = || {
        Policy::named("class").per_ip("50/min").count_only_if(|s| {
            assert_ne!(s, StatusCode::IM_A_TEAPOT, "a status function that panics");
            s.is_client_error()
        })
    };
    let stores: [Box<dyn Store>; 2] = [
        Box::new(memory()),
        Box::new(common::Recording::new(memory())),
    ];
    for store in stores {
        let limiter = Limiter::builder()
            .store(store)
            .read_env(false)
            .route("/*", class())
            .global_policy(Policy::named("global").per_ip("3/min"))
            .build()
            .unwrap();
        let elsewhere = limiter.policy_at("GET /teapot", Policy::named("route").per_ip("9/min"));
        let app = axum::Router::new()
            .route("/teapot", get(|| async { StatusCode::IM_A_TEAPOT }))
            .route("/ok", get(|| async { "ok" }))
            .route("/other", get(|| async { "other" }).layer(elsewhere))
            .layer(limiter.layer());
        let get = |path: &str| {
            let mut req = http::Request::get(path)
                .body(axum::body::Body::empty())
                .unwrap();
            let peer: std::net::SocketAddr = "192.0.2.1:5000".parse().unwrap();
            req.extensions_mut().insert(ConnectInfo(peer));
            req
        };
        panic_in(app.clone().oneshot(get("/teapot"))).await;
        let mut all = Vec::new();
        for _ in 0..3 {
            let r = app.clone().oneshot(get("/ok")).await.unwrap();
            all.push(r.status().as_u16());
        }
        assert_eq!(all, [200, 200, 429], "the probe spent 1 of the global 3");
    }
}
