//! `FallbackStore` over Redis Cluster through a master's outage: what memory admitted is
//! given back to each slot once, and a master that restarted empty is noticed and its keys
//! written back.

mod common;

use std::time::Duration;

use common::{cluster_store, wait_for_mode};
use tollgate_limits::{Batch, Bucket, Limit, MemoryStore, Op, Quota, Store};
use tollgate_redis::{FallbackConfig, FallbackStore, Mode, RedisStore};
use tollgate_testkit::RedisCluster;

/// The port of the node serving `key`.
fn port_of(cluster: &RedisCluster, key: &str) -> u16 {
    cluster.node_of(key).1
}

/// Two buckets of 100 an hour: one on the node `down` will name (not the one the
/// fallback's probe asks), one on another node; and `down`'s index among the nodes.
fn two_nodes(cluster: &RedisCluster) -> (Bucket, Bucket, usize) {
    let probe = port_of(cluster, "tollgate:tollgate-probe:health");
    let bucket = |port: u16| {
        (0..256)
            .map(|i| format!("k{i}"))
            .find(|name| port_of(cluster, &format!("tollgate:{name}:x")) == port)
            .map(|name| Bucket::new(&name, "x", Limit::sliding(Quota::per_hour(100))))
            .unwrap()
    };
    let others: Vec<usize> = (0..cluster.nodes().len())
        .filter(|&i| cluster.nodes()[i].port() != probe)
        .collect();
    let (down, live) = (others[0], others[1]);
    (
        bucket(cluster.nodes()[down].port()),
        bucket(cluster.nodes()[live].port()),
        down,
    )
}

/// A fallback store on `cluster`, with the default settings.
async fn fallback_on(cluster: &RedisCluster) -> FallbackStore<RedisStore> {
    FallbackStore::connect_with_memory(
        cluster_store(cluster),
        MemoryStore::new(),
        FallbackConfig::default(),
    )
    .await
}

/// Charges `buckets` together `n` times through `store`: each admitted.
async fn charge_admitted(store: &FallbackStore<RedisStore>, buckets: &[Bucket], n: usize) {
    for _ in 0..n {
        let batch = Batch::charge(buckets.to_vec());
        assert!(store.apply(&batch).await.unwrap().allowed);
    }
}

/// What `buckets` have left on the cluster; `None` while it does not answer.
async fn remaining(cluster: &RedisCluster, buckets: &[Bucket]) -> Option<Vec<u64>> {
    let d = cluster_store(cluster)
        .apply(&Batch::new(Op::Peek, buckets.to_vec()))
        .await
        .ok()?;
    Some(d.buckets.iter().map(|s| s.remaining).collect())
}

/// A master paused for 3 s while requests charge a key on it and a key on another node:
/// memory admits them, and once every master answers each key is charged what memory
/// admitted, once. Before, the fallback's checks passed on the probe's node, and each gave
/// the outage's admissions back: the calls to the paused master waited there and ran
/// together when it resumed, and those to the other node were sent again with each
/// (a review: keys charged up to 14 times for one admission; here 32 for 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_master_gets_each_admission_back_once() {
    let cluster = RedisCluster::start(3);
    let (on_paused, on_live, down) = two_nodes(&cluster);
    let both = vec![on_paused, on_live];
    let store = fallback_on(&cluster).await;
    assert_eq!(store.mode(), Mode::Primary);
    charge_admitted(&store, &both, 1).await;
    cluster.nodes()[down].pause();
    charge_admitted(&store, &both, 3).await;
    assert_eq!(store.mode(), Mode::Fallback);
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.nodes()[down].resume();
    wait_for_mode(&store, Mode::Primary, Duration::from_secs(10)).await;
    // Calls queued on the paused master would have run by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 1 before and 3 from memory, and the call on its way when the master stopped: it ran
    // when it resumed (on the other node at once), and memory admitted it too, as on a
    // single Redis. Before: 32 charged.
    assert_eq!(remaining(&cluster, &both).await.unwrap(), [95, 95]);
}

/// A master restarted empty while the store decides on the cluster: the change of its
/// `run_id` is noticed, and the counts this instance holds are written back to it. Before,
/// a Redis Cluster's restarts were not noticed, and its keys were admitted afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_restarted_empty_gets_its_counts_written_back() {
    let mut cluster = RedisCluster::start(3);
    let (on_restarted, on_live, down) = two_nodes(&cluster);
    let both = vec![on_restarted, on_live];
    let store = fallback_on(&cluster).await;
    charge_admitted(&store, &both, 5).await;
    cluster.nodes_mut()[down].restart();
    // The store's watch finds the new incarnation, leaves the cluster and writes back.
    let started = std::time::Instant::now();
    loop {
        let left = remaining(&cluster, &both).await;
        if left.as_deref() == Some(&[95, 95]) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not written back: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_mode(&store, Mode::Primary, Duration::from_secs(10)).await;
    assert_eq!(remaining(&cluster, &both).await.unwrap(), [95, 95]);
}

/// A master killed and not yet back: the cluster's incarnation cannot be told (an error),
/// not a new one. Once the client dropped the dead master, `INFO` reached only the others,
/// and the store was told the cluster had restarted while the master was still down (a
/// re-check: "restarted" logged at the kill, before the outage was even noticed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_down_is_not_taken_for_a_restart() {
    let mut cluster = RedisCluster::start(3);
    let (on_killed, _, down) = two_nodes(&cluster);
    let store = cluster_store(&cluster);
    let before = store.incarnation().await.unwrap().unwrap();
    cluster.nodes_mut()[down].kill();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        // Calls on the dead master's keys make the client drop it.
        let _ = store.apply(&Batch::charge(vec![on_killed.clone()])).await;
        if let Ok(id) = store.incarnation().await {
            assert_eq!(id.as_deref(), Some(before.as_str()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
