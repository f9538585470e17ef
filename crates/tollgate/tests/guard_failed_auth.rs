//! `Limiter::guard(Policy::failed_auth_per_ip(..))` outside an authentication layer: requests
//! without credentials or with unknown ones (401) are limited per IP, their 401s carry the
//! rate-limit headers, and authenticated requests spend nothing of that budget.

mod common;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use common::{clock_and_store, header, serve, times, Server};
use tollgate::{ClientIp, Key, Limiter, Policy};

/// The tenant of a known API key.
#[derive(Clone)]
struct Tenant(&'static str);

async fn authenticate(mut request: Request, next: Next) -> Response {
    let tenant = match request.headers().get("x-api-key").map(|v| v.as_bytes()) {
        Some(b"key-acme") => Tenant("acme"),
        Some(b"key-initech") => Tenant("initech"),
        _ => return (StatusCode::UNAUTHORIZED, "unknown API key").into_response(),
    };
    request.extensions_mut().insert(tenant);
    next.run(request).await
}

fn app(limiter: &Limiter) -> Router {
    Router::new()
        .route("/v1/items", get(|| async { "items" }))
        .layer(limiter.layer())
        .layer(middleware::from_fn(authenticate))
        .layer(limiter.guard(Policy::failed_auth_per_ip("5/min")))
}

async fn server() -> (Server, tollgate::ManualClock) {
    let (clock, store) = clock_and_store();
    let tenant = Key::tenant(|parts| parts.extensions.get::<Tenant>().map(|t| t.0.to_string()));
    let limiter = Limiter::builder()
        .store(store)
        .client_ip(ClientIp::peer().trust_proxies(["127.0.0.1/32"]))
        .route("/v1/*", Policy::named("tenant").limit(tenant, "100/min"))
        .build()
        .unwrap();
    (serve(app(&limiter)).await, clock)
}

async fn send(server: &Server, ip: &str, key: Option<&str>) -> reqwest::Response {
    let mut request = server.get("/v1/items").header("x-forwarded-for", ip);
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn guessing_keys_from_one_ip_is_refused_after_the_limit() {
    let (server, clock) = server().await;
    let ip = "198.51.100.7";
    // Five failures, each a 401 with the guard's headers counting down; no key at all is a
    // failure too.
    for (n, key) in ["guess-1", "guess-2", "", "guess-4", "guess-5"]
        .into_iter()
        .enumerate()
    {
        let response = send(&server, ip, (!key.is_empty()).then_some(key)).await;
        assert_eq!(response.status(), 401);
        assert_eq!(header(&response, "x-ratelimit-limit"), "5");
        assert_eq!(
            header(&response, "x-ratelimit-remaining"),
            (4 - n).to_string()
        );
        assert_eq!(
            header(&response, "ratelimit-policy"),
            r#""failed-auth-ip";q=5;w=60"#
        );
    }
    // The sixth guess: 429 before the key is even looked at.
    let refused = send(&server, ip, Some("guess-6")).await;
    assert_eq!(refused.status(), 429);
    let wait: u64 = header(&refused, "retry-after").parse().unwrap();
    // (The wait's bound is the rolling window's; checked with the algorithms.)
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    assert_eq!(header(&refused, "x-ratelimit-remaining"), "0");
    // The guard runs before authentication: a valid key from that IP waits too.
    assert_eq!(send(&server, ip, Some("key-acme")).await.status(), 429);
    // Another IP is not affected.
    assert_eq!(
        send(&server, "198.51.100.8", Some("guess")).await.status(),
        401
    );
    // Once the window has passed, the IP may try again.
    clock.advance(std::time::Duration::from_secs(70));
    assert_eq!(send(&server, ip, Some("guess-7")).await.status(), 401);
}

/// A guard's bucket is the limiter's to look at, reset and count: an operator can read and
/// clear an IP's failures (`failed-auth:ip` was an unknown bucket, and the limiter's stats
/// left the guard's refusals out).
#[tokio::test]
async fn a_guards_bucket_is_looked_at_reset_and_counted_through_its_limiter() {
    let (_clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .client_ip(ClientIp::peer().trust_proxies(["127.0.0.1/32"]))
        .route("/v1/*", Policy::named("tenant").per_ip("100/min"))
        .build()
        .unwrap();
    let server = serve(app(&limiter)).await;
    let ip = "198.51.100.30";
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(send(&server, ip, Some("guess")).await.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429]);
    let stats = limiter.stats();
    assert_eq!((stats.admitted, stats.refused), (5, 2), "{stats:?}");
    let seen = limiter.peek_bucket("failed-auth:ip", ip).await.unwrap();
    assert_eq!((seen.allowed, seen.buckets[0].remaining), (false, 0));
    let _ = limiter.reset_bucket("failed-auth:ip", ip).await.unwrap();
    let seen = limiter.peek_bucket("failed-auth:ip", ip).await.unwrap();
    assert_eq!((seen.allowed, seen.buckets[0].remaining), (true, 5));
    // The reset is the guard's: the IP's valid key gets through again.
    assert_eq!(send(&server, ip, Some("key-acme")).await.status(), 200);
    // Admitted once, by the tenant's class: the guard's look spent nothing.
    assert_eq!(limiter.stats().admitted, 6);
}

#[tokio::test]
async fn authenticated_requests_spend_nothing_of_the_failure_budget() {
    let (server, _clock) = server().await;
    let ip = "198.51.100.9";
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let response = send(&server, ip, Some("key-acme")).await;
        // The tenant's own headers, not the guard's.
        assert_eq!(header(&response, "x-ratelimit-limit"), "100");
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, times(200, 30));
    let ok = send(&server, ip, Some("key-initech")).await;
    assert_eq!(
        header(&ok, "ratelimit-policy"),
        r#""tenant-tenant";q=100;w=60"#
    );
    // All five failures are still there.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(send(&server, ip, Some("guess")).await.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429]);
}

#[test]
fn a_guard_bucket_named_like_one_of_the_limiters_is_an_error() {
    let limiter = Limiter::builder()
        .route("/*", Policy::named("failed-auth").per_ip("1/min"))
        .bucket("direct", "1/min")
        .build()
        .unwrap();
    let err = limiter
        .try_guard(Policy::failed_auth_per_ip("5/min"))
        .unwrap_err();
    assert!(
        matches!(err, tollgate::BuildError::DuplicateBucket { .. }),
        "{err}"
    );
    let err = limiter
        .try_guard(Policy::named("direct").per_ip("5/min"))
        .unwrap_err();
    assert!(
        matches!(err, tollgate::BuildError::DuplicateBucket { .. }),
        "{err}"
    );
    assert!(limiter
        .try_guard(Policy::named("guard").per_ip("5/min"))
        .is_ok());
    // A bad rate is an error, not a panic at request time.
    assert!(limiter
        .try_guard(Policy::named("guard").per_ip("5/fortnight"))
        .is_err());
    // Two guards of one name would count in one bucket under two limits.
    let err = limiter
        .try_guard(Policy::named("guard").per_ip("20/min"))
        .unwrap_err();
    assert!(
        matches!(&err, tollgate::BuildError::DuplicateBucket { name } if name == "guard"),
        "{err}"
    );
}

/// The same guard asked for again (an app built twice: a test per app, two listeners)
/// is the same budget, as `policy_at` with one policy is: both layers count in one bucket
/// (a review: the second `guard` call panicked, "bucket `failed-auth` is declared
/// twice"). A guard of that name with other limits is still refused.
#[tokio::test]
async fn the_same_guard_asked_for_twice_is_one_budget() {
    let (_clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .client_ip(ClientIp::peer().trust_proxies(["127.0.0.1/32"]))
        .route("/v1/*", Policy::named("default").per_ip("100/min"))
        .build()
        .unwrap();
    let (first, second) = (serve(app(&limiter)).await, serve(app(&limiter)).await);
    let ip = "203.0.113.9";
    let mut statuses = Vec::new();
    for server in [&first, &second, &first, &second, &first, &second] {
        statuses.push(send(server, ip, Some("guess")).await.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429]);
    // One guard: described once.
    let described = limiter.describe();
    let guards = described
        .iter()
        .filter(|r| r.policy == "failed-auth")
        .count();
    assert_eq!(guards, 1);
    let err = limiter
        .try_guard(Policy::failed_auth_per_ip("6/min"))
        .unwrap_err();
    assert!(
        matches!(&err, tollgate::BuildError::DuplicateBucket { name } if name == "failed-auth"),
        "{err}"
    );
}

/// A limiter on a stopped clock with no rules of its own, behind a proxy on loopback (the
/// client's address in `X-Forwarded-For`), for a guard.
fn behind_proxy() -> (tollgate::ManualClock, Limiter) {
    let (clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .client_ip(ClientIp::peer().trust_proxies(["127.0.0.1/32"]))
        .build()
        .unwrap();
    (clock, limiter)
}

/// `n` requests from `ip` sent at once, each with API key `key(i)`: each one's status,
/// whether it shows the guard's budget, and its body.
async fn together(
    server: &Server,
    n: usize,
    ip: &'static str,
    key: impl Fn(usize) -> String,
) -> Vec<(u16, bool, String)> {
    let url = format!("http://{}/v1/items", server.addr());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (url, key) = (url.clone(), key(i));
        tasks.spawn(async move {
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            let r = client
                .get(url)
                .header("x-forwarded-for", ip)
                .header("x-api-key", key)
                .send()
                .await
                .unwrap();
            let shown = r.headers().contains_key("x-ratelimit-limit");
            (r.status().as_u16(), shown, r.text().await.unwrap())
        });
    }
    tasks.join_all().await
}

/// More authenticated requests in flight at once from one IP than the guard's limit: all
/// are admitted, none refused. The guard looks before a request runs and counts it once its
/// response is a 401, so requests in flight never refuse each other (it held 1 per request
/// in flight before: the sixth concurrent request was refused with the guard's limit of 5,
/// though no request had failed); they run no more at once than the IP has failures left,
/// the others waiting for a place (see the next test). Failures are still counted: the
/// IP's sixth failure is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_requests_in_flight_together_never_refuse_each_other() {
    const IN_FLIGHT: usize = 12;
    let (clock, limiter) = behind_proxy();
    // Every request stays a while in the handler, which notes how many are there at once.
    let running = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (inside, peak) = (running.clone(), most.clone());
    let app = Router::new()
        .route(
            "/v1/items",
            get(move || {
                let (inside, peak) = (inside.clone(), peak.clone());
                async move {
                    use std::sync::atomic::Ordering::SeqCst;
                    peak.fetch_max(inside.fetch_add(1, SeqCst) + 1, SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    inside.fetch_sub(1, SeqCst);
                    "items"
                }
            }),
        )
        .layer(middleware::from_fn(authenticate))
        .layer(limiter.guard(Policy::failed_auth_per_ip("5/min")));
    let server = serve(app).await;
    let ip = "198.51.100.20";
    let answers = together(&server, IN_FLIGHT, ip, |_| "key-acme".to_string()).await;
    // A response the guard does not count shows nothing of its budget.
    assert_eq!(
        answers,
        vec![(200, false, "items".to_string()); IN_FLIGHT],
        "every request admitted, without the guard's headers"
    );
    let most = most.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=5).contains(&most), "{most} at once");
    // Failures count as before: five 401s counting down, then 429.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(send(&server, ip, Some("guess")).await.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429]);
    clock.advance(std::time::Duration::from_secs(70));
    assert_eq!(send(&server, ip, Some("guess")).await.status(), 401);
}

/// Guesses sent together from one IP, behind an authentication that takes a while to say
/// 401: no more run at once than the IP has failures left, the others wait for a place and
/// look again once those are counted, so exactly the guard's limit is answered. (A review:
/// 300 of 300 guesses sent at once answered on Redis against 20 a minute, and 100 of 100
/// on memory behind a check of 100 ms.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_sent_together_are_answered_no_more_than_the_limit() {
    const SENT: usize = 60;
    let (_clock, limiter) = behind_proxy();
    async fn slow_check(request: Request, next: Next) -> Response {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        authenticate(request, next).await
    }
    let app = Router::new()
        .route("/v1/items", get(|| async { "items" }))
        .layer(middleware::from_fn(slow_check))
        .layer(limiter.guard(Policy::failed_auth_per_ip("5/min")));
    let server = serve(app).await;
    let answers = together(&server, SENT, "198.51.100.30", |i| format!("guess-{i}")).await;
    let statuses: Vec<u16> = answers.iter().map(|(status, ..)| *status).collect();
    let answered = statuses.iter().filter(|&&s| s == 401).count();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((answered, refused), (5, SENT - 5), "{statuses:?}");
    // Another IP's guesses were not held back.
    let other = server
        .get("/v1/items")
        .header("x-forwarded-for", "198.51.100.31")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 401);
}

/// An app behind the guard whose requests with `x-long` wait until `release` is notified,
/// and `n` such long requests from `ip` holding the key's places.
async fn held_by_long_requests(
    limiter: &Limiter,
    ip: &'static str,
    n: usize,
) -> (
    std::sync::Arc<Server>,
    std::sync::Arc<tokio::sync::Notify>,
    tokio::task::JoinSet<u16>,
) {
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let hold = release.clone();
    let app = Router::new()
        .route(
            "/v1/items",
            get(move |request: Request| {
                let hold = hold.clone();
                async move {
                    // The tenant's long requests (a header says so) wait until released.
                    if request.headers().contains_key("x-long") {
                        hold.notified().await;
                    }
                    "items"
                }
            }),
        )
        .layer(middleware::from_fn(authenticate))
        .layer(limiter.guard(Policy::failed_auth_per_ip("5/min")));
    let server = std::sync::Arc::new(serve(app).await);
    let mut long = tokio::task::JoinSet::new();
    for _ in 0..n {
        let server = server.clone();
        long.spawn(async move {
            server
                .get("/v1/items")
                .header("x-forwarded-for", ip)
                .header("x-api-key", "key-acme")
                .header("x-long", "1")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    (server, release, long)
}

/// As many long requests of an IP running as it has failures left (long polls, uploads):
/// a request that waited 2 s for a place runs as one more, one at a time, so the IP's
/// other requests are not held back for good, and guesses sent meanwhile are still
/// answered no more than the limit. (A re-check: with a wait of 10 s and no more than one
/// extra at a time, a client's requests behind 20 withheld uploads waited 9.7 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_long_requests_one_more_runs_at_a_time_after_a_wait() {
    let (_clock, limiter) = behind_proxy();
    let ip = "198.51.100.40";
    // Five long requests hold the five places.
    let (server, release, long) = held_by_long_requests(&limiter, ip, 5).await;
    // A short request and ten guesses wait, then run one more at a time.
    let started = std::time::Instant::now();
    let short = send(&server, ip, Some("key-acme")).await;
    let waited = started.elapsed();
    assert_eq!(short.status(), 200);
    assert!(
        waited >= std::time::Duration::from_millis(1500)
            && waited < std::time::Duration::from_secs(5),
        "{waited:?}"
    );
    // Guesses sent meanwhile: one runs after its wait and fails, leaving four while five
    // run; the others wait for the long requests, which end 3 s later.
    let guessing = {
        let server = server.clone();
        tokio::spawn(async move { together(&server, 10, ip, |i| format!("guess-{i}")).await })
    };
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    release.notify_waiters();
    assert_eq!(long.join_all().await, [200; 5]);
    let guesses = guessing.await.unwrap();
    let statuses: Vec<u16> = guesses.iter().map(|(status, ..)| *status).collect();
    let answered = statuses.iter().filter(|&&s| s == 401).count();
    assert_eq!(
        (answered, statuses.len() - answered),
        (5, 5),
        "{statuses:?}"
    );
}

/// A client's short requests arriving one by one behind its long ones: each takes a place
/// for its first look, which does not fit, and gives it up. Those looks are no sign that
/// the long requests move, so the first runs after its 2 s wait and those after it one
/// after another, while the long requests still run. (A re-check: each arrival counted as
/// a place that moved and started the 2 s again, so none ran until the long requests
/// ended, 9 s; here none of 12 before.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_arriving_one_by_one_behind_long_ones_run_after_their_wait() {
    let (_clock, limiter) = behind_proxy();
    let ip = "198.51.100.41";
    let (server, release, long) = held_by_long_requests(&limiter, ip, 5).await;
    // One every 400 ms until the long requests end, 4.8 s after the first.
    let started = std::time::Instant::now();
    let mut short = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let server = server.clone();
        short.spawn(async move {
            let sent = started.elapsed();
            let response = send(&server, ip, Some("key-acme")).await;
            (response.status().as_u16(), sent, started.elapsed())
        });
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    }
    let mut before_release = Vec::new();
    while let Some(done) = short.try_join_next() {
        before_release.push(done.unwrap());
    }
    release.notify_waiters();
    // The first ran about 2 s after it was sent, and those after it as it was answered.
    assert!(before_release.len() >= 3, "{before_release:?}");
    for (status, sent, answered) in &before_release {
        assert_eq!(*status, 200);
        assert!(
            *answered - *sent >= std::time::Duration::from_millis(1500),
            "sent at {sent:?}, answered at {answered:?}"
        );
    }
    assert_eq!(long.join_all().await, [200; 5]);
    let rest: Vec<u16> = short.join_all().await.iter().map(|r| r.0).collect();
    assert_eq!(rest, vec![200; 12 - before_release.len()]);
}
