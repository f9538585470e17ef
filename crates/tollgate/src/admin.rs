//! An axum [`Router`] for operators (feature `admin`): what a [`Limiter`] enforces, a
//! key's state in a bucket, resetting it, per-key overrides set and removed at runtime, and
//! where the store decides now. JSON in and out.
//!
//! **It has no authentication of its own**: mount it behind yours (an operator token, an
//! internal network), never on a public router as is.
//!
//! It acts on the instance that answers. A state, a reset, a look are the store's, so on a
//! store a fleet shares (Redis) they are the fleet's; overrides are the process's: set,
//! change and remove them on every instance (an override's count is in the store, shared,
//! but which keys have one, and at what limit, is each instance's).
//!
//! ```
//! use axum::{extract::Request, http::StatusCode, middleware::{self, Next}, response::Response, Router};
//! use tollgate::{Limiter, Policy};
//!
//! let limiter = Limiter::builder()
//!     .route("/api/*", Policy::named("default").per_ip("500/min"))
//!     .build()?;
//! async fn operators_only(request: Request, next: Next) -> Result<Response, StatusCode> {
//!     // Your authentication here.
//! # let _ = &request;
//!     Err(StatusCode::UNAUTHORIZED)
//! }
//! let app: Router = Router::new()
//!     // ... the API's routes, layered with `limiter.layer()` ...
//!     .nest(
//!         "/admin/rate-limits",
//!         tollgate::admin::router(&limiter).layer(middleware::from_fn(operators_only)),
//!     );
//! # Ok::<(), tollgate::BuildError>(())
//! ```
//!
//! # Endpoints
//!
//! Paths are relative to where the router is mounted. Buckets are named as in
//! [`Limiter::describe`] (`default:ip`, `global`, `sign-in-failures`) or `override:<kind>`
//! for a key's override; keys as requests carry them (an IP address, a user id, an API key:
//! percent-encode what is not a plain path segment), or a hashed key as `GET /overrides`
//! lists it (`#` and 32 hex digits, `%23…` in a path), so that no credential need be put in
//! a URL, which access logs keep.
//!
//! | method and path | does | answers |
//! |---|---|---|
//! | `GET /` | a summary | `{"enabled", "store": {"mode"}, "stats": {"admitted", "refused", "wouldRefuse", "storeErrors", "noPeer"}}` (as [`Limiter::stats`](crate::Limiter::stats) counts them) |
//! | `GET /limits` | the enforced table | `{"enabled", "rules": [..]}`, each rule as [`RouteLimits`](crate::RouteLimits) serializes |
//! | `GET /store` | where the store decides | `{"mode": "memory" \| "shared" \| "fallback"}` |
//! | `GET /buckets/{bucket}/{key}` | the key's state, changing nothing | a [state](#state) |
//! | `POST /buckets/{bucket}/{key}/reset` | forgets what the bucket counted for the key | the state afterwards |
//! | `GET /overrides` | every per-key override | `{"overrides": [{"kind", "key", "limit"}]}` |
//! | `PUT /overrides/{kind}/{key}` | sets a key's own limit, on top of the endpoints' ([`Limiter::set_override`]); body `{"rate": "20/min"}`, optionally `"algorithm"` (`sliding`, `exact`, `fixed`, `token_bucket`, or the names `GET /overrides` shows) and `"burst"` | `{"kind", "key", "storedKeys", "limit"}`: `storedKeys` as `GET /overrides` lists the key (one, or one per way the kind reads a value: an API key from `x-api-key` and from `authorization`) |
//! | `DELETE /overrides/{kind}/{key}` | removes it | `204`, or `404` if there was none |
//!
//! # State
//!
//! `{"bucket", "key", "storedKey", "allowed", "limit", "remaining", "resetAfterMs",
//! "retryAfterMs"}`: `key` as given, `storedKey` the key it reached
//! ([`Limiter::stored_key`]: an IPv6 address as its /64 or the bucket's network, a secret
//! kind's key as its digest); `allowed` says whether a request of cost 1 would be admitted
//! now, `retryAfterMs` how long until it would (`null` when allowed).
//!
//! # Errors
//!
//! `{"error": code, "message": text}`: `404` `unknown_bucket`, `unknown_key_kind`,
//! `no_override`, `not_found` (a path under the mount point the router does not serve,
//! named as the request spelled it; the mount point with a trailing slash,
//! `/admin/rate-limits/`, is not passed to the router by axum's `nest`: it gets the outer
//! router's answer);
//! `405` `method_not_allowed`; `400` `bad_key` (also a path segment that is not UTF-8 once decoded),
//! `invalid_rate`, `invalid_body`, `override_below_cost` (an override smaller than one
//! request of a policy limiting by its kind costs); `409`
//! `quota_per_request` (a bucket whose quota is chosen per request can be reset, not read);
//! `503` `store_unavailable`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tollgate_limits::Decision;

use crate::describe::ALGORITHM_NAMES;
use crate::inspect::InspectError;
use crate::limiter::Limiter;
use crate::rate::Rate;

/// The operators' router for `limiter`: see the [module documentation](self). Mount it
/// behind your own authentication (`Router::nest("/admin/rate-limits", router)`).
pub fn router<S>(limiter: &Limiter) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/", get(summary))
        .route("/limits", get(limits))
        .route("/store", get(store))
        .route("/buckets/{bucket}/{key}", get(peek))
        .route("/buckets/{bucket}/{key}/reset", post(reset))
        .route("/overrides", get(overrides))
        .route(
            "/overrides/{kind}/{key}",
            put(set_override).delete(remove_override),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(limiter.clone())
}

/// A path the router does not serve: `404` `not_found`, in the API's error shape. The
/// message names the path as the request spelled it: nested, the router sees it with its
/// mount point taken off, and with it the empty segments that kept it from matching
/// (`/admin//limits` reached it as `/limits`, and was told there was no `/limits`).
async fn not_found(uri: axum::extract::OriginalUri) -> Failure {
    Failure(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no operators' endpoint at `{}`", uri.path()),
    )
}

/// A method a path does not take: `405` `method_not_allowed`, in the API's error shape
/// (axum adds the `Allow` field).
async fn method_not_allowed(method: axum::http::Method) -> Failure {
    Failure(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("the endpoint does not take {method}"),
    )
}

/// An error answer: `{"error": code, "message": text}`.
struct Failure(StatusCode, &'static str, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let Failure(status, code, message) = self;
        (status, Json(json!({ "error": code, "message": message }))).into_response()
    }
}

impl From<InspectError> for Failure {
    fn from(e: InspectError) -> Self {
        let (status, code) = match &e {
            InspectError::UnknownBucket(_) => (StatusCode::NOT_FOUND, "unknown_bucket"),
            InspectError::UnknownKeyKind(_) => (StatusCode::NOT_FOUND, "unknown_key_kind"),
            InspectError::NoOverride(_) => (StatusCode::NOT_FOUND, "no_override"),
            InspectError::QuotaPerRequest(_) => (StatusCode::CONFLICT, "quota_per_request"),
            InspectError::BadIp(_) | InspectError::EmptyKey => (StatusCode::BAD_REQUEST, "bad_key"),
            InspectError::Rate(_) => (StatusCode::BAD_REQUEST, "invalid_rate"),
            InspectError::CostExceedsOverride { .. } => {
                (StatusCode::BAD_REQUEST, "override_below_cost")
            }
            InspectError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
        };
        Failure(status, code, e.to_string())
    }
}

/// The two names of an admin path (`{bucket}/{key}`, `{kind}/{key}`), percent-decoded. A
/// segment that is not UTF-8 once decoded (`%ff`) is a `bad_key` error in the API's error
/// shape, not axum's plain text.
struct Names(String, String);

impl<S: Send + Sync> FromRequestParts<S> for Names {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Failure> {
        let Path((first, second)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|e| Failure(StatusCode::BAD_REQUEST, "bad_key", e.body_text()))?;
        Ok(Names(first, second))
    }
}

impl From<JsonRejection> for Failure {
    fn from(e: JsonRejection) -> Self {
        Failure(StatusCode::BAD_REQUEST, "invalid_body", e.body_text())
    }
}

async fn summary(State(limiter): State<Limiter>) -> Json<Value> {
    let stats = limiter.stats();
    Json(json!({
        "enabled": limiter.is_enabled(),
        "store": { "mode": limiter.store_mode().as_str() },
        "stats": {
            "admitted": stats.admitted,
            "refused": stats.refused,
            "wouldRefuse": stats.would_refuse,
            "storeErrors": stats.store_errors,
            "noPeer": stats.no_peer,
        },
    }))
}

async fn limits(State(limiter): State<Limiter>) -> Json<Value> {
    Json(json!({ "enabled": limiter.is_enabled(), "rules": limiter.describe() }))
}

async fn store(State(limiter): State<Limiter>) -> Json<Value> {
    Json(json!({ "mode": limiter.store_mode().as_str() }))
}

fn state(bucket: &str, key: &str, stored: &str, decision: &Decision) -> Json<Value> {
    let b = decision.buckets.first();
    Json(json!({
        "bucket": bucket,
        "key": key,
        "storedKey": stored,
        "allowed": decision.allowed,
        "limit": b.map(|b| b.limit),
        "remaining": b.map(|b| b.remaining),
        "resetAfterMs": b.map(|b| b.reset_after.as_millis() as u64),
        "retryAfterMs": b.and_then(|b| b.retry_after).map(|d| d.as_millis() as u64),
    }))
}

async fn peek(
    State(limiter): State<Limiter>,
    Names(bucket, key): Names,
) -> Result<Json<Value>, Failure> {
    let (decision, stored) = limiter.peek_stored(&bucket, &key).await?;
    Ok(state(&bucket, &key, &stored, &decision))
}

async fn reset(
    State(limiter): State<Limiter>,
    Names(bucket, key): Names,
) -> Result<Json<Value>, Failure> {
    let (decision, stored) = limiter.reset_stored(&bucket, &key).await?;
    Ok(state(&bucket, &key, &stored, &decision))
}

async fn overrides(State(limiter): State<Limiter>) -> Json<Value> {
    Json(json!({ "overrides": limiter.overrides() }))
}

/// The body of `PUT /overrides/{kind}/{key}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOverride {
    rate: String,
    #[serde(default)]
    algorithm: Option<String>,
    #[serde(default)]
    burst: Option<u64>,
}

impl NewOverride {
    fn rate(&self) -> Result<Rate, Failure> {
        let bad = |message: String| Failure(StatusCode::BAD_REQUEST, "invalid_rate", message);
        // The names `GET /overrides` shows an algorithm by are read too, so that what it
        // shows can be sent back (a review's `"sliding window"` was an unknown algorithm).
        let algorithm = self.algorithm.as_deref().map(|name| {
            ALGORITHM_NAMES
                .iter()
                .find(|(_, shown)| *shown == name)
                .map_or(name, |(text, _)| *text)
        });
        let algorithm = algorithm.unwrap_or(if self.burst.is_some() {
            "token_bucket"
        } else {
            "sliding"
        });
        if self.burst.is_some() && algorithm != "token_bucket" {
            return Err(bad("`burst` is for the `token_bucket` algorithm".into()));
        }
        let rate = self.rate.as_str();
        Ok(match algorithm {
            "sliding" => Rate::sliding(rate),
            "exact" => Rate::exact(rate),
            "fixed" => Rate::fixed(rate),
            "token_bucket" => {
                let burst = self
                    .burst
                    .ok_or_else(|| bad("a `token_bucket` needs a `burst`".into()))?;
                Rate::token_bucket(rate, burst)
            }
            other => {
                let shown: Vec<String> = ALGORITHM_NAMES
                    .iter()
                    .map(|(_, shown)| format!("`{shown}`"))
                    .collect();
                return Err(bad(format!(
                    "unknown algorithm `{other}`: use sliding, exact, fixed or token_bucket (or \
                     the names `GET /overrides` shows: {})",
                    shown.join(", ")
                )));
            }
        })
    }
}

async fn set_override(
    State(limiter): State<Limiter>,
    Names(kind, key): Names,
    body: Result<Json<NewOverride>, JsonRejection>,
) -> Result<Json<Value>, Failure> {
    let Json(new) = body?;
    let rate = new.rate()?;
    let limit = rate.limit().map_err(InspectError::from)?;
    // The key as the override is stored, as `GET /overrides` lists it (an IPv6 address as
    // its /64, a secret as its digest): once per way the kind reads a value.
    let stored = limiter.set_override_stored(&kind, &key, rate)?;
    Ok(Json(json!({
        "kind": kind,
        "key": key,
        "storedKeys": stored,
        "limit": crate::describe::LimitJson::new(Some(limit)),
    })))
}

async fn remove_override(
    State(limiter): State<Limiter>,
    Names(kind, key): Names,
) -> Result<StatusCode, Failure> {
    if limiter.remove_override_for_kind(&kind, &key)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(InspectError::NoOverride(kind).into())
    }
}
