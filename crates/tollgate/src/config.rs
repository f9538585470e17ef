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
//!   - path: /v1/invoices         # seed 004, as printed
//!     methods: [GET]
//!     rate_limit: { sustained: 100/min, burst: 20/s, daily: 10000/day }
//! gateway:
//!   global_rate_limit: { sustained: 1000/min }
//! buckets:                       # for direct use from handlers (Limiter::check)
//!   sign-in-failures: { limit: 5/30min, algorithm: exact }
//! ```
//!
//! Keys (`per:`): `ip`, `user` (needs an identity function in code), `api_key` (the
//! `x-api-key` header) or `api_key:<header>`, `header:<name>`, `tenant:<header>`, `global`.
//! A limit is `limit:` (a rolling window; `algorithm:` `sliding` | `exact` | `fixed`) or the
//! seed-004 trio `sustained:` (token bucket refill), `burst:` (its capacity: the count of
//! `20/s` is 20) and `daily:` (a fixed UTC-day cap).
//!
//! Errors name the file, the line and the field, and say what was expected.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tollgate_core::{FailureMode, Limit, Quota};

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
    #[error("{path}: unknown format; name the file *.toml, *.yaml or *.yml")]
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
    /// The values parse but do not make a limiter (ties between routes, bad CIDRs...).
    #[error("{file}: {field}: {source}")]
    Invalid {
        /// The file.
        file: String,
        /// Which part of the file (`routes[2] (/api/*)`, `client_ip`, `store`).
        field: String,
        /// The builder's error.
        #[source]
        source: Box<BuildError>,
    },
    /// A rule of the file is incomplete or contradicts itself (e.g. `burst` without
    /// `sustained`, an exempt route with limits).
    #[error("{file}: {field}: {message}")]
    Rule {
        /// The file.
        file: String,
        /// Which rule (`routes[2] (/api/*)`, `buckets.sign-in`, `global[0]`).
        field: String,
        /// What was wrong.
        message: String,
    },
    /// A store named in the file cannot be made here (e.g. `kind: redis` without the
    /// `redis` feature, or without a `url`).
    #[error("{file}: store: {message}")]
    Store {
        /// The file.
        file: String,
        /// What was wrong.
        message: String,
    },
}

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

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Whether limiting is on (default true; `RATE_LIMIT_ENABLED` wins).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Log and count what would be refused, refuse nothing.
    #[serde(default)]
    pub shadow: bool,
    /// What to do when the store's backend is down.
    #[serde(default)]
    pub on_store_failure: Option<FailureModeText>,
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
    /// Buckets for direct use from handlers.
    #[serde(default)]
    pub buckets: BTreeMap<String, LimitConfig>,
    /// The route table, most specific rule wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Limits spent by every non-exempt request.
    #[serde(default)]
    pub global: Vec<LimitConfig>,
    /// Seed 004's spelling of a global limit.
    #[serde(default)]
    pub gateway: Option<GatewayConfig>,
}

/// `store:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `memory` (default), `redis` or `env`. `REDIS_URL` / `KV_URL` in the environment,
    /// when set, override it: the store is then Redis at that URL, falling back to memory.
    #[serde(default)]
    pub kind: StoreKind,
    /// For `redis`: `redis://` or `rediss://` URL.
    #[serde(default)]
    pub url: Option<String>,
    /// The most keys the memory store (or the fallback) holds.
    #[serde(default)]
    pub max_entries: Option<usize>,
    /// Redis: milliseconds to wait before answering from memory.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Redis: divide limits by this while on the memory fallback (the number of instances).
    #[serde(default)]
    pub fallback_divisor: Option<u32>,
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
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientIpConfig {
    /// Proxies whose forwarded headers are believed (CIDRs or addresses).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// IPv6 clients are keyed by this prefix (default 64).
    #[serde(default)]
    pub ipv6_prefix: Option<u8>,
}

/// `headers:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersConfig {
    /// `X-RateLimit-Reset` as `unix_seconds` (default), `unix_millis`, `seconds`,
    /// `http_date`, or `none` for no `X-RateLimit-*` headers.
    #[serde(default)]
    pub x_ratelimit: Option<ResetText>,
    /// The IETF `RateLimit` / `RateLimit-Policy` fields (default true).
    #[serde(default)]
    pub ietf: Option<bool>,
}

/// `headers.x_ratelimit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetText {
    /// Unix seconds.
    UnixSeconds,
    /// Unix milliseconds (seed 002).
    UnixMillis,
    /// Seconds from now.
    Seconds,
    /// An HTTP date (seed 001).
    HttpDate,
    /// No `X-RateLimit-*` headers.
    None,
}

/// `body:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyText {
    /// `{"error", "message", "retryAfter"}` (seed 000; the default).
    RetryAfter,
    /// `{"error", "code", "details": {"limit", "window", "retryAfter"}}` (seed 003).
    CodeDetails,
    /// `{"error", "message", "limit", "remaining", "reset_at"}` (seed 004).
    Message,
}

/// `on_store_failure:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureModeText {
    /// Answer from memory.
    Fallback,
    /// Admit without rate-limit headers (seed 002).
    Open,
    /// Refuse with 503.
    Closed,
}

impl From<FailureModeText> for FailureMode {
    fn from(t: FailureModeText) -> Self {
        match t {
            FailureModeText::Fallback => FailureMode::Fallback,
            FailureModeText::Open => FailureMode::Open,
            FailureModeText::Closed => FailureMode::Closed,
        }
    }
}

/// One rule of `routes:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The path pattern: `/api/*`, `/v1/campaigns/{id}`, `/v1/campaigns/:id`.
    pub path: String,
    /// Methods the rule is for (all if empty).
    #[serde(default)]
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
    pub on_store_failure: Option<FailureModeText>,
    /// Response statuses whose charge is given back (e.g. `[304]`).
    #[serde(default)]
    pub refund_statuses: Vec<u16>,
    /// Only responses with these statuses count (e.g. `[401]`).
    #[serde(default)]
    pub count_only_statuses: Vec<u16>,
    /// The rule's limits.
    #[serde(default)]
    pub limits: Vec<LimitConfig>,
    /// Seed 004's spelling: `{ sustained, burst, daily }`.
    #[serde(default)]
    pub rate_limit: Option<LimitConfig>,
}

/// `gateway:` (seed 004).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// A global limit.
    #[serde(default)]
    pub global_rate_limit: Option<LimitConfig>,
}

/// One limit: whose budget, and how much.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Whose budget (default: `default_key`, or `global` under `global:`/`gateway:`).
    #[serde(default)]
    pub per: Option<KeyText>,
    /// A quota counted by `algorithm` (default `sliding`).
    #[serde(default)]
    pub limit: Option<QuotaText>,
    /// `sliding` (default), `exact` or `fixed`.
    #[serde(default)]
    pub algorithm: Option<AlgorithmText>,
    /// Token bucket refill rate.
    #[serde(default)]
    pub sustained: Option<QuotaText>,
    /// Token bucket capacity (the count; `20/s` is 20).
    #[serde(default)]
    pub burst: Option<QuotaText>,
    /// A cap per UTC day (`10000/day`) or any fixed window.
    #[serde(default)]
    pub daily: Option<QuotaText>,
}

/// `algorithm:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlgorithmText {
    /// Segmented rolling window.
    Sliding,
    /// Exact rolling window.
    Exact,
    /// Fixed window aligned to UTC.
    Fixed,
}

/// A quota as text, checked while the file is read (so errors carry the line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaText(pub Quota);

impl<'de> Deserialize<'de> for QuotaText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Quota::parse(&text)
            .map(QuotaText)
            .map_err(serde::de::Error::custom)
    }
}

/// A key, as text: `ip`, `user`, `api_key`, `api_key:<header>`, `header:<name>`,
/// `tenant:<header>`, `global`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyText {
    /// The client IP.
    Ip,
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
            ("user", None) => Ok(KeyText::User),
            ("global", None) => Ok(KeyText::Global),
            ("api_key", None) => Ok(KeyText::ApiKey("x-api-key".into())),
            ("api_key", Some(_)) => named("api_key").map(KeyText::ApiKey),
            ("header", _) => named("header").map(KeyText::Header),
            ("tenant", _) => named("tenant").map(KeyText::Tenant),
            _ => Err(serde::de::Error::custom(format!(
                "unknown key `{t}`: expected ip, user, api_key, api_key:<header>, header:<name>, tenant:<header> or global"
            ))),
        }
    }
}

impl KeyText {
    fn key(&self) -> Key {
        match self {
            KeyText::Ip => Key::ip(),
            KeyText::User => Key::user(),
            KeyText::Global => Key::global(),
            KeyText::ApiKey(h) => Key::api_key(h),
            KeyText::Header(h) => Key::header(h),
            KeyText::Tenant(h) => {
                let name = h.clone();
                Key::tenant(move |parts| {
                    parts
                        .headers
                        .get(name.as_str())
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                })
            }
        }
    }
}

impl LimitConfig {
    /// The limits this entry declares, with their keys (`default` when `per:` is absent).
    fn rates(&self, default: &KeyText) -> Result<(Key, Vec<Rate>), String> {
        let key = self.per.as_ref().unwrap_or(default).key();
        let mut rates = Vec::new();
        if let Some(QuotaText(q)) = self.limit {
            let limit = match self.algorithm.unwrap_or(AlgorithmText::Sliding) {
                AlgorithmText::Sliding => Limit::sliding(q),
                AlgorithmText::Exact => Limit::sliding_exact(q),
                AlgorithmText::Fixed => Limit::fixed(q),
            };
            rates.push(Rate::from(limit));
        } else if self.algorithm.is_some() {
            return Err("`algorithm` goes with `limit`".into());
        }
        match (self.sustained, self.burst) {
            (Some(QuotaText(s)), burst) => {
                let capacity = burst.map_or(s.count(), |QuotaText(b)| b.count());
                rates.push(Rate::token_bucket(s, capacity));
            }
            (None, Some(_)) => {
                return Err("`burst` needs `sustained` (the refill rate), as in `{ sustained: 100/min, burst: 20/s }`".into())
            }
            (None, None) => {}
        }
        if let Some(QuotaText(d)) = self.daily {
            rates.push(Rate::fixed(d));
        }
        if rates.is_empty() {
            return Err("no limit: give `limit`, `sustained` (+ `burst`) or `daily`".into());
        }
        Ok((key, rates))
    }
}

impl Config {
    /// Reads TOML text.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Parse`] with the line and column.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::toml_named(text, "<toml>")
    }

    /// Reads YAML text.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Parse`] with the line and column.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        Self::yaml_named(text, "<yaml>")
    }

    /// Reads a file, TOML or YAML by its extension.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`], [`ConfigError::UnknownFormat`], [`ConfigError::Parse`].
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let name = path.display().to_string();
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Self::toml_named(&text, &name),
            Some("yaml" | "yml") => Self::yaml_named(&text, &name),
            _ => Err(ConfigError::UnknownFormat {
                path: path.to_path_buf(),
            }),
        }
    }

    fn toml_named(text: &str, file: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|span| line_col(text, span.start)).unzip();
            ConfigError::Parse {
                file: file.to_string(),
                line,
                column,
                message: e.message().to_string(),
            }
        })
    }

    fn yaml_named(text: &str, file: &str) -> Result<Self, ConfigError> {
        serde_yaml_ng::from_str(text).map_err(|e| {
            let location = e.location();
            let message = e.to_string();
            // The crate appends " at line L column C"; the location is shown once, in front.
            let message = match message.rfind(" at line ") {
                Some(i) if location.is_some() => message[..i].to_string(),
                _ => message,
            };
            ConfigError::Parse {
                file: file.to_string(),
                line: location.as_ref().map(|l| l.line()),
                column: location.as_ref().map(|l| l.column()),
                message,
            }
        })
    }

    /// Applies the file to `builder`: every field maps onto a builder call. `file` names the
    /// source in errors.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the rule, [`ConfigError::Store`].
    pub fn apply(
        &self,
        mut builder: LimiterBuilder,
        file: &str,
    ) -> Result<LimiterBuilder, ConfigError> {
        let invalid = |field: String, message: String| ConfigError::Rule {
            file: file.to_string(),
            field,
            message,
        };
        if let Some(enabled) = self.enabled {
            builder = builder.enabled(enabled);
        }
        builder = builder.shadow(self.shadow);
        if let Some(mode) = self.on_store_failure {
            builder = builder.on_store_failure(mode.into());
        }
        builder = self.store.apply(builder, file)?;
        if !self.client_ip.trusted_proxies.is_empty() || self.client_ip.ipv6_prefix.is_some() {
            let mut ip = ClientIp::peer().trust_proxies(&self.client_ip.trusted_proxies);
            if let Some(bits) = self.client_ip.ipv6_prefix {
                ip = ip.ipv6_prefix(bits);
            }
            builder = builder.client_ip(ip);
        }
        builder = builder.header_style(self.headers.style());
        if let Some(body) = self.body {
            builder = builder.error_body(match body {
                BodyText::RetryAfter => ErrorBody::retry_after_camel(),
                BodyText::CodeDetails => ErrorBody::code_details(),
                BodyText::Message => ErrorBody::message(),
            });
        }
        let default_key = self.default_key.clone().unwrap_or(KeyText::Ip);
        for (name, limit) in &self.buckets {
            let field = format!("buckets.{name}");
            if limit.per.is_some() {
                return Err(invalid(
                    field,
                    "a bucket for direct use has no `per:`: the handler names the key in `limiter.check(bucket, key)`".into(),
                ));
            }
            let (_, rates) = limit
                .rates(&default_key)
                .map_err(|m| invalid(field.clone(), m))?;
            let [rate] = <[Rate; 1]>::try_from(rates)
                .map_err(|_| invalid(field, "a bucket for direct use takes one limit".into()))?;
            builder = builder.bucket(name, rate);
        }
        for (i, route) in self.routes.iter().enumerate() {
            let pattern = route.pattern();
            let field = format!("routes[{i}] ({pattern})");
            let policy = route
                .policy(&pattern, &default_key)
                .map_err(|m| invalid(field, m))?;
            builder = builder.route(&pattern, policy);
        }
        let globals = self.global.iter().chain(
            self.gateway
                .iter()
                .filter_map(|g| g.global_rate_limit.as_ref()),
        );
        for (i, limit) in globals.enumerate() {
            let (key, rates) = limit
                .rates(&KeyText::Global)
                .map_err(|m| invalid(format!("global[{i}]"), m))?;
            if limit.per.is_none() || limit.per == Some(KeyText::Global) {
                for rate in rates {
                    builder = builder.global(rate);
                }
            } else {
                let mut policy = Policy::named(format!("global-{}", key.kind().replace(':', "-")));
                for rate in rates {
                    policy = policy.limit(key.clone(), rate);
                }
                builder = builder.global_policy(policy);
            }
        }
        Ok(builder)
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
        if ietf && self.x_ratelimit != Some(ResetText::None) {
            base.with_ietf()
        } else {
            base
        }
    }
}

impl RouteConfig {
    fn pattern(&self) -> String {
        if self.methods.is_empty() {
            self.path.clone()
        } else {
            format!("{} {}", self.methods.join(","), self.path)
        }
    }

    fn policy(&self, pattern: &str, default_key: &KeyText) -> Result<Policy, String> {
        if self.exempt {
            if !self.limits.is_empty() || self.rate_limit.is_some() {
                return Err("an exempt route takes no limits".into());
            }
            return Ok(Policy::exempt());
        }
        let name = self.name.clone().unwrap_or_else(|| policy_name(pattern));
        let mut policy = Policy::named(name);
        let limits = self.limits.iter().chain(self.rate_limit.iter());
        let mut any = false;
        for limit in limits {
            let (key, rates) = limit.rates(default_key)?;
            for rate in rates {
                policy = policy.limit(key.clone(), rate);
                any = true;
            }
        }
        if !any {
            return Err(
                "no limits: add `limits:` or `rate_limit:`, or mark it `exempt: true`".into(),
            );
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
            policy = policy.on_store_failure(mode.into());
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

impl StoreConfig {
    /// The Redis URL to use, if any: `REDIS_URL` or `KV_URL` from the environment when set
    /// (they override the file), else `url:` for `kind: redis`.
    fn redis_url(&self, file: &str) -> Result<Option<String>, ConfigError> {
        // The environment overrides the file, whatever its `kind`.
        if let Some(url) = redis_url_from_env() {
            return Ok(Some(url));
        }
        match self.kind {
            StoreKind::Memory | StoreKind::Env => Ok(None),
            StoreKind::Redis => self
                .url
                .clone()
                .map(Some)
                .ok_or_else(|| ConfigError::Store {
                    file: file.to_string(),
                    message:
                        "`kind: redis` needs `url: redis://host:6379/` (or REDIS_URL / KV_URL)"
                            .into(),
                }),
        }
    }

    fn memory(&self) -> tollgate_core::MemoryStore {
        let mut memory = tollgate_core::MemoryStore::builder();
        if let Some(n) = self.max_entries {
            memory = memory.max_entries(n);
        }
        memory.build()
    }

    fn apply(&self, builder: LimiterBuilder, file: &str) -> Result<LimiterBuilder, ConfigError> {
        match self.redis_url(file)? {
            None => Ok(builder.store(self.memory())),
            Some(url) => self.redis(builder, file, url),
        }
    }

    #[cfg(feature = "redis")]
    fn redis(
        &self,
        builder: LimiterBuilder,
        file: &str,
        url: String,
    ) -> Result<LimiterBuilder, ConfigError> {
        use tollgate_redis::{FallbackConfig, FallbackStore, RedisStore};
        let redis = RedisStore::builder()
            .url(url)
            .build()
            .map_err(|e| ConfigError::Store {
                file: file.to_string(),
                message: e.to_string(),
            })?;
        let mut config = FallbackConfig::default();
        if let Some(ms) = self.timeout_ms {
            config = config.timeout(std::time::Duration::from_millis(ms));
        }
        if let Some(n) = self.fallback_divisor {
            config = config.fallback_divisor(n);
        }
        Ok(builder.store(FallbackStore::with_memory(redis, self.memory(), config)))
    }

    #[cfg(not(feature = "redis"))]
    fn redis(
        &self,
        _builder: LimiterBuilder,
        file: &str,
        _url: String,
    ) -> Result<LimiterBuilder, ConfigError> {
        Err(ConfigError::Store {
            file: file.to_string(),
            message: "a Redis store needs tollgate's `redis` feature".into(),
        })
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

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl LimiterBuilder {
    /// A builder set up from a TOML or YAML file (see [`crate::config`]); add what a file
    /// cannot hold (an identity function, custom keys) and build.
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
        let file = path.as_ref().display().to_string();
        LimiterBuilder::from_config(path)?
            .build()
            .map_err(|source| ConfigError::Invalid {
                file,
                field: "limiter".into(),
                source: Box::new(source),
            })
    }
}
