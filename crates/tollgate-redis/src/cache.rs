//! The local cache of refusals: once Redis refused a key until T, further charges of that key
//! before T are refused here, without a round trip.
//!
//! A refusal can only end sooner than Redis said if some bucket gets budget back: a refund or
//! reset through this store forgets the keys it touches, but one made by another instance is
//! not seen here. Charges by other instances only make refusals longer, so a cached
//! refusal never refuses what Redis would admit, except after such a foreign refund or reset
//! (or a Redis restarted empty), and then for at most [`REFUSAL_CACHE_MAX_AGE`]: an entry
//! answers for that long after its request was sent, or until T if sooner, and the next
//! charge asks Redis again (a key hammered while refused costs, per that time, the calls
//! that arrive within one round trip of the entry's end: they all miss it). The
//! deadline is counted from when the request was *sent*, so the cache lets go no later than
//! Redis would (it may ask Redis again a round trip early, which then refuses again).
//!
//! A hit needs the state of every bucket of the batch from a recent refusal, each with the
//! same limit and at the cost it had then (the usual case: a client hammering the same
//! route, or routes that share a refused bucket such as a per-IP backstop), and a refusing
//! bucket whose deadline has not passed. The answer reports each bucket as Redis last did, with the waits
//! shortened by the time that passed. A charge at another cost goes to Redis: a costlier
//! one waits longer than recorded (more must leave the window first), and a bucket that
//! admitted at one cost may refuse at another, with a wait of its own.
//!
//! A refusal is recorded only if no refund or reset through this store touched its keys'
//! shards while it was in flight: each shard has a generation, bumped by
//! [`RefusalCache::forget`], read before the charge is sent ([`RefusalCache::generations`])
//! and compared when its answer is recorded. Otherwise a refund answered (and forgotten)
//! before an earlier-sent refusal arrived would leave that stale refusal in place.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tollgate_limits::{Bucket, BucketState, Decision, Limit, Refusal, Timestamp};

/// The default capacity of the cache (keys).
pub const DEFAULT_REFUSAL_CACHE: usize = 10_000;

/// How long a cached refusal answers for at most, from when its request was sent (a
/// shorter wait ends it sooner): what a refund or reset made through *another* instance
/// takes at most to be seen by this one, whose cache it does not reach.
pub const REFUSAL_CACHE_MAX_AGE: Duration = Duration::from_secs(1);

const SHARDS: usize = 16;

#[derive(Debug, Clone)]
struct Entry {
    limit: Limit,
    state: BucketState,
    /// When the request whose refusal this is was sent.
    sent_at: Instant,
    /// The server's time in that decision.
    server_now: Timestamp,
    /// Until when the entry may serve (the refusal's longest wait, at most
    /// [`REFUSAL_CACHE_MAX_AGE`]).
    valid_until: Instant,
    /// What the charge cost in this bucket.
    cost: u64,
    /// Set if this bucket refused: until when.
    refused: Option<Instant>,
}

impl Entry {
    /// Until when a charge at `now` is refused here. (Only asked of a charge at
    /// the cost Redis answered: a costlier one waits longer than recorded, a cheaper one
    /// may fit, and one that did not refuse may refuse at another cost.)
    fn refuses(&self, now: Instant) -> Option<Instant> {
        self.refused.filter(|&until| until > now)
    }
}

type Shard = HashMap<Box<str>, Entry, foldhash::fast::RandomState>;

/// The shards' generations when a charge was sent (see [`RefusalCache::generations`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Generations([u64; SHARDS]);

/// A bounded map of recent refusals.
#[derive(Debug)]
pub(crate) struct RefusalCache {
    shards: Box<[Mutex<Shard>]>,
    /// Per shard: how many times [`RefusalCache::forget`] touched it (changed under its lock).
    generations: [AtomicU64; SHARDS],
    shard_cap: usize,
    hasher: foldhash::fast::RandomState,
    /// Entries held, so that the usual case (nothing refused lately) costs no lock.
    len: AtomicUsize,
}

impl RefusalCache {
    /// A cache of at most `capacity` keys (at least one per shard).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            generations: std::array::from_fn(|_| AtomicU64::new(0)),
            shard_cap: capacity.div_ceil(SHARDS).max(1),
            hasher: foldhash::fast::RandomState::default(),
            len: AtomicUsize::new(0),
        }
    }

    fn index(&self, key: &str) -> usize {
        self.hasher.hash_one(key) as usize % SHARDS
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        self.lock(self.index(key))
    }

    fn lock(&self, i: usize) -> MutexGuard<'_, Shard> {
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The shards' generations now: read before sending a charge, handed to
    /// [`RefusalCache::record`] with its answer.
    pub(crate) fn generations(&self) -> Generations {
        Generations(std::array::from_fn(|i| {
            self.generations[i].load(Ordering::SeqCst)
        }))
    }

    /// The locally decided refusal of a charge of `buckets` at `now`, if the cache knows one.
    pub(crate) fn lookup(&self, buckets: &[Bucket], now: Instant) -> Option<Decision> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut entries = Vec::with_capacity(buckets.len());
        let mut refusing = false;
        for bucket in buckets {
            let entry = self.shard(&bucket.key).get(bucket.key.as_str()).cloned()?;
            // Every bucket as a refusal answered it, at the cost it had then: else Redis
            // decides (a bucket that admitted at one cost may refuse at another).
            if entry.limit != bucket.limit || entry.valid_until <= now || entry.cost != bucket.cost
            {
                return None;
            }
            refusing |= entry.refuses(now).is_some();
            entries.push(entry);
        }
        if !refusing {
            return None;
        }
        let first = &entries[0];
        let server_now = first
            .server_now
            .saturating_add(now.saturating_duration_since(first.sent_at));
        let states = buckets
            .iter()
            .zip(entries)
            .map(|(bucket, entry)| {
                let elapsed = now.saturating_duration_since(entry.sent_at);
                let refused_until = entry.refuses(now);
                let mut state = entry.state;
                state.reset_after = state.reset_after.saturating_sub(elapsed);
                let capacity = bucket.limit.capacity();
                if bucket.cost > capacity {
                    state.allowed = false;
                    state.retry_after = None;
                    state.refusal = Some(Refusal::CostExceedsCapacity {
                        cost: bucket.cost,
                        capacity,
                    });
                } else {
                    match refused_until {
                        Some(until) => {
                            state.allowed = false;
                            state.retry_after = Some((until - now).max(Duration::from_micros(1)));
                            state.refusal = Some(Refusal::OverLimit);
                        }
                        _ => {
                            state.allowed = true;
                            state.retry_after = None;
                            state.refusal = None;
                        }
                    }
                }
                state
            })
            .collect();
        Some(Decision {
            allowed: false,
            now: server_now,
            buckets: states,
        })
    }

    /// Remembers a refused charge of `buckets` (sent at `sent_at`, when the shards were at
    /// `sent_gen`), except the buckets whose shard was forgotten since.
    pub(crate) fn record(
        &self,
        buckets: &[Bucket],
        decision: &Decision,
        sent_at: Instant,
        sent_gen: Generations,
    ) {
        let longest = decision
            .buckets
            .iter()
            .filter_map(|b| match b.refusal {
                Some(Refusal::OverLimit) => b.retry_after,
                _ => None,
            })
            .max();
        let Some(longest) = longest else {
            return; // refused only because a cost exceeds a capacity: nothing to wait for
        };
        let now = Instant::now();
        let valid_until = sent_at + longest.min(REFUSAL_CACHE_MAX_AGE);
        for (bucket, state) in buckets.iter().zip(&decision.buckets) {
            let refused = match (state.refusal, state.retry_after) {
                (Some(Refusal::OverLimit), Some(wait)) => Some(sent_at + wait),
                _ => None,
            };
            let entry = Entry {
                limit: bucket.limit,
                state: state.clone(),
                sent_at,
                server_now: decision.now,
                valid_until,
                cost: bucket.cost,
                refused,
            };
            let i = self.index(&bucket.key);
            let mut shard = self.lock(i);
            if self.generations[i].load(Ordering::SeqCst) != sent_gen.0[i] {
                continue; // a refund or reset answered meanwhile: this refusal may be stale
            }
            if !shard.contains_key(bucket.key.as_str()) && shard.len() >= self.shard_cap {
                let before = shard.len();
                shard.retain(|_, e| e.valid_until > now);
                self.len.fetch_sub(before - shard.len(), Ordering::Relaxed);
                if shard.len() >= self.shard_cap {
                    continue; // full of live refusals: this one is decided by Redis
                }
            }
            if shard.insert(bucket.key.as_str().into(), entry).is_none() {
                self.len.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Forgets what is known of `buckets` (their state changed through this store).
    /// Refusals of these keys still in flight are not recorded (their shard's generation
    /// changes, under the shard's lock, so no [`RefusalCache::record`] slips between).
    pub(crate) fn forget(&self, buckets: &[Bucket]) {
        for bucket in buckets {
            let i = self.index(&bucket.key);
            let mut shard = self.lock(i);
            self.generations[i].fetch_add(1, Ordering::SeqCst);
            if shard.remove(bucket.key.as_str()).is_some() {
                self.len.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Keys held.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_limits::Quota;

    fn refused(wait: Duration) -> BucketState {
        BucketState {
            allowed: false,
            limit: 2,
            remaining: 0,
            reset_after: wait,
            retry_after: Some(wait),
            refusal: Some(Refusal::OverLimit),
        }
    }

    fn fine() -> BucketState {
        BucketState {
            allowed: true,
            limit: 100,
            remaining: 40,
            reset_after: Duration::from_secs(30),
            retry_after: None,
            refusal: None,
        }
    }

    #[test]
    fn refuses_until_the_deadline_with_the_same_buckets() {
        let cache = RefusalCache::new(100);
        let ip = Bucket::new("ip", "1.2.3.4", Limit::sliding(Quota::per_minute(2)));
        let global = Bucket::new("global", "all", Limit::sliding(Quota::per_minute(100)));
        let buckets = vec![ip.clone(), global.clone()];
        let t0 = Instant::now();
        assert!(cache.lookup(&buckets, t0).is_none());
        let decision = Decision {
            allowed: false,
            now: Timestamp::from_micros(1_000_000),
            buckets: vec![refused(Duration::from_secs(10)), fine()],
        };
        cache.record(&buckets, &decision, t0, cache.generations());
        assert_eq!(cache.len(), 2);

        let hit = cache
            .lookup(&buckets, t0 + Duration::from_millis(400))
            .unwrap();
        assert!(!hit.allowed);
        assert_eq!(hit.now, Timestamp::from_micros(1_400_000));
        assert_eq!(
            hit.buckets[0].retry_after,
            Some(Duration::from_millis(9_600))
        );
        assert_eq!(hit.retry_after(), Some(Duration::from_millis(9_600)));
        assert_eq!(hit.buckets[1].remaining, 40);
        assert!(hit.buckets[1].allowed);

        // A cheaper request, another limit, an unknown companion or a passed deadline: ask Redis.
        assert!(cache
            .lookup(&[ip.clone().with_cost(0), global.clone()], t0)
            .is_none());
        // A costlier one too: its wait is longer than the one recorded, and only Redis
        // knows it (a 10-point charge refused with the wait of a 1-point one was told to
        // come back too soon).
        assert!(cache
            .lookup(&[ip.clone().with_cost(2), global.clone()], t0)
            .is_none());
        let other_limit = Bucket::new("ip", "1.2.3.4", Limit::sliding(Quota::per_minute(3)));
        assert!(cache.lookup(&[other_limit, global.clone()], t0).is_none());
        let stranger = Bucket::new("user", "u1", Limit::sliding(Quota::per_minute(3)));
        assert!(cache.lookup(&[ip.clone(), stranger], t0).is_none());
        assert!(cache
            .lookup(&buckets, t0 + Duration::from_secs(10))
            .is_none());
        // Only the refusing bucket alone is enough.
        assert!(cache.lookup(std::slice::from_ref(&ip), t0).is_some());
        assert!(cache.lookup(std::slice::from_ref(&global), t0).is_none());

        cache.forget(std::slice::from_ref(&ip));
        assert!(cache.lookup(&buckets, t0).is_none());
        assert_eq!(cache.len(), 1);
    }

    /// A refusal answers here for at most `REFUSAL_CACHE_MAX_AGE` from when its request was
    /// sent, however long its wait: a refund or reset made through another instance, which
    /// this cache never hears of, is seen that soon (a review saw a tenant refused by one
    /// instance for 25 s after its refunds went through the other). A shorter wait ends
    /// it sooner.
    #[test]
    fn a_refusal_answers_here_for_at_most_the_max_age() {
        let cache = RefusalCache::new(100);
        let tenant = vec![Bucket::new(
            "tenant",
            "acme",
            Limit::fixed(Quota::per_minute(100)),
        )];
        let t0 = Instant::now();
        let minute = Decision {
            allowed: false,
            now: Timestamp::from_micros(1_000_000),
            buckets: vec![refused(Duration::from_secs(47))],
        };
        cache.record(&tenant, &minute, t0, cache.generations());
        let before = t0 + REFUSAL_CACHE_MAX_AGE - Duration::from_millis(1);
        let hit = cache.lookup(&tenant, before).unwrap();
        assert_eq!(
            hit.retry_after(),
            Some(Duration::from_secs(47) - REFUSAL_CACHE_MAX_AGE + Duration::from_millis(1)),
            "the wait Redis gave, less the time passed"
        );
        assert!(cache.lookup(&tenant, t0 + REFUSAL_CACHE_MAX_AGE).is_none());
        // Redis refuses again: recorded again, for as long again.
        let t1 = t0 + REFUSAL_CACHE_MAX_AGE;
        cache.record(&tenant, &minute, t1, cache.generations());
        assert!(cache
            .lookup(&tenant, t1 + REFUSAL_CACHE_MAX_AGE / 2)
            .is_some());
        assert!(cache.lookup(&tenant, t1 + REFUSAL_CACHE_MAX_AGE).is_none());

        let short = Decision {
            allowed: false,
            now: Timestamp::from_micros(1_000_000),
            buckets: vec![refused(REFUSAL_CACHE_MAX_AGE / 4)],
        };
        cache.record(&tenant, &short, t0, cache.generations());
        assert!(cache
            .lookup(&tenant, t0 + REFUSAL_CACHE_MAX_AGE / 8)
            .is_some());
        assert!(cache
            .lookup(&tenant, t0 + REFUSAL_CACHE_MAX_AGE / 4)
            .is_none());
    }

    #[test]
    fn every_bucket_must_be_known_at_its_cost() {
        let cache = RefusalCache::new(100);
        let a = Bucket::new("a", "k", Limit::sliding(Quota::per_minute(5)));
        let b = Bucket::new("b", "k", Limit::sliding(Quota::per_minute(1)));
        let t0 = Instant::now();
        let refusal = Decision {
            allowed: false,
            now: Timestamp::from_micros(1_000_000),
            buckets: vec![fine(), refused(Duration::from_secs(2))],
        };
        // `a` admitted (at cost 1) beside `b`, which refused.
        cache.record(&[a.clone(), b.clone()], &refusal, t0, cache.generations());
        assert!(cache.lookup(&[a.clone(), b.clone()], t0).is_some());
        // At cost 5 `a` may refuse too, with a wait of its own (a review was told to come
        // back after `b`'s 1 s, and was refused again): Redis decides.
        assert!(cache.lookup(&[a.with_cost(5), b], t0).is_none());
    }

    /// Two routes sharing a refused bucket (a per-IP backstop), a client alternating
    /// between them: each route's refusal records the shared bucket again, and both keep
    /// being answered here (a review saw every refusal reach Redis when the entries had to
    /// come from one refusal).
    #[test]
    fn routes_sharing_a_refused_bucket_are_answered_here_in_turn() {
        let cache = RefusalCache::new(100);
        let route_a = Bucket::new("a", "k", Limit::sliding(Quota::per_minute(50)));
        let route_b = Bucket::new("b", "k", Limit::sliding(Quota::per_minute(50)));
        let backstop = Bucket::new("global", "k", Limit::sliding(Quota::per_minute(5)));
        let t0 = Instant::now();
        let refusal = Decision {
            allowed: false,
            now: Timestamp::from_micros(1_000_000),
            buckets: vec![fine(), refused(Duration::from_secs(30))],
        };
        let a = [route_a, backstop.clone()];
        let b = [route_b, backstop];
        cache.record(&a, &refusal, t0, cache.generations());
        let later = t0 + Duration::from_millis(10);
        cache.record(&b, &refusal, later, cache.generations());
        assert!(cache.lookup(&a, later).is_some());
        assert!(cache.lookup(&b, later).is_some());
    }

    #[test]
    fn bounded() {
        let cache = RefusalCache::new(SHARDS); // one per shard
        let t0 = Instant::now();
        for i in 0..1000 {
            let b = Bucket::new("ip", &i.to_string(), Limit::sliding(Quota::per_minute(2)));
            let d = Decision {
                allowed: false,
                now: Timestamp::from_micros(0),
                buckets: vec![refused(Duration::from_secs(60))],
            };
            cache.record(&[b], &d, t0, cache.generations());
        }
        assert!(cache.len() <= SHARDS);
    }

    /// Keys spread over every shard: a cache of one key per shard, offered many keys,
    /// holds one in each (all of them hashed to one shard would hold a single key, and
    /// send every other refusal to Redis).
    #[test]
    fn keys_fill_every_shard() {
        let cache = RefusalCache::new(SHARDS);
        let t0 = Instant::now();
        let d = Decision {
            allowed: false,
            now: Timestamp::from_micros(0),
            buckets: vec![refused(Duration::from_secs(60))],
        };
        for i in 0..1000 {
            let b = Bucket::new("ip", &i.to_string(), Limit::sliding(Quota::per_minute(2)));
            cache.record(&[b], &d, t0, cache.generations());
        }
        assert_eq!(cache.len(), SHARDS);
    }

    /// A full shard makes room by dropping the refusals that have run out, never a live
    /// one, and still takes a newer refusal of a key it holds; the count of keys held
    /// (shown in the store's `Debug`) follows.
    #[test]
    fn a_full_shard_drops_only_expired_refusals_and_updates_held_keys() {
        let cache = RefusalCache::new(1); // one key per shard
        let limit = Limit::sliding(Quota::per_minute(2));
        let wait = Duration::from_secs(60);
        let d = Decision {
            allowed: false,
            now: Timestamp::from_micros(0),
            buckets: vec![refused(wait)],
        };
        let t0 = Instant::now();
        // Two keys of one shard.
        let same_shard = |cache: &RefusalCache| {
            let first = Bucket::new("ip", "0", limit);
            let shard = cache.index(&first.key);
            let second = (1..10_000)
                .map(|i| Bucket::new("ip", &i.to_string(), limit))
                .find(|b| cache.index(&b.key) == shard)
                .expect("another key of the shard");
            [first, second]
        };
        let [live, newcomer] = same_shard(&cache);

        // A live refusal fills the shard: another key is left to Redis.
        cache.record(std::slice::from_ref(&live), &d, t0, cache.generations());
        cache.record(std::slice::from_ref(&newcomer), &d, t0, cache.generations());
        assert!(cache.lookup(std::slice::from_ref(&live), t0).is_some());
        assert!(cache.lookup(std::slice::from_ref(&newcomer), t0).is_none());
        assert_eq!(cache.len(), 1);

        // A newer refusal of the held key replaces it, though the shard is full.
        let later = t0 + Duration::from_secs(1);
        cache.record(std::slice::from_ref(&live), &d, later, cache.generations());
        let hit = cache.lookup(std::slice::from_ref(&live), later).unwrap();
        assert_eq!(hit.retry_after(), Some(wait));
        assert_eq!(cache.len(), 1);

        // Once the held refusal has run out, a new key takes its place.
        let Some(long_ago) = t0.checked_sub(Duration::from_secs(120)) else {
            return; // the monotonic clock started too recently to date a refusal back
        };
        let cache = RefusalCache::new(1);
        let [expired, newcomer] = same_shard(&cache);
        cache.record(
            std::slice::from_ref(&expired),
            &d,
            long_ago,
            cache.generations(),
        );
        assert_eq!(cache.len(), 1);
        cache.record(std::slice::from_ref(&newcomer), &d, t0, cache.generations());
        assert!(cache.lookup(std::slice::from_ref(&newcomer), t0).is_some());
        assert_eq!(cache.len(), 1);
    }

    /// Two buckets refused with different waits: once the shorter has passed, that bucket
    /// is reported as admitting while the longer still refuses; a bucket whose cost equals
    /// its capacity is refused over its limit (with a wait), not for its cost.
    #[test]
    fn each_bucket_reports_its_own_wait() {
        let cache = RefusalCache::new(100);
        let short = Bucket::new("short", "k", Limit::sliding(Quota::per_minute(2)));
        let long = Bucket::new("long", "k", Limit::sliding(Quota::per_minute(2)));
        let whole = Bucket::new("whole", "k", Limit::sliding(Quota::per_minute(1)));
        let buckets = [short, long, whole];
        let t0 = Instant::now();
        let decision = Decision {
            allowed: false,
            now: Timestamp::from_micros(0),
            buckets: vec![
                refused(Duration::from_millis(500)),
                refused(Duration::from_millis(1_000)),
                refused(Duration::from_millis(800)),
            ],
        };
        cache.record(&buckets, &decision, t0, cache.generations());

        let hit = cache
            .lookup(&buckets, t0 + Duration::from_millis(100))
            .unwrap();
        assert_eq!(hit.buckets[0].retry_after, Some(Duration::from_millis(400)));
        assert_eq!(hit.buckets[2].retry_after, Some(Duration::from_millis(700)));
        assert_eq!(hit.buckets[2].refusal, Some(Refusal::OverLimit));
        assert!(!hit.buckets[2].allowed);

        let hit = cache
            .lookup(&buckets, t0 + Duration::from_millis(500))
            .unwrap();
        assert!(!hit.allowed);
        assert!(hit.buckets[0].allowed);
        assert_eq!(hit.buckets[0].retry_after, None);
        assert_eq!(hit.buckets[0].refusal, None);
        assert_eq!(hit.buckets[1].retry_after, Some(Duration::from_millis(500)));
        assert_eq!(hit.retry_after(), Some(Duration::from_millis(500)));
    }

    #[test]
    fn a_refusal_sent_before_a_refund_answered_is_not_recorded() {
        let cache = RefusalCache::new(100);
        let ip = Bucket::new("ip", "1.2.3.4", Limit::sliding(Quota::per_minute(2)));
        let other = Bucket::new("ip", "5.6.7.8", Limit::sliding(Quota::per_minute(2)));
        let decision = Decision {
            allowed: false,
            now: Timestamp::from_micros(0),
            buckets: vec![refused(Duration::from_secs(60))],
        };
        let t0 = Instant::now();
        // A charge is sent (the cache is empty), then a refund of the key is answered and
        // forgotten, then the charge's refusal arrives: it predates the refund.
        let sent = cache.generations();
        cache.forget(std::slice::from_ref(&ip));
        cache.record(std::slice::from_ref(&ip), &decision, t0, sent);
        assert!(cache.lookup(std::slice::from_ref(&ip), t0).is_none());
        assert_eq!(cache.len(), 0);

        // A refusal sent after the refund is recorded, and so is one of a key whose shard
        // no refund touched (here: any key when nothing was forgotten in between).
        cache.record(
            std::slice::from_ref(&ip),
            &decision,
            t0,
            cache.generations(),
        );
        assert!(cache.lookup(std::slice::from_ref(&ip), t0).is_some());
        let sent = cache.generations();
        cache.record(std::slice::from_ref(&other), &decision, t0, sent);
        assert!(cache.lookup(std::slice::from_ref(&other), t0).is_some());
    }
}
