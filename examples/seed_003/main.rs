//! Seed 003: one budget per tenant, across all of its API keys and sessions.
//!
//! The page: 100 requests per 1-minute window per tenant, shared by every API key and
//! session of the tenant; over it, `429 Too Many Requests` with `Retry-After` and the JSON
//! body `{"error": "Rate limit exceeded", "code": "RATE_LIMIT_EXCEEDED", "details":
//! {"limit": 100, "window": "1m", "retryAfter": 23}}`; every response carries
//! `X-RateLimit-Limit` (100), `X-RateLimit-Remaining` and `X-RateLimit-Reset` (the Unix
//! time, in seconds, when the current window resets); a `304 Not Modified` answer to a
//! conditional request (`If-None-Match` with the ETag) does not count against the limit.
//!
//! How it maps onto tollgate: one policy on `/api/*`, keyed by the tenant
//! ([`Key::tenant`]), a fixed one-minute window ([`Rate::fixed`]: "the current window
//! resets"), given back when the response is a 304 ([`Policy::refund_if`]), with the
//! seed's body ([`ErrorBody::code_details`]) and `X-RateLimit-*` headers in Unix seconds. A
//! conditional request still needs budget to be answered at all: over the limit it gets
//! 429 like any other. Its charge counts until its 304 gives it back (on Redis, until that
//! refund's round trip is answered), so a tenant's conditional requests in flight hold
//! budget its other requests may be refused for meanwhile; on a fleet sharing Redis, an
//! instance that refused the tenant sees a refund made through another within a second
//! (`tollgate::redis::REFUSAL_CACHE_MAX_AGE`).
//!
//! Authentication is a stand-in: [`CREDENTIALS`] maps API keys (`Authorization: Bearer
//! <key>`) and session ids (cookie `session=<id>`) to tenants; other requests to `/api` get
//! `401` before the tenant's budget is looked at. Those `401`s are limited per client IP
//! and per client network ([`tollgate_suite::failed_auth_guard`]: an IPv6 client is counted
//! by its /64, and one holding a /48 holds 65,536 of those), by [`Limiter::guard`] outside
//! the authentication layer, with [`Policy::failed_auth_per_ip`], so guessing credentials
//! is throttled, and, like every response but a CORS preflight's `204` (answered before
//! the limiters inside the authentication, see [`tollgate_suite::preflight_answer`]), they
//! carry the rate-limit headers (of that budget).
//!
//! That budget is this example's own rule, per client IP; the page's limits are per tenant.
//! Once an IP has spent it, every request from that IP is refused (`429`, with the guessing
//! budget's headers) until the window lets one through, valid credentials included: the guard
//! answers before credentials are checked, or guesses could go on at full speed. So a client
//! guessing from an address others share (a NAT, an office) holds their valid requests back
//! for up to a minute too ([`Policy::failed_auth_per_ip`] says so).
//!
//! ```text
//! cargo run --example seed_003
//! curl -i -H 'Authorization: Bearer osk_acme_1' http://127.0.0.1:3003/api/tickets/t1
//! curl -i -H 'Authorization: Bearer osk_acme_1' -H 'If-None-Match: "etag-abc123"' http://127.0.0.1:3003/api/service-catalog
//! ```

use axum::extract::{Path, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tollgate::{ErrorBody, HeaderStyle, Key, Limiter, Policy, Rate, ResetFormat};

/// The tenant a request is authenticated as (a request extension).
#[derive(Debug, Clone, Copy)]
struct Tenant(&'static str);

/// Stand-in for the credential store: API keys and session ids → tenant.
const CREDENTIALS: [(&str, Tenant); 4] = [
    ("osk_acme_1", Tenant("acme")),
    ("osk_acme_2", Tenant("acme")),
    ("sess_acme_alice", Tenant("acme")),
    ("osk_initech_1", Tenant("initech")),
];

/// The service catalog's current ETag.
const CATALOG_ETAG: &str = "\"etag-abc123\"";

fn limiter() -> Result<Limiter, Box<dyn std::error::Error>> {
    let tenant = Key::tenant(|parts| parts.extensions.get::<Tenant>().map(|t| t.0.to_string()));
    Ok(Limiter::builder()
        .store(tollgate_suite::store_from_env("tollgate:seed_003:")?)
        .client_ip(tollgate_suite::client_ip_from_env()?)
        .route(
            "/api/*",
            Policy::named("tenant")
                .limit(tenant, Rate::fixed("100/min"))
                .refund_if(|status| status == StatusCode::NOT_MODIFIED),
        )
        .header_style(HeaderStyle::x_ratelimit(ResetFormat::UnixSeconds))
        .error_body(ErrorBody::code_details())
        .build()?)
}

/// The credential a request carries: a bearer API key, or else a `session` cookie.
fn credential(headers: &HeaderMap) -> Option<&str> {
    let bearer = tollgate_suite::bearer(headers);
    let session = || {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix("session="))
    };
    bearer.or_else(session).map(str::trim)
}

/// Credential → tenant, or `401`.
async fn authenticate(mut request: Request, next: Next) -> Response {
    // Before anything else (see `tollgate_suite::preflight_answer`).
    if let Some(answer) = tollgate_suite::preflight_answer(&request) {
        return answer;
    }
    // Only the API needs credentials (see `tollgate_suite::is_under`).
    if !tollgate_suite::is_under(request.uri().path(), "/api") {
        return next.run(request).await;
    }
    let tenant = credential(request.headers())
        .and_then(|c| CREDENTIALS.iter().find(|(k, _)| *k == c))
        .map(|(_, tenant)| *tenant);
    match tenant {
        Some(tenant) => {
            request.extensions_mut().insert(tenant);
            next.run(request).await
        }
        None => (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "Unauthorized", "code": "UNAUTHORIZED" })),
        )
            .into_response(),
    }
}

async fn tickets() -> Json<Value> {
    Json(json!({ "data": [{ "id": "t1" }, { "id": "t2" }] }))
}

async fn ticket(Path(id): Path<String>) -> Json<Value> {
    Json(json!({ "id": id, "status": "open" }))
}

async fn tickets_batch(Json(body): Json<Value>) -> Json<Value> {
    let ids = body["ids"].as_array().cloned().unwrap_or_default();
    let data: Vec<Value> = ids
        .iter()
        .map(|id| json!({ "id": id, "status": "open" }))
        .collect();
    Json(json!({ "data": data }))
}

/// The service catalog, answering conditional requests: `304 Not Modified` (no body) when
/// `If-None-Match` names the current ETag, compared weakly as RFC 9110 asks for
/// `If-None-Match` (`W/"etag-abc123"` matches too), or is `*`.
async fn service_catalog(headers: HeaderMap) -> Response {
    let weak = |tag: &str| {
        let tag = tag.trim();
        tag.strip_prefix("W/").unwrap_or(tag).to_string()
    };
    let not_modified = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == "*" || weak(tag) == CATALOG_ETAG);
    let etag = [(header::ETAG, CATALOG_ETAG)];
    if not_modified {
        (StatusCode::NOT_MODIFIED, etag).into_response()
    } else {
        (
            etag,
            Json(json!({ "items": [{ "id": "laptop", "name": "Laptop request" }] })),
        )
            .into_response()
    }
}

/// A path the API does not serve: answered behind the same layers as its routes, so that
/// "every API response" carries the rate-limit headers, a 404 included.
async fn not_found() -> (StatusCode, Json<Value>) {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": "Not found", "code": "NOT_FOUND" })),
    )
}

fn app(limiter: &Limiter) -> Router {
    Router::new()
        .route("/api/tickets", get(tickets))
        .route("/api/tickets/batch", post(tickets_batch))
        .route("/api/tickets/{id}", get(ticket))
        .route("/api/service-catalog", get(service_catalog))
        // Any unknown path, behind the layers too: under `/api` it needs credentials and is
        // counted like any request, with its headers; outside, nothing asks or counts.
        .fallback(not_found)
        // The layer added last runs first: the failed-authentication guard, then
        // authenticate, then limit per tenant.
        .layer(limiter.layer())
        .layer(middleware::from_fn(authenticate))
        .layer(limiter.guard(tollgate_suite::failed_auth_guard()))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tollgate_suite::main(run()).await
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let limiter = limiter()?;
    tollgate_suite::serve(app(&limiter), 3003).await?;
    Ok(())
}
