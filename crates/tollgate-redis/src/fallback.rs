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
//!     .with_timeout(Duration::from_millis(50))
//!     .with_fallback_divisor(4); // 4 app instances: each admits a quarter while on memory
//! let store = FallbackStore::connect(redis, config).await; // never fails: memory if Redis is down
//! if store.mode() == Mode::Fallback {
//!     eprintln!("Redis unreachable at startup; limiting from memory meanwhile");
//! }
//! # Ok(()) }
//! ```
//!
//! # Behaviour
//!
//! - **Timeout**: every call to the primary is bounded by [`FallbackConfig::with_timeout`]; a call
//!   that takes longer is a failure, answered as below, unless it is queued behind
//!   answers: at its timeout a call waits on, a timeout at a time, up to the patience
//!   ([`FallbackConfig::with_patience`]; 20 timeouts, 1 s, by default), while the primary
//!   answers other calls (over one connection, answered in order,
//!   [`Primary::answers_in_order`], as [`RedisStore`] on one server: any answer; over
//!   several, only while none sent a timeout or more after it was answered), or when its
//!   timer ran half a timeout or more late (the instance too busy to run it on
//!   time). A burst on one connection, or an instance slow to read its answers, is not a
//!   primary that stopped answering (a review's burst of 300 requests at once on a healthy
//!   Redis timed out by the dozen at 50 ms, and seed 002, failing open, admitted them all);
//!   a dead Redis Cluster node or a broken pooled connection, while others answer, is
//!   (later calls are answered first: such a call fails at its second timeout at the
//!   latest), and answers from [`RedisStore`]'s refusal cache are no sign of Redis. The
//!   patience counts from when the request came: one that first waited for a check of the
//!   primary under way, or whose call is made again through a fresh connection, waits it
//!   in all, each call its first timeout at least (past a check that took all of it, one
//!   timeout more for its call). A request waits on a dead or
//!   paused Redis no longer than the timeout, or twice it for a call in flight when Redis stopped behind
//!   calls it then answered, plus, if it comes while the store checks a primary that
//!   just failed, the check (see the circuit breaker and the give-back below): a review saw
//!   one request of a fail-open policy answered in 1,006 ms at a timeout of 500 ms, the
//!   others in 505 ms, as Redis was paused. The abandoned call may still reach Redis and
//!   be counted there (see [the store's notes](crate::store#abandoned-calls)): while Redis
//!   is slow, a key may be charged up to (the time a call waits × its request rate) more
//!   than it was answered.
//! - **On memory until checked**: a failed call switches the store to [`Mode::Fallback`] at
//!   once, and a background task (on the tokio runtime) checks the primary at once, then
//!   again after [`FallbackConfig::with_probe_backoff`]'s first wait, doubling up to its maximum
//!   (250 ms by default). A check is a write (a penalty on a key of its own,
//!   `tollgate-probe:health`, which expires within a second), so a Redis that answers reads
//!   but refuses writes (a read-only replica, `maxmemory` reached) stays on memory; a check
//!   that finds the connection broken tries once more, on a new one. The first check that
//!   passes (and the give-back below) switches back to [`Mode::Primary`]: a blip costs one
//!   round trip on memory, and a primary that answers again after a restart or a pause is
//!   used again within about 0.3 s. If the store leaves the primary again within a few
//!   seconds of returning, checking resumes at the wait it had reached (doubled); after a
//!   connection that broke, the first check is still made at once.
//! - **A broken connection is made again**: a call that fails because its connection broke
//!   ([`Primary::connection_broke`]: on [`RedisStore`], a broken pipe or a reset, as when
//!   Redis's `timeout` closed an idle connection, `CLIENT KILL`, or a proxy dropping idle
//!   connections) is made once more, through a fresh connection, with a first timeout of
//!   its own (waiting on queued behind answers within what remains of the request's
//!   patience), and decided by the primary: memory never decides for a primary that answers
//!   (it has not seen what other instances charged). Not after a restart: when the
//!   primary's incarnation changed, the call fails as before, and the check writes the
//!   counts back before the primary decides again. Other requests may go through the
//!   fresh connection while that call asks the incarnation: an admission waits until it
//!   knows (up to its patience). If the primary restarted, or the call could not tell,
//!   the admission stands only if memory has room for it too; else it is refused, its
//!   charge on the restarted primary left to the write-back: an emptied primary admits
//!   what it forgot (374 of 100 in one run of a burst while the question was slow, when
//!   its admissions stood). Such answers, and those that came after the store left the
//!   primary, are not memory's counts: what the primary admitted is added to memory's
//!   count, since a primary that restarted holds what other instances admitted on their
//!   own shares after it (taken as this instance's share of the count, it cost this
//!   instance what another spent: two instances admitted 364 to 500 of 500 in a review's
//!   burst after an idle restart); what it refuses them raises memory's count of the key
//!   to this instance's share of the primary's (plus what memory admitted that the
//!   primary does not have), so a key the fleet spent on the restarted primary is not
//!   admitted again from memory. A call whose connection broke after the primary ran it
//!   counts twice (as an abandoned call may). A timeout, or an error the primary answered
//!   (`NOSCRIPT`, `OOM`, `NOPERM`), is not made again.
//! - **Circuit breaker**: [`FallbackConfig::with_failure_threshold`] failures in a row (the
//!   call that took the store off the primary, then each failed check) are an outage:
//!   logged at `warn`, and batches with [`FailureMode::Open`] or [`FailureMode::Closed`] no
//!   longer try the primary. Calls that fail together with the one that left count as
//!   one: they were under way at the same time, one sign of trouble, not several (a
//!   burst that held up a healthy Redis is not an outage, and a review saw seed 002,
//!   failing open, admit unchecked for seconds after one when each of them counted).
//!   Below it, those batches wait for the check under way to end (as long as a call
//!   waits: past the timeout only while the primary answers or the instance is too busy
//!   to run its timers on time; between checks, up to the call timeout) and are decided
//!   on the primary once it passed, never before: the primary may have
//!   restarted empty, and is used again only after what it forgot was written back. A
//!   wait that ends without it answers the batch's failure, and is not counted.
//! - **A failure is never a refusal**: what a failed call answers depends on the batch's
//!   [`FailureMode`]: [`FailureMode::Fallback`] (the default) decides from the in-memory
//!   store; [`FailureMode::Open`] and [`FailureMode::Closed`] return the [`StoreError`], for the
//!   caller to admit without headers or to answer 503.
//! - **Scaled limits**: while on memory each instance counts alone, so N instances admit N
//!   times the limit. [`FallbackConfig::with_fallback_divisor`] divides every limit (and burst) on
//!   memory by the expected number of instances. With a divisor above 1, for
//!   [`FallbackConfig::with_return_grace`] after a return to the primary (350 ms by default)
//!   a charge must fit this instance's share in memory as well as the primary: the other
//!   instances may still decide from memory, and the primary lacks what they admitted
//!   until each gives it back, so the first instance back would admit it a second time.
//! - **Startup**: [`FallbackStore::connect`] probes once and starts on memory if the primary
//!   does not answer; [`FallbackStore::new`] probes in the background, at once if made in a
//!   tokio runtime, otherwise at its first call. Neither fails.
//! - **Runtimes**: the store's background tasks (the first check, the watch of the
//!   primary's incarnation, the checks that bring it back from memory) run on the runtime
//!   of the call that started them, and end with it. A store used by one runtime after
//!   another (a limiter in a `static` shared by `#[tokio::test]`s, each ending its own
//!   runtime; a runtime used only at start-up) has those its last runtime took with it
//!   started again by its next call, on that call's runtime, and they do their work if
//!   that runtime runs long enough: a store that left the primary returns to it in a
//!   runtime that lives until a check passes (within about 0.3 s of the primary
//!   answering), not in one that ends with the call that started the check (a test making
//!   one call). [`RedisStore`]'s connection is made afresh on the runtime of the first
//!   call after the one it was made on ended (it needs that runtime's driver and timers);
//!   a runtime kept but no longer driven (a current-thread runtime kept after its
//!   `block_on`) is not ended: calls through a connection it made time out until it is
//!   renewed, after a second of failures. End (drop) such a runtime, or make the
//!   connection in the runtime that serves.
//!   Until its first check has run to its end, a store does not know the primary's
//!   incarnation: a connection found broken then takes it to memory until a check passes,
//!   and a restart before that is not told from a broken connection.
//! - **Observability**: an outage is a `tracing` event (target `tollgate::store`): `warn`
//!   when the store leaves the primary for it, with the reason, `info` when it returns; a
//!   primary that restarted is a `warn`. A departure short of an outage (one call timed
//!   out, a connection broke: memory decides until a check passes) is a `warn` too, at most
//!   once a minute, counting the departures since the last (each is a `debug` event), and
//!   the return from one so logged an `info`. Why a fresh connection fails, when a check
//!   only timed out or found its connection broken ([`Primary::diagnose`]: a wrong
//!   password, a refused connection), is a `warn` at most once a minute while it says the
//!   same, and joins the reason. [`FallbackStore::mode`] tells where decisions are made
//!   now.
//!
//! # Nothing is forgotten
//!
//! - **The mirror**: every answer of the primary's backend is kept: in the memory store
//!   (each key's count, [`MemoryStore::mirror`]), and in a ledger of the keys used recently (the key,
//!   its limit and the count the primary reported; at most [`FallbackConfig::with_mirror_keys`]
//!   keys, keys at their limit and keys owing charges kept longest). A memory write next to
//!   a network round trip. So deciding from memory starts from what Redis last told this
//!   instance: a key over its limit before the outage stays refused through it, and a key
//!   at 3 of 5 has 2 left, not 5. (A reply to a call sent before the store left the primary
//!   is not taken as memory's count: it may come from a Redis that restarted empty, and
//!   memory may have admitted more since; what it admitted is added to memory's count
//!   instead, since its request was admitted. And while memory decides, the charges still
//!   under way on the primary count there as admitted (a request fits only with them on
//!   top), so memory does not admit up to the limit before such answers arrive. Nor is a
//!   refusal served
//!   from [`RedisStore`]'s refusal cache ([`Origin::Cache`]): it repeats counts Redis
//!   reported earlier, which may be older than those kept since.)
//! - **The give-back**: what memory decides while the primary fails (admitted charges,
//!   penalties, less refunds; resets) is noted in the ledger, and charged to the primary
//!   (penalties, 64 keys a call) before the store decides on it again. A reset is given
//!   back as a refund of what the primary had last reported counted for the key (if that
//!   still counts): what the key counted when it was reset, as far as this instance knew.
//!   Not as a reset, which would also take away what other instances counted on the
//!   primary since (a sign-in's reset noted during one instance's outage lifted a lockout
//!   that formed through another instance meanwhile); what the primary counted that this
//!   instance never saw stays counted. So the count after
//!   an outage includes what was admitted during it, as far as it still counts then: no
//!   more than memory's own count of the key at that moment (a token bucket's refill
//!   during the outage, a fixed window's earlier windows and a rolling window's admissions
//!   older than its window are not charged again). What memory admits while a give-back
//!   runs is given back too, before the store decides on the primary: the give-back is
//!   repeated until about one call's worth is owed, and the last one runs while memory
//!   decides nothing (a decision waits for the return, up to the call timeout, then is
//!   decided on the primary; one that waited longer is decided from memory and given back
//!   just after the return, and if that fails the store leaves the primary again). A
//!   give-back's answers only raise memory's count of a key, to the primary's count plus
//!   what memory admitted since the debt was taken. What is charged is placed to be fresh
//!   again when memory's count of the key would be ([`Primary::give_back`]: a rolling
//!   window's at the newest admission memory counted, a token bucket's as the time memory
//!   still owed), so a client that waits the `Retry-After` memory announced is admitted
//!   once the primary is back. A key memory dropped to make room gives back
//!   only what memory counted of it since. What cannot be delivered is kept for the next
//!   check.
//! - **An empty restart**: each check asks the primary's incarnation ([`Primary`]: Redis's
//!   `run_id`, from `INFO server`, and its replication id, from `INFO replication`). When
//!   it changed, the primary restarted, or was made a replica (a full sync replaces its
//!   keys with its master's) and a master again, and may have come back without its
//!   counts: every key of the ledger whose reported count still counts is raised back
//!   to at least that count ([`Primary::restore`]: on [`RedisStore`] one script call that
//!   leaves a key counting as much alone, so instances writing back at the same moment
//!   raise it to the larger of their counts, not their sum, and a Redis that restarted
//!   from a snapshot is not charged twice; what a key lacks is placed to leave the window
//!   when the newest admission the count includes would have: the ledger holds a key's
//!   count and when it is fresh again, not when each admission leaves), before the
//!   give-back. Through one
//!   multiplexed connection (the default, RESP2) a restart is always seen (once the first
//!   check learnt the incarnation: see **Runtimes** above): the first call
//!   on the old connection fails, and that failure starts a check, the store's own question
//!   of the incarnation (below) included, which is that first call when the instance was
//!   idle through the restart (the client connects afresh after it, and requests through
//!   the new connection would not fail: a review had three idle instances admit 800 of 500
//!   on the emptied Redis before the next question). Through a pool (which
//!   replaces broken connections quietly) or RESP3 (which reconnects by itself), and for a
//!   primary that took another server's data without a call failing (made a replica and a
//!   master again, its connection kept), the store on the primary asks its incarnation
//!   every [`WATCH_EVERY`] (1 s) and checks it as a failed one when it changed. A key
//!   decided on it before then is decided on the count it has, and that is the count
//!   this instance learns and writes back: what the key counted before is lost (a re-check:
//!   a key used a second after the change was admitted its limit again).
//! - **Several instances**: with `fallback_divisor(N)`, each instance's share of what Redis
//!   last said remained (rounded up) is what it has left on memory, so N instances behind a
//!   balancer that spreads each client's requests admit at most what remained plus N, when
//!   all of them are on memory. An instance that had not seen a key starts it at its
//!   divided limit. When only some lose the primary (a `maxclients` refusal, a stalled
//!   path, one instance's timeouts), the others decide on the primary, which does not see
//!   what memory admits until the give-back: k of N on memory admit up to the limit plus
//!   k/N of it, charged to the primary when they return.
//!
//! Bounds: one client sending one request at a time is admitted at most the limit plus one
//! across a kill, a pause, an empty restart or a Redis refusing writes (the request in
//! flight at the switch: its answer came from Redis but, sent before the switch, was not
//! kept); `tests/outage.rs` holds each. Memory stays bounded whatever keys clients invent:
//! the memory store by its own bounds, the ledger by [`FallbackConfig::with_mirror_keys`]
//! (about 150 bytes a key). The bound above holds while the keys to remember fit in the
//! ledger: when more keys are used than it holds, it forgets first what could admit least
//! beyond a limit (keys below their limit before keys at it, the smallest share of its
//! limit held first), so a flood of invented keys, each a request or two into its limit,
//! forgets its own records before those of a client near or at its limit (keys a flood
//! pushes to their own limit rank with those); a debt forgotten is counted
//! ([`FallbackStore::lost_give_backs`]) and logged as a warning (at most every 10 s).

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use tollgate_limits::{
    Algorithm, Batch, BoxFuture, Bucket, BucketState, Decision, FailureMode, Limit, MemoryStore,
    Op, Quota, Refusal, Store, StoreError, StoreMode,
};

use crate::ledger::{Ledger, Owed};
use crate::store::{RedisStore, MIN_TIMEOUT};
use crate::under_way::UnderWay;

/// The default per-call timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// The longest timeout and probe wait [`FallbackConfig`] takes (an hour): a longer one is
/// taken as this. (A wait of `Duration::MAX` overflowed the clock: the store panicked when
/// it was made.)
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

/// The default longest wait between two probes of a failed primary
/// ([`FallbackConfig::with_probe_backoff`]): a primary that answers again is used again within
/// about this long plus one call.
pub const DEFAULT_PROBE_MAX: Duration = Duration::from_millis(250);

/// The default for [`FallbackConfig::with_mirror_keys`]: how many keys the store remembers
/// what Redis told it about (and what it owes Redis).
pub const DEFAULT_MIRROR_KEYS: usize = 50_000;

/// How many keys one call of the give-back carries.
const GIVE_BACK_BATCH: usize = 64;

/// How many give-backs at most, after the first, before the last one (during which memory
/// decides nothing): each gives back what memory decided during the one before, until
/// about one call's worth is owed.
const GIVE_BACK_ROUNDS: usize = 8;

/// Where a [`FallbackStore`] decides now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// On the primary store (Redis).
    Primary,
    /// On the in-memory store: the primary failed, and is being checked.
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
    patience: u32,
    failure_threshold: u32,
    probe_min: Duration,
    probe_max: Duration,
    divisor: u32,
    mirror_keys: usize,
    return_grace: Option<Duration>,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            patience: DEFAULT_PATIENCE,
            failure_threshold: 3,
            probe_min: Duration::from_millis(100),
            probe_max: DEFAULT_PROBE_MAX,
            divisor: 1,
            mirror_keys: DEFAULT_MIRROR_KEYS,
            return_grace: None,
        }
    }
}

/// Setters are `with_*` (by value, for chaining from [`FallbackConfig::default`]);
/// getters are the plain names.
impl FallbackConfig {
    /// The longest a call may wait for the primary while it answers nothing (at least
    /// 1 ms, at most [`MAX_WAIT`]); while it answers other calls, up to the patience
    /// ([`FallbackConfig::with_patience`]) times this. Default [`DEFAULT_TIMEOUT`] (50 ms).
    /// The primary's own timeout applies too: a [`RedisStore`] gives up after its response
    /// timeout (500 ms by default); make it with
    /// [`RedisStoreBuilder::for_fallback`](crate::RedisStoreBuilder::for_fallback) to wait
    /// this long (the stores made from the environment and from files are).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.clamp(MIN_TIMEOUT, MAX_WAIT);
        self
    }

    /// How many timeouts in all a call may wait while it is queued behind the primary's
    /// answers (at least 1, which waits one timeout whatever comes); a request that first
    /// waits for a check of the primary under way waits this long in all, check and call
    /// (its call waits one timeout at least). Default
    /// [`DEFAULT_PATIENCE`] (20: 1 s at the default timeout). At its timeout a call waits
    /// on, a timeout at a time, while the primary answers other calls (its answer is
    /// queued behind theirs: over one connection answered in order,
    /// [`Primary::answers_in_order`], whatever calls they were; over several, only while
    /// none sent a timeout or more after it was answered), or when its timer ran half a
    /// timeout or more late (the instance's runtime too busy to run it on time); a primary
    /// that answers nothing, or over several connections answers later calls first (a
    /// dead Redis Cluster node, a broken pooled connection), fails it at the timeout. The
    /// price: a burst on a healthy but slow instance waits for its answers, up to this
    /// many timeouts, where it would have been decided from memory (or failed open or
    /// closed) at the first.
    pub fn with_patience(mut self, timeouts: u32) -> Self {
        self.patience = timeouts.max(1);
        self
    }

    /// How many failures in a row (the call that took the store off the primary, then
    /// each failed check of it; calls failing together count once) make an outage (at
    /// least 1). Default 3. Below it, the store answers from memory only until one check
    /// of the primary passes, and batches with [`FailureMode::Open`] or
    /// [`FailureMode::Closed`] still try the primary; at it, the switch is logged at
    /// `warn`, those batches fail at once, and checks back off
    /// ([`FallbackConfig::with_probe_backoff`]).
    pub fn with_failure_threshold(mut self, failures: u32) -> Self {
        self.failure_threshold = failures.max(1);
        self
    }

    /// The wait before the second check of a failed primary (the first is made at once),
    /// and the most it grows to (doubling after each failed check). Default 100 ms up to
    /// [`DEFAULT_PROBE_MAX`] (250 ms): a primary that answers again is used again within
    /// about 0.3 s, after a restart as after a pause. Each is at least 1 ms and at most
    /// [`MAX_WAIT`]. A check of a primary that is down
    /// costs one connection attempt (refused at once) or one call cut short by the timeout.
    pub fn with_probe_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.probe_min = first.clamp(Duration::from_millis(1), MAX_WAIT);
        self.probe_max = max.clamp(self.probe_min, MAX_WAIT);
        self
    }

    /// Divide every limit by `instances` while deciding from memory (at least 1, the
    /// default): with N app instances each on its own memory, N × (limit / N) ≈ the limit.
    pub fn with_fallback_divisor(mut self, instances: u32) -> Self {
        self.divisor = instances.max(1);
        self
    }

    /// How many keys the store remembers what the primary last told it about, and what it
    /// decided from memory since (see the [module documentation](crate::fallback)). Default
    /// [`DEFAULT_MIRROR_KEYS`]; 0 turns the mirror off (memory then starts empty at each
    /// outage, and nothing is given back).
    pub fn with_mirror_keys(mut self, keys: usize) -> Self {
        self.mirror_keys = keys;
        self
    }

    /// How long, after the store returns to the primary from an outage, a charge must fit
    /// this instance's share on memory as well as on the primary, when the divisor is above
    /// 1 (a fleet). Other instances may still be on memory then, their admissions not yet
    /// given back to the primary: without it, the first instance back would admit on the
    /// primary what they spent meanwhile a second time (a review: 651 of 500 admitted by
    /// two instances when Redis came back). Default: the longest wait between checks plus
    /// two call timeouts (350 ms with the defaults), the time within which another instance
    /// checks the primary again and gives its admissions back. Set it longer if the
    /// instances' check settings differ, or if an instance may owe many keys (a give-back
    /// carries 64 keys a call). Penalties, refunds and resets answered by the primary
    /// meanwhile are made on the share too (a charge with a bucket whose cost is above its
    /// share is decided by the primary alone, and counted on the share once admitted); at
    /// its end each key's count in memory is raised to the instance's share of what the
    /// primary last reported, as outside that time.
    pub fn with_return_grace(mut self, grace: Duration) -> Self {
        self.return_grace = Some(grace);
        self
    }

    /// How long after a return a charge must fit this instance's share too
    /// ([`FallbackConfig::with_return_grace`]).
    pub fn return_grace(&self) -> Duration {
        self.return_grace.unwrap_or(
            self.probe_max
                .saturating_add(self.timeout.saturating_mul(2)),
        )
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How many timeouts in all a call may wait while queued behind answers
    /// ([`FallbackConfig::with_patience`]).
    pub fn patience(&self) -> u32 {
        self.patience
    }

    /// How many failures in a row make an outage.
    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold
    }

    /// The first and the longest wait between checks of a failed primary.
    pub fn probe_backoff(&self) -> (Duration, Duration) {
        (self.probe_min, self.probe_max)
    }

    /// The divisor applied to limits on memory.
    pub fn fallback_divisor(&self) -> u32 {
        self.divisor
    }

    /// How many keys the mirror holds at most.
    pub fn mirror_keys(&self) -> usize {
        self.mirror_keys
    }
}

/// Where an answer of a [`Primary`] comes from ([`Primary::apply_with_origin`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Origin {
    /// The primary's backend decided this call (Redis ran the script): the counts are the
    /// newest it reported. A [`FallbackStore`] mirrors them.
    Backend,
    /// A cache local to the primary answered without asking its backend
    /// ([`RedisStore`]'s refusal cache), repeating counts the backend reported earlier:
    /// they may be older than what the [`FallbackStore`] already holds, so it does not
    /// mirror them.
    Cache,
}

/// What a [`FallbackStore`] asks of its primary besides deciding: where each answer comes
/// from, so that only answers fresh from the backend are mirrored, and which incarnation
/// of it answers, so that a primary that restarted (possibly empty) is told the counts
/// again.
pub trait Primary: Store {
    /// [`Store::apply`], and where the answer comes from. The default asks
    /// [`Store::apply`] and answers [`Origin::Backend`]: a primary that answers some calls
    /// from a local cache overrides it (as [`RedisStore`] does), and a wrapper around such
    /// a primary forwards it.
    fn apply_with_origin<'a>(
        &'a self,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<(Decision, Origin), StoreError>> {
        Box::pin(async move { Ok((self.apply(batch).await?, Origin::Backend)) })
    }

    /// How long the primary itself waits for an answer before its call fails, if it has
    /// such a limit: a [`FallbackStore`] whose timeout
    /// ([`FallbackConfig::with_timeout`]) is longer sees its calls fail at this one, and
    /// warns when it is made. `None` (the default): no limit of its own, or it cannot tell.
    fn gives_up_after(&self) -> Option<Duration> {
        None
    }

    /// Whether the primary answers every call through one connection, in the order the
    /// calls reach it (a multiplexed connection): while it answers any call, one of its
    /// calls still unanswered is queued behind them, not lost, whichever was made first.
    /// A [`FallbackStore`] then waits on for such a call while answers come (up to its
    /// patience, [`FallbackConfig::with_patience`]), where with several connections (a
    /// pool, Redis Cluster's nodes) it waits only while calls made after it are not
    /// answered, one of them possibly dead. (A connection replaced while calls on the old
    /// one are under way, as [`RedisStore`] replaces one that failed every call for a
    /// second, answers beside it: those calls may then wait their patience.) `false` (the
    /// default): several connections, or it cannot tell.
    fn answers_in_order(&self) -> bool {
        false
    }

    /// An identifier of the primary's current incarnation (Redis's `run_id` and replication
    /// id): when it changes between two checks, the primary restarted, or took another's
    /// data, and may have lost its state.
    /// `None` (the default) if the primary cannot tell.
    fn incarnation(&self) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Whether `error` says the connection to the primary broke (closed by the server, reset,
    /// a broken pipe: an idle connection Redis's `timeout` closed, `CLIENT KILL`, a proxy
    /// dropping idle connections), so that the same call through a fresh connection may
    /// pass. Not a timeout, and not an answer of the primary (Redis's `NOSCRIPT`, `OOM`,
    /// `NOPERM`): those would fail again. A [`FallbackStore`] makes such a call once more
    /// (within the call's timeout) before it decides from memory. `false` (the default):
    /// never made again.
    fn connection_broke(&self, error: &StoreError) -> bool {
        let _ = error;
        false
    }

    /// Which part of the primary `bucket`'s key is written in: a call for keys of one part
    /// is applied whole or not at all, where a call across parts may be applied in some and
    /// fail in others (Redis Cluster's hash slots). A give-back after an outage goes in
    /// calls of one part each, so that one that fails is given again alone, not with what
    /// other parts took already. The default: one part.
    fn part_of(&self, bucket: &Bucket) -> u64 {
        let _ = bucket;
        0
    }

    /// Why the primary cannot be reached, when a check only timed out or found its
    /// connection broken: the error of a connection made afresh (a wrong password, a
    /// database that does not exist, a password asked for since, a refused connection),
    /// which a connection that retries by itself hides behind the timeout or a broken pipe.
    /// It is logged (`warn`) and added to the reason the store gives. `None` (the default)
    /// if the primary cannot tell.
    fn diagnose(&self) -> BoxFuture<'_, Option<String>> {
        Box::pin(std::future::ready(None))
    }

    /// After the primary restarted empty: raises each bucket's key to at least
    /// `bucket.cost` counted, fresh again in the duration beside it; a key that counts as
    /// much already is left alone. Answers one state per bucket. The default reads the
    /// keys, then charges what each lacks (placed now): two calls, so primaries restoring
    /// at the same moment can each read a key empty and each charge it. [`RedisStore`]
    /// does it in one script call, placing what it adds as late as its freshness allows.
    fn restore<'a>(
        &'a self,
        owed: &'a [(Bucket, Duration)],
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(async move {
            let buckets = owed.iter().map(|(b, _)| b.clone()).collect();
            let seen = self.apply(&Batch::new(Op::Peek, buckets)).await?;
            let mut states = seen.buckets;
            let lacking: Vec<(usize, Bucket)> = owed
                .iter()
                .zip(&states)
                .enumerate()
                .filter_map(|(i, ((b, _), s))| {
                    let held = b.limit.capacity().saturating_sub(s.remaining);
                    let raise = b.cost.saturating_sub(held);
                    (raise > 0).then(|| (i, b.clone().with_cost(raise)))
                })
                .collect();
            if lacking.is_empty() {
                return Ok(Decision {
                    buckets: states,
                    ..seen
                });
            }
            let (at, raises): (Vec<usize>, Vec<Bucket>) = lacking.into_iter().unzip();
            let raised = self.apply(&Batch::new(Op::Penalize, raises)).await?;
            for (i, state) in at.into_iter().zip(raised.buckets) {
                states[i] = state;
            }
            Ok(Decision {
                allowed: true,
                now: raised.now,
                buckets: states,
            })
        })
    }

    /// After an outage: adds each bucket's cost to its key, what memory admitted while the
    /// primary failed, fresh again in the duration beside it (when memory's count of the
    /// key would be). Answers one state per bucket. The default charges it as a penalty,
    /// placed now: a rolling window then counts it up to a window longer than memory
    /// would have. [`RedisStore`] places it as late as its freshness allows, as a restore
    /// does, so that it leaves when memory's count would have.
    fn give_back<'a>(
        &'a self,
        owed: &'a [(Bucket, Duration)],
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(async move {
            let batch = Batch::new(Op::Penalize, owed.iter().map(|(b, _)| b.clone()).collect());
            self.apply(&batch).await
        })
    }
}

impl Primary for RedisStore {
    /// [`Origin::Cache`] for a refusal from the refusal cache.
    fn apply_with_origin<'a>(
        &'a self,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<(Decision, Origin), StoreError>> {
        Box::pin(self.decide(batch))
    }

    fn diagnose(&self) -> BoxFuture<'_, Option<String>> {
        Box::pin(self.connect_error())
    }

    /// Its response timeout ([`RedisStoreBuilder::response_timeout`](crate::RedisStoreBuilder::response_timeout)),
    /// on a server as on Redis Cluster; `None` for a deadpool-redis pool, whose own
    /// configuration applies.
    fn gives_up_after(&self) -> Option<Duration> {
        RedisStore::gives_up_after(self)
    }

    /// On one server through its multiplexed connection; not through a pool, nor on Redis
    /// Cluster.
    fn answers_in_order(&self) -> bool {
        RedisStore::answers_in_order(self)
    }

    /// An I/O error that says the connection dropped (a broken pipe, a reset, the server
    /// closing it), not a refused connection nor a timeout.
    fn connection_broke(&self, error: &StoreError) -> bool {
        crate::store::connection_broke(error)
    }

    /// [`RedisStore::incarnation`]: its `run_id` and replication id.
    fn incarnation(&self) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        Box::pin(RedisStore::incarnation(self))
    }

    /// Its hash slot on Redis Cluster; one part otherwise.
    fn part_of(&self, bucket: &Bucket) -> u64 {
        // (`Slot` shows no number: its hash stands for it.)
        let hasher = std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default();
        self.slot_of(bucket)
            .map_or(0, |slot| std::hash::BuildHasher::hash_one(&hasher, slot))
    }

    /// In one script call per hash slot ([`RedisStore`]'s `restore`).
    fn restore<'a>(
        &'a self,
        owed: &'a [(Bucket, Duration)],
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(RedisStore::restore(self, owed))
    }

    /// In one script call per hash slot ([`RedisStore`]'s `give_back`).
    fn give_back<'a>(
        &'a self,
        owed: &'a [(Bucket, Duration)],
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(RedisStore::give_back(self, owed))
    }
}

impl<P: Primary + ?Sized> Primary for Arc<P> {
    fn apply_with_origin<'a>(
        &'a self,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<(Decision, Origin), StoreError>> {
        (**self).apply_with_origin(batch)
    }

    fn incarnation(&self) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        (**self).incarnation()
    }

    fn restore<'a>(
        &'a self,
        owed: &'a [(Bucket, Duration)],
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        (**self).restore(owed)
    }

    fn give_back<'a>(
        &'a self,
        owed: &'a [(Bucket, Duration)],
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        (**self).give_back(owed)
    }

    fn diagnose(&self) -> BoxFuture<'_, Option<String>> {
        (**self).diagnose()
    }

    fn gives_up_after(&self) -> Option<Duration> {
        (**self).gives_up_after()
    }

    fn part_of(&self, bucket: &Bucket) -> u64 {
        (**self).part_of(bucket)
    }

    fn connection_broke(&self, error: &StoreError) -> bool {
        (**self).connection_broke(error)
    }
}

/// A charge made on this instance's share in memory just after a return to the primary
/// ([`Shared::charge_share`]): the buckets as memory decided them, and its decision.
struct Share {
    scaled: Vec<Bucket>,
    decision: Decision,
}

/// A call that found its connection broken, asking whether the primary restarted
/// ([`Shared::call_again_if_broken`]), until dropped: meanwhile the primary's answers are
/// not taken as memory's counts ([`Shared::sure`]), and its admissions wait for it to know
/// ([`Shared::until_sure`]). Held until the store left the primary if it did.
struct Unsure<'a, P> {
    shared: &'a Shared<P>,
    /// Whether the call found the primary restarted, or could not tell: counted in
    /// [`Shared::restarts`] once the store left the primary, before this is dropped.
    doubts: bool,
    /// Whether the call learnt the answer (`doubts` says it). One dropped before (its
    /// request cancelled while it asked) sets [`Shared::ask_again`] as it goes: the
    /// admissions waiting for it are then looked at in memory, not taken as a healthy
    /// primary's, and the next request takes the store off the primary to check it, as
    /// the call would have, counting a restart once it left.
    known: bool,
}

impl<'a, P> Unsure<'a, P> {
    fn new(shared: &'a Shared<P>) -> Self {
        shared.unsure.fetch_add(1, Ordering::AcqRel);
        Self {
            shared,
            doubts: false,
            known: false,
        }
    }
}

impl<P> Drop for Unsure<'_, P> {
    fn drop(&mut self) {
        if !self.known {
            self.shared.ask_again.store(true, Ordering::Release);
        }
        if self.shared.unsure.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.sure_again.notify_waiters();
        }
    }
}

/// Set in [`Shared::state`] while decisions are made on the primary; the bits above count
/// the departures from it.
const ON_PRIMARY: u64 = 1;

/// The most charges [`Shared::late_admissions`] keeps until the next check.
const LATE_ADMISSIONS: usize = 10_000;

struct Shared<P> {
    primary: P,
    memory: MemoryStore,
    config: FallbackConfig,
    /// [`ON_PRIMARY`], and above it the number of times the store left the primary: a
    /// reply to a call sent before a departure is not mirrored.
    state: AtomicU64,
    /// Whether the failures in a row reached the threshold (an outage).
    tripped: AtomicBool,
    failures: AtomicU32,
    /// When the store was made: calls are stamped with the time since ([`Shared::sent_now`]).
    made: tokio::time::Instant,
    /// When the newest call the primary's backend answered was sent (since `made`, in
    /// microseconds): a call at its timeout waits on only while this is not a timeout or
    /// more past its own ([`Shared::bounded`]).
    answered: AtomicU64,
    /// How many calls the primary's backend answered: a call at its timeout waits on while
    /// this grows ([`Shared::bounded`]).
    answers: AtomicU64,
    /// [`Primary::answers_in_order`], asked once: then any answer says an unanswered call
    /// is queued ([`Shared::bounded`]).
    in_order: bool,
    /// What the primary told this instance last, and what memory decided since.
    ledger: Ledger,
    /// The charges sent to the primary and not answered yet.
    under_way: UnderWay,
    /// The primary's incarnation when last checked.
    incarnation: Mutex<Option<String>>,
    /// How many calls that found their connection broken are asking the primary's
    /// incarnation ([`Unsure`]): until they know, the primary may have restarted, and its
    /// answers are not taken as memory's counts.
    unsure: AtomicU32,
    /// Told when no call is unsure any more ([`Shared::until_sure`]).
    sure_again: tokio::sync::Notify,
    /// How many times the primary was found to have restarted (a new incarnation), or a
    /// call that found its connection broken could not learn whether it had: an admission
    /// it answers to a call sent before may come from a primary that forgot its counts,
    /// and stands only if memory has room for it (`FallbackStore::apply`). Counted once
    /// the store left the primary, and read before the state when a call is sent: an
    /// answer to a call sent before the departure sees one or the other.
    restarts: AtomicU64,
    /// Set when a call that found its connection broken was dropped before it learnt
    /// whether the primary restarted ([`Unsure`]): the next request takes the store off
    /// the primary, for a check to find out, and counts a restart
    /// ([`Shared::restarts`]) once it left; meanwhile an admission that sees it stands only
    /// if memory has room for it. Cleared after the count (an answer that looks at it
    /// first, then at the count, sees one or the other).
    ask_again: AtomicBool,
    /// Charges the primary admitted whose answers came while it may have restarted
    /// ([`Shared::absorb_late`]), at most [`LATE_ADMISSIONS`]: if it did (the next check
    /// finds a new incarnation), they were counted on the emptied primary, where the
    /// write-back, raising each key to what it reported before, would take them in; they
    /// are added to what is written back then ([`Ledger::add_to_report`]), and forgotten
    /// otherwise.
    late_admissions: Mutex<Vec<Bucket>>,
    /// Why the store left the primary last.
    reason: Mutex<String>,
    /// When a departure was last logged at `warn` ([`Shared::warn_departure`]), and how
    /// many departures there had been then.
    departure_warned: Mutex<Option<(Instant, u64)>>,
    /// Whether this departure was logged at `warn`: its return is logged too
    /// ([`Shared::enter`]).
    departure_said: AtomicBool,
    /// When the store last returned to the primary, and the check wait that preceded it.
    closed: Mutex<Option<(Instant, Duration)>>,
    /// Until when (µs, memory's clock) charges must fit this instance's share too, after
    /// its last return to the primary ([`Shared::in_return_grace`]); 0: not since.
    grace_until: AtomicU64,
    /// When that time began, on the monotonic clock ([`Shared::sent_now`]).
    grace_began: AtomicU64,
    /// Woken when the store returns to the primary.
    entered: tokio::sync::Notify,
    /// Whether a check of the primary is under way ([`recover`]).
    checking: AtomicBool,
    /// Wakes those waiting for a check to end, whether it passed or not.
    check_ended: tokio::sync::Notify,
    /// Whether this departure's timeouts were diagnosed ([`Primary::diagnose`]).
    diagnosed: AtomicBool,
    /// What the diagnosis found, if anything ([`Shared::explained`]).
    diagnosis: Mutex<Option<String>>,
    /// When a diagnosis was last logged at `warn`, and what it said ([`Shared::diagnose`]).
    diagnosis_warned: Mutex<Option<(Instant, String)>>,
    /// Set while the last give-back before the return to the primary runs: memory decides
    /// nothing then (a decision waits for the return, up to the call timeout), so nothing
    /// it admits is left out of what the primary is given before it decides again.
    draining: AtomicBool,
    /// Held shared by each decision from memory (from reading [`Shared::draining`] to
    /// noting its debt in the ledger), and alone to start the drain and to mirror the
    /// primary's answers to a give-back: a decision is either in what the give-back takes
    /// or made after it.
    deciding: RwLock<()>,
    /// Whether the first check ([`Shared::start`]) was started, and did not end with the
    /// runtime that ran it ([`Shared::keep_tasks`]).
    started: AtomicBool,
    /// Whether the watcher ([`watch`]) runs, on a runtime that has not ended.
    watching: AtomicBool,
    /// The number of the [`recover`] task under way, 0 if none (it ended, or ended with
    /// its runtime); numbers from [`Shared::tasks`].
    recovery: AtomicU64,
    /// The last number given to a [`recover`] task.
    tasks: AtomicU64,
}

/// A [`Store`] that decides on `P` (usually [`RedisStore`]) and falls back to a
/// [`MemoryStore`] when `P` fails or is slow, starting from what `P` last told it. Clones
/// share one state. See the [module documentation](crate::fallback).
pub struct FallbackStore<P: Primary> {
    shared: Arc<Shared<P>>,
}

impl<P: Primary> Clone for FallbackStore<P> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<P: Primary> fmt::Debug for FallbackStore<P> {
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

/// How many timeouts in all a call may wait, by default, while it is queued behind the
/// primary's answers ([`FallbackConfig::with_patience`]). (A debug build on a loaded
/// 2-core machine took up to 1.1 s to answer a burst of 300 requests at once on two
/// instances: at 10, some calls were cut short at 500 ms and failed open.)
pub const DEFAULT_PATIENCE: u32 = 20;

/// How often, at most, a departure from the primary that is not an outage is logged at
/// `warn` ([`Shared::warn_departure`]).
const DEPARTURE_WARNING_EVERY: Duration = Duration::from_secs(60);

/// How often an outage that goes on is logged again at `warn` ([`recover`]): a primary
/// that will not answer until someone acts (a wrong password, a user without the commands,
/// a replica given as the URL) was logged once, at start-up, while the instance counted
/// alone in memory for good (a review: nothing more in 2.5 minutes of traffic).
const STILL_WARNING_EVERY: Duration = Duration::from_secs(600);

/// How long the primary must stay healthy after the store returned to it for the next
/// departure to check it at once again; a departure sooner carries on the backoff where it
/// was, so a primary that keeps failing soon after each check is checked less and less
/// often.
const STABLE_AFTER: Duration = Duration::from_secs(5);

/// How often a store deciding on its primary asks the primary's incarnation
/// ([`Primary::incarnation`]): a primary that lost its counts without a call failing (made
/// a replica and a master again; restarted behind a pool or RESP3) is then checked as a
/// failed one is, and given its counts back.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);

impl<P: Primary> FallbackStore<P> {
    /// A fallback store over `primary` with the default settings and memory store.
    pub fn new(primary: P) -> Self {
        Self::with_config(primary, FallbackConfig::default())
    }

    /// A fallback store over `primary` with `config` and the default memory store.
    ///
    /// A [`RedisStore`] gives up on a call after its own response timeout (500 ms by
    /// default): with a longer [`FallbackConfig::with_timeout`], build it with
    /// [`RedisStoreBuilder::for_fallback`](crate::RedisStoreBuilder::for_fallback), or its
    /// calls fail at its limit, not the fallback's (a warning says so when the store is
    /// made; [`Primary::gives_up_after`]).
    pub fn with_config(primary: P, config: FallbackConfig) -> Self {
        Self::with_memory(primary, MemoryStore::new(), config)
    }

    /// A fallback store over `primary` deciding from `memory` when it fails (and keeping
    /// in it what the primary answers; see the [module documentation](crate::fallback)).
    ///
    /// It starts on the primary; if a tokio runtime is running, it checks the primary at
    /// once in the background and switches to memory if that fails. Made outside a runtime
    /// (before `main`'s runtime starts, in a `static`), the first call checks it so.
    pub fn with_memory(primary: P, memory: MemoryStore, config: FallbackConfig) -> Self {
        let store = Self::unchecked(primary, memory, config);
        if tokio::runtime::Handle::try_current().is_ok() {
            store.shared.keep_tasks();
        }
        store
    }

    /// A fallback store over `primary` that has checked it once (within the timeout): on
    /// the primary if it answered, otherwise on memory, probing in the background.
    pub async fn connect(primary: P, config: FallbackConfig) -> Self {
        Self::connect_with_memory(primary, MemoryStore::new(), config).await
    }

    /// [`FallbackStore::connect`] with the memory store to decide from when the primary
    /// fails (its bounds, its clock).
    pub async fn connect_with_memory(
        primary: P,
        memory: MemoryStore,
        config: FallbackConfig,
    ) -> Self {
        let store = Self::unchecked(primary, memory, config);
        store.shared.started.store(true, Ordering::Release);
        store.shared.start().await;
        store.shared.keep_tasks();
        store
    }

    fn unchecked(primary: P, memory: MemoryStore, config: FallbackConfig) -> Self {
        if let Some(primary_timeout) = primary.gives_up_after().filter(|t| *t < config.timeout()) {
            // Its calls would fail at the primary's limit: the fallback's longer wait
            // would never be waited.
            tracing::warn!(
                target: "tollgate::store",
                primary_timeout_ms = primary_timeout.as_millis() as u64,
                fallback_timeout_ms = config.timeout().as_millis() as u64,
                "the Redis store gives up on a call before the fallback's timeout: calls \
                 fail at its limit, not the fallback's; build it with \
                 `RedisStoreBuilder::for_fallback(&config)` (or a response timeout at least \
                 the fallback's)"
            );
        }
        let in_order = primary.answers_in_order();
        Self {
            shared: Arc::new(Shared {
                primary,
                memory,
                ledger: Ledger::new(config.mirror_keys),
                under_way: UnderWay::default(),
                config,
                state: AtomicU64::new(ON_PRIMARY),
                tripped: AtomicBool::new(false),
                failures: AtomicU32::new(0),
                made: tokio::time::Instant::now(),
                answered: AtomicU64::new(0),
                answers: AtomicU64::new(0),
                in_order,
                incarnation: Mutex::new(None),
                unsure: AtomicU32::new(0),
                sure_again: tokio::sync::Notify::new(),
                restarts: AtomicU64::new(0),
                ask_again: AtomicBool::new(false),
                late_admissions: Mutex::new(Vec::new()),
                reason: Mutex::new(String::new()),
                departure_warned: Mutex::new(None),
                departure_said: AtomicBool::new(false),
                closed: Mutex::new(None),
                grace_until: AtomicU64::new(0),
                grace_began: AtomicU64::new(0),
                entered: tokio::sync::Notify::new(),
                checking: AtomicBool::new(false),
                check_ended: tokio::sync::Notify::new(),
                diagnosed: AtomicBool::new(false),
                diagnosis: Mutex::new(None),
                diagnosis_warned: Mutex::new(None),
                draining: AtomicBool::new(false),
                deciding: RwLock::new(()),
                started: AtomicBool::new(false),
                watching: AtomicBool::new(false),
                recovery: AtomicU64::new(0),
                tasks: AtomicU64::new(0),
            }),
        }
    }

    /// Where decisions are made now.
    pub fn mode(&self) -> Mode {
        if self.shared.on_primary() {
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

    /// How many keys the mirror holds now (at most [`FallbackConfig::with_mirror_keys`]).
    pub fn mirrored_keys(&self) -> usize {
        self.shared.ledger.len()
    }

    /// How many keys' charges made from memory were forgotten before they could be given
    /// back to the primary, because the mirror was full of keys owing charges.
    pub fn lost_give_backs(&self) -> u64 {
        self.shared.ledger.lost()
    }
}

/// Waits until `done`, told by `notify` each time it may have turned true, or until
/// `deadline`; answers whether it is done.
pub(crate) async fn wait_until(
    notify: &tokio::sync::Notify,
    deadline: tokio::time::Instant,
    done: impl Fn() -> bool,
) -> bool {
    loop {
        // Made before the look: told of every change after it.
        let told = notify.notified();
        if done() {
            return true;
        }
        if tokio::time::timeout_at(deadline, told).await.is_err() {
            return done();
        }
    }
}

/// Locks a mutex whose holder may have panicked (the data is still valid).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Shares a lock whose holder may have panicked.
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

/// Takes a lock alone, whose holder may have panicked.
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl<P: Primary> Shared<P> {
    fn on_primary(&self) -> bool {
        self.state.load(Ordering::Acquire) & ON_PRIMARY != 0
    }

    /// `fut`, a call sent now, within the timeout, or longer while it is queued behind
    /// answers: a call whose answer waits behind those of calls sent before it (a burst on
    /// one connection, an instance slow to read its answers) is not one to a primary that
    /// stopped answering. At each timeout it waits on, up to the patience
    /// ([`FallbackConfig::with_patience`]) in timeouts, if the primary answered a call
    /// since the last one: over one connection answered in order
    /// ([`Primary::answers_in_order`]), any call (one made after it may have reached the
    /// connection first); over several, only while none sent a timeout or more after it
    /// was answered (a later call answered there means this one may be on a dead Redis
    /// Cluster node or a broken pooled connection while others answer), or if its timer
    /// ran half a timeout or more late (this instance's runtime was too busy to run it, or
    /// to read answers, on time). An answer that arrived with its timer is taken. Only the
    /// backend's answers count ([`Shared::call`]; a refusal cache's do not). (A review's
    /// burst of 300 requests at once on a healthy Redis timed out by the dozen at 50 ms,
    /// and a policy failing open admitted them all.)
    async fn bounded<T>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.bounded_as(self.sent_now(), self.patient_from_now(), fut)
            .await
    }

    /// [`Shared::patient_deadline`] of a wait that begins now.
    fn patient_from_now(&self) -> tokio::time::Instant {
        self.patient_deadline(tokio::time::Instant::now())
    }

    /// The longest a wait that began at `start` may last while queued behind answers: the
    /// patience in timeouts ([`FallbackConfig::with_patience`]); one timeout if that
    /// overflows the clock.
    fn patient_deadline(&self, start: tokio::time::Instant) -> tokio::time::Instant {
        let timeout = self.config.timeout;
        start
            .checked_add(timeout.saturating_mul(self.config.patience))
            .unwrap_or(start + timeout)
    }

    /// When a call sent now is sent (microseconds since the store was made).
    fn sent_now(&self) -> u64 {
        let since = tokio::time::Instant::now().saturating_duration_since(self.made);
        u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
    }

    /// [`Shared::bounded`] for a call sent at `sent` ([`Shared::sent_now`]) that waits on
    /// queued behind answers until `give_up` at the latest (the patience from when its
    /// request began to wait, [`Shared::patient_deadline`]), but waits its first timeout
    /// whatever came before it.
    async fn bounded_as<T>(
        &self,
        sent: u64,
        give_up: tokio::time::Instant,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let timeout = self.config.timeout;
        // One clock read for the first timeout and the first wait (a call on a healthy
        // primary reads it once here).
        let mut now = tokio::time::Instant::now();
        let give_up = now
            .checked_add(timeout)
            .map_or(give_up, |first| first.max(give_up));
        let mut fut = std::pin::pin!(fut);
        let mut answers = self.answers.load(Ordering::Acquire);
        loop {
            let until = now.checked_add(timeout).map_or(give_up, |t| t.min(give_up));
            if let Ok(result) = tokio::time::timeout_at(until, fut.as_mut()).await {
                return result;
            }
            // How late this task ran after its deadline: a runtime too busy to run it on
            // time (a burst on a loaded machine) has not seen the answers either, and its
            // timer measured the wait for itself, not for the primary.
            let late = tokio::time::Instant::now().saturating_duration_since(until);
            // The connection's task may have been woken in the same turn as this timer:
            // let it read what arrived before deciding.
            tokio::task::yield_now().await;
            if let Some(result) = futures_util::FutureExt::now_or_never(fut.as_mut()) {
                return result;
            }
            // Calls sent within a timeout after it may have reached the connection first
            // (a task that stamped its call earlier but sent it later; a call's second
            // round trip): only a call answered that was sent later still says this one
            // is not queued. (Half a timeout took too many queued calls for stuck ones
            // under load: 5 of 7 bursts failed open on seed 002, 1 of 7 with a timeout.)
            // On a primary that answers in order, any answer says this call is queued:
            // calls made after it may reach the connection first (their tasks ran first,
            // a burst on a debug build put 400 ms between), never after it was written.
            let newest = self.answered.load(Ordering::Acquire);
            let slack = u64::try_from(timeout.as_micros()).unwrap_or(u64::MAX);
            let behind = self.in_order || newest <= sent.saturating_add(slack);
            let now_answers = self.answers.load(Ordering::Acquire);
            let queued = now_answers != answers && behind;
            let stalled = late >= timeout / 2 && behind;
            now = tokio::time::Instant::now();
            if !(queued || stalled) || now >= give_up {
                return Err(StoreError::Timeout(timeout));
            }
            answers = now_answers;
        }
    }

    /// One call to the primary within the timeout, waiting on while queued behind answers
    /// up to `give_up` ([`Shared::bounded_as`]), and where its answer comes from. An answer
    /// of the backend ([`Origin::Backend`]) is noted as the newest answered if it is
    /// ([`Shared::answered`]).
    async fn call(
        &self,
        batch: &Batch,
        give_up: tokio::time::Instant,
    ) -> Result<(Decision, Origin), StoreError> {
        let sent = self.sent_now();
        let result = self
            .bounded_as(sent, give_up, self.primary.apply_with_origin(batch))
            .await;
        self.note_answered(sent, result.as_ref().ok().map(|(_, origin)| *origin));
        result
    }

    /// Notes that the call sent at `sent` was answered from `origin` (`None`: it was not):
    /// only the backend's answers say the primary answers ([`Shared::bounded`]).
    fn note_answered(&self, sent: u64, origin: Option<Origin>) {
        if origin == Some(Origin::Backend) {
            self.answered.fetch_max(sent, Ordering::AcqRel);
            self.answers.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// A request's call to the primary: as [`Shared::call`], and if the connection broke
    /// ([`Primary::connection_broke`]), made once more through a fresh one, with a first
    /// timeout of its own (a call that waited queued behind answers when its connection
    /// broke gets its try), unless the primary restarted since it was last checked (a new
    /// incarnation: it may have come back empty, and is used again only after the counts
    /// were written back, by the check the failure starts). Also answers, if the call
    /// failed because its connection broke, an [`Unsure`] for the caller to hold until it
    /// has left the primary.
    ///
    /// Both calls wait on queued behind answers up to `give_up` at most, the request's
    /// patience ([`Shared::bounded_as`]); each waits its first timeout.
    ///
    /// A call whose connection broke after the primary ran it is run twice: a charge is
    /// then counted twice (as a call abandoned at the timeout may be).
    async fn call_again_if_broken(
        &self,
        batch: &Batch,
        give_up: tokio::time::Instant,
    ) -> (
        Result<(Decision, Origin), StoreError>,
        Option<Unsure<'_, P>>,
    ) {
        let error = match self.call(batch, give_up).await {
            Err(e) if self.primary.connection_broke(&e) => e,
            other => return (other, None),
        };
        // Other calls may go through the fresh connection meanwhile, to a primary that may
        // have restarted: their answers are not memory's counts until this one knows.
        let mut unsure = Unsure::new(self);
        // A timeout of its own at least: a call that waited queued behind answers before
        // its connection broke still gets its second try.
        let again = async {
            let id = match self.primary.incarnation().await {
                Ok(id) => id,
                Err(_) => return Ok(None),
            };
            if id != *lock(&self.incarnation) {
                return Ok(None);
            }
            Ok(Some(self.primary.apply_with_origin(batch).await))
        };
        let sent = self.sent_now();
        let again = self.bounded_as(sent, give_up, again).await;
        let origin = match &again {
            Ok(Some(Ok((_, origin)))) => Some(*origin),
            _ => None,
        };
        self.note_answered(sent, origin);
        unsure.known = true;
        match again {
            Ok(Some(Ok(answer))) => {
                // The same incarnation: what was admitted meanwhile was counted where it
                // stays.
                lock(&self.late_admissions).clear();
                tracing::debug!(
                    target: "tollgate::store",
                    error = %error,
                    "rate-limit store primary's connection broke; answered through a fresh one"
                );
                (Ok(answer), None)
            }
            // The same incarnation: the call made again failed.
            Ok(Some(Err(e))) => (Err(e), Some(unsure)),
            // Another incarnation, or no answer: the primary restarted, or may have.
            Ok(None) => {
                unsure.doubts = true;
                (Err(error), Some(unsure))
            }
            Err(e) => {
                unsure.doubts = true;
                (Err(e), Some(unsure))
            }
        }
    }

    /// Whether no call that found its connection broken is still asking whether the
    /// primary restarted ([`Unsure`]): until then, its answers are not taken as memory's
    /// counts.
    fn sure(&self) -> bool {
        self.unsure.load(Ordering::Acquire) == 0
    }

    /// Waits until no call that found its connection broken is asking whether the primary
    /// restarted ([`Shared::sure`]), or until `deadline`.
    async fn until_sure(&self, deadline: tokio::time::Instant) {
        wait_until(&self.sure_again, deadline, || self.sure()).await;
    }

    /// Counts a restart of the primary found, or not ruled out ([`Shared::restarts`]):
    /// only once the store left the primary, so that an answer to a call sent before
    /// the departure sees one or the other.
    fn count_restart(&self) {
        self.restarts.fetch_add(1, Ordering::AcqRel);
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.call(&probe_batch(), self.patient_from_now())
            .await
            .map(drop)
    }

    /// The first check: on the primary if it answers (noting its incarnation), otherwise
    /// on memory at once.
    async fn start(self: &Arc<Self>) {
        let checked = match self.check().await {
            Ok(()) => self.bounded(self.primary.incarnation()).await,
            Err(e) => Err(e),
        };
        match checked {
            Ok(id) => *lock(&self.incarnation) = id,
            Err(e) => {
                // An outage from the start.
                self.failures
                    .store(self.config.failure_threshold - 1, Ordering::Release);
                let reason = format!("at startup: {e}");
                self.count_failure(&reason);
                self.leave(&reason, false);
            }
        }
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

    /// Whether `id` is another incarnation of the primary than the one it was last checked
    /// as (both known): it restarted, or took another server's data, since.
    fn is_new_incarnation(&self, id: &Option<String>) -> bool {
        matches!((&*lock(&self.incarnation), id), (Some(was), Some(now)) if was != now)
    }

    /// What must pass before deciding on the primary again: a write goes through; if the
    /// primary restarted (a new incarnation), it is given back the counts it last
    /// reported; and it is charged what memory decided meanwhile.
    async fn sync(&self) -> Result<(), StoreError> {
        self.probe_once().await?;
        let id = self.bounded(self.primary.incarnation()).await?;
        let restarted = self.is_new_incarnation(&id);
        if restarted {
            self.count_restart();
            tracing::warn!(
                target: "tollgate::store",
                "rate-limit store primary restarted or took another server's data (new run_id or replication id): writing back the counts this instance holds"
            );
        }
        self.note_late(restarted, false);
        self.give_back(restarted).await?;
        if id.is_some() {
            *lock(&self.incarnation) = id;
        }
        // What memory decided during that give-back (a large one takes a while), again,
        // until about one call's worth is owed.
        for _ in 0..GIVE_BACK_ROUNDS {
            self.note_late(restarted, true);
            if self.give_back(false).await? <= GIVE_BACK_BATCH {
                break;
            }
        }
        // After a restart, the last give-back waits for the calls sent to the primary
        // before the store left it (each gives up within the patience): an admission
        // answered before the restart was known is charged by it (a late admission), as
        // is one answered after, which stands only if memory has room for it.
        // Before, an admission answered after the last give-back was charged by neither,
        // the write-back, raising the key to what this instance knew, having taken it in
        // (a burst of 408 after an empty restart at 400 of 500 admitted 101, in about 1
        // run in 300). While the store is off the primary no call is sent to it: once
        // these are answered, none is under way until the return.
        if restarted {
            self.under_way.answered(self.patient_from_now()).await;
        }
        // The last give-back: memory decides nothing meanwhile (decisions wait for the
        // return, up to the call timeout), so the primary has every admission memory made
        // before it decides again. The caller returns to the primary if this passes.
        {
            let _alone = write(&self.deciding);
            self.draining.store(true, Ordering::Release);
        }
        self.note_late(restarted, true);
        if let Err(e) = self.give_back(false).await {
            // Memory decides again; what was not delivered is owed still.
            self.draining.store(false, Ordering::Release);
            self.entered.notify_waiters();
            return Err(e);
        }
        Ok(())
    }

    /// Takes the late admissions ([`Shared::late_admissions`]) into the ledger if the
    /// primary `restarted` (without a restart they stay where they were counted). Before the
    /// write-back they are added to the counts it writes, which would otherwise take them
    /// in; those whose answers came after it (calls sent before this instance knew, slow
    /// under load) may have been taken in as well, so once `written_back` they are charged
    /// to the primary with what memory decided (counted twice if the primary made them after
    /// the write-back: it errs towards refusing).
    fn note_late(&self, restarted: bool, written_back: bool) {
        let late = std::mem::take(&mut *lock(&self.late_admissions));
        if !restarted {
            return;
        }
        let now = self.memory.now().as_micros();
        for bucket in &late {
            if written_back {
                self.ledger.owe(Op::Charge, bucket, true, now);
            } else {
                self.ledger.add_to_report(bucket, now);
            }
        }
    }

    /// Charges the primary what memory decided since the last give-back (and with
    /// `restore`, raises each key the primary reported last to at least that count);
    /// answers how many keys it gave back. Whatever could not be delivered is kept for the
    /// next time.
    async fn give_back(&self, restore: bool) -> Result<usize, StoreError> {
        let now = self.memory.now().as_micros();
        let owed = self.ledger.take(restore, now);
        if owed.is_empty() {
            return Ok(0);
        }
        // In calls of one part of the primary each (a hash slot of Redis Cluster).
        let mut by_part: Vec<(u64, Owed)> = owed
            .into_iter()
            .map(|o| (self.primary.part_of(&o.bucket), o))
            .collect();
        by_part.sort_by_key(|(part, _)| *part);
        let (parts, owed): (Vec<u64>, Vec<Owed>) = by_part.into_iter().unzip();
        // What still counts, read from memory before anything here writes to it (a
        // restore's answer replaces memory's counts with the primary's).
        let counted: Vec<(u64, Duration)> = owed.iter().map(|o| self.still_counted(o)).collect();
        let mut delivered = 0;
        while delivered < owed.len() {
            let end = (delivered + 1..owed.len())
                .find(|&i| i - delivered == GIVE_BACK_BATCH || parts[i] != parts[delivered])
                .unwrap_or(owed.len());
            let (chunk, counted) = (&owed[delivered..end], &counted[delivered..end]);
            if let Err(e) = self.give_back_chunk(chunk, counted, restore).await {
                self.ledger.put_back(&owed[delivered..], now);
                return Err(e);
            }
            delivered = end;
        }
        tracing::debug!(
            target: "tollgate::store",
            keys = owed.len(),
            restore,
            "charged the primary what was decided from memory"
        );
        Ok(owed.len())
    }

    /// Gives `chunk` back: `counted` is, per key, what of its debt still counts and when
    /// memory's count of the key is fresh again.
    async fn give_back_chunk(
        &self,
        chunk: &[Owed],
        counted: &[(u64, Duration)],
        restore: bool,
    ) -> Result<(), StoreError> {
        // A reset made from memory takes from the primary's key what it counted then (as
        // last reported here): a refund. Resetting the key would also take away what other
        // instances counted there since, still on the primary (a lockout formed meanwhile,
        // lifted by a sign-in's reset delivered late).
        let cleared: Vec<Bucket> = chunk
            .iter()
            .filter(|o| o.cleared > 0)
            .map(|o| o.bucket.clone().with_cost(o.cleared))
            .collect();
        if !cleared.is_empty() {
            let refund = Batch::new(Op::Refund, cleared);
            let _ = self.call(&refund, self.patient_from_now()).await?;
        }
        // On a primary that restarted: each key raised back to what it reported before, in
        // one call (another instance may be writing it back at the same moment: the key
        // ends at the larger count, not the sum), placed to leave when it would have.
        if restore {
            let owed: Vec<(Bucket, Duration)> = chunk
                .iter()
                .filter(|o| o.used > 0)
                .map(|o| (o.bucket.clone().with_cost(o.used), o.fresh_in))
                .collect();
            if !owed.is_empty() {
                let decision = self.bounded(self.primary.restore(&owed)).await?;
                self.mirror_given_back(owed, &decision);
            }
        }
        // What memory admitted meanwhile and still counts, on top, placed to be fresh again
        // when memory's count would be.
        let charges: Vec<(Bucket, Duration)> = chunk
            .iter()
            .zip(counted)
            .filter(|(_, &(owed, _))| owed > 0)
            .map(|(o, &(owed, fresh))| (o.bucket.clone().with_cost(owed), fresh))
            .collect();
        if charges.is_empty() {
            return Ok(());
        }
        let decision = self.bounded(self.primary.give_back(&charges)).await?;
        self.mirror_given_back(charges, &decision);
        Ok(())
    }

    /// The part of what memory admitted for `owed`'s key that still counts now: no more
    /// than memory's own count of the key; and when that count is fresh again. It is
    /// charged to the primary now, so what no longer counts must not go with it: a token
    /// bucket's tokens that refilled during the outage (a client under its rate would be
    /// refused for as long as the outage lasted), a fixed window's earlier windows, a
    /// rolling window's admissions older than the window. A token bucket's count is its
    /// tokens owed, which a penalty can take past the burst. (The primary places the
    /// charge by that freshness: [`Primary::give_back`].)
    ///
    /// A key memory dropped to make room during the outage gives back only what memory
    /// counted of it since: memory, bounded, had forgotten the rest already while it
    /// decided.
    fn still_counted(&self, owed: &Owed) -> (u64, Duration) {
        if owed.debt == 0 {
            return (0, Duration::ZERO);
        }
        let scaled = self.scaled(&owed.bucket);
        let Ok(seen) = self
            .memory
            .apply_now(Op::Peek, std::slice::from_ref(&*scaled))
        else {
            // (Placed now, as if fresh a window from now.)
            return (owed.debt, scaled.limit.quota().period());
        };
        let state = &seen.buckets[0];
        let limit = &scaled.limit;
        let counted = match limit.algorithm() {
            Algorithm::TokenBucket { .. } => u64::try_from(state.reset_after.as_micros())
                .unwrap_or(u64::MAX)
                .div_ceil(limit.emission_interval().max(1)),
            _ => limit.capacity().saturating_sub(state.remaining),
        };
        (owed.debt.min(counted), state.reset_after)
    }

    /// Counts a failure; an outage at the threshold.
    fn count_failure(&self, reason: &str) {
        // Saturating: the checks of a long outage keep counting, from the threshold for one
        // from startup, and the threshold may be `u32::MAX`.
        let failures = self
            .failures
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| {
                Some(f.saturating_add(1))
            })
            .unwrap_or_else(|f| f)
            .saturating_add(1);
        if failures >= self.config.failure_threshold && !self.tripped.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                target: "tollgate::store",
                reason,
                timeout_ms = self.config.timeout.as_millis() as u64,
                "rate-limit store switched to the in-memory fallback (for policies that fall \
                 back; those set to fail open admit, those set to fail closed refuse, until \
                 the store answers again)"
            );
        }
    }

    /// A call to the primary failed: decide from memory until a check passes. With
    /// `broke` (its connection broke, and the call made again did not pass), the first
    /// check is made at once, even soon after a return to the primary.
    ///
    /// Only the call that takes the store off the primary counts towards the circuit
    /// breaker: calls failing with it were under way at the same time, and are one sign,
    /// not several (a burst that held up a healthy primary is not an outage); the checks
    /// that follow count one each.
    fn failed(self: &Arc<Self>, error: &StoreError, broke: bool) {
        let reason = error.to_string();
        self.leave_counting(&reason, broke, true);
    }

    /// Once per departure, when a check only timed out or found its connection broken: asks
    /// why a fresh connection fails ([`Primary::diagnose`]); an answer becomes the reason
    /// the store gives (a wrong password is not network latency, and a password asked for
    /// since is not a broken pipe), and is logged (`warn`) unless the same answer was,
    /// within [`DEPARTURE_WARNING_EVERY`] (a Redis restarted again and again is refused
    /// at each departure).
    async fn diagnose(&self) {
        if self.diagnosed.swap(true, Ordering::AcqRel) {
            return;
        }
        // The departure it diagnoses (the checks go on meanwhile): an answer that comes
        // after the store returned to the primary, or left it again, is not kept.
        let departure = self.state.load(Ordering::Acquire);
        let Some(why) = self.primary.diagnose().await else {
            return;
        };
        if self.state.load(Ordering::Acquire) != departure {
            return;
        }
        let said = {
            let mut warned = lock(&self.diagnosis_warned);
            let said = warned
                .as_ref()
                .is_some_and(|(at, was)| *was == why && at.elapsed() < DEPARTURE_WARNING_EVERY);
            if !said {
                *warned = Some((Instant::now(), why.clone()));
            }
            said
        };
        if !said {
            tracing::warn!(
                target: "tollgate::store",
                error = %why,
                "rate-limit store primary fails, and a fresh connection fails too: check that \
                 it runs, and its URL, password and database"
            );
        }
        *lock(&self.diagnosis) = Some(why);
        let mut reason = lock(&self.reason);
        *reason = self.explained(&reason);
    }

    /// `failure` with what this departure's diagnosis found, if anything
    /// ([`Shared::diagnose`]): a stopped Redis is a refused connection, not a call that did
    /// not answer within the timeout.
    fn explained(&self, failure: &str) -> String {
        match &*lock(&self.diagnosis) {
            Some(why) => format!("{failure} (a fresh connection fails: {why})"),
            None => failure.to_owned(),
        }
    }

    /// Waits for the store to return to the primary (a check passing); whether it did. A
    /// check under way is waited for to its end, up to the patience from `start`, when the
    /// request began ([`Shared::patient_deadline`]; a check waits past the timeout only
    /// while the primary answers, or this instance was too busy to run its timer on time:
    /// a review's burst on a loaded machine queued the check behind the burst's own calls,
    /// and the batches that waited the timeout alone were admitted unchecked); without one
    /// (between checks), up to the call timeout from `start`.
    async fn wait_for_primary(&self, start: tokio::time::Instant) -> bool {
        let deadline = start + self.config.timeout;
        let patient = self.patient_deadline(start);
        loop {
            let entered = self.entered.notified();
            let ended = self.check_ended.notified();
            if self.on_primary() {
                return true;
            }
            let until = if self.checking.load(Ordering::Acquire) {
                patient
            } else {
                deadline
            };
            tokio::select! {
                () = entered => {}
                () = ended => return self.on_primary(),
                () = tokio::time::sleep_until(until) => return self.on_primary(),
            }
        }
    }

    /// Leaves the primary (if on it) and starts checking it: at once, unless it returned
    /// to the primary within [`STABLE_AFTER`] (then after the wait it had reached, doubled).
    /// With `at_once` (a connection that broke), the first check is made at once anyway,
    /// and the next after that wait.
    fn leave(self: &Arc<Self>, reason: &str, at_once: bool) {
        self.leave_counting(reason, at_once, false);
    }

    /// [`Shared::leave`], counting a failure towards the circuit breaker with `count` if
    /// this call is the one that leaves.
    fn leave_counting(self: &Arc<Self>, reason: &str, at_once: bool, count: bool) {
        let left = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s & ON_PRIMARY != 0).then_some((s & !ON_PRIMARY) + 2)
            })
            .is_ok();
        if !left {
            return;
        }
        if count {
            self.count_failure(reason);
        }
        *lock(&self.reason) = reason.to_owned();
        tracing::debug!(
            target: "tollgate::store",
            reason,
            "rate-limit store deciding from memory until the primary is checked"
        );
        // An outage (the circuit breaker's threshold) was logged as one.
        if !self.tripped.load(Ordering::Acquire) {
            self.warn_departure(reason);
        }
        let max = self.config.probe_max;
        let first = match *lock(&self.closed) {
            Some((at, delay)) if at.elapsed() < STABLE_AFTER => {
                (delay * 2).max(self.config.probe_min).min(max)
            }
            _ => Duration::ZERO,
        };
        self.spawn_recover(first, at_once);
    }

    /// Starts [`recover`] unless one is under way: the check of a store that left its
    /// primary (`first`, `at_once`: as [`recover`] takes them).
    fn spawn_recover(self: &Arc<Self>, first: Duration, at_once: bool) {
        let number = self.tasks.fetch_add(1, Ordering::AcqRel) + 1;
        if self
            .recovery
            .compare_exchange(0, number, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let alive = Alive::new(self, Task::Recover(number));
        tokio::spawn(recover(alive, first, at_once));
    }

    /// Starts, on the runtime running the caller, the tasks this store needs and lacks: a
    /// task runs on the runtime that started it, and ends with it. A store made outside a
    /// runtime (in a `static`, before `main`'s runtime) has its first check and its watcher
    /// started by its first call; one whose tasks ended with their runtime (a
    /// `#[tokio::test]`'s, a runtime used only at start-up) has them started again by the
    /// next call, on that call's runtime. (A review: a store left off the primary as the
    /// runtime that checked it ended stayed on memory for good, what it admitted never
    /// charged to Redis; one made outside a runtime never learnt the primary's incarnation,
    /// and an empty restart of Redis lost every count.) Three atomic loads when nothing is
    /// missing.
    fn keep_tasks(self: &Arc<Self>) {
        if !self.started.load(Ordering::Acquire) && !self.started.swap(true, Ordering::AcqRel) {
            let alive = Alive::new(self, Task::Start);
            tokio::spawn(async move {
                let mut alive = alive;
                if let Some(shared) = alive.shared.upgrade() {
                    shared.start().await;
                }
                alive.done = true;
            });
        }
        if !self.watching.load(Ordering::Acquire) && !self.watching.swap(true, Ordering::AcqRel) {
            tokio::spawn(watch(Alive::new(self, Task::Watch)));
        }
        if !self.on_primary() && self.recovery.load(Ordering::Acquire) == 0 {
            self.spawn_recover(Duration::ZERO, true);
        }
    }

    /// Logs a departure below the circuit breaker's threshold (one call timed out, a
    /// connection broke) at `warn`, at most once per [`DEPARTURE_WARNING_EVERY`], with how
    /// many departures there were since the last such warning. Memory decides what comes
    /// meanwhile, each instance alone (without a divisor, up to the whole of what remained:
    /// a review's three instances admitted up to 252 of 100 in a burst on a loaded machine,
    /// its calls timing out one at a time), and an operator without the store's metrics
    /// learnt of it only at `debug`.
    fn warn_departure(&self, reason: &str) {
        let departures = self.state.load(Ordering::Acquire) >> 1;
        let mut warned = lock(&self.departure_warned);
        if warned.is_some_and(|(at, _)| at.elapsed() < DEPARTURE_WARNING_EVERY) {
            return;
        }
        let since = departures.saturating_sub(warned.map_or(0, |(_, then)| then));
        *warned = Some((Instant::now(), departures));
        drop(warned);
        self.departure_said.store(true, Ordering::Release);
        tracing::warn!(
            target: "tollgate::store",
            reason,
            departures = since,
            timeout_ms = self.config.timeout.as_millis() as u64,
            "rate-limit store deciding from memory until a check of the primary passes \
             (policies set to fail open admit meanwhile, those set to fail closed refuse; \
             `reason`: why it left; `departures`: how many times it left since the last \
             such warning, logged at most once a minute)"
        );
    }

    /// Back on the primary, after a check waited `delay`.
    fn enter(&self, delay: Duration) {
        *lock(&self.closed) = Some((Instant::now(), delay));
        // Answers that came after the check that returns: counted where they stay.
        lock(&self.late_admissions).clear();
        self.failures.store(0, Ordering::Release);
        self.state.fetch_or(ON_PRIMARY, Ordering::AcqRel);
        // After the switch: a decision that sees the drain over sees the primary.
        self.draining.store(false, Ordering::Release);
        *lock(&self.diagnosis) = None;
        self.diagnosed.store(false, Ordering::Release);
        self.entered.notify_waiters();
        // After an outage, or a departure logged at `warn`: an operator who read that the
        // store left reads that it is back (a short pause logged only its departure). Two
        // events: a test that watches for the return from an outage with a subscriber of
        // its own, beside tests returning from departures on threads without one, missed
        // a shared event (tracing caches its interest process-wide).
        let said = self.departure_said.swap(false, Ordering::AcqRel);
        if self.tripped.swap(false, Ordering::AcqRel) {
            tracing::info!(
                target: "tollgate::store",
                "rate-limit store back on the primary"
            );
        } else if said {
            tracing::info!(
                target: "tollgate::store",
                "rate-limit store back on the primary after the departure warned about"
            );
        }
    }

    /// Answers a batch the primary could not.
    fn on_failure(&self, batch: &Batch, error: StoreError) -> Result<Decision, StoreError> {
        match batch.on_failure {
            FailureMode::Fallback => {
                let _deciding = read(&self.deciding);
                self.decide_in_memory(batch)
            }
            FailureMode::Open | FailureMode::Closed => Err(error),
        }
    }

    /// Decides from memory while the store is off the primary, unless the last give-back
    /// runs ([`Shared::draining`]) or the store is back on the primary: then `None`.
    fn decide_unless_draining(&self, batch: &Batch) -> Option<Result<Decision, StoreError>> {
        let _deciding = read(&self.deciding);
        // The drain first: `enter` ends it after the switch.
        if self.draining.load(Ordering::Acquire) || self.on_primary() {
            return None;
        }
        Some(self.decide_in_memory(batch))
    }

    /// A batch that falls back, while the store is off the primary: decided from memory,
    /// or, while the last give-back runs, once it is over: `None` if the store is back on
    /// the primary then (decide there), from memory if the give-back failed or took longer
    /// than the call timeout (what memory admits then is given back after the return).
    /// The wait for the give-back counts from `start`, when the request began.
    async fn decide_off_primary(
        &self,
        batch: &Batch,
        start: tokio::time::Instant,
    ) -> Option<Result<Decision, StoreError>> {
        let deadline = start + self.config.timeout;
        loop {
            let entered = self.entered.notified();
            if self.on_primary() {
                return None;
            }
            if let Some(answer) = self.decide_unless_draining(batch) {
                return Some(answer);
            }
            if tokio::time::timeout_at(deadline, entered).await.is_err() {
                if self.on_primary() {
                    return None;
                }
                let _deciding = read(&self.deciding);
                return Some(self.decide_in_memory(batch));
            }
        }
    }

    /// `bucket` as memory decides it: its limit divided by the divisor.
    fn scaled<'b>(&self, bucket: &'b Bucket) -> Cow<'b, Bucket> {
        if self.config.divisor <= 1 {
            return Cow::Borrowed(bucket);
        }
        let mut scaled = bucket.clone();
        scaled.limit = bucket.limit.divided_by(self.config.divisor);
        Cow::Owned(scaled)
    }

    /// `buckets` as memory decides them ([`Shared::scaled`]).
    fn scaled_all(&self, buckets: &[Bucket]) -> Vec<Bucket> {
        buckets
            .iter()
            .map(|b| self.scaled(b).into_owned())
            .collect()
    }

    /// `bucket` as memory decides it ([`Shared::scaled`]), costing `extra` more.
    fn scaled_costing(&self, bucket: &Bucket, extra: u64) -> Bucket {
        let mut scaled = self.scaled(bucket).into_owned();
        scaled.cost = scaled.cost.saturating_add(extra);
        scaled
    }

    /// `batch`, which a primary that may have restarted empty admitted
    /// ([`Shared::restarts`]), as memory decides it: a charge is charged there (in one
    /// step, so that two answers at once do not both take the last of a key), a look
    /// looked at; `Err` with memory's refusal if it has no room. `Ok(true)`: charged in
    /// memory. Other operations, and what memory cannot decide (a cost above what it
    /// holds of a key, a key it has no room to store: left to the primary, as
    /// [`Shared::charge_share`] leaves them), stand.
    fn admit_in_memory(&self, batch: &Batch) -> Result<bool, Decision> {
        if !matches!(batch.op, Op::Charge | Op::Peek) {
            return Ok(false);
        }
        let scaled = self.scaled_all(&batch.buckets);
        let Ok(mut decision) = self.memory.apply_now(batch.op, &scaled) else {
            return Ok(false);
        };
        if decision.allowed {
            return Ok(batch.op == Op::Charge);
        }
        // Only if no bucket refuses for want of room (a bucket over its limit beside one
        // memory cannot decide is refused: h127's review had a spent daily cap admitted
        // beside a per-minute limit whose cost is above the share).
        let cannot_tell = decision.buckets.iter().filter(|b| !b.allowed).all(|b| {
            matches!(
                b.refusal,
                Some(Refusal::CostExceedsCapacity { .. } | Refusal::StoreFull)
            )
        });
        if cannot_tell {
            return Ok(false);
        }
        self.show_as_primary(batch, &mut decision);
        Err(decision)
    }

    /// Decides from memory, noting what is owed to the primary.
    fn decide_in_memory(&self, batch: &Batch) -> Result<Decision, StoreError> {
        // Charges still under way on the primary count as admitted while this is decided
        // (see `under_way`): a look or a charge fits only with them on top, and an
        // admitted charge gives them back at once (nothing else is written: a look or a
        // refusal leaves memory as it was).
        let under_way = if matches!(batch.op, Op::Charge | Op::Peek) {
            self.under_way.costs(&batch.buckets)
        } else {
            Vec::new()
        };
        let mut decision = if under_way.is_empty() && self.config.divisor <= 1 {
            self.memory.apply_now(batch.op, &batch.buckets)?
        } else {
            let extra = under_way.iter().copied().chain(std::iter::repeat(0));
            let (buckets, extras): (Vec<Bucket>, Vec<u64>) = batch
                .buckets
                .iter()
                .zip(extra)
                .map(|(b, u)| (self.scaled_costing(b, u), u))
                .unzip();
            let mut decision = self.memory.apply_now(batch.op, &buckets)?;
            let charged = batch.op == Op::Charge && decision.allowed;
            let states = decision.buckets.iter_mut().zip(&buckets);
            for ((state, bucket), (&u, alone)) in states.zip(extras.iter().zip(&batch.buckets)) {
                if u == 0 {
                    continue;
                }
                // What remains shows the charges under way as spent (an admitted charge's
                // state was taken with them on top already).
                if !charged {
                    state.remaining = state.remaining.saturating_sub(u);
                }
                let capacity = bucket.limit.capacity();
                if let Some(Refusal::CostExceedsCapacity { cost, .. }) = &mut state.refusal {
                    if alone.cost > capacity {
                        // It never fits, whatever the answers: as its own cost says.
                        *cost = alone.cost;
                    } else {
                        // It does not fit only beside what others sent: over the limit
                        // until their answers come (within the call timeout), or until the
                        // bucket is full again if that is later.
                        let wait = self.config.timeout.max(state.reset_after);
                        state.refusal = Some(Refusal::OverLimit);
                        state.retry_after = Some(wait);
                        state.reset_after = wait;
                    }
                }
            }
            if charged {
                let given_back: Vec<Bucket> = buckets
                    .into_iter()
                    .zip(extras)
                    .filter(|(_, u)| *u > 0)
                    .map(|(b, u)| b.with_cost(u))
                    .collect();
                let _ = self.memory.apply_now(Op::Refund, &given_back);
            }
            decision
        };
        self.show_as_primary(batch, &mut decision);
        let now = decision.now.as_micros();
        for bucket in &batch.buckets {
            self.ledger.owe(batch.op, bucket, decision.allowed, now);
        }
        Ok(decision)
    }

    /// `decision`, made from memory on this instance's share, as the primary's limits show
    /// it: the bucket's limit is what the primary says and the policy publishes
    /// (`RateLimit-Policy`, the docs); what this instance counts on its share shows in what
    /// remains, not as another limit.
    fn show_as_primary(&self, batch: &Batch, decision: &mut Decision) {
        if self.config.divisor > 1 {
            for (state, bucket) in decision.buckets.iter_mut().zip(&batch.buckets) {
                state.limit = bucket.limit.shown_count();
            }
        }
    }

    /// In the time after a return to the primary ([`Shared::in_return_grace`]): `batch`'s
    /// charge made on this instance's share in memory, before the primary is asked. Other
    /// instances may still decide from memory then, and what they admitted since the
    /// outage began is not on the primary until each gives it back: the primary alone
    /// would admit it again. So a charge must fit both, and the fleet admits no more than
    /// during the outage (each instance its share) until every instance is back. Memory
    /// keeps its own count meanwhile. `None` for anything but a charge that falls back,
    /// and where the share cannot speak for the charge (below).
    fn charge_share(&self, batch: &Batch) -> Option<Share> {
        if batch.op != Op::Charge || batch.on_failure != FailureMode::Fallback {
            return None;
        }
        // A charge a share cannot speak for is left to the primary (and counted on the
        // share once admitted, [`Shared::follow_on_share`]): a bucket whose cost is above
        // its share (on memory it could never be admitted), or memory without room for a
        // key.
        let scaled = self.scaled_all(&batch.buckets);
        if scaled.iter().any(|b| b.cost > b.limit.capacity()) {
            return None;
        }
        let decision = self.memory.apply_now(Op::Charge, &scaled).ok()?;
        let full = decision
            .buckets
            .iter()
            .any(|b| b.refusal == Some(Refusal::StoreFull));
        if full {
            self.release_share(&Share { scaled, decision });
            return None;
        }
        Some(Share { scaled, decision })
    }

    /// What the primary answered in the time after a return ([`Shared::in_return_grace`])
    /// made on this instance's share too: a penalty, a refund, a reset, and a charge it
    /// admitted that was not charged on the share ([`Shared::charge_share`] left it to the
    /// primary). The primary's answers leave memory's counts as they are then, and would
    /// not count it there (a lockout reached during that time would be forgotten by the
    /// next outage).
    fn follow_on_share(&self, batch: &Batch, decision: &Decision, on_share: bool) {
        let op = match batch.op {
            Op::Charge if decision.allowed && !on_share => Op::Penalize,
            Op::Penalize | Op::Refund | Op::RefundAt(_) | Op::Reset => batch.op,
            Op::Charge | Op::Peek => return,
        };
        let scaled = self.scaled_all(&batch.buckets);
        if let Err(e) = self.memory.apply_now(op, &scaled) {
            tracing::debug!(target: "tollgate::store", error = %e, "could not count an answer on the share");
        }
    }

    /// Whether the store returned to the primary within [`FallbackConfig::return_grace`],
    /// with a divisor above 1 (and the mirror on; [`Shared::start_grace`]): other instances
    /// may still decide from memory. Memory then counts this instance's own share (the primary's answers leave
    /// it as it is), and charges are made on it too ([`Shared::charge_share`]).
    ///
    /// Over at its end on memory's clock, and at the latest once it has lasted as long on
    /// the monotonic one: memory's clock (the system's) put back would otherwise make it
    /// last as long as the step (a review: an instance whose clock was put back a day after
    /// a return refused every request for that day, its charges made on memory's share,
    /// whose counts lay a day ahead).
    fn in_return_grace(&self) -> bool {
        let until = self.grace_until.load(Ordering::Acquire);
        if until == 0 || self.memory.now().as_micros() >= until {
            return false;
        }
        let lasted = self
            .sent_now()
            .saturating_sub(self.grace_began.load(Ordering::Acquire));
        lasted < u64::try_from(self.config.return_grace().as_micros()).unwrap_or(u64::MAX)
    }

    /// Starts the time after a return ([`Shared::in_return_grace`]) with a divisor above 1
    /// (and the mirror on), just before the store returns to the primary (a decision that
    /// sees the return sees that time too), from an outage that began at `left` (µs,
    /// memory's clock): its end ([`Shared::end_grace`]) is run when it is over, unless the
    /// store returned again meanwhile (that return's own end follows).
    fn start_grace(self: &Arc<Self>, left: u64) {
        if self.config.divisor <= 1 || !self.mirrors() {
            return;
        }
        let grace = self.config.return_grace();
        let until = self
            .memory
            .now()
            .as_micros()
            .saturating_add(u64::try_from(grace.as_micros()).unwrap_or(u64::MAX))
            .max(1);
        self.grace_began.store(self.sent_now(), Ordering::Release);
        self.grace_until.store(until, Ordering::Release);
        let shared = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if let Some(shared) = shared.upgrade() {
                let ended = shared
                    .grace_until
                    .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                if ended {
                    shared.end_grace(left);
                }
            }
        });
    }

    /// Gives back a [`Shared::charge_share`] the primary did not admit (or that memory
    /// decides again).
    fn release_share(&self, share: &Share) {
        if share.decision.allowed {
            let op = Op::RefundAt(share.decision.now);
            if let Err(e) = self.memory.apply_now(op, &share.scaled) {
                tracing::debug!(target: "tollgate::store", error = %e, "could not give a share's charge back");
            }
        }
    }

    /// An answer of the primary that is not taken as memory's counts: to a call sent
    /// before the store left it for memory, or received while a call that found its
    /// connection broken asks whether the primary restarted ([`Unsure`]; it may answer from
    /// an empty restart, holding only what other instances gave back and admitted since,
    /// and this instance's share of that is not what it spent). Kept wherever memory keeps
    /// its own counts, or may decide next: while it decides, in the time after a return
    /// (this instance's share, [`Shared::in_return_grace`]), and until the call that found
    /// the connection broken knows.
    ///
    /// The request it answered was admitted by the primary: memory counts what it charged
    /// on top of its own count (not in the ledger: the primary has it), unless it was
    /// counted there already (`counted`: on this instance's share, or as an admission of a
    /// primary that may have restarted, [`Shared::admit_in_memory`]); either way it is a
    /// late admission ([`Shared::late_admissions`]). It was refused: the primary's
    /// count of each bucket that refused may be one memory does not know (a key this
    /// instance never saw, spent by the fleet on a restarted primary), so memory's count of
    /// it is raised to this instance's share of the primary's plus what memory admitted
    /// since that the primary does not have yet (as a give-back's answers are,
    /// [`Shared::mirror_given_back`]), and never lowered; not for an answer of the
    /// primary's cache, whose counts may be older. A refund or a reset that came late is
    /// left out: memory keeps the higher count.
    ///
    /// If the store came back to the primary and left it again since the call was sent,
    /// what it mirrored meanwhile may include this charge already: it is added anyway
    /// (counted twice, memory refuses early), since it may not.
    fn absorb_late(&self, batch: &Batch, decision: &Decision, origin: Origin, counted: bool) {
        let own = counted || !self.on_primary() || self.in_return_grace() || !self.sure();
        if !own {
            return;
        }
        let charged = match batch.op {
            Op::Charge => decision.allowed,
            Op::Penalize => true,
            Op::Peek | Op::Refund | Op::RefundAt(_) | Op::Reset => false,
        };
        if charged {
            // Noted whether or not memory counted it already: if the primary restarted,
            // the write-back would take it in otherwise.
            let mut late = lock(&self.late_admissions);
            if late.len() + batch.buckets.len() <= LATE_ADMISSIONS {
                late.extend(batch.buckets.iter().cloned());
            }
            drop(late);
            if counted {
                return;
            }
            let scaled = self.scaled_all(&batch.buckets);
            if let Err(e) = self.memory.apply_now(Op::Penalize, &scaled) {
                tracing::debug!(target: "tollgate::store", error = %e, "could not count a late answer in memory");
            }
        } else if batch.op == Op::Charge && self.keeps(origin) {
            let owed = self.ledger.debts(&batch.buckets);
            let answers = batch.buckets.iter().zip(&decision.buckets).zip(owed);
            for ((bucket, state), owed) in answers {
                if !state.allowed {
                    self.raise_to_report(bucket, state, owed);
                }
            }
        }
    }

    /// Keeps what the primary's backend answered: in the ledger, and in memory (each key's
    /// count, scaled by the divisor), so that deciding from memory starts from it. An
    /// answer from the primary's cache ([`Origin::Cache`]) is not kept: it repeats counts
    /// reported earlier, which may be older than those kept since. In the time after a
    /// return (`grace`, [`Shared::in_return_grace`]) memory's counts are left as they are:
    /// memory counts this instance's own share then ([`Shared::charge_share`]), and the
    /// primary's count, split evenly, would take from an instance that spent less than its
    /// share what another spent beyond it (a review: 386 to 468 of 500 admitted by two
    /// instances in a burst just after Redis restarted).
    fn mirror(&self, batch: &Batch, decision: &Decision, origin: Origin, grace: bool) {
        let counts = if grace { Counts::Keep } else { Counts::Set };
        self.keep_answers(batch, decision, origin, counts);
    }

    /// [`Shared::mirror`] of what the primary answered to a give-back, while memory still
    /// decides: memory may have admitted more of a key since its debt was taken, and the
    /// primary's count lacks those (they are owed again, in the ledger). So memory's count
    /// of a key is only raised, to the primary's count plus what is owed again, never
    /// lowered: else memory would admit them a second time. With a divisor above 1 it is
    /// left as it is: each instance decides on its own share, and the primary's count,
    /// split evenly, would take from an instance that spent less than its share what the
    /// others gave back beyond theirs, for the time after the return too (a review: 408
    /// to 497 of 500 in a burst after a restart); that time's end raises it
    /// ([`Shared::end_grace`]).
    /// `placed` are the keys and costs given back (a restore's, or what memory admitted).
    fn mirror_given_back(&self, placed: Vec<(Bucket, Duration)>, decision: &Decision) {
        let batch = Batch::new(Op::Penalize, placed.into_iter().map(|(b, _)| b).collect());
        let counts = if self.config.divisor > 1 {
            Counts::Keep
        } else {
            Counts::Raise
        };
        self.keep_answers(&batch, decision, Origin::Backend, counts);
    }

    /// [`Shared::mirror`] and [`Shared::mirror_given_back`], as `counts` says.
    fn keep_answers(&self, batch: &Batch, decision: &Decision, origin: Origin, counts: Counts) {
        if !self.keeps(origin) {
            return;
        }
        let given_back = counts == Counts::Raise;
        // A give-back's answers: no decision from memory in between, so that what is owed
        // and what memory counts agree.
        let _alone = given_back.then(|| write(&self.deciding));
        let now = self.memory.now().as_micros();
        // An answer earlier than one already noted (answers to charges sent together,
        // noted out of order) would set memory's count back: it is skipped there too.
        let news = self
            .ledger
            .note_all(batch.op, &batch.buckets, &decision.buckets, now);
        if counts == Counts::Keep {
            return;
        }
        let owed = if given_back {
            self.ledger.debts(&batch.buckets)
        } else {
            Default::default()
        };
        let answers = batch.buckets.iter().zip(&decision.buckets).zip(news);
        for (i, ((bucket, state), news)) in answers.enumerate() {
            // (`None`: an earlier answer than the one noted.)
            let Some(counted) = news else {
                continue;
            };
            if given_back {
                self.raise_to_report(bucket, state, owed.get(i).copied().unwrap_or(0));
            } else {
                let scaled = self.scaled(bucket);
                let used = share_of(&bucket.limit, &scaled.limit, counted);
                self.memory.mirror(&scaled, used, state.reset_after);
            }
        }
    }

    /// Whether the primary's answers are kept in memory at all
    /// ([`FallbackConfig::with_mirror_keys`] above 0).
    fn mirrors(&self) -> bool {
        self.config.mirror_keys > 0
    }

    /// Whether memory takes counts from an answer of this origin: the primary's backend's
    /// (not its refusal cache's, whose counts may be older), if it mirrors at all.
    fn keeps(&self, origin: Origin) -> bool {
        self.mirrors() && origin == Origin::Backend
    }

    /// Raises memory's count of `bucket`'s key to this instance's share of what the primary
    /// reported of it (`state`) plus `owed`, what memory admitted that the primary does not
    /// have yet; never lowers it.
    fn raise_to_report(&self, bucket: &Bucket, state: &BucketState, owed: u64) {
        let scaled = self.scaled(bucket);
        let used = share_used(&bucket.limit, &scaled.limit, state);
        self.raise(&scaled, used.saturating_add(owed), state.reset_after);
    }

    /// Raises memory's count of `scaled`'s key to `used`, fresh again in `fresh_in`; never
    /// lowers it.
    fn raise(&self, scaled: &Bucket, used: u64, fresh_in: Duration) {
        let held = self
            .memory
            .apply_now(Op::Peek, std::slice::from_ref(scaled))
            .map_or(0, |d| {
                scaled
                    .limit
                    .capacity()
                    .saturating_sub(d.buckets[0].remaining)
            });
        if used > held {
            self.memory.mirror(scaled, used, fresh_in);
        }
    }

    /// The end of the time after a return ([`Shared::in_return_grace`]) from an outage that
    /// began at `since` (µs, memory's clock): memory's count of each key the primary
    /// reported since (to the give-back, and in that time) is raised to this instance's
    /// share of that report, as outside that time, and never lowered. Memory counted only this instance's own share meanwhile: the next outage
    /// must start from what the fleet spent, not from what this instance did (a review: 4
    /// admitted by an instance where 1 remained on Redis).
    fn end_grace(&self, since: u64) {
        let now = self.memory.now().as_micros();
        for (bucket, used, fresh_in) in self.ledger.reports_since(since, now) {
            let scaled = self.scaled(&bucket);
            self.raise(
                &scaled,
                share_of(&bucket.limit, &scaled.limit, used),
                fresh_in,
            );
        }
    }
}

/// What an answer of the primary does to memory's count of a key ([`Shared::keep_answers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counts {
    /// Set to this instance's share of what the primary counts.
    Set,
    /// Raised to it, plus what is owed again, and never lowered: a give-back's answers.
    Raise,
    /// Left as it is: in the time after a return.
    Keep,
}

/// What counts against a key in memory, whose limit is `scaled`, when the primary reports
/// `state` under `limit`: each instance's share of what remains (rounded up) is what it
/// has left, so N instances admit at most what remains plus N.
fn share_used(limit: &Limit, scaled: &Limit, state: &BucketState) -> u64 {
    share_of(
        limit,
        scaled,
        limit.capacity().saturating_sub(state.remaining),
    )
}

/// [`share_used`] of a report that `used` was counted against `limit` (past it too: a
/// count kept past a limit lowered since, see [`Ledger::note`](crate::ledger::Ledger)).
fn share_of(limit: &Limit, scaled: &Limit, used: u64) -> u64 {
    let (cap, share) = (limit.capacity(), scaled.capacity());
    if cap == share {
        return used;
    }
    if used > cap {
        // Past the limit: the share of the count, rounded up.
        let part = (u128::from(used) * u128::from(share)).div_ceil(u128::from(cap.max(1)));
        return u64::try_from(part).unwrap_or(u64::MAX);
    }
    let remaining = u128::from(cap.saturating_sub(used));
    let left = (remaining * u128::from(share)).div_ceil(u128::from(cap.max(1)));
    share.saturating_sub(u64::try_from(left).unwrap_or(u64::MAX))
}

/// While the store decides on the primary, asks the primary's incarnation every
/// [`WATCH_EVERY`]: a primary that lost its counts without a call failing (made a replica
/// of another server and a master again, its connection kept; restarted between two
/// requests through a pool or RESP3, which reconnect quietly) is left and checked as a
/// failed one is, so its counts are written back (a review: a Redis made a replica of an
/// empty one and a master again while the instance was idle, every count lost unnoticed).
/// A question that timed out or was refused is not a failure: the calls find those. One
/// that found the connection broken is: the client connects afresh by itself after it,
/// and the calls that follow, through the new connection, would not fail, on a primary
/// that may have restarted empty meanwhile (a review: three instances idle while Redis
/// restarted admitted 800 of 500 before the next question found the new `run_id`).
/// Ends with the store.
async fn watch<P: Primary>(alive: Alive<P>) {
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let Some(shared) = alive.shared.upgrade() else {
            return;
        };
        if !shared.on_primary() {
            continue;
        }
        let id = match shared.bounded(shared.primary.incarnation()).await {
            Ok(id) => id,
            Err(e) if shared.primary.connection_broke(&e) => {
                shared.leave(&e.to_string(), true);
                // Whether the primary restarted is not known.
                shared.count_restart();
                continue;
            }
            Err(_) => continue,
        };
        if shared.is_new_incarnation(&id) {
            shared.leave(
                "the primary's incarnation changed (restarted, or took another server's data)",
                true,
            );
            shared.count_restart();
        }
    }
}

/// A background task of a store ([`Shared::keep_tasks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    /// The first check ([`Shared::start`]).
    Start,
    /// [`watch`].
    Watch,
    /// [`recover`], with its number ([`Shared::recovery`]).
    Recover(u64),
}

/// Held by a background task of a store: when the task ends without finishing (its
/// runtime ended: a runtime drops the tasks it still holds), the store notes it is gone,
/// so that its next call starts it again ([`Shared::keep_tasks`]); a check ended so
/// leaves neither a check nor a drain under way.
struct Alive<P> {
    shared: Weak<Shared<P>>,
    task: Task,
    /// Set when the task finished its work (a first check made, a return to the primary
    /// made).
    done: bool,
}

impl<P> Alive<P> {
    fn new(shared: &Arc<Shared<P>>, task: Task) -> Self {
        Self {
            shared: Arc::downgrade(shared),
            task,
            done: false,
        }
    }
}

impl<P> Drop for Alive<P> {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        match self.task {
            Task::Start => {
                if !self.done {
                    shared.started.store(false, Ordering::Release);
                }
            }
            Task::Watch => shared.watching.store(false, Ordering::Release),
            Task::Recover(number) => {
                let ended = shared
                    .recovery
                    .compare_exchange(number, 0, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                if ended && !self.done {
                    // Dropped in its check, or in the last give-back: those waiting for
                    // either wait no more (a later check runs its own).
                    shared.checking.store(false, Ordering::Release);
                    shared.check_ended.notify_waiters();
                    if shared.draining.swap(false, Ordering::AcqRel) {
                        shared.entered.notify_waiters();
                    }
                }
            }
        }
    }
}

/// Wakes those waiting for a check to end ([`Shared::wait_for_primary`]) when dropped.
struct CheckEnded<'a>(&'a tokio::sync::Notify);

impl Drop for CheckEnded<'_> {
    fn drop(&mut self) {
        self.0.notify_waiters();
    }
}

/// Checks the primary with backoff until a check passes, then returns to it: the first
/// check after `first`, or at once with `at_once` (the wait after it is then `first`).
/// Ends when the store is dropped.
async fn recover<P: Primary>(mut alive: Alive<P>, first: Duration, at_once: bool) {
    let mut delay = first;
    let mut wait = !at_once || first.is_zero();
    let shared = alive.shared.clone();
    // When the store left the primary (memory's clock): the keys noted since (the
    // give-back's among them) are raised at the end of the time after the return.
    let Some(left) = shared.upgrade().map(|s| s.memory.now().as_micros()) else {
        return;
    };
    let since = tokio::time::Instant::now();
    let mut said = since;
    loop {
        if wait && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let max = shared.config.probe_max;
        // A check made at once in place of one after `delay` stands for it.
        let next = if wait {
            (delay * 2).max(shared.config.probe_min).min(max)
        } else {
            delay
        };
        wait = true;
        shared.checking.store(true, Ordering::Release);
        let checked = shared.sync().await;
        shared.checking.store(false, Ordering::Release);
        // (After `enter` below if it passed: those waiting then find the primary. If it
        // failed, at once: asking a fresh connection why, below, waits up to a second on a
        // paused Redis, which batches waiting for the check's end waited too, where the
        // call timeout was promised.)
        let ended = CheckEnded(&shared.check_ended);
        match checked {
            Ok(()) => {
                // The time after the return first: a request that sees the return (another
                // worker thread decides one as soon as `enter` wakes those waiting) sees it.
                shared.start_grace(left);
                shared.enter(delay);
                drop(ended);
                // Decisions made from memory during the last give-back, by calls that
                // waited longer than the call timeout or failed late: given back now. If
                // that fails, the store leaves the primary again and the check gives them
                // back before it returns.
                tokio::task::yield_now().await;
                // No longer under way first: a failure here leaves the primary again, and
                // starts the next check.
                alive.done = true;
                drop(alive);
                if !shared.on_primary() {
                    // Left again before that (its check found none under way).
                    shared.spawn_recover(Duration::ZERO, true);
                }
                if let Err(e) = shared.give_back(false).await {
                    shared.failed(&e, false);
                }
                return;
            }
            Err(e) => {
                drop(ended);
                if matches!(e, StoreError::Timeout(_)) || shared.primary.connection_broke(&e) {
                    // In a task of its own: on a paused Redis the fresh connection waits up
                    // to a second, and the checks go on meanwhile (held by it, the circuit
                    // opened 1.2 to 1.7 s into a pause, and a review's burst on seed 002,
                    // failing open, waited a timeout a request for a check not coming:
                    // 0.8 s for the last of 300).
                    let diagnosing = Arc::downgrade(&shared);
                    tokio::spawn(async move {
                        if let Some(shared) = diagnosing.upgrade() {
                            shared.diagnose().await;
                        }
                    });
                }
                let failure = shared.explained(&e.to_string());
                if said.elapsed() >= STILL_WARNING_EVERY {
                    said = tokio::time::Instant::now();
                    tracing::warn!(
                        target: "tollgate::store",
                        error = %failure,
                        minutes = since.elapsed().as_secs() / 60,
                        "rate-limit store still deciding from memory: every check of the \
                         primary has failed for `minutes` (each instance counts alone; \
                         logged every 10 minutes while it lasts)"
                    );
                }
                shared.count_failure(&failure);
                tracing::debug!(
                    target: "tollgate::store",
                    error = %e,
                    next_probe_ms = next.as_millis() as u64,
                    "rate-limit store primary still failing"
                );
            }
        }
        delay = next;
    }
}

impl<P: Primary> Store for FallbackStore<P> {
    /// The primary's mode while on it, [`StoreMode::Fallback`] while deciding from memory.
    fn mode(&self) -> StoreMode {
        if self.shared.on_primary() {
            self.shared.primary.mode()
        } else {
            StoreMode::Fallback
        }
    }

    fn fallbacks(&self) -> u64 {
        // The bits above `ON_PRIMARY` count the departures from the primary.
        self.shared.state.load(Ordering::Acquire) >> 1
    }

    fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(async move {
            batch.validate()?;
            let start = tokio::time::Instant::now();
            let shared = &self.shared;
            shared.keep_tasks();
            // (The restarts before the state: see `Shared::restarts`.)
            if shared.ask_again.load(Ordering::Acquire) {
                // (Each request that sees it, until it is cleared: `leave` does nothing once
                // the store left.)
                shared.leave(
                    "a call that found the connection broken was cancelled before it knew whether \
                     the primary restarted",
                    true,
                );
                shared.count_restart();
                shared.ask_again.store(false, Ordering::Release);
            }
            let (restarts, state) = loop {
                let restarts = shared.restarts.load(Ordering::Acquire);
                let state = shared.state.load(Ordering::Acquire);
                if state & ON_PRIMARY != 0 {
                    break (restarts, state);
                }
                if batch.on_failure == FailureMode::Fallback {
                    if let Some(answer) = shared.decide_off_primary(batch, start).await {
                        return answer;
                    }
                    // Back on the primary meanwhile: decided there.
                } else if shared.tripped.load(Ordering::Acquire) {
                    let reason = lock(&shared.reason).clone();
                    return Err(StoreError::Unavailable(format!("circuit open: {reason}")));
                } else if !shared.wait_for_primary(start).await {
                    // Not an outage yet: a batch that cannot use memory waited (up to the
                    // patience from when it came while a check was under way, the call
                    // timeout between checks) for the check, to be decided on the primary
                    // only once it passed. Until then the primary may have restarted empty,
                    // its counts not yet written back: deciding there would admit what it
                    // has forgotten. (Not counted towards the circuit breaker: batches
                    // waiting together are not signs of their own; the check is.)
                    let reason = lock(&shared.reason).clone();
                    return Err(StoreError::Unavailable(format!(
                        "the primary is being checked: {reason}"
                    )));
                }
                // Back on the primary (unless it left again since: looked at again).
            };
            // Just back from an outage: charged on this instance's share first.
            let grace = shared.in_return_grace();
            let share = grace.then(|| shared.charge_share(batch)).flatten();
            if let Some(share) = share.as_ref().filter(|s| !s.decision.allowed) {
                let mut refused = share.decision.clone();
                shared.show_as_primary(batch, &mut refused);
                return Ok(refused);
            }
            // Under way until its answer counts where it should (or memory decides it).
            let sent = shared.under_way.send(batch);
            // Its calls wait on queued behind answers for what remains of the patience
            // from when it began to wait: a request that waited for a check does not wait
            // the patience again for its own call.
            let give_up = shared.patient_deadline(start);
            let (result, unsure) = shared.call_again_if_broken(batch, give_up).await;
            if let Some(share) = &share {
                if !result.as_ref().is_ok_and(|(d, _)| d.allowed) {
                    // Not admitted there (or decided from memory below, charged once).
                    shared.release_share(share);
                }
            }
            match result {
                Ok((decision, origin)) => {
                    shared.failures.store(0, Ordering::Release);
                    // An admission that came while a call that found its connection
                    // broken asks whether the primary restarted waits for it to know
                    // (within the patience): it may come from a primary that forgot its
                    // counts. (A refusal is kept at once, before the call that found the
                    // restart is decided from memory.)
                    if decision.allowed && !shared.sure() {
                        shared.until_sure(give_up).await;
                    }
                    // Admitted by a primary that restarted since the call was sent, or
                    // may have (a wait that ended before the call knew included):
                    // possibly empty, it admits what it forgot (a burst through a fresh
                    // connection while a slow question of the incarnation was under way:
                    // 374 admitted of 100). Admitted only if memory has room for it too
                    // (charged there unless on the share already), and then a late
                    // admission (below); refused, its charge there is left to the
                    // write-back, which raises each key to what this instance knew. (A
                    // refusal stands, as below.)
                    // (Whether a call is unsure first, then the flag, then the count: a
                    // call that stops being unsure has flagged or counted what it found
                    // before, and a request clears the flag only after its count. h128's
                    // review: the other way round, an answer could miss a cancelled
                    // question's flag set between its two looks.)
                    let restarted = decision.allowed
                        && (!shared.sure()
                            || shared.ask_again.load(Ordering::Acquire)
                            || shared.restarts.load(Ordering::Acquire) != restarts);
                    let mut counted = share.is_some();
                    if restarted && !counted {
                        match shared.admit_in_memory(batch) {
                            Ok(charged) => counted = charged,
                            Err(refused) => {
                                drop(sent);
                                return Ok(refused);
                            }
                        }
                    }
                    // Only if the store has not left the primary since the call was sent,
                    // and no call is finding out whether it restarted; else what it
                    // admitted is added to memory's count (unless charged there already,
                    // on the share), and what it refused raises it.
                    // (Sure first: a call that found its connection broken takes the
                    // store off the primary before it is sure again. Looked at the other
                    // way round, an answer from a primary that restarted empty could come
                    // between the two and be taken as memory's count, the write-back
                    // taking its admission in: 101 admitted of 100 in about 1 run in 300.)
                    let sure_now = shared.sure();
                    let st_now = shared.state.load(Ordering::Acquire);
                    if !restarted && sure_now && st_now == state {
                        if grace {
                            shared.follow_on_share(batch, &decision, share.is_some());
                        }
                        shared.mirror(batch, &decision, origin, grace);
                    } else {
                        shared.absorb_late(batch, &decision, origin, counted);
                    }
                    drop(sent);
                    Ok(decision)
                }
                Err(e @ StoreError::InvalidBatch(_)) => Err(e),
                Err(e) => {
                    // Memory decides it now: it is no longer under way.
                    drop(sent);
                    shared.failed(&e, unsure.is_some());
                    // Off the primary now; counted while this is unsure, so that the
                    // admissions waiting for it see it.
                    if unsure.as_ref().is_some_and(|u| u.doubts) {
                        shared.count_restart();
                    }
                    // Its answers are not taken as memory's counts.
                    drop(unsure);
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

    impl ProbeOnly {
        fn new() -> Self {
            ProbeOnly {
                memory: MemoryStore::new(),
                probes: AtomicU32::new(0),
            }
        }
    }

    impl Primary for ProbeOnly {}

    impl Store for ProbeOnly {
        fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
            Box::pin(async move {
                if batch.op == Op::Penalize {
                    if batch.buckets[0].key == "tollgate-probe:health" {
                        self.probes.fetch_add(1, Ordering::Relaxed);
                    }
                    self.memory.apply_now(batch.op, &batch.buckets)
                } else {
                    Err(StoreError::Unavailable("charges fail".into()))
                }
            })
        }
    }

    /// A broken pipe (as a multiplexed connection's first call after it broke fails) if
    /// `broken` is set, which it clears.
    fn broke_once(broken: &AtomicBool) -> Result<(), StoreError> {
        if broken.swap(false, Ordering::AcqRel) {
            let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
            return Err(StoreError::Backend(Box::new(pipe)));
        }
        Ok(())
    }

    /// Whether `error` is [`broke_once`]'s.
    fn is_broken_pipe(error: &StoreError) -> bool {
        matches!(error, StoreError::Backend(e) if e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
    }

    /// A primary whose connection breaks when it restarts (a new incarnation): the next
    /// call fails with a broken pipe, as through a multiplexed connection. One that
    /// `forgets` comes back empty, as Redis without persistence does.
    #[derive(Debug)]
    struct Restarting {
        memory: Mutex<MemoryStore>,
        run_id: AtomicU64,
        broken: AtomicBool,
        forgets: bool,
    }

    impl Restarting {
        fn new(forgets: bool) -> Self {
            Self {
                memory: Mutex::new(MemoryStore::new()),
                run_id: AtomicU64::new(1),
                broken: AtomicBool::new(false),
                forgets,
            }
        }

        /// What it counts (clones share their state).
        fn memory(&self) -> MemoryStore {
            lock(&self.memory).clone()
        }

        fn restart(&self) {
            if self.forgets {
                *lock(&self.memory) = MemoryStore::new();
            }
            self.run_id.fetch_add(1, Ordering::AcqRel);
            self.broken.store(true, Ordering::Release);
        }
    }

    impl Primary for Restarting {
        fn incarnation(&self) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
            let id = self.run_id.load(Ordering::Acquire).to_string();
            Box::pin(std::future::ready(Ok(Some(id))))
        }

        fn connection_broke(&self, error: &StoreError) -> bool {
            is_broken_pipe(error)
        }
    }

    impl Store for Restarting {
        fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
            Box::pin(async move {
                broke_once(&self.broken)?;
                self.memory().apply_now(batch.op, &batch.buckets)
            })
        }
    }

    /// A connection that broke because the primary restarted sends the store to memory
    /// (the restart is not retried: the counts are written back first), and the first
    /// check is made at once, even right after a return to the primary. Before, a second
    /// departure within `STABLE_AFTER` of a return waited the backoff (100 ms here) before
    /// its first check, every decision meanwhile made from memory.
    #[tokio::test(start_paused = true)]
    async fn a_broken_connection_is_checked_at_once_even_soon_after_a_return() {
        let primary = Restarting::new(false);
        let config = FallbackConfig::default()
            .with_probe_backoff(Duration::from_millis(100), Duration::from_millis(250));
        let store = FallbackStore::connect_with_memory(primary, MemoryStore::new(), config).await;
        assert_eq!(store.mode(), Mode::Primary);
        let batch = Batch::charge(vec![Bucket::new(
            "api",
            "k",
            Limit::sliding(Quota::per_hour(1_000)),
        )]);
        for departure in 0..2 {
            store.primary().restart();
            assert!(store.apply(&batch).await.unwrap().allowed);
            assert_eq!(store.mode(), Mode::Fallback, "departure {departure}");
            let left = tokio::time::Instant::now();
            while store.mode() != Mode::Primary {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let back_after = left.elapsed();
            assert!(
                back_after < Duration::from_millis(10),
                "departure {departure}: back on the primary after {back_after:?}"
            );
        }
    }

    /// A runtime of its own, its clock paused (sleeps end at once when it idles), as a
    /// `#[tokio::test]`'s: each ends when dropped, with the tasks it holds.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    /// Waits (up to 10 s of the runtime's clock) for `store` to decide on its primary.
    async fn back_on_the_primary<P: Primary>(store: &FallbackStore<P>) -> bool {
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.mode() != Mode::Primary && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        store.mode() == Mode::Primary
    }

    /// A store that left its primary as the runtime that was to check it ended (a
    /// `#[tokio::test]` using a limiter in a `static`) is checked again by its next call,
    /// on that call's runtime, and returns. Before, the check ended with its runtime and
    /// nothing started another: the store decided from memory for good (a review: still on
    /// memory after 15 s in a later runtime, what it admitted never charged to Redis).
    #[test]
    fn a_store_whose_check_ended_with_its_runtime_is_checked_by_its_next_call() {
        let batch = Batch::charge(vec![Bucket::new(
            "api",
            "k",
            Limit::sliding(Quota::per_hour(1_000)),
        )]);
        let first = runtime();
        let store = first.block_on(async {
            let primary = Restarting::new(false);
            let store =
                FallbackStore::connect_with_memory(primary, MemoryStore::new(), Default::default())
                    .await;
            store.primary().restart();
            assert!(store.apply(&batch).await.unwrap().allowed);
            assert_eq!(store.mode(), Mode::Fallback);
            store
        });
        // Its check was spawned, not yet run: it ends here.
        drop(first);
        runtime().block_on(async {
            assert!(store.apply(&batch).await.unwrap().allowed);
            assert!(back_on_the_primary(&store).await, "still on memory");
            // What memory admitted (both charges) went to the primary.
            let used = store
                .primary()
                .memory()
                .apply_now(Op::Peek, &batch.buckets)
                .unwrap();
            assert_eq!(used.buckets[0].remaining, 1_000 - 2);
        });
    }

    /// A store made outside any runtime (before `main`'s runtime starts, in a `static`)
    /// learns its primary's incarnation at its first call, and watches it: a primary that
    /// restarts empty gets its counts back. Before, only a store made inside a runtime
    /// checked its primary first: one made outside never learnt the incarnation, took the
    /// restart for a broken connection, and decided on the emptied primary (a review: 7
    /// admitted of 5 a minute).
    #[test]
    fn a_store_made_outside_a_runtime_gives_a_restarted_primary_its_counts_back() {
        let store = FallbackStore::with_memory(
            Restarting::new(true),
            MemoryStore::new(),
            FallbackConfig::default(),
        );
        let batch = Batch::charge(vec![Bucket::new(
            "user",
            "alice",
            Limit::sliding(Quota::per_minute(5)),
        )]);
        runtime().block_on(async {
            for n in 0..5 {
                assert!(store.apply(&batch).await.unwrap().allowed, "charge {n}");
            }
            assert!(!store.apply(&batch).await.unwrap().allowed);
            // Idle a while: its tasks run.
            tokio::time::sleep(Duration::from_millis(10)).await;
            store.primary().restart();
            // Refused from memory, then by the primary, given the counts back.
            assert!(!store.apply(&batch).await.unwrap().allowed);
            assert!(back_on_the_primary(&store).await, "still on memory");
            for n in 0..3 {
                assert!(
                    !store.apply(&batch).await.unwrap().allowed,
                    "admitted after the restart ({n})"
                );
            }
        });
    }

    /// A primary that can be taken down, and whose give-back calls (penalties other than
    /// the probe's) take 5 ms each: a give-back of many keys takes a while, as on Redis.
    /// While `fail_user` is set, every give-back call that carries `user:u` after the
    /// first fails (after its wait).
    #[derive(Debug)]
    struct SlowGiveBack {
        redis: MemoryStore,
        down: AtomicBool,
        fail_user: AtomicBool,
        user_give_backs: AtomicU32,
    }

    impl Primary for SlowGiveBack {}

    impl Store for SlowGiveBack {
        fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
            Box::pin(async move {
                if self.down.load(Ordering::Acquire) {
                    return Err(StoreError::Unavailable("down".into()));
                }
                if batch.op == Op::Penalize && batch.buckets[0].key != "tollgate-probe:health" {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let user = batch.buckets.iter().any(|b| b.key == "user:u");
                    if user
                        && self.user_give_backs.fetch_add(1, Ordering::AcqRel) >= 1
                        && self.fail_user.load(Ordering::Acquire)
                    {
                        return Err(StoreError::Unavailable("give-back failed".into()));
                    }
                }
                self.redis.apply_now(batch.op, &batch.buckets)
            })
        }
    }

    /// One instance: a user at 10 of 30 on memory, 2,000 keys owing a charge, and more
    /// keys charged every millisecond, when the primary answers again; the user keeps
    /// sending (4 clients, one request every 4 ms each) through the return. How many
    /// requests of the user were admitted in all; checks that the primary holds the user
    /// at the limit. With `fail_user`, the give-back calls that carry the user's
    /// admissions made after the primary answered again fail for the first 400 ms.
    async fn user_admitted_across_a_slow_give_back(fail_user: bool) -> u64 {
        let primary = SlowGiveBack {
            redis: MemoryStore::new(),
            down: AtomicBool::new(false),
            fail_user: AtomicBool::new(fail_user),
            user_give_backs: AtomicU32::new(0),
        };
        let config = FallbackConfig::default()
            .with_failure_threshold(1)
            .with_probe_backoff(Duration::from_millis(10), Duration::from_millis(10));
        let store = FallbackStore::connect_with_memory(primary, MemoryStore::new(), config).await;
        assert_eq!(store.mode(), Mode::Primary);
        let user = Bucket::new("user", "u", Limit::sliding(Quota::per_hour(30)));
        let charge = |b: &Bucket| Batch::charge(vec![b.clone()]);
        let per_ip = Limit::sliding(Quota::per_hour(10));

        store.primary().down.store(true, Ordering::Release);
        for _ in 0..10 {
            assert!(store.apply(&charge(&user)).await.unwrap().allowed);
        }
        assert_eq!(store.mode(), Mode::Fallback);
        for i in 0..2_000 {
            let ip = Bucket::new("ip", &format!("10.0.{}.{}", i / 256, i % 256), per_ip);
            assert!(store.apply(&charge(&ip)).await.unwrap().allowed);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let load = {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let ip = Bucket::new("ip", &format!("10.1.{}.{}", i / 256, i % 256), per_ip);
                    assert!(store.apply(&Batch::charge(vec![ip])).await.unwrap().allowed);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        };
        let clients: Vec<_> = (0..4u64)
            .map(|n| {
                let (store, stop, batch) = (store.clone(), stop.clone(), charge(&user));
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(n)).await;
                    let mut admitted = 0;
                    while !stop.load(Ordering::Relaxed) {
                        admitted += u64::from(store.apply(&batch).await.unwrap().allowed);
                        tokio::time::sleep(Duration::from_millis(4)).await;
                    }
                    admitted
                })
            })
            .collect();

        store.primary().down.store(false, Ordering::Release);
        let healed = tokio::time::Instant::now();
        while store.mode() != Mode::Primary {
            assert!(healed.elapsed() < Duration::from_secs(5), "not back");
            if healed.elapsed() >= Duration::from_millis(400) {
                store.primary().fail_user.store(false, Ordering::Release);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        store.primary().fail_user.store(false, Ordering::Release);
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        load.await.unwrap();
        let mut admitted = 10;
        for c in clients {
            admitted += c.await.unwrap();
        }
        let held = store
            .primary()
            .redis
            .apply_now(Op::Peek, std::slice::from_ref(&user))
            .unwrap();
        assert_eq!(
            held.buckets[0].remaining, 0,
            "the primary holds the user at 30"
        );
        admitted
    }

    /// At most the limit plus one is admitted. Before, memory's admissions during the
    /// give-back (160 ms here) were charged to the primary only after the store had
    /// returned to it, and the give-back's answers set memory's count back to what had
    /// been owed when it began: 44 to 65 admitted.
    #[tokio::test(start_paused = true)]
    async fn admissions_during_the_give_back_are_not_admitted_again_on_the_primary() {
        let admitted = user_admitted_across_a_slow_give_back(false).await;
        assert!(admitted <= 31, "admitted {admitted} of 30");
    }

    /// The calls that give back the user's admissions made during the first give-back fail
    /// for a while: the store stays on memory, keeps the debt, and gives it back before it
    /// returns. Before, that give-back came after the return, its failure was ignored, and
    /// the debt waited for the next outage: the primary admitted the user again.
    #[tokio::test(start_paused = true)]
    async fn a_failed_last_give_back_keeps_its_debts() {
        let admitted = user_admitted_across_a_slow_give_back(true).await;
        assert!(admitted <= 31, "admitted {admitted} of 30");
    }

    /// A primary in two parts, as Redis Cluster's slots: keys of bucket `b` on one, the
    /// others on the other. A give-back call (a penalty other than the probe's) applies
    /// what it holds of the other part, then fails if it holds `b` while `fail_b` counts
    /// down, as a call across slots does when one slot's node does not answer.
    #[derive(Debug)]
    struct Parted {
        redis: MemoryStore,
        down: AtomicBool,
        fail_b: AtomicU32,
    }

    impl Primary for Parted {
        fn part_of(&self, bucket: &Bucket) -> u64 {
            u64::from(bucket.key.starts_with("b:"))
        }
    }

    impl Store for Parted {
        fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
            Box::pin(async move {
                if self.down.load(Ordering::Acquire) {
                    return Err(StoreError::Unavailable("down".into()));
                }
                if batch.op != Op::Penalize || batch.buckets[0].key == "tollgate-probe:health" {
                    return self.redis.apply_now(batch.op, &batch.buckets);
                }
                let (b, other): (Vec<Bucket>, Vec<Bucket>) = batch
                    .buckets
                    .iter()
                    .cloned()
                    .partition(|x| self.part_of(x) == 1);
                let mut states = Vec::new();
                let mut now = tollgate_limits::Timestamp::default();
                for part in [other, b] {
                    if part.is_empty() {
                        continue;
                    }
                    if self.part_of(&part[0]) == 1
                        && self
                            .fail_b
                            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                            .is_ok()
                    {
                        return Err(StoreError::Timeout(Duration::from_millis(50)));
                    }
                    let d = self.redis.apply_now(Op::Penalize, &part)?;
                    now = d.now;
                    states.extend(d.buckets);
                }
                Ok(Decision {
                    allowed: true,
                    now,
                    buckets: states,
                })
            })
        }
    }

    /// After an outage, a give-back whose call fails on one part of the primary (a paused
    /// Redis Cluster node) after the other took its share: each part is given back in its
    /// own calls, so what the other part took is not given again with the retry. Before,
    /// both parts went in one call, and each of its three failures charged `a` again: 12
    /// for 3 admitted.
    #[tokio::test(start_paused = true)]
    async fn a_give_back_failing_on_one_part_is_not_given_again_on_the_others() {
        let primary = Parted {
            redis: MemoryStore::new(),
            down: AtomicBool::new(false),
            fail_b: AtomicU32::new(0),
        };
        let config = FallbackConfig::default()
            .with_failure_threshold(1)
            .with_probe_backoff(Duration::from_millis(10), Duration::from_millis(10));
        let store = FallbackStore::connect_with_memory(primary, MemoryStore::new(), config).await;
        let limit = Limit::sliding(Quota::per_hour(100));
        let both = vec![Bucket::new("a", "1", limit), Bucket::new("b", "1", limit)];
        store.primary().down.store(true, Ordering::Release);
        for _ in 0..3 {
            assert!(
                store
                    .apply(&Batch::charge(both.clone()))
                    .await
                    .unwrap()
                    .allowed
            );
        }
        assert_eq!(store.mode(), Mode::Fallback);
        store.primary().fail_b.store(3, Ordering::Release);
        store.primary().down.store(false, Ordering::Release);
        let healed = tokio::time::Instant::now();
        while store.mode() != Mode::Primary {
            assert!(healed.elapsed() < Duration::from_secs(5), "not back");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(store.primary().fail_b.load(Ordering::Acquire), 0);
        let held = store.primary().redis.apply_now(Op::Peek, &both).unwrap();
        let remaining: Vec<u64> = held.buckets.iter().map(|s| s.remaining).collect();
        assert_eq!(
            remaining,
            [97, 97],
            "each key charged the 3 memory admitted"
        );
    }

    /// Answers to charges sent together, noted out of order: memory keeps the larger
    /// count, as the ledger does (it took the answer noted last: after 500 charges on 8
    /// threads, an empty restart admitted a 501st from memory).
    #[test]
    fn memory_keeps_the_larger_count_when_answers_are_noted_out_of_order() {
        let memory = MemoryStore::new();
        let store =
            FallbackStore::unchecked(ProbeOnly::new(), memory.clone(), FallbackConfig::default());
        let bucket = Bucket::new("api", "k", Limit::sliding(Quota::per_minute(500)));
        let batch = Batch::charge(vec![bucket.clone()]);
        let answer = |remaining| Decision {
            allowed: true,
            now: memory.now(),
            buckets: vec![BucketState {
                allowed: true,
                limit: 500,
                remaining,
                reset_after: Duration::from_secs(60),
                retry_after: None,
                refusal: None,
            }],
        };
        // The 500th answer first, then the 499th.
        store
            .shared
            .mirror(&batch, &answer(0), Origin::Backend, false);
        store
            .shared
            .mirror(&batch, &answer(1), Origin::Backend, false);
        let held = memory
            .apply_now(Op::Peek, std::slice::from_ref(&bucket))
            .unwrap();
        assert!(!held.allowed, "memory admits a 501st: {held:?}");
        // A refund's answer lowers it.
        let refund = Batch::new(Op::Refund, vec![bucket.clone()]);
        store
            .shared
            .mirror(&refund, &answer(1), Origin::Backend, false);
        let held = memory
            .apply_now(Op::Peek, std::slice::from_ref(&bucket))
            .unwrap();
        assert_eq!(held.buckets[0].remaining, 1);
    }

    /// Each of N instances gets its share of what remains, rounded up: N shares add up
    /// to at most what remains plus N.
    #[test]
    fn shares_of_what_remains_add_up_to_at_most_it_plus_one_each() {
        let report = |remaining| BucketState {
            allowed: true,
            limit: 20,
            remaining,
            reset_after: Duration::from_secs(60),
            retry_after: None,
            refusal: None,
        };
        let limit = Limit::sliding(Quota::per_minute(20));
        assert_eq!(share_used(&limit, &limit, &report(7)), 13);
        for n in 1..=7u32 {
            let scaled = limit.divided_by(n);
            for remaining in 0..=20 {
                let used = share_used(&limit, &scaled, &report(remaining));
                let left = scaled.capacity() - used;
                assert!(left <= scaled.capacity());
                assert!(
                    u64::from(n) * left <= remaining + u64::from(n),
                    "{n} instances, {remaining} remaining: {left} each"
                );
                assert_eq!(left == 0, remaining == 0, "{n}, {remaining}");
            }
        }
    }

    /// On memory with a divisor, a bucket still reports its own limit (what its policy
    /// publishes); this instance's share shows in what remains.
    #[tokio::test(start_paused = true)]
    async fn a_divided_limit_reports_the_buckets_limit_and_the_share_remaining() {
        let primary = ProbeOnly::new();
        let config = FallbackConfig::default()
            .with_failure_threshold(1)
            .with_fallback_divisor(2);
        let store = FallbackStore::with_config(primary, config);
        let batch = Batch::charge(vec![Bucket::new(
            "chat",
            "k",
            Limit::sliding(Quota::per_minute(60)),
        )]);
        let mut remaining = Vec::new();
        for _ in 0..31 {
            let d = store.apply(&batch).await.unwrap();
            assert_eq!(store.mode(), Mode::Fallback);
            assert_eq!(d.buckets[0].limit, 60);
            remaining.push((d.allowed, d.buckets[0].remaining));
        }
        assert_eq!(remaining[0], (true, 29));
        assert_eq!(remaining[29], (true, 0));
        assert_eq!(remaining[30], (false, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_circuit_that_reopens_soon_after_closing_keeps_backing_off() {
        let primary = ProbeOnly::new();
        let config = FallbackConfig::default()
            .with_failure_threshold(1)
            .with_probe_backoff(Duration::from_millis(10), Duration::from_millis(640));
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

    /// A connection that broke and was answered through a fresh one (the primary did not
    /// restart) leaves the store sure of the primary again: its later answers are memory's
    /// counts, what other instances spent included, so the next departure starts from the
    /// primary's count (the key is one the store remembers, `mirrored_keys`). Had the call
    /// stayed unsure, memory would count only this instance's own admissions (2 of 10
    /// where the primary held 7).
    #[tokio::test(start_paused = true)]
    async fn after_a_connection_made_again_the_primarys_answers_are_memorys_counts_again() {
        let primary = Restarting::new(false);
        let store = FallbackStore::connect_with_memory(
            primary,
            MemoryStore::new(),
            FallbackConfig::default(),
        )
        .await;
        assert_eq!(store.mode(), Mode::Primary);
        let bucket = Bucket::new("api", "k", Limit::sliding(Quota::per_hour(10)));
        let batch = Batch::charge(vec![bucket.clone()]);
        // The connection breaks: the call is made again through a fresh one.
        store.primary().broken.store(true, Ordering::Release);
        assert!(store.apply(&batch).await.unwrap().allowed);
        assert_eq!(store.mode(), Mode::Primary);
        // Other instances spend 5; this one's next charge is the 7th.
        for _ in 0..5 {
            let spent = store
                .primary()
                .memory()
                .apply_now(Op::Charge, std::slice::from_ref(&bucket))
                .unwrap();
            assert!(spent.allowed);
        }
        assert_eq!(store.apply(&batch).await.unwrap().buckets[0].remaining, 3);
        assert_eq!(store.mirrored_keys(), 1);
        // The primary restarts: the next charge is decided from memory, which holds 7.
        store.primary().restart();
        let decided = store.apply(&batch).await.unwrap();
        assert_eq!(store.mode(), Mode::Fallback);
        assert!(decided.allowed);
        assert_eq!(decided.buckets[0].remaining, 2);
    }

    /// A primary that restarts empty, its connection breaking (as [`Restarting`]'s), and
    /// takes 20 ms to tell its incarnation: meanwhile the calls sent through the fresh
    /// connection are answered by the emptied primary.
    #[derive(Debug)]
    struct SlowToTell {
        redis: Mutex<MemoryStore>,
        run_id: AtomicU64,
        broken: AtomicBool,
    }

    impl Primary for SlowToTell {
        fn incarnation(&self) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(Some(self.run_id.load(Ordering::Acquire).to_string()))
            })
        }

        fn connection_broke(&self, error: &StoreError) -> bool {
            is_broken_pipe(error)
        }
    }

    impl Store for SlowToTell {
        fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
            Box::pin(async move {
                broke_once(&self.broken)?;
                lock(&self.redis).apply_now(batch.op, &batch.buckets)
            })
        }
    }

    /// A store on a [`SlowToTell`] primary with `bucket` spent `spent` times, then the
    /// primary restarted empty (its connection broken, its incarnation new).
    async fn spent_then_restarted_empty(
        bucket: &Bucket,
        spent: usize,
    ) -> FallbackStore<SlowToTell> {
        spent_then_restarted_empty_with(bucket, spent, FallbackConfig::default()).await
    }

    /// [`spent_then_restarted_empty`] with `config`.
    async fn spent_then_restarted_empty_with(
        bucket: &Bucket,
        spent: usize,
        config: FallbackConfig,
    ) -> FallbackStore<SlowToTell> {
        let primary = SlowToTell {
            redis: Mutex::new(MemoryStore::new()),
            run_id: AtomicU64::new(1),
            broken: AtomicBool::new(false),
        };
        let store = FallbackStore::connect_with_memory(primary, MemoryStore::new(), config).await;
        let charge = Batch::charge(vec![bucket.clone()]);
        for _ in 0..spent {
            assert!(store.apply(&charge).await.unwrap().allowed);
        }
        *lock(&store.primary().redis) = MemoryStore::new();
        store.primary().run_id.fetch_add(1, Ordering::AcqRel);
        store.primary().broken.store(true, Ordering::Release);
        store
    }

    /// `clients` clients sending `batch` `each` times at once through `store`: how many
    /// were admitted.
    async fn admitted_at_once<P: Primary + 'static>(
        store: &FallbackStore<P>,
        batch: &Batch,
        clients: usize,
        each: usize,
    ) -> u32 {
        let clients: Vec<_> = (0..clients)
            .map(|_| {
                let (store, batch) = (store.clone(), batch.clone());
                tokio::spawn(async move {
                    let mut admitted = 0;
                    for _ in 0..each {
                        admitted += u32::from(store.apply(&batch).await.unwrap().allowed);
                    }
                    admitted
                })
            })
            .collect();
        let mut admitted = 0;
        for client in clients {
            admitted += client.await.unwrap();
        }
        admitted
    }

    /// A key at 90 of 100 when the primary restarts empty, then 10 clients sending 10
    /// requests each at once: the first call finds the connection broken and asks the
    /// incarnation, and the others' calls, through the fresh connection, are admitted by
    /// the emptied primary until it knows. Their admissions wait for it, and stand only
    /// where memory has room for them too: 10 admitted in all. Before, each was admitted
    /// as the primary answered (90 here; 374 of 100 in 1 of 1,000 runs of `outage`'s
    /// burst after an empty restart, its question slow on a loaded machine), and only added
    /// to the count written back.
    #[tokio::test(start_paused = true)]
    async fn answers_of_a_primary_that_restarted_empty_while_it_was_asked_are_not_admissions() {
        let bucket = Bucket::new("api", "k", Limit::sliding(Quota::per_hour(100)));
        let batch = Batch::charge(vec![bucket.clone()]);
        let store = spent_then_restarted_empty(&bucket, 90).await;
        let burst = admitted_at_once(&store, &batch, 10, 10).await;
        while store.mode() != Mode::Primary {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let after = admitted_at_once(&store, &batch, 1, 10).await;
        assert_eq!((burst, after), (10, 0), "90 of 100 before the restart");
    }

    /// As above for a guard's looks (`Op::Peek`, a sign-in's lockout before the attempt)
    /// at a key spent before the restart: none is let through (a review: 9 of 100 were,
    /// each an attempt a lockout held in memory let through).
    #[tokio::test(start_paused = true)]
    async fn looks_at_a_spent_key_of_a_primary_that_restarted_empty_are_refused() {
        let bucket = Bucket::new("guard", "k", Limit::sliding(Quota::per_hour(100)));
        let look = Batch::new(Op::Peek, vec![bucket.clone()]);
        let store = spent_then_restarted_empty(&bucket, 100).await;
        assert_eq!(admitted_at_once(&store, &look, 10, 10).await, 0);
    }

    /// `batch` sent through `store` in a task of its own, once the call before it is
    /// asking the incarnation (the store unsure).
    async fn first_asking<P: Primary + 'static>(
        store: &FallbackStore<P>,
        batch: &Batch,
    ) -> tokio::task::JoinHandle<bool> {
        let first = {
            let (store, batch) = (store.clone(), batch.clone());
            tokio::spawn(async move { store.apply(&batch).await.unwrap().allowed })
        };
        while store.shared.sure() {
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
        first
    }

    /// The call that finds the connection broken, cancelled while it asks the incarnation
    /// (its client gone): the admissions waiting for it are looked at in memory all the
    /// same, and the next request takes the store off the primary to check it. 10 admitted
    /// where 10 remained (a review: the 9 waiting admitted as a healthy primary's, then
    /// 50 of 50 more, 59 where 10 remained, the store on the emptied primary until its
    /// own question a second later).
    #[tokio::test(start_paused = true)]
    async fn a_question_cancelled_while_it_asks_leaves_nothing_admitted_unchecked() {
        let bucket = Bucket::new("api", "k", Limit::sliding(Quota::per_hour(100)));
        let batch = Batch::charge(vec![bucket.clone()]);
        let store = spent_then_restarted_empty(&bucket, 90).await;
        let first = first_asking(&store, &batch).await;
        let waiting = {
            let (store, batch) = (store.clone(), batch.clone());
            tokio::spawn(async move { admitted_at_once(&store, &batch, 9, 1).await })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        first.abort();
        let waited = waiting.await.unwrap();
        let after = admitted_at_once(&store, &batch, 1, 50).await;
        assert_eq!((waited, after), (9, 1), "90 of 100 before the restart");
    }

    /// A charge that costs more than this instance's share of a key (a divisor of 4: 25 of
    /// 100), admitted by a primary that restarted empty while it was asked: memory cannot
    /// decide it (it never fits there), and the primary's answer stands, as
    /// [`Shared::charge_share`] leaves such a charge to the primary (a review: refused as
    /// one that never fits, with no `Retry-After`).
    #[tokio::test(start_paused = true)]
    async fn a_charge_above_the_share_admitted_by_a_restarted_primary_stands() {
        let bucket = Bucket::new("api", "k", Limit::sliding(Quota::per_hour(100))).with_cost(30);
        let batch = Batch::charge(vec![bucket.clone()]);
        let config = FallbackConfig::default().with_fallback_divisor(4);
        let store = spent_then_restarted_empty_with(&bucket, 1, config).await;
        let first = first_asking(&store, &batch).await;
        assert_eq!(admitted_at_once(&store, &batch, 2, 1).await, 2);
        first.await.unwrap();
    }

    /// As above, beside a bucket over its limit in the same charge: memory's refusal of
    /// that one stands (a review: a key spent to 100 of 100 was admitted 3 of 3 times
    /// beside a bucket whose cost, 30, is above the share, 25).
    #[tokio::test(start_paused = true)]
    async fn a_spent_bucket_beside_one_above_the_share_is_refused() {
        let spent = Bucket::new("api", "k", Limit::sliding(Quota::per_hour(100)));
        let costly = Bucket::new("api", "g", Limit::sliding(Quota::per_hour(100))).with_cost(30);
        let config = FallbackConfig::default().with_fallback_divisor(4);
        let store = spent_then_restarted_empty_with(&spent, 100, config).await;
        let both = Batch::charge(vec![spent, costly]);
        let first = first_asking(&store, &both).await;
        assert_eq!(admitted_at_once(&store, &both, 3, 1).await, 0);
        assert!(!first.await.unwrap());
    }

    /// Admissions of the emptied primary that wait together for the question are woken
    /// together, on two threads: memory is charged in one step, so that two of them do
    /// not both take the last of a key (a review: a look first, then the charge, admitted
    /// 2 where 1 remained in 3 of 150 runs). 100 runs of 40 at once at 99 of 100, the
    /// first asking before the others are sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admissions_woken_together_take_the_last_of_a_key_once() {
        let bucket = Bucket::new("api", "k", Limit::sliding(Quota::per_hour(100)));
        let batch = Batch::charge(vec![bucket.clone()]);
        for run in 0..100 {
            let store = spent_then_restarted_empty(&bucket, 99).await;
            // The call that finds the connection broken asks first: a connection is made
            // again after its error (the mock's next call answers at once, and could come
            // from the other thread before the first call is unsure).
            let first = first_asking(&store, &batch).await;
            let burst =
                admitted_at_once(&store, &batch, 39, 1).await + u32::from(first.await.unwrap());
            assert!(burst <= 1, "run {run}: {burst} admitted where 1 remained");
        }
    }

    /// A primary that fails every call while `down` and every check (the probe's write)
    /// while `checks_fail`, and otherwise decides in a memory store of its own; `calls`
    /// counts every call. While
    /// `hold` is set, each give-back call (a penalty other than the probe's) waits for a
    /// permit of `release`; `give_backs` counts them, and the one numbered `fail_give_back`
    /// (from 1; 0: none) fails; every refund fails while `fail_refunds`. While `slow`, every
    /// call takes 1 ms (on tokio's clock) before it answers.
    #[derive(Debug)]
    struct Gated {
        redis: MemoryStore,
        down: AtomicBool,
        checks_fail: AtomicBool,
        hold: AtomicBool,
        release: tokio::sync::Semaphore,
        give_backs: AtomicU32,
        fail_give_back: AtomicU32,
        calls: AtomicU32,
        fail_refunds: AtomicBool,
        slow: AtomicBool,
    }

    impl Gated {
        fn new() -> Self {
            Gated {
                redis: MemoryStore::new(),
                down: AtomicBool::new(false),
                checks_fail: AtomicBool::new(false),
                hold: AtomicBool::new(false),
                release: tokio::sync::Semaphore::new(0),
                give_backs: AtomicU32::new(0),
                fail_give_back: AtomicU32::new(0),
                calls: AtomicU32::new(0),
                fail_refunds: AtomicBool::new(false),
                slow: AtomicBool::new(false),
            }
        }

        /// How much of `bucket` the primary has left.
        fn remaining(&self, bucket: &Bucket) -> u64 {
            let seen = self.redis.apply_now(Op::Peek, std::slice::from_ref(bucket));
            seen.unwrap().buckets[0].remaining
        }
    }

    impl Primary for Gated {}

    impl Store for Gated {
        fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::AcqRel);
                if self.slow.load(Ordering::Acquire) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                if self.down.load(Ordering::Acquire) {
                    return Err(StoreError::Unavailable("down".into()));
                }
                if batch.op == Op::Refund && self.fail_refunds.load(Ordering::Acquire) {
                    return Err(StoreError::Unavailable("refunds fail".into()));
                }
                let probe = batch.buckets[0].key == "tollgate-probe:health";
                if probe && self.checks_fail.load(Ordering::Acquire) {
                    return Err(StoreError::Unavailable("checks fail".into()));
                }
                if batch.op == Op::Penalize && !probe {
                    let n = self.give_backs.fetch_add(1, Ordering::AcqRel) + 1;
                    if self.hold.load(Ordering::Acquire) {
                        self.release.acquire().await.unwrap().forget();
                    }
                    if n == self.fail_give_back.load(Ordering::Acquire) {
                        return Err(StoreError::Unavailable("give-back failed".into()));
                    }
                }
                self.redis.apply_now(batch.op, &batch.buckets)
            })
        }
    }

    /// A store on a [`Gated`] primary (up), with an empty memory.
    async fn gated(config: FallbackConfig) -> FallbackStore<Gated> {
        FallbackStore::connect_with_memory(Gated::new(), MemoryStore::new(), config).await
    }

    /// Sleeps (on the paused clock) until `done` holds, for 5 s at most.
    async fn until(done: impl Fn() -> bool) {
        let started = tokio::time::Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(5), "timed out");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Below the failure threshold, a batch that fails open (or closed) does not use
    /// memory: it waits, up to the call timeout, for the check under way, and is decided
    /// on the primary once the check passed; if it does not pass in time, the batch fails
    /// (`Unavailable`) and the primary is not asked (it may have restarted empty, its
    /// counts not yet written back).
    #[tokio::test(start_paused = true)]
    async fn a_batch_that_fails_open_waits_for_the_check_and_is_decided_only_once_it_passed() {
        let config = FallbackConfig::default().with_failure_threshold(10);
        let store = gated(config).await;
        assert_eq!(store.mode(), Mode::Primary);
        let bucket = Bucket::new("api", "k", Limit::sliding(Quota::per_hour(10)));
        let fallback = Batch::charge(vec![bucket.clone()]);
        let open = fallback.clone().with_failure_mode(FailureMode::Open);

        // A failed call sends the store to memory; the primary answers the check made at once.
        store.primary().down.store(true, Ordering::Release);
        assert!(store.apply(&fallback).await.unwrap().allowed);
        assert_eq!(store.mode(), Mode::Fallback);
        store.primary().down.store(false, Ordering::Release);
        let decided = store.apply(&open).await.unwrap();
        assert!(decided.allowed);
        assert_eq!(store.mode(), Mode::Primary);
        // Decided on the primary, after memory's admission was given back to it.
        assert_eq!(decided.buckets[0].remaining, 8);
        assert_eq!(store.primary().remaining(&bucket), 8);
        // (The return is over: what memory decided during it was given back.)
        tokio::time::sleep(Duration::from_millis(1)).await;

        // Again, and now the checks fail while charges would pass.
        store.primary().down.store(true, Ordering::Release);
        assert!(store.apply(&fallback).await.unwrap().allowed);
        assert_eq!(store.mode(), Mode::Fallback);
        store.primary().checks_fail.store(true, Ordering::Release);
        store.primary().down.store(false, Ordering::Release);
        let started = tokio::time::Instant::now();
        let err = store.apply(&open).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Unavailable(why) if why.contains("being checked")),
            "{err}"
        );
        assert_eq!(started.elapsed(), FallbackConfig::default().timeout());
        assert_eq!(
            store.primary().remaining(&bucket),
            8,
            "the primary was asked"
        );
    }

    /// While the last give-back runs (memory decides nothing then), a charge waits for the
    /// return and is decided on the primary, which holds every admission memory made by
    /// then; it is not decided from memory in the meantime. The give-backs before it are
    /// repeated only while more than one call's worth is owed: a give-back of one key
    /// (a's) is followed by the last one (b's).
    #[tokio::test(start_paused = true)]
    async fn a_charge_made_during_the_last_give_back_waits_and_is_decided_on_the_primary() {
        let store = gated(FallbackConfig::default()).await;
        let user = Bucket::new("user", "u", Limit::sliding(Quota::per_hour(10)));
        let charge = |key: &str| {
            let bucket = Bucket::new("user", key, Limit::sliding(Quota::per_hour(10)));
            Batch::charge(vec![bucket])
        };
        let gated = store.primary();
        gated.hold.store(true, Ordering::Release);
        gated.down.store(true, Ordering::Release);
        assert!(store.apply(&charge("u")).await.unwrap().allowed);
        assert_eq!(store.mode(), Mode::Fallback);
        gated.down.store(false, Ordering::Release);
        // The first give-back (u's) is held; memory admits a, owed for the next one.
        until(|| gated.give_backs.load(Ordering::Acquire) == 1).await;
        assert!(store.apply(&charge("a")).await.unwrap().allowed);
        gated.release.add_permits(1);
        // The second (a's) is held; memory admits b, owed for the last one.
        until(|| gated.give_backs.load(Ordering::Acquire) == 2).await;
        assert!(store.apply(&charge("b")).await.unwrap().allowed);
        gated.release.add_permits(1);
        // The last one (b's) is held: memory decides nothing meanwhile.
        until(|| gated.give_backs.load(Ordering::Acquire) == 3).await;
        assert_eq!(store.mode(), Mode::Fallback);
        let waiting = tokio::spawn({
            let store = store.clone();
            async move { store.apply(&charge("u")).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished(), "decided during the last give-back");
        gated.release.add_permits(1);
        let decided = waiting.await.unwrap().unwrap();
        assert!(decided.allowed);
        assert_eq!(store.mode(), Mode::Primary);
        // On the primary: the outage's admission given back, and this one.
        assert_eq!(decided.buckets[0].remaining, 8);
        assert_eq!(store.primary().remaining(&user), 8);
    }

    /// A give-back of more keys than one call carries whose second call fails: what the
    /// first call delivered is not owed again, so each key is counted once on the primary
    /// once the store returns (a key given back twice would cost its client a request).
    #[tokio::test(start_paused = true)]
    async fn a_give_back_that_fails_part_way_gives_back_only_what_was_not_delivered() {
        let store = gated(FallbackConfig::default()).await;
        let keys: Vec<Bucket> = (0..=GIVE_BACK_BATCH)
            .map(|i| Bucket::new("ip", &i.to_string(), Limit::sliding(Quota::per_hour(10))))
            .collect();
        let gated = store.primary();
        gated.down.store(true, Ordering::Release);
        for key in &keys {
            assert!(
                store
                    .apply(&Batch::charge(vec![key.clone()]))
                    .await
                    .unwrap()
                    .allowed
            );
        }
        assert_eq!(store.mode(), Mode::Fallback);
        // The first give-back's second call fails; the next check delivers the rest.
        gated.fail_give_back.store(2, Ordering::Release);
        gated.down.store(false, Ordering::Release);
        until(|| store.mode() == Mode::Primary).await;
        assert_eq!(gated.give_backs.load(Ordering::Acquire), 3);
        for key in &keys {
            assert_eq!(gated.remaining(key), 9, "{}", key.key);
        }
    }

    /// What the primary answers to a give-back raises memory's count of the key while
    /// memory still decides: if the store cannot return yet (here the last give-back
    /// fails), memory goes on from the primary's count, what other instances spent
    /// during the outage included, not from its own.
    #[tokio::test(start_paused = true)]
    async fn a_give_backs_answer_raises_memory_to_the_primarys_count_while_memory_decides() {
        let store = gated(FallbackConfig::default()).await;
        let bucket = |key: &str| Bucket::new("api", key, Limit::sliding(Quota::per_hour(10)));
        let charge = |key: &str| Batch::charge(vec![bucket(key)]);
        let gated = store.primary();
        gated.hold.store(true, Ordering::Release);
        gated.down.store(true, Ordering::Release);
        assert!(store.apply(&charge("k")).await.unwrap().allowed);
        assert_eq!(store.mode(), Mode::Fallback);
        // Other instances spend 8 of k on the primary meanwhile.
        for _ in 0..8 {
            let spent = gated.redis.apply_now(Op::Charge, &[bucket("k")]).unwrap();
            assert!(spent.allowed);
        }
        gated.down.store(false, Ordering::Release);
        // k's give-back (the primary then holds 9); x and y are admitted meanwhile, and
        // the last give-back (y's) fails.
        until(|| gated.give_backs.load(Ordering::Acquire) == 1).await;
        assert!(store.apply(&charge("x")).await.unwrap().allowed);
        gated.release.add_permits(1);
        until(|| gated.give_backs.load(Ordering::Acquire) == 2).await;
        assert!(store.apply(&charge("y")).await.unwrap().allowed);
        gated.fail_give_back.store(3, Ordering::Release);
        gated.release.add_permits(1);
        until(|| gated.give_backs.load(Ordering::Acquire) == 3).await;
        gated.release.add_permits(1);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(store.mode(), Mode::Fallback);
        // Memory holds k at 9: 1 more, where its own count (1) would admit 9.
        let mut admitted = 0;
        for _ in 0..10 {
            admitted += u32::from(store.apply(&charge("k")).await.unwrap().allowed);
        }
        assert_eq!(admitted, 1);
    }

    /// With the mirror off (`with_mirror_keys(0)`), memory keeps nothing of what the
    /// primary answered: it starts empty at each outage (10 of 10 admitted on memory after
    /// 5 were spent on the primary), and nothing is owed to the primary (no debt lost).
    #[tokio::test(start_paused = true)]
    async fn with_the_mirror_off_memory_starts_empty_at_an_outage() {
        let config = FallbackConfig::default().with_mirror_keys(0);
        let store = gated(config).await;
        let bucket = Bucket::new("api", "k", Limit::sliding(Quota::per_hour(10)));
        let batch = Batch::charge(vec![bucket]);
        for _ in 0..5 {
            assert!(store.apply(&batch).await.unwrap().allowed);
        }
        store.primary().down.store(true, Ordering::Release);
        let mut admitted = 0;
        for _ in 0..12 {
            admitted += u32::from(store.apply(&batch).await.unwrap().allowed);
        }
        assert_eq!(store.mode(), Mode::Fallback);
        assert_eq!(admitted, 10);
        // Nothing is remembered, so no debt is lost either.
        assert_eq!(store.mirrored_keys(), 0);
        assert_eq!(store.lost_give_backs(), 0);
    }

    /// Checks of a primary that stays down back off: the first at once, then after the
    /// first wait, doubling up to the longest (10, 20, ..., 320, then 640 ms: 10 checks in
    /// 3 s, where checking every 10 ms would be 300).
    #[tokio::test(start_paused = true)]
    async fn checks_of_a_primary_that_stays_down_back_off() {
        let config = FallbackConfig::default()
            .with_failure_threshold(1)
            .with_probe_backoff(Duration::from_millis(10), Duration::from_millis(640));
        let store = gated(config).await;
        let gated = store.primary();
        gated.down.store(true, Ordering::Release);
        let batch = Batch::charge(vec![Bucket::new(
            "api",
            "k",
            Limit::sliding(Quota::per_hour(10)),
        )]);
        assert!(store.apply(&batch).await.unwrap().allowed);
        let calls = gated.calls.load(Ordering::Acquire);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(store.mode(), Mode::Fallback);
        // A check that fails other than by the timeout is made once more at once: two calls.
        let checks = (gated.calls.load(Ordering::Acquire) - calls) / 2;
        assert!((8..=12).contains(&checks), "{checks} checks");
    }

    /// A reset made from memory during an outage whose delivery fails is owed still: the
    /// next check delivers it, and the client is admitted on the primary again.
    #[tokio::test(start_paused = true)]
    async fn a_reset_whose_give_back_fails_is_delivered_by_the_next_check() {
        let store = gated(FallbackConfig::default()).await;
        let bucket = Bucket::new("api", "k", Limit::sliding(Quota::per_hour(5)));
        let charge = Batch::charge(vec![bucket.clone()]);
        for _ in 0..5 {
            assert!(store.apply(&charge).await.unwrap().allowed);
        }
        assert!(!store.apply(&charge).await.unwrap().allowed);
        let gated = store.primary();
        gated.down.store(true, Ordering::Release);
        let reset = Batch::new(Op::Reset, vec![bucket.clone()]);
        let _ = store.apply(&reset).await.unwrap();
        assert_eq!(store.mode(), Mode::Fallback);
        // The first check's give-back cannot deliver the reset; the next one can.
        gated.fail_refunds.store(true, Ordering::Release);
        gated.down.store(false, Ordering::Release);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(store.mode(), Mode::Fallback);
        gated.fail_refunds.store(false, Ordering::Release);
        until(|| store.mode() == Mode::Primary).await;
        assert_eq!(gated.remaining(&bucket), 5);
        assert!(store.apply(&charge).await.unwrap().allowed);
    }

    /// A reset made from memory during an outage (an account's owner signing in, clearing
    /// its failures) takes away on the primary what the key counted then, as last
    /// reported here: failures another instance counted on the primary since stay. It was
    /// given back as a reset, which deleted them too and lifted the lockout they made.
    #[tokio::test(start_paused = true)]
    async fn a_reset_made_from_memory_leaves_what_others_counted_since() {
        let store = gated(FallbackConfig::default()).await;
        let bucket = Bucket::new("lockout", "alice", Limit::sliding(Quota::per_hour(5)));
        let charge = Batch::charge(vec![bucket.clone()]);
        for _ in 0..2 {
            assert!(store.apply(&charge).await.unwrap().allowed);
        }
        let gated = store.primary();
        gated.down.store(true, Ordering::Release);
        let _ = store
            .apply(&Batch::new(Op::Reset, vec![bucket.clone()]))
            .await
            .unwrap();
        assert_eq!(store.mode(), Mode::Fallback);
        // Another instance, still on the primary, counts three more.
        for _ in 0..3 {
            let other = gated
                .redis
                .apply_now(Op::Charge, std::slice::from_ref(&bucket))
                .unwrap();
            assert!(other.allowed);
        }
        gated.down.store(false, Ordering::Release);
        until(|| store.mode() == Mode::Primary).await;
        assert_eq!(gated.remaining(&bucket), 2);
    }

    /// A limit raised (a reload) while memory decides: what memory admitted under the new
    /// limit is charged to the primary whole, not only as much as the old limit held (a
    /// review: 10/min raised to 50 during an outage, 49 admitted from memory were given
    /// back as 10, and 39 more were admitted once the primary answered: 89 in a minute).
    #[tokio::test(start_paused = true)]
    async fn what_memory_admitted_under_a_raised_limit_is_given_back_whole() {
        let store = gated(FallbackConfig::default()).await;
        let before = Bucket::new("api", "k", Limit::sliding(Quota::per_hour(10)));
        assert!(
            store
                .apply(&Batch::charge(vec![before]))
                .await
                .unwrap()
                .allowed
        );
        let gated = store.primary();
        gated.down.store(true, Ordering::Release);
        let raised = Bucket::new("api", "k", Limit::sliding(Quota::per_hour(50)));
        let charge = Batch::charge(vec![raised.clone()]);
        for _ in 0..49 {
            assert!(store.apply(&charge).await.unwrap().allowed);
        }
        assert_eq!(store.mode(), Mode::Fallback);
        assert!(!store.apply(&charge).await.unwrap().allowed);
        gated.down.store(false, Ordering::Release);
        until(|| store.mode() == Mode::Primary).await;
        assert_eq!(gated.remaining(&raised), 0);
        assert!(!store.apply(&charge).await.unwrap().allowed);
        // One departure from the primary, counted once (the metrics' switches).
        assert_eq!(Store::fallbacks(&store), 1);
    }

    /// A limit lowered, its key refused at the lower limit (the primary reports nothing
    /// remaining, not how far past it the count is), then raised again while memory decides:
    /// memory holds the count the primary reported under the higher limit, not the lower
    /// limit's capacity (a review: 10 of 10/min, lowered to 5 and refused, Redis paused,
    /// raised to 10: 5 more admitted from memory, 15 in the minute).
    #[tokio::test(start_paused = true)]
    async fn a_count_past_a_lowered_limit_is_kept_when_it_is_raised_again() {
        let store = gated(FallbackConfig::default()).await;
        let ten = Bucket::new("api", "k", Limit::sliding(Quota::per_hour(10)));
        let five = Bucket::new("api", "k", Limit::sliding(Quota::per_hour(5)));
        for _ in 0..10 {
            assert!(
                store
                    .apply(&Batch::charge(vec![ten.clone()]))
                    .await
                    .unwrap()
                    .allowed
            );
        }
        assert!(
            !store
                .apply(&Batch::charge(vec![five]))
                .await
                .unwrap()
                .allowed
        );
        let gated = store.primary();
        gated.down.store(true, Ordering::Release);
        let decision = store.apply(&Batch::charge(vec![ten])).await.unwrap();
        assert_eq!(store.mode(), Mode::Fallback);
        assert!(!decision.allowed, "{decision:?}");
    }

    /// Calls that fail together (sent while on the primary, failing after the store left
    /// it) leave the primary once: one check runs, backing off as after a single failure,
    /// not one check per failed call, each probing a primary that is down.
    #[tokio::test(start_paused = true)]
    async fn calls_that_fail_together_start_one_check_of_the_primary() {
        let config = FallbackConfig::default()
            .with_failure_threshold(1)
            .with_probe_backoff(Duration::from_millis(10), Duration::from_millis(640));
        let store = gated(config).await;
        let gated = store.primary();
        gated.slow.store(true, Ordering::Release);
        gated.down.store(true, Ordering::Release);
        let batch = Batch::charge(vec![Bucket::new(
            "api",
            "k",
            Limit::sliding(Quota::per_hour(10)),
        )]);
        let calls = gated.calls.load(Ordering::Acquire);
        let (a, b) = tokio::join!(store.apply(&batch), store.apply(&batch));
        assert!(a.unwrap().allowed);
        assert!(b.unwrap().allowed);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(store.mode(), Mode::Fallback);
        // The two charges, then two calls a check (one failing other than by the
        // timeout is made once more at once): at once, then after 10, 20, ..., 320, 640,
        // 640 ms.
        let checks = (gated.calls.load(Ordering::Acquire) - calls - 2) / 2;
        assert_eq!(checks, 10);
    }

    /// At the failure threshold (1 here) the first failed call is an outage: a batch that
    /// fails open is answered `circuit open` at once, without waiting for the check (below
    /// the threshold it would wait the call timeout for it). A threshold of 0 is taken
    /// as 1.
    #[tokio::test(start_paused = true)]
    async fn a_failure_at_the_threshold_opens_the_circuit_at_once() {
        assert_eq!(
            FallbackConfig::default()
                .with_failure_threshold(0)
                .failure_threshold(),
            1
        );
        let config = FallbackConfig::default()
            .with_timeout(Duration::from_millis(80))
            .with_failure_threshold(1);
        let store = gated(config).await;
        let gated = store.primary();
        gated.down.store(true, Ordering::Release);
        gated.checks_fail.store(true, Ordering::Release);
        let bucket = Bucket::new("api", "k", Limit::sliding(Quota::per_hour(10)));
        let fallback = Batch::charge(vec![bucket]);
        let open = fallback.clone().with_failure_mode(FailureMode::Open);
        assert!(store.apply(&fallback).await.unwrap().allowed);
        assert_eq!(store.mode(), Mode::Fallback);
        let started = tokio::time::Instant::now();
        let err = store.apply(&open).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Unavailable(why) if why == "circuit open: rate-limit store unavailable: down"),
            "{err}"
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    /// Each setting reads back as set, raised to its least where it has one; the time
    /// after a return defaults to the longest wait between checks plus two call timeouts.
    #[test]
    fn settings_read_back_as_set_and_raised_to_their_least() {
        let ms = Duration::from_millis;
        let default = FallbackConfig::default();
        assert_eq!(default.timeout(), ms(50));
        assert_eq!(default.failure_threshold(), 3);
        assert_eq!(default.probe_backoff(), (ms(100), ms(250)));
        assert_eq!(default.fallback_divisor(), 1);
        assert_eq!(default.mirror_keys(), 50_000);
        assert_eq!(default.return_grace(), ms(350));

        let set = FallbackConfig::default()
            .with_timeout(ms(20))
            .with_failure_threshold(5)
            .with_probe_backoff(ms(10), ms(40))
            .with_fallback_divisor(4)
            .with_mirror_keys(7);
        assert_eq!(set.timeout(), ms(20));
        assert_eq!(set.failure_threshold(), 5);
        assert_eq!(set.probe_backoff(), (ms(10), ms(40)));
        assert_eq!(set.fallback_divisor(), 4);
        assert_eq!(set.mirror_keys(), 7);
        // Derived from the settings until set.
        assert_eq!(set.return_grace(), ms(80));
        assert_eq!(
            set.clone().with_return_grace(ms(900)).return_grace(),
            ms(900)
        );
        assert_eq!(
            set.with_return_grace(Duration::ZERO).return_grace(),
            Duration::ZERO
        );

        let least = FallbackConfig::default()
            .with_timeout(Duration::ZERO)
            .with_failure_threshold(0)
            .with_probe_backoff(Duration::ZERO, Duration::ZERO)
            .with_fallback_divisor(0)
            .with_mirror_keys(0);
        assert_eq!(least.timeout(), ms(1));
        assert_eq!(least.failure_threshold(), 1);
        assert_eq!(least.probe_backoff(), (ms(1), ms(1)));
        assert_eq!(least.fallback_divisor(), 1);
        assert_eq!(least.mirror_keys(), 0);
        // The longest wait is at least the first.
        let backoff = FallbackConfig::default().with_probe_backoff(ms(300), ms(30));
        assert_eq!(backoff.probe_backoff(), (ms(300), ms(300)));
    }

    /// Waits are at most [`MAX_WAIT`], an hour: `Duration::MAX` as the timeout overflowed
    /// the clock where a check's patience was worked out, and the store panicked when it
    /// was made (a probe's backoff as long would not have checked the primary again).
    #[tokio::test(start_paused = true)]
    async fn waits_longer_than_an_hour_are_taken_as_an_hour() {
        let most = FallbackConfig::default()
            .with_timeout(Duration::MAX)
            .with_probe_backoff(Duration::MAX, Duration::MAX);
        assert_eq!(most.timeout(), MAX_WAIT);
        assert_eq!(most.probe_backoff(), (MAX_WAIT, MAX_WAIT));
        let store =
            FallbackStore::connect_with_memory(ProbeOnly::new(), MemoryStore::new(), most).await;
        let batch = Batch::charge(vec![Bucket::new(
            "api",
            "k",
            Limit::sliding(Quota::per_hour(100)),
        )]);
        // Charges fail: decided from memory, the check backing off.
        assert!(store.apply(&batch).await.unwrap().allowed);
        assert_eq!(store.mode(), Mode::Fallback);
        tokio::time::sleep(MAX_WAIT * 3).await;
        assert!(store.apply(&batch).await.unwrap().allowed);
    }

    /// A call sent before the store left the primary and answered after it returned (the
    /// departure and the return both came meanwhile) is a late answer all the same: its
    /// report is not taken as memory's count of the key (it may come from a primary that
    /// restarted empty), so the next outage starts the key where memory had it. Had
    /// departures not been counted, only whether the store is on the primary, memory would
    /// have taken the primary's 6 of 10 as its own count (3 left at the next outage, not 9).
    #[tokio::test(start_paused = true)]
    async fn an_answer_to_a_call_sent_before_a_departure_and_a_return_is_late() {
        let config = FallbackConfig::default().with_timeout(Duration::from_secs(10));
        let store = gated(config).await;
        let gated = store.primary();
        let limit = Limit::sliding(Quota::per_hour(10));
        let a = Bucket::new("api", "a", limit);
        // Other instances spent 5 of a's 10 on the primary.
        let spent = gated
            .redis
            .apply_now(Op::Penalize, &[a.clone().with_cost(5)]);
        assert_eq!(spent.unwrap().buckets[0].remaining, 5);
        gated.hold.store(true, Ordering::Release);
        let penalty = Batch::new(Op::Penalize, vec![a.clone()]);
        let other = Batch::charge(vec![Bucket::new("api", "b", limit)])
            .with_failure_mode(FailureMode::Open);
        let (late, ()) = tokio::join!(store.apply(&penalty), async {
            // The penalty is held on the primary; meanwhile the store leaves it and returns.
            until(|| gated.give_backs.load(Ordering::Acquire) == 1).await;
            gated.down.store(true, Ordering::Release);
            assert!(store.apply(&other).await.is_err());
            assert_eq!(store.mode(), Mode::Fallback);
            gated.down.store(false, Ordering::Release);
            until(|| store.mode() == Mode::Primary).await;
            gated.release.add_permits(1);
        });
        assert_eq!(late.unwrap().buckets[0].remaining, 4);
        gated.hold.store(false, Ordering::Release);
        gated.down.store(true, Ordering::Release);
        let decided = store.apply(&Batch::charge(vec![a])).await.unwrap();
        assert_eq!(store.mode(), Mode::Fallback);
        assert!(decided.allowed);
        assert_eq!(decided.buckets[0].remaining, 9);
    }

    /// A primary down at startup is an outage at once, whatever the failure threshold
    /// (the largest here): a batch that fails open is answered `circuit open` without
    /// waiting for a check. And the checks that follow, failing, do not overflow the count
    /// of failures (a panic in a debug build, which ended the checks: the store never
    /// returned to the primary).
    #[tokio::test(start_paused = true)]
    async fn a_primary_down_at_startup_opens_the_circuit_whatever_the_threshold() {
        let gated = Gated::new();
        gated.down.store(true, Ordering::Release);
        let config = FallbackConfig::default().with_failure_threshold(u32::MAX);
        let store = FallbackStore::connect_with_memory(gated, MemoryStore::new(), config).await;
        assert_eq!(store.mode(), Mode::Fallback);
        let bucket = Bucket::new("api", "k", Limit::sliding(Quota::per_hour(10)));
        let open = Batch::charge(vec![bucket]).with_failure_mode(FailureMode::Open);
        let started = tokio::time::Instant::now();
        let err = store.apply(&open).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Unavailable(why)
                if why == "circuit open: at startup: rate-limit store unavailable: down"),
            "{err}"
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
        // Checks keep counting failures past the threshold; once the primary answers,
        // the store is back on it.
        tokio::time::sleep(Duration::from_secs(1)).await;
        store.primary().down.store(false, Ordering::Release);
        until(|| store.mode() == Mode::Primary).await;
    }

    /// A primary shared through an `Arc` answers for itself whether a connection broke: a
    /// broken pipe is made again through a fresh connection (and decided by the primary),
    /// and any other failure is not (the charge reaches the primary once).
    #[tokio::test(start_paused = true)]
    async fn a_primary_in_an_arc_tells_whether_its_connection_broke() {
        let restarting = Arc::new(Restarting::new(false));
        let config = FallbackConfig::default();
        let store =
            FallbackStore::connect_with_memory(restarting, MemoryStore::new(), config).await;
        assert_eq!(store.mode(), Mode::Primary);
        let batch = Batch::charge(vec![Bucket::new(
            "api",
            "k",
            Limit::sliding(Quota::per_hour(10)),
        )]);
        store.primary().broken.store(true, Ordering::Release);
        assert_eq!(store.apply(&batch).await.unwrap().buckets[0].remaining, 9);
        assert_eq!(store.mode(), Mode::Primary);

        let gated = Arc::new(Gated::new());
        let config = FallbackConfig::default();
        let store = FallbackStore::connect_with_memory(gated, MemoryStore::new(), config).await;
        store.primary().down.store(true, Ordering::Release);
        let calls = store.primary().calls.load(Ordering::Acquire);
        assert!(store.apply(&batch).await.unwrap().allowed);
        assert_eq!(store.mode(), Mode::Fallback);
        // (Before the check this failure starts: it has not run yet.)
        assert_eq!(store.primary().calls.load(Ordering::Acquire) - calls, 1);
    }

    /// The store shows its parts: the settings it was made with, the memory store it
    /// decides from (holding what it decided), and a debug form naming its mode.
    #[tokio::test(start_paused = true)]
    async fn the_store_shows_its_settings_memory_and_mode() {
        let config = FallbackConfig::default().with_fallback_divisor(2);
        let store = gated(config.clone()).await;
        assert_eq!(store.config(), &config);
        let debug = format!("{store:?}");
        assert!(
            debug.starts_with("FallbackStore { mode: Primary"),
            "{debug}"
        );
        store.primary().down.store(true, Ordering::Release);
        let bucket = Bucket::new("api", "k", Limit::sliding(Quota::per_hour(10)));
        assert!(
            store
                .apply(&Batch::charge(vec![bucket.clone()]))
                .await
                .unwrap()
                .allowed
        );
        assert!(format!("{store:?}").starts_with("FallbackStore { mode: Fallback"));
        // Memory counts the key against this instance's share: 1 of 5.
        let scaled = Bucket::new("api", "k", Limit::sliding(Quota::per_hour(5)));
        let seen = store.memory().apply_now(Op::Peek, &[scaled]).unwrap();
        assert_eq!(seen.buckets[0].remaining, 4);
    }

    /// The default [`Primary::restore`] leaves a key that counts as much already alone,
    /// in one call (a read), and raises one that counts less, in a second.
    #[tokio::test]
    async fn the_default_restore_charges_only_what_a_key_lacks() {
        let gated = Gated::new();
        let bucket = Bucket::new("api", "k", Limit::sliding(Quota::per_hour(10)));
        let spent = gated
            .redis
            .apply_now(Op::Penalize, &[bucket.clone().with_cost(5)]);
        assert_eq!(spent.unwrap().buckets[0].remaining, 5);
        let hour = Duration::from_secs(3600);
        let enough = [(bucket.clone().with_cost(3), hour)];
        let restored = gated.restore(&enough).await.unwrap();
        assert_eq!(restored.buckets[0].remaining, 5);
        assert_eq!(gated.calls.load(Ordering::Acquire), 1);
        let lacking = [(bucket.clone().with_cost(7), hour)];
        let restored = gated.restore(&lacking).await.unwrap();
        assert_eq!(restored.buckets[0].remaining, 3);
        assert_eq!(gated.calls.load(Ordering::Acquire), 3);
        assert_eq!(gated.remaining(&bucket), 3);
    }

    /// A debt the ledger has no room for is forgotten, and counted: with room for one key,
    /// charges of three keys from memory forget two debts.
    #[tokio::test(start_paused = true)]
    async fn debts_the_ledger_has_no_room_for_are_counted_as_lost() {
        let store = gated(FallbackConfig::default().with_mirror_keys(1)).await;
        store.primary().down.store(true, Ordering::Release);
        for key in ["a", "b", "c"] {
            let bucket = Bucket::new("api", key, Limit::sliding(Quota::per_hour(10)));
            assert!(
                store
                    .apply(&Batch::charge(vec![bucket]))
                    .await
                    .unwrap()
                    .allowed
            );
        }
        assert_eq!(store.mode(), Mode::Fallback);
        assert_eq!(store.mirrored_keys(), 1);
        assert_eq!(store.lost_give_backs(), 2);
    }

    /// A primary that serves one call at a time, each in `service` (on tokio's clock), and
    /// answers nothing before `stalled_until` (a primary held up, not down). With
    /// `late_next` set, the next call joins the line only that long after it was made (its
    /// task ran late, as a burst's do on a busy instance), so calls made after it are
    /// answered first; with `fail_next`, the next call fails at once (a refused
    /// connection); `in_order` is its [`Primary::answers_in_order`].
    #[derive(Debug)]
    struct Queued {
        redis: MemoryStore,
        service: Duration,
        line: tokio::sync::Mutex<()>,
        stalled_until: Mutex<Option<tokio::time::Instant>>,
        late_next: Mutex<Option<Duration>>,
        fail_next: AtomicBool,
        in_order: bool,
    }

    impl Queued {
        fn new(service: Duration) -> Self {
            Queued {
                redis: MemoryStore::new(),
                service,
                line: tokio::sync::Mutex::new(()),
                stalled_until: Mutex::new(None),
                late_next: Mutex::new(None),
                fail_next: AtomicBool::new(false),
                in_order: false,
            }
        }

        fn answering_in_order(self, in_order: bool) -> Self {
            Queued { in_order, ..self }
        }
    }

    impl Primary for Queued {
        fn answers_in_order(&self) -> bool {
            self.in_order
        }
    }

    impl Store for Queued {
        fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
            Box::pin(async move {
                if self.fail_next.swap(false, Ordering::AcqRel) {
                    return Err(StoreError::Unavailable("connection refused".into()));
                }
                let stalled = *lock(&self.stalled_until);
                if let Some(until) = stalled {
                    tokio::time::sleep_until(until).await;
                }
                let late = lock(&self.late_next).take();
                if let Some(late) = late {
                    tokio::time::sleep(late).await;
                }
                let _served = self.line.lock().await;
                tokio::time::sleep(self.service).await;
                self.redis.apply_now(batch.op, &batch.buckets)
            })
        }
    }

    /// A call overtaken by calls made up to 200 ms after it (its task reached the
    /// connection late), while answers keep coming: on a primary that answers in order
    /// (one multiplexed connection) it is queued, and waits on for its answer; where
    /// answers may come from other connections (a pool, Cluster's nodes) the calls made
    /// a timeout after it and answered say it may be lost, and it gives up. (A review's
    /// burst of 1,500 requests at once on each of two debug builds of seed 001 put up to
    /// 400 ms between such calls, and the instances left a healthy Redis for memory.)
    #[tokio::test(start_paused = true)]
    async fn a_call_overtaken_by_later_ones_waits_on_where_the_primary_answers_in_order() {
        for in_order in [true, false] {
            let store = FallbackStore::connect_with_memory(
                Queued::new(Duration::from_millis(10)).answering_in_order(in_order),
                MemoryStore::new(),
                FallbackConfig::default(),
            )
            .await;
            *lock(&store.primary().late_next) = Some(Duration::from_millis(200));
            let batch = open_batch();
            let overtaken = store.apply(&batch);
            // Others, one after another, made after it: answers every 10 ms for 300 ms.
            let others = async {
                for _ in 0..30 {
                    let _ = store.apply(&batch).await;
                }
            };
            let (overtaken, ()) = tokio::join!(overtaken, others);
            if in_order {
                assert!(overtaken.is_ok_and(|d| d.allowed));
                assert_eq!(store.fallbacks(), 0);
            } else {
                assert!(
                    matches!(overtaken, Err(StoreError::Timeout(_))),
                    "{overtaken:?}"
                );
                assert_eq!(store.fallbacks(), 1);
            }
        }
    }

    /// On a healthy primary answering one call in 20 ms, in order: `in_line` requests'
    /// calls in line, then a call refused at once (the store leaves the primary, and checks
    /// it behind the line), then, 1 ms later, `waiting` requests, which wait for the check
    /// and make their calls. What the requests in line were answered, each waiting
    /// request's answer and how long it took, and how many times the store left the
    /// primary.
    async fn waiting_for_a_check_in_line(
        in_line: usize,
        waiting: usize,
        config: FallbackConfig,
    ) -> (
        Vec<Result<Decision, StoreError>>,
        Vec<(Result<Decision, StoreError>, Duration)>,
        u64,
    ) {
        let store = FallbackStore::connect_with_memory(
            Queued::new(Duration::from_millis(20)).answering_in_order(true),
            MemoryStore::new(),
            config,
        )
        .await;
        let batch = open_batch();
        let in_line = futures_util::future::join_all((0..in_line).map(|_| store.apply(&batch)));
        let waited = async {
            store.primary().fail_next.store(true, Ordering::Release);
            assert!(store.apply(&batch).await.is_err());
            assert_eq!(store.mode(), Mode::Fallback);
            tokio::time::sleep(Duration::from_millis(1)).await;
            futures_util::future::join_all((0..waiting).map(|_| timed_apply(&store, &batch))).await
        };
        let (in_line, waited) = tokio::join!(in_line, waited);
        (in_line, waited, store.fallbacks())
    }

    /// A request that comes while the store checks the primary waits for the check and then
    /// makes its own call, within the patience in all from when it came, not the patience
    /// for each: 40 calls in line and the check behind them pass at 820 ms; of 40 requests
    /// that came meanwhile, the 9 answered by 1 s from when they came pass, the others give
    /// up then (a review saw such requests wait up to 1.8 s; the code before waited 1.62 s
    /// here). As calls that wait the patience do, those that give up take the store off
    /// the primary: it leaves a second time.
    #[tokio::test(start_paused = true)]
    async fn a_request_that_waited_for_a_check_waits_the_patience_in_all() {
        let (in_line, waited, fallbacks) =
            waiting_for_a_check_in_line(40, 40, FallbackConfig::default()).await;
        assert!(in_line.iter().all(|a| a.as_ref().is_ok_and(|d| d.allowed)));
        let longest = waited.iter().map(|(_, took)| *took).max().unwrap();
        assert_eq!(longest, Duration::from_secs(1));
        let answered = waited.iter().filter(|(a, _)| a.is_ok()).count();
        assert_eq!(answered, 9, "{waited:?}");
        assert_eq!(fallbacks, 2);
    }

    /// A request whose wait for a check took (nearly) all its patience still waits one
    /// timeout for its own call: with a patience of one timeout (50 ms), a request that
    /// came at 1 ms and saw the check pass at 40 ms is answered at 60 ms, where the rest of
    /// its patience (11 ms) would have failed it. (The code before waited the patience
    /// again for the call, and passes too: this guards the first timeout.)
    #[tokio::test(start_paused = true)]
    async fn a_request_that_waited_for_a_check_waits_a_timeout_for_its_call() {
        let config = FallbackConfig::default().with_patience(1);
        let (_, waited, _) = waiting_for_a_check_in_line(1, 1, config).await;
        let (answer, took) = &waited[0];
        assert!(answer.as_ref().is_ok_and(|d| d.allowed), "{answer:?}");
        assert_eq!(*took, Duration::from_millis(59));
    }

    fn open_batch() -> Batch {
        Batch::charge(vec![Bucket::new(
            "api",
            "k",
            Limit::sliding(Quota::per_hour(100)),
        )])
        .with_failure_mode(FailureMode::Open)
    }

    /// A burst queued on a healthy primary: 30 calls at once, answered one after another
    /// in 10 ms each (the last after 300 ms), with the 50 ms timeout. Answers keep coming,
    /// so the calls behind them wait on: none times out, none is admitted unchecked (it
    /// fails open), and the store never leaves the primary. (A review's burst of 300 at
    /// once on a healthy Redis timed out by the dozen, and seed 002, failing open, admitted
    /// up to 300 of 120.)
    #[tokio::test(start_paused = true)]
    async fn calls_queued_behind_answers_wait_on_and_the_store_stays_on_the_primary() {
        let store = FallbackStore::connect_with_memory(
            Queued::new(Duration::from_millis(10)),
            MemoryStore::new(),
            FallbackConfig::default(),
        )
        .await;
        let batch = open_batch();
        let started = tokio::time::Instant::now();
        let answers = futures_util::future::join_all((0..30).map(|_| store.apply(&batch))).await;
        assert!(
            answers.iter().all(|a| a.as_ref().is_ok_and(|d| d.allowed)),
            "{answers:?}"
        );
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert_eq!(store.fallbacks(), 0);
        let seen = store.primary().redis.apply_now(Op::Peek, &batch.buckets);
        assert_eq!(seen.unwrap().buckets[0].remaining, 70);

        // A call waits on only while answers come, and at most the patience: of 60
        // in a line of 20 ms each, the 50 answered within 1 s pass, the others give up.
        let slow = FallbackStore::connect_with_memory(
            Queued::new(Duration::from_millis(20)),
            MemoryStore::new(),
            FallbackConfig::default(),
        )
        .await;
        let answers = futures_util::future::join_all((0..60).map(|_| slow.apply(&batch))).await;
        let answered = answers.iter().filter(|a| a.is_ok()).count();
        assert_eq!(answered, 50, "{answers:?}");
        assert!(answers
            .iter()
            .skip(50)
            .all(|a| matches!(a, Err(StoreError::Timeout(_)))));
    }

    /// A primary that answers nothing for 120 ms (held up, not down): the 20 calls under
    /// way time out together. They are one departure and one failure towards the circuit
    /// breaker (3), not 20: the check made at once fails too (2), the next passes, and the
    /// store is back on the primary with no outage declared. Meanwhile a batch that fails
    /// open waits for the check rather than being answered `circuit open` (which admits
    /// it unchecked until a check passes: a review saw seed 002 admit 87 to 179 requests
    /// one at a time in the 3 s after such a burst, against 120 a minute).
    #[tokio::test(start_paused = true)]
    async fn calls_that_time_out_together_are_one_failure_towards_the_circuit_breaker() {
        let store = FallbackStore::connect_with_memory(
            Queued::new(Duration::from_millis(1)),
            MemoryStore::new(),
            FallbackConfig::default(),
        )
        .await;
        let started = tokio::time::Instant::now();
        *lock(&store.primary().stalled_until) = Some(started + Duration::from_millis(120));
        let batch = open_batch();
        let answers = futures_util::future::join_all((0..20).map(|_| store.apply(&batch))).await;
        assert!(answers
            .iter()
            .all(|a| matches!(a, Err(StoreError::Timeout(_)))));
        assert_eq!(store.mode(), Mode::Fallback);
        // While the check is under way: not an outage.
        tokio::time::sleep_until(started + Duration::from_millis(140)).await;
        assert!(!store.shared.tripped.load(Ordering::Acquire));
        let waited = store.apply(&batch).await.unwrap_err();
        assert!(
            matches!(&waited, StoreError::Unavailable(why) if why.starts_with("the primary is being checked")),
            "{waited}"
        );
        tokio::time::sleep_until(started + Duration::from_millis(400)).await;
        assert_eq!(store.mode(), Mode::Primary);
        assert!(!store.shared.tripped.load(Ordering::Acquire));
        assert_eq!(store.fallbacks(), 1);
        assert!(store.apply(&batch).await.unwrap().allowed);
    }

    /// Other clients' traffic: a charge of a key of its own every 2 ms, each in a task of
    /// its own (they do not wait for one another). Abort it when done.
    fn traffic<P: Primary + 'static>(store: &FallbackStore<P>) -> tokio::task::JoinHandle<()> {
        let store = store.clone();
        tokio::spawn(async move {
            let other = Batch::charge(vec![Bucket::new(
                "api",
                "other",
                Limit::sliding(Quota::per_hour(1_000_000)),
            )]);
            loop {
                let (store, other) = (store.clone(), other.clone());
                tokio::spawn(async move { store.apply(&other).await });
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    }

    /// `batch` applied, and how long it took (on tokio's clock).
    async fn timed_apply<P: Primary>(
        store: &FallbackStore<P>,
        batch: &Batch,
    ) -> (Result<Decision, StoreError>, Duration) {
        let started = tokio::time::Instant::now();
        let answer = store.apply(batch).await;
        (answer, started.elapsed())
    }

    /// A primary whose calls for keys ending in `dead` never answer (a dead Redis Cluster
    /// node's slots, a half-open pooled connection), while every other call is answered
    /// in 1 ms.
    #[derive(Debug)]
    struct PartlyDead {
        redis: MemoryStore,
    }

    impl Primary for PartlyDead {}

    impl Store for PartlyDead {
        fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
            Box::pin(async move {
                if batch
                    .buckets
                    .iter()
                    .any(|b| b.key.as_str().ends_with("dead"))
                {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                self.redis.apply_now(batch.op, &batch.buckets)
            })
        }
    }

    /// With one node of a cluster dead and the others answering, a call for a key on the
    /// dead node is not queued behind their answers (calls sent a timeout after it are
    /// answered): it fails at its second timeout at the latest, not the patience (a review
    /// found it waiting the patience).
    #[tokio::test(start_paused = true)]
    async fn a_call_to_a_dead_node_waits_the_timeout_while_other_nodes_answer() {
        let store = FallbackStore::connect_with_memory(
            PartlyDead {
                redis: MemoryStore::new(),
            },
            MemoryStore::new(),
            FallbackConfig::default(),
        )
        .await;
        assert_eq!(store.mode(), Mode::Primary);
        // Steady traffic on the healthy nodes.
        let load = traffic(&store);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let dead = Batch::charge(vec![Bucket::new(
            "api",
            "dead",
            Limit::sliding(Quota::per_hour(100)),
        )]);
        let (answer, waited) = timed_apply(&store, &dead).await;
        load.abort();
        assert!(answer.unwrap().allowed, "decided from memory");
        assert!(
            waited <= Duration::from_millis(100),
            "a call to a dead node waited {waited:?} (timeout 50 ms)"
        );
    }

    /// A primary serving one call at a time in 10 ms whose connection breaks at
    /// `breaks_at`: the calls still queued then fail with a broken pipe; calls made after
    /// it (through the fresh connection) are served as before.
    #[derive(Debug)]
    struct BreaksInABurst {
        line: Queued,
        breaks_at: tokio::time::Instant,
    }

    impl Primary for BreaksInABurst {
        fn incarnation(&self) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
            Box::pin(std::future::ready(Ok(Some("1".to_owned()))))
        }

        fn connection_broke(&self, error: &StoreError) -> bool {
            is_broken_pipe(error)
        }
    }

    impl Store for BreaksInABurst {
        fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
            Box::pin(async move {
                let served = self.line.apply(batch);
                if tokio::time::Instant::now() >= self.breaks_at {
                    return served.await;
                }
                tokio::select! {
                    answer = served => answer,
                    () = tokio::time::sleep_until(self.breaks_at) => {
                        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
                        Err(StoreError::Backend(Box::new(pipe)))
                    }
                }
            })
        }
    }

    /// A burst queued on one connection waits on; the connection breaks at 120 ms (a
    /// `CLIENT KILL`, a proxy reset). Each call made again through a fresh connection gets
    /// a timeout of its own, and is decided by the primary (a review found the calls that
    /// had waited past the timeout given no second try: `Timeout(50ms)`, and a policy
    /// failing open admitted them unchecked).
    #[tokio::test(start_paused = true)]
    async fn a_call_whose_connection_broke_after_a_patient_wait_is_made_again() {
        let breaks_at =
            tokio::time::Instant::now() + Duration::from_secs(1) + Duration::from_millis(120);
        let store = FallbackStore::connect_with_memory(
            BreaksInABurst {
                line: Queued::new(Duration::from_millis(10)),
                breaks_at,
            },
            MemoryStore::new(),
            FallbackConfig::default(),
        )
        .await;
        assert_eq!(store.mode(), Mode::Primary);
        tokio::time::sleep_until(breaks_at - Duration::from_millis(120)).await;
        let batch = open_batch();
        let answers = futures_util::future::join_all((0..30).map(|_| store.apply(&batch))).await;
        let failed: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
        assert!(
            failed.is_empty(),
            "{} of 30 failed: {:?}",
            failed.len(),
            failed.first()
        );
    }

    /// A paused Redis behind a refusal cache: a key it refused recently (`refused`) is
    /// answered at once from the cache (`Origin::Cache`, as `RedisStore` does), every
    /// other call hangs.
    #[derive(Debug)]
    struct PausedWithCache;

    impl Primary for PausedWithCache {
        fn apply_with_origin<'a>(
            &'a self,
            batch: &'a Batch,
        ) -> BoxFuture<'a, Result<(Decision, Origin), StoreError>> {
            Box::pin(async move {
                if batch
                    .buckets
                    .iter()
                    .any(|b| b.key.as_str().ends_with("refused"))
                {
                    // The key spent: what the cache would answer.
                    let spent = MemoryStore::new();
                    let full = batch
                        .buckets
                        .iter()
                        .map(|b| b.clone().with_cost(b.limit.capacity()))
                        .collect::<Vec<_>>();
                    let _ = spent.apply_now(Op::Penalize, &full).unwrap();
                    return Ok((
                        spent.apply_now(batch.op, &batch.buckets).unwrap(),
                        Origin::Cache,
                    ));
                }
                std::future::pending().await
            })
        }
    }

    impl Store for PausedWithCache {
        fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
            Box::pin(async move { Ok(self.apply_with_origin(batch).await?.0) })
        }
    }

    /// Redis is paused (nothing answers), but a client already refused keeps being
    /// answered from the refusal cache without a round trip. Those answers are no sign of
    /// Redis: every other call fails at the timeout (a review found them counted, and
    /// calls waiting the patience on a Redis that answered nothing).
    #[tokio::test(start_paused = true)]
    async fn refusals_from_the_cache_do_not_keep_a_call_to_a_paused_redis_waiting() {
        let store = FallbackStore::with_memory(
            PausedWithCache,
            MemoryStore::new(),
            FallbackConfig::default(),
        );
        let flood = {
            let store = store.clone();
            tokio::spawn(async move {
                let refused = Batch::charge(vec![Bucket::new(
                    "api",
                    "refused",
                    Limit::sliding(Quota::per_hour(10)),
                )]);
                loop {
                    let answer = store.apply(&refused).await;
                    assert!(!answer.unwrap().allowed);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        let batch = Batch::charge(vec![Bucket::new(
            "api",
            "someone",
            Limit::sliding(Quota::per_hour(10)),
        )]);
        let (answer, waited) = timed_apply(&store, &batch).await;
        flood.abort();
        assert!(answer.unwrap().allowed, "decided from memory");
        assert!(
            waited <= Duration::from_millis(50),
            "a call to a paused Redis waited {waited:?} (timeout 50 ms)"
        );
    }

    /// A primary answering each call 10 ms after it is sent, until it pauses at
    /// `pauses_at`: an answer due then or later never comes.
    #[derive(Debug)]
    struct PausesAt {
        redis: MemoryStore,
        pauses_at: tokio::time::Instant,
    }

    impl Primary for PausesAt {}

    impl Store for PausesAt {
        fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                if tokio::time::Instant::now() >= self.pauses_at {
                    std::future::pending::<()>().await;
                }
                self.redis.apply_now(batch.op, &batch.buckets)
            })
        }
    }

    /// A primary that answers nothing once `silent` (a paused Redis), whose diagnosis takes
    /// a second (a fresh connection to a paused Redis waits out its timeout) and then
    /// answers "no answer", or nothing with `undiagnosed`.
    #[derive(Debug, Default)]
    struct Silent {
        redis: MemoryStore,
        silent: AtomicBool,
        undiagnosed: AtomicBool,
    }

    impl Primary for Silent {
        fn diagnose(&self) -> BoxFuture<'_, Option<String>> {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                (!self.undiagnosed.load(Ordering::Acquire)).then(|| "no answer".into())
            })
        }
    }

    /// A store over a [`Silent`] primary, answering until told to stop.
    async fn silent() -> FallbackStore<Silent> {
        FallbackStore::connect_with_memory(
            Silent::default(),
            MemoryStore::new(),
            FallbackConfig::default(),
        )
        .await
    }

    impl Store for Silent {
        fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
            Box::pin(async move {
                if self.silent.load(Ordering::Acquire) {
                    std::future::pending::<()>().await;
                }
                self.redis.apply_now(batch.op, &batch.buckets)
            })
        }
    }

    /// The checks of a primary that answers nothing go on while its diagnosis waits: the
    /// call that leaves it (at 50 ms) and two checks (at 100 ms, and after a wait of
    /// 100 ms at 250 ms) open the circuit, and a batch failing open is answered at once
    /// after that. (Checks held by the diagnosis opened it 1.2 to 1.7 s into a pause, and
    /// meanwhile each such batch waited a timeout for a check that was not coming: a
    /// review's burst of 300 on seed 002, its requests let through 20 at a time by the
    /// failed-authentication guard, took 0.8 s.) The diagnosis, when it comes, is the
    /// reason given.
    #[tokio::test(start_paused = true)]
    async fn the_checks_go_on_while_the_primary_is_diagnosed() {
        let store = silent().await;
        let batch = open_batch();
        assert!(store.apply(&batch).await.unwrap().allowed);
        store.primary().silent.store(true, Ordering::Release);
        let started = tokio::time::Instant::now();
        let first = store.apply(&batch).await;
        assert!(matches!(first, Err(StoreError::Timeout(_))), "{first:?}");
        assert_eq!(store.mode(), Mode::Fallback);
        assert!(!store.shared.tripped.load(Ordering::Acquire));
        tokio::time::sleep_until(started + Duration::from_millis(300)).await;
        assert!(store.shared.tripped.load(Ordering::Acquire));
        let (answer, took) = timed_apply(&store, &batch).await;
        assert!(
            matches!(&answer, Err(StoreError::Unavailable(why)) if why.starts_with("circuit open")),
            "{answer:?}"
        );
        assert_eq!(took, Duration::ZERO);
        tokio::time::sleep_until(started + Duration::from_millis(1_200)).await;
        let (answer, _) = timed_apply(&store, &batch).await;
        assert!(
            matches!(&answer, Err(StoreError::Unavailable(why)) if why.contains("(a fresh connection fails: no answer)")),
            "{answer:?}"
        );
    }

    /// A diagnosis is of its departure: once the store is back on the primary it is
    /// forgotten, and a later departure that finds nothing to say (a paused Redis after a
    /// killed one) is not told the earlier one's refusal.
    #[tokio::test(start_paused = true)]
    async fn a_diagnosis_is_forgotten_on_the_return() {
        let store = silent().await;
        let batch = open_batch();
        store.primary().silent.store(true, Ordering::Release);
        assert!(store.apply(&batch).await.is_err());
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        assert_eq!(
            store.shared.explained("x"),
            "x (a fresh connection fails: no answer)"
        );
        store.primary().silent.store(false, Ordering::Release);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(store.mode(), Mode::Primary);
        store.primary().undiagnosed.store(true, Ordering::Release);
        store.primary().silent.store(true, Ordering::Release);
        assert!(store.apply(&batch).await.is_err());
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        assert_eq!(store.mode(), Mode::Fallback);
        assert_eq!(store.shared.explained("x"), "x");
    }

    /// A request sent 5 ms before Redis pauses, on a busy store, sees the answers of the
    /// calls before it and waits on once: twice the timeout, as the module docs say, not
    /// the patience.
    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_when_redis_pauses_waits_twice_the_timeout_at_most() {
        let pauses_at = tokio::time::Instant::now() + Duration::from_millis(200);
        let store = FallbackStore::connect_with_memory(
            PausesAt {
                redis: MemoryStore::new(),
                pauses_at,
            },
            MemoryStore::new(),
            FallbackConfig::default(),
        )
        .await;
        assert_eq!(store.mode(), Mode::Primary);
        let load = traffic(&store);
        tokio::time::sleep_until(pauses_at - Duration::from_millis(5)).await;
        let (answer, waited) = timed_apply(&store, &open_batch()).await;
        load.abort();
        assert!(answer.is_err());
        assert!(
            waited <= Duration::from_millis(100),
            "waited {waited:?} on a paused Redis (timeout 50 ms)"
        );
    }
}
