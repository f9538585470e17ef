//! Seed 001: point-based rate limiting, one budget per organization.
//!
//! The page: every request costs 1 to 10 points by complexity (a single-resource read 1,
//! writes and multi-resource reads 3, aggregations and batch operations 5 to 10);
//! Enterprise organizations have 1000 points per minute, Build organizations 100, shared
//! by all of the organization's API keys; a request over budget gets `429 Too Many
//! Requests`; responses carry `X-RateLimit-Limit` (the organization's total points),
//! `X-RateLimit-Remaining` (points left), `X-RateLimit-Reset` (an HTTP date) and, on a
//! 429, `Retry-After` (seconds); either of the last two says when a refused client can
//! restart, so on a 429 the date is the one `Retry-After` names
//! ([`HeaderStyle::with_reset_at_retry`]), rounded up to the second: it may be a second
//! later than `Date` plus `Retry-After`, never earlier (after a step back of the system
//! clock, more: the memory store's clock slews it, and hyper keeps its cached `Date`
//! until the clock passes it again). On Redis, the date is on the Redis server's clock
//! and `Date` on the instance's: they differ by as much as the two clocks do (a review:
//! an instance 600 s ahead of Redis wrote a date 539 s before its own `Date`, 60 s after
//! the true time). `Retry-After`, a length of time, is true whatever the clocks say.
//!
//! How it maps onto tollgate: one policy, `points`, keyed by the organization
//! ([`Key::tenant`]) with its quota chosen per request from the organization's plan
//! ([`Policy::limit_with`]); every route of [`COSTS`] spends that same bucket with its own
//! cost. The budget is a rolling minute (points come back as the minute slides on, so a
//! refused client can retry as soon as `Retry-After` says, not at the top of the minute).
//!
//! Authentication is a stand-in for the page's bearer tokens: [`TOKENS`] maps each token to
//! its organization and plan; any other token (or none) is answered `401` before the
//! organization's budget is looked at. Those `401`s are limited per client IP and per
//! client network ([`tollgate_suite::failed_auth_guard`]: an IPv6 client is counted by its
//! /64, and one holding a /48 holds 65,536 of those), by [`Limiter::guard`] outside the
//! authentication layer, with [`Policy::failed_auth_per_ip`], so guessing tokens is
//! throttled, and they carry the rate-limit headers of that budget.
//!
//! That budget is this example's own rule, per client IP; the page's limits are per organization.
//! Once an IP has spent it, every request from that IP is refused (`429`, with the guessing
//! budget's headers) until the window lets one through, valid tokens included: the guard
//! answers before tokens are checked, or guesses could go on at full speed. So a client
//! guessing from an address others share (a NAT, an office) holds their valid requests back
//! for up to a minute too ([`Policy::failed_auth_per_ip`] says so).
//!
//! ```text
//! cargo run --example seed_001
//! curl -i -H 'Authorization: Bearer tok_globex_1' -X POST http://127.0.0.1:3001/v1/contacts/batch
//! ```

use axum::extract::{Path, Request};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tollgate::{HeaderStyle, Key, Limit, Limiter, Policy, Quota, ResetFormat};

/// A plan, and the points per minute its organizations get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// 1000 points per minute.
    Enterprise,
    /// 100 points per minute.
    Build,
}

impl Plan {
    fn points_per_minute(self) -> u64 {
        match self {
            Plan::Enterprise => 1000,
            Plan::Build => 100,
        }
    }

    /// The plan's points per rolling minute, counted in one-second segments: a client
    /// spending at a steady pace up to about 98% of its points is admitted (the default ten
    /// segments can refuse one spending more than about 91% of them).
    fn limit(self) -> Limit {
        tollgate_suite::steady_rolling(Quota::per_minute(self.points_per_minute()))
    }
}

/// The organization a request is authenticated as (a request extension).
#[derive(Debug, Clone, Copy)]
struct Org {
    id: &'static str,
    plan: Plan,
}

/// Stand-in for the token service: bearer token → organization and plan. Two tokens per
/// organization, to show that they share one budget.
const TOKENS: [(&str, Org); 4] = [
    (
        "tok_acme_ci",
        Org {
            id: "acme",
            plan: Plan::Enterprise,
        },
    ),
    (
        "tok_acme_web",
        Org {
            id: "acme",
            plan: Plan::Enterprise,
        },
    ),
    (
        "tok_globex_1",
        Org {
            id: "globex",
            plan: Plan::Build,
        },
    ),
    (
        "tok_globex_2",
        Org {
            id: "globex",
            plan: Plan::Build,
        },
    ),
];

/// What each route costs, in points. Routes under `/v1` that are not listed (and unknown
/// paths under it) cost 1. The limiter classifies a path as it stands once normalized (a
/// trailing slash, `//`, `/./`, percent-encoded letters): another spelling of a listed
/// route costs that route's points, also where the router answers it `404` or `405`
/// (`GET /v1/export/` costs 10), so no spelling is cheaper than the route.
const COSTS: [(&str, u64); 9] = [
    // Low complexity: a single resource.
    ("GET /v1/contacts/{id}", 1),
    // Moderate: writes, reads of several resources.
    ("GET /v1/contacts", 3),
    ("POST /v1/contacts", 3),
    ("PATCH /v1/contacts/{id}", 3),
    ("DELETE /v1/contacts/{id}", 3),
    // High: aggregations, batch operations, heavy reads.
    ("GET /v1/reports/summary", 5),
    ("POST /v1/contacts/batch", 10),
    ("GET /v1/export", 10),
    ("/v1/*", 1),
];

fn limiter() -> Result<Limiter, Box<dyn std::error::Error>> {
    let org = Key::tenant(|parts| parts.extensions.get::<Org>().map(|o| o.id.to_string()));
    let points = Policy::named("points").limit_with(org, |_org, parts| {
        let plan = parts.extensions.get::<Org>()?.plan;
        Some(plan.limit())
    });
    let mut builder = Limiter::builder()
        .store(tollgate_suite::store_from_env("tollgate:seed_001:")?)
        .client_ip(tollgate_suite::client_ip_from_env()?)
        // "Retry-After (seconds) or X-RateLimit-Reset (date) ... to know when you can
        // restart": on a 429 the date is when the request fits again, as Retry-After says.
        .header_style(HeaderStyle::x_ratelimit(ResetFormat::HttpDate).with_reset_at_retry());
    for (route, cost) in COSTS {
        // Clones of one policy: one shared `points` bucket, a cost per route.
        builder = builder.route(route, points.clone().cost(cost));
    }
    Ok(builder.build()?)
}

/// `Authorization: Bearer <token>` → the token's organization, or `401`.
async fn authenticate(mut request: Request, next: Next) -> Response {
    // Before anything else (see `tollgate_suite::preflight_answer`).
    if let Some(answer) = tollgate_suite::preflight_answer(&request) {
        return answer;
    }
    // Only the API needs credentials (see `tollgate_suite::is_under`).
    if !tollgate_suite::is_under(request.uri().path(), "/v1") {
        return next.run(request).await;
    }
    let org = tollgate_suite::bearer(request.headers())
        .and_then(|token| TOKENS.iter().find(|(t, _)| *t == token))
        .map(|(_, org)| *org);
    match org {
        Some(org) => {
            request.extensions_mut().insert(org);
            next.run(request).await
        }
        None => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({ "error": "missing or unknown bearer token" })),
        )
            .into_response(),
    }
}

fn contact(id: &str) -> Value {
    json!({ "id": id, "name": format!("Contact {id}") })
}

async fn list_contacts() -> Json<Value> {
    Json(json!({ "data": [contact("1"), contact("2"), contact("3")] }))
}

async fn get_contact(Path(id): Path<String>) -> Json<Value> {
    Json(contact(&id))
}

async fn create_contact() -> (StatusCode, Json<Value>) {
    (StatusCode::CREATED, Json(contact("4")))
}

async fn update_contact(Path(id): Path<String>) -> Json<Value> {
    Json(contact(&id))
}

async fn delete_contact() -> StatusCode {
    StatusCode::NO_CONTENT
}

async fn batch_contacts() -> Json<Value> {
    Json(json!({ "created": 100 }))
}

async fn summary() -> Json<Value> {
    Json(json!({ "contacts": 3, "by_country": { "DE": 1, "FR": 2 } }))
}

async fn export() -> Json<Value> {
    Json(json!({ "data": [contact("1"), contact("2"), contact("3")] }))
}

fn app(limiter: &Limiter) -> Router {
    Router::new()
        .route("/v1/contacts", get(list_contacts).post(create_contact))
        .route("/v1/contacts/batch", post(batch_contacts))
        .route(
            "/v1/contacts/{id}",
            get(get_contact)
                .patch(update_contact)
                .delete(delete_contact),
        )
        .route("/v1/reports/summary", get(summary))
        .route("/v1/export", get(export))
        // The layer added last runs first: the failed-authentication guard, then
        // authenticate, then limit per organization.
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
    tollgate_suite::serve(app(&limiter), 3001).await?;
    Ok(())
}
