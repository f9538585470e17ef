//! Seed 003 (examples/seed_003) as a client sees it: 100 requests per minute per tenant
//! across its keys and sessions, the page's 429 body byte for byte, 304s not counted.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{header, Example};
use reqwest::{RequestBuilder, Response};

const CATALOG_ETAG: &str = "\"etag-abc123\"";

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The limit is a fixed minute: start a counting test at least 5 s before the minute
/// ends, so the window does not reset half-way (waits at most 5 s).
async fn away_from_the_minute_boundary() {
    let into_minute = unix_now() % 60.0;
    if into_minute > 55.0 {
        tokio::time::sleep(Duration::from_secs_f64(60.1 - into_minute)).await;
    }
}

fn as_key(request: RequestBuilder, key: &str) -> RequestBuilder {
    request.bearer_auth(key)
}

fn as_session(request: RequestBuilder, session: &str) -> RequestBuilder {
    request.header("cookie", format!("theme=dark; session={session}"))
}

/// Limit, remaining, reset (Unix seconds) of a response that must carry all three; the
/// reset is the end of the current minute.
fn x_ratelimit(response: &Response) -> (u64, u64, u64) {
    let reset: u64 = header(response, "x-ratelimit-reset").parse().unwrap();
    let now = unix_now();
    assert_eq!(reset % 60, 0, "a fixed minute ends on a minute: {reset}");
    assert!(
        reset as f64 > now - 1.0 && reset as f64 <= now + 60.0,
        "reset {reset}, now {now}"
    );
    (
        header(response, "x-ratelimit-limit").parse().unwrap(),
        header(response, "x-ratelimit-remaining").parse().unwrap(),
        reset,
    )
}

#[tokio::test]
async fn one_budget_per_tenant_across_keys_and_sessions_then_the_pages_429() {
    let app = Example::start("seed_003", &[]);
    away_from_the_minute_boundary().await;
    for i in 1..=100u64 {
        let request = app.get(&format!("/api/tickets/t{i}"));
        let request = match i % 3 {
            0 => as_key(request, "osk_acme_1"),
            1 => as_key(request, "osk_acme_2"),
            _ => as_session(request, "sess_acme_alice"),
        };
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 200, "request #{i}");
        let (limit, remaining, _) = x_ratelimit(&r);
        assert_eq!((limit, remaining), (100, 100 - i), "request #{i}");
    }
    // The 101st, with any of the tenant's credentials, and on any route.
    let refused = as_key(app.post("/api/tickets/batch"), "osk_acme_1")
        .json(&serde_json::json!({ "ids": ["t1", "t2"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "content-type"), "application/json");
    let (limit, remaining, reset) = x_ratelimit(&refused);
    assert_eq!((limit, remaining), (100, 0));
    let retry = header(&refused, "retry-after");
    let retry_secs: u64 = retry.parse().unwrap();
    // Retry-After: until the window resets (rounded up).
    let until_reset = reset as f64 - unix_now();
    assert!(
        (retry_secs as f64 - until_reset).abs() <= 1.5 && (1..=60).contains(&retry_secs),
        "Retry-After {retry_secs}, reset in {until_reset:.2} s"
    );
    let body = refused.text().await.unwrap();
    assert_eq!(
        body,
        format!(
            r#"{{"error":"Rate limit exceeded","code":"RATE_LIMIT_EXCEEDED","details":{{"limit":100,"window":"1m","retryAfter":{retry}}}}}"#
        )
    );
    let r = as_session(app.get("/api/tickets"), "sess_acme_alice")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);

    // Another tenant: its own 100.
    let r = as_key(app.get("/api/tickets"), "osk_initech_1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(x_ratelimit(&r).1, 99);
}

#[tokio::test]
async fn not_modified_responses_do_not_count() {
    let app = Example::start("seed_003", &[]);
    away_from_the_minute_boundary().await;
    let conditional_on = |tag: String| {
        as_key(app.get("/api/service-catalog"), "osk_initech_1").header("if-none-match", tag)
    };
    let conditional = || conditional_on(CATALOG_ETAG.to_string());
    // The first request learns the ETag (counted).
    let first = as_key(app.get("/api/service-catalog"), "osk_initech_1")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "etag"), CATALOG_ETAG);
    assert_eq!(x_ratelimit(&first).1, 99);
    // 150 revalidations: all 304, none counted (more than the whole budget). Every other
    // one names the ETag weakly, as a cache that got it through a compressing proxy does:
    // `If-None-Match` compares weakly (RFC 9110), so it is a 304 too (it was a counted 200).
    for i in 0..150 {
        let tag = if i % 2 == 0 {
            CATALOG_ETAG.to_string()
        } else {
            format!("W/{CATALOG_ETAG}")
        };
        let r = conditional_on(tag).send().await.unwrap();
        assert_eq!(r.status(), 304, "revalidation #{i}");
        assert_eq!(header(&r, "x-ratelimit-limit"), "100");
        // Headers show the budget once the 304's charge is given back.
        assert_eq!(x_ratelimit(&r).1, 99, "revalidation #{i}");
    }
    // So 99 more counted requests fit, and the 100th after the first is refused.
    for i in 2..=100u64 {
        let r = as_key(app.get("/api/tickets"), "osk_initech_1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "counted request #{i}");
        assert_eq!(x_ratelimit(&r).1, 100 - i);
    }
    let r = as_key(app.get("/api/tickets"), "osk_initech_1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    // Over the limit, a conditional request is refused too: it cannot be answered unseen.
    assert_eq!(conditional().send().await.unwrap().status(), 429);
}

/// A tenant whose only requests this minute are 304s (given back: nothing counted) is told
/// the same reset as a counted request: the end of the current minute, not now.
#[tokio::test]
async fn a_304_on_an_unused_window_tells_the_minutes_end() {
    let app = Example::start("seed_003", &[]);
    away_from_the_minute_boundary().await;
    let revalidated = as_key(app.get("/api/service-catalog"), "osk_initech_1")
        .header("if-none-match", CATALOG_ETAG)
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status(), 304);
    let (limit, remaining, reset) = x_ratelimit(&revalidated);
    assert_eq!((limit, remaining), (100, 100));
    let counted = as_key(app.get("/api/tickets"), "osk_initech_1")
        .send()
        .await
        .unwrap();
    assert_eq!(x_ratelimit(&counted), (100, 99, reset));
}

#[tokio::test]
async fn unknown_credentials_are_401_with_the_failed_authentication_headers() {
    let app = Example::start("seed_003", &[]);
    for request in [
        app.get("/api/tickets"),
        as_key(app.get("/api/tickets"), "osk_nobody"),
        as_session(app.get("/api/tickets"), "sess_nobody"),
    ] {
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 401);
        // Every response carries the headers: here the failed-authentication budget per
        // IP (see tests/key_guessing.rs).
        assert_eq!(header(&r, "x-ratelimit-limit"), "20");
    }
}

/// "Every API response includes headers": an API path the example does not serve too. It is
/// answered behind the same layers as the routes: a 404 with the tenant's headers, counted
/// against the tenant like any request.
#[tokio::test]
async fn an_unknown_api_path_is_a_404_with_the_tenants_headers() {
    let app = Example::start("seed_003", &[]);
    away_from_the_minute_boundary().await;
    let r = as_key(app.get("/api/no-such-thing"), "osk_initech_1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (limit, remaining, _) = x_ratelimit(&r);
    assert_eq!((limit, remaining), (100, 99));
    let r = as_key(app.get("/api/tickets"), "osk_initech_1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(x_ratelimit(&r).1, 98);
    // Outside the API (a browser's favicon): a plain 404, no credentials asked, nothing
    // spent, not even the failed-authentication budget.
    for _ in 0..30 {
        let r = app.get("/favicon.ico").send().await.unwrap();
        assert_eq!(r.status(), 404);
    }
    let r = app.get("/api/tickets").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "x-ratelimit-remaining"), "19");
}

/// The bearer scheme is matched whatever its case (RFC 6750), and an empty bearer token
/// does not hide a session cookie.
#[tokio::test]
async fn a_lowercase_bearer_and_an_empty_bearer_beside_a_session_authenticate() {
    let app = Example::start("seed_003", &[]);
    let r = app
        .get("/api/tickets")
        .header("authorization", "bearer osk_initech_1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = as_session(app.get("/api/tickets"), "sess_acme_alice")
        .header("authorization", "Bearer ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
