//! What happens when Redis dies, hangs or comes back empty, under load: no request fails,
//! none waits longer than the fallback timeout plus a small margin, decisions continue from
//! memory, and the store is back on Redis within a few seconds of Redis answering again.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::wait_for_mode;
use tollgate_limits::{Batch, Bucket, FailureMode, Limit, Quota, Store, StoreError};
use tollgate_redis::{FallbackConfig, FallbackStore, Mode, RedisStore};
use tollgate_testkit::RedisServer;

const TIMEOUT: Duration = Duration::from_millis(50);
/// Scheduling slack on a loaded 2-core machine (the test binary, redis-server and whatever
/// else runs share it). The timeout itself is what bounds a call.
const MARGIN: Duration = Duration::from_millis(100);
/// How soon after Redis answers again the store must be back on it (the probe backs off to
/// at most 250 ms; a probe that finds the connection broken tries again on a new one).
const RECOVERY: Duration = Duration::from_millis(500);

fn config() -> FallbackConfig {
    FallbackConfig::default().with_timeout(TIMEOUT)
}

#[derive(Debug, Default)]
struct Stats {
    calls: AtomicU64,
    errors: AtomicU64,
    max_latency_us: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// Tasks charging a generous limit in a loop until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(store: &FallbackStore<RedisStore>, tasks: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let limit = Limit::sliding(Quota::per_hour(1_000_000));
        let tasks = (0..tasks)
            .map(|t| {
                let (store, stop, stats) = (store.clone(), stop.clone(), stats.clone());
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let bucket = Bucket::new("load", &format!("{t}:{}", i % 32), limit);
                        let batch = Batch::charge(vec![bucket]);
                        let started = Instant::now();
                        let result = store.apply(&batch).await;
                        let took = started.elapsed().as_micros() as u64;
                        stats.calls.fetch_add(1, Ordering::Relaxed);
                        stats.max_latency_us.fetch_max(took, Ordering::Relaxed);
                        match result {
                            Ok(d) => assert!(d.allowed, "a generous limit admits"),
                            Err(e) => {
                                stats.errors.fetch_add(1, Ordering::Relaxed);
                                *stats.last_error.lock().unwrap() = Some(e.to_string());
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                })
            })
            .collect();
        Self { stop, stats, tasks }
    }

    fn calls(&self) -> u64 {
        self.stats.calls.load(Ordering::Relaxed)
    }

    async fn finish(self) -> Arc<Stats> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.stats
    }
}

/// After recovery, decisions are made in Redis: what this store charges, another instance
/// on the same Redis sees.
async fn assert_deciding_on_redis(
    store: &FallbackStore<RedisStore>,
    server: &RedisServer,
    tag: &str,
) {
    let other = RedisStore::builder()
        .url(server.url())
        .refusal_cache(0)
        .build()
        .unwrap();
    // A call that times out on a machine starved by the other tests' loads moves the store
    // to memory again: such an attempt says nothing, and is made again (at most 5 times).
    for attempt in 0..5 {
        let bucket = Bucket::new(
            "after",
            &format!("{tag}-{attempt}"),
            Limit::sliding(Quota::per_hour(2)),
        );
        for _ in 0..2 {
            assert!(
                store
                    .apply(&Batch::charge(vec![bucket.clone()]))
                    .await
                    .unwrap()
                    .allowed
            );
        }
        if store.mode() != Mode::Primary {
            wait_for_mode(store, Mode::Primary, RECOVERY).await;
            continue;
        }
        let d = other.apply(&Batch::charge(vec![bucket])).await.unwrap();
        assert!(
            !d.allowed,
            "the other instance sees the two charges made after recovery"
        );
        return;
    }
    panic!("the store did not stay on Redis for two calls in 5 attempts");
}

/// Runs load, breaks Redis with `fault`, checks decisions go on from memory, heals it with
/// `heal`, checks the store returns to Redis; no request may fail or wait too long.
/// `trips`: whether the fault lasts long enough that the circuit must open.
async fn scenario(
    name: &str,
    trips: bool,
    fault: impl FnOnce(&mut RedisServer),
    heal: impl FnOnce(&mut RedisServer),
) {
    let mut server = RedisServer::start();
    let store = FallbackStore::connect(RedisStore::open(&server.url()).unwrap(), config()).await;
    assert_eq!(store.mode(), Mode::Primary);
    let load = Load::start(&store, 16);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = load.calls();
    assert!(before > 0);

    fault(&mut server);
    let mut tripped = None;
    if trips {
        tripped = Some(wait_for_mode(&store, Mode::Fallback, Duration::from_secs(2)).await);
        let on_fallback = load.calls();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            load.calls() > on_fallback + 100,
            "{name}: decisions go on from memory"
        );
    }

    heal(&mut server);
    let recovered = wait_for_mode(&store, Mode::Primary, RECOVERY).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = load.finish().await;

    let max = Duration::from_micros(stats.max_latency_us.load(Ordering::Relaxed));
    eprintln!(
        "{name}: {} calls, {} errors, max latency {max:?}, on memory after {tripped:?}, on redis {recovered:?} after healing",
        stats.calls.load(Ordering::Relaxed),
        stats.errors.load(Ordering::Relaxed),
    );
    assert_eq!(
        stats.errors.load(Ordering::Relaxed),
        0,
        "{name}: {:?}",
        stats.last_error.lock().unwrap()
    );
    assert!(max <= TIMEOUT + MARGIN, "{name}: a call took {max:?}");
    assert_deciding_on_redis(&store, &server, name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted() {
    scenario(
        "SIGKILL",
        true,
        |s| s.kill(),
        |s| {
            std::thread::sleep(Duration::from_millis(200));
            s.restart();
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_then_resumed() {
    // SIGSTOP: the connection stays open and calls hang; only the timeout saves them.
    scenario("SIGSTOP", true, |s| s.pause(), |s| s.resume()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty() {
    // Killed and back at once, without data or scripts: the calls caught in between are
    // answered from memory (the circuit may or may not open), then NOSCRIPT, reconnect.
    scenario("restart", false, |s| s.restart(), |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_on_memory_when_redis_is_down_and_moves_to_redis() {
    let mut server = RedisServer::start();
    server.kill();
    let started = Instant::now();
    let store = FallbackStore::connect(RedisStore::open(&server.url()).unwrap(), config()).await;
    assert!(
        started.elapsed() < TIMEOUT + MARGIN,
        "startup is not held up"
    );
    assert_eq!(store.mode(), Mode::Fallback);
    // Limiting goes on from memory.
    let bucket = Bucket::new("startup", "k", Limit::sliding(Quota::per_hour(3)));
    let batch = Batch::charge(vec![bucket]);
    let admitted = {
        let mut n = 0;
        for _ in 0..5 {
            n += u32::from(store.apply(&batch).await.unwrap().allowed);
        }
        n
    };
    assert_eq!(admitted, 3);

    server.restart();
    wait_for_mode(&store, Mode::Primary, RECOVERY).await;
    assert_deciding_on_redis(&store, &server, "startup").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_and_closed_return_errors_not_refusals() {
    let mut server = RedisServer::start();
    let store = FallbackStore::connect(RedisStore::open(&server.url()).unwrap(), config()).await;
    let bucket = Bucket::new("modes", "k", Limit::sliding(Quota::per_hour(100)));
    let fallback = Batch::charge(vec![bucket.clone()]);
    let open = fallback.clone().with_failure_mode(FailureMode::Open);
    let closed = fallback.clone().with_failure_mode(FailureMode::Closed);
    assert!(store.apply(&open).await.unwrap().allowed);

    // Paused: the call times out, and says so.
    server.pause();
    let started = Instant::now();
    let err = store.apply(&open).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Timeout(t) if t == TIMEOUT),
        "{err}"
    );
    assert!(started.elapsed() < TIMEOUT + MARGIN);
    server.resume();

    server.kill();
    // The call that fails takes the store off the primary, one failure towards the circuit
    // breaker (3); the checks that follow fail too, one each. Until the circuit opens, a
    // call waits for the check under way and fails on its own; then at once.
    assert!(store.apply(&closed).await.is_err());
    assert_eq!(store.mode(), Mode::Fallback);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let err = store.apply(&closed).await.unwrap_err();
        if matches!(&err, StoreError::Unavailable(why) if why.starts_with("circuit open")) {
            break;
        }
        assert!(Instant::now() < deadline, "the circuit did not open: {err}");
    }
    let started = Instant::now();
    for batch in [&open, &closed] {
        let err = store.apply(batch).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    }
    // Two calls that each waited for Redis would take the timeout each; the bound leaves
    // room for a loaded machine's scheduling, not for one timeout.
    assert!(
        started.elapsed() < TIMEOUT,
        "an open circuit answers at once"
    );
    assert!(store.apply(&fallback).await.unwrap().allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_limits_are_divided_by_the_instance_count() {
    let mut server = RedisServer::start();
    server.kill();
    let store = FallbackStore::connect(
        RedisStore::open(&server.url()).unwrap(),
        config().with_fallback_divisor(4),
    )
    .await;
    assert_eq!(store.mode(), Mode::Fallback);
    let limits = [
        Limit::sliding(Quota::per_minute(10)),
        Limit::token_bucket(Quota::per_hour(100), 8).unwrap(),
    ];
    for (limit, expected) in limits.iter().zip([2, 2]) {
        let batch = Batch::charge(vec![Bucket::new("divided", &limit.to_string(), *limit)]);
        let mut admitted = 0;
        for _ in 0..10 {
            let d = store.apply(&batch).await.unwrap();
            admitted += u32::from(d.allowed);
            // The bucket's own limit (what its policy publishes); the share is what remains.
            assert_eq!(d.buckets[0].limit, limit.quota().count());
            assert!(d.buckets[0].remaining <= limit.capacity() / 4);
        }
        assert_eq!(admitted, expected, "{limit}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_replica_keeps_the_store_on_memory_until_writable() {
    let server = RedisServer::start();
    let store = FallbackStore::connect(RedisStore::open(&server.url()).unwrap(), config()).await;
    assert_eq!(store.mode(), Mode::Primary);
    // A replica of a master that is gone: reads still work, every write fails (READONLY).
    server.cli(["REPLICAOF", "127.0.0.1", "1"]);
    let batch = Batch::charge(vec![Bucket::new(
        "replica",
        "k",
        Limit::sliding(Quota::per_hour(1_000_000)),
    )]);
    let mut returns_to_primary = 0;
    let mut mode = store.mode();
    let started = Instant::now();
    let mut on_memory_since = None;
    while on_memory_since.is_none_or(|t: Instant| t.elapsed() < Duration::from_millis(1200)) {
        assert!(started.elapsed() < Duration::from_secs(3), "never tripped");
        assert!(store.apply(&batch).await.unwrap().allowed);
        let now = store.mode();
        if now == Mode::Fallback && on_memory_since.is_none() {
            on_memory_since = Some(Instant::now());
        }
        returns_to_primary += u32::from(mode == Mode::Fallback && now == Mode::Primary);
        mode = now;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        returns_to_primary, 0,
        "a primary that cannot write is not healthy"
    );
    assert_eq!(store.mode(), Mode::Fallback);

    server.cli(["REPLICAOF", "NO", "ONE"]);
    wait_for_mode(&store, Mode::Primary, RECOVERY).await;
    assert_deciding_on_redis(&store, &server, "replica").await;
}

/// Redis killed, then restarted on the same port; later paused (SIGSTOP), then resumed
/// (SIGCONT). Each time the store has been on memory long enough for its probes to back off
/// fully, and is back on Redis within half a second of Redis answering again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_on_redis_within_half_a_second_after_a_restart_and_after_sigcont() {
    let mut server = RedisServer::start();
    let store = FallbackStore::connect(RedisStore::open(&server.url()).unwrap(), config()).await;
    let batch = Batch::charge(vec![Bucket::new(
        "recovery",
        "k",
        Limit::sliding(Quota::per_hour(1_000_000)),
    )]);
    assert!(store.apply(&batch).await.unwrap().allowed);
    assert_eq!(store.mode(), Mode::Primary);

    for fault in ["restart", "SIGCONT"] {
        if fault == "restart" {
            server.kill();
        } else {
            server.pause();
        }
        // Requests keep coming: the failures open the circuit.
        let started = Instant::now();
        while store.mode() == Mode::Primary {
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{fault}: never tripped"
            );
            assert!(store.apply(&batch).await.unwrap().allowed);
        }
        // Long enough for the probe's backoff to reach its maximum.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(store.mode(), Mode::Fallback, "{fault}");
        // From when Redis answers again: the new server answered PING, or the signal.
        let back = if fault == "restart" {
            server.restart(); // returns once the new server answers PING
            wait_for_mode(&store, Mode::Primary, RECOVERY).await
        } else {
            let resumed = Instant::now();
            server.resume();
            wait_for_mode(&store, Mode::Primary, RECOVERY).await;
            resumed.elapsed()
        };
        eprintln!("{fault}: back on Redis {back:?} after it answered again");
        assert_deciding_on_redis(&store, &server, fault).await;
    }
}

/// A wrong password is not network latency: the multiplexed connection retries it by
/// itself, so every call only times out, but the store asks a fresh connection why and
/// says so (in its `warn` event and in the reason a failing batch is given), and keeps
/// deciding from memory meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_reported_as_such_not_as_a_timeout() {
    let server = RedisServer::start();
    server.cli(["CONFIG", "SET", "requirepass", "s3cret"]);
    let url = format!("redis://:wrong@127.0.0.1:{}/", server.port());
    let store = FallbackStore::connect(RedisStore::open(&url).unwrap(), config()).await;
    assert_eq!(store.mode(), Mode::Fallback);
    let bucket = Bucket::new("pw", "k", Limit::sliding(Quota::per_minute(5)));
    let open = Batch::charge(vec![bucket.clone()]).with_failure_mode(FailureMode::Open);
    let deadline = Instant::now() + Duration::from_secs(5);
    let reason = loop {
        let reason = match store.apply(&open).await {
            Err(e) => e.to_string(),
            Ok(d) => panic!("decided on a Redis it cannot authenticate to: {d:?}"),
        };
        if reason.contains("fresh connection fails") || Instant::now() > deadline {
            break reason;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        reason.contains("fresh connection fails") && reason.to_lowercase().contains("pass"),
        "{reason}"
    );
    // Memory decides the batches that may fall back.
    let fallback = Batch::charge(vec![bucket]);
    assert!(store.apply(&fallback).await.unwrap().allowed);
    assert_eq!(store.mode(), Mode::Fallback);
}

/// A password asked for while the store runs (`requirepass` set, the clients cut off):
/// the server answers the store's next call by closing its connection, so every call fails
/// with a broken pipe or a reset, but the store asks a fresh connection why and says that
/// Redis asks for a password (a review saw only "broken pipe").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_asked_for_while_running_is_reported_as_such() {
    let server = RedisServer::start();
    let store = FallbackStore::connect(RedisStore::open(&server.url()).unwrap(), config()).await;
    let bucket = Bucket::new("pw-later", "k", Limit::sliding(Quota::per_minute(5)));
    let open = Batch::charge(vec![bucket]).with_failure_mode(FailureMode::Open);
    let _ = store.apply(&open).await.unwrap();
    assert_eq!(store.mode(), Mode::Primary);
    server.cli(["CONFIG", "SET", "requirepass", "s3cret"]);
    server.cli([
        "-a",
        "s3cret",
        "--no-auth-warning",
        "CLIENT",
        "KILL",
        "TYPE",
        "normal",
    ]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let reason = loop {
        let reason = match store.apply(&open).await {
            Err(e) => e.to_string(),
            Ok(_) => String::new(),
        };
        if reason.contains("fresh connection fails") || Instant::now() > deadline {
            break reason;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(reason.contains("Redis asks for a password"), "{reason}");
}

/// A password rotation done in the wrong order: the instance's password is refused for a
/// while, then accepted. (A connection that failed its `AUTH` was never made again: the
/// store stayed on memory until the process restarted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goes_back_to_redis_once_a_refused_password_is_accepted() {
    let server = RedisServer::start();
    server.cli(["CONFIG", "SET", "requirepass", "old"]);
    let url = format!("redis://:new@127.0.0.1:{}/", server.port());
    let store = FallbackStore::connect(RedisStore::open(&url).unwrap(), config()).await;
    assert_eq!(store.mode(), Mode::Fallback);
    let bucket = Bucket::new("rotation", "k", Limit::sliding(Quota::per_hour(100)));
    let batch = Batch::charge(vec![bucket]);
    // Refused for a while (every call fails the same way, well past the retries).
    let refused_until = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < refused_until {
        let _ = store.apply(&batch).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.mode(), Mode::Fallback);
    server.cli([
        "-a",
        "old",
        "--no-auth-warning",
        "CONFIG",
        "SET",
        "requirepass",
        "new",
    ]);
    // A connection failing for a second is made afresh, then the probe finds Redis.
    wait_for_mode(&store, Mode::Primary, Duration::from_secs(5)).await;
    let _ = store.apply(&batch).await.unwrap();
    let count = server.cli(["-a", "new", "--no-auth-warning", "DBSIZE"]);
    assert_ne!(count.trim(), "0", "decided on Redis: its keys are there");
}

/// A paused Redis (SIGSTOP) is not diagnosed as a configuration problem: a fresh connection
/// that only times out says nothing about the URL, password or database (a wrong password
/// does, and is still reported). A Redis that is down is a refused connection, which the
/// timeouts hid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_is_not_diagnosed_as_a_bad_configuration() {
    use tollgate_redis::Primary;
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url()).unwrap();
    let bucket = Bucket::new("diagnose", "k", Limit::sliding(Quota::per_hour(100)));
    assert!(
        store
            .apply(&Batch::charge(vec![bucket]))
            .await
            .unwrap()
            .allowed
    );
    assert_eq!(store.diagnose().await, None, "a healthy Redis");
    server.pause();
    let diagnosis = store.diagnose().await;
    server.resume();
    assert_eq!(diagnosis, None, "a paused Redis");
    let wrong = format!("redis://:wrong-password@127.0.0.1:{}/", server.port());
    let wrong = RedisStore::open(&wrong).unwrap();
    let diagnosis = wrong
        .diagnose()
        .await
        .expect("a wrong password is reported");
    assert!(
        diagnosis.contains("AUTH")
            || diagnosis.to_lowercase().contains("auth")
            || diagnosis.contains("password"),
        "{diagnosis}"
    );
    // A Redis that is down: its connection refused, said as such (not as a password or a
    // database, nor as a timeout).
    let mut server = server;
    server.kill();
    let diagnosis = store
        .diagnose()
        .await
        .expect("a refused connection is reported");
    assert!(diagnosis.to_lowercase().contains("refused"), "{diagnosis}");
}

/// A refused password costs Redis one round of connection attempts per second, not one per
/// call: the connection is made afresh only once calls have failed for a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_password_is_not_tried_again_on_every_call() {
    let server = RedisServer::start();
    server.cli(["CONFIG", "SET", "requirepass", "s3cret"]);
    let connections = || {
        let stats = server.cli(["-a", "s3cret", "--no-auth-warning", "INFO", "stats"]);
        stats
            .lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let url = format!("redis://:wrong@127.0.0.1:{}/", server.port());
    let store = RedisStore::open(&url).unwrap();
    let batch = Batch::charge(vec![Bucket::new(
        "pw",
        "k",
        Limit::sliding(Quota::per_minute(5)),
    )]);
    store.apply(&batch).await.unwrap_err();
    let before = connections();
    let started = Instant::now();
    for _ in 0..4 {
        store.apply(&batch).await.unwrap_err();
    }
    // The one that read the count, and a round of attempts per second the calls took
    // (none where they took less, as they do but on a stalled machine).
    let rounds = started.elapsed().as_secs();
    assert!(connections() - before <= 1 + rounds, "{rounds} s");
}

/// A call to a Redis that does not answer fails after the store's own response timeout
/// ([`RedisStoreBuilder::response_timeout`](tollgate_redis::RedisStoreBuilder::response_timeout)),
/// not the default half second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_a_paused_redis_fails_after_the_response_timeout_set() {
    let server = RedisServer::start();
    let store = RedisStore::builder()
        .url(server.url())
        .response_timeout(TIMEOUT)
        .refusal_cache(0)
        .build()
        .unwrap();
    let batch = Batch::charge(vec![Bucket::new(
        "slow",
        "k",
        Limit::sliding(Quota::per_hour(10)),
    )]);
    assert!(store.apply(&batch).await.unwrap().allowed);
    server.pause();
    let started = Instant::now();
    let result = store.apply(&batch).await;
    let took = started.elapsed();
    server.resume();
    assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");
    assert!(took < TIMEOUT + MARGIN, "failed after {took:?}");
}

/// Redis slow to answer the first connection (paused at startup: the connection is
/// accepted, its handshake unanswered): the store starts on memory, and is back on Redis
/// within half a second of Redis answering, though each probe gives up on the connection
/// being made after the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_connection_slower_than_the_timeout_does_not_keep_the_store_on_memory() {
    let server = RedisServer::start();
    server.pause();
    let store = FallbackStore::connect(RedisStore::open(&server.url()).unwrap(), config()).await;
    assert_eq!(store.mode(), Mode::Fallback);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resumed = Instant::now();
    server.resume();
    wait_for_mode(&store, Mode::Primary, RECOVERY).await;
    eprintln!("back on Redis {:?} after it answered", resumed.elapsed());
    assert_deciding_on_redis(&store, &server, "paused at startup").await;
}

/// Redis paused: batches that fail open (or closed), arriving while the check of Redis is
/// under way, are answered within twice the timeout (their wait for the check's end is
/// bounded as a call is), not after the check has also asked a fresh connection why it
/// failed (on a paused Redis, that waits up to the connection timeout: a review's seed 002
/// held such requests a second at the start of every stall).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_that_fail_open_are_answered_within_twice_the_timeout_while_redis_is_paused() {
    let server = RedisServer::start();
    let store = FallbackStore::connect(RedisStore::open(&server.url()).unwrap(), config()).await;
    let bucket = Bucket::new("open", "k", Limit::sliding(Quota::per_hour(1_000)));
    let open = Batch::charge(vec![bucket]).with_failure_mode(FailureMode::Open);
    assert!(store.apply(&open).await.unwrap().allowed);
    server.pause();
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    // For a second, a batch every 20 ms, a few at once: each finds the first one's
    // departure, a check under way, a check failed or the circuit open.
    while started.elapsed() < Duration::from_secs(1) {
        let calls = (0..3).map(|_| {
            let (store, open) = (store.clone(), open.clone());
            tokio::spawn(async move {
                let at = Instant::now();
                let answer = store.apply(&open).await;
                (at.elapsed(), answer.is_err())
            })
        });
        for call in futures_util::future::join_all(calls).await {
            let (took, failed) = call.unwrap();
            assert!(failed, "decided on a paused Redis");
            slowest = slowest.max(took);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.resume();
    assert!(
        slowest < 2 * TIMEOUT + MARGIN,
        "a batch failing open waited {slowest:?}"
    );
}
