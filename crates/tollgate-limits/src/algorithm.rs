//! The per-key state of each algorithm and its arithmetic, on microsecond timestamps.
//!
//! These functions are the specification the Redis store's Lua script mirrors; see
//! [`Algorithm`] for what each guarantees. Every operation first brings the state up to
//! `now` ([`State::advance`]); a clock that goes backwards never un-spends anything.

use std::collections::VecDeque;
use std::time::Duration;

use crate::decision::{BucketState, Refusal};
use crate::limit::{Algorithm, Limit};

/// The state of one key.
#[derive(Debug, Clone)]
pub(crate) enum State {
    /// [`Algorithm::SlidingWindow`]: the newest segment index and a ring of k+1 counters.
    Segments(Ring),
    /// [`Algorithm::SlidingLog`]: admitted (time, cost), oldest first, and their sum.
    Log {
        /// Boxed, so that a log takes two words in the memory store's slot.
        #[allow(clippy::box_collection)]
        entries: Box<VecDeque<(u64, u64)>>,
        total: u64,
    },
    /// [`Algorithm::TokenBucket`]: the theoretical arrival time, and the emission interval
    /// it was worked out with ([`State::advance`] converts it when the limit's interval
    /// changes).
    Tat { tat: u64, interval: Interval },
    /// [`Algorithm::FixedWindow`]: the window index and what it has used.
    /// `period` is the window length the index counts in.
    Fixed { window: u64, used: u64, period: u64 },
}

/// What a state held before a charge, as [`State::undo_record`] took it: the few numbers a
/// charge changes, so that a charge of several buckets that one of them refuses leaves
/// the others exactly as they were, without copying whole states.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Undo {
    /// The newest segment's count and last admission.
    Segment { count: u64, last: u64 },
    /// The log's length, its newest entry's cost and its total.
    Log { len: usize, back: u64, total: u64 },
    /// The theoretical arrival time.
    Tat(u64),
    /// The window's count.
    Fixed(u64),
}

/// A sliding window's newest segment index and its k+1 segments, segment `i` at ring slot
/// `i % (k+1)`. Each segment holds what was counted in it and when it last counted
/// something: a segment leaves the window W after its last admission, so a wait is never
/// longer than W and is exactly the time until enough has left.
#[derive(Debug, Clone)]
pub(crate) struct Ring {
    head: u64,
    /// The segments, with the segment length their indices count in (a limit whose window
    /// changes starts its keys afresh, as the Redis script does).
    segments: Segments,
}

/// How many segments a ring holds inline: windows of up to 10 segments (the default).
const NARROW: usize = 11;

/// An inline ring whose every slot holds a kept segment (its head is past its length), read
/// as [`Ring::used`] and [`Ring::used_and_expiry`] read it: without a branch per segment.
struct FullNarrow<'a> {
    len: usize,
    /// The newest segment's slot.
    head_slot: usize,
    /// The sum of `counts`.
    total: u64,
    counts: &'a [u32; NARROW],
    offsets: &'a [u32; NARROW],
}

impl FullNarrow<'_> {
    /// [`Ring::used_and_expiry`] of `ring` (which this reads): what [`FullNarrow::used`]
    /// counts, and the newest counted segment's time (usually the newest segment's).
    #[inline]
    fn used_and_expiry(&self, ring: &Ring, window: u64, now: u64) -> (u64, u64) {
        match self.expiry(ring, window) {
            Some(expires_at) if expires_at > now => (self.used(ring, window, now), expires_at),
            Some(expires_at) => (0, expires_at),
            None => (0, 0),
        }
    }

    /// When `ring`'s (which this reads) newest counted segment leaves a `window` (usually
    /// the newest segment's); `None` if nothing is counted.
    #[inline]
    fn expiry(&self, ring: &Ring, window: u64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let unit = ring.unit();
        // The newest counted segment: there is one, as the total is not zero (and the walk
        // goes no further than the ring, whatever the total says).
        let mut slot = self.head_slot;
        let mut start = ring.head.saturating_mul(unit);
        let mut back = 0;
        while self.counts[slot] == 0 {
            back += 1;
            if back == self.len {
                debug_assert!(false, "a ring's total out of step with its counts");
                return None;
            }
            slot = if slot == 0 { self.len - 1 } else { slot - 1 };
            start = start.saturating_sub(unit);
        }
        Some((start + u64::from(self.offsets[slot])).saturating_add(window))
    }

    /// What `ring` (which this reads) counts within `window` of `now`: the sum of all
    /// counts (`total`, kept as they change), less the oldest segments that have left
    /// (segments leave oldest first, so those are a run from the oldest, and usually none).
    #[inline]
    fn used(&self, ring: &Ring, window: u64, now: u64) -> u64 {
        // From the oldest forward, take out what has left. Only a segment that started a
        // window or more ago can have (its last admission is not before its start): the
        // oldest one or two. A segment that started less than a window ago has not, and
        // neither has any counted after it, so the walk stops there (or once every
        // segment has left: `len` steps at most).
        let unit = ring.unit();
        let oldest = ring.head - (self.len as u64 - 1);
        // The oldest segment's slot follows the newest's (`oldest ≡ head + 1 mod len`).
        let mut slot = if self.head_slot + 1 == self.len {
            0
        } else {
            self.head_slot + 1
        };
        let mut start = oldest.saturating_mul(unit);
        let mut used = self.total;
        for _ in 0..self.len {
            if start.saturating_add(window) > now {
                break;
            }
            let count = self.counts[slot];
            if count != 0 {
                if (start + u64::from(self.offsets[slot])).saturating_add(window) > now {
                    break;
                }
                used -= u64::from(count);
            }
            slot = if slot + 1 == self.len { 0 } else { slot + 1 };
            start = start.saturating_add(unit);
        }
        used
    }
}

/// A ring's segments: counts and last admission times. Up to [`NARROW`] segments whose
/// counts fit in a `u32` and whose segment is shorter than 2^32 µs (71 minutes) are held
/// in the state itself (112 bytes with the ring's head, so that the memory store's slot
/// takes two cache lines), each last time as its offset from the segment's start, with
/// the sum of their counts, so the memory store finds a key and its whole window in one
/// table slot and a decision does not add the segments up. Anything else holds
/// `u64` pairs in one allocation. Both hold the same numbers; only [`Segments::get`] and
/// [`Segments::set`] tell them apart.
#[derive(Debug, Clone)]
enum Segments {
    /// `len` segments of `unit` µs; the ones past `len` stay zero. `head_slot` is the
    /// ring's newest segment's slot (`head % len`), kept as the head moves so that finding
    /// a segment's slot takes no division (it lies in the enum's padding: no larger).
    /// `total` is the sum of `counts`, kept with every change of them (they are written
    /// only by [`set_narrow`] and [`Segments::clear`]), so that a decision reads it rather
    /// than add the segments up.
    Narrow {
        len: u8,
        head_slot: u8,
        unit: u32,
        total: u64,
        counts: [u32; NARROW],
        offsets: [u32; NARROW],
    },
    /// Any number of segments of `unit` µs, counts and times of any size: (count, last).
    Wide { unit: u64, slots: Box<[(u64, u64)]> },
}

impl Segments {
    /// `len` empty segments of `unit` µs, the newest of which is segment `head`.
    fn new(head: u64, len: usize, unit: u64) -> Self {
        match (u8::try_from(len), u32::try_from(unit)) {
            (Ok(narrow), Ok(short)) if Ring::fits_inline(len, unit) => Segments::Narrow {
                len: narrow,
                head_slot: (head % len as u64) as u8,
                unit: short,
                total: 0,
                counts: [0; NARROW],
                offsets: [0; NARROW],
            },
            _ => Segments::Wide {
                unit,
                slots: vec![(0, 0); len].into_boxed_slice(),
            },
        }
    }

    fn len(&self) -> usize {
        match self {
            Segments::Narrow { len, .. } => usize::from(*len),
            Segments::Wide { slots, .. } => slots.len(),
        }
    }

    /// The segment length in µs.
    #[inline]
    fn unit(&self) -> u64 {
        match self {
            Segments::Narrow { unit, .. } => u64::from(*unit),
            Segments::Wide { unit, .. } => *unit,
        }
    }

    /// Slot `i`'s count and last time; `start` is the start of the segment it holds.
    #[inline]
    fn get(&self, i: usize, start: u64) -> (u64, u64) {
        match self {
            Segments::Narrow {
                counts, offsets, ..
            } => narrow_segment(counts, offsets, i, start),
            Segments::Wide { slots, .. } => slots[i],
        }
    }

    /// Sets slot `i`, holding the segment starting at `start` (`last >= start`).
    fn set(&mut self, i: usize, start: u64, count: u64, last: u64) {
        match self {
            Segments::Narrow {
                total,
                counts,
                offsets,
                ..
            } => {
                // `Ring::set_segment` widens a ring before a count past `u32::MAX`.
                let count = u32::try_from(count).unwrap_or(u32::MAX);
                set_narrow(total, counts, offsets, i, start, count, last);
            }
            Segments::Wide { slots, .. } => slots[i] = (count, last),
        }
    }

    fn clear(&mut self) {
        match self {
            Segments::Narrow {
                total,
                counts,
                offsets,
                ..
            } => {
                *total = 0;
                counts.fill(0);
                offsets.fill(0);
            }
            Segments::Wide { slots, .. } => slots.fill((0, 0)),
        }
    }
}

/// Writes an inline ring's segment in slot `i`, which started at `start`: its `count` and
/// its `last` admission (an offset from `start`: below the segment length, at most 2^32),
/// keeping `total` the sum of the counts. Every count of an inline ring is written here, but
/// all of them at once by [`Segments::clear`].
#[inline(always)]
fn set_narrow(
    total: &mut u64,
    counts: &mut [u32; NARROW],
    offsets: &mut [u32; NARROW],
    i: usize,
    start: u64,
    count: u32,
    last: u64,
) {
    *total = *total - u64::from(counts[i]) + u64::from(count);
    counts[i] = count;
    offsets[i] = u32::try_from(last - start).unwrap_or(u32::MAX);
}

/// An inline ring's slot `i`, holding the segment that starts at `start`: its count and
/// last admission (kept as an offset from the segment's start).
#[inline(always)]
fn narrow_segment(
    counts: &[u32; NARROW],
    offsets: &[u32; NARROW],
    i: usize,
    start: u64,
) -> (u64, u64) {
    (u64::from(counts[i]), start + u64::from(offsets[i]))
}

impl Ring {
    /// Whether a ring of `len` segments of `unit` µs starts inline.
    pub(crate) fn fits_inline(len: usize, unit: u64) -> bool {
        len <= NARROW && unit <= u64::from(u32::MAX)
    }

    /// Whether the segments are held inline (no allocation).
    pub(crate) fn is_narrow(&self) -> bool {
        matches!(self.segments, Segments::Narrow { .. })
    }

    /// A ring of `len` empty segments whose newest is `head`.
    fn new(head: u64, len: usize, unit: u64) -> Self {
        Self {
            head,
            segments: Segments::new(head, len, unit),
        }
    }

    /// The ring slot of segment `j` (`j % len`): for an inline ring and one of its kept
    /// segments, counted back from the newest's slot, without a division.
    #[inline]
    fn slot(&self, j: u64) -> usize {
        if let Segments::Narrow { len, head_slot, .. } = self.segments {
            let (len, head_slot) = (usize::from(len), usize::from(head_slot));
            if let Some(back) = self.head.checked_sub(j).filter(|&b| b < len as u64) {
                let back = back as usize;
                return if head_slot >= back {
                    head_slot - back
                } else {
                    head_slot + len - back
                };
            }
        }
        (j % self.len()) as usize
    }

    /// Moves the newest segment to `head` (later than the current one), its slot with it.
    fn set_head(&mut self, head: u64) {
        if let Segments::Narrow { len, head_slot, .. } = &mut self.segments {
            let ahead = head - self.head;
            *head_slot = if ahead < u64::from(*len) {
                let slot = *head_slot + ahead as u8;
                slot.checked_sub(*len).unwrap_or(slot)
            } else {
                (head % u64::from(*len)) as u8
            };
        }
        self.head = head;
    }

    /// The segment length in µs.
    #[inline]
    fn unit(&self) -> u64 {
        self.segments.unit()
    }

    /// When the newest counted segment leaves a window of `len - 1` segments: no sooner
    /// than the state is fresh again, and less than `len` µs later (the segment length is
    /// the window over `len - 1`, rounded up). 0 if nothing is counted. For the memory
    /// store's sweeps, which have no limit at hand.
    pub(crate) fn expiry_bound(&self) -> u64 {
        let window = (self.len() - 1).saturating_mul(self.unit());
        self.used_and_expiry(window, u64::MAX).1
    }

    /// A word from the end of the ring (the last segment's time): reading it brings the
    /// ring's last cache line in (the memory store warms a slot before locking for long).
    pub(crate) fn tail_word(&self) -> u64 {
        match &self.segments {
            Segments::Narrow { offsets, .. } => u64::from(offsets[NARROW - 1]),
            Segments::Wide { slots, .. } => slots.last().map_or(0, |s| s.1),
        }
    }

    /// How many segments are kept (k+1).
    fn len(&self) -> u64 {
        self.segments.len() as u64
    }

    /// The count and last admission time of segment `j` (one of the last k+1).
    #[inline]
    fn segment(&self, j: u64) -> (u64, u64) {
        self.segments
            .get(self.slot(j), j.saturating_mul(self.unit()))
    }

    /// Sets segment `j` (one of the last k+1); returns its last admission as it now
    /// reads.
    fn set_segment(&mut self, j: u64, count: u64, last: u64) -> u64 {
        let start = j.saturating_mul(self.unit());
        let last = last.max(start);
        if let Segments::Narrow { .. } = self.segments {
            if u32::try_from(count).is_err() {
                self.widen();
            }
        }
        let i = self.slot(j);
        self.segments.set(i, start, count, last);
        self.segments.get(i, start).1
    }

    /// Turns a narrow ring wide, keeping every segment's count and time.
    fn widen(&mut self) {
        let len = self.len();
        let oldest = self.head.saturating_sub(len - 1);
        let mut wide = vec![(0u64, 0u64); len as usize].into_boxed_slice();
        for j in oldest..=self.head {
            wide[(j % len) as usize] = self.segment(j);
        }
        self.segments = Segments::Wide {
            unit: self.unit(),
            slots: wide,
        };
    }

    /// What the segments counted within `window` of `now` add up to, and when the newest
    /// counted segment leaves the window (0: nothing counted). One walk from the newest
    /// segment back: segments leave oldest first (each one's last admission is later than
    /// any older one's), so the walk stops at the first that has left.
    #[inline]
    fn used_and_expiry(&self, window: u64, now: u64) -> (u64, u64) {
        // Which form the segments take is decided once, not once per segment.
        if let Some(full) = self.full_narrow() {
            return full.used_and_expiry(self, window, now);
        }
        match &self.segments {
            Segments::Narrow {
                counts, offsets, ..
            } => self.sum_newest_first(window, now, |i, start| {
                narrow_segment(counts, offsets, i, start)
            }),
            Segments::Wide { slots, .. } => self.sum_newest_first(window, now, |i, _| slots[i]),
        }
    }

    /// Counts `cost` in the newest segment, admitted at `now` (or at its last admission, if
    /// later); returns the newest segment's last admission. (Inlined: a charge that fits
    /// makes it, where a call cost about as much as its inline path.)
    #[inline(always)]
    fn add(&mut self, cost: u64, now: u64) -> u64 {
        let head = self.head;
        // An inline ring whose newest count stays within a `u32` (every charge but one
        // past 2^32): its newest slot read and written in place, as `set_segment` would.
        if let Segments::Narrow {
            head_slot,
            unit,
            total,
            counts,
            offsets,
            ..
        } = &mut self.segments
        {
            let i = usize::from(*head_slot);
            let start = head.saturating_mul(u64::from(*unit));
            let (c, last) = narrow_segment(counts, offsets, i, start);
            if let Ok(count) = u32::try_from(c.saturating_add(cost)) {
                let last = if c == 0 { now } else { last.max(now) }.max(start);
                set_narrow(total, counts, offsets, i, start, count, last);
                return start + u64::from(offsets[i]);
            }
        }
        let (c, last) = self.segment(head);
        let last = if c == 0 { now } else { last.max(now) };
        self.set_segment(head, c.saturating_add(cost), last)
    }

    /// Whether `cost` fits now in a window whose segments count `used` (as
    /// [`Ring::used_and_expiry`] says), and if not, when: segments leave oldest first, each
    /// a window after its last admission. (Inlined: a charge that fits, the usual one,
    /// answers here; the wait is looked for out of line.)
    #[inline(always)]
    fn fit(&self, limit: &Limit, cost: u64, now: u64, used: u64) -> Fit {
        match used.saturating_add(cost).checked_sub(limit.capacity()) {
            None | Some(0) => Fit::Now,
            Some(need) => self.fit_after(limit, need, now),
        }
    }

    /// [`Ring::fit`] of a cost `need` past the capacity: when enough has left.
    #[inline(never)]
    fn fit_after(&self, limit: &Limit, need: u64, now: u64) -> Fit {
        let window = limit.quota().period_micros();
        // Which form the segments take is decided once, not once per segment.
        let leaves_at = match &self.segments {
            Segments::Narrow {
                counts, offsets, ..
            } => self.freed_at(window, now, need, |i, start| {
                narrow_segment(counts, offsets, i, start)
            }),
            Segments::Wide { slots, .. } => self.freed_at(window, now, need, |i, _| slots[i]),
        };
        match leaves_at.saturating_sub(now) {
            0 => Fit::Now,
            wait => Fit::After(wait),
        }
    }

    /// What [`Ring::used_and_expiry`] says the segments count, without when the newest
    /// counted one leaves (which a charge that fits does not need: the newest segment is
    /// that one after it).
    #[inline]
    fn used(&self, window: u64, now: u64) -> u64 {
        match self.full_narrow() {
            Some(full) => full.used(self, window, now),
            None => self.used_and_expiry(window, now).0,
        }
    }

    /// When the newest counted segment leaves (0 if none), as [`Ring::used_and_expiry`]
    /// says, without what the segments count (a refused charge has that already).
    #[inline]
    fn expiry(&self, window: u64, now: u64) -> u64 {
        match self.full_narrow() {
            Some(full) => full.expiry(self, window).unwrap_or(0),
            None => self.used_and_expiry(window, now).1,
        }
    }

    /// The ring as [`FullNarrow`], if it is inline and every slot holds a kept segment.
    #[inline(always)]
    fn full_narrow(&self) -> Option<FullNarrow<'_>> {
        match &self.segments {
            Segments::Narrow {
                len,
                head_slot,
                total,
                counts,
                offsets,
                ..
            } if self.head >= u64::from(*len) => Some(FullNarrow {
                len: usize::from(*len),
                head_slot: usize::from(*head_slot),
                total: *total,
                counts,
                offsets,
            }),
            _ => None,
        }
    }

    /// [`Ring::used_and_expiry`]'s walk over segments read by `get(slot, segment start)`.
    #[inline(always)]
    fn sum_newest_first(
        &self,
        window: u64,
        now: u64,
        get: impl Fn(usize, u64) -> (u64, u64),
    ) -> (u64, u64) {
        let len = self.segments.len();
        let kept = self.head.min(len as u64 - 1) as usize + 1;
        let mut slot = self.slot(self.head);
        let unit = self.unit();
        let mut start = self.head.saturating_mul(unit);
        let mut used = 0u64;
        let mut expires_at = 0u64;
        for _ in 0..kept {
            let (count, last) = get(slot, start);
            if count != 0 {
                let leaves_at = last.saturating_add(window);
                if expires_at == 0 {
                    expires_at = leaves_at;
                }
                if leaves_at <= now {
                    break;
                }
                used = used.saturating_add(count);
            }
            slot = if slot == 0 { len - 1 } else { slot - 1 };
            start = start.saturating_sub(unit);
        }
        (used, expires_at)
    }

    /// When `need` of what counts at `now` will have left the window: walking the kept
    /// segments oldest first (the order they leave in), when the segment that brings what
    /// has left up to `need` leaves; `now + window` if they never add up to it. Segments
    /// are read by `get(slot, segment start)`; one division for the whole walk.
    #[inline(always)]
    fn freed_at(
        &self,
        window: u64,
        now: u64,
        need: u64,
        get: impl Fn(usize, u64) -> (u64, u64),
    ) -> u64 {
        let len = self.segments.len();
        let oldest = self.head.saturating_sub(len as u64 - 1);
        let mut slot = self.slot(oldest);
        let unit = self.unit();
        let mut start = oldest.saturating_mul(unit);
        let mut freed = 0u64;
        for _ in oldest..=self.head {
            let (count, last) = get(slot, start);
            let leaves_at = last.saturating_add(window);
            if count > 0 && leaves_at > now {
                freed = freed.saturating_add(count);
                if freed >= need {
                    return leaves_at;
                }
            }
            slot = if slot + 1 == len { 0 } else { slot + 1 };
            start = start.saturating_add(unit);
        }
        now.saturating_add(window)
    }
}

/// The sum of an exact log's costs, saturating at `u64::MAX`. A total that saturated (huge
/// penalties) no longer says what its entries add up to: it is recounted from what is left
/// when entries go, so it is never taken below what remains.
fn log_total(entries: &VecDeque<(u64, u64)>) -> u64 {
    entries
        .iter()
        .fold(0u64, |sum, &(_, cost)| sum.saturating_add(cost))
}

/// A token bucket's emission interval as its state records it: the interval its
/// theoretical arrival time (TAT) counts in, so that a state read under a limit whose
/// sustained rate changed is converted (what it counts, in tokens, carries over) instead of
/// being read in the new interval. `tat - now` means `(tat - now) / T` tokens only for the `T`
/// it was worked out with: read with a shorter one it would count many more tokens (a
/// raised rate would keep a refused client waiting longer), with a longer one fewer (a
/// lowered rate would admit more than was allowed).
///
/// Held in a `u32`, so that the memory store's token-bucket slot is 28 bytes (the key's
/// hash and when it was seen, with its share, take 16, the TAT 8, this 4). The
/// code is the interval itself, exactly, below [`Interval::EXACT_BELOW`] µs (71 minutes 18
/// seconds per token: every sustained rate of one an hour or more). A longer interval (up
/// to the 400 days a token bucket may take to refill) is kept as a binary floating-point
/// number in the codes above: a 4-bit exponent and a 20-bit mantissa with its leading one
/// implied, read back rounded down by less than one part in 2^20. Two such intervals
/// closer than that share a code, and a state is then read in the new one as it is: a
/// misreading of under a millionth. Codes are compared, never decoded intervals, so an
/// unchanged limit never converts anything; a decoded interval is only the divisor of a
/// conversion, and rounded down it counts a little more, never less, than was spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Interval(u32);

impl Interval {
    /// Intervals below this many µs are held exactly.
    pub(crate) const EXACT_BELOW: u64 = 0xFF00_0000;

    /// Bits of a long interval's mantissa, less its leading one.
    const MANTISSA: u32 = 20;

    /// How far the smallest long interval is shifted: it has 32 bits (as `EXACT_BELOW`
    /// has), of which the top 21 are kept.
    const MIN_SHIFT: u32 = 32 - (Self::MANTISSA + 1);

    /// The code of an interval of `micros` µs.
    pub(crate) const fn of(micros: u64) -> Self {
        if micros < Self::EXACT_BELOW {
            return Interval(micros as u32);
        }
        // 32 bits or more: the top 21 bits, and how far they were shifted.
        let shift = (64 - micros.leading_zeros()) - (Self::MANTISSA + 1);
        let exponent = shift - Self::MIN_SHIFT;
        if exponent > 15 {
            // Past 2^47 µs (4.5 years): no limit has such an interval.
            return Interval(u32::MAX);
        }
        let mantissa = (micros >> shift) as u32 - (1 << Self::MANTISSA);
        Interval(Self::EXACT_BELOW as u32 + (exponent << Self::MANTISSA) + mantissa)
    }

    /// The interval in µs: exact below [`Interval::EXACT_BELOW`], rounded down above.
    pub(crate) const fn micros(self) -> u64 {
        let Some(long) = self.0.checked_sub(Self::EXACT_BELOW as u32) else {
            return self.0 as u64;
        };
        let exponent = long >> Self::MANTISSA;
        let mantissa = (long & ((1 << Self::MANTISSA) - 1)) as u64 | (1 << Self::MANTISSA);
        mantissa << (exponent + Self::MIN_SHIFT)
    }

    /// The code of `limit`'s emission interval.
    #[inline]
    pub(crate) const fn of_limit(limit: &Limit) -> Self {
        Self::of(limit.emission_interval())
    }
}

/// A TAT worked out with an emission interval of `from` µs, in one of `to` µs at `now`: the
/// tokens counted (`(tat - now) / from`) carry over, rounded up to a microsecond; in u128,
/// saturating at `u64::MAX`. A TAT not ahead of `now` counts nothing and stays.
pub(crate) fn rescale_tat(tat: u64, now: u64, from: u64, to: u64) -> u64 {
    let Some(ahead) = tat.checked_sub(now).filter(|&a| a > 0) else {
        return tat;
    };
    let ahead = (u128::from(ahead) * u128::from(to)).div_ceil(u128::from(from.max(1)));
    now.saturating_add(u64::try_from(ahead).unwrap_or(u64::MAX))
}

/// One GCRA step of a token bucket whose theoretical arrival time is `tat`: the TAT once
/// `cost` is counted, and how long until it fits (0: now). What [`State::fit`],
/// [`State::add`] and [`State::charge`] work out for a token bucket.
#[inline]
fn gcra(tat: u64, limit: &Limit, cost: u64, now: u64) -> (u64, u64) {
    let t = limit.emission_interval();
    let tolerance = limit.capacity().saturating_mul(t);
    match tat.max(now).checked_add(cost.saturating_mul(t)) {
        Some(new_tat) => (new_tat, (new_tat - now).saturating_sub(tolerance)),
        // Past the clock's range (a clock gone wrong): it does not fit before the end.
        None => (u64::MAX, (u64::MAX - now).max(1)),
    }
}

/// Whether a cost fits now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fit {
    /// It fits.
    Now,
    /// It fits after this many microseconds (never 0).
    After(u64),
    /// It never fits: it costs more than the capacity.
    Never,
    /// A new key that a bounded store has no room for: it fits after this many
    /// microseconds at the most (never 0), when a held key expires.
    Full(u64),
}

impl State {
    /// The state of a key nothing has been counted against.
    pub(crate) fn fresh(limit: &Limit, now: u64) -> Self {
        match limit.algorithm() {
            Algorithm::SlidingWindow { segments } => State::Segments(Ring::new(
                now / limit.segment_micros(),
                usize::from(segments) + 1,
                limit.segment_micros(),
            )),
            Algorithm::SlidingLog => State::Log {
                entries: Box::default(),
                total: 0,
            },
            Algorithm::TokenBucket { .. } => State::Tat {
                tat: 0,
                interval: Interval::of_limit(limit),
            },
            Algorithm::FixedWindow => State::Fixed {
                window: now / limit.quota().period_micros(),
                used: 0,
                period: limit.quota().period_micros(),
            },
        }
    }

    /// A state with `used` counted (in the limit's units) that is fresh again `fresh_in` µs
    /// after `now`: what another store reported for the key, taken as late as that report
    /// allows. Everything counted is placed at the latest admission consistent with
    /// `fresh_in` (a window's count leaves all at once, when its last admission does; a
    /// token bucket's time is `now + fresh_in`, at most `used` tokens' worth), so the copy
    /// never admits sooner than the store it copies.
    pub(crate) fn assumed(limit: &Limit, used: u64, fresh_in: u64, now: u64) -> Self {
        let mut state = State::fresh(limit, now);
        if used == 0 || fresh_in == 0 {
            return state;
        }
        let window = limit.quota().period_micros();
        // The last admission: its count leaves the window `fresh_in` from now.
        let last = now.saturating_add(fresh_in).saturating_sub(window).min(now);
        match &mut state {
            State::Segments(ring) => {
                let oldest = ring.head.saturating_sub(ring.len() - 1);
                let j = (last / ring.unit()).max(oldest);
                ring.set_segment(j, used, last);
            }
            State::Log { entries, total } => {
                entries.push_back((last, used));
                *total = used;
            }
            State::Tat { tat, .. } => {
                let ahead = fresh_in.min(used.saturating_mul(limit.emission_interval()));
                *tat = now.saturating_add(ahead);
            }
            State::Fixed { used: u, .. } => *u = used,
        }
        state
    }

    /// Whether this state belongs to `limit`'s algorithm (a limit changed at runtime starts
    /// its keys afresh, except a token bucket's: [`State::advance`] converts it to the
    /// limit's emission interval).
    #[inline]
    pub(crate) fn fits_algorithm(&self, limit: &Limit) -> bool {
        match (self, limit.algorithm()) {
            (State::Segments(ring), Algorithm::SlidingWindow { segments }) => {
                ring.len() == u64::from(segments) + 1 && ring.unit() == limit.segment_micros()
            }
            (State::Fixed { period, .. }, Algorithm::FixedWindow) => {
                *period == limit.quota().period_micros()
            }
            (State::Log { .. }, Algorithm::SlidingLog)
            | (State::Tat { .. }, Algorithm::TokenBucket { .. }) => true,
            _ => false,
        }
    }

    /// Brings the state up to `now`: drops what has aged out of the window. A token bucket's
    /// TAT worked out with another emission interval (the limit's sustained rate changed)
    /// is converted to the limit's: what it counts, in tokens, carries over
    /// ([`rescale_tat`]).
    #[inline(always)]
    pub(crate) fn advance(&mut self, limit: &Limit, now: u64) {
        match self {
            State::Segments(ring) => {
                // Still in the newest segment (the common case): no division. (A segment
                // past the clock's range never starts.)
                let unit = limit.segment_micros();
                let starts = ring.head.checked_add(1).and_then(|n| n.checked_mul(unit));
                if starts.is_none_or(|next| now < next) {
                    return;
                }
                let current = now / unit;
                if current > ring.head {
                    if current - ring.head >= ring.len() {
                        ring.segments.clear();
                    } else {
                        for j in ring.head + 1..=current {
                            ring.set_segment(j, 0, 0);
                        }
                    }
                    ring.set_head(current);
                }
            }
            State::Log { entries, total } => {
                let period = limit.quota().period_micros();
                let saturated = *total == u64::MAX;
                while let Some(&(at, cost)) = entries.front() {
                    if at.saturating_add(period) > now {
                        break;
                    }
                    entries.pop_front();
                    if !saturated {
                        *total -= cost;
                    }
                }
                if saturated {
                    *total = log_total(entries);
                }
            }
            State::Tat { tat, interval } => {
                let current = Interval::of_limit(limit);
                if *interval != current {
                    *tat = rescale_tat(*tat, now, interval.micros(), limit.emission_interval());
                    *interval = current;
                }
            }
            State::Fixed { window, used, .. } => {
                let current = now / limit.quota().period_micros();
                if current > *window {
                    *window = current;
                    *used = 0;
                }
            }
        }
    }

    /// What is counted against the window now, in the quota's units (for the token bucket,
    /// the tokens missing from a full bucket, rounded up).
    #[inline]
    fn used(&self, limit: &Limit, now: u64) -> u64 {
        match self {
            State::Segments(ring) => ring.used_and_expiry(limit.quota().period_micros(), now).0,
            State::Log { total, .. } => *total,
            State::Tat { tat, .. } => tat.saturating_sub(now).div_ceil(limit.emission_interval()),
            State::Fixed { used, .. } => *used,
        }
    }

    /// Whether `cost` fits now, and if not, when. Call after [`State::advance`].
    pub(crate) fn fit(&self, limit: &Limit, cost: u64, now: u64) -> Fit {
        let capacity = limit.capacity();
        if cost > capacity {
            return Fit::Never;
        }
        let wait = match self {
            State::Segments(ring) => return ring.fit(limit, cost, now, self.used(limit, now)),
            State::Log { entries, total } => {
                let Some(need) = (total.saturating_add(cost)).checked_sub(capacity) else {
                    return Fit::Now;
                };
                if need == 0 {
                    return Fit::Now;
                }
                let period = limit.quota().period_micros();
                let mut freed = 0u64;
                let mut leaves_at = now.saturating_add(period);
                for &(at, c) in entries.iter() {
                    freed = freed.saturating_add(c);
                    if freed >= need {
                        leaves_at = at.saturating_add(period);
                        break;
                    }
                }
                leaves_at.saturating_sub(now)
            }
            State::Tat { tat, .. } => gcra(*tat, limit, cost, now).1,
            State::Fixed { window, used, .. } => {
                if used.saturating_add(cost) <= capacity {
                    return Fit::Now;
                }
                fixed_window_end(*window, limit).saturating_sub(now)
            }
        };
        if wait == 0 {
            Fit::Now
        } else {
            Fit::After(wait)
        }
    }

    /// Counts `cost` against the state (a charge or a penalty; it may go over the limit).
    pub(crate) fn add(&mut self, limit: &Limit, cost: u64, now: u64) {
        match self {
            State::Segments(ring) => {
                ring.add(cost, now);
            }
            State::Log { entries, total } => {
                let at = entries.back().map_or(now, |&(last, _)| last.max(now));
                match entries.back_mut() {
                    Some((last, c)) if *last == at => *c = c.saturating_add(cost),
                    _ => entries.push_back((at, cost)),
                }
                *total = total.saturating_add(cost);
            }
            State::Tat { tat, .. } => *tat = gcra(*tat, limit, cost, now).0,
            State::Fixed { used, .. } => *used = used.saturating_add(cost),
        }
    }

    /// What [`State::add`] (or a charge) may change, to put it back exactly
    /// ([`State::undo`]): the newest segment, the log's tail, the TAT or the window's count.
    /// Taken after [`State::advance`].
    pub(crate) fn undo_record(&self) -> Undo {
        match self {
            State::Segments(ring) => {
                let (count, last) = ring.segment(ring.head);
                Undo::Segment { count, last }
            }
            State::Log { entries, total } => Undo::Log {
                len: entries.len(),
                back: entries.back().map_or(0, |&(_, c)| c),
                total: *total,
            },
            State::Tat { tat, .. } => Undo::Tat(*tat),
            State::Fixed { used, .. } => Undo::Fixed(*used),
        }
    }

    /// Puts back what `undo` ([`State::undo_record`], taken at the same time) recorded: the
    /// state is again what it was before the charges since, whatever they were.
    pub(crate) fn undo(&mut self, undo: Undo) {
        match (self, undo) {
            (State::Segments(ring), Undo::Segment { count, last }) => {
                ring.set_segment(ring.head, count, last);
            }
            (
                State::Log { entries, total },
                Undo::Log {
                    len,
                    back,
                    total: t,
                },
            ) => {
                entries.truncate(len);
                if let Some((_, c)) = entries.back_mut() {
                    *c = back;
                }
                *total = t;
            }
            (State::Tat { tat, .. }, Undo::Tat(t)) => *tat = t,
            (State::Fixed { used, .. }, Undo::Fixed(u)) => *used = u,
            // A record of another state's form: not this state's (never made so).
            _ => {}
        }
    }

    /// Gives `cost` back; never below empty. With `at` (when the charge it undoes was made,
    /// µs), from what that charge counted and only from there: its segment, its log entry
    /// (the first at or after `at`), its fixed window, or a token bucket's cost's time less
    /// the time since `at` (what refilled since may have gone to newer charges; a charge
    /// made when the bucket was not full refills later than that, so this gives back less
    /// than it holds, never more). A charge whose segment, entry or window is gone gives
    /// nothing back. Without `at`,
    /// newest counts first, on to older ones. A log entry given back whole is dropped if it
    /// is the newest (and so are those counting 0 before it); one before an entry that
    /// counts stays, counting 0.
    pub(crate) fn sub(&mut self, limit: &Limit, cost: u64, at: Option<u64>, now: u64) {
        match self {
            State::Segments(ring) => {
                let oldest = ring.head.saturating_sub(ring.len() - 1);
                let first = at.map_or(ring.head, |at| (at / ring.unit()).min(ring.head));
                let mut left = cost;
                for j in (oldest..=first).rev() {
                    let (c, last) = ring.segment(j);
                    let take = c.min(left);
                    ring.set_segment(j, c - take, last);
                    left -= take;
                    if left == 0 || at.is_some() {
                        break;
                    }
                }
            }
            State::Log { entries, total } => {
                let end = match at {
                    None => entries.len(),
                    Some(at) if at.saturating_add(limit.quota().period_micros()) <= now => 0,
                    // The entry the charge was added to: entries are in time order, and a
                    // charge counts at `at` or later (never before the newest entry).
                    Some(at) => match entries.partition_point(|&(t, _)| t < at) {
                        i if i < entries.len() => i + 1,
                        _ => 0,
                    },
                };
                let mut left = cost;
                for i in (0..end).rev() {
                    // (A refund of nothing touches no entry, not even one counting 0.)
                    if left == 0 {
                        break;
                    }
                    let c = &mut entries[i].1;
                    let take = (*c).min(left);
                    *c -= take;
                    left -= take;
                    if *total != u64::MAX {
                        *total -= take;
                    }
                    if at.is_some() {
                        break;
                    }
                }
                // Given back whole, the newest entry goes, and with it those counting 0 it
                // leaves newest; one before an entry that counts stays, counting 0, until it
                // leaves the window (as the Redis script keeps its entries). The newest
                // entry says when the log is empty again: one counting 0 there said later
                // than that (a reset 800 ms away with nothing counted). (A refund of nothing
                // touches no entry.)
                while left < cost && entries.back().is_some_and(|&(_, c)| c == 0) {
                    entries.pop_back();
                }
                if *total == u64::MAX {
                    *total = log_total(entries);
                }
            }
            State::Tat { tat, .. } => {
                let back = cost.saturating_mul(limit.emission_interval());
                let back = at.map_or(back, |at| {
                    back.min(at.saturating_add(back).saturating_sub(now))
                });
                *tat = tat.saturating_sub(back).max(now.min(*tat));
            }
            State::Fixed { window, used, .. } => {
                if at.is_none_or(|at| at / limit.quota().period_micros() == *window) {
                    *used = used.saturating_sub(cost);
                }
            }
        }
    }

    /// When the state is back to fresh (nothing counted): the entry can be dropped then.
    /// Zero if it is fresh already.
    #[inline]
    pub(crate) fn expires_at(&self, limit: &Limit) -> u64 {
        match self {
            State::Segments(ring) => {
                // The newest counted segment leaves last, whether or not `now` is past it.
                ring.used_and_expiry(limit.quota().period_micros(), u64::MAX)
                    .1
            }
            State::Log { entries, .. } => entries.back().map_or(0, |&(at, _)| {
                at.saturating_add(limit.quota().period_micros())
            }),
            State::Tat { tat, .. } => *tat,
            State::Fixed { window, used, .. } => {
                if *used == 0 {
                    0
                } else {
                    fixed_window_end(*window, limit)
                }
            }
        }
    }

    /// The bucket's answer: `fit` is this call's verdict (`Fit::Now` for operations that do
    /// not refuse). Call after the state was changed.
    #[inline]
    pub(crate) fn report(&self, limit: &Limit, fit: Fit, cost: u64, now: u64) -> BucketState {
        self.report_and_expiry(limit, fit, cost, now).0
    }

    /// [`State::report`], and when the state is back to fresh (as [`State::expires_at`];
    /// the report's `reset_after` is this minus `now`, at least zero, but a fixed window's
    /// is its window's end: see [`State::reset_at`]).
    #[inline(always)]
    pub(crate) fn report_and_expiry(
        &self,
        limit: &Limit,
        fit: Fit,
        cost: u64,
        now: u64,
    ) -> (BucketState, u64) {
        let (used, expires_at) = match self {
            State::Segments(ring) => ring.used_and_expiry(limit.quota().period_micros(), now),
            _ => (self.used(limit, now), self.expires_at(limit)),
        };
        (
            Self::report_from(
                limit,
                fit,
                cost,
                now,
                used,
                self.reset_at(limit, expires_at),
            ),
            expires_at,
        )
    }

    /// When the state reports its reset: when it is fresh again (`expires_at`), but for a
    /// fixed window the end of its window even when it counts nothing (all given back, a
    /// look at a new key): the window resets at its end whatever it holds, and a client
    /// reading the reset of an empty window as now would see it jump to the window's end
    /// at its next request.
    fn reset_at(&self, limit: &Limit, expires_at: u64) -> u64 {
        match self {
            State::Fixed { window, .. } => fixed_window_end(*window, limit),
            _ => expires_at,
        }
    }

    /// Charges `cost` if it fits (call after [`State::advance`]): the verdict and when the
    /// state is fresh again, with what [`State::report_and_expiry`] says after it written
    /// into `report` (in the caller's place: a report moved back through the store's calls
    /// was copied at each). A sliding window's segments are read once, where a fit and a
    /// report would each read them: after the charge the newest segment holds `cost` more,
    /// and is the newest counted one.
    #[inline(always)]
    pub(crate) fn charge(
        &mut self,
        limit: &Limit,
        cost: u64,
        now: u64,
        report: &mut BucketState,
    ) -> (Fit, u64) {
        let fit = if cost > limit.capacity() {
            Fit::Never
        } else {
            match self {
                State::Segments(ring) => {
                    // What the segments count, read once: after the charge the newest
                    // segment holds `cost` more, and is the newest counted one.
                    let window = limit.quota().period_micros();
                    let mut used = ring.used(window, now);
                    let fit = ring.fit(limit, cost, now, used);
                    // When the newest counted segment leaves is only looked for if it does
                    // not fit: after a charge, the newest segment is that one.
                    let expires_at = if fit == Fit::Now {
                        let last = ring.add(cost, now);
                        used = used.saturating_add(cost);
                        last.saturating_add(window)
                    } else {
                        ring.expiry(window, now)
                    };
                    *report = Self::report_from(limit, fit, cost, now, used, expires_at);
                    return (fit, expires_at);
                }
                // One GCRA step: the new TAT, and the wait if it does not fit.
                State::Tat { tat, .. } => {
                    let (new_tat, wait) = gcra(*tat, limit, cost, now);
                    if wait == 0 {
                        *tat = new_tat;
                        Fit::Now
                    } else {
                        Fit::After(wait)
                    }
                }
                _ => {
                    let fit = self.fit(limit, cost, now);
                    if fit == Fit::Now {
                        self.add(limit, cost, now);
                    }
                    fit
                }
            }
        };
        let expires_at;
        (*report, expires_at) = self.report_and_expiry(limit, fit, cost, now);
        (fit, expires_at)
    }

    /// The bucket's answer for verdict `fit`, from what the state counts (`used`) and when
    /// it is fresh again.
    ///
    /// A new key refused because the store has no room for it ([`Fit::Full`]) is reported
    /// with nothing remaining and a reset no sooner than its wait: its own state is fresh,
    /// but until a held key expires the bucket has nothing to give it, and a client that
    /// trusted a full `remaining` or a reset of now would retry at once and be refused again.
    #[inline(always)]
    fn report_from(
        limit: &Limit,
        fit: Fit,
        cost: u64,
        now: u64,
        used: u64,
        expires_at: u64,
    ) -> BucketState {
        let capacity = limit.capacity();
        let (remaining, reset_after) = match fit {
            Fit::Full(wait) => (0, expires_at.saturating_sub(now).max(wait.max(1))),
            _ => (
                capacity.saturating_sub(used),
                expires_at.saturating_sub(now),
            ),
        };
        let (allowed, retry_after, refusal) = match fit {
            Fit::Now => (true, None, None),
            Fit::After(wait) => (
                false,
                Some(Duration::from_micros(wait)),
                Some(Refusal::OverLimit),
            ),
            Fit::Never => (
                false,
                None,
                Some(Refusal::CostExceedsCapacity { cost, capacity }),
            ),
            Fit::Full(wait) => (
                false,
                Some(Duration::from_micros(wait.max(1))),
                Some(Refusal::StoreFull),
            ),
        };
        BucketState {
            allowed,
            limit: limit.shown_count(),
            remaining,
            reset_after: Duration::from_micros(reset_after),
            retry_after,
            refusal,
        }
    }
}

/// When fixed window number `window` of `limit` ends (µs).
fn fixed_window_end(window: u64, limit: &Limit) -> u64 {
    (window + 1).saturating_mul(limit.quota().period_micros())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Quota;

    const MIN: u64 = 60_000_000;

    /// Charges `cost` at `now` if it fits; returns the verdict.
    fn charge(state: &mut State, limit: &Limit, cost: u64, now: u64) -> Fit {
        state.advance(limit, now);
        let fit = state.fit(limit, cost, now);
        if fit == Fit::Now {
            state.add(limit, cost, now);
        }
        fit
    }

    #[test]
    fn sliding_window_counts_and_waits() {
        let limit = Limit::sliding(Quota::per_minute(10)); // segments of 6 s
        let t0 = 1_000 * MIN;
        let mut s = State::fresh(&limit, t0);
        for i in 0..10 {
            assert_eq!(charge(&mut s, &limit, 1, t0 + i), Fit::Now);
        }
        // Full: the ten sit in one segment, which leaves the window a minute after its last
        // admission (t0 + 9 µs): never later than W.
        assert_eq!(
            charge(&mut s, &limit, 1, t0 + 10),
            Fit::After(60_000_000 - 1)
        );
        assert_eq!(charge(&mut s, &limit, 1, t0 + 60_000_008), Fit::After(1));
        assert_eq!(charge(&mut s, &limit, 1, t0 + 60_000_009), Fit::Now);
        let r = s.report(&limit, Fit::Now, 1, t0 + 60_000_009);
        assert_eq!(r.remaining, 9);
        assert_eq!(r.reset_after, Duration::from_secs(60));
    }

    #[test]
    fn a_segment_leaving_at_this_very_moment_frees_nothing_more() {
        let limit = Limit::sliding(Quota::per_minute(3)); // segments of 6 s
        let t0 = 1_000 * MIN;
        let mut s = State::fresh(&limit, t0);
        assert_eq!(charge(&mut s, &limit, 1, t0), Fit::Now);
        assert_eq!(charge(&mut s, &limit, 2, t0 + MIN / 2), Fit::Now);
        // A microsecond before the first admission leaves, it still counts.
        assert_eq!(charge(&mut s, &limit, 1, t0 + MIN - 1), Fit::After(1));
        // As it leaves, it is gone from the count and from what a wait counts on: a cost of
        // 2 waits for the second segment (admitting it then would count 4 in (t0 + 30 s,
        // t0 + 60 s]).
        assert_eq!(charge(&mut s, &limit, 2, t0 + MIN), Fit::After(MIN / 2));
        assert_eq!(charge(&mut s, &limit, 1, t0 + MIN), Fit::Now);
    }

    /// `State::charge` answers and leaves the state exactly as a fit, an add when it fits
    /// and a report do, for every algorithm: across segment and window boundaries, rings not
    /// yet full, counts past what an inline ring holds, refusals and costs that never fit.
    #[test]
    fn a_charge_in_one_walk_is_a_fit_an_add_and_a_report() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let limits = [
            Limit::sliding(Quota::per_minute(10)),
            Limit::sliding(Quota::new(7, Duration::from_millis(1_500)).unwrap()),
            Limit::sliding(Quota::per_hour(5_000_000_000)),
            Limit::sliding(Quota::per_day(100)),
            Limit::sliding_exact(Quota::per_minute(5)),
            Limit::fixed(Quota::per_minute(10)),
            Limit::token_bucket(Quota::per_minute(10), 3).unwrap(),
        ];
        for limit in &limits {
            let capacity = limit.capacity();
            let mut now = 1_000 * MIN + next(MIN);
            let mut one = State::fresh(limit, now);
            let mut long = State::fresh(limit, now);
            for step in 0..5_000 {
                match next(20) {
                    // A clock that steps back a little (another instance's report).
                    0 => now -= next(1_000),
                    1..=11 => now += next(1_000),
                    12..=17 => now += next(limit.quota().period_micros() / 3 + 1),
                    _ => now += next(2 * limit.quota().period_micros() + 1),
                }
                let cost = match next(20) {
                    0 => capacity + 1,
                    1 => capacity,
                    2 => u64::from(u32::MAX) + next(10),
                    _ => 1 + next(3),
                };
                one.advance(limit, now);
                long.advance(limit, now);
                let fit = long.fit(limit, cost, now);
                if fit == Fit::Now {
                    long.add(limit, cost, now);
                }
                let expected = long.report_and_expiry(limit, fit, cost, now);
                let mut report = BucketState::default();
                let (got_fit, expires_at) = one.charge(limit, cost, now, &mut report);
                assert_eq!(got_fit, fit, "{limit:?} step {step}");
                assert_eq!((report, expires_at), expected, "{limit:?} step {step}");
                assert_eq!(
                    one.report_and_expiry(limit, Fit::Now, 1, now),
                    long.report_and_expiry(limit, Fit::Now, 1, now),
                    "{limit:?} step {step}: the states differ"
                );
            }
        }
    }

    /// An emission interval is held exactly below 71 minutes 18 seconds, and past that
    /// (up to the longest a token bucket has) rounded down by less than a millionth; an
    /// hour and a day, half a day and a day, are told apart.
    #[test]
    fn an_interval_is_exact_below_71_minutes_and_within_a_millionth_above() {
        let exact = Interval::EXACT_BELOW;
        for t in [1, 600_000, 12_000_000, 3_600_000_000, exact - 1, exact] {
            assert_eq!(Interval::of(t).micros(), t);
        }
        let longest = crate::quota::MAX_PERIOD.as_micros() as u64;
        let mut t = exact;
        while t <= longest {
            let back = Interval::of(t).micros();
            assert!(back <= t && t - back <= t >> 20, "{t}: {back}");
            assert_eq!(Interval::of(back), Interval::of(t), "{t}");
            t = t + t / 7 + 12_345;
        }
        // 45 bits: the top 21 kept.
        assert_eq!(Interval::of(longest).micros(), longest & !((1 << 24) - 1));
        let codes = [
            exact - 1,
            exact,
            3_600_000_000,
            43_200_000_000,
            86_400_000_000,
        ];
        for (i, a) in codes.iter().enumerate() {
            for b in &codes[i + 1..] {
                assert_ne!(Interval::of(*a), Interval::of(*b), "{a} {b}");
            }
        }
    }

    /// Converting a TAT carries its tokens over, rounded up to a microsecond, exactly
    /// however large the product (u128), saturating at `u64::MAX`.
    #[test]
    fn a_converted_tat_keeps_its_tokens() {
        // 22 s ahead in tokens of 12 s: 1.83 tokens, 1.833334 s in tokens of 1 s.
        assert_eq!(
            rescale_tat(MIN + 22_000_000, MIN, 12_000_000, 1_000_000),
            MIN + 1_833_334
        );
        assert_eq!(
            rescale_tat(MIN + 2_000_000, MIN, 1_000_000, 12_000_000),
            MIN + 24_000_000
        );
        // Nothing ahead: nothing counted, nothing to convert.
        assert_eq!(rescale_tat(MIN - 5, MIN, 1, 1_000), MIN - 5);
        assert_eq!(rescale_tat(MIN, MIN, 1, 1_000), MIN);
        assert_eq!(rescale_tat(u64::MAX / 2, 0, 1 << 40, 1 << 41), u64::MAX - 1);
        assert_eq!(rescale_tat(u64::MAX - 1, 0, 1, 2), u64::MAX);
        // A state read under another emission interval is converted by `advance`, once.
        let slow = Limit::token_bucket(Quota::per_minute(5), 2).unwrap();
        let fast = Limit::token_bucket(Quota::per_minute(60), 2).unwrap();
        let mut s = State::fresh(&slow, MIN);
        charge(&mut s, &slow, 2, MIN);
        s.advance(&fast, MIN + 2_000_000);
        s.advance(&fast, MIN + 2_000_000);
        assert_eq!(s.expires_at(&fast), MIN + 2_000_000 + 1_833_334);
    }

    #[test]
    fn sliding_log_is_exact() {
        let limit = Limit::sliding_exact(Quota::per_minute(3));
        let mut s = State::fresh(&limit, 0);
        assert_eq!(charge(&mut s, &limit, 1, 0), Fit::Now);
        assert_eq!(charge(&mut s, &limit, 2, 10 * 1_000_000), Fit::Now);
        assert_eq!(
            charge(&mut s, &limit, 1, 20 * 1_000_000),
            Fit::After(40 * 1_000_000)
        );
        // The first leaves at exactly 60 s; the second needs both of the 10 s pair gone.
        assert_eq!(charge(&mut s, &limit, 1, MIN), Fit::Now);
        assert_eq!(charge(&mut s, &limit, 2, MIN), Fit::After(10 * 1_000_000));
    }

    #[test]
    fn token_bucket_bursts_then_refills() {
        let limit = Limit::token_bucket(Quota::per_minute(100), 20).unwrap(); // 0.6 s per token
        let t0 = 5 * MIN;
        let mut s = State::fresh(&limit, t0);
        for _ in 0..20 {
            assert_eq!(charge(&mut s, &limit, 1, t0), Fit::Now);
        }
        assert_eq!(charge(&mut s, &limit, 1, t0), Fit::After(600_000));
        assert_eq!(charge(&mut s, &limit, 1, t0 + 600_000), Fit::Now);
        let r = s.report(&limit, Fit::Now, 1, t0 + 600_000);
        assert_eq!((r.limit, r.remaining), (100, 0));
        assert_eq!(r.reset_after, Duration::from_secs(12));
        assert_eq!(charge(&mut s, &limit, 21, t0 + MIN), Fit::Never);
    }

    #[test]
    fn fixed_window_resets_at_utc_midnight() {
        let limit = Limit::fixed(Quota::per_day(2));
        let day = 86_400_000_000u64;
        let noon = 20_000 * day + day / 2;
        let mut s = State::fresh(&limit, noon);
        assert_eq!(charge(&mut s, &limit, 2, noon), Fit::Now);
        assert_eq!(charge(&mut s, &limit, 1, noon), Fit::After(day / 2));
        assert_eq!(charge(&mut s, &limit, 1, 20_001 * day - 1), Fit::After(1));
        assert_eq!(charge(&mut s, &limit, 1, 20_001 * day), Fit::Now);
    }

    /// A sliding window's counters held inline (u32) or in an allocation (u64) answer
    /// alike, also once a cost past `u32::MAX` turns an inline ring wide midway.
    #[test]
    fn a_window_whose_length_changes_starts_afresh() {
        let t0 = 1_000 * MIN;
        let minute = Limit::sliding(Quota::per_minute(2));
        let hour = Limit::sliding(Quota::per_hour(2));
        let mut s = State::fresh(&minute, t0);
        charge(&mut s, &minute, 2, t0);
        assert!(s.fits_algorithm(&minute));
        assert!(
            !s.fits_algorithm(&hour),
            "indices counted in 6 s segments, not 6 min"
        );
        assert!(
            s.fits_algorithm(&Limit::sliding(Quota::per_minute(5))),
            "same window, new count"
        );
        let day = Limit::fixed(Quota::per_day(2));
        let d = State::fresh(&day, t0);
        assert!(d.fits_algorithm(&day));
        assert!(!d.fits_algorithm(&Limit::fixed(Quota::per_hour(2))));
    }

    #[test]
    fn inline_and_allocated_counters_agree() {
        let limit = Limit::sliding_segments(Quota::per_minute(20), 6).unwrap();
        let t0 = 1_000 * MIN;
        let mut narrow = State::fresh(&limit, t0);
        let mut wide = State::Segments(Ring {
            head: t0 / limit.segment_micros(),
            segments: Segments::Wide {
                unit: limit.segment_micros(),
                slots: vec![(0, 0); 7].into_boxed_slice(),
            },
        });
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut now = t0;
        for step in 0..2_000 {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            now += x % 4_000_000;
            // Once, a penalty too large for a u32 counter.
            let (op, cost) = if step == 1_500 {
                (1, 5_000_000_000)
            } else {
                (x % 5, x % 7)
            };
            for state in [&mut narrow, &mut wide] {
                state.advance(&limit, now);
                match op {
                    0 => state.sub(&limit, cost, None, now),
                    1 => state.add(&limit, cost, now),
                    _ => {
                        if state.fit(&limit, cost, now) == Fit::Now {
                            state.add(&limit, cost, now);
                        }
                    }
                }
            }
            assert_eq!(narrow.fit(&limit, 3, now), wide.fit(&limit, 3, now));
            assert_eq!(
                narrow.report(&limit, Fit::Now, 1, now),
                wide.report(&limit, Fit::Now, 1, now)
            );
        }
        let State::Segments(ring) = &narrow else {
            panic!("a sliding state")
        };
        assert!(matches!(ring.segments, Segments::Wide { .. }));
    }

    /// Whether an inline ring's kept total is the sum of its counts (a wide ring keeps
    /// none).
    fn total_is_exact(state: &State) -> bool {
        match state {
            State::Segments(Ring {
                segments: Segments::Narrow { total, counts, .. },
                ..
            }) => *total == counts.iter().map(|&c| u64::from(c)).sum::<u64>(),
            _ => true,
        }
    }

    #[test]
    fn an_inline_rings_total_is_the_sum_of_its_counts_after_any_change() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11
        };
        for segments in [1, 3, 10] {
            let limit = Limit::sliding_segments(Quota::per_minute(50), segments).unwrap();
            let mut now = 1_000 * MIN;
            let mut state = State::fresh(&limit, now);
            let mut undo = state.undo_record();
            let mut widened = 0;
            for step in 0..20_000 {
                // Mostly within a segment or two; now and then past the whole window.
                now += match next() % 10 {
                    0 => next() % (3 * MIN),
                    1..=3 => 0,
                    _ => next() % 3_000_000,
                };
                state.advance(&limit, now);
                // Now and then a count past a `u32`: the ring widens (and keeps no total),
                // and starts inline again when reset.
                if step % 1_000 == 999 {
                    state.add(&limit, 5_000_000_000, now);
                    widened += 1;
                    assert!(total_is_exact(&state));
                    let State::Segments(ring) = &state else {
                        panic!("a sliding state")
                    };
                    assert!(!ring.is_narrow());
                    state = State::fresh(&limit, now);
                    continue;
                }
                let cost = next() % 9;
                match next() % 12 {
                    0..=3 => {
                        if state.fit(&limit, cost.max(1), now) == Fit::Now {
                            state.add(&limit, cost.max(1), now);
                        }
                    }
                    4 => state.add(&limit, cost * 1_000, now),
                    5 => state.sub(&limit, cost, None, now),
                    6 => state.sub(&limit, cost, Some(now - next() % MIN), now),
                    7 => undo = state.undo_record(),
                    8 => state.undo(undo),
                    9 => {
                        let mut report = BucketState::default();
                        state.charge(&limit, cost.max(1), now, &mut report);
                    }
                    10 => state = State::assumed(&limit, next() % 60, next() % MIN, now),
                    _ => state.sub(&limit, next() % 200, None, now),
                }
                assert!(total_is_exact(&state), "step {step}: {state:?}");
                let State::Segments(ring) = &state else {
                    panic!("a sliding state")
                };
                assert!(ring.is_narrow(), "step {step}");
                // What a charge reads alone is what the whole walk says, now and later
                // (segments leaving, all of them gone).
                let window = limit.quota().period_micros();
                for later in [0, 1, MIN / 7, MIN - 1, MIN, 2 * MIN, u64::MAX - now] {
                    let at = now + later;
                    assert_eq!(
                        ring.used(window, at),
                        ring.used_and_expiry(window, at).0,
                        "step {step}, {later} µs later: {ring:?}"
                    );
                    assert_eq!(
                        ring.expiry(window, at),
                        ring.used_and_expiry(window, at).1,
                        "step {step}, {later} µs later: {ring:?}"
                    );
                }
            }
            assert!(widened > 0);
        }
    }

    #[test]
    fn a_cost_past_u32_is_counted_exactly() {
        let limit = Limit::sliding(Quota::per_minute(10));
        let mut s = State::fresh(&limit, MIN);
        s.add(&limit, u64::from(u32::MAX) + 7, MIN);
        s.add(&limit, 1, MIN + 7_000_000); // the next segment
        s.sub(&limit, u64::from(u32::MAX) + 2, None, MIN + 7_000_000);
        // The refund took the newest segment's 1, then 2^32 + 1 of the first: 6 remain.
        assert_eq!(s.used(&limit, MIN + 7_000_000), 6);
        assert_eq!(charge(&mut s, &limit, 4, MIN + 7_000_000), Fit::Now);
        assert_eq!(
            charge(&mut s, &limit, 1, MIN + 7_000_000),
            Fit::After(60_000_000)
        );
    }

    /// A state copied from a report answers like the original, or refuses sooner: never
    /// admits more, and a key at its limit stays refused until the report's reset.
    #[test]
    fn an_assumed_state_admits_no_sooner_than_its_report() {
        let t0 = 1_000 * MIN;
        let limits = [
            Limit::sliding(Quota::per_minute(10)),
            Limit::sliding_exact(Quota::per_minute(10)),
            Limit::token_bucket(Quota::per_minute(10), 10).unwrap(),
            Limit::fixed(Quota::per_minute(10)),
        ];
        for limit in limits {
            let mut original = State::fresh(&limit, t0);
            for i in 0..7 {
                charge(&mut original, &limit, 1, t0 + i * 3_000_000);
            }
            let now = t0 + 20_000_000;
            original.advance(&limit, now);
            let report = original.report(&limit, Fit::Now, 1, now);
            let used = limit.capacity() - report.remaining;
            let fresh_in = report.reset_after.as_micros() as u64;
            let mut copy = State::assumed(&limit, used, fresh_in, now);
            assert_eq!(
                copy.report(&limit, Fit::Now, 1, now).remaining,
                report.remaining,
                "{limit}"
            );
            assert!(copy.expires_at(&limit) <= now + fresh_in + 1, "{limit}");
            // Step through the window: whenever the copy admits, so does the original
            // (and both are charged).
            let mut at = now;
            let mut admitted = 0;
            while at < now + 2 * MIN {
                copy.advance(&limit, at);
                original.advance(&limit, at);
                if copy.fit(&limit, 1, at) == Fit::Now {
                    assert_eq!(
                        original.fit(&limit, 1, at),
                        Fit::Now,
                        "{limit} at {}",
                        at - now
                    );
                    copy.add(&limit, 1, at);
                    original.add(&limit, 1, at);
                    admitted += 1;
                }
                at += 700_000;
            }
            assert!(
                admitted >= limit.capacity(),
                "{limit}: the copy frees up in time"
            );
        }
    }

    #[test]
    fn refund_and_clock_going_back() {
        let limit = Limit::sliding(Quota::per_minute(2));
        let mut s = State::fresh(&limit, MIN);
        charge(&mut s, &limit, 2, MIN);
        s.sub(&limit, 1, None, MIN);
        assert_eq!(charge(&mut s, &limit, 1, MIN), Fit::Now);
        // The clock steps back a minute: what was spent stays spent.
        assert!(matches!(charge(&mut s, &limit, 1, 0), Fit::After(_)));
    }

    // Found missing by mutation testing (cargo-mutants): each fails with the mutant it
    // names applied.

    /// A segment leaves a window after its *latest* admission: a clock that steps back
    /// within the segment (another instance's report) does not pull its last admission
    /// back. (Kills `Ring::add`: `c == 0` → `c != 0`.)
    #[test]
    fn a_clock_stepping_back_within_a_segment_keeps_its_latest_admission() {
        let limit = Limit::sliding(Quota::per_minute(2)); // segments of 6 s
        let t0 = 1_000 * MIN;
        let mut s = State::fresh(&limit, t0);
        assert_eq!(charge(&mut s, &limit, 1, t0 + 5_000_000), Fit::Now);
        // 4 s behind, the same segment.
        assert_eq!(charge(&mut s, &limit, 1, t0 + 1_000_000), Fit::Now);
        // Both leave a minute after t0 + 5 s, not after t0 + 1 s.
        assert_eq!(
            charge(&mut s, &limit, 1, t0 + MIN + 1_000_000),
            Fit::After(4_000_000)
        );
        assert_eq!(charge(&mut s, &limit, 1, t0 + MIN + 5_000_000), Fit::Now);
    }

    /// Two charges in the same microsecond are one log entry, and a refund at that time
    /// gives back from it. (Kills `State::add`: guard `*last == at` → false.)
    #[test]
    fn charges_in_one_microsecond_share_a_log_entry() {
        let limit = Limit::sliding_exact(Quota::per_minute(5));
        let t = 1_000 * MIN;
        let mut s = State::fresh(&limit, t);
        assert_eq!(charge(&mut s, &limit, 1, t), Fit::Now);
        assert_eq!(charge(&mut s, &limit, 2, t), Fit::Now);
        let State::Log { entries, .. } = &s else {
            panic!("a log")
        };
        assert_eq!(entries.len(), 1, "one entry per distinct admission time");
        // The 2 charged at t given back: 1 is left.
        s.sub(&limit, 2, Some(t), t);
        assert_eq!(s.used(&limit, t), 1);
    }

    /// A refund at the time of a charge whose segment has left the ring gives nothing back
    /// (it must not take from the segment now in that ring slot). (Kills `State::sub`:
    /// `ring.len() - 1` → `+ 1` / `/ 1`.)
    #[test]
    fn a_refund_of_a_charge_whose_segment_is_gone_gives_nothing_back() {
        let limit = Limit::sliding(Quota::per_minute(10)); // 10 segments of 6 s, 11 kept
        let t0 = 1_000 * MIN;
        let mut s = State::fresh(&limit, t0);
        assert_eq!(charge(&mut s, &limit, 1, t0), Fit::Now);
        // 11 segments later: t0's segment is gone, its ring slot holds the newest.
        let now = t0 + 66_000_000;
        assert_eq!(charge(&mut s, &limit, 3, now), Fit::Now);
        s.sub(&limit, 1, Some(t0), now);
        assert_eq!(s.used(&limit, now), 3);
    }

    /// Without a time a refund takes from the newest segment on to older ones; with one,
    /// from that charge's segment only. (Kills `State::sub`: `left == 0` → `!=`, and
    /// `||` → `&&`.)
    #[test]
    fn a_refund_walks_older_segments_only_without_a_time() {
        let limit = Limit::sliding(Quota::per_minute(10));
        let t0 = 1_000 * MIN;
        let t1 = t0 + 6_000_000; // the next segment
        let mut s = State::fresh(&limit, t0);
        assert_eq!(charge(&mut s, &limit, 2, t0), Fit::Now);
        assert_eq!(charge(&mut s, &limit, 2, t1), Fit::Now);
        s.sub(&limit, 3, None, t1);
        assert_eq!(s.used(&limit, t1), 1, "the newest 2, then 1 of the older");
        assert_eq!(charge(&mut s, &limit, 2, t1), Fit::Now); // t1: 2, t0: 1
        s.sub(&limit, 3, Some(t1), t1);
        assert_eq!(s.used(&limit, t1), 1, "only t1's segment gives back");
    }

    /// An exact log: a refund for an entry that left the window gives nothing back, nor
    /// does one at a time after every entry (the charge already given back whole).
    /// (Kills `State::sub`: guard `at + W <= now` → false; guard `i < entries.len()` →
    /// true, and `<` → `<=`: an index past the end.)
    #[test]
    fn a_log_refund_of_a_gone_entry_gives_nothing_back() {
        let limit = Limit::sliding_exact(Quota::per_minute(5));
        let t0 = 1_000 * MIN;
        let mut s = State::fresh(&limit, t0);
        assert_eq!(charge(&mut s, &limit, 1, t0), Fit::Now);
        assert_eq!(charge(&mut s, &limit, 2, t0 + 50_000_000), Fit::Now);
        let now = t0 + MIN + 1;
        s.advance(&limit, now);
        s.sub(&limit, 1, Some(t0), now);
        assert_eq!(s.used(&limit, now), 2, "t0's entry has left");

        let mut s = State::fresh(&limit, t0);
        assert_eq!(charge(&mut s, &limit, 1, t0), Fit::Now);
        assert_eq!(charge(&mut s, &limit, 1, t0 + 1), Fit::Now);
        s.sub(&limit, 1, Some(t0 + 1), t0 + 1);
        // The same refund again: its entry went with the first.
        s.sub(&limit, 1, Some(t0 + 1), t0 + 1);
        assert_eq!(s.used(&limit, t0 + 1), 1);
    }

    /// A token bucket pushed past the clock's range (a penalty of u64::MAX, a ban) refuses
    /// until the end of the clock, and says so. (Kills `gcra`: `u64::MAX - now` → `/`.)
    #[test]
    fn a_bucket_past_the_clock_range_waits_until_its_end() {
        let limit = Limit::token_bucket(Quota::per_minute(10), 10).unwrap();
        let now = 1_000 * MIN;
        let mut s = State::fresh(&limit, now);
        s.add(&limit, u64::MAX, now);
        assert_eq!(charge(&mut s, &limit, 1, now), Fit::After(u64::MAX - now));
    }

    /// A saturated log's total is recounted when a refund takes it below `u64::MAX`: the
    /// refund's own report shows it. (Kills `State::sub`: `*total == u64::MAX` → `!=`.)
    #[test]
    fn a_refund_of_a_saturated_log_recounts_it() {
        let limit = Limit::sliding_exact(Quota::per_minute(5));
        let t = 1_000 * MIN;
        let mut s = State::fresh(&limit, t);
        assert_eq!(charge(&mut s, &limit, 1, t), Fit::Now);
        s.add(&limit, u64::MAX, t + 1);
        s.sub(&limit, u64::MAX, None, t + 1);
        assert_eq!(s.used(&limit, t + 1), 1);
        assert_eq!(s.report(&limit, Fit::Now, 1, t + 1).remaining, 4);
    }

    /// A window whose segment length does not divide it (1 s in 7 segments of 142,858 µs)
    /// lets a second segment leave before the oldest's slot comes round: in the last
    /// microseconds of a segment, what the second-oldest segment counted has left, whatever
    /// ring slot it is in. (Kills `FullNarrow::used`: the forward walk's next
    /// slot, `slot + 1 == len` → `!=` / `slot * 1 == len`, and `slot + 1` → `slot * 1`.)
    #[test]
    fn a_second_segment_leaving_is_taken_out_in_every_ring_slot() {
        let limit =
            Limit::sliding_segments(Quota::new(2, Duration::from_secs(1)).unwrap(), 7).unwrap();
        let unit = limit.segment_micros();
        assert_eq!(unit, 142_858);
        let base = 10_000_000_000u64; // segment index, about 1.4e15 µs
        for h in base..base + 8 {
            let a = (h - 6) * unit; // the second-oldest segment's start
            let mut s = State::fresh(&limit, a);
            assert_eq!(charge(&mut s, &limit, 1, a), Fit::Now);
            assert_eq!(charge(&mut s, &limit, 1, h * unit), Fit::Now);
            // The last µs of segment h: a's admission left at h·unit + 142,852.
            let now = h * unit + unit - 1;
            s.advance(&limit, now);
            assert_eq!(s.used(&limit, now), 1, "head {h}");
            assert_eq!(charge(&mut s, &limit, 1, now), Fit::Now, "head {h}");
        }
    }

    /// A clock near the Unix epoch (a test's `ManualClock::new(Duration::ZERO)`): a ring
    /// not yet full of kept segments counts and waits like any other. (Kills
    /// `Ring::used_and_expiry`'s guard `head >= len` → true / `<`, its closure's
    /// `start + offset` → `-` / `*`, and `State::advance`'s `current - head` → `/`.)
    #[test]
    fn a_clock_near_the_epoch_counts_like_any_other() {
        let limit = Limit::sliding(Quota::per_minute(2)); // 10 segments of 6 s
        let mut s = State::fresh(&limit, 0);
        assert_eq!(charge(&mut s, &limit, 1, 5_000_000), Fit::Now);
        assert_eq!(charge(&mut s, &limit, 1, 5_000_000), Fit::Now);
        assert_eq!(charge(&mut s, &limit, 1, MIN), Fit::After(5_000_000));
        let r = s.report(&limit, Fit::Now, 1, MIN);
        assert_eq!((r.remaining, r.reset_after), (0, Duration::from_secs(5)));
        assert_eq!(charge(&mut s, &limit, 2, MIN + 5_000_000), Fit::Now);
    }
}
