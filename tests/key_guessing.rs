//! Black-box: a key-guessing flood from one IP against each seed example. Requests with no
//! credentials or unknown ones are answered 401 by the example's authentication; the
//! 21st within a minute from one IP is refused (429) before its credentials are looked at,
//! and every one of those answers carries the rate-limit headers (seeds 003 and 004 say
//! every response does). Known credentials spend nothing of that budget.

mod common;

use common::{header, Example};
use reqwest::RequestBuilder;

/// The failed-authentication budget of every seed example, per IP per minute.
const LIMIT: usize = 20;

/// Sends `LIMIT + 5` guesses made by `guess(n)` and checks the answers: 401s counting the
/// budget down, then 429s. Returns the first 429.
async fn flood(name: &str, guess: impl Fn(usize) -> RequestBuilder) -> reqwest::Response {
    let mut refused = None;
    for n in 0..LIMIT + 5 {
        let response = guess(n).send().await.unwrap();
        let status = response.status().as_u16();
        if n < LIMIT {
            assert_eq!(status, 401, "{name}: guess {n}");
            assert_eq!(
                header(&response, "x-ratelimit-limit"),
                LIMIT.to_string(),
                "{name}: guess {n}"
            );
            assert_eq!(
                header(&response, "x-ratelimit-remaining"),
                (LIMIT - 1 - n).to_string(),
                "{name}: guess {n}"
            );
            assert!(!header(&response, "x-ratelimit-reset").is_empty(), "{name}");
        } else {
            assert_eq!(status, 429, "{name}: guess {n}");
            assert_eq!(header(&response, "x-ratelimit-remaining"), "0", "{name}");
            let wait: u64 = header(&response, "retry-after").parse().unwrap();
            assert!((1..=60).contains(&wait), "{name}: Retry-After {wait}");
            refused.get_or_insert(response);
        }
    }
    refused.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_001_bearer_token_guessing_is_limited_per_ip() {
    let app = Example::start("seed_001", &[]);
    // Known tokens first: they spend nothing of the guessing budget.
    for _ in 0..30 {
        let r = app
            .get("/v1/contacts/1")
            .bearer_auth("tok_acme_ci")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-limit"), "1000");
    }
    let refused = flood("seed_001", |n| {
        let request = app.get("/v1/contacts/1");
        if n % 3 == 0 {
            request
        } else {
            request.bearer_auth(format!("tok_guess_{n}"))
        }
    })
    .await;
    // The page's reset is an HTTP date.
    assert!(
        header(&refused, "x-ratelimit-reset").ends_with(" GMT"),
        "{:?}",
        refused.headers()
    );
    // The guard runs before authentication: from this IP, a known token waits too.
    let r = app
        .get("/v1/contacts/1")
        .bearer_auth("tok_acme_ci")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_002_api_key_guessing_is_limited_per_ip() {
    let app = Example::start("seed_002", &[]);
    let refused = flood("seed_002", |n| {
        app.get("/v1/campaigns/42")
            .header("x-api-key", format!("key_guess_{n}"))
    })
    .await;
    // Reset in Unix milliseconds, as the page says.
    assert_eq!(header(&refused, "x-ratelimit-reset").len(), 13);
    // Outside the guard: not limited.
    assert_eq!(app.get("/health").send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_003_credential_guessing_is_limited_per_ip() {
    let app = Example::start("seed_003", &[]);
    let refused = flood("seed_003", |n| {
        let request = app.get("/api/tickets");
        if n % 2 == 0 {
            request.bearer_auth(format!("osk_guess_{n}"))
        } else {
            request.header("cookie", format!("session=sess_guess_{n}"))
        }
    })
    .await;
    // The page's 429 body, for this budget.
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "RATE_LIMIT_EXCEEDED");
    assert_eq!(body["details"]["limit"], LIMIT);
    assert_eq!(body["details"]["window"], "1m");
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_004_key_and_admin_token_guessing_share_one_budget_per_ip() {
    let app = Example::start("seed_004", &[]);
    let refused = flood("seed_004", |n| {
        if n % 2 == 0 {
            app.get("/v1/invoices")
                .header("x-api-key", format!("ew_live_guess_{n}"))
        } else {
            app.post("/admin/keys")
                .bearer_auth(format!("admin-guess-{n}"))
                .json(&serde_json::json!({ "name": "x", "scope": "read" }))
        }
    })
    .await;
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "rate_limit_exceeded");
    assert_eq!(body["limit"], LIMIT);
    // A read-only key writing is a 403, not a failed authentication: it is not counted,
    // but from an IP whose guesses are spent it waits like everything else.
    let r = app
        .post("/v1/invoices")
        .header("x-api-key", "ew_live_limited")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
}

/// Only the API asks for credentials: a path outside it (a browser's `/favicon.ico`) is a
/// plain 404 and spends nothing, not even the failed-authentication budget, which it did
/// (after 20 such requests, every request of the IP was refused).
#[tokio::test(flavor = "multi_thread")]
async fn paths_outside_the_api_spend_no_guessing_budget() {
    for (name, api) in [
        ("seed_001", "/v1/contacts"),
        ("seed_002", "/v1/leads"),
        ("seed_003", "/api/tickets"),
        ("seed_004", "/v1/invoices"),
    ] {
        let app = Example::start(name, &[]);
        for _ in 0..LIMIT + 5 {
            let r = app.get("/favicon.ico").send().await.unwrap();
            assert_eq!(r.status(), 404, "{name}");
            assert_eq!(header(&r, "x-ratelimit-limit"), "", "{name}");
        }
        let r = app.get(api).send().await.unwrap();
        assert_eq!(r.status(), 401, "{name}");
        assert_eq!(
            header(&r, "x-ratelimit-remaining"),
            (LIMIT - 1).to_string(),
            "{name}"
        );
    }
}

/// A CORS preflight carries no credentials (the Fetch standard): every example answers it
/// (204, allowing no cross-origin call) before asking for any, and before its limiters, so
/// it spends nothing. Answered 401 and counted, 20 preflights (a browser's cross-origin
/// calls) from an address turned every client of it away, valid keys included; let through
/// unauthenticated, they spent seed 004's gateway-wide backstop.
#[tokio::test(flavor = "multi_thread")]
async fn cors_preflights_spend_no_guessing_budget() {
    for (name, api) in [
        ("seed_001", "/v1/contacts"),
        ("seed_002", "/v1/campaigns"),
        ("seed_003", "/api/tickets"),
        ("seed_004", "/v1/invoices"),
        ("seed_004", "/admin/keys"),
    ] {
        let app = Example::start(name, &[]);
        for _ in 0..LIMIT + 5 {
            let r = app
                .request(reqwest::Method::OPTIONS, api)
                .header("origin", "https://app.partner.example")
                .header("access-control-request-method", "GET")
                .header("access-control-request-headers", "x-api-key, authorization")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 204, "{name} {api}");
            // Nothing spent: no bucket describes it (seed 004's gateway-wide backstop
            // included, which preflights let through unauthenticated could empty).
            assert_eq!(header(&r, "x-ratelimit-limit"), "", "{name} {api}");
        }
        let r = app.get(api).send().await.unwrap();
        assert_eq!(r.status(), 401, "{name} {api}");
        assert_eq!(
            header(&r, "x-ratelimit-remaining"),
            (LIMIT - 1).to_string(),
            "{name} {api}"
        );
    }
}
