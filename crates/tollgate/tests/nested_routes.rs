//! Per-route policies on routes inside `Router::nest`: declared with the full path, a
//! route spends only its own policy from its first request on, with no warning. Alone in its
//! binary: its subscriber is the process's global one.

mod common;

use axum::routing::post;
use axum::Router;
use tollgate::{Limiter, Policy};
use tollgate_testkit::EventLog;

fn limiter() -> Limiter {
    Limiter::builder()
        .read_env(false)
        .route("/api/*", Policy::named("default").per_ip("2/min"))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_nested_route_with_its_full_path_spends_only_its_own_policy_from_the_first_request() {
    let log = EventLog::default();
    tracing::subscriber::set_global_default(log.clone()).unwrap();

    let limiter = limiter();
    let chat = limiter.policy_at(
        "POST /api/assistant/chat",
        Policy::named("chat").per_ip("5/min"),
    );
    let api = Router::new()
        .route("/assistant/chat", post(|| async { "chat" }).layer(chat))
        .route("/projects", post(|| async { "projects" }));
    let app = Router::new().nest("/api", api).layer(limiter.layer());
    let server = common::serve(app).await;

    let mut statuses = Vec::new();
    for i in 0..6 {
        let r = server.post("/api/assistant/chat").send().await.unwrap();
        statuses.push(r.status().as_u16());
        if i == 0 {
            assert_eq!(
                r.headers()["ratelimit-policy"],
                "\"chat-ip\";q=5;w=60",
                "the first request spends the chat policy only"
            );
        }
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);
    // The central class was never spent by the chat route: its 2/min are all there.
    let statuses: Vec<u16> = {
        let mut out = Vec::new();
        for _ in 0..3 {
            out.push(
                server
                    .post("/api/projects")
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16(),
            );
        }
        out
    };
    assert_eq!(statuses, [200, 200, 429]);
    let warnings: Vec<String> = log
        .events()
        .into_iter()
        .filter(|e| e.starts_with("WARN") || e.starts_with("ERROR"))
        .collect();
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn a_pattern_without_its_nest_prefix_is_a_build_error() {
    let limiter = limiter();
    let err = limiter
        .try_policy_at(
            "POST /assistant/chat",
            Policy::named("chat").per_ip("5/min"),
        )
        .unwrap_err();
    assert!(
        matches!(&err, tollgate::BuildError::PolicyAtMatchesNoRule { pattern } if pattern == "POST /assistant/chat"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("full path with the prefix"),
        "{err}"
    );
    // With the prefix it is accepted (and so is any pattern under a default rule).
    assert!(limiter
        .try_policy_at(
            "POST /api/assistant/chat",
            Policy::named("chat").per_ip("5/min")
        )
        .is_ok());
    let with_default = Limiter::builder()
        .read_env(false)
        .route("/*", Policy::named("default").per_ip("2/min"))
        .build()
        .unwrap();
    assert!(with_default
        .try_policy_at("POST /chat", Policy::named("chat").per_ip("5/min"))
        .is_ok());
}
