//! The reference docs page the seed promises ("rate limit configuration is surfaced on the
//! reference docs page for each endpoint"): `GET /docs`, an HTML page with every
//! endpoint's limits, and `GET /openapi.json`, the same in OpenAPI (`x-ratelimit` on each
//! operation). Both are generated from the running limiter on each request
//! (`tollgate::publish`), so they show the YAML's limits as enforced, never a copy.

use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use tollgate::publish::Publisher;
use tollgate::Limiter;

/// What the pages say when limiting is off (`RATE_LIMIT_ENABLED=false`), in place of what
/// they say is enforced.
const OFF: &str = "Rate limiting is off (RATE_LIMIT_ENABLED=false): no limit is enforced.";

/// The gateway's endpoints, without their limits.
fn document(limiting: bool) -> Value {
    let op = |summary: &str, public: bool| {
        let mut op = json!({ "summary": summary, "responses": { "200": { "description": "OK" } } });
        if !public {
            op["security"] = json!([{ "apiKey": [] }]);
        }
        op
    };
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Endpointwise gateway (seed 004)",
            "version": env!("CARGO_PKG_VERSION"),
            "description": if limiting { "Each endpoint's limits are listed in its x-ratelimit, per API key (x-api-key) unless stated. A key's own limit (set when the key is created) stacks with them: the more restrictive applies." } else { OFF },
        },
        "paths": {
            "/v1/invoices": { "get": op("List invoices", false), "post": op("Create an invoice", false) },
            "/v1/reports": { "get": op("Revenue report", false) },
            "/v1/customers": { "get": op("List customers", false) },
            "/v1/status": { "get": op("Gateway status", true) },
        },
        "components": { "securitySchemes": { "apiKey": { "type": "apiKey", "in": "header", "name": "x-api-key" } } },
    })
}

/// `GET /docs` and `GET /openapi.json`, for `limiter`.
pub fn routes(limiter: &Limiter) -> Router {
    // The public status takes no key (authentication removes any it carries before the
    // limiter sees it): a limit per API key never applies there, so it is not published.
    // Every `/v1` request passes through the failed-authentication guard (`app`): a client
    // address it holds is refused on every operation, valid keys included.
    let publisher = Publisher::new(limiter)
        .applies(|_, path, limit| !(path == "/v1/status" && limit.key == "api_key"))
        .guard_at("/v1/*", "failed-auth");
    let limiting = limiter.is_enabled();
    let openapi = {
        let publisher = publisher.clone();
        move || {
            let mut doc = document(limiting);
            let result = publisher.annotate(&mut doc).map(|()| doc.to_string());
            async move { respond(result, "application/json") }
        }
    };
    let page = move || {
        let intro = "Every endpoint's rate limits, as the gateway enforces them: a token bucket per \
                     endpoint (sustained rate and burst), a daily cap and the gateway's global limit. \
                     Responses carry X-RateLimit-Limit, X-RateLimit-Remaining and X-RateLimit-Reset; \
                     a 429 also Retry-After. Per-key limits stack with these: the more restrictive applies. \
                     A client address that sent too many invalid keys (failed-auth, enforced by the \
                     guard) is refused on every endpoint, valid keys included, until it waits out \
                     its Retry-After.";
        let intro = if limiting { intro } else { OFF };
        let result = publisher.html_page("Rate limits", intro, Some(&document(limiting)));
        async move { respond(result, "text/html; charset=utf-8") }
    };
    Router::new()
        .route("/docs", get(page))
        .route("/openapi.json", get(openapi))
}

fn respond(
    result: Result<String, tollgate::publish::PublishError>,
    content_type: &'static str,
) -> Response {
    match result {
        Ok(body) => ([(CONTENT_TYPE, content_type)], body).into_response(),
        Err(e) => {
            tracing::error!("cannot publish the rate limits: {e}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
