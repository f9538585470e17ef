//! After the inner service answered: the rate-limit headers of an admitted response, and
//! the charge given back when the response does not count (a 304, a successful sign-in
//! under a count-only-failures policy).

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{HeaderValue, StatusCode};
use smallvec::SmallVec;
use tollgate_limits::{most_restrictive, Batch, BoxFuture, Bucket, BucketState, Op, Timestamp};

use super::compile::Compiled;
use super::decide::{Outcome, States};
use super::gate::Place;
use super::plan::{Group, Plan, INLINE};
use super::{mark_admitted, Engine, Provisional};
use crate::respond::{sf, Fields, RateLimitDecision, Shown, ShownResponse};

/// What an admitted response gets: its rate-limit headers, and the decision for its
/// extensions.
#[derive(Default)]
pub(crate) struct Settled {
    pub(crate) headers: Fields,
    pub(crate) decision: Option<RateLimitDecision>,
}

impl Settled {
    /// Adds the headers (those the inner service did not set) and the decision to
    /// `response`. (By reference: the headers are 240 bytes, which a move copies; what it
    /// holds is taken out.)
    pub(crate) fn apply<B>(&mut self, response: &mut http::Response<B>) {
        Self::add(&mut self.headers, self.decision.take(), response);
    }

    /// [`Settled::apply`] to a response of the limiter's own that holds its body alone (a
    /// 429's): its header map is made at once, `content_type` then the rate-limit headers;
    /// without a content type (a refusal hook's response), [`Settled::apply`].
    pub(crate) fn apply_with<B>(
        &mut self,
        response: &mut http::Response<B>,
        content_type: Option<HeaderValue>,
    ) {
        match content_type {
            Some(content_type) => {
                self.headers
                    .fill(response.headers_mut(), Some(content_type));
                Self::put(self.decision.take(), response);
            }
            None => self.apply(response),
        }
    }

    /// [`Settled::apply`] of its two parts.
    fn add<B>(
        headers: &mut Fields,
        decision: Option<RateLimitDecision>,
        response: &mut http::Response<B>,
    ) {
        headers.merge_into(response.headers_mut());
        Self::put(decision, response);
    }

    /// `decision` (if any) into `response`'s extensions.
    fn put<B>(decision: Option<RateLimitDecision>, response: &mut http::Response<B>) {
        if let Some(decision) = decision {
            response.extensions_mut().insert(decision);
        }
    }
}

/// What to do with the inner service's response.
pub(crate) struct After {
    /// The headers, when no policy of the request may give its charge back.
    headers: Fields,
    /// The decision, for the request's extensions and the response's (when no charge may
    /// be given back).
    decision: Option<RateLimitDecision>,
    /// Whether the request's extensions carry it.
    in_request: bool,
    /// Whether the response's extensions carry it.
    in_response: bool,
    /// What giving a charge back needs, when some policy may.
    pending: Option<Box<Pending>>,
    /// The central layer's charge, which a per-route layer further in may take over.
    provisional: Option<Arc<Provisional>>,
}

struct Pending {
    /// A guard's places in its gate, given up with this (once the response is counted).
    place: Option<Place>,
    engine: Arc<Engine>,
    plan: Plan<Arc<Compiled>>,
    /// The indices of the charged buckets in the plan, one per state.
    charged: SmallVec<[usize; INLINE]>,
    states: States,
    now: Timestamp,
}

/// The headers of an admitted response: at once, or after a refund (so a response that
/// does not count shows the budget as it is once the charge is given back). The ready
/// headers are held inline: boxing them would allocate per request.
#[allow(clippy::large_enum_variant)]
enum Settle {
    /// The headers, ready.
    Now(Settled),
    /// Give the charge back (or count the response), then the headers.
    AfterStore(BoxFuture<'static, Settled>),
}

impl After {
    /// What an admitted charge of the `active` buckets of `plan` leaves to do after the
    /// response, written into the outcome slot `out` ([`Outcome::Proceed`]). (Made where it
    /// is kept: an `After` is several hundred bytes, which returning it, then moving it into
    /// the slot, copied twice. The `states` are taken only if a charge may be given back:
    /// they are hundreds of bytes, which a move copies.)
    pub(crate) fn write_into<G: Group>(
        engine: &Arc<Engine>,
        plan: &Plan<G>,
        active: &[usize],
        states: &mut States,
        now: Timestamp,
        provisional: Option<Arc<Provisional>>,
        out: &mut Outcome,
    ) {
        let visible = Visible::of(plan, active, states);
        let decision = engine.decision(plan, &visible, now);
        let after = |pending| Self {
            headers: Fields::default(),
            decision,
            in_request: engine.decision_in_request,
            in_response: engine.decision_in_response,
            pending,
            provisional,
        };
        if active.iter().any(|&i| plan.policy(i).may_refund()) {
            // (It borrows the states, which the refund keeps.)
            drop(visible);
            let pending = Pending {
                place: None,
                engine: engine.clone(),
                plan: plan.owned(),
                charged: active.iter().copied().collect(),
                states: std::mem::take(states),
                now,
            };
            *out = Outcome::Proceed(Some(after(Some(Box::new(pending)))));
            return;
        }
        *out = Outcome::Proceed(Some(after(None)));
        if let Outcome::Proceed(Some(after)) = out {
            engine.headers(plan, &visible, now, &mut after.headers);
        }
    }

    /// Holds a guard's `place` in its gate until the response is counted (or the request
    /// dropped).
    pub(crate) fn hold(&mut self, place: Place) {
        if let Some(pending) = self.pending.as_mut() {
            pending.place = Some(place.ran());
        }
    }

    /// No response goes out through this layer: the request's future was dropped (`None`:
    /// the client went away, a timeout further out gave up on it) or the inner service
    /// failed (`Some(500)`: what that ends as further out). What the response does to the
    /// charge ([`Pending::settle`]) is done without headers, at once on a store that answers
    /// at once, else on the Tokio runtime the request ran on (without one, it stays as
    /// charged).
    pub(crate) fn abandon(mut self, status: Option<StatusCode>) {
        self.give_up(status);
    }

    /// [`After::abandon`], once: what is to be given back is taken out.
    fn give_up(&mut self, status: Option<StatusCode>) {
        if self.taken_over() {
            self.pending = None;
            return;
        }
        // Judged before it is taken out (see `Pending::touched`).
        let Some(touched) = self.pending.as_ref().map(|p| p.touched(status)) else {
            return;
        };
        if let Some(Settle::AfterStore(giving_back)) =
            self.pending.take().map(|p| p.settle(touched))
        {
            in_background(giving_back);
        }
    }

    /// Marks the request admitted by limiter `id` before the inner service sees it: with the
    /// decision, when the request's `extensions` carry it (the response's extensions, if
    /// they carry it too, get a copy), else with a mark of the limiter. A layer of the same
    /// limiter further in finds either ([`charged_by`](super::charged_by)) and passes the request on, so a
    /// request through two of its layers (a router's, and a nested router's) is charged
    /// once, whatever layers sit between. Called by the service and the response future
    /// before they call the inner service.
    pub(crate) fn put_in_request(
        after: &mut Option<Self>,
        id: u64,
        extensions: &mut http::Extensions,
    ) {
        let decision = after.as_mut().filter(|a| a.in_request).and_then(|a| {
            let decision = a.decision.take();
            if a.in_response {
                a.decision.clone_from(&decision);
            }
            decision
        });
        let Some(decision) = decision else {
            return mark_admitted(extensions, id);
        };
        // An outer limiter's decision marks the request for that limiter: its mark stays.
        if let Some(outer) = extensions.insert(decision) {
            if outer.limiter.0 != 0 {
                mark_admitted(extensions, outer.limiter.0);
            }
        }
    }

    /// Finishes with the inner service's `response`: adds its headers and decision at once
    /// when nothing is to be given back (the usual response, with nothing copied on the
    /// way), else [`Pending::settle`]s first. Nothing if a per-route layer took the request
    /// over. The future, if the store must be asked. (By reference: an `After` is several
    /// hundred bytes, which a move copies; what it holds is taken out.)
    pub(crate) fn finish<B>(
        &mut self,
        response: &mut http::Response<B>,
    ) -> Option<BoxFuture<'static, Settled>> {
        if self.taken_over() {
            return None;
        }
        // Judged before it is taken out (see `Pending::touched`).
        let Some(touched) = self
            .pending
            .as_ref()
            .map(|p| p.touched(Some(response.status())))
        else {
            let decision = self.decision.take().filter(|_| self.in_response);
            Settled::add(&mut self.headers, decision, response);
            return None;
        };
        match self.pending.take().map(|p| p.settle(touched))? {
            Settle::Now(mut settled) => {
                settled.apply(response);
                None
            }
            Settle::AfterStore(settle) => Some(settle),
        }
    }

    /// Whether a per-route layer further in took the request's charge over.
    fn taken_over(&self) -> bool {
        self.provisional
            .as_ref()
            .is_some_and(|p| p.taken_over.load(Ordering::Acquire))
    }
}

/// Dropped without its response or an [`After::abandon`] (the response future dropped, or
/// the inner service's `call` panicked with it in hand, before a future held it): no
/// response goes out through this layer. (A review: a policy counting only `401`s kept what
/// it reserved, a failure counted, when a `map_request` in front of the handler panicked.)
impl Drop for After {
    fn drop(&mut self) {
        self.give_up(None);
    }
}

impl Pending {
    /// What a response of `status` does to the buckets: a plan either charged them (and
    /// gives back what does not count) or looked at them (and counts what does): see
    /// `Plan::op`. That op, and the positions in `charged` of the buckets it touches.
    ///
    /// `status` is `None` for a request that got no response (see
    /// [`Compiled::after_response`]): [`After::abandon`]. Worked out while the charge is
    /// still in its [`After`]: a policy's code judging a status may panic, and the charge
    /// must then be there for the `After`'s drop to settle as a request without a
    /// response (a review: a `count_only_if` function that panicked kept its reservation
    /// for the rest of the window).
    fn touched(&self, status: Option<StatusCode>) -> (Op, SmallVec<[usize; INLINE]>) {
        let op = if self.plan.op() == Op::Peek {
            Op::Penalize
        } else {
            Op::Refund
        };
        let touched = (0..self.charged.len())
            .filter(|&pos| {
                let policy = self.plan.policy(self.charged[pos]);
                policy.after_response(status) == Some(op)
            })
            .collect();
        (op, touched)
    }

    /// The headers for a response, giving the charge back first if the response does not
    /// count: `op` on the buckets at `touched` ([`Pending::touched`]).
    fn settle(self: Box<Self>, (op, touched): (Op, SmallVec<[usize; INLINE]>)) -> Settle {
        let mut pending = self;
        let looked = op == Op::Penalize;
        if touched.is_empty() {
            // A response a guard does not count shows nothing of its budget (an
            // authenticated answer, or one admitted without headers while the store is
            // down, is not told how many failures its IP has left).
            return Settle::Now(pending.settled(!looked));
        }
        let buckets: SmallVec<[Bucket; INLINE]> = touched
            .iter()
            .map(|&pos| pending.plan.buckets[pending.charged[pos]].clone())
            .collect();
        let mut answered: States = SmallVec::from_elem(BucketState::default(), buckets.len());
        let store = &pending.engine.store;
        // A refund undoes the charge made when the store answered it, from what that charge
        // counted: one that comes back late frees nothing a newer charge took.
        let sent = if looked {
            op
        } else {
            Op::RefundAt(pending.now)
        };
        if let Some(answer) = store.apply_sync(sent, &buckets, &mut answered) {
            pending.answered(op, &touched, answer.map(|_| answered));
            return Settle::Now(pending.settled(true));
        }
        Settle::AfterStore(Box::pin(async move {
            let batch = Batch::new(sent, buckets.into_vec());
            let answer = pending.engine.apply(&batch).await;
            pending.answered(op, &touched, answer.map(|d| States::from_vec(d.buckets)));
            pending.settled(true)
        }))
    }

    /// Notes what the store answered for `op` (a refund, or a count after the response) on
    /// the charged buckets at `touched`.
    fn answered(
        &mut self,
        op: Op,
        touched: &[usize],
        answer: Result<States, tollgate_limits::StoreError>,
    ) {
        match answer {
            Ok(states) => {
                // A response counted after a look spent the guard's budget, as a charge
                // does.
                if op == Op::Penalize {
                    let at = touched.iter().map(|&pos| self.charged[pos]);
                    self.plan.count_response(&self.engine.stats, at, &states);
                }
                for (&pos, state) in touched.iter().zip(states) {
                    self.states[pos] = state;
                }
            }
            Err(e) if op == Op::Refund => {
                tracing::warn!(target: "tollgate", error = %e, "could not give a charge back");
            }
            Err(e) => {
                tracing::warn!(target: "tollgate", error = %e, "could not count a response");
            }
        }
    }

    /// The decision, and the headers if they `show`, as the buckets are now.
    fn settled(&self, show: bool) -> Settled {
        let visible = Visible::of(&self.plan, &self.charged, &self.states);
        let mut settled = Settled::default();
        self.engine
            .settle_into(&self.plan, &visible, self.now, show, &mut settled);
        settled
    }
}

/// Runs what a dropped request's future left with the store (its charge's answer, a
/// charge to give back) to its end, on the Tokio runtime the request ran on; without one,
/// it is dropped with a warning.
pub(crate) fn in_background<T: Send + 'static>(work: BoxFuture<'static, T>) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(work);
        }
        Err(_) => tracing::warn!(
            target: "tollgate",
            "a dropped request's store call was cut short: no Tokio runtime to finish it on \
             (a reservation may stay charged)"
        ),
    }
}

/// The buckets a response shows: the charged ones that are not a dry run (a client that
/// slows down on `Remaining: 0` must not be slowed by a dry run), their states, whether
/// they all admit, and the most restrictive of them. Worked out once per response, for its
/// headers, its decision and its info.
pub(crate) struct Visible<'a> {
    /// Their indices in the plan.
    pub(crate) index: SmallVec<[usize; INLINE]>,
    /// Their states (borrowed from the store's answer: not copied per response).
    pub(crate) states: SmallVec<[&'a BucketState; INLINE]>,
    pub(crate) allowed: bool,
    /// The position in `index` of the most restrictive (`None`: nothing shows).
    pub(crate) most: Option<usize>,
}

impl<'a> Visible<'a> {
    /// The buckets shown of the `active` buckets of `plan`, answered by `states`.
    pub(crate) fn of<G: AsRef<Compiled>>(
        plan: &Plan<G>,
        active: &[usize],
        states: &'a [BucketState],
    ) -> Self {
        let mut index = SmallVec::new();
        let mut shown = SmallVec::new();
        for (&i, state) in active.iter().zip(states) {
            if !plan.shadow(i) {
                index.push(i);
                shown.push(state);
            }
        }
        let allowed = shown.iter().all(|s: &&BucketState| s.allowed);
        let most = most_restrictive(allowed, shown.iter().copied());
        Self {
            index,
            states: shown,
            allowed,
            most,
        }
    }
}

impl Engine {
    /// What a response (admitted, or a 429) gets for the `visible` buckets of `plan`: its
    /// rate-limit headers if they `show`, and the decision when responses carry it; set in
    /// a blank `settled` (filled where it is kept: its headers are 240 bytes, which
    /// returning them would copy).
    pub(crate) fn settle_into<G: AsRef<Compiled>>(
        &self,
        plan: &Plan<G>,
        visible: &Visible<'_>,
        now: Timestamp,
        show: bool,
        settled: &mut Settled,
    ) {
        settled.decision = self
            .decision_in_response
            .then(|| self.decision(plan, visible, now))
            .flatten();
        if show {
            self.headers(plan, visible, now, &mut settled.headers);
        }
    }

    /// The decision the extensions carry for the `active` buckets of `plan` answered by
    /// `states`: the most restrictive bucket that is not a dry run. `None` if no
    /// extensions carry it, or only dry runs were charged.
    pub(crate) fn decision<G: AsRef<Compiled>>(
        &self,
        plan: &Plan<G>,
        shown: &Visible<'_>,
        now: Timestamp,
    ) -> Option<RateLimitDecision> {
        if !self.decision_in_request && !self.decision_in_response {
            return None;
        }
        let j = shown.most?;
        let i = shown.index[j];
        Some(
            RateLimitDecision::new(
                Cow::Borrowed(plan.policy(i).static_name),
                Cow::Borrowed(plan.static_label(i)),
                shown.states[j],
                now,
                shown.allowed,
            )
            .of_limiter(self.id),
        )
    }

    /// The rate-limit headers for the `visible` buckets of `plan`, set in `headers` (filled
    /// where they are kept: the fields are 240 bytes, which returning them would copy).
    /// Shadow buckets are a dry run and never show. The constant parts come ready from the
    /// compiled policies.
    pub(crate) fn headers<G: AsRef<Compiled>>(
        &self,
        plan: &Plan<G>,
        visible: &Visible<'_>,
        now: Timestamp,
        headers: &mut Fields,
    ) {
        let (shown, shown_states) = (&visible.index, &visible.states);
        if shown.is_empty() || !self.header_style.writes_any(visible.allowed) {
            return;
        }
        // Overrides have no compiled name: theirs are made here. (Both lists are filled by
        // `push`, which inlines; collecting into them does not, and costs more.)
        let mut override_names: SmallVec<[String; 1]> = SmallVec::new();
        for &i in shown {
            if plan.meta[i].label.is_some() {
                override_names.push(sf::string(plan.label(i)));
            }
        }
        let mut next_override = override_names.iter();
        let mut mask = 0usize;
        let mut cacheable = true;
        let mut items: SmallVec<[Shown<'_>; INLINE]> = SmallVec::new();
        for (&i, state) in shown.iter().zip(shown_states) {
            let meta = &plan.meta[i];
            match meta.bit {
                Some(bit) => mask |= 1 << bit,
                None => cacheable = false,
            }
            let quota = plan.buckets[i].limit.shown_quota();
            items.push(match &meta.label {
                Some(_) => Shown {
                    sf_name: next_override.next().map_or("\"\"", String::as_str),
                    quota,
                    policy_item: None,
                    limit_value: None,
                    state,
                },
                None => {
                    let limit = &plan.policy(i).limits[usize::from(meta.limit)];
                    Shown {
                        sf_name: &limit.sf_name,
                        quota,
                        policy_item: meta.bit.and(limit.policy_item.as_deref()),
                        limit_value: limit.limit_value.as_ref(),
                        state,
                    }
                }
            });
        }
        let mut view = ShownResponse {
            now,
            allowed: visible.allowed,
            most_restrictive: visible.most.unwrap_or(0),
            buckets: &items,
            policy: None,
        };
        let cache = &plan.groups[0].as_ref().policy_values;
        if cacheable && self.header_style.writes_ietf() {
            if let Some(slot) = cache.get(mask) {
                let value = slot.get_or_init(|| {
                    let parts: Vec<&str> = items.iter().filter_map(|b| b.policy_item).collect();
                    HeaderValue::from_str(&parts.join(", "))
                        .unwrap_or_else(|_| HeaderValue::from_static(""))
                });
                view.policy = Some(value);
            }
        }
        self.header_style
            .emit(&view, |field, value| headers.set(field, value));
    }
}
