//! A guard's requests in flight ([`Gate`]): a guard that counts only some responses
//! (failed authentications) looks at its buckets before a request runs and counts the
//! request once its response counts, so requests sent together would all be looked at
//! before any counted (a review: 300 of 300 guesses sent at once answered against 20 a
//! minute, on Redis). The gate lets no more requests of a key run at once than the key has
//! left: the others wait (they are not refused: a client's valid requests run, a few at a
//! time) until one of those running is answered and counted, then look again.
//!
//! Per process: instances of a fleet each let a key's remaining count run at once. A
//! request that waited [`MAX_WAIT`] may run as one more than the key has left, one such at a
//! time (responses that take long, long polls, must not hold a client's other requests back
//! for good, nor let every request waiting behind them run at once when the wait is over).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smallvec::SmallVec;
use tokio::sync::Notify;
use tollgate_core::{BucketState, StoreKey};

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
    running: Mutex<HashMap<StoreKey, u64>>,
    /// Woken whenever a place is given up.
    freed: Notify,
}

/// The places one request holds (one per bucket key), given up when it is dropped: once
/// its response was counted, or it was dropped unanswered.
#[derive(Debug)]
pub(crate) struct Place {
    gate: Arc<Gate>,
    /// Each key, and how many of its requests ran before this one took its place.
    keys: SmallVec<[(StoreKey, u64); INLINE]>,
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

    /// How many more than a key has left may run once this request runs: one when it
    /// waited [`MAX_WAIT`], else none.
    pub(crate) fn slack(&self) -> u64 {
        u64::from(self.since.elapsed() >= MAX_WAIT)
    }

    /// Notes what the keys had left at a look whose place did not fit.
    pub(crate) fn saw(&mut self, states: &[BucketState]) {
        self.left = Some(states.iter().map(|s| s.remaining).collect());
    }
}

impl Gate {
    /// A place for a request of `keys`, once one may be worth a look: at once the first
    /// time, then when fewer of each key run than it had left at the last look (plus its
    /// [`Waiting::slack`]). Waits for places to be given up meanwhile.
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
                let before = running.get(&key).copied().unwrap_or(0);
                (key, before)
            })
            .collect();
        let slack = waiting.slack();
        let worth = waiting.left.as_ref().is_none_or(|left| {
            keys.iter()
                .zip(left)
                .all(|((_, before), left)| *before < left + slack)
        });
        if !worth {
            return None;
        }
        for (key, _) in &keys {
            *running.entry(key.clone()).or_insert(0) += 1;
        }
        Some(Place {
            gate: self.clone(),
            keys,
        })
    }
}

impl Place {
    /// Whether the request may run on the look that answered `states`: fewer of each key
    /// ran before it than the key has left (plus the request's [`Waiting::slack`]).
    pub(crate) fn fits(&self, states: &[BucketState], waiting: &Waiting) -> bool {
        let slack = waiting.slack();
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
            if let Some(n) = running.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    running.remove(key);
                }
            }
        }
        drop(running);
        self.gate.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
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
        assert!(first.fits(&[state(2)], &waiting) && second.fits(&[state(2)], &waiting));
        assert!(first.fits(&[state(1)], &waiting) && !second.fits(&[state(1)], &waiting));
        // A request that saw one left while one runs waits for a place...
        let mut seen = Waiting::new();
        seen.saw(&[state(1)]);
        drop(second);
        assert!(gate.try_place(keys(), &seen).is_none());
        // ...given when the running one is answered.
        drop(first);
        let third = gate.try_place(keys(), &seen).unwrap();
        assert!(third.fits(&[state(1)], &seen));
        // Another key is not held back.
        assert!(gate
            .try_place(std::iter::once(key("ip:2")), &seen)
            .is_some());
        drop(third);
        assert!(super::super::lock(&gate.running).is_empty());
    }

    #[tokio::test]
    async fn a_request_that_waited_long_may_run_as_one_more_one_at_a_time() {
        let gate = Arc::new(Gate::default());
        let keys = || std::iter::once(key("ip:1"));
        // One left, one running (a long request): a request that waited long may run as a
        // second; a third that waited as long may not, until one of them is answered.
        let long = gate.place(keys(), &Waiting::new()).await;
        let mut waited = Waiting {
            left: None,
            since: Instant::now() - MAX_WAIT,
        };
        waited.saw(&[state(1)]);
        let second = gate.try_place(keys(), &waited).unwrap();
        assert!(second.fits(&[state(1)], &waited));
        assert!(gate.try_place(keys(), &waited).is_none());
        drop(second);
        assert!(gate.try_place(keys(), &waited).is_some());
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
            tokio::spawn(async move { gate.place(keys(), &seen).await.fits(&[state(1)], &seen) })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let woken = Instant::now();
        drop(running);
        assert!(waiter.await.unwrap());
        assert!(woken.elapsed() < RECHECK, "woken, not found by the recheck");
    }
}
