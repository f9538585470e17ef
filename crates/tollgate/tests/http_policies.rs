//! Policies end to end: real axum servers on loopback, a real HTTP client, a manual clock.

mod common;

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use common::{
    clock_and_store, header, serve, showing, status_of, times, user_header, Down, Recording,
};
use tollgate::{
    BuildError, ErrorBody, FailureMode, HeaderStyle, Key, Limit, Limiter, Policy, Quota, Rate,
    ResetFormat,
};

async fn ok() -> &'static str {
    "ok"
}

/// A handler that answers after 300 ms.
async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_millis(300)).await;
    "ok"
}

/// A handler answering `ok` after `ms` milliseconds.
fn answers_after(ms: u64) -> impl axum::handler::Handler<((),), ()> {
    move || async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        "ok"
    }
}

fn x_style() -> HeaderStyle {
    HeaderStyle::x_ratelimit(ResetFormat::Seconds)
}

/// `routes` behind a check that answers `401` to a request without `header`, in front of
/// each route's own layers (an authentication check).
fn behind_check(routes: Router, header: &'static str) -> Router {
    routes.route_layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| async move {
            if request.headers().contains_key(header) {
                next.run(request).await
            } else {
                StatusCode::UNAUTHORIZED.into_response()
            }
        },
    ))
}

/// A limiter on a stopped clock whose one class, `/*` (`default`), allows `rate` per IP,
/// under a global limit of `global`.
fn everywhere(rate: &str, global: &str) -> Limiter {
    let (_clock, store) = clock_and_store();
    Limiter::builder()
        .store(store)
        .route("/*", Policy::named("default").per_ip(rate))
        .global(global)
        .build()
        .unwrap()
}

/// `routes` served behind `limiter`'s central layer, on the router or wrapped around it
/// (`wrapped_outside`: no `MatchedPath` there), and the case's name for messages.
async fn serve_central(
    limiter: &Limiter,
    routes: Router,
    wrapped_outside: bool,
) -> (common::Server, String) {
    let app = if wrapped_outside {
        Router::new().fallback_service(tower::Layer::layer(&limiter.layer(), routes))
    } else {
        routes.layer(limiter.layer())
    };
    let case = format!("wrapped outside the router: {wrapped_outside}");
    (serve(app).await, case)
}

/// A limiter on a stopped clock whose one class, `/api/*` (`default`), allows `rate` per IP.
fn api_class(rate: &str) -> Limiter {
    let (_clock, store) = clock_and_store();
    Limiter::builder()
        .store(store)
        .route("/api/*", Policy::named("default").per_ip(rate))
        .build()
        .unwrap()
}

#[tokio::test]
async fn most_specific_rule_wins() {
    let (_clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .header_style(x_style())
        .route("/api/*", Policy::named("default").per_ip("6/min"))
        .route("/api/twilio/*", Policy::named("twilio").per_ip("5/min"))
        .route(
            "/api/templates/{id}",
            Policy::named("template").per_ip("4/min"),
        )
        .route(
            "POST /api/templates/{id}/generate",
            Policy::named("generate").per_ip("3/min"),
        )
        .route(
            "/api/templates/special",
            Policy::named("special").per_ip("2/min"),
        )
        .build()
        .unwrap();
    let app = Router::new()
        .route("/api/items", get(ok))
        .route("/api/twilio/calls/{id}", get(ok))
        .route("/api/templates/{id}", get(ok))
        .route("/api/templates/{id}/generate", get(ok).post(ok))
        .layer(limiter.layer());
    let server = serve(app).await;

    let limit_of = |path: &'static str, post: bool| {
        let server = &server;
        async move {
            let request = if post {
                server.post(path)
            } else {
                server.get(path)
            };
            header(&request.send().await.unwrap(), "x-ratelimit-limit")
        }
    };
    assert_eq!(limit_of("/api/items", false).await, "6");
    assert_eq!(limit_of("/api/twilio/calls/7", false).await, "5");
    assert_eq!(limit_of("/api/templates/7", false).await, "4");
    assert_eq!(limit_of("/api/templates/special", false).await, "2"); // exact beats {id}
    assert_eq!(limit_of("/api/templates/7/generate", true).await, "3");
    // GET is not covered by the POST rule: the longest other match is the /api/* default.
    assert_eq!(limit_of("/api/templates/7/generate", false).await, "6");

    // Each class has its own budget: generate refuses its 4th POST, the others go on.
    let post_status = || async {
        server
            .post("/api/templates/8/generate")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(post_status().await, 200);
    assert_eq!(post_status().await, 200);
    assert_eq!(post_status().await, 429);
    assert_eq!(server.status("/api/templates/7").await, 200);
}

#[test]
fn rules_that_tie_are_build_errors_naming_both() {
    let err = Limiter::builder()
        .route("/api/{id}", Policy::named("a").per_ip("1/min"))
        .route("/api/:other", Policy::named("b").per_ip("1/min"))
        .build()
        .unwrap_err();
    assert!(matches!(err, BuildError::Route(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("/api/{id}") && text.contains("/api/:other"),
        "{text}"
    );
}

#[tokio::test]
async fn exempt_routes_are_never_limited_nor_given_headers() {
    let (_clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .route("/api/stripe/webhook", Policy::exempt())
        .route("/api/cron/*", Policy::exempt())
        .route("/api/*", Policy::named("default").per_ip("2/min"))
        .global("3/min")
        .build()
        .unwrap();
    let app = Router::new()
        .route("/api/stripe/webhook", post(ok))
        .route("/api/cron/{job}", get(ok))
        .route("/api/items", get(ok))
        .layer(limiter.layer());
    let server = serve(app).await;

    for _ in 0..20 {
        let r = server.post("/api/stripe/webhook").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("x-ratelimit-limit").is_none());
        assert!(r.headers().get("ratelimit").is_none());
    }
    assert_eq!(
        server.statuses("/api/cron/nightly", 20).await,
        times(200, 20)
    );
    // The exempt traffic spent nothing, global included.
    assert_eq!(server.statuses("/api/items", 3).await, vec![200, 200, 429]);
}

#[tokio::test]
async fn ip_and_user_buckets_stack() {
    let (_clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .header_style(x_style())
        .identity(user_header)
        .route(
            "/*",
            Policy::named("default").per_ip("5/min").per_user("3/min"),
        )
        .build()
        .unwrap();
    let app = Router::new()
        .route("/api/items", get(ok))
        .layer(limiter.layer());
    let server = serve(app).await;
    let as_user = |user: &'static str| {
        let server = &server;
        async move {
            let r = server
                .get("/api/items")
                .header("x-user", user)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), header(&r, "x-ratelimit-limit"))
        }
    };
    // alice is limited by the smaller (per-user) bucket.
    assert_eq!(as_user("alice").await, (200, "3".into()));
    assert_eq!(as_user("alice").await, (200, "3".into()));
    assert_eq!(as_user("alice").await, (200, "3".into()));
    assert_eq!(as_user("alice").await, (429, "3".into()));
    // bob, same IP: his user bucket is fresh, but the IP has 2 left (alice's refusal
    // charged nothing).
    assert_eq!(as_user("bob").await, (200, "5".into()));
    assert_eq!(as_user("bob").await, (200, "5".into()));
    assert_eq!(as_user("bob").await, (429, "5".into()));
    // Anonymous requests skip the per-user limit but not the IP's.
    assert_eq!(server.status("/api/items").await, 429);
}

#[tokio::test]
async fn a_named_bucket_is_shared_by_three_routes() {
    let (clock, store) = clock_and_store();
    let auth = |name: &str| Policy::named(name).bucket("auth").per_ip("20/15min");
    let limiter = Limiter::builder()
        .store(store)
        .header_style(HeaderStyle::ietf())
        .route("POST /api/auth/sign-in", auth("sign-in"))
        .route("POST /api/auth/forgot-password", auth("forgot-password"))
        .route("POST /api/auth/reset-password", auth("reset-password"))
        .route("/api/*", Policy::named("default").per_ip("500/min"))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/api/auth/sign-in", post(ok))
        .route("/api/auth/forgot-password", post(ok))
        .route("/api/auth/reset-password", post(ok))
        .route("/api/items", get(ok))
        .layer(limiter.layer());
    let server = serve(app).await;
    let paths = [
        "/api/auth/sign-in",
        "/api/auth/forgot-password",
        "/api/auth/reset-password",
    ];
    let mut statuses = Vec::new();
    for i in 0..21 {
        let r = server.post(paths[i % 3]).send().await.unwrap();
        if i == 0 {
            assert_eq!(header(&r, "ratelimit"), r#""auth-ip";r=19;t=900"#);
            assert_eq!(header(&r, "ratelimit-policy"), r#""auth-ip";q=20;w=900"#);
        }
        statuses.push(r.status().as_u16());
    }
    let mut expected = times(200, 20);
    expected.push(429);
    assert_eq!(statuses, expected);
    // Other classes are not touched.
    assert_eq!(server.status("/api/items").await, 200);
    // 15 minutes and a segment later the bucket is full again.
    clock.advance(Duration::from_secs(990));
    assert_eq!(server.post(paths[1]).send().await.unwrap().status(), 200);
}

#[test]
fn a_shared_bucket_with_different_limits_is_a_build_error() {
    let err = Limiter::builder()
        .route("/a", Policy::named("a").bucket("auth").per_ip("20/15min"))
        .route("/b", Policy::named("b").bucket("auth").per_ip("30/15min"))
        .build()
        .unwrap_err();
    match err {
        BuildError::SharedBucketMismatch {
            bucket,
            first,
            second,
        } => assert_eq!((&*bucket, &*first, &*second), ("auth", "a", "b")),
        other => panic!("{other:?}"),
    }
    // One name twice (a policy named `global` beside the global limits): the message says
    // so, rather than "policies `global` and `global`".
    let err = Limiter::builder()
        .route("/a", Policy::named("global").per_ip("20/min"))
        .global("1000/min")
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, BuildError::SharedBucketMismatch { first, second, .. } if first == second),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("two policies named `global` share bucket"),
        "{err}"
    );
}

#[tokio::test]
async fn a_per_route_policy_replaces_the_central_class() {
    let (_clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .header_style(HeaderStyle::ietf())
        .identity(user_header)
        .route("/api/*", Policy::named("default").per_ip("3/min"))
        .global("100/min")
        .build()
        .unwrap();
    let chat = Policy::named("chat").per_ip("5/min").per_user("2/min");
    let app = Router::new()
        .route("/api/assistant/chat", post(ok).layer(limiter.policy(chat)))
        .route("/api/items", get(ok))
        .layer(limiter.layer());
    let server = serve(app).await;

    let chat = || async {
        let r = server.post("/api/assistant/chat").send().await.unwrap();
        (r.status().as_u16(), header(&r, "ratelimit"))
    };
    // The first request: charged provisionally by the central class, given back, then
    // charged to the route's own buckets. The global bucket is spent once.
    assert_eq!(
        chat().await,
        (200, r#""chat-ip";r=4;t=60, "global";r=99;t=60"#.into())
    );
    for left in [3, 2, 1, 0] {
        let expected = format!(r#""chat-ip";r={left};t=60, "global";r={};t=60"#, 95 + left);
        assert_eq!(chat().await, (200, expected));
    }
    assert_eq!(chat().await.0, 429);
    // The central class was never spent by the chat route.
    let r = server.get("/api/items").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "ratelimit"),
        r#""default-ip";r=2;t=60, "global";r=94;t=60"#
    );
    assert_eq!(server.statuses("/api/items", 3).await, vec![200, 200, 429]);

    // Per-user on the route: a signed-in user gets 2.
    let limiter_user =
        |user: &'static str| status_of(server.post("/api/assistant/chat").header("x-user", user));
    // The IP bucket of chat is spent: even a user is refused.
    assert_eq!(limiter_user("alice").await, 429);
}

#[tokio::test]
async fn a_per_route_policy_alone_and_inside_route_layer() {
    let (_clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .route("/*", Policy::named("default").per_ip("100/min"))
        .build()
        .unwrap();
    // No central layer at all.
    let app = Router::new().route(
        "/one",
        get(ok).layer(limiter.policy(Policy::named("one").per_ip("2/min"))),
    );
    let server = serve(app).await;
    assert_eq!(server.statuses("/one", 3).await, vec![200, 200, 429]);

    // Central layer as route_layer, and on a single route.
    let app = Router::new()
        .route("/two", get(ok))
        .route("/three", get(ok).layer(limiter.layer()))
        .route_layer(limiter.layer());
    let server = serve(app).await;
    // /three is under both the route's central layer and route_layer: charged once.
    let r = server.get("/three").send().await.unwrap();
    assert_eq!(header(&r, "x-ratelimit-remaining"), "99");
    let r = server.get("/two").send().await.unwrap();
    assert_eq!(header(&r, "x-ratelimit-remaining"), "98");
    // route_layer does not see unmatched paths.
    assert_eq!(server.status("/nope").await, 404);
}

#[tokio::test]
async fn a_global_limit_applies_on_top_of_every_class() {
    let (_clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .header_style(x_style())
        .route("/a/*", Policy::named("a").per_ip("10/min"))
        .route("/b/*", Policy::named("b").per_ip("10/min"))
        .route("/hook", Policy::exempt())
        .global("4/min")
        .build()
        .unwrap();
    let app = Router::new()
        .route("/a/x", get(ok))
        .route("/b/x", get(ok))
        .route("/hook", get(ok))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(limiter.layer());
    let server = serve(app).await;
    assert_eq!(server.statuses("/a/x", 2).await, vec![200, 200]);
    // Unclassified paths (404s) still spend the global bucket.
    assert_eq!(server.status("/unknown").await, 404);
    let r = server.get("/b/x").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-limit"), "4");
    assert_eq!(header(&r, "x-ratelimit-remaining"), "0");
    let r = server.get("/b/x").send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after"), "60");
    assert_eq!(server.status("/hook").await, 200);
}

#[tokio::test]
async fn a_304_gives_the_charge_back() {
    let (_clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .route(
            "/*",
            Policy::named("tenant")
                .per_ip("2/min")
                .refund_if(|s| s == StatusCode::NOT_MODIFIED),
        )
        .build()
        .unwrap();
    async fn catalog(headers: HeaderMap) -> StatusCode {
        if headers.contains_key("if-none-match") {
            StatusCode::NOT_MODIFIED
        } else {
            StatusCode::OK
        }
    }
    let app = Router::new()
        .route("/catalog", get(catalog))
        .layer(limiter.layer());
    let server = serve(app).await;
    for _ in 0..10 {
        let r = server
            .get("/catalog")
            .header("if-none-match", "\"etag-abc123\"")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304);
        // The headers describe the budget after the charge was given back.
        assert_eq!(header(&r, "x-ratelimit-remaining"), "2");
    }
    let first = server.get("/catalog").send().await.unwrap();
    assert_eq!(header(&first, "x-ratelimit-remaining"), "1");
    assert_eq!(server.statuses("/catalog", 2).await, vec![200, 429]);
}

/// A 304 given back after other requests were charged: it gives back its own charge, from
/// the window it was charged in. One charged late in a minute and answered early in the
/// next frees nothing in the next (where five were admitted meanwhile).
#[tokio::test]
async fn a_slow_304_gives_back_its_own_window_s_charge_not_the_next_one_s() {
    use std::sync::Arc;
    use tokio::sync::Notify;
    let (clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .header_style(x_style())
        .route(
            "/*",
            Policy::named("tenant")
                .limit(Key::ip(), Rate::fixed("5/min"))
                .refund_if(|s| s == StatusCode::NOT_MODIFIED),
        )
        .build()
        .unwrap();
    // The slow request's handler says it started, then answers 304 when released.
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (s, r) = (started.clone(), release.clone());
    let app = Router::new()
        .route("/catalog", get(ok))
        .route(
            "/catalog/slow",
            get(move || async move {
                s.notify_one();
                r.notified().await;
                StatusCode::NOT_MODIFIED
            }),
        )
        .layer(limiter.layer());
    let server = serve(app).await;
    // 57.3 s into a minute (T0 starts one).
    clock.advance(Duration::from_millis(57_300));
    let slow = tokio::spawn(server.get("/catalog/slow").send());
    started.notified().await;
    // 0.3 s into the next minute: its five.
    clock.advance(Duration::from_secs(3));
    assert_eq!(server.statuses("/catalog", 5).await, vec![200; 5]);
    release.notify_one();
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.status(), 304);
    // The minute it is answered in, as it is: nothing of it given back.
    assert_eq!(header(&r, "x-ratelimit-remaining"), "0");
    assert_eq!(
        server.status("/catalog").await,
        429,
        "a sixth in the minute"
    );
}

#[tokio::test]
async fn count_only_failures() {
    let (_clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .route(
            "POST /sign-in",
            Policy::named("sign-in")
                .per_ip("3/min")
                .count_only_if(|s| s == StatusCode::UNAUTHORIZED),
        )
        .build()
        .unwrap();
    async fn sign_in(headers: HeaderMap) -> StatusCode {
        if headers.get("x-password").is_some_and(|p| p == "right") {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        }
    }
    let app = Router::new()
        .route("/sign-in", post(sign_in))
        .layer(limiter.layer());
    let server = serve(app).await;
    let attempt =
        |password: &'static str| status_of(server.post("/sign-in").header("x-password", password));
    for _ in 0..10 {
        assert_eq!(attempt("right").await, 200);
    }
    for _ in 0..3 {
        assert_eq!(attempt("wrong").await, 401);
    }
    assert_eq!(attempt("right").await, 429);
    assert_eq!(attempt("wrong").await, 429);
}

#[tokio::test]
async fn shadow_mode_counts_but_refuses_nothing() {
    let (_clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .header_style(x_style())
        .route(
            "/shadow",
            Policy::named("new-limit").per_ip("2/min").shadow(),
        )
        .route("/enforced", Policy::named("old").per_ip("100/min"))
        .global("6/min")
        .build()
        .unwrap();
    let app = Router::new()
        .route("/shadow", get(ok))
        .route("/enforced", get(ok))
        .layer(limiter.layer());
    let server = serve(app).await;
    // The shadow class would refuse the 3rd and 4th; the enforced global admits them.
    // Headers describe only the enforced global bucket (6/min), never the dry run.
    for spent in 1..=4 {
        let r = server.get("/shadow").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-limit"), "6");
        assert_eq!(header(&r, "x-ratelimit-remaining"), (6 - spent).to_string());
    }
    assert_eq!(limiter.stats().would_refuse, 2);
    assert_eq!(limiter.stats().refused, 0);
    // The global limit still holds: 4 spent, 2 left.
    assert_eq!(server.statuses("/enforced", 3).await, vec![200, 200, 429]);
    assert_eq!(limiter.stats().refused, 1);

    // Shadow for the whole limiter.
    let (_clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .shadow(true)
        .route("/*", Policy::named("default").per_ip("1/min"))
        .global("1/min")
        .build()
        .unwrap();
    let server = serve(Router::new().route("/x", get(ok)).layer(limiter.layer())).await;
    for _ in 0..5 {
        let r = server.get("/x").send().await.unwrap();
        assert_eq!(r.status(), 200);
        // A dry run shows no rate-limit headers: clients must not slow down because of it.
        assert_eq!(header(&r, "x-ratelimit-remaining"), "");
        assert_eq!(header(&r, "ratelimit"), "");
    }
    assert_eq!(limiter.stats().would_refuse, 4);
}

#[tokio::test]
async fn store_failure_open_or_closed() {
    let limiter = Limiter::builder()
        .store(Down)
        .route(
            "/open",
            Policy::named("open")
                .per_ip("1/min")
                .on_store_failure(FailureMode::Open),
        )
        .route(
            "/closed",
            Policy::named("closed")
                .per_ip("1/min")
                .on_store_failure(FailureMode::Closed),
        )
        .route("/default", Policy::named("default").per_ip("1/min"))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/open", get(ok))
        .route("/closed", get(ok))
        .route("/default", get(ok))
        .layer(limiter.layer());
    let server = serve(app).await;
    for path in ["/open", "/default"] {
        let r = server.get(path).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.headers().get("x-ratelimit-limit").is_none(), "{path}");
    }
    let r = server.get("/closed").send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.text().await.unwrap(),
        r#"{"error":"rate limiter unavailable"}"#
    );
    assert_eq!(limiter.stats().store_errors, 3);
}

#[tokio::test]
async fn a_closed_failure_answers_in_the_problem_shape_the_429s_use() {
    let limiter = Limiter::builder()
        .store(Down)
        .error_body(ErrorBody::problem())
        .route(
            "/closed",
            Policy::named("closed")
                .per_ip("1/min")
                .on_store_failure(FailureMode::Closed),
        )
        .build()
        .unwrap();
    let server = serve(
        Router::new()
            .route("/closed", get(ok))
            .layer(limiter.layer()),
    )
    .await;
    let r = server.get("/closed").send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(r.headers()["retry-after"], "1");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], 503);
    assert_eq!(body["title"], "Service Unavailable");
}

/// A policy decides how a store failure ends only for the requests it spends a bucket of:
/// a global per-user policy that fails closed leaves an anonymous request (no user bucket)
/// to the class, which fails open; a signed-in request is refused with 503.
#[tokio::test]
async fn a_policy_without_a_bucket_in_the_request_does_not_close_its_store_failure() {
    let limiter = Limiter::builder()
        .store(Down)
        .identity(user_header)
        .route(
            "/*",
            Policy::named("open")
                .per_ip("100/min")
                .on_store_failure(FailureMode::Open),
        )
        .global_policy(
            Policy::named("users")
                .per_user("100/min")
                .on_store_failure(FailureMode::Closed),
        )
        .build()
        .unwrap();
    let server = serve(Router::new().route("/x", get(ok)).layer(limiter.layer())).await;
    assert_eq!(server.status("/x").await, 200, "anonymous: fails open");
    assert_eq!(
        status_of(server.get("/x").header("x-user", "alice")).await,
        503,
        "signed in: the user's policy fails closed"
    );
}

#[tokio::test]
async fn plan_tiers_costs_and_runtime_overrides() {
    let (_clock, store) = clock_and_store();
    let org = |p: &http::request::Parts| user_header(p);
    let points = Policy::named("points")
        .limit_with(Key::tenant(org), |org, _parts| {
            Some(Limit::sliding(Quota::per_minute(if org == "acme" {
                1000
            } else {
                100
            })))
        })
        .cost_fn(|parts| {
            parts
                .headers
                .get("x-points")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(1)
        });
    let limiter = Limiter::builder()
        .store(store)
        .header_style(x_style())
        .route("/points", points)
        .route(
            "/keyed",
            Policy::named("keyed").per_api_key("x-api-key", "10/min"),
        )
        .build()
        .unwrap();
    let app = Router::new()
        .route("/points", get(ok))
        .route("/keyed", get(ok))
        .layer(limiter.layer());
    let server = serve(app).await;

    let spend = |org: &'static str, points: u64| {
        let server = &server;
        async move {
            let r = server
                .get("/points")
                .header("x-user", org)
                .header("x-points", points.to_string())
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                header(&r, "x-ratelimit-limit"),
                header(&r, "x-ratelimit-remaining"),
            )
        }
    };
    assert_eq!(spend("acme", 10).await, (200, "1000".into(), "990".into()));
    assert_eq!(spend("tiny", 10).await, (200, "100".into(), "90".into()));
    for _ in 0..9 {
        assert_eq!(spend("tiny", 10).await.0, 200);
    }
    assert_eq!(spend("tiny", 1).await.0, 429);
    assert_eq!(spend("acme", 5).await, (200, "1000".into(), "985".into()));
    // No tenant: the limit does not apply (no headers).
    let r = server.get("/points").send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), header(&r, "x-ratelimit-limit")),
        (200, String::new())
    );

    // Per-key override on top of the endpoint limit: the more restrictive applies.
    let key = Key::api_key("x-api-key");
    limiter.set_override(&key, "k1", "3/min").unwrap();
    let call = |k: &'static str| status_of(server.get("/keyed").header("x-api-key", k));
    for _ in 0..3 {
        assert_eq!(call("k1").await, 200);
    }
    assert_eq!(call("k1").await, 429);
    for _ in 0..10 {
        assert_eq!(call("k2").await, 200);
    }
    assert_eq!(call("k2").await, 429);
    // Raised at runtime: 2 more for k1.
    limiter.set_override(&key, "k1", "5/min").unwrap();
    assert_eq!(call("k1").await, 200);
    assert_eq!(call("k1").await, 200);
    assert_eq!(call("k1").await, 429);
    // Removed: the endpoint's 10 apply (5 spent).
    assert!(limiter.remove_override(&key, "k1"));
    for _ in 0..5 {
        assert_eq!(call("k1").await, 200);
    }
    assert_eq!(call("k1").await, 429);
}

#[tokio::test]
async fn token_bucket_and_daily_cap_per_api_key() {
    let (clock, store) = clock_and_store();
    let recording = Recording::new(store);
    let key = Key::api_key("x-api-key");
    let limiter = Limiter::builder()
        .store(recording.clone())
        .route(
            "GET /v1/invoices",
            Policy::named("invoices")
                .limit(key.clone(), Rate::token_bucket("100/min", 20))
                .limit(key, Rate::fixed("30/day")),
        )
        .build()
        .unwrap();
    let app = Router::new()
        .route("/v1/invoices", get(ok))
        .layer(limiter.layer());
    let server = serve(app).await;
    let call = || async {
        server
            .get("/v1/invoices")
            .header("x-api-key", "sk_live_123")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    // A burst of 20, then refused until a token drips back (every 0.6 s).
    for _ in 0..20 {
        assert_eq!(call().await, 200);
    }
    assert_eq!(call().await, 429);
    clock.advance(Duration::from_millis(600));
    assert_eq!(call().await, 200);
    assert_eq!(call().await, 429);
    // A minute later the bucket is full, but the daily cap has 9 left.
    clock.advance(Duration::from_secs(60));
    for _ in 0..9 {
        assert_eq!(call().await, 200);
    }
    assert_eq!(call().await, 429);
    // The secret never reached the store: only its stable digest.
    let keys = recording.keys();
    assert!(keys.iter().all(|k| !k.contains("sk_live")), "{keys:?}");
    assert!(keys.contains(&"invoices:api_key:#f2795ce9bb62232f9699b5061dbbc985".to_string()));
    assert!(keys.contains(&"invoices:api_key#2:#f2795ce9bb62232f9699b5061dbbc985".to_string()));
}

/// Seed 000's failed sign-in lockout: 5 failures per 30 minutes per e-mail, from a handler.
#[tokio::test]
async fn direct_use_from_a_handler_locks_out_an_email() {
    let (clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .error_body(ErrorBody::retry_after_camel())
        .bucket("sign-in-failures", Rate::exact("5/30min"))
        .build()
        .unwrap();

    async fn sign_in(
        State(limiter): State<Limiter>,
        headers: HeaderMap,
    ) -> axum::response::Response {
        let email = headers["x-email"].to_str().unwrap().to_string();
        let decision = limiter.peek("sign-in-failures", &email).await.unwrap();
        if !decision.allowed {
            let refusal = limiter.refusal(
                "sign-in-failures",
                &decision,
                &http::Method::POST,
                "/sign-in",
            );
            // An axum response as it is.
            return refusal.into_response();
        }
        if headers.get("x-password").is_some_and(|p| p == "right") {
            let _ = limiter.reset("sign-in-failures", &email).await.unwrap();
            StatusCode::OK.into_response()
        } else {
            let _ = limiter.penalize("sign-in-failures", &email).await.unwrap();
            StatusCode::UNAUTHORIZED.into_response()
        }
    }
    let app = Router::new()
        .route("/sign-in", post(sign_in))
        .with_state(limiter.clone());
    let server = serve(app).await;
    let attempt = |email: &'static str, password: &'static str| {
        let server = &server;
        async move {
            server
                .post("/sign-in")
                .header("x-email", email)
                .header("x-password", password)
                .send()
                .await
                .unwrap()
        }
    };
    for _ in 0..5 {
        assert_eq!(attempt("alice@example.com", "wrong").await.status(), 401);
    }
    let locked = attempt("alice@example.com", "right").await;
    assert_eq!(locked.status(), 429);
    assert_eq!(header(&locked, "retry-after"), "1800");
    assert_eq!(
        locked.text().await.unwrap(),
        r#"{"error":"Too Many Requests","message":"Rate limit exceeded; retry in 1800 seconds.","retryAfter":1800}"#
    );
    // Another account is not affected; a success resets the count.
    assert_eq!(attempt("bob@example.com", "wrong").await.status(), 401);
    assert_eq!(attempt("bob@example.com", "right").await.status(), 200);
    assert!(
        limiter
            .peek("sign-in-failures", "bob@example.com")
            .await
            .unwrap()
            .buckets[0]
            .remaining
            == 5
    );
    // Half an hour later alice may try again.
    clock.advance(Duration::from_secs(1800));
    assert_eq!(attempt("alice@example.com", "right").await.status(), 200);
    assert!(matches!(
        limiter.check("nope", "x").await,
        Err(tollgate::CheckError::UnknownBucket(_))
    ));
}

#[tokio::test]
async fn a_bucket_for_direct_use_named_at_start_up_refuses_a_misspelt_name_there() {
    let limiter = Limiter::builder()
        .read_env(false)
        .bucket("sign-in-failures", tollgate::Rate::exact("3/30min"))
        .build()
        .unwrap();
    let err = limiter.direct_bucket("sign-in-failure").unwrap_err();
    assert!(
        matches!(&err, tollgate::CheckError::UnknownBucket(name) if name == "sign-in-failure"),
        "{err:?}"
    );
    let failures = limiter.direct_bucket("sign-in-failures").unwrap();
    assert_eq!(failures.name(), "sign-in-failures");
    // The same bucket as the limiter's calls by name: one count.
    let remaining = |d: tollgate::Decision| (d.allowed, d.buckets[0].remaining);
    assert_eq!(
        remaining(failures.penalize("a@x").await.unwrap()),
        (true, 2)
    );
    assert_eq!(
        remaining(limiter.penalize("sign-in-failures", "a@x").await.unwrap()),
        (true, 1)
    );
    assert_eq!(remaining(failures.check("a@x").await.unwrap()), (true, 0));
    let refused = failures.check("a@x").await.unwrap();
    assert!(!refused.allowed);
    let response = failures.refusal(&refused, &http::Method::POST, "/sign-in");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        failures.rate_limit_headers(&refused)["x-ratelimit-limit"],
        "3"
    );
    assert_eq!(remaining(failures.refund("a@x").await.unwrap()), (true, 1));
    assert_eq!(remaining(failures.peek("a@x").await.unwrap()), (true, 1));
    assert_eq!(
        remaining(failures.check_cost("a@x", 2).await.unwrap()),
        (false, 1)
    );
    assert_eq!(remaining(failures.reset("a@x").await.unwrap()), (true, 3));
    // A reload cannot take it away: the handle never meets an unknown name.
    assert!(matches!(
        limiter.reload(Limiter::builder()),
        Err(BuildError::DirectBucketDropped { .. })
    ));
    assert_eq!(remaining(failures.check("a@x").await.unwrap()), (true, 2));
}

#[test]
fn configuration_mistakes_are_typed_build_errors() {
    let bad_quota = Limiter::builder()
        .route("/*", Policy::named("default").per_ip("300/minn"))
        .build()
        .unwrap_err();
    assert!(
        matches!(&bad_quota, BuildError::Rate { policy, key, .. } if policy == "default" && key == "ip")
    );
    assert!(bad_quota.to_string().contains("minn"), "{bad_quota}");

    let cases: Vec<(Result<Limiter, BuildError>, &str)> =
        vec![
        (
            Limiter::builder()
                .route("/*", Policy::named("empty"))
                .build(),
            "no limit",
        ),
        (
            Limiter::builder()
                .route("/*", Policy::named("u").per_user("1/min"))
                .build(),
            "identity",
        ),
        (
            Limiter::builder()
                .route("/*", Policy::named("h").per_header("bad header", "1/min"))
                .build(),
            "bad header",
        ),
        (
            Limiter::builder()
                .route("/*", Policy::named("c").per_ip("5/min").cost(6))
                .build(),
            "can never fit",
        ),
        (
            Limiter::builder()
                .route("/*", Policy::named("z").per_ip("5/min").cost(0))
                .build(),
            "at least 1",
        ),
        (
            Limiter::builder()
                .route("/*", Policy::named("with space").per_ip("5/min"))
                .build(),
            "with space",
        ),
        (
            Limiter::builder()
                .route("/api/*", Policy::named("a").per_ip("5/min"))
                .require_default()
                .build(),
            "no default rule",
        ),
        (
            Limiter::builder()
                .bucket("x", "1/min")
                .bucket("x", "2/min")
                .build(),
            "declared twice",
        ),
        (
            Limiter::builder()
                .global(Rate::token_bucket("1/min", 0))
                .build(),
            "burst",
        ),
        (
            Limiter::builder()
                .route("/a", Policy::named("auth").per_ip("1/min"))
                .bucket("auth", "5/30min")
                .build(),
            "declared twice",
        ),
        (
            Limiter::builder()
                .client_ip(tollgate::ClientIp::peer().trust_proxies(["10.0.0.0/33"]))
                .build(),
            "10.0.0.0/33",
        ),
        (
            Limiter::builder()
                .route("/api/items/", Policy::named("a").per_ip("1/min"))
                .build(),
            "trailing",
        ),
        // One kind hashed in one policy and stored as given in another: an override of
        // the kind (stored one way) would reach only one of them.
        (
            Limiter::builder()
                .route("/a", Policy::named("a").limit(Key::header("x-team"), "5/min"))
                .route(
                    "/b",
                    Policy::named("b").limit(Key::header("x-team").hashed(), "5/min"),
                )
                .build(),
            "key kind `header:x-team` is hashed in policy `b` and stored as given in policy `a`",
        ),
    ];
    for (result, needle) in cases {
        let err = result.unwrap_err().to_string();
        assert!(err.contains(needle), "`{err}` should mention `{needle}`");
    }

    // A bad per-route policy is an error from try_policy (and a start-up panic from policy).
    let limiter = Limiter::builder()
        .route("/a", Policy::named("auth").per_ip("20/15min"))
        .build()
        .unwrap();
    assert!(limiter
        .try_policy(Policy::named("chat").per_ip("60/mn"))
        .is_err());
    assert!(matches!(
        limiter.try_policy(Policy::named("auth").per_ip("21/15min")),
        Err(BuildError::SharedBucketMismatch { .. })
    ));
    assert!(limiter
        .try_policy(Policy::named("auth").per_ip("20/15min"))
        .is_ok());
    // A per-route policy that stores a kind the other way than the table does.
    assert!(matches!(
        limiter.try_policy(Policy::named("hashed-ip").limit(Key::ip().hashed(), "5/min")),
        Err(BuildError::KeyKindStoredTwoWays { kind, .. }) if kind == "ip"
    ));
}

/// `require_default` takes the default rule however it is spelt (`/*`, `*`, `/{*rest}`),
/// and only a rule for every method and path.
#[test]
fn the_default_rule_is_found_however_it_is_written() {
    let with = |pattern: &str| {
        Limiter::builder()
            .route("/api/*", Policy::named("api").per_ip("5/min"))
            .route(pattern, Policy::named("default").per_ip("100/min"))
            .require_default()
            .build()
    };
    for pattern in ["/*", "*", "/{*rest}"] {
        assert!(with(pattern).is_ok(), "{pattern} is the default rule");
    }
    for pattern in ["GET /*", "/v1/*"] {
        assert!(
            matches!(with(pattern), Err(BuildError::NoDefaultRule)),
            "{pattern} is not"
        );
    }
}

#[tokio::test]
async fn concurrent_requests_admit_exactly_the_limit() {
    let limiter = everywhere("20/min", "1000/min");
    let server = serve(Router::new().route("/x", get(ok)).layer(limiter.layer())).await;
    let requests = (0..60).map(|_| {
        let request = server.get("/x");
        tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
    });
    let mut statuses = Vec::new();
    for r in requests.collect::<Vec<_>>() {
        statuses.push(r.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 20);
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 40);
    assert_eq!(limiter.stats().admitted, 20);
    assert_eq!(limiter.stats().refused, 40);
}

#[tokio::test]
async fn a_bucket_named_twice_in_one_request_is_charged_once() {
    let (_clock, store) = clock_and_store();
    let shared = Policy::named("api").per_ip("3/min");
    let limiter = Limiter::builder()
        .store(store)
        .route("/*", shared.clone())
        .global_policy(shared)
        .build()
        .unwrap();
    let server = serve(Router::new().route("/x", get(ok)).layer(limiter.layer())).await;
    let r = server.get("/x").send().await.unwrap();
    assert_eq!(header(&r, "x-ratelimit-remaining"), "2");
    assert_eq!(server.statuses("/x", 3).await, vec![200, 200, 429]);
    assert_eq!(limiter.stats().store_errors, 0);
}

/// `policy_at` declares the route to the central table: its requests spend only its own
/// policy from the first one on, even when the central class is already spent. Wrapped
/// around the whole router (no axum `MatchedPath`: the central layer cannot tell which
/// route serves a request), the class is charged provisionally and the route's layer takes
/// the charge over: the route spends only its own policy while the class has room, and is
/// refused with the class once that is spent (so that a request no route with the layer
/// serves is never left unlimited: `a_declared_pattern_leaves_no_request_its_layer_does_not_see`).
#[tokio::test]
async fn a_declared_per_route_policy_replaces_the_class_from_the_first_request() {
    for wrapped_outside in [false, true] {
        let limiter = api_class("2/min");
        let chat = Policy::named("chat").per_ip("4/min");
        let routes = Router::new().route("/api/items", get(ok)).route(
            "/api/chat",
            post(ok).layer(limiter.policy_at("POST /api/chat", chat)),
        );
        let (server, case) = serve_central(&limiter, routes, wrapped_outside).await;
        let spent = vec![200, 200, 429];
        if !wrapped_outside {
            assert_eq!(server.statuses("/api/items", 3).await, spent, "{case}");
        }
        let chat_statuses = server
            .posts_showing("/api/chat", 5, "x-ratelimit-limit")
            .await;
        let (own, refused) = ((200, "4".to_string()), (429, "4".to_string()));
        let mut expected = vec![own; 4];
        expected.push(refused);
        assert_eq!(chat_statuses, expected, "{case}");
        if wrapped_outside {
            // Chat gave the class its charges back: all of it is left.
            assert_eq!(server.statuses("/api/items", 3).await, spent, "{case}");
            let r = server.post("/api/chat").send().await.unwrap();
            assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{case}");
        }
        // The class was not charged by chat: still refused (spent), not more refused.
        let r = server.get("/api/items").send().await.unwrap();
        assert_eq!(header(&r, "x-ratelimit-limit"), "2", "{case}");
    }
}

/// An app built twice (one copy served, the other dropped, or the other way round) declares
/// the same policy for its pattern twice: the route is still its policy's from the first
/// request, whichever copy is served. (A review: the central layer left the first request
/// to the first declaration's layer, which the dropped copy had, so that request was
/// charged to its policy and to the class, and a warning blamed a misplaced layer.)
#[tokio::test]
async fn an_app_built_twice_leaves_the_route_to_its_policy_from_the_first_request() {
    for served in [0, 1] {
        let limiter = api_class("3/min");
        let build = |limiter: &Limiter| {
            let chat = Policy::named("chat").per_ip("4/min");
            Router::new()
                .route(
                    "/api/chat",
                    post(ok).layer(limiter.policy_at("POST /api/chat", chat)),
                )
                .route("/api/items", get(ok))
                .layer(limiter.layer())
        };
        let mut copies = vec![build(&limiter), build(&limiter)];
        let server = serve(copies.swap_remove(served)).await;
        drop(copies);
        let mut chat = Vec::new();
        for _ in 0..5 {
            chat.push(status_of(server.post("/api/chat")).await);
        }
        assert_eq!(chat, [200, 200, 200, 200, 429], "copy {served} served");
        // The class was not charged by chat: all of its 3 are left.
        assert_eq!(
            server.statuses("/api/items", 4).await,
            [200, 200, 200, 429],
            "copy {served} served"
        );
    }
}

/// `policy_at` leaves to its layer only the route the layer is on: a pattern broader than
/// that route (`POST /api/*` on `/api/chat`) leaves the other routes it covers to the
/// central class and the global limit, and a layer never attached leaves nothing.
#[tokio::test]
async fn a_declared_pattern_leaves_only_its_layers_route() {
    let (_clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .route("/api/*", Policy::named("default").per_ip("3/min"))
        .global("100/min")
        .build()
        .unwrap();
    let chat = limiter.policy_at("POST /api/*", Policy::named("chat").per_ip("5/min"));
    let unattached = limiter.policy_at("GET /api/items", Policy::named("items").per_ip("9/min"));
    drop(unattached);
    let app = Router::new()
        .route("/api/chat", post(ok).layer(chat))
        .route("/api/upload", post(ok))
        .route("/api/items", get(ok))
        .layer(limiter.layer());
    let server = serve(app).await;
    // The route the layer is on: its own 5.
    let mut chat_statuses = Vec::new();
    for _ in 0..6 {
        chat_statuses.push(status_of(server.post("/api/chat")).await);
    }
    assert_eq!(chat_statuses, vec![200, 200, 200, 200, 200, 429]);
    // Another route the pattern covers: the class's 3.
    let mut upload_statuses = Vec::new();
    for _ in 0..4 {
        upload_statuses.push(status_of(server.post("/api/upload")).await);
    }
    assert_eq!(upload_statuses, vec![200, 200, 200, 429]);
    // The route of a layer never attached: the class, spent.
    let r = server.get("/api/items").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(header(&r, "x-ratelimit-limit"), "3");
}

/// A `policy_at` layer attached, but not on its pattern's route (put on another route, or
/// on a router that is not served), leaves the pattern's route to the central class: its
/// first request, left to the layer, is counted by the class once answered without the
/// layer having seen it, and the class charges the next ones. (Before: the route had no
/// limit at all, without a warning: 100 of 100 admitted against 10 a minute.)
#[tokio::test]
async fn a_declared_pattern_whose_layer_is_elsewhere_stays_limited() {
    for case in ["on another route", "on a router not served"] {
        let limiter = api_class("10/min");
        let chat = limiter.policy_at("POST /api/chat", Policy::named("chat").per_ip("5/min"));
        let mut app = Router::new().route("/api/chat", post(ok));
        let mut unserved = None;
        match case {
            "on another route" => app = app.route("/api/other", post(ok).layer(chat)),
            _ => unserved = Some(Router::<()>::new().route("/api/chat", post(ok).layer(chat))),
        }
        let server = serve(app.layer(limiter.layer())).await;
        let statuses = server
            .posts_showing("/api/chat", 12, "x-ratelimit-limit")
            .await;
        let mut expected = vec![(200, String::new())];
        expected.extend((0..9).map(|_| (200, "10".to_string())));
        expected.extend((0..2).map(|_| (429, "10".to_string())));
        assert_eq!(statuses, expected, "{case}");
        // The request counted once answered is counted as admitted, as served.
        assert_eq!(limiter.stats().admitted, 10, "{case}");
        drop(unserved);
    }
}

/// A misplaced layer's pattern under concurrent first requests: one is left to the layer
/// (a probe, counted once answered), the others are charged to the class: the class's
/// limit and the probe, not every request under way before the first answer (a review: 50
/// of 50 with a handler of 100 ms, against 10).
#[tokio::test]
async fn concurrent_first_requests_to_a_misplaced_pattern_are_charged() {
    let limiter = api_class("10/min");
    let chat = limiter.policy_at("POST /api/chat", Policy::named("chat").per_ip("5/min"));
    let app = Router::new()
        .route("/api/chat", post(answers_after(100)))
        .route("/api/other", post(ok).layer(chat))
        .layer(limiter.layer());
    let server = serve(app).await;
    let sent: Vec<_> = (0..50)
        .map(|_| tokio::spawn(server.post("/api/chat").send()))
        .collect();
    let mut statuses = Vec::new();
    for request in sent {
        statuses.push(request.await.unwrap().unwrap().status().as_u16());
    }
    let admitted = statuses.iter().filter(|&&s| s == 200).count();
    assert_eq!(admitted, 11, "{statuses:?}");
    // The probe was counted: the class is spent.
    assert_eq!(status_of(server.post("/api/chat")).await, 429);
}

/// A pattern for every method whose layer is on one method's handler: the methods the layer
/// has not seen stay with the class (a review: after one `POST`, `GET` went unlimited).
#[tokio::test]
async fn a_declared_pattern_is_left_only_for_the_methods_its_layer_sees() {
    let limiter = api_class("3/min");
    let chat = limiter.policy_at("/api/chat", Policy::named("chat").per_ip("5/min"));
    let app = Router::new()
        .route("/api/chat", post(ok).layer(chat).get(ok))
        .layer(limiter.layer());
    let server = serve(app).await;
    assert_eq!(status_of(server.post("/api/chat")).await, 200);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(status_of(server.get("/api/chat")).await);
    }
    assert_eq!(statuses, vec![200, 200, 200, 429]);
    // POST stays the layer's: 4 more of its 5.
    let posts = server
        .posts_showing("/api/chat", 4, "x-ratelimit-limit")
        .await;
    assert!(
        posts.iter().all(|p| *p == (200, "5".to_string())),
        "{posts:?}"
    );
}

/// A check in front of a declared route that turns the first request away does not hand
/// the route to the class for good: the first request of another client to reach the
/// layer gives it back, and a client whose class is spent is then admitted by the route's
/// own policy (a review: one 401 at start-up left such a client refused by the class until
/// another client's request reached the layer, which then is what gives it back).
#[tokio::test]
async fn a_declared_route_turned_away_once_is_given_back_to_its_layer() {
    let (_clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .route(
            "/api/*",
            Policy::named("default").per_header("x-client", "2/min"),
        )
        .build()
        .unwrap();
    let chat = limiter.policy_at(
        "POST /api/chat",
        Policy::named("chat").per_header("x-client", "5/min"),
    );
    let routes = Router::new()
        .route("/api/items", get(ok))
        .route("/api/chat", post(ok).layer(chat));
    let app = behind_check(routes, "authorization").layer(limiter.layer());
    let server = serve(app).await;
    let as_client = |request: reqwest::RequestBuilder, client: &str| {
        request
            .header("authorization", "Bearer t")
            .header("x-client", client)
    };
    // Client x spends its class.
    for expected in [200, 200, 429] {
        assert_eq!(
            status_of(as_client(server.get("/api/items"), "x")).await,
            expected
        );
    }
    // An anonymous request turned away before the layer: counted by its class.
    assert_eq!(
        status_of(server.post("/api/chat").header("x-client", "anon")).await,
        401
    );
    // Client y, whose class is not spent, reaches the layer: the route is the layer's.
    assert_eq!(
        showing(
            as_client(server.post("/api/chat"), "y"),
            "x-ratelimit-limit"
        )
        .await,
        (200, "5".into())
    );
    // Client x, spent on its class, is admitted by the route's policy.
    assert_eq!(
        showing(
            as_client(server.post("/api/chat"), "x"),
            "x-ratelimit-limit"
        )
        .await,
        (200, "5".into())
    );
    // And y's provisional class charge was taken over: y still has its class.
    let items = as_client(server.get("/api/items"), "y")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&items, "x-ratelimit-remaining"), "1");
}

/// A request its class does not charge (anonymous, under a per-user class) is not a probe:
/// it took the probe and never gave it back, so the route was charged to its class for
/// good, a user whose class is spent refused (a review: 60 of 60 in 6 s).
#[tokio::test]
async fn a_request_its_class_does_not_charge_holds_no_probe() {
    let (_clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .identity(user_header)
        .route("/api/*", Policy::named("default").per_user("2/min"))
        .build()
        .unwrap();
    let chat = limiter.policy_at("POST /api/chat", Policy::named("chat").per_user("5/min"));
    let routes = Router::new()
        .route("/api/items", get(ok))
        .route("/api/chat", post(ok).layer(chat));
    let app = behind_check(routes, "x-user").layer(limiter.layer());
    let server = serve(app).await;
    for expected in [200, 200, 429] {
        let status = status_of(server.get("/api/items").header("x-user", "u")).await;
        assert_eq!(status, expected);
    }
    assert_eq!(status_of(server.post("/api/chat")).await, 401);
    assert_eq!(
        showing(
            server.post("/api/chat").header("x-user", "u"),
            "x-ratelimit-limit"
        )
        .await,
        (200, "5".into())
    );
}

/// A probe the layer has seen no longer holds the next back: while a slow first `GET` is
/// answered, a first `POST` of the same pattern goes to the layer too (a review: a client
/// whose class was spent was refused by the class 10 of 10 until the `GET` answered).
#[tokio::test]
async fn a_probe_the_layer_saw_does_not_hold_the_next_back() {
    let limiter = api_class("2/min");
    let chat = limiter.policy_at("/api/chat", Policy::named("chat").per_ip("5/min"));
    let app = Router::new()
        .route("/api/items", get(ok))
        .route("/api/chat", get(slow).post(ok).layer(chat))
        .layer(limiter.layer());
    let server = serve(app).await;
    assert_eq!(server.statuses("/api/items", 3).await, vec![200, 200, 429]);
    let first_get = tokio::spawn(server.get("/api/chat").send());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        showing(server.post("/api/chat"), "x-ratelimit-limit").await,
        (200, "5".into())
    );
    assert_eq!(first_get.await.unwrap().unwrap().status().as_u16(), 200);
}

/// A probe ends only itself: a first `GET` the layer saw, answered while a first `POST`
/// (which this app routes around the layer) is the probe, does not end the `POST`'s
/// probe, so the next `POST` is charged to its spent class meanwhile, not let through
/// unchecked as another probe (a review of a change that ended whichever probe was under
/// way).
#[tokio::test]
async fn a_probe_ends_only_itself() {
    let limiter = api_class("1/min");
    let chat = limiter.policy_at("/api/chat", Policy::named("chat").per_ip("5/min"));
    let app = Router::new()
        .route("/api/items", get(ok))
        .route("/api/chat", get(slow).layer(chat).post(answers_after(900)))
        .layer(limiter.layer());
    let server = serve(app).await;
    assert_eq!(server.statuses("/api/items", 2).await, vec![200, 429]);
    let first_get = tokio::spawn(server.get("/api/chat").send());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let first_post = tokio::spawn(server.post("/api/chat").send());
    assert_eq!(first_get.await.unwrap().unwrap().status().as_u16(), 200);
    assert_eq!(status_of(server.post("/api/chat")).await, 429);
    assert_eq!(first_post.await.unwrap().unwrap().status().as_u16(), 200);
}

/// Once its layer has seen a request, a declared route whose requests were charged to the
/// class (a request answered before reaching the layer, here by a check in front of it)
/// is left to the layer again, and the class's charges are taken over meanwhile.
#[tokio::test]
async fn a_declared_pattern_is_left_to_its_layer_again_once_the_layer_sees_a_request() {
    let limiter = api_class("3/min");
    let chat = limiter.policy_at("POST /api/chat", Policy::named("chat").per_ip("5/min"));
    let turned_away = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let gate = turned_away.clone();
    let app = Router::new()
        .route("/api/items", get(ok))
        .route("/api/chat", post(ok).layer(chat))
        .route_layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let gate = gate.clone();
                async move {
                    if gate.swap(false, std::sync::atomic::Ordering::Relaxed) {
                        return StatusCode::UNAUTHORIZED.into_response();
                    }
                    next.run(request).await
                }
            },
        ))
        .layer(limiter.layer());
    let server = serve(app).await;
    // Turned away before the layer: counted by the class (2 of 3 left after the next).
    assert_eq!(status_of(server.post("/api/chat")).await, 401);
    let r = server.post("/api/chat").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        header(&r, "x-ratelimit-limit"),
        "5",
        "taken over by the layer"
    );
    assert!(!turned_away.load(std::sync::atomic::Ordering::Relaxed));
    let statuses = server
        .posts_showing("/api/chat", 5, "x-ratelimit-limit")
        .await;
    let five = |status| (status, "5".to_string());
    assert_eq!(
        statuses,
        vec![five(200), five(200), five(200), five(200), five(429)]
    );
    // The class counted the request turned away, and none of the layer's.
    let r = server.get("/api/items").send().await.unwrap();
    assert_eq!(header(&r, "x-ratelimit-remaining"), "1");
}

/// A per-route layer on a request's way twice (on the route and as a route layer, or
/// twice on the route) charges it once, as the central layer does; `policy_at`'s charged
/// it twice (2 of a 4/min policy admitted).
#[tokio::test]
async fn a_per_route_layer_put_on_a_route_twice_charges_once() {
    for (case, declared) in [("policy_at", true), ("policy", false)] {
        let limiter = api_class("100/min");
        let layer = || {
            let policy = Policy::named("chat").per_ip("4/min");
            if declared {
                limiter.policy_at("POST /api/chat", policy)
            } else {
                limiter.policy(policy)
            }
        };
        let app = Router::new()
            .route("/api/chat", post(ok).layer(layer()))
            .route_layer(layer())
            .layer(limiter.layer());
        let server = serve(app).await;
        let statuses = server
            .posts_showing("/api/chat", 5, "x-ratelimit-remaining")
            .await;
        let expected: Vec<(u16, String)> =
            [(200, "3"), (200, "2"), (200, "1"), (200, "0"), (429, "0")]
                .into_iter()
                .map(|(status, left)| (status, left.to_string()))
                .collect();
        assert_eq!(statuses, expected, "{case}");
    }
}

/// A `policy_at` route is left to its layer from the first request whatever other
/// per-route layers exist: one made with `Limiter::policy` (attached or not), or another
/// `policy_at` layer put on a route its pattern does not name, changes nothing for it (they
/// made the central layer charge every declared route until its layer was seen, so a client
/// whose class was spent was refused by the class on a route with its own budget).
#[tokio::test]
async fn other_per_route_layers_do_not_take_a_declared_route_from_its_layer() {
    for case in ["policy", "policy never attached", "misplaced policy_at"] {
        let (_clock, store) = clock_and_store();
        let limiter = Limiter::builder()
            .store(store)
            .route("/api/*", Policy::named("default").per_ip("2/min"))
            .global("1000/min")
            .build()
            .unwrap();
        let chat = limiter.policy_at("POST /api/chat", Policy::named("chat").per_ip("5/min"));
        let mut app = Router::new()
            .route("/api/chat", post(ok).layer(chat))
            .route("/api/other", post(ok));
        match case {
            "policy" => {
                let special = limiter.policy(Policy::named("special").per_ip("7/min"));
                app = app.route("/api/special", post(ok).layer(special));
            }
            "policy never attached" => {
                let _special = limiter.policy(Policy::named("special").per_ip("7/min"));
            }
            _ => {
                let upload =
                    limiter.policy_at("POST /api/uplaod", Policy::named("upload").per_ip("9/min"));
                app = app.route("/api/upload", post(ok).layer(upload));
            }
        }
        let server = serve(app.layer(limiter.layer())).await;
        if case == "misplaced policy_at" {
            // The misplaced layer sees a request: it warns, and requests are marked from now.
            assert_eq!(status_of(server.post("/api/upload")).await, 200, "{case}");
        }
        // The client spends its class.
        while status_of(server.post("/api/other")).await == 200 {}
        let statuses = server
            .posts_showing("/api/chat", 6, "x-ratelimit-limit")
            .await;
        let five = (200, "5".to_string());
        let refused = (429, "5".to_string());
        assert_eq!(
            statuses,
            vec![
                five.clone(),
                five.clone(),
                five.clone(),
                five.clone(),
                five,
                refused
            ],
            "{case}"
        );
    }
}

/// A per-route policy declared for one method spends nothing on requests of other methods
/// that reach its layer: axum's method router answers them (a 405, a CORS preflight), or
/// another method's handler under the same layer serves them. The central class charges
/// them, as it does any request, and the route's own budget stays whole.
#[tokio::test]
async fn a_per_route_policy_charges_only_the_methods_its_pattern_names() {
    let limiter = api_class("100/min");
    let chat = Policy::named("chat").per_ip("3/min");
    let app = Router::new()
        .route(
            "/api/chat",
            post(ok).layer(limiter.policy_at("POST /api/chat", chat)),
        )
        .route(
            "/api/both",
            get(ok).post(ok).layer(
                limiter.policy_at("POST /api/both", Policy::named("both-post").per_ip("2/min")),
            ),
        )
        .layer(limiter.layer());
    let server = serve(app).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://{}/api/chat", server.addr());
    for method in ["GET", "PUT", "DELETE", "OPTIONS", "FOO"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = client.request(method.clone(), &url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(
            header(&r, "x-ratelimit-limit"),
            "100",
            "{method}: the class"
        );
    }
    // Five requests of other methods spent none of chat's 3.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            server
                .post("/api/chat")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, vec![200, 200, 200, 429]);

    // GET's handler under the POST policy's layer: charged to the class, not to the policy.
    for _ in 0..3 {
        let r = server.get("/api/both").send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "x-ratelimit-limit"), "100");
    }
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            server
                .post("/api/both")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, vec![200, 200, 429]);
}

#[test]
fn rules_that_would_limit_nothing_they_seem_to_are_build_errors() {
    // A global policy is spent on top of every class: exempt, it exempted nothing, silently.
    let err = Limiter::builder()
        .route("/*", Policy::named("default").per_ip("5/min"))
        .global_policy(Policy::exempt())
        .build()
        .unwrap_err();
    assert!(matches!(err, BuildError::ExemptGlobal { .. }), "{err}");
    // A guard turned off is not a global policy: it limits nothing, as before.
    let limiter = Limiter::builder()
        .route("/*", Policy::named("default").per_ip("5/min"))
        .build()
        .unwrap();
    assert!(limiter.try_guard(Policy::exempt()).is_ok());
    // Wildcards written as other routers spell them (or as globs) matched only paths with
    // those very characters; a star in a method list matched no request.
    for pattern in ["/api/**", "/api/*rest", "/files/*.json", "* /d", "GET,* /d"] {
        let err = Limiter::builder()
            .route(pattern, Policy::named("p").per_ip("5/min"))
            .build()
            .unwrap_err();
        assert!(matches!(err, BuildError::Route(_)), "{pattern}: {err}");
        assert!(
            err.to_string().contains('*'),
            "{pattern}: the error names the star: {err}"
        );
    }
}

/// A route whose `policy` layer has seen a request is left to that layer: a client who
/// spent the central class is not refused by it there, and the route's first request,
/// charged to the class provisionally, gave that charge back, whether the decision goes
/// into the request's extensions or the layers mark the request instead, and whether the
/// store answers at once (memory) or through its future (as Redis does).
#[tokio::test]
async fn a_route_with_its_own_policy_is_left_to_it_once_seen() {
    for (decision_in_request, through_future) in [(true, false), (false, false), (true, true)] {
        let (_clock, store) = clock_and_store();
        let builder = Limiter::builder();
        // `Recording` answers only through its future.
        let builder = if through_future {
            builder.store(Recording::new(store))
        } else {
            builder.store(store)
        };
        let limiter = builder
            .decision_in_request(decision_in_request)
            .route("/api/*", Policy::named("default").per_ip("2/min"))
            .build()
            .unwrap();
        let chat = limiter.policy(Policy::named("chat").per_ip("4/min"));
        let app = Router::new()
            .route("/api/chat", post(ok).layer(chat))
            .route("/api/items", get(ok))
            .layer(limiter.layer());
        let server = serve(app).await;
        let case = format!("in request: {decision_in_request}, future: {through_future}");
        assert_eq!(status_of(server.post("/api/chat")).await, 200, "{case}");
        // The class is whole: the chat request's provisional charge was given back.
        assert_eq!(
            server.statuses("/api/items", 3).await,
            vec![200, 200, 429],
            "{case}"
        );
        // The class is spent; chat still has its own 3 left.
        let statuses = server
            .posts_showing("/api/chat", 4, "x-ratelimit-limit")
            .await;
        let (four, refused) = ((200, "4".to_string()), (429, "4".to_string()));
        assert_eq!(
            statuses,
            vec![four.clone(), four.clone(), four, refused],
            "{case}"
        );
    }
}

/// Two `policy` layers of one limiter on one request (one on a nested router, one on its
/// route): the outer one charges it, the inner one passes it on, as without a central
/// layer; the central layer's provisional charge is given back once.
#[tokio::test]
async fn of_two_per_route_layers_on_a_request_the_outer_one_charges() {
    for central in [false, true] {
        let limiter = api_class("2/min");
        let outer = limiter.policy(Policy::named("outer").per_ip("3/min"));
        let inner = limiter.policy(Policy::named("inner").per_ip("1/min"));
        let nested = Router::new()
            .route("/chat", post(ok).layer(inner))
            .layer(outer);
        let mut app = Router::new()
            .nest("/api", nested)
            .route("/api/items", get(ok));
        if central {
            app = app.layer(limiter.layer());
        }
        let server = serve(app).await;
        let statuses = server
            .posts_showing("/api/chat", 4, "x-ratelimit-remaining")
            .await;
        assert_eq!(
            statuses,
            vec![
                (200, "2".to_string()),
                (200, "1".to_string()),
                (200, "0".to_string()),
                (429, "0".to_string())
            ],
            "central layer: {central}"
        );
        if central {
            assert_eq!(server.statuses("/api/items", 3).await, vec![200, 200, 429]);
        }
    }
}

/// A `policy_at` pattern broader than the route its layer is on leaves the other routes it
/// covers to the central class from the very first request, before its layer saw any.
#[tokio::test]
async fn a_broader_declared_pattern_charges_its_other_routes_before_its_layer_is_seen() {
    let limiter = api_class("2/min");
    let chat = limiter.policy_at("POST /api/*", Policy::named("chat").per_ip("5/min"));
    let app = Router::new()
        .route("/api/chat", post(ok).layer(chat))
        .route("/api/upload", post(ok))
        .layer(limiter.layer());
    let server = serve(app).await;
    let statuses = server
        .posts_showing("/api/upload", 3, "x-ratelimit-limit")
        .await;
    let (class, refused) = ((200, "2".to_string()), (429, "2".to_string()));
    assert_eq!(statuses, vec![class.clone(), class, refused]);
}

/// A request a `policy_at` pattern covers that no route with the layer serves is charged
/// to its class and the global limits, however many of the layer's own requests came
/// before: with the layer on a nested router, a path under it that only the outer
/// router's fallback answers; with the limiter wrapped around the whole router (no
/// `MatchedPath` to tell routes apart), a sibling route under the pattern too. (A review:
/// once the layer had seen one `GET /api/a`, 300 of 300 `GET /api/nope` and 100 of 100
/// `GET /api/special` were admitted, without headers, against 10 a minute and a global 20.)
#[tokio::test]
async fn a_declared_pattern_leaves_no_request_its_layer_does_not_see() {
    for wrapped_outside in [false, true] {
        let limiter = everywhere("3/min", "100/min");
        let api = Router::new()
            .route("/a", get(ok))
            .layer(limiter.policy_at("GET /api/*", Policy::named("api").per_ip("5/min")));
        let routes = Router::new()
            .nest("/api", api)
            .route("/api/special", get(ok))
            .fallback(ok);
        let (server, case) = serve_central(&limiter, routes, wrapped_outside).await;
        // The layer's own route: its 5, shown by its headers.
        let own = server.get("/api/a");
        assert_eq!(
            showing(own, "x-ratelimit-limit").await,
            (200, "5".into()),
            "{case}"
        );
        // Every path the layer does not see: the class's 3, then refused.
        let mut statuses = Vec::new();
        for path in ["/api/nope", "/api", "/api/special", "/api/x/y"] {
            statuses.push(showing(server.get(path), "x-ratelimit-limit").await);
        }
        let (class, refused) = ((200, "3".to_string()), (429, "3".to_string()));
        let expected = vec![class.clone(), class.clone(), class, refused];
        assert_eq!(statuses, expected, "{case}");
        // The global limit counted them: 1 own + 3 admitted (a refusal spends nothing).
        let global = limiter.peek_bucket("global", "global").await.unwrap();
        assert_eq!(global.buckets[0].remaining, 96, "{case}");
    }
}

/// A route left to its own layer (seen there) whose requests are then answered before
/// they reach that layer (a check between the central layer and the route's: `route_layer`
/// authentication; or another router sharing the limiter, with the same route and no layer
/// of its own) is charged to its class: the first such answer is counted once answered,
/// and from then on the route is charged provisionally, the layer taking the charge over.
/// (A review: after one good request reached the layer, 200 of 200 `401`s, and 200 of 200
/// requests to a second router's same route, were admitted without headers against a
/// class of 10 and a global 20.)
#[tokio::test]
async fn a_route_left_to_its_layer_is_charged_when_answered_before_the_layer() {
    for declared in [true, false] {
        let limiter = everywhere("3/min", "100/min");
        let own = Policy::named("data").per_ip("50/min");
        let layer = if declared {
            limiter.policy_at("GET /api/data", own)
        } else {
            limiter.policy(own)
        };
        let public = behind_check(
            Router::new().route("/api/data", get(ok).layer(layer)),
            "authorization",
        )
        .layer(limiter.layer());
        let internal = Router::new()
            .route("/api/data", get(ok))
            .layer(limiter.layer());
        let (public, internal) = (serve(public).await, serve(internal).await);
        let case = format!("policy_at: {declared}");
        // One request reaches the layer: the route is its.
        let good = public.get("/api/data").header("authorization", "yes");
        assert_eq!(
            showing(good, "x-ratelimit-limit").await,
            (200, "50".into()),
            "{case}"
        );
        // Turned away before the layer: charged to the class, 3 then refused. Only the
        // first goes uncharged until answered (no headers); the route is the class's from
        // then on, by the registry and by the pattern alike (by both, two went so before).
        let mut statuses = Vec::new();
        for _ in 0..5 {
            statuses.push(showing(public.get("/api/data"), "x-ratelimit-limit").await);
        }
        let (unseen, class, refused) = ((401, String::new()), (401, "3".into()), (429, "3".into()));
        let expected = [unseen, class.clone(), class, refused.clone(), refused];
        assert_eq!(statuses, expected, "{case}");
        // The layer still takes its own requests over (the class is spent: refused by it).
        let good = public.get("/api/data").header("authorization", "yes");
        assert_eq!(
            showing(good, "x-ratelimit-limit").await,
            (429, "3".into()),
            "{case}"
        );
        // Another router's route of that name, without the layer: the class's (spent).
        let other = showing(internal.get("/api/data"), "x-ratelimit-limit").await;
        assert_eq!(other, (429, "3".into()), "{case}");
        // The global limit counted the admitted: 1 own + 3 turned away.
        let global = limiter.peek_bucket("global", "global").await.unwrap();
        assert_eq!(global.buckets[0].remaining, 96, "{case}");
    }
}

/// A per-route layer on a merged router wraps that router's fallback, which axum's `merge`
/// makes the app's 404: a request its pattern does not cover is not its to take over (the
/// class charged it, and keeps it). (A review: an exempt `policy_at("POST /hooks/*")` on
/// merged webhooks took over every `POST /nope`, 100 of 100 admitted without headers.)
#[tokio::test]
async fn a_per_route_layer_takes_over_only_what_its_pattern_covers() {
    let limiter = everywhere("3/min", "100/min");
    let hooks = Router::new()
        .route("/hooks/stripe", post(ok))
        .layer(limiter.policy_at("POST /hooks/*", Policy::exempt()));
    let app = Router::new()
        .route("/a", get(ok))
        .merge(hooks)
        .layer(limiter.layer());
    let server = serve(app).await;
    // Its own route: exempt.
    assert_eq!(
        server
            .posts_showing("/hooks/stripe", 5, "x-ratelimit-limit")
            .await,
        vec![(200, String::new()); 5]
    );
    // The app's 404s through its layer: the class's 3.
    let statuses = server.posts_showing("/nope", 4, "x-ratelimit-limit").await;
    let (class, refused) = ((404, "3".to_string()), (429, "3".to_string()));
    assert_eq!(statuses, vec![class.clone(), class.clone(), class, refused]);
}

/// A `policy_at` layer put on another route than its pattern names takes nothing over
/// there: that route stays with its class (the layer's policy, looser here, would have
/// replaced it), and the pattern's own route is no longer left to the layer from its first
/// request on, with or without axum's `MatchedPath` (the limiter wrapped around the whole
/// router). (Before: the upload route was charged the layer's 9 a minute from its second
/// request on, the class's 3 only at the first.)
#[tokio::test]
async fn a_misplaced_declared_layer_leaves_its_route_to_the_class() {
    for wrapped_outside in [false, true] {
        let limiter = api_class("3/min");
        // Meant for the upload route, declared for the chat route.
        let upload = limiter.policy_at("POST /api/chat", Policy::named("upload").per_ip("9/min"));
        let routes = Router::new()
            .route("/api/upload", post(ok).layer(upload))
            .route("/api/chat", post(ok))
            .route("/api/items", get(ok));
        let (server, case) = serve_central(&limiter, routes, wrapped_outside).await;
        let uploads = server
            .posts_showing("/api/upload", 4, "x-ratelimit-limit")
            .await;
        let (class, refused) = ((200, "3".to_string()), (429, "3".to_string()));
        assert_eq!(
            uploads,
            vec![class.clone(), class.clone(), class, refused.clone()],
            "{case}"
        );
        // The class is spent on every route of it, the chat route included.
        assert_eq!(server.statuses("/api/items", 1).await, vec![429], "{case}");
        let chat = server
            .posts_showing("/api/chat", 1, "x-ratelimit-limit")
            .await;
        assert_eq!(chat, vec![refused], "{case}");
    }
}

/// A `policy_at` layer put on several routes (`Router::route_layer` wraps every route
/// declared before it) charges its policy only on the route its pattern names: the others
/// keep their own class, however many requests come and in whichever order. (A review: a
/// sign-in route's 5 per 15 minutes was charged to the export policy's 20 a minute at cost
/// 5 from its second request on, 8 sign-ins in a minute and a half; the first sign-in
/// charged the global limit twice.)
#[tokio::test]
async fn a_declared_layer_on_several_routes_charges_only_its_pattern_s_route() {
    for export_first in [false, true] {
        let (_clock, store) = clock_and_store();
        let limiter = Limiter::builder()
            .store(store)
            .route("/*", Policy::named("default").per_ip("100/min"))
            .route("POST /api/login", Policy::named("login").per_ip("5/15min"))
            .global("1000/min")
            .build()
            .unwrap();
        let export = limiter
            .try_policy_at(
                "POST /api/export",
                Policy::named("export").per_ip("20/min").cost(5),
            )
            .unwrap();
        let app = Router::new()
            .route("/api/login", post(ok))
            .route("/api/export", post(ok))
            .route_layer(export)
            .layer(limiter.layer());
        let server = serve(app).await;
        let case = format!("export first: {export_first}");
        if export_first {
            let exports = first_items(server.posts_showing("/api/export", 1, "ratelimit").await);
            assert_eq!(
                exports,
                vec![(200, r#""export-ip";r=15;t=60"#.to_string())],
                "{case}"
            );
        }
        let logins = first_items(server.posts_showing("/api/login", 7, "ratelimit").await);
        let mut expected: Vec<_> = (0..5)
            .rev()
            .map(|r| (200, format!(r#""login-ip";r={r};t=900"#)))
            .collect();
        expected.extend((0..2).map(|_| (429, r#""login-ip";r=0;t=900"#.to_string())));
        assert_eq!(logins, expected, "{case}");
        // The export route is the export policy's, at cost 5 (not spent by the sign-ins).
        let exports = first_items(server.posts_showing("/api/export", 1, "ratelimit").await);
        let left = if export_first { 10 } else { 15 };
        assert_eq!(
            exports,
            vec![(200, format!(r#""export-ip";r={left};t=60"#))],
            "{case}"
        );
        // Each admitted request charged the global limit once (a refusal spends nothing).
        let global = limiter.peek_bucket("global", "global").await.unwrap();
        let admitted = if export_first { 7 } else { 6 };
        assert_eq!(global.buckets[0].remaining, 1000 - admitted, "{case}");
    }
}

/// Each response's status and the first item of its `RateLimit` field.
fn first_items(responses: Vec<(u16, String)>) -> Vec<(u16, String)> {
    responses
        .into_iter()
        .map(|(status, field)| (status, field.split(", ").next().unwrap().to_string()))
        .collect()
}

/// One policy per route: a pattern that ties with one declared for another policy (the
/// same path, a method in common) is a typed error naming both; the same policy declared
/// again for it (an app built twice) and a pattern of other methods are not. (A review:
/// two layers for `POST /api/y` with different policies were returned without an error.)
#[test]
fn a_pattern_declared_for_two_policies_is_a_build_error() {
    let limiter = api_class("10/min");
    let _chat = limiter
        .try_policy_at("POST /api/chat", Policy::named("chat").per_ip("5/min"))
        .unwrap();
    let _item = limiter
        .try_policy_at("PUT /api/items/{id}", Policy::named("item").per_ip("5/min"))
        .unwrap();
    for (pattern, first) in [
        ("POST /api/chat", "POST /api/chat"),
        ("GET,POST /api/chat", "POST /api/chat"),
        ("PUT /api/items/:item", "PUT /api/items/{id}"),
    ] {
        let err = limiter
            .try_policy_at(pattern, Policy::named("upload").per_ip("9/min"))
            .unwrap_err();
        assert!(
            matches!(&err, BuildError::Route(tollgate::PatternError::Tie { .. })),
            "{pattern}: {err:?}"
        );
        assert!(err.to_string().contains(&format!("`{first}`")), "{err}");
    }
    assert!(limiter
        .try_policy_at("POST /api/chat", Policy::named("chat").per_ip("5/min"))
        .is_ok());
    assert!(limiter
        .try_policy_at("GET /api/chat", Policy::named("upload").per_ip("9/min"))
        .is_ok());
}

/// Methods a client invents are not remembered as routes with their own policy (their
/// requests take the refund path): however many a client sends, a route whose policy layer
/// is seen later is still left to it, and a client who spent the central class is not
/// refused by the class there.
#[tokio::test]
async fn invented_methods_do_not_crowd_out_the_routes_left_to_their_policy() {
    use axum::extract::ConnectInfo;
    use tower::ServiceExt;

    let limiter = api_class("2/min");
    let chat = limiter.policy(Policy::named("chat").per_ip("5/min"));
    let late = limiter.policy(Policy::named("late").per_ip("5/min"));
    let app = Router::new()
        .route("/api/chat", post(ok).layer(chat))
        .route("/api/late", post(ok).layer(late))
        .route("/api/items", get(ok))
        .layer(limiter.layer());
    let peer: std::net::SocketAddr = "192.0.2.1:5000".parse().unwrap();
    let send = |method: &str, path: &str| {
        let mut req = http::Request::builder()
            .method(http::Method::from_bytes(method.as_bytes()).unwrap())
            .uri(path)
            .body(axum::body::Body::empty())
            .unwrap();
        req.extensions_mut().insert(ConnectInfo(peer));
        let app = app.clone();
        async move { app.oneshot(req).await.unwrap().status().as_u16() }
    };
    // As many invented methods as the registry holds routes.
    for n in 0..4096 {
        send(&format!("X{n}"), "/api/chat").await;
    }
    assert_eq!(send("POST", "/api/late").await, 200);
    for expected in [200, 200, 429] {
        assert_eq!(send("GET", "/api/items").await, expected);
    }
    // The class is spent; the late route is its policy's.
    assert_eq!(send("POST", "/api/late").await, 200);
}

/// A probe dropped before it reaches its layer (the client went away while a middleware in
/// front of the route ran) leaves the route charged provisionally for the wait after it:
/// the layer takes the charge over, so a client whose class is not spent spends only the
/// route's policy (a client whose class is spent is refused by it meanwhile, as after any
/// probe the layer did not see). Nothing is logged of it (`tracing_events`).
#[tokio::test]
async fn after_a_probe_dropped_before_its_layer_the_layer_takes_its_requests_over() {
    use axum::extract::ConnectInfo;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tower::ServiceExt;

    let limiter = api_class("2/min");
    let chat = limiter.policy_at("POST /api/chat", Policy::named("chat").per_ip("100/min"));
    let slow_once = std::sync::Arc::new(AtomicBool::new(true));
    let app = Router::new()
        .route("/api/items", get(ok))
        .route("/api/chat", post(ok).layer(chat))
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let slow = request.uri() == "/api/chat" && slow_once.swap(false, Ordering::Relaxed);
                async move {
                    if slow {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    next.run(request).await
                }
            },
        ))
        .layer(limiter.layer());
    let send = |method: http::Method, path: &str, peer: &str| {
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let peer: std::net::SocketAddr = peer.parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req)
    };
    let (spent, other) = ("192.0.2.1:5000", "192.0.2.2:5000");
    // The client's class spent.
    for expected in [200, 200, 429] {
        let response = send(http::Method::GET, "/api/items", spent).await.unwrap();
        assert_eq!(response.status().as_u16(), expected);
    }
    // The first request of the pattern, dropped while the middleware holds it.
    let dropped = tokio::time::timeout(
        Duration::from_millis(50),
        send(http::Method::POST, "/api/chat", spent),
    )
    .await;
    assert!(dropped.is_err(), "the slow request was answered");
    // Another client's requests: charged provisionally, taken over by the route's layer.
    let mut seen = Vec::new();
    for _ in 0..3 {
        let response = send(http::Method::POST, "/api/chat", other).await.unwrap();
        let limit = response.headers()["x-ratelimit-limit"]
            .to_str()
            .unwrap()
            .to_string();
        seen.push((response.status().as_u16(), limit));
    }
    let chat_admits = |status: u16| (status, "100".to_string());
    assert_eq!(
        seen,
        vec![chat_admits(200), chat_admits(200), chat_admits(200)]
    );
}

/// A declared route whose layer never sees its method (here on another method's handler)
/// is limited by its class, whatever the answers: its handler's 500s too. A probe goes
/// through unchecked, so each probe the layer does not see makes the next wait (a re-check
/// of a fix that read a 5xx as a request cut short on its way, and probed again at once:
/// every request a probe, 6 of 6 admitted against 3 a minute, nothing logged).
#[tokio::test]
async fn a_route_whose_layer_never_sees_it_is_limited_by_its_class_whatever_it_answers() {
    let limiter = api_class("3/min");
    let chat = limiter.policy_at("GET /api/chat", Policy::named("chat").per_ip("10/min"));
    async fn fails() -> StatusCode {
        StatusCode::INTERNAL_SERVER_ERROR
    }
    let app = Router::new()
        .route("/api/chat", get(fails).merge(post(ok).layer(chat)))
        .layer(limiter.layer());
    let server = serve(app).await;
    assert_eq!(
        server.statuses("/api/chat", 6).await,
        vec![500, 500, 500, 429, 429, 429]
    );
}
