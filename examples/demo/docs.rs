//! The demo's operations, registered once: each goes into the router and into
//! `GET /openapi.json` (operations carry `x-ratelimit`) and `GET /rate-limits` (an HTML
//! table). The limits shown come from the limiter's configuration
//! ([`Limiter::describe`]), never from text written by hand.

use std::sync::Arc;

use axum::handler::Handler;
use axum::http::header::CONTENT_TYPE;
use axum::http::Method;
use axum::routing::{get, on, MethodFilter};
use axum::Router;
use serde_json::{json, Map, Value};
use tollgate::{Algorithm, Limit, Limiter, Policy, RouteLimits, RuleSource};

use crate::handlers::AppState;
use crate::limits;

/// One operation of the API.
struct Operation {
    method: Method,
    /// The axum path template (`/api/documents/{id}/download`, `/api/cron/{*job}`).
    path: &'static str,
    summary: &'static str,
    /// The per-route policy attached to the route, if any.
    route_policy: Option<String>,
    /// The limiter buckets the handler charges itself.
    handler_buckets: &'static [&'static str],
}

/// One limit an operation is subject to.
struct Applied {
    policy: String,
    bucket: String,
    per: String,
    limit: Option<Limit>,
    /// `middleware` (the central table), `route` (a per-route policy) or `handler`.
    enforced_by: &'static str,
}

/// Routes plus the list of operations, built together.
pub struct Api {
    limiter: Limiter,
    router: Router<AppState>,
    operations: Vec<Operation>,
}

impl Api {
    /// An empty API limited by `limiter`.
    pub fn new(limiter: Limiter) -> Self {
        Self {
            limiter,
            router: Router::new(),
            operations: Vec::new(),
        }
    }

    /// An operation the middleware limits by its route class (or leaves alone).
    pub fn op<H, T>(
        self,
        method: Method,
        path: &'static str,
        summary: &'static str,
        handler: H,
    ) -> Self
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
        path: &'static str,
        summary: &'static str,
        buckets: &'static [&'static str],
        handler: H,
    ) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.router = self.router.route(path, on(filter(&method), handler));
        self.operations.push(Operation {
            method,
            path,
            summary,
            route_policy: None,
            handler_buckets: buckets,
        });
        self
    }

    /// An operation with its own policy (`limiter.policy_at(pattern, policy)` on the route)
    /// instead of its route class.
    pub fn with_policy<H, T>(
        mut self,
        method: Method,
        path: &'static str,
        summary: &'static str,
        policy: Policy,
        handler: H,
    ) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let name = policy.name().to_string();
        let pattern = format!("{method} {path}");
        let route = on(filter(&method), handler).layer(self.limiter.policy_at(&pattern, policy));
        self.router = self.router.route(path, route);
        self.operations.push(Operation {
            method,
            path,
            summary,
            route_policy: Some(name),
            handler_buckets: &[],
        });
        self
    }

    /// The router, with `GET /openapi.json` and `GET /rate-limits` added.
    pub fn into_router(self) -> Router<AppState> {
        let rows: Vec<(&Operation, Vec<Applied>)> = self
            .operations
            .iter()
            .map(|op| (op, self.applied(op)))
            .collect();
        let openapi = Arc::new(openapi(&rows).to_string());
        let html = Arc::new(html(&self.limiter.describe(), &rows));
        self.router
            .route(
                "/openapi.json",
                get(move || async move { ([(CONTENT_TYPE, "application/json")], openapi.to_string()) }),
            )
            .route(
                "/rate-limits",
                get(move || async move { ([(CONTENT_TYPE, "text/html; charset=utf-8")], html.to_string()) }),
            )
    }

    /// Every limit `op` is subject to, from the limiter's description.
    fn applied(&self, op: &Operation) -> Vec<Applied> {
        let all = self.limiter.describe();
        let (rule, enforced_by) = match &op.route_policy {
            Some(name) => (
                all.iter()
                    .find(|r| r.source == RuleSource::PerRoute && r.policy == *name)
                    .cloned(),
                "route",
            ),
            None => (
                self.limiter
                    .describe_route(&op.method, &example_path(op.path)),
                "middleware",
            ),
        };
        let mut out = Vec::new();
        if let Some(rule) = rule.filter(|r| !r.exempt) {
            let globals = all.iter().filter(|r| r.source == RuleSource::Global);
            for r in std::iter::once(&rule).chain(globals) {
                for l in &r.limits {
                    // Staff users' own buckets apply only where the identity function says.
                    if l.key == "user" && !limits::user_bucket_applies(op.path) {
                        continue;
                    }
                    out.push(Applied {
                        policy: r.policy.clone(),
                        bucket: l.bucket.clone(),
                        per: l.key.clone(),
                        limit: l.limit,
                        enforced_by,
                    });
                }
            }
        }
        for &name in op.handler_buckets {
            let per = limits::handler_bucket_key(name).map_or("direct", limits::Per::as_str);
            let limit = all
                .iter()
                .find(|r| r.source == RuleSource::Bucket && r.policy == name)
                .and_then(|r| r.limits.first())
                .and_then(|l| l.limit);
            out.push(Applied {
                policy: name.to_string(),
                bucket: name.to_string(),
                per: per.to_string(),
                limit,
                enforced_by: "handler",
            });
        }
        out
    }
}

fn filter(method: &Method) -> MethodFilter {
    MethodFilter::try_from(method.clone()).expect("a standard method")
}

/// A concrete path for a template, to classify it: `{id}` -> `1`, `{*rest}` -> `x`.
fn example_path(template: &str) -> String {
    template
        .split('/')
        .map(|seg| match seg {
            s if s.starts_with("{*") => "x",
            s if s.starts_with('{') => "1",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn algorithm(limit: &Limit) -> String {
    match limit.algorithm() {
        Algorithm::SlidingWindow { .. } => "sliding window".into(),
        Algorithm::SlidingLog => "sliding window (exact)".into(),
        Algorithm::TokenBucket { burst } => format!("token bucket (burst {burst})"),
        Algorithm::FixedWindow => "fixed window".into(),
        _ => "other".into(),
    }
}

/// The operation's `x-ratelimit` extension.
fn x_ratelimit(applied: &[Applied]) -> Value {
    let limits: Vec<Value> = applied
        .iter()
        .map(|a| {
            json!({
                "policy": a.policy,
                "bucket": a.bucket,
                "per": a.per,
                "quota": a.limit.map(|l| l.quota().to_string()),
                "limit": a.limit.map(|l| l.quota().count()),
                "windowSeconds": a.limit.map(|l| l.quota().period().as_secs()),
                "algorithm": a.limit.as_ref().map(algorithm),
                "enforcedBy": a.enforced_by,
            })
        })
        .collect();
    json!({ "throttled": !applied.is_empty(), "limits": limits })
}

fn openapi(rows: &[(&Operation, Vec<Applied>)]) -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for (op, applied) in rows {
        let path = op.path.replace("{*", "{");
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        let mut responses = json!({ "200": { "description": "OK" } });
        if !applied.is_empty() {
            responses["429"] = json!({ "$ref": "#/components/responses/TooManyRequests" });
        }
        let mut operation = json!({
            "summary": op.summary,
            "operationId": operation_id(&op.method, &path),
            "responses": responses,
            "x-ratelimit": x_ratelimit(applied),
        });
        if !params.is_empty() {
            operation["parameters"] = Value::Array(params);
        }
        let item = paths.entry(path).or_insert_with(|| json!({}));
        item[op.method.as_str().to_ascii_lowercase()] = operation;
    }
    let int = json!({ "schema": { "type": "integer" } });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "tollgate demo (seed 000)",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Most JSON API routes under /api/* are throttled. When a limit is hit the server answers 429 Too Many Requests with a JSON body that includes retryAfter (seconds) and the headers Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining and X-RateLimit-Reset. Counters use a rolling window. Each operation's x-ratelimit lists the limits it is subject to: per IP, per signed-in staff user (on /api/* outside /api/portal/ and /api/auth/), and the caps its handler applies itself.",
        },
        "paths": paths,
        "components": { "responses": { "TooManyRequests": {
            "description": "Rate limit exceeded; retry after the indicated delay.",
            "headers": {
                "Retry-After": int.clone(),
                "X-RateLimit-Limit": int.clone(),
                "X-RateLimit-Remaining": int.clone(),
                "X-RateLimit-Reset": int,
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

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn describe_limit(per: &str, limit: Option<Limit>, bucket: &str) -> String {
    match limit {
        Some(l) => format!(
            "{} per {} <small>({}, bucket {})</small>",
            escape(&l.quota().to_string()),
            escape(per),
            algorithm(&l),
            escape(bucket)
        ),
        None => format!("chosen per request, per {}", escape(per)),
    }
}

fn html(rules: &[RouteLimits], rows: &[(&Operation, Vec<Applied>)]) -> String {
    let mut out = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Rate limits</title>\n\
         <style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}</style></head><body>\n\
         <h1>Rate limits</h1>\n<p>Generated from the limiter's configuration; the same data is in \
         <a href=\"/openapi.json\">/openapi.json</a> (<code>x-ratelimit</code>). Counters use a rolling window. \
         Per-user buckets apply to signed-in staff on /api/* outside /api/portal/ and /api/auth/.</p>\n",
    );
    out.push_str("<h2>Rules</h2>\n<table><tr><th>Rule</th><th>Policy</th><th>Limits</th></tr>\n");
    for rule in rules {
        let what = match rule.source {
            RuleSource::Route => rule.pattern.clone().unwrap_or_default(),
            RuleSource::Global => "every request (global)".into(),
            RuleSource::PerRoute => "per-route policy".into(),
            RuleSource::Bucket => "applied by handlers".into(),
            _ => String::new(),
        };
        let limits: Vec<String> = if rule.exempt {
            vec!["not limited by the middleware".into()]
        } else {
            rule.limits
                .iter()
                .map(|l| {
                    let per = match rule.source {
                        RuleSource::Bucket => limits::handler_bucket_key(&rule.policy)
                            .map_or(l.key.clone(), |per| per.as_str().to_string()),
                        _ => l.key.clone(),
                    };
                    describe_limit(&per, l.limit, &l.bucket)
                })
                .collect()
        };
        out.push_str(&format!(
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>\n",
            escape(&what),
            escape(&rule.policy),
            limits.join("<br>")
        ));
    }
    out.push_str("</table>\n<h2>Operations</h2>\n<table><tr><th>Method</th><th>Path</th><th>Summary</th><th>Limits</th></tr>\n");
    for (op, applied) in rows {
        let limits: Vec<String> = applied
            .iter()
            .map(|a| {
                format!(
                    "{} [{}]",
                    describe_limit(&a.per, a.limit, &a.bucket),
                    a.enforced_by
                )
            })
            .collect();
        let limits = if limits.is_empty() {
            "not throttled".to_string()
        } else {
            limits.join("<br>")
        };
        out.push_str(&format!(
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>\n",
            op.method,
            escape(op.path),
            escape(op.summary),
            limits
        ));
    }
    out.push_str("</table>\n</body></html>\n");
    out
}
