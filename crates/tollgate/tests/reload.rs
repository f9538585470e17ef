//! `Limiter::reload` while the limiter serves: new limits apply to the next request,
//! unchanged limits keep their counts, a changed limit keeps what was counted, rules that
//! do not build are refused and the running ones stay, per-route policies declared in code
//! survive, and a request in flight finishes under the rules it started with.

mod common;

use std::sync::Arc;

use common::{clock_and_store, request, Body};
use http::{Request, Response, StatusCode};
use tollgate::config::{Config, ConfigError};
use tollgate::{
    BuildError, CheckError, Limiter, LimiterBuilder, MemoryStore, Policy, Rate, RateLimitLayer,
};
use tollgate_testkit::TempDir;
use tower::{service_fn, Layer, ServiceExt};

const PEER: &str = "203.0.113.7:4000";

/// A limiter on a memory store whose clock never moves (no window ends during a test).
fn limiter(rules: LimiterBuilder) -> Limiter {
    let (_clock, store) = clock_and_store();
    rules.store(store).read_env(false).build().unwrap()
}

/// The rules of the tests: `/a/*` and `/b/*`, each per IP.
fn rules(a: &str, b: &str) -> LimiterBuilder {
    Limiter::builder()
        .route("/a/*", Policy::named("a").per_ip(a))
        .route("/b/*", Policy::named("b").per_ip(b))
}

/// The status and `RateLimit-Policy` header of a GET of `path` through `layer`.
async fn get(layer: &RateLimitLayer, path: &str) -> (u16, String) {
    let svc = layer.layer(service_fn(common::echo));
    let response = svc.oneshot(request(path, Some(PEER), None)).await.unwrap();
    let policy = response
        .headers()
        .get("ratelimit-policy")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (response.status().as_u16(), policy)
}

/// The statuses of `n` GETs of `path` through `layer`.
async fn statuses(layer: &RateLimitLayer, path: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(layer, path).await.0);
    }
    out
}

/// The quota of the first limit of the `i`-th rule the limiter describes.
fn quota(limiter: &Limiter, i: usize) -> String {
    limiter.describe()[i].limits[0]
        .limit
        .unwrap()
        .quota()
        .to_string()
}

fn times(status: u16, n: usize) -> Vec<u16> {
    vec![status; n]
}

#[tokio::test]
async fn a_changed_limit_applies_to_the_next_request_and_keeps_what_was_counted() {
    let limiter = limiter(rules("5/min", "5/min"));
    let layer = limiter.layer();
    assert_eq!(statuses(&layer, "/a/x", 3).await, times(200, 3));

    // Lowered to 3: the 3 already counted fill it.
    limiter.reload(rules("3/min", "5/min")).unwrap();
    let (status, policy) = get(&layer, "/a/x").await;
    assert_eq!(status, 429);
    assert_eq!(policy, "\"a-ip\";q=3;w=60");

    // Raised to 6: 3 more, no more.
    limiter.reload(rules("6/min", "5/min")).unwrap();
    let (status, policy) = get(&layer, "/a/x").await;
    assert_eq!((status, policy.as_str()), (200, "\"a-ip\";q=6;w=60"));
    assert_eq!(statuses(&layer, "/a/x", 3).await, [200, 200, 429]);
    assert_eq!(
        quota(&limiter, 0),
        "6/min",
        "describe shows the rules in force"
    );
}

/// The status and `Retry-After` of a GET of `path` through `layer`.
async fn get_retry(layer: &RateLimitLayer, path: &str) -> (u16, String) {
    let svc = layer.layer(service_fn(common::echo));
    let response = svc.oneshot(request(path, Some(PEER), None)).await.unwrap();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (response.status().as_u16(), retry)
}

/// Seed 004's report: a token bucket of burst 2 whose sustained rate a reload raises from
/// 5/min to 60/min frees a limited client within the new interval (a second), as raising a
/// quota should; what it had counted carries over in tokens. Before, the client was told
/// to retry in 21 s, and refused again 2 s later.
#[tokio::test]
async fn raising_a_token_buckets_sustained_rate_frees_a_limited_client_within_the_new_interval() {
    let (clock, store) = clock_and_store();
    let bucket = |sustained| {
        Limiter::builder().route(
            "/a/*",
            Policy::named("a").per_ip(Rate::token_bucket(sustained, 2)),
        )
    };
    let limiter = bucket("5/min")
        .store(store)
        .read_env(false)
        .build()
        .unwrap();
    let layer = limiter.layer();
    assert_eq!(get_retry(&layer, "/a/x").await.0, 200);
    assert_eq!(get_retry(&layer, "/a/x").await.0, 200);
    assert_eq!(get_retry(&layer, "/a/x").await, (429, "12".into()));

    clock.advance(std::time::Duration::from_secs(2));
    limiter.reload(bucket("60/min")).unwrap();
    let (status, retry) = get_retry(&layer, "/a/x").await;
    assert_eq!((status, retry.as_str()), (429, "1"));
    clock.advance(std::time::Duration::from_secs(1));
    assert_eq!(get_retry(&layer, "/a/x").await.0, 200);
}

#[tokio::test]
async fn a_limit_the_reload_leaves_unchanged_keeps_its_count() {
    let limiter = limiter(rules("3/min", "5/min"));
    let layer = limiter.layer();
    assert_eq!(statuses(&layer, "/a/x", 2).await, times(200, 2));

    // `b` changes, `a` does not: `a` has 1 left, not 3.
    limiter.reload(rules("3/min", "50/min")).unwrap();
    assert_eq!(statuses(&layer, "/a/x", 2).await, [200, 429]);

    // A reload of the same rules changes nothing either.
    limiter.reload(rules("3/min", "50/min")).unwrap();
    assert_eq!(get(&layer, "/a/x").await.0, 429);
}

#[tokio::test]
async fn a_new_window_or_a_renamed_policy_starts_afresh() {
    let limiter = limiter(rules("2/min", "5/min"));
    let layer = limiter.layer();
    assert_eq!(statuses(&layer, "/a/x", 3).await, [200, 200, 429]);
    // Another window: the store discards the minute's counts.
    limiter.reload(rules("2/h", "5/min")).unwrap();
    assert_eq!(statuses(&layer, "/a/x", 3).await, [200, 200, 429]);
    // Another name: another bucket.
    limiter
        .reload(
            Limiter::builder()
                .route("/a/*", Policy::named("a2").per_ip("2/h"))
                .route("/b/*", Policy::named("b").per_ip("5/min")),
        )
        .unwrap();
    assert_eq!(statuses(&layer, "/a/x", 3).await, [200, 200, 429]);
}

#[tokio::test]
async fn rules_that_do_not_build_are_refused_and_the_running_ones_stay() {
    let limiter = limiter(rules("3/min", "5/min"));
    let layer = limiter.layer();
    assert_eq!(get(&layer, "/a/x").await.0, 200);

    let bad_rate = limiter.reload(rules("3/fortnight", "5/min"));
    assert!(
        matches!(bad_rate, Err(BuildError::Rate { .. })),
        "{bad_rate:?}"
    );
    let tie = limiter.reload(
        Limiter::builder()
            .route("/a/*", Policy::named("a").per_ip("1/min"))
            .route("/a/*", Policy::named("other").per_ip("1/min")),
    );
    assert!(matches!(tie, Err(BuildError::Route(_))), "{tie:?}");
    let user =
        limiter.reload(Limiter::builder().route("/a/*", Policy::named("a").per_user("1/min")));
    assert!(
        matches!(user, Err(BuildError::NoIdentity { .. })),
        "{user:?}"
    );

    // Settings fixed at build: refused by name.
    let store = limiter.reload(rules("1/min", "1/min").store(MemoryStore::new()));
    assert!(
        matches!(store, Err(BuildError::NotReloadable { setting: "store" })),
        "{store:?}"
    );
    let identity = limiter.reload(rules("1/min", "1/min").identity(|_| None));
    assert!(matches!(
        identity,
        Err(BuildError::NotReloadable {
            setting: "identity"
        })
    ));

    // Still 3/min, with its count: 2 more.
    assert_eq!(statuses(&layer, "/a/x", 3).await, [200, 200, 429]);
    assert_eq!(quota(&limiter, 0), "3/min");
}

/// A refusal hook that answers 418, to tell it from the limiter's own 429.
fn teapot() -> LimiterBuilder {
    rules("1/min", "1/min").refusal_response(|_, _| {
        let mut response = Response::new(bytes::Bytes::new());
        *response.status_mut() = StatusCode::IM_A_TEAPOT;
        response
    })
}

/// What the layer does with a decision (in the request, in the response) and how it
/// answers a refusal are fixed at build like the store: a reload that sets one is refused
/// by name, and nothing of it applies (before, the rules applied and these were ignored).
#[tokio::test]
async fn a_reload_that_sets_how_decisions_are_delivered_is_refused_by_name() {
    let limiter = limiter(rules("1/min", "5/min"));
    let layer = limiter.layer();
    let fixed = [
        (
            "decision_in_request",
            rules("1/min", "1/min").decision_in_request(false),
        ),
        (
            "decision_in_response",
            rules("1/min", "1/min").decision_in_response(true),
        ),
        ("refusal_response", teapot()),
        ("store_name", rules("1/min", "1/min").store_name("other")),
    ];
    for (name, reload) in fixed {
        let refused = limiter.reload(reload);
        assert!(
            matches!(refused, Err(BuildError::NotReloadable { setting }) if setting == name),
            "{name}: {refused:?}"
        );
    }
    // The same value the limiter runs with is refused too: a setting is fixed, not compared.
    let same = limiter.reload(rules("1/min", "5/min").decision_in_request(true));
    assert!(
        matches!(
            same,
            Err(BuildError::NotReloadable {
                setting: "decision_in_request"
            })
        ),
        "{same:?}"
    );

    // Nothing applied: still 5/min on /b, refused with the limiter's own 429, and no
    // decision in the response.
    assert_eq!(quota(&limiter, 1), "5/min");
    let svc = layer.layer(service_fn(common::echo));
    let _ = svc.clone().oneshot(request("/a/x", Some(PEER), None)).await;
    let refused = svc
        .oneshot(request("/a/x", Some(PEER), None))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused
        .extensions()
        .get::<tollgate::RateLimitDecision>()
        .is_none());
}

/// Code a file reload adds (`reload_config_with`'s customization) may not set them either.
#[test]
fn a_file_reload_whose_code_sets_a_refusal_hook_is_refused() {
    let config = Config::from_yaml(
        "routes:\n  - path: /a/*\n    name: a\n    limits:\n      - { limit: 3/min }\n",
    )
    .unwrap();
    let limiter = limiter(rules("1/min", "1/min"));
    let refused = limiter.reload_config_with(&config, "<yaml>", |_| teapot());
    assert!(
        matches!(&refused, Err(ConfigError::Invalid { source, .. }) if matches!(**source, BuildError::NotReloadable { setting: "refusal_response" })),
        "{refused:?}"
    );
    assert_eq!(quota(&limiter, 0), "1/min");
}

#[tokio::test]
async fn a_reload_may_add_and_remove_routes_and_add_buckets_but_not_drop_one() {
    let limiter = limiter(rules("1/min", "1/min").bucket("sign-in", "2/min"));
    let layer = limiter.layer();
    assert_eq!(limiter.classify(&http::Method::GET, "/c/x"), None);
    assert!(limiter.check("sign-in", "ann").await.unwrap().allowed);

    limiter
        .reload(
            Limiter::builder()
                .route("/c/*", Policy::named("c").per_ip("1/min"))
                .bucket("sign-in", "2/min"),
        )
        .unwrap();
    assert_eq!(
        limiter.classify(&http::Method::GET, "/c/x").as_deref(),
        Some("c")
    );
    assert_eq!(statuses(&layer, "/c/x", 2).await, [200, 429]);
    // `/a` has no rule now: unlimited.
    assert_eq!(statuses(&layer, "/a/x", 3).await, times(200, 3));
    // The bucket kept its count: 1 of 2 left.
    assert!(limiter.check("sign-in", "ann").await.unwrap().allowed);
    assert!(!limiter.check("sign-in", "ann").await.unwrap().allowed);

    // Code checks the bucket by name: rules without it are refused, and it stays.
    assert!(matches!(
        limiter.reload(rules("1/min", "1/min").bucket("sign-up", "2/min")),
        Err(BuildError::DirectBucketDropped { bucket }) if bucket == "sign-in"
    ));
    assert!(!limiter.check("sign-in", "ann").await.unwrap().allowed);
    assert!(matches!(
        limiter.check("sign-up", "ann").await,
        Err(CheckError::UnknownBucket(_))
    ));
    // Its limit may change.
    limiter
        .reload(rules("1/min", "1/min").bucket("sign-in", "3/min"))
        .unwrap();
    assert!(limiter.check("sign-in", "ann").await.unwrap().allowed);
}

#[tokio::test]
async fn per_route_policies_from_code_survive_and_see_the_new_global_limits() {
    let rest = || Policy::named("rest").per_ip("1/min");
    let limiter = limiter(
        rules("5/min", "5/min")
            .default_policy(rest())
            .global("100/min"),
    );
    let chat = limiter.policy_at("GET /chat", Policy::named("chat").per_ip("2/min"));
    let central = limiter.layer();
    let (status, policy) = get(&chat, "/chat").await;
    assert_eq!(status, 200);
    assert_eq!(policy, "\"chat-ip\";q=2;w=60, \"global\";q=100;w=60");

    limiter
        .reload(
            rules("5/min", "5/min")
                .default_policy(rest())
                .global("50/min"),
        )
        .unwrap();
    // Still the route's own policy (and its count), with the new global limit.
    let (status, policy) = get(&chat, "/chat").await;
    assert_eq!(status, 200);
    assert_eq!(policy, "\"chat-ip\";q=2;w=60, \"global\";q=50;w=60");
    assert_eq!(get(&chat, "/chat").await.0, 429);
    // The central layer still leaves the route to it: through both layers, the chat
    // policy refuses (its own headers), and the class keeps its one request for other
    // paths. (Without `MatchedPath` the class is charged provisionally and the route's
    // layer takes the charge over.)
    let both = central.layer(chat.layer(service_fn(common::echo)));
    let response = both
        .oneshot(request("/chat", Some(PEER), None))
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let shown = response.headers().get("ratelimit-policy").unwrap();
    assert_eq!(shown, "\"chat-ip\";q=2;w=60, \"global\";q=50;w=60");
    assert_eq!(statuses(&central, "/other", 2).await, [200, 429]);
    assert!(limiter.describe().iter().any(|rule| rule.policy == "chat"));
}

#[tokio::test]
async fn a_reload_is_checked_against_what_code_declared() {
    let limiter = limiter(rules("5/min", "5/min"));
    let _chat = limiter.policy(Policy::named("chat").bucket("shared").per_ip("2/min"));
    let _guard = limiter.guard(Policy::named("guesses").per_ip("20/min"));

    let mismatch = limiter.reload(
        rules("5/min", "5/min").route("/c/*", Policy::named("c").bucket("shared").per_ip("3/min")),
    );
    assert!(
        matches!(mismatch, Err(BuildError::SharedBucketMismatch { .. })),
        "{mismatch:?}"
    );
    let guard_name = limiter
        .reload(rules("5/min", "5/min").route("/c/*", Policy::named("guesses").per_ip("20/min")));
    assert!(
        matches!(guard_name, Err(BuildError::DuplicateBucket { .. })),
        "{guard_name:?}"
    );
    // The same limits under the shared name are fine.
    limiter
        .reload(
            rules("5/min", "5/min")
                .route("/c/*", Policy::named("c").bucket("shared").per_ip("2/min")),
        )
        .unwrap();
}

#[tokio::test]
async fn a_required_default_rule_stays_required() {
    let limiter = limiter(
        rules("5/min", "5/min")
            .default_policy(Policy::named("rest").per_ip("9/min"))
            .require_default(),
    );
    assert!(matches!(
        limiter.reload(rules("5/min", "5/min")),
        Err(BuildError::NoDefaultRule)
    ));
    limiter
        .reload(rules("5/min", "5/min").default_policy(Policy::named("rest").per_ip("10/min")))
        .unwrap();
}

#[tokio::test]
async fn shadow_mode_is_reloadable() {
    let limiter = limiter(rules("1/min", "1/min"));
    let layer = limiter.layer();
    assert_eq!(statuses(&layer, "/a/x", 2).await, [200, 429]);
    limiter
        .reload(rules("1/min", "1/min").shadow(true))
        .unwrap();
    assert_eq!(statuses(&layer, "/a/x", 2).await, times(200, 2));
    assert_eq!(limiter.stats().would_refuse, 2);
}

#[tokio::test]
async fn a_request_in_flight_finishes_under_the_rules_it_started_with() {
    // `a` gives its charge back for a 404; the rules the handler reloads do not.
    let refunding = |quota: &str| {
        Limiter::builder().route(
            "/a/*",
            Policy::named("a")
                .per_ip(quota)
                .refund_if(|status| status == StatusCode::NOT_FOUND),
        )
    };
    let limiter = limiter(refunding("2/min"));
    let reloading = limiter.clone();
    let handler = service_fn(move |_req: Request<Body>| {
        let limiter = reloading.clone();
        async move {
            limiter
                .reload(Limiter::builder().route("/a/*", Policy::named("a").per_ip("2/min")))
                .unwrap();
            let mut response = Response::new(Body::new(bytes::Bytes::new()));
            *response.status_mut() = StatusCode::NOT_FOUND;
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let svc = limiter.layer().layer(handler);
    let response = svc
        .clone()
        .oneshot(request("/a/x", Some(PEER), None))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    // Given back under the rules it started with: the budget is still whole.
    let remaining = |r: &Response<_>| r.headers()["ratelimit"].to_str().unwrap().to_string();
    assert!(
        remaining(&response).starts_with("\"a-ip\";r=2;"),
        "{}",
        remaining(&response)
    );
    let response = svc
        .oneshot(request("/a/x", Some(PEER), None))
        .await
        .unwrap();
    // The next request ran under the new rules: charged, not given back.
    assert!(
        remaining(&response).starts_with("\"a-ip\";r=1;"),
        "{}",
        remaining(&response)
    );
    let arc: Arc<str> = limiter.classify(&http::Method::GET, "/a/x").unwrap();
    assert_eq!(&*arc, "a");
}

/// The field, line and column a reload refused as `NotReloadable` names.
fn not_reloadable_at(refused: &Result<(), ConfigError>) -> (&str, Option<usize>, Option<usize>) {
    match refused {
        Err(ConfigError::NotReloadable {
            field,
            line,
            column,
            ..
        }) => (field.as_str(), *line, *column),
        other => panic!("{other:?}"),
    }
}

/// One rule in a file: `/a/*`, named `a`, 3 a minute per IP.
const GOOD: &str =
    "routes:\n  - path: /a/*\n    name: a\n    limits:\n      - { per: ip, limit: 3/min }\n";

/// A rules file holding `text`, in a directory of its own that the `TempDir` removes.
fn limits_file(text: &str) -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new("reload").unwrap();
    let path = dir.path().join("limits.yaml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn a_file_that_does_not_load_or_build_is_refused_with_its_error() {
    let (_dir, path) = limits_file(GOOD);
    let limiter = Limiter::from_config(&path).unwrap();

    std::fs::write(&path, "routes:\n  - path: /a/*\n    name: a\n    limits:\n      - { per: ip, limit: 3/fortnight }\n").unwrap();
    let parse = limiter.reload_file(&path);
    assert!(
        matches!(parse, Err(ConfigError::Parse { line: Some(5), .. })),
        "{parse:?}"
    );
    std::fs::write(
        &path,
        format!(
            "{GOOD}  - path: /a/*\n    name: b\n    limits:\n      - {{ per: ip, limit: 1/min }}\n"
        ),
    )
    .unwrap();
    let tie = limiter.reload_file(&path);
    assert!(
        matches!(&tie, Err(ConfigError::Invalid { line: Some(6), .. })),
        "{tie:?}"
    );
    std::fs::write(
        &path,
        format!("{GOOD}store: {{ kind: memory, max_entries: 5000 }}\n"),
    )
    .unwrap();
    let store = limiter.reload_file(&path);
    assert_eq!(not_reloadable_at(&store), ("store", Some(6), Some(8)));
    assert_eq!(quota(&limiter, 0), "3/min");

    std::fs::write(&path, GOOD.replace("3/min", "4/min")).unwrap();
    limiter.reload_file(&path).unwrap();
    assert_eq!(quota(&limiter, 0), "4/min");

    // An emptied file (or one left with comments) would lift every limit at once: refused,
    // as the watcher refuses it, and the rules stay.
    for emptied in ["", "# routes moved\n"] {
        std::fs::write(&path, emptied).unwrap();
        let empty = limiter.reload_file(&path);
        assert!(
            matches!(empty, Err(ConfigError::NoLimits { .. })),
            "{empty:?}"
        );
        assert_eq!(quota(&limiter, 0), "4/min");
    }
    // Emptied, a file that also held settings lacks them too: what is said is that it
    // declares no limits (it was refused as a changed `headers:`).
    std::fs::write(
        &path,
        format!("headers: {{ x_ratelimit: seconds }}\n{GOOD}"),
    )
    .unwrap();
    let with_settings = Limiter::from_config(&path).unwrap();
    std::fs::write(&path, "").unwrap();
    let empty = with_settings.reload_file(&path);
    assert!(
        matches!(empty, Err(ConfigError::NoLimits { .. })),
        "{empty:?}"
    );
    // A limiter whose file never declared limits reloads another such file.
    std::fs::write(&path, "").unwrap();
    let settings_only = Limiter::from_config(&path).unwrap();
    std::fs::write(&path, "# still nothing\n").unwrap();
    settings_only.reload_file(&path).unwrap();
}

#[test]
fn a_reload_from_a_config_keeps_what_code_adds() {
    let config = Config::from_yaml(
        "routes:\n  - path: /a/*\n    name: a\n    limits:\n      - { limit: 3/min }\n",
    )
    .unwrap();
    let limiter = Limiter::builder()
        .read_env(false)
        .route("/a/*", Policy::named("a").per_ip("1/min"))
        .build()
        .unwrap();
    limiter
        .reload_config_with(&config, "<yaml>", |rules| rules.global("100/min"))
        .unwrap();
    let described: Vec<String> = limiter
        .describe()
        .iter()
        .map(|r| r.policy.clone())
        .collect();
    assert_eq!(described, ["a", "global"]);
    // Code that sets a fixed setting in the customization is refused too.
    let refused = limiter.reload_config_with(&config, "<yaml>", |rules| rules.enabled(false));
    assert!(
        matches!(&refused, Err(ConfigError::Invalid { source, .. }) if matches!(**source, BuildError::NotReloadable { setting: "enabled" })),
        "{refused:?}"
    );
}

#[test]
fn a_per_route_policy_may_not_take_a_direct_use_buckets_or_a_guards_name() {
    // Accepted, these broke every later reload, even of the limiter's own rules.
    let own = || {
        Limiter::builder()
            .read_env(false)
            .route("/api/*", Policy::named("api").per_ip("5/min"))
            .bucket("b", "1/min")
    };
    let limiter = own().build().unwrap();
    let _guard = limiter
        .try_guard(Policy::named("g").per_ip("1/min"))
        .unwrap();
    for name in ["b", "g"] {
        let at = limiter.try_policy_at("GET /api/a", Policy::named(name).per_ip("1/min"));
        let plain = limiter.try_policy(Policy::named(name).per_ip("1/min"));
        for err in [at.unwrap_err(), plain.unwrap_err()] {
            assert!(
                matches!(&err, BuildError::DuplicateBucket { name: n } if n == name),
                "{name}: {err}"
            );
        }
    }
    limiter.reload(own()).unwrap();
}

/// A per-key override that the reloaded rules would cost more than per request (every
/// request of that key refused, which `set_override` refuses to arrange) makes the reload
/// fail, naming the policy and the key; the running rules stay. Without the override the
/// same rules load.
#[tokio::test]
async fn a_reload_under_which_an_override_admits_nothing_is_refused() {
    let limiter = limiter(rules("5/min", "5/min"));
    let ip = PEER.split(':').next().unwrap();
    limiter
        .set_override(&tollgate::Key::ip(), ip, "3/min")
        .unwrap();
    let costly = || {
        Limiter::builder()
            .route("/a/*", Policy::named("a").per_ip("50/min").cost(4))
            .route("/b/*", Policy::named("b").per_ip("5/min"))
    };
    let err = limiter.reload(costly()).unwrap_err();
    assert!(
        matches!(
            &err,
            BuildError::CostExceedsOverride { policy, kind, key, cost: 4, capacity: 3 }
                if policy == "a" && kind == "ip" && key == ip
        ),
        "{err}"
    );
    // The running rules stay: 3 for this client (its override), one at a time.
    let layer = limiter.layer();
    assert_eq!(statuses(&layer, "/a/x", 4).await, [200, 200, 200, 429]);
    assert!(limiter.remove_override(&tollgate::Key::ip(), ip));
    limiter.reload(costly()).unwrap();
}

/// A limiter built from a file reloads, through `reload_config_with`, a configuration
/// that declares limits; one that declares none is refused as an emptied file, and the
/// rules stay.
#[test]
fn reload_config_with_tells_a_file_with_limits_from_an_emptied_one() {
    let (_dir, path) = limits_file(GOOD);
    let limiter = Limiter::from_config(&path).unwrap();
    let file = path.display().to_string();
    let raised = Config::from_yaml(&GOOD.replace("3/min", "4/min")).unwrap();
    limiter
        .reload_config_with(&raised, &file, |rules| rules)
        .unwrap();
    assert_eq!(quota(&limiter, 0), "4/min");
    let emptied = Config::from_yaml("# routes moved\n").unwrap();
    let refused = limiter.reload_config_with(&emptied, &file, |rules| rules);
    assert!(
        matches!(&refused, Err(ConfigError::NoLimits { file: f }) if *f == file),
        "{refused:?}"
    );
    assert_eq!(quota(&limiter, 0), "4/min");
}

/// A fixed setting changed to an empty value (`enabled: ~`) is named at that value's line
/// and column, not at the top of the file.
#[test]
fn a_setting_emptied_by_a_reload_is_located_at_its_value() {
    let (_dir, path) = limits_file(&format!("{GOOD}enabled: true\n"));
    let limiter = Limiter::from_config(&path).unwrap();
    std::fs::write(&path, format!("{GOOD}enabled: ~\n")).unwrap();
    let refused = limiter.reload_file(&path);
    assert_eq!(not_reloadable_at(&refused), ("enabled", Some(6), Some(10)));
}

/// A file emptied of everything, reloaded into a limiter whose file held settings and no
/// limits, names the setting that changed at the top of the file (it has no line of its
/// own there): `limits.yaml:1:1: headers: cannot change ...`.
#[test]
fn an_emptied_settings_file_names_the_setting_at_the_top_of_the_file() {
    let (_dir, path) = limits_file("headers: { x_ratelimit: seconds }\n");
    let limiter = Limiter::from_config(&path).unwrap();
    std::fs::write(&path, "").unwrap();
    let refused = limiter.reload_file(&path);
    assert_eq!(not_reloadable_at(&refused), ("headers", Some(1), Some(1)));
}
