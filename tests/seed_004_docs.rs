//! Seed 004's reference docs page: every endpoint's limits, from the running limiter, as
//! HTML (`/docs`) and OpenAPI (`/openapi.json`), public, and the same numbers the gateway
//! enforces.

mod common;

use common::{header, Example};
use serde_json::{json, Value};

/// The gateway with a daily cap other than the file's default, so a page that copied the
/// YAML instead of asking the limiter would show the wrong one.
fn gateway() -> Example {
    Example::start("seed_004", &[("ENDPOINTWISE_DAILY_CAP", "25/day")])
}

fn token_bucket(policy: &str, bucket: &str, per: &str, quota: &str, n: u64, burst: u64) -> Value {
    json!({ "policy": policy, "bucket": bucket, "per": per, "quota": quota, "limit": n,
            "windowSeconds": 60, "algorithm": "token bucket", "burst": burst,
            "enforcedBy": "middleware" })
}

#[tokio::test(flavor = "multi_thread")]
async fn openapi_lists_each_endpoints_limits_as_enforced() {
    let app = gateway();
    let response = app.get("/openapi.json").send().await.unwrap();
    assert_eq!(response.status(), 200, "public: no API key needed");
    assert_eq!(header(&response, "content-type"), "application/json");
    let doc: Value = response.json().await.unwrap();
    let limits = |path: &str, method: &str| doc["paths"][path][method]["x-ratelimit"].clone();
    let global = token_bucket("global", "global", "global", "1000/min", 1000, 1000);
    let daily = json!({ "policy": "daily", "bucket": "daily:api_key", "per": "api_key",
                        "quota": "25/day", "limit": 25, "windowSeconds": 86400,
                        "algorithm": "sliding window", "enforcedBy": "middleware" });
    // The failed-authentication guard every `/v1` request passes through: a client address
    // it holds is refused valid keys too, so every operation lists it.
    let guard = |bucket: &str, per: &str, n: u64| {
        json!({ "policy": "failed-auth", "bucket": bucket, "per": per,
                "quota": format!("{n}/min"), "limit": n, "windowSeconds": 60,
                "algorithm": "sliding window", "enforcedBy": "guard" })
    };
    let (guard_ip, guard_network) = (
        guard("failed-auth:ip", "ip", 20),
        guard("failed-auth:network:48", "network:48", 100),
    );
    assert_eq!(
        limits("/v1/invoices", "get"),
        json!({ "throttled": true, "limits": [
            token_bucket("get-v1-invoices", "get-v1-invoices:api_key", "api_key", "100/min", 100, 20),
            global, daily, guard_ip, guard_network,
        ]})
    );
    assert_eq!(
        limits("/v1/reports", "get")["limits"][0],
        token_bucket(
            "get-v1-reports",
            "get-v1-reports:api_key",
            "api_key",
            "5/min",
            5,
            2
        )
    );
    // The YAML limits GET only: a POST has the gateway's limits alone.
    assert_eq!(
        limits("/v1/invoices", "post")["limits"],
        json!([global, daily, guard_ip, guard_network])
    );
    // The public status takes no key: its limits are per client IP, per client network
    // and the gateway's, never the daily cap per API key.
    let status = limits("/v1/status", "get")["limits"].clone();
    let per: Vec<&str> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["per"].as_str().unwrap())
        .collect();
    assert_eq!(
        per,
        ["ip", "network:48", "global", "ip", "network:48"],
        "{status}"
    );
    assert_eq!(status[3]["enforcedBy"], "guard", "{status}");
    assert_eq!(
        doc["paths"]["/v1/reports"]["get"]["responses"]["429"]["$ref"],
        "#/components/responses/TooManyRequests"
    );
    // "Every gateway response includes" the `X-RateLimit-*` headers (the page): every
    // operation's responses list them, and the 429 its `Retry-After` and its body's shape.
    for (path, method) in [
        ("/v1/invoices", "get"),
        ("/v1/invoices", "post"),
        ("/v1/status", "get"),
    ] {
        let headers = &doc["paths"][path][method]["responses"]["200"]["headers"];
        for name in [
            "X-RateLimit-Limit",
            "X-RateLimit-Remaining",
            "X-RateLimit-Reset",
        ] {
            assert_eq!(
                headers[name]["$ref"],
                format!("#/components/headers/{name}"),
                "{path} {method}: {headers}"
            );
        }
    }
    let reset = &doc["components"]["headers"]["X-RateLimit-Reset"]["description"];
    assert!(
        reset.as_str().unwrap().contains("Unix time in seconds"),
        "{reset}"
    );
    let too_many = &doc["components"]["responses"]["TooManyRequests"];
    assert!(too_many["headers"]["Retry-After"].is_object(), "{too_many}");
    let example = &too_many["content"]["application/json"]["example"];
    let mut keys: Vec<&str> = example
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["error", "limit", "message", "remaining", "reset_at"],
        "{example}"
    );

    // The published burst is what the gateway admits at once.
    let burst = limits("/v1/reports", "get")["limits"][0]["burst"]
        .as_u64()
        .unwrap();
    let reports = || app.get("/v1/reports").header("x-api-key", "ew_live_full");
    for _ in 0..burst {
        assert_eq!(reports().send().await.unwrap().status(), 200);
    }
    assert_eq!(reports().send().await.unwrap().status(), 429);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_docs_page_shows_every_endpoint_with_its_limits() {
    let app = gateway();
    let page = app.get("/docs").send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    let html = page.text().await.unwrap();
    for row in [
        "<tr><td><code>GET /v1/invoices</code></td><td>get-v1-invoices</td><td>100/min per api_key <small>(token bucket, burst 20, bucket get-v1-invoices:api_key)</small></td></tr>",
        "<tr><td><code>every request (global)</code></td><td>daily</td><td>25/day per api_key <small>(sliding window, bucket daily:api_key)</small></td></tr>",
        "<tr><td>GET</td><td><code>/v1/reports</code></td><td>Revenue report</td><td>5/min per api_key <small>(token bucket, burst 2, bucket get-v1-reports:api_key)</small> [middleware]<br>1000/min per global",
        "<tr><td>GET</td><td><code>/v1/customers</code></td><td>List customers</td><td>1000/min per global",
    ] {
        assert!(html.contains(row), "{row}\nnot in\n{html}");
    }
    for (method, path) in [
        ("GET", "/v1/invoices"),
        ("POST", "/v1/invoices"),
        ("GET", "/v1/reports"),
        ("GET", "/v1/customers"),
        ("GET", "/v1/status"),
    ] {
        let row = format!("<tr><td>{method}</td><td><code>{path}</code></td>");
        assert_eq!(html.matches(&row).count(), 1, "{row}");
    }
}

/// With limiting off, neither page says a limit is enforced (a review: the OpenAPI
/// description said each endpoint's limits were listed, and the page's introduction said
/// "as the gateway enforces them", under a table saying limiting was off).
#[tokio::test(flavor = "multi_thread")]
async fn with_limiting_off_the_pages_say_so() {
    let app = Example::start("seed_004", &[("RATE_LIMIT_ENABLED", "false")]);
    let doc = app.json("/openapi.json").await;
    let description = doc["info"]["description"].as_str().unwrap();
    assert!(
        description.starts_with("Rate limiting is off"),
        "{description}"
    );
    assert_eq!(
        doc["paths"]["/v1/invoices"]["get"]["x-ratelimit"],
        json!({ "throttled": false, "limits": [] })
    );
    let page = app.get("/docs").send().await.unwrap().text().await.unwrap();
    assert!(
        page.contains("Rate limiting is off (RATE_LIMIT_ENABLED=false)"),
        "{page}"
    );
    assert!(!page.contains("as the gateway enforces them"), "{page}");
}
