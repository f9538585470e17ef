//! Redis Cluster of 3 masters on loopback: requests whose buckets live on different slots
//! (and nodes) are decided per slot, and a refusal in one slot gives back the charges made in
//! the others.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::cluster_store;
use tollgate_limits::{Batch, Bucket, Limit, ManualClock, Op, Quota, Store, Timestamp};
use tollgate_redis::RedisStore;
use tollgate_testkit::RedisCluster;

/// The store's answer to `op` on `buckets`.
async fn apply(store: &RedisStore, op: Op, buckets: &[Bucket]) -> tollgate_limits::Decision {
    store
        .apply(&Batch::new(op, buckets.to_vec()))
        .await
        .unwrap()
}

/// One bucket name `<prefix><i>` per node, whose key (`tollgate:<name>:k`) that node
/// serves, with the node's port, in port order.
fn names_on_each_node(cluster: &RedisCluster, prefix: &str) -> Vec<(u16, String)> {
    let mut by_node = std::collections::BTreeMap::new();
    for i in 0..64 {
        let name = format!("{prefix}{i}");
        let port = cluster.node_of(&format!("tollgate:{name}:k")).1;
        by_node.entry(port).or_insert(name);
    }
    by_node.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_slot_requests_decide_correctly() {
    let cluster = RedisCluster::start(3);
    let store = cluster_store(&cluster);
    assert!(store.is_cluster());

    // Three buckets whose keys live on three different nodes.
    let names: Vec<String> = names_on_each_node(&cluster, "b")
        .into_iter()
        .map(|(_, name)| name)
        .collect();
    assert_eq!(names.len(), 3, "keys on every node");
    let tight = Bucket::new(&names[0], "k", Limit::sliding_exact(Quota::per_hour(3)));
    let loose = Bucket::new(&names[1], "k", Limit::sliding(Quota::per_hour(100)));
    let burst = Bucket::new(
        &names[2],
        "k",
        Limit::token_bucket(Quota::per_day(50), 50).unwrap(),
    )
    .with_cost(2);
    let batch = Batch::charge(vec![loose.clone(), tight.clone(), burst.clone()]);

    for i in 0..3 {
        let d = store.apply(&batch).await.unwrap();
        assert!(d.allowed, "request {i}");
        assert_eq!(d.buckets[1].remaining, 2 - i);
    }
    for _ in 0..4 {
        let d = store.apply(&batch).await.unwrap();
        assert!(!d.allowed);
        assert!(d.buckets[0].allowed && !d.buckets[1].allowed && d.buckets[2].allowed);
        // The buckets that admitted are reported as they are, after the give-back.
        assert_eq!(d.buckets[0].remaining, 97);
        assert_eq!(d.buckets[2].remaining, 44);
    }
    let peek = store
        .apply(&Batch::new(Op::Peek, vec![loose.clone(), burst.clone()]))
        .await
        .unwrap();
    assert_eq!(
        peek.buckets[0].remaining, 97,
        "refusals gave their charges back"
    );
    assert_eq!(peek.buckets[1].remaining, 44);
    // A peek says what a charge would answer: refused while one slot's bucket is spent.
    let peek = store
        .apply(&Batch::new(Op::Peek, vec![loose.clone(), tight.clone()]))
        .await
        .unwrap();
    assert!(!peek.allowed);
    assert!(peek.buckets[0].allowed && !peek.buckets[1].allowed);
    assert_eq!(peek.buckets[1].remaining, 0);

    // Concurrent multi-slot charges stay exact in the refusing bucket, and every slot ends
    // with exactly the admitted charges.
    let fresh_tight = Bucket::new(&names[0], "k2", Limit::sliding_exact(Quota::per_hour(40)));
    let fresh_loose = Bucket::new(&names[1], "k2", Limit::sliding(Quota::per_hour(1000)));
    let batch = Arc::new(Batch::charge(vec![fresh_tight, fresh_loose.clone()]));
    let store = Arc::new(store);
    let admitted = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (store, batch, admitted) = (store.clone(), batch.clone(), admitted.clone());
            tokio::spawn(async move {
                for _ in 0..4 {
                    let d = store.apply(&batch).await.unwrap();
                    admitted.fetch_add(u64::from(d.allowed), Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(admitted.load(Ordering::Relaxed), 40);
    let peek = store
        .apply(&Batch::new(Op::Peek, vec![fresh_loose]))
        .await
        .unwrap();
    assert_eq!(peek.buckets[0].remaining, 1000 - 40);

    // A hash tag in the prefix puts a request's keys on one slot: one atomic call.
    let tagged = RedisStore::builder()
        .cluster(cluster.urls())
        .prefix("{tollgate}:")
        .build()
        .unwrap();
    assert!(tagged.apply(&batch).await.unwrap().allowed);
    let (slot, port) = cluster.node_of("{tollgate}:anything");
    let owner = cluster.nodes().iter().find(|n| n.port() == port).unwrap();
    let count = owner.cli(["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]);
    assert_eq!(count.trim(), "2", "both keys of the request in slot {slot}");
}

/// Fixed windows on Redis Cluster: a window's key (`<key>:<window index>`) is on another slot
/// than the bucket's own key unless a hash tag holds them together. Without one, the scripts
/// never read the bucket's key (a count left there in the format before window keys is not
/// carried over, and no call fails for touching another slot); with one, it is carried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_windows_on_a_cluster() {
    let cluster = RedisCluster::start(3);
    let hour_end_ms = {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        (now / 3_600_000 + 1) * 3_600_000
    };
    let limit = Limit::fixed(Quota::per_hour(3));
    for (prefix, carried) in [("tollgate:", 0), ("{tollgate}:", 2)] {
        let store = RedisStore::builder()
            .cluster(cluster.urls())
            .prefix(prefix)
            .refusal_cache(0)
            .build()
            .unwrap();
        // Buckets whose window keys are on another node than their own keys (untagged).
        let name = (0..64)
            .map(|i| format!("fw{i}"))
            .find(|n| {
                let b = Bucket::new(n, "k", limit);
                let at = tollgate_limits::Timestamp::from_micros(hour_end_ms * 1000 - 1);
                prefix.contains('{')
                    || cluster.node_of(&store.redis_key(&b)).1
                        != cluster.node_of(&store.redis_key_at(&b, at)).1
            })
            .unwrap();
        let bucket = Bucket::new(&name, "k", limit);
        let old = store.redis_key(&bucket);
        let owner = cluster.node_of(&old).1;
        let node = cluster.nodes().iter().find(|n| n.port() == owner).unwrap();
        node.cli(["SET", &old, "-2", "PXAT", &hour_end_ms.to_string()]);

        let charge = Batch::charge(vec![bucket.clone()]);
        let d = store.apply(&charge).await.unwrap();
        assert!(d.allowed, "{prefix}");
        assert_eq!(d.buckets[0].remaining, 2 - carried, "{prefix}");
        let peek = Batch::new(Op::Peek, vec![bucket.clone()]);
        assert_eq!(
            store.apply(&peek).await.unwrap().buckets[0].remaining,
            2 - carried
        );
        let refund = Batch::new(Op::Refund, vec![bucket.clone()]);
        assert_eq!(
            store.apply(&refund).await.unwrap().buckets[0].remaining,
            3 - carried
        );
        // With a sliding window of another slot (or the same, tagged).
        let other = Bucket::new("other", "k", Limit::sliding(Quota::per_hour(5)));
        let both = Batch::charge(vec![other, bucket.clone()]);
        let d = store.apply(&both).await.unwrap();
        assert!(d.allowed, "{prefix}");
        assert_eq!(d.buckets[1].remaining, 2 - carried, "{prefix}");
        let reset = Batch::new(Op::Reset, vec![bucket.clone()]);
        let _ = store.apply(&reset).await.unwrap();
        assert_eq!(store.apply(&peek).await.unwrap().buckets[0].remaining, 3);
    }
}

/// A fixed window whose bucket's own key is on another slot of the same node, where a script
/// could read it: the calls still never read it. A peek of a window no charge has touched yet
/// does not carry over a count left there in the format before window keys, and a reset
/// leaves that key alone. Decided on a manual clock in the middle of the hour, so the window
/// cannot turn during the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_window_never_reads_its_own_key_on_another_slot_of_its_node() {
    let cluster = RedisCluster::start(3);
    // The middle of this hour: the window ends half an hour later on the store's clock.
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let start = std::time::Duration::from_secs(real.as_secs() / 3600 * 3600 + 1800);
    let now = Timestamp::from_micros(start.as_micros() as u64);
    let limit = Limit::fixed(Quota::per_hour(3));
    let store = RedisStore::builder()
        .cluster(cluster.urls())
        .refusal_cache(0)
        .clock(ManualClock::new(start))
        .build()
        .unwrap();
    let bucket = (0..256)
        .map(|i| Bucket::new(&format!("fw{i}"), "k", limit))
        .find(|b| {
            let own = cluster.node_of(&store.redis_key(b));
            let window = cluster.node_of(&store.redis_key_at(b, now));
            own.0 != window.0 && own.1 == window.1
        })
        .expect("a bucket whose two keys are on one node, in two slots");
    let old = store.redis_key(&bucket);
    let owner = cluster.node_of(&old).1;
    let node = cluster.nodes().iter().find(|n| n.port() == owner).unwrap();
    // Two counted in the format before window keys, expiring with the window.
    node.cli(["SET", &old, "-2", "PX", "1800000"]);

    let peek = Batch::new(Op::Peek, vec![bucket.clone()]);
    let d = store.apply(&peek).await.unwrap();
    assert!(d.allowed);
    assert_eq!(d.buckets[0].remaining, 3, "nothing carried over");
    let _ = store
        .apply(&Batch::new(Op::Reset, vec![bucket.clone()]))
        .await
        .unwrap();
    assert_eq!(
        node.cli(["GET", &old]).trim(),
        "-2",
        "the old key is left alone"
    );
    assert_eq!(store.apply(&peek).await.unwrap().buckets[0].remaining, 3);
}

/// A charge given back after the response at the time the decision says
/// (`Op::RefundAt(decision.now)`, a `304` under `refund_if`, a response a guard does not
/// count) finds each slot's own entry of an exact log, whatever node answered first: the
/// decision's time is the earliest of the nodes'. At the latest, the node that answered
/// earlier found no entry at or after it and kept the charge (a review: 10 refunded
/// requests left 3 counted in one bucket and 7 in the other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_given_back_at_its_time_leaves_nothing_on_any_slot() {
    let cluster = RedisCluster::start(3);
    let store = cluster_store(&cluster);
    let names: Vec<String> = names_on_each_node(&cluster, "r")
        .into_iter()
        .map(|(_, name)| name)
        .collect();
    let limit = Limit::sliding_exact(Quota::per_hour(50));
    let buckets: Vec<Bucket> = names.iter().map(|n| Bucket::new(n, "k", limit)).collect();
    for round in 0..10 {
        let d = apply(&store, Op::Charge, &buckets).await;
        assert!(d.allowed, "round {round}");
        let _ = apply(&store, Op::RefundAt(d.now), &buckets).await;
        let left = apply(&store, Op::Peek, &buckets).await;
        let remaining: Vec<u64> = left.buckets.iter().map(|b| b.remaining).collect();
        assert_eq!(remaining, vec![50; names.len()], "round {round}");
    }
}

/// A charge given back because another slot refused is given back where it was placed,
/// not as the newest entry of an exact log: a request admitted on the first slot while
/// the refusing slot was slow to answer keeps its own entry, and the window does not
/// free before it leaves (a review saw 21 of 20 admitted within one window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_back_after_a_refusal_removes_its_own_entry() {
    let cluster = RedisCluster::start(3);
    let store = cluster_store(&cluster);
    // Two keys on two nodes.
    let mut nodes = names_on_each_node(&cluster, "g").into_iter();
    let (_, a) = nodes.next().unwrap();
    let (port_b, b) = nodes.next().unwrap();
    let window = Quota::new(2, std::time::Duration::from_secs(2)).unwrap();
    let a = Bucket::new(&a, "k", Limit::sliding_exact(window));
    let b = Bucket::new(&b, "k", Limit::sliding_exact(Quota::per_hour(1)));
    assert!(
        apply(&store, Op::Charge, std::slice::from_ref(&b))
            .await
            .allowed
    );

    // A charged (its first entry), B slow to refuse; meanwhile another request takes A's
    // second place.
    let node_b = cluster.nodes().iter().find(|n| n.port() == port_b).unwrap();
    node_b.pause();
    let charged_at = std::time::Instant::now();
    let both = Batch::charge(vec![a.clone(), b.clone()]);
    let (refused, admitted) = tokio::join!(store.apply(&both), async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let d = apply(&store, Op::Charge, std::slice::from_ref(&a)).await;
        node_b.resume();
        d
    });
    assert!(!refused.unwrap().allowed);
    assert!(admitted.allowed);
    // Once the first entry's window is over, the second request's entry still counts.
    tokio::time::sleep(std::time::Duration::from_millis(2050).saturating_sub(charged_at.elapsed()))
        .await;
    let left = apply(&store, Op::Peek, std::slice::from_ref(&a)).await;
    assert!(charged_at.elapsed() < std::time::Duration::from_millis(2100));
    assert_eq!(left.buckets[0].remaining, 1);
}

/// Requests refused by one slot while another slot's token bucket charged them, many at
/// once: every charge is given back whole, and the bucket is full again (a re-check found
/// give-backs at the charges' times keeping what refilled between charge and give-back,
/// which added up to a token kept when they overlapped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_give_backs_leave_a_token_bucket_full() {
    let cluster = RedisCluster::start(3);
    let store = cluster_store(&cluster);
    let mut names = names_on_each_node(&cluster, "t")
        .into_iter()
        .map(|(_, name)| name);
    let (a, b) = (names.next().unwrap(), names.next().unwrap());
    let a = Bucket::new(
        &a,
        "k",
        Limit::token_bucket(Quota::per_hour(10), 10).unwrap(),
    );
    let b = Bucket::new(&b, "k", Limit::sliding(Quota::per_hour(1)));
    assert!(
        apply(&store, Op::Charge, std::slice::from_ref(&b))
            .await
            .allowed
    );
    for round in 0..5 {
        let both = Batch::charge(vec![a.clone(), b.clone()]);
        let answers = futures_util::future::join_all((0..32).map(|_| store.apply(&both))).await;
        assert!(answers.iter().all(|d| !d.as_ref().unwrap().allowed));
        let left = apply(&store, Op::Peek, std::slice::from_ref(&a)).await;
        assert_eq!(left.buckets[0].remaining, 10, "round {round}");
    }
}

/// A store made on one node's URL (`REDIS_URL` naming a node of a cluster): a key another
/// node serves is refused with a redirection, and the error says how to connect to a
/// cluster (a review: the demo's warning said only `Moved: 12561 127.0.0.1:58002`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_on_one_node_of_a_cluster_says_to_connect_to_the_cluster() {
    let cluster = RedisCluster::start(3);
    let first = &cluster.nodes()[0];
    let store = RedisStore::open(&first.url()).unwrap();
    let elsewhere = (0..256)
        .map(|i| Bucket::new(&format!("m{i}"), "k", Limit::sliding(Quota::per_hour(10))))
        .find(|b| cluster.node_of(&store.redis_key(b)).1 != first.port())
        .unwrap();
    let error = store
        .apply(&Batch::charge(vec![elsewhere]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("MOVED") && error.contains("RedisStoreBuilder::cluster"),
        "{error}"
    );
}

/// A master paused, on a store without a fallback: each call on its keys fails within the
/// store's timeouts (the answer's, and a connection's when one is made afresh), not after
/// the cluster client's retries and reconnections (a review: up to 8 s, p90 5.5 s, with a
/// response timeout of 500 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_a_paused_master_fail_within_the_store_s_timeouts() {
    let cluster = RedisCluster::start(3);
    let (response, connection) = (
        std::time::Duration::from_millis(200),
        std::time::Duration::from_millis(300),
    );
    let store = RedisStore::builder()
        .cluster(cluster.urls())
        .refusal_cache(0)
        .response_timeout(response)
        .connection_timeout(connection)
        .build()
        .unwrap();
    let first = &cluster.nodes()[0];
    let on_first = (0..256)
        .map(|i| Bucket::new(&format!("p{i}"), "k", Limit::sliding(Quota::per_hour(1000))))
        .find(|b| cluster.node_of(&store.redis_key(b)).1 == first.port())
        .unwrap();
    let charge = Batch::charge(vec![on_first]);
    assert!(store.apply(&charge).await.unwrap().allowed);
    first.pause();
    let mut slowest = std::time::Duration::ZERO;
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(4) {
        let sent = std::time::Instant::now();
        assert!(store.apply(&charge).await.is_err());
        slowest = slowest.max(sent.elapsed());
    }
    first.resume();
    assert!(
        slowest <= response + connection + std::time::Duration::from_millis(200),
        "a call took {slowest:?}"
    );
}
