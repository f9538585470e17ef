//! Many OS threads deciding against the same keys of one [`MemoryStore`] at the same
//! instant: exactly the limit is admitted, a refused batch charges nothing, and locking
//! several shards in one decision never deadlocks.

use std::sync::mpsc;
use std::sync::Barrier;
use std::thread;
use std::time::Duration;

use tollgate_limits::{Bucket, Limit, ManualClock, MemoryStore, Op, Quota};

const THREADS: usize = 8;

/// Runs `work` on a helper thread and fails the test if it has not finished within a
/// minute (a deadlock), instead of hanging.
fn within_a_minute<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(work());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the threads did not finish within a minute: deadlock?")
}

/// A store whose clock never moves, so nothing is refilled while the threads run.
fn frozen_store() -> MemoryStore {
    let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
    MemoryStore::builder().shards(64).clock(clock).build()
}

/// Each of `THREADS` threads makes `attempts` calls of `buckets_for(thread)`, all released
/// at once; returns how many each thread had admitted.
fn hammer(
    store: &MemoryStore,
    attempts: usize,
    buckets_for: impl Fn(usize) -> Vec<Bucket> + Sync,
) -> Vec<usize> {
    let start = Barrier::new(THREADS);
    thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let (start, buckets_for) = (&start, &buckets_for);
                s.spawn(move || {
                    let buckets = buckets_for(i);
                    start.wait();
                    (0..attempts)
                        .filter(|_| store.charge(&buckets).unwrap().allowed)
                        .count()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a deciding thread panicked"))
            .collect()
    })
}

#[test]
fn threads_hammering_one_key_admit_exactly_the_limit() {
    let q = Quota::per_minute(1000);
    let limits = [
        Limit::sliding(q),
        Limit::sliding_exact(q),
        Limit::token_bucket(q, 1000).expect("valid burst"),
        Limit::fixed(q),
    ];
    for limit in limits {
        let store = frozen_store();
        let key = Bucket::new("hot", "203.0.113.7", limit);
        let admitted = within_a_minute({
            let (store, key) = (store.clone(), key.clone());
            move || hammer(&store, 400, |_| vec![key.clone()])
        });
        assert_eq!(
            admitted.iter().sum::<usize>(),
            1000,
            "{limit}: {admitted:?}"
        );
        let left = store.apply_now(Op::Peek, &[key]).unwrap();
        assert!(!left.allowed, "{limit}");
        assert_eq!(left.buckets[0].remaining, 0, "{limit}");
    }
}

#[test]
fn concurrent_costs_add_up_exactly() {
    // Costs 1 to 3 race for 1000 points: no charge is lost or counted twice, so what was
    // admitted and what remains add up to the limit.
    let limit = Limit::sliding_exact(Quota::per_minute(1000));
    let store = frozen_store();
    let admitted = within_a_minute({
        let store = store.clone();
        move || {
            hammer(&store, 300, |i| {
                vec![Bucket::new("points", "tenant-1", limit).with_cost(i as u64 % 3 + 1)]
            })
        }
    });
    let spent: u64 = admitted
        .iter()
        .enumerate()
        .map(|(i, n)| (i as u64 % 3 + 1) * *n as u64)
        .sum();
    let left = store
        .apply_now(Op::Peek, &[Bucket::new("points", "tenant-1", limit)])
        .unwrap();
    assert_eq!(spent + left.buckets[0].remaining, 1000, "{admitted:?}");
    assert!(
        spent >= 998,
        "a cost of 1 or more must fit while 3 or more are left"
    );
}

#[test]
fn threads_hammering_one_batch_across_shards_admit_exactly_the_tightest_limit() {
    // Six shared buckets (64 shards: they land in several) plus one private bucket per
    // thread; each thread lists the shared buckets in a different order.
    let caps = [300u64, 1000, 500, 800, 2000, 350];
    let shared: Vec<Bucket> = caps
        .iter()
        .enumerate()
        .map(|(i, &cap)| {
            let limit = match i % 4 {
                0 => Limit::sliding(Quota::per_minute(cap)),
                1 => Limit::sliding_exact(Quota::per_minute(cap)),
                2 => Limit::token_bucket(Quota::per_minute(cap), cap).expect("valid burst"),
                _ => Limit::fixed(Quota::per_minute(cap)),
            };
            Bucket::new(&format!("shared{i}"), "all", limit)
        })
        .collect();
    let private = |i: usize| {
        Bucket::new(
            "private",
            &format!("thread-{i}"),
            Limit::sliding(Quota::per_minute(1000)),
        )
    };
    let store = frozen_store();
    let admitted = within_a_minute({
        let (store, shared) = (store.clone(), shared.clone());
        move || {
            hammer(&store, 200, |i| {
                let mut buckets = shared.clone();
                buckets.rotate_left(i % shared.len());
                if i % 2 == 0 {
                    buckets.reverse();
                }
                buckets.insert(i % 4, private(i));
                buckets
            })
        }
    });
    assert_eq!(admitted.iter().sum::<usize>(), 300, "{admitted:?}");
    // Refused batches charged nothing: every shared bucket spent exactly 300 ...
    let after = store.apply_now(Op::Peek, &shared).unwrap();
    for (state, cap) in after.buckets.iter().zip(caps) {
        assert_eq!(state.remaining, cap - 300);
    }
    // ... and each private bucket exactly what its thread was admitted.
    for (i, n) in admitted.iter().enumerate() {
        let own = store.apply_now(Op::Peek, &[private(i)]).unwrap();
        assert_eq!(own.buckets[0].remaining, 1000 - *n as u64, "thread {i}");
    }
}
