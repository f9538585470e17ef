//! Charges sent to the primary whose answers have not come back. Memory, deciding while
//! they are under way (the store left the primary meanwhile), counts them as admitted:
//! each may be, and its answer, arriving late, is then added to memory's count
//! ([`FallbackStore`](crate::FallbackStore)'s late answers). Without them, memory could
//! admit up to the limit before those answers arrive, and the two together go past it.
//! (A decision fits only with them on top; an admitted charge gives them back at once.
//! A fixed window that turns between the two, a microsecond apart, loses them from the
//! new window: a race we leave.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;
use tollgate_limits::{Batch, Bucket, Op, StoreKey};

use crate::fallback::{lock, wait_until};

/// What is under way, per key: the sum of the costs sent and not answered.
#[derive(Debug, Default)]
pub(crate) struct UnderWay {
    costs: Mutex<HashMap<StoreKey, u64, foldhash::fast::RandomState>>,
    /// Told when the last charge under way is answered while [`UnderWay::answered`]
    /// waits (`awaited`): a call's answer otherwise tells no one.
    none_left: Notify,
    awaited: AtomicBool,
}

/// A batch's charges under way, until dropped.
pub(crate) struct Sent<'a> {
    under_way: &'a UnderWay,
    batch: &'a Batch,
}

impl UnderWay {
    /// Notes `batch`'s charges (a charge's or a penalty's costs) as under way until the
    /// returned guard is dropped; other operations add nothing.
    pub(crate) fn send<'a>(&'a self, batch: &'a Batch) -> Option<Sent<'a>> {
        if !matches!(batch.op, Op::Charge | Op::Penalize) {
            return None;
        }
        let mut all = lock(&self.costs);
        for bucket in &batch.buckets {
            let cost = all.entry(bucket.key.clone()).or_insert(0);
            *cost = cost.saturating_add(bucket.cost);
        }
        Some(Sent {
            under_way: self,
            batch,
        })
    }

    /// The cost under way of each of `buckets` (0 for those with none); empty if nothing
    /// is under way at all.
    pub(crate) fn costs(&self, buckets: &[Bucket]) -> Vec<u64> {
        let all = lock(&self.costs);
        if all.is_empty() {
            return Vec::new();
        }
        buckets
            .iter()
            .map(|b| all.get(b.key.as_str()).copied().unwrap_or(0))
            .collect()
    }

    /// Waits until no charge is under way, or until `deadline`; answers whether none is.
    /// (One waiter at a time: the store's check.)
    pub(crate) async fn answered(&self, deadline: tokio::time::Instant) -> bool {
        // Set before the looks (under the lock an answer empties it with): an answer that
        // empties it after a look tells.
        self.awaited.store(true, Ordering::Release);
        let none_left =
            wait_until(&self.none_left, deadline, || lock(&self.costs).is_empty()).await;
        self.awaited.store(false, Ordering::Release);
        none_left
    }
}

impl Drop for Sent<'_> {
    fn drop(&mut self) {
        let mut all = lock(&self.under_way.costs);
        for bucket in &self.batch.buckets {
            if let Some(cost) = all.get_mut(bucket.key.as_str()) {
                *cost = cost.saturating_sub(bucket.cost);
                if *cost == 0 {
                    all.remove(bucket.key.as_str());
                }
            }
        }
        let none_left = all.is_empty();
        drop(all);
        if none_left && self.under_way.awaited.load(Ordering::Acquire) {
            self.under_way.none_left.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use tollgate_limits::{Limit, Quota};

    use super::*;

    #[test]
    fn charges_are_under_way_until_their_guard_goes() {
        let under_way = UnderWay::default();
        let limit = Limit::sliding(Quota::per_minute(10));
        let a = Bucket::new("api", "a", limit).with_cost(2);
        let b = Bucket::new("api", "b", limit);
        let first = Batch::charge(vec![a.clone(), b.clone()]);
        let second = Batch::charge(vec![a.clone()]);
        let refund = Batch::new(Op::Refund, vec![a.clone()]);
        let sent = under_way.send(&first);
        let again = under_way.send(&second);
        assert!(under_way.send(&refund).is_none());
        assert_eq!(under_way.costs(&[a.clone(), b.clone()]), [4, 1]);
        drop(sent);
        assert_eq!(under_way.costs(&[a.clone(), b.clone()]), [2, 0]);
        drop(again);
        assert!(under_way.costs(&[a, b]).is_empty());
        assert!(lock(&under_way.costs).is_empty());
    }
}
