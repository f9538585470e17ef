//! The request path, and the one owner of a limiter's shared state ([`Engine`]).
//!
//! A request meets, in order: [`Engine::start`] (switch, marks, classification),
//! [`plan`] (the request's buckets), [`decide`] (the store's answer, at once on the memory
//! store), then [`settle`] (headers and refunds after the response). Policies were
//! checked and their constant parts made once, by [`compile`]. A guard's looks pass its
//! [`gate`] (no more of a key's requests run at once than the key has left).
//!
//! Nothing on the request path takes a lock for state that only configuration changes:
//! the compiled table, the per-route registry and the per-key overrides are immutable
//! snapshots, swapped whole when they change. A request loads the table once, at its
//! start: a reload never changes the rules under a request in flight.

mod compile;
mod decide;
mod gate;
mod plan;
mod settle;
mod snapshot;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use http::request::Parts;
use http::Method;
use smallvec::SmallVec;
use tollgate_limits::{Batch, BoxFuture, Bucket, Limit, Op, Store, StoreKey, Timestamp};

use crate::classify::{RoutePattern, RouteTable};
use crate::client_ip::{peer_addr, ClientIp};
use crate::key::Extractor;
use crate::observe::StoreMetrics;
use crate::respond::{ErrorBody, HeaderStyle, RateLimitDecision, RateLimitOutcome};

pub(crate) use compile::{
    compile_table, name_is_valid, policy_item, refusal_to_log, CodeRules, Compiled, Defaults,
    DirectKey, Rules, Table,
};
pub(crate) use decide::{Asking, Outcome};
use decide::{OwnedTarget, Target};
pub(crate) use gate::Gate;
use plan::Plan;
pub(crate) use settle::{in_background, After, Settled};
pub(crate) use snapshot::Snapshot;

/// A limiter's shared state: its configuration, the snapshots that configuration calls
/// change, and its counters. [`Limiter`](crate::Limiter) is a handle to it.
pub(crate) struct Engine {
    pub(crate) id: u64,
    pub(crate) enabled: bool,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) client_ip: ClientIp,
    pub(crate) identity: Option<Extractor>,
    pub(crate) header_style: HeaderStyle,
    pub(crate) error_body: ErrorBody,
    /// Whether every table must have a default rule (set at build, kept by reloads).
    pub(crate) require_default: bool,
    /// The compiled rules; a reload swaps them whole.
    pub(crate) table: ArcSwap<Table>,
    /// What code declared after the build, compiled into every table. Its lock also
    /// serializes reloads with each other and with new per-route policies.
    pub(crate) code: Mutex<CodeRules>,
    /// The settings of the configuration file the limiter was built from, which a reload
    /// from a file may not change.
    #[cfg(any(feature = "yaml", feature = "toml"))]
    pub(crate) file_settings: Option<crate::config::FileSettings>,
    /// Whether the file the rules running came from declares routes, global limits or
    /// buckets: a reload from a file that declares none is then refused
    /// ([`crate::config::ConfigError::NoLimits`]). Also the lock of a reload from a file
    /// (check, reload, record), taken before `code`, never while holding it.
    #[cfg(any(feature = "yaml", feature = "toml"))]
    pub(crate) file_declares_limits: Mutex<bool>,
    /// Per-key overrides (a request loads them once one was ever set: [`Engine::overrides`]).
    pub(crate) overrides: Snapshot<Overrides>,
    /// What the central layer leaves to per-route layers (loaded by a request once anything
    /// ever was).
    pub(crate) routes: Snapshot<Routes>,
    pub(crate) stats: Counters,
    pub(crate) warned_no_peer: AtomicBool,
    /// Requests in a row on which the identity function found no user where a per-user
    /// limit applies; `u64::MAX` once that was warned about.
    pub(crate) anonymous_streak: AtomicU64,
    /// Routes no rule matched that were looked at for a `nest` prefix left out of the
    /// rules ([`Engine::note_unmatched`]); `u32::MAX` once that was warned about.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) unmatched_checked: AtomicU32,
    /// Whether a request without a peer address is refused (500) rather than limited in
    /// one shared bucket.
    pub(crate) require_peer: bool,
    /// Whether decisions go into the request's extensions.
    pub(crate) decision_in_request: bool,
    /// Whether decisions go into the response's extensions.
    pub(crate) decision_in_response: bool,
    /// Makes the whole 429 instead of the error body.
    pub(crate) refusal_hook: Option<RefusalHook>,
    /// The store's name (the `store` label of metrics and spans).
    pub(crate) store_name: Arc<str>,
    /// Shared with the guards made from the limiter, which share its store.
    pub(crate) store_metrics: Arc<StoreMetrics>,
    /// A guard's requests in flight, when it counts only some responses.
    pub(crate) gate: Option<Arc<Gate>>,
}

/// A function that makes the whole refused response.
pub(crate) type RefusalHook =
    Arc<dyn Fn(&RateLimitOutcome, &Parts) -> http::Response<bytes::Bytes> + Send + Sync>;

/// Per-key overrides: a limit for one key of one kind, on top of the endpoint limits.
#[derive(Default, Clone)]
pub(crate) struct Overrides(HashMap<Box<str>, Limit>);

impl Overrides {
    fn id(kind: &str, stored: &str) -> StoreKey {
        let mut id = StoreKey::new();
        id.push_str(kind);
        id.push_str("\0");
        id.push_str(stored);
        id
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The override of the key `stored` of kind `kind`.
    pub(crate) fn get(&self, kind: &str, stored: &str) -> Option<Limit> {
        self.0.get(Self::id(kind, stored).as_str()).copied()
    }

    pub(crate) fn set(&mut self, kind: &str, stored: &str, limit: Limit) {
        self.0.insert(Self::id(kind, stored).as_str().into(), limit);
    }

    pub(crate) fn remove(&mut self, kind: &str, stored: &str) -> bool {
        self.0.remove(Self::id(kind, stored).as_str()).is_some()
    }

    /// Every override: (kind, stored key, limit).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &str, Limit)> {
        self.0.iter().map(|(id, limit)| {
            let (kind, stored) = id.split_once('\0').unwrap_or((id, ""));
            (kind, stored, *limit)
        })
    }
}

/// What the central layer leaves to per-route layers.
#[derive(Default, Clone)]
pub(crate) struct Routes {
    /// `"<METHOD> <matched path>"` of routes whose own layer was seen.
    pub(crate) per_route: HashSet<Box<str>>,
    /// Those of them a request was answered on without reaching the layer (a check before
    /// it, another router's route of that name): charged provisionally from then on.
    pub(crate) unverified: HashSet<Box<str>>,
    /// Patterns declared with `policy_at`.
    pub(crate) delegated: Vec<Arc<Delegation>>,
    /// Whether a per-route layer without a pattern exists: only then does the central
    /// layer mark the requests it charges, for such a layer to take over.
    pub(crate) marks: bool,
}

/// A route declared with [`Limiter::policy_at`](crate::Limiter::policy_at), shared by its
/// layer and the central layer, which leaves the route's requests to the layer.
///
/// The central layer cannot see where the layer is: attached to some service, it may be on
/// another route, or in a router that is not served. So a method of the pattern is left to
/// the layer for good only once the layer has seen a request of it ([`Delegation::see`]).
/// Until then one request at a time is left to it (a probe, [`Left`]), and the others are
/// charged to their class provisionally (the layer, if it is there, takes the charge
/// over). A probe answered without the layer having seen it is charged to its class then,
/// and the next probe waits, from a second up to ten minutes: so a misplaced layer leaves
/// its pattern's route limited by its class, give or take a probe now and then (counted),
/// and a layer that is there is left its route from the first request, a client whose
/// class is spent included.
pub(crate) struct Delegation {
    /// The pattern, as a table of its own spelling (a request's method and path match it).
    pub(crate) table: RouteTable<()>,
    /// The pattern, to compare with the route a request matched.
    pub(crate) pattern: RoutePattern,
    /// The index of its policy in [`Table::per_route`].
    pub(crate) index: usize,
    /// Whether its layer was put on a service ([`Layer::layer`](tower_layer::Layer::layer)):
    /// a layer never attached leaves nothing to it.
    attached: AtomicBool,
    /// Whether its layer saw a routed request its pattern does not match (it is on another
    /// route than the pattern names, or on several): the central layer then leaves it only
    /// the routes the layer was seen on. The layer passes such requests on uncharged: their
    /// class charged them.
    mismatched: AtomicBool,
    /// The methods ([`method_bit`]) its layer saw a request of that its pattern matches.
    seen: AtomicU16,
    /// The methods a request left to the layer was answered on without reaching it (a check
    /// before the layer, another router's route of that name): no longer left to it.
    unverified: AtomicU16,
    /// The probe under way, by its number (0: none). A probe ends only its own: one whose
    /// method the layer saw meanwhile does not end another's, taken since.
    probing: AtomicU64,
    /// How many probes were numbered.
    probes: AtomicU64,
    /// When the next probe may go, in ms since `made` (0: at once).
    next_probe_ms: AtomicU64,
    /// How long the last wait between probes was, in ms (0: no probe went unseen yet).
    backoff_ms: AtomicU64,
    /// Whether a probe answered without reaching the layer was logged.
    warned: AtomicBool,
    made: std::time::Instant,
}

/// The first wait after a probe its layer did not see, and the longest (doubling between).
const PROBE_BACKOFF_MS: (u64, u64) = (1_000, 600_000);

/// A method's bit in [`Delegation::seen`]: the standard methods one each, the others one
/// together.
fn method_bit(method: &Method) -> u16 {
    let i = match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    };
    1 << i
}

impl Delegation {
    pub(crate) fn new(table: RouteTable<()>, pattern: RoutePattern, index: usize) -> Self {
        Self {
            table,
            pattern,
            index,
            attached: AtomicBool::new(false),
            mismatched: AtomicBool::new(false),
            seen: AtomicU16::new(0),
            unverified: AtomicU16::new(0),
            probing: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            next_probe_ms: AtomicU64::new(0),
            backoff_ms: AtomicU64::new(0),
            warned: AtomicBool::new(false),
            made: std::time::Instant::now(),
        }
    }

    /// Its layer wraps a service.
    pub(crate) fn attach(&self) {
        self.attached.store(true, Ordering::Relaxed);
    }

    /// Whether the central layer may leave a request its pattern matches to the layer: its
    /// layer was attached, and the route axum matched (`matched`) is the pattern's own (not
    /// one of several routes a broader pattern covers, whose other routes do not pass
    /// through the layer), unless the layer was seen on another route. Without `matched`
    /// nothing says the request goes through the layer (a path only a fallback answers; the
    /// limiter outside the router, or a plain tower stack, where any service may answer):
    /// it is charged provisionally, and the layer takes the charge over if it sees it.
    fn leaves(&self, matched: Option<&str>) -> bool {
        self.attached.load(Ordering::Relaxed)
            && matched.is_some_and(|route| {
                !self.mismatched.load(Ordering::Relaxed) && self.pattern.is_route(route)
            })
    }

    /// Whether its layer has seen a request of `method` its pattern matches.
    pub(crate) fn seen(&self, method: &Method) -> bool {
        self.seen.load(Ordering::Relaxed) & method_bit(method) != 0
    }

    /// Whether a request of `method` left to its layer was answered without reaching it.
    fn unverified(&self, method: &Method) -> bool {
        self.unverified.load(Ordering::Relaxed) & method_bit(method) != 0
    }

    /// Its layer sees a request of `method` its pattern matches: that method is its for
    /// good, and a probe under way (of any method) no longer holds the next back.
    pub(crate) fn see(&self, method: &Method) {
        let bit = method_bit(method);
        if self.seen.load(Ordering::Relaxed) & bit == 0 {
            self.seen.fetch_or(bit, Ordering::Relaxed);
            self.probing.store(0, Ordering::Release);
        }
    }

    fn now_ms(&self) -> u64 {
        self.made.elapsed().as_millis() as u64
    }

    /// Whether a request may be left to the layer as a probe now: none is under way, and
    /// the wait after the last unseen one is over. (It then is under way: its number.)
    fn try_probe(&self) -> Option<u64> {
        let next = self.next_probe_ms.load(Ordering::Relaxed);
        if (next != 0 && self.now_ms() < next) || self.probing.load(Ordering::Relaxed) != 0 {
            return None;
        }
        let probe = self.probes.fetch_add(1, Ordering::Relaxed) + 1;
        self.probing
            .compare_exchange(0, probe, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| probe)
    }

    /// A probe of `method` was answered (`answered`) or dropped: whether its layer had not
    /// seen it. Then the next probe waits (1 s, doubling up to 10 minutes): the layer may
    /// not be on the pattern's route for that method (put on another route, or in a router
    /// that is not served, or behind a check that turned the probe away), and a probe goes
    /// through unchecked. An answered probe says so, and is logged (once); a probe dropped
    /// unanswered says nothing of where the layer is (the client went away before it got
    /// there, in a correctly wired app too), and is not (a review: a warning blaming the
    /// wiring). It still waits: a client dropping each request once the handler ran would
    /// otherwise make each of them the next probe, admitted unchecked (a re-check of a
    /// first fix that probed again at once). Either way the probe (numbered `probe`) is no
    /// longer under way, if it still was: its method may have been seen between the
    /// central layer's look and its taking the probe, which the layer's seeing it then did
    /// not end (a review found it held the pattern's other methods' probes back).
    fn probed(&self, method: &Method, answered: bool, probe: u64) -> bool {
        let unseen = !self.seen(method);
        if unseen {
            if answered && !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    target: "tollgate",
                    pattern = %self.pattern,
                    method = %crate::observe::ShownMethod(method),
                    "a request of a per-route policy's pattern was answered without reaching \
                     the policy's layer (is the layer on the pattern's route, for this method, \
                     in a router that is served?); its class charges the pattern's requests \
                     until the layer sees one"
                );
            }
            let last = self.backoff_ms.load(Ordering::Relaxed);
            let wait = if last == 0 {
                PROBE_BACKOFF_MS.0
            } else {
                (last * 2).min(PROBE_BACKOFF_MS.1)
            };
            self.backoff_ms.store(wait, Ordering::Relaxed);
            self.next_probe_ms
                .store(self.now_ms().saturating_add(wait).max(1), Ordering::Relaxed);
        }
        let _ = self
            .probing
            .compare_exchange(probe, 0, Ordering::Release, Ordering::Relaxed);
        unseen
    }
}

/// A request the central layer left to a per-route layer without charging it, and the plan
/// of its class, charged if the layer turns out not to have seen it.
pub(crate) struct Left {
    to: LeftTo,
    engine: Arc<Engine>,
    method: Method,
    /// Its class and the global limits, not charged.
    plan: Plan<Arc<Compiled>>,
    /// Whether its answer was seen to.
    done: bool,
}

/// Whom a request was left to.
pub(crate) enum LeftTo {
    /// A per-route layer that had not seen a request of its method yet (a probe, see
    /// [`Delegation`]), and the probe's number: judged by whether the layer has seen one
    /// since.
    Probe(Arc<Delegation>, u64),
    /// The layer of a route it was seen on (its pattern's, or one in the registry of
    /// [`Routes::per_route`]): judged by whether it took this request over (its mark).
    Seen(Arc<Provisional>, SeenRoute),
}

/// A route left to its layer for good: `"<METHOD> <matched path>"`, and the pattern it was
/// declared with, if any (whose bit for the method covers the methods the registry does not
/// keep).
pub(crate) struct SeenRoute {
    id: StoreKey,
    pattern: Option<Arc<Delegation>>,
}

impl Left {
    /// The request was answered with `status`: see [`Left::finish`].
    pub(crate) fn answered(mut self, status: http::StatusCode) {
        self.finish(Some(status));
    }

    /// The request was answered with `status` (`None`: it was dropped unanswered): if the
    /// per-route layer never saw it, what its class counts of such an answer is charged now
    /// (it was served: counted whether it fits or not; one dropped keeps its charge, as a
    /// charge does), so a layer elsewhere leaves no request of its pattern uncounted.
    fn finish(&mut self, status: Option<http::StatusCode>) {
        // What its class counts of the answer, judged before it is done: a policy's status
        // function that panics leaves it to the drop, as a request without an answer (a
        // review: it was counted nowhere, not even by the global limits).
        let plan = &self.plan;
        let counted: Vec<usize> = (0..plan.buckets.len())
            .filter(|&i| plan.policy(i).counts(status))
            .collect();
        self.done = true;
        let unseen = match &self.to {
            LeftTo::Probe(delegation, probe) => {
                delegation.probed(&self.method, status.is_some(), *probe)
            }
            LeftTo::Seen(mark, route) => {
                let unseen = !mark.taken_over.load(Ordering::Acquire);
                // Answered before the layer: its route is no longer left to the layer (a
                // request dropped unanswered says nothing of where the layer is). (Any
                // answer: a 5xx may be a handler's, of another router's route of that name,
                // which is not behind the layer.)
                if unseen && status.is_some() {
                    self.engine.unverify(route, &self.method);
                }
                unseen
            }
        };
        if !unseen || counted.is_empty() {
            return;
        }
        let buckets: Vec<Bucket> = counted.iter().map(|&i| plan.buckets[i].clone()).collect();
        let mut states = vec![tollgate_limits::BucketState::default(); buckets.len()];
        match self
            .engine
            .store
            .apply_sync(Op::Penalize, &buckets, &mut states)
        {
            Some(answer) => Self::counted(&self.engine, plan, &counted, answer.map(|_| states)),
            None => {
                let (engine, plan) = (self.engine.clone(), plan.owned());
                in_background(Box::pin(async move {
                    let batch = Batch::new(Op::Penalize, buckets);
                    let answer = engine.apply(&batch).await.map(|d| d.buckets);
                    Self::counted(&engine, &plan, &counted, answer);
                }));
            }
        }
    }

    /// The store's answer to the charge of the buckets at `counted` in `plan`: the request
    /// counts as admitted (it was served), in the stats and its buckets' metrics.
    fn counted(
        engine: &Engine,
        plan: &Plan<Arc<Compiled>>,
        counted: &[usize],
        answer: Result<Vec<tollgate_limits::BucketState>, tollgate_limits::StoreError>,
    ) {
        match answer {
            Ok(states) => plan.count_response(&engine.stats, counted.iter().copied(), &states),
            Err(e) => tracing::warn!(
                target: "tollgate",
                error = %e,
                "could not count a request its per-route layer did not see"
            ),
        }
    }
}

impl Drop for Left {
    fn drop(&mut self) {
        if !self.done {
            self.finish(None);
        }
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) admitted: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) would_refuse: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    /// Requests without a peer address.
    pub(crate) no_peer: AtomicU64,
    /// Warnings about store failures (Unix ms).
    store_warned: tollgate_limits::Sampled,
}

/// At most one warning per this many milliseconds about a failing store: while it is down,
/// every request fails, and a log line per request would bury everything else.
pub(crate) const STORE_WARNING_EVERY_MS: u64 = 10_000;

impl Counters {
    /// Counts a store failure; `Some(n)` if it should be logged now, `n` being the failures
    /// since the last warning that were not.
    pub(crate) fn store_failed(&self) -> Option<u64> {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        self.store_warned.due(now, STORE_WARNING_EVERY_MS)
    }
}

/// Marks a request carries between the layers of one limiter (request extensions), so a
/// request is charged once, and a per-route policy replaces the central class. (With its
/// decision in the request's extensions, a layer's decision is its mark: see
/// [`charged_by`].)
#[derive(Default)]
struct Marks(SmallVec<[(u64, Mark); 2]>);

/// A clone is empty: a sub-request made with a copy of a request's extensions is a request
/// of its own, charged by the layers it goes through.
impl Clone for Marks {
    fn clone(&self) -> Self {
        Self::default()
    }
}

enum Mark {
    /// A per-route layer has taken charge of the request: its policy's name, interned.
    Route(&'static str),
    /// The central layer charged the request (provisionally, in case a per-route layer
    /// turns up further in).
    Central(Arc<Provisional>),
    /// A layer admitted the request, and its decision is not in the request's extensions.
    Admitted,
}

/// The central layer's charge of a request, which a per-route layer may take over.
#[derive(Default)]
pub(crate) struct Provisional {
    /// What the central layer charged, and when the store answered that charge.
    pub(crate) charged: Mutex<Option<(Vec<Bucket>, Timestamp)>>,
    /// Set when a per-route layer gave that charge back and took over.
    pub(crate) taken_over: AtomicBool,
}

/// The mark of limiter `id` in `extensions`, if any.
fn mark_in(extensions: &http::Extensions, id: u64) -> Option<&Mark> {
    extensions
        .get::<Marks>()
        .and_then(|m| m.0.iter().find(|(i, _)| *i == id).map(|(_, m)| m))
}

/// Gives limiter `id` the mark `mark` in `extensions`, replacing its mark there unless
/// `keep` is [`Keep::Existing`].
fn set_mark(extensions: &mut http::Extensions, id: u64, mark: Mark, keep: Keep) {
    let Some(marks) = extensions.get_mut::<Marks>() else {
        extensions.insert(Marks(smallvec::smallvec![(id, mark)]));
        return;
    };
    match marks.0.iter_mut().find(|(i, _)| *i == id) {
        Some((_, existing)) if keep == Keep::Replace => *existing = mark,
        Some(_) => {}
        None => marks.0.push((id, mark)),
    }
}

/// Whether [`set_mark`] replaces a limiter's mark already there.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    Replace,
    Existing,
}

/// Marks the request of `extensions` admitted by a layer of limiter `id`, unless a mark of
/// that limiter is there already (any of them says as much).
pub(crate) fn mark_admitted(extensions: &mut http::Extensions, id: u64) {
    set_mark(extensions, id, Mark::Admitted, Keep::Existing);
}

/// What the central layer charged for a request a per-route layer took over, to give back
/// through the store's future ([`GiveBack::now`]). Dropped before that (the per-route
/// policy's own code panicked while its buckets were worked out, say), it is given back in
/// the background: a review saw a key function that panicked leave every such request
/// charged to the central class on Redis, which then refused the route's requests.
struct GiveBack {
    engine: Arc<Engine>,
    charged: Option<(Vec<Bucket>, Timestamp)>,
}

impl GiveBack {
    /// Gives it back now.
    async fn now(mut self) {
        if let Some(charged) = self.charged.take() {
            self.engine.give_back(charged).await;
        }
    }
}

impl Drop for GiveBack {
    fn drop(&mut self) {
        if let Some(charged) = self.charged.take() {
            let engine = self.engine.clone();
            in_background(Box::pin(async move { engine.give_back(charged).await }));
        }
    }
}

/// Whether a layer of limiter `id` further out took the request of `extensions`: its
/// decision there, or a mark of that limiter ([`After::put_in_request`]). A layer of the
/// same limiter further in passes it on: a request through two of its layers (a router's,
/// and a nested router's) is charged once.
pub(crate) fn charged_by(extensions: &http::Extensions, id: u64) -> bool {
    extensions
        .get::<RateLimitDecision>()
        .is_some_and(|d| d.limiter.0 == id)
        || mark_in(extensions, id).is_some()
}

/// The most (method, route) pairs remembered as carrying their own policy.
const MAX_PER_ROUTE_ENTRIES: usize = 4096;

/// Which layer a request is going through.
#[derive(Clone)]
pub(crate) enum Scope {
    /// The central table ([`Limiter::layer`](crate::Limiter::layer)).
    Central,
    /// A per-route policy ([`Limiter::policy`](crate::Limiter::policy)), and the pattern
    /// it was declared for ([`Limiter::policy_at`](crate::Limiter::policy_at)).
    Route {
        /// Its index in [`Table::per_route`] (every table compiles it again).
        index: usize,
        /// Its name.
        name: Arc<str>,
        pattern: Option<Arc<Delegation>>,
    },
}

/// What a layer does with a request before calling the inner service.
pub(crate) enum Start {
    /// Nothing: call the inner service, touch nothing.
    Pass,
    /// Left to a per-route layer, uncharged: as a probe, before that layer has seen a request
    /// of its method, or to the layer of a route it was seen on: call the inner service,
    /// then [`Left::answered`], which charges the class if the layer did not see it.
    /// (Boxed: its plan is large.)
    Left(Box<Left>),
    /// Decided at once: the outcome is in the caller's slot. (It is written there, not
    /// returned: an admitted outcome holds its headers, several hundred bytes that every
    /// move on the way out would copy; boxing them would allocate per request.)
    Now,
    /// Ask the store, and wait for its answer. With an [`Asking`], the decision is a look
    /// that, dropped while it does not ask the store, has nothing to finish.
    Later(BoxFuture<'static, Outcome>, Option<Asking>),
}

/// The path the request was made to (before axum's `nest` stripped a prefix).
pub(crate) fn request_path(parts: &Parts) -> &str {
    #[cfg(feature = "axum")]
    if let Some(original) = parts.extensions.get::<axum::extract::OriginalUri>() {
        return original.0.path();
    }
    parts.uri.path()
}

/// The route template axum matched, if any.
fn matched_path(parts: &Parts) -> Option<&str> {
    matched_in(&parts.extensions)
}

/// [`matched_path`] of a request's extensions.
fn matched_in(extensions: &http::Extensions) -> Option<&str> {
    #[cfg(feature = "axum")]
    if let Some(matched) = extensions.get::<axum::extract::MatchedPath>() {
        return Some(matched.as_str());
    }
    let _ = extensions;
    None
}

/// How many requests no rule matched [`Engine::note_unmatched`] looks at.
#[cfg_attr(not(feature = "axum"), allow(dead_code))]
const UNMATCHED_CHECKS: u32 = 10_000;

/// `"<METHOD> <path>"`, the key of the per-route registry.
fn route_id(method: &Method, path: &str) -> StoreKey {
    let mut id = StoreKey::new();
    id.push_str(method.as_str());
    id.push_str(" ");
    id.push_str(path);
    id
}

impl Engine {
    /// The first step of every request through a layer of this limiter; an outcome decided
    /// at once goes into `out` ([`Start::Now`]).
    pub(crate) fn start(
        self: &Arc<Self>,
        scope: &Scope,
        parts: &mut Parts,
        out: &mut Outcome,
    ) -> Start {
        if !self.enabled {
            return Start::Pass;
        }
        match scope {
            Scope::Central => self.start_central(parts, out),
            Scope::Route { index, pattern, .. } => {
                self.start_route(*index, pattern.as_deref(), parts, out)
            }
        }
    }

    fn start_central(self: &Arc<Self>, parts: &mut Parts, out: &mut Outcome) -> Start {
        // A layer of this limiter further out took it (nested routers that each got a
        // layer; a per-route layer): charged once.
        if charged_by(&parts.extensions, self.id) {
            return Start::Pass;
        }
        let snapshot = self.routes.if_changed();
        let routes: Option<&Routes> = snapshot.as_deref().map(|routes| &**routes);
        // The route axum matched, looked up once, and only where a per-route layer exists.
        let matched = routes
            .filter(|routes| !routes.per_route.is_empty() || !routes.delegated.is_empty())
            .and_then(|_| matched_path(parts));
        // A route left to its layer for good (seen there) is still checked per request: the
        // layer marks what it takes over, and a request answered without reaching it (a
        // check before the layer, another router's route of that name) is charged then.
        // Either way (the registry, a declared pattern) it is known by its route.
        let mut left_for_good = None;
        let id = matched.map(|path| route_id(&parts.method, path));
        let unverified = id
            .as_ref()
            .zip(routes)
            .is_some_and(|(id, routes)| routes.unverified.contains(id.as_str()));
        if let Some((id, routes)) = id.as_ref().zip(routes).filter(|_| !unverified) {
            if routes.per_route.contains(id.as_str()) {
                left_for_good = Some(SeenRoute {
                    id: id.clone(),
                    pattern: None,
                });
            }
        }
        let path = request_path(parts);
        // A route declared with `policy_at`. Without axum's `MatchedPath` (a fallback, a
        // plain tower stack) nothing says the request reaches the route's layer: it is charged
        // provisionally, and the layer takes the charge over if it sees it. With `MatchedPath`,
        // the route the request matched is left to the layer once the layer has seen it
        // (the registry above); until then this layer charges it provisionally and the
        // route's layer takes the charge over. So a pattern broader than the route its layer
        // is on, or a layer never attached, leaves no route unlimited; nor does a layer on
        // another route: until the layer has seen a request of the method, one request at a
        // time is left to it as a probe, its class worked out to be charged after the answer
        // if the layer never saw it, and the others are charged provisionally (`Delegation`).
        let mut delegated = false;
        let mut left = None;
        let delegations = routes.map_or(&[][..], |routes| &routes.delegated);
        for route in delegations.iter().filter(|_| left_for_good.is_none()) {
            if route.table.classify(&parts.method, path).is_none() {
                continue;
            }
            delegated = true;
            if route.leaves(matched) && !unverified && !route.unverified(&parts.method) {
                if let (true, Some(id)) = (route.seen(&parts.method), &id) {
                    left_for_good = Some(SeenRoute {
                        id: id.clone(),
                        pattern: Some(route.clone()),
                    });
                } else {
                    left = Some(route);
                }
                break;
            }
        }
        // Both classes when the path's two readings disagree: a request is charged at
        // least as strictly as the route that serves it.
        // One table for the whole request, however long it takes.
        let table = self.table.load();
        let classes = table.classes.classify_all(&parts.method, path);
        if classes.first().is_some_and(|c| c.exempt) {
            return Start::Pass;
        }
        if classes.is_empty() {
            self.note_unmatched(&table, parts);
        }
        if let Some(refused) = self.refuse_without_peer(parts) {
            *out = refused;
            return Start::Now;
        }
        let mut plan = Plan::new();
        self.plan_into(parts, classes.into_iter().chain(&table.globals), &mut plan);
        if plan.buckets.is_empty() {
            return Start::Pass;
        }
        // (The probe is taken only here, past every answer that is not a charge, which
        // would not give it back.)
        let left_to = match left_for_good {
            Some(route) => Some(LeftTo::Seen(Arc::default(), route)),
            None => left.and_then(|route| Some(LeftTo::Probe(route.clone(), route.try_probe()?))),
        };
        if let Some(to) = left_to {
            // Marked as charged with nothing, so that a layer of this limiter further in
            // (on a nested router) passes it on to the route's layer, which takes it over.
            // (A review: unmarked, a probe was charged to its class by the nested router's
            // layer, and refused there once the class was spent, the route's layer never
            // seeing one: a route declared with `policy_at` stayed on its class.)
            let mark = match &to {
                LeftTo::Seen(mark, _) => mark.clone(),
                LeftTo::Probe(..) => Arc::default(),
            };
            set_mark(
                &mut parts.extensions,
                self.id,
                Mark::Central(mark),
                Keep::Replace,
            );
            return Start::Left(Box::new(Left {
                to,
                engine: self.clone(),
                method: parts.method.clone(),
                plan: plan.owned(),
                done: false,
            }));
        }
        let marks = routes.is_some_and(|routes| routes.marks);
        let provisional = (marks || delegated).then(Arc::<Provisional>::default);
        // The plan stays here (it is large): the store answers for it by reference.
        if self.decide_now(&plan, &provisional, Target::of(parts, path), out) {
            if let (Outcome::Proceed(Some(_)), Some(p)) = (&*out, provisional) {
                set_mark(
                    &mut parts.extensions,
                    self.id,
                    Mark::Central(p),
                    Keep::Replace,
                );
            }
            return Start::Now;
        }
        let plan = plan.owned();
        if let Some(p) = &provisional {
            set_mark(
                &mut parts.extensions,
                self.id,
                Mark::Central(p.clone()),
                Keep::Replace,
            );
        }
        let target = OwnedTarget::of(parts, request_path(parts));
        let asking = (plan.op() == Op::Peek).then(Asking::default);
        let decide = self
            .clone()
            .decide_later(plan, provisional, target, asking.clone());
        Start::Later(Box::pin(decide), asking)
    }

    fn start_route(
        self: &Arc<Self>,
        index: usize,
        delegation: Option<&Delegation>,
        parts: &mut Parts,
        out: &mut Outcome,
    ) -> Start {
        let pattern = delegation.map(|d| &d.table);
        // One table for the whole request, however long it takes.
        let table = self.table.load();
        // Every table compiles every per-route policy declared so far: always there.
        let Some(policy) = table.per_route.get(index) else {
            return Start::Pass;
        };
        // A method its pattern does not name is not this policy's request: the layer wraps
        // the method router's fallback too (a 405, a CORS preflight) and any other method's
        // handler under it. The central layer charged it by its class, as any request.
        if pattern.is_some_and(|p| !p.takes_method(&parts.method)) {
            return Start::Pass;
        }
        if !policy.exempt {
            if let Some(refused) = self.refuse_without_peer(parts) {
                *out = refused;
                return Start::Now;
            }
        }
        // One snapshot for the request (loaded again only after this request changes it).
        let routes = self.routes.load();
        // A request its pattern does not cover, as the central layer reads it, is not this
        // policy's, wherever the layer is: on several routes (`Router::route_layer` wraps
        // every route declared before it), on another route than its pattern names (a typo,
        // a `nest` prefix left out), or on a merged router's fallback (which `merge` makes
        // the app's 404). The central layer charged it by its class, and keeps it: a layer
        // never puts a route its pattern does not name on its own policy, which could be
        // looser than the route's class (a review: `route_layer` of an export policy put a
        // sign-in route's 5 per 15 minutes on the export's 20 a minute). A routed request it
        // does not cover says the layer is (also) on another route: the central layer then
        // leaves it only the routes it was seen on (the first such is logged). One it does
        // cover says the layer is on the pattern's route, for that method.
        if let Some(delegation) = delegation {
            let covered = delegation
                .table
                .classify(&parts.method, request_path(parts))
                .is_some();
            if !covered {
                let routed = matched_path(parts);
                if routed.is_some() && !delegation.mismatched.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        target: "tollgate",
                        policy = %policy.name,
                        pattern = %delegation.pattern,
                        method = %crate::observe::ShownMethod(&parts.method),
                        route = %routed.unwrap_or_default(),
                        "a per-route policy's layer is on a route its pattern does not match as \
                         the central layer sees it (a layer on several routes, as `route_layer` \
                         puts it; a pattern without its `nest` prefix): that route's requests \
                         are charged to their central class, not to this policy"
                    );
                }
                return Start::Pass;
            }
            delegation.see(&parts.method);
        }
        if let Some(path) = matched_path(parts) {
            // Only standard methods are remembered (a client chooses the method: extension
            // methods must not grow the registry; their requests take the refund path), and
            // only so many routes.
            let standard = crate::classify::STANDARD_METHODS.contains(&parts.method);
            let id = route_id(&parts.method, path);
            if standard && !routes.per_route.contains(id.as_str()) {
                self.routes.change(|routes| {
                    let mut routes = Routes::clone(routes);
                    if routes.per_route.len() < MAX_PER_ROUTE_ENTRIES {
                        routes.per_route.insert(id.as_str().into());
                    }
                    routes
                });
            }
        }
        let refund_first = match mark_in(&parts.extensions, self.id) {
            // Another per-route layer of the limiter further out took it (this one again,
            // put on the route twice; another policy's, a router-wide `route_layer` one):
            // charged once, by that one. Another policy's is told of once: this policy
            // does not limit the route.
            Some(Mark::Route(outer)) => {
                if *outer != policy.static_name
                    && !policy.warned_outer.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(
                        target: "tollgate",
                        policy = %policy.name,
                        outer = %outer,
                        method = %crate::observe::ShownMethod(&parts.method),
                        route = %matched_path(parts).unwrap_or("-"),
                        "a request reached a per-route policy's layer after another per-route \
                         policy's layer of the limiter took it: the outer policy charges it, \
                         and this one is not spent on this route (put one per-route layer on a \
                         route)"
                    );
                }
                return Start::Pass;
            }
            Some(Mark::Central(p)) => {
                p.taken_over.store(true, Ordering::Release);
                let charged = lock(&p.charged).take();
                // (A route declared with `policy_at` is charged so until its layer has seen
                // it: expected, and nothing to warn about. A route left to this layer is
                // marked with nothing charged.)
                if pattern.is_none()
                    && charged.is_some()
                    && !policy.warned_central.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(
                        target: "tollgate",
                        policy = %policy.name,
                        method = %crate::observe::ShownMethod(&parts.method),
                        route = %matched_path(parts).unwrap_or("-"),
                        "a route with its own policy was first charged to the central class \
                         (and may be refused by it before its policy sees it); attach the \
                         policy with `limiter.policy_at(pattern, policy)` so the central table \
                         leaves the route to it"
                    );
                }
                charged
            }
            // Admitted by a central layer that charged it for good (no per-route layer was
            // declared to take over from): this policy charges too.
            Some(Mark::Admitted) | None => None,
        };
        // This layer has the request: a per-route layer of the limiter further in (this
        // one again, put on the route twice) passes it on, so it is charged once.
        set_mark(
            &mut parts.extensions,
            self.id,
            Mark::Route(policy.static_name),
            Keep::Replace,
        );
        // The central layer's charge goes back first: at once on a store that answers at
        // once, else before this policy is charged, in the same future (or when it drops).
        let refund_later = refund_first
            .and_then(|charged| self.give_back_now(charged))
            .map(|charged| GiveBack {
                engine: self.clone(),
                charged: Some(charged),
            });
        // The plan stays here (it is large): an exempt policy's has no buckets.
        let mut plan = Plan::new();
        if !policy.exempt {
            let policies = std::iter::once(policy).chain(&table.globals);
            self.plan_into(parts, policies, &mut plan);
        }
        let charges = !plan.buckets.is_empty();
        let path = request_path(parts);
        let plan = match (charges, refund_later.is_some()) {
            (false, false) => return Start::Pass,
            (true, false) => {
                if self.decide_now(&plan, &None, Target::of(parts, path), out) {
                    return Start::Now;
                }
                Some(plan.owned())
            }
            (charges, true) => charges.then(|| plan.owned()),
        };
        let (engine, target) = (self.clone(), OwnedTarget::of(parts, path));
        // (No look here: only a guard's plans look, and a guard has no per-route policies.)
        let decide = async move {
            if let Some(refund) = refund_later {
                refund.now().await;
            }
            match plan {
                Some(plan) => engine.decide_later(plan, None, target, None).await,
                None => Outcome::Proceed(None),
            }
        };
        Start::Later(Box::pin(decide), None)
    }

    /// Gives back what the central layer charged (at `at`) for a request a per-route layer
    /// took over, if the store answers at once; else hands the charge back.
    fn give_back_now(
        &self,
        (buckets, at): (Vec<Bucket>, Timestamp),
    ) -> Option<(Vec<Bucket>, Timestamp)> {
        let mut states = vec![tollgate_limits::BucketState::default(); buckets.len()];
        match self
            .store
            .apply_sync(Op::RefundAt(at), &buckets, &mut states)
        {
            Some(Ok(_)) => None,
            Some(Err(e)) => {
                give_back_failed(&e);
                None
            }
            None => Some((buckets, at)),
        }
    }

    /// [`Engine::give_back_now`] through the store's future.
    async fn give_back(&self, (buckets, at): (Vec<Bucket>, Timestamp)) {
        if let Err(e) = self.apply(&Batch::new(Op::RefundAt(at), buckets)).await {
            give_back_failed(&e);
        }
    }

    /// How a key of a bucket for direct use is stored: an IP address (or an address key as
    /// stored, `2001:db8::/64`) folded like a request's client (an IPv6 address to its
    /// network), or to `network`'s bits for a bucket keyed by client network, so a
    /// handler's raw address, its [`ClientIp::key`] and an operator's lookup all name one
    /// key; any other key as given; and for a bucket that hashes its keys, the result as a
    /// digest.
    pub(crate) fn direct_key(&self, key: &str, how: DirectKey) -> String {
        let folded = self.client_ip.fold_text(key, how.network);
        crate::key::store_key(folded.as_deref().unwrap_or(key).as_bytes(), how.hashed)
    }

    /// A request left to the layer of `route` was answered without reaching it: the route is
    /// charged provisionally from now on, the layer taking the charge over. Both ways it was
    /// left by are closed (the registry by its route, a declared pattern for the method).
    fn unverify(&self, route: &SeenRoute, method: &Method) {
        let bit = method_bit(method);
        let newly_for_pattern = route
            .pattern
            .as_ref()
            .is_some_and(|d| d.unverified.fetch_or(bit, Ordering::Relaxed) & bit == 0);
        // (Only standard methods: a client chooses the method, and must not fill the set;
        // the others are one bit of the pattern's.)
        let standard = crate::classify::STANDARD_METHODS.contains(method);
        let mut newly_for_route = false;
        let id = route.id.as_str();
        if standard && !self.routes.load().unverified.contains(id) {
            self.routes.change(|routes| {
                let mut routes = Routes::clone(routes);
                newly_for_route = routes.unverified.len() < MAX_PER_ROUTE_ENTRIES
                    && routes.unverified.insert(id.into());
                routes
            });
        }
        if !(newly_for_pattern || newly_for_route) {
            return;
        }
        // (The route's id is `<METHOD> <path>`: the method shown as events show it.)
        let path = id.split_once(' ').map_or(id, |(_, path)| path);
        tracing::warn!(
            target: "tollgate",
            method = %crate::observe::ShownMethod(method),
            route = %path,
            "a request of a route with its own policy was answered without reaching the \
             policy's layer (a check or a cache between the central layer and the route's, or \
             another router's route of that name?); its class charges the route's requests \
             from now on, and the layer takes the charge over when it sees them"
        );
    }

    /// From now on, the central layer marks the requests it charges, so a per-route layer
    /// further in can take them over.
    pub(crate) fn mark_requests(&self) {
        if !self.routes.load().marks {
            self.routes.change(|routes| {
                let mut routes = Routes::clone(routes);
                routes.marks = true;
                routes
            });
        }
    }

    /// Under [`LimiterBuilder::require_peer_address`](crate::LimiterBuilder::require_peer_address),
    /// the 500 for a request without a peer address.
    pub(crate) fn refuse_without_peer(&self, parts: &Parts) -> Option<Outcome> {
        if !self.require_peer || peer_addr(&parts.extensions).is_some() {
            return None;
        }
        self.note_no_peer();
        Some(Outcome::Respond(crate::respond::fixed_response(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            NO_PEER_BODY.as_bytes(),
        )))
    }

    /// Notes whether the identity function found a user for a request with a per-user
    /// limit. Many requests in a row without one suggest the limiter runs before the
    /// middleware that signs users in, which silently skips every per-user limit: that is
    /// warned about once.
    pub(crate) fn note_identity(&self, found: bool) {
        let streak = &self.anonymous_streak;
        if found {
            // Read first: while users are found, the shared counter is not written.
            let n = streak.load(Ordering::Relaxed);
            if n != 0 && n != u64::MAX {
                streak.store(0, Ordering::Relaxed);
            }
            return;
        }
        let n = streak.load(Ordering::Relaxed);
        if n == u64::MAX {
            return;
        }
        if streak.fetch_add(1, Ordering::Relaxed) + 1 == ANONYMOUS_STREAK_WARNING {
            streak.store(u64::MAX, Ordering::Relaxed);
            tracing::warn!(
                target: "tollgate",
                requests = ANONYMOUS_STREAK_WARNING,
                "the identity function found no signed-in user on {ANONYMOUS_STREAK_WARNING} \
                 requests in a row with per-user limits, so none of them spent a per-user \
                 limit. If users were signed in, the limiter runs before the middleware that \
                 signs them in: add the limiter's layer inside it (with axum, \
                 `.layer(limiter.layer())` before the auth layer, so that auth runs first)"
            );
        }
    }

    /// A request no rule matched, inside `Router::nest` (axum's `NestedPath`), whose route
    /// (`MatchedPath`, which carries the nest's prefix: `/api/items`) a rule matches once
    /// the prefix is left out (`/items`): the rules were written as the nested router
    /// declares its routes, and do not apply. Logged once, as a warning naming the route,
    /// the rule and the prefix; the first [`UNMATCHED_CHECKS`] such nested requests are
    /// looked at (a nested route no rule is meant to match costs nothing after).
    #[cfg(feature = "axum")]
    fn note_unmatched(&self, table: &Table, parts: &Parts) {
        let checked = &self.unmatched_checked;
        // Once the bound is reached (or warned), one load and nothing more.
        if checked.load(Ordering::Relaxed) >= UNMATCHED_CHECKS {
            return;
        }
        let Some(nest) = parts.extensions.get::<axum::extract::NestedPath>() else {
            return;
        };
        let Some(route) = matched_path(parts) else {
            return;
        };
        // Counted up to the bound (`u32::MAX` once warned), never past it.
        let counted = checked.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < UNMATCHED_CHECKS).then(|| n + 1)
        });
        if counted.is_err() {
            return;
        }
        let prefix = nest.as_str().trim_end_matches('/');
        let Some(rest) = route.strip_prefix(prefix).filter(|r| r.starts_with('/')) else {
            return;
        };
        let Some(rule) = table.classes.classify(&parts.method, rest) else {
            return;
        };
        if checked.swap(u32::MAX, Ordering::Relaxed) == u32::MAX {
            return;
        }
        let pattern = table
            .classes
            .pattern_of::<Compiled>(rule.as_ref())
            .map_or_else(String::new, ToString::to_string);
        tracing::warn!(
            target: "tollgate",
            route,
            rule = %pattern,
            prefix,
            "no rate-limit rule matches this route inside `Router::nest`, but a rule matches \
             it without the nest's prefix: routes there carry the prefix, so give rules the \
             full path (`/api/items`, not `/items`); that rule does not apply to this route"
        );
    }

    /// Without axum, no request is nested.
    #[cfg(not(feature = "axum"))]
    fn note_unmatched(&self, _table: &Table, _parts: &Parts) {}

    /// Counts a request without a peer address ([`LimiterStats::no_peer`]) and logs once
    /// that requests come without one.
    ///
    /// [`LimiterStats::no_peer`]: crate::LimiterStats::no_peer
    pub(crate) fn note_no_peer(&self) {
        self.stats.no_peer.fetch_add(1, Ordering::Relaxed);
        if !self.warned_no_peer.swap(true, Ordering::Relaxed) {
            let what = if self.require_peer {
                "such requests are refused with 500 (require_peer_address)"
            } else {
                "per-IP limits are shared by all such requests"
            };
            tracing::error!(
                target: "tollgate",
                "no client address on the request: {what}. With axum, serve with \
                 `into_make_service_with_connect_info::<SocketAddr>()`; with plain tower, \
                 insert the peer `SocketAddr` into the request extensions"
            );
        }
    }
}

/// Requests in a row without a user, on routes with per-user limits, before a warning.
pub(crate) const ANONYMOUS_STREAK_WARNING: u64 = 1_000;

/// The body of the 500 a request without a peer address gets under
/// `require_peer_address`.
const NO_PEER_BODY: &str = "The server is misconfigured: the rate limiter cannot see the \
     client's address. With axum, serve with \
     `into_make_service_with_connect_info::<SocketAddr>()`; with plain tower, insert the \
     peer `SocketAddr` into the request extensions.\n";

fn give_back_failed(e: &tollgate_limits::StoreError) {
    tracing::warn!(target: "tollgate", error = %e, "could not give the central class's charge back");
}

/// Locks a mutex; a poisoned one (a panic elsewhere) still holds valid state.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Central => f.write_str("Central"),
            Scope::Route { name, .. } => write!(f, "Route({name})"),
        }
    }
}
