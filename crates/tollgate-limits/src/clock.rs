//! Time, as the algorithms read it: microseconds since the Unix epoch, through a [`Clock`]
//! that tests move by hand.
//!
//! ```
//! use std::time::Duration;
//! use tollgate_limits::{Clock, ManualClock};
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

    /// The current time, and how far this clock is ahead of the system clock while it runs
    /// at half speed to let the system clock catch up (a [`FastClock`] after a step back),
    /// in microseconds; 0 otherwise (the default). A wait of `w` on the clock then takes
    /// `w + min(w, ahead)` of real time, which is what the memory store tells a client to
    /// wait. One call: what a store reads per decision.
    fn now_and_ahead(&self) -> (Timestamp, u64) {
        (self.now(), 0)
    }
}

/// The real time a wait of `wait` on a clock `ahead` µs ahead of the system clock (at half
/// speed until the system clock catches up, [`Clock::now_and_ahead`]) takes: twice the wait while
/// the clock slews, then at full speed.
pub(crate) fn real_wait(wait: Duration, ahead: u64) -> Duration {
    wait.saturating_add(wait.min(Duration::from_micros(ahead)))
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
///
/// **A step back is slewed, not followed.** What a store counted lies ahead of a clock
/// stepped back, so a store following such a step would refuse every client that had spent
/// from a token bucket for as long as the step (an hour back: an hour refused). When the
/// system clock is found behind this clock by more than a millisecond, this clock runs at
/// half speed until the system clock catches up with it (twice the step's length), never
/// going back (it stands still for 5 ms of every 10): in the meantime windows last up to
/// twice as long, token buckets refill at up to half their rate, and reset times lie up to
/// the step ahead of the system clock; [`Clock::now_and_ahead`] says by how much, and the
/// memory store tells clients real waits from it. A step back that leaves the system clock more than a day
/// ([`FastClock::MAX_SLEW`]) behind this clock (one step, or several in a row) is
/// followed at once, as halving every rate for days would be worse than the refusals. A
/// step forward is followed at once (windows end early by the step). A smaller difference
/// found back (the counter's drift, a correction of the system clock) is not followed back
/// either: the clock stands still until it has made it up. The system clock is measured
/// against the latest reading given, not against where the counter would have taken this
/// clock since: after an idle spell, what the counter's scale was off by over all of it
/// (no reading showed it) is dropped, not slewed. So, but for a step of more than a day,
/// no reading is earlier than one before it, and none is more than a millisecond ahead of
/// the system clock but while it slews after a step back.
///
/// ```
/// use tollgate_limits::{Clock, FastClock};
///
/// let clock = FastClock::new();
/// let (a, b) = (clock.now(), clock.now());
/// assert!(b >= a);
/// ```
#[derive(Clone)]
pub struct FastClock(Arc<FastInner>);

struct FastInner {
    clock: quanta::Clock,
    /// The system clock, in Unix microseconds (another in tests).
    wall: fn() -> u64,
    /// The clock's raw reading when made (its counter's units: scaled to microseconds only
    /// as a difference, without going through a `Duration`).
    start: u64,
    /// Microseconds per tick of the counter, times 2^64 (rounded up): a difference of raw
    /// readings is scaled in one multiplication, where scaling it to nanoseconds (as the
    /// counter does) and dividing by 1,000 took a dozen instructions more per reading. Worked
    /// out from the counter's own scale over 2^40 ticks (the counters `quanta` reads run
    /// at a megahertz or more: a tick is less than a microsecond).
    micros_per_tick: u64,
    /// Unix microseconds minus microseconds since `start`, as of the last anchoring.
    offset: AtomicU64,
    /// Microseconds since `start` at which to read the system clock again.
    next_anchor: AtomicU64,
    /// Microseconds since `start` at the last anchoring.
    last_anchor: AtomicU64,
    /// How far the system clock was behind this clock at the last anchoring, while it
    /// slews (µs; 0 otherwise): [`Clock::now_and_ahead`]. Above 0, the next anchoring
    /// gives time back.
    ahead: AtomicU64,
    /// The least a reading shows (Unix µs): the latest reading that can have been given
    /// before the last anchoring, so that the clock stands still until it passes it rather
    /// than go back where the anchoring moved the offset back (a correction, or a slew's
    /// step); 0 after a step back it follows at once. A
    /// correction of a few microseconds back had a store place a count after the time of
    /// the next request's decision: a guard's wait came out a few microseconds over its
    /// window, and `Retry-After` (rounded up) said 61 for a minute (a review).
    floor: AtomicU64,
}

/// How often [`FastClock`] reads the system clock (microseconds).
const ANCHOR_EVERY_US: u64 = 1_000_000;

/// How often [`FastClock`] reads the system clock while it slews (microseconds): each
/// reading gives back half the time since the last, the clock standing still meanwhile.
const ANCHOR_SLEWING_US: u64 = 10_000;

/// `next_anchor` while a caller anchors: no reading is past it, so every other caller past
/// the due time waits for the anchoring.
const ANCHORING: u64 = u64::MAX;

/// How far the system clock may be behind [`FastClock`] before it slews (microseconds):
/// the counter's drift between two anchorings, and slews of the system clock itself, are
/// far less.
const SLEW_ABOVE_US: u64 = 1_000;

impl FastClock {
    /// The largest step back of the system clock that is slewed: one day. A larger one is
    /// followed at once.
    pub const MAX_SLEW: Duration = Duration::from_secs(24 * 60 * 60);

    /// A clock anchored to the system clock now.
    pub fn new() -> Self {
        Self::with_sources(quanta::Clock::new(), || SystemClock.now().0)
    }

    /// A clock counting with `clock`, anchored to `wall` (Unix microseconds).
    fn with_sources(clock: quanta::Clock, wall: fn() -> u64) -> Self {
        let start = clock.raw();
        const SPAN: u32 = 40;
        let nanos = u128::from(clock.delta_as_nanos(0, 1 << SPAN));
        let micros_per_tick = (nanos << (64 - SPAN)).div_ceil(1_000);
        let inner = FastInner {
            micros_per_tick: u64::try_from(micros_per_tick).unwrap_or(u64::MAX),
            clock,
            wall,
            start,
            offset: AtomicU64::new(wall()),
            next_anchor: AtomicU64::new(ANCHOR_EVERY_US),
            last_anchor: AtomicU64::new(0),
            ahead: AtomicU64::new(0),
            floor: AtomicU64::new(0),
        };
        Self(Arc::new(inner))
    }
}

impl FastInner {
    /// Reads the system clock at `elapsed` µs since `start`, the anchoring that was due at
    /// `due` (the caller won the right to make it), and sets the offset the next readings
    /// add, the least they show, and when to read the system clock again.
    ///
    /// What counts is the latest reading given since the last anchoring, not where the
    /// counter's extrapolation has got to: a reading adds the offset only to a time before
    /// `due` (a caller past it waits for this anchoring, [`FastInner::catch_up`]), so none
    /// was later than `due` plus the offset, or the floor. After an idle spell the
    /// extrapolation runs on for all of it, and its scale's error (up to a few hundred
    /// parts per million for the time-stamp counter) adds up: taken for a step back of the
    /// system clock, it had the clock stand still, or slew, ahead of the system clock by
    /// milliseconds no reading had shown, and a store tell waits and resets that much past
    /// a window (`Retry-After: 1801` for 30 minutes, a reset a second late, a review).
    #[cold]
    fn anchor(&self, elapsed: u64, due: u64) {
        let wall = (self.wall)();
        let target = wall.wrapping_sub(elapsed);
        let offset = self.offset.load(Ordering::Relaxed);
        let seen = due
            .wrapping_add(offset)
            .max(self.floor.load(Ordering::Relaxed));
        let behind = seen.saturating_sub(wall);
        let (offset, floor, every, ahead) = if behind > FastClock::MAX_SLEW.as_micros() as u64 {
            // A step back of more than a day: followed at once.
            (target, 0, ANCHOR_EVERY_US, 0)
        } else if behind <= SLEW_ABOVE_US {
            // Level with what was seen, or ahead of it (a step forward is followed at
            // once), or a little behind (the counter's drift, a correction): the system
            // clock's time, standing still until it passes the latest reading given (a
            // caller that read the counter before this anchoring and adds the new offset
            // does not go back either).
            (target, seen, ANCHOR_EVERY_US, 0)
        } else {
            // Slewing: half the time since the last anchoring is given back, never more
            // than the system clock is behind, the clock standing still until it passes
            // what was seen; nothing at the first (readings since the last may have shown
            // up to a second more than half of it).
            let since = elapsed.saturating_sub(self.last_anchor.load(Ordering::Relaxed));
            let lead = offset.saturating_sub(target);
            let give = if self.ahead.load(Ordering::Relaxed) > 0 {
                (since / 2).min(lead)
            } else {
                0
            };
            (offset - give, seen, ANCHOR_SLEWING_US, lead - give)
        };
        // The floor first: a reading that sees the new offset sees it; the offset before
        // when the next anchoring is due: a caller that sees the new due sees the offset.
        self.floor.store(floor, Ordering::Relaxed);
        self.offset.store(offset, Ordering::Release);
        self.ahead.store(ahead, Ordering::Relaxed);
        self.last_anchor.store(elapsed, Ordering::Relaxed);
        self.next_anchor.store(elapsed + every, Ordering::Release);
    }

    /// Anchors at `elapsed` µs since `start`, past `due`: the first caller past it
    /// anchors; another waits until that one is done (its reading of the counter is past
    /// what the old offset may be added to), or anchors again if it is past the new due.
    #[cold]
    fn catch_up(&self, elapsed: u64, mut due: u64) {
        let mut spins = 0u32;
        while elapsed >= due {
            if due == ANCHORING {
                // Another caller is anchoring: a few hundred nanoseconds, unless it was
                // preempted.
                spins += 1;
                if spins < 64 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
                due = self.next_anchor.load(Ordering::Acquire);
                continue;
            }
            match self.next_anchor.compare_exchange(
                due,
                ANCHORING,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => return self.anchor(elapsed, due),
                Err(now_due) => due = now_due,
            }
        }
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
        let ticks = inner.clock.raw().saturating_sub(inner.start);
        let elapsed = ((u128::from(ticks) * u128::from(inner.micros_per_tick)) >> 64) as u64;
        let due = inner.next_anchor.load(Ordering::Acquire);
        if elapsed >= due {
            inner.catch_up(elapsed, due);
        }
        let reading = elapsed.wrapping_add(inner.offset.load(Ordering::Acquire));
        Timestamp(reading.max(inner.floor.load(Ordering::Relaxed)))
    }

    #[inline]
    fn now_and_ahead(&self) -> (Timestamp, u64) {
        (self.now(), self.0.ahead.load(Ordering::Relaxed))
    }
}

/// A clock that only moves when told to. Clones share one time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock showing `since_epoch` after the Unix epoch (at most the last microsecond a
    /// [`Timestamp`] holds, as [`ManualClock::advance`] stops there).
    pub fn new(since_epoch: Duration) -> Self {
        let micros = u64::try_from(since_epoch.as_micros()).unwrap_or(u64::MAX);
        Self(Arc::new(AtomicU64::new(micros)))
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

    fn now_and_ahead(&self) -> (Timestamp, u64) {
        (**self).now_and_ahead()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Bucket, Limit, MemoryStore, Quota};

    const HOUR: u64 = 3_600_000_000;
    const START: u64 = 1_717_200_000_000_000;

    /// A [`FastClock`] on a counter and a system clock moved by hand: `wall`, which
    /// `read` reads (each test its own: `read` is a plain function).
    fn clock(wall: &AtomicU64, read: fn() -> u64) -> (FastClock, Arc<quanta::Mock>) {
        wall.store(START, Ordering::SeqCst);
        let (counter, mock) = quanta::Clock::mock();
        (FastClock::with_sources(counter, read), mock)
    }

    static WALL_A: AtomicU64 = AtomicU64::new(0);
    static WALL_B: AtomicU64 = AtomicU64::new(0);
    static WALL_C: AtomicU64 = AtomicU64::new(0);
    static WALL_D: AtomicU64 = AtomicU64::new(0);

    /// Moves the counter and the system clock on by `micros` (a real second passing), and
    /// reads the clock.
    fn pass(clock: &FastClock, mock: &quanta::Mock, wall: &AtomicU64, micros: u64) -> u64 {
        mock.increment(micros * 1_000);
        wall.fetch_add(micros, Ordering::SeqCst);
        clock.now().as_micros()
    }

    /// A difference of raw readings in microseconds, as the clock scales it.
    fn scaled(clock: &FastClock, ticks: u64) -> u64 {
        ((u128::from(ticks) * u128::from(clock.0.micros_per_tick)) >> 64) as u64
    }

    /// The clock's own scale of the counter is the counter's (in nanoseconds, divided by
    /// 1,000): exactly for a counter in nanoseconds (the mock, the monotonic clock), within
    /// a microsecond for the time-stamp counter.
    #[test]
    fn its_scale_is_the_counters() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut spans: Vec<u64> = vec![0, 1, 999, 1_000, 1_001, 3_000_000, 1 << 32, 1 << 40];
        for _ in 0..10_000 {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            spans.push(x >> (11 + x % 40));
        }
        let (mock, _) = quanta::Clock::mock();
        let on_mock = FastClock::with_sources(mock.clone(), || START);
        let counter = quanta::Clock::new();
        let on_counter = FastClock::with_sources(counter.clone(), || START);
        for &ticks in &spans {
            assert_eq!(
                scaled(&on_mock, ticks),
                mock.delta_as_nanos(0, ticks) / 1_000
            );
            let theirs = counter.delta_as_nanos(0, ticks) / 1_000;
            let ours = scaled(&on_counter, ticks);
            assert!(ours.abs_diff(theirs) <= 1, "{ticks}: {ours} {theirs}");
        }
    }

    #[test]
    fn it_follows_the_system_clock_forward_and_its_small_corrections() {
        let (clock, mock) = clock(&WALL_A, || WALL_A.load(Ordering::SeqCst));
        assert_eq!(clock.now().as_micros(), START);
        assert_eq!(pass(&clock, &mock, &WALL_A, 500_000), START + 500_000);
        // Stepped forward an hour: followed at the next reading of the system clock.
        WALL_A.fetch_add(HOUR, Ordering::SeqCst);
        assert_eq!(
            pass(&clock, &mock, &WALL_A, 600_000),
            START + HOUR + 1_100_000
        );
        // Half a millisecond back (a correction, not a step): followed, standing still
        // until it has made up the 500 µs rather than going back.
        WALL_A.fetch_sub(500, Ordering::SeqCst);
        let before = START + HOUR + 2_100_000;
        assert_eq!(pass(&clock, &mock, &WALL_A, 1_000_000), before);
        assert_eq!(pass(&clock, &mock, &WALL_A, 300), before);
        assert_eq!(pass(&clock, &mock, &WALL_A, 300), before + 100);
    }

    /// The counter a few microseconds fast against the system clock: each anchoring finds
    /// the system clock behind, and no reading is earlier than one before it. Before, the
    /// clock went back by the difference at each anchoring (a memory store then placed a
    /// count after the next request's decision, and told a wait over the window).
    #[test]
    fn a_counter_running_fast_never_makes_it_go_back() {
        static WALL: AtomicU64 = AtomicU64::new(0);
        let (clock, mock) = clock(&WALL, || WALL.load(Ordering::SeqCst));
        let mut last = clock.now().as_micros();
        // Read every 5 µs for 5 s; the system clock stands still one step in 100,000
        // (10 µs a second).
        for i in 0..1_000_000u64 {
            mock.increment(5_000);
            WALL.fetch_add(if i % 100_000 == 0 { 0 } else { 5 }, Ordering::SeqCst);
            let now = clock.now().as_micros();
            assert!(now >= last, "went back {} µs", last - now);
            last = now;
        }
        let wall = WALL.load(Ordering::SeqCst);
        assert!(last >= wall && last - wall <= 20, "{last} {wall}");
    }

    /// Moves the system clock on by `micros` and the counter by `micros` and `ppm` parts
    /// per million more (a counter whose scale is off: the time-stamp counter's, calibrated
    /// by `quanta`, was seen off by up to 220 ppm), and reads the clock.
    fn pass_fast(
        clock: &FastClock,
        mock: &quanta::Mock,
        wall: &AtomicU64,
        micros: u64,
        ppm: u64,
    ) -> (u64, u64) {
        mock.increment(micros * 1_000 + micros * ppm / 1_000);
        wall.fetch_add(micros, Ordering::SeqCst);
        let (now, ahead) = clock.now_and_ahead();
        (now.as_micros(), ahead)
    }

    /// After an idle spell, the counter's error over all of it (which no reading showed)
    /// is not taken for a step back of the system clock: the first reading is the system
    /// clock's, not ahead of it, and the clock does not slew. Before, 150 s idle on a
    /// counter 250 ppm fast put it 37.5 ms ahead, slewing (a store told waits that much
    /// past their window: `Retry-After: 1801` for 30 minutes), and 3 s idle had it stand
    /// still 750 µs ahead.
    #[test]
    fn an_idle_spell_does_not_put_it_ahead_of_the_system_clock() {
        static WALL: AtomicU64 = AtomicU64::new(0);
        let (clock, mock) = clock(&WALL, || WALL.load(Ordering::SeqCst));
        let mut last = 0;
        // Busy for 3 s (read every millisecond), then idle, and again, for spells of up to
        // two hours.
        for idle in [3_000_000, 150_000_000, 7_200_000_000, 1_500_000] {
            for _ in 0..3_000 {
                let (now, ahead) = pass_fast(&clock, &mock, &WALL, 1_000, 250);
                assert!(now >= last, "went back {} µs", last - now);
                let wall = WALL.load(Ordering::SeqCst);
                assert!(now - wall <= 250 + 1, "{} µs ahead", now - wall);
                assert_eq!(ahead, 0);
                last = now;
            }
            let (now, ahead) = pass_fast(&clock, &mock, &WALL, idle, 250);
            assert_eq!(now, WALL.load(Ordering::SeqCst), "after {idle} µs idle");
            assert_eq!(ahead, 0, "after {idle} µs idle");
            last = now;
        }
    }

    /// The same counter, slow: after an idle spell the clock moves on to the system
    /// clock's time (as after a step forward).
    #[test]
    fn after_an_idle_spell_a_slow_counter_catches_up() {
        static WALL: AtomicU64 = AtomicU64::new(0);
        let (clock, mock) = clock(&WALL, || WALL.load(Ordering::SeqCst));
        pass(&clock, &mock, &WALL, 500_000);
        mock.increment(150_000_000 * 1_000 - 37_500_000);
        WALL.fetch_add(150_000_000, Ordering::SeqCst);
        assert_eq!(clock.now().as_micros(), WALL.load(Ordering::SeqCst));
    }

    /// What it means for a client: a window spent after an idle spell is told a wait of
    /// the window, not the window and the counter's error over the spell.
    #[test]
    fn a_wait_told_after_an_idle_spell_is_the_window() {
        static WALL: AtomicU64 = AtomicU64::new(0);
        let (clock, mock) = clock(&WALL, || WALL.load(Ordering::SeqCst));
        let store = MemoryStore::builder().clock(clock.clone()).build();
        let limit = Limit::sliding_exact(Quota::parse("5/30min").unwrap());
        let bucket = [Bucket::new("sign-in", "client", limit)];
        assert!(store.charge(&bucket).unwrap().allowed);
        pass_fast(&clock, &mock, &WALL, 2 * HOUR, 250);
        for _ in 0..5 {
            assert!(store.charge(&bucket).unwrap().allowed);
        }
        let refused = store.charge(&bucket).unwrap();
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after(), Some(Duration::from_secs(30 * 60)));
    }

    #[test]
    fn a_step_back_is_slewed_at_half_speed_until_the_system_clock_catches_up() {
        let (clock, mock) = clock(&WALL_B, || WALL_B.load(Ordering::SeqCst));
        pass(&clock, &mock, &WALL_B, 1_000_000);
        // The system clock is stepped back an hour.
        WALL_B.fetch_sub(HOUR, Ordering::SeqCst);
        let mut last = pass(&clock, &mock, &WALL_B, 1_000_000);
        assert_eq!(last, START + 2_000_000, "not followed back");
        // Read every millisecond for a minute: it never goes back, and moves at half speed.
        let mut worst_back = 0;
        for _ in 0..60_000 {
            let now = pass(&clock, &mock, &WALL_B, 1_000);
            worst_back = worst_back.max(last.saturating_sub(now));
            last = now;
        }
        assert_eq!(worst_back, 0, "went back {worst_back} µs");
        let moved = last - (START + 2_000_000);
        assert!(
            (29_900_000..=30_100_000).contains(&moved),
            "moved {moved} µs in 60 s"
        );
        // Two hours on (read every second), the system clock has caught up: followed again.
        for _ in 0..2 * 3_600 {
            last = pass(&clock, &mock, &WALL_B, 1_000_000);
        }
        assert_eq!(last, WALL_B.load(Ordering::SeqCst));
        assert_eq!(
            pass(&clock, &mock, &WALL_B, 1_000_000),
            WALL_B.load(Ordering::SeqCst)
        );
    }

    #[test]
    fn a_step_back_of_more_than_a_day_is_followed() {
        let (clock, mock) = clock(&WALL_C, || WALL_C.load(Ordering::SeqCst));
        WALL_C.fetch_sub(25 * HOUR, Ordering::SeqCst);
        assert_eq!(
            pass(&clock, &mock, &WALL_C, 1_000_000),
            START - 25 * HOUR + 1_000_000
        );
    }

    /// What the slewing is for: a memory store's token bucket, spent, whose clock is
    /// stepped back an hour, refills (at half speed) instead of refusing for the hour.
    #[test]
    fn a_spent_token_bucket_is_not_locked_out_by_a_step_back() {
        let (clock, mock) = clock(&WALL_D, || WALL_D.load(Ordering::SeqCst));
        let store = MemoryStore::builder().clock(clock.clone()).build();
        let limit = Limit::token_bucket(Quota::parse("100/min").unwrap(), 100).unwrap();
        let bucket = [Bucket::new("api", "client", limit)];
        pass(&clock, &mock, &WALL_D, 950_000);
        for _ in 0..100 {
            assert!(store.charge(&bucket).unwrap().allowed);
        }
        assert!(!store.charge(&bucket).unwrap().allowed);
        WALL_D.fetch_sub(HOUR, Ordering::SeqCst);
        // The step is seen.
        pass(&clock, &mock, &WALL_D, 100_000);
        // The wait told is the real one (0.5 s of the clock's, at half speed: 1 s): a
        // client that waits less is refused, one that waits it is admitted.
        let wait = store.charge(&bucket).unwrap().retry_after().unwrap();
        assert!(
            (990_000..=1_010_000).contains(&wait.as_micros()),
            "{wait:?}"
        );
        let steps = wait.as_micros() as u64 / 10_000;
        for _ in 0..steps - 3 {
            pass(&clock, &mock, &WALL_D, 10_000);
        }
        assert!(!store.charge(&bucket).unwrap().allowed);
        for _ in 0..6 {
            pass(&clock, &mock, &WALL_D, 10_000);
        }
        assert!(store.charge(&bucket).unwrap().allowed);
        assert!(!store.charge(&bucket).unwrap().allowed);
    }

    /// A manual clock set past the last microsecond a timestamp holds shows that
    /// microsecond, as one moved past it does (it wrapped round to an early time).
    #[test]
    fn a_manual_clock_set_past_the_end_of_time_stops_there() {
        let past = Duration::from_secs(u64::MAX / 1_000_000 + 1);
        assert_eq!(ManualClock::new(past).now().as_micros(), u64::MAX);
        assert_eq!(ManualClock::new(Duration::MAX).now().as_micros(), u64::MAX);
        let moved = ManualClock::new(Duration::from_micros(u64::MAX - 1));
        moved.advance(Duration::from_secs(1));
        assert_eq!(moved.now().as_micros(), u64::MAX);
    }
}
