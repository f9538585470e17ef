//! Several app instances share one budget exactly: 4 stores (4 separate connections, as 4
//! processes would have) and 64 concurrent tasks spend one key with limit N; exactly N are
//! admitted, for every algorithm, and a refused request charges none of its buckets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tollgate_limits::{Batch, Bucket, Limit, Op, Quota, Store};
use tollgate_redis::RedisStore;
use tollgate_testkit::RedisServer;

const INSTANCES: usize = 4;
const TASKS: usize = 64;
const ATTEMPTS_PER_TASK: usize = 6;
const N: u64 = 150;

/// Spends `batch` from 64 tasks spread over the instances; returns how many were admitted.
async fn spend(instances: &[Arc<RedisStore>], batch: Batch) -> u64 {
    let admitted = Arc::new(AtomicU64::new(0));
    let batch = Arc::new(batch);
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = instances[t % instances.len()].clone();
            let (batch, admitted) = (batch.clone(), admitted.clone());
            tokio::spawn(async move {
                for _ in 0..ATTEMPTS_PER_TASK {
                    let d = store.apply(&batch).await.expect("redis answers");
                    if d.allowed {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    admitted.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_n_admitted_across_four_instances() {
    let server = RedisServer::start();
    let instances: Vec<Arc<RedisStore>> = (0..INSTANCES)
        .map(|_| Arc::new(RedisStore::open(&server.url()).unwrap()))
        .collect();
    let q = Quota::per_hour(N);
    // Long windows: nothing refills or rolls over during the test (the fixed window is one
    // of 400 days, so no boundary falls inside it either).
    let limits = [
        Limit::sliding(q),
        Limit::sliding_exact(q),
        Limit::token_bucket(Quota::per_day(N), N).unwrap(),
        Limit::fixed(Quota::new(N, tollgate_limits::MAX_PERIOD).unwrap()),
    ];
    for (i, limit) in limits.iter().enumerate() {
        let bucket = Bucket::new("shared", &format!("key{i}"), *limit);
        let admitted = spend(&instances, Batch::charge(vec![bucket])).await;
        assert_eq!(
            admitted,
            N,
            "{limit}: {admitted} admitted of {} tries",
            TASKS * ATTEMPTS_PER_TASK
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_charge_no_bucket_under_concurrency() {
    let server = RedisServer::start();
    let instances: Vec<Arc<RedisStore>> = (0..INSTANCES)
        .map(|_| Arc::new(RedisStore::open(&server.url()).unwrap()))
        .collect();
    let tight = Bucket::new("tight", "k", Limit::sliding_exact(Quota::per_hour(N)));
    let loose = Bucket::new("loose", "k", Limit::sliding(Quota::per_hour(10_000)));
    let costly = Bucket::new("costly", "k", Limit::fixed(Quota::per_day(100_000))).with_cost(7);
    let admitted = spend(
        &instances,
        Batch::charge(vec![tight, loose.clone(), costly.clone()]),
    )
    .await;
    assert_eq!(admitted, N);
    // The other buckets were charged for the admitted requests only.
    let peek = instances[0]
        .apply(&Batch::new(Op::Peek, vec![loose, costly]))
        .await
        .unwrap();
    assert_eq!(peek.buckets[0].remaining, 10_000 - N);
    assert_eq!(peek.buckets[1].remaining, 100_000 - 7 * N);
}
