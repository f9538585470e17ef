//! What the limiter reports: metrics on the [`metrics`](https://docs.rs/metrics) facade
//! (feature `metrics`; you pick the exporter), and `tracing` events and spans.
//!
//! # Metrics
//!
//! | name | kind | labels | moves |
//! |---|---|---|---|
//! | [`REQUESTS_TOTAL`] `tollgate_requests_total` | counter | `policy`, `bucket`, `outcome` | once per bucket a request was decided by: `outcome="admitted"` for every bucket an admitted request spent; `"refused"` for the bucket (or buckets) that refused a refused request (the others were not charged and do not count); `"store_full"` for a bucket that refused a key because its share of the memory store was full of keys it could not evict ([`Refusal::StoreFull`]: the key is not over its limit; the middleware answers such a request with a 429 as for `refused`, a handler's direct check decides itself what follows); `"shadow_refused"` for a dry-run bucket that would have refused. A guard that counts only some responses (`Policy::failed_auth_per_ip`) counts `admitted` for the responses it counted, not for the requests it looked at; a charge given back after the response (a 304) stays counted. A bucket for direct use (`Limiter::check`, `check_cost`) counts under `policy` and `bucket` both its name |
//! | [`NEAR_LIMIT_TOTAL`] `tollgate_near_limit_total` | counter | `policy`, `bucket` | a bucket admitted a request and has less than 10% of its limit left |
//! | [`STORE_ERRORS_TOTAL`] `tollgate_store_errors_total` | counter | `store` | the store could not answer a request's charge |
//! | [`STORE_DURATION_SECONDS`] `tollgate_store_duration_seconds` | histogram | `store` | the time a store that waits (Redis, a fallback store) took to answer a charge |
//! | [`STORE_FALLBACK`] `tollgate_store_fallback` | gauge | `store` | 1 while a fallback store decides from memory because its shared store fails, else 0 (updated with every answer of a store that waits) |
//! | [`STORE_FALLBACKS_TOTAL`] `tollgate_store_fallbacks_total` | counter | `store` | each switch to the memory fallback, as the store counts them ([`Store::fallbacks`](tollgate_limits::Store::fallbacks): each departure from its shared store, below the failure threshold too), read with every answer of a store that waits (a pause shorter than a scrape still shows) |
//! | [`CONFIG_RELOADS_TOTAL`] `tollgate_config_reloads_total` | counter | `outcome` | once per reload tried ([`Limiter::reload`], [`Limiter::reload_config_with`], [`Limiter::reload_file`], a file watcher's reload of a changed file or [`ConfigWatcher::reload_now`]): `outcome="reloaded"`, or `"refused"` for one that did not load or build (the running rules stayed; the error is logged by a watcher, returned otherwise). A watched file that turns unreadable (deleted, its permissions changed) counts one `refused` until it reads again. Alert on `refused`: a broken edit leaves the old rules in force |
//!
//! Labels are configuration names, never a client's key: `policy` is the policy's name,
//! `bucket` the bucket's name as the logs, [`Limiter::describe`](crate::Limiter::describe)
//! and the admin router give it (`default:ip`, `auth`, `override:api_key` for per-key
//! overrides; the IETF headers write `:` as `-`, `"default-ip"`), `store` the store's
//! name ([`LimiterBuilder::store_name`]; `memory` or `shared` by default). Series are
//! bounded by the configuration.
//!
//! To count requests (rather than bucket decisions), pick one bucket every request of a
//! policy spends: `sum(rate(tollgate_requests_total{bucket="default:ip"}[5m])) by (outcome)`.
//!
//! **Cost.** Every handle is registered once, when a policy is compiled (at build, or when
//! a per-route policy is made), so a request only increments counters it already holds:
//! no label is built and no map is searched per request (the reload counter, which never
//! moves on a request, is looked up when a reload is tried, under the recorder installed
//! then). Install the exporter's recorder
//! **before** building the limiter: handles registered while no recorder is installed stay
//! no-ops. Without the feature, nothing is compiled in. The memory store answers in tens of
//! nanoseconds on the request's own thread, where reading the clock twice would cost as much
//! as the answer: it is not timed (its histogram is registered, as every store's is, and
//! stays empty).
//!
//! ```
//! # #[cfg(feature = "metrics")] {
//! use metrics_util::debugging::DebuggingRecorder;
//! use tollgate::{Limiter, Policy};
//!
//! let recorder = DebuggingRecorder::new();
//! let snapshotter = recorder.snapshotter();
//! // Handles are registered at build: build under the recorder (or install it globally
//! // first, as an exporter does).
//! let limiter = metrics::with_local_recorder(&recorder, || {
//!     Limiter::builder().route("/*", Policy::named("default").per_ip("10/min")).build()
//! })?;
//! # let _ = (limiter, snapshotter);
//! # }
//! # Ok::<(), tollgate::BuildError>(())
//! ```
//!
//! # Tracing
//!
//! Target `tollgate`:
//!
//! - a `DEBUG` span `tollgate.decide` per decision, with fields `policy` (the route's
//!   policy; for direct use, [`Limiter::check`](crate::Limiter::check) and the other
//!   calls of a bucket, the bucket's name), `store` (its name) and `store_us` (how long
//!   the store took, in microseconds; the memory store is timed only while `DEBUG` is on
//!   for target `tollgate`). With `DEBUG` off, the span costs a check of the level filter.
//! - `INFO` events for refusals and for what a shadow policy would refuse, at most one per
//!   second per policy, each with `unlogged_refusals`: how many were not logged since the
//!   previous one (fields `policy`, `bucket`, `key_kind`, `shadow`, `reason`,
//!   `retry_after_ms`, `method`, `route`; never the key; a method longer than 32 bytes is
//!   cut there). `reason` is `over_limit`, `cost_exceeds_capacity` or `store_full` (the
//!   bucket's share of the memory store had no room for a new key: the message says so
//!   rather than "rate limit exceeded"). `route`
//!   is the route template axum matched (`/users/{email}/reset`), not the path requested, which can carry identifiers;
//!   without one (a path no axum route matches, a plain tower stack) the rule of the
//!   table that classed the request (`/api/*`), else `-`. Store failures name the request
//!   the same way. A bucket for direct use ([`Limiter::check`](crate::Limiter::check) and
//!   [`Limiter::check_cost`](crate::Limiter::check_cost)) logs its refusals the same way,
//!   at most one per second per bucket, with `policy` and `bucket` its name (as its
//!   metrics label it), `key_kind` `direct`, `reason`, `retry_after_ms` and
//!   `unlogged_refusals`.
//! - `INFO` events for what operators change at runtime, the key as it is stored (hashed if
//!   its kind is secret, an IPv6 address as its network): `rate-limit override set` (fields
//!   `kind`, `key`, `limit`), `rate-limit override removed` (`kind`, `key`) and
//!   `rate-limit bucket reset` (`bucket`, `key`), whether through [`Limiter::set_override`]
//!   and its kin or the admin router (feature `admin`).
//! - `WARN` for configuration warnings and store failures (at most one per 10 s, with
//!   `unlogged_failures`); `ERROR` once for requests without a peer address.
//!
//! [`LimiterBuilder::store_name`]: crate::LimiterBuilder::store_name
//! [`Limiter::reload`]: crate::Limiter::reload
//! [`Limiter::set_override`]: crate::Limiter::set_override
// The reloads from files exist with the `yaml` or `toml` feature only; without them their
// names lead to the features.
#![cfg_attr(
    any(feature = "yaml", feature = "toml"),
    doc = "[`Limiter::reload_config_with`]: crate::Limiter::reload_config_with",
    doc = "[`Limiter::reload_file`]: crate::Limiter::reload_file",
    doc = "[`ConfigWatcher::reload_now`]: crate::reload::ConfigWatcher::reload_now"
)]
#![cfg_attr(
    not(any(feature = "yaml", feature = "toml")),
    doc = "[`Limiter::reload_config_with`]: crate#features",
    doc = "[`Limiter::reload_file`]: crate#features",
    doc = "[`ConfigWatcher::reload_now`]: crate#features"
)]

use std::sync::Arc;
use std::time::Duration;

use tollgate_limits::{BucketState, Refusal, StoreMode};

/// `tollgate_requests_total{policy, bucket, outcome}`.
pub const REQUESTS_TOTAL: &str = "tollgate_requests_total";
/// `tollgate_near_limit_total{policy, bucket}`.
pub const NEAR_LIMIT_TOTAL: &str = "tollgate_near_limit_total";
/// `tollgate_store_errors_total{store}`.
pub const STORE_ERRORS_TOTAL: &str = "tollgate_store_errors_total";
/// `tollgate_store_duration_seconds{store}`.
pub const STORE_DURATION_SECONDS: &str = "tollgate_store_duration_seconds";
/// `tollgate_store_fallback{store}`.
pub const STORE_FALLBACK: &str = "tollgate_store_fallback";
/// `tollgate_store_fallbacks_total{store}`.
pub const STORE_FALLBACKS_TOTAL: &str = "tollgate_store_fallbacks_total";

/// `tollgate_config_reloads_total{outcome}`.
pub const CONFIG_RELOADS_TOTAL: &str = "tollgate_config_reloads_total";

/// Describes every metric (the `# HELP` of a Prometheus exporter) and registers both
/// series of [`CONFIG_RELOADS_TOTAL`] at 0, so an alert on refused reloads has a series
/// from the start. Called when a limiter is built, with the recorder installed then.
#[cfg(feature = "metrics")]
pub(crate) fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        REQUESTS_TOTAL,
        "Requests decided per policy and bucket: outcome admitted, refused, store_full (no room for a new key) or shadow_refused (a dry run's)"
    );
    describe_counter!(
        NEAR_LIMIT_TOTAL,
        "Admitted requests that left less than a tenth of their bucket"
    );
    describe_counter!(
        STORE_ERRORS_TOTAL,
        "Calls the rate-limit store could not answer (the policy's failure mode applied)"
    );
    describe_histogram!(
        STORE_DURATION_SECONDS,
        Unit::Seconds,
        "How long the rate-limit store took to answer"
    );
    describe_gauge!(
        STORE_FALLBACK,
        "1 while the store answers from its memory fallback (Redis away), else 0"
    );
    describe_counter!(
        STORE_FALLBACKS_TOTAL,
        "Times the store was seen to switch to its memory fallback (an outage, however short)"
    );
    describe_counter!(
        CONFIG_RELOADS_TOTAL,
        "Reloads of the rate-limit rules tried: outcome reloaded, or refused (the rules running stay)"
    );
    for outcome in ["reloaded", "refused"] {
        ::metrics::counter!(CONFIG_RELOADS_TOTAL, "outcome" => outcome).increment(0);
    }
}

/// Counts a reload tried: `reloaded`, or refused (the running rules stay). Passes `result`
/// on.
pub(crate) fn reload_tried<E>(result: Result<(), E>) -> Result<(), E> {
    count_reload(result.is_ok());
    result
}

/// Counts a reload tried: `reloaded` or refused.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn count_reload(reloaded: bool) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(
        CONFIG_RELOADS_TOTAL,
        "outcome" => if reloaded { "reloaded" } else { "refused" }
    )
    .increment(1);
}

/// Whether metrics are compiled in (feature `metrics`): without it, the request path skips
/// even finding a bucket's handles.
pub(crate) const ENABLED: bool = cfg!(feature = "metrics");

/// Whether an admitted bucket state leaves less than a tenth of the bucket.
#[cfg(feature = "metrics")]
fn near_limit(state: &BucketState) -> bool {
    u128::from(state.remaining) * 10 < u128::from(state.limit)
}

/// The counters of one bucket of one policy.
pub(crate) struct BucketMetrics {
    #[cfg(feature = "metrics")]
    admitted: ::metrics::Counter,
    #[cfg(feature = "metrics")]
    refused: ::metrics::Counter,
    #[cfg(feature = "metrics")]
    store_full: ::metrics::Counter,
    #[cfg(feature = "metrics")]
    shadow_refused: ::metrics::Counter,
    #[cfg(feature = "metrics")]
    near_limit: ::metrics::Counter,
}

impl BucketMetrics {
    /// Registers the counters of bucket `bucket` of policy `policy`.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(policy: &Arc<str>, bucket: &Arc<str>) -> Self {
        #[cfg(feature = "metrics")]
        {
            let requests = |outcome: &'static str| {
                ::metrics::counter!(
                    REQUESTS_TOTAL,
                    "policy" => policy.to_string(),
                    "bucket" => bucket.to_string(),
                    "outcome" => outcome
                )
            };
            Self {
                admitted: requests("admitted"),
                refused: requests("refused"),
                store_full: requests("store_full"),
                shadow_refused: requests("shadow_refused"),
                near_limit: ::metrics::counter!(
                    NEAR_LIMIT_TOTAL,
                    "policy" => policy.to_string(),
                    "bucket" => bucket.to_string()
                ),
            }
        }
        #[cfg(not(feature = "metrics"))]
        Self {}
    }

    /// The bucket admitted a request, leaving `state`.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn admitted(&self, state: &BucketState) {
        #[cfg(feature = "metrics")]
        {
            self.admitted.increment(1);
            if near_limit(state) {
                self.near_limit.increment(1);
            }
        }
    }

    /// The bucket refused a request, answering `state` (`shadow`: a dry run, the request
    /// went on).
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn refused(&self, shadow: bool, state: &BucketState) {
        #[cfg(feature = "metrics")]
        if shadow {
            self.shadow_refused.increment(1);
        } else if state.refusal == Some(Refusal::StoreFull) {
            self.store_full.increment(1);
        } else {
            self.refused.increment(1);
        }
    }
}

/// A request's method as events show it (`method`): a method a client invented longer than
/// 32 bytes is cut there, with `…` (a review sent a 95,000-byte method and got a log line
/// of that size).
pub(crate) struct ShownMethod<'a>(pub(crate) &'a http::Method);

impl std::fmt::Display for ShownMethod<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MAX: usize = 32;
        // (A method is a token: ASCII, so any byte is a character boundary.)
        let method = self.0.as_str();
        match method.get(..MAX) {
            Some(cut) if method.len() > MAX => write!(f, "{cut}…"),
            _ => f.write_str(method),
        }
    }
}

/// Why a bucket refused, as refusal events name it (`reason`).
pub(crate) fn refusal_reason(state: &BucketState) -> &'static str {
    match state.refusal {
        Some(Refusal::StoreFull) => "store_full",
        Some(Refusal::CostExceedsCapacity { .. }) => "cost_exceeds_capacity",
        _ => "over_limit",
    }
}

/// The message of a refusal event: a key refused for want of room in the store is not
/// over its limit, and its event does not say it is.
pub(crate) fn refusal_message(shadow: bool, state: &BucketState) -> &'static str {
    match (shadow, state.refusal == Some(Refusal::StoreFull)) {
        (false, false) => "rate limit exceeded",
        (true, false) => "rate limit would refuse (shadow)",
        (false, true) => "no room for a new key in the store: refused",
        (true, true) => "no room for a new key in the store: would refuse (shadow)",
    }
}

/// The store's metrics.
pub(crate) struct StoreMetrics {
    #[cfg(feature = "metrics")]
    errors: ::metrics::Counter,
    #[cfg(feature = "metrics")]
    duration: ::metrics::Histogram,
    #[cfg(feature = "metrics")]
    fallback: ::metrics::Gauge,
    #[cfg(feature = "metrics")]
    fallbacks: ::metrics::Counter,
    /// The store's count of switches to its fallback the counter has reached.
    #[cfg(feature = "metrics")]
    fallbacks_seen: std::sync::atomic::AtomicU64,
}

impl StoreMetrics {
    /// Registers the metrics of the store labelled `store`, in mode `mode`.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(store: &str, mode: StoreMode) -> Self {
        #[cfg(feature = "metrics")]
        {
            describe();
            let this = Self {
                errors: ::metrics::counter!(STORE_ERRORS_TOTAL, "store" => store.to_string()),
                duration: ::metrics::histogram!(STORE_DURATION_SECONDS, "store" => store.to_string()),
                fallback: ::metrics::gauge!(STORE_FALLBACK, "store" => store.to_string()),
                fallbacks: ::metrics::counter!(STORE_FALLBACKS_TOTAL, "store" => store.to_string()),
                fallbacks_seen: std::sync::atomic::AtomicU64::new(0),
            };
            this.mode(mode, 0);
            this
        }
        #[cfg(not(feature = "metrics"))]
        Self {}
    }

    /// The store failed to answer.
    #[inline]
    pub(crate) fn error(&self) {
        #[cfg(feature = "metrics")]
        self.errors.increment(1);
    }

    /// `store` answered (or failed) after `elapsed`: where it decides now, and how many
    /// times it has switched to its fallback ([`Store::fallbacks`](tollgate_limits::Store::fallbacks)),
    /// are read only when metrics are on.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn answered(&self, elapsed: Duration, store: &dyn tollgate_limits::Store) {
        #[cfg(feature = "metrics")]
        {
            self.duration.record(elapsed.as_secs_f64());
            self.mode(store.mode(), store.fallbacks());
        }
    }

    #[cfg(feature = "metrics")]
    fn mode(&self, mode: StoreMode, fallbacks: u64) {
        use std::sync::atomic::Ordering;
        self.fallback.set(if mode == StoreMode::Fallback {
            1.0
        } else {
            0.0
        });
        // Each switch counted once, as the store counted it: a pause shorter than a scrape
        // leaves a trace, and answers read around a switch (one still on the primary after
        // one from memory) do not count it twice. (Read first: while the count holds, it is
        // not written.)
        if fallbacks > self.fallbacks_seen.load(Ordering::Relaxed) {
            let seen = self.fallbacks_seen.fetch_max(fallbacks, Ordering::Relaxed);
            if fallbacks > seen {
                self.fallbacks.increment(fallbacks - seen);
            }
        }
    }
}

/// The default `store` label: `memory` for a store that decides in this process, `shared`
/// for one shared between processes (Redis, or a fallback store in front of it).
pub(crate) fn default_store_name(mode: StoreMode) -> &'static str {
    match mode {
        StoreMode::Memory => "memory",
        _ => "shared",
    }
}

#[cfg(test)]
mod tests {
    use super::ShownMethod;

    /// Events show a method as it is, up to 32 bytes: an invented method of 95,000 bytes
    /// made a refusal's log line that long.
    #[test]
    fn a_long_invented_method_is_cut_in_events() {
        let shown =
            |m: &str| ShownMethod(&http::Method::from_bytes(m.as_bytes()).unwrap()).to_string();
        assert_eq!(shown("GET"), "GET");
        let exactly = "X".repeat(32);
        assert_eq!(shown(&exactly), exactly);
        assert_eq!(shown(&"Z".repeat(95_000)), format!("{}…", "Z".repeat(32)));
    }
}
