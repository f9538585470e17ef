//! The decision in the user's hands, through a real axum server: a handler reads it from
//! the request's extensions, an outer layer from the response's, a hook builds the whole
//! 429, a problem+json body, and `?` on `check` in a handler.

mod common;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use tollgate::{CheckError, ErrorBody, HeaderStyle, Limiter, Policy, RateLimitDecision};

use common::{clock_and_store, header, serve, Down};

#[tokio::test]
async fn a_handler_reads_the_decision_and_an_outer_layer_reads_the_responses() {
    let (_clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .read_env(false)
        .decision_in_response(true)
        .route("/api/*", Policy::named("default").per_ip("3/min"))
        .build()
        .unwrap();
    async fn handler(Extension(d): Extension<RateLimitDecision>) -> Json<RateLimitDecision> {
        Json(d)
    }
    // An outer layer copies the response's decision into a header of its own.
    async fn outer(req: Request, next: Next) -> Response {
        let mut response = next.run(req).await;
        let seen = response
            .extensions()
            .get::<RateLimitDecision>()
            .map(|d| format!("{}:{}:{}", d.bucket, d.remaining, d.allowed));
        if let Some(seen) = seen {
            response
                .headers_mut()
                .insert("x-seen", HeaderValue::from_str(&seen).unwrap());
        }
        response
    }
    let app = Router::new()
        .route("/api/me", get(handler))
        .layer(limiter.layer())
        .layer(middleware::from_fn(outer));
    let server = serve(app).await;

    let first = server.get("/api/me").send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-seen"), "default:ip:2:true");
    let body: serde_json::Value = first.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "allowed": true, "policy": "default", "bucket": "default:ip",
            "limit": 3, "remaining": 2, "reset": 60, "retry_after": null
        })
    );
    server.get("/api/me").send().await.unwrap();
    server.get("/api/me").send().await.unwrap();
    let refused = server.get("/api/me").send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "x-seen"), "default:ip:0:false");
}

/// A handler that answers whether the request carries a decision.
async fn present_or_absent(d: Option<Extension<RateLimitDecision>>) -> &'static str {
    if d.is_some() {
        "present"
    } else {
        "absent"
    }
}

#[tokio::test]
async fn without_the_switch_no_decision_is_inserted() {
    let limiter = Limiter::builder()
        .read_env(false)
        .decision_in_request(false)
        .route("/api/*", Policy::named("default").per_ip("3/min"))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/api/me", get(present_or_absent))
        .layer(limiter.layer());
    let server = serve(app).await;
    let response = server.get("/api/me").send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "absent");
}

#[tokio::test]
async fn a_refusal_hook_builds_the_whole_429_from_the_decision_and_the_request() {
    let limiter = Limiter::builder()
        .read_env(false)
        .route("/api/*", Policy::named("default").per_ip("1/min"))
        .refusal_response(|info, parts| {
            let text = format!(
                "{} {} refused by {} ({} left); accept: {}",
                parts.method,
                parts.uri.path(),
                info.most_restrictive_bucket().unwrap().name,
                info.most_restrictive_bucket().unwrap().state.remaining,
                parts
                    .headers
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-"),
            );
            let mut response = http::Response::new(Bytes::from(text));
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            // The hook's own Retry-After wins over the limiter's.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("600"));
            response
        })
        .build()
        .unwrap();
    let app = Router::new()
        .route("/api/items", get(|| async { "ok" }))
        .layer(limiter.layer());
    let server = serve(app).await;
    assert_eq!(server.status("/api/items").await, 200);
    let refused = server
        .get("/api/items")
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "content-type"), "text/plain");
    assert_eq!(header(&refused, "retry-after"), "600");
    // The limiter's headers the hook did not set are added.
    assert_eq!(header(&refused, "x-ratelimit-limit"), "1");
    assert_eq!(
        refused.text().await.unwrap(),
        "GET /api/items refused by default:ip (0 left); accept: text/html"
    );
}

#[tokio::test]
async fn problem_json_bodies_from_the_middleware() {
    let limiter = Limiter::builder()
        .read_env(false)
        .header_style(HeaderStyle::ietf())
        .error_body(ErrorBody::problem())
        .route("/api/*", Policy::named("default").per_ip("1/h"))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/api/items", get(|| async { "ok" }))
        .layer(limiter.layer());
    let server = serve(app).await;
    assert_eq!(server.status("/api/items").await, 200);
    let refused = server.get("/api/items").send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "content-type"), "application/problem+json");
    let wait: u64 = header(&refused, "retry-after").parse().unwrap();
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["type"], "about:blank");
    assert_eq!(body["title"], "Too Many Requests");
    assert_eq!(body["status"], 429);
    assert_eq!(body["retryAfter"], wait);
    assert_eq!(
        body["detail"],
        format!("Rate limit exceeded; retry in {wait} seconds.")
    );
}

/// A handler that charges a direct-use bucket with `?`, and answers the refusal as it is.
async fn export(State(limiter): State<Limiter>) -> Result<Response, CheckError> {
    let decision = limiter.check("exports", "tenant-1").await?;
    if !decision.allowed {
        return Ok(limiter
            .refusal("exports", &decision, &Method::POST, "/export")
            .into_response());
    }
    Ok("exported".into_response())
}

#[tokio::test]
async fn question_mark_on_check_in_an_axum_handler() {
    let limiter = Limiter::builder()
        .read_env(false)
        .bucket("exports", "1/h")
        .build()
        .unwrap();
    let app = Router::new()
        .route("/export", get(export))
        .with_state(limiter);
    let server = serve(app).await;
    let ok = server.get("/export").send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let refused = server.get("/export").send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "x-ratelimit-limit"), "1");
    assert!(header(&refused, "retry-after").parse::<u64>().unwrap() > 0);

    // The store fails: `?` answers 503 with Retry-After.
    let down = Limiter::builder()
        .read_env(false)
        .store(Down)
        .bucket("exports", "1/h")
        .build()
        .unwrap();
    let server = serve(Router::new().route("/export", get(export)).with_state(down)).await;
    let unavailable = server.get("/export").send().await.unwrap();
    assert_eq!(unavailable.status(), 503);
    assert_eq!(header(&unavailable, "retry-after"), "1");
    assert_eq!(
        unavailable.text().await.unwrap(),
        r#"{"error":"rate limiter unavailable"}"#
    );

    // A bucket nobody declared: a 500 (a mistake in the code), naming nothing.
    let response = CheckError::UnknownBucket("exprots".into()).into_response();
    assert_eq!(response.status(), 500);
}

#[tokio::test]
async fn a_guard_answers_as_its_limiter_does() {
    let limiter = Limiter::builder()
        .read_env(false)
        .route("/api/*", Policy::named("default").per_ip("100/min"))
        .refusal_response(|info, _parts| {
            let name = &info.most_restrictive_bucket().unwrap().name;
            let mut response = http::Response::new(Bytes::from(format!("slow down ({name})")));
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            response
        })
        .decision_in_response(true)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/api/items", get(|| async { "ok" }))
        .layer(limiter.layer())
        .layer(limiter.guard(Policy::named("outer").per_ip("1/min")))
        .layer(middleware::from_fn(|request: Request, next: Next| async {
            let response = next.run(request).await;
            let seen = response.extensions().get::<RateLimitDecision>().is_some();
            (
                [("x-decision-seen", if seen { "yes" } else { "no" })],
                response,
            )
        }));
    let server = serve(app).await;
    let admitted = server.get("/api/items").send().await.unwrap();
    assert_eq!(admitted.status(), 200);
    assert_eq!(header(&admitted, "x-decision-seen"), "yes");
    let refused = server.get("/api/items").send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "x-decision-seen"), "yes");
    assert_eq!(refused.text().await.unwrap(), "slow down (outer:ip)");
}

/// `refusal` and `rate_limit_headers` for a name no bucket has (a typo) still tell the client
/// what the decision says: its limit, what remains, and when to retry.
#[tokio::test]
async fn a_refusal_for_an_unknown_bucket_still_says_when_to_retry() {
    let limiter = Limiter::builder()
        .read_env(false)
        .bucket("exports", "1/h")
        .build()
        .unwrap();
    assert!(limiter.check("exports", "t").await.unwrap().allowed);
    let refused = limiter.check("exports", "t").await.unwrap();
    assert!(!refused.allowed);
    let response = limiter
        .refusal("export", &refused, &Method::POST, "/export")
        .into_response();
    assert_eq!(response.status(), 429);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((3_599..=3_600).contains(&retry), "{retry}");
    assert_eq!(response.headers()["x-ratelimit-limit"], "1");
    assert_eq!(response.headers()["x-ratelimit-remaining"], "0");
    let headers = limiter.rate_limit_headers("export", &refused);
    assert_eq!(headers["x-ratelimit-remaining"], "0");
}

/// With the decision in the response's extensions only, an outer layer still reads it
/// there (and the handler finds none in the request's).
#[tokio::test]
async fn the_decision_goes_into_the_response_alone_when_the_request_does_not_carry_it() {
    let (_clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .read_env(false)
        .decision_in_request(false)
        .decision_in_response(true)
        .route("/api/*", Policy::named("default").per_ip("3/min"))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/api/me", get(present_or_absent))
        .layer(limiter.layer())
        .layer(middleware::from_fn(|request: Request, next: Next| async {
            let response = next.run(request).await;
            let seen = response
                .extensions()
                .get::<RateLimitDecision>()
                .map_or("none".to_string(), |d| {
                    format!("{}:{}:{}", d.bucket, d.remaining, d.allowed)
                });
            ([("x-seen", seen)], response)
        }));
    let server = serve(app).await;
    let response = server.get("/api/me").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-seen"), "default:ip:2:true");
    assert_eq!(response.text().await.unwrap(), "absent");
}

/// A store answering other than one state per bucket (here none, refused, for one bucket)
/// breaks the store's contract: an error of the store, as a store that is down is, never an
/// admission (a review: such a store had every request admitted, silently).
#[tokio::test]
async fn a_store_answering_no_state_per_bucket_is_an_error_not_an_admission() {
    #[derive(Debug, Clone, Copy)]
    struct NoStates;
    impl tollgate::Store for NoStates {
        fn apply<'a>(
            &'a self,
            _batch: &'a tollgate::Batch,
        ) -> tollgate::BoxFuture<'a, Result<tollgate::Decision, tollgate::StoreError>> {
            Box::pin(async {
                Ok(tollgate::Decision {
                    allowed: false,
                    now: tollgate::Timestamp::from_micros(0),
                    buckets: Vec::new(),
                })
            })
        }
    }
    let limiter = Limiter::builder()
        .read_env(false)
        .store(NoStates)
        .bucket("exports", "1/h")
        .route(
            "/*",
            Policy::named("api")
                .per_ip("5/min")
                .on_store_failure(tollgate::FailureMode::Closed),
        )
        .build()
        .unwrap();
    let check = limiter.check("exports", "k").await;
    assert!(
        matches!(&check, Err(e) if e.to_string().contains("one state per bucket")),
        "{check:?}"
    );
    // An operator's look at a route's bucket too (a re-check: it read `(false, 0)`).
    let look = limiter.peek_bucket("api:ip", "203.0.113.7").await;
    assert!(
        matches!(&look, Err(e) if e.to_string().contains("one state per bucket")),
        "{look:?}"
    );
    let app = Router::new()
        .route("/x", get(|| async { "x" }))
        .layer(limiter.layer());
    let server = serve(app).await;
    assert_eq!(server.get("/x").send().await.unwrap().status(), 503);
}
