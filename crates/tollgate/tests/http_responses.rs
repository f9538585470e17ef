//! Headers and 429 bodies end to end, exact values (the clock is manual: T0 = 2024-06-01
//! 00:00:00 UTC). The byte-level rules of each style are unit-tested in `respond`.

mod common;

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use common::{clock_and_store, header, serve, Server, T0};
use tollgate::{
    ErrorBody, HeaderStyle, Key, Limit, Limiter, ManualClock, MemoryStore, Policy, Quota, Rate,
    ResetFormat,
};

async fn ok() -> &'static str {
    "ok"
}

/// A server whose `/api/items` allows 5 per minute per IP (sliding, 6 s segments).
async fn server(style: HeaderStyle, body: ErrorBody) -> (ManualClock, Server) {
    let (clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .header_style(style)
        .error_body(body)
        .route("/api/*", Policy::named("default").per_ip("5/min"))
        .build()
        .unwrap();
    (clock, items_behind(&limiter).await)
}

/// A server whose `/api/items` is behind `limiter`'s layer.
async fn items_behind(limiter: &Limiter) -> Server {
    let app = Router::new()
        .route("/api/items", get(ok))
        .layer(limiter.layer());
    serve(app).await
}

/// The headers named `names` of a response, in order.
fn headers(r: &reqwest::Response, names: &[&str]) -> Vec<String> {
    names.iter().map(|n| header(r, n)).collect()
}

const X: [&str; 4] = [
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "retry-after",
];

#[tokio::test]
async fn every_reset_format_on_admitted_and_refused_responses() {
    // Admitted at T0: 4 left, the bucket is full again a minute later (a segment counts
    // until W after its last admission). Refused at T0 + 10 s: retry in 50 s.
    let cases = [
        (ResetFormat::UnixSeconds, "1717200060", "1717200060"),
        (ResetFormat::UnixMillis, "1717200060000", "1717200060000"),
        (ResetFormat::Seconds, "60", "50"),
        (
            ResetFormat::HttpDate,
            "Sat, 01 Jun 2024 00:01:00 GMT",
            "Sat, 01 Jun 2024 00:01:00 GMT",
        ),
    ];
    for (format, admitted_reset, refused_reset) in cases {
        let (clock, server) = server(HeaderStyle::x_ratelimit(format), ErrorBody::default()).await;
        let r = server.get("/api/items").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            headers(&r, &X),
            ["5", "4", admitted_reset, ""],
            "{format:?}"
        );
        assert!(r.headers().get("ratelimit").is_none());
        for _ in 0..4 {
            server.get("/api/items").send().await.unwrap();
        }
        clock.advance(Duration::from_secs(10));
        let r = server.get("/api/items").send().await.unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(
            headers(&r, &X),
            ["5", "0", refused_reset, "50"],
            "{format:?}"
        );
    }
}

#[tokio::test]
async fn ietf_fields_alone_and_combined() {
    let names = [
        "ratelimit-policy",
        "ratelimit",
        "x-ratelimit-limit",
        "retry-after",
    ];
    let (clock, server) = server(HeaderStyle::ietf(), ErrorBody::default()).await;
    let r = server.get("/api/items").send().await.unwrap();
    assert_eq!(
        headers(&r, &names),
        [
            r#""default-ip";q=5;w=60"#,
            r#""default-ip";r=4;t=60"#,
            "",
            ""
        ]
    );
    for _ in 0..4 {
        server.get("/api/items").send().await.unwrap();
    }
    clock.advance(Duration::from_millis(30_500));
    let r = server.get("/api/items").send().await.unwrap();
    assert_eq!(r.status(), 429);
    // 29.5 s to wait (the first admission, at T0, leaves at T0 + 60 s): rounded up.
    assert_eq!(
        headers(&r, &names),
        [
            r#""default-ip";q=5;w=60"#,
            r#""default-ip";r=0;t=30"#,
            "",
            "30"
        ]
    );

    // The default style: X-RateLimit-* (Unix seconds) and the IETF fields.
    let (_clock, server) = server_default().await;
    let r = server.get("/api/items").send().await.unwrap();
    assert_eq!(
        headers(
            &r,
            &[
                "x-ratelimit-limit",
                "x-ratelimit-remaining",
                "x-ratelimit-reset",
                "ratelimit"
            ]
        ),
        ["5", "4", "1717200060", r#""default-ip";r=4;t=60"#]
    );
}

#[tokio::test]
async fn no_fields_but_retry_after_and_then_none() {
    let every = [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "ratelimit-policy",
        "ratelimit",
        "retry-after",
    ];
    for (style, refused) in [
        (HeaderStyle::none(), ["", "", "", "", "", "50"]),
        (HeaderStyle::none().without_retry_after(), [""; 6]),
    ] {
        let (clock, server) = server(style.clone(), ErrorBody::default()).await;
        for _ in 0..5 {
            let r = server.get("/api/items").send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(headers(&r, &every), [""; 6], "{style:?}");
        }
        clock.advance(Duration::from_secs(10));
        let r = server.get("/api/items").send().await.unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(headers(&r, &every), refused, "{style:?}");
    }
}

async fn server_default() -> (ManualClock, Server) {
    server(HeaderStyle::default(), ErrorBody::default()).await
}

/// Exhausts the 5/min budget at T0, then asks again at T0 + 10 s.
async fn refusal(body: ErrorBody) -> reqwest::Response {
    let (clock, server) = server(HeaderStyle::x_ratelimit(ResetFormat::UnixSeconds), body).await;
    for _ in 0..5 {
        assert_eq!(server.status("/api/items").await, 200);
    }
    clock.advance(Duration::from_secs(10));
    let r = server.get("/api/items").send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "content-type"), "application/json");
    r
}

#[tokio::test]
async fn bodies_byte_for_byte() {
    let retry_after = refusal(ErrorBody::retry_after_camel()).await;
    assert_eq!(
        retry_after.text().await.unwrap(),
        r#"{"error":"Too Many Requests","message":"Rate limit exceeded; retry in 50 seconds.","retryAfter":50}"#
    );
    let with_code = refusal(ErrorBody::code_details()).await;
    assert_eq!(
        with_code.text().await.unwrap(),
        r#"{"error":"Rate limit exceeded","code":"RATE_LIMIT_EXCEEDED","details":{"limit":5,"window":"1m","retryAfter":50}}"#
    );
    let custom = refusal(ErrorBody::custom(
        |info| serde_json::json!({ "status": 429, "retry_in": info.retry_after_secs() }),
    ))
    .await;
    assert_eq!(
        custom.text().await.unwrap(),
        r#"{"retry_in":50,"status":429}"#
    );
}

/// Seed 004: a token bucket (sustained 100/min, burst 20) per API key, its pretty body.
#[tokio::test]
async fn seed_004_token_bucket_refusal() {
    let (_clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .header_style(HeaderStyle::x_ratelimit(ResetFormat::UnixSeconds))
        .error_body(ErrorBody::message().pretty())
        .route(
            "GET /v1/invoices",
            Policy::named("invoices")
                .limit(Key::api_key("x-api-key"), Rate::token_bucket("100/min", 20)),
        )
        .build()
        .unwrap();
    let app = Router::new()
        .route("/v1/invoices", get(ok))
        .layer(limiter.layer());
    let server = serve(app).await;
    let call = || {
        server
            .get("/v1/invoices")
            .header("x-api-key", "partner-key")
            .send()
    };
    let first = call().await.unwrap();
    assert_eq!(
        headers(&first, &X),
        ["100", "19", &(T0 + 1).to_string(), ""]
    );
    for _ in 0..19 {
        assert_eq!(call().await.unwrap().status(), 200);
    }
    let r = call().await.unwrap();
    assert_eq!(r.status(), 429);
    // 20 tokens spent at T0 refill at one per 0.6 s: full at T0 + 12 s, next token in 0.6 s.
    assert_eq!(headers(&r, &X), ["100", "0", "1717200012", "1"]);
    assert_eq!(
        r.text().await.unwrap(),
        "{\n  \"error\": \"rate_limit_exceeded\",\n  \"message\": \"You have exceeded the rate limit for GET /v1/invoices.\",\n  \"limit\": 100,\n  \"remaining\": 0,\n  \"reset_at\": 1717200012\n}"
    );
}

/// A new client refused because its bucket's share of the memory store is full of limited
/// clients (`Refusal::StoreFull`) is told that nothing remains until its retry: not "5
/// remaining, reset now" beside a `Retry-After` of half an hour (a client trusting
/// `Remaining` or `Reset` retried at once, and was refused again).
#[tokio::test]
async fn a_refusal_for_a_full_store_says_nothing_remains_until_the_retry() {
    let clock = ManualClock::new(Duration::from_secs(T0));
    let store = MemoryStore::builder()
        .max_entries(64)
        .shards(1)
        .clock(clock.clone())
        .build();
    let limiter = Limiter::builder()
        .store(store)
        .error_body(ErrorBody::message())
        .route(
            "/api/*",
            Policy::named("keys").limit(Key::api_key("x-api-key"), "5/30min"),
        )
        .build()
        .unwrap();
    let server = items_behind(&limiter).await;
    let call = |key: String| server.get("/api/items").header("x-api-key", key).send();
    // 64 keys, each at its limit: the share is full of limited keys.
    for i in 0..64 {
        for _ in 0..5 {
            assert_eq!(call(format!("junk-{i}")).await.unwrap().status(), 200);
        }
    }
    clock.advance(Duration::from_secs(1));
    let r = call("new".into()).await.unwrap();
    assert_eq!(r.status(), 429);
    // The first junk key leaves its window at T0 + 30 min: 1,799 s from now.
    assert_eq!(
        headers(
            &r,
            &[
                "x-ratelimit-limit",
                "x-ratelimit-remaining",
                "x-ratelimit-reset",
                "ratelimit",
                "retry-after"
            ]
        ),
        [
            "5",
            "0",
            &(T0 + 1_800).to_string(),
            r#""keys-api_key";r=0;t=1799"#,
            "1799"
        ]
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (&body["remaining"], &body["reset_at"]),
        (&serde_json::json!(0), &serde_json::json!(T0 + 1_800))
    );
}

/// A handler that charges a bucket of its own and shows it (as the demo's portal writes
/// do), behind the middleware's per-IP limit: the response shows both buckets in the IETF
/// lists, and `X-RateLimit-*` describe the one with less remaining, whichever wrote first.
#[tokio::test]
async fn a_handlers_own_bucket_and_the_middlewares_both_show() {
    use axum::extract::State;
    use axum::response::IntoResponse;

    async fn upload(State(limiter): State<Limiter>) -> axum::response::Response {
        let decision = limiter.check("uploads", "user-1").await.unwrap();
        let mut response = "stored".into_response();
        tollgate::merge_rate_limit_headers(
            response.headers_mut(),
            &limiter.rate_limit_headers("uploads", &decision),
        );
        response
    }

    let (_clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .bucket("uploads", Rate::sliding("3/min"))
        .route("/api/*", Policy::named("default").per_ip("5/min"))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/api/uploads", get(upload))
        .route("/api/items", get(ok))
        .with_state(limiter.clone())
        .layer(limiter.layer());
    let server = serve(app).await;
    let get = |path: &'static str| {
        let request = server.get(path);
        async move { request.send().await.unwrap() }
    };
    let names = [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "ratelimit-policy",
        "ratelimit",
    ];
    // Uploads has 2 left, the IP 4: the handler's bucket is the tighter one.
    let r = get("/api/uploads").await;
    assert_eq!(
        headers(&r, &names),
        [
            "3",
            "2",
            "\"uploads\";q=3;w=60, \"default-ip\";q=5;w=60",
            "\"uploads\";r=2;t=60, \"default-ip\";r=4;t=60",
        ]
    );
    // The IP spends 3 more elsewhere: with 0 left after the next upload (uploads: 1), it
    // is the tighter one and shows instead.
    for _ in 0..3 {
        assert_eq!(get("/api/items").await.status(), 200);
    }
    let r = get("/api/uploads").await;
    assert_eq!(
        headers(&r, &names),
        [
            "5",
            "0",
            "\"uploads\";q=3;w=60, \"default-ip\";q=5;w=60",
            "\"uploads\";r=1;t=60, \"default-ip\";r=0;t=60",
        ]
    );
}

/// A token bucket whose burst is above its count: the limit shown is the burst, refilled
/// in `w` at the quota's rate, so what is left never shows more than the limit.
#[tokio::test]
async fn a_token_bucket_wider_than_its_count_shows_its_burst() {
    let (_clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .route(
            "/api/*",
            Policy::named("default").per_ip(Rate::token_bucket("10/min", 30)),
        )
        .build()
        .unwrap();
    let server = items_behind(&limiter).await;
    let r = server.get("/api/items").send().await.unwrap();
    assert_eq!(
        headers(
            &r,
            &[
                "x-ratelimit-limit",
                "x-ratelimit-remaining",
                "ratelimit-policy",
                "ratelimit"
            ]
        ),
        [
            "30",
            "29",
            "\"default-ip\";q=30;w=180",
            "\"default-ip\";r=29;t=6"
        ]
    );
}

/// A per-key override's bucket is in `RateLimit-Policy` beside the policy's own (its value
/// is made per response: it is not one of the compiled limits).
#[tokio::test]
async fn an_overrides_bucket_is_listed_in_the_policy_field() {
    let (_clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .header_style(HeaderStyle::ietf())
        .route("/api/*", Policy::named("default").per_ip("5/min"))
        .build()
        .unwrap();
    limiter
        .set_override(&Key::ip(), "127.0.0.1", "2/min")
        .unwrap();
    let server = items_behind(&limiter).await;
    let r = server.get("/api/items").send().await.unwrap();
    assert_eq!(
        headers(&r, &["ratelimit-policy", "ratelimit"]),
        [
            r#""default-ip";q=5;w=60, "override-ip";q=2;w=60"#,
            r#""default-ip";r=4;t=60, "override-ip";r=1;t=60"#
        ]
    );
}

/// A quota chosen per key (`limit_with`) shows each key's own quota in
/// `RateLimit-Policy`, not the first key's: its value is made per response.
#[tokio::test]
async fn a_per_key_quota_shows_each_keys_own_quota_in_the_policy_field() {
    let (_clock, store) = clock_and_store();
    let org = Key::tenant(common::user_header);
    let limiter = Limiter::builder()
        .store(store)
        .header_style(HeaderStyle::ietf())
        .route(
            "/api/*",
            Policy::named("points").limit_with(org, |org, _parts| {
                let per_minute = if org == "acme" { 1000 } else { 100 };
                Some(Limit::sliding(Quota::per_minute(per_minute)))
            }),
        )
        .build()
        .unwrap();
    let server = items_behind(&limiter).await;
    for (org, policy) in [
        ("acme", r#""points-tenant";q=1000;w=60"#),
        ("tiny", r#""points-tenant";q=100;w=60"#),
        ("acme", r#""points-tenant";q=1000;w=60"#),
    ] {
        let r = server
            .get("/api/items")
            .header("x-user", org)
            .send()
            .await
            .unwrap();
        assert_eq!(header(&r, "ratelimit-policy"), policy, "{org}");
    }
}

/// A class's `RateLimit-Policy` values are cached by a bit per limit, numbered over its own
/// limits and then the global ones. A request whose path reads two ways (`PATCH
/// /v1/contacts/%2e%2e`: `/v1/*` and `/v1/contacts/{id}`) spends a second class, whose limits
/// took the bits the global limits have in a one-class request: an anonymous such request
/// had the mask of a signed-in request to `/v1/*` and filled its slot, so every signed-in
/// request after it was told `"contacts-ip";q=3` (a bucket it did not spend) instead of its
/// user bucket, for the life of the process; and the other way round. Found judging mutants
/// of the bit mask (`engine/plan.rs`, `engine/settle.rs`).
#[tokio::test]
async fn a_path_read_two_ways_does_not_change_the_policy_field_of_other_requests() {
    use axum::extract::ConnectInfo;
    use tower::ServiceExt;

    let (_clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .header_style(HeaderStyle::ietf())
        .identity(common::user_header)
        .route("/v1/*", Policy::named("api").per_ip("10/min"))
        .route(
            "PATCH /v1/contacts/{id}",
            Policy::named("contacts").per_ip("3/min"),
        )
        .global_policy(Policy::named("users").per_user("100/min"))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/v1/items", get(ok))
        .route("/v1/contacts/{id}", axum::routing::patch(ok))
        .layer(limiter.layer());
    let policy = |method: &str, path: &str, user: Option<&str>| {
        let mut request = http::Request::builder().method(method).uri(path);
        if let Some(user) = user {
            request = request.header("x-user", user);
        }
        let mut request = request.body(axum::body::Body::empty()).unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(std::net::SocketAddr::from((
                [192, 0, 2, 1],
                5000,
            ))));
        let app = app.clone();
        async move {
            let r = app.oneshot(request).await.unwrap();
            r.headers()
                .get("ratelimit-policy")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        }
    };
    // Both classes are spent, and shown.
    assert_eq!(
        policy("PATCH", "/v1/contacts/%2e%2e", None).await,
        r#""api-ip";q=10;w=60, "contacts-ip";q=3;w=60"#
    );
    // A signed-in request to /v1/* spends its IP and user buckets: it shows them.
    assert_eq!(
        policy("GET", "/v1/items", Some("alice")).await,
        r#""api-ip";q=10;w=60, "users-user";q=100;w=60"#
    );
    // The other way round: the signed-in request's value does not show for the two classes.
    assert_eq!(
        policy("PATCH", "/v1/contacts/%2e%2e", None).await,
        r#""api-ip";q=10;w=60, "contacts-ip";q=3;w=60"#
    );
}
