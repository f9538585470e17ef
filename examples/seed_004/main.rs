//! Seed 004: an API gateway's per-endpoint token buckets, per-key limits, a daily cap and a
//! global backstop.
//!
//! The page: each endpoint has a token bucket, configured in `endpointwise.yaml` with a
//! `sustained` refill rate and a `burst` capacity (`/v1/invoices`: 100/min, burst 20;
//! `/v1/reports`: 5/min, burst 2); a `daily` hard cap (10000/day); limits per API key that
//! stack with the endpoint's (the more restrictive applies); a gateway-wide
//! `global_rate_limit` (1000/min, no burst given: a token bucket of 1,000 refilled at
//! 1,000 a minute, so up to 2,000 in the first minute from full, 1,000 a minute after: a
//! review admitted 1,999 of 7,571 sent in one minute). Responses carry
//! `X-RateLimit-Limit`, `-Remaining` and `-Reset` (Unix seconds), and a 429 `Retry-After`
//! and the body
//!
//! ```text
//! {
//!   "error": "rate_limit_exceeded",
//!   "message": "You have exceeded the rate limit for GET /v1/invoices.",
//!   "limit": 100,
//!   "remaining": 0,
//!   "reset_at": 1717200060
//! }
//! ```
//!
//! How it maps onto tollgate:
//!
//! - `X-RateLimit-Limit` is the endpoint's sustained rate (`100` for invoices, as the
//!   page's example shows; the burst where a route's burst is the larger, as in
//!   `sustained: 5/min, burst: 10/s`, so that what remains is never more than the limit;
//!   the 429 body's `limit` too), `-Remaining` the tokens its bucket holds now, at most
//!   the burst (`19` after a first call to invoices): what a partner may send at once. The page's
//!   example pair (`100`, `84`) cannot come from a bucket of 20; remaining counted against
//!   the sustained rate would promise calls the burst refuses.
//! - `endpointwise.yaml`, next to this file, is the page's configuration exactly as printed
//!   (its `routes:` and its `gateway:` block). It names no key, so this example keys its
//!   endpoint limits by the partner's API key (`x-api-key`): each partner has its own
//!   bucket per endpoint. The gateway limit is one bucket for all traffic.
//! - The daily cap is per API key, on every route: 10000/day, or `ENDPOINTWISE_DAILY_CAP`
//!   (e.g. `25/day`, so a demo can reach it; another window, `60/6s` to try the cap out in
//!   seconds, is taken with a warning at start-up). The page calls it a "hard cap on calls per
//!   24-hour window": a rolling window of 24 hours ([`Rate::sliding`], as configuration
//!   files read `daily:`), so no 24 hours ever hold more than the cap, midnight or not (a
//!   calendar day would let a partner spend it twice within seconds around 00:00 UTC). It
//!   counts in 60 segments of 24 minutes, not a log of every call: what a partner spent
//!   comes back a day after the last call of its segment, and a partner calling at a
//!   steady pace up to about 98% of the cap is admitted (in ten segments, as
//!   configuration files count `daily:`, a review's partners were refused from about 92%
//!   of it: 6 of 91 calls at 100%, 1 of 83 at 92%).
//! - Per-key limits ([`Limiter::set_override`]) come from the key table: the `Limited
//!   Partner` key created at start-up has 20/min, and `POST /admin/keys` (the page's `npx
//!   endpointwise keys create --name .. --scope read --rate-limit 20/min`) creates keys with
//!   their own limit, effective on their first request: a rolling window in 60 segments,
//!   so a partner sending at a steady pace up to about 98% of it is admitted. The key table is this process's
//!   (a stand-in for the page's key service): a key created through one instance of a
//!   fleet is unknown to the others, where it is a `401` that spends the client's
//!   failed-authentication budget (20 a minute per IP), as any unknown key does. Give
//!   every instance the key, or keep the table where all of them read it.
//!
//! - The reference docs page: `GET /docs` lists every endpoint's limits and `GET
//!   /openapi.json` has them as `x-ratelimit`, generated from the limiter (`docs.rs`).
//! - The configuration file is `ENDPOINTWISE_CONFIG` (default: `endpointwise.yaml` next to
//!   this file). Edit it while the gateway runs and its limits are reloaded within a
//!   second ([`ConfigWatcher`], which also runs on `SIGHUP`), or, for an edit that drops a
//!   route, says less in its last route or changes the gateway's limit (as a file caught
//!   mid-write would), once it has read the same for 5 s (a `SIGHUP` does not hurry it:
//!   it logs a warning): an edit that does not load is
//!   logged and the last good limits stay; limits that did not change keep their counts.
//!   The page's file sets no `store`, `headers`, `body` or `default_key`: the gateway then
//!   uses the store of the environment (`REDIS_URL`), the page's headers (`X-RateLimit-*`,
//!   reset in Unix seconds), a pretty-printed `message` body and the partner key; a file
//!   that sets any of them runs with its own (a change of `store` or `headers` takes a
//!   restart).
//!
//! Authentication is a stand-in, documented as such: `/v1` requests need a key of the table
//! in `x-api-key` (`401` otherwise, `403` for a write with a read-only key); `GET
//! /v1/status` is public; `/admin` needs `Authorization: Bearer $ENDPOINTWISE_ADMIN_TOKEN`
//! (no default: without the variable, or with it blank, every `/admin` request is a `401`,
//! so a published token can never open a deployment's key store; surrounding whitespace is
//! not part of the token). The `401`s (unknown keys, a wrong admin token) are limited per
//! client IP and per client network ([`tollgate_suite::failed_auth_guard`]: an IPv6 client
//! is counted by its /64, and one holding a /48 holds 65,536 of those), by
//! [`Limiter::guard`] outside authentication, with [`Policy::failed_auth_per_ip`], so
//! guessing keys is throttled, and, like every response of the API (a path under `/v1`, or
//! `/v1` itself) but a CORS preflight's `204` (answered before the limiters inside the
//! authentication, see [`tollgate_suite::preflight_answer`]), they carry the rate-limit
//! headers (of that budget). What is not the API carries no rate-limit headers and spends no partner's
//! budget: the docs (`/docs`, `/openapi.json`), what `/admin` answers an operator holding
//! the token, and paths the router does not take for the API's (`/V1/invoices`,
//! `//v1/invoices`: its plain `404`).
//!
//! That budget is this example's own rule, per client IP; the page's limits are per partner
//! key and endpoint. Once an IP has spent it, every request from that IP is refused (`429`,
//! with the guessing budget's headers, and the page's body, whose `limit` is that budget's,
//! 20, and whose message names the request refused, not an endpoint limit of 20) until the
//! window lets one through, valid keys and
//! admin tokens included: the guard answers before they are checked, or guesses could go
//! on at full speed. So a client guessing from an address others share (a NAT, an office)
//! holds their valid requests back for up to a minute too ([`Policy::failed_auth_per_ip`]
//! says so).
//!
//! ```text
//! ENDPOINTWISE_ADMIN_TOKEN=s3cret cargo run --example seed_004
//! # or on a copy you can edit while it runs:
//! ENDPOINTWISE_CONFIG=/tmp/endpointwise.yaml cargo run --example seed_004
//! curl -i -H 'x-api-key: ew_live_full' http://127.0.0.1:3004/v1/invoices
//! curl -i -H 'Authorization: Bearer s3cret' -H 'content-type: application/json' \
//!   -d '{"name": "Limited Partner", "scope": "read", "rate_limit": "20/min"}' http://127.0.0.1:3004/admin/keys
//! ```

mod docs;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tollgate::config::{ClientIpConfig, Config, HeadersConfig, KeyText, StoreConfig};
use tollgate::reload::ConfigWatcher;
use tollgate::{
    ErrorBody, HeaderStyle, Key, Limiter, LimiterBuilder, Policy, Rate, ResetFormat, WhenFull,
};

/// The page's configuration file, as printed.
const CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/seed_004/endpointwise.yaml"
);

/// The environment variable naming another configuration file.
const CONFIG_ENV: &str = "ENDPOINTWISE_CONFIG";

/// The header partners send their key in.
const API_KEY: &str = "x-api-key";

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
enum Scope {
    /// `GET` only.
    Read,
    /// Everything.
    Write,
}

/// One partner key of the stand-in key table.
#[derive(Debug, Clone)]
struct ApiKey {
    name: String,
    scope: Scope,
    rate_limit: Option<String>,
}

/// The gateway's state: the limiter and the key table.
#[derive(Clone)]
struct Gateway {
    limiter: Limiter,
    keys: Arc<RwLock<HashMap<String, ApiKey>>>,
    /// `None`: no token was configured, and `/admin` is closed.
    admin_token: Option<Arc<str>>,
    created: Arc<AtomicU64>,
}

impl Gateway {
    /// Adds `key` to the table, with its per-key limit if it has one; the limit is kept
    /// (and shown) as parsed (`20 / min` is `20/min`). It is a rolling window counted in 60
    /// segments (where its window is at least 60 ms long), so a partner sending at a steady
    /// pace under its key's limit is admitted: the default ten segments refuse one above
    /// about 91% of it (a review: 3 refusals in 78 at 95% of 20 per 10 s).
    fn add_key(&self, key: &str, mut info: ApiKey) -> Result<ApiKey, tollgate::InspectError> {
        if let Some(rate) = &info.rate_limit {
            let quota = tollgate::Rate::from(rate.as_str()).limit()?.quota();
            self.limiter.set_override(
                &Key::api_key(API_KEY),
                key,
                tollgate_suite::steady_rolling(quota),
            )?;
            info.rate_limit = Some(quota.to_string());
        }
        self.keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), info.clone());
        Ok(info)
    }

    fn key(&self, key: &str) -> Option<ApiKey> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }
}

/// The configuration file: `ENDPOINTWISE_CONFIG`, or the page's.
fn config_path() -> PathBuf {
    std::env::var_os(CONFIG_ENV)
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from(CONFIG), PathBuf::from)
}

/// What the example changes in the file as read, at start and on every reload: the page's
/// file names no key, so endpoint limits are per partner key (unless the file says
/// `default_key:`).
fn adjust(config: &mut Config) {
    config
        .default_key
        .get_or_insert_with(|| KeyText::ApiKey(API_KEY.into()));
}

/// The rules code adds to the file's, at start and on every reload: the daily cap per key
/// (`ENDPOINTWISE_DAILY_CAP`, default 10000/day); the public status route limited per IP
/// (no key: without it one anonymous client could spend the gateway-wide backstop that
/// every partner shares), whatever the method; the operators' routes outside the partners'
/// limits (their wrong tokens are limited by the failed-authentication guard).
///
/// The backstop itself applies "across all routes", as the page says, the public status
/// route included: many anonymous addresses together (200 polling once a second) can
/// spend it, and partners are then refused until it refills. That is what a gateway-wide
/// backstop against unexpected traffic does; the limits per IP and per network
/// ([`STATUS_PER_NETWORK`]) only keep one client from doing it alone.
///
/// # Errors
///
/// [`BadSetting`](tollgate_suite::BadSetting) if `ENDPOINTWISE_DAILY_CAP` is not a quota.
fn daily_cap() -> Result<
    impl Fn(LimiterBuilder) -> LimiterBuilder + Clone + Send + Sync + 'static,
    tollgate_suite::BadSetting,
> {
    const DAILY_CAP: &str = "ENDPOINTWISE_DAILY_CAP";
    let daily = tollgate_suite::setting(DAILY_CAP).unwrap_or_else(|| "10000/day".into());
    let rate = match Rate::sliding(daily.as_str()).limit() {
        Ok(limit) => {
            // Another window is taken (a cap scaled down to try it out in seconds), but
            // said: `100/h` for `100/day` is a slip a file's `daily:` refuses.
            if limit.quota().period() != std::time::Duration::from_secs(86_400) {
                tracing::warn!(
                    "{DAILY_CAP}={daily}: the daily cap counts over {:?}, not a day",
                    limit.quota().period()
                );
            }
            Rate::from(tollgate_suite::steady_rolling(limit.quota()))
        }
        Err(e) => return Err(tollgate_suite::BadSetting::new(DAILY_CAP, daily, e)),
    };
    Ok(move |rules: LimiterBuilder| {
        rules
            .global_policy(Policy::named("daily").limit(Key::api_key(API_KEY), rate.clone()))
            // Every method: a `POST` or `OPTIONS` to it is anonymous too (a 405), and
            // spends the backstop like a `GET`.
            // Keyed by address: a share full of addresses at their limit evicts the least
            // recently seen for a new one, rather than refusing every client it has not seen.
            .route(
                "/v1/status",
                Policy::named("status")
                    .per_ip(STATUS_PER_IP)
                    .per_network(tollgate_suite::NETWORK_BITS, STATUS_PER_NETWORK)
                    .when_full(WhenFull::EvictLimited),
            )
            .route("/admin/*", Policy::exempt())
    })
}

/// Requests to the public `/v1/status` per client IP.
const STATUS_PER_IP: &str = "60/min";

/// Requests to `/v1/status` per client network (an IPv6 /48, an IPv4 address on its own),
/// beside [`STATUS_PER_IP`]: IPv6 clients are counted by their /64, and one holding a /48
/// holds 65,536 of those. Every status request also spends the gateway-wide bucket that
/// partners' requests spend: without this, one such client could empty it alone (a review
/// had 1,011 admitted in 0.7 s from 18 /64s of one /48, and every partner refused).
const STATUS_PER_NETWORK: &str = "300/min";

/// The limiter, built from the file at `path`, and the watcher that reloads the file when
/// it changes.
fn limiter(path: &Path) -> Result<(Limiter, ConfigWatcher), Box<dyn std::error::Error>> {
    let file = path.display().to_string();
    let mut config = Config::from_path(path)?;
    adjust(&mut config);
    let rules = daily_cap()?;
    // The page's headers and body, and the store and trusted proxies from the environment,
    // where the file does not choose its own (what it sets is what runs). The store is
    // given before the file is applied, which then keeps it: given after, the file's
    // default would have made a Redis store of its own from `REDIS_URL` first, connected
    // and dropped (its start-up warning logged twice).
    let mut builder = Limiter::builder();
    if config.store == StoreConfig::default() {
        builder = builder.store(tollgate_suite::store_from_env("tollgate:seed_004:")?);
    }
    let mut builder = rules(config.apply(builder, &file)?);
    if config.client_ip == ClientIpConfig::default() {
        builder = builder.client_ip(tollgate_suite::client_ip_from_env()?);
    }
    if config.headers == HeadersConfig::default() {
        builder = builder.header_style(HeaderStyle::x_ratelimit(ResetFormat::UnixSeconds));
    }
    if config.body.is_none() {
        builder = builder.error_body(ErrorBody::message().pretty());
    }
    let limiter = builder
        .build()
        // A mistake in the file is reported at its line.
        .map_err(|e| config.build_error(&file, e))?;
    // Edits reload the file's rules (a broken one is logged, and the last good rules stay).
    let watcher = ConfigWatcher::builder(&limiter, path)
        .adjust(adjust)
        .customize(rules)
        .start()?;
    Ok((limiter, watcher))
}

/// `SIGHUP` reloads the file at once (unix); a change the watcher would wait for, as maybe
/// caught mid-write, is left to it.
#[cfg(unix)]
fn reload_on_sighup(watcher: Arc<ConfigWatcher>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let file = watcher.path().display();
            match watcher.reload_now() {
                Ok(()) => tracing::info!("SIGHUP: {file} reloaded"),
                // Not refused: the watcher tries it once it holds still.
                Err(e @ tollgate::config::ConfigError::Unsettled { .. }) => {
                    tracing::warn!("SIGHUP: {e}; until then the previous limits stay in force")
                }
                Err(e) => tracing::error!("SIGHUP: {e}; the previous limits stay in force"),
            }
        }
    });
    Ok(())
}

/// `/v1` needs a known key (writes a write-scoped one), except the public status, which
/// loses any key it carries; `/admin` needs the admin token.
async fn authenticate(
    State(gateway): State<Gateway>,
    mut request: Request,
    next: Next,
) -> Response {
    // Before anything else (see `tollgate_suite::preflight_answer`).
    if let Some(answer) = tollgate_suite::preflight_answer(&request) {
        return answer;
    }
    let path = request.uri().path();
    let error = |status: StatusCode, code: &str| (status, Json(json!({ "error": code })));
    if path.starts_with("/admin/") {
        let token = tollgate_suite::bearer(request.headers());
        let valid = match (token, &gateway.admin_token) {
            (Some(given), Some(expected)) => tollgate_suite::same_secret(given, expected),
            _ => false,
        };
        if !valid {
            return error(StatusCode::UNAUTHORIZED, "invalid_admin_token").into_response();
        }
    } else if tollgate_suite::is_under(path, "/v1") && path != "/v1/status" {
        // `/v1` itself too: it is a path of the API (a 404 behind the limiter), and
        // anonymous it would spend the gateway-wide backstop every partner shares.
        let key = request
            .headers()
            .get(API_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(|k| gateway.key(k));
        let Some(key) = key else {
            return error(StatusCode::UNAUTHORIZED, "invalid_api_key").into_response();
        };
        // For `authorize`, inside the limiter: the key is looked up once.
        request.extensions_mut().insert(key.scope);
    } else {
        // A key nobody checked (on the public status) is no key: the limiter must not charge
        // it, or invented keys would fill the daily cap's share of the store and push real
        // partners' counts out (and anyone could spend a partner's cap with its key on a
        // route that does not need one).
        request.headers_mut().remove(API_KEY);
    }
    next.run(request).await
}

/// Authorization, inside the limiter: a read-scoped key's write is refused (403) once it
/// was counted like any call of its key, so the page's limits (and their headers) cover
/// these answers too. A read is `GET` or `HEAD` (which the `GET` handler answers). The
/// key's scope is what `authenticate` found (only on the routes that need a key).
async fn authorize(request: Request, next: Next) -> Response {
    let read_only = request.extensions().get::<Scope>() == Some(&Scope::Read);
    let write = !matches!(*request.method(), Method::GET | Method::HEAD);
    if read_only && write {
        let body = Json(json!({ "error": "insufficient_scope" }));
        return (StatusCode::FORBIDDEN, body).into_response();
    }
    next.run(request).await
}

/// The body of `POST /admin/keys`. A field it does not know is refused, not dropped: a
/// misspelt `rate_limit` would otherwise create a key without the limit meant for it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: KeyName,
    scope: Scope,
    #[serde(default)]
    rate_limit: Option<String>,
}

/// A key's name: not blank, at most [`KeyName::MAX`] characters, no control characters
/// (it is stored, shown and logged).
#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
struct KeyName(String);

impl KeyName {
    const MAX: usize = 200;
}

impl TryFrom<String> for KeyName {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        let name = name.trim();
        match name.chars().count() {
            0 => Err("must not be blank".into()),
            n if n > Self::MAX => Err(format!("at most {} characters", Self::MAX)),
            _ if name.chars().any(char::is_control) => {
                Err("no control characters (newlines, tabs, escapes)".into())
            }
            _ => Ok(Self(name.to_string())),
        }
    }
}

/// `POST /admin/keys`: a new partner key. A body that is not the expected JSON gets the
/// gateway's `{"error": …}` shape too.
async fn create_key(
    State(gateway): State<Gateway>,
    body: Result<Json<NewKey>, JsonRejection>,
) -> Response {
    let new = match body {
        Ok(Json(new)) => new,
        Err(rejection) => {
            let body = json!({ "error": "invalid_request", "message": rejection.body_text() });
            return (rejection.status(), Json(body)).into_response();
        }
    };
    // A stand-in key: a process-random 64-bit value and a counter.
    let n = gateway.created.fetch_add(1, Ordering::Relaxed);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(n);
    let key = format!("ew_live_{:016x}{n}", hasher.finish());
    let info = ApiKey {
        name: new.name.0,
        scope: new.scope,
        rate_limit: new.rate_limit,
    };
    match gateway.add_key(&key, info) {
        Ok(info) => {
            let body = json!({
                "key": key,
                "name": info.name,
                "scope": info.scope,
                "rate_limit": info.rate_limit,
            });
            (StatusCode::CREATED, Json(body)).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "invalid_rate_limit", "message": e.to_string() })),
        )
            .into_response(),
    }
}

async fn invoices() -> Json<Value> {
    Json(json!({ "data": [{ "id": "inv_1", "amount": 1200 }] }))
}

async fn create_invoice() -> (StatusCode, Json<Value>) {
    (
        StatusCode::CREATED,
        Json(json!({ "id": "inv_2", "amount": 300 })),
    )
}

async fn reports() -> Json<Value> {
    Json(json!({ "revenue": 1500, "period": "2024-06" }))
}

async fn customers() -> Json<Value> {
    Json(json!({ "data": [{ "id": "cus_1" }] }))
}

async fn status() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// A path of the API the gateway does not serve (`/v1/nothing`, and `/v1` and `/v1/`
/// themselves): answered behind the same layers as its routes, so it carries the
/// rate-limit headers too ("every gateway response") and counts like any call.
async fn not_found() -> (StatusCode, Json<Value>) {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": "not_found", "message": "No such endpoint." })),
    )
}

fn app(gateway: Gateway) -> Router {
    // Public and unlimited: added after the layers, which cover only the routes before them.
    let docs = docs::routes(&gateway.limiter);
    Router::new()
        .route("/v1/invoices", get(invoices).post(create_invoice))
        .route("/v1/reports", get(reports))
        .route("/v1/customers", get(customers))
        .route("/v1/status", get(status))
        .route("/admin/keys", post(create_key))
        // An unknown path of the API, behind the layers (a key is needed, and the call is
        // counted like any other, with its headers); axum's default fallback (a path outside
        // the API) stays outside them.
        .route("/v1/{*rest}", any(not_found))
        .route("/v1", any(not_found))
        .route("/v1/", any(not_found))
        // The layer added last runs first: the failed-authentication guard, then
        // authenticate, then limit, then authorize.
        .layer(middleware::from_fn(authorize))
        .layer(gateway.limiter.layer())
        .layer(middleware::from_fn_with_state(
            gateway.clone(),
            authenticate,
        ))
        .layer(gateway.limiter.guard(tollgate_suite::failed_auth_guard()))
        .with_state(gateway)
        .merge(docs)
}

/// The admin token of `ENDPOINTWISE_ADMIN_TOKEN`, trimmed; `None` (and a warning: `/admin`
/// stays closed) without one.
fn admin_token() -> Option<Arc<str>> {
    let Some(token) = tollgate_suite::setting("ENDPOINTWISE_ADMIN_TOKEN") else {
        tracing::warn!(
            "ENDPOINTWISE_ADMIN_TOKEN is not set: every /admin request is refused (401)"
        );
        return None;
    };
    Some(token.into())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tollgate_suite::main(run()).await
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let (limiter, watcher) = limiter(&config_path())?;
    #[cfg(unix)]
    reload_on_sighup(Arc::new(watcher))?;
    #[cfg(not(unix))]
    let _watcher = watcher;
    let gateway = Gateway {
        limiter,
        keys: Arc::default(),
        admin_token: admin_token(),
        created: Arc::default(),
    };
    // The start-up key table (stand-in for the page's key store).
    let startup = [
        ("ew_live_full", "Full Partner", Scope::Write, None),
        (
            "ew_live_limited",
            "Limited Partner",
            Scope::Read,
            Some("20/min"),
        ),
    ];
    for (key, name, scope, rate_limit) in startup {
        let info = ApiKey {
            name: name.into(),
            scope,
            rate_limit: rate_limit.map(String::from),
        };
        gateway.add_key(key, info)?;
    }
    tollgate_suite::serve(app(gateway), 3004).await?;
    Ok(())
}
