//! The admin router (feature `admin`) over HTTP: a real axum server on loopback serving an
//! API behind the limiter and the admin router beside it, driven with reqwest.

mod common;

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use common::{clock_and_store, serve, status_of, Server};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tollgate::{Key, Limiter, Policy, Rate, Store};

async fn ok() -> &'static str {
    "ok"
}

fn limiter(store: impl Store) -> Limiter {
    Limiter::builder()
        .read_env(false)
        .store(store)
        .identity(common::user_header)
        .route(
            "/api/*",
            Policy::named("default").per_ip("3/min").per_user("5/min"),
        )
        .route(
            "/v1/*",
            Policy::named("v1").limit(Key::api_key("x-api-key"), "100/min"),
        )
        .global("1000/min")
        .bucket("sign-in-failures", Rate::exact("5/30min"))
        .build()
        .unwrap()
}

/// The API (`/api/*`, `/v1/*`) behind `limiter`, and its admin router under `/admin`.
async fn app(limiter: &Limiter) -> Server {
    let api = Router::new()
        .route("/api/{*rest}", get(ok))
        .route("/v1/{*rest}", get(ok))
        .layer(limiter.layer());
    serve(api.nest("/admin", tollgate::admin::router(limiter))).await
}

/// `rules` (`GET /limits`) are every rule of `limiter`, in its order.
fn assert_every_rule(rules: &[Value], limiter: &Limiter) {
    let policies: Vec<String> = limiter.describe().into_iter().map(|r| r.policy).collect();
    let served: Vec<&str> = rules
        .iter()
        .map(|r| r["policy"].as_str().unwrap())
        .collect();
    assert_eq!(served, policies);
}

async fn json_of(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "{status}"
    );
    (status, response.json().await.unwrap())
}

/// A per-route policy declared for a pattern shows it, and a guard's own limit is listed
/// (an operator sees every limit a request can meet).
#[tokio::test]
async fn per_route_patterns_and_guards_are_listed() {
    let (_clock, store) = clock_and_store();
    let limiter = limiter(store);
    let chat = limiter.policy_at("POST /api/chat", Policy::named("chat").per_user("10/min"));
    let plain = limiter.policy(Policy::named("export").per_ip("2/min"));
    let guard = limiter.guard(Policy::failed_auth_per_ip("10/min"));
    let api = Router::new()
        .route("/api/chat", axum::routing::post(ok).layer(chat))
        .route("/api/export", get(ok).layer(plain))
        .route("/api/{*rest}", get(ok))
        .layer(limiter.layer())
        .layer(guard);
    let server = serve(api.nest("/admin", tollgate::admin::router(&limiter))).await;
    let (status, body) = json_of(server.get("/admin/limits")).await;
    assert_eq!(status, 200);
    let rules = body["rules"].as_array().unwrap();
    let of = |policy: &str| {
        rules
            .iter()
            .find(|r| r["policy"] == policy)
            .unwrap_or_else(|| panic!("{policy} not listed: {body:#}"))
    };
    let chat = of("chat");
    assert_eq!(chat["source"], "per_route");
    assert_eq!(chat["pattern"], "POST /api/chat");
    assert_eq!(chat["path"], "/api/chat");
    assert_eq!(chat["methods"], json!(["POST"]));
    let export = of("export");
    assert_eq!(export["source"], "per_route");
    assert_eq!(export["pattern"], Value::Null);
    let guard = rules
        .iter()
        .find(|r| r["source"] == "guard")
        .unwrap_or_else(|| panic!("no guard listed: {body:#}"));
    assert_eq!(guard["limits"][0]["quota"], "10/min");
    assert_eq!(guard["limits"][0]["key"], "ip");
    // Still every rule of the limiter, in its order.
    assert_every_rule(rules, &limiter);
}

#[tokio::test]
async fn the_enforced_table_as_json() {
    let (_clock, store) = clock_and_store();
    let limiter = limiter(store);
    let server = app(&limiter).await;
    let (status, body) = json_of(server.get("/admin/limits")).await;
    assert_eq!(status, 200);
    assert_eq!(body["enabled"], true);
    let rules = body["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 4, "{body:#}");
    assert_eq!(
        rules[0],
        json!({
            "source": "route", "pattern": "/api/*", "path": "/api/*", "methods": [],
            "policy": "default", "exempt": false, "limits": [
                { "bucket": "default:ip", "key": "ip", "quota": "3/min", "limit": 3,
                  "windowSeconds": 60, "algorithm": "sliding window" },
                { "bucket": "default:user", "key": "user", "quota": "5/min", "limit": 5,
                  "windowSeconds": 60, "algorithm": "sliding window" },
            ],
        })
    );
    assert_eq!(rules[2]["source"], "global");
    assert_eq!(rules[2]["limits"][0]["quota"], "1000/min");
    assert_eq!(
        rules[3],
        json!({
            "source": "bucket", "pattern": null, "path": null, "methods": [],
            "policy": "sign-in-failures", "exempt": false, "limits": [
                { "bucket": "sign-in-failures", "key": "direct", "quota": "5/30min", "limit": 5,
                  "windowSeconds": 1800, "algorithm": "sliding window (exact)" },
            ],
        })
    );
    // Every rule of the limiter, in its order.
    assert_every_rule(rules, &limiter);
}

#[tokio::test]
async fn peek_changes_nothing_and_reset_unblocks_the_client() {
    let (_clock, store) = clock_and_store();
    let limiter = limiter(store);
    let server = app(&limiter).await;
    let peek = "/admin/buckets/default:ip/127.0.0.1";

    let (status, fresh) = json_of(server.get(peek)).await;
    assert_eq!(status, 200);
    assert_eq!(
        fresh,
        json!({ "bucket": "default:ip", "key": "127.0.0.1", "storedKey": "127.0.0.1",
                "allowed": true, "limit": 3, "remaining": 3, "resetAfterMs": 0,
                "retryAfterMs": null })
    );
    assert_eq!(server.statuses("/api/projects", 2).await, vec![200, 200]);
    // Peeking twice charges nothing: the client still has exactly one request left.
    for _ in 0..2 {
        let (_, state) = json_of(server.get(peek)).await;
        assert_eq!(state["remaining"], 1);
        assert_eq!(state["allowed"], true);
    }
    assert_eq!(server.statuses("/api/projects", 2).await, vec![200, 429]);
    let (_, blocked) = json_of(server.get(peek)).await;
    assert_eq!(blocked["allowed"], false);
    assert_eq!(blocked["remaining"], 0);
    let wait = blocked["retryAfterMs"].as_u64().unwrap();
    assert!(wait > 0 && wait <= 66_000, "{blocked}");

    let (status, after) = json_of(server.post(&format!("{peek}/reset"))).await;
    assert_eq!(status, 200);
    assert_eq!(after["remaining"], 3);
    assert_eq!(after["allowed"], true);
    assert_eq!(
        server.statuses("/api/projects", 4).await,
        vec![200, 200, 200, 429]
    );

    // A user's bucket, by the user's id.
    let alice = || server.get("/api/me").header("x-user", "alice");
    assert_eq!(status_of(alice()).await, 429, "the IP bucket is spent");
    let (_, state) = json_of(server.get("/admin/buckets/default:user/alice")).await;
    assert_eq!(state["remaining"], 5, "a refused request charged no bucket");
    json_of(server.post("/admin/buckets/default:ip/127.0.0.1/reset")).await;
    assert_eq!(status_of(alice()).await, 200);
    let (_, state) = json_of(server.get("/admin/buckets/default:user/alice")).await;
    assert_eq!(state["remaining"], 4);

    // The summary counts what the limiter did: 2 + 1 + 3 + 1 admitted, 3 refused.
    let (_, summary) = json_of(server.get("/admin")).await;
    assert_eq!(
        summary,
        json!({ "enabled": true, "store": { "mode": "memory" }, "stats": {
            "admitted": 7, "refused": 3, "wouldRefuse": 0, "storeErrors": 0, "noPeer": 0 } })
    );
}

/// The global bucket has one key whatever key an operator names: a lookup by any key
/// shows what every request spent, and a reset by any key frees it.
#[tokio::test]
async fn the_global_bucket_is_one_key_whatever_key_is_named() {
    let (_clock, store) = clock_and_store();
    let limiter = limiter(store);
    let server = app(&limiter).await;
    assert_eq!(server.statuses("/api/projects", 2).await, vec![200, 200]);
    let (status, state) = json_of(server.get("/admin/buckets/global/203.0.113.7")).await;
    assert_eq!(status, 200);
    assert_eq!(
        (&state["limit"], &state["remaining"], &state["storedKey"]),
        (&json!(1000), &json!(998), &json!("all"))
    );
    let (status, after) = json_of(server.post("/admin/buckets/global/anyone/reset")).await;
    assert_eq!(status, 200);
    assert_eq!(after["remaining"], 1000);
    let (_, state) = json_of(server.get("/admin/buckets/global/127.0.0.1")).await;
    assert_eq!(state["remaining"], 1000);
}

#[tokio::test]
async fn direct_buckets_and_keys_that_are_not_plain_segments() {
    let (_clock, store) = clock_and_store();
    let limiter = limiter(store);
    let server = app(&limiter).await;
    let email = "a/b+c@example.com";
    for _ in 0..5 {
        let _ = limiter.check("sign-in-failures", email).await.unwrap();
    }
    let url = "/admin/buckets/sign-in-failures/a%2Fb%2Bc%40example.com";
    let (status, state) = json_of(server.get(url)).await;
    assert_eq!(status, 200);
    assert_eq!(
        (&state["key"], &state["storedKey"]),
        (&json!(email), &json!(email))
    );
    assert_eq!(state["allowed"], false);
    // What a lookup reached, where it is not the key as given: an IPv6 address's /64, a
    // secret kind's digest.
    let (_, v6) = json_of(server.get("/admin/buckets/default:ip/2001:db8:1:2::9")).await;
    assert_eq!(
        (&v6["key"], &v6["storedKey"]),
        (&json!("2001:db8:1:2::9"), &json!("2001:db8:1:2::/64"))
    );
    let (_, secret) = json_of(server.get("/admin/buckets/v1:api_key/sk_live_1")).await;
    let stored = secret["storedKey"].as_str().unwrap();
    assert!(
        stored.starts_with('#') && !stored.contains("sk_live"),
        "{secret}"
    );
    assert_eq!(state["retryAfterMs"], 1_800_000);
    json_of(server.post(&format!("{url}/reset"))).await;
    assert!(
        limiter
            .check("sign-in-failures", email)
            .await
            .unwrap()
            .allowed
    );
}

#[tokio::test]
async fn overrides_set_at_runtime_take_effect_on_the_next_request() {
    let (_clock, store) = clock_and_store();
    let limiter = limiter(store);
    let server = app(&limiter).await;
    let server = &server;
    let key = |k: &'static str| move || server.get("/v1/invoices").header("x-api-key", k);
    let put = |path: &str, body: Value| {
        server
            .client
            .put(format!("{}{path}", server.base))
            .json(&body)
    };
    let delete = |path: &str| server.client.delete(format!("{}{path}", server.base));

    let (status, body) = json_of(put(
        "/admin/overrides/api_key/key-1",
        json!({"rate": "2/min"}),
    ))
    .await;
    assert_eq!(status, 200);
    let mut shown = body.clone();
    let stored_keys = shown.as_object_mut().unwrap().remove("storedKeys");
    assert_eq!(
        shown,
        json!({ "kind": "api_key", "key": "key-1", "limit": { "quota": "2/min", "limit": 2,
                "windowSeconds": 60, "algorithm": "sliding window" } })
    );
    let one = key("key-1");
    let two = key("key-2");
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(status_of(one()).await);
    }
    assert_eq!(seen, vec![200, 200, 429]);
    for _ in 0..3 {
        assert_eq!(
            status_of(two()).await,
            200,
            "other keys keep the endpoint's limit"
        );
    }

    let (_, list) = json_of(server.get("/admin/overrides")).await;
    let overrides = list["overrides"].as_array().unwrap();
    assert_eq!(overrides.len(), 1);
    assert_eq!(overrides[0]["kind"], "api_key");
    let stored = overrides[0]["key"].as_str().unwrap();
    assert!(
        stored.starts_with('#') && !stored.contains("key-1"),
        "API keys are stored hashed: {stored}"
    );
    // The reply to the `PUT` named the key as it is listed (a review: an IPv6 address's
    // reply gave it as sent, listed as its /64).
    assert_eq!(stored_keys, Some(json!([stored])));
    // What the list shows can be sent back: its algorithms' names are read too.
    for (algorithm, burst) in [
        ("sliding window", None),
        ("sliding window (exact)", None),
        ("fixed window", None),
        ("token bucket", Some(2)),
    ] {
        let mut again = json!({"rate": "2/min", "algorithm": algorithm});
        if let Some(burst) = burst {
            again["burst"] = json!(burst);
        }
        let (status, body) = json_of(put("/admin/overrides/api_key/key-3", again)).await;
        assert_eq!(status, 200, "{algorithm}: {body}");
        assert_eq!(body["limit"]["algorithm"], algorithm);
    }
    assert_eq!(
        delete("/admin/overrides/api_key/key-3")
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let (_, state) = json_of(server.get("/admin/buckets/override:api_key/key-1")).await;
    assert_eq!(
        (state["limit"].clone(), state["remaining"].clone()),
        (json!(2), json!(0))
    );

    let removed = delete("/admin/overrides/api_key/key-1")
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 204);
    assert_eq!(
        status_of(one()).await,
        200,
        "back to the endpoint's 100/min"
    );
    let (status, body) = json_of(delete("/admin/overrides/api_key/key-1")).await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str()),
        (404, Some("no_override"))
    );

    // A token bucket for one client IP: burst 1.
    let (status, body) = json_of(put(
        "/admin/overrides/ip/127.0.0.1",
        json!({"rate": "60/min", "burst": 1}),
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["limit"]["algorithm"], "token bucket");
    assert_eq!(body["limit"]["burst"], 1);
    assert_eq!(server.statuses("/api/x", 2).await, vec![200, 429]);
    json_of(put(
        "/admin/overrides/ip/127.0.0.1",
        json!({"rate": "100/min", "algorithm": "fixed"}),
    ))
    .await;
    assert_eq!(
        server.statuses("/api/x", 1).await,
        vec![200],
        "replaced, not added"
    );
}

#[tokio::test]
async fn mistakes_are_json_errors_with_their_status() {
    let (_clock, store) = clock_and_store();
    let limiter = limiter(store);
    let server = app(&limiter).await;
    let put = |path: &str| server.client.put(format!("{}{path}", server.base));
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            server.get("/admin/buckets/nope:ip/127.0.0.1"),
            404,
            "unknown_bucket",
        ),
        (
            server.post("/admin/buckets/nope/k/reset"),
            404,
            "unknown_bucket",
        ),
        (
            server.get("/admin/buckets/default:ip/not-an-ip"),
            400,
            "bad_key",
        ),
        (
            server.get("/admin/buckets/override:api_key/k"),
            404,
            "no_override",
        ),
        // A key that is not UTF-8 once decoded: the error shape (it was axum's plain text).
        (server.get("/admin/buckets/default:ip/%ff"), 400, "bad_key"),
        (
            server.post("/admin/buckets/default:ip/%ff/reset"),
            400,
            "bad_key",
        ),
        (
            server
                .client
                .delete(format!("{}/admin/overrides/api_key/%ff", server.base)),
            400,
            "bad_key",
        ),
        (
            put("/admin/overrides/tenant/t").json(&json!({"rate": "1/min"})),
            404,
            "unknown_key_kind",
        ),
        (
            put("/admin/overrides/api_key/k").json(&json!({"rate": "1/fortnight"})),
            400,
            "invalid_rate",
        ),
        (
            put("/admin/overrides/api_key/k").json(&json!({"rate": "1/min", "algorithm": "magic"})),
            400,
            "invalid_rate",
        ),
        (
            put("/admin/overrides/api_key/k")
                .json(&json!({"rate": "1/min", "algorithm": "fixed", "burst": 3})),
            400,
            "invalid_rate",
        ),
        (
            put("/admin/overrides/api_key/k").json(&json!({"limit": "1/min"})),
            400,
            "invalid_body",
        ),
        (
            put("/admin/overrides/api_key/k").body("{"),
            400,
            "invalid_body",
        ),
        // Paths and methods the router does not serve: the error shape too (they were
        // axum's empty answers).
        (server.get("/admin/nothing-here"), 404, "not_found"),
        (server.get("/admin/buckets/default:ip"), 404, "not_found"),
        (server.post("/admin/limits"), 405, "method_not_allowed"),
        (
            server.client.delete(format!(
                "{}/admin/buckets/default:ip/127.0.0.1",
                server.base
            )),
            405,
            "method_not_allowed",
        ),
    ];
    for (request, status, code) in cases {
        let (got, body) = json_of(request).await;
        assert_eq!(
            (got.as_u16(), body["error"].as_str()),
            (status, Some(code)),
            "{body}"
        );
        assert!(!body["message"].as_str().unwrap().is_empty());
    }
    assert!(limiter.overrides().is_empty(), "no mistake set anything");
}

/// A path the router does not serve is named as the client spelled it, not as the router
/// saw it once its mount point was taken off: `/admin//limits` was answered "no operators'
/// endpoint at `/limits`", an endpoint that exists.
#[tokio::test(flavor = "multi_thread")]
async fn a_path_it_does_not_serve_is_named_as_sent() {
    let (_clock, store) = clock_and_store();
    let limiter = limiter(store);
    let server = app(&limiter).await;
    for (path, named) in [
        ("/admin//limits", "`/admin//limits`"),
        ("/admin/nothing-here", "`/admin/nothing-here`"),
    ] {
        let (status, body) = json_of(server.get(path)).await;
        assert_eq!(status.as_u16(), 404, "{body}");
        assert_eq!(body["error"], "not_found", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.ends_with(named), "{path}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_mode_follows_redis() {
    let mut redis = tollgate_testkit::RedisServer::start();
    let store = tollgate::redis::FallbackStore::connect(
        tollgate::redis::RedisStore::open(&redis.url()).unwrap(),
        tollgate::redis::FallbackConfig::default()
            .with_timeout(Duration::from_millis(50))
            .with_probe_backoff(Duration::from_millis(20), Duration::from_millis(100)),
    )
    .await;
    let limiter = limiter(store.clone());
    let server = app(&limiter).await;
    let mode = || async { json_of(server.get("/admin/store")).await.1 };
    assert_eq!(mode().await, json!({ "mode": "shared" }));
    redis.kill();
    // Three failed requests open the circuit; they are answered from memory.
    assert_eq!(server.statuses("/api/x", 3).await, vec![200, 200, 200]);
    assert_eq!(mode().await, json!({ "mode": "fallback" }));
    redis.restart();
    let started = std::time::Instant::now();
    while mode().await["mode"] != "shared" {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still on memory"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
