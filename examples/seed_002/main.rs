//! Seed 002: limits per API key and per endpoint, sliding windows, fail-open.
//!
//! The page: limits apply per API key (the `x-api-key` header), not per IP; each endpoint
//! of its table has its own quota (`GET /v1/analytics` 30 per 60 s, `GET /v1/campaigns/:id`
//! 120 per 60 s, ...), every other API-key route 60 per 60 s; each quota is a sliding
//! window. Responses (2xx and 429) carry `X-RateLimit-Limit`, `-Remaining` and `-Reset`
//! (Unix milliseconds); a 429 adds `Retry-After` (seconds). When the rate-limit backend is
//! unavailable the request is allowed, without `X-RateLimit-*` headers.
//!
//! The page tells a refused client to "honor Retry-After or wait until X-RateLimit-Reset,
//! then retry": two ways to one wait. So on a 429 `X-RateLimit-Reset` is when the request
//! fits again, the moment `Retry-After` (rounded up to whole seconds) points at, as in seed
//! 001 (`reset_at_retry: true` in `limits.yaml`); on an admitted response it is when the
//! window is whole again. (It was that on a 429 too: up to a window after `Retry-After`,
//! which a review found disagreeing with it.)
//!
//! How it maps onto tollgate: the table is `limits.yaml`, next to this file (exact sliding
//! windows, keyed by `x-api-key`, reset in Unix milliseconds, `on_store_failure: open`,
//! the store from `REDIS_URL`). The default rule is added here because its key is the API
//! key *and* the matched route: each undeclared endpoint counts its own 60 per 60 s, as the
//! declared ones do (the page's "falls back to 60 requests / 60 s per API key", read per
//! endpoint like the rest of its table). An endpoint is a method HTTP defines on a route
//! (`HEAD` is `GET`'s); methods invented by a client share one budget per route.
//!
//! Authentication is a stand-in for the page's API key guard: [`API_KEYS`] lists the valid
//! keys; `/v1` requests with another key (or none) get `401` before the per-key limits are
//! looked at; any other request loses its `x-api-key` (a key nobody checked is charged
//! nothing). Those `401`s are limited per client IP and per client network
//! ([`tollgate_suite::failed_auth_guard`]: an IPv6 client is counted by its /64, and one
//! holding a /48 holds 65,536 of those), by [`Limiter::guard`] outside the key guard, with
//! [`Policy::failed_auth_per_ip`], so guessing keys is throttled, and they carry the
//! rate-limit headers of that budget.
//!
//! That budget is this example's own rule, per client IP; the page's limits are per API key.
//! Once an IP has spent it, every request from that IP is refused (`429`, with the guessing
//! budget's headers) until the window lets one through, valid keys included: the guard
//! answers before keys are checked, or guesses could go on at full speed. So a client
//! guessing from an address others share (a NAT, an office) holds their valid requests back
//! for up to a minute too ([`Policy::failed_auth_per_ip`] says so).
//!
//! `GET /health` is outside the guard and not limited.
//!
//! ```text
//! cargo run --example seed_002
//! curl -i -H 'x-api-key: key_alpha' http://127.0.0.1:3002/v1/campaigns/42
//! ```

use axum::extract::{MatchedPath, Path, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tollgate::{Key, Limiter, Policy, Rate};

/// The table, as a file next to this example.
const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/seed_002/limits.yaml");

/// The header that carries the API key.
const API_KEY: &str = "x-api-key";

/// Stand-in for the API key store: the keys the guard accepts.
const API_KEYS: [&str; 2] = ["key_alpha", "key_beta"];

fn limiter() -> Result<Limiter, Box<dyn std::error::Error>> {
    // The API key and the route it was sent to; `None` without a key (the guard answers 401).
    let key_and_endpoint = Key::custom("api_key_endpoint", |parts| {
        let key = parts.headers.get(API_KEY)?.to_str().ok()?;
        let route = parts
            .extensions
            .get::<MatchedPath>()
            .map_or("(unmatched)", MatchedPath::as_str);
        Some(format!("{} {route} {key}", endpoint_method(&parts.method)))
    })
    .hashed();
    let default = Policy::named("default").limit(key_and_endpoint, Rate::exact("60/60s"));
    let client_ip = tollgate_suite::client_ip_from_env()?;
    Ok(Limiter::from_config_with(CONFIG, |builder| {
        builder.route("/v1/*", default).client_ip(client_ip)
    })?)
}

/// The method as an endpoint names it. `HEAD` is answered by the `GET` handler: the same
/// endpoint, the same budget. A method HTTP does not define (`FOO`) is no endpoint of any
/// route (axum answers 405): every such method shares one budget, so that inventing methods
/// neither buys fresh quotas nor fills the store with keys.
fn endpoint_method(method: &Method) -> &str {
    match *method {
        Method::HEAD => "GET",
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::PATCH
        | Method::DELETE
        | Method::OPTIONS
        | Method::CONNECT
        | Method::TRACE => method.as_str(),
        _ => "(other)",
    }
}

/// The API key guard: `/v1` requests need a known `x-api-key`; any other request loses the
/// key it carries.
async fn api_key_guard(mut request: Request, next: Next) -> Response {
    // Before anything else (see `tollgate_suite::preflight_answer`).
    if let Some(answer) = tollgate_suite::preflight_answer(&request) {
        return answer;
    }
    // Only the API needs a key (see `tollgate_suite::is_under`).
    if !tollgate_suite::is_under(request.uri().path(), "/v1") {
        // A key nobody checked is no key. The limiter reads a path as a normaliser in front
        // of the app would (`//v1/users` and `/./v1/users` are `GET /v1/users` to it, though
        // axum answers them 404): charged to the key, unchecked, they would let anyone spend
        // a partner's budgets with its key, tell a key in use from an invented one by the
        // budget left, and fill the store's share of a bucket with invented keys, pushing
        // partners' counts out.
        request.headers_mut().remove(API_KEY);
        return next.run(request).await;
    }
    let known = request
        .headers()
        .get(API_KEY)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|key| API_KEYS.contains(&key));
    if known {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "statusCode": 401, "message": "Invalid or missing API key" })),
        )
            .into_response()
    }
}

async fn analytics() -> Json<Value> {
    Json(json!({ "sent": 1200, "opened": 640, "replied": 85 }))
}

async fn add_to_campaign() -> Json<Value> {
    Json(json!({ "added": 1 }))
}

async fn campaigns() -> Json<Value> {
    Json(json!({ "data": [{ "id": "1", "name": "Spring launch" }] }))
}

async fn create_campaign() -> (StatusCode, Json<Value>) {
    (
        StatusCode::CREATED,
        Json(json!({ "id": "2", "name": "New campaign" })),
    )
}

async fn campaign(Path(id): Path<String>) -> Json<Value> {
    Json(json!({ "id": id, "name": format!("Campaign {id}") }))
}

async fn campaign_statistics(Path(id): Path<String>) -> Json<Value> {
    Json(json!({ "campaign": id, "sent": 300, "opened": 120 }))
}

async fn users() -> Json<Value> {
    Json(json!({ "data": [{ "id": "u1" }, { "id": "u2" }] }))
}

async fn user(Path(id): Path<String>) -> Json<Value> {
    Json(json!({ "id": id }))
}

async fn team() -> Json<Value> {
    Json(json!({ "id": "t1", "name": "Growth" }))
}

async fn leads() -> Json<Value> {
    Json(json!({ "data": [] }))
}

async fn health() -> &'static str {
    "ok"
}

fn app(limiter: &Limiter) -> Router {
    Router::new()
        .route("/v1/analytics", get(analytics))
        .route("/v1/analytics/daily", get(analytics))
        .route("/v1/analytics/by-user", get(analytics))
        .route("/v1/leads/add_to_campaign", post(add_to_campaign))
        .route("/v1/leads", get(leads))
        .route("/v1/campaigns", get(campaigns).post(create_campaign))
        .route("/v1/campaigns/{id}", get(campaign))
        .route("/v1/campaigns/{id}/statistics", get(campaign_statistics))
        .route("/v1/users", get(users))
        .route("/v1/users/{id}", get(user))
        .route("/v1/teams/me", get(team))
        // The layer added last runs first: the failed-authentication limit, the key
        // guard, then the per-key limits.
        .layer(limiter.layer())
        .layer(middleware::from_fn(api_key_guard))
        .layer(limiter.guard(tollgate_suite::failed_auth_guard()))
        // Added after the layers: neither guarded nor limited.
        .route("/health", get(health))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tollgate_suite::main(run()).await
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let limiter = limiter()?;
    tollgate_suite::serve(app(&limiter), 3002).await?;
    Ok(())
}
