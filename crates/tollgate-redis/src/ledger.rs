//! What a [`FallbackStore`](crate::FallbackStore) remembers of the keys it used recently:
//! what the primary last reported for each (so that a primary that came back empty can be
//! given its counts again) and what was decided from memory since (so that the primary is
//! charged it when it answers again). Bounded: at most a configured number of keys.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use smallvec::SmallVec;
use tollgate_limits::{Bucket, BucketState, Limit, Op, Sampled, StoreKey, WhenFull};

/// How much later than the answer it follows an earlier answer may be noted (µs): its
/// freshness, worked out from when it is noted, moves by as much.
const NOTED_LATE_US: u64 = 100_000;

/// One key's record.
#[derive(Debug, Clone)]
struct Entry {
    limit: Limit,
    name_len: u16,
    when_full: WhenFull,
    /// What the primary last reported counted against the key (capacity − remaining).
    used: u64,
    /// When that report is fresh again (µs, on the memory store's clock).
    until: u64,
    /// What memory charged the key since (admitted charges and penalties, less refunds),
    /// not yet charged to the primary.
    debt: u64,
    /// What memory's resets of the key took away since: what the primary had last reported
    /// counted when the key was reset (if that report still counted), to be refunded to the
    /// primary. Not a reset of the primary's key, which would also take away what other
    /// instances counted there after this one's reset (a sign-in's reset noted during an
    /// outage, delivered later, lifted a lockout formed through another instance since).
    cleared: u64,
    /// When the record last changed (µs): the least recently changed go first.
    seen: u64,
}

impl Entry {
    /// Whether forgetting the record loses nothing: its report counts nothing (a fixed
    /// window that counts nothing still reports its window's end) or is fresh again, and
    /// nothing is owed.
    fn idle(&self, now: u64) -> bool {
        (self.used == 0 || self.until <= now) && self.debt == 0 && self.cleared == 0
    }

    /// The order records are evicted in, smallest first, by what forgetting one could
    /// admit beyond its limit: keys below their limit before keys at it (or with a reset
    /// owed), then
    /// the smaller share of its limit held (the report still counting, plus what is owed;
    /// as a share, so a lockout at 4 of 5 outranks a key at 5 of 10,000), then the fewer
    /// held, then a report before a debt of the same size (the primary has the report until
    /// it restarts empty), then least recently changed. So a flood of invented keys, each
    /// owing a request or two, makes room among its own records, not with a key near or at
    /// its limit (ranked by recency alone, those went first: the older records). Keys a
    /// flood pushes to their own limit rank with the others at theirs.
    fn rank(&self, now: u64) -> (bool, u64, u64, bool, u64) {
        let counted = if self.until > now { self.used } else { 0 };
        let held = counted.saturating_add(self.debt);
        let capacity = self.limit.capacity().max(1);
        // The share held, in 2^-32ths of the limit.
        let share = (u128::from(held.min(capacity)) << 32) / u128::from(capacity);
        (
            self.cleared > 0 || held >= capacity,
            u64::try_from(share).unwrap_or(u64::MAX),
            held,
            self.debt > 0,
            self.seen,
        )
    }

    fn bucket(&self, key: &StoreKey) -> Bucket {
        Bucket::from_key(key.clone(), usize::from(self.name_len), self.limit)
            .with_when_full(self.when_full)
    }
}

/// What [`Ledger::take`] hands over for one key.
#[derive(Debug, Clone)]
pub(crate) struct Owed {
    /// The key, its limit and its `WhenFull`, at a cost of 1.
    pub(crate) bucket: Bucket,
    /// What the primary last reported counted, if that report has not expired.
    pub(crate) used: u64,
    /// When that report is fresh again, from the time it was taken.
    pub(crate) fresh_in: std::time::Duration,
    /// What memory charged since.
    pub(crate) debt: u64,
    /// What memory's resets took away since, to refund to the primary.
    pub(crate) cleared: u64,
}

/// The ledger's keys and what it remembers of each.
type Table = HashMap<StoreKey, Entry, foldhash::fast::RandomState>;

/// The records, at most `capacity` of them.
#[derive(Debug)]
pub(crate) struct Ledger {
    table: Mutex<Table>,
    capacity: usize,
    /// Debts lost because their record was evicted (the table full of owed keys).
    lost: AtomicU64,
    /// Losses logged: at most one warning per 10 s.
    warned: Sampled,
}

impl Ledger {
    /// A ledger of at most `capacity` keys (0: it keeps nothing).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            table: Mutex::new(HashMap::default()),
            capacity,
            lost: AtomicU64::new(0),
            warned: Sampled::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many keys it holds.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// How many debts were lost to eviction.
    pub(crate) fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Notes what the primary reported for each of `buckets` (answered by `states` to
    /// `op`) at `now`, under one lock. Returns, per bucket, what the key counts as noted
    /// (see [`Ledger::note`]), or `None` for an answer found earlier than the record, which
    /// the memory store's mirror skips too.
    pub(crate) fn note_all(
        &self,
        op: Op,
        buckets: &[Bucket],
        states: &[BucketState],
        now: u64,
    ) -> SmallVec<[Option<u64>; 8]> {
        if self.capacity == 0 {
            return buckets
                .iter()
                .zip(states)
                .map(|(b, state)| Some(b.limit.capacity().saturating_sub(state.remaining)))
                .collect();
        }
        let mut table = self.lock();
        buckets
            .iter()
            .zip(states)
            .map(|(bucket, state)| self.note(&mut table, op, bucket, state, now))
            .collect()
    }

    /// Notes what the primary reported for `bucket` at `now`. The answers to charges sent
    /// together may be noted in another order than Redis gave them: an answer to a charge
    /// that counts less than the record, and is fresh again no later (give or take the
    /// 100 ms it may have waited to be noted), is an earlier one, and the record keeps the
    /// larger count (a key filled by 50 requests at once was remembered at 47 to 49, and
    /// restored so after an empty restart). Refunds and resets lower it. Returns what the
    /// key counts as noted, or `None` for such an earlier answer.
    ///
    /// An answer with nothing remaining says only that the key is at its limit or past it:
    /// under a limit lowered since the record (a reload), the record's count, if it still
    /// counts, is kept where it is larger (10 counted under 10 a minute, then refused under
    /// 5: still 10, not 5, or the limit raised again during an outage would let memory admit
    /// the difference once more).
    fn note(
        &self,
        table: &mut Table,
        op: Op,
        bucket: &Bucket,
        state: &BucketState,
        now: u64,
    ) -> Option<u64> {
        let mut used = bucket.limit.capacity().saturating_sub(state.remaining);
        let reset_us = u64::try_from(state.reset_after.as_micros()).unwrap_or(u64::MAX);
        let until = now.saturating_add(reset_us);
        if let Some(entry) = table.get_mut(bucket.key.as_str()) {
            let earlier = matches!(op, Op::Charge | Op::Penalize)
                && entry.limit == bucket.limit
                && entry.used > used
                && entry.until.saturating_add(NOTED_LATE_US) >= until;
            if earlier {
                entry.seen = now;
                return None;
            }
            let at_limit =
                state.remaining == 0 && matches!(op, Op::Charge | Op::Peek | Op::Penalize);
            if at_limit && entry.until > now {
                used = used.max(entry.used);
            }
            entry.limit = bucket.limit;
            entry.when_full = bucket.when_full;
            entry.used = used;
            entry.until = until;
            entry.seen = now;
            return Some(used);
        }
        if used == 0 {
            return Some(0);
        }
        self.insert(
            table,
            bucket,
            Entry {
                limit: bucket.limit,
                name_len: name_len(bucket),
                when_full: bucket.when_full,
                used,
                until,
                debt: 0,
                cleared: 0,
                seen: now,
            },
            now,
        );
        Some(used)
    }

    /// Notes what memory did to `bucket` while the primary failed: `op`, and for a
    /// charge whether it was admitted.
    pub(crate) fn owe(&self, op: Op, bucket: &Bucket, admitted: bool, now: u64) {
        if self.capacity == 0 || op == Op::Peek || (op == Op::Charge && !admitted) {
            return;
        }
        let mut table = self.lock();
        let entry = match table.get_mut(bucket.key.as_str()) {
            Some(entry) => entry,
            None => {
                if matches!(op, Op::Refund | Op::RefundAt(_) | Op::Reset) {
                    // Nothing owed to take from, nothing reported to clear.
                    return;
                }
                let fresh = Entry {
                    limit: bucket.limit,
                    name_len: name_len(bucket),
                    when_full: bucket.when_full,
                    used: 0,
                    until: 0,
                    debt: 0,
                    cleared: 0,
                    seen: now,
                };
                if !self.insert(&mut table, bucket, fresh, now) {
                    self.lost.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                match table.get_mut(bucket.key.as_str()) {
                    Some(entry) => entry,
                    None => return,
                }
            }
        };
        entry.seen = now;
        // The limit memory decided by: the one what is owed is read and given back under
        // (a record from before a reload that raised the limit, kept, would count at most
        // the old limit of what memory admitted under the new one).
        entry.limit = bucket.limit;
        entry.when_full = bucket.when_full;
        match op {
            Op::Charge | Op::Penalize => entry.debt = entry.debt.saturating_add(bucket.cost),
            Op::Refund | Op::RefundAt(_) => entry.debt = entry.debt.saturating_sub(bucket.cost),
            Op::Reset => {
                let counted = if entry.until > now { entry.used } else { 0 };
                entry.cleared = entry.cleared.saturating_add(counted);
                entry.debt = 0;
                entry.used = 0;
                entry.until = 0;
            }
            Op::Peek => {}
        }
    }

    /// Takes what is owed: every key with a debt or a reset's refund, and with `restore` also
    /// every key whose last report still counts something. Debts and refunds are cleared; give
    /// back what could not be delivered with [`Ledger::put_back`].
    pub(crate) fn take(&self, restore: bool, now: u64) -> Vec<Owed> {
        let mut table = self.lock();
        let mut owed = Vec::new();
        for (key, entry) in table.iter_mut() {
            let counts = entry.until > now && entry.used > 0;
            if entry.debt == 0 && entry.cleared == 0 && !(restore && counts) {
                continue;
            }
            owed.push(Owed {
                bucket: entry.bucket(key),
                used: if counts { entry.used } else { 0 },
                fresh_in: std::time::Duration::from_micros(entry.until.saturating_sub(now)),
                debt: entry.debt,
                cleared: entry.cleared,
            });
            entry.debt = 0;
            entry.cleared = 0;
        }
        owed
    }

    /// The keys whose record changed at or after `since` (µs) and whose last report still
    /// counts at `now`: each key (at a cost of 1), what the primary reported counted, and
    /// when that report is fresh again, from `now`.
    pub(crate) fn reports_since(
        &self,
        since: u64,
        now: u64,
    ) -> Vec<(Bucket, u64, std::time::Duration)> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.seen >= since && e.until > now && e.used > 0)
            .map(|(key, e)| {
                let fresh_in = std::time::Duration::from_micros(e.until - now);
                (e.bucket(key), e.used, fresh_in)
            })
            .collect()
    }

    /// Adds `bucket.cost` to the count the primary last reported of its key, if that report
    /// still counts at `now`: a charge the primary admitted after it lost its counts (it
    /// restarted empty, before this instance knew), which writing the report back would
    /// otherwise take in. A key without such a report is not written back, and keeps the
    /// charge where it was counted.
    pub(crate) fn add_to_report(&self, bucket: &Bucket, now: u64) {
        if let Some(entry) = self.lock().get_mut(bucket.key.as_str()) {
            if entry.until > now && entry.used > 0 {
                entry.used = entry.used.saturating_add(bucket.cost);
            }
        }
    }

    /// What memory charged each of `buckets` since the ledger's debts were last taken.
    pub(crate) fn debts(&self, buckets: &[Bucket]) -> SmallVec<[u64; 8]> {
        if self.capacity == 0 {
            return smallvec::smallvec![0; buckets.len()];
        }
        let table = self.lock();
        buckets
            .iter()
            .map(|b| table.get(b.key.as_str()).map_or(0, |e| e.debt))
            .collect()
    }

    /// Puts back debts and resets' refunds [`Ledger::take`] handed over that could not be
    /// delivered.
    pub(crate) fn put_back(&self, owed: &[Owed], now: u64) {
        let mut table = self.lock();
        for o in owed.iter().filter(|o| o.debt > 0 || o.cleared > 0) {
            if let Some(entry) = table.get_mut(o.bucket.key.as_str()) {
                entry.debt = entry.debt.saturating_add(o.debt);
                entry.cleared = entry.cleared.saturating_add(o.cleared);
                continue;
            }
            let entry = Entry {
                limit: o.bucket.limit,
                name_len: name_len(&o.bucket),
                when_full: o.bucket.when_full,
                used: 0,
                until: 0,
                debt: o.debt,
                cleared: o.cleared,
                seen: now,
            };
            if !self.insert(&mut table, &o.bucket, entry, now) {
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Inserts a record for a key not held, making room first: records with nothing to
    /// remember go, then the lowest eighth by [`Entry::rank`]. Returns whether it is held.
    fn insert(&self, table: &mut Table, bucket: &Bucket, entry: Entry, now: u64) -> bool {
        if self.capacity == 0 {
            return false;
        }
        if table.len() >= self.capacity {
            table.retain(|_, e| !e.idle(now));
        }
        if table.len() >= self.capacity {
            let n = (self.capacity / 8).clamp(1, table.len());
            let mut ranks: Vec<_> = table.values().map(|e| e.rank(now)).collect();
            let (_, &mut cutoff, _) = ranks.select_nth_unstable(n - 1);
            let mut left = n;
            let mut lost = 0;
            table.retain(|_, e| {
                if left > 0 && e.rank(now) <= cutoff {
                    left -= 1;
                    lost += u64::from(e.debt > 0 || e.cleared > 0);
                    false
                } else {
                    true
                }
            });
            let lost_total = self.lost.fetch_add(lost, Ordering::Relaxed) + lost;
            if lost > 0 && self.warned.due(now, 10_000_000).is_some() {
                tracing::warn!(
                    target: "tollgate",
                    lost_total,
                    capacity = self.capacity,
                    "the fallback's ledger is full of keys owed to Redis: those holding the \
                     least of their limit were forgotten, and Redis will not be charged for \
                     them (logged at most every 10 s; lost_total counts every one)"
                );
            }
        }
        table.insert(bucket.key.clone(), entry);
        true
    }
}

fn name_len(bucket: &Bucket) -> u16 {
    u16::try_from(bucket.name().len()).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tollgate_limits::Quota;

    use super::*;

    fn report(remaining: u64, reset_s: u64) -> BucketState {
        BucketState {
            allowed: true,
            limit: 5,
            remaining,
            reset_after: Duration::from_secs(reset_s),
            retry_after: None,
            refusal: None,
        }
    }

    #[test]
    fn keeps_reports_and_debts_within_its_capacity() {
        let limit = Limit::sliding_exact(Quota::per_minute(5));
        let ledger = Ledger::new(64);
        let locked = Bucket::new("login", "alice", limit);
        ledger.note_all(
            Op::Charge,
            std::slice::from_ref(&locked),
            &[report(0, 60)],
            0,
        );
        ledger.owe(Op::Charge, &Bucket::new("login", "bob", limit), true, 1);
        // A flood of keys a little used: the limited key and the debt stay.
        for i in 0..10_000u64 {
            let b = Bucket::new("login", &format!("x{i}"), limit);
            ledger.note_all(
                Op::Charge,
                std::slice::from_ref(&b),
                &[report(4, 60)],
                2 + i,
            );
            assert!(ledger.len() <= 64);
        }
        let owed = ledger.take(true, 100);
        let find = |k: &str| owed.iter().find(|o| o.bucket.key == k).cloned();
        assert_eq!(find("login:alice").map(|o| (o.used, o.debt)), Some((5, 0)));
        assert_eq!(find("login:bob").map(|o| (o.used, o.debt)), Some((0, 1)));
        assert_eq!(ledger.lost(), 0);
        // Taken: only reports are left to restore, no debt.
        assert!(ledger.take(false, 100).is_empty());
        ledger.put_back(&owed, 100);
        assert_eq!(ledger.take(false, 100).len(), 1, "bob's debt is back");
        // Reports expire: nothing to restore once they are fresh again.
        assert!(ledger.take(true, 61_000_000).is_empty());
    }

    /// Answers to charges sent together, noted out of order: the record keeps the larger
    /// count (it kept whichever came last: 47 of 50 after a burst). A refund lowers it.
    #[test]
    fn an_earlier_answer_noted_late_does_not_lower_the_count() {
        let limit = Limit::sliding(Quota::per_minute(5));
        let ledger = Ledger::new(8);
        let b = Bucket::new("chat", "u", limit);
        let one = std::slice::from_ref(&b);
        ledger.note_all(Op::Charge, one, &[report(1, 60)], 0);
        ledger.note_all(Op::Charge, one, &[report(2, 60)], 0);
        assert_eq!(ledger.take(true, 1)[0].used, 4);
        ledger.note_all(Op::Refund, one, &[report(3, 60)], 0);
        assert_eq!(ledger.take(true, 1)[0].used, 2);
        // A later answer fresh again later is news, even with less counted (some left).
        ledger.note_all(Op::Charge, one, &[report(4, 61)], 1_000_000);
        assert_eq!(ledger.take(true, 1_000_001)[0].used, 1);
    }

    /// A record whose key counts nothing (a fixed window given everything back, whose
    /// report still names its window's end) makes room before any record that counts.
    #[test]
    fn records_that_count_nothing_make_room_first() {
        let limit = Limit::fixed(Quota::per_day(5));
        let ledger = Ledger::new(8);
        // Key `k<i>`'s answer to `op`: `remaining` left, the window's end an hour away.
        let note = |op: Op, i: u64, remaining: u64, now: u64| {
            let b = Bucket::new("daily", &format!("k{i}"), limit);
            ledger.note_all(
                op,
                std::slice::from_ref(&b),
                &[report(remaining, 3600)],
                now,
            );
        };
        for i in 0..8u64 {
            note(Op::Charge, i, 3, i);
        }
        // Each given back: nothing counted.
        for i in 0..4u64 {
            note(Op::Refund, i, 5, 10 + i);
        }
        // Four new keys: the four empty records go, every count stays.
        for i in 8..12u64 {
            note(Op::Charge, i, 3, 20 + i);
        }
        let mut kept: Vec<String> = ledger
            .take(true, 100)
            .into_iter()
            .map(|o| o.bucket.key.to_string())
            .collect();
        kept.sort();
        let mut counted: Vec<String> = (4..12).map(|i| format!("daily:k{i}")).collect();
        counted.sort();
        assert_eq!(kept, counted);
    }

    /// A flood of invented keys while Redis is away, each owing one request, makes room
    /// among its own records: a key at its limit, a client's debt at its limit and a
    /// larger debt stay (by recency alone the older records went first, and a client
    /// whose 30 requests were forgotten was admitted 29 more once Redis was back).
    #[test]
    fn a_flood_of_small_debts_makes_room_among_itself() {
        let limit = Limit::sliding(Quota::per_minute(5));
        let ledger = Ledger::new(64);
        let alice = Bucket::new("chat", "alice", limit);
        ledger.note_all(
            Op::Charge,
            std::slice::from_ref(&alice),
            &[report(0, 60)],
            0,
        );
        for _ in 0..5 {
            ledger.owe(Op::Charge, &Bucket::new("chat", "bob", limit), true, 1);
        }
        for _ in 0..2 {
            ledger.owe(Op::Charge, &Bucket::new("chat", "carol", limit), true, 2);
        }
        for i in 0..10_000u64 {
            let b = Bucket::new("chat", &format!("x{i}"), limit);
            ledger.owe(Op::Charge, &b, true, 3 + i);
            assert!(ledger.len() <= 64);
        }
        let owed = ledger.take(true, 20_000);
        let find = |k: &str| {
            owed.iter()
                .find(|o| o.bucket.key == k)
                .map(|o| (o.used, o.debt))
        };
        assert_eq!(find("chat:alice"), Some((5, 0)));
        assert_eq!(find("chat:bob"), Some((0, 5)));
        assert_eq!(find("chat:carol"), Some((0, 2)));
        // What was forgotten is the flood's, one request each, and counted.
        let flood_kept = owed.len() as u64 - 3;
        assert!(flood_kept > 0);
        assert_eq!(ledger.lost(), 10_000 - flood_kept);
    }

    /// The rank weighs what is held against each key's own limit: a lockout key at 4 of 5
    /// stays while a flood of keys of a large per-user limit, 5 of 10,000 each, makes room
    /// among itself (by the count alone, 4 went before 5).
    #[test]
    fn a_key_near_a_small_limit_outranks_a_few_requests_of_a_large_one() {
        let lockout = Limit::sliding(Quota::per_minute(5));
        let large = Limit::sliding(Quota::per_hour(10_000));
        let ledger = Ledger::new(64);
        for _ in 0..4 {
            ledger.owe(
                Op::Charge,
                &Bucket::new("lockout", "alice", lockout),
                true,
                0,
            );
        }
        for i in 0..2_000u64 {
            let b = Bucket::new("user", &format!("x{i}"), large);
            for _ in 0..5 {
                ledger.owe(Op::Charge, &b, true, 1 + i);
            }
        }
        let owed = ledger.take(false, 10_000);
        let alice = owed.iter().find(|o| o.bucket.key == "lockout:alice");
        assert_eq!(alice.map(|o| o.debt), Some(4));
    }

    #[test]
    fn refunds_and_resets_adjust_what_is_owed() {
        let limit = Limit::sliding(Quota::per_minute(10));
        let ledger = Ledger::new(8);
        let b = Bucket::new("api", "k", limit).with_cost(3);
        ledger.owe(Op::Charge, &b, true, 0);
        ledger.owe(Op::Charge, &b, false, 0);
        ledger.owe(Op::Penalize, &b, true, 0);
        ledger.owe(Op::Refund, &b.clone().with_cost(2), true, 0);
        let owed = ledger.take(false, 0);
        assert_eq!((owed[0].debt, owed[0].cleared), (4, 0));
        // A reset takes away what memory owed and what the primary last reported still
        // counting (7 of 10, for 60 s), which is refunded to the primary, not reset there.
        let seven = BucketState {
            limit: 10,
            ..report(3, 60)
        };
        ledger.note_all(
            Op::Charge,
            std::slice::from_ref(&b),
            std::slice::from_ref(&seven),
            0,
        );
        ledger.owe(Op::Charge, &b, true, 0);
        ledger.owe(Op::Reset, &b, true, 0);
        let owed = ledger.take(true, 0);
        assert_eq!((owed[0].used, owed[0].debt, owed[0].cleared), (0, 0, 7));
        // A report that no longer counts is nothing to clear; a key never seen, nothing
        // to note.
        ledger.note_all(
            Op::Charge,
            std::slice::from_ref(&b),
            std::slice::from_ref(&seven),
            0,
        );
        ledger.owe(Op::Reset, &b, true, 61_000_000);
        ledger.owe(Op::Reset, &Bucket::new("api", "new", limit), true, 0);
        assert!(ledger.take(true, 61_000_000).is_empty());
    }
}
