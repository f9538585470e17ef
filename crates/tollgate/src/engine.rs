//! The request path: compiled policies, the buckets of one request, the decision, the
//! response and what happens after it. One code path for the central table and for
//! per-route policies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tollgate_core::{Batch, BoxFuture, Bucket, Decision, FailureMode, Limit, Op, Quota};

use crate::client_ip::peer_addr;
use crate::error::BuildError;
use crate::key::{store_key, Key, Source};
use crate::limiter::{lock, read, write, Inner};
use crate::policy::{Cost, Policy, QuotaFn, QuotaSource, StatusFn};
use crate::respond::{self, RateLimitInfo};

/// Settings every policy inherits unless it says otherwise.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Defaults {
    pub(crate) shadow: bool,
    pub(crate) on_failure: FailureMode,
}

/// What a bucket name is bound to: the first policy that used it and its limits.
pub(crate) type Signatures = HashMap<Arc<str>, (Arc<str>, Vec<Sig>)>;

/// One limit of a bucket, as far as sharing is concerned.
#[derive(Clone, PartialEq)]
pub(crate) enum Sig {
    Fixed(Arc<str>, Limit),
    PerKey(Arc<str>, usize),
}

/// A policy checked and ready for requests.
pub(crate) struct Compiled {
    pub(crate) name: Arc<str>,
    pub(crate) exempt: bool,
    pub(crate) limits: Vec<CompiledLimit>,
    cost: Cost,
    refund_if: Option<StatusFn>,
    count_only_if: Option<StatusFn>,
    shadow: bool,
    on_failure: FailureMode,
    /// Whether the warning about a per-route policy charged by the central class first
    /// was logged (once per policy).
    warned_central: std::sync::atomic::AtomicBool,
}

pub(crate) struct CompiledLimit {
    pub(crate) key: Key,
    pub(crate) quota: CompiledQuota,
    /// The bucket name in the store and in headers: `<bucket>:<kind>[#n]`.
    pub(crate) bucket: Arc<str>,
}

pub(crate) enum CompiledQuota {
    Fixed(Limit),
    PerKey(QuotaFn),
}

pub(crate) fn name_is_valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Checks `policy` and compiles it; binds its bucket name to its limits in `signatures`.
pub(crate) fn compile(
    policy: &Policy,
    defaults: &Defaults,
    has_identity: bool,
    signatures: &mut Signatures,
) -> Result<Arc<Compiled>, BuildError> {
    let name = policy.name.clone();
    let bucket_name = policy.bucket_name().clone();
    for n in [&name, &bucket_name] {
        if !name_is_valid(n) {
            return Err(BuildError::BadName {
                name: n.to_string(),
            });
        }
    }
    let mut compiled = Compiled {
        name: name.clone(),
        exempt: policy.exempt,
        limits: Vec::new(),
        cost: policy.cost.clone(),
        refund_if: policy.refund_if.clone(),
        count_only_if: policy.count_only_if.clone(),
        shadow: policy.shadow || defaults.shadow,
        on_failure: policy.on_failure.unwrap_or(defaults.on_failure),
        warned_central: Default::default(),
    };
    if policy.exempt {
        return Ok(Arc::new(compiled));
    }
    if policy.limits.is_empty() {
        return Err(BuildError::EmptyPolicy {
            policy: name.to_string(),
        });
    }
    let fixed_cost = match policy.cost {
        Cost::Fixed(0) => {
            return Err(BuildError::ZeroCost {
                policy: name.to_string(),
            })
        }
        Cost::Fixed(n) => Some(n),
        Cost::PerRequest(_) => None,
    };
    let mut sigs = Vec::with_capacity(policy.limits.len());
    let mut per_kind: HashMap<&str, usize> = HashMap::new();
    for rule in &policy.limits {
        let key = &rule.key;
        if !key.kind_is_valid() {
            return Err(BuildError::BadKeyKind {
                policy: name.to_string(),
                kind: key.kind().to_string(),
            });
        }
        match &key.source {
            Source::Header(Err(header)) => {
                return Err(BuildError::BadHeaderName {
                    policy: name.to_string(),
                    header: header.clone(),
                })
            }
            Source::User if !has_identity => {
                return Err(BuildError::NoIdentity {
                    policy: name.to_string(),
                })
            }
            _ => {}
        }
        let quota = match &rule.quota {
            QuotaSource::Fixed(rate) => {
                let limit = rate.limit().map_err(|source| BuildError::Rate {
                    policy: name.to_string(),
                    key: key.kind().to_string(),
                    source: Box::new(source),
                })?;
                if let Some(cost) = fixed_cost.filter(|c| *c > limit.capacity()) {
                    return Err(BuildError::CostExceedsCapacity {
                        policy: name.to_string(),
                        key: key.kind().to_string(),
                        cost,
                        capacity: limit.capacity(),
                    });
                }
                CompiledQuota::Fixed(limit)
            }
            QuotaSource::PerKey(f) => CompiledQuota::PerKey(f.clone()),
        };
        let n = per_kind.entry(key.kind()).or_insert(0);
        *n += 1;
        let bucket: Arc<str> = match (key.kind(), *n) {
            ("global", 1) => bucket_name.clone(),
            (kind, 1) => format!("{bucket_name}:{kind}").into(),
            (kind, n) => format!("{bucket_name}:{kind}#{n}").into(),
        };
        sigs.push(match &quota {
            CompiledQuota::Fixed(l) => Sig::Fixed(key.kind.clone(), *l),
            CompiledQuota::PerKey(f) => {
                Sig::PerKey(key.kind.clone(), Arc::as_ptr(f) as *const () as usize)
            }
        });
        compiled.limits.push(CompiledLimit {
            key: key.clone(),
            quota,
            bucket,
        });
    }
    match signatures.get(&bucket_name) {
        Some((first, existing)) if *existing != sigs => {
            return Err(BuildError::SharedBucketMismatch {
                bucket: bucket_name.to_string(),
                first: first.to_string(),
                second: name.to_string(),
            })
        }
        Some(_) => {}
        None => {
            signatures.insert(bucket_name, (name, sigs));
        }
    }
    Ok(Arc::new(compiled))
}

/// The buckets of one request and where each came from.
pub(crate) struct Plan {
    buckets: Vec<Bucket>,
    meta: Vec<Meta>,
    groups: Vec<Arc<Compiled>>,
    on_failure: FailureMode,
    method: Method,
    path: String,
}

struct Meta {
    group: usize,
    label: Arc<str>,
    kind: Arc<str>,
    quota: Quota,
}

/// The keys of one request, each resolved at most once.
struct KeyCtx<'a> {
    inner: &'a Inner,
    parts: &'a Parts,
    ip: Option<Option<String>>,
    user: Option<Option<String>>,
}

impl KeyCtx<'_> {
    /// The key's raw value (what quota functions see) and its stored form.
    fn resolve(&mut self, key: &Key) -> Option<(String, String)> {
        let raw: Vec<u8> = match &key.source {
            Source::Ip => self
                .ip
                .get_or_insert_with(|| Some(client_ip_key(self.inner, self.parts)))
                .clone()?
                .into_bytes(),
            Source::User => {
                let identity = self.inner.identity.as_ref()?;
                let parts = self.parts;
                self.user
                    .get_or_insert_with(|| identity(parts))
                    .clone()?
                    .into_bytes()
            }
            Source::Global => b"all".to_vec(),
            Source::Header(Ok(name)) => self.parts.headers.get(name)?.as_bytes().to_vec(),
            Source::Header(Err(_)) => return None,
            Source::Custom(f) => f(self.parts)?.into_bytes(),
        };
        if raw.is_empty() {
            return None;
        }
        let stored = store_key(&raw, key.hashed);
        let raw = match String::from_utf8(raw) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        Some((raw, stored))
    }
}

/// The client IP's key; without any peer address, one shared key (and an error, once).
fn client_ip_key(inner: &Inner, parts: &Parts) -> String {
    let peer = peer_addr(&parts.extensions);
    match inner.client_ip.resolve(peer, &parts.headers) {
        Some(ip) => inner.client_ip.key(ip),
        None => {
            if !inner.warned_no_peer.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    target: "tollgate",
                    "no client address on the request: per-IP limits are shared by all such \
                     requests. With axum, serve with \
                     `into_make_service_with_connect_info::<SocketAddr>()`; with plain tower, \
                     insert the peer `SocketAddr` into the request extensions"
                );
            }
            "unknown-peer".to_string()
        }
    }
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
    #[cfg(feature = "axum")]
    if let Some(matched) = parts.extensions.get::<axum::extract::MatchedPath>() {
        return Some(matched.as_str());
    }
    let _ = parts;
    None
}

impl Inner {
    fn plan<'c>(
        &self,
        parts: &Parts,
        classes: impl IntoIterator<Item = &'c Arc<Compiled>>,
    ) -> Plan {
        let mut ctx = KeyCtx {
            inner: self,
            parts,
            ip: None,
            user: None,
        };
        let groups: Vec<Arc<Compiled>> = classes
            .into_iter()
            .cloned()
            .chain(self.globals.iter().cloned())
            .filter(|p| !p.exempt)
            .collect();
        let overrides = read(&self.overrides);
        let mut seen: Vec<(Arc<str>, String)> = Vec::new();
        let mut plan = Plan {
            buckets: Vec::new(),
            meta: Vec::new(),
            groups: Vec::new(),
            on_failure: FailureMode::Open,
            method: parts.method.clone(),
            path: request_path(parts).to_string(),
        };
        for (g, policy) in groups.iter().enumerate() {
            let cost = match &policy.cost {
                Cost::Fixed(n) => *n,
                Cost::PerRequest(f) => f(parts).max(1),
            };
            let before = plan.buckets.len();
            for limit in &policy.limits {
                let Some((raw, stored)) = ctx.resolve(&limit.key) else {
                    continue;
                };
                let quota = match &limit.quota {
                    CompiledQuota::Fixed(l) => *l,
                    CompiledQuota::PerKey(f) => match f(&raw, parts) {
                        Some(l) => l,
                        None => continue,
                    },
                };
                plan.push(
                    Bucket::new(&limit.bucket, &stored, quota).with_cost(cost),
                    g,
                    limit.bucket.clone(),
                    limit.key.kind.clone(),
                );
                let id = (limit.key.kind.clone(), stored);
                if overrides.is_empty() || seen.contains(&id) {
                    continue;
                }
                if let Some(l) = overrides.get(&id) {
                    let label: Arc<str> = format!("override:{}", id.0).into();
                    plan.push(
                        Bucket::new(&label, &id.1, *l).with_cost(cost),
                        g,
                        label,
                        id.0.clone(),
                    );
                }
                seen.push(id);
            }
            if plan.buckets.len() > before {
                plan.on_failure = stricter(plan.on_failure, policy.on_failure);
            }
        }
        plan.groups = groups;
        plan
    }
}

impl Plan {
    /// Adds a bucket, unless the request already spends it (a global policy sharing a
    /// bucket name with the class): each bucket is charged once per request.
    fn push(&mut self, bucket: Bucket, group: usize, label: Arc<str>, kind: Arc<str>) {
        if self.buckets.iter().any(|b| b.key == bucket.key) {
            return;
        }
        self.meta.push(Meta {
            group,
            label,
            kind,
            quota: bucket.limit.quota(),
        });
        self.buckets.push(bucket);
    }

    fn shadow(&self, i: usize) -> bool {
        self.groups[self.meta[i].group].shadow
    }

    /// What the respond helpers need, for the buckets `active` answered by `decision`.
    /// Shadow buckets are a dry run: they never show in headers or bodies (a client that
    /// slows down on `Remaining: 0` must not be slowed by a dry run).
    fn info(&self, active: &[usize], decision: &Decision) -> RateLimitInfo {
        if active.iter().any(|&i| self.shadow(i)) {
            let (shown, buckets): (Vec<usize>, Vec<_>) = active
                .iter()
                .zip(&decision.buckets)
                .filter(|(&i, _)| !self.shadow(i))
                .map(|(&i, state)| (i, state.clone()))
                .unzip();
            let enforced = Decision {
                allowed: buckets
                    .iter()
                    .all(|b: &tollgate_core::BucketState| b.allowed),
                now: decision.now,
                buckets,
            };
            return self.info_of(&shown, &enforced);
        }
        self.info_of(active, decision)
    }

    fn info_of(&self, active: &[usize], decision: &Decision) -> RateLimitInfo {
        let policy = decision
            .most_restrictive()
            .map_or("", |j| &*self.groups[self.meta[active[j]].group].name);
        let names = active
            .iter()
            .map(|&i| (self.meta[i].label.clone(), self.meta[i].quota));
        RateLimitInfo::from_decision(
            policy,
            decision,
            names,
            self.method.clone(),
            self.path.clone(),
        )
    }
}

/// Closed beats Fallback beats Open.
fn stricter(a: FailureMode, b: FailureMode) -> FailureMode {
    let rank = |m: FailureMode| match m {
        FailureMode::Open => 0,
        FailureMode::Fallback => 1,
        FailureMode::Closed => 2,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// Marks a request carries between the layers of one limiter (request extensions), so a
/// request is charged once, and a per-route policy replaces the central class.
#[derive(Clone, Default)]
struct Marks(Vec<(u64, Mark)>);

#[derive(Clone)]
enum Mark {
    /// A per-route layer has taken charge of the request.
    Route,
    /// The central layer charged the request (provisionally, in case a per-route layer
    /// turns up further in).
    Central(Arc<Provisional>),
}

#[derive(Default)]
struct Provisional {
    /// What the central layer charged.
    buckets: Mutex<Option<Vec<Bucket>>>,
    /// Set when a per-route layer gave that charge back and took over.
    taken_over: AtomicBool,
}

fn marks(parts: &Parts, id: u64) -> Option<&Mark> {
    parts
        .extensions
        .get::<Marks>()
        .and_then(|m| m.0.iter().find(|(i, _)| *i == id).map(|(_, m)| m))
}

fn add_mark(parts: &mut Parts, id: u64, mark: Mark) {
    let mut all = parts.extensions.remove::<Marks>().unwrap_or_default();
    all.0.retain(|(i, _)| *i != id);
    all.0.push((id, mark));
    parts.extensions.insert(all);
}

/// Methods whose per-route registrations are remembered.
const STANDARD_METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
    Method::CONNECT,
    Method::TRACE,
];

/// The most (method, route) pairs remembered as carrying their own policy.
const MAX_PER_ROUTE_ENTRIES: usize = 4096;

/// Which layer a request is going through.
#[derive(Clone)]
pub(crate) enum Scope {
    /// The central table ([`Limiter::layer`](crate::Limiter::layer)).
    Central,
    /// A per-route policy ([`Limiter::policy`](crate::Limiter::policy)).
    Route(Arc<Compiled>),
}

/// What a layer does with a request before calling the inner service.
pub(crate) enum Start {
    /// Nothing: call the inner service, touch nothing.
    Pass,
    /// Ask the store first.
    Check(BoxFuture<'static, Outcome>),
}

/// The store's answer, turned into what the service does.
pub(crate) enum Outcome {
    /// Call the inner service; then finish with `After` (headers, refunds).
    Proceed(Option<After>),
    /// Answer without calling the inner service (429, or 503 when failing closed).
    Respond(http::Response<Bytes>),
}

/// What to do with the inner service's response.
pub(crate) struct After {
    inner: Arc<Inner>,
    plan: Arc<Plan>,
    charged: Vec<usize>,
    /// The charge's answer, one state per index of `charged`.
    decision: Decision,
    provisional: Option<Arc<Provisional>>,
}

/// The rate-limit headers of an admitted response: at once, or after a refund (so a
/// response that does not count shows the budget as it is once the charge is given back).
pub(crate) enum Settle {
    /// The headers, ready.
    Now(HeaderMap),
    /// Give the charge back, then the headers.
    AfterRefund(BoxFuture<'static, HeaderMap>),
}

/// Adds `ours` to `headers`, except those the inner service set itself (a handler's own
/// refusal from a direct-use bucket, an inner limiter): they describe its answer better.
pub(crate) fn merge_headers(headers: &mut HeaderMap, ours: HeaderMap) {
    let mut last = None;
    for (name, value) in ours {
        // `HeaderMap`'s owning iterator names a header once, before its first value.
        if let Some(name) = name {
            last = (!headers.contains_key(&name)).then_some(name);
        }
        if let Some(name) = &last {
            headers.append(name.clone(), value);
        }
    }
}

impl After {
    /// The headers for a response of `status`, giving the charge back first if the response
    /// does not count. `None` if a per-route layer took the request over.
    pub(crate) fn settle(self, status: StatusCode) -> Option<Settle> {
        if let Some(p) = &self.provisional {
            if p.taken_over.load(Ordering::Acquire) {
                return None;
            }
        }
        let refund: Vec<usize> = (0..self.charged.len())
            .filter(|&pos| {
                let policy = &self.plan.groups[self.plan.meta[self.charged[pos]].group];
                policy.refund_if.as_ref().is_some_and(|f| f(status))
                    || policy.count_only_if.as_ref().is_some_and(|f| !f(status))
            })
            .collect();
        if refund.is_empty() {
            return Some(Settle::Now(self.headers()));
        }
        Some(Settle::AfterRefund(Box::pin(async move {
            let mut this = self;
            let buckets = refund
                .iter()
                .map(|&pos| this.plan.buckets[this.charged[pos]].clone())
                .collect();
            match this
                .inner
                .store
                .apply(&Batch::new(Op::Refund, buckets))
                .await
            {
                Ok(given_back) => {
                    for (&pos, state) in refund.iter().zip(given_back.buckets) {
                        this.decision.buckets[pos] = state;
                    }
                }
                Err(e) => {
                    tracing::warn!(target: "tollgate", error = %e, "could not give a charge back");
                }
            }
            this.headers()
        })))
    }

    fn headers(&self) -> HeaderMap {
        let info = self.plan.info(&self.charged, &self.decision);
        let mut headers = HeaderMap::new();
        self.inner.header_style.write(&info, &mut headers);
        headers
    }
}

impl Inner {
    /// The first step of every request through a layer of this limiter.
    pub(crate) fn start(self: &Arc<Self>, scope: &Scope, parts: &mut Parts) -> Start {
        if !self.enabled {
            return Start::Pass;
        }
        match scope {
            Scope::Central => self.start_central(parts),
            Scope::Route(policy) => self.start_route(policy, parts),
        }
    }

    fn start_central(self: &Arc<Self>, parts: &mut Parts) -> Start {
        if marks(parts, self.id).is_some() {
            return Start::Pass;
        }
        if let Some(path) = matched_path(parts) {
            let key = (parts.method.clone(), Arc::<str>::from(path));
            if read(&self.per_route).contains(&key) {
                return Start::Pass;
            }
        }
        let path = request_path(parts);
        let delegated = read(&self.delegated);
        if delegated
            .iter()
            .any(|route| route.classify(&parts.method, path).is_some())
        {
            return Start::Pass;
        }
        drop(delegated);
        // Both classes when the path's two readings disagree: a request is charged at
        // least as strictly as the route that serves it.
        let classes = self.table.classify_all(&parts.method, path);
        if classes.first().is_some_and(|c| c.exempt) {
            return Start::Pass;
        }
        let plan = self.plan(parts, classes);
        if plan.buckets.is_empty() {
            return Start::Pass;
        }
        let provisional = Arc::new(Provisional::default());
        add_mark(parts, self.id, Mark::Central(provisional.clone()));
        Start::Check(Box::pin(decide(
            self.clone(),
            Arc::new(plan),
            Some(provisional),
        )))
    }

    fn start_route(self: &Arc<Self>, policy: &Arc<Compiled>, parts: &mut Parts) -> Start {
        if let Some(path) = matched_path(parts) {
            // Only standard methods are remembered (a client chooses the method: extension
            // methods must not grow the registry; their requests take the refund path), and
            // only so many routes.
            let key = (parts.method.clone(), Arc::<str>::from(path));
            let standard = STANDARD_METHODS.contains(&parts.method);
            if standard && !read(&self.per_route).contains(&key) {
                let mut known = write(&self.per_route);
                if known.len() < MAX_PER_ROUTE_ENTRIES {
                    known.insert(key);
                }
            }
        }
        let refund_first = match marks(parts, self.id) {
            Some(Mark::Route) => return Start::Pass,
            Some(Mark::Central(p)) => {
                if !policy.warned_central.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        target: "tollgate",
                        policy = %policy.name,
                        method = %parts.method,
                        path = %parts.uri.path(),
                        "a route with its own policy was first charged to the central class \
                         (and may be refused by it before its policy sees it); attach the \
                         policy with `limiter.policy_at(pattern, policy)` so the central table \
                         leaves the route to it"
                    );
                }
                p.taken_over.store(true, Ordering::Release);
                lock(&p.buckets).take()
            }
            None => None,
        };
        add_mark(parts, self.id, Mark::Route);
        let plan = if policy.exempt {
            None
        } else {
            Some(self.plan(parts, Some(policy))).filter(|p| !p.buckets.is_empty())
        };
        if plan.is_none() && refund_first.is_none() {
            return Start::Pass;
        }
        let inner = self.clone();
        Start::Check(Box::pin(async move {
            if let Some(buckets) = refund_first {
                let batch = Batch::new(Op::Refund, buckets);
                if let Err(e) = inner.store.apply(&batch).await {
                    tracing::warn!(target: "tollgate", error = %e, "could not give the central class's charge back");
                }
            }
            match plan {
                Some(plan) => decide(inner, Arc::new(plan), None).await,
                None => Outcome::Proceed(None),
            }
        }))
    }
}

/// Charges the plan's buckets; a refusal by shadow buckets only is logged and the request
/// is charged again without them.
async fn decide(
    inner: Arc<Inner>,
    plan: Arc<Plan>,
    provisional: Option<Arc<Provisional>>,
) -> Outcome {
    let mut active: Vec<usize> = (0..plan.buckets.len()).collect();
    loop {
        if active.is_empty() {
            return Outcome::Proceed(None);
        }
        let buckets: Vec<Bucket> = active.iter().map(|&i| plan.buckets[i].clone()).collect();
        let batch = Batch::charge(buckets).with_failure_mode(plan.on_failure);
        let decision = match inner.store.apply(&batch).await {
            Ok(d) => d,
            Err(e) => {
                if let Some(unlogged) = inner.stats.store_failed() {
                    tracing::warn!(
                        target: "tollgate",
                        error = %e,
                        fail = ?plan.on_failure,
                        method = %plan.method,
                        path = %plan.path,
                        unlogged_failures = unlogged,
                        "rate-limit store failed (logged at most every 10 s)"
                    );
                }
                return if plan.on_failure == FailureMode::Closed {
                    Outcome::Respond(unavailable())
                } else {
                    Outcome::Proceed(None)
                };
            }
        };
        let info = plan.info(&active, &decision);
        if decision.allowed {
            inner.stats.admitted.fetch_add(1, Ordering::Relaxed);
            if let Some(p) = &provisional {
                *lock(&p.buckets) = Some(batch.buckets);
            }
            return Outcome::Proceed(Some(After {
                inner: inner.clone(),
                plan: plan.clone(),
                charged: active,
                decision,
                provisional,
            }));
        }
        let refusing: Vec<usize> = active
            .iter()
            .zip(&decision.buckets)
            .filter(|(_, state)| !state.allowed)
            .map(|(&i, _)| i)
            .collect();
        let enforced = refusing.iter().any(|&i| !plan.shadow(i));
        for (&i, state) in active.iter().zip(&decision.buckets) {
            if state.allowed {
                continue;
            }
            let meta = &plan.meta[i];
            tracing::info!(
                target: "tollgate",
                policy = %plan.groups[meta.group].name,
                bucket = %meta.label,
                key_kind = %meta.kind,
                shadow = plan.shadow(i),
                retry_after_ms = state.retry_after.map(|d| d.as_millis() as u64),
                method = %plan.method,
                path = %plan.path,
                "{}",
                if plan.shadow(i) { "rate limit would refuse (shadow)" } else { "rate limit exceeded" }
            );
        }
        if enforced {
            inner.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Outcome::Respond(respond::too_many_requests(
                &info,
                &inner.header_style,
                &inner.error_body,
            ));
        }
        inner.stats.would_refuse.fetch_add(1, Ordering::Relaxed);
        active.retain(|i| !refusing.contains(i));
    }
}

/// 503 for a store that failed while the policy fails closed.
fn unavailable() -> http::Response<Bytes> {
    let mut response = http::Response::new(Bytes::from_static(
        br#"{"error":"rate limiter unavailable"}"#,
    ));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Central => f.write_str("Central"),
            Scope::Route(policy) => write!(f, "Route({})", policy.name),
        }
    }
}
