//! The store's answer for a plan, turned into what the layer does: call the inner service
//! (with the headers to add), or answer 429 (or 503 when failing closed). A store that can
//! answer at once (memory) is asked synchronously, on the request's own thread, with no
//! future and no allocation; others (Redis) through their future.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::Method;
use smallvec::{smallvec, SmallVec};
use tollgate_limits::{Batch, BucketState, Decision, FailureMode, Op, StoreError, Timestamp};

use super::compile::{refusal_to_log, Compiled};
use super::gate::Waiting;
use super::plan::{Group, Plan, INLINE};
use super::settle::{After, Settled, Visible};
use super::{Engine, Provisional};
use crate::observe;
use crate::respond::{self, BucketOutcome, Most, RateLimitOutcome};

/// Whether a look's decision (a guard's, [`Op::Peek`]) is asking the store. Dropped with its
/// request at any other time (waiting for a place at its key's gate,
/// [`Gate`](super::gate::Gate)), a look has nothing to finish: it changes nothing, and its
/// place frees itself. Such a decision was run on in the background, still waiting and then
/// looking for a client gone (a review: 20,000 requests dropped while a key's places were
/// held kept 20,000 tasks, 157 MB and 1.4 cores on Redis, and a look refused afterwards
/// was counted and logged as a refusal no client got). A look dropped while it asks the
/// store is run on to its end: the call is finished, and a look admitted for which there is
/// no place yet waits and looks again, for a client gone (a narrow window: the time of one
/// store call).
#[derive(Clone, Default)]
pub(crate) struct Asking(Arc<std::sync::atomic::AtomicBool>);

impl Asking {
    /// The decision asks the store until the guard is dropped.
    fn begin(&self) -> AskingGuard<'_> {
        self.0.store(true, Ordering::Release);
        AskingGuard(self)
    }

    /// Whether the decision is asking the store now.
    pub(crate) fn now(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// [`Asking::begin`]'s: the store answered (or the decision was dropped).
struct AskingGuard<'a>(&'a Asking);

impl Drop for AskingGuard<'_> {
    fn drop(&mut self) {
        self.0 .0.store(false, Ordering::Release);
    }
}

/// The store's answer, turned into what the service does. Its headers are held inline
/// (boxing them would allocate on every request), so the admitted variant is the large one.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Outcome {
    /// Call the inner service; then finish with `After` (headers, refunds).
    Proceed(Option<After>),
    /// Answer without calling the inner service (503 when failing closed).
    Respond(http::Response<Bytes>),
    /// Refuse: a 429, made from the request's parts once they are at hand.
    Refuse(Refused),
}

/// A refusal, before its response is made (the refusal hook sees the request's parts).
pub(crate) struct Refused {
    engine: Arc<Engine>,
    body: Body,
    /// Its rate-limit headers and decision, as an admitted response's.
    settled: Settled,
}

/// What a refusal's body is made from.
enum Body {
    /// A ready shape's bytes, made already (without the outcome: nothing else needs it).
    Ready(Bytes),
    /// The outcome, for the refusal hook or a custom body.
    Info(RateLimitOutcome),
}

impl Refused {
    /// The 429 for the request of `parts`: the refusal hook's response (or the error body),
    /// plus the rate-limit headers it did not set, and the decision in its extensions.
    /// (By reference: a refusal holds its headers, 240 bytes, which a move copies; they are
    /// taken out.)
    pub(crate) fn respond(&mut self, parts: &Parts) -> http::Response<Bytes> {
        let engine = &self.engine;
        let body = &engine.error_body;
        let (mut response, content_type) = match (&mut self.body, &engine.refusal_hook) {
            (Body::Info(info), Some(hook)) => (hook(info, parts), None),
            (made, _) => {
                let bytes = match made {
                    Body::Ready(bytes) => std::mem::take(bytes),
                    Body::Info(info) => body.render(info),
                };
                (respond::refusal_of(bytes), Some(body.content_type()))
            }
        };
        self.settled.apply_with(&mut response, content_type);
        response
    }
}

/// The states of a plan's active buckets, as a store answered them.
pub(crate) type States = SmallVec<[BucketState; INLINE]>;

/// The request a decision is for, as its outcome and its logs name it.
#[derive(Clone, Copy)]
pub(crate) struct Target<'a> {
    pub(crate) method: &'a Method,
    /// The path requested (the outcome's, which bodies and refusal hooks see).
    pub(crate) path: &'a str,
    /// Where the route axum matched is found: logs name the route, not the path, which can
    /// carry identifiers (an e-mail, a token) that do not belong in logs.
    route: Route<'a>,
}

#[derive(Clone, Copy)]
enum Route<'a> {
    /// In the request's extensions, looked up only if a log needs it.
    In(&'a http::Extensions),
    /// Found already (`None`: the request matched no axum route).
    Known(Option<&'a str>),
}

impl<'a> Target<'a> {
    /// The request of `parts`, whose path (before any `nest` stripped a prefix) is `path`.
    pub(crate) fn of(parts: &'a Parts, path: &'a str) -> Self {
        Self {
            method: &parts.method,
            path,
            route: Route::In(&parts.extensions),
        }
    }

    /// The route template axum matched (`/users/{email}/reset`), if any.
    fn matched(&self) -> Option<&'a str> {
        match self.route {
            Route::In(extensions) => super::matched_in(extensions),
            Route::Known(route) => route,
        }
    }
}

/// A [`Target`] that outlives its request (the store's future holds it).
pub(crate) struct OwnedTarget {
    method: Method,
    path: String,
    route: Option<String>,
}

impl OwnedTarget {
    pub(crate) fn of(parts: &Parts, path: &str) -> Self {
        Self {
            method: parts.method.clone(),
            path: path.to_string(),
            route: super::matched_in(&parts.extensions).map(str::to_string),
        }
    }

    fn target(&self) -> Target<'_> {
        Target {
            method: &self.method,
            path: &self.path,
            route: Route::Known(self.route.as_deref()),
        }
    }
}

/// `0..n`: up to [`INLINE`], the first `n` of a ready array (no push per index); past it,
/// on the heap.
#[inline]
fn every_index(n: usize) -> SmallVec<[usize; INLINE]> {
    if n <= INLINE {
        SmallVec::from_buf_and_len(std::array::from_fn(|i| i), n)
    } else {
        (0..n).collect()
    }
}

/// `n` blank states for a store to answer into: made in place when they fit inline
/// (`smallvec!` pushes a clone of one blank state at a time). Always inlined into its one
/// caller, on every request's path: left to the compiler, it became a call of its own when
/// unrelated code (the config watcher's) moved between codegen units.
#[inline(always)]
fn blank_states(n: usize) -> States {
    if n <= INLINE {
        SmallVec::from_buf_and_len(std::array::from_fn(|_| BucketState::default()), n)
    } else {
        many_blank_states(n)
    }
}

/// [`blank_states`] past what fits inline.
#[cold]
fn many_blank_states(n: usize) -> States {
    smallvec![BucketState::default(); n]
}

/// What one answer of the store means for the plan.
enum Step {
    /// Decided: the outcome is written.
    Done,
    /// Only shadow buckets refused: charge again without them.
    Without(SmallVec<[usize; INLINE]>),
}

impl Engine {
    /// Charges `plan` at once if the store can answer synchronously, into `out` (written
    /// in place: see [`Start::Now`](super::Start::Now)); `false` if `plan` must be charged
    /// through the store's future.
    #[inline]
    pub(crate) fn decide_now(
        self: &Arc<Self>,
        plan: &Plan<&Arc<Compiled>>,
        provisional: &Option<Arc<Provisional>>,
        target: Target<'_>,
        out: &mut Outcome,
    ) -> bool {
        let op = plan.op();
        // A guard's look behind a gate may have to wait for a place: through the future.
        if op == Op::Peek && self.gate.is_some() {
            return false;
        }
        let mut active = every_index(plan.buckets.len());
        // The memory store answers in tens of nanoseconds: it is timed only for the span
        // (while `DEBUG` is on for this crate's target).
        let timed = tracing::enabled!(target: "tollgate", tracing::Level::DEBUG);
        loop {
            let mut states = blank_states(active.len());
            let started = timed.then(Instant::now);
            let answer = if active.len() == plan.buckets.len() {
                self.store.apply_sync(op, &plan.buckets, &mut states)
            } else {
                let buckets: SmallVec<[_; INLINE]> =
                    active.iter().map(|&i| plan.buckets[i].clone()).collect();
                self.store.apply_sync(op, &buckets, &mut states)
            };
            let Some(answer) = answer else {
                return false;
            };
            let conclude = || {
                self.conclude(
                    plan,
                    op,
                    &active,
                    answer,
                    &mut states,
                    provisional,
                    target,
                    out,
                )
            };
            // The span is a `DEBUG` one: without `DEBUG` it would be a disabled span.
            let step = match started {
                Some(t) => self.span(plan, t.elapsed()).in_scope(conclude),
                None => conclude(),
            };
            match step {
                Step::Done => return true,
                Step::Without(rest) => active = rest,
            }
        }
    }

    /// Charges `plan` through the store's future. A look (a guard's, [`Op::Peek`]) says
    /// through `asking` when it is asking the store ([`Asking`]).
    pub(crate) async fn decide_later(
        self: Arc<Self>,
        plan: Plan<Arc<Compiled>>,
        provisional: Option<Arc<Provisional>>,
        target: OwnedTarget,
        asking: Option<Asking>,
    ) -> Outcome {
        let mut active = every_index(plan.buckets.len());
        let op = plan.op();
        let mut out = Outcome::Proceed(None);
        // A guard's look: its requests of a key run no more at once than the key has left.
        let gate = self.gate.clone().filter(|_| op == Op::Peek);
        let mut waiting = Waiting::new();
        loop {
            let place = match &gate {
                Some(gate) => {
                    let keys = active.iter().map(|&i| plan.buckets[i].key.clone());
                    Some(gate.place(keys, &waiting).await)
                }
                None => None,
            };
            let buckets = active.iter().map(|&i| plan.buckets[i].clone()).collect();
            let batch = Batch::new(op, buckets).with_failure_mode(plan.on_failure);
            let asked = asking.as_ref().map(Asking::begin);
            let (answer, elapsed) = self.ask(&batch).await;
            drop(asked);
            let (answer, mut states) = match answer {
                Ok((now, states)) => (Ok(now), states),
                Err(e) => (Err(e), States::new()),
            };
            // Admitted by the look, but as many of a key run already as it has left: look
            // again once one of them is answered (and counted, if it failed).
            if let Some(place) = &place {
                let admitted = answer.is_ok() && states.iter().all(|s| s.allowed);
                if admitted && !place.fits(&states) {
                    waiting.saw(&states);
                    continue;
                }
            }
            let span = self.span(&plan, elapsed);
            let step = span.in_scope(|| {
                self.conclude(
                    &plan,
                    op,
                    &active,
                    answer,
                    &mut states,
                    &provisional,
                    target.target(),
                    &mut out,
                )
            });
            match step {
                Step::Done => {
                    // An admitted request holds its places until its response is counted.
                    if let (Some(place), Outcome::Proceed(Some(after))) = (place, &mut out) {
                        after.hold(place);
                    }
                    return out;
                }
                Step::Without(rest) => active = rest,
            }
        }
    }

    /// The store's answer for `batch`, whose buckets are valid ([`Batch::validate`]): at
    /// once from a store that answers so (the memory store, asked here behind a guard's gate
    /// or by a handler), else through its future, timed (a store that waits: only those are
    /// in the store's duration histogram). With how long the store took.
    pub(crate) async fn ask(
        &self,
        batch: &Batch,
    ) -> (Result<(Timestamp, States), StoreError>, Duration) {
        let mut states: States = smallvec![BucketState::default(); batch.buckets.len()];
        if let Some(answer) = self.store.apply_sync(batch.op, &batch.buckets, &mut states) {
            return (answer.map(|now| (now, states)), Duration::ZERO);
        }
        let started = Instant::now();
        let answer = self.apply(batch).await;
        let elapsed = started.elapsed();
        self.store_metrics.answered(elapsed, &*self.store);
        (
            answer.map(|d| (d.now, States::from_vec(d.buckets))),
            elapsed,
        )
    }

    /// The store's future's answer for `batch`: every call through a store's future goes
    /// here. A store's answer is one state per bucket, and admits if every state does: one
    /// that breaks that is an error of the store, not an admission (a review's store
    /// answered no state, refused, for three buckets: the request was admitted).
    pub(crate) async fn apply(&self, batch: &Batch) -> Result<Decision, StoreError> {
        let d = self.store.apply(batch).await?;
        let admits = d.buckets.iter().all(|s| s.allowed);
        if d.buckets.len() != batch.buckets.len() || d.allowed != admits {
            return Err(StoreError::Protocol(format!(
                "the store answered {} bucket states ({}) for {} buckets: one state per \
                 bucket, admitted only if every state is",
                d.buckets.len(),
                if d.allowed { "admitted" } else { "refused" },
                batch.buckets.len()
            )));
        }
        Ok(d)
    }

    /// The `DEBUG` span of one decision: the route's policy, the store, and how long the
    /// store took.
    fn span<G: AsRef<Compiled>>(&self, plan: &Plan<G>, store: Duration) -> tracing::Span {
        self.decide_span(plan.groups.first().map_or("", |g| &*g.as_ref().name), store)
    }

    /// The `DEBUG` span of one decision: of `policy` (a bucket's name, for direct use),
    /// whose store call took `store`.
    pub(crate) fn decide_span(&self, policy: &str, store: Duration) -> tracing::Span {
        tracing::debug_span!(
            target: "tollgate",
            "tollgate.decide",
            policy = %policy,
            store = %self.store_name,
            store_us = store.as_micros() as u64,
        )
    }

    /// What an answer of the store to `op` (the plan's [`Plan::op`]) for the `active`
    /// buckets of `plan` means: the outcome, written to `out`, or a charge again.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn conclude<G: Group>(
        self: &Arc<Self>,
        plan: &Plan<G>,
        op: Op,
        active: &[usize],
        answer: Result<Timestamp, StoreError>,
        states: &mut States,
        provisional: &Option<Arc<Provisional>>,
        target: Target<'_>,
        out: &mut Outcome,
    ) -> Step {
        let now = match answer {
            Ok(now) => now,
            Err(e) => {
                let route = || self.route_for_log(plan, target);
                *out = self.store_failed(&e, plan.on_failure, target.method, route);
                return Step::Done;
            }
        };
        let allowed = states.iter().all(|s| s.allowed);
        if allowed {
            // A look spent nothing: a guard's buckets count the responses it counts after
            // them, in the stats as in the metrics (see `Pending::answered`).
            if op != Op::Peek {
                self.stats.admitted.fetch_add(1, Ordering::Relaxed);
                if observe::ENABLED {
                    for (&i, state) in active.iter().zip(&*states) {
                        if let Some(metrics) = plan.metrics(i) {
                            metrics.admitted(state);
                        }
                    }
                }
            }
            // (A look charged nothing a per-route layer could take over.)
            if let Some(p) = provisional.as_ref().filter(|_| op == Op::Charge) {
                let charged = active.iter().map(|&i| plan.buckets[i].clone()).collect();
                *super::lock(&p.charged) = Some((charged, now));
            }
            After::write_into(self, plan, active, states, now, provisional.clone(), out);
            return Step::Done;
        }
        let mut enforced = false;
        let mut refusing: SmallVec<[usize; INLINE]> = SmallVec::new();
        for (&i, state) in active.iter().zip(&*states) {
            if state.allowed {
                continue;
            }
            refusing.push(i);
            let shadow = plan.shadow(i);
            enforced |= !shadow;
            if observe::ENABLED {
                if let Some(metrics) = plan.metrics(i) {
                    metrics.refused(shadow, state);
                }
            }
            self.log_refusal(plan, i, state, target);
        }
        if enforced {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            // The body from the info; the headers as an admitted response makes them (their
            // constant parts ready).
            let visible = Visible::of(plan, active, states);
            *out = Outcome::Refuse(Refused {
                engine: self.clone(),
                body: self.refusal_body(plan, &visible, now, target),
                settled: Settled::default(),
            });
            // (Its headers made where they are kept.)
            if let Outcome::Refuse(refused) = out {
                self.settle_into(plan, &visible, now, true, &mut refused.settled);
            }
            return Step::Done;
        }
        self.stats.would_refuse.fetch_add(1, Ordering::Relaxed);
        let rest: SmallVec<[usize; INLINE]> = active
            .iter()
            .copied()
            .filter(|i| !refusing.contains(i))
            .collect();
        if rest.is_empty() {
            *out = Outcome::Proceed(None);
            return Step::Done;
        }
        Step::Without(rest)
    }

    /// What the 429's body is made from: a ready body's bytes when no refusal hook is set
    /// (made from the most restrictive bucket alone, as [`ErrorBody::render`] makes them of
    /// the outcome), else the outcome.
    ///
    /// [`ErrorBody::render`]: crate::ErrorBody::render
    fn refusal_body<G: AsRef<Compiled>>(
        &self,
        plan: &Plan<G>,
        visible: &Visible<'_>,
        now: Timestamp,
        target: Target<'_>,
    ) -> Body {
        if self.refusal_hook.is_none() {
            let most = Most {
                state: visible.most.map(|j| visible.states[j]),
                now,
                allowed: visible.allowed,
            };
            let period = visible
                .most
                .map(|j| plan.buckets[visible.index[j]].limit.shown_quota().period());
            let ready = self
                .error_body
                .ready(most, period, target.method, target.path);
            if let Some(bytes) = ready {
                return Body::Ready(bytes);
            }
        }
        Body::Info(self.info(plan, visible, now, target))
    }

    /// What logs name a request by: the route axum matched (`/users/{email}/reset`), else
    /// the rule of the table that classed it (`/api/*`), else `-`; never the path
    /// requested, which can carry identifiers (an e-mail, a token) that do not belong in
    /// logs (a request no axum route matched, or a plain tower stack, logged its path).
    /// Only made for an event: finding the rule takes a walk of the table.
    fn route_for_log<G: AsRef<Compiled>>(&self, plan: &Plan<G>, target: Target<'_>) -> String {
        if let Some(route) = target.matched() {
            return route.to_string();
        }
        let table = self.table.load();
        plan.groups
            .first()
            .and_then(|class| table.classes.pattern_of::<Compiled>(class.as_ref()))
            .map_or_else(|| "-".to_string(), ToString::to_string)
    }

    /// A refusal event: at most one per second per policy, with how many were not logged.
    fn log_refusal<G: AsRef<Compiled>>(
        &self,
        plan: &Plan<G>,
        i: usize,
        state: &BucketState,
        target: Target<'_>,
    ) {
        let policy = plan.policy(i);
        let Some(unlogged) = refusal_to_log(&policy.refusals_logged) else {
            return;
        };
        let shadow = plan.shadow(i);
        tracing::info!(
            target: "tollgate",
            policy = %policy.name,
            bucket = %plan.label(i),
            key_kind = %plan.kind(i),
            shadow,
            reason = %observe::refusal_reason(state),
            retry_after_ms = state.retry_after.map(|d| d.as_millis() as u64),
            method = %crate::observe::ShownMethod(target.method),
            route = %self.route_for_log(plan, target),
            unlogged_refusals = unlogged,
            "{}",
            observe::refusal_message(shadow, state)
        );
    }

    /// The info headers and bodies are made of, for the `active` buckets of `plan` answered
    /// by `states`. Shadow buckets are a dry run: they never show (a client that slows down
    /// on `Remaining: 0` must not be slowed by a dry run).
    pub(crate) fn info<G: AsRef<Compiled>>(
        &self,
        plan: &Plan<G>,
        visible: &Visible<'_>,
        now: Timestamp,
        target: Target<'_>,
    ) -> RateLimitOutcome {
        let buckets = visible
            .index
            .iter()
            .zip(&visible.states)
            .map(|(&i, &state)| BucketOutcome {
                name: plan.label_arc(i).clone(),
                quota: plan.buckets[i].limit.shown_quota(),
                state: state.clone(),
            })
            .collect();
        let policy = visible.most.map_or_else(
            || Arc::<str>::from(""),
            |j| plan.policy(visible.index[j]).name.clone(),
        );
        RateLimitOutcome {
            policy,
            buckets,
            most_restrictive: visible.most.unwrap_or(0),
            now,
            method: target.method.clone(),
            path: target.path.to_string(),
            allowed: visible.allowed,
        }
    }

    /// Counts a call the store could not answer (stats and metrics); `Some(n)` if it is to
    /// be logged now, `n` failures not logged since the last (see [`Counters::store_failed`]).
    ///
    /// [`Counters::store_failed`]: super::Counters::store_failed
    pub(crate) fn count_store_failure(&self) -> Option<u64> {
        self.store_metrics.error();
        self.stats.store_failed()
    }

    /// A store that could not answer: admit without headers, or 503 when failing closed.
    fn store_failed(
        &self,
        error: &StoreError,
        on_failure: FailureMode,
        method: &Method,
        route: impl FnOnce() -> String,
    ) -> Outcome {
        if let Some(unlogged) = self.count_store_failure() {
            tracing::warn!(
                target: "tollgate",
                error = %error,
                fail = ?on_failure,
                method = %observe::ShownMethod(method),
                route = %route(),
                unlogged_failures = unlogged,
                "rate-limit store failed (logged at most every 10 s)"
            );
        }
        if on_failure == FailureMode::Closed {
            Outcome::Respond(respond::unavailable(&self.error_body))
        } else {
            Outcome::Proceed(None)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_index_is_the_range_inline_or_not() {
        for n in 0..=super::INLINE + 3 {
            let expected: Vec<usize> = (0..n).collect();
            assert_eq!(super::every_index(n).as_slice(), expected.as_slice());
        }
    }
}
