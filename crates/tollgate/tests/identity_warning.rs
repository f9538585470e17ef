//! A limiter placed before the middleware that signs users in sees no user on any request,
//! which silently skips every per-user limit: after 1,000 requests in a row without a user
//! on routes with per-user limits, one warning says so. Alone in its binary: its
//! subscriber is the process's global one.

mod common;

use common::request;
use tollgate::{Limiter, Policy};
use tollgate_testkit::EventLog;
use tower::{service_fn, Layer, ServiceExt};

fn limiter() -> Limiter {
    Limiter::builder()
        .read_env(false)
        .identity(common::user_header)
        .route(
            "/api/*",
            Policy::named("api")
                .per_ip("1000000/min")
                .per_user("1000000/min"),
        )
        .build()
        .unwrap()
}

async fn send(limiter: &Limiter, n: usize, user: Option<&str>) {
    let layer = limiter.layer();
    for _ in 0..n {
        let mut req = request("/api/items", Some("203.0.113.7:4000"), None);
        if let Some(user) = user {
            req.headers_mut().insert("x-user", user.parse().unwrap());
        }
        let svc = layer.layer(service_fn(common::echo));
        let response = svc.oneshot(req).await.unwrap();
        assert_eq!(response.status(), 200);
    }
}

fn warnings(log: &EventLog) -> usize {
    log.events()
        .iter()
        .filter(|e| e.contains("found no signed-in user on 1000 requests in a row"))
        .count()
}

#[tokio::test]
async fn a_thousand_requests_in_a_row_without_a_user_are_warned_about_once() {
    let log = EventLog::default();
    tracing::subscriber::set_global_default(log.clone()).unwrap();

    // A signed-in request in between starts the count again.
    let mixed = limiter();
    send(&mixed, 999, None).await;
    send(&mixed, 1, Some("alice")).await;
    send(&mixed, 999, None).await;
    assert_eq!(warnings(&log), 0, "{:?}", log.events());

    // The limiter outside the auth layer: never a user.
    let outside = limiter();
    send(&outside, 999, None).await;
    assert_eq!(warnings(&log), 0);
    send(&outside, 1, None).await;
    assert_eq!(warnings(&log), 1, "{:?}", log.events());
    let warning = log
        .events()
        .into_iter()
        .find(|e| e.contains("found no signed-in user"))
        .unwrap();
    assert!(warning.starts_with("WARN tollgate:"), "{warning}");
    assert!(warning.contains("auth layer"), "{warning}");
    // Once only.
    send(&outside, 500, None).await;
    send(&outside, 1, Some("bob")).await;
    send(&outside, 1000, None).await;
    assert_eq!(warnings(&log), 1);
}
