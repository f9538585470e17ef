//! [`FallbackStore`]: a primary store (Redis) with a per-call timeout and a circuit breaker,
//! answering from memory while the primary is slow or down, and going back to it when it is
//! healthy again.
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use tollgate_redis::{FallbackConfig, FallbackStore, Mode, RedisStore};
//!
//! # async fn demo() -> Result<(), tollgate_redis::RedisConfigError> {
//! let redis = RedisStore::open("redis://127.0.0.1:6379/")?;
//! let config = FallbackConfig::default()
//!     .timeout(Duration::from_millis(50))
//!     .fallback_divisor(4); // 4 app instances: each admits a quarter while on memory
//! let store = FallbackStore::connect(redis, config).await; // never fails: memory if Redis is down
//! if store.mode() == Mode::Fallback {
//!     eprintln!("Redis unreachable at startup; limiting from memory meanwhile");
//! }
//! # Ok(()) }
//! ```
//!
//! # Behaviour
//!
//! - **Timeout**: every call to the primary is bounded by [`FallbackConfig::timeout`]; a call
//!   that takes longer is a failure, answered as below. No request waits on a dead or paused
//!   Redis longer than that. The abandoned call may still reach Redis and be counted there
//!   (see [the store's notes](crate::store#abandoned-calls)): while Redis is slow, a key may
//!   be charged up to (timeout × its request rate) more than it was answered.
//! - **Circuit breaker**: after [`FallbackConfig::failure_threshold`] failures in a row, the
//!   store switches to [`Mode::Fallback`]: calls no longer try the primary at all. A background
//!   task (on the tokio runtime) probes the primary, waiting [`FallbackConfig::probe_backoff`]
//!   between probes, doubling up to its maximum (250 ms by default); the first probe answered
//!   within the timeout switches back to [`Mode::Primary`], so the store is back on a primary
//!   that answers again within about 0.3 s, after a restart (a probe that finds the
//!   connection broken tries once more, on a new one) as after a pause. The probe is a write (a penalty on a key of its own,
//!   `tollgate-probe:health`, which expires within a second), so a Redis that answers reads
//!   but refuses writes (a read-only replica, `maxmemory` reached) stays on memory. If the
//!   circuit opens again within a few seconds of closing, probing resumes at the wait it had
//!   reached (doubled), not at the first one.
//! - **A failure is never a refusal**: what a failed call answers depends on the batch's
//!   [`FailureMode`]: [`FailureMode::Fallback`] (the default) decides from the in-memory
//!   store; [`FailureMode::Open`] and [`FailureMode::Closed`] return the [`StoreError`], for the
//!   caller to admit without headers or to answer 503.
//! - **Scaled limits**: while on memory each instance counts alone, so N instances admit N
//!   times the limit. [`FallbackConfig::fallback_divisor`] divides every limit (and burst) on
//!   memory by the expected number of instances.
//! - **Startup**: [`FallbackStore::connect`] probes once and starts on memory if the primary
//!   does not answer; [`FallbackStore::new`] probes in the background as soon as a tokio runtime
//!   runs it. Neither fails.
//! - **Observability**: each switch is a `tracing` event (target `tollgate::store`): `warn`
//!   when leaving the primary, with the reason, `info` when returning. [`FallbackStore::mode`]
//!   tells where decisions are made now.
//!
//! State is not copied between the stores: after a switch, counting starts from what the
//! other store had (memory starts empty the first time; Redis keeps what it had unless it
//! restarted empty).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tollgate_core::{
    Batch, BoxFuture, Bucket, Decision, FailureMode, Limit, MemoryStore, Op, Quota, Store,
    StoreError, StoreMode,
};

/// The default [`FallbackConfig::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// The default longest wait between two probes of a failed primary
/// ([`FallbackConfig::probe_backoff`]): a primary that answers again is used again within
/// about this long plus one call.
pub const DEFAULT_PROBE_MAX: Duration = Duration::from_millis(250);

/// Where a [`FallbackStore`] decides now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// On the primary store (Redis).
    Primary,
    /// On the in-memory store: the primary failed, and is being probed.
    Fallback,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Primary => "primary",
            Mode::Fallback => "fallback (memory)",
        })
    }
}

/// The settings of a [`FallbackStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackConfig {
    timeout: Duration,
    failure_threshold: u32,
    probe_min: Duration,
    probe_max: Duration,
    divisor: u32,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            failure_threshold: 3,
            probe_min: Duration::from_millis(100),
            probe_max: DEFAULT_PROBE_MAX,
            divisor: 1,
        }
    }
}

impl FallbackConfig {
    /// The longest a call may wait for the primary (at least 1 ms). Default
    /// [`DEFAULT_TIMEOUT`] (50 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How many failed calls in a row open the circuit (at least 1). Default 3.
    pub fn failure_threshold(mut self, failures: u32) -> Self {
        self.failure_threshold = failures.max(1);
        self
    }

    /// The wait before the first probe of a failed primary, and the most it grows to
    /// (doubling after each failed probe). Default 100 ms up to [`DEFAULT_PROBE_MAX`]
    /// (250 ms): a primary that answers again is used again within about 0.3 s, after a
    /// restart as after a pause. A probe of a primary that is down costs one connection
    /// attempt (refused at once) or one call cut short by the timeout.
    pub fn probe_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.probe_min = first.max(Duration::from_millis(1));
        self.probe_max = max.max(self.probe_min);
        self
    }

    /// Divide every limit by `instances` while deciding from memory (at least 1, the
    /// default): with N app instances each on its own memory, N × (limit / N) ≈ the limit.
    pub fn fallback_divisor(mut self, instances: u32) -> Self {
        self.divisor = instances.max(1);
        self
    }

    /// The per-call timeout.
    pub fn get_timeout(&self) -> Duration {
        self.timeout
    }

    /// The divisor applied to limits on memory.
    pub fn get_fallback_divisor(&self) -> u32 {
        self.divisor
    }
}

struct Shared<P> {
    primary: P,
    memory: MemoryStore,
    config: FallbackConfig,
    on_primary: AtomicBool,
    failures: AtomicU32,
    /// Why the circuit opened last.
    reason: Mutex<String>,
    /// When the circuit last closed, and the probe wait that preceded it.
    closed: Mutex<Option<(Instant, Duration)>>,
}

/// A [`Store`] that decides on `P` (usually [`RedisStore`](crate::RedisStore)) and falls back
/// to a [`MemoryStore`] when `P` fails or is slow. Clones share one state. See the
/// [module documentation](crate::fallback).
pub struct FallbackStore<P: Store> {
    shared: Arc<Shared<P>>,
}

impl<P: Store> Clone for FallbackStore<P> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<P: Store> fmt::Debug for FallbackStore<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackStore")
            .field("mode", &self.mode())
            .field("primary", &self.shared.primary)
            .field("config", &self.shared.config)
            .finish()
    }
}

/// What the probe asks: a write (a penalty of 1 on a key of its own, in a fixed window of
/// one second, so the key expires within a second), through the whole path (connection,
/// script, reply). A read is not enough: a Redis that answers reads but refuses writes (a
/// read-only replica after a failover, `maxmemory` reached) fails every charge.
fn probe_batch() -> Batch {
    Batch::new(
        Op::Penalize,
        vec![Bucket::new(
            "tollgate-probe",
            "health",
            Limit::fixed(Quota::per_second(1)),
        )],
    )
}

/// How long the primary must stay healthy after the circuit closed for the next trip to
/// probe from [`FallbackConfig::probe_backoff`]'s first wait again; a trip sooner carries
/// on the backoff where it was, so a primary that keeps failing soon after each probe is
/// probed less and less often.
const STABLE_AFTER: Duration = Duration::from_secs(5);

impl<P: Store> FallbackStore<P> {
    /// A fallback store over `primary` with the default settings and memory store.
    pub fn new(primary: P) -> Self {
        Self::with_config(primary, FallbackConfig::default())
    }

    /// A fallback store over `primary` with `config` and the default memory store.
    pub fn with_config(primary: P, config: FallbackConfig) -> Self {
        Self::with_memory(primary, MemoryStore::new(), config)
    }

    /// A fallback store over `primary` deciding from `memory` when it fails.
    ///
    /// It starts on the primary; if a tokio runtime is running, it checks the primary at
    /// once in the background and switches to memory if that fails. Without a runtime the
    /// first calls find out.
    pub fn with_memory(primary: P, memory: MemoryStore, config: FallbackConfig) -> Self {
        let store = Self::unchecked(primary, memory, config);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let shared = Arc::downgrade(&store.shared);
            runtime.spawn(async move {
                if let Some(shared) = shared.upgrade() {
                    if let Err(e) = shared.check().await {
                        shared.trip(&format!("at startup: {e}"));
                    }
                }
            });
        }
        store
    }

    /// A fallback store over `primary` that has checked it once (within the timeout): on
    /// the primary if it answered, otherwise on memory, probing in the background.
    pub async fn connect(primary: P, config: FallbackConfig) -> Self {
        let store = Self::unchecked(primary, MemoryStore::new(), config);
        if let Err(e) = store.shared.check().await {
            store.shared.trip(&format!("at startup: {e}"));
        }
        store
    }

    fn unchecked(primary: P, memory: MemoryStore, config: FallbackConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                primary,
                memory,
                config,
                on_primary: AtomicBool::new(true),
                failures: AtomicU32::new(0),
                reason: Mutex::new(String::new()),
                closed: Mutex::new(None),
            }),
        }
    }

    /// Where decisions are made now.
    pub fn mode(&self) -> Mode {
        if self.shared.on_primary.load(Ordering::Acquire) {
            Mode::Primary
        } else {
            Mode::Fallback
        }
    }

    /// The primary store.
    pub fn primary(&self) -> &P {
        &self.shared.primary
    }

    /// The in-memory store used while the primary fails.
    pub fn memory(&self) -> &MemoryStore {
        &self.shared.memory
    }

    /// The settings.
    pub fn config(&self) -> &FallbackConfig {
        &self.shared.config
    }
}

impl<P: Store> Shared<P> {
    /// One call to the primary within the timeout.
    async fn call(&self, batch: &Batch) -> Result<Decision, StoreError> {
        match tokio::time::timeout(self.config.timeout, self.primary.apply(batch)).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(self.config.timeout)),
        }
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.call(&probe_batch()).await.map(drop)
    }

    /// One probe of a failed primary. A call that fails other than by the timeout (a
    /// connection found broken, refused) is made once more at once: the first call that
    /// finds a connection broken is what makes the client connect again, so after a restart
    /// the second call goes through a new connection, and the switch back does not wait
    /// for the next probe.
    async fn probe_once(&self) -> Result<(), StoreError> {
        match self.check().await {
            Err(e @ StoreError::Timeout(_)) => Err(e),
            Err(_) => self.check().await,
            Ok(()) => Ok(()),
        }
    }

    /// Counts a failure; opens the circuit at the threshold.
    fn failed(self: &Arc<Self>, error: &StoreError) {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= self.config.failure_threshold {
            self.trip(&error.to_string());
        }
    }

    /// Switches to memory (if not already) and starts probing.
    fn trip(self: &Arc<Self>, reason: &str) {
        if !self.on_primary.swap(false, Ordering::AcqRel) {
            return;
        }
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = reason.to_owned();
        tracing::warn!(
            target: "tollgate::store",
            reason,
            timeout_ms = self.config.timeout.as_millis() as u64,
            "rate-limit store switched to the in-memory fallback"
        );
        let weak = Arc::downgrade(self);
        let max = self.config.probe_max;
        let first = match *self.closed.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((at, delay)) if at.elapsed() < STABLE_AFTER => (delay * 2).min(max),
            _ => self.config.probe_min,
        };
        tokio::spawn(probe(weak, first, max));
    }

    /// Answers a batch the primary could not.
    fn on_failure(&self, batch: &Batch, error: StoreError) -> Result<Decision, StoreError> {
        match batch.on_failure {
            FailureMode::Fallback => Ok(self.decide_in_memory(batch)),
            FailureMode::Open | FailureMode::Closed => Err(error),
        }
    }

    fn decide_in_memory(&self, batch: &Batch) -> Decision {
        if self.config.divisor <= 1 {
            return self.memory.apply_now(batch.op, &batch.buckets);
        }
        let scaled: Vec<Bucket> = batch
            .buckets
            .iter()
            .map(|b| {
                let mut scaled = b.clone();
                scaled.limit = b.limit.divided_by(self.config.divisor);
                scaled
            })
            .collect();
        self.memory.apply_now(batch.op, &scaled)
    }
}

/// Probes the primary with backoff until it answers, then switches back to it. Ends when
/// the store is dropped.
async fn probe<P: Store>(shared: Weak<Shared<P>>, first: Duration, max: Duration) {
    let mut delay = first;
    loop {
        tokio::time::sleep(delay).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match shared.probe_once().await {
            Ok(()) => {
                *shared.closed.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((Instant::now(), delay));
                shared.failures.store(0, Ordering::Release);
                shared.on_primary.store(true, Ordering::Release);
                tracing::info!(
                    target: "tollgate::store",
                    "rate-limit store back on the primary"
                );
                return;
            }
            Err(e) => tracing::debug!(
                target: "tollgate::store",
                error = %e,
                next_probe_ms = (delay * 2).min(max).as_millis() as u64,
                "rate-limit store primary still failing"
            ),
        }
        delay = (delay * 2).min(max);
    }
}

impl<P: Store> Store for FallbackStore<P> {
    /// The primary's mode while on it, [`StoreMode::Fallback`] while deciding from memory.
    fn mode(&self) -> StoreMode {
        if self.shared.on_primary.load(Ordering::Acquire) {
            self.shared.primary.mode()
        } else {
            StoreMode::Fallback
        }
    }

    fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(async move {
            batch.validate()?;
            let shared = &self.shared;
            if !shared.on_primary.load(Ordering::Acquire) {
                if batch.on_failure == FailureMode::Fallback {
                    return Ok(shared.decide_in_memory(batch));
                }
                let reason = shared
                    .reason
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                return Err(StoreError::Unavailable(format!("circuit open: {reason}")));
            }
            match shared.call(batch).await {
                Ok(decision) => {
                    shared.failures.store(0, Ordering::Release);
                    Ok(decision)
                }
                Err(e @ StoreError::InvalidBatch(_)) => Err(e),
                Err(e) => {
                    shared.failed(&e);
                    shared.on_failure(batch, e)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A primary whose writes of the probe succeed while every charge fails (a cluster
    /// whose probe slot is healthy, another not; a flaky network).
    #[derive(Debug)]
    struct ProbeOnly {
        memory: MemoryStore,
        probes: AtomicU32,
    }

    impl Store for ProbeOnly {
        fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
            Box::pin(async move {
                if batch.op == Op::Penalize {
                    self.probes.fetch_add(1, Ordering::Relaxed);
                    Ok(self.memory.apply_now(batch.op, &batch.buckets))
                } else {
                    Err(StoreError::Unavailable("charges fail".into()))
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_circuit_that_reopens_soon_after_closing_keeps_backing_off() {
        let primary = ProbeOnly {
            memory: MemoryStore::new(),
            probes: AtomicU32::new(0),
        };
        let config = FallbackConfig::default()
            .failure_threshold(1)
            .probe_backoff(Duration::from_millis(10), Duration::from_millis(640));
        let store = FallbackStore::with_config(primary, config);
        let batch = Batch::charge(vec![Bucket::new(
            "flap",
            "k",
            Limit::sliding(Quota::per_hour(1_000_000)),
        )]);
        let started = tokio::time::Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            assert!(store.apply(&batch).await.unwrap().allowed);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Waits 10, 20, ..., 320 ms (630 ms), then every 640 ms: about 10 probes in 3 s
        // (the startup check is one more). Starting again at 10 ms each time would be
        // hundreds.
        let probes = store.primary().probes.load(Ordering::Relaxed);
        assert!((5..=14).contains(&probes), "{probes} probes");
    }
}
