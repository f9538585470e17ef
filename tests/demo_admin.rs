//! Black-box tests of the demo's operators' router (`/admin/rate-limits`): mounted only
//! with `ADMIN_TOKEN`, refused without the right bearer token, and able to unblock a
//! locked-out e-mail and a client, and to give a client its own limit, without a restart.

mod common;

use common::{header, Example};
use reqwest::{RequestBuilder, StatusCode};
use serde_json::{json, Value};

const TOKEN: &str = "operator-test-token";
const ADMIN: &str = "/admin/rate-limits";

/// The demo behind a trusted proxy (us), with `env` on top.
fn demo(env: &[(&str, &str)]) -> Example {
    let mut all = vec![("TRUSTED_PROXIES", "127.0.0.1/32")];
    all.extend_from_slice(env);
    Example::start("demo", &all)
}

async fn status(request: RequestBuilder) -> u16 {
    request.send().await.unwrap().status().as_u16()
}

/// An operator's request (with the token) to `path` under the admin router.
fn admin(ex: &Example, method: reqwest::Method, path: &str) -> RequestBuilder {
    ex.request(method, &format!("{ADMIN}{path}"))
        .bearer_auth(TOKEN)
}

async fn json(request: RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn without_admin_token_the_router_is_not_mounted() {
    // Unset (the harness removes it from the environment) and set but empty: the same.
    for env in [
        &[][..],
        &[("ADMIN_TOKEN", "")][..],
        &[("ADMIN_TOKEN", "  ")][..],
    ] {
        let ex = demo(env);
        for path in ["", "/limits", "/store", "/buckets/auth/127.0.0.1"] {
            let url = format!("{ADMIN}{path}");
            assert_eq!(status(ex.get(&url)).await, 404, "{url} {env:?}");
            assert_eq!(status(ex.get(&url).bearer_auth("")).await, 404, "{url}");
        }
        let reset = format!("{ADMIN}/buckets/auth/127.0.0.1/reset");
        assert_eq!(status(ex.post(&reset).bearer_auth(TOKEN)).await, 404);
        // The API itself is served.
        assert_eq!(status(ex.get("/api/projects")).await, 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_or_wrong_token_is_refused() {
    let ex = demo(&[("ADMIN_TOKEN", TOKEN)]);
    let url = format!("{ADMIN}/limits");
    let wrong = [
        None,
        Some("operator-test-tokem".to_string()),
        Some(format!("{TOKEN}x")),
        Some(TOKEN[..TOKEN.len() - 1].to_string()),
        Some(String::new()),
    ];
    for token in wrong {
        let request = match &token {
            Some(t) => ex.get(&url).bearer_auth(t),
            None => ex.get(&url),
        };
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{token:?}");
        assert_eq!(header(&response, "www-authenticate"), "Bearer");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized");
    }
    // Not a bearer token at all: the raw token, or Basic.
    assert_eq!(
        status(ex.get(&url).header("authorization", TOKEN)).await,
        401
    );
    assert_eq!(
        status(ex.get(&url).basic_auth("admin", Some(TOKEN))).await,
        401
    );
    // A refused operator changed nothing.
    let reset = format!("{ADMIN}/buckets/default:ip/203.0.113.1/reset");
    assert_eq!(status(ex.post(&reset).bearer_auth("nope")).await, 401);
    // The right token.
    let (status, body) = json(ex.get(&url).bearer_auth(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(body["enabled"], true);
}

/// Guessing the operators' token: ten wrong tokens a minute per IP are answered 401, the
/// eleventh is refused (429) before the token is looked at, the right one included; other
/// IPs are not affected.
#[tokio::test(flavor = "multi_thread")]
async fn guessing_the_operators_token_is_limited_per_ip() {
    let ex = demo(&[("ADMIN_TOKEN", TOKEN)]);
    let url = format!("{ADMIN}/limits");
    let from = |ip: &str, token: &str| {
        ex.get(&url)
            .header("x-forwarded-for", ip)
            .bearer_auth(token)
    };
    for n in 0..10 {
        let response = from("198.51.100.40", &format!("guess-{n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "guess {n}");
        assert_eq!(
            header(&response, "x-ratelimit-remaining"),
            (9 - n).to_string()
        );
    }
    let refused = from("198.51.100.40", "guess-10").send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(!header(&refused, "retry-after").is_empty());
    assert_eq!(status(from("198.51.100.40", TOKEN)).await, 429);
    assert_eq!(status(from("198.51.100.41", TOKEN)).await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_see_the_table_and_the_store_and_unblock_a_locked_email() {
    let ex = demo(&[("ADMIN_TOKEN", TOKEN)]);
    let (_, limits) = json(admin(&ex, reqwest::Method::GET, "/limits")).await;
    let rules = limits["rules"].as_array().unwrap();
    let rule = |policy: &str| {
        rules
            .iter()
            .find(|r| r["policy"] == policy)
            .unwrap_or_else(|| panic!("{policy}"))
            .clone()
    };
    assert_eq!(rule("knowledge")["pattern"], "/api/knowledge/*");
    assert_eq!(rule("knowledge")["limits"][0]["quota"], "2000/min");
    assert_eq!(rule("chat")["source"], "per_route");
    assert_eq!(
        rule("sign-in-failures")["limits"][0]["algorithm"],
        "sliding window (exact)"
    );
    let (_, store) = json(admin(&ex, reqwest::Method::GET, "/store")).await;
    assert_eq!(store, json!({ "mode": "memory" }));

    // Five failed sign-ins lock the e-mail for 30 minutes.
    let ip = "198.51.100.70";
    let sign_in = |email: &str, password: &str| {
        ex.post("/api/auth/sign-in")
            .header("x-forwarded-for", ip)
            .json(&json!({ "email": email, "password": password }))
    };
    for _ in 0..5 {
        assert_eq!(status(sign_in("locked@example.com", "wrong")).await, 401);
    }
    assert_eq!(
        status(sign_in("locked@example.com", "demo-password")).await,
        429
    );
    let bucket = "/buckets/sign-in-failures/locked%40example.com";
    let (code, state) = json(admin(&ex, reqwest::Method::GET, bucket)).await;
    assert_eq!(code, 200);
    assert_eq!(state["key"], "locked@example.com");
    assert_eq!(state["allowed"], false);
    assert_eq!(state["remaining"], 0);
    assert!(
        state["retryAfterMs"].as_u64().unwrap() > 1_700_000,
        "{state}"
    );
    // The operator resets it: the right password signs in at once.
    let (code, state) = json(admin(
        &ex,
        reqwest::Method::POST,
        &format!("{bucket}/reset"),
    ))
    .await;
    assert_eq!((code.as_u16(), state["remaining"].clone()), (200, json!(5)));
    assert_eq!(
        status(sign_in("locked@example.com", "demo-password")).await,
        200
    );
    // The AUTH bucket (per IP) counted all seven.
    let (_, auth) = json(admin(
        &ex,
        reqwest::Method::GET,
        &format!("/buckets/auth/{ip}"),
    ))
    .await;
    assert_eq!(auth["remaining"], 20 - 7);
}

/// The network buckets (per IPv6 /48) are found by any address of the network, and a
/// reset by one frees the network: an operator who looked a client up by its address read
/// a fresh budget (the address folded to its /64) and reset nothing.
#[tokio::test]
async fn operators_find_a_network_by_any_of_its_addresses() {
    let ex = demo(&[("ADMIN_TOKEN", TOKEN)]);
    for client in ["2001:db8:77:1::5", "2001:db8:77:2::9", "2001:db8:77:3::1"] {
        let wrong = ex
            .post("/api/auth/sign-in")
            .header("x-forwarded-for", client)
            .json(&json!({ "email": "net@example.com", "password": "wrong" }));
        assert_eq!(status(wrong).await, 401);
    }
    let remaining = |key: &'static str| {
        let path = format!("/buckets/auth-network/{key}");
        let request = admin(&ex, reqwest::Method::GET, &path);
        async move { json(request).await.1["remaining"].clone() }
    };
    for key in ["2001:db8:77:ffff::1", "2001:db8:77::%2F48"] {
        assert_eq!(remaining(key).await, json!(1000 - 3), "{key}");
    }
    let reset = admin(
        &ex,
        reqwest::Method::POST,
        "/buckets/auth-network/2001:db8:77:9::9/reset",
    );
    assert_eq!(json(reset).await.0, 200);
    assert_eq!(remaining("2001:db8:77:1::5").await, json!(1000));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_gets_its_own_limit_and_is_unblocked_without_a_restart() {
    let ex = demo(&[("ADMIN_TOKEN", TOKEN)]);
    let ip = "203.0.113.80";
    let projects = || ex.get("/api/projects").header("x-forwarded-for", ip);
    let override_url = format!("/overrides/ip/{ip}");
    let (code, _) =
        json(admin(&ex, reqwest::Method::PUT, &override_url).json(&json!({ "rate": "3/min" })))
            .await;
    assert_eq!(code, 200);
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(status(projects()).await);
    }
    assert_eq!(seen, vec![200, 200, 200, 429]);
    // Another client keeps the class's 500/min.
    let other = ex
        .get("/api/projects")
        .header("x-forwarded-for", "203.0.113.81");
    assert_eq!(status(other).await, 200);

    // Removing the override and resetting the override's bucket: admitted again.
    let removed = admin(&ex, reqwest::Method::DELETE, &override_url)
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 204);
    assert_eq!(status(projects()).await, 200);
    let (_, state) = json(admin(
        &ex,
        reqwest::Method::GET,
        &format!("/buckets/default:ip/{ip}"),
    ))
    .await;
    assert_eq!(state["remaining"], 500 - 4);
}
