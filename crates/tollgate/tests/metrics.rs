//! Every metric of the `metrics` feature moves as `tollgate::observe` documents it, read
//! with metrics-util's debugging recorder (each snapshot reads what moved since the last).

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use tollgate::{
    Batch, BoxFuture, Decision, Key, Limiter, LimiterBuilder, MemoryStore, Policy, Store,
    StoreError, StoreMode,
};
use tower::{service_fn, ServiceBuilder, ServiceExt};

use common::{answering, request, Down, Recording};

/// What moved since the last snapshot: `name{label=value,...}` → value (counters: by how
/// much; histograms: their number of samples; gauges: their value if not 0, the debugging
/// recorder setting them back to 0 when it reads them).
fn moved(snapshotter: &Snapshotter) -> BTreeMap<String, f64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let (kind, key) = (key.kind(), key.key());
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            let value = match (kind, value) {
                (MetricKind::Counter, DebugValue::Counter(0)) => return None,
                (_, DebugValue::Counter(n)) => n as f64,
                (_, DebugValue::Gauge(g)) if g.into_inner() == 0.0 => return None,
                (_, DebugValue::Gauge(g)) => g.into_inner(),
                (_, DebugValue::Histogram(h)) if h.is_empty() => return None,
                (_, DebugValue::Histogram(h)) => h.len() as f64,
            };
            Some((name, value))
        })
        .collect()
}

fn expect(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| ((*k).to_string(), *v)).collect()
}

/// Builds a limiter under `recorder` (its metrics are registered at build).
fn build(recorder: &DebuggingRecorder, builder: LimiterBuilder) -> Limiter {
    metrics::with_local_recorder(recorder, || builder.read_env(false).build().unwrap())
}

async fn send(limiter: &Limiter, ip: [u8; 4], user: Option<&str>) -> StatusCode {
    let handler = service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let svc = ServiceBuilder::new()
        .layer(limiter.layer())
        .service(handler);
    let mut req = Request::get("/api/items");
    if let Some(user) = user {
        req = req.header("x-user", user);
    }
    let mut req = req.body(Full::new(Bytes::new())).unwrap();
    req.extensions_mut().insert(SocketAddr::from((ip, 4000)));
    svc.oneshot(req).await.unwrap().status()
}

#[tokio::test]
async fn requests_count_per_bucket_and_outcome_and_blame_the_refusing_bucket() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let limiter = build(
        &recorder,
        Limiter::builder()
            .store(MemoryStore::new())
            .identity(common::user_header)
            .route(
                "/api/*",
                Policy::named("default").per_ip("20/min").per_user("3/min"),
            )
            .global("1000/min"),
    );
    // Registered at build, nothing moved yet; the memory store is not on a fallback.
    assert_eq!(moved(&snapshotter), expect(&[]));

    // Three admitted for alice: every bucket she spent counts one admission each.
    for _ in 0..3 {
        assert_eq!(send(&limiter, [203, 0, 113, 7], Some("alice")).await, 200);
    }
    // The third left 0 of 3 in her user bucket: near the limit (less than 10% left).
    assert_eq!(
        moved(&snapshotter),
        expect(&[
            (
                "tollgate_near_limit_total{policy=default,bucket=default:user}",
                1.0
            ),
            (
                "tollgate_requests_total{policy=default,bucket=default:ip,outcome=admitted}",
                3.0
            ),
            (
                "tollgate_requests_total{policy=default,bucket=default:user,outcome=admitted}",
                3.0
            ),
            (
                "tollgate_requests_total{policy=global,bucket=global,outcome=admitted}",
                3.0
            ),
        ])
    );

    // The fourth: refused by the user bucket only (the others admitted it, and are not
    // blamed or charged).
    assert_eq!(send(&limiter, [203, 0, 113, 7], Some("alice")).await, 429);
    assert_eq!(
        moved(&snapshotter),
        expect(&[(
            "tollgate_requests_total{policy=default,bucket=default:user,outcome=refused}",
            1.0
        )])
    );
    assert_eq!(limiter.stats().refused, 1);
}

#[tokio::test]
async fn shadow_refusals_and_overrides_have_their_own_series() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let limiter = build(
        &recorder,
        Limiter::builder()
            .store(MemoryStore::new())
            .route("/api/*", Policy::named("trial").per_ip("1/min").shadow()),
    );
    assert_eq!(send(&limiter, [192, 0, 2, 1], None).await, 200);
    assert_eq!(send(&limiter, [192, 0, 2, 1], None).await, 200);
    assert_eq!(
        moved(&snapshotter),
        expect(&[
            // The first left 0 of 1.
            (
                "tollgate_near_limit_total{policy=trial,bucket=trial:ip}",
                1.0
            ),
            (
                "tollgate_requests_total{policy=trial,bucket=trial:ip,outcome=admitted}",
                1.0
            ),
            (
                "tollgate_requests_total{policy=trial,bucket=trial:ip,outcome=shadow_refused}",
                1.0
            ),
        ])
    );

    let limiter = build(
        &recorder,
        Limiter::builder()
            .store(MemoryStore::new())
            .route("/api/*", Policy::named("default").per_ip("100/min")),
    );
    let _ = moved(&snapshotter);
    limiter
        .set_override(&Key::ip(), "192.0.2.9", "1/min")
        .unwrap();
    assert_eq!(send(&limiter, [192, 0, 2, 9], None).await, 200);
    assert_eq!(send(&limiter, [192, 0, 2, 9], None).await, 429);
    let moved = moved(&snapshotter);
    assert_eq!(
        moved.get("tollgate_requests_total{policy=default,bucket=override:ip,outcome=refused}"),
        Some(&1.0),
        "{moved:#?}"
    );
    assert_eq!(
        moved.get("tollgate_requests_total{policy=default,bucket=default:ip,outcome=admitted}"),
        Some(&1.0),
        "{moved:#?}"
    );
    // Labels name configuration only, never a client's key.
    assert!(moved.keys().all(|k| !k.contains("192.0.2.9")), "{moved:#?}");
}

/// A store that waits (no synchronous answer), says it is on a fallback while `fallback`
/// is set and has switched to it `switches` times, and answers from memory.
#[derive(Debug, Clone)]
struct Switching {
    memory: Recording,
    fallback: Arc<AtomicBool>,
    switches: Arc<AtomicU64>,
}

/// A [`Switching`] store on the shared side, and a limiter on it (`/api/*`, 100 a minute
/// per IP) built under `recorder`.
fn switching(recorder: &DebuggingRecorder) -> (Switching, Limiter) {
    let store = Switching::new();
    let limiter = build(
        recorder,
        Limiter::builder()
            .store(store.clone())
            .route("/api/*", Policy::named("default").per_ip("100/min")),
    );
    (store, limiter)
}

impl Switching {
    /// On the primary, never switched yet.
    fn new() -> Self {
        Self {
            memory: Recording::new(MemoryStore::new()),
            fallback: Arc::default(),
            switches: Arc::default(),
        }
    }

    /// Switches to the fallback (counted), or back.
    fn set(&self, fallback: bool) {
        if fallback && !self.fallback.swap(true, Ordering::Relaxed) {
            self.switches.fetch_add(1, Ordering::Relaxed);
        }
        if !fallback {
            self.fallback.store(false, Ordering::Relaxed);
        }
    }
}

impl Store for Switching {
    fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
        self.memory.apply(batch)
    }

    fn mode(&self) -> StoreMode {
        if self.fallback.load(Ordering::Relaxed) {
            StoreMode::Fallback
        } else {
            StoreMode::Shared
        }
    }

    fn fallbacks(&self) -> u64 {
        self.switches.load(Ordering::Relaxed)
    }
}

#[tokio::test]
async fn a_store_that_waits_is_timed_and_its_fallback_shows() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (store, limiter) = switching(&recorder);
    let _ = moved(&snapshotter);
    assert_eq!(send(&limiter, [198, 51, 100, 1], None).await, 200);
    let first = moved(&snapshotter);
    assert_eq!(first["tollgate_store_duration_seconds{store=shared}"], 1.0);
    assert_eq!(first.get("tollgate_store_fallback{store=shared}"), None);

    store.set(true);
    assert_eq!(send(&limiter, [198, 51, 100, 1], None).await, 200);
    let second = moved(&snapshotter);
    assert_eq!(second["tollgate_store_fallback{store=shared}"], 1.0);
    assert_eq!(second["tollgate_store_duration_seconds{store=shared}"], 1.0);
    assert_eq!(second["tollgate_store_fallbacks_total{store=shared}"], 1.0);

    // Each switch counts once: not every answer from the fallback, nor again after an
    // answer that still read the primary's mode (a call answered as the store left it:
    // a review saw one outage counted twice), but again after a return.
    assert_eq!(send(&limiter, [198, 51, 100, 1], None).await, 200);
    store.fallback.store(false, Ordering::Relaxed); // the mode read late, no new switch
    assert_eq!(send(&limiter, [198, 51, 100, 1], None).await, 200);
    store.fallback.store(true, Ordering::Relaxed);
    assert_eq!(send(&limiter, [198, 51, 100, 1], None).await, 200);
    let third = moved(&snapshotter);
    assert_eq!(
        third.get("tollgate_store_fallbacks_total{store=shared}"),
        None
    );
    store.set(false);
    assert_eq!(send(&limiter, [198, 51, 100, 1], None).await, 200);
    store.set(true);
    assert_eq!(send(&limiter, [198, 51, 100, 1], None).await, 200);
    let fourth = moved(&snapshotter);
    assert_eq!(fourth["tollgate_store_fallbacks_total{store=shared}"], 1.0);
    // A switch and its return between two answers (a pause shorter than a request) show.
    store.set(false);
    store.set(true);
    store.set(false);
    assert_eq!(send(&limiter, [198, 51, 100, 1], None).await, 200);
    let fifth = moved(&snapshotter);
    assert_eq!(fifth["tollgate_store_fallbacks_total{store=shared}"], 1.0);
    assert_eq!(fifth.get("tollgate_store_fallback{store=shared}"), None);
}

/// A handler's own charge ([`Limiter::check`]) on a store that waits is timed, and shows
/// the store's fallback, as the middleware's calls are. (A review: 25 sign-in charges on
/// Redis moved the histogram by none.)
#[tokio::test]
async fn a_handler_s_charge_on_a_store_that_waits_is_timed_and_its_fallback_shows() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let store = Switching::new();
    let limiter = build(
        &recorder,
        Limiter::builder()
            .store(store.clone())
            .route("/api/*", Policy::named("default").per_ip("100/min"))
            .bucket("sign-in", "5/min"),
    );
    let _ = moved(&snapshotter);
    store.set(true);
    for _ in 0..3 {
        assert!(
            limiter
                .check("sign-in", "a@example.com")
                .await
                .unwrap()
                .allowed
        );
    }
    let after = moved(&snapshotter);
    assert_eq!(after["tollgate_store_duration_seconds{store=shared}"], 3.0);
    assert_eq!(after["tollgate_store_fallback{store=shared}"], 1.0);
    assert_eq!(after["tollgate_store_fallbacks_total{store=shared}"], 1.0);
}

/// A guard shares its limiter's store, and its metrics: a switch of that store to its
/// fallback counts once, not once for the limiter and once for each guard that saw it (a
/// review: the demo, whose admin router has a guard, counted every outage twice).
#[tokio::test]
async fn a_switch_seen_by_a_limiter_and_its_guard_counts_once() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (store, limiter) = switching(&recorder);
    let guard = metrics::with_local_recorder(&recorder, || {
        limiter.guard(Policy::named("failures").per_ip("10/min"))
    });
    let _ = moved(&snapshotter);
    store.set(true);
    for _ in 0..3 {
        let handler = service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
        let svc = ServiceBuilder::new()
            .layer(limiter.layer())
            .layer(guard.clone())
            .service(handler);
        let mut req = Request::get("/api/items")
            .body(Full::new(Bytes::new()))
            .unwrap();
        req.extensions_mut()
            .insert(SocketAddr::from(([198, 51, 100, 2], 4000)));
        assert_eq!(svc.oneshot(req).await.unwrap().status(), 200);
    }
    let seen = moved(&snapshotter);
    assert_eq!(
        seen["tollgate_store_fallbacks_total{store=shared}"], 1.0,
        "{seen:#?}"
    );
}

#[tokio::test]
async fn store_errors_count_under_the_stores_name() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let limiter = build(
        &recorder,
        Limiter::builder()
            .store(Down)
            .store_name("redis-main")
            .route("/api/*", Policy::named("default").per_ip("100/min")),
    );
    let _ = moved(&snapshotter);
    // Fails open by default: admitted without headers.
    assert_eq!(send(&limiter, [198, 51, 100, 2], None).await, 200);
    assert_eq!(send(&limiter, [198, 51, 100, 2], None).await, 200);
    let moved = moved(&snapshotter);
    assert_eq!(moved["tollgate_store_errors_total{store=redis-main}"], 2.0);
    assert_eq!(
        moved["tollgate_store_duration_seconds{store=redis-main}"],
        2.0
    );
    assert!(!moved
        .keys()
        .any(|k| k.starts_with("tollgate_requests_total")));

    let bad = Limiter::builder().store_name("redis main").build();
    assert!(matches!(bad, Err(tollgate::BuildError::BadName { .. })));
}

#[tokio::test]
async fn without_a_recorder_at_build_nothing_is_recorded() {
    let limiter = Limiter::builder()
        .read_env(false)
        .route("/api/*", Policy::named("default").per_ip("100/min"))
        .build()
        .unwrap();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    assert_eq!(send(&limiter, [198, 51, 100, 3], None).await, 200);
    assert!(moved(&snapshotter).is_empty());
}

/// Every reload tried counts once, by outcome, whichever way it came: rules in code, a
/// file, a file that cannot be read.
#[test]
fn reloads_count_by_outcome() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rules = |rate: &str| {
        Limiter::builder().route("/api/*", Policy::named("api").per_ip(rate.to_string()))
    };
    let limiter = build(&recorder, rules("10/min"));
    let dir = std::env::temp_dir().join(format!("tollgate-metrics-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("limits.yaml");
    std::fs::write(
        &file,
        "routes:\n  - { path: /api/*, limits: [{ per: ip, limit: 20/min }] }\n",
    )
    .unwrap();
    metrics::with_local_recorder(&recorder, || {
        limiter.reload(rules("50/min")).unwrap();
        assert!(limiter.reload(rules("50/fortnight")).is_err());
        limiter.reload_file(&file).unwrap();
        assert!(limiter.reload_file(dir.join("missing.yaml")).is_err());
    });
    assert_eq!(
        moved(&snapshotter),
        expect(&[
            ("tollgate_config_reloads_total{outcome=refused}", 2.0),
            ("tollgate_config_reloads_total{outcome=reloaded}", 2.0),
        ])
    );
    // A watcher's reload on demand: once each, the file read or not (it does not poll in
    // this test: once an hour).
    let watcher = tollgate::reload::ConfigWatcher::builder(&limiter, &file)
        .every(std::time::Duration::from_secs(3600))
        .start()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        watcher.reload_now().unwrap();
        std::fs::write(&file, "routes: [").unwrap();
        assert!(watcher.reload_now().is_err());
        std::fs::remove_file(&file).unwrap();
        assert!(watcher.reload_now().is_err());
    });
    watcher.stop();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        moved(&snapshotter),
        expect(&[
            ("tollgate_config_reloads_total{outcome=refused}", 2.0),
            ("tollgate_config_reloads_total{outcome=reloaded}", 1.0),
        ])
    );
}

/// Every metric is described (a Prometheus exporter's `# HELP`), and both series of the
/// reload counter exist from the build, at 0, for an alert on refused reloads to have a
/// series before the first reload.
#[test]
fn every_metric_is_described_and_reloads_start_at_zero() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _limiter = build(
        &recorder,
        Limiter::builder().route("/api/*", Policy::named("api").per_ip("10/min")),
    );
    let snapshot = snapshotter.snapshot().into_vec();
    let mut described: Vec<String> = snapshot
        .iter()
        .filter(|(_, _, description, _)| description.as_ref().is_some_and(|d| !d.is_empty()))
        .map(|(key, ..)| key.key().name().to_string())
        .collect();
    described.sort();
    described.dedup();
    assert_eq!(
        described,
        [
            "tollgate_config_reloads_total",
            "tollgate_near_limit_total",
            "tollgate_requests_total",
            "tollgate_store_duration_seconds",
            "tollgate_store_errors_total",
            "tollgate_store_fallback",
            "tollgate_store_fallbacks_total",
        ]
    );
    let mut reloads: Vec<String> = snapshot
        .iter()
        .filter(|(key, ..)| key.key().name() == "tollgate_config_reloads_total")
        .map(|(key, _, _, value)| {
            let outcome = key.key().labels().next().map(|l| l.value().to_string());
            format!("{}={value:?}", outcome.unwrap_or_default())
        })
        .collect();
    reloads.sort();
    assert_eq!(reloads, ["refused=Counter(0)", "reloaded=Counter(0)"]);
}

/// A response that does not count moves no counter: a 304 whose charge is given back
/// counted one admission (its charge), not two; a guard that counts only 401s counts a 401
/// once, when its response counts, and a 200 not at all.
#[tokio::test]
async fn a_charge_given_back_counts_no_second_admission() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let request = || request("/api/items", Some("192.0.2.1:4000"), None);
    let limiter = build(
        &recorder,
        Limiter::builder().store(MemoryStore::new()).route(
            "/api/*",
            Policy::named("etags")
                .per_ip("100/min")
                .refund_if(|s| s == StatusCode::NOT_MODIFIED),
        ),
    );
    let svc = ServiceBuilder::new()
        .layer(limiter.layer())
        .service(answering(StatusCode::NOT_MODIFIED));
    assert_eq!(svc.oneshot(request()).await.unwrap().status(), 304);
    assert_eq!(
        moved(&snapshotter),
        expect(&[(
            "tollgate_requests_total{policy=etags,bucket=etags:ip,outcome=admitted}",
            1.0
        )])
    );

    let limiter = build(&recorder, Limiter::builder().store(MemoryStore::new()));
    let guard = metrics::with_local_recorder(&recorder, || {
        limiter.guard(
            Policy::named("sign-in")
                .per_ip("100/min")
                .count_only_if(|s| s == StatusCode::UNAUTHORIZED),
        )
    });
    let _ = moved(&snapshotter);
    for (status, counted) in [(StatusCode::OK, 0.0), (StatusCode::UNAUTHORIZED, 1.0)] {
        let svc = ServiceBuilder::new()
            .layer(guard.clone())
            .service(answering(status));
        assert_eq!(svc.oneshot(request()).await.unwrap().status(), status);
        let admitted = "tollgate_requests_total{policy=sign-in,bucket=sign-in:ip,outcome=admitted}";
        assert_eq!(
            moved(&snapshotter).get(admitted).copied().unwrap_or(0.0),
            counted,
            "{status}"
        );
    }
}

/// A key refused because the bucket's share of the memory store is full of keys at their
/// limit is not over its own limit: it counts as `store_full`, not `refused`, through the
/// middleware and through a direct check alike (a handler may serve it otherwise, as the
/// demo's sign-in counts such e-mails per network).
#[tokio::test]
async fn a_key_the_store_has_no_room_for_counts_as_store_full() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let store = || MemoryStore::builder().max_entries(64).shards(1).build();
    let limiter = build(
        &recorder,
        Limiter::builder()
            .store(store())
            .route("/api/*", Policy::named("default").per_ip("1/min"))
            .bucket("otp", "1/min"),
    );
    // 64 keys at their limit fill each share.
    for i in 0..64u8 {
        assert_eq!(send(&limiter, [198, 51, 100, i], None).await, 200);
        assert!(
            limiter
                .check("otp", &format!("user{i}"))
                .await
                .unwrap()
                .allowed
        );
    }
    let _ = moved(&snapshotter);
    // Over its limit: refused.
    assert_eq!(send(&limiter, [198, 51, 100, 0], None).await, 429);
    assert!(!limiter.check("otp", "user0").await.unwrap().allowed);
    assert_eq!(
        moved(&snapshotter),
        expect(&[
            (
                "tollgate_requests_total{policy=default,bucket=default:ip,outcome=refused}",
                1.0
            ),
            (
                "tollgate_requests_total{policy=otp,bucket=otp,outcome=refused}",
                1.0
            ),
        ])
    );
    // A new key with no room: store_full.
    assert_eq!(send(&limiter, [203, 0, 113, 9], None).await, 429);
    let decision = limiter.check("otp", "someone-new").await.unwrap();
    assert_eq!(
        decision.buckets[0].refusal,
        Some(tollgate::Refusal::StoreFull)
    );
    assert_eq!(
        moved(&snapshotter),
        expect(&[
            (
                "tollgate_requests_total{policy=default,bucket=default:ip,outcome=store_full}",
                1.0
            ),
            (
                "tollgate_requests_total{policy=otp,bucket=otp,outcome=store_full}",
                1.0
            ),
        ])
    );
}

/// A guard spends no per-key overrides (they are its limiter's), so it registers no
/// `override:` series: a review saw `bucket="override:ip"` and `"override:network:48"`
/// series under the demo's `failed-auth` policy stay at 0 with an override set for the
/// client. The limiter's own policies keep theirs.
#[tokio::test]
async fn a_guard_registers_no_override_series() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let limiter = build(
        &recorder,
        Limiter::builder()
            .store(MemoryStore::new())
            .route("/api/*", Policy::named("default").per_ip("100/min")),
    );
    let _guard = metrics::with_local_recorder(&recorder, || {
        limiter.guard(Policy::failed_auth_per_ip("20/min"))
    });
    let mut buckets: Vec<String> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "tollgate_requests_total")
        .map(|(key, ..)| {
            let labels: Vec<String> = key
                .key()
                .labels()
                .filter(|l| l.key() != "outcome")
                .map(|l| l.value().to_string())
                .collect();
            labels.join(" ")
        })
        .collect();
    buckets.sort();
    buckets.dedup();
    assert_eq!(
        buckets,
        [
            "default default:ip",
            "default override:ip",
            "failed-auth failed-auth:ip",
        ]
    );
}
