//! Seed 002 (examples/seed_002) as a client sees it: a quota per API key per endpoint,
//! `X-RateLimit-Reset` in Unix milliseconds, and requests admitted without headers when the
//! rate-limit store is down.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{header, Example, RawConnection};
use reqwest::{Method, Response};
use tollgate_testkit::RedisServer;

/// The page's table: method, a path of that endpoint, quota per 60 s.
const TABLE: [(&str, &str, u64); 10] = [
    ("GET", "/v1/analytics", 30),
    ("GET", "/v1/analytics/daily", 30),
    ("GET", "/v1/analytics/by-user", 30),
    ("POST", "/v1/leads/add_to_campaign", 20),
    ("GET", "/v1/campaigns", 60),
    ("GET", "/v1/campaigns/{id}", 120),
    ("GET", "/v1/campaigns/{id}/statistics", 30),
    ("GET", "/v1/users", 60),
    ("GET", "/v1/users/{id}", 60),
    ("GET", "/v1/teams/me", 60),
];

async fn call(app: &Example, key: &str, method: &str, path: &str) -> Response {
    app.request(Method::from_bytes(method.as_bytes()).unwrap(), path)
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Checks the three headers of a limited response; returns (limit, remaining, reset ms).
fn x_ratelimit(response: &Response) -> (u64, u64, u64) {
    let reset = header(response, "x-ratelimit-reset");
    assert_eq!(reset.len(), 13, "reset in Unix milliseconds: {reset:?}");
    let reset: u64 = reset.parse().unwrap();
    let now = now_ms();
    assert!(
        reset + 1_000 >= now && reset <= now + 61_000,
        "reset {reset} not within 60 s after {now}"
    );
    (
        header(response, "x-ratelimit-limit").parse().unwrap(),
        header(response, "x-ratelimit-remaining").parse().unwrap(),
        reset,
    )
}

/// Spends `limit` requests of `key` on an endpoint (cycling ids through `{id}`), checking
/// each one's headers, then checks that the next request is refused as the page says.
async fn exhaust(app: &Example, key: &str, method: &str, path: &str, limit: u64) {
    for i in 1..=limit {
        let concrete = path.replace("{id}", &(i % 7).to_string());
        let r = call(app, key, method, &concrete).await;
        assert!(
            r.status().is_success(),
            "{method} {concrete} #{i}: {}",
            r.status()
        );
        let (l, remaining, _) = x_ratelimit(&r);
        assert_eq!(
            (l, remaining),
            (limit, limit - i),
            "{method} {concrete} #{i}"
        );
    }
    let concrete = path.replace("{id}", "99");
    let refused = call(app, key, method, &concrete).await;
    assert_eq!(refused.status(), 429, "{method} {concrete} #{}", limit + 1);
    let (l, remaining, reset) = x_ratelimit(&refused);
    assert_eq!((l, remaining), (limit, 0));
    let retry: u64 = header(&refused, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // The sliding window frees its first slot when the oldest request is 60 s old: no
    // later than the window's reset.
    assert!(
        now_ms() + (retry - 1) * 1000 <= reset,
        "retry {retry}, reset {reset}"
    );
    // On a 429 the reset is when the request fits again (see the test below).
    assert!(
        reset <= now_ms() + retry * 1000 + 1000,
        "retry {retry}, reset {reset}"
    );
}

#[tokio::test]
async fn every_endpoint_of_the_table_has_its_own_quota_per_api_key() {
    let app = Example::start("seed_002", &[]);
    for (method, path, limit) in TABLE {
        exhaust(&app, "key_alpha", method, path, limit).await;
    }
    // Another API key: untouched budgets.
    let r = call(&app, "key_beta", "GET", "/v1/campaigns/1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(x_ratelimit(&r).1, 119);
}

#[tokio::test]
async fn other_api_key_routes_fall_back_to_60_per_60_s_each() {
    let app = Example::start("seed_002", &[]);
    exhaust(&app, "key_alpha", "GET", "/v1/leads", 60).await;
    // POST /v1/campaigns is not in the table (GET is): its own default quota.
    exhaust(&app, "key_alpha", "POST", "/v1/campaigns", 60).await;
    // ... which GET /v1/campaigns does not share.
    let r = call(&app, "key_alpha", "GET", "/v1/campaigns").await;
    assert_eq!(r.status(), 200);
    assert_eq!(x_ratelimit(&r).1, 59);
    // The other key's default budgets are its own.
    let r = call(&app, "key_beta", "GET", "/v1/leads").await;
    assert_eq!(r.status(), 200);
    assert_eq!(x_ratelimit(&r), (60, 59, x_ratelimit(&r).2));
}

/// `HEAD` is served by an endpoint's `GET` handler: it spends the `GET` budget, for a
/// route of the table and for one of the default quota alike.
#[tokio::test]
async fn head_requests_spend_the_get_endpoint_budget() {
    let app = Example::start("seed_002", &[]);
    for (path, limit) in [("/v1/leads", 60), ("/v1/analytics", 30)] {
        for i in 1..=limit {
            let method = if i % 2 == 0 { "HEAD" } else { "GET" };
            let r = call(&app, "key_alpha", method, path).await;
            assert_eq!(r.status(), 200, "{method} {path} #{i}");
            assert_eq!(x_ratelimit(&r).1, limit - i, "{method} {path} #{i}");
        }
        for method in ["HEAD", "GET"] {
            let r = call(&app, "key_alpha", method, path).await;
            assert_eq!(r.status(), 429, "{method} {path} after {limit}");
        }
    }
}

/// A method HTTP does not define is no endpoint (axum answers 405): inventing methods buys
/// no fresh budgets. Every invented method on a route spends one shared default budget.
#[tokio::test]
async fn invented_methods_share_one_budget() {
    let app = Example::start("seed_002", &[]);
    for i in 1..=60u64 {
        let method = format!("X{i}");
        let r = call(&app, "key_alpha", &method, "/v1/leads").await;
        assert_eq!(r.status(), 405, "{method} /v1/leads");
        assert_eq!(x_ratelimit(&r).1, 60 - i, "{method} /v1/leads");
    }
    let r = call(&app, "key_alpha", "X61", "/v1/leads").await;
    assert_eq!(r.status(), 429, "an invented method after 60 others");
    // The endpoints the route serves keep their own budgets.
    let r = call(&app, "key_alpha", "GET", "/v1/leads").await;
    assert_eq!(r.status(), 200);
    assert_eq!(x_ratelimit(&r).1, 59);
}

#[tokio::test]
async fn no_api_key_is_401_and_unguarded_routes_are_not_limited() {
    let app = Example::start("seed_002", &[]);
    for key in [None, Some("key_unknown")] {
        let mut request = app.get("/v1/analytics");
        if let Some(k) = key {
            request = request.header("x-api-key", k);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 401);
        // The failed-authentication budget per IP (see tests/key_guessing.rs).
        assert_eq!(header(&r, "x-ratelimit-limit"), "20");
    }
    for _ in 0..100 {
        let r = app.get("/health").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-limit"), "");
    }
}

/// A path of the API spelled so that the key guard does not see `/v1` in it (`//v1/...`,
/// `/./v1/...`: axum answers 404, while the limiter reads it as a normaliser in front of the
/// app would, `/v1/...`) spends nothing of the key it carries, and is answered alike for a
/// partner's key and an invented one: keys nobody checked neither spend partners' budgets
/// nor tell which keys exist (nor fill the store with invented keys).
#[test]
fn a_key_the_guard_did_not_check_is_charged_nothing() {
    let app = Example::start("seed_002", &[]);
    let mut connection = RawConnection::connect(&app.base);
    let spellings = [
        "//v1/analytics",
        "/./v1/analytics",
        "/x/../v1/analytics",
        "/%761/analytics",
    ];
    for path in spellings {
        for key in ["key_alpha", "key_invented"] {
            for i in 0..5 {
                let r = connection.send("GET", path, &[("x-api-key", key)]);
                let seen = (
                    r.status,
                    r.header("x-ratelimit-limit"),
                    r.header("x-ratelimit-remaining"),
                );
                assert_eq!(seen, (404, "", ""), "{key} on {path} #{i}");
            }
        }
    }
    // The partner's budget of GET /v1/analytics is whole.
    let r = connection.send("GET", "/v1/analytics", &[("x-api-key", "key_alpha")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-remaining"), "29");
}

/// Every request of `key` admitted, none with an `X-RateLimit-*` header.
async fn assert_fails_open(app: &Example, key: &str, n: usize) {
    for i in 0..n {
        let r = call(app, key, "GET", "/v1/analytics").await;
        assert_eq!(r.status(), 200, "request #{i} with the store down");
        for name in [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ] {
            assert_eq!(header(&r, name), "", "{name} on request #{i}");
        }
    }
}

#[tokio::test]
async fn redis_unreachable_from_the_start_admits_without_headers() {
    let url = common::unreachable_redis_url();
    let app = Example::start("seed_002", &[("REDIS_URL", &url)]);
    // Twice the quota of /v1/analytics (30).
    assert_fails_open(&app, "key_alpha", 60).await;
    // The failed-authentication guard does not fail open: it counts in memory meanwhile,
    // so guessing keys is throttled through the outage (20 a minute per IP).
    let statuses: Vec<u16> = {
        let mut out = Vec::new();
        for n in 0..22 {
            let r = call(&app, &format!("guess-{n}"), "GET", "/v1/analytics").await;
            out.push(r.status().as_u16());
        }
        out
    };
    assert_eq!(statuses[..20], [401; 20]);
    assert_eq!(statuses[20..], [429, 429]);
}

#[tokio::test]
async fn on_redis_limits_apply_and_when_redis_dies_requests_pass_without_headers() {
    let mut redis = RedisServer::start();
    let app = Example::start("seed_002", &[("REDIS_URL", &redis.url())]);
    exhaust(&app, "key_alpha", "GET", "/v1/analytics", 30).await;
    redis.kill();
    // key_beta: key_alpha was just refused, and the Redis store remembers refusals until
    // their Retry-After without asking Redis (a known-exhausted key may stay refused).
    assert_fails_open(&app, "key_beta", 60).await;
}

/// "Honor Retry-After or wait until X-RateLimit-Reset, then retry": on a 429 both say when
/// the request fits again, also when the window's requests were spread out (a review: a
/// first request, 30 s, then 29 more: `Retry-After: 22` with a reset 60 s ahead, when the
/// window would be whole again).
#[tokio::test]
async fn a_refusals_reset_is_when_to_retry() {
    let app = Example::start("seed_002", &[]);
    let path = "/v1/campaigns/5/statistics"; // 30 per 60 s
    assert_eq!(call(&app, "key_alpha", "GET", path).await.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(3_000)).await;
    for i in 2..=30 {
        let r = call(&app, "key_alpha", "GET", path).await;
        assert_eq!(r.status(), 200, "#{i}");
    }
    let refused = call(&app, "key_alpha", "GET", path).await;
    assert_eq!(refused.status(), 429);
    let (_, _, reset) = x_ratelimit(&refused);
    let retry: u64 = header(&refused, "retry-after").parse().unwrap();
    let now = now_ms();
    // The first request leaves the window 60 s after it was sent, about 57 s from now.
    assert!((55..=58).contains(&retry), "Retry-After {retry}");
    assert!(
        reset + 1_000 >= now + (retry - 1) * 1_000 && reset <= now + retry * 1_000,
        "Retry-After {retry}, reset {} ms from now",
        reset as i64 - now as i64
    );
}
