//! Instances that disagree on a limit's shape share one key: during a rolling deploy, or
//! after a config reload on one instance only, instance A may hold a token bucket
//! `5/min burst 2` for a bucket name and instance B a sliding window `5/min` (or another
//! sliding window's shape, or an exact log). A call that found the key holding the other
//! shape's state took the key as fresh and overwrote it, so requests alternating between
//! A and B were all admitted (40 of 40 on a 5/min route). What the other shape's state
//! still counts now carries over, placed as a restore places a count (decide.lua), so the
//! key admits at most the looser limit's count. (The memory store starts afresh on a
//! shape change within one process: it never has two shapes at once.)

mod common;

use std::time::Duration;

use tollgate_limits::{Batch, Bucket, Limit, Op, Quota, Store};
use tollgate_redis::RedisStore;
use tollgate_testkit::RedisServer;

/// Two limits of one bucket name, and what alternating charges between them admit within
/// one window: the looser limit's count.
fn pairs() -> Vec<(&'static str, Limit, Limit, usize)> {
    let per_minute = Quota::per_minute(5);
    let ten_per_two_minutes = Quota::new(10, Duration::from_secs(120)).unwrap();
    vec![
        (
            "token bucket vs sliding window",
            Limit::token_bucket(per_minute, 2).unwrap(),
            Limit::sliding(per_minute),
            5,
        ),
        (
            "sliding windows of two shapes",
            Limit::sliding(per_minute),
            Limit::sliding(ten_per_two_minutes),
            10,
        ),
        (
            "sliding window vs exact log",
            Limit::sliding(per_minute),
            Limit::sliding_exact(per_minute),
            5,
        ),
        (
            "token bucket vs exact log",
            Limit::token_bucket(per_minute, 2).unwrap(),
            Limit::sliding_exact(per_minute),
            5,
        ),
    ]
}

async fn charge(store: &RedisStore, bucket: &Bucket) -> bool {
    store
        .apply(&Batch::charge(vec![bucket.clone()]))
        .await
        .unwrap()
        .allowed
}

/// Two instances (two stores, one Redis), each with its own limit for the key, charging
/// it in turn, 40 times, either one first: the key stays limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternating_between_two_shapes_admits_at_most_the_looser_limit() {
    let server = RedisServer::start();
    let (a, b) = (common::uncached(&server), common::uncached(&server));
    for (name, limit_a, limit_b, looser) in pairs() {
        for a_first in [true, false] {
            let key = format!("{name}, A first: {a_first}");
            let on_a = Bucket::new("route", &key, limit_a);
            let on_b = Bucket::new("route", &key, limit_b);
            let mut admitted = 0;
            for turn in 0..40 {
                let allowed = if (turn % 2 == 0) == a_first {
                    charge(&a, &on_a).await
                } else {
                    charge(&b, &on_b).await
                };
                admitted += usize::from(allowed);
            }
            assert_eq!(admitted, looser, "{key}");
            // A look under either limit sees the key spent (and changes nothing).
            for (store, bucket) in [(&a, &on_a), (&b, &on_b)] {
                let peek = store
                    .apply(&Batch::new(Op::Peek, vec![bucket.clone()]))
                    .await
                    .unwrap();
                assert_eq!(peek.buckets[0].remaining, 0, "{key}: {}", bucket.limit);
            }
            assert!(
                !charge(&a, &on_a).await && !charge(&b, &on_b).await,
                "{key}"
            );
        }
    }
}

/// One store called with a limit, then (a reload) with another shape for the same key:
/// what was counted carries over instead of starting afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_reloaded_with_another_shape_keeps_what_was_counted() {
    let server = RedisServer::start();
    let store = common::uncached(&server);
    for (name, limit_a, limit_b, _) in pairs() {
        for (from, to) in [(limit_a, limit_b), (limit_b, limit_a)] {
            for spent in 1..=2 {
                let key = format!("{name}: {from} to {to}, {spent} spent");
                let before = Bucket::new("reload", &key, from);
                let after = Bucket::new("reload", &key, to);
                for _ in 0..spent {
                    assert!(charge(&store, &before).await, "{key}");
                }
                // A burst under the new limit: what it holds, less what was counted.
                let mut admitted = 0;
                for _ in 0..20 {
                    admitted += u64::from(charge(&store, &after).await);
                }
                assert_eq!(admitted, to.capacity() - spent, "{key}");
            }
        }
    }
}

/// What carries over counts as admitted now: a sliding window reads a token bucket's TAT as
/// tokens that leave this window a whole window from now (not at the TAT, which may be
/// sooner), and a token bucket places a sliding window's count as a TAT as far ahead as the
/// count is fresh, at least a window (at most the count's worth). As every call places it
/// anew, a call refused on it is told to wait until the other state is fresh, and a look
/// sees the bucket full again then. (A review: a sliding 20/min spent, then reloaded as a
/// token bucket of 60/min burst 20, told `Retry-After: 1` on every call for a minute.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_carries_over_counts_as_admitted_now() {
    let server = RedisServer::start();
    let store = common::uncached(&server);
    let per_minute = Quota::per_minute(5);
    let bucket = Limit::token_bucket(per_minute, 2).unwrap();
    let window = Limit::sliding(per_minute);
    let about = |d: Duration, secs: u64| {
        d <= Duration::from_secs(secs) && d > Duration::from_secs(secs - 2)
    };

    // 2 tokens spent (24 s ahead), then read by the sliding window: 2 counted, placed now
    // (a charge now would leave them in a minute); nothing else coming, the key is fresh
    // when the token bucket's state is, in 24 s.
    let tb = Bucket::new("leave", "tb", bucket);
    assert!(charge(&store, &tb).await && charge(&store, &tb).await);
    let d = store
        .apply(&Batch::new(
            Op::Peek,
            vec![Bucket::new("leave", "tb", window)],
        ))
        .await
        .unwrap();
    assert_eq!(d.buckets[0].remaining, 3);
    assert!(
        about(d.buckets[0].reset_after, 24),
        "{:?}",
        d.buckets[0].reset_after
    );

    // 5 counted in a sliding window now, read by the token bucket: fresh again in a
    // minute, 5 tokens' worth, so its TAT is a minute ahead; each call places it so, and
    // the first admitted is the one after the window's count leaves, in a minute (it was
    // told 48 s, when one token of the bucket so placed fits).
    let sw = Bucket::new("leave", "sw", window);
    for _ in 0..5 {
        assert!(charge(&store, &sw).await);
    }
    let d = store
        .apply(&Batch::charge(vec![Bucket::new("leave", "sw", bucket)]))
        .await
        .unwrap();
    assert!(!d.allowed);
    let wait = d.buckets[0].retry_after.unwrap();
    assert!(about(wait, 60), "{wait:?}");
    assert!(
        about(d.buckets[0].reset_after, 60),
        "{:?}",
        d.buckets[0].reset_after
    );
    assert_eq!(d.buckets[0].remaining, 0);

    // The review's reload: a sliding 20/min spent, then a token bucket of 60/min, burst 20.
    let sliding = Limit::sliding(Quota::per_minute(20));
    let refilling = Limit::token_bucket(Quota::per_minute(60), 20).unwrap();
    let spent = Bucket::new("reload", "spent", sliding);
    for _ in 0..20 {
        assert!(charge(&store, &spent).await);
    }
    for _ in 0..3 {
        let d = store
            .apply(&Batch::charge(vec![Bucket::new(
                "reload", "spent", refilling,
            )]))
            .await
            .unwrap();
        assert!(!d.allowed);
        let wait = d.buckets[0].retry_after.unwrap();
        assert!(about(wait, 60), "{wait:?}");
    }
}

/// Alternating instances stay within the looser limit in its window, not only at one
/// instant: what one limit counted carries over into the other's window whole (as if
/// admitted now), so it is not forgotten when the shorter window would forget it. A review
/// had 10 admitted at once, then 5 more 61 s later, against 5/min and 10/2min. Decided on
/// the stores' manual clock (a fixed window in each call puts it on the instance's clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternating_shapes_stay_within_the_looser_limit_over_its_window() {
    let server = RedisServer::start();
    let clock = tollgate_limits::ManualClock::new(Duration::from_secs(1_700_000_000));
    let (a, b) = (on_clock(&server, &clock), on_clock(&server, &clock));
    let on_clock = Bucket::new("clock", "any", Limit::fixed(Quota::per_day(1_000_000)));
    let looser = Quota::new(10, Duration::from_secs(120)).unwrap();
    for (name, limit_a, limit_b) in [
        (
            "sliding",
            Limit::sliding(Quota::per_minute(5)),
            Limit::sliding(looser),
        ),
        (
            "exact",
            Limit::sliding_exact(Quota::per_minute(5)),
            Limit::sliding(looser),
        ),
        (
            "token bucket",
            Limit::token_bucket(Quota::per_minute(5), 5).unwrap(),
            Limit::sliding_exact(looser),
        ),
    ] {
        let on_a = Bucket::new("route", name, limit_a);
        let on_b = Bucket::new("route", name, limit_b);
        let mut admitted = 0;
        for round in 0..2 {
            for turn in 0..20 {
                let (s, bucket) = if turn % 2 == 0 {
                    (&a, &on_a)
                } else {
                    (&b, &on_b)
                };
                let batch = Batch::charge(vec![on_clock.clone(), bucket.clone()]);
                admitted += usize::from(s.apply(&batch).await.unwrap().allowed);
            }
            if round == 0 {
                clock.advance(Duration::from_secs(61));
            }
        }
        assert_eq!(admitted, 10, "{name}: 10/2min over 61 s");
        clock.advance(Duration::from_secs(120));
    }
}

/// A store on `clock` (a fixed window in each call puts the script on the instance's clock).
fn on_clock(server: &RedisServer, clock: &tollgate_limits::ManualClock) -> RedisStore {
    RedisStore::builder()
        .url(server.url())
        .refusal_cache(0)
        .clock(clock.clone())
        .build()
        .unwrap()
}

/// A charge of `bucket` beside a fixed window (so decided on the store's clock): whether it
/// was admitted, and the wait it was told.
async fn charge_on_clock(store: &RedisStore, bucket: &Bucket) -> (bool, Option<Duration>) {
    let clocked = Bucket::new("clock", "any", Limit::fixed(Quota::per_day(1_000_000)));
    let d = store
        .apply(&Batch::charge(vec![clocked, bucket.clone()]))
        .await
        .unwrap();
    (d.allowed, d.buckets[1].retry_after)
}

/// A limit reloaded with a longer window holds what the shorter one counted for the whole
/// of the new window from the change, in every shape: the key is written in the new shape
/// by the first call, refused or not. A review: a sliding 50/min spent, reloaded as 50/h,
/// was refused and told 60 s, the key left in the old shape, and 61 s later it expired
/// and the hour's 50 were admitted again (100 in 61 s against 50/h).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lengthened_window_holds_what_was_counted_for_its_own_window() {
    let server = RedisServer::start();
    let clock = tollgate_limits::ManualClock::new(Duration::from_secs(1_700_000_000));
    let store = on_clock(&server, &clock);
    let hour = Quota::per_hour(5);
    let minute = Quota::per_minute(5);
    for (name, before, after) in [
        ("sliding", Limit::sliding(minute), Limit::sliding(hour)),
        ("exact", Limit::sliding(minute), Limit::sliding_exact(hour)),
        (
            "token bucket",
            Limit::sliding(minute),
            Limit::token_bucket(hour, 5).unwrap(),
        ),
        (
            "from a token bucket",
            Limit::token_bucket(minute, 5).unwrap(),
            Limit::sliding(hour),
        ),
    ] {
        let before = Bucket::new("lengthened", name, before);
        for _ in 0..5 {
            assert!(charge_on_clock(&store, &before).await.0, "{name}");
        }
        let after = Bucket::new("lengthened", name, after);
        let (admitted, wait) = charge_on_clock(&store, &after).await;
        assert!(!admitted, "{name}");
        let wait = wait.unwrap();
        // (At least one token's time of the hour's five.)
        assert!(
            wait >= Duration::from_secs(12 * 60),
            "{name}: told {wait:?}"
        );
        // The minute the old shape counted in is over: the hour's is not.
        clock.advance(Duration::from_secs(61));
        let mut admitted = 0;
        for _ in 0..10 {
            admitted += usize::from(charge_on_clock(&store, &after).await.0);
        }
        assert_eq!(admitted, 0, "{name}: after 61 s");
        // An hour after the change the whole quota is there again.
        clock.advance(Duration::from_secs(3600));
        let mut admitted = 0;
        for _ in 0..10 {
            admitted += usize::from(charge_on_clock(&store, &after).await.0);
        }
        assert_eq!(admitted, 5, "{name}: an hour on");
        clock.advance(Duration::from_secs(7200));
    }
}

/// Refused on what another shape still counts (a shorter window now: the old state is left
/// as it is), a call is told to wait until enough of it leaves for the cost to fit, and is
/// admitted then, not when all of it has left. A review: a token bucket of 1/h, burst 50,
/// spent, reloaded as a sliding 50/min, was told `Retry-After` of 50 hours, and one
/// request was admitted an hour later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_on_what_another_shape_counts_waits_until_enough_of_it_leaves() {
    let server = RedisServer::start();
    let clock = tollgate_limits::ManualClock::new(Duration::from_secs(1_700_000_000));
    let store = on_clock(&server, &clock);
    let minute = Limit::sliding(Quota::per_minute(5));

    // 5 tokens of 1/h taken: one is back in an hour, all of them in five.
    let spent = Bucket::new(
        "shortened",
        "tb",
        Limit::token_bucket(Quota::per_hour(1), 5).unwrap(),
    );
    for _ in 0..5 {
        assert!(charge_on_clock(&store, &spent).await.0);
    }
    let after = Bucket::new("shortened", "tb", minute);
    refused_until(&store, &clock, &after, 3600).await;

    // A sliding 5/h: 3 admitted, then 2 half an hour later. Under 5/min one must leave: the
    // 3 do, half an hour on (not an hour, when the 2 do).
    let hourly = Bucket::new("shortened", "sw", Limit::sliding(Quota::per_hour(5)));
    for _ in 0..3 {
        assert!(charge_on_clock(&store, &hourly).await.0);
    }
    clock.advance(Duration::from_secs(1800));
    for _ in 0..2 {
        assert!(charge_on_clock(&store, &hourly).await.0);
    }
    let after = Bucket::new("shortened", "sw", minute);
    refused_until(&store, &clock, &after, 1800).await;
}

/// A charge of `bucket` is refused and told to wait about `secs` seconds, and once they
/// have passed on `clock` a charge is admitted.
async fn refused_until(
    store: &RedisStore,
    clock: &tollgate_limits::ManualClock,
    bucket: &Bucket,
    secs: u64,
) {
    let (admitted, wait) = charge_on_clock(store, bucket).await;
    assert!(!admitted, "{}", bucket.key);
    let wait = wait.unwrap();
    assert!(
        wait <= Duration::from_secs(secs) && wait > Duration::from_secs(secs - 2),
        "{}: told {wait:?}",
        bucket.key
    );
    clock.advance(wait);
    assert!(charge_on_clock(store, bucket).await.0, "{}", bucket.key);
}

/// Two instances holding two shapes of one limit, a client spent on the first and then
/// sending to each in turn: it is admitted again once what it spent has left the longer
/// window, not refused for as long as it keeps sending. A review (of the fix that writes a
/// lengthened window's count in its shape): each refusal, on either side, dated the count
/// anew, and a client alternating between 5/2s and 5/20s was admitted 0 times in 62 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_alternating_between_two_shapes_is_admitted_once_its_count_leaves() {
    let server = RedisServer::start();
    let clock = tollgate_limits::ManualClock::new(Duration::from_secs(1_700_000_000));
    let (a, b) = (on_clock(&server, &clock), on_clock(&server, &clock));
    let ten_minutes = Quota::new(5, Duration::from_secs(600)).unwrap();
    for (name, spent_on, other, window, step) in [
        (
            "sliding 5/10min beside 5/min",
            Limit::sliding(ten_minutes),
            Limit::sliding(Quota::per_minute(5)),
            600,
            30,
        ),
        (
            "sliding 5/min beside exact 5/min",
            Limit::sliding(Quota::per_minute(5)),
            Limit::sliding_exact(Quota::per_minute(5)),
            60,
            5,
        ),
        (
            "exact 5/min beside sliding 5/min",
            Limit::sliding_exact(Quota::per_minute(5)),
            Limit::sliding(Quota::per_minute(5)),
            60,
            5,
        ),
        (
            "sliding 5/min beside a token bucket of 5/min",
            Limit::sliding(Quota::per_minute(5)),
            Limit::token_bucket(Quota::per_minute(5), 5).unwrap(),
            60,
            5,
        ),
    ] {
        let on_a = Bucket::new("alternating", name, spent_on);
        let on_b = Bucket::new("alternating", name, other);
        for _ in 0..5 {
            assert!(charge_on_clock(&a, &on_a).await.0, "{name}");
        }
        let mut first = None;
        for turn in 1..=(2 * window / step) {
            clock.advance(Duration::from_secs(step));
            let (store, bucket) = if turn % 2 == 0 {
                (&a, &on_a)
            } else {
                (&b, &on_b)
            };
            if charge_on_clock(store, bucket).await.0 {
                first = Some(turn * step);
                break;
            }
        }
        let first = first.unwrap_or_else(|| panic!("{name}: never admitted"));
        assert!(
            (window..=window + step).contains(&first),
            "{name}: first admitted at {first} s"
        );
        clock.advance(Duration::from_secs(3600));
    }
}
