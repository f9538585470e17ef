//! A guard's requests in flight ([`Gate`]): a guard that counts only some responses
//! (failed authentications) looks at its buckets before a request runs and counts the
//! request once its response counts, so requests sent together would all be looked at
//! before any counted (a review: 300 of 300 guesses sent at once answered against 20 a
//! minute, on Redis). The gate lets no more requests of a key run at once than the key has
//! left: the others wait (they are not refused: a client's valid requests run, a few at a
//! time) until one of those running is answered and counted, then look again.
//!
//! Per process: instances of a fleet each let a key's remaining count run at once. When no
//! place of a key was given up for [`MAX_WAIT`] (its places held by long requests: long
//! polls, slow uploads), a request that waited that long may run as one more than the key
//! has left, one such at a time, so the client's other requests are not held back for good.
//! Such a place does not count as one given up: when the long requests end, those waiting
//! take the places they free, no more than the key has left.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smallvec::SmallVec;
use tokio::sync::Notify;
use tollgate_limits::{BucketState, StoreKey};

use super::plan::INLINE;

/// How long a request waits for a place before it may run as one more than its key has
/// left.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(2);

/// How often a waiting request looks again without being woken (a safety net: each
/// answered request wakes the waiting ones).
const RECHECK: Duration = Duration::from_millis(200);

/// The requests of each key running past a guard's look, in this process.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    running: Mutex<HashMap<StoreKey, Running>>,
    /// Woken whenever a place is given up.
    freed: Notify,
}

/// A key's requests running past the look.
#[derive(Debug)]
struct Running {
    count: u64,
    /// Whether one of them runs as one more than the key has left.
    extra: bool,
    /// When a request of the key that ran last gave up its place (other than the extra
    /// one), or the key took its first.
    moved: Instant,
}

/// The places one request holds (one per bucket key), given up when it is dropped: once
/// its response was counted, or it was dropped unanswered.
#[derive(Debug)]
pub(crate) struct Place {
    gate: Arc<Gate>,
    /// Each key, and how many of its requests ran before this one took its place.
    keys: SmallVec<[(StoreKey, u64); INLINE]>,
    /// Whether it runs as one more than its keys have left.
    extra: bool,
    /// Whether its request ran past the look ([`Place::ran`]): only such a place given up
    /// is a place that moved. One taken for a look that did not fit, or refused, shows
    /// nothing about the requests holding the key.
    ran: bool,
}

/// What a waiting request knows: what each key had left when it last looked, and since
/// when it waits.
pub(crate) struct Waiting {
    left: Option<SmallVec<[u64; INLINE]>>,
    since: Instant,
}

impl Waiting {
    pub(crate) fn new() -> Self {
        Self {
            left: None,
            since: Instant::now(),
        }
    }

    /// Whether it waited [`MAX_WAIT`].
    fn waited_long(&self) -> bool {
        self.since.elapsed() >= MAX_WAIT
    }

    /// Notes what the keys had left at a look whose place did not fit.
    pub(crate) fn saw(&mut self, states: &[BucketState]) {
        self.left = Some(states.iter().map(|s| s.remaining).collect());
    }
}

impl Gate {
    /// A place for a request of `keys`, once one may be worth a look: at once the first
    /// time, then when fewer of each key run than it had left at the last look, or as the
    /// one more of keys held by long requests. Waits for places to be given up meanwhile.
    pub(crate) async fn place(
        self: &Arc<Self>,
        keys: impl Iterator<Item = StoreKey> + Clone,
        waiting: &Waiting,
    ) -> Place {
        loop {
            // Registered before looking, so that a place given up in between wakes it.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(place) = self.try_place(keys.clone(), waiting) {
                return place;
            }
            let _ = tokio::time::timeout(RECHECK, freed).await;
        }
    }

    fn try_place(
        self: &Arc<Self>,
        keys: impl Iterator<Item = StoreKey>,
        waiting: &Waiting,
    ) -> Option<Place> {
        let mut running = super::lock(&self.running);
        let keys: SmallVec<[(StoreKey, u64); INLINE]> = keys
            .map(|key| {
                let before = running.get(&key).map_or(0, |r| r.count);
                (key, before)
            })
            .collect();
        let below = |slack: u64| {
            waiting.left.as_ref().is_none_or(|left| {
                keys.iter()
                    .zip(left)
                    .all(|((_, before), left)| *before < left + slack)
            })
        };
        let extra = if below(0) {
            false
        } else if waiting.waited_long()
            && below(1)
            && keys.iter().all(|(key, _)| {
                running
                    .get(key)
                    .is_some_and(|r| !r.extra && r.moved.elapsed() >= MAX_WAIT)
            })
        {
            true
        } else {
            return None;
        };
        for (key, _) in &keys {
            let entry = running.entry(key.clone()).or_insert_with(|| Running {
                count: 0,
                extra: false,
                moved: Instant::now(),
            });
            entry.count += 1;
            entry.extra |= extra;
        }
        Some(Place {
            gate: self.clone(),
            keys,
            extra,
            ran: false,
        })
    }
}

impl Place {
    /// Marks its request as running past the look, held until its response is counted.
    pub(crate) fn ran(mut self) -> Self {
        self.ran = true;
        self
    }

    /// Whether the request may run on the look that answered `states`: fewer of each key
    /// ran before it than the key has left (one more, for the extra place).
    pub(crate) fn fits(&self, states: &[BucketState]) -> bool {
        let slack = u64::from(self.extra);
        self.keys
            .iter()
            .zip(states)
            .all(|((_, before), state)| *before < state.remaining + slack)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut running = super::lock(&self.gate.running);
        for (key, _) in &self.keys {
            if let Some(r) = running.get_mut(key) {
                r.count -= 1;
                if r.count == 0 {
                    running.remove(key);
                } else if self.extra {
                    r.extra = false;
                } else if self.ran {
                    r.moved = Instant::now();
                }
            }
        }
        drop(running);
        self.gate.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::super::lock;
    use super::*;

    fn state(remaining: u64) -> BucketState {
        BucketState {
            remaining,
            ..BucketState::default()
        }
    }

    fn key(s: &str) -> StoreKey {
        let mut k = StoreKey::new();
        k.push_str(s);
        k
    }

    #[tokio::test]
    async fn no_more_of_a_key_run_than_it_has_left() {
        let gate = Arc::new(Gate::default());
        let keys = || std::iter::once(key("ip:1"));
        let waiting = Waiting::new();
        let first = gate.place(keys(), &waiting).await;
        let second = gate.place(keys(), &waiting).await;
        // Two left: both fit; one left: only the first.
        assert!(first.fits(&[state(2)]) && second.fits(&[state(2)]));
        assert!(first.fits(&[state(1)]) && !second.fits(&[state(1)]));
        // A request that saw one left while one runs waits for a place...
        let mut seen = Waiting::new();
        seen.saw(&[state(1)]);
        drop(second);
        assert!(gate.try_place(keys(), &seen).is_none());
        // ...given when the running one is answered.
        drop(first);
        let third = gate.try_place(keys(), &seen).unwrap();
        assert!(third.fits(&[state(1)]));
        // Another key is not held back.
        assert!(gate
            .try_place(std::iter::once(key("ip:2")), &seen)
            .is_some());
        drop(third);
        assert!(lock(&gate.running).is_empty());
    }

    #[tokio::test]
    async fn keys_held_by_long_requests_let_one_more_run_at_a_time() {
        let gate = Arc::new(Gate::default());
        let keys = || std::iter::once(key("ip:1"));
        let long_ago = Instant::now() - MAX_WAIT;
        let mut waited = Waiting {
            left: None,
            since: long_ago,
        };
        waited.saw(&[state(1)]);
        // One left, one running: not one more while that place is fresh...
        let long = gate.place(keys(), &Waiting::new()).await;
        assert!(gate.try_place(keys(), &waited).is_none());
        // ...but once it has run long, one more, and only one, until it is given up.
        lock(&gate.running).get_mut(&key("ip:1")).unwrap().moved = long_ago;
        let extra = gate.try_place(keys(), &waited).unwrap();
        assert!(extra.fits(&[state(1)]) && !extra.fits(&[state(0)]));
        assert!(gate.try_place(keys(), &waited).is_none());
        drop(extra);
        assert!(gate.try_place(keys(), &waited).is_some());
        // The long one ends: those waiting take what it frees, no more than is left.
        drop(long);
        let mut after = Waiting {
            left: None,
            since: long_ago,
        };
        after.saw(&[state(1)]);
        let one = gate.try_place(keys(), &after).unwrap();
        assert!(one.fits(&[state(1)]));
        assert!(
            gate.try_place(keys(), &after).is_none(),
            "no extra: a place moved"
        );
    }

    #[tokio::test]
    async fn looks_that_did_not_fit_do_not_hold_back_the_one_more() {
        let gate = Arc::new(Gate::default());
        let keys = || std::iter::once(key("ip:1"));
        let long_ago = Instant::now() - MAX_WAIT;
        let long = gate.place(keys(), &Waiting::new()).await.ran();
        lock(&gate.running).get_mut(&key("ip:1")).unwrap().moved = long_ago;
        // Requests arriving behind the long one take a place for their first look, which
        // does not fit, and give it up: no place of a request that ran moved.
        for _ in 0..3 {
            let looked = gate.place(keys(), &Waiting::new()).await;
            assert!(!looked.fits(&[state(1)]));
        }
        let mut waited = Waiting {
            left: None,
            since: long_ago,
        };
        waited.saw(&[state(1)]);
        let extra = gate
            .try_place(keys(), &waited)
            .expect("one more after the wait");
        assert!(extra.fits(&[state(1)]));
        // A request that ran and is answered is a place that moved.
        drop(extra);
        let quick = gate.place(keys(), &Waiting::new()).await.ran();
        drop(quick);
        assert!(gate.try_place(keys(), &waited).is_none());
        drop(long);
    }

    #[tokio::test]
    async fn a_waiting_request_is_woken_when_a_place_is_given_up() {
        let gate = Arc::new(Gate::default());
        let keys = || std::iter::once(key("ip:1"));
        let running = gate.place(keys(), &Waiting::new()).await;
        let mut seen = Waiting::new();
        seen.saw(&[state(1)]);
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.place(keys(), &seen).await.fits(&[state(1)]) })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let woken = Instant::now();
        drop(running);
        assert!(waiter.await.unwrap());
        assert!(woken.elapsed() < RECHECK, "woken, not found by the recheck");
    }
}
