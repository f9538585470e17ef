//! The demo's operations, registered once: each goes into the router and into
//! `GET /openapi.json` and `GET /rate-limits`. The limits in both come from the limiter
//! (`tollgate::publish`), never from text written by hand; this file only says what the
//! limiter cannot know: which route carries a per-route policy, which handler charges which
//! bucket with which key, and where a staff user's own bucket applies.

use axum::handler::Handler;
use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, on, MethodFilter};
use axum::Router;
use serde_json::{json, Map, Value};
use tollgate::publish::Publisher;
use tollgate::{Limiter, Policy};

use crate::handlers::AppState;
use crate::limits;

/// Routes, the OpenAPI document without its limits, and what the publisher must be told.
pub struct Api {
    limiter: Limiter,
    router: Router<AppState>,
    paths: Map<String, Value>,
    publisher: Publisher,
}

impl Api {
    /// An empty API limited by `limiter`.
    pub fn new(limiter: Limiter) -> Self {
        let mut publisher = Publisher::new(&limiter)
            // Staff users' own buckets apply only where the identity function looks.
            .applies(|_, path, limit| limit.key != "user" || limits::user_bucket_applies(path));
        for (bucket, _, per) in limits::handler_buckets() {
            publisher = publisher.bucket_key(bucket, per.as_str());
        }
        Self {
            limiter,
            router: Router::new(),
            paths: Map::new(),
            publisher,
        }
    }

    /// An operation the middleware limits by its route class (or leaves alone).
    pub fn op<H, T>(self, method: Method, path: &str, summary: &str, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.charging(method, path, summary, &[], handler)
    }

    /// An operation whose handler also charges `buckets` itself.
    pub fn charging<H, T>(
        mut self,
        method: Method,
        path: &str,
        summary: &str,
        buckets: &[&str],
        handler: H,
    ) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        if !buckets.is_empty() {
            self.publisher = self
                .publisher
                .handler_buckets(&format!("{method} {path}"), buckets);
        }
        self.router = self.router.route(path, on(filter(&method), handler));
        self.document(&method, path, summary);
        self
    }

    /// An operation with its own policy (`limiter.policy_at(pattern, policy)` on the route)
    /// instead of its route class.
    pub fn with_policy<H, T>(
        mut self,
        method: Method,
        path: &str,
        summary: &str,
        policy: Policy,
        handler: H,
    ) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let pattern = format!("{method} {path}");
        let route = on(filter(&method), handler).layer(self.limiter.policy_at(&pattern, policy));
        self.router = self.router.route(path, route);
        self.document(&method, path, summary);
        self
    }

    /// Adds the operation to the document (its limits are added when it is served).
    fn document(&mut self, method: &Method, path: &str, summary: &str) {
        let path = path.replace("{*", "{");
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        let mut operation = json!({
            "summary": summary,
            "operationId": operation_id(method, &path),
            "responses": { "200": { "description": "OK" } },
        });
        if !params.is_empty() {
            operation["parameters"] = Value::Array(params);
        }
        let item = self.paths.entry(path).or_insert_with(|| json!({}));
        item[method.as_str().to_ascii_lowercase()] = operation;
    }

    /// The router, with `GET /openapi.json` and `GET /rate-limits` added. Both are made from
    /// the limiter on each request, so they show what it enforces now.
    pub fn into_router(self) -> Router<AppState> {
        let doc = document(self.paths, self.limiter.is_enabled());
        let publisher = self.publisher;
        let openapi = {
            let (publisher, doc) = (publisher.clone(), doc.clone());
            move || {
                let mut doc = doc.clone();
                let annotated = publisher.annotate(&mut doc);
                async move {
                    match annotated {
                        Ok(()) => {
                            ([(CONTENT_TYPE, "application/json")], doc.to_string()).into_response()
                        }
                        Err(e) => failed(&e),
                    }
                }
            }
        };
        let html = move || {
            let intro = "Generated from the limiter's configuration; the same data is in /openapi.json \
                         (x-ratelimit). Counters use a rolling window. Per-user buckets apply to signed-in \
                         staff on /api/* outside /api/portal/ and /api/auth/.";
            let page = publisher.html_page("Rate limits", intro, Some(&doc));
            async move {
                match page {
                    Ok(page) => {
                        ([(CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
                    }
                    Err(e) => failed(&e),
                }
            }
        };
        self.router
            .route("/openapi.json", get(openapi))
            .route("/rate-limits", get(html))
    }
}

/// A publishing mistake (a typo in this file): logged, and a 500 for the docs page only.
fn failed(e: &tollgate::publish::PublishError) -> Response {
    tracing::error!("cannot publish the rate limits: {e}");
    StatusCode::INTERNAL_SERVER_ERROR.into_response()
}

fn filter(method: &Method) -> MethodFilter {
    MethodFilter::try_from(method.clone()).expect("a standard method")
}

/// `GET /api/documents/{id}/download` -> `get_api_documents_id_download`.
fn operation_id(method: &Method, path: &str) -> String {
    let words = path
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty());
    std::iter::once(method.as_str().to_ascii_lowercase())
        .chain(words.map(str::to_string))
        .collect::<Vec<_>>()
        .join("_")
}

/// The OpenAPI document around `paths`, with the demo's 429 response (its header style).
/// Its description says what is throttled, or that nothing is when limiting is off
/// (`RATE_LIMIT_ENABLED=false`).
fn document(paths: Map<String, Value>, limiting: bool) -> Value {
    let int = json!({ "schema": { "type": "integer" } });
    let text = json!({ "schema": { "type": "string" } });
    let description = if limiting {
        "Most JSON API routes under /api/* are throttled. When a limit is hit the server answers 429 Too Many Requests with a JSON body that includes retryAfter (seconds) and the headers Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining and X-RateLimit-Reset. Counters use a rolling window. Each operation's x-ratelimit lists the limits it is subject to: per IP, per signed-in staff user (on /api/* outside /api/portal/ and /api/auth/), and the caps its handler applies itself."
    } else {
        "Rate limiting is off (RATE_LIMIT_ENABLED=false): no request is throttled, and no operation lists limits."
    };
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "tollgate demo (seed 000)",
            "version": env!("CARGO_PKG_VERSION"),
            "description": description,
        },
        "paths": paths,
        "components": { "responses": { "TooManyRequests": {
            "description": "Rate limit exceeded; retry after the indicated delay.",
            "headers": {
                "Retry-After": int.clone(),
                "X-RateLimit-Limit": int.clone(),
                "X-RateLimit-Remaining": int.clone(),
                "X-RateLimit-Reset": int,
                "RateLimit-Policy": text.clone(),
                "RateLimit": text,
            },
            "content": { "application/json": { "schema": {
                "type": "object",
                "required": ["error", "message", "retryAfter"],
                "properties": {
                    "error": { "type": "string" },
                    "message": { "type": "string" },
                    "retryAfter": { "type": ["integer", "null"], "description": "seconds" },
                },
            } } },
        } } },
    })
}
