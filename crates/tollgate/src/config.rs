//! Configuration files: the limiter's table in TOML or YAML, next to the deployment.
//!
//! [`Limiter::from_config`](crate::Limiter::from_config) loads a file (by its extension:
//! `.toml`, `.yaml`/`.yml`) and builds the limiter;
//! [`LimiterBuilder::from_config`](crate::LimiterBuilder::from_config) stops short of building
//! so code can add what a file cannot hold (an identity function, a tenant extractor, a
//! custom body). Every field maps onto the builder:
//!
//! ```yaml
//! enabled: true                  # RATE_LIMIT_ENABLED=false in the environment wins
//! shadow: false                  # log what would be refused, refuse nothing
//! on_store_failure: fallback     # fallback | open | closed
//! store: { kind: env }           # memory | redis (url:) | env; REDIS_URL / KV_URL, when set, win
//! client_ip: { trusted_proxies: [10.0.0.0/8], ipv6_prefix: 64 }
//! headers: { x_ratelimit: unix_seconds, ietf: true }   # unix_millis | seconds | http_date | none
//!                                # reset_at_retry: true: a 429's X-RateLimit-Reset is its retry
//! body: retry_after              # retry_after | code_details | message
//! default_key: ip                # the key of `rate_limit:` blocks that name none
//! routes:
//!   - path: /api/stripe/webhook
//!     exempt: true
//!   - path: /api/*
//!     name: default
//!     limits:
//!       - { per: ip, limit: 500/min }
//!       - { per: user, limit: 10000/h }
//!   - path: /v1/invoices         # a token bucket and a daily cap
//!     methods: [GET]
//!     rate_limit: { sustained: 100/min, burst: 20/s, daily: 10000/day }
//! gateway:
//!   global_rate_limit: { sustained: 1000/min }
//! buckets:                       # for direct use from handlers (Limiter::check)
//!   sign-in-failures: { limit: 5/30min, algorithm: exact }
//!   sign-in-per-ip: { limit: 20/15min, when_full: evict_limited }
//! ```
//!
//! Keys (`per:`): `ip`, `network:<bits>` (the client IP with IPv6 folded to its first
//! `<bits>`: `network:48`, a backstop beside `ip`), `user` (needs an identity function in
//! code), `api_key` (the `x-api-key` header) or `api_key:<header>`, `header:<name>`,
//! `tenant:<header>`, `global`. `api_key` keys reach the store as a digest; `header:<name>`
//! keys as they are read (a digest only for `authorization`, `proxy-authorization` and
//! `cookie`), as `user` and `tenant:` keys: put a credential under `api_key:<header>`, not
//! `header:<name>` (see [`Key`] on what a digest hides).
//! A limit is `limit:` (a rolling window; `algorithm:` `sliding` | `exact` | `fixed`) or
//! the trio `sustained:` (token bucket refill), `burst:` (its capacity: a count, `20`, or
//! the count of a quota, `20/s`) and `daily:` (a hard cap per day, `10000/day`, over a
//! rolling window: never more in any 24 hours, erring towards refusing as a rolling window
//! does: a client at a steady pace can be refused above about 91% of the cap; `limit:
//! 10000/day` with `algorithm: exact` counts every call, `algorithm: fixed` is a calendar
//! day that resets at 00:00 UTC; a fixed window of several days is counted from 1 January
//! 1970: see [`Rate::fixed`]). `when_full: evict_limited` on a route,
//! a bucket or a global limit with a key serves new keys when the memory store's share of
//! the bucket is full of keys at their limit (see [`WhenFull`]; `refuse_new_keys` is the
//! default; `keep_counts` evicts no key that still counts, for a lockout per account).
//!
//! Errors name the file, the line, the column and the field, and say what was expected
//! (`rate-limits.yaml:4:7: routes[0].rate_limit.sustained: ...`):
//!
//! - syntax, types, unknown fields and quotas that do not parse: [`ConfigError::Parse`];
//! - values out of range: [`ConfigError::Value`]: `store.max_entries` below
//!   [`MIN_MAX_ENTRIES`], `store.timeout_ms: 0`, `store.fallback_divisor: 0`,
//!   `store.patience: 0`, a status outside 100-599 in `refund_statuses` or
//!   `count_only_statuses`;
//! - incomplete rules (`burst` without `sustained`): [`ConfigError::Rule`];
//! - what the builder finds wrong (two routes that tie, a trusted proxy with host bits, a
//!   `cost: 0`, `per: user` without an identity function, a bad bucket name):
//!   [`ConfigError::Invalid`], pointed at the rule of the file that caused it, whichever
//!   way the limiter is built: [`Limiter::from_config`](crate::Limiter::from_config),
//!   [`Limiter::from_config_with`](crate::Limiter::from_config_with), or
//!   [`LimiterBuilder::from_config`]'s builder with code's additions and `build()`, whose
//!   [`BuildError::Config`] holds it (and `?` turns a [`ConfigError`] into a
//!   [`BuildError`], so one error type goes through the whole chain):
//!
//! ```no_run
//! use tollgate::{BuildError, Limiter, LimiterBuilder};
//!
//! fn limiter() -> Result<Limiter, BuildError> {
//!     LimiterBuilder::from_config("rate-limits.yaml")?
//!         .identity(|parts| parts.headers.get("x-user")?.to_str().ok().map(String::from))
//!         .build() // e.g. "rate-limits.yaml:3:7: client_ip.trusted_proxies[0]: ..."
//! }
//! ```
//!
//! A running limiter takes an edited file's rules without a restart:
//! [`Limiter::reload_file`](crate::Limiter::reload_file) once, or
//! [`Limiter::watch_file`](crate::Limiter::watch_file) on every change (see
//! [`crate::reload`]). `routes`, `global`, `gateway`, `buckets`, `default_key`, `shadow` and
//! `on_store_failure` are reloaded; a reload of a file whose `enabled`, `store`,
//! `client_ip`, `headers` or `body` changed is refused ([`ConfigError::NotReloadable`]).
//!
//! An empty file (or one with only comments) is valid: every setting takes its default,
//! and the limiter it builds limits nothing unless code adds rules. Loading it logs a
//! warning (`tracing`, target `tollgate`), as does a file that declares no routes, global
//! limits or buckets.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tollgate_limits::{
    Algorithm, FailureMode, Limit, Quota, QuotaError, WhenFull, DEFAULT_SEGMENTS,
};

use crate::client_ip::ClientIp;
use crate::error::BuildError;
use crate::key::Key;
use crate::limiter::{Limiter, LimiterBuilder};
use crate::policy::Policy;
use crate::rate::Rate;
use crate::respond::{ErrorBody, HeaderStyle, ResetFormat};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file's name does not say its format.
    #[error("{path}: unknown format; {FORMATS}")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// The text is not valid for the schema: a syntax error, a wrong type, an unknown field,
    /// a quota that does not parse.
    #[error("{file}{location}: {message}", location = Location(*line, *column))]
    Parse {
        /// The file (or `<toml>` / `<yaml>` for text).
        file: String,
        /// The line, from 1, where known.
        line: Option<usize>,
        /// The column, from 1, where known.
        column: Option<usize>,
        /// What was wrong and what was expected.
        message: String,
    },
    /// The values parse but do not make a limiter (ties between routes, a CIDR with host
    /// bits, a cost of 0, `per: user` without an identity function, a bad bucket name...):
    /// the builder's error, pointed at the rule of the file that caused it.
    #[error("{file}{location}: {field}: {source}", location = Location(*line, *column))]
    Invalid {
        /// The file.
        file: String,
        /// The line of the field, from 1, where known.
        line: Option<usize>,
        /// The column of the field, from 1, where known.
        column: Option<usize>,
        /// Which field (`routes[2].cost (/api/*)`, `client_ip.trusted_proxies[0]`), or
        /// `limiter` for an error no rule of the file explains (a rule added in code).
        field: String,
        /// The builder's error.
        #[source]
        source: Box<BuildError>,
    },
    /// A rule of the file is incomplete or contradicts itself (e.g. `burst` without
    /// `sustained`, an exempt route with limits).
    #[error("{file}{location}: {field}: {message}", location = Location(*line, *column))]
    Rule {
        /// The file.
        file: String,
        /// The line of the field, from 1, where known.
        line: Option<usize>,
        /// The column of the field, from 1, where known.
        column: Option<usize>,
        /// Which field (`routes[2].rate_limit.burst (/api/*)`, `buckets.sign-in`,
        /// `global[0]`).
        field: String,
        /// What was wrong.
        message: String,
    },
    /// A value of the right type but out of range (`store.max_entries: 1`,
    /// `timeout_ms: 0`, `refund_statuses: [700]`).
    #[error("{file}{location}: {field}: {problem}", location = Location(*line, *column))]
    Value {
        /// The file (or `<toml>` / `<yaml>` for text).
        file: String,
        /// The line of the value, from 1, where known.
        line: Option<usize>,
        /// The column of the value, from 1, where known.
        column: Option<usize>,
        /// Which field (`store.max_entries`, `routes[1].refund_statuses[0]`).
        field: String,
        /// What is wrong with the value.
        problem: ValueProblem,
    },
    /// A reload ([`Limiter::reload_file`](crate::Limiter::reload_file), a
    /// [`ConfigWatcher`](crate::reload::ConfigWatcher)) of a file that changes a setting
    /// fixed while the limiter runs: `enabled`, `store`, `client_ip`, `headers` or `body`.
    /// Nothing of the file was applied; restart to apply it.
    #[error("{file}{location}: {field}: cannot change while the limiter runs (a reload applies `routes`, `global`, `gateway`, `buckets`, `default_key`, `shadow` and `on_store_failure`); nothing was reloaded: restore it, or restart to apply it", location = Location(*line, *column))]
    NotReloadable {
        /// The file.
        file: String,
        /// The line of the field, from 1, where known.
        line: Option<usize>,
        /// The column of the field, from 1, where known.
        column: Option<usize>,
        /// The top-level field (`store`, `client_ip`, `headers`, `body`, `enabled`).
        field: String,
    },
    /// A reload from a file ([`Limiter::reload_file`], [`Limiter::reload_config_with`], a
    /// [`ConfigWatcher`](crate::reload::ConfigWatcher)) read it with no routes, global
    /// limits or buckets, where the file the rules running came from had some: taken for a
    /// file emptied by mistake or read while it was being written. Nothing was reloaded.
    #[error("{file}: declares no routes, global limits or buckets, where the rules running came with some (a file emptied by mistake, or caught while being written?); nothing was reloaded: restart to run without them")]
    NoLimits {
        /// The file.
        file: String,
    },
    /// [`ConfigWatcher::reload_now`](crate::reload::ConfigWatcher::reload_now) read a file
    /// that may be the running one caught mid-write (it drops a route, says less in its
    /// last route, or changes a global limit or a bucket): not loaded now. The watcher
    /// tries it once `polls` polls in a row read it the same (it may refuse it then, as
    /// any reload: a setting that takes a restart, rules that do not build).
    #[error("{file}: drops a route, says less in its last route, or changes a global limit or a bucket, as a file caught while being written would: not loaded now; the watcher tries it once {polls} polls in a row read it the same")]
    Unsettled {
        /// The file.
        file: String,
        /// The polls that must read it the same ([`DROP_READS`](crate::reload::DROP_READS)).
        polls: u32,
    },
    /// A [`ConfigWatcher`](crate::reload::ConfigWatcher)'s reload of the file panicked:
    /// in the code given to the watcher (its
    /// [`adjust`](crate::reload::WatchBuilder::adjust) or
    /// [`customize`](crate::reload::WatchBuilder::customize) function), or else in the
    /// limiter's own. Nothing was reloaded, and the watcher goes on watching.
    #[error("{file}: the reload panicked ({message}), in the watcher's adjust or customize function or the limiter's own code; nothing was reloaded")]
    Panicked {
        /// The file.
        file: String,
        /// What the panic said (its message, when it has one).
        message: String,
    },
    /// A [`ConfigWatcher`](crate::reload::ConfigWatcher) could not start its thread.
    #[error("{path}: cannot watch: {source}")]
    Watch {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A store named in the file cannot be made here (e.g. `kind: redis` without the
    /// `redis` feature, or without a `url`; a `url` that does not parse), or the
    /// environment's store settings, which override the file's, are not valid.
    #[error("{file}{location}: {field}: {message}", location = Location(*line, *column))]
    Store {
        /// The file.
        file: String,
        /// The line of the field, from 1, where known (not for the environment's settings).
        line: Option<usize>,
        /// The column of the field, from 1, where known.
        column: Option<usize>,
        /// Which field: `store.url`, `store.kind`, or `store` for the environment's settings
        /// (`REDIS_URL`, `TOLLGATE_FALLBACK_DIVISOR`...).
        field: String,
        /// What was wrong.
        message: String,
    },
}

/// Why a value of a configuration file is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueProblem {
    /// `store.max_entries` below [`MIN_MAX_ENTRIES`].
    #[error(
        "a store of {value} entries is too small: use at least {MIN_MAX_ENTRIES} (a store \
         smaller than the keys active in one window forgets keys that are being limited, \
         and then limits nothing)"
    )]
    TooFewEntries {
        /// The value given.
        value: usize,
    },
    /// `store.timeout_ms: 0`.
    #[error("a timeout of 0 ms would answer every call from memory: use at least 1")]
    ZeroTimeout,
    /// `store.fallback_divisor: 0`.
    #[error("the divisor is the number of instances sharing the store: use at least 1")]
    ZeroDivisor,
    /// `store.patience: 0`.
    #[error(
        "the patience is how many timeouts a call queued behind Redis's answers may wait: \
         use at least 1"
    )]
    ZeroPatience,
    /// `store.prefix` blank, or holding a space or control character.
    #[error(
        "a key prefix must be printable ASCII without spaces, like `tollgate:billing:` \
         (a blank one would put tollgate's keys among the application's own)"
    )]
    BadPrefix,
    /// A status code outside 100-599 in `refund_statuses` or `count_only_statuses`.
    #[error("{0} is not an HTTP status code: use 100-599 (for example 304 or 401)")]
    NotAStatus(u16),
    /// A status in both `refund_statuses` and `count_only_statuses` of one rule.
    #[error("{0} is also in `refund_statuses`: a response of it would be both counted and given back; keep it in one list")]
    RefundedAndCounted(u16),
}

/// The smallest `store.max_entries` a file may ask for: keys per bucket name the memory
/// store holds. When a bucket's share is full, new keys of that bucket are refused (or,
/// with `WhenFull::EvictLimited`, the least recently seen limited keys are evicted), so a
/// share smaller than the keys active in one window refuses or forgets clients; with a
/// handful of entries limiting stops being useful. 1024 is the smallest store whose every
/// shard keeps 64 keys (16 shards).
pub const MIN_MAX_ENTRIES: usize = 1024;

struct Location(Option<usize>, Option<usize>);

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (Some(l), Some(c)) => write!(f, ":{l}:{c}"),
            (Some(l), None) => write!(f, ":{l}"),
            _ => Ok(()),
        }
    }
}

/// The file names this build reads, for [`ConfigError::UnknownFormat`].
const FORMATS: &str = if cfg!(all(feature = "toml", feature = "yaml")) {
    "name the file *.toml, *.yaml or *.yml"
} else if cfg!(feature = "toml") {
    "name the file *.toml (YAML needs tollgate's `yaml` feature)"
} else {
    "name the file *.yaml or *.yml (TOML needs tollgate's `toml` feature)"
};

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// Whether limiting is on (default true; `RATE_LIMIT_ENABLED` wins).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Log and count what would be refused, refuse nothing.
    #[serde(default)]
    pub shadow: bool,
    /// What to do when the store's backend is down.
    #[serde(default)]
    pub on_store_failure: Option<FailureMode>,
    /// Where bucket state lives.
    #[serde(default)]
    pub store: StoreConfig,
    /// How the client IP is found.
    #[serde(default)]
    pub client_ip: ClientIpConfig,
    /// Which rate-limit headers responses carry.
    #[serde(default)]
    pub headers: HeadersConfig,
    /// The shape of 429 bodies.
    #[serde(default)]
    pub body: Option<BodyText>,
    /// The key of `rate_limit:` blocks that do not say `per:` (default `ip`).
    #[serde(default)]
    pub default_key: Option<KeyText>,
    /// Buckets for direct use from handlers. A name given twice is an error (YAML would
    /// keep the last one silently).
    #[serde(default, deserialize_with = "unique_keys")]
    pub buckets: BTreeMap<String, LimitConfig>,
    /// The route table, most specific rule wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Limits spent by every non-exempt request.
    #[serde(default)]
    pub global: Vec<LimitConfig>,
    /// Another spelling of a global limit: `gateway: { global_rate_limit: ... }`.
    #[serde(default)]
    pub gateway: Option<GatewayConfig>,
    /// The text the configuration was read from, to point errors at its lines.
    #[serde(skip)]
    origin: Option<Arc<Origin>>,
}

/// The sections of a file a reload may not change: what the limiter was built with.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FileSettings {
    enabled: Option<bool>,
    store: StoreConfig,
    client_ip: ClientIpConfig,
    headers: HeadersConfig,
    body: Option<BodyText>,
}

impl FileSettings {
    fn of(config: &Config) -> Self {
        Self {
            enabled: config.enabled,
            store: config.store.clone(),
            client_ip: config.client_ip.clone(),
            headers: config.headers.clone(),
            body: config.body,
        }
    }

    /// The first top-level field of `other` that differs from these.
    fn changed(&self, other: &FileSettings) -> Option<&'static str> {
        [
            ("enabled", self.enabled != other.enabled),
            ("store", self.store != other.store),
            ("client_ip", self.client_ip != other.client_ip),
            ("headers", self.headers != other.headers),
            ("body", self.body != other.body),
        ]
        .into_iter()
        .find_map(|(field, changed)| changed.then_some(field))
    }
}

/// The text a [`Config`] was read from.
struct Origin {
    text: String,
    format: Format,
}

/// Without the text, which may hold a store's password (a review: `{config:?}` printed
/// the whole file).
impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin")
            .field("bytes", &self.text.len())
            .field("format", &self.format)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    #[cfg(feature = "toml")]
    Toml,
    #[cfg(feature = "yaml")]
    Yaml,
}

/// `store:`. Its `Debug` hides the URL's password.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct StoreConfig {
    /// `memory` (default), `redis` or `env`. `REDIS_URL` / `KV_URL` in the environment,
    /// when set, override it: the store is then Redis at that URL, falling back to memory.
    #[serde(default)]
    pub kind: StoreKind,
    /// For `redis`: `redis://` or `rediss://` URL.
    #[serde(default)]
    pub url: Option<String>,
    /// Redis: what every key starts with (default `tollgate:`). Apps that share one Redis
    /// each need their own, or their buckets of the same name share one budget (a client
    /// refused by one app's `failed-auth` is refused by the other's).
    #[serde(default)]
    pub prefix: Option<String>,
    /// The most keys the memory store (or the fallback) holds; at least
    /// [`MIN_MAX_ENTRIES`].
    #[serde(default)]
    pub max_entries: Option<usize>,
    /// Redis: milliseconds to wait before answering from memory; at least 1 (more than an
    /// hour is taken as an hour).
    /// `TOLLGATE_REDIS_TIMEOUT_MS` in the environment, when set, overrides it.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Redis: divide limits by this while on the memory fallback (the number of
    /// instances); at least 1. `TOLLGATE_FALLBACK_DIVISOR` in the environment, when set,
    /// overrides it.
    #[serde(default)]
    pub fallback_divisor: Option<u32>,
    /// Redis: how many timeouts in all a request may wait while its call is queued behind
    /// Redis's answers (a burst on a healthy Redis); at least 1, default 20
    /// (`FallbackConfig::with_patience` in tollgate-redis). `TOLLGATE_REDIS_PATIENCE` in
    /// the environment, when set, overrides it.
    #[serde(default)]
    pub patience: Option<u32>,
}

/// Hides the URL's password (a review: `{config:?}` printed it, where the Redis store's
/// own `Debug` hides it).
impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let StoreConfig {
            kind,
            url,
            prefix,
            max_entries,
            timeout_ms,
            fallback_divisor,
            patience,
        } = self;
        let url = url.as_deref().map(tollgate_limits::redact::hide_user_info);
        f.debug_struct("StoreConfig")
            .field("kind", kind)
            .field("url", &url)
            .field("prefix", prefix)
            .field("max_entries", max_entries)
            .field("timeout_ms", timeout_ms)
            .field("fallback_divisor", fallback_divisor)
            .field("patience", patience)
            .finish()
    }
}

/// `store.kind`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// In this process.
    #[default]
    Memory,
    /// Redis at `url`, falling back to memory.
    Redis,
    /// `REDIS_URL` or `KV_URL` if set (Redis with fallback), memory otherwise.
    Env,
}

/// `client_ip:`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientIpConfig {
    /// Proxies whose forwarded headers are believed (CIDRs or addresses).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// IPv6 clients are keyed by this prefix (default 64).
    #[serde(default)]
    pub ipv6_prefix: Option<u8>,
}

/// `headers:`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HeadersConfig {
    /// `X-RateLimit-Reset` as `unix_seconds` (default), `unix_millis`, `seconds`,
    /// `http_date`, or `none` for no `X-RateLimit-*` headers.
    #[serde(default)]
    pub x_ratelimit: Option<ResetText>,
    /// The IETF `RateLimit` / `RateLimit-Policy` fields (default true).
    #[serde(default)]
    pub ietf: Option<bool>,
    /// On a refused request, `X-RateLimit-Reset` says when it can be retried, not when the
    /// bucket is full again (default false): [`HeaderStyle::with_reset_at_retry`].
    #[serde(default)]
    pub reset_at_retry: Option<bool>,
}

/// `headers.x_ratelimit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetText {
    /// Unix seconds.
    UnixSeconds,
    /// Unix milliseconds.
    UnixMillis,
    /// Seconds from now.
    Seconds,
    /// An HTTP date.
    HttpDate,
    /// No `X-RateLimit-*` headers.
    None,
}

/// `body:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyText {
    /// `{"error", "message", "retryAfter"}` (the default).
    RetryAfter,
    /// `{"error", "code", "details": {"limit", "window", "retryAfter"}}`.
    CodeDetails,
    /// `{"error", "message", "limit", "remaining", "reset_at"}`.
    Message,
}

/// One rule of `routes:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteConfig {
    /// The path pattern: `/api/*`, `/v1/campaigns/{id}`, `/v1/campaigns/:id`.
    pub path: String,
    /// Methods the rule is for (all if empty; left out in a file, as `methods: []` names
    /// none and is refused).
    #[serde(default, deserialize_with = "methods_named")]
    pub methods: Vec<String>,
    /// The policy's name (default: from the pattern, `GET /v1/invoices` → `get-v1-invoices`).
    #[serde(default)]
    pub name: Option<String>,
    /// Never limited.
    #[serde(default)]
    pub exempt: bool,
    /// A bucket name shared with other rules.
    #[serde(default)]
    pub bucket: Option<String>,
    /// Points per request (default 1).
    #[serde(default)]
    pub cost: Option<u64>,
    /// Log, do not refuse.
    #[serde(default)]
    pub shadow: bool,
    /// What to do when the store is down, for this rule.
    #[serde(default)]
    pub on_store_failure: Option<FailureMode>,
    /// What a bounded store does with a new key of this rule's buckets when their share is
    /// full of keys at their limit: `refuse_new_keys` (the default), `evict_limited` or
    /// `keep_counts` (see [`WhenFull`]).
    #[serde(default)]
    pub when_full: Option<WhenFull>,
    /// Response statuses whose charge is given back (e.g. `[304]`); 100-599.
    #[serde(default)]
    pub refund_statuses: Vec<u16>,
    /// Only responses with these statuses count (e.g. `[401]`); 100-599.
    #[serde(default)]
    pub count_only_statuses: Vec<u16>,
    /// The rule's limits.
    #[serde(default)]
    pub limits: Vec<LimitConfig>,
    /// One limit spelled `{ sustained, burst, daily }` (a token bucket and a daily cap).
    #[serde(default)]
    pub rate_limit: Option<LimitConfig>,
}

/// `gateway:`: a global limit, spelled `gateway: { global_rate_limit: { sustained: 1000/min } }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// A global limit.
    #[serde(default)]
    pub global_rate_limit: Option<LimitConfig>,
}

/// One limit: whose budget, and how much.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LimitConfig {
    /// Whose budget (default: `default_key`, or `global` under `global:`/`gateway:`).
    #[serde(default)]
    pub per: Option<KeyText>,
    /// A quota counted by `algorithm` (default `sliding`).
    #[serde(default)]
    pub limit: Option<Quota>,
    /// `sliding` (default), `exact` or `fixed` ([`Algorithm`]'s names in a file).
    #[serde(default)]
    pub algorithm: Option<Algorithm>,
    /// Token bucket refill rate.
    #[serde(default)]
    pub sustained: Option<Quota>,
    /// Token bucket capacity: a count (`20`), or a quota's count (`20/s` is 20).
    #[serde(default, deserialize_with = "burst")]
    pub burst: Option<Quota>,
    /// A hard cap per rolling window (`10000/day`: never more in any 24 hours), counted as
    /// `limit:` is by default ([`Rate::sliding`]).
    #[serde(default)]
    pub daily: Option<Quota>,
    /// Under `buckets:` and the global limits with a key (`per:`): what a bounded store does
    /// with a new key when the bucket's share is full of keys at their limit,
    /// `refuse_new_keys` (the default), `evict_limited` or `keep_counts` (see
    /// [`WhenFull`]). A route's limits take it from the route's `when_full:`.
    #[serde(default)]
    pub when_full: Option<WhenFull>,
}

/// What a file declares ([`Config::declared`]), for a reload to tell whether it may have
/// been read while it was written, the rest not written yet ([`Declared::may_be_cut_from`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Declared {
    /// Each route, in the file's order.
    routes: Vec<RouteShape>,
    /// Each global limit and bucket, all it says.
    others: Vec<String>,
}

impl Declared {
    /// How many routes.
    pub(crate) fn routes(&self) -> usize {
        self.routes.len()
    }

    /// Whether it declares no route, global limit or bucket.
    pub(crate) fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.others.is_empty()
    }

    /// Whether this may be `were`'s file caught mid-write: it drops a route of `were` (or
    /// changes what one is for); its last route says less than `were`'s route of that
    /// path ([`RouteShape::cut_from`]); its last route is a new one whose path a route of
    /// `were` takes (added at the end and cut, it would take those requests over without
    /// its own limits written yet); or a global limit or bucket of `were` is gone or says
    /// anything else. An edit that does any of these on purpose waits too; one that
    /// changes a value of the last route (a burst 2 to 5) does not.
    pub(crate) fn may_be_cut_from(&self, were: &Declared) -> bool {
        let has = |id: &(String, Vec<String>)| self.routes.iter().any(|r| r.id == *id);
        let cut_inside = self.routes.last().is_some_and(|last| {
            match were.routes.iter().find(|r| r.id == last.id) {
                Some(was) => last.cut_from(was),
                None => were.routes.iter().any(|r| r.takes_path_of(last)),
            }
        });
        were.routes.iter().any(|r| !has(&r.id))
            || cut_inside
            || were.others.iter().any(|o| !self.others.contains(o))
    }
}

/// What a route of a file says, setting by setting, as far as a file cut short inside it
/// shows ([`RouteShape::cut_from`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct RouteShape {
    /// What it is for: its path and methods.
    id: (String, Vec<String>),
    /// Each setting it gives (each of its limits' too, and each status of its lists),
    /// named, with its value as written out.
    settings: Vec<(String, String)>,
}

impl RouteShape {
    fn of(route: &RouteConfig) -> Self {
        let mut settings = Vec::new();
        let mut give = |name: String, value: Option<String>| {
            if let Some(value) = value {
                settings.push((name, value));
            }
        };
        give("name".into(), route.name.clone());
        give("exempt".into(), route.exempt.then(|| "true".into()));
        give("bucket".into(), route.bucket.clone());
        give("cost".into(), route.cost.map(|c| c.to_string()));
        give("shadow".into(), route.shadow.then(|| "true".into()));
        give(
            "on_store_failure".into(),
            route.on_store_failure.map(|m| format!("{m:?}")),
        );
        give(
            "when_full".into(),
            route.when_full.map(|w| format!("{w:?}")),
        );
        for (list, statuses) in [
            ("refund_statuses", &route.refund_statuses),
            ("count_only_statuses", &route.count_only_statuses),
        ] {
            for (i, status) in statuses.iter().enumerate() {
                give(format!("{list}[{i}]"), Some(status.to_string()));
            }
        }
        let limits = route
            .limits
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("limits[{i}]"), l));
        for (at, limit) in limits.chain(route.rate_limit.iter().map(|l| ("rate_limit".into(), l))) {
            let quota = |q: &Option<Quota>| q.map(|q| format!("{q:?}"));
            give(
                format!("{at}.per"),
                limit.per.as_ref().map(|p| format!("{p:?}")),
            );
            give(format!("{at}.limit"), quota(&limit.limit));
            give(
                format!("{at}.algorithm"),
                limit.algorithm.map(|a| format!("{a:?}")),
            );
            give(format!("{at}.sustained"), quota(&limit.sustained));
            give(format!("{at}.burst"), quota(&limit.burst));
            give(format!("{at}.daily"), quota(&limit.daily));
            give(
                format!("{at}.when_full"),
                limit.when_full.map(|w| format!("{w:?}")),
            );
            give(at, Some(String::new()));
        }
        Self {
            id: (route.path.clone(), route.methods.clone()),
            settings,
        }
    }

    /// Whether this may be `were` (a route for the same path and methods) cut short, or
    /// an edit of it cut short: a setting of `were` is missing (the lines after the cut:
    /// a burst, a daily cap, whose budget, a status of a list), one's value is the start
    /// of `were`'s (a line cut inside: `cost: 15` read as `cost: 1`, a name or a header's
    /// name cut short), or whose budget it is changed at all (its name, its bucket, a
    /// limit's `per:`: `per: api_key` cut from `api_key:authorization` reads another
    /// header, one no client sends).
    fn cut_from(&self, were: &RouteShape) -> bool {
        let value = |name: &str| {
            self.settings
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v)
        };
        let whose = |name: &str| matches!(name, "name" | "bucket") || name.ends_with(".per");
        were.settings.iter().any(|(name, was)| match value(name) {
            None => true,
            Some(now) if now == was => false,
            Some(_) if whose(name) => true,
            Some(now) => {
                let start = now.trim_end_matches(['"', ')']);
                start.len() < was.len() && was.starts_with(start)
            }
        })
    }

    /// Whether this route's path takes requests of `route`'s path (both read as patterns).
    fn takes_path_of(&self, route: &RouteShape) -> bool {
        use crate::classify::RoutePattern;
        match (
            RoutePattern::parse(&self.id.0),
            RoutePattern::parse(&route.id.0),
        ) {
            (Ok(broad), Ok(narrow)) => broad.takes_path_of(&narrow),
            // (Not a pattern: the reload refuses the file anyway.)
            _ => false,
        }
    }
}

/// Reads `burst:`: a count alone (`20`), or a quota whose count is taken (`20/s`). A
/// count of 0 is a burst of 0 ([`QuotaError::ZeroBurst`]), not a quota of 0 (whose error
/// suggests exempting the route).
fn burst<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Quota>, D::Error> {
    struct Burst;
    impl<'v> serde::de::Visitor<'v> for Burst {
        type Value = Option<Quota>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a burst: a count (`20`) or a quota (`20/s`)")
        }
        fn visit_u64<E: serde::de::Error>(self, count: u64) -> Result<Self::Value, E> {
            if count == 0 {
                return Err(E::custom(format_args!("`0`: {}", QuotaError::ZeroBurst)));
            }
            Quota::new(count, std::time::Duration::from_secs(1))
                .map(Some)
                .map_err(|e| E::custom(format_args!("`{count}`: {e}")))
        }
        fn visit_i64<E: serde::de::Error>(self, count: i64) -> Result<Self::Value, E> {
            match u64::try_from(count) {
                Ok(count) => self.visit_u64(count),
                Err(_) => Err(E::custom(format_args!(
                    "`{count}`: {}",
                    QuotaError::ZeroBurst
                ))),
            }
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
            // A count in quotes (TOML users quote every quota) is a count.
            if let Ok(count) = text.trim().parse::<u64>() {
                return self.visit_u64(count);
            }
            match Quota::parse(text) {
                Err(QuotaError::ZeroCount { .. }) => Err(E::custom(format_args!(
                    "`{text}`: {}",
                    QuotaError::ZeroBurst
                ))),
                parsed => parsed.map(Some).map_err(E::custom),
            }
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'v>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }
    d.deserialize_any(Burst)
}

/// A key, as text: `ip`, `network:<bits>`, `user`, `api_key`, `api_key:<header>`,
/// `header:<name>`, `tenant:<header>`, `global`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyText {
    /// The client IP.
    Ip,
    /// The client IP's network (`network:48`): IPv6 folded to so many bits.
    Network(u8),
    /// The signed-in user.
    User,
    /// An API key in a header (hashed).
    ApiKey(String),
    /// A header's value.
    Header(String),
    /// A tenant id in a header.
    Tenant(String),
    /// One bucket for everyone.
    Global,
}

/// A map whose keys are all different: YAML parsers keep the last of two equal keys
/// without a word (TOML refuses them), and a limit written twice must not be half-read.
fn unique_keys<'de, D, V>(d: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Unique<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Unique<V> {
        type Value = BTreeMap<String, V>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of names to limits")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut all = BTreeMap::new();
            while let Some(name) = map.next_key::<String>()? {
                if all.contains_key(&name) {
                    return Err(serde::de::Error::custom(format!("`{name}` is given twice")));
                }
                let value = map.next_value()?;
                all.insert(name, value);
            }
            Ok(all)
        }
    }
    d.deserialize_map(Unique(std::marker::PhantomData))
}

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let t = text.trim();
        let (kind, arg) = match t.split_once(':') {
            Some((k, a)) => (k.trim(), Some(a.trim())),
            None => (t, None),
        };
        let named = |what: &str| match arg {
            Some(a) if !a.is_empty() => Ok(a.to_string()),
            _ => Err(serde::de::Error::custom(format!(
                "`{t}`: say which header, as in `{what}:x-tenant-id`"
            ))),
        };
        match (kind, arg) {
            ("ip", None) => Ok(KeyText::Ip),
            ("network", Some(bits)) => match bits.parse::<u8>() {
                Ok(bits) if bits <= 128 => Ok(KeyText::Network(bits)),
                _ => Err(serde::de::Error::custom(format!(
                    "`{t}`: say how many leading bits of an IPv6 address make its network, 0 to 128, as in `network:48`"
                ))),
            },
            ("user", None) => Ok(KeyText::User),
            ("global", None) => Ok(KeyText::Global),
            ("api_key", None) => Ok(KeyText::ApiKey("x-api-key".into())),
            ("api_key", Some(_)) => named("api_key").map(KeyText::ApiKey),
            ("header", _) => named("header").map(KeyText::Header),
            ("tenant", _) => named("tenant").map(KeyText::Tenant),
            _ => Err(serde::de::Error::custom(format!(
                "unknown key `{t}`: expected ip, network:<bits>, user, api_key, api_key:<header>, header:<name>, tenant:<header> or global"
            ))),
        }
    }
}

impl KeyText {
    fn key(&self) -> Key {
        match self {
            KeyText::Ip => Key::ip(),
            KeyText::Network(bits) => Key::network(*bits),
            KeyText::User => Key::user(),
            KeyText::Global => Key::global(),
            KeyText::ApiKey(h) => Key::api_key(h),
            KeyText::Header(h) => Key::header(h),
            KeyText::Tenant(h) => Key::tenant_header(h),
        }
    }
}

/// What is wrong with a limit entry: the field at fault (`None`: the entry) and why.
type EntryError = (Option<&'static str>, String);

impl LimitConfig {
    /// The limits this entry declares, with their keys (`default` when `per:` is absent).
    /// On error, the field of this entry at fault (`None`: the entry as a whole).
    fn rates(&self, default: &KeyText) -> Result<(Key, Vec<Rate>), EntryError> {
        let key = self.per.as_ref().unwrap_or(default).key();
        // `limit:` is one limit, the trio another: in one entry, `algorithm` (and whatever
        // else is read as going with `limit`) would silently apply to only one of them.
        let trio = [
            ("sustained", self.sustained.is_some()),
            ("burst", self.burst.is_some()),
            ("daily", self.daily.is_some()),
        ];
        if let Some((field, _)) = trio.iter().find(|(_, set)| *set && self.limit.is_some()) {
            return Err((
                Some(field),
                format!(
                    "`{field}` beside `limit`: an entry is `limit` (with `algorithm`) or \
                     `sustained`/`burst`/`daily`; give each limit an entry of its own in \
                     `limits:`"
                ),
            ));
        }
        let mut rates = Vec::new();
        if let Some(q) = self.limit {
            let limit = match self.algorithm {
                // A file's `sliding` has the default segments; code may set others.
                None => Limit::sliding(q),
                Some(Algorithm::SlidingWindow { segments }) if segments == DEFAULT_SEGMENTS => {
                    Limit::sliding(q)
                }
                Some(Algorithm::SlidingWindow { segments }) => {
                    Limit::sliding_segments(q, segments.into())
                        .map_err(|e| (Some("algorithm"), e.to_string()))?
                }
                Some(Algorithm::SlidingLog) => Limit::sliding_exact(q),
                Some(Algorithm::FixedWindow) => Limit::fixed(q),
                Some(other) => {
                    return Err((
                        Some("algorithm"),
                        format!("`{other:?}` cannot be given as `algorithm`"),
                    ))
                }
            };
            rates.push(Rate::from(limit));
        } else if self.algorithm.is_some() {
            return Err((Some("algorithm"), "`algorithm` goes with `limit`".into()));
        }
        match (self.sustained, self.burst) {
            (Some(s), burst) => {
                let capacity = burst.map_or(s.count(), |b| b.count());
                rates.push(Rate::token_bucket(s, capacity));
            }
            (None, Some(_)) => {
                return Err((Some("burst"), "`burst` needs `sustained` (the refill rate), as in `{ sustained: 100/min, burst: 20/s }`".into()))
            }
            (None, None) => {}
        }
        if let Some(d) = self.daily {
            // Named for a day: another window here is a slip (`10/min` for `10/day`), not
            // a way to write one, which `limit:` is.
            if d.period() != Quota::per_day(1).period() {
                return Err((
                    Some("daily"),
                    format!(
                        "`{d}`: `daily` is a cap per day, as in `{}/day`; for a limit over \
                         another window, give it an entry of its own with `limit:`",
                        d.count()
                    ),
                ));
            }
            rates.push(Rate::sliding(d));
        }
        if rates.is_empty() {
            return Err((
                None,
                "no limit: give `limit`, `sustained` (+ `burst`) or `daily`".into(),
            ));
        }
        Ok((key, rates))
    }
}

impl Config {
    /// Reads TOML text (feature `toml`).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Parse`] with the line and column.
    #[cfg(feature = "toml")]
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::toml_named(text, "<toml>").inspect(|c| c.warn_if_it_limits_nothing("<toml>"))
    }

    /// Reads YAML text (feature `yaml`).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Parse`] with the line and column.
    #[cfg(feature = "yaml")]
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        Self::yaml_named(text, "<yaml>").inspect(|c| c.warn_if_it_limits_nothing("<yaml>"))
    }

    /// Reads a file, TOML or YAML by its extension.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`], [`ConfigError::UnknownFormat`] (also for a format whose
    /// feature, `toml` or `yaml`, is off), [`ConfigError::Parse`].
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file = path.display().to_string();
        Self::from_path_text(path, &text).inspect(|c| c.warn_if_it_limits_nothing(&file))
    }

    /// The configuration in `text`, read from `path` (its extension says the format). A
    /// byte-order mark some editors put first in a UTF-8 file is not part of the text.
    pub(crate) fn from_path_text(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let name = path.display().to_string();
        match path.extension().and_then(|e| e.to_str()) {
            #[cfg(feature = "toml")]
            Some("toml") => Self::toml_named(text, &name),
            #[cfg(feature = "yaml")]
            Some("yaml" | "yml") => Self::yaml_named(text, &name),
            _ => Err(ConfigError::UnknownFormat {
                path: path.to_path_buf(),
            }),
        }
    }

    #[cfg(feature = "toml")]
    fn toml_named(text: &str, file: &str) -> Result<Self, ConfigError> {
        let parse_error = |e: toml::de::Error, field: &str| {
            let location = e.span().map(|span| line_col(text, span.start));
            parse_error(file, location, field, e.message())
        };
        let deserializer = toml::Deserializer::parse(text).map_err(|e| parse_error(e, ""))?;
        let config: Self = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let field = e.path().to_string();
            parse_error(e.into_inner(), &field)
        })?;
        config.read_from(text, Format::Toml, file)
    }

    #[cfg(feature = "yaml")]
    fn yaml_named(text: &str, file: &str) -> Result<Self, ConfigError> {
        // An empty YAML document is an empty configuration, as an empty TOML file is.
        if is_blank(text, Format::Yaml) {
            return Self::default().read_from(text, Format::Yaml, file);
        }
        let deserializer = serde_yaml_ng::Deserializer::from_str(text);
        let config: Self = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = FieldPath::of(e.path());
            let e = e.into_inner();
            let location = e.location().map(|l| (l.line(), l.column()));
            let mut message = e.to_string();
            // The crate appends " at line L column C"; the location is shown once, in front.
            if let Some(i) = message.rfind(" at line ").filter(|_| location.is_some()) {
                message.truncate(i);
            }
            // It also names the field it was reading, which may only enclose the one at
            // fault (`routes[0].rate_limit`, for its `burst`), and places the error there:
            // the field is named once, in full, and placed at its value.
            let field = path.to_string();
            let mut location = location;
            if let Some((named, rest)) = message.split_once(": ") {
                if !named.is_empty() && field.starts_with(named) {
                    if field.len() > named.len() {
                        location = locate::position(text, Format::Yaml, &path.0).or(location);
                    }
                    message = rest.to_string();
                }
            }
            parse_error(file, location, &field, &message)
        })?;
        config.read_from(text, Format::Yaml, file)
    }

    /// Keeps the text (for error locations) and checks value ranges.
    fn read_from(mut self, text: &str, format: Format, file: &str) -> Result<Self, ConfigError> {
        self.origin = Some(Arc::new(Origin {
            text: text.to_string(),
            format,
        }));
        self.check_values(file)?;
        Ok(self)
    }

    /// Warns about a configuration read from `file` that limits nothing: when it is loaded,
    /// not when a watcher reads a changed file it may refuse (a file emptied mid-write is
    /// waited for, then refused, while the running rules stay).
    pub(crate) fn warn_if_it_limits_nothing(&self, file: &str) {
        if self.declares_no_limits() {
            let blank = self
                .origin
                .as_ref()
                .is_some_and(|o| is_blank(&o.text, o.format));
            if blank {
                tracing::warn!(
                    target: "tollgate",
                    file,
                    "rate-limit configuration {file} is empty: every setting takes its default \
                     and, unless code adds rules, the limiter limits nothing"
                );
            } else {
                tracing::warn!(
                    target: "tollgate",
                    file,
                    "rate-limit configuration {file} declares no routes, global limits or \
                     buckets: unless code adds rules, the limiter limits nothing"
                );
            }
        }
    }

    /// What the file declares, as a reload compares it with the running file's (one that
    /// declares less may have been read mid-write: [`Declared::may_be_cut_from`]).
    pub(crate) fn declared(&self) -> Declared {
        let gateway = self
            .gateway
            .as_ref()
            .and_then(|g| g.global_rate_limit.as_ref());
        let globals = self.global.iter().chain(gateway).map(|l| format!("{l:?}"));
        let buckets = self.buckets.iter().map(|b| format!("{b:?}"));
        Declared {
            routes: self.routes.iter().map(RouteShape::of).collect(),
            others: globals.chain(buckets).collect(),
        }
    }

    pub(crate) fn declares_no_limits(&self) -> bool {
        self.routes.is_empty()
            && self.global.is_empty()
            && self.buckets.is_empty()
            && self
                .gateway
                .as_ref()
                .is_none_or(|g| g.global_rate_limit.is_none())
    }

    /// Values of the right type that make no sense: a typed error at the value.
    fn check_values(&self, file: &str) -> Result<(), ConfigError> {
        let store = |key: &str| FieldPath::root().key("store").key(key);
        let mut problems: Vec<(FieldPath, ValueProblem)> = Vec::new();
        if let Some(value) = self.store.max_entries.filter(|n| *n < MIN_MAX_ENTRIES) {
            problems.push((store("max_entries"), ValueProblem::TooFewEntries { value }));
        }
        if self.store.timeout_ms == Some(0) {
            problems.push((store("timeout_ms"), ValueProblem::ZeroTimeout));
        }
        if self.store.fallback_divisor == Some(0) {
            problems.push((store("fallback_divisor"), ValueProblem::ZeroDivisor));
        }
        if self.store.patience == Some(0) {
            problems.push((store("patience"), ValueProblem::ZeroPatience));
        }
        if let Some(prefix) = &self.store.prefix {
            if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_graphic()) {
                problems.push((store("prefix"), ValueProblem::BadPrefix));
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            let lists = [
                ("refund_statuses", &route.refund_statuses),
                ("count_only_statuses", &route.count_only_statuses),
            ];
            for (name, statuses) in lists {
                if let Some((j, &status)) = statuses
                    .iter()
                    .enumerate()
                    .find(|(_, s)| !(100..=599).contains(*s))
                {
                    let path = FieldPath::route(i).key(name).index(j);
                    problems.push((path, ValueProblem::NotAStatus(status)));
                }
            }
            // Given back and counted only: which one wins is not for the reader to guess.
            if let Some((j, &status)) = route
                .count_only_statuses
                .iter()
                .enumerate()
                .find(|(_, s)| route.refund_statuses.contains(s))
            {
                let path = FieldPath::route(i).key("count_only_statuses").index(j);
                problems.push((path, ValueProblem::RefundedAndCounted(status)));
            }
        }
        match problems.into_iter().next() {
            None => Ok(()),
            Some((path, problem)) => {
                let (line, column) = self.locate(&path);
                Err(ConfigError::Value {
                    file: file.to_string(),
                    line,
                    column,
                    field: path.to_string(),
                    problem,
                })
            }
        }
    }

    /// Applies the file to `builder`: every field maps onto a builder call. `file` names the
    /// source in errors. A file without `store:` (or one that says only what the default
    /// says, `kind: memory`) leaves a store the builder was given
    /// ([`LimiterBuilder::store`]), and one without `headers:` a header style; `REDIS_URL`
    /// / `KV_URL` override the file's store, not one given in code. If the builder's
    /// `build` then fails, its error is pointed at the rule of the file
    /// ([`BuildError::Config`] holding a [`ConfigError::Invalid`], as
    /// [`Config::build_error`] makes it).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Value`] for a value out of range, [`ConfigError::Rule`] naming the
    /// rule and field, [`ConfigError::Store`].
    pub fn apply(
        &self,
        mut builder: LimiterBuilder,
        file: &str,
    ) -> Result<LimiterBuilder, ConfigError> {
        // Checked when the text is read too; again here for a configuration changed or
        // made in code.
        self.check_values(file)?;
        if let Some(enabled) = self.enabled {
            builder = builder.enabled(enabled);
        }
        // A file without `store:` or `headers:` leaves the store and the header style the
        // builder was given in code (a review: a Redis store set in code became a memory
        // store per process, `HeaderStyle::none()` wrote every header).
        let (has_store, has_style) = builder.has_store_and_style();
        if !has_store || self.store != StoreConfig::default() {
            builder = self.store.apply(builder).map_err(|problem| {
                let path = FieldPath::root().key("store").maybe_key(problem.field);
                let (line, column) = match problem.field {
                    Some(_) => self.locate(&path),
                    None => (None, None),
                };
                ConfigError::Store {
                    file: file.to_string(),
                    line,
                    column,
                    field: path.to_string(),
                    message: problem.message,
                }
            })?;
        }
        if !self.client_ip.trusted_proxies.is_empty() || self.client_ip.ipv6_prefix.is_some() {
            let mut ip = ClientIp::peer().trust_proxies(&self.client_ip.trusted_proxies);
            if let Some(bits) = self.client_ip.ipv6_prefix {
                ip = ip.ipv6_prefix(bits);
            }
            builder = builder.client_ip(ip);
        }
        if !has_style || self.headers != HeadersConfig::default() {
            builder = builder.header_style(self.headers.style());
        }
        if let Some(body) = self.body {
            builder = builder.error_body(match body {
                BodyText::RetryAfter => ErrorBody::retry_after_camel(),
                BodyText::CodeDetails => ErrorBody::code_details(),
                BodyText::Message => ErrorBody::message(),
            });
        }
        builder.file_settings = Some(FileSettings::of(self));
        builder.file_declares_limits = !self.declares_no_limits();
        builder.config_source = Some(Box::new((self.clone(), file.to_string())));
        self.rules_into(builder, file)
    }

    /// Applies the rules of the file to `builder`: `routes`, `global`, `gateway`,
    /// `buckets` (with `default_key`), `shadow` and `on_store_failure`, what a reload may
    /// change (see [`Limiter::reload`]), and nothing else. [`Config::apply`] applies these
    /// and the rest.
    ///
    /// # Errors
    ///
    /// As [`Config::apply`], except [`ConfigError::Store`].
    pub fn apply_rules(
        &self,
        builder: LimiterBuilder,
        file: &str,
    ) -> Result<LimiterBuilder, ConfigError> {
        self.check_values(file)?;
        self.rules_into(builder, file)
    }

    /// [`Config::apply_rules`] once the values are checked.
    fn rules_into(
        &self,
        mut builder: LimiterBuilder,
        file: &str,
    ) -> Result<LimiterBuilder, ConfigError> {
        let invalid = |path: FieldPath, context: Option<&str>, message: String| {
            let (line, column) = self.locate(&path);
            ConfigError::Rule {
                file: file.to_string(),
                line,
                column,
                field: with_context(&path, context),
                message,
            }
        };
        builder = builder.shadow(self.shadow);
        if let Some(mode) = self.on_store_failure {
            builder = builder.on_store_failure(mode);
        }
        let default_key = self.default_key();
        for (name, limit) in &self.buckets {
            let field = FieldPath::root().key("buckets").key(name);
            if limit.per.is_some() {
                return Err(invalid(
                    field.key("per"),
                    None,
                    "a bucket for direct use has no `per:`: the handler names the key in `limiter.check(bucket, key)`".into(),
                ));
            }
            let (_, rates) = limit
                .rates(&default_key)
                .map_err(|(sub, m)| invalid(field.maybe_key(sub), None, m))?;
            let [rate] = <[Rate; 1]>::try_from(rates).map_err(|_| {
                invalid(
                    field.clone(),
                    None,
                    "a bucket for direct use takes one limit".into(),
                )
            })?;
            builder = builder.bucket_when_full(name, rate, limit.when_full.unwrap_or_default());
        }
        // The global limits with a key (`per: ip`): the entries of one kind are one policy,
        // `global-<kind>`, its second limit `#2` (as a route's limits of one kind are).
        // Each entry keeps its own key: `api_key:x-a` and `api_key:x-b` are one kind, so one
        // policy, with a limit per header. (Name, limits, `when_full:`.)
        type Keyed = (String, Vec<(Key, Rate)>, Option<WhenFull>);
        let mut keyed: Vec<Keyed> = Vec::new();
        for (path, limit) in self.globals() {
            let (key, rates) = limit
                .rates(&KeyText::Global)
                .map_err(|(sub, m)| invalid(path.maybe_key(sub), None, m))?;
            if limit.per.is_none() || limit.per == Some(KeyText::Global) {
                if limit.when_full.is_some() {
                    return Err(invalid(
                        path.key("when_full"),
                        None,
                        "one bucket for everyone holds one key, so its share is never full: \
                         `when_full:` is for a limit with a key (`per: ip`)"
                            .into(),
                    ));
                }
                for rate in rates {
                    builder = builder.global(rate);
                }
                continue;
            }
            let name = global_policy_name(&key);
            let at = match keyed.iter().position(|(n, ..)| *n == name) {
                Some(at) => at,
                None => {
                    keyed.push((name, Vec::new(), None));
                    keyed.len() - 1
                }
            };
            let (_, limits, when_full) = &mut keyed[at];
            limits.extend(rates.into_iter().map(|rate| (key.clone(), rate)));
            match (*when_full, limit.when_full) {
                (Some(set), Some(mode)) if set != mode => {
                    return Err(invalid(
                        path.key("when_full"),
                        None,
                        "the global limits of one key kind are one policy, with one `when_full:`: \
                         give them the same, or set it on one"
                            .into(),
                    ))
                }
                (_, Some(mode)) => *when_full = Some(mode),
                _ => {}
            }
        }
        let global_names: Vec<&str> = keyed.iter().map(|(n, ..)| n.as_str()).collect();
        if let Some((i, message)) = self.name_made_twice(&global_names) {
            let route = &self.routes[i];
            return Err(invalid(
                FieldPath::route(i),
                Some(&route.pattern()),
                message,
            ));
        }
        for (i, route) in self.routes.iter().enumerate() {
            let pattern = route.pattern();
            let policy = route
                .policy(&default_key)
                .map_err(|(sub, m)| invalid(FieldPath::route(i).join(&sub), Some(&pattern), m))?;
            builder = builder.route(&pattern, policy);
        }
        for (name, limits, when_full) in keyed {
            let mut policy = Policy::named(name);
            for (key, rate) in limits {
                policy = policy.limit(key, rate);
            }
            if let Some(mode) = when_full {
                policy = policy.when_full(mode);
            }
            builder = builder.global_policy(policy);
        }
        Ok(builder)
    }

    /// The first rule without `name:` or `bucket:` whose budget is named after its pattern
    /// and is another rule's (`/v1/items` and `/v1/items/*` are both `v1-items`) or that
    /// of the file's global limits (`global`, or one of `keyed`, those with a key): one
    /// name is one budget, so it must be named. Its index, and what to tell. The later of
    /// two such rules is the one to name; two rules for one route are a tie, reported as
    /// such by the table.
    fn name_made_twice(&self, keyed: &[&str]) -> Option<(usize, String)> {
        // Each rule's budget: `bucket:`, else its policy's name.
        let budgets: Vec<Option<String>> = self
            .routes
            .iter()
            .map(|r| (!r.exempt).then(|| r.bucket.clone().unwrap_or_else(|| r.policy_name())))
            .collect();
        let made_up = |r: &RouteConfig| r.name.is_none() && r.bucket.is_none();
        let has_global = self
            .globals()
            .any(|(_, l)| l.per.is_none() || l.per == Some(KeyText::Global));
        self.routes.iter().enumerate().find_map(|(i, route)| {
            let name = budgets[i].as_deref().filter(|_| made_up(route))?;
            let rule = budgets.iter().enumerate().position(|(j, b)| {
                j != i
                    && (j < i || !made_up(&self.routes[j]))
                    && b.as_deref() == Some(name)
                    && !same_route(&route.pattern(), &self.routes[j].pattern())
            });
            let other = match rule {
                Some(j) => format!("the rule for `{}` spends", self.routes[j].pattern()),
                None if (has_global && name == "global") || keyed.contains(&name) => {
                    "the file's global limits spend".to_string()
                }
                None => return None,
            };
            Some((
                i,
                format!(
                    "its budget is named `{name}` after its pattern, and {other} a budget \
                     of that name: give it a `name:` of its own (rules share a budget \
                     by `bucket:`)"
                ),
            ))
        })
    }
}

impl HeadersConfig {
    fn style(&self) -> HeaderStyle {
        let ietf = self.ietf.unwrap_or(true);
        let base = match self.x_ratelimit.unwrap_or(ResetText::UnixSeconds) {
            ResetText::UnixSeconds => HeaderStyle::x_ratelimit(ResetFormat::UnixSeconds),
            ResetText::UnixMillis => HeaderStyle::x_ratelimit(ResetFormat::UnixMillis),
            ResetText::Seconds => HeaderStyle::x_ratelimit(ResetFormat::Seconds),
            ResetText::HttpDate => HeaderStyle::x_ratelimit(ResetFormat::HttpDate),
            ResetText::None if ietf => HeaderStyle::ietf(),
            ResetText::None => HeaderStyle::none(),
        };
        let base = if ietf && self.x_ratelimit != Some(ResetText::None) {
            base.with_ietf()
        } else {
            base
        };
        if self.reset_at_retry == Some(true) {
            base.with_reset_at_retry()
        } else {
            base
        }
    }
}

/// A rule's `methods:` list, which names at least one method: an empty list would read as
/// every method, the opposite of what it says.
fn methods_named<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let methods = Vec::<String>::deserialize(d)?;
    if methods.is_empty() {
        return Err(serde::de::Error::custom(
            "`methods: []` names no method: name one (`[GET]`), or leave `methods:` out for every method",
        ));
    }
    Ok(methods)
}

impl RouteConfig {
    fn pattern(&self) -> String {
        if self.methods.is_empty() {
            self.path.clone()
        } else {
            // (Trimmed: a blank method, an error, must not show as a leading space.)
            format!("{} {}", self.methods.join(","), self.path)
                .trim()
                .to_string()
        }
    }

    /// The limit entries of the rule, with their fields relative to the rule.
    fn limit_entries(&self) -> impl Iterator<Item = (FieldPath, &LimitConfig)> {
        let limits = self
            .limits
            .iter()
            .enumerate()
            .map(|(k, l)| (FieldPath::root().key("limits").index(k), l));
        let rate_limit = self
            .rate_limit
            .iter()
            .map(|l| (FieldPath::root().key("rate_limit"), l));
        limits.chain(rate_limit)
    }

    /// The policy's name: `name:`, or one made from the pattern.
    fn policy_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| policy_name(&self.pattern()))
    }

    /// On error, the field of the rule at fault (relative to the rule).
    fn policy(&self, default_key: &KeyText) -> Result<Policy, (FieldPath, String)> {
        // (An empty one would leave the pattern without methods: every method.)
        if let Some(k) = self.methods.iter().position(|m| m.trim().is_empty()) {
            return Err((
                FieldPath::root().key("methods").index(k),
                "an empty method: name one (`GET`), or leave `methods:` out for every method"
                    .into(),
            ));
        }
        if self.exempt {
            if !self.limits.is_empty() || self.rate_limit.is_some() {
                return Err((
                    FieldPath::root().key("exempt"),
                    "an exempt route takes no limits".into(),
                ));
            }
            // What only a charge uses is a mistake on a route never charged, not silence.
            let charged_only = [
                ("name", self.name.is_some()),
                ("bucket", self.bucket.is_some()),
                ("cost", self.cost.is_some()),
                ("shadow", self.shadow),
                ("on_store_failure", self.on_store_failure.is_some()),
                ("when_full", self.when_full.is_some()),
                ("refund_statuses", !self.refund_statuses.is_empty()),
                ("count_only_statuses", !self.count_only_statuses.is_empty()),
            ];
            if let Some((field, _)) = charged_only.iter().find(|(_, set)| *set) {
                return Err((
                    FieldPath::root().key(field),
                    format!("an exempt route is never charged: `{field}:` does nothing on it"),
                ));
            }
            return Ok(Policy::exempt());
        }
        let mut policy = Policy::named(self.policy_name());
        let mut any = false;
        for (path, limit) in self.limit_entries() {
            if limit.when_full.is_some() {
                return Err((
                    path.key("when_full"),
                    "a route's limits share one `when_full:`: set it on the route".into(),
                ));
            }
            let (key, rates) = limit
                .rates(default_key)
                .map_err(|(sub, m)| (path.maybe_key(sub), m))?;
            for rate in rates {
                policy = policy.limit(key.clone(), rate);
                any = true;
            }
        }
        if !any {
            return Err((
                FieldPath::root(),
                "no limits: add `limits:` or `rate_limit:`, or mark it `exempt: true`".into(),
            ));
        }
        if let Some(bucket) = &self.bucket {
            policy = policy.bucket(bucket.clone());
        }
        if let Some(cost) = self.cost {
            policy = policy.cost(cost);
        }
        if self.shadow {
            policy = policy.shadow();
        }
        if let Some(mode) = self.on_store_failure {
            policy = policy.on_store_failure(mode);
        }
        if let Some(mode) = self.when_full {
            policy = policy.when_full(mode);
        }
        if !self.refund_statuses.is_empty() {
            let statuses = self.refund_statuses.clone();
            policy = policy.refund_if(move |s| statuses.contains(&s.as_u16()));
        }
        if !self.count_only_statuses.is_empty() {
            let statuses = self.count_only_statuses.clone();
            policy = policy.count_only_if(move |s| statuses.contains(&s.as_u16()));
        }
        Ok(policy)
    }
}

// `REDIS_URL`, else `KV_URL`, if set and not empty.
#[cfg(feature = "redis")]
use tollgate_redis::redis_url_from_env;

/// `REDIS_URL`, else `KV_URL`, if set and not empty (without the `redis` feature, only to
/// say that a Redis named there cannot be used).
#[cfg(not(feature = "redis"))]
fn redis_url_from_env() -> Option<String> {
    ["REDIS_URL", "KV_URL"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .map(|v| v.trim().to_string())
        .find(|v| !v.is_empty())
}

/// Why the store a file names cannot be made: the field of `store:` at fault (`None`:
/// the environment's settings, which override the file) and why.
struct StoreProblem {
    field: Option<&'static str>,
    message: String,
}

impl StoreProblem {
    fn of(field: Option<&'static str>, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// Where a Redis URL was read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum UrlFrom {
    /// `REDIS_URL` or `KV_URL`.
    Environment,
    /// `store.url`.
    File,
}

impl StoreConfig {
    /// The Redis URL to use, if any: `REDIS_URL` or `KV_URL` from the environment when set
    /// (they override the file), else `url:` for `kind: redis`.
    fn redis_url(&self) -> Result<Option<(String, UrlFrom)>, StoreProblem> {
        // The environment overrides the file, whatever its `kind`.
        if let Some(url) = redis_url_from_env() {
            return Ok(Some((url, UrlFrom::Environment)));
        }
        match self.kind {
            StoreKind::Memory | StoreKind::Env => Ok(None),
            StoreKind::Redis => match &self.url {
                Some(url) => Ok(Some((url.clone(), UrlFrom::File))),
                None => Err(StoreProblem::of(
                    Some("kind"),
                    "`kind: redis` needs `url: redis://host:6379/` (or REDIS_URL / KV_URL)",
                )),
            },
        }
    }

    fn memory(&self) -> tollgate_limits::MemoryStore {
        let mut memory = tollgate_limits::MemoryStore::builder();
        if let Some(n) = self.max_entries {
            memory = memory.max_entries(n);
        }
        memory.build()
    }

    fn apply(&self, builder: LimiterBuilder) -> Result<LimiterBuilder, StoreProblem> {
        match self.redis_url()? {
            None => Ok(builder.store(self.memory())),
            Some((url, from)) => self.redis(builder, url, from),
        }
    }

    #[cfg(feature = "redis")]
    fn redis(
        &self,
        builder: LimiterBuilder,
        url: String,
        from: UrlFrom,
    ) -> Result<LimiterBuilder, StoreProblem> {
        use tollgate_redis::{FallbackConfig, FallbackStore, RedisStore};
        let mut config = FallbackConfig::default();
        if let Some(ms) = self.timeout_ms {
            config = config.with_timeout(std::time::Duration::from_millis(ms));
        }
        if let Some(n) = self.fallback_divisor {
            config = config.with_fallback_divisor(n);
        }
        if let Some(n) = self.patience {
            config = config.with_patience(n);
        }
        // TOLLGATE_FALLBACK_DIVISOR / _REDIS_TIMEOUT_MS / _REDIS_PATIENCE, when set, win
        // over the file.
        let config = tollgate_redis::fallback_config_from_env(config)
            .map_err(|e| StoreProblem::of(None, e.to_string()))?;
        let mut redis = RedisStore::builder().url(url).for_fallback(&config);
        if let Some(prefix) = &self.prefix {
            redis = redis.prefix(prefix.clone());
        }
        let redis = redis.build().map_err(|e| match from {
            UrlFrom::File => StoreProblem::of(Some("url"), e.to_string()),
            UrlFrom::Environment => StoreProblem::of(None, format!("REDIS_URL / KV_URL: {e}")),
        })?;
        Ok(builder.store(FallbackStore::with_memory(redis, self.memory(), config)))
    }

    #[cfg(not(feature = "redis"))]
    fn redis(
        &self,
        _builder: LimiterBuilder,
        _url: String,
        from: UrlFrom,
    ) -> Result<LimiterBuilder, StoreProblem> {
        let field = (from == UrlFrom::File).then_some("kind");
        Err(StoreProblem::of(
            field,
            "a Redis store needs tollgate's `redis` feature",
        ))
    }
}

/// A policy name for a rule without `name:`, from its pattern: `GET /v1/invoices` →
/// `get-v1-invoices`, `/*` → `all`.
fn policy_name(pattern: &str) -> String {
    let mut name = String::with_capacity(pattern.len());
    for c in pattern.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
            name.push(c.to_ascii_lowercase());
        } else if !name.is_empty() && !name.ends_with('-') {
            name.push('-');
        }
    }
    let name = name.trim_end_matches('-');
    if name.is_empty() {
        "all".to_string()
    } else {
        name.to_string()
    }
}

/// Whether two patterns are one route (`/a/{id}` and `/a/:id`), both read.
fn same_route(a: &str, b: &str) -> bool {
    let read = |p: &str| p.parse::<crate::classify::RoutePattern>().ok();
    read(a).is_some_and(|a| Some(a) == read(b))
}

/// A file that does not parse, at `location` (line and column, from 1), the field at fault
/// named first in both formats (`routes[0].limits[0].limit: ...`; none, or `.`, for the
/// document as a whole).
#[cfg(any(feature = "toml", feature = "yaml"))]
fn parse_error(
    file: &str,
    location: Option<(usize, usize)>,
    field: &str,
    message: &str,
) -> ConfigError {
    // A value the parser quotes may be a store's URL put in the wrong place (`store:
    // "redis://user:password@host"`): its password is hidden, as the URL's own errors hide
    // it (a review: a reload logged it at ERROR).
    let message = tollgate_limits::redact::hide_url_credentials(message);
    ConfigError::Parse {
        file: file.to_string(),
        line: location.map(|(line, _)| line),
        column: location.map(|(_, column)| column),
        message: match field {
            "" | "." => message,
            field => format!("{field}: {message}"),
        },
    }
}

/// 1-based line and column of byte `offset` in `text`.
#[cfg(feature = "toml")]
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl LimiterBuilder {
    /// A builder set up from a TOML or YAML file (see [`crate::config`]); add what a file
    /// cannot hold (an identity function, custom keys) and build. An error of the `build`
    /// call is pointed at the rule of the file that caused it: [`BuildError::Config`],
    /// whose message starts with the file, line and column, then the field. An error no
    /// rule of the file explains (a rule added in code) names the file and the field
    /// `limiter`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the file, line and field.
    pub fn from_config(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let config = Config::from_path(path)?;
        config.apply(Limiter::builder(), &path.display().to_string())
    }
}

impl Limiter {
    /// A limiter built from a TOML or YAML file (see [`crate::config`]).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the file, line and field; build errors name the rule.
    pub fn from_config(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        Self::from_config_with(path, |builder| builder)
    }

    /// A limiter built from a TOML or YAML file, with what code adds to it (an identity
    /// function, custom keys, rules a file cannot hold) applied by `customize` before it
    /// is built. A mistake found at build time names the file, line, column and field of
    /// the rule that caused it (as building [`LimiterBuilder::from_config`]'s builder
    /// yourself does, there as a [`BuildError::Config`]).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), tollgate::config::ConfigError> {
    /// let limiter = tollgate::Limiter::from_config_with("rate-limits.yaml", |builder| {
    ///     builder.identity(|parts| {
    ///         parts.headers.get("x-user").and_then(|v| v.to_str().ok()).map(String::from)
    ///     })
    /// })?;
    /// # let _ = limiter; Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the file, line and field; build errors name the rule of the
    /// file that caused them ([`ConfigError::Invalid`]).
    pub fn from_config_with(
        path: impl AsRef<Path>,
        customize: impl FnOnce(LimiterBuilder) -> LimiterBuilder,
    ) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let config = Config::from_path(path)?;
        let builder = customize(config.apply(Limiter::builder(), &file)?);
        builder
            .build()
            .map_err(|error| config.build_error(&file, error))
    }

    /// Reloads the limiter's rules from a TOML or YAML file (see [`Limiter::reload`] for
    /// what a reload replaces and what happens to counts). A file that does not load, or
    /// whose rules do not build, is refused with its error, and the running rules stay.
    /// To watch a file, see [`Limiter::watch_file`].
    ///
    /// # Errors
    ///
    /// As [`Limiter::reload_config_with`].
    pub fn reload_file(&self, path: impl AsRef<Path>) -> Result<(), ConfigError> {
        let path = path.as_ref();
        crate::observe::reload_tried(Config::from_path(path).and_then(|config| {
            let declares = !config.declares_no_limits();
            self.reload_config_rules(&config, &path.display().to_string(), declares, |rules| {
                rules
            })
        }))
    }

    /// Reloads the limiter's rules from `config` (read from `file`), with the rules code
    /// adds to it applied by `customize` (as [`Limiter::from_config_with`] did at build:
    /// rules only, see [`Limiter::reload`]). The file's `enabled`, `store`, `client_ip`,
    /// `headers` and `body` must be those the limiter was built with (those of the file it
    /// was built from, or absent for a limiter built in code).
    ///
    /// # Errors
    ///
    /// [`ConfigError::NotReloadable`] for a fixed setting that changed;
    /// [`ConfigError::NoLimits`] for a file with no routes, global limits or buckets where
    /// the file the rules running came from had some (an emptied file); the errors of
    /// [`Config::apply_rules`]; what the new rules would fail to build with, pointed at the
    /// rule of the file ([`ConfigError::Invalid`]). Nothing is reloaded then.
    pub fn reload_config_with(
        &self,
        config: &Config,
        file: &str,
        customize: impl FnOnce(LimiterBuilder) -> LimiterBuilder,
    ) -> Result<(), ConfigError> {
        let declares = !config.declares_no_limits();
        crate::observe::reload_tried(self.reload_config_rules(config, file, declares, customize))
    }

    /// [`Limiter::reload_config_with`], not counted as a reload tried (its callers count
    /// theirs). `declares_limits`: whether the file, as read, declares routes, global
    /// limits or buckets (a watcher's `adjust` may change `config` after it was read).
    /// Holds the limiter's file-reload lock while `customize` runs: a `customize` that
    /// reloads the same limiter from a file would wait for itself.
    pub(crate) fn reload_config_rules(
        &self,
        config: &Config,
        file: &str,
        declares_limits: bool,
        customize: impl FnOnce(LimiterBuilder) -> LimiterBuilder,
    ) -> Result<(), ConfigError> {
        // Held to the end: the check, the reload and what it records are one step, so two
        // reloads at once cannot leave the record saying the other's.
        let mut declared = crate::engine::lock(&self.engine.file_declares_limits);
        // An emptied or truncated file would otherwise lift every limit at once (said
        // first: an emptied file also lacks the settings it had).
        if !declares_limits && *declared {
            return Err(ConfigError::NoLimits {
                file: file.to_string(),
            });
        }
        let running = self.engine.file_settings.clone().unwrap_or_default();
        if let Some(field) = running.changed(&FileSettings::of(config)) {
            let (line, column) = config.locate(&FieldPath::root().key(field));
            return Err(ConfigError::NotReloadable {
                file: file.to_string(),
                line,
                column,
                field: field.to_string(),
            });
        }
        let rules = customize(config.apply_rules(Limiter::builder(), file)?);
        self.reload_rules(rules)
            .map_err(|error| config.build_error(file, error))?;
        *declared = declares_limits;
        Ok(())
    }

    /// Watches a TOML or YAML file and reloads the limiter's rules when it changes
    /// (polling every 500 ms, on a thread of its own): a broken edit is logged
    /// (`tracing::error!`, target `tollgate`) and the running rules stay. Stops when the
    /// returned watcher is dropped. For a file whose rules code completes, or another
    /// interval, see [`ConfigWatcher::builder`](crate::reload::ConfigWatcher::builder).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`] if the file cannot be read now, [`ConfigError::Watch`] if the
    /// thread cannot start.
    pub fn watch_file(
        &self,
        path: impl AsRef<Path>,
    ) -> Result<crate::reload::ConfigWatcher, ConfigError> {
        crate::reload::ConfigWatcher::builder(self, path).start()
    }
}

/// A place in a configuration file: `routes[2].limits[0].per`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FieldPath(Vec<Seg>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

impl FieldPath {
    fn root() -> Self {
        Self::default()
    }

    fn route(i: usize) -> Self {
        Self::root().key("routes").index(i)
    }

    fn key(mut self, key: &str) -> Self {
        self.0.push(Seg::Key(key.to_string()));
        self
    }

    fn maybe_key(&self, key: Option<&str>) -> Self {
        match key {
            Some(key) => self.clone().key(key),
            None => self.clone(),
        }
    }

    fn index(mut self, i: usize) -> Self {
        self.0.push(Seg::Index(i));
        self
    }

    fn join(mut self, rest: &FieldPath) -> Self {
        self.0.extend(rest.0.iter().cloned());
        self
    }

    /// The field a deserializer was reading when it failed.
    #[cfg(feature = "yaml")]
    fn of(path: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment;
        Self(
            path.iter()
                .filter_map(|segment| match segment {
                    Segment::Map { key } => Some(Seg::Key(key.clone())),
                    Segment::Seq { index } => Some(Seg::Index(*index)),
                    Segment::Enum { .. } | Segment::Unknown => None,
                })
                .collect(),
        )
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if n == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

/// `routes[2].cost (/api/*)`: the field, and the rule's pattern when it helps.
fn with_context(path: &FieldPath, context: Option<&str>) -> String {
    match context {
        Some(context) => format!("{path} ({context})"),
        None => path.to_string(),
    }
}

/// Whether a file holds nothing but blank lines and comments.
fn is_blank(text: &str, format: Format) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || document_markers(format).contains(&line)
    })
}

/// The lines that only separate documents: YAML's `---` and `...`.
fn document_markers(format: Format) -> &'static [&'static str] {
    match format {
        #[cfg(feature = "yaml")]
        Format::Yaml => &["---", "..."],
        #[cfg(feature = "toml")]
        Format::Toml => &[],
    }
}

/// The name of the policy a file's non-global `global:` limit becomes.
fn global_policy_name(key: &Key) -> String {
    format!("global-{}", key.kind().replace(':', "-"))
}

/// Locating a field: the text is read again by a visitor that walks down to the field and
/// fails there on purpose; the parser puts the line and column of the value it was reading
/// in that error. Only run for an error, so the second read costs nothing in the normal
/// case.
mod locate {
    use std::fmt;

    use serde::de::{
        self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor,
    };

    #[cfg(feature = "toml")]
    use super::line_col;
    use super::{Format, Seg};

    /// The message of the deliberate failure.
    const FOUND: &str = "tollgate: field found";

    /// The line and column (from 1) of the value at `path`; `None` if the text has no
    /// such field.
    pub(super) fn position(text: &str, format: Format, path: &[Seg]) -> Option<(usize, usize)> {
        match format {
            #[cfg(feature = "yaml")]
            Format::Yaml => {
                let de = serde_yaml_ng::Deserializer::from_str(text);
                match Probe(path).deserialize(de) {
                    Err(e) if e.to_string().contains(FOUND) => {
                        e.location().map(|l| (l.line(), l.column()))
                    }
                    _ => None,
                }
            }
            #[cfg(feature = "toml")]
            Format::Toml => {
                let de = toml::Deserializer::parse(text).ok()?;
                match Probe(path).deserialize(de) {
                    Err(e) if e.message().contains(FOUND) => {
                        e.span().map(|span| line_col(text, span.start))
                    }
                    _ => None,
                }
            }
        }
    }

    struct Probe<'p>(&'p [Seg]);

    impl<'de> DeserializeSeed<'de> for Probe<'_> {
        type Value = ();

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl Probe<'_> {
        fn scalar<E: de::Error>(self) -> Result<(), E> {
            if self.0.is_empty() {
                Err(E::custom(FOUND))
            } else {
                Ok(())
            }
        }
    }

    macro_rules! scalars {
        ($($name:ident: $ty:ty),*) => {
            $(fn $name<E: de::Error>(self, _: $ty) -> Result<(), E> { self.scalar() })*
        };
    }

    impl<'de> Visitor<'de> for Probe<'_> {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any value")
        }

        scalars!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_i128: i128,
            visit_u128: u128, visit_f64: f64, visit_str: &str, visit_bytes: &[u8]);

        fn visit_none<E: de::Error>(self) -> Result<(), E> {
            self.scalar()
        }

        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            self.scalar()
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let Some((first, rest)) = self.0.split_first() else {
                return Err(de::Error::custom(FOUND));
            };
            while let Some(KeyText(key)) = map.next_key()? {
                if matches!(first, Seg::Key(k) if *k == key) {
                    return map.next_value_seed(Probe(rest));
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let Some((first, rest)) = self.0.split_first() else {
                return Err(de::Error::custom(FOUND));
            };
            let mut i = 0;
            loop {
                if matches!(first, Seg::Index(n) if *n == i) {
                    return seq.next_element_seed(Probe(rest)).map(|_| ());
                }
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    return Ok(());
                }
                i += 1;
            }
        }
    }

    /// A map key as text, whatever its scalar type.
    struct KeyText(String);

    impl<'de> de::Deserialize<'de> for KeyText {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = KeyText;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a key")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyText, E> {
                    Ok(KeyText(v.to_string()))
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyText, E> {
                    Ok(KeyText(v.to_string()))
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyText, E> {
                    Ok(KeyText(v.to_string()))
                }
                fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyText, E> {
                    Ok(KeyText(v.to_string()))
                }
                fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeyText, E> {
                    Ok(KeyText(v.to_string()))
                }
                fn visit_unit<E: de::Error>(self) -> Result<KeyText, E> {
                    Ok(KeyText(String::new()))
                }
            }
            d.deserialize_any(V)
        }
    }
}

impl Config {
    /// The line and column of `path` in the text this configuration was read from, or of
    /// the nearest enclosing field the text has (a field left to its default is not in
    /// the text).
    fn locate(&self, path: &FieldPath) -> (Option<usize>, Option<usize>) {
        let Some(origin) = &self.origin else {
            return (None, None);
        };
        (0..=path.0.len())
            .rev()
            .find_map(|n| locate::position(&origin.text, origin.format, &path.0[..n]))
            .unzip()
    }

    /// The routes (not exempt) whose policy is named `name`.
    fn routes_named<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = (usize, &'a RouteConfig)> + 'a {
        self.routes
            .iter()
            .enumerate()
            .filter(move |(_, r)| !r.exempt && r.policy_name() == name)
    }

    /// The key `rate_limit:` blocks and limits without `per:` use.
    fn default_key(&self) -> KeyText {
        self.default_key.clone().unwrap_or(KeyText::Ip)
    }

    /// `global:` entries then `gateway.global_rate_limit`, with their fields.
    fn globals(&self) -> impl Iterator<Item = (FieldPath, &LimitConfig)> {
        let global = self
            .global
            .iter()
            .enumerate()
            .map(|(i, l)| (FieldPath::root().key("global").index(i), l));
        let gateway = self
            .gateway
            .iter()
            .filter_map(|g| g.global_rate_limit.as_ref())
            .map(|l| (FieldPath::root().key("gateway").key("global_rate_limit"), l));
        global.chain(gateway)
    }

    /// Points a [`BuildError`] of a limiter built from this configuration (after
    /// [`Config::apply`]) at the rule of the file that caused it: file, line, column and
    /// field, as [`ConfigError::Invalid`]. An error no rule of the file explains (a rule
    /// added in code) names the field `limiter`, without a line. A
    /// [`BuildError::Config`] (already pointed) comes out as the [`ConfigError`] it holds.
    pub fn build_error(&self, file: &str, error: BuildError) -> ConfigError {
        // Already pointed (the builder was set up by `Config::apply`).
        let error = match error {
            BuildError::Config(pointed) => return *pointed,
            error => error,
        };
        let (field, line, column) = match self.blame(&error) {
            Some((path, context)) => {
                let (line, column) = self.locate(&path);
                (with_context(&path, context.as_deref()), line, column)
            }
            None => ("limiter".to_string(), None, None),
        };
        ConfigError::Invalid {
            file: file.to_string(),
            line,
            column,
            field,
            source: Box::new(error),
        }
    }

    /// The field of the file behind a build error, and the rule's pattern if it is a route.
    fn blame(&self, error: &BuildError) -> Option<(FieldPath, Option<String>)> {
        use crate::classify::{InvalidReason, PatternError};
        use crate::client_ip::ClientIpError;

        let default_key = self.default_key();
        let route = |i: usize, field: FieldPath| {
            let path = FieldPath::route(i).join(&field);
            Some((path, Some(self.routes[i].pattern())))
        };
        let field = |name: &str| FieldPath::root().key(name);
        let by_pattern = |text: &str, after: Option<usize>| {
            self.routes
                .iter()
                .enumerate()
                .skip(after.map_or(0, |i| i + 1))
                .find(|(_, r)| r.pattern().trim() == text)
                .map(|(i, _)| i)
        };
        // The limit of `routes[i]` (or of a global entry) whose key satisfies `pred`.
        let limit_with = |entries: Vec<(FieldPath, &LimitConfig)>,
                          pred: &dyn Fn(&KeyText) -> bool| {
            entries
                .into_iter()
                .find_map(|(path, limit)| match &limit.per {
                    Some(per) if pred(per) => Some(path.key("per")),
                    None if pred(&default_key) => Some(match self.default_key {
                        Some(_) => field("default_key"),
                        None => path,
                    }),
                    _ => None,
                })
        };
        let in_route = |name: &str, pred: &dyn Fn(&KeyText) -> bool| {
            self.routes_named(name).find_map(|(i, r)| {
                let entries: Vec<_> = r.limit_entries().collect();
                limit_with(entries, pred).map(|f| {
                    if f.0.first() == Some(&Seg::Key("default_key".into())) {
                        (f, None)
                    } else {
                        (FieldPath::route(i).join(&f), Some(r.pattern()))
                    }
                })
            })
        };
        let in_globals = |pred: &dyn Fn(&KeyText) -> bool| {
            self.globals().find_map(|(path, limit)| match &limit.per {
                Some(per) if pred(per) => Some((path.key("per"), None)),
                _ => None,
            })
        };
        let first_route = |name: &str| self.routes_named(name).next().map(|(i, _)| i);
        match error {
            BuildError::Route(PatternError::Invalid { pattern, .. }) => {
                let i = by_pattern(pattern, None)?;
                let sub = match crate::classify::RoutePattern::parse_why(pattern) {
                    Err(
                        InvalidReason::EmptyMethod
                        | InvalidReason::LowercaseMethod(_)
                        | InvalidReason::BadMethod(_)
                        | InvalidReason::MethodList(_)
                        | InvalidReason::MisspeltMethod { .. },
                    ) => "methods",
                    _ => "path",
                };
                route(i, field(sub))
            }
            BuildError::Route(PatternError::Tie { first, second, .. }) => {
                let a = by_pattern(&first.to_string(), None)?;
                let b = by_pattern(&second.to_string(), Some(a))?;
                route(b, field("path"))
            }
            BuildError::Route(PatternError::NeverMatches { rule, .. }) => {
                route(by_pattern(&rule.to_string(), None)?, field("path"))
            }
            BuildError::ClientIp(
                ClientIpError::InvalidProxy { input, .. }
                | ClientIpError::HostBitsSet { input, .. },
            ) => {
                let j = self
                    .client_ip
                    .trusted_proxies
                    .iter()
                    .position(|p| p == input)?;
                Some((field("client_ip").key("trusted_proxies").index(j), None))
            }
            BuildError::ClientIp(_) => Some((field("client_ip").key("ipv6_prefix"), None)),
            BuildError::NoIdentity { policy } => in_route(policy, &|k| *k == KeyText::User)
                .or_else(|| in_globals(&|k| *k == KeyText::User)),
            BuildError::BadHeaderName { policy, header } => {
                let names = |k: &KeyText| match k {
                    KeyText::ApiKey(h) | KeyText::Header(h) | KeyText::Tenant(h) => h == header,
                    _ => false,
                };
                in_route(policy, &names).or_else(|| in_globals(&names))
            }
            BuildError::ZeroCost { policy } | BuildError::CostExceedsCapacity { policy, .. } => {
                let (i, _) = self.routes_named(policy).find(|(_, r)| r.cost.is_some())?;
                route(i, field("cost"))
            }
            BuildError::BadName { name } | BuildError::ReservedName { name } => {
                if self.buckets.contains_key(name) {
                    return Some((field("buckets").key(name), None));
                }
                self.routes.iter().enumerate().find_map(|(i, r)| {
                    if r.bucket.as_deref() == Some(name) {
                        route(i, field("bucket"))
                    } else if r.name.as_deref() == Some(name) {
                        route(i, field("name"))
                    } else if !r.exempt && r.policy_name() == *name {
                        route(i, field("path"))
                    } else {
                        None
                    }
                })
            }
            BuildError::SharedBucketMismatch { bucket, second, .. } => {
                let bucket_of =
                    |r: &RouteConfig| r.bucket.clone().unwrap_or_else(|| r.policy_name());
                let sharing: Vec<usize> = (0..self.routes.len())
                    .filter(|&i| !self.routes[i].exempt && bucket_of(&self.routes[i]) == *bucket)
                    .collect();
                let i = sharing
                    .iter()
                    .skip(1)
                    .find(|&&i| self.routes[i].policy_name() == *second)
                    .or(sharing.get(1))
                    // One route: it shares the bucket with a global limit (a route named
                    // `global` beside `gateway`).
                    .or(sharing.first())
                    .copied()?;
                let sub = match (&self.routes[i].bucket, &self.routes[i].name) {
                    (Some(_), _) => "bucket",
                    (None, Some(_)) => "name",
                    (None, None) => "path",
                };
                route(i, field(sub))
            }
            BuildError::DuplicateBucket { name } => {
                if self.buckets.contains_key(name) {
                    Some((field("buckets").key(name), None))
                } else {
                    None
                }
            }
            BuildError::BucketRate { bucket, .. } => Some((field("buckets").key(bucket), None)),
            BuildError::Rate { policy, .. }
            | BuildError::EmptyPolicy { policy }
            | BuildError::BadKeyKind { policy, .. }
            | BuildError::KeyKindsOverlap { policy, .. } => match first_route(policy) {
                Some(i) => route(i, FieldPath::root()),
                None => self
                    .globals()
                    .find(|(_, l)| match &l.per {
                        None | Some(KeyText::Global) => policy == "global",
                        Some(per) => global_policy_name(&per.key()) == *policy,
                    })
                    .map(|(path, _)| (path, None)),
            },
            _ => None,
        }
    }
}
