//! A reader that turns the fuzzer's bytes into choices (once the bytes run out every
//! read answers zero, so every input decodes to something), and a poll for futures that
//! never wait.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// The output of a future that is ready at once (the memory store's, axum's router with
/// handlers that do not wait). Panics if it is not ready after a few polls.
#[allow(dead_code)]
pub fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1000 {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
    panic!("a future that should be ready at once is still pending");
}

/// The fuzzer's bytes, read front to back.
pub struct Input<'a> {
    bytes: &'a [u8],
}

#[allow(dead_code)]
impl<'a> Input<'a> {
    /// Reads `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The next byte (0 once the input is spent).
    pub fn byte(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((&b, rest)) => {
                self.bytes = rest;
                b
            }
            None => 0,
        }
    }

    /// A flag.
    pub fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// A number in `0..n` (`n` at least 1).
    pub fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0);
        if n <= 256 {
            usize::from(self.byte()) % n
        } else {
            self.u32() as usize % n
        }
    }

    /// One of `items` (not empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// A run of at most `max` bytes: a length byte, then that many bytes.
    pub fn bytes(&mut self, max: usize) -> &'a [u8] {
        let len = self.below(max + 1).min(self.bytes.len());
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        taken
    }

    /// What is left, consumed.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
}

#[allow(dead_code)]
impl Input<'_> {
    /// A limit of any algorithm: a period from `periods_ms`, a count that is 1 to 65,536
    /// once in `count_cases` (1 once, else 1 to 8).
    pub fn limit(&mut self, periods_ms: &[u64], count_cases: usize) -> tollgate_limits::Limit {
        use tollgate_limits::{Limit, Quota};
        let count = match self.below(count_cases) {
            0 => 1 + u64::from(self.u16()),
            1 => 1,
            _ => 1 + self.below(8) as u64,
        };
        let period = std::time::Duration::from_millis(self.pick(periods_ms));
        let quota = Quota::new(count, period).expect("a valid quota");
        match self.below(6) {
            0 => Limit::sliding_exact(quota),
            1 => Limit::fixed(quota),
            2 => Limit::token_bucket(quota, 1 + self.below(10) as u64)
                .unwrap_or_else(|_| Limit::sliding(quota)),
            3 => Limit::sliding_segments(quota, 1 + self.below(20) as u32)
                .unwrap_or_else(|_| Limit::sliding(quota)),
            _ => Limit::sliding(quota),
        }
    }
}
