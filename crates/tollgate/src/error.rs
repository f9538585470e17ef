//! Errors: [`BuildError`] for every configuration mistake (returned by
//! [`LimiterBuilder::build`](crate::LimiterBuilder::build)), [`CheckError`] for direct use.

use tollgate_limits::StoreError;

use crate::classify::PatternError;
use crate::client_ip::ClientIpError;
use crate::rate::RateError;

/// A configuration mistake, found when the limiter is built (never at request time).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A quota did not parse, or a limit is impossible (a burst of 0).
    #[error("policy `{policy}`, limit per {key}: {source}")]
    Rate {
        /// The policy.
        policy: String,
        /// The limit's key kind.
        key: String,
        /// What was wrong.
        #[source]
        source: Box<RateError>,
    },
    /// A bucket for direct use ([`LimiterBuilder::bucket`](crate::LimiterBuilder::bucket)
    /// and its kin) whose rate did not parse, or is impossible.
    #[error("bucket `{bucket}`: {source}")]
    BucketRate {
        /// The bucket.
        bucket: String,
        /// What was wrong.
        #[source]
        source: Box<RateError>,
    },
    /// A route pattern is malformed, two patterns tie, or a pattern can never match.
    #[error(transparent)]
    Route(#[from] PatternError),
    /// The client-IP configuration is wrong (e.g. a CIDR that does not parse).
    #[error(transparent)]
    ClientIp(#[from] ClientIpError),
    /// A policy that is not exempt has no limit.
    #[error("policy `{policy}` has no limit: add one (`.per_ip(\"100/min\")`) or use `Policy::exempt()`")]
    EmptyPolicy {
        /// The policy.
        policy: String,
    },
    /// A global policy ([`LimiterBuilder::global_policy`](crate::LimiterBuilder::global_policy))
    /// is exempt: spent on top of every request's class, it exempts nothing (leave it out;
    /// exempt a route with [`Policy::exempt`](crate::Policy::exempt) on its rule).
    #[error("global policy `{policy}` is exempt, which exempts nothing: leave it out, or exempt the routes it was meant for by their rules")]
    ExemptGlobal {
        /// The policy.
        policy: String,
    },
    /// An exempt policy was given limits, which it would never charge.
    #[error("policy `{policy}` is exempt but has limits, which it would never charge: drop the limits, or `Policy::exempt()`")]
    ExemptWithLimits {
        /// The policy.
        policy: String,
    },
    /// A policy name (or bucket name) is empty or holds characters other than letters,
    /// digits, `_`, `-`, `.`.
    #[error("`{name}` is not a usable policy or bucket name: use letters, digits, `_`, `-`, `.`")]
    BadName {
        /// The name as given.
        name: String,
    },
    /// A policy or bucket is named `override`: per-key overrides' buckets are stored under
    /// that name, and would share its keys.
    #[error(
        "`{name}` is reserved for per-key overrides' buckets: name the policy or bucket otherwise"
    )]
    ReservedName {
        /// The name as given.
        name: String,
    },
    /// A header name (of an API key or header key) is not a valid HTTP header name.
    #[error("policy `{policy}`: `{header}` is not a valid header name")]
    BadHeaderName {
        /// The policy.
        policy: String,
        /// The name as given.
        header: String,
    },
    /// A custom key kind is empty, holds unusable characters, or is `global` or `all`
    /// ([`Key::global`](crate::Key::global)'s kind and key), `ip` or `user`
    /// ([`Key::ip`](crate::Key::ip)'s and [`Key::user`](crate::Key::user)'s).
    #[error("policy `{policy}`: key kind `{kind}` must be 1-64 letters, digits, `_`, `-`, `.`, other than `global`, `all`, `ip` and `user` (use `Key::ip()` or `Key::user()` for those)")]
    BadKeyKind {
        /// The policy.
        policy: String,
        /// The kind as given.
        kind: String,
    },
    /// Two key kinds of the limiter where one is the other followed by `:` (a custom
    /// `header` beside [`Key::header`](crate::Key::header)'s `header:x-account`, in one
    /// policy or two): a key of the shorter kind taken from a request could name the
    /// other's bucket, or its per-key override (`override:<kind>:<key>`, one for the
    /// whole limiter).
    #[error("policy `{policy}`: key kinds `{kind}` and `{longer}` would share store keys (a `{kind}` key may start with what follows `{kind}:` in `{longer}`, in a policy's buckets or the limiter's per-key overrides); rename `{kind}`")]
    KeyKindsOverlap {
        /// A policy with the shorter kind.
        policy: String,
        /// The shorter kind.
        kind: String,
        /// The kind that is `kind` followed by `:`.
        longer: String,
    },
    /// One key kind stored two ways: hashed ([`Key::hashed`](crate::Key::hashed)) in one
    /// policy and as given in another. An override, a peek or a reset of the kind (the admin
    /// router's `PUT /overrides/<kind>/<key>`) stores its key one way, and would reach only
    /// the policies that store it that way.
    #[error("key kind `{kind}` is hashed in policy `{hashed}` and stored as given in policy `{plain}`: an override or a reset of a `{kind}` key would reach only one of them; hash every `{kind}` key or none")]
    KeyKindStoredTwoWays {
        /// The kind.
        kind: String,
        /// A policy that hashes it.
        hashed: String,
        /// A policy that stores it as given.
        plain: String,
    },
    /// A bucket for direct use keyed by client network
    /// ([`LimiterBuilder::bucket_per_network`](crate::LimiterBuilder::bucket_per_network))
    /// with a prefix no IPv6 address has.
    #[error("bucket `{bucket}`: network prefix /{prefix} is out of range: use 0..=128 (48 keys each /48 once)")]
    BadNetworkPrefix {
        /// The bucket.
        bucket: String,
        /// The prefix given.
        prefix: u8,
    },
    /// A policy limits per user but the limiter has no identity function.
    #[error("policy `{policy}` limits per user, but no identity is configured: call `.identity(|parts| ...)` on the builder")]
    NoIdentity {
        /// The policy.
        policy: String,
    },
    /// A cost of 0.
    #[error("policy `{policy}`: a cost must be at least 1")]
    ZeroCost {
        /// The policy.
        policy: String,
    },
    /// A status both [`Policy::refund_if`](crate::Policy::refund_if) and
    /// [`Policy::count_only_if`](crate::Policy::count_only_if) say yes to: its response
    /// would be both given back and counted (it was given back: the policy counted none).
    #[error("policy `{policy}`: a {status} response is both given back (`refund_if`) and counted (`count_only_if`); a response is one or the other: drop it from one of them")]
    RefundedAndCounted {
        /// The policy.
        policy: String,
        /// The first status both say yes to.
        status: u16,
    },
    /// Rules reloaded while a per-key override ([`Limiter::set_override`]) holds less than
    /// one request of a policy limiting by the override's kind now costs: every request of
    /// that key would be refused, as [`Limiter::set_override`] refuses to arrange. The
    /// running rules stay; raise or remove the override first.
    ///
    /// [`Limiter::set_override`]: crate::Limiter::set_override
    #[error("policy `{policy}` would cost {cost} per request, but the override of {kind} key `{key}` admits at most {capacity} at once: every request of that key would be refused (raise or remove the override first)")]
    CostExceedsOverride {
        /// The policy.
        policy: String,
        /// The override's key kind (`ip`, `user`, `api_key`, ...).
        kind: String,
        /// The key, as stored.
        key: String,
        /// What one request of the policy costs.
        cost: u64,
        /// What the override admits at once.
        capacity: u64,
    },
    /// A fixed cost above what a limit can ever admit: every request would be refused.
    #[error("policy `{policy}`: a cost of {cost} can never fit the limit per {key}, which admits at most {capacity} at once")]
    CostExceedsCapacity {
        /// The policy.
        policy: String,
        /// The limit's key kind.
        key: String,
        /// The cost.
        cost: u64,
        /// The limit's capacity.
        capacity: u64,
    },
    /// Two policies share a bucket name but declare different limits.
    #[error("{}", shared_bucket_message(bucket, first, second))]
    SharedBucketMismatch {
        /// The bucket name.
        bucket: String,
        /// The policy seen first.
        first: String,
        /// The policy seen second.
        second: String,
    },
    /// Two buckets show one name in the IETF `RateLimit` and `RateLimit-Policy` fields,
    /// which write `:` as `-` (a policy `p`'s per-IP bucket `p:ip` and a global policy
    /// named `p-ip`): a client could not tell their items apart. Checked whatever the
    /// header style, across the limiter's policies, the per-key overrides of their kinds
    /// (named `override:<kind>`), its buckets for direct use and its guards.
    #[error("buckets `{first}` and `{second}` both show as {shown} in the `RateLimit` and `RateLimit-Policy` fields (`:` is written `-` there); rename one")]
    ShownAlike {
        /// The bucket found first.
        first: String,
        /// The other bucket.
        second: String,
        /// The name both show (a structured-field string, quoted).
        shown: String,
    },
    /// A bucket for direct use is declared twice, or has the name of a policy's bucket.
    #[error("bucket `{name}` is declared twice (or is also a policy's bucket name)")]
    DuplicateBucket {
        /// The bucket name.
        name: String,
    },
    /// A default rule is required ([`LimiterBuilder::require_default`](crate::LimiterBuilder::require_default))
    /// and none is configured.
    #[error("no default rule: add `.route(\"/*\", policy)` (or `.default_policy(policy)`) for what no other rule matches")]
    NoDefaultRule,
    /// The store the environment names cannot be used (e.g. `REDIS_URL` does not parse).
    #[cfg(feature = "redis")]
    #[error(transparent)]
    Store(#[from] tollgate_redis::RedisConfigError),
    /// [`Limiter::policy_at`](crate::Limiter::policy_at) was given a pattern that no rule
    /// of the central table matches (and the table has no default rule). Inside
    /// `Router::nest`, the pattern is the route's full path, the nest's prefix included.
    #[error("per-route policy `{pattern}` matches no rule of the central table, so the central layer never sees such a request: inside `Router::nest(prefix, ..)` give the full path with the prefix (`POST /api/chat`, not `POST /chat`); for a route the central table does not cover, use `Limiter::policy`")]
    PolicyAtMatchesNoRule {
        /// The pattern as given.
        pattern: String,
    },
    /// [`Limiter::reload`](crate::Limiter::reload) was given a setting that is fixed
    /// while the limiter runs (the store and its name, the client-IP settings, the
    /// identity function, the header style, the error body, the refusal hook, whether the
    /// decision goes into requests and responses, the on/off switch): build a new limiter
    /// to change it. A reload that sets one is refused whatever the value, even the
    /// running one.
    #[error("`{setting}` cannot change while the limiter runs: a reload replaces the rules only (routes, global limits, buckets, shadow, on_store_failure); restart to change it")]
    NotReloadable {
        /// The builder setting (`store`, `store_name`, `client_ip`,
        /// `require_peer_address`, `identity`, `header_style`, `error_body`,
        /// `refusal_response`, `decision_in_request`, `decision_in_response`, `enabled`).
        setting: &'static str,
    },
    /// A reload whose rules drop a bucket for direct use the running rules declare: code
    /// checks it by name ([`Limiter::check`](crate::Limiter::check)), and every such check
    /// would fail from then on. Keep the bucket in the rules (its limit may change), or
    /// restart without it.
    #[error("the reloaded rules drop the bucket for direct use `{bucket}`, which code checks by name (each check would fail): keep it in the rules (its limit may change), or restart without it")]
    DirectBucketDropped {
        /// The bucket's name.
        bucket: String,
    },
    /// A mistake in a configuration file, with the file, line, column and field: what
    /// [`LimiterBuilder::build`](crate::LimiterBuilder::build) returns for a builder set
    /// up from a file ([`LimiterBuilder::from_config`](crate::LimiterBuilder::from_config),
    /// [`Config::apply`](crate::config::Config::apply)), and what `?` makes of a
    /// [`ConfigError`](crate::config::ConfigError), so that one error type carries the
    /// file's context through `LimiterBuilder::from_config(path)?.identity(..).build()?`.
    #[cfg(any(feature = "yaml", feature = "toml"))]
    #[error(transparent)]
    Config(Box<crate::config::ConfigError>),
    /// `RATE_LIMIT_ENABLED` holds something other than a switch ([`ENABLED_ENV`](crate::ENABLED_ENV)
    /// lists the spellings read).
    #[error(
        "RATE_LIMIT_ENABLED=`{value}` is not a switch: use true/false (or 1/0, on/off, yes/no)"
    )]
    BadEnvSwitch {
        /// The value.
        value: String,
    },
}

#[cfg(any(feature = "yaml", feature = "toml"))]
impl From<crate::config::ConfigError> for BuildError {
    fn from(error: crate::config::ConfigError) -> Self {
        BuildError::Config(Box::new(error))
    }
}

/// [`BuildError::SharedBucketMismatch`]'s message: two policies of one name (two routes
/// given one name, a policy named `global` beside the global limits) are told apart from
/// two names sharing a bucket.
fn shared_bucket_message(bucket: &str, first: &str, second: &str) -> String {
    if first == second {
        format!(
            "two policies named `{first}` share bucket `{bucket}` but declare different limits \
             (a policy's name names its buckets, a file's rule without `name:` is named after \
             its pattern, and `global` is the global limits' own): give one of them another \
             name, or both the same limits"
        )
    } else {
        format!(
            "policies `{first}` and `{second}` share bucket `{bucket}` but declare different \
             limits; give them the same limits or different `.bucket(..)` names"
        )
    }
}

/// Why a direct call ([`Limiter::check`](crate::Limiter::check) and the like) did not
/// decide.
///
/// With the `axum` feature it is an axum response, so `?` works in a handler that returns
/// `Result<_, CheckError>`: [`CheckError::Store`] answers `503 Service Unavailable` with
/// `Retry-After: 1` and `{"error":"rate limiter unavailable"}` (as a policy that fails
/// closed does under the default body: an error holds no limiter, so it does not take a
/// limiter's [`ErrorBody::problem`](crate::ErrorBody::problem) shape);
/// [`CheckError::UnknownBucket`], a mistake in the code, answers `500` with
/// `{"error":"internal server error"}` and logs a `tracing` error naming the bucket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// No bucket of that name was declared with
    /// [`LimiterBuilder::bucket`](crate::LimiterBuilder::bucket).
    #[error("no bucket for direct use named `{0}` (declare it with `.bucket(name, rate)` on the builder, or under `buckets:` in a configuration file; a route's or a global limit's bucket is looked at with `peek_bucket` and `reset_bucket`)")]
    UnknownBucket(String),
    /// The store could not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for CheckError {
    fn into_response(self) -> axum::response::Response {
        let response = match &self {
            CheckError::Store(_) => crate::respond::unavailable(&crate::ErrorBody::default()),
            CheckError::UnknownBucket(_) => {
                tracing::error!(target: "tollgate", error = %self, "rate-limit check failed");
                crate::respond::fixed_response(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "application/json",
                    br#"{"error":"internal server error"}"#,
                )
            }
        };
        response.map(axum::body::Body::from)
    }
}
