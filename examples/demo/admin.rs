//! The operators' router (`tollgate::admin`) under `/admin/rate-limits`, behind a bearer
//! token from `ADMIN_TOKEN`. Without the variable (or with it empty) it is not mounted at
//! all: its paths answer `404` like any unknown path (set but blank, a warning says so).
//! Wrong tokens are limited per client IP (10 a minute), so the token cannot be guessed at
//! the server's speed, while rate limiting is on: `RATE_LIMIT_ENABLED=false` switches this
//! guard off with every other limit (a warning at start-up names it).
//!
//! Keys are as the handlers count them: the sign-in lockout's are e-mails trimmed and
//! lowercased, so `Bob@Example.com` is reset as `bob%40example.com` (the address as
//! typed names another, unused key, and its reset frees nobody); a client's IP as it
//! connects, an IPv6 address standing for its /64 (for the network buckets,
//! `auth-network` and `sign-in-failures-network`, for its /48: any address of the network,
//! or the network as stored, `2001:db8:1::%2F48`); and `failed-auth:ip` and
//! `failed-auth:network:48` are the wrong tokens' guard, per IP and per /48: an operator
//! refused by it resets the one that refuses (both, if the network spent its 50).
//!
//! ```text
//! ADMIN_TOKEN=s3cret cargo run --example demo
//! curl -H 'Authorization: Bearer s3cret' localhost:3000/admin/rate-limits/limits
//! curl -H 'Authorization: Bearer s3cret' localhost:3000/admin/rate-limits/buckets/sign-in-failures/a%40example.com
//! curl -X POST -H 'Authorization: Bearer s3cret' \
//!      localhost:3000/admin/rate-limits/buckets/sign-in-failures/a%40example.com/reset
//! ```

use std::sync::Arc;

use axum::extract::Request;
use axum::http::header::WWW_AUTHENTICATE;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::json;
use tollgate::{Limiter, Policy};

use crate::limits::NETWORK_BITS;

/// Where the router is mounted.
pub const PATH: &str = "/admin/rate-limits";

/// The environment variable holding the operators' token.
pub const TOKEN_ENV: &str = "ADMIN_TOKEN";

/// Wrong or missing operator tokens per client IP: guessing the token is throttled.
pub const FAILED_TOKENS_PER_IP: &str = "10/min";
/// Wrong tokens a minute per client network (an IPv6 /48, an IPv4 address on its own),
/// beside [`FAILED_TOKENS_PER_IP`]: IPv6 clients are counted by their /64, and one holding
/// a /48 holds 65,536 of those.
pub const FAILED_TOKENS_PER_NETWORK: &str = "50/min";

/// `router` with the admin router nested at [`PATH`], if `ADMIN_TOKEN` is set.
pub fn mount(router: Router, limiter: &Limiter) -> Router {
    let Some(token) = tollgate_suite::setting(TOKEN_ENV) else {
        // Set, but blank (`ADMIN_TOKEN=` in a compose file, a secret that did not load):
        // said, as the operator meant to mount it.
        if std::env::var_os(TOKEN_ENV).is_some() {
            tracing::warn!("{TOKEN_ENV} is set but blank: the operators' router is not mounted");
        }
        return router;
    };
    let token: Arc<str> = token.into();
    let guard = middleware::from_fn(move |request: Request, next: Next| {
        let token = token.clone();
        async move { authorize(&token, request, next).await }
    });
    // The guard runs before the token is checked: an IP with 10 wrong tokens in a minute (a
    // network with 50) is refused (429) until the window lets one through.
    let failures = Policy::failed_auth_per_ip(FAILED_TOKENS_PER_IP)
        .per_network(NETWORK_BITS, FAILED_TOKENS_PER_NETWORK);
    let admin = tollgate::admin::router(limiter)
        .layer(guard)
        .layer(limiter.guard(failures));
    router.nest(PATH, admin)
}

async fn authorize(token: &str, request: Request, next: Next) -> Response {
    let given = tollgate_suite::bearer(request.headers());
    if given.is_some_and(|g| tollgate_suite::same_secret(g, token)) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(WWW_AUTHENTICATE, "Bearer")],
        Json(
            json!({ "error": "unauthorized", "message": "an operator's bearer token is required" }),
        ),
    )
        .into_response()
}
