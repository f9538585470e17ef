//! A key of ours holding what no algorithm writes: a list, a set, a sorted set (another
//! program writing at our prefix), text where a fixed window counts, or a hash whose
//! fields are not an exact log's. A review put one
//! at one client's key: every call that read it failed (`WRONGTYPE`), the fallback store
//! left Redis for every client, and its give-back to Redis, which read the key again,
//! failed each time, so no client was decided on Redis until someone deleted the key.
//! Such a key is now dropped and counted afresh: the client's count is lost (it was not
//! ours to read), every call answers.

mod common;

use std::time::Duration;

use tollgate_limits::{Batch, Bucket, Limit, Op, Quota, Store};
use tollgate_redis::{FallbackConfig, FallbackStore, Mode, RedisStore};
use tollgate_testkit::RedisServer;

fn limits() -> Vec<(&'static str, Limit)> {
    let q = Quota::per_minute(5);
    vec![
        ("sliding", Limit::sliding(q)),
        ("exact", Limit::sliding_exact(q)),
        ("token bucket", Limit::token_bucket(q, 5).unwrap()),
        ("fixed", Limit::fixed(q)),
    ]
}

/// What another program might have written at a key: the commands to write it. (A hash
/// is what an exact log is stored as: one whose fields are not a log's failed the script
/// where it read them, with a Lua error rather than `WRONGTYPE`, a review found.)
const FOREIGN: [(&str, &[&str]); 10] = [
    ("a list", &["RPUSH", "x"]),
    ("a set", &["SADD", "x"]),
    ("a sorted set", &["ZADD", "1", "x"]),
    ("text", &["SET", "not a count"]),
    ("a hash of text", &["HSET", "h", "garbage"]),
    ("a hash of a head alone", &["HSET", "h", "0"]),
    ("a hash without a head", &["HSET", "n", "5", "t", "5"]),
    // Its next index far past the entries there are (a log walks them): at once.
    (
        "a hash of too many indices",
        &["HSET", "h", "0", "n", "1e309", "t", "0"],
    ),
    (
        "a hash of a gap",
        &["HSET", "h", "0", "n", "3000000", "t", "1"],
    ),
    (
        "a hash of a fractional head",
        &["HSET", "h", "0.5", "n", "1", "t", "0"],
    ),
];

/// Replaces every key holding `key` in its name with what `foreign` writes (the key
/// names are the store's business: found, not spelled here). How many were replaced.
fn poison(server: &RedisServer, key: &str, foreign: &[&str]) -> usize {
    let names = server.cli(["--scan", "--pattern", &format!("*{key}*")]);
    let names: Vec<&str> = names.lines().filter(|l| !l.is_empty()).collect();
    for name in &names {
        server.cli(["DEL", name]);
        let mut cmd = vec![foreign[0], name];
        cmd.extend_from_slice(&foreign[1..]);
        server.cli(cmd);
    }
    names.len()
}

/// What `bucket` has left, by a look through `store`.
async fn remaining(store: &impl Store, bucket: Bucket) -> u64 {
    let peek = store.apply(&Batch::new(Op::Peek, vec![bucket])).await;
    peek.unwrap().buckets[0].remaining
}

/// How many of `n` charges of `charge` through `store` were admitted (each must answer:
/// `key` names the case when one does not).
async fn admitted(store: &impl Store, charge: &Batch, n: usize, key: &str) -> usize {
    let mut admitted = 0;
    for _ in 0..n {
        let decision = store
            .apply(charge)
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        admitted += usize::from(decision.allowed);
    }
    admitted
}

/// Every operation on a poisoned key answers, and the key counts afresh: a charge, a
/// peek, a refund, and a charge of it beside a bucket of another algorithm (the general
/// path of the script).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_holding_what_no_algorithm_writes_is_counted_afresh() {
    let server = RedisServer::start();
    let store = common::uncached(&server);
    for (name, limit) in limits() {
        for (what, foreign) in FOREIGN {
            let key = format!("{name} holding {what}");
            let bucket = Bucket::new("foreign", &key, limit);
            let charge = Batch::charge(vec![bucket.clone()]);
            for _ in 0..2 {
                assert!(store.apply(&charge).await.unwrap().allowed, "{key}");
            }
            assert!(poison(&server, &key, foreign) > 0, "{key}: no key written");

            // A look and a refund answer, each on a poisoned key.
            for op in [Op::Peek, Op::Refund] {
                let answer = store.apply(&Batch::new(op, vec![bucket.clone()])).await;
                assert!(answer.is_ok(), "{key}: {op:?}: {answer:?}");
                poison(&server, &key, foreign);
            }

            // Beside another bucket (the general path): both answer, the poisoned one fresh.
            let other = Bucket::new(
                "foreign-other",
                &key,
                Limit::sliding_exact(Quota::per_minute(9)),
            );
            let both = store
                .apply(&Batch::charge(vec![other, bucket.clone()]))
                .await
                .unwrap_or_else(|e| panic!("{key}: beside another bucket: {e}"));
            assert!(both.allowed, "{key}");
            assert_eq!(both.buckets[1].remaining, 4, "{key}: counted afresh");

            // Alone: four more admitted (five in all since the poison), then refused.
            poison(&server, &key, foreign);
            assert_eq!(
                admitted(&store, &charge, 8, &key).await,
                5,
                "{key}: the limit counts afresh from the poison"
            );
        }
    }
}

/// Behind the fallback store, a poisoned key keeps its client, and everyone, on Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_key_keeps_the_fallback_store_on_redis() {
    let server = RedisServer::start();
    let store = FallbackStore::connect(
        RedisStore::builder()
            .url(server.url())
            .refusal_cache(0)
            .build()
            .unwrap(),
        FallbackConfig::default().with_timeout(Duration::from_millis(500)),
    )
    .await;
    for (name, limit) in limits() {
        for foreign in [&["RPUSH", "x"][..], &["HSET", "h", "garbage"]] {
            let key = format!("{name} {}", foreign[0]);
            let bucket = Bucket::new("foreign", &key, limit);
            let charge = Batch::charge(vec![bucket.clone()]);
            assert!(store.apply(&charge).await.unwrap().allowed);
            poison(&server, &key, foreign);
            for _ in 0..3 {
                let _ = store.apply(&charge).await.unwrap();
            }
            assert_eq!(store.mode(), Mode::Primary, "{key}");
            // The charges were counted on Redis: 3 since the poison, 2 left.
            assert_eq!(remaining(&store, bucket).await, 2, "{key}");
        }
    }
}

/// An exact log whose entry another program overwrote answers: the entry counts nothing
/// and has left the window; the log's total still holds its count until the log empties
/// (errs towards refusing: one fewer admitted here, where the oldest entry is overwritten;
/// the newest so, the whole log has left the window, and is counted afresh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_entry_another_program_overwrote_counts_nothing() {
    let server = RedisServer::start();
    let store = common::uncached(&server);
    for entry in ["garbage", ""] {
        let key = format!("log with entry {entry:?}");
        let bucket = Bucket::new("foreign", &key, Limit::sliding_exact(Quota::per_minute(5)));
        let charge = Batch::charge(vec![bucket.clone()]);
        for _ in 0..2 {
            assert!(store.apply(&charge).await.unwrap().allowed, "{key}");
            // (Apart in time: two entries.)
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let names = server.cli(["--scan", "--pattern", &format!("*{key}*")]);
        let name = names.lines().find(|l| !l.is_empty()).unwrap().to_string();
        let head = server.cli(["HGET", &name, "h"]);
        let head = head.trim();
        match entry {
            "" => server.cli(["HDEL", &name, head]),
            text => server.cli(["HSET", &name, head, text]),
        };
        assert_eq!(admitted(&store, &charge, 8, &key).await, 3, "{key}");
    }
}

/// Only a key of the wrong kind is dropped: a charge Redis refuses for another reason (out
/// of memory) keeps the count there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_refused_out_of_memory_keeps_the_count() {
    let server = RedisServer::start();
    let store = common::uncached(&server);
    for (name, limit) in limits() {
        let bucket = Bucket::new("oom", name, limit);
        let charge = Batch::charge(vec![bucket.clone()]);
        for _ in 0..2 {
            assert!(store.apply(&charge).await.unwrap().allowed, "{name}");
        }
        server.cli(["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
        server.cli(["CONFIG", "SET", "maxmemory", "1"]);
        let refused = store.apply(&charge).await;
        server.cli(["CONFIG", "SET", "maxmemory", "0"]);
        assert!(refused.is_err(), "{name}: {refused:?}");
        assert_eq!(
            remaining(&store, bucket).await,
            3,
            "{name}: the two charges kept"
        );
    }
}

/// A Redis that asks for a password the URL does not give says so in the store's error
/// (which the fallback store logs as the reason it left Redis), whether it answers the
/// call `NOAUTH` (a short command) or closes on a long one ("Protocol error:
/// unauthenticated multibulk length", all a review was told before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_password_is_told_as_one() {
    let server = RedisServer::start();
    server.cli(["CONFIG", "SET", "requirepass", "pw"]);
    let q = Quota::per_minute(5);
    let long = (0..3)
        .map(|i| Bucket::new("auth", &format!("k{i}"), Limit::sliding(q)))
        .collect();
    let short = vec![Bucket::new("auth", "fixed", Limit::fixed(q))];
    for buckets in [long, short] {
        // (A store each: the server closes a connection after the protocol error.)
        let store = common::uncached(&server);
        let error = store.apply(&Batch::charge(buckets)).await.unwrap_err();
        assert!(
            error.to_string().contains("Redis asks for a password"),
            "{error}"
        );
    }
}
