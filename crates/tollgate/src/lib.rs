//! Rate-limiting middleware for [tower] and [axum]: a route table of named policies, keys
//! per client IP, user, API key or tenant, the rate-limit headers and 429 bodies real APIs
//! publish, and stores in memory or Redis.
//!
//! [tower]: https://docs.rs/tower
//! [axum]: https://docs.rs/axum
//!
//! ```
//! use axum::{routing::{get, post}, Router};
//! use tollgate::{ClientIp, Limiter, Policy};
//!
//! #[derive(Clone)]
//! struct Session { user_id: String }
//! # async fn chat() {} async fn list() {} async fn webhook() {}
//!
//! let limiter = Limiter::builder()
//!     .client_ip(ClientIp::peer().trust_proxies(["10.0.0.0/8"]))
//!     .identity(|parts| parts.extensions.get::<Session>().map(|s| s.user_id.clone()))
//!     .route("/api/stripe/webhook", Policy::exempt())
//!     .route("POST /api/templates/{id}/generate", Policy::named("generate").per_ip("300/min").per_user("3000/h"))
//!     .route("/api/*", Policy::named("default").per_ip("500/min").per_user("10000/h"))
//!     .global("1000/min")
//!     .build()?; // every configuration mistake is a typed error here
//!
//! let app: Router = Router::new()
//!     .route("/api/assistant/chat", post(chat).layer(limiter.try_policy_at(
//!         "POST /api/assistant/chat",
//!         Policy::named("chat").per_ip("60/min").per_user("30/min"),
//!     )?))
//!     .route("/api/items", get(list))
//!     .route("/api/stripe/webhook", post(webhook))
//!     .layer(limiter.layer());
//! // Serve with `app.into_make_service_with_connect_info::<std::net::SocketAddr>()` so the
//! // limiter sees the client's address.
//! # Ok::<(), tollgate::BuildError>(())
//! ```
//!
//! # One request
//!
//! 1. Off ([`LimiterBuilder::enabled`], `RATE_LIMIT_ENABLED=false`): passes untouched.
//! 2. The central table classifies method + path (most specific rule wins); exempt routes
//!    pass untouched. A route with its own policy ([`Limiter::policy_at`]) spends that policy
//!    instead of its class.
//! 3. Each limit's [`Key`] is resolved; a limit whose key is absent does not apply.
//! 4. All the request's buckets (class, global, per-key overrides) go to the store in one
//!    call: admitted only if every bucket admits; a refusal charges nothing.
//! 5. Refused: 429 with `Retry-After`, the rate-limit headers and a JSON body. Admitted:
//!    the handler finds the decision in the request's extensions, the response carries the
//!    headers of the most restrictive bucket, and the charge is given back if the policy
//!    says the response does not count. Rate-limit headers a handler (or another limiter
//!    further in) put on the response stay: the IETF lists show every bucket, and
//!    `X-RateLimit-*` the one with less remaining
//!    ([`merge_rate_limit_headers`]).
//!
//! # Per-route policies and the central layer
//!
//! In axum, `Router::layer` runs after routing, so the central layer runs before a
//! route's own layer. A per-route layer records its route (method + `MatchedPath`) in the
//! limiter when it sees its first request; from then on the central layer leaves that
//! route alone. Until then (the first request of each such route and method, per process)
//! the central layer charges the class provisionally and the per-route layer gives that
//! charge back before charging its own buckets, so the route's requests spend only the
//! route's buckets. Two consequences: until a request of the route gets through to its
//! layer, the route's requests are refused while their key's central class is exhausted
//! (with the central bucket's headers); and without axum's `MatchedPath` (a plain tower
//! stack, the central layer outside the router) the provisional charge and refund happen
//! on every request. Declaring the route's pattern ([`Limiter::policy_at`]) avoids both
//! where the central layer sees `MatchedPath`: it leaves the route alone from the start.
//!
//! # Client address
//!
//! Per-IP keys come from the TCP peer (axum's `ConnectInfo<SocketAddr>`, or a
//! `SocketAddr` / `IpAddr` request extension), or from the forwarding header of a trusted
//! proxy ([`ClientIp`]); without axum, see [`RateLimit`] for how a tower or hyper stack
//! gives it. A request with no peer address at all is a deployment mistake
//! (axum served without `into_make_service_with_connect_info::<SocketAddr>()`): the first
//! such request logs one `tracing` error saying how to fix it, and such requests then
//! share one per-IP bucket (`unknown-peer`), so they are still limited and never answered
//! with a 500; [`LimiterStats::no_peer`] counts them. With
//! [`LimiterBuilder::require_peer_address`] they are refused instead, with a 500 whose body
//! says how to fix the deployment, so the mistake cannot go unnoticed.
//!
//! # Stores
//!
//! [`MemoryStore`] by default (this process only, bounded). With the `redis` feature (on by
//! default), `store_from_env()` picks Redis behind a fallback store when `REDIS_URL` /
//! `KV_URL` is set, and the `redis` module re-exports tollgate-redis. Any [`Store`] works.
//!
//! # Reloading
//!
//! [`Limiter::reload`] replaces the rules (routes, global limits, buckets) while the
//! limiter serves: requests in flight finish under the rules they started with, limits
//! that did not change keep their counts, and rules that do not build are refused with
//! their error while the running ones stay. With the `config` feature,
//! [`Limiter::watch_file`] reloads a configuration file when it changes (see [`reload`]).
//!
//! # Observability
//!
//! See [`observe`]: with the `metrics` feature, counters per policy, bucket and outcome,
//! near-limit admissions, store errors, latency and fallback; `tracing` events (target
//! `tollgate`): `INFO` for refusals and what a shadow policy would refuse, at most one per
//! second per policy with the number left unlogged (never the key itself), `WARN` per
//! configuration warning and store failure, `ERROR` once for requests without a peer
//! address, and a `DEBUG` span per decision. [`Limiter::stats`] counts admitted, refused,
//! would-refuse and store errors.
//!
//! The decision ([`RateLimitDecision`]) is in the request's extensions for the handler,
//! and optionally in the response's for outer layers. The 429 is yours to shape:
//! [`ErrorBody`] (RFC 9457 problem details among its shapes) or a hook that builds the
//! whole response ([`LimiterBuilder::refusal_response`]).
//!
//! # Responses
//!
//! The rate-limit headers every limited response carries and the `429 Too Many
//! Requests` a refused request gets.
//!
//! Three pieces, each configurable on its own:
//!
//! - [`RateLimitOutcome`]: what a decision says about one request, bucket by bucket, in the
//!   terms headers and bodies are made of (limit, remaining, reset, retry-after).
//! - [`HeaderStyle`]: which headers to write. `X-RateLimit-Limit` / `-Remaining` / `-Reset`
//!   (reset as Unix seconds, Unix milliseconds, seconds from now or an HTTP date, see
//!   [`ResetFormat`]), the IETF `RateLimit` / `RateLimit-Policy` fields
//!   (draft-ietf-httpapi-ratelimit-headers-10, one named item per bucket), and
//!   `Retry-After` on refusals.
//! - [`ErrorBody`]: the JSON body of a 429: ready shapes (an RFC 9457
//!   `application/problem+json` among them) and a closure for anything else.
//! - [`RateLimitDecision`]: the decision in the request's and response's extensions.
//!
//! [`too_many_requests`] puts them together.
//!
//! The layer refuses a request without reading its body. Over HTTP/1, its answer to a
//! request that announced one (`Content-Length` other than 0, or `Transfer-Encoding`) says
//! `Connection: close`: the connection cannot carry another request before that body, and a
//! client told nothing would send its next request on a connection the server closes.
//! Closed while the body still arrives, a connection is reset, and a client that writes its
//! whole body before reading sees the reset rather than the 429: a server should read and
//! discard the rest for a while before closing (hyper alone does not; the repository's
//! examples do).
//!
//! ```
//! use std::time::Duration;
//! use http::{Method, StatusCode};
//! use tollgate::{too_many_requests, ErrorBody, HeaderStyle, RateLimitOutcome, ResetFormat};
//! use tollgate::{BucketState, Decision, Quota, Refusal, Timestamp};
//!
//! // What the store answered: the tenant's 100/min bucket is empty for 22.4 more seconds.
//! let decision = Decision {
//!     allowed: false,
//!     now: Timestamp::from_micros(1_717_200_000_000_000),
//!     buckets: vec![BucketState {
//!         allowed: false,
//!         limit: 100,
//!         remaining: 0,
//!         reset_after: Duration::from_secs(60),
//!         retry_after: Some(Duration::from_millis(22_400)),
//!         refusal: Some(Refusal::OverLimit),
//!     }],
//! };
//! let info = RateLimitOutcome::from_decision(
//!     "tenant",
//!     &decision,
//!     [("tenant", Quota::per_minute(100))],
//!     Method::GET,
//!     "/api/tickets",
//! );
//! assert_eq!(info.retry_after_secs(), Some(23)); // rounded up
//!
//! let style = HeaderStyle::x_ratelimit(ResetFormat::UnixSeconds);
//! let response = too_many_requests(&info, &style, &ErrorBody::code_details());
//! assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(response.headers()["retry-after"], "23");
//! assert_eq!(response.headers()["x-ratelimit-reset"], "1717200060");
//! assert_eq!(
//!     response.body().as_ref(),
//!     br#"{"error":"Rate limit exceeded","code":"RATE_LIMIT_EXCEEDED","details":{"limit":100,"window":"1m","retryAfter":23}}"#
//! );
//! ```
//!
//! # A request that can never fit
//!
//! When a request costs more than a bucket can ever hold ([`Refusal::CostExceedsCapacity`]),
//! waiting does not help. Such a refusal still answers `429 Too Many Requests` (it is a
//! refusal by the rate limiter, and clients and proxies that count 429s should see it as
//! one; `413` or `400` would blame the payload or the syntax, which are fine), but:
//!
//! - it has **no `Retry-After`**, because any value would be a promise that retrying
//!   works, and clients that honour it would retry forever;
//! - the ready bodies say so in their text field and carry `null` where the retry delay
//!   would be (see [`ErrorBody`]);
//! - the `X-RateLimit-*` and IETF headers are written as usual: they describe the bucket
//!   truthfully.
//!
//! [`Refusal::CostExceedsCapacity`]: tollgate_limits::Refusal::CostExceedsCapacity
//!
//! # Features
//!
//! | feature | what it adds | default |
//! |---|---|---|
//! | `axum` | `MatchedPath`-aware per-route policies, `ConnectInfo` peers | on |
//! | `redis` | the Redis store with fallback to memory (`tollgate::redis`, `store_from_env`) | on |
//! | `yaml` | configuration files in YAML (`Limiter::from_config`, `Config::from_yaml`) | on |
//! | `toml` | configuration files in TOML (`Limiter::from_config`, `Config::from_toml`) | on |
//! | `openapi` | `tollgate::publish`: limits in an OpenAPI document and an HTML table (no extra dependencies) | on |
//! | `config` | `yaml` and `toml` (both formats in one feature) | via `yaml` + `toml` |
//! | `deadpool` | `RedisStoreBuilder::pool`: an application's deadpool-redis pool (implies `redis`) | off |
//! | `tls` | `rediss://` URLs: Redis over TLS, rustls with the webpki roots (implies `redis`) | off |
//! | `admin` | `tollgate::admin`: an axum router for operators (implies `axum`) | off |
//!
//! The defaults are what a service behind axum, run as several instances sharing Redis and
//! configured from a file, needs; every other combination builds too (CI checks each feature
//! alone and none). For a smaller binary, pick what you use:
//! `tollgate = { version = "0.1", default-features = false, features = ["axum", "yaml"] }`
//! leaves out the Redis client and the TOML parser. `deadpool` is off because one
//! multiplexed connection (the default) is faster, and so that deadpool-redis's major
//! releases are not breaking changes for everyone.
// The reloads from files exist with the `yaml` or `toml` feature only; without them their
// names lead to the features.
#![cfg_attr(
    any(feature = "yaml", feature = "toml"),
    doc = "",
    doc = "[`Limiter::watch_file`]: crate::Limiter::watch_file",
    doc = "[`reload`]: crate::reload"
)]
#![cfg_attr(
    not(any(feature = "yaml", feature = "toml")),
    doc = "",
    doc = "[`Limiter::watch_file`]: crate#features",
    doc = "[`reload`]: crate#features"
)]

// One path per type: the modules holding the middleware and its model are private and
// their items are re-exported here, once; the optional parts are namespaces (`admin`,
// `config`, `observe`, `publish`, `redis`, `reload`) whose items are not repeated here.
#[cfg(feature = "admin")]
pub mod admin;
mod classify;
mod client_ip;
#[cfg(any(feature = "yaml", feature = "toml"))]
pub mod config;
mod describe;
mod direct;
mod engine;
mod error;
mod future;
mod inspect;
mod key;
mod layer;
mod limiter;
pub mod observe;
mod policy;
#[cfg(feature = "openapi")]
pub mod publish;
mod rate;
#[cfg(any(feature = "yaml", feature = "toml"))]
pub mod reload;
mod respond;
mod response_body;
mod service;

#[cfg(feature = "redis")]
pub use limiter::store_from_env;
/// The Redis store and the fallback store (feature `redis`): tollgate-redis, re-exported.
#[cfg(feature = "redis")]
pub use tollgate_redis as redis;

pub use classify::{PatternError, RoutePattern};
pub use client_ip::{peer_addr, ClientIp, ClientIpError, ProxyHeader};
pub use describe::{RouteLimits, RuleLimit, RuleSource};
pub use direct::DirectBucket;
pub use error::{BuildError, CheckError};
pub use future::ResponseFuture;
pub use inspect::{InspectError, OverrideInfo};
pub use key::Key;
pub use layer::RateLimitLayer;
pub use limiter::{Limiter, LimiterBuilder, LimiterStats, ENABLED_ENV};
pub use policy::Policy;
pub use rate::{Rate, RateError};
pub use respond::{
    merge_rate_limit_headers, too_many_requests, BucketOutcome, ErrorBody, HeaderStyle,
    RateLimitDecision, RateLimitOutcome, ResetFormat, TooManyRequests,
};
pub use response_body::ResponseBody;
pub use service::RateLimit;

pub use tollgate_limits::StoreMode;
pub use tollgate_limits::{
    Algorithm, Batch, BoxFuture, Bucket, BucketState, Clock, Decision, FailureMode, Limit,
    ManualClock, MemoryStats, MemoryStore, MemoryStoreBuilder, Op, Quota, QuotaError, Refusal,
    Store, StoreError, StoreKey, Timestamp, WhenFull, DEFAULT_SEGMENTS, MAX_COUNT, MAX_PERIOD,
};

/// The names of the rate-limit response headers tollgate writes.
pub mod headers {
    pub use crate::respond::{
        RATELIMIT, RATELIMIT_POLICY, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET,
    };
}

/// Not part of the public API: what the fuzz harnesses (`fuzz/harness`, replayed by this
/// crate's tests) and the axum oracle tests drive directly. No semver guarantees.
#[doc(hidden)]
pub mod __private {
    pub use crate::classify::{Classes, RouteTable, RouteTableBuilder};
}

/// The README's code blocks, compiled as doctests so the quick start stays true. They use
/// the default features (the Redis store, both file formats, `publish`, axum's handlers),
/// so they are compiled only with all of those on.
#[cfg(all(
    doctest,
    feature = "axum",
    feature = "redis",
    feature = "yaml",
    feature = "toml",
    feature = "openapi"
))]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
