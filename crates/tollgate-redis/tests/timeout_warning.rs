//! A [`FallbackStore`] whose timeout is longer than its Redis store's response timeout
//! warns when it is made: the store's calls fail at their own limit, so the fallback's
//! longer wait is never waited (a review set the fallback's timeout to 2 s and saw every
//! call give up at 500 ms, without a word). In a test binary of its own: tracing caches a
//! callsite's interest process-wide.

use std::time::Duration;

use tollgate_redis::{FallbackConfig, FallbackStore, RedisStore};
use tollgate_testkit::EventLog;

const WARNING: &str = "the Redis store gives up on a call before the fallback's timeout";

/// Nothing listens here: nothing connects while the store is made.
const URL: &str = "redis://127.0.0.1:1/";

fn warnings(fallback: FallbackConfig, store: RedisStore) -> Vec<String> {
    EventLog::during(async move {
        let _store = FallbackStore::with_config(store, fallback);
    })
    .into_iter()
    .filter(|line| line.contains(WARNING))
    .collect()
}

#[test]
fn a_redis_store_that_gives_up_before_the_fallback_is_warned_about() {
    let fallback = FallbackConfig::default().with_timeout(Duration::from_secs(2));
    let store = RedisStore::builder().url(URL).build().unwrap();
    let warned = warnings(fallback.clone(), store);
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert!(
        warned[0].starts_with("WARN tollgate::store:")
            && warned[0].contains("primary_timeout_ms=500")
            && warned[0].contains("fallback_timeout_ms=2000"),
        "{}",
        warned[0]
    );

    // Built for the fallback: its calls wait as long as the fallback does.
    let store = RedisStore::builder()
        .url(URL)
        .for_fallback(&fallback)
        .build()
        .unwrap();
    assert_eq!(warnings(fallback, store), Vec::<String>::new());

    // The default fallback waits 50 ms, less than the store's 500.
    let store = RedisStore::builder().url(URL).build().unwrap();
    assert_eq!(
        warnings(FallbackConfig::default(), store),
        Vec::<String>::new()
    );
}
