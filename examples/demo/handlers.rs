//! The demo's handlers. Most are stand-ins that answer `200` with a little JSON; the auth
//! and portal-write handlers apply seed 000's extra caps themselves, with the limiter's
//! direct-use buckets (`check` and `reset`).

use std::convert::Infallible;
use std::net::IpAddr;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::header::SET_COOKIE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use tollgate::ClientIp;
use tollgate::{Decision, Limiter, Refusal};

use crate::limits::{
    AUTH, AUTH_NETWORK, MAGIC_LINK, MAGIC_LINK_NETWORK, NETWORK_BITS, PASSWORD_HELP_NETWORK,
    PORTAL_MESSAGES, PORTAL_UPLOADS, SIGN_IN_FAILURES, SIGN_IN_FAILURES_NETWORK, SIGN_UP,
    SIGN_UP_NETWORK,
};
use crate::session::{portal_user, staff_user, DEMO_PASSWORD};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The limiter the middleware uses; handlers charge its direct-use buckets.
    pub limiter: Limiter,
    /// How the limiter finds the client IP (the same trusted proxies).
    pub client_ip: ClientIp,
}

/// The client IP as the limiter keys it (behind trusted proxies, the forwarded client).
pub struct ClientKey(pub String);

impl FromRequestParts<AppState> for ClientKey {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Infallible> {
        Ok(ClientKey(client(parts, state, |ip| {
            state.client_ip.key(ip)
        })))
    }
}

/// `key` of the client of `parts` (behind trusted proxies, the forwarded client), or
/// `unknown-peer` without one.
fn client(parts: &Parts, state: &AppState, key: impl FnOnce(IpAddr) -> String) -> String {
    let peer = tollgate::peer_addr(&parts.extensions);
    state
        .client_ip
        .resolve(peer, &parts.headers)
        .map_or_else(|| "unknown-peer".into(), key)
}

/// The client's network as the auth buckets key it ([`ClientIp::network_key`]: the first
/// [`NETWORK_BITS`] of an IPv6 address, `2001:db8:aaaa::/48`; an IPv4 client, however
/// written, on its own), behind trusted proxies the forwarded client's.
pub struct ClientNetwork(pub String);

impl FromRequestParts<AppState> for ClientNetwork {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Infallible> {
        Ok(ClientNetwork(client(parts, state, |ip| {
            state.client_ip.network_key(ip, NETWORK_BITS)
        })))
    }
}

/// Charges a bucket of the page per client address (`bucket`, for `client`'s address) and
/// this example's backstops per client network (`networks`, for `client`'s network), in
/// order. A request a network's budget refuses gives back what it charged before (a
/// refused request spends nothing) and is answered with that budget's 429. The headers of
/// every bucket it spent: a network's budget, spent by the network's other addresses, can
/// have less left than the address's (a review: `r=10` of the address's bucket shown, and
/// the next request refused by its network's).
async fn charge_client(
    state: &AppState,
    bucket: &str,
    networks: &[&str],
    client: (&str, &str),
    uri: &Uri,
) -> Result<HeaderMap, Response> {
    let (ip, network) = client;
    let mut shown = charge(state, bucket, ip, uri).await?;
    for (n, &network_bucket) in networks.iter().enumerate() {
        match state.limiter.check(network_bucket, network).await {
            Ok(decision) if !decision.allowed => {
                let charged = networks[..n].iter().map(|&b| (b, network));
                for (bucket, key) in std::iter::once((bucket, ip)).chain(charged) {
                    if let Err(error) = state.limiter.refund(bucket, key).await {
                        tracing::warn!(%error, bucket, "could not give the charge back");
                    }
                }
                return Err(refusal(state, network_bucket, &decision, uri));
            }
            Ok(decision) => {
                let spent = state.limiter.rate_limit_headers(network_bucket, &decision);
                tollgate::merge_rate_limit_headers(&mut shown, &spent);
            }
            Err(error) => {
                let bucket = network_bucket;
                tracing::warn!(%error, bucket, "rate-limit check failed; admitting");
            }
        }
    }
    Ok(shown)
}

/// Charges 1 to the handler bucket `bucket` for `key`; the middleware's own 429 if it is
/// spent. A store error admits (and is logged), like the middleware's default.
async fn charge(
    state: &AppState,
    bucket: &str,
    key: &str,
    uri: &Uri,
) -> Result<HeaderMap, Response> {
    match state.limiter.check(bucket, key).await {
        Ok(decision) if !decision.allowed => Err(refusal(state, bucket, &decision, uri)),
        Ok(decision) => Ok(state.limiter.rate_limit_headers(bucket, &decision)),
        Err(error) => {
            tracing::warn!(%error, bucket, "rate-limit check failed; admitting");
            Ok(HeaderMap::new())
        }
    }
}

/// `answer` (a success or an error response) with the rate-limit headers of the bucket
/// charged for it beside any of its own (a lockout's): a client sees every budget the
/// request spent on every answer, not only on the 429, and `X-RateLimit-*` describe the
/// tighter one.
fn showing(headers: HeaderMap, answer: Result<Response, Response>) -> Response {
    let mut response = answer.unwrap_or_else(|refused| refused);
    tollgate::merge_rate_limit_headers(response.headers_mut(), &headers);
    response
}

fn refusal(state: &AppState, bucket: &str, decision: &Decision, uri: &Uri) -> Response {
    state
        .limiter
        .refusal(bucket, decision, &Method::POST, uri.path())
        .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Whether `email` looks like an address (`local@domain`, at most 254 bytes) made of the
/// characters an address and the session cookie that carries it can hold: printable
/// ASCII, without spaces, quotes, `;`, `,` or `\`. Anything else is refused (400) before
/// the lockout counts it or a cookie is made of it.
fn is_plain_email(email: &str) -> bool {
    let allowed = |b: u8| b.is_ascii_graphic() && !matches!(b, b'"' | b';' | b',' | b'\\');
    email.len() <= 254
        && email.bytes().all(allowed)
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
}

/// The answer to a body that is not the JSON a handler expects.
fn bad_json(e: serde_json::Error) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        &format!("expected JSON {{\"email\", \"password\"}}: {e}"),
    )
}

/// A sign-in request body.
#[derive(Deserialize)]
struct Credentials {
    email: String,
    password: String,
}

/// The most a sign-in's body may hold: an e-mail address and a password are some hundred
/// bytes. Each body is held whole while it is read, and AUTH admits 20 per address and
/// 1,000 per /48 at once: at axum's default limit (2 MB) a review's 400 sign-ins at once
/// from 20 addresses took the process from 15 MB to 510 MB.
const SIGN_IN_BODY_LIMIT: usize = 16 * 1024;

/// The body of `request`, read only now, after the caller charged its buckets: a body over
/// [`SIGN_IN_BODY_LIMIT`] is a `413`, but it has spent the charge, so a client cannot skip a
/// sign-in limit by sending bodies nobody reads. A body that cannot be read is answered as
/// the demo's other errors are, `{"error": ...}` (axum's own answer is plain text).
async fn body_after_charge(request: Request, state: &AppState) -> Result<Bytes, Response> {
    let request =
        request.map(|body| Body::new(http_body_util::Limited::new(body, SIGN_IN_BODY_LIMIT)));
    Bytes::from_request(request, state)
        .await
        .map_err(|rejection| error(rejection.status(), &rejection.body_text()))
}

/// `POST /api/auth/sign-in`: the shared AUTH bucket per IP and per network (charged before
/// the body is read), then the lockout per e-mail (5 failures in 30 minutes lock it; a
/// successful sign-in gives back its own attempt, and lifts none of the failures). An
/// attempt the lockout refuses has spent AUTH, as
/// every request to an auth route does: giving it back would make requests to a locked
/// account free, bodies and all.
pub async fn staff_sign_in(
    State(state): State<AppState>,
    ClientKey(ip): ClientKey,
    ClientNetwork(network): ClientNetwork,
    uri: Uri,
    request: Request,
) -> Result<Response, Response> {
    let shown = charge_client(&state, AUTH, &[AUTH_NETWORK], (&ip, &network), &uri).await?;
    Ok(showing(
        shown,
        staff_sign_in_charged(&state, &network, &uri, request).await,
    ))
}

/// Whether `decision` refused only because the store had no room for a new key
/// ([`Refusal::StoreFull`]), not because the key is at its limit.
fn no_room(decision: &Decision) -> bool {
    decision
        .buckets
        .iter()
        .filter(|b| !b.allowed)
        .all(|b| b.refusal == Some(Refusal::StoreFull))
}

/// [`staff_sign_in`] once the AUTH bucket admitted it.
async fn staff_sign_in_charged(
    state: &AppState,
    network: &str,
    uri: &Uri,
    request: Request,
) -> Result<Response, Response> {
    let body = body_after_charge(request, state).await?;
    let credentials: Credentials = serde_json::from_slice(&body).map_err(bad_json)?;
    let email = credentials.email.trim().to_ascii_lowercase();
    if !is_plain_email(&email) {
        return Err(error(StatusCode::BAD_REQUEST, "not an e-mail address"));
    }
    let failures = &state.limiter;
    // The attempt is counted before the password is checked: a charge is atomic, so
    // concurrent guesses cannot all pass a lockout that only a later penalty would close.
    let mut bucket = SIGN_IN_FAILURES;
    let mut lockout = failures.check(bucket, &email).await;
    if lockout.as_ref().is_ok_and(|d| !d.allowed && no_room(d)) {
        // An e-mail the lockout's share had no room for (a flood filled it with locked
        // e-mails) is not locked: refusing it would turn the flood into a denial of every
        // account not yet seen. Nor does it go uncounted, or the flood would switch the
        // lockout off for those accounts: its client's network is counted instead, with the
        // lockout's quota (and the store warns that the share is full).
        bucket = SIGN_IN_FAILURES_NETWORK;
        lockout = failures.check(bucket, network).await;
    }
    let counted = match lockout {
        Ok(locked) if !locked.allowed => return Err(refusal(state, bucket, &locked, uri)),
        Ok(decision) => Some(decision),
        Err(error) => {
            tracing::warn!(%error, "lockout check failed; admitting");
            None
        }
    };
    if credentials.password != DEMO_PASSWORD {
        // A failure shows how many more the e-mail (or the network) has before it is locked.
        let mut failed = error(StatusCode::UNAUTHORIZED, "wrong e-mail or password");
        if let Some(decision) = &counted {
            tollgate::merge_rate_limit_headers(
                failed.headers_mut(),
                &failures.rate_limit_headers(bucket, decision),
            );
        }
        return Err(failed);
    }
    // Only failures count: a successful sign-in gives back its own attempt, and lifts none
    // of the failures before it ("5 / 30 minutes": a success between failures is no reset,
    // or each of the owner's sign-ins would give a guesser four more tries).
    let key = if bucket == SIGN_IN_FAILURES {
        &email[..]
    } else {
        network
    };
    let given_back = failures.refund(bucket, key).await;
    let mut signed_in = (
        [(
            SET_COOKIE,
            format!("session={email}; Path=/; HttpOnly; SameSite=Lax"),
        )],
        Json(json!({ "userId": email })),
    )
        .into_response();
    // A success shows the lockout it was checked against too, as a failure does, once the
    // e-mail (or the network) has failures counted: how many it still has, as it stands
    // once this attempt was given back. A lockout with none counted shows nothing, as the
    // middleware's guard shows nothing of its budget on a response it does not count:
    // `X-RateLimit-*` then describe AUTH, which successes spend (a review read a fresh
    // lockout's `5` left, never moving, on 15 sign-ins where AUTH's 20 was spent).
    match given_back {
        Ok(decision) if decision.buckets.iter().all(|b| b.remaining < b.limit) => {
            tollgate::merge_rate_limit_headers(
                signed_in.headers_mut(),
                &failures.rate_limit_headers(bucket, &decision),
            )
        }
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(%error, "could not give back a successful sign-in's attempt")
        }
    }
    Ok(signed_in)
}

/// `POST /api/portal/auth/sign-in`: the shared AUTH bucket per IP and per network (charged
/// before the body is read).
pub async fn portal_sign_in(
    State(state): State<AppState>,
    ClientKey(ip): ClientKey,
    ClientNetwork(network): ClientNetwork,
    uri: Uri,
    request: Request,
) -> Result<Response, Response> {
    let shown = charge_client(&state, AUTH, &[AUTH_NETWORK], (&ip, &network), &uri).await?;
    let answer = async {
        let body = body_after_charge(request, &state).await?;
        let credentials: Credentials = serde_json::from_slice(&body).map_err(bad_json)?;
        if credentials.password != DEMO_PASSWORD {
            return Err(error(StatusCode::UNAUTHORIZED, "wrong e-mail or password"));
        }
        let id = credentials.email.trim().to_ascii_lowercase();
        Ok(Json(json!({ "portalUserId": id })).into_response())
    };
    Ok(showing(shown, answer.await))
}

/// Forgot password and reset password, staff and portal: the shared AUTH bucket per IP and
/// per network, and the e-mails they send per network.
pub async fn password_help(
    State(state): State<AppState>,
    ClientKey(ip): ClientKey,
    ClientNetwork(network): ClientNetwork,
    uri: Uri,
) -> Result<Response, Response> {
    let networks = [AUTH_NETWORK, PASSWORD_HELP_NETWORK];
    let shown = charge_client(&state, AUTH, &networks, (&ip, &network), &uri).await?;
    Ok(showing(
        shown,
        Ok((StatusCode::ACCEPTED, Json(json!({ "ok": true }))).into_response()),
    ))
}

/// `POST /api/auth/sign-up`: 20 per hour per IP (and this example's backstop per network).
pub async fn sign_up(
    State(state): State<AppState>,
    ClientKey(ip): ClientKey,
    ClientNetwork(network): ClientNetwork,
    uri: Uri,
) -> Result<Response, Response> {
    let shown = charge_client(&state, SIGN_UP, &[SIGN_UP_NETWORK], (&ip, &network), &uri).await?;
    Ok(showing(
        shown,
        Ok((StatusCode::CREATED, Json(json!({ "ok": true }))).into_response()),
    ))
}

/// `POST /api/portal/auth/magic-link`: 30 per 15 minutes per IP (and this example's
/// backstop per network).
pub async fn magic_link(
    State(state): State<AppState>,
    ClientKey(ip): ClientKey,
    ClientNetwork(network): ClientNetwork,
    uri: Uri,
) -> Result<Response, Response> {
    let networks = [MAGIC_LINK_NETWORK];
    let shown = charge_client(&state, MAGIC_LINK, &networks, (&ip, &network), &uri).await?;
    Ok(showing(
        shown,
        Ok((StatusCode::ACCEPTED, Json(json!({ "ok": true }))).into_response()),
    ))
}

/// A portal write: needs a portal user, whose own bucket it spends (on top of the
/// middleware's per-IP bucket).
async fn portal_write(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    bucket: &str,
) -> Result<Response, Response> {
    let Some(user) = portal_user(headers) else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "portal sign-in required (X-Portal-User)",
        ));
    };
    let shown = charge(state, bucket, &user, uri).await?;
    Ok(showing(
        shown,
        Ok((StatusCode::CREATED, Json(json!({ "portalUser": user }))).into_response()),
    ))
}

/// `POST /api/portal/documents`: 40 uploads per 15 minutes per portal user.
pub async fn portal_upload(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, Response> {
    portal_write(&state, &headers, &uri, PORTAL_UPLOADS).await
}

/// `POST /api/portal/messages`: 120 messages per 15 minutes per portal user.
pub async fn portal_message(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, Response> {
    portal_write(&state, &headers, &uri, PORTAL_MESSAGES).await
}

/// `GET /api/me`: who the stand-in says you are.
pub async fn me(headers: HeaderMap) -> Json<serde_json::Value> {
    Json(json!({ "staffUser": staff_user(&headers), "portalUser": portal_user(&headers) }))
}

/// `GET /api/platform/view-as/{user_id}`: an operator viewing as another user; the
/// operator's own user bucket pays.
pub async fn view_as(headers: HeaderMap, Path(user_id): Path<String>) -> Response {
    match staff_user(&headers) {
        Some(operator) => {
            Json(json!({ "operator": operator, "viewingAs": user_id })).into_response()
        }
        None => error(StatusCode::UNAUTHORIZED, "staff sign-in required"),
    }
}

/// `POST /api/assistant/chat`.
pub async fn chat() -> Json<serde_json::Value> {
    Json(json!({ "reply": "Hello from the demo assistant." }))
}

/// Everything else: `{"ok":true,"path":...}`.
pub async fn ok(uri: Uri) -> Json<serde_json::Value> {
    Json(json!({ "ok": true, "path": uri.path() }))
}
