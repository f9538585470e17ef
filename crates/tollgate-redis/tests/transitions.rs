//! Every switch of the fallback store is a tracing event. In a test binary of its own: a
//! callsite first reached by a test on another thread (with no subscriber) could be cached
//! as uninteresting before this test's subscriber is set.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::wait_for_mode;
use tollgate_redis::{FallbackConfig, FallbackStore, Mode, RedisStore};
use tollgate_testkit::RedisServer;

const RECOVERY: Duration = Duration::from_secs(4);

/// Records the message and fields of every event.
#[derive(Default, Clone)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl tracing::Subscriber for Recorder {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!(" {}={value:?}", field.name()));
            }
        }
        let mut fields = Fields(format!(
            "{} {}:",
            event.metadata().level(),
            event.metadata().target()
        ));
        event.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn every_transition_is_a_tracing_event_with_its_reason() {
    let recorder = Recorder::default();
    let events = recorder.0.clone();
    tracing::subscriber::with_default(recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut server = RedisServer::start();
            server.kill();
            let store = FallbackStore::connect(
                RedisStore::open(&server.url()).unwrap(),
                FallbackConfig::default().timeout(Duration::from_millis(50)),
            )
            .await;
            assert_eq!(store.mode(), Mode::Fallback);
            server.restart();
            wait_for_mode(&store, Mode::Primary, RECOVERY).await;
        });
    });
    let events = events.lock().unwrap();
    let transitions: Vec<&String> = events
        .iter()
        .filter(|e| e.contains("tollgate::store") && !e.starts_with("DEBUG"))
        .collect();
    assert_eq!(transitions.len(), 2, "{events:#?}");
    assert!(
        transitions[0].starts_with("WARN")
            && transitions[0].contains("switched to the in-memory fallback")
            && transitions[0].contains("reason=\"at startup: rate-limit store"),
        "{}",
        transitions[0]
    );
    assert!(
        transitions[1].starts_with("INFO") && transitions[1].contains("back on the primary"),
        "{}",
        transitions[1]
    );
}
