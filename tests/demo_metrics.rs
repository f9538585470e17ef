//! Black-box test of the demo's `/metrics`: after a route's policy refuses, Prometheus's
//! text shows the refusal against the bucket that refused, and the admissions before it.

mod common;

use std::collections::BTreeMap;

use common::Example;

/// The value of the series `name{labels}` in a Prometheus text exposition (labels compared
/// as a set, whatever their order).
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: BTreeMap<&str, &str> = labels.iter().copied().collect();
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        let found: BTreeMap<&str, &str> = set
            .split(',')
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                Some((k, v.trim_matches('"')))
            })
            .collect();
        (found == wanted).then(|| value.trim().parse().ok())?
    })
}

#[tokio::test]
async fn metrics_show_the_bucket_that_refused() {
    let ex = Example::start("demo", &[("TRUSTED_PROXIES", "127.0.0.1/32")]);
    // The chat policy: 60/min per IP (anonymous: no per-user bucket).
    let chat = || {
        ex.post("/api/assistant/chat")
            .header("x-forwarded-for", "198.51.100.77")
    };
    for _ in 0..60 {
        assert_eq!(chat().send().await.unwrap().status(), 200);
    }
    assert_eq!(chat().send().await.unwrap().status(), 429);

    let response = ex.get("/metrics").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap().starts_with("text/plain")));
    let text = response.text().await.unwrap();
    let chat_ip = |outcome| {
        series(
            &text,
            "tollgate_requests_total",
            &[
                ("policy", "chat"),
                ("bucket", "chat:ip"),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(chat_ip("refused"), Some(1.0), "{text}");
    assert_eq!(chat_ip("admitted"), Some(60.0), "{text}");
    // Less than 10% of 60 left after the 55th admission: the 55th to the 60th.
    assert_eq!(
        series(
            &text,
            "tollgate_near_limit_total",
            &[("policy", "chat"), ("bucket", "chat:ip")]
        ),
        Some(6.0),
        "{text}"
    );
    // No client key in any label.
    assert!(!text.contains("198.51.100.77"));
    // Scraping is not limited, and the memory store is not on a fallback.
    assert_eq!(
        series(&text, "tollgate_store_fallback", &[("store", "memory")]),
        Some(0.0),
        "{text}"
    );
}

/// What handlers decide with `Limiter::check` counts like the middleware's decisions (the
/// demo's AUTH bucket, charged by its handlers), and a guard's bucket counts the responses
/// it counts, not every request it looked at (valid admin tokens spend nothing).
#[tokio::test]
async fn metrics_count_handler_decisions_and_only_what_a_guard_counts() {
    let ex = Example::start(
        "demo",
        &[
            ("TRUSTED_PROXIES", "127.0.0.1/32"),
            ("ADMIN_TOKEN", "s3cret"),
        ],
    );
    // AUTH: 20 per 15 minutes per IP, charged by the handler.
    let mut statuses = Vec::new();
    for _ in 0..22 {
        let r = ex
            .post("/api/auth/forgot-password")
            .header("x-forwarded-for", "198.51.100.78")
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses.iter().filter(|&&s| s == 202).count(), 20);
    assert_eq!(statuses.iter().filter(|&&s| s == 429).count(), 2);
    // The admin router's guard: 3 valid tokens (not counted), then 2 wrong ones (counted).
    for token in ["s3cret", "s3cret", "s3cret", "wrong", "wrong"] {
        ex.get("/admin/rate-limits")
            .header("x-forwarded-for", "198.51.100.79")
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
    }

    let text = ex
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let requests = |policy, bucket, outcome| {
        series(
            &text,
            "tollgate_requests_total",
            &[("policy", policy), ("bucket", bucket), ("outcome", outcome)],
        )
    };
    assert_eq!(requests("auth", "auth", "admitted"), Some(20.0), "{text}");
    assert_eq!(requests("auth", "auth", "refused"), Some(2.0), "{text}");
    assert_eq!(
        requests("failed-auth", "failed-auth:ip", "admitted"),
        Some(2.0),
        "{text}"
    );
}
