//! A Redis that may evict the store's keys when its memory is full (`maxmemory` set, a
//! `maxmemory-policy` other than `noeviction`) is warned about, once per server start, the
//! first time it answers `INFO` ([`RedisStore::run_id`], which the fallback store's checks
//! call), and again when it restarts so configured;
//! one that refuses `INFO` (the store then cannot notice a restart) the first time it does;
//! one that fails it for a while (asking for a password) is not said to refuse it.
//! In a test binary of its own: tracing caches a callsite's interest process-wide.

use tollgate_redis::RedisStore;
use tollgate_testkit::{EventLog, RedisServer};

#[test]
fn what_the_store_cannot_check_on_redis_is_warned_about_once() {
    let events = EventLog::during(async {
        let evicting = RedisServer::start();
        evicting.cli(["CONFIG", "SET", "maxmemory", "64mb"]);
        evicting.cli(["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]);
        let store = RedisStore::open(&evicting.url()).unwrap();
        let clone = store.clone();
        for store in [&store, &clone, &store] {
            assert!(store.run_id().await.unwrap().is_some());
        }
        // Restarted with an evicting policy (another server's configuration after a
        // failover): said again, once (a review: nothing was said).
        let mut restarted = RedisServer::start();
        let store = RedisStore::open(&restarted.url()).unwrap();
        assert!(store.run_id().await.unwrap().is_some());
        restarted.restart();
        restarted.cli(["CONFIG", "SET", "maxmemory", "32mb"]);
        restarted.cli(["CONFIG", "SET", "maxmemory-policy", "volatile-lru"]);
        let mut answered = 0;
        for _ in 0..50 {
            if store.run_id().await.is_ok_and(|id| id.is_some()) {
                answered += 1;
                if answered == 3 {
                    break;
                }
            }
        }
        assert_eq!(answered, 3, "the restarted server never answered");
        // Writes fail instead when full: nothing to warn about.
        let refusing = RedisServer::start();
        refusing.cli(["CONFIG", "SET", "maxmemory", "64mb"]);
        refusing.cli(["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
        let store = RedisStore::open(&refusing.url()).unwrap();
        assert!(store.run_id().await.unwrap().is_some());
        // An ACL user without INFO: no run_id, said once.
        refusing.cli([
            "ACL", "SETUSER", "limited", "on", ">pw", "~*", "+@all", "-info",
        ]);
        let url = format!("redis://limited:pw@127.0.0.1:{}/", refusing.port());
        let limited = RedisStore::open(&url).unwrap();
        for _ in 0..3 {
            assert_eq!(limited.run_id().await.unwrap(), None);
        }
        // A server that asks for a password refuses INFO until it has one: a failed check
        // (tried again later), not a refusal for good, nor an ACL's warning (a review).
        let asking = RedisServer::start();
        asking.cli(["CONFIG", "SET", "requirepass", "pw"]);
        let unauthenticated = RedisStore::open(&asking.url()).unwrap();
        let answer = unauthenticated.run_id().await;
        assert!(
            answer
                .as_ref()
                .is_err_and(|e| e.to_string().contains("NOAUTH")),
            "{answer:?}"
        );
    });
    let refused = the_one(&events, "refuses INFO");
    assert!(
        refused.starts_with("WARN tollgate:") && refused.contains("restarts empty"),
        "{refused}"
    );
    let warning = the_one(&events, "(67108864 bytes)");
    assert!(
        warning.starts_with("WARN tollgate:")
            && warning.contains("maxmemory-policy allkeys-lru")
            && warning.contains("noeviction"),
        "{warning}"
    );
    let warning = the_one(&events, "(33554432 bytes)");
    assert!(
        warning.starts_with("WARN tollgate:") && warning.contains("maxmemory-policy volatile-lru"),
        "{warning}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.contains("maxmemory-policy"))
            .count(),
        2,
        "{events:#?}"
    );
}

/// The one event that contains `needle` (there must be exactly one).
fn the_one<'a>(events: &'a [String], needle: &str) -> &'a String {
    let found: Vec<&String> = events.iter().filter(|e| e.contains(needle)).collect();
    assert_eq!(found.len(), 1, "{needle}: {events:#?}");
    found[0]
}
