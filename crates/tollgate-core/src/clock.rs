//! Time, as the algorithms read it: microseconds since the Unix epoch, through a [`Clock`]
//! that tests move by hand.
//!
//! ```
//! use std::time::Duration;
//! use tollgate_core::{Clock, ManualClock};
//!
//! let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
//! let before = clock.now();
//! clock.advance(Duration::from_millis(1500));
//! assert_eq!(clock.now().as_micros() - before.as_micros(), 1_500_000);
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time: microseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The timestamp `micros` microseconds after the Unix epoch.
    pub const fn from_micros(micros: u64) -> Self {
        Self(micros)
    }

    /// Microseconds since the Unix epoch.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// Whole milliseconds since the Unix epoch, rounded up.
    pub const fn as_unix_millis_ceil(self) -> u64 {
        self.0.div_ceil(1_000)
    }

    /// Whole seconds since the Unix epoch, rounded up (a reset time is never early).
    pub const fn as_unix_secs_ceil(self) -> u64 {
        self.0.div_ceil(1_000_000)
    }

    /// As a [`SystemTime`].
    pub fn as_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.0)
    }

    /// This time plus `d` (saturating).
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(d.as_micros().min(u128::from(u64::MAX)) as u64),
        )
    }
}

/// A source of the current time. Stores read it once per decision.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock ([`SystemTime::now`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        Timestamp(micros)
    }
}

/// The wall clock, read cheaply: the system clock is read about once a second, and the time
/// in between is counted by the processor's time-stamp counter (through `quanta`), which
/// costs a few nanoseconds where [`SystemTime::now`] costs tens. It follows the system
/// clock (re-anchored every second), so calendar windows and reset times stay on UTC.
/// The default clock of the [`MemoryStore`](crate::MemoryStore). Clones share one anchor.
#[derive(Clone)]
pub struct FastClock(Arc<FastInner>);

struct FastInner {
    clock: quanta::Clock,
    /// The clock's raw reading when made (its counter's units: scaled to nanoseconds only
    /// as a difference, without going through a `Duration`).
    start: u64,
    /// Unix microseconds minus microseconds since `start`, as of the last anchoring.
    offset: AtomicU64,
    /// Microseconds since `start` at which to read the system clock again.
    next_anchor: AtomicU64,
}

/// How often [`FastClock`] reads the system clock (microseconds).
const ANCHOR_EVERY_US: u64 = 1_000_000;

impl FastClock {
    /// A clock anchored to the system clock now.
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        let start = clock.raw();
        let inner = FastInner {
            clock,
            start,
            offset: AtomicU64::new(SystemClock.now().0),
            next_anchor: AtomicU64::new(ANCHOR_EVERY_US),
        };
        Self(Arc::new(inner))
    }
}

impl Default for FastClock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for FastClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastClock").finish_non_exhaustive()
    }
}

impl Clock for FastClock {
    #[inline]
    fn now(&self) -> Timestamp {
        let inner = &*self.0;
        let elapsed = inner.clock.delta_as_nanos(inner.start, inner.clock.raw()) / 1_000;
        let next = inner.next_anchor.load(Ordering::Relaxed);
        if elapsed >= next
            && inner
                .next_anchor
                .compare_exchange(
                    next,
                    elapsed + ANCHOR_EVERY_US,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            let offset = SystemClock.now().0.wrapping_sub(elapsed);
            inner.offset.store(offset, Ordering::Relaxed);
        }
        Timestamp(elapsed.wrapping_add(inner.offset.load(Ordering::Relaxed)))
    }
}

/// A clock that only moves when told to. Clones share one time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock showing `since_epoch` after the Unix epoch.
    pub fn new(since_epoch: Duration) -> Self {
        Self(Arc::new(AtomicU64::new(since_epoch.as_micros() as u64)))
    }

    /// Moves the clock forward by `d` (stopping at the last microsecond a [`Timestamp`]
    /// holds).
    pub fn advance(&self, d: Duration) {
        let d = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(d))
            });
    }

    /// Sets the clock to `t`, forwards or backwards.
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Timestamp {
        (**self).now()
    }
}
