//! The `DEBUG` span of each decision: `tollgate.decide`, with the route's policy, the
//! store's name and how long the store took. Alone in its binary (tracing caches callsite
//! interest process-wide).

mod common;

use std::sync::{Arc, Mutex};

use common::{echo, request, Recording};
use tollgate::{Limiter, MemoryStore, Policy};
use tower::{service_fn, ServiceBuilder, ServiceExt};

/// Records every span: its name and fields, as `name field=value ...`.
#[derive(Clone, Default)]
struct SpanLog(Arc<Mutex<Vec<String>>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }
}

impl tracing::Subscriber for SpanLog {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut text = span.metadata().name().to_string();
        span.record(&mut Fields(&mut text));
        let mut all = self.0.lock().unwrap();
        all.push(text);
        tracing::span::Id::from_u64(all.len() as u64)
    }
    fn record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut all = self.0.lock().unwrap();
        values.record(&mut Fields(&mut all[id.into_u64() as usize - 1]));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// The `tollgate.decide` spans made while `run` runs (on a runtime of its own, under a
/// [`SpanLog`]).
fn decide_spans(run: impl std::future::Future<Output = ()>) -> Vec<String> {
    let log = SpanLog::default();
    let spans = log.clone();
    tracing::subscriber::with_default(log, || {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(run);
    });
    let all = spans.0.lock().unwrap().clone();
    all.into_iter()
        .filter(|s| s.starts_with("tollgate.decide"))
        .collect()
}

#[test]
fn each_decision_has_a_debug_span_with_policy_store_and_latency() {
    let decides = decide_spans(async {
        for (store, name) in [
            (
                Arc::new(MemoryStore::new()) as Arc<dyn tollgate::Store>,
                "memory",
            ),
            // A store that waits (no synchronous answer), named.
            (Arc::new(Recording::new(MemoryStore::new())), "recording"),
        ] {
            let limiter = Limiter::builder()
                .read_env(false)
                .shared_store(store)
                .store_name(name)
                .route("/*", Policy::named("default").per_ip("100/min"))
                .build()
                .unwrap();
            assert_eq!(limiter.describe().len(), 1);
            let svc = ServiceBuilder::new()
                .layer(limiter.layer())
                .service(service_fn(echo));
            let response = svc
                .oneshot(request("/x", Some("192.0.2.1:5000"), None))
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{name}");
        }
    });
    assert_eq!(decides.len(), 2, "{decides:#?}");
    for (span, store) in decides.iter().zip(["memory", "recording"]) {
        assert!(span.contains("policy=default"), "{span}");
        assert!(span.contains(&format!("store={store}")), "{span}");
        assert!(span.contains(" store_us="), "{span}");
    }
}

#[test]
fn a_direct_check_has_the_span_of_a_decision_named_by_its_bucket() {
    let decides = decide_spans(async {
        let limiter = Limiter::builder()
            .read_env(false)
            .store(MemoryStore::new())
            .bucket("sign-in-failures", "5/30min")
            .build()
            .unwrap();
        let decision = limiter
            .check("sign-in-failures", "a@example.com")
            .await
            .unwrap();
        assert!(decision.allowed);
        let failures = limiter.direct_bucket("sign-in-failures").unwrap();
        assert!(failures.peek("a@example.com").await.unwrap().allowed);
    });
    // The check and the look, each a call of the store.
    assert_eq!(decides.len(), 2, "{decides:#?}");
    for span in decides {
        assert!(span.contains("policy=sign-in-failures"), "{span}");
        assert!(span.contains("store=memory"), "{span}");
        assert!(span.contains(" store_us="), "{span}");
    }
}
