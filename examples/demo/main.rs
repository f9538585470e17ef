//! The demo app: seed 000's published rate-limit policy, reproduced on its own paths.
//!
//! ```text
//! cargo run --example demo                       # http://127.0.0.1:3000, in-memory store
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example demo   # shared state in Redis
//! ```
//!
//! Open <http://127.0.0.1:3000/rate-limits> for the table, `/openapi.json` for the same in
//! OpenAPI (`x-ratelimit` on each operation), `/metrics` for the limiter's metrics in
//! Prometheus's text format (`tollgate_requests_total{policy, bucket, outcome}` and the
//! rest, see `tollgate::observe`). The policy itself is in `limits.rs`. Where the page's
//! `/openapi.json` redirects to a static build artifact, the demo's answers the document
//! itself (`200`), made from the limiter on each request. Of the page's platform "view as"
//! (the operator's user id on `/platform` and `/api/platform/*`), the demo serves the API
//! only (`/api/platform/view-as/{user_id}`, charged to the operator's bucket): `/platform`
//! is the page's web app, outside `/api/*` and its limits.
//!
//! **Sign-in is a stand-in, for demos only** (see `session.rs`):
//! `Authorization: Bearer <user-id>` or a cookie `session=<user-id>` is a signed-in staff
//! user; `X-Portal-User: <id>` a client-portal user. `POST /api/auth/sign-in` takes
//! `{"email": "...", "password": "..."}`; the password of every account is
//! `demo-password`, anything else is answered `401`.
//!
//! Environment: `PORT` (default 3000), `HOST` (default 127.0.0.1), `TRUSTED_PROXIES`
//! (comma-separated CIDRs whose `X-Forwarded-For` is believed), `REDIS_URL` / `KV_URL`
//! (Redis, falling back to memory while it is down), `RATE_LIMIT_ENABLED=false` (limits
//! off), `ADMIN_TOKEN` (mounts the operators' router under `/admin/rate-limits`, see
//! `admin.rs`), `MEMORY_MAX_ENTRIES` (keys per bucket the in-memory store holds, Redis's
//! fallback store too, default 100,000; a smaller share lets a test fill it), `RUST_LOG`.
//!
//! ```text
//! curl -i localhost:3000/api/projects                              # 500/min per IP
//! curl -i -H 'Authorization: Bearer alice' localhost:3000/api/me   # + 10,000/h for alice
//! curl -i -X POST -H 'Authorization: Bearer alice' localhost:3000/api/assistant/chat
//! curl -i -X POST localhost:3000/api/auth/sign-in \
//!      -H 'content-type: application/json' -d '{"email":"a@example.com","password":"nope"}'
//! ```

mod admin;
mod docs;
mod handlers;
mod limits;
mod session;

use axum::http::{header::CONTENT_TYPE, Method};

use metrics_exporter_prometheus::PrometheusBuilder;

use docs::Api;
use handlers::*;
use limits::{
    AUTH, AUTH_NETWORK, MAGIC_LINK, MAGIC_LINK_NETWORK, PASSWORD_HELP_NETWORK, PORTAL_MESSAGES,
    PORTAL_UPLOADS, SIGN_IN_FAILURES, SIGN_IN_FAILURES_NETWORK, SIGN_UP, SIGN_UP_NETWORK,
};

/// `MEMORY_MAX_ENTRIES`: how many keys per bucket the in-memory store holds, if set.
fn memory_max_entries_from_env() -> Result<Option<usize>, tollgate_suite::BadSetting> {
    match tollgate_suite::setting("MEMORY_MAX_ENTRIES") {
        Some(text) => match text.parse::<usize>() {
            Ok(n) if n >= tollgate::config::MIN_MAX_ENTRIES => Ok(Some(n)),
            _ => Err(tollgate_suite::BadSetting::new(
                "MEMORY_MAX_ENTRIES",
                text,
                format!(
                    "not a number of at least {}",
                    tollgate::config::MIN_MAX_ENTRIES
                ),
            )),
        },
        None => Ok(None),
    }
}

/// The store: Redis (`REDIS_URL`, or `KV_URL`) behind a fallback to memory, or memory;
/// `max_entries` (`MEMORY_MAX_ENTRIES`) sizes the memory store, the store itself or Redis's
/// fallback. As the page says, "if Redis is unavailable or misconfigured, the server falls
/// back to an in-memory store for that process only": Redis settings that cannot be used
/// (a URL that does not parse, a `rediss://` URL, which this build cannot open, a bad
/// `TOLLGATE_*` fallback setting) are logged as an error, and the demo counts in memory. The
/// page's `KV_REST_API_URL` and `KV_REST_API_TOKEN` (a REST API) are not read: tollgate
/// speaks Redis's protocol (`REDIS_URL`); set alone, they are warned about.
fn store_from_env(max_entries: Option<usize>) -> tollgate::redis::EnvStore {
    use tollgate::redis::{EnvStore, FallbackConfig, RedisStore};
    let memory = || match max_entries {
        Some(n) => tollgate::MemoryStore::builder().max_entries(n).build(),
        None => tollgate::MemoryStore::new(),
    };
    if tollgate::redis::redis_url_from_env().is_none() {
        if std::env::var_os("KV_REST_API_URL").is_some() {
            tracing::warn!(
                "KV_REST_API_URL is not read (a REST API): set REDIS_URL (or KV_URL) to the \
                 Redis URL to share counts; counting in memory, for this process only"
            );
        }
        return EnvStore::Memory(memory());
    }
    let store = tollgate::redis::from_env_with_memory(
        RedisStore::builder(),
        FallbackConfig::default(),
        memory(),
    );
    match store {
        Ok(store) => store,
        Err(e) => {
            tracing::error!(
                "the Redis settings cannot be used ({e}): counting in memory, for this process \
                 only"
            );
            EnvStore::Memory(memory())
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tollgate_suite::main(run()).await
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let client_ip = tollgate_suite::client_ip_from_env()?;
    // The recorder first: the limiter registers its metrics when it is built.
    let metrics = PrometheusBuilder::new().install_recorder()?;
    // Histogram samples wait in the recorder until they are drained: drain them on a timer,
    // so that memory stays flat when nothing scrapes `/metrics`.
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let store = store_from_env(memory_max_entries_from_env()?);
    let limiter = limits::limiter(store, client_ip.clone(), session::staff_user_of)?;
    let state = AppState {
        limiter: limiter.clone(),
        client_ip,
    };
    let (get, post) = (Method::GET, Method::POST);
    let app = Api::new(limiter.clone())
        // Default class: 500/min per IP, 10,000/h per staff user.
        .op(get.clone(), "/api/me", "Who you are signed in as", me)
        .op(get.clone(), "/api/projects", "List projects", ok)
        .op(
            get.clone(),
            "/api/platform/view-as/{user_id}",
            "Platform: view as a user (the operator's bucket pays)",
            view_as,
        )
        // Route classes of their own.
        .op(
            get.clone(),
            "/api/twilio/numbers",
            "Twilio REST: phone numbers",
            ok,
        )
        .op(
            post.clone(),
            "/api/templates/{id}/generate",
            "Generate a document from a template",
            ok,
        )
        .op(
            get.clone(),
            "/api/documents/{id}/download",
            "Download a document",
            ok,
        )
        .op(
            get.clone(),
            "/api/documents/temp/{*file}",
            "Download a temporary document",
            ok,
        )
        .op(
            get.clone(),
            "/api/invoices/{id}/pdf",
            "Download an invoice PDF",
            ok,
        )
        .op(
            get.clone(),
            "/api/knowledge/articles",
            "Knowledge base articles",
            ok,
        )
        .with_policy(
            post.clone(),
            "/api/assistant/chat",
            "Ask the assistant",
            limits::chat(),
            chat,
        )
        // Auth: not under the middleware; the handlers apply their own caps.
        .charging(
            post.clone(),
            "/api/auth/sign-in",
            "Staff sign-in",
            &[
                AUTH,
                AUTH_NETWORK,
                SIGN_IN_FAILURES,
                SIGN_IN_FAILURES_NETWORK,
            ],
            staff_sign_in,
        )
        .charging(
            post.clone(),
            "/api/auth/forgot-password",
            "Forgot password",
            &[AUTH, AUTH_NETWORK, PASSWORD_HELP_NETWORK],
            password_help,
        )
        .charging(
            post.clone(),
            "/api/auth/reset-password",
            "Reset password",
            &[AUTH, AUTH_NETWORK, PASSWORD_HELP_NETWORK],
            password_help,
        )
        .charging(
            post.clone(),
            "/api/auth/sign-up",
            "Sign up",
            &[SIGN_UP, SIGN_UP_NETWORK],
            sign_up,
        )
        .charging(
            post.clone(),
            "/api/portal/auth/sign-in",
            "Portal sign-in",
            &[AUTH, AUTH_NETWORK],
            portal_sign_in,
        )
        .charging(
            post.clone(),
            "/api/portal/auth/forgot-password",
            "Portal forgot password",
            &[AUTH, AUTH_NETWORK, PASSWORD_HELP_NETWORK],
            password_help,
        )
        .charging(
            post.clone(),
            "/api/portal/auth/reset-password",
            "Portal reset password",
            &[AUTH, AUTH_NETWORK, PASSWORD_HELP_NETWORK],
            password_help,
        )
        .charging(
            post.clone(),
            "/api/portal/auth/magic-link",
            "Portal magic link",
            &[MAGIC_LINK, MAGIC_LINK_NETWORK],
            magic_link,
        )
        // Client portal: per IP in the middleware, plus per-portal-user caps on writes.
        .op(
            get.clone(),
            "/api/portal/documents",
            "Portal: list documents",
            ok,
        )
        .charging(
            post.clone(),
            "/api/portal/documents",
            "Portal: upload a document",
            &[PORTAL_UPLOADS],
            portal_upload,
        )
        .charging(
            post.clone(),
            "/api/portal/messages",
            "Portal: send a message",
            &[PORTAL_MESSAGES],
            portal_message,
        )
        // Never throttled.
        .op(
            post.clone(),
            "/api/twilio/voice/{*event}",
            "Twilio voice webhook",
            ok,
        )
        .op(
            post.clone(),
            "/api/twilio/sms/{*event}",
            "Twilio SMS webhook",
            ok,
        )
        .op(post.clone(), "/api/stripe/webhook", "Stripe webhook", ok)
        .op(post.clone(), "/api/webhooks/resend", "Resend webhook", ok)
        .op(get.clone(), "/api/cron/{*job}", "Scheduled job", ok)
        .op(
            post.clone(),
            "/api/onlyoffice/callback",
            "ONLYOFFICE document callback",
            ok,
        )
        .op(post, "/api/teams/switch", "Switch team", ok)
        .into_router()
        .with_state(state)
        // Inside the layer, limited as the docs pages are (`limits::PAGES`).
        .route(
            "/metrics",
            axum::routing::get(move || async move {
                metrics.run_upkeep();
                (
                    [(CONTENT_TYPE, "text/plain; version=0.0.4")],
                    metrics.render(),
                )
            }),
        )
        .layer(limiter.layer());
    let app = admin::mount(app, &limiter);
    tollgate_suite::serve(app, 3000).await?;
    Ok(())
}
