//! Seed 000's rate-limit policy, all of it, in one place. Everything else in the demo (the
//! middleware, the handlers' own checks, `/openapi.json`, `/rate-limits`) reads it from here
//! or from the limiter built here.

use axum::http::request::Parts;
use axum::http::StatusCode;
use tollgate::ClientIp;
use tollgate::{BuildError, Key, Limiter, Policy, Rate, Store, WhenFull};

/// The demo's own pages (`/openapi.json`, `/rate-limits`, `/metrics`), per IP and per
/// client network: one budget for the three.
pub const PAGES: &str = "pages";
/// One `AUTH` bucket per IP, shared by sign-in, forgot password, reset password and their
/// portal equivalents.
pub const AUTH: &str = "auth";
/// Staff sign-up, per IP.
pub const SIGN_UP: &str = "sign-up";
/// Portal magic-link requests, per IP.
pub const MAGIC_LINK: &str = "portal-magic-link";
/// Failed staff sign-ins per identifier (e-mail): the lockout.
pub const SIGN_IN_FAILURES: &str = "sign-in-failures";
/// `AUTH` for a whole client network (an IPv6 /48, an IPv4 address on its own): this
/// example's own backstop beside the page's per-IP bucket. IPv6 clients are keyed by /64,
/// and whoever holds a /48 (a tunnel broker gives one away) holds 65,536 of those: without
/// it, one /48 could guess passwords, or flood the lockout with invented e-mails, 65,536
/// times as fast as the page allows one client. Shown on every answer that spends it, beside
/// `AUTH`.
pub const AUTH_NETWORK: &str = "auth-network";
/// [`SIGN_UP`] for a whole client network: this example's backstop, as [`AUTH_NETWORK`]
/// is for `AUTH` (one /48 would otherwise sign up 65,536 times the page's rate).
pub const SIGN_UP_NETWORK: &str = "sign-up-network";
/// [`MAGIC_LINK`] for a whole client network: this example's backstop (each link is an
/// e-mail sent; one /48 would otherwise send 65,536 times the page's rate).
pub const MAGIC_LINK_NETWORK: &str = "portal-magic-link-network";
/// Forgot-password and reset-password requests (each an e-mail sent), staff and portal,
/// for a whole client network: this example's backstop beside `AUTH`, whose network share
/// ([`AUTH_NETWORK`], 1,000 in 15 minutes, sign-ins included) would otherwise let one /48
/// send 1,000 reset e-mails in 15 minutes.
pub const PASSWORD_HELP_NETWORK: &str = "password-help-network";
/// Failed sign-ins, per client network, over e-mails the lockout had no room to count (a
/// flood filled its share with locked e-mails): while the lockout cannot count an e-mail,
/// its client's network is counted instead, with the lockout's quota.
pub const SIGN_IN_FAILURES_NETWORK: &str = "sign-in-failures-network";
/// The leading bits of an IPv6 client address that make its network (every example's).
pub const NETWORK_BITS: u8 = tollgate_suite::NETWORK_BITS;
/// Portal document uploads, per portal user.
pub const PORTAL_UPLOADS: &str = "portal-uploads";
/// Portal messages, per portal user.
pub const PORTAL_MESSAGES: &str = "portal-messages";

/// The page's counters roll ("a rolling window, not fixed clock minutes"): each rolling
/// limit is counted in sixtieths of its window (one-second segments for a minute), so a
/// client sending at a steady pace up to about 98% of the limit is admitted. (The default
/// ten segments can refuse one sending more than about 91% of the limit per window.)
pub const ROLLING_SEGMENTS: u32 = 60;

/// A rolling limit of the page: `quota` in [`ROLLING_SEGMENTS`] segments.
pub fn rolling(quota: &str) -> Rate {
    Rate::sliding_segments(quota, ROLLING_SEGMENTS)
}

/// Whose budget a handler's own bucket spends (the handler passes that key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Per {
    /// The client IP.
    Ip,
    /// The e-mail a sign-in is for.
    Email,
    /// The portal user (`X-Portal-User`).
    PortalUser,
    /// The client's network ([`NETWORK_BITS`]).
    Network,
}

impl Per {
    /// The name `/openapi.json` and `/rate-limits` show.
    pub fn as_str(self) -> &'static str {
        match self {
            Per::Ip => "ip",
            Per::Email => "email",
            Per::PortalUser => "portal_user",
            Per::Network => "network",
        }
    }

    /// What the memory store does with a new key of a bucket keyed this way when the
    /// bucket's share is full of keys at their limit. Addresses: evict the least recently
    /// seen (an address costs a client a real host, and refusing every address not yet seen
    /// would let a flood of them turn every new client away from sign-in). E-mails: keep
    /// every e-mail that still counts and refuse the new one (anyone can invent e-mails, and
    /// a flood of them must never free a locked one, nor wipe a count on its way to the
    /// lock: a soak review guessed one account 29 times in 10 minutes against 5 per 30 by
    /// flooding between guesses; the sign-in handler lets an e-mail the store has no room
    /// for through uncounted by e-mail, and counts its client's network instead). Portal
    /// users are signed in: refused when the share is full of users at their limit.
    /// Networks are addresses too.
    pub fn when_full(self) -> WhenFull {
        match self {
            Per::Ip | Per::Network => WhenFull::EvictLimited,
            Per::Email => WhenFull::KeepCounts,
            Per::PortalUser => WhenFull::RefuseNewKeys,
        }
    }
}

/// The signed-in staff user's key. The demo's stand-in sign-in takes the credential
/// itself (`Bearer <token>`, a `session=<token>` cookie) for the user, so the key reaches
/// the store only as a digest: Redis never holds a credential as sent. A digest hides only
/// what cannot be guessed: the demo's stand-in tokens (`Bearer alice`) are found from it at
/// once (see `tollgate::Key`). (An application whose identity function returns an opaque
/// user id can use `per_user`.)
fn staff() -> Key {
    Key::user().hashed()
}

/// A policy of the page, keyed by IP (and by user where one is signed in): a share of the
/// memory store full of keys at their limit evicts the least recently seen of them for a new
/// client rather than refusing every client it has not seen (see [`Per::when_full`]).
fn named(name: &str) -> Policy {
    Policy::named(name).when_full(WhenFull::EvictLimited)
}

/// The buckets handlers charge themselves (`limiter.check` / `reset`), with
/// their quotas and keys.
pub fn handler_buckets() -> [(&'static str, Rate, Per); 11] {
    [
        (AUTH, rolling("20/15min"), Per::Ip),
        (AUTH_NETWORK, rolling("1000/15min"), Per::Network),
        (SIGN_UP, rolling("20/h"), Per::Ip),
        // Five clients' worth per network: sign-ups and magic links are rarer than
        // sign-ins, and each one creates an account or sends an e-mail.
        (SIGN_UP_NETWORK, rolling("100/h"), Per::Network),
        (MAGIC_LINK, rolling("30/15min"), Per::Ip),
        (MAGIC_LINK_NETWORK, rolling("150/15min"), Per::Network),
        (PASSWORD_HELP_NETWORK, rolling("150/15min"), Per::Network),
        // Exact: the sixth attempt within 30 minutes of the first failure is refused.
        (SIGN_IN_FAILURES, Rate::exact("5/30min"), Per::Email),
        (
            SIGN_IN_FAILURES_NETWORK,
            Rate::exact("5/30min"),
            Per::Network,
        ),
        (PORTAL_UPLOADS, rolling("40/15min"), Per::PortalUser),
        (PORTAL_MESSAGES, rolling("120/15min"), Per::PortalUser),
    ]
}

/// The central table: the per-route buckets (per IP, and per signed-in user where a user is
/// signed in, see [`user_bucket_applies`]) and the routes the middleware leaves alone. The
/// most specific pattern wins.
pub fn routes() -> Vec<(&'static str, Policy)> {
    let default = || {
        named("default")
            .per_ip(rolling("500/min"))
            .limit(staff(), rolling("10000/h"))
    };
    // Portal writes spend the default buckets, and their handlers a portal user's cap: a
    // write that cap refuses (429) gives the default charge back, as a refusal charges
    // nothing.
    let portal_write = || default().refund_if(|status| status == StatusCode::TOO_MANY_REQUESTS);
    let downloads = named("downloads")
        .per_ip(rolling("1500/min"))
        .limit(staff(), rolling("15000/h"));
    // The demo's own pages, beside the page's API: its docs (generated from the limiter on
    // each request) and its metrics. Each takes a few hundred microseconds to render: a
    // reader or a scraper fetches them a few times a minute, a flood thousands of times.
    // Five clients' worth per network: an IPv6 client holds many /64s.
    let pages = || {
        named(PAGES)
            .per_ip(rolling("60/min"))
            .per_network(NETWORK_BITS, rolling("300/min"))
    };
    vec![
        ("GET /openapi.json", pages()),
        ("GET /rate-limits", pages()),
        ("GET /metrics", pages()),
        ("/api/*", default()),
        ("POST /api/portal/documents", portal_write()),
        ("POST /api/portal/messages", portal_write()),
        (
            "/api/twilio/*",
            named("twilio")
                .per_ip(rolling("1200/min"))
                .limit(staff(), rolling("12000/h")),
        ),
        (
            "POST /api/templates/{id}/generate",
            named("generate")
                .per_ip(rolling("300/min"))
                .limit(staff(), rolling("3000/h")),
        ),
        // One bucket for every download route.
        ("GET /api/documents/{id}/download", downloads.clone()),
        ("GET /api/documents/temp/*", downloads.clone()),
        ("GET /api/invoices/{id}/pdf", downloads),
        (
            "/api/knowledge/*",
            named("knowledge")
                .per_ip(rolling("2000/min"))
                .limit(staff(), rolling("20000/h")),
        ),
        // Auth handlers apply their own IP-based policies (see `handler_buckets`).
        ("/api/auth/*", Policy::exempt()),
        ("/api/portal/auth/*", Policy::exempt()),
        // Webhooks and callbacks, and team switching: never throttled.
        ("/api/twilio/voice/*", Policy::exempt()),
        ("/api/twilio/sms/*", Policy::exempt()),
        ("/api/stripe/webhook", Policy::exempt()),
        ("/api/webhooks/resend", Policy::exempt()),
        ("/api/cron/*", Policy::exempt()),
        ("/api/onlyoffice/callback", Policy::exempt()),
        ("POST /api/teams/switch", Policy::exempt()),
    ]
}

/// `POST /api/assistant/chat`: a per-route policy, attached to that route
/// (`limiter.policy_at("POST /api/assistant/chat", limits::chat())`), which also tells the
/// central table to leave the route to it. Per user it is stricter than per IP.
pub fn chat() -> Policy {
    named("chat")
        .per_ip(rolling("60/min"))
        .limit(staff(), rolling("30/min"))
}

/// Whether a signed-in staff user's own bucket applies on `path`: on `/api/*` outside
/// `/api/portal/` and `/api/auth/` (staff on the portal are limited by IP only).
pub fn user_bucket_applies(path: &str) -> bool {
    let under = |prefix| tollgate_suite::is_under(path, prefix);
    under("/api") && !under("/api/portal") && !under("/api/auth")
}

/// The limiter: the table above on `store`, clients found by `client_ip`, staff users by
/// `staff_user` (called only where [`user_bucket_applies`]). `RATE_LIMIT_ENABLED=false`
/// in the environment turns it off.
pub fn limiter(
    store: impl Store,
    client_ip: ClientIp,
    staff_user: fn(&Parts) -> Option<String>,
) -> Result<Limiter, BuildError> {
    let mut builder = Limiter::builder()
        .store(store)
        .client_ip(client_ip)
        .identity(move |parts| {
            if user_bucket_applies(parts.uri.path()) {
                staff_user(parts)
            } else {
                None
            }
        });
    for (pattern, policy) in routes() {
        builder = builder.route(pattern, policy);
    }
    for (name, rate, per) in handler_buckets() {
        builder = match per {
            // Folded to the network in checks and in the operators' lookups alike, so an
            // operator who looks a client up by its address finds its network's count.
            Per::Network => builder.bucket_per_network(name, rate, per.when_full(), NETWORK_BITS),
            // E-mail addresses are personal data: stored (in Redis, in the logs of an
            // operator's reset) as digests; checks and lookups take them as given.
            Per::Email => builder.bucket_hashed(name, rate, per.when_full()),
            _ => builder.bucket_when_full(name, rate, per.when_full()),
        };
    }
    builder.build()
}
