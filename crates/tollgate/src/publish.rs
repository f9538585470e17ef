//! Publishing a [`Limiter`]'s limits to an API's users (feature `openapi`): each operation
//! of an OpenAPI document annotated with the limits it is subject to (`x-ratelimit`), and
//! an HTML table of every rule, both generated from the limiter's own table
//! ([`Limiter::describe`]), so the published limits are the enforced ones.
//!
//! ```
//! use serde_json::json;
//! use tollgate::publish::Publisher;
//! use tollgate::{Limiter, Policy};
//!
//! let limiter = Limiter::builder()
//!     .route("/api/stripe/webhook", Policy::exempt())
//!     .route("/api/*", Policy::named("default").per_ip("500/min"))
//!     .bucket("sign-in-failures", "5/30min")
//!     .build()?;
//! let _chat = limiter.try_policy_at("POST /api/chat", Policy::named("chat").per_ip("60/min"))?;
//!
//! let mut doc = json!({
//!     "openapi": "3.1.0",
//!     "info": { "title": "Example", "version": "1" },
//!     "paths": {
//!         "/api/projects": { "get": { "summary": "List projects", "responses": {} } },
//!         "/api/chat": { "post": { "summary": "Chat", "responses": {} } },
//!         "/api/sign-in": { "post": { "summary": "Sign in", "responses": {} } },
//!         "/api/stripe/webhook": { "post": { "summary": "Webhook", "responses": {} } },
//!     },
//! });
//! let publisher = Publisher::new(&limiter)
//!     .handler_buckets("POST /api/sign-in", &["sign-in-failures"]) // the handler checks it
//!     .bucket_key("sign-in-failures", "email");                // with the e-mail as key
//! publisher.annotate(&mut doc)?;
//!
//! let projects = &doc["paths"]["/api/projects"]["get"];
//! assert_eq!(projects["x-ratelimit"], json!({ "throttled": true, "limits": [{
//!     "policy": "default", "bucket": "default:ip", "per": "ip", "quota": "500/min",
//!     "limit": 500, "windowSeconds": 60, "algorithm": "sliding window",
//!     "enforcedBy": "middleware",
//! }]}));
//! assert_eq!(projects["responses"]["429"]["$ref"], "#/components/responses/TooManyRequests");
//! assert_eq!(doc["paths"]["/api/chat"]["post"]["x-ratelimit"]["limits"][0]["bucket"], "chat:ip");
//! assert_eq!(doc["paths"]["/api/sign-in"]["post"]["x-ratelimit"]["limits"][1]["per"], "email");
//! assert_eq!(doc["paths"]["/api/stripe/webhook"]["post"]["x-ratelimit"]["throttled"], false);
//!
//! let page = publisher.html_page("Rate limits", "Limits per client.", Some(&doc))?;
//! assert!(page.contains("<td><code>/api/*</code></td><td>default</td><td>500/min per ip"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What an operation is subject to
//!
//! - The rule of the central table its method and path fall under
//!   ([`Limiter::describe_route`], enforced by `middleware`), or, for an operation a
//!   per-route policy's pattern matches ([`Limiter::policy_at`]) or declared with
//!   [`Publisher::route_policy`] (for a [`Limiter::policy`] without a pattern), that per-route
//!   policy (enforced by `route`); nothing for an exempt rule.
//! - The global limits, unless the rule is exempt.
//! - The direct-use buckets its handler checks ([`Publisher::handler_buckets`], enforced by
//!   `handler`).
//! - The limits of the guards whose layers it passes through ([`Publisher::guard_at`],
//!   enforced by `guard`), exempt rules included.
//!
//! The patterns given to the publisher are `[METHODS ]PATH`, the path a template of the
//! document (`/api/documents/{id}`); a trailing `/*` takes in every path under it.
//!
//! A limit whose key never exists on an operation (e.g. the identity function names no
//! user there) can be left out with [`Publisher::applies`].
//!
//! # `x-ratelimit`
//!
//! `{"throttled": bool, "limits": [..]}`, one entry per limit: `policy`, `bucket` (as in
//! the logs and the metrics, `default:ip`; the `RateLimit-Policy` header writes `:` as `-`,
//! `"default-ip"`), `per` (the key kind, or the key given by [`Publisher::bucket_key`]),
//! `quota` (`"500/min"`), `limit`, `windowSeconds`,
//! `algorithm` (`sliding window`, `sliding window (exact)`, `token bucket`, `fixed
//! window`), `burst` (token buckets only) and `enforcedBy` (`middleware`, `route`,
//! `handler`, `guard`). The numbers are `null` for a quota chosen per request. A throttled
//! operation without a `429` response gets one referring to
//! `#/components/responses/TooManyRequests`, which is added if the document has none.
//!
//! # Headers
//!
//! Each response of a throttled operation lists the rate-limit fields the limiter's
//! [`HeaderStyle`] writes (`X-RateLimit-Limit`, `-Remaining`, `-Reset` in its format,
//! `RateLimit-Policy`, `RateLimit`), each referring to `#/components/headers/<name>`, added
//! there if the document has none of that name. They are not `required`: what charges the
//! request writes them on any answer to it (a layer on every one, a guard that counts
//! failures on those it counts, a handler that adds its bucket's fields where it adds
//! them), and none when a policy failing open admits a request the store could not
//! charge, nor on the limiter's own `503`. The `TooManyRequests` response added lists them
//! too, and `Retry-After` if the style writes it, with an example of the limiter's
//! [`ErrorBody`] (an example refusal's, made as every 429's is). A header a response lists
//! already (in any case), a response given as a `$ref`, and a `429` of the document's own
//! are left as they are.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use http::Method;
use serde::ser::{Serialize, Serializer};
use serde_json::{json, Value};
use tollgate_limits::{BucketState, Decision, Limit, Quota, Refusal, Timestamp};

use crate::describe::{algorithm_name, LimitJson, RouteLimits, RuleLimit, RuleSource};
use crate::limiter::Limiter;
use crate::respond::{ErrorBody, HeaderStyle, RateLimitOutcome, ResetFormat};

/// The operations of a path item, in the order OpenAPI lists them.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Why limits could not be published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The document has no `paths` object (or `components` is not an object).
    #[error("not an OpenAPI document: {0}")]
    NotOpenApi(&'static str),
    /// A pattern given to the publisher that does not parse.
    #[error("`{pattern}` is not `[METHOD[,METHOD..] ]/path`")]
    BadPattern {
        /// The pattern as given.
        pattern: String,
    },
    /// [`Publisher::guard_at`] names a policy no guard of the limiter has (make the guard
    /// with [`Limiter::guard`] first).
    #[error("`{pattern}`: the limiter has no guard whose policy is named `{policy}` (make the guard first)")]
    UnknownGuard {
        /// The pattern as given.
        pattern: String,
        /// The policy's name as given.
        policy: String,
    },
    /// [`Publisher::route_policy`] names a policy the limiter has not made (make the
    /// route's layer with [`Limiter::policy_at`] first).
    #[error("`{pattern}`: the limiter has no per-route policy named `{policy}` (make the route's layer first)")]
    UnknownPolicy {
        /// The operation's pattern.
        pattern: String,
        /// The policy's name.
        policy: String,
    },
    /// [`Publisher::handler_buckets`] names a bucket the limiter does not declare.
    #[error("`{pattern}`: the limiter has no bucket for direct use named `{bucket}`")]
    UnknownBucket {
        /// The operation's pattern.
        pattern: String,
        /// The bucket's name.
        bucket: String,
    },
    /// [`Publisher::bucket_key`] names a bucket the limiter does not declare.
    #[error("bucket_key: the limiter has no bucket for direct use named `{bucket}`")]
    UnknownKeyBucket {
        /// The bucket's name.
        bucket: String,
    },
    /// A pattern given to the publisher matches no operation of the document (a typo, or
    /// an operation the document does not list).
    #[error("`{pattern}` matches no operation of the document")]
    NoSuchOperation {
        /// The pattern as given.
        pattern: String,
    },
}

/// Who enforces a published limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EnforcedBy {
    /// The central layer ([`Limiter::layer`]), by the route's class, or a global limit.
    Middleware,
    /// The route's own layer ([`Limiter::policy_at`]).
    Route,
    /// The handler, with a bucket for direct use ([`Limiter::check`]).
    Handler,
    /// A guard's layer ([`Limiter::guard`]) the operation's requests pass through
    /// ([`Publisher::guard_at`]).
    Guard,
}

impl EnforcedBy {
    /// `middleware`, `route`, `handler` or `guard`.
    pub const fn as_str(self) -> &'static str {
        match self {
            EnforcedBy::Middleware => "middleware",
            EnforcedBy::Route => "route",
            EnforcedBy::Handler => "handler",
            EnforcedBy::Guard => "guard",
        }
    }
}

/// One limit an operation is subject to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AppliedLimit {
    /// The policy's name (the bucket's, for a bucket for direct use).
    pub policy: String,
    /// The bucket's name, as headers and logs show it.
    pub bucket: String,
    /// Whose budget: the key kind, or what [`Publisher::bucket_key`] says.
    pub per: String,
    /// The limit; `None` when chosen per request.
    pub limit: Option<Limit>,
    /// Who enforces it.
    pub enforced_by: EnforcedBy,
}

impl Serialize for AppliedLimit {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Json<'a> {
            policy: &'a str,
            bucket: &'a str,
            per: &'a str,
            #[serde(flatten)]
            limit: LimitJson,
            enforced_by: &'static str,
        }
        Json {
            policy: &self.policy,
            bucket: &self.bucket,
            per: &self.per,
            limit: LimitJson::new(self.limit),
            enforced_by: self.enforced_by.as_str(),
        }
        .serialize(serializer)
    }
}

/// Every limit of one operation: its `x-ratelimit`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[non_exhaustive]
pub struct OperationLimits {
    /// Whether any limit applies.
    pub throttled: bool,
    /// The limits, the route's first, then the global ones, then the handler's.
    pub limits: Vec<AppliedLimit>,
}

type AppliesFn = Arc<dyn Fn(&Method, &str, &RuleLimit) -> bool + Send + Sync>;

/// `[METHODS ]PATH`, parsed: empty methods for any; a trailing `/*` for any path under
/// the rest (zero or more segments, as in the route table).
#[derive(Debug, Clone)]
struct Pattern {
    text: String,
    methods: Vec<Method>,
    segments: Vec<Segment>,
    /// Ends in `/*`.
    under: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
}

impl Pattern {
    fn parse(text: &str) -> Result<Self, PublishError> {
        let bad = || PublishError::BadPattern {
            pattern: text.to_string(),
        };
        let trimmed = text.trim();
        let (methods, path) = match trimmed.split_once(' ') {
            Some((m, p)) => (m, p.trim()),
            None => ("", trimmed),
        };
        let methods = methods
            .split(',')
            .filter(|m| !m.is_empty())
            .map(|m| {
                Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()).map_err(|_| bad())
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !path.starts_with('/') {
            return Err(bad());
        }
        let (path, under) = match path.strip_suffix("/*") {
            Some(prefix) => (prefix, true),
            None => (path, false),
        };
        Ok(Self {
            text: text.to_string(),
            methods,
            segments: segments(path),
            under,
        })
    }

    fn matches(&self, method: &Method, path: &[Segment]) -> bool {
        let path = match path.get(..self.segments.len()) {
            Some(head) if self.under => head,
            _ => path,
        };
        (self.methods.is_empty() || self.methods.contains(method)) && self.segments == path
    }
}

/// A path template's segments, its parameters alike whatever their name or style
/// (`{id}`, `{*rest}`, `:id`).
fn segments(path: &str) -> Vec<Segment> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            if (s.starts_with('{') && s.ends_with('}')) || s.starts_with(':') {
                Segment::Param
            } else {
                Segment::Literal(s.to_string())
            }
        })
        .collect()
}

/// A path template in the form the route table classifies: `{*rest}` and `:id` written as
/// `{rest}` / `{id}` (one segment that matches parameters and wildcards, never a literal).
fn classifiable(path: &str) -> String {
    path.split('/')
        .map(|s| {
            if let Some(name) = s.strip_prefix("{*") {
                format!("{{{name}")
            } else if let Some(name) = s.strip_prefix(':') {
                format!("{{{name}}}")
            } else {
                s.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Publishes a [`Limiter`]'s limits: see the [module documentation](self).
#[derive(Clone)]
pub struct Publisher {
    limiter: Limiter,
    base_path: String,
    route_policies: Vec<(Pattern, String)>,
    handler_buckets: Vec<(Pattern, Vec<String>)>,
    guards: Vec<(Pattern, String)>,
    bucket_keys: HashMap<String, String>,
    applies: Option<AppliesFn>,
    /// The first mistake in what the publisher was told, reported by every output.
    error: Option<PublishError>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("base_path", &self.base_path)
            .field("route_policies", &self.route_policies)
            .field("handler_buckets", &self.handler_buckets)
            .field("guards", &self.guards)
            .field("bucket_keys", &self.bucket_keys)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher of `limiter`'s limits.
    pub fn new(limiter: &Limiter) -> Self {
        Self {
            limiter: limiter.clone(),
            base_path: String::new(),
            route_policies: Vec::new(),
            handler_buckets: Vec::new(),
            guards: Vec::new(),
            bucket_keys: HashMap::new(),
            applies: None,
            error: None,
        }
    }

    /// The prefix requests add to the document's paths (its server URL's path, e.g.
    /// `/api` when the document lists `/projects` for `/api/projects`).
    pub fn base_path(mut self, prefix: &str) -> Self {
        self.base_path = prefix.trim_end_matches('/').to_string();
        self
    }

    /// The operations `pattern` (`"POST /api/assistant/chat"`) spend the per-route policy
    /// named `policy` instead of the class the central table gives them: for a policy made
    /// with [`Limiter::policy`], which has no pattern (one made with [`Limiter::policy_at`]
    /// is published on the operations its pattern matches without this).
    pub fn route_policy(mut self, pattern: &str, policy: &str) -> Self {
        match Pattern::parse(pattern) {
            Ok(p) => self.route_policies.push((p, policy.to_string())),
            Err(e) => self.fail(e),
        }
        self
    }

    /// The handlers of the operations `pattern` charge `buckets` (buckets for direct use,
    /// [`LimiterBuilder::bucket`](crate::LimiterBuilder::bucket)) themselves.
    pub fn handler_buckets(mut self, pattern: &str, buckets: &[&str]) -> Self {
        match Pattern::parse(pattern) {
            Ok(p) => self
                .handler_buckets
                .push((p, buckets.iter().map(|b| b.to_string()).collect())),
            Err(e) => self.fail(e),
        }
        self
    }

    /// The operations `pattern` (`"/v1/*"`: every operation under `/v1`; `"GET /v1/reports"`)
    /// pass through the layer of the guard whose policy is named `policy`
    /// ([`Limiter::guard`]): its limits are published on them
    /// (a guard's layer wraps whatever routes the application puts it on, which the
    /// limiter cannot tell). A guard that counts only some responses
    /// ([`Policy::failed_auth_per_ip`](crate::Policy::failed_auth_per_ip)) refuses every
    /// request of a client it has refused, valid ones included: a client reading the
    /// documentation should find that limit on the operations it refuses.
    pub fn guard_at(mut self, pattern: &str, policy: &str) -> Self {
        match Pattern::parse(pattern) {
            Ok(p) => self.guards.push((p, policy.to_string())),
            Err(e) => self.fail(e),
        }
        self
    }

    /// Whose key the handlers pass when they charge the bucket for direct use `bucket`
    /// (`"email"`, `"ip"`): what `per` says (default `direct`).
    pub fn bucket_key(mut self, bucket: &str, per: &str) -> Self {
        if !self.limiter.engine.table.load().direct.contains_key(bucket) {
            self.fail(PublishError::UnknownKeyBucket {
                bucket: bucket.to_string(),
            });
        }
        self.bucket_keys.insert(bucket.to_string(), per.to_string());
        self
    }

    /// Publish a limit of the route's rule, of a global policy or of a guard
    /// ([`Publisher::guard_at`]) on the operation `method`
    /// `path` (the request path template) only if `applies` says so: for limits whose key
    /// never exists there (e.g. the identity function names no user on some paths). The
    /// rules table ([`Publisher::rules_html`]) asks it too, for each rule of the central
    /// table, with the rule's path (`/api/portal/*`) and methods (`GET` for every method).
    pub fn applies<F>(mut self, applies: F) -> Self
    where
        F: Fn(&Method, &str, &RuleLimit) -> bool + Send + Sync + 'static,
    {
        self.applies = Some(Arc::new(applies));
        self
    }

    fn fail(&mut self, error: PublishError) {
        self.error.get_or_insert(error);
    }

    fn check(&self) -> Result<(), PublishError> {
        self.error.clone().map_or(Ok(()), Err)
    }

    /// The limits of the operation `method` `path` (a request path or a path template
    /// such as `/api/documents/{id}`, including the base path).
    ///
    /// # Errors
    ///
    /// A [`PublishError`] about what the publisher was told (a bad pattern, an unknown
    /// policy or bucket).
    pub fn operation(&self, method: &Method, path: &str) -> Result<OperationLimits, PublishError> {
        self.check()?;
        self.limits_of(method, path, &self.limiter.describe())
    }

    fn limits_of(
        &self,
        method: &Method,
        path: &str,
        all: &[RouteLimits],
    ) -> Result<OperationLimits, PublishError> {
        let segs = segments(path);
        let mut out: Vec<AppliedLimit> = Vec::new();
        // Published limits are the enforced ones: none while limiting is off, and none of a
        // dry run.
        if !self.limiter.is_enabled() {
            return Ok(OperationLimits::default());
        }
        let route_policy = self
            .route_policies
            .iter()
            .find(|(p, _)| p.matches(method, &segs));
        let (rule, enforced_by) = match route_policy {
            Some((pattern, name)) => {
                let rule = all
                    .iter()
                    .find(|r| r.source == RuleSource::PerRoute && r.policy == *name)
                    .cloned()
                    .ok_or_else(|| PublishError::UnknownPolicy {
                        pattern: pattern.text.clone(),
                        policy: name.clone(),
                    })?;
                (Some(rule), EnforcedBy::Route)
            }
            None => {
                let path = classifiable(path);
                match self.limiter.describe_policy_at(method, &path) {
                    Some(rule) => (Some(rule), EnforcedBy::Route),
                    None => (
                        self.limiter.describe_route(method, &path),
                        EnforcedBy::Middleware,
                    ),
                }
            }
        };
        let mut guards = Vec::new();
        for (pattern, name) in self.guards.iter().filter(|(p, _)| p.matches(method, &segs)) {
            let guard = all
                .iter()
                .find(|r| r.source == RuleSource::Guard && r.policy == *name)
                .ok_or_else(|| PublishError::UnknownGuard {
                    pattern: pattern.text.clone(),
                    policy: name.clone(),
                })?;
            guards.push((guard, EnforcedBy::Guard));
        }
        // An exempt route is exempt from its class and the global limits, not from a
        // guard's layer around it.
        let exempt = rule.as_ref().is_some_and(|r| r.exempt);
        let globals = all.iter().filter(|r| r.source == RuleSource::Global);
        let rules = rule
            .iter()
            .map(|r| (r, enforced_by))
            .chain(globals.map(|r| (r, EnforcedBy::Middleware)))
            .filter(|_| !exempt)
            .chain(guards);
        for (r, by) in rules.filter(|(r, _)| !r.shadow) {
            for l in &r.limits {
                let wanted = self.applies.as_ref().is_none_or(|f| f(method, path, l));
                if wanted && !out.iter().any(|o| o.bucket == l.bucket) {
                    out.push(AppliedLimit {
                        policy: r.policy.clone(),
                        bucket: l.bucket.clone(),
                        per: l.key.clone(),
                        limit: l.limit,
                        enforced_by: by,
                    });
                }
            }
        }
        for (pattern, buckets) in &self.handler_buckets {
            if !pattern.matches(method, &segs) {
                continue;
            }
            for name in buckets {
                let limit = all
                    .iter()
                    .find(|r| r.source == RuleSource::Bucket && r.policy == *name)
                    .and_then(|r| r.limits.first())
                    .ok_or_else(|| PublishError::UnknownBucket {
                        pattern: pattern.text.clone(),
                        bucket: name.clone(),
                    })?;
                out.push(AppliedLimit {
                    policy: name.clone(),
                    bucket: name.clone(),
                    per: self.per_of_bucket(name).to_string(),
                    limit: limit.limit,
                    enforced_by: EnforcedBy::Handler,
                });
            }
        }
        Ok(OperationLimits {
            throttled: !out.is_empty(),
            limits: out,
        })
    }

    fn per_of_bucket<'a>(&'a self, bucket: &str) -> &'a str {
        self.bucket_keys
            .get(bucket)
            .map_or("direct", String::as_str)
    }

    /// The document's operations: (method, path as listed, request path, operation).
    fn operations<'d>(
        &self,
        doc: &'d Value,
    ) -> Result<Vec<(Method, &'d str, String, &'d Value)>, PublishError> {
        let paths = doc
            .get("paths")
            .and_then(Value::as_object)
            .ok_or(PublishError::NotOpenApi("no `paths` object"))?;
        let mut out = Vec::new();
        for (path, item) in paths {
            for m in METHODS {
                if let Some(op) = item.get(m).filter(|op| op.is_object()) {
                    let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                        .expect("a standard method");
                    out.push((
                        method,
                        path.as_str(),
                        format!("{}{path}", self.base_path),
                        op,
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Adds `x-ratelimit` to every operation of `doc` (an OpenAPI 3 document), a `429`
    /// response to the throttled ones that have none, and the `TooManyRequests` response
    /// they refer to if the document has none.
    ///
    /// # Errors
    ///
    /// [`PublishError::NotOpenApi`] (the document is left unchanged), a mistake in what the
    /// publisher was told, or [`PublishError::NoSuchOperation`] for a pattern that matches
    /// no operation of the document.
    pub fn annotate(&self, doc: &mut Value) -> Result<(), PublishError> {
        self.check()?;
        if doc.get("components").is_some_and(|c| {
            !c.is_object()
                || ["responses", "headers"]
                    .iter()
                    .any(|part| c.get(part).is_some_and(|v| !v.is_object()))
        }) {
            // (`responses` or `headers` too.)
            return Err(PublishError::NotOpenApi("`components` is not an object"));
        }
        let ops: Vec<(Method, String, String)> = self
            .operations(doc)?
            .into_iter()
            .map(|(method, listed, path, _)| (method, listed.to_string(), path))
            .collect();
        self.every_pattern_used(&ops)?;
        let all = self.limiter.describe();
        let mut annotated = Vec::with_capacity(ops.len());
        for (method, listed, path) in ops {
            let limits = self.limits_of(&method, &path, &all)?;
            annotated.push((method, listed, limits));
        }
        let style = &self.limiter.engine.header_style;
        let fields = rate_limit_fields(style);
        let mut throttled = false;
        let mut fields_shown = false;
        for (method, listed, limits) in annotated {
            let op = &mut doc["paths"][&listed][method.as_str().to_ascii_lowercase()];
            if limits.throttled {
                throttled = true;
                let responses = op
                    .as_object_mut()
                    .expect("an operation object")
                    .entry("responses")
                    .or_insert_with(|| json!({}));
                if let Some(responses) = responses.as_object_mut() {
                    // Whatever charges the request (a layer, a guard, a handler that
                    // adds its bucket's fields) may write its fields on any answer: each
                    // of the operation's responses lists them (not `required`), but a
                    // `429` of the document's own, which describes the refusal as its
                    // authors chose (as their `TooManyRequests` does).
                    if !fields.is_empty() {
                        for (_, response) in responses.iter_mut().filter(|(s, _)| *s != "429") {
                            fields_shown |= add_field_refs(response, &fields);
                        }
                    }
                    responses
                        .entry("429")
                        .or_insert_with(|| json!({ "$ref": TOO_MANY_REQUESTS_REF }));
                }
            }
            op["x-ratelimit"] = serde_json::to_value(&limits).expect("plain JSON");
        }
        if throttled {
            let root = doc.as_object_mut().expect("checked: has `paths`");
            let components = root
                .entry("components")
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("checked: an object");
            let responses = components
                .entry("responses")
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("checked: an object");
            let ours = !responses.contains_key("TooManyRequests");
            if ours {
                let body = &self.limiter.engine.error_body;
                responses.insert(
                    "TooManyRequests".into(),
                    too_many_requests(style, &fields, body),
                );
            }
            if (ours || fields_shown) && !fields.is_empty() {
                // (A document's own `headers` that is not an object is left as it is.)
                if let Some(headers) = components
                    .entry("headers")
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                {
                    for (name, header) in &fields {
                        headers.entry(*name).or_insert_with(|| header.clone());
                    }
                }
            }
        }
        Ok(())
    }

    /// Every pattern the publisher was told matches some operation of `ops`.
    fn every_pattern_used(&self, ops: &[(Method, String, String)]) -> Result<(), PublishError> {
        let ops: Vec<(&Method, Vec<Segment>)> =
            ops.iter().map(|(m, _, path)| (m, segments(path))).collect();
        let patterns = self
            .route_policies
            .iter()
            .map(|(p, _)| p)
            .chain(self.handler_buckets.iter().map(|(p, _)| p))
            .chain(self.guards.iter().map(|(p, _)| p));
        for pattern in patterns {
            if !ops.iter().any(|(m, segs)| pattern.matches(m, segs)) {
                return Err(PublishError::NoSuchOperation {
                    pattern: pattern.text.clone(),
                });
            }
        }
        Ok(())
    }

    /// Whether [`Publisher::applies`] lets `limit` of a rule of the central table show:
    /// asked with the rule's path (`/api/portal/*`) and each of its methods (`GET` for a
    /// rule of every method), shown if any says so. Other rules show every limit.
    fn applies_to_rule(&self, rule: &RouteLimits, limit: &RuleLimit) -> bool {
        let (Some(applies), RuleSource::Route, Some(path)) =
            (&self.applies, rule.source, &rule.path)
        else {
            return true;
        };
        if rule.methods.is_empty() {
            return applies(&Method::GET, path, limit);
        }
        rule.methods.iter().any(|m| applies(m, path, limit))
    }

    /// An HTML `<table>` of every rule of the limiter ([`Limiter::describe`]): what it
    /// applies to, its policy, its limits (`500/min per ip (sliding window, bucket
    /// default:ip)`). As published limits are the enforced ones, a dry run's limits are
    /// marked as not enforced, and while limiting is off the table says so in its one row.
    pub fn rules_html(&self) -> String {
        let mut out = String::from(
            "<table class=\"rate-limit-rules\">\n<tr><th>Rule</th><th>Policy</th><th>Limits</th></tr>\n",
        );
        if !self.limiter.is_enabled() {
            out.push_str(
                "<tr><td colspan=\"3\">Rate limiting is off: no request is limited.</td></tr>\n",
            );
            out.push_str("</table>\n");
            return out;
        }
        for rule in self.limiter.describe() {
            let what = match rule.source {
                RuleSource::Route => rule.pattern.clone().unwrap_or_default(),
                RuleSource::Global => "every request (global)".into(),
                RuleSource::PerRoute => {
                    let routes: Vec<&str> = self
                        .route_policies
                        .iter()
                        .filter(|(_, name)| *name == rule.policy)
                        .map(|(p, _)| p.text.as_str())
                        .collect();
                    if routes.is_empty() {
                        "per-route policy".into()
                    } else {
                        routes.join(", ")
                    }
                }
                RuleSource::Bucket => "applied by handlers".into(),
                RuleSource::Guard => "every request through its layer (guard)".into(),
            };
            let limits: Vec<String> = if rule.exempt {
                vec!["not limited by the middleware".into()]
            } else if rule.shadow {
                vec!["not enforced (a dry run: counted, never refused)".into()]
            } else {
                rule.limits
                    .iter()
                    .filter(|l| self.applies_to_rule(&rule, l))
                    .map(|l| {
                        let per = match rule.source {
                            RuleSource::Bucket => self.per_of_bucket(&l.bucket),
                            _ => &l.key,
                        };
                        limit_html(per, l.limit, &l.bucket)
                    })
                    .collect()
            };
            let _ = writeln!(
                out,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                escape(&what),
                escape(&rule.policy),
                limits.join("<br>")
            );
        }
        out.push_str("</table>\n");
        out
    }

    /// An HTML `<table>` of the operations of `doc` (method, path, summary) and the limits
    /// each is subject to (`... [middleware]`, or `not throttled`).
    ///
    /// # Errors
    ///
    /// As [`Publisher::operation`], and [`PublishError::NotOpenApi`].
    pub fn operations_html(&self, doc: &Value) -> Result<String, PublishError> {
        self.check()?;
        let all = self.limiter.describe();
        let mut out = String::from(
            "<table class=\"rate-limit-operations\">\n<tr><th>Method</th><th>Path</th><th>Summary</th><th>Limits</th></tr>\n",
        );
        for (method, listed, path, op) in self.operations(doc)? {
            let limits = self.limits_of(&method, &path, &all)?;
            let cell = if limits.throttled {
                limits
                    .limits
                    .iter()
                    .map(|a| {
                        format!(
                            "{} [{}]",
                            limit_html(&a.per, a.limit, &a.bucket),
                            a.enforced_by.as_str()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("<br>")
            } else {
                "not throttled".to_string()
            };
            let summary = op.get("summary").and_then(Value::as_str).unwrap_or("");
            let _ = writeln!(
                out,
                "<tr><td>{method}</td><td><code>{}</code></td><td>{}</td><td>{cell}</td></tr>",
                escape(listed),
                escape(summary),
            );
        }
        out.push_str("</table>\n");
        Ok(out)
    }

    /// A whole HTML page: `title`, `intro` (text), the rules table and, given a document,
    /// the operations table.
    ///
    /// # Errors
    ///
    /// As [`Publisher::operations_html`].
    pub fn html_page(
        &self,
        title: &str,
        intro: &str,
        doc: Option<&Value>,
    ) -> Result<String, PublishError> {
        let operations = doc.map(|d| self.operations_html(d)).transpose()?;
        let mut out = format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\n\
             <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
             td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}}</style></head><body>\n\
             <h1>{title}</h1>\n",
            title = escape(title)
        );
        if !intro.is_empty() {
            let _ = writeln!(out, "<p>{}</p>", escape(intro));
        }
        out.push_str("<h2>Rules</h2>\n");
        out.push_str(&self.rules_html());
        if let Some(operations) = operations {
            out.push_str("<h2>Operations</h2>\n");
            out.push_str(&operations);
        }
        out.push_str("</body></html>\n");
        Ok(out)
    }
}

/// Where throttled operations' `429` response refers to.
pub const TOO_MANY_REQUESTS_REF: &str = "#/components/responses/TooManyRequests";

/// A reference to the header object of the rate-limit field `name`, in
/// `#/components/headers` ([`rate_limit_fields`]).
fn header_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/headers/{name}") })
}

/// The response a throttled operation's `429` refers to (if the document has none): its
/// `Retry-After` (if `style` writes it), the rate-limit `fields`, and an example of `body`.
fn too_many_requests(style: &HeaderStyle, fields: &[(&str, Value)], body: &ErrorBody) -> Value {
    let mut headers = serde_json::Map::new();
    if style.writes_retry_after() {
        headers.insert(
            "Retry-After".into(),
            json!({
                "description": "Seconds to wait before retrying.",
                "schema": { "type": "integer" },
            }),
        );
    }
    for (name, _) in fields {
        headers.insert((*name).into(), header_ref(name));
    }
    let retry = if style.writes_retry_after() {
        " Retry after the number of seconds in `Retry-After`."
    } else {
        ""
    };
    let mut response = json!({
        "description": format!("Too many requests: a rate limit is exhausted.{retry}"),
        "headers": headers,
    });
    if let Some((content_type, example)) = example_body(body) {
        response["content"] = json!({ content_type: { "example": example } });
    }
    response
}

/// The body `body` writes for an example refusal (`GET /items`, a limit of 100 a minute
/// spent, the request to be retried in 12 s), made as every 429's is, and its content
/// type; `None` if it is neither JSON nor text.
fn example_body(body: &ErrorBody) -> Option<(String, Value)> {
    let wait = std::time::Duration::from_secs(12);
    let decision = Decision {
        allowed: false,
        now: Timestamp::from_micros(1_717_200_048_000_000),
        buckets: vec![BucketState {
            allowed: false,
            limit: 100,
            remaining: 0,
            reset_after: wait,
            retry_after: Some(wait),
            refusal: Some(Refusal::OverLimit),
        }],
    };
    let outcome = RateLimitOutcome::from_decision(
        "default",
        &decision,
        [("default:ip", Quota::per_minute(100))],
        Method::GET,
        "/items",
    );
    let content_type = body.content_type().to_str().ok()?.to_owned();
    let bytes = body.render(&outcome);
    // (A JSON media type's example is the value; any other's, the text sent.)
    let example = if content_type.contains("json") {
        serde_json::from_slice(&bytes).ok()?
    } else {
        Value::String(String::from_utf8(bytes.to_vec()).ok()?)
    };
    Some((content_type, example))
}

/// The rate-limit fields `style` writes on the answers to a request it charged, admitted
/// or refused (`Retry-After` apart: on refusals only), with their header objects.
fn rate_limit_fields(style: &HeaderStyle) -> Vec<(&'static str, Value)> {
    let described = |description: String, kind: &str| json!({ "description": description, "schema": { "type": kind } });
    let mut out = Vec::new();
    if let Some(format) = style.x_ratelimit_format() {
        out.push((
            "X-RateLimit-Limit",
            described(
                "The quota of the most restrictive limit on the request: the requests (or \
                 points, where a request has a cost) its window allows."
                    .into(),
                "integer",
            ),
        ));
        out.push((
            "X-RateLimit-Remaining",
            described("What that limit has left.".into(), "integer"),
        ));
        let when = if style.resets_at_retry() {
            "When that limit is full again (on a 429: when the request can be retried)"
        } else {
            "When that limit is full again"
        };
        let (unit, kind) = match format {
            ResetFormat::UnixSeconds => ("as Unix time in seconds", "integer"),
            ResetFormat::UnixMillis => ("as Unix time in milliseconds", "integer"),
            ResetFormat::Seconds => ("in seconds from now", "integer"),
            ResetFormat::HttpDate => (
                "as an HTTP date (`Sat, 01 Jun 2024 00:01:00 GMT`)",
                "string",
            ),
        };
        out.push((
            "X-RateLimit-Reset",
            described(format!("{when}, {unit}."), kind),
        ));
    }
    if style.writes_ietf() {
        out.push((
            "RateLimit-Policy",
            described(
                "The limits on the request (draft-ietf-httpapi-ratelimit-headers-10), one item \
                 each: `\"<name>\";q=<quota>;w=<window in seconds>`. Quotas count requests, or \
                 points where a request has a cost."
                    .into(),
                "string",
            ),
        ));
        out.push((
            "RateLimit",
            described(
                "What each of those limits has left (draft-ietf-httpapi-ratelimit-headers-10): \
                 `\"<name>\";r=<remaining>;t=<seconds>`, `t` the seconds until the request \
                 would be admitted on a limit that refused it (as `Retry-After`), and until \
                 the limit is full again on the others."
                    .into(),
                "string",
            ),
        ));
    }
    out
}

/// Adds a reference to each of `fields` to `response`'s headers (a response object of the
/// document's own; a `$ref` is left alone, and so is a header it names already). Whether
/// it added any.
fn add_field_refs(response: &mut Value, fields: &[(&str, Value)]) -> bool {
    let Some(response) = response.as_object_mut() else {
        return false;
    };
    if response.contains_key("$ref") {
        return false;
    }
    let Some(headers) = response
        .entry("headers")
        .or_insert_with(|| json!({}))
        .as_object_mut()
    else {
        return false;
    };
    let mut added = false;
    for (name, _) in fields {
        // (Header names are case-insensitive: one the document spells otherwise stays.)
        if !headers.keys().any(|k| k.eq_ignore_ascii_case(name)) {
            headers.insert((*name).into(), header_ref(name));
            added = true;
        }
    }
    added
}

/// `500/min per ip <small>(sliding window, bucket default:ip)</small>`.
fn limit_html(per: &str, limit: Option<Limit>, bucket: &str) -> String {
    match limit {
        Some(l) => {
            let algorithm = match l.algorithm() {
                tollgate_limits::Algorithm::TokenBucket { burst } => {
                    format!("token bucket, burst {burst}")
                }
                _ => algorithm_name(&l).to_string(),
            };
            format!(
                "{} per {} <small>({}, bucket {})</small>",
                escape(&l.quota().to_string()),
                escape(per),
                escape(&algorithm),
                escape(bucket)
            )
        }
        None => format!("chosen per request, per {}", escape(per)),
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_and_templates() {
        let p = Pattern::parse("POST,put /api/templates/{id}/generate").unwrap();
        assert_eq!(p.methods, vec![Method::POST, Method::PUT]);
        assert!(p.matches(
            &Method::PUT,
            &segments("/api/templates/{template}/generate")
        ));
        assert!(p.matches(&Method::POST, &segments("/api/templates/:id/generate/")));
        assert!(!p.matches(&Method::GET, &segments("/api/templates/{id}/generate")));
        assert!(!p.matches(&Method::POST, &segments("/api/templates/7/generate")));
        assert!(Pattern::parse("/any")
            .unwrap()
            .matches(&Method::DELETE, &segments("/any")));
        assert!(matches!(
            Pattern::parse("GET api/x"),
            Err(PublishError::BadPattern { .. })
        ));
        assert_eq!(classifiable("/a/{*rest}"), "/a/{rest}");
        assert_eq!(classifiable("/a/:id/b"), "/a/{id}/b");
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
