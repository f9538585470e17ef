//! The memory store stays bounded whatever keys clients invent, and a flood of invented
//! keys never frees a client that is being limited.

use std::fmt::Write as _;
use std::time::Duration;

use tollgate_limits::{Bucket, Limit, ManualClock, MemoryStore, Op, Quota, Refusal, WhenFull};

const T0: Duration = Duration::from_secs(1_700_000_000);

/// Keys at their limit, each reached differently: refused, exhausted exactly, penalized.
fn limited_keys(group: &str) -> Vec<Bucket> {
    vec![
        Bucket::new(
            "login",
            &format!("{group}-alice@example.com"),
            Limit::sliding_exact(Quota::per_minute(5)),
        ),
        Bucket::new(
            "burst",
            &format!("{group}-203.0.113.7"),
            Limit::token_bucket(Quota::per_hour(100), 10).expect("valid burst"),
        ),
        Bucket::new(
            "daily",
            &format!("{group}-key_live_42"),
            Limit::fixed(Quota::per_day(10_000)),
        ),
        Bucket::new(
            "api",
            &format!("{group}-u_7"),
            Limit::sliding(Quota::per_hour(3)),
        ),
    ]
}

/// Brings each key to its limit.
fn exhaust(store: &MemoryStore, keys: &[Bucket]) {
    let [login, burst, daily, api] = keys else {
        unreachable!("four keys")
    };
    let one = std::slice::from_ref;
    for _ in 0..5 {
        assert!(store.charge(one(login)).unwrap().allowed);
    }
    assert!(!store.charge(one(login)).unwrap().allowed);
    let last = store.charge(one(&burst.clone().with_cost(10))).unwrap();
    assert!(last.allowed);
    assert_eq!(last.buckets[0].remaining, 0);
    let penalty = daily.clone().with_cost(12_000);
    assert!(
        store
            .apply_now(Op::Penalize, one(&penalty))
            .unwrap()
            .allowed
    );
    assert!(
        store
            .charge(one(&api.clone().with_cost(3)))
            .unwrap()
            .allowed
    );
    assert!(!store.charge(one(api)).unwrap().allowed);
}

/// Every key is still refused.
fn assert_still_limited(store: &MemoryStore, keys: &[Bucket], when: &str) {
    for key in keys {
        let d = store.charge(std::slice::from_ref(key)).unwrap();
        assert!(!d.allowed, "{} was freed {when}", key.key);
        assert!(d.retry_after().is_some(), "{}", key.key);
    }
}

/// 1,000,000 distinct keys into a store capped at 100,000: the store never holds more
/// than the cap, keys checked during the flood and keys left alone during it all stay
/// limited. About 1 s when tollgate-limits and hashbrown are optimized in test builds
/// (`[profile.dev.package.*]`); about 9 s of CPU in a plain debug build, where the
/// unoptimized hash table dominates.
#[test]
fn a_million_invented_keys_stay_within_the_cap_and_free_no_limited_client() {
    const CAP: usize = 100_000;
    const KEYS: usize = 1_000_000;
    let clock = ManualClock::new(T0);
    let store = MemoryStore::builder()
        .max_entries(CAP)
        .clock(clock.clone())
        .build();
    assert!(store.capacity() <= CAP);
    let watched = limited_keys("watched");
    let untouched = limited_keys("untouched");
    exhaust(&store, &watched);
    exhaust(&store, &untouched);

    // Each invented key is charged once against a limit that keeps it for a minute, so
    // nothing expires during the flood (the clock moves 1 µs per request): the store must
    // evict.
    let mut bucket = Bucket::new("flood", "", Limit::sliding(Quota::per_minute(100)));
    let mut peak = 0;
    for i in 0..KEYS {
        clock.advance(Duration::from_micros(1));
        bucket.key.truncate("flood:".len());
        write!(bucket.key, "{i}").expect("writing to a String");
        assert!(store.charge(std::slice::from_ref(&bucket)).unwrap().allowed);
        if i % 10_000 == 0 {
            let len = store.len();
            assert!(len <= CAP, "{len} entries after {i} keys");
            peak = peak.max(len);
        }
        if i % 5_000 == 0 {
            assert_still_limited(&store, &watched, &format!("after {i} keys"));
        }
    }
    let stats = store.stats();
    assert!(stats.entries <= CAP, "{stats:?}");
    assert!(
        peak >= CAP * 8 / 10,
        "the store should fill up: peak {peak}"
    );
    assert!(stats.evicted >= (KEYS - CAP) as u64, "{stats:?}");
    assert_eq!(stats.evicted_limited, 0, "{stats:?}");
    assert_still_limited(&store, &watched, "at the end");
    // The keys nobody touched for a million requests are limited too.
    assert_still_limited(&store, &untouched, "while idle");
}

/// With [`WhenFull::EvictLimited`], when a bucket's share holds only limited keys, new keys
/// still get stored (and so limited): the least recently seen limited keys make room, never
/// a client that is still being refused.
#[test]
fn a_store_full_of_limited_keys_evicts_the_least_recently_seen_of_them() {
    let clock = ManualClock::new(T0);
    let store = MemoryStore::builder()
        .max_entries(64)
        .clock(clock.clone())
        .build();
    assert_eq!(store.capacity(), 64);
    let tight = Limit::sliding(Quota::per_hour(1));
    let charge = |b: &Bucket| store.charge(std::slice::from_ref(b)).unwrap().allowed;
    let evict = |b: Bucket| b.with_when_full(WhenFull::EvictLimited);
    let victim = evict(Bucket::new("tight", "victim@example.com", tight));
    assert!(charge(&victim));
    for i in 0..63 {
        assert!(charge(&evict(Bucket::new(
            "tight",
            &format!("client-{i}"),
            tight
        ))));
    }
    assert_eq!(store.len(), 64);
    // The victim is refused before the flood starts. (Without this it was last seen in
    // the same microsecond as the 63 clients, and one of 64 equally old keys could go:
    // the test failed about once in 60 runs.)
    clock.advance(Duration::from_micros(1));
    assert!(!charge(&victim));
    for i in 0..1000 {
        clock.advance(Duration::from_micros(1));
        let junk = evict(Bucket::new("tight", &format!("invented-{i}"), tight));
        assert!(charge(&junk), "a new key's first request fits");
        assert!(
            !charge(&junk),
            "and it is remembered: the second is refused"
        );
        assert!(store.len() <= 64);
        // The victim keeps trying, and stays locked out.
        assert!(!charge(&victim), "victim admitted after {i} invented keys");
    }
    let stats = store.stats();
    assert!(stats.evicted_limited >= 1000 - 63, "{stats:?}");
    assert_eq!(stats.evicted, stats.evicted_limited, "{stats:?}");
}

/// Entries whose state is back to fresh are dropped: by `purge_expired`, and lazily as
/// new keys arrive.
#[test]
fn fresh_entries_are_dropped() {
    let clock = ManualClock::new(T0);
    let store = MemoryStore::builder()
        .max_entries(10_000)
        .clock(clock.clone())
        .build();
    let per_second = Limit::sliding(Quota::per_second(10));
    let charge = |prefix: &str, n: usize| {
        for i in 0..n {
            let b = Bucket::new(prefix, &i.to_string(), per_second);
            assert!(store.charge(std::slice::from_ref(&b)).unwrap().allowed);
        }
    };
    charge("first", 5_000);
    assert_eq!(store.len(), 5_000);
    // One window and one segment later, all 5,000 are fresh again.
    clock.advance(Duration::from_millis(1_100));
    assert_eq!(store.purge_expired(), 5_000);
    assert!(store.is_empty());

    charge("second", 5_000);
    clock.advance(Duration::from_millis(1_100));
    // Without purging, new keys sweep the expired ones as the shards grow: the store
    // never needs to evict a live key.
    charge("third", 6_000);
    let stats = store.stats();
    assert!(stats.entries <= 10_000, "{stats:?}");
    assert_eq!(stats.evicted, 0, "{stats:?}");
    assert!(stats.expired >= 10_000, "{stats:?}");
}

/// By default ([`WhenFull::RefuseNewKeys`]) a bucket whose share is full of limited keys
/// refuses new keys (with the time until the first held key expires) and never evicts a
/// limited one: a sign-in lockout keyed by e-mail stays locked however many addresses an
/// attacker invents. Another bucket's keys are unaffected (each bucket has its own share),
/// and once the held keys expire, new keys are served again.
#[test]
fn a_share_full_of_limited_keys_refuses_new_keys_and_keeps_every_lockout() {
    let clock = ManualClock::new(T0);
    let store = MemoryStore::builder()
        .max_entries(64)
        .clock(clock.clone())
        .build();
    let lockout = Limit::sliding_exact(Quota::parse("5/30min").expect("quota"));
    let charge = |b: &Bucket| store.charge(std::slice::from_ref(b)).unwrap();
    let victim = Bucket::new("sign-in", "victim@example.com", lockout);
    for _ in 0..5 {
        assert!(charge(&victim).allowed);
    }
    assert!(!charge(&victim).allowed);
    // The attacker locks 63 invented addresses: the share (64) is now all limited keys.
    for i in 0..63 {
        let junk = Bucket::new("sign-in", &format!("junk-{i}@example.com"), lockout);
        for _ in 0..5 {
            assert!(charge(&junk).allowed);
        }
    }
    for i in 0..1000 {
        clock.advance(Duration::from_micros(1));
        let junk = Bucket::new("sign-in", &format!("more-{i}@example.com"), lockout);
        let refused = charge(&junk);
        assert!(!refused.allowed, "a new key with no room is refused");
        assert_eq!(refused.buckets[0].refusal, Some(Refusal::StoreFull));
        let wait = refused.retry_after().expect("a wait");
        assert!(wait <= Duration::from_secs(30 * 60), "{wait:?}");
        assert!(
            !charge(&victim).allowed,
            "victim unlocked after {i} new keys"
        );
    }
    let stats = store.stats();
    assert_eq!(stats.evicted_limited, 0, "{stats:?}");
    assert_eq!(stats.refused_full, 1000, "{stats:?}");
    // Another bucket has a share of its own.
    let other = Bucket::new("api", "203.0.113.7", Limit::sliding(Quota::per_minute(10)));
    assert!(charge(&other).allowed);
    // Half an hour after the junk keys were locked, they expire and new keys are served.
    clock.advance(Duration::from_secs(30 * 60));
    let late = Bucket::new("sign-in", "late@example.com", lockout);
    assert!(charge(&late).allowed);
}

/// A store of one shard holding `max_entries` keys per bucket name, on a manual clock at
/// `T0`.
fn one_shard(max_entries: usize) -> (ManualClock, MemoryStore) {
    let clock = ManualClock::new(T0);
    let store = MemoryStore::builder()
        .max_entries(max_entries)
        .shards(1)
        .clock(clock.clone())
        .build();
    (clock, store)
}

/// A new key refused for want of room ([`Refusal::StoreFull`]) is reported with nothing
/// remaining and a reset no sooner than its retry, alone or charged with another bucket:
/// its own state is fresh, but a client told "5 remaining, reset now" would retry at once
/// and be refused again. Both refusals are counted.
#[test]
fn a_refusal_for_a_full_store_reports_nothing_remaining_until_its_retry() {
    let (clock, store) = one_shard(64);
    let lockout = Limit::sliding_exact(Quota::parse("5/30min").expect("quota"));
    for i in 0..64 {
        let junk = Bucket::new("sign-in", &format!("junk-{i}@example.com"), lockout);
        for _ in 0..5 {
            assert!(store.charge(std::slice::from_ref(&junk)).unwrap().allowed);
        }
    }
    clock.advance(Duration::from_secs(1));
    let new = Bucket::new("sign-in", "new@example.com", lockout);
    let other = Bucket::new("api", "203.0.113.7", Limit::sliding(Quota::per_minute(10)));
    for batch in [vec![new.clone()], vec![other, new]] {
        let d = store.charge(&batch).unwrap();
        assert!(!d.allowed);
        let state = d.buckets.last().expect("a state");
        assert_eq!(state.refusal, Some(Refusal::StoreFull));
        assert_eq!(state.remaining, 0, "{state:?}");
        // The junk keys expire half an hour after they were locked.
        assert_eq!(state.retry_after, Some(Duration::from_secs(30 * 60 - 1)));
        assert!(
            state.reset_after >= Duration::from_secs(30 * 60 - 1),
            "{state:?}"
        );
        assert_eq!(d.most_restrictive_state(), Some(state));
    }
    assert_eq!(store.stats().refused_full, 2);
}

/// A share full of keys at their limit refuses a flood of new keys (without looking at
/// the shard again for each: the refusal is remembered until the soonest of its keys
/// expires), and takes a new key again as soon as its keys change: one reset, enough given
/// a charge back (below their limit, they may be evicted), or the soonest expiry.
#[test]
fn a_full_share_takes_a_new_key_as_soon_as_its_keys_change() {
    let limit = Limit::fixed(per(2, 60));
    let (clock, store) = one_shard(64);
    let charge = |key: &str| {
        let bucket = Bucket::new("api", key, limit);
        store.charge(std::slice::from_ref(&bucket)).unwrap().buckets[0].clone()
    };
    for i in 0..64 {
        for _ in 0..2 {
            assert!(charge(&format!("held-{i}")).allowed);
        }
    }
    clock.advance(Duration::from_secs(1));
    let mut new = (0..).map(|i| format!("new-{i}"));
    let mut refused = || {
        let state = charge(&new.next().unwrap());
        assert_eq!(state.refusal, Some(Refusal::StoreFull), "{state:?}");
        // T0 is 20 s into a minute: the held keys' window ends 39 s from now.
        assert_eq!(state.retry_after, Some(Duration::from_secs(39)));
    };
    for _ in 0..100 {
        refused();
    }
    // One key reset: its room is free.
    let held = |i: usize| Bucket::new("api", &format!("held-{i}"), limit);
    let _ = store.apply_now(Op::Reset, &[held(0)]).unwrap();
    assert!(charge("taken-1").allowed);
    refused();
    // An eighth of the share below its limit (each given a charge back): they make room.
    for i in 1..8 {
        let _ = store.apply_now(Op::Refund, &[held(i)]).unwrap();
    }
    assert!(charge("taken-2").allowed);
    // The window over, every key is fresh again.
    clock.advance(Duration::from_secs(39));
    assert!(charge("taken-3").allowed);
    assert_eq!(store.stats().refused_full, 101);
}

/// A mirrored count is held like one the store counted itself: a key mirrored at its limit
/// stays refused until the reported reset, and keys mirrored into a share full of limited
/// keys are not stored (nothing held is evicted for them).
#[test]
fn mirrored_counts_hold_and_take_no_room_from_limited_keys() {
    let (clock, store) = one_shard(64);
    let lockout = Limit::sliding_exact(Quota::per_minute(5));
    let alice = Bucket::new("login", "alice", lockout);
    assert!(store.mirror(&alice, 5, Duration::from_secs(40)));
    let refused = store.charge(std::slice::from_ref(&alice)).unwrap();
    assert!(!refused.allowed);
    assert_eq!(refused.retry_after(), Some(Duration::from_secs(40)));
    clock.advance(Duration::from_secs(40));
    assert!(store.charge(std::slice::from_ref(&alice)).unwrap().allowed);

    // Mirroring 0 forgets the key.
    assert!(store.mirror(&alice, 0, Duration::ZERO));
    assert_eq!(store.len(), 0);

    // A share full of limited keys: a new mirrored key is not stored.
    for i in 0..64 {
        let b = Bucket::new("login", &format!("u{i}"), lockout);
        assert!(store.mirror(&b, 5, Duration::from_secs(60)));
    }
    assert!(!store.mirror(
        &Bucket::new("login", "new", lockout),
        1,
        Duration::from_secs(60)
    ));
    assert_eq!(store.len(), 64);
    let u0 = Bucket::new("login", "u0", lockout);
    assert!(!store.charge(std::slice::from_ref(&u0)).unwrap().allowed);
}

/// A count mirrored from another store into a share that is full takes the place of the
/// key there that spent least, least recently seen first, if that one spent no more: the
/// share holds what the other store reported of the keys that spent most. A flood of
/// invented keys, each at one, filled a lockout's share (`KeepCounts`) while Redis
/// answered, and an account locked there afterwards was not in memory when Redis failed
/// (a review: 10 of 10 wrong passwords answered through the fallback for a locked account,
/// 15 counted against 5 in all). A mirrored key that spent less than every key held is
/// still not stored, and a charge of a new key still evicts nothing under `KeepCounts`.
#[test]
fn a_mirrored_count_takes_the_place_of_a_key_that_spent_no_more() {
    let lockout = Limit::sliding_exact(Quota::parse("5/30min").expect("quota"));
    let (clock, store) = one_shard(64);
    let key = |k: &str| Bucket::new("sign-in", k, lockout).with_when_full(WhenFull::KeepCounts);
    let fresh_in = Duration::from_secs(20 * 60);
    for i in 0..64 {
        clock.advance(Duration::from_millis(1));
        assert!(store.mirror(&key(&format!("junk-{i}")), 1, fresh_in));
    }
    // Locked, and at 3 of 5, on the other store: both kept, in place of junk-0 and junk-1.
    clock.advance(Duration::from_millis(1));
    let (locked, partial) = (key("locked"), key("partial"));
    assert!(store.mirror(&locked, 5, fresh_in));
    assert!(store.mirror(&partial, 3, fresh_in));
    assert_eq!(store.len(), 64);
    let refused = store.charge(std::slice::from_ref(&locked)).unwrap();
    assert_eq!(refused.buckets[0].refusal, Some(Refusal::OverLimit));
    assert_eq!(remaining(&store, &partial), 2);
    assert_eq!(remaining(&store, &key("junk-0")), 5, "junk-0 made room");
    // Another key at one: the least recently seen of the junk goes.
    assert!(store.mirror(&key("junk-new"), 1, fresh_in));
    assert_eq!(remaining(&store, &key("junk-2")), 5, "junk-2 made room");
    assert_eq!(remaining(&store, &key("junk-3")), 4, "junk-3 kept");
    assert_eq!(remaining(&store, &key("junk-new")), 4);
    // A charge of a new key still evicts nothing.
    let d = store.charge(std::slice::from_ref(&key("charged"))).unwrap();
    assert_eq!(d.buckets[0].refusal, Some(Refusal::StoreFull));
    assert_eq!(remaining(&store, &partial), 2);

    // A share full of keys at their limit (the default `RefuseNewKeys`): a mirrored key that
    // spent less is not stored; one at its limit takes the least recently seen one's place.
    let (clock, store) = one_shard(64);
    let key = |k: &str| Bucket::new("sign-in", k, lockout);
    for i in 0..64 {
        clock.advance(Duration::from_millis(1));
        assert!(store.mirror(&key(&format!("u{i}")), 5, fresh_in));
    }
    assert!(!store.mirror(&key("new"), 4, fresh_in));
    assert!(store.mirror(&key("locked"), 5, fresh_in));
    assert_eq!(store.len(), 64);
    assert_eq!(remaining(&store, &key("u0")), 5, "u0 made room");
    assert_eq!(remaining(&store, &key("u1")), 0);
    assert_eq!(remaining(&store, &key("locked")), 0);
}

/// A share left with a few keys below their limit among keys at it (a flood of limited
/// addresses, one that stopped short): new keys taking turns must not evict each other
/// and each be counted afresh. Two keys alternating were each admitted every request
/// (the one free slot passed between them, its count lost each time); now the share
/// counts as full while fewer than an eighth of its keys are below their limit.
#[test]
fn keys_taking_turns_in_a_nearly_full_share_are_not_counted_afresh() {
    let sign_in = Limit::sliding(Quota::new(5, Duration::from_secs(30 * 60)).unwrap());
    for mode in [WhenFull::RefuseNewKeys, WhenFull::EvictLimited] {
        let (_clock, store) = one_shard(64);
        let key = |k: &str| Bucket::new("sign-in", k, sign_in).with_when_full(mode);
        let one = std::slice::from_ref;
        for i in 0..63 {
            let flood = key(&format!("198.51.100.{i}"));
            for _ in 0..5 {
                assert!(store.charge(one(&flood)).unwrap().allowed);
            }
        }
        let (a, b) = (key("203.0.113.1"), key("203.0.113.2"));
        let mut admitted = [0u32; 2];
        for _ in 0..20 {
            for (n, k) in [&a, &b].into_iter().enumerate() {
                admitted[n] += u32::from(store.charge(one(k)).unwrap().allowed);
            }
        }
        match mode {
            // The second is refused for room; the first keeps its count.
            WhenFull::RefuseNewKeys => assert_eq!(admitted, [5, 0], "{mode:?}"),
            // Limited keys make room; both keep their counts.
            _ => assert_eq!(admitted, [5, 5], "{mode:?}"),
        }
        assert!(store.len() <= 64);
    }
}

/// Charges each of `keys` alone, 10 µs apart (so each is seen after the one before).
fn charge_in_turn(
    store: &MemoryStore,
    clock: &ManualClock,
    keys: impl IntoIterator<Item = Bucket>,
) {
    for key in keys {
        let _ = store.charge(std::slice::from_ref(&key)).unwrap();
        clock.advance(Duration::from_micros(10));
    }
}

fn admitted(store: &MemoryStore, bucket: &Bucket) -> bool {
    store.charge(std::slice::from_ref(bucket)).unwrap().allowed
}

fn per(count: u64, secs: u64) -> Quota {
    Quota::new(count, Duration::from_secs(secs)).unwrap()
}

fn remaining(store: &MemoryStore, bucket: &Bucket) -> u64 {
    let peek = store
        .apply_now(Op::Peek, std::slice::from_ref(bucket))
        .unwrap();
    peek.buckets[0].remaining
}

/// A charge of several buckets that one refuses stores nothing: its new keys are not
/// stored, so where their share has room for each of them alone, none of its keys is
/// evicted for them and none is refused as "store full" (a share with no room at all
/// makes room, or refuses, as a charge of that key alone would); and a key held in another
/// algorithm's form (a limit changed) keeps its state.
#[test]
fn a_refused_charge_of_several_buckets_stores_nothing() {
    let never = Bucket::new("m", "x", Limit::sliding(per(3, 10))).with_cost(5);

    // Seven of eight places taken: two new keys of that share fit only if one is stored.
    let (clock, store) = one_shard(8);
    let five = Limit::sliding(per(5, 60));
    let key = |k: &str| Bucket::new("n", k, five);
    charge_in_turn(&store, &clock, (0..7).map(|i| key(&format!("k{i}"))));
    let refused = store
        .charge(&[key("new1"), key("new2"), never.clone()])
        .unwrap();
    assert!(!refused.allowed);
    assert_eq!(store.stats().evicted, 0);
    assert_eq!(store.stats().entries, 7);
    assert_eq!(
        remaining(&store, &key("k0")),
        4,
        "the oldest key kept its count"
    );

    // The same, every held key at its limit (new keys refused when full): the refusal
    // says why the charge was refused, not that the store is full.
    let (clock, store) = one_shard(8);
    let one = Limit::sliding(per(1, 60));
    let key = |k: &str| Bucket::new("n", k, one);
    let spent = Bucket::new("m", "x", Limit::sliding(per(1, 10)));
    let held = (0..7).map(|i| key(&format!("k{i}")));
    charge_in_turn(&store, &clock, held.chain([spent.clone()]));
    let refused = store.charge(&[key("new1"), key("new2"), spent]).unwrap();
    let refusals: Vec<_> = refused.buckets.iter().map(|b| b.refusal).collect();
    assert_eq!(refusals, [None, None, Some(Refusal::OverLimit)]);
    assert!(refused.retry_after().unwrap() <= Duration::from_secs(10));
    assert_eq!(store.stats().refused_full, 0);

    // A key charged under a sliding window, then named with a token bucket in a refused
    // charge (a reload changed its limit): its window is still there.
    let (clock, store) = one_shard(1000);
    let sliding = Bucket::new("n", "k", Limit::sliding(per(3, 10)));
    charge_in_turn(&store, &clock, [sliding.clone()]);
    let token = Bucket::new("n", "k", Limit::token_bucket(per(3, 10), 3).unwrap());
    assert!(!store.charge(&[token, never]).unwrap().allowed);
    assert_eq!(store.len(), 1);
    assert_eq!(remaining(&store, &sliding), 2);
}

/// An admitted charge of several buckets of one share keeps every one of their counts,
/// as charging them one by one does: making room for its new key does not evict the
/// charge's own held key.
#[test]
fn an_admitted_charge_of_one_shares_keys_keeps_their_counts() {
    let (clock, store) = one_shard(8);
    let two = Limit::sliding(per(2, 60));
    let key = |k: &str| Bucket::new("n", k, two);
    let held = (0..7).map(|i| key(&format!("k{i}")));
    charge_in_turn(&store, &clock, [key("A")].into_iter().chain(held));
    // "A" is the least recently seen key of a full share, and not at its limit.
    let admitted = store.charge(&[key("A"), key("new")]).unwrap();
    assert!(admitted.allowed);
    assert_eq!(admitted.buckets[0].remaining, 0);
    assert_eq!(
        remaining(&store, &key("A")),
        0,
        "A's two charges both count"
    );
}

/// Every bucket name keeps a share of its own up to the store's limit on separate shares,
/// and the names past it share one: a flood of keys into one name evicts only keys of its
/// own share, whichever kind of table (token bucket, fixed window, sliding window) the
/// other names' keys live in.
#[test]
fn a_flood_in_one_of_many_bucket_names_evicts_only_its_own_keys() {
    let (clock, store) = one_shard(64);
    let limits = [
        Limit::token_bucket(Quota::per_minute(3), 3).expect("valid burst"),
        Limit::fixed(Quota::per_day(3)),
        Limit::sliding(Quota::per_minute(3)),
    ];
    // 300 names (past the 256 a shard accounts for separately), one key each, at limit.
    let held: Vec<Bucket> = (0..300)
        .map(|i| Bucket::new(&format!("name-{i}"), "203.0.113.7", limits[i % 3]))
        .collect();
    for bucket in &held {
        for _ in 0..3 {
            assert!(store.charge(std::slice::from_ref(bucket)).unwrap().allowed);
        }
    }
    clock.advance(Duration::from_secs(1));
    // Floods of fresh keys, below their limit, into a name with a share of its own and
    // into one past the separate shares.
    for name in ["name-7", "name-299"] {
        for i in 0..1_000 {
            let junk = Bucket::new(name, &format!("junk-{i}"), limits[0]);
            assert!(store.charge(std::slice::from_ref(&junk)).unwrap().allowed);
        }
    }
    for bucket in &held {
        let d = store.charge(std::slice::from_ref(bucket)).unwrap();
        assert!(!d.allowed, "{} was evicted", bucket.name());
    }
    // The floods stayed within their shares: 64 keys each at most, plus the 300 held.
    assert!(store.stats().entries <= 300 + 2 * 64, "{:?}", store.stats());
}

/// Under [`WhenFull::KeepCounts`] a flood of invented keys cannot wipe a partial count: a
/// lockout at 4 of 5 stays at 4 (a soak review guessed one account 29 times in 10 minutes
/// against 5 per 30 by flooding junk e-mails between guesses, each flood evicting the
/// account's partial count), and the flood's own new keys are refused for want of room
/// until held keys expire. Under the default, the same flood (its keys as far into their
/// limit, four failures each) wipes the count.
#[test]
fn keep_counts_holds_a_partial_count_through_a_flood_of_invented_keys() {
    let lockout = Limit::sliding_exact(Quota::parse("5/30min").expect("quota"));
    for mode in [WhenFull::KeepCounts, WhenFull::RefuseNewKeys] {
        let (clock, store) = one_shard(64);
        let victim = Bucket::new("sign-in", "victim@example.com", lockout).with_when_full(mode);
        for _ in 0..4 {
            assert!(store.charge(std::slice::from_ref(&victim)).unwrap().allowed);
        }
        // A flood of junk e-mails, one failure each, twice the share.
        clock.advance(Duration::from_secs(1));
        let mut refused_full = 0;
        for i in 0..128 {
            // One a millisecond: the victim is the least recently seen.
            clock.advance(Duration::from_millis(1));
            let junk = Bucket::new("sign-in", &format!("junk-{i}@example.com"), lockout)
                .with_when_full(mode);
            let d = store.charge(std::slice::from_ref(&junk)).unwrap();
            for _ in 0..3 {
                let _ = store.charge(std::slice::from_ref(&junk)).unwrap();
            }
            if d.buckets[0].refusal == Some(Refusal::StoreFull) {
                refused_full += 1;
                // Nothing counted leaves before the victim's first failure does, half an
                // hour after T0.
                let retry = d.buckets[0].retry_after.expect("a retry");
                let range = Duration::from_secs(30 * 60 - 2)..=Duration::from_secs(30 * 60 - 1);
                assert!(range.contains(&retry), "{mode:?}: {retry:?}");
            }
        }
        let left = remaining(&store, &victim);
        match mode {
            WhenFull::KeepCounts => {
                // 63 junk keys fit beside the victim; the other 65 were refused.
                assert_eq!((left, refused_full), (1, 65), "{mode:?}");
                assert!(store.charge(std::slice::from_ref(&victim)).unwrap().allowed);
                assert!(!store.charge(std::slice::from_ref(&victim)).unwrap().allowed);
            }
            _ => assert_eq!(
                (left, refused_full),
                (5, 0),
                "{mode:?}: the count was wiped"
            ),
        }
    }
}

/// A share full under a flood makes room with the keys that spent least, least recently
/// seen first among equals: a flood of keys seen once each leaves a client that spent
/// more its count, however long ago it was seen (a review: a client sending bursts of 450
/// against 500 a minute, pausing between them while 50,000 invented addresses went
/// through a share of 10,000, was admitted 52,200 times in a minute, its count wiped at
/// each pause; a re-check: bursts of 240, and a steady 10 a second, the same). A client
/// that spent as little as the flood's keys goes with them, least recently seen first,
/// and a flood whose keys spent as much as a client evicts it.
#[test]
fn a_flood_makes_room_with_the_keys_that_spent_least() {
    for mode in [WhenFull::RefuseNewKeys, WhenFull::EvictLimited] {
        let (clock, store) = one_shard(64);
        let key =
            |k: &str| Bucket::new("api", k, Limit::sliding(per(500, 60))).with_when_full(mode);
        let charge = |bucket: &Bucket, n: usize| {
            for _ in 0..n {
                let _ = store.charge(std::slice::from_ref(bucket)).unwrap();
            }
        };
        let (busy, light, steady, once) = (key("busy"), key("light"), key("steady"), key("once"));
        charge(&busy, 450);
        charge(&light, 240);
        charge(&steady, 3);
        charge(&once, 1);
        // Ten times the share, one request each, every key seen after the clients.
        clock.advance(Duration::from_millis(1));
        charge_in_turn(&store, &clock, (0..640).map(|i| key(&format!("flood-{i}"))));
        let left = [&busy, &light, &steady, &once].map(|k| remaining(&store, k));
        assert_eq!(left, [50, 260, 497, 500], "{mode:?}: `once` counted afresh");
        // A flood of keys that spent 2 each (the order of `steady`'s 3): `steady`, the
        // least recently seen of its order, goes.
        charge_in_turn(
            &store,
            &clock,
            (0..640).flat_map(|i| [key(&format!("pair-{i}")), key(&format!("pair-{i}"))]),
        );
        let left = [&busy, &light, &steady].map(|k| remaining(&store, k));
        assert_eq!(left, [50, 260, 500], "{mode:?}");
        assert!(store.len() <= 64);
    }
}

/// A key is at its limit when nothing remains, not when a request was refused: a refusal
/// of a request costing more than the key has left leaves it as it was (a review: 1,100
/// addresses that each spent 1 point of 100 and then asked for 100 were taken for keys at
/// their limit, and a client at its own limit was evicted, 200 admitted in a minute of
/// 100; under the default mode every new address was refused as "store full"). A flood
/// that spends 1 point a key makes room among its own keys, whatever its keys then ask for.
#[test]
fn a_refused_request_costing_more_than_is_left_does_not_put_a_key_at_its_limit() {
    for mode in [WhenFull::RefuseNewKeys, WhenFull::EvictLimited] {
        let (clock, store) = one_shard(64);
        let key =
            |k: &str| Bucket::new("points", k, Limit::sliding(per(100, 60))).with_when_full(mode);
        let spent = key("spent");
        for _ in 0..100 {
            assert!(admitted(&store, &spent));
        }
        assert!(!admitted(&store, &spent));
        clock.advance(Duration::from_millis(1));
        for i in 0..640 {
            let flood = key(&format!("flood-{i}"));
            let _ = store.charge(std::slice::from_ref(&flood)).unwrap();
            let oversized = store.charge(&[flood.with_cost(100)]).unwrap();
            assert!(!oversized.allowed, "{mode:?}");
            clock.advance(Duration::from_micros(10));
        }
        assert_eq!(
            remaining(&store, &spent),
            0,
            "{mode:?}: the spent client was evicted"
        );
        let newcomer = store.charge(&[key("newcomer")]).unwrap();
        assert!(
            newcomer.allowed,
            "{mode:?}: {:?}",
            newcomer.buckets[0].refusal
        );
        assert!(store.len() <= 64);
    }
}

/// What a token bucket's key spent is measured against its burst, not its sustained count
/// (a review: under 1,000 an hour with a burst of 10, a client with 1 of its 10 left and a
/// key seen once both counted as having spent about 1,000, and a flood of keys seen once
/// evicted the client, who got its whole burst back; with a burst above the count, every
/// key counted as having spent nothing).
#[test]
fn a_token_bucket_key_spent_is_measured_against_its_burst() {
    for (limit, spend) in [
        (Limit::token_bucket(per(1000, 3600), 10).unwrap(), 9),
        (Limit::token_bucket(per(10, 60), 100).unwrap(), 50),
    ] {
        for mode in [WhenFull::RefuseNewKeys, WhenFull::EvictLimited] {
            let (clock, store) = one_shard(64);
            let key = |k: &str| Bucket::new("burst", k, limit).with_when_full(mode);
            let client = key("client");
            for _ in 0..spend {
                assert!(admitted(&store, &client));
            }
            let left = limit.capacity() - spend;
            assert_eq!(remaining(&store, &client), left);
            clock.advance(Duration::from_millis(1));
            charge_in_turn(&store, &clock, (0..640).map(|i| key(&format!("flood-{i}"))));
            assert_eq!(
                remaining(&store, &client),
                left,
                "{limit:?} {mode:?}: the client was evicted and got its burst back"
            );
        }
    }
}

// The store's bookkeeping, found missing by mutation testing (cargo-mutants): each test
// fails with the mutant of `memory.rs` it names applied.

/// A sliding window penalized past what an inline ring holds (a count past 2^32) moves to
/// the boxed table with its expiry: a sweep does not take it for fresh and forget the ban.
/// (Kills `update_in`: `after.expires_at == u64::MAX` → `!=`.)
#[test]
fn a_window_penalized_past_u32_keeps_its_count_through_a_sweep() {
    let (clock, store) = one_shard(1000);
    let key = Bucket::new("api", "203.0.113.7", Limit::sliding(Quota::per_minute(10)));
    let one = std::slice::from_ref;
    assert!(store.charge(one(&key)).unwrap().allowed);
    let ban = key.clone().with_cost(5_000_000_000);
    let _ = store.apply_now(Op::Penalize, one(&ban)).unwrap();
    clock.advance(Duration::from_secs(1));
    assert_eq!(store.purge_expired(), 0, "the banned key is not fresh");
    let d = store.charge(one(&key)).unwrap();
    assert!(!d.allowed, "the ban was forgotten: {d:?}");
}

/// A key still at its limit whose expiry moves earlier (a refund of part of a penalty)
/// than a full share's remembered refusal makes the share decide afresh: once that key is
/// fresh, a new key is taken, not refused until the refusal's old time. (Kills
/// `update_in`: `expires_at < share.refusing_until` → `==` / `>`.)
#[test]
fn a_held_key_fresh_sooner_ends_a_remembered_refusal() {
    let (clock, store) = one_shard(64);
    // 2 an hour, bursts of 2: a token every 30 minutes.
    let limit = Limit::token_bucket(Quota::per_hour(2), 2).unwrap();
    let key = |k: &str| Bucket::new("api", k, limit);
    let one = std::slice::from_ref;
    for i in 0..64 {
        let penalty = key(&format!("held-{i}")).with_cost(5); // 2.5 hours
        assert!(
            store
                .apply_now(Op::Penalize, one(&penalty))
                .unwrap()
                .allowed
        );
    }
    let refused = store.charge(one(&key("new-0"))).unwrap();
    assert!(!refused.allowed, "the share is full of limited keys");
    // Half of held-0's penalty given back: it is still limited (1.5 hours counted), and
    // fresh an hour sooner than the refusal remembered.
    let back = key("held-0").with_cost(2);
    let state = store.apply_now(Op::Refund, one(&back)).unwrap().buckets[0].clone();
    assert_eq!(state.remaining, 0);
    assert_eq!(state.reset_after, Duration::from_secs(90 * 60));
    clock.advance(Duration::from_secs(90 * 60));
    let d = store.charge(one(&key("new-1"))).unwrap();
    assert!(d.allowed, "held-0 is fresh: its room is free ({d:?})");
}

/// An entry dropped because a call found it fresh (a peek after its window) leaves its
/// share's count: keys coming and going never fill a share that holds nothing. (Kills
/// `update_in`: `count(parts, part, -1)` → `count(parts, part, 1)`.)
#[test]
fn keys_dropped_as_fresh_leave_their_share() {
    let (clock, store) = one_shard(64);
    let limit = Limit::sliding(Quota::per_second(10));
    for i in 0..200 {
        let key = Bucket::new("api", &format!("k{i}"), limit);
        let d = store.charge(std::slice::from_ref(&key)).unwrap();
        assert!(d.allowed, "key {i} refused: {d:?}");
        clock.advance(Duration::from_secs(2));
        let _ = store
            .apply_now(Op::Peek, std::slice::from_ref(&key))
            .unwrap();
        assert_eq!(store.len(), 0, "the peek dropped k{i}");
    }
    assert_eq!(store.stats().refused_full, 0);
}

/// A full share evicts its least recently seen eighth, no more, even when many keys were
/// last seen in the same microsecond. (Kills `Shard::evict`: `left -= 1` → `+=` / `/=`.)
#[test]
fn a_full_share_evicts_an_eighth_even_among_keys_seen_at_once() {
    let (_clock, store) = one_shard(64);
    let limit = Limit::sliding(Quota::per_minute(10));
    let key = |k: &str| Bucket::new("api", k, limit);
    // 64 keys, below their limit, all in one microsecond (the clock does not move).
    for i in 0..64 {
        assert!(store.charge(&[key(&format!("k{i}"))]).unwrap().allowed);
    }
    assert!(store.charge(&[key("new")]).unwrap().allowed);
    let stats = store.stats();
    assert_eq!((stats.evicted, stats.entries), (8, 57), "{stats:?}");
}

/// The eviction counter counts each evicted key once, whichever tables a share's keys
/// live in. (Kills `Shard::evict`'s sum of the tables' evictions: `+` → `*`.)
#[test]
fn evictions_across_tables_are_counted_once_each() {
    let (clock, store) = one_shard(64);
    let token = Limit::token_bucket(Quota::per_minute(10), 10).unwrap();
    let fixed = Limit::fixed(Quota::per_minute(10));
    // One share ("api"), its keys alternating between the token-bucket and fixed-window
    // tables, each seen after the one before.
    for i in 0..64 {
        let limit = if i % 2 == 0 { token } else { fixed };
        let b = Bucket::new("api", &format!("k{i}"), limit);
        assert!(store.charge(&[b]).unwrap().allowed);
        clock.advance(Duration::from_micros(1));
    }
    assert!(
        store
            .charge(&[Bucket::new("api", "new", token)])
            .unwrap()
            .allowed
    );
    let stats = store.stats();
    // The eighth least recently seen: 4 of each table.
    assert_eq!((stats.evicted, stats.entries), (8, 57), "{stats:?}");
}

/// A penalty of nothing on a new key stores nothing (the key is fresh).
/// (Kills `Inner::apply_one`: `a.expires_at > now` → `>=`.)
#[test]
fn a_penalty_of_nothing_stores_no_key() {
    let (_clock, store) = one_shard(64);
    let key = Bucket::new("api", "k", Limit::sliding(Quota::per_minute(10))).with_cost(0);
    assert!(store.apply_now(Op::Penalize, &[key]).unwrap().allowed);
    assert_eq!(store.len(), 0);
}

/// `purge_expired` drops an entry at the very microsecond it is fresh again, and counts
/// every dropped entry once whichever table held it. (Kills `Inner::sweep`: `at > now` →
/// `>=`, and its sum of the tables' counts: `+` → `-` / `*`.)
#[test]
fn purge_drops_entries_fresh_this_microsecond_and_counts_each_once() {
    let (clock, store) = one_shard(64);
    let fixed = Limit::fixed(Quota::per_minute(10));
    let token = Limit::token_bucket(Quota::per_minute(60), 10).unwrap(); // 1 s a token
    let fill = || {
        for i in 0..2 {
            let b = Bucket::new("api", &format!("t{i}"), token);
            assert!(store.charge(&[b]).unwrap().allowed);
        }
        for i in 0..3 {
            let b = Bucket::new("api", &format!("f{i}"), fixed);
            assert!(store.charge(&[b]).unwrap().allowed);
        }
    };
    fill();
    // T0 is 20 s into a minute: the fixed windows end in 40 s, the tokens are back in 1 s.
    clock.advance(Duration::from_secs(1));
    assert_eq!(store.purge_expired(), 2, "fresh at this very microsecond");
    clock.advance(Duration::from_secs(39));
    assert_eq!(store.purge_expired(), 3);
    assert_eq!(store.stats().expired, 5);

    // Both tables at once.
    fill();
    clock.advance(Duration::from_secs(60));
    assert_eq!(store.purge_expired(), 5);
    assert_eq!(store.stats().expired, 10);
}

/// A new key refused for want of room is taken when it retries at exactly its
/// `retry_after` (when the first held key is fresh again), not refused once more from the
/// remembered refusal. (Kills `Inner::make_room`: `now < until` → `<=` / `==`.)
#[test]
fn a_new_key_refused_for_room_is_taken_at_its_retry_time() {
    let (clock, store) = one_shard(64);
    let lockout = Limit::sliding_exact(Quota::parse("5/30min").expect("quota"));
    for i in 0..64 {
        let b = Bucket::new("sign-in", &format!("junk-{i}"), lockout).with_cost(5);
        assert!(store.charge(&[b]).unwrap().allowed);
    }
    clock.advance(Duration::from_secs(1));
    let new = Bucket::new("sign-in", "new", lockout);
    let refused = store.charge(std::slice::from_ref(&new)).unwrap();
    let wait = refused.retry_after().expect("refused for room");
    assert_eq!(wait, Duration::from_secs(30 * 60 - 1));
    clock.advance(wait);
    let d = store.charge(std::slice::from_ref(&new)).unwrap();
    assert!(d.allowed, "refused at its retry time: {d:?}");
}

/// Under `WhenFull::EvictLimited` a share full of limited keys evicts a sixty-fourth of
/// them for a new key (15 of 1,000), no more. (Kills `Inner::make_room`:
/// `shard_cap / 64` → `%`.)
#[test]
fn evict_limited_frees_a_sixty_fourth_of_the_share() {
    let (_clock, store) = one_shard(1000);
    let tight = Limit::sliding(Quota::per_hour(1));
    let key = |k: &str| Bucket::new("tight", k, tight).with_when_full(WhenFull::EvictLimited);
    for i in 0..1000 {
        assert!(store.charge(&[key(&format!("k{i}"))]).unwrap().allowed);
    }
    assert!(store.charge(&[key("new")]).unwrap().allowed);
    let stats = store.stats();
    assert_eq!(
        (stats.evicted_limited, stats.entries),
        (15, 986),
        "{stats:?}"
    );
}

/// A full share evicts exactly its least recently seen eighth: the key seen just after
/// them keeps its count. (Kills `Inner::make_room`: `batch.min(seen.len()) - 1` → `/ 1`,
/// which takes the cutoff one key later and may evict that key instead of an older one;
/// the table's order is random per store, so 20 stores.)
#[test]
fn a_full_share_evicts_exactly_its_least_recently_seen_eighth() {
    for _ in 0..20 {
        let (clock, store) = one_shard(64);
        let limit = Limit::sliding(Quota::per_minute(10));
        let key = |k: &str| Bucket::new("api", k, limit);
        for i in 0..64 {
            assert!(store.charge(&[key(&format!("k{i}"))]).unwrap().allowed);
            clock.advance(Duration::from_micros(1));
        }
        assert!(store.charge(&[key("new")]).unwrap().allowed);
        for i in 8..64 {
            let peek = store.apply_now(Op::Peek, &[key(&format!("k{i}"))]).unwrap();
            assert_eq!(peek.buckets[0].remaining, 9, "k{i} was evicted");
        }
    }
}

/// A key of the share "tight" under `WhenFull::EvictLimited`: 2 an hour, at a cost of 2
/// (one request puts a new key at its limit).
fn tight(k: &str) -> Bucket {
    tight_at(k, Limit::sliding(Quota::per_hour(2)))
}

/// A key of the share "tight" under another limit, at a cost of 2.
fn tight_at(k: &str, limit: Limit) -> Bucket {
    Bucket::new("tight", k, limit)
        .with_cost(2)
        .with_when_full(WhenFull::EvictLimited)
}

/// `T0` moved by `us` microseconds (either way).
fn at(us: i64) -> tollgate_limits::Timestamp {
    tollgate_limits::Timestamp::from_micros((T0.as_micros() as i64 + us) as u64)
}

/// A share of 64 (one shard) under `WhenFull::EvictLimited`, full of keys at their limit
/// (2 an hour, both spent at once), `k0` to `k63`, each seen a microsecond after the one
/// before; then a new key, `new`, took the place of `k0`: the store chose the next keys
/// to evict with it. Its keys are [`tight`]'s.
fn full_of_limited_keys() -> (ManualClock, MemoryStore) {
    let (clock, store) = one_shard(64);
    fill_limited(&clock, &store, "k", 64);
    assert!(admitted(&store, &tight("new")));
    assert_eq!(store.stats().evicted_limited, 1);
    (clock, store)
}

/// Whether the store holds `bucket`'s key (at its limit: a peek is refused).
fn held(store: &MemoryStore, bucket: &Bucket) -> bool {
    !store
        .apply_now(Op::Peek, std::slice::from_ref(bucket))
        .unwrap()
        .allowed
}

/// Keys a full share chose to evict go one batch per new key, the least recently seen
/// first, and a key seen since it was chosen is passed over: a limited client that keeps
/// trying keeps its place. (Kills `Inner::evict_chosen`: `seen == key.seen` → `true`.)
#[test]
fn a_limited_key_seen_since_the_share_chose_it_is_not_evicted() {
    let (clock, store) = full_of_limited_keys();
    clock.advance(Duration::from_micros(1));
    assert!(!admitted(&store, &tight("k1").with_cost(1)));
    clock.advance(Duration::from_micros(1));
    assert!(admitted(&store, &tight("new-2")));
    assert_eq!(store.stats().evicted_limited, 2);
    assert!(held(&store, &tight("k1")), "k1 was seen last: it stays");
    assert!(
        !held(&store, &tight("k2")),
        "k2 was the least recently seen"
    );
    assert!(held(&store, &tight("k3")));
}

/// Once an eighth of a full share is below its limit, those keys make room, not keys at
/// their limit, even when the share chose limited keys to evict before they came. (Kills
/// `Shard::insert`: `seen & LIMITED == 0 ||` → `false &&`.)
#[test]
fn new_keys_below_their_limit_make_room_before_chosen_limited_ones() {
    let (clock, store) = full_of_limited_keys();
    // Eight new keys below their limit (1 of 2 spent) each take a limited key's place.
    for i in 1..=8 {
        clock.advance(Duration::from_micros(1));
        assert!(admitted(&store, &tight(&format!("free-{i}")).with_cost(1)));
    }
    assert_eq!(store.stats().evicted_limited, 9);
    // An eighth of the share is below its limit: those eight go for the next new key.
    clock.advance(Duration::from_micros(1));
    assert!(admitted(&store, &tight("new-9")));
    let stats = store.stats();
    assert_eq!((stats.evicted_limited, stats.evicted), (9, 17), "{stats:?}");
    assert!(held(&store, &tight("k9")), "k9 is at its limit: it stays");
}

/// Keys that drop below their limit after a full share chose keys to evict make room
/// first too. (Kills `update_in`: `was_limited && after.seen & LIMITED == 0` → `false`.)
#[test]
fn keys_dropping_below_their_limit_make_room_before_chosen_limited_ones() {
    let (clock, store) = full_of_limited_keys();
    for i in 20..28 {
        clock.advance(Duration::from_micros(1));
        let back = store.apply_now(Op::Refund, &[tight(&format!("k{i}")).with_cost(1)]);
        assert_eq!(back.unwrap().buckets[0].remaining, 1);
    }
    clock.advance(Duration::from_micros(1));
    assert!(admitted(&store, &tight("new-2")));
    let stats = store.stats();
    assert_eq!((stats.evicted_limited, stats.evicted), (1, 9), "{stats:?}");
    assert!(held(&store, &tight("k1")), "k1 is at its limit: it stays");
}

/// A new key fresh again sooner than the keys a full share chose to evict is dropped when
/// it is fresh, before any of them is evicted. (Kills `Shard::insert`:
/// `expires_at < share.until` → `false`.)
#[test]
fn a_key_fresh_before_the_chosen_ones_makes_room_when_it_is() {
    let (clock, store) = full_of_limited_keys();
    let short = tight_at("short", Limit::sliding(Quota::per_second(2)));
    assert!(admitted(&store, &short));
    assert_eq!(store.stats().evicted_limited, 2, "it took k1's place");
    clock.advance(Duration::from_secs(3));
    assert!(admitted(&store, &tight("new-2")));
    let stats = store.stats();
    assert_eq!((stats.evicted_limited, stats.expired), (2, 1), "{stats:?}");
    assert!(held(&store, &tight("k2")), "k2 is at its limit: it stays");
}

/// A clock set back before a full share chose keys to evict ends that choice: the key
/// seen least recently by the clock's time goes. (Kills `Inner::make_room`:
/// `now >= looked.looked_at` → `true`.)
#[test]
fn a_clock_set_back_ends_a_full_shares_choice() {
    let (clock, store) = full_of_limited_keys();
    clock.set(at(-1_000_000));
    assert!(!admitted(&store, &tight("k5").with_cost(1)));
    clock.advance(Duration::from_micros(1));
    assert!(admitted(&store, &tight("new-2")));
    assert!(
        !held(&store, &tight("k5")),
        "k5 was seen earliest by the clock"
    );
    assert!(held(&store, &tight("k1")));
}

/// `n` keys at their limit filling `store`'s share, `{prefix}0` on, a microsecond apart.
fn fill_limited(clock: &ManualClock, store: &MemoryStore, prefix: &str, n: usize) {
    for i in 0..n {
        assert!(admitted(store, &tight(&format!("{prefix}{i}"))));
        clock.advance(Duration::from_micros(1));
    }
}

/// Every new key that finds a full share evicts a whole batch, also when the keys a look
/// chose run out mid-batch: a share of 200 (batches of 3, an eighth of 25) evicts 27 keys
/// for 25 new ones (a batch each time one finds it full), as a look per batch did. (A
/// review: the ninth batch was the 1 key left of the 25 chosen, and every later batch fell
/// at other keys.)
#[test]
fn a_batch_goes_whole_when_the_chosen_keys_run_out() {
    let (clock, store) = one_shard(200);
    fill_limited(&clock, &store, "k", 200);
    fill_limited(&clock, &store, "new-", 25);
    assert_eq!(store.stats().evicted_limited, 27);
    assert!(!held(&store, &tight("k26")), "k26 went in the ninth batch");
    assert!(held(&store, &tight("k27")));
}

/// A chosen key seen since is passed over, and the batch is made up from a new look: a
/// share of 128 (batches of 2) evicts the 16 least recently seen keys for 16 new ones,
/// passing over one seen again. (A review: the eighth batch was the 1 key left of the 16
/// chosen, and every later batch fell at other keys.)
#[test]
fn a_batch_goes_whole_when_a_chosen_key_was_seen_since() {
    let (clock, store) = one_shard(128);
    fill_limited(&clock, &store, "k", 128);
    fill_limited(&clock, &store, "new-", 1);
    assert!(!admitted(&store, &tight("k5").with_cost(1)));
    clock.advance(Duration::from_micros(1));
    fill_limited(&clock, &store, "more-", 15);
    let stats = store.stats();
    assert_eq!(
        (stats.evicted_limited, stats.entries),
        (16, 128),
        "{stats:?}"
    );
    assert!(held(&store, &tight("k5")), "seen again: kept");
    assert!(
        !held(&store, &tight("k16")),
        "the 16th least recently seen went"
    );
    assert!(held(&store, &tight("k17")));
}

/// Keys seen after a clock set back (before the look), but later than the look's time,
/// still rank before chosen keys seen at the later time: the choice holds only from the
/// last time a chosen key was seen. (Kills `Inner::make_room`: `now.max(last_seen)` →
/// `now`.)
#[test]
fn a_clock_set_back_before_the_look_ends_the_choice_until_it_catches_up() {
    let (clock, store) = one_shard(64);
    // One key fresh again in a minute: the choice would hold until then, so the new keys
    // (fresh in an hour) do not end it by being fresh sooner.
    let short = tight_at("short", Limit::sliding(Quota::per_minute(2)));
    assert!(admitted(&store, &short));
    fill_limited(&clock, &store, "k", 63);
    clock.set(at(-1_000_000));
    // The look (which evicts `short`), a second before the keys it chooses from were seen.
    assert!(admitted(&store, &tight("a")));
    clock.advance(Duration::from_micros(1));
    assert!(admitted(&store, &tight("b")));
    assert!(
        !held(&store, &tight("a")),
        "a was seen least recently by the clock"
    );
    assert!(held(&store, &tight("k1")));
}

/// A share of 64 full of keys at their limit (`k0` to `k62`, then one fresh again in a
/// minute, seen last: the keys a look chooses stay chosen until then).
fn full_with_a_short_key() -> (ManualClock, MemoryStore) {
    let (clock, store) = one_shard(64);
    fill_limited(&clock, &store, "k", 63);
    let short = tight_at("short", Limit::sliding(Quota::per_minute(2)));
    assert!(admitted(&store, &short));
    (clock, store)
}

/// The new key a look (with the clock set back) makes room for is seen before the keys
/// the look chose: it ranks before them, so the next new key evicts it, not one of them.
/// (A review, comparing the store with the one before the choice was kept: it evicted `k1`
/// and kept `a`. Kills `Shard::insert`: `|| seen & !FLAGS < share.looked_at` left out.)
#[test]
fn a_new_key_seen_before_the_chosen_ones_is_evicted_first() {
    let (clock, store) = full_with_a_short_key();
    clock.set(at(-1_000_000));
    assert!(admitted(&store, &tight("a")));
    clock.set(at(1_000));
    assert!(admitted(&store, &tight("b")));
    assert_eq!(store.stats().evicted_limited, 2);
    assert!(
        !held(&store, &tight("a")),
        "a was seen earliest by the clock"
    );
    assert!(held(&store, &tight("k1")));
}

/// A held key seen while the clock is set back, after a look chose keys to evict, ranks
/// before them: it goes first once the clock is back. (A review: `k1` went, `k20` stayed.
/// Kills `update_in`: `|| after.seen & !FLAGS < share.looked_at` left out.)
#[test]
fn a_held_key_seen_before_the_chosen_ones_is_evicted_first() {
    let (clock, store) = full_with_a_short_key();
    clock.advance(Duration::from_micros(1));
    assert!(admitted(&store, &tight("new-0")));
    clock.set(at(-1_000_000));
    assert!(!admitted(&store, &tight("k20").with_cost(1)));
    clock.set(at(1_000));
    assert!(admitted(&store, &tight("new-1")));
    assert!(
        !held(&store, &tight("k20")),
        "k20 was seen earliest by the clock"
    );
    assert!(held(&store, &tight("k1")));
}
