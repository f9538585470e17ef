//! Seed 004 (examples/seed_004) as a client sees it: the YAML's token buckets per endpoint,
//! per-key limits stacking with them, the daily cap, the gateway's global limit, and the
//! page's 429 body byte for byte.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{header, Example};
use reqwest::Response;

const ADMIN: &str = "admin-test-token";
/// The environment that opens `/admin` with [`ADMIN`].
const WITH_ADMIN: (&str, &str) = ("ENDPOINTWISE_ADMIN_TOKEN", ADMIN);

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

async fn get(app: &Example, key: &str, path: &str) -> Response {
    app.get(path).header("x-api-key", key).send().await.unwrap()
}

/// (limit, remaining, reset) of a response that must carry all three, the reset in Unix
/// seconds no earlier than now and at most `within` seconds away.
fn x_ratelimit(response: &Response, within: f64) -> (u64, u64, u64) {
    let reset: u64 = header(response, "x-ratelimit-reset").parse().unwrap();
    let now = unix_now();
    assert!(
        reset as f64 + 1.0 >= now && reset as f64 <= now + within + 1.0,
        "reset {reset}, now {now}, expected within {within} s"
    );
    (
        header(response, "x-ratelimit-limit").parse().unwrap(),
        header(response, "x-ratelimit-remaining").parse().unwrap(),
        reset,
    )
}

/// The page's 429 body for `route` with the numbers of the response's headers.
async fn assert_page_body(refused: Response, route: &str, limit: u64) {
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "content-type"), "application/json");
    assert_eq!(header(&refused, "x-ratelimit-limit"), limit.to_string());
    assert_eq!(header(&refused, "x-ratelimit-remaining"), "0");
    let reset = header(&refused, "x-ratelimit-reset");
    assert!(!header(&refused, "retry-after").is_empty());
    let body = refused.text().await.unwrap();
    assert_eq!(
        body,
        format!(
            "{{\n  \"error\": \"rate_limit_exceeded\",\n  \"message\": \"You have exceeded the rate limit for {route}.\",\n  \"limit\": {limit},\n  \"remaining\": 0,\n  \"reset_at\": {reset}\n}}"
        )
    );
}

#[tokio::test]
async fn invoices_burst_of_20_then_sustained_100_per_min_and_the_pages_429() {
    let app = Example::start("seed_004", &[WITH_ADMIN]);
    let started = Instant::now();
    for i in 1..=20u64 {
        let r = get(&app, "ew_live_full", "/v1/invoices").await;
        assert_eq!(r.status(), 200, "invoice #{i}");
        // Limit: the sustained rate; reset: when the bucket is full again (0.6 s a token).
        let (limit, remaining, _) = x_ratelimit(&r, 12.0);
        assert_eq!((limit, remaining), (100, 20 - i));
    }
    let refused = get(&app, "ew_live_full", "/v1/invoices").await;
    // A token comes back every 0.6 s: the 21st is refused if the 20 took less than that.
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "too slow to test the burst"
    );
    assert_eq!(header(&refused, "retry-after"), "1");
    x_ratelimit(&refused, 12.0);
    assert_page_body(refused, "GET /v1/invoices", 100).await;

    // Sustained: one more request 0.6 s later.
    tokio::time::sleep(Duration::from_millis(650)).await;
    assert_eq!(
        get(&app, "ew_live_full", "/v1/invoices").await.status(),
        200
    );
    assert_eq!(
        get(&app, "ew_live_full", "/v1/invoices").await.status(),
        429
    );

    // Reports: a bucket of its own, burst 2, a token every 12 s.
    for i in 1..=2u64 {
        let r = get(&app, "ew_live_full", "/v1/reports").await;
        assert_eq!(r.status(), 200);
        let (limit, remaining, _) = x_ratelimit(&r, 24.0);
        assert_eq!((limit, remaining), (5, 2 - i));
    }
    let refused = get(&app, "ew_live_full", "/v1/reports").await;
    let retry: u64 = header(&refused, "retry-after").parse().unwrap();
    assert!((11..=12).contains(&retry), "Retry-After {retry}");
    assert_page_body(refused, "GET /v1/reports", 5).await;

    // Endpoint buckets are per partner key.
    let r = get(&app, "ew_live_limited", "/v1/reports").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-remaining"), "1");
}

#[tokio::test]
async fn a_key_limit_stacks_with_the_endpoint_limits_the_stricter_applies() {
    let app = Example::start("seed_004", &[WITH_ADMIN]);
    let key = "ew_live_limited"; // Limited Partner: 20/min on every route together
                                 // Reports: the endpoint (burst 2) is stricter than the key.
    assert_eq!(get(&app, key, "/v1/reports").await.status(), 200);
    assert_eq!(get(&app, key, "/v1/reports").await.status(), 200);
    let refused = get(&app, key, "/v1/reports").await;
    assert_page_body(refused, "GET /v1/reports", 5).await;
    // Invoices: the key (18 left of 20) is stricter than the endpoint (burst 20).
    for i in 1..=18 {
        let r = get(&app, key, "/v1/invoices").await;
        assert_eq!(r.status(), 200, "invoice #{i}");
    }
    let refused = get(&app, key, "/v1/invoices").await;
    // A rolling minute counted in tenths: the oldest tenth leaves within 66 s.
    let retry: u64 = header(&refused, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_page_body(refused, "GET /v1/invoices", 20).await;
    // The key's budget covers every route, routes without endpoint limits included.
    assert_page_body(
        get(&app, key, "/v1/customers").await,
        "GET /v1/customers",
        20,
    )
    .await;
    // Other keys are not affected.
    assert_eq!(
        get(&app, "ew_live_full", "/v1/customers").await.status(),
        200
    );
}

/// Without `ENDPOINTWISE_ADMIN_TOKEN` there is no admin token to guess: the token the
/// example once defaulted to (and any other) is refused, and no key is created.
#[tokio::test]
async fn without_an_admin_token_configured_admin_is_closed() {
    let app = Example::start("seed_004", &[("ENDPOINTWISE_ADMIN_TOKEN", "  ")]);
    let body = serde_json::json!({ "name": "Intruder", "scope": "write" });
    for token in ["admin-demo-token", "  ", "x"] {
        let r = app
            .post("/admin/keys")
            .header("authorization", format!("Bearer {token}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{token:?}");
    }
    // The partner keys still work.
    assert_eq!(
        get(&app, "ew_live_full", "/v1/invoices").await.status(),
        200
    );
}

/// The token is read trimmed: a stray newline in the variable does not lock operators out.
#[tokio::test]
async fn the_admin_token_is_read_trimmed() {
    let app = Example::start("seed_004", &[("ENDPOINTWISE_ADMIN_TOKEN", " s3cret\n")]);
    let r = app
        .post("/admin/keys")
        .bearer_auth("s3cret")
        .json(&serde_json::json!({ "name": "Ops", "scope": "read" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn keys_created_at_run_time_get_their_own_limit() {
    let app = Example::start("seed_004", &[WITH_ADMIN]);
    let create = |body: serde_json::Value, token: &str| {
        app.post("/admin/keys")
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let limited =
        serde_json::json!({ "name": "Tiny Partner", "scope": "read", "rate_limit": "3/min" });
    assert_eq!(
        create(limited.clone(), "wrong").await.unwrap().status(),
        401
    );
    let bad = serde_json::json!({ "name": "Bad", "scope": "read", "rate_limit": "3/fortnight" });
    let r = create(bad, ADMIN).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("fortnight"));

    // A body that is not the expected JSON: the gateway's error shape, whatever is wrong.
    let long_name = format!(r#"{{"name": "{}", "scope": "read"}}"#, "n".repeat(201));
    for (content_type, body, status) in [
        ("application/json", "{not json", 400),
        ("application/json", r#"{"name": "No scope"}"#, 422),
        ("text/plain", r#"{"name": "x", "scope": "read"}"#, 415),
        // A misspelt field is refused, not dropped: a key meant to have its own limit
        // would otherwise be created without one (a review: `rate-limit`, the page's CLI
        // flag, gave a key 10 of 10 against the 3/min meant).
        (
            "application/json",
            r#"{"name": "x", "scope": "read", "rate-limit": "3/min"}"#,
            422,
        ),
        ("application/json", r#"{"name": " ", "scope": "read"}"#, 422),
        ("application/json", &long_name, 422),
        (
            "application/json",
            r#"{"name": "a\u0000b\nc", "scope": "read"}"#,
            422,
        ),
    ] {
        let r = app
            .post("/admin/keys")
            .bearer_auth(ADMIN)
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{body}");
        let error: serde_json::Value = r.json().await.expect("a JSON error body");
        assert_eq!(error["error"], "invalid_request", "{body}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // A rate limit is shown as it was read.
    let sixty = serde_json::json!({ "name": "Sixty", "scope": "read", "rate_limit": "3/60s" });
    let r = create(sixty, ADMIN).await.unwrap();
    assert_eq!(r.status(), 201);
    let created: serde_json::Value = r.json().await.unwrap();
    assert_eq!(created["rate_limit"], "3/min");

    let r = create(limited, ADMIN).await.unwrap();
    assert_eq!(r.status(), 201);
    let created: serde_json::Value = r.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    assert_eq!(created["rate_limit"], "3/min");
    for path in ["/v1/invoices", "/v1/customers", "/v1/invoices"] {
        assert_eq!(get(&app, &key, path).await.status(), 200, "{path}");
    }
    assert_page_body(
        get(&app, &key, "/v1/customers").await,
        "GET /v1/customers",
        3,
    )
    .await;
    // A write of a read-scoped key counts like any call (it is refused after the key's
    // limits: 403 within them, see `a_read_scoped_keys_writes_are_counted_and_refused`),
    // so this spent key's write is a 429. Unknown keys: 401, before the key's limits, with
    // the failed-authentication budget's headers (see tests/key_guessing.rs).
    let r = app
        .post("/v1/invoices")
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let r = get(&app, "ew_live_nobody", "/v1/invoices").await;
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "x-ratelimit-limit"), "20");
}

/// `ENDPOINTWISE_DAILY_CAP` set but empty is the default cap, as an empty Redis URL is no
/// Redis (a review: the example exited, "empty quota").
#[tokio::test]
async fn an_empty_daily_cap_setting_is_the_default_cap() {
    let app = Example::start("seed_004", &[("ENDPOINTWISE_DAILY_CAP", "")]);
    let r = get(&app, "ew_live_full", "/v1/customers").await;
    assert_eq!(r.status(), 200);
    let published = app.get("/openapi.json").send().await.unwrap();
    let published = published.text().await.unwrap();
    assert!(
        published.contains(r#""bucket":"daily:api_key""#)
            && published.contains(r#""quota":"10000/day""#),
        "{published}"
    );
}

#[tokio::test]
async fn the_daily_cap_is_a_rolling_24_hours_per_key() {
    let app = Example::start("seed_004", &[("ENDPOINTWISE_DAILY_CAP", "25/day")]);
    for i in 1..=25u64 {
        // The API's root, an unknown path of it, is a call of the key too (a review: `/v1`
        // was answered without the key, spending no cap).
        let (path, status) = match i % 5 {
            0 => ("/v1", 404),
            _ => ("/v1/customers", 200),
        };
        let r = get(&app, "ew_live_full", path).await;
        assert_eq!(r.status(), status, "request #{i}: {path}");
        let (limit, remaining, _) = x_ratelimit(&r, 86_400.0);
        assert_eq!((limit, remaining), (25, 25 - i), "request #{i}: {path}");
    }
    let refused = get(&app, "ew_live_full", "/v1/customers").await;
    let (_, _, reset) = x_ratelimit(&refused, 86_400.0);
    // "Hard cap on calls per 24-hour window": the calls just made count for a day (not
    // until the next 00:00 UTC).
    assert!(
        reset as f64 >= unix_now() + 86_400.0 - 30.0,
        "reset {reset}: the cap is back before a day has passed"
    );
    let retry: u64 = header(&refused, "retry-after").parse().unwrap();
    assert!((retry as f64 - (reset as f64 - unix_now())).abs() <= 2.0);
    assert_page_body(refused, "GET /v1/customers", 25).await;
    // The cap covers every route of the key (invoices has tokens left); other keys are free.
    assert_eq!(
        get(&app, "ew_live_full", "/v1/invoices").await.status(),
        429
    );
    assert_eq!(
        get(&app, "ew_live_limited", "/v1/customers").await.status(),
        200
    );
}

/// A partner calling at a steady pace up to about 98% of the daily cap is admitted: the
/// cap counts in 60 segments (in ten, as files count `daily:`, a review's partners were
/// refused from about 92% of it: 6 of 91 calls at 100%, 3 of 86 at 95%). Scaled down: a
/// cap of 60 per 6 s, one call every 6 s / 57 (95%) through two windows.
#[tokio::test]
async fn a_partner_at_a_steady_pace_under_the_daily_cap_is_admitted() {
    let app = Example::start("seed_004", &[("ENDPOINTWISE_DAILY_CAP", "60/6s")]);
    let every = std::time::Duration::from_secs(6) / 57;
    let start = tokio::time::Instant::now();
    let mut refused = Vec::new();
    for i in 0..114u32 {
        tokio::time::sleep_until(start + every * i).await;
        let r = get(&app, "ew_live_full", "/v1/customers").await;
        if r.status() != 200 {
            refused.push((i, r.status().as_u16()));
        }
    }
    assert!(refused.is_empty(), "refused (call, status): {refused:?}");
}

/// The public status checks no key, so it charges none: a partner's key sent there (or an
/// invented one) spends no daily cap, and invented keys cannot fill the cap's share of the
/// store and push real partners' counts out.
#[tokio::test]
async fn the_public_status_charges_no_key() {
    let app = Example::start("seed_004", &[("ENDPOINTWISE_DAILY_CAP", "25/day")]);
    for i in 0..30 {
        let r = get(&app, "ew_live_full", "/v1/status").await;
        assert_eq!(r.status(), 200, "status #{i}");
        let r = get(&app, &format!("invented-{i}"), "/v1/status").await;
        assert_eq!(r.status(), 200, "status with an invented key #{i}");
    }
    let r = get(&app, "ew_live_full", "/v1/customers").await;
    assert_eq!(r.status(), 200);
    let (limit, remaining, _) = x_ratelimit(&r, 86_400.0);
    assert_eq!((limit, remaining), (25, 24));
}

#[tokio::test]
async fn the_gateway_global_limit_is_a_backstop_over_every_route() {
    let app = Example::start("seed_004", &[WITH_ADMIN]);
    // 1000/min as a token bucket: 1000 at once, then one every 60 ms. Sending takes a
    // while, so count what was admitted before the first refusal and allow the refill.
    // (`/v1/customers` has no endpoint limit of its own, and the full key no key limit.)
    let started = Instant::now();
    let mut admitted = 0u64;
    let refused = loop {
        let r = get(&app, "ew_live_full", "/v1/customers").await;
        if r.status() == 429 {
            break r;
        }
        assert_eq!(r.status(), 200);
        admitted += 1;
        assert!(admitted <= 2000, "the global limit never refused");
    };
    let refill = started.elapsed().as_millis() as u64 / 60 + 1;
    assert!(
        (1000..=1000 + refill).contains(&admitted),
        "{admitted} admitted in {:?}",
        started.elapsed()
    );
    assert_eq!(header(&refused, "retry-after"), "1");
    assert_page_body(refused, "GET /v1/customers", 1000).await;
    // Every route is behind it, whatever its own bucket says: of five requests sent at once
    // at most one can find a token that came back meanwhile.
    let send = || get(&app, "ew_live_full", "/v1/invoices");
    let (a, b, c, d, e) = tokio::join!(send(), send(), send(), send(), send());
    let refused: Vec<_> = [a, b, c, d, e]
        .into_iter()
        .filter(|r| r.status() == 429)
        .collect();
    assert!(refused.len() >= 4, "{} of 5 refused", refused.len());
    for r in refused {
        assert_page_body(r, "GET /v1/invoices", 1000).await;
    }
}

/// "Every gateway response includes rate limit headers": a path the gateway does not serve
/// too. It is answered behind the same layers as the routes: a 404 with the headers of the
/// global limit, counted like any call; without a key, the 401 of authentication.
#[tokio::test]
async fn an_unknown_path_is_a_404_with_the_rate_limit_headers() {
    let app = Example::start("seed_004", &[WITH_ADMIN]);
    let first = get(&app, "ew_live_full", "/v1/no-such-endpoint").await;
    assert_eq!(first.status(), 404);
    let (limit, remaining, _) = x_ratelimit(&first, 60.0);
    assert_eq!((limit, remaining), (1000, 999));
    let second = get(&app, "ew_live_full", "/v1/invoices/x/y").await;
    assert_eq!(second.status(), 404);
    assert_eq!(x_ratelimit(&second, 60.0).1, 998);
    // The API's root, with a slash or without, is an unknown path of it too (a review had
    // both answered an empty 404 without headers, uncounted).
    let mut remaining = 998;
    for root in ["/v1", "/v1/"] {
        let r = get(&app, "ew_live_full", root).await;
        assert_eq!(r.status(), 404, "{root}");
        remaining -= 1;
        let (limit, left, _) = x_ratelimit(&r, 60.0);
        assert_eq!((limit, left), (1000, remaining), "{root}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "not_found", "{root}");
    }
    for path in ["/v1/no-such-endpoint", "/v1", "/v1/", "/v1?x=1"] {
        // Anonymous, or with a key nobody issued: the API's root too (a review: `/v1`
        // was let through without a key, and 1,024 such requests from one address
        // emptied the gateway-wide backstop, every partner refused).
        for key in [None, Some("ew_live_invented")] {
            let mut request = app.get(path);
            if let Some(key) = key {
                request = request.header("x-api-key", key);
            }
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), 401, "{path} {key:?}");
            assert_eq!(header(&r, "x-ratelimit-limit"), "20", "{path} {key:?}");
        }
    }
    // A path outside the API is not the gateway's: a plain 404, which spends nothing.
    let outside = get(&app, "ew_live_full", "/elsewhere").await;
    assert_eq!(outside.status(), 404);
    assert_eq!(header(&outside, "x-ratelimit-limit"), "");
    let next = get(&app, "ew_live_full", "/v1/no-such-endpoint").await;
    assert_eq!(x_ratelimit(&next, 60.0).1, remaining - 1);
}

/// Anonymous traffic cannot spend the gateway-wide backstop every partner shares: the
/// public status route is limited per IP (60 a minute), and the operators' routes are
/// outside the partners' limits.
#[tokio::test]
async fn anonymous_traffic_cannot_lock_the_partners_out() {
    let app = Example::start("seed_004", &[WITH_ADMIN]);
    let started = Instant::now();
    // Any method: the ones the route does not serve (405) are anonymous requests too.
    let methods = ["GET", "POST", "OPTIONS", "DELETE", "PURGE", "HEAD"];
    let mut statuses = Vec::new();
    for n in 0..70 {
        let method = reqwest::Method::from_bytes(methods[n % methods.len()].as_bytes()).unwrap();
        let r = app.request(method, "/v1/status").send().await.unwrap();
        statuses.push(r.status().as_u16());
    }
    assert!(
        statuses[..60].iter().all(|&s| s == 200 || s == 405),
        "{statuses:?}"
    );
    assert_eq!(statuses[60..], [429; 10]);
    for n in 0..5 {
        let r = app
            .post("/admin/keys")
            .bearer_auth(ADMIN)
            .json(&serde_json::json!({ "name": format!("p{n}"), "scope": "read" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        assert_eq!(header(&r, "x-ratelimit-limit"), "");
    }
    // The 60 status calls spent the backstop; the 10 refused and the operators' calls did
    // not (they would leave at most 924). It refills a token every 60 ms meanwhile.
    let r = get(&app, "ew_live_full", "/v1/customers").await;
    assert_eq!(r.status(), 200);
    let remaining = x_ratelimit(&r, 60.0).1;
    let refilled = started.elapsed().as_millis() as u64 / 60 + 1;
    assert!(
        (939..=939 + refilled).contains(&remaining),
        "{remaining} remaining"
    );
}

/// A read-scoped key's writes are refused (403) only after they were counted like any call
/// of the key, with the headers every gateway response carries: holding a read key is no
/// way around the limits. `HEAD` is a read.
#[tokio::test]
async fn a_read_scoped_keys_writes_are_counted_and_refused() {
    let app = Example::start("seed_004", &[WITH_ADMIN]);
    // The page's "Limited Partner": 20/min for the key, across routes.
    let head = app
        .request(reqwest::Method::HEAD, "/v1/invoices")
        .header("x-api-key", "ew_live_limited")
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(x_ratelimit(&head, 60.0).1, 19);
    let write = || async {
        app.post("/v1/invoices")
            .header("x-api-key", "ew_live_limited")
            .send()
            .await
            .unwrap()
    };
    for n in 1..20u64 {
        let r = write().await;
        assert_eq!(r.status(), 403, "write {n}");
        assert_eq!(x_ratelimit(&r, 60.0), (20, 19 - n, x_ratelimit(&r, 60.0).2));
    }
    assert_eq!(write().await.status(), 429);
}
