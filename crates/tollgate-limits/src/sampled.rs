//! [`Sampled`]: at most one report of a recurring event per interval.

use std::sync::atomic::{AtomicU64, Ordering};

/// At most one report of a recurring event per interval (a log line about a failing store,
/// a refusal, a full share), and how many went unreported in between: while the condition
/// lasts every request meets it, and a line per request would bury everything else.
///
/// ```
/// use tollgate_limits::Sampled;
///
/// let failures = Sampled::new();
/// assert_eq!(failures.due(1_000, 10_000), Some(0)); // the first is reported
/// assert_eq!(failures.due(2_000, 10_000), None); // within the interval: counted
/// assert_eq!(failures.due(5_000, 10_000), None);
/// assert_eq!(failures.due(11_000, 10_000), Some(2)); // two went unreported since
/// // A clock stepped back by the interval or more: reported, and counted from there.
/// assert_eq!(failures.due(1_000, 10_000), Some(0));
/// assert_eq!(failures.due(2_000, 10_000), None);
/// ```
#[derive(Debug, Default)]
pub struct Sampled {
    /// When the last report was (in the caller's unit; 0: never).
    at: AtomicU64,
    /// Events since then that were not reported.
    skipped: AtomicU64,
}

impl Sampled {
    /// Nothing reported yet.
    pub const fn new() -> Self {
        Self {
            at: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// An event at `now`: `Some(n)` if it is to be reported (none was within `every` before
    /// it), `n` being the events not reported since the last report; `None` otherwise (it
    /// is counted for the next). `now` and `every` are in any one unit; of events at once
    /// on several threads, one is reported. A `now` at least `every` before the last report
    /// (a wall clock stepped back) is reported too: otherwise nothing would be until the
    /// clock passed the last report again (an hour of refusals unlogged after a step back
    /// of an hour).
    pub fn due(&self, now: u64, every: u64) -> Option<u64> {
        let last = self.at.load(Ordering::Relaxed);
        let reported =
            (last == 0 || now.saturating_sub(last) >= every || last.saturating_sub(now) >= every)
                && self
                    .at
                    .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok();
        if !reported {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.skipped.swap(0, Ordering::Relaxed))
    }
}
