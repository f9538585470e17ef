//! The sign-in stand-in. **For demos only: nothing here authenticates anyone.**
//!
//! - `Authorization: Bearer <user-id>` or a cookie `session=<user-id>`: a signed-in staff
//!   user (an API key, `Bearer`, counts the same way, as on the seed's page).
//! - `X-Portal-User: <id>`: a signed-in client-portal user.
//! - The sign-in handlers accept any e-mail with the password [`DEMO_PASSWORD`].

use axum::http::header::COOKIE;
use axum::http::request::Parts;
use axum::http::HeaderMap;

/// The password every demo account has.
pub const DEMO_PASSWORD: &str = "demo-password";

/// The staff user a request is signed in as, if any.
pub fn staff_user(headers: &HeaderMap) -> Option<String> {
    let bearer = tollgate_suite::bearer(headers);
    let cookie = || {
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| pair.trim().strip_prefix("session="))
    };
    bearer
        .or_else(cookie)
        .filter(|id| !id.is_empty())
        .map(String::from)
}

/// [`staff_user`] for the limiter's identity function.
pub fn staff_user_of(parts: &Parts) -> Option<String> {
    staff_user(&parts.headers)
}

/// The client-portal user a request is signed in as, if any.
pub fn portal_user(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-portal-user")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(String::from)
}
