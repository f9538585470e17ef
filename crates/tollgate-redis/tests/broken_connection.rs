//! A connection that broke while Redis stays healthy (Redis's `timeout` closing an idle
//! client, `CLIENT KILL`, a proxy dropping idle connections) does not send an instance to
//! memory: the call is made again through a fresh connection, and Redis decides it. Before,
//! the first call after the break was decided from memory, which had never seen the keys
//! charged through other instances: a user at their limit (charged through instance A) was
//! admitted again through instance B.

mod common;

use std::time::Duration;

use tollgate_limits::{Batch, Bucket, Limit, Quota, Store};
use tollgate_redis::{FallbackConfig, FallbackStore, Mode, RedisStore};
use tollgate_testkit::RedisServer;

/// The calls' timeout: within it the call that finds its connection broken makes a fresh
/// one, asks Redis's run id and is made again. Generous, so that a loaded machine does not
/// send an instance to memory for being slow (50 ms did once, in a full test run on two
/// cores); a healthy Redis answers far sooner, so no test waits for it.
const TIMEOUT: Duration = Duration::from_millis(500);

async fn instance(server: &RedisServer) -> FallbackStore<RedisStore> {
    let store = FallbackStore::connect(
        RedisStore::open(&server.url()).unwrap(),
        FallbackConfig::default().with_timeout(TIMEOUT),
    )
    .await;
    assert_eq!(store.mode(), Mode::Primary);
    store
}

/// A per-user limit: 30 per minute.
fn per_user() -> Limit {
    Limit::sliding(Quota::per_minute(30))
}

/// A sign-in lockout: 5 failures per 30 minutes, exact.
fn lockout() -> Limit {
    Limit::sliding_exact(Quota::new(5, Duration::from_secs(30 * 60)).unwrap())
}

/// Charges `bucket` to its limit through `a`, all admitted by Redis.
async fn fill(a: &FallbackStore<RedisStore>, bucket: &Bucket) {
    for _ in 0..bucket.limit.capacity() {
        let d = a.apply(&Batch::charge(vec![bucket.clone()])).await.unwrap();
        assert!(d.allowed && a.mode() == Mode::Primary);
    }
}

/// How many of `n` concurrent charges of `bucket` through `store` are admitted.
async fn burst(store: &FallbackStore<RedisStore>, bucket: &Bucket, n: usize) -> usize {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (store, batch) = (store.clone(), Batch::charge(vec![bucket.clone()]));
        tasks.spawn(async move { store.apply(&batch).await.unwrap().allowed });
    }
    tasks.join_all().await.into_iter().filter(|a| *a).count()
}

/// Two instances on one Redis. A user's 30/min bucket and a 5-failure lockout are full
/// (charged through A); B's connection is killed (`CLIENT KILL TYPE normal`); 50
/// concurrent charges through B: none admitted, and B stays on Redis. Twice, so a
/// connection made again after a break is broken too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_connection_is_made_again_and_redis_decides() {
    let server = RedisServer::start();
    let a = instance(&server).await;
    let b = instance(&server).await;
    let user = Bucket::new("user", "alice", per_user());
    let signin = Bucket::new("sign-in", "alice@example.com", lockout());
    fill(&a, &user).await;
    fill(&a, &signin).await;
    // B has spoken to Redis (about another key: what it hears of a key, memory keeps):
    // its connection is made, and idle.
    let other = Bucket::new("user", "carol", per_user());
    assert!(b.apply(&Batch::charge(vec![other])).await.unwrap().allowed);

    for bucket in [&user, &signin] {
        let killed = server.cli(["CLIENT", "KILL", "TYPE", "normal"]);
        assert!(
            killed.trim().parse::<u64>().is_ok_and(|n| n >= 1),
            "{killed}"
        );
        let admitted = burst(&b, bucket, 50).await;
        assert_eq!(
            admitted, 0,
            "{}: B admitted {admitted} of 50 over a full bucket after its connection was killed",
            bucket.key
        );
        assert_eq!(b.mode(), Mode::Primary, "B went to memory");
    }
}

/// The reviewer's reproduction: `CONFIG SET timeout 1`, a full bucket through A, B idle
/// past the timeout (Redis closes its connection), then 50 concurrent charges through B:
/// none admitted, B on Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_redis_closed_while_idle_is_made_again_and_redis_decides() {
    let server = RedisServer::start();
    let a = instance(&server).await;
    let b = instance(&server).await;
    let user = Bucket::new("user", "bob", per_user());
    fill(&a, &user).await;
    server.cli(["CONFIG", "SET", "timeout", "1"]);
    // Redis closes clients idle over a second (checked about ten times a second).
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let admitted = burst(&b, &user, 50).await;
    assert_eq!(
        admitted, 0,
        "B admitted {admitted} of 50 over a full bucket"
    );
    assert_eq!(b.mode(), Mode::Primary, "B went to memory");
}

/// An error Redis answered (here `READONLY`: a replica after a failover) is not a broken
/// connection: the charge is not made again (Redis runs it once), and memory decides it.
#[tokio::test]
async fn an_error_redis_answered_is_not_made_again() {
    let server = RedisServer::start();
    let store = instance(&server).await;
    let batch = Batch::charge(vec![Bucket::new("user", "u", per_user())]);
    assert_eq!(store.apply(&batch).await.unwrap().buckets[0].remaining, 29);
    server.cli(["REPLICAOF", "127.0.0.1", "1"]);
    let before = common::calls_in(&server.cli(["INFO", "commandstats"]), "evalsha");
    let decided = store.apply(&batch).await.unwrap();
    // Counted before the check this failure starts can run: `cli` blocks the test's only
    // thread.
    let after = common::calls_in(&server.cli(["INFO", "commandstats"]), "evalsha");
    assert_eq!(store.mode(), Mode::Fallback);
    assert!(decided.allowed);
    assert_eq!(decided.buckets[0].remaining, 28);
    assert_eq!(after - before, 1, "the charge was sent again");
}
