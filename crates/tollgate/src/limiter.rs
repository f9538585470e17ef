//! [`Limiter`]: the configured rate limiter, its [`LimiterBuilder`], and direct use from
//! handlers.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::request::Parts;
use http::Method;
use tollgate_limits::{
    Batch, Bucket, BucketState, Decision, FailureMode, Limit, MemoryStore, Op, Store, WhenFull,
};

use crate::classify::{RoutePattern, RouteTable};
use crate::client_ip::ClientIp;
use crate::describe::{RouteLimits, RuleSource};
use crate::direct::DirectBucket;
use crate::engine::{
    self, refusal_to_log, CodeRules, Delegation, DirectKey, Engine, Overrides, Routes, Rules,
};
use crate::error::{BuildError, CheckError};
use crate::inspect::InspectError;
use crate::key::{self, Extractor, Key};
use crate::layer::RateLimitLayer;
use crate::observe;
use crate::policy::Policy;
use crate::rate::Rate;
use crate::respond::{self, ErrorBody, HeaderStyle};

/// The environment variable that switches rate limiting off (`false`, `0`, `off`, `no`) or
/// on (`true`, `1`, `on`, `yes`), in any case and with spaces around it ignored, overriding
/// [`LimiterBuilder::enabled`]; set but empty, it is unset. Any other value is
/// [`BuildError::BadEnvSwitch`].
pub const ENABLED_ENV: &str = "RATE_LIMIT_ENABLED";

/// The configured rate limiter. Cheap to clone (an `Arc`); every clone, and every layer
/// made from it, enforces the same limits.
///
/// Use it as middleware with [`Limiter::layer`] (the central route table) and
/// [`Limiter::policy`] (a per-route policy), or directly with [`Limiter::check`],
/// [`Limiter::peek`], [`Limiter::penalize`], [`Limiter::reset`].
///
/// ```
/// use tollgate::{ClientIp, Limiter, Policy};
///
/// # #[derive(Clone)] struct Session { user_id: String }
/// let limiter = Limiter::builder()
///     .client_ip(ClientIp::peer().trust_proxies(["10.0.0.0/8"]))
///     .identity(|parts| parts.extensions.get::<Session>().map(|s| s.user_id.clone()))
///     .route("/api/stripe/webhook", Policy::exempt())
///     .route("POST /api/templates/{id}/generate", Policy::named("generate").per_ip("300/min").per_user("3000/h"))
///     .route("/api/*", Policy::named("default").per_ip("500/min").per_user("10000/h"))
///     .global("1000/min")
///     .bucket("sign-in-failures", "5/30min")
///     .build()?;
///
/// // A typo is an error here, not at request time:
/// let err = Limiter::builder().route("/*", Policy::named("x").per_ip("10/fortnight")).build();
/// assert!(err.unwrap_err().to_string().contains("fortnight"));
/// # let _ = limiter;
/// # Ok::<(), tollgate::BuildError>(())
/// ```
///
/// Direct use (a lockout: 5 failed sign-ins per 30 minutes per e-mail):
///
/// ```
/// # use tollgate::Limiter;
/// # async fn sign_in(limiter: &Limiter, email: &str, password_ok: bool) -> Result<bool, tollgate::CheckError> {
/// // Count the attempt before checking the password: a charge is atomic, so concurrent
/// // guesses cannot all slip past the limit (a `peek` followed by a `penalize` could).
/// if !limiter.check("sign-in-failures", email).await?.allowed {
///     return Ok(false); // locked: answer 429 (see `Limiter::refusal`)
/// }
/// if password_ok {
///     // Only failures count: a successful sign-in clears them (the decision a reset
///     // answers, the bucket full again, is not needed here).
///     let _ = limiter.reset("sign-in-failures", email).await?;
/// }
/// # Ok(password_ok) }
/// ```
#[derive(Clone)]
pub struct Limiter {
    pub(crate) engine: Arc<Engine>,
}

/// What a limiter has done since it was built, in checks: each decision of a layer and
/// each [`Limiter::check`] of a handler counts once, so a request its handler checks
/// twice more counts three times, and a refused check need not be a refused request (a
/// handler may answer otherwise, as the demo's sign-in does when its lockout has no room
/// for a new key).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimiterStats {
    /// Checks that admitted (the layers' and handlers' [`Limiter::check`]s). A guard that
    /// counts only some responses ([`Policy::failed_auth_per_ip`]) counts the responses it
    /// counted, not the requests it looked at (as the metrics do).
    pub admitted: u64,
    /// Checks that refused: the layers' (each a 429) and handlers' [`Limiter::check`]s,
    /// a key refused because the memory store had no room for it included.
    pub refused: u64,
    /// Requests a shadow policy would have refused (admitted anyway).
    pub would_refuse: u64,
    /// Checks the store could not answer (admitted without headers, or 503 when failing
    /// closed).
    pub store_errors: u64,
    /// Requests with no peer address (see [`LimiterBuilder::require_peer_address`]):
    /// limited in one shared bucket, or refused with 500 under that option.
    pub no_peer: u64,
}

impl Limiter {
    /// A builder. Without a store it uses a [`MemoryStore`]; without
    /// [`LimiterBuilder::client_ip`], the TCP peer address.
    pub fn builder() -> LimiterBuilder {
        LimiterBuilder::default()
    }

    /// The middleware for the central route table: classifies each request, charges its
    /// class and the global limits, answers 429 when over. Use with `Router::layer`,
    /// `Router::route_layer`, on one route, or on any tower service. `route_layer` wraps
    /// the routes only, not the router's fallback: requests no route matches (the `404`s
    /// of a class's paths, `/api/anything`) then go uncharged, where `Router::layer`
    /// charges them to their class. On a router mounted with `Router::nest`, the layer
    /// does not see the requests under the prefix that none of that router's routes match:
    /// axum answers them with the outer router's fallback (unless the nested router has a
    /// `fallback` of its own), so only a layer on the outer router charges them. A request
    /// that goes through two of these layers of one limiter (a router's, and a nested
    /// router's) is charged once, by the outer one; two limiters are two, each charging,
    /// even built from one configuration on one store (build the limiter once, and clone
    /// it: clones are one limiter).
    ///
    /// Its responses' body is a [`ResponseBody`](crate::ResponseBody) (the inner service's,
    /// or the limiter's 429): inside a `Router` (`Router::layer`) axum turns it back into
    /// its `Body`; around one (a `ServiceBuilder` given to `axum::serve`), map it back
    /// (`.map_response(|r| r.map(axum::body::Body::new))`), as for any layer that changes
    /// the body, and serve it with
    /// `axum::ServiceExt::<Request>::into_make_service_with_connect_info::<SocketAddr>`.
    pub fn layer(&self) -> RateLimitLayer {
        RateLimitLayer::central(self.clone())
    }

    /// A per-route policy (`post(chat).layer(limiter.policy(..))`): the route's requests
    /// spend this policy's buckets (and the global limits) instead of the class the
    /// central table gives them. The central layer learns the route from a request that
    /// reaches this layer (axum's `MatchedPath`); until then it charges the route's
    /// requests to their class provisionally, and this layer takes the charge over: a
    /// client whose class is spent is refused by the class until the route's first request
    /// gets through. [`Limiter::policy_at`] declares the route, and has none of that.
    ///
    /// One per-route layer of a limiter charges a request: of two on its way (a
    /// router-wide `route_layer` policy and the route's own, or one layer put twice), the
    /// outer one charges it and the inner one passes it on; another policy's layer passed
    /// over is logged as a warning once. Put one per-route layer on a route (a policy with
    /// several limits holds both budgets), or use two limiters.
    ///
    /// # Panics
    ///
    /// If the policy is invalid (see [`Limiter::try_policy`]), when the router is
    /// assembled at start-up, never at request time.
    #[track_caller]
    pub fn policy(&self, policy: Policy) -> RateLimitLayer {
        match self.try_policy(policy) {
            Ok(layer) => layer,
            Err(e) => panic!("invalid per-route rate-limit policy: {e}"),
        }
    }

    /// A per-route policy for the route `pattern` (`"POST /api/assistant/chat"`), declared
    /// to the central table too: `post(chat).layer(limiter.policy_at("POST
    /// /api/assistant/chat", policy))`. The central layer then leaves the route's requests to
    /// this policy from the very first one. Prefer it to [`Limiter::policy`], whose route the
    /// central layer only learns from a request that reaches it.
    ///
    /// Only the route the layer is on is left to it, and the central layer knows the route
    /// from axum's `MatchedPath`: put it on the router (`Router::layer`). A request without
    /// one (a path only a fallback answers; every request when the central layer is outside
    /// the router, of a router mounted with `nest_service`, or in a plain tower stack) is
    /// charged to its class provisionally, and the layer takes the charge over if the
    /// request reaches it: such a route spends only its
    /// own policy, but is refused with its class while that is spent, and a path under the
    /// pattern that the layer does not see is never left unlimited. A request left to the
    /// layer is still checked: one answered without reaching it (a check or a cache between
    /// the central layer and the route's layer, another router sharing this limiter with a
    /// route of that name) is charged to its class once answered, and from then on, for
    /// the life of the limiter, the route is charged provisionally, the layer taking the
    /// charge over (so a client whose class is spent is refused there too; requests under
    /// way before that first answer are counted as they are answered, not refused). Any
    /// client's request so answered does it (a `401` from authentication between the two
    /// layers): put such checks outside the central layer or inside the route's layer.
    /// With `MatchedPath`, a
    /// request is left to the layer from the first one when its matched route is the pattern's own
    /// (`{id}` and `:id`, `*` and `{*rest}` alike); a route the pattern covers but does not
    /// name (`POST /api/*` with the layer on `/api/chat`) stays with the central table, as
    /// does every route while the returned layer is not put on any service. So a layer
    /// dropped, or a pattern broader than its route, never leaves a route unlimited. The
    /// price: where the layer is on such a route after all (`POST /api/*` on a nested
    /// router's every route), the central table charges each of its routes until a request
    /// of it has reached the layer (which takes that charge over, as with
    /// [`Limiter::policy`]); a client whose class is spent is refused until then. Declare
    /// the route itself to have it left to the layer from the first request. A layer put on
    /// another route than its pattern names is noticed at that route's first request (a
    /// warning), and its pattern's route is no longer left to it from then on; it takes
    /// over nothing its pattern does not cover, so the route it is on keeps its class, as
    /// do the other routes of a `Router::route_layer` that puts it on several. And as the
    /// central layer cannot see where the layer is, a method of the pattern is left to it for
    /// good only once the layer has seen a request of that method: until then one request
    /// at a time goes to the layer without the class's charge (a probe; it is charged to
    /// the class once answered if the layer did not see it), and the others are charged to
    /// their class provisionally, the layer taking the charge over. After a probe the layer
    /// did not see (the layer on another route or method, in a router that is not served,
    /// or behind a check that turned the request away; the first is logged as a warning),
    /// the next waits a second, doubling up to ten minutes. A layer axum puts on a service
    /// only at its first request (`get(handler.layer(..))`, `Handler::layer`) is not
    /// attached before: its route is charged to its class, provisionally, until a request
    /// reaches it. So a misplaced layer leaves its pattern's route limited by its class,
    /// give or take a probe now and then (a probe goes through whatever its class and the
    /// global limits hold, and is counted by them once answered), and a layer that is there
    /// is left its route from its first request: a client whose class is spent may be
    /// refused by the class only while another request is the probe, or in the wait after
    /// one was turned away before the layer.
    ///
    /// Requests of a method the pattern does not name are not the policy's, though its
    /// layer sees them (axum's `MethodRouter::layer` wraps the method router's 405 fallback
    /// and every method's handler): the central table charges them by their class, and the
    /// policy's budget is spent only by the methods it names (`HEAD` with `GET`).
    ///
    /// # Panics
    ///
    /// Like [`Limiter::policy`], at start-up, for an invalid policy or pattern.
    #[track_caller]
    pub fn policy_at(&self, pattern: &str, policy: Policy) -> RateLimitLayer {
        match self.try_policy_at(pattern, policy) {
            Ok(layer) => layer,
            Err(e) => panic!("invalid per-route rate-limit policy: {e}"),
        }
    }

    /// [`Limiter::policy_at`], returning configuration mistakes as errors.
    ///
    /// # Errors
    ///
    /// [`BuildError::Route`] for a bad pattern, or one that ties with a pattern declared
    /// for another policy ([`PatternError::Tie`](crate::PatternError::Tie): the same path
    /// and a method in common; one policy per route), [`BuildError::PolicyAtMatchesNoRule`]
    /// for a pattern no rule of the central table matches (a route inside `Router::nest`
    /// given without the nest's prefix), and the errors of [`Limiter::try_policy`].
    pub fn try_policy_at(
        &self,
        pattern: &str,
        policy: Policy,
    ) -> Result<RateLimitLayer, BuildError> {
        let parsed = RoutePattern::parse(pattern)?;
        // A pattern the central table never matches cannot be the route as the central
        // layer sees it: most likely a route inside `Router::nest` given without its prefix.
        let method = parsed
            .methods()
            .and_then(|m| m.first().cloned())
            .unwrap_or(http::Method::GET);
        let example = parsed.example_path();
        if self
            .engine
            .table
            .load()
            .classes
            .classify(&method, &example)
            .is_none()
        {
            return Err(BuildError::PolicyAtMatchesNoRule {
                pattern: pattern.to_string(),
            });
        }
        // One policy per route: a pattern that ties with one declared for another policy
        // would leave the route to whichever the central layer finds first. The same
        // policy declared again for it, as an app built twice does, is no mistake: for the
        // same pattern, it is the same route, and its layers share one delegation, so that
        // whichever copy serves, the central layer sees its layer (with one each, it left
        // the first request to the first copy's, which a dropped copy never sees).
        let per_route = &self.engine.table.load().per_route;
        let mut again = None;
        for declared in self.engine.routes.load().delegated.iter() {
            let same_policy = per_route
                .get(declared.index)
                .is_some_and(|p| *p.name == *policy.name);
            if !same_policy {
                declared.pattern.check_tie(&parsed)?;
            } else if declared.pattern == parsed {
                again = Some(declared.clone());
            }
        }
        // The route's own spelling only: an unusual spelling of its path is never taken
        // away from the central table (it may not reach the route's layer at all).
        let table = RouteTable::builder()
            .route(parsed.clone(), ())
            .lenient(|_| true)
            .build()?;
        let (index, name) = self.add_route_policy(policy)?;
        if let Some(delegation) = again {
            return Ok(RateLimitLayer::route(
                self.clone(),
                index,
                name,
                Some(delegation),
            ));
        }
        let delegation = Arc::new(Delegation::new(table, parsed, index));
        self.engine.routes.change(|routes| {
            let mut routes = Routes::clone(routes);
            routes.delegated.push(delegation.clone());
            routes
        });
        Ok(RateLimitLayer::route(
            self.clone(),
            index,
            name,
            Some(delegation),
        ))
    }

    /// A layer that charges `policy` for every request it sees, on top of (and independent
    /// of) the central table and per-route policies, on this limiter's store. For limits
    /// that must run before another layer answers: outside authentication,
    /// `.layer(limiter.guard(Policy::failed_auth_per_ip("20/min")))` throttles key guessing
    /// (see [`Policy::failed_auth_per_ip`]). Its requests are answered as the limiter's
    /// own are: the same client IP, identity, headers, body or refusal response, decisions
    /// in the extensions, peer-address requirement and store name.
    ///
    /// A guard whose policy counts only some responses ([`Policy::count_only_if`]) looks at
    /// its buckets before a request runs (refusing it if they are spent) and counts the
    /// request once its response counts: a guard is meant to throttle failures, and
    /// requests in flight at once must not refuse each other while none has failed (holding
    /// a charge per request in flight would refuse a client's valid requests as soon as more
    /// of them than the limit were running). Its requests of a key run no more at once than
    /// the key has left (in this process): the others wait and look again once one of those
    /// running is counted, so requests that fail together are answered no more than the
    /// limit (see [`Policy::failed_auth_per_ip`], and its keys held by long requests).
    ///
    /// # Panics
    ///
    /// Like [`Limiter::policy`], at start-up, for an invalid policy.
    #[track_caller]
    pub fn guard(&self, policy: Policy) -> RateLimitLayer {
        match self.try_guard(policy) {
            Ok(layer) => layer,
            Err(e) => panic!("invalid rate-limit guard policy: {e}"),
        }
    }

    /// [`Limiter::guard`], returning configuration mistakes as errors (also
    /// [`BuildError::DuplicateBucket`] for a bucket name this limiter already uses, unless
    /// by a guard of the same name and limits: the same guard asked for again, as an app
    /// built twice does, is the same budget; and [`BuildError::ShownAlike`] for a bucket
    /// that would show the name of one of the limiter's in the IETF fields).
    ///
    /// # Errors
    ///
    /// The [`BuildError`]s of a policy.
    pub fn try_guard(&self, policy: Policy) -> Result<RateLimitLayer, BuildError> {
        let engine = &self.engine;
        let mut code = engine::lock(&engine.code);
        let table = engine.table.load();
        // Its buckets are its own: a name the limiter already uses would mix two states
        // (and no reloaded table may take it).
        let bucket = (!policy.exempt).then(|| policy.bucket_name().clone());
        // A guard that counts only some responses looks before a request runs and counts
        // it once its response counts: requests in flight never refuse each other.
        let policy = Policy {
            count_after: policy.count_only_if.is_some(),
            ..policy
        };
        let duplicate = |name: &str| BuildError::DuplicateBucket {
            name: name.to_string(),
        };
        if let Some(name) = bucket.as_deref().filter(|name| table.binds(name)) {
            return Err(duplicate(name));
        }
        let mut builder = Limiter::builder()
            .shared_store(engine.store.clone())
            .client_ip(engine.client_ip.clone())
            .header_style(engine.header_style.clone())
            .error_body(engine.error_body.clone())
            .read_env(false)
            .enabled(engine.enabled)
            .shadow(table.defaults.shadow)
            .on_store_failure(table.defaults.on_failure);
        let counts_after = policy.count_after;
        // An exempt guard limits nothing: a guard turned off.
        if !policy.exempt {
            builder = builder.global_policy(policy);
        }
        if let Some(identity) = engine.identity.clone() {
            builder = builder.identity(move |parts| identity(parts));
        }
        // Its requests are answered as the limiter's own are.
        builder.refusal_hook = engine.refusal_hook.clone();
        builder.require_peer = Some(engine.require_peer);
        builder.decision_in_request = Some(engine.decision_in_request);
        builder.decision_in_response = Some(engine.decision_in_response);
        // What it shares with the limiter was warned about when the limiter was built, and
        // its store's metrics are the limiter's.
        builder.store_metrics = Some(engine.store_metrics.clone());
        builder.gate = counts_after;
        builder = builder.store_name(&engine.store_name);
        let guard = builder.build()?;
        // A guard of its name counts in its buckets: under the same limits, it is that
        // guard (one budget, listed and counted once); under others, an error.
        if let Some(name) = bucket.as_deref() {
            let signature = |engine: &Engine| engine.table.load().signatures.get(name).cloned();
            let own = signature(&guard.engine);
            if let Some(same) = code.guards.iter().find(|g| g.table.load().binds(name)) {
                if signature(same) != own {
                    return Err(duplicate(name));
                }
                let same = Limiter {
                    engine: same.clone(),
                };
                return Ok(same.layer());
            }
        }
        // Its buckets answer the limiter's requests too: no two of them may show one name.
        code.shown_apart_from(&[&table, &guard.engine.table.load()])?;
        // A guard is often what keeps credentials from being guessed: switched off with the
        // limiter, a new one says so by name (the limiter's own warning says only that
        // requests pass unlimited).
        if let Some(name) = bucket.as_deref().filter(|_| !engine.enabled) {
            tracing::warn!(
                target: "tollgate",
                guard = name,
                "a guard of a limiter switched off is off too: what it counts (failed \
                 authentication, say) is not limited"
            );
        }
        code.guards.push(guard.engine.clone());
        Ok(guard.layer())
    }

    /// [`Limiter::policy`], returning configuration mistakes as errors.
    ///
    /// # Errors
    ///
    /// The [`BuildError`]s of a policy: a quota that does not parse, an empty policy, a
    /// bucket shared with a policy that declares other limits, per-user limits without an
    /// identity.
    pub fn try_policy(&self, policy: Policy) -> Result<RateLimitLayer, BuildError> {
        let (index, name) = self.add_route_policy(policy)?;
        // The central layer learns this route only from its requests: it marks the
        // requests it charges, so this layer can take them over.
        self.engine.mark_requests();
        Ok(RateLimitLayer::route(self.clone(), index, name, None))
    }

    /// Compiles a per-route policy into the table, and keeps it for the tables reloads
    /// make: its index in every table, and its name.
    fn add_route_policy(&self, policy: Policy) -> Result<(usize, Arc<str>), BuildError> {
        let engine = &self.engine;
        let mut code = engine::lock(&engine.code);
        let (table, compiled) =
            engine
                .table
                .load()
                .with_route_policy(&policy, engine.identity.is_some(), &code)?;
        let index = table.per_route.len() - 1;
        engine.table.store(Arc::new(table));
        code.per_route.push(policy);
        Ok((index, compiled.name.clone()))
    }

    /// Replaces the limiter's rules with those of `rules`, while it serves: its routes
    /// (central table and default policy), global limits and policies, buckets for direct
    /// use, and its `shadow` and `on_store_failure` defaults. Requests that started before
    /// finish under the rules they started with; the next request sees the new ones.
    ///
    /// Everything else stays as the limiter was built (and `rules` may not set it): the
    /// store and its name, the client-IP settings, the identity function, the header
    /// style, the error body, the refusal hook, whether the decision goes into requests and
    /// responses, whether limiting is enabled. A setting `rules` sets is refused whatever
    /// its value, even the one the limiter runs with (a refusal hook, a closure, could
    /// not be compared). Per-route policies ([`Limiter::policy`],
    /// [`Limiter::policy_at`]) and guards ([`Limiter::guard`]) declared in code stay, and
    /// are checked against the new rules; per-key overrides stay. A limiter built with
    /// [`LimiterBuilder::require_default`] requires a default rule of every reload.
    ///
    /// Counts live in the store under each limit's bucket name (`<bucket>:<kind>`, with
    /// `#2`, `#3`... for a policy's further limits of one kind), so they follow the name,
    /// not the rule:
    ///
    /// - a limit that did not change keeps its counts;
    /// - a limit whose quota changed (`100/min` to `50/min`, a token bucket's burst) keeps
    ///   what was counted and measures it against the new quota: lowering a limit applies
    ///   at once to clients that already used more, raising it frees them at once;
    /// - a limit whose algorithm or window changed (`100/min` to `6000/h`) starts its keys
    ///   afresh on the memory store; on Redis what they counted carries over into the new
    ///   shape (instances of a fleet then stay limited while they disagree), except to or
    ///   from a fixed window, whose keys are its own: a key refused on what it carries over
    ///   is told to wait until the old count leaves;
    /// - a limit whose bucket name changed (a renamed policy or bucket) starts afresh.
    ///
    /// ```
    /// use tollgate::{Limiter, Policy};
    ///
    /// let limiter = Limiter::builder()
    ///     .route("/api/*", Policy::named("api").per_ip("100/min"))
    ///     .build()?;
    /// // Halve the limit: the next request is measured against 50/min.
    /// limiter.reload(Limiter::builder().route("/api/*", Policy::named("api").per_ip("50/min")))?;
    /// // A mistake is refused, and 50/min stays in force.
    /// let refused = limiter.reload(Limiter::builder().route("/api/*", Policy::named("api").per_ip("50/fortnight")));
    /// assert!(refused.is_err());
    /// # Ok::<(), tollgate::BuildError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The [`BuildError`] the rules would fail [`LimiterBuilder::build`] with (the
    /// running rules then stay), also a bucket that a per-route policy or guard declared
    /// in code binds to other limits, or [`BuildError::NotReloadable`] for a setting that
    /// cannot change while the limiter runs, or [`BuildError::CostExceedsOverride`] for
    /// rules under which a per-key override could admit no request of its key, or
    /// [`BuildError::DirectBucketDropped`] for rules without a bucket for direct use that
    /// the running ones declare.
    pub fn reload(&self, rules: LimiterBuilder) -> Result<(), BuildError> {
        crate::observe::reload_tried(self.reload_rules(rules))
    }

    /// [`Limiter::reload`], not counted as a reload tried (its callers count theirs).
    pub(crate) fn reload_rules(&self, rules: LimiterBuilder) -> Result<(), BuildError> {
        if let Some(setting) = rules.fixed_setting() {
            return Err(BuildError::NotReloadable { setting });
        }
        let engine = &self.engine;
        let code = engine::lock(&engine.code);
        let mut rules_of = rules.rules();
        rules_of.require_default |= engine.require_default;
        let table = engine::compile_table(&rules_of, engine.identity.is_some(), &code)?;
        let running = engine.table.load();
        // (The first by name, so that the error names the same bucket every time.)
        let dropped = running
            .direct
            .keys()
            .filter(|name| !table.direct.contains_key(*name))
            .min();
        if let Some(bucket) = dropped {
            return Err(BuildError::DirectBucketDropped {
                bucket: bucket.clone(),
            });
        }
        // A per-key override that one request of the new rules costs more than.
        for (kind, key, limit) in engine.overrides.load().iter() {
            let capacity = limit.capacity();
            if let Some(Some((policy, cost))) =
                crate::inspect::costlier_than(&mut table.policies(), kind, capacity)
            {
                return Err(BuildError::CostExceedsOverride {
                    policy,
                    kind: kind.to_string(),
                    key: key.to_string(),
                    cost,
                    capacity,
                });
            }
        }
        if table.defaults.shadow && !running.defaults.shadow {
            tracing::warn!(target: "tollgate", "rate limiting is in shadow mode: nothing will be refused");
        }
        let (routes, globals) = (table.classes.iter().count(), table.globals.len());
        let (were_routes, were_globals) = (running.classes.iter().count(), running.globals.len());
        if routes < were_routes || globals < were_globals {
            // A rule dropped on purpose, or a file loaded before its writer finished.
            tracing::warn!(
                target: "tollgate",
                routes,
                were_routes,
                global_policies = globals,
                were_global_policies = were_globals,
                "the reloaded rate-limit rules have fewer routes or global limits than the \
                 running ones: check that this is meant (a file is best replaced by renaming \
                 a complete one over it)"
            );
        }
        drop(running);
        engine.table.store(Arc::new(table));
        drop(code);
        tracing::info!(
            target: "tollgate",
            routes,
            global_policies = globals,
            "rate-limit rules reloaded"
        );
        Ok(())
    }

    /// Whether limiting is on (see [`LimiterBuilder::enabled`] and [`ENABLED_ENV`]).
    pub fn is_enabled(&self) -> bool {
        self.engine.enabled
    }

    /// The bucket for direct use named `name`, to check through
    /// ([`DirectBucket::check`] and the like): asked for when the application starts, a
    /// name no bucket has is an error there, not a `500` at the first request that
    /// checks it.
    ///
    /// # Errors
    ///
    /// [`CheckError::UnknownBucket`] for a name no bucket for direct use has
    /// ([`LimiterBuilder::bucket`], or `buckets:` in a configuration file).
    pub fn direct_bucket(&self, name: &str) -> Result<DirectBucket, CheckError> {
        if self.engine.table.load().direct.contains_key(name) {
            Ok(DirectBucket::new(self.clone(), name))
        } else {
            Err(CheckError::UnknownBucket(name.to_string()))
        }
    }

    /// Charges 1 to the direct-use bucket `bucket` for `key`: admitted iff it fits.
    /// A name no bucket has is an error at each call (a `500` from a handler that returns
    /// it): name the bucket once at start-up with [`Limiter::direct_bucket`] instead.
    /// When limiting is disabled, answers admitted with no bucket state. A `key` that is an
    /// IP address is folded like a request's client (an IPv6 address to its network, as
    /// [`ClientIp::key`] does), here and in the operators' lookups, so a client cannot
    /// escape a handler's per-IP bucket by changing addresses within its /64.
    ///
    /// Every `key` is a budget, the empty one too: callers whose key is empty (an e-mail
    /// left blank) share one. (The middleware is the other way round: a limit whose key a
    /// request does not have, or has empty, does not apply to it.) Check for an empty value
    /// first where it means nobody.
    ///
    /// A check dropped before its answer (the handler's request cancelled) may still be
    /// charged: on a store that answers through its future (Redis), a call already sent is
    /// applied there, though no stats or metrics count it. Treat a dropped check as made.
    ///
    /// # Errors
    ///
    /// [`CheckError::UnknownBucket`], or the store's error.
    pub async fn check(&self, bucket: &str, key: &str) -> Result<Decision, CheckError> {
        self.direct(Op::Charge, bucket, key, 1).await
    }

    /// [`Limiter::check`] with a cost in points (0 is counted as 1, as a policy's
    /// [`Policy::cost_fn`] is: every check spends something).
    ///
    /// # Errors
    ///
    /// As [`Limiter::check`].
    pub async fn check_cost(
        &self,
        bucket: &str,
        key: &str,
        cost: u64,
    ) -> Result<Decision, CheckError> {
        self.direct(Op::Charge, bucket, key, cost.max(1)).await
    }

    /// What [`Limiter::check`] would answer, changing nothing: a look, not a reservation
    /// (requests that peek at once all see the same room; see [`Limiter::penalize`]).
    ///
    /// # Errors
    ///
    /// As [`Limiter::check`].
    pub async fn peek(&self, bucket: &str, key: &str) -> Result<Decision, CheckError> {
        self.direct(Op::Peek, bucket, key, 1).await
    }

    /// Counts 1 against `key` whether or not it fits (a failure found after the fact). A
    /// count, not a check: the decision is always `allowed`, its bucket's `remaining`
    /// saying what is left (0 once the key is at or past its limit).
    ///
    /// Not for a lockout's attempts: a [`Limiter::peek`] first and a `penalize` after a
    /// failure is a check and then an act, and attempts sent together all pass the peek
    /// before any is counted (a review: 50 wrong passwords for one e-mail at once, on Redis,
    /// answered up to 21 times against 5). Charge each attempt first with
    /// [`Limiter::check`], which is atomic, and give a success back with
    /// [`Limiter::reset`] (or [`Limiter::refund`]), as [`Limiter`]'s example does.
    ///
    /// # Errors
    ///
    /// As [`Limiter::check`].
    pub async fn penalize(&self, bucket: &str, key: &str) -> Result<Decision, CheckError> {
        self.direct(Op::Penalize, bucket, key, 1).await
    }

    /// Gives 1 back to `key`, from its newest count (it does not know which charge it
    /// undoes: a response's own refund, under
    /// [`Policy::refund_if`](crate::Policy::refund_if), gives back the request's charge
    /// from where that was counted).
    ///
    /// # Errors
    ///
    /// As [`Limiter::check`].
    pub async fn refund(&self, bucket: &str, key: &str) -> Result<Decision, CheckError> {
        self.direct(Op::Refund, bucket, key, 1).await
    }

    /// Forgets everything counted against `key` (a successful sign-in).
    ///
    /// # Errors
    ///
    /// As [`Limiter::check`].
    pub async fn reset(&self, bucket: &str, key: &str) -> Result<Decision, CheckError> {
        self.direct(Op::Reset, bucket, key, 1).await
    }

    /// The 429 response the middleware would send for a refused direct-use `decision`
    /// (same header style and body), for handlers that enforce a direct bucket. With the
    /// `axum` feature it is an axum response (`.into_response()`, or return it from a
    /// handler); it derefs to an `http::Response<Bytes>`. The refusal hook
    /// ([`LimiterBuilder::refusal_response`]) needs the request's parts and is not used
    /// here.
    pub fn refusal(
        &self,
        bucket: &str,
        decision: &Decision,
        method: &Method,
        path: &str,
    ) -> respond::TooManyRequests {
        let info = self.direct_outcome(bucket, decision, method, path);
        let mut response =
            respond::too_many_requests(&info, &self.engine.header_style, &self.engine.error_body);
        if let Some(decision) = info.decision().filter(|_| self.engine.decision_in_response) {
            response.extensions_mut().insert(decision);
        }
        response.into()
    }

    /// The rate-limit headers the middleware would send for a direct-use `decision`
    /// (same header style), for a handler that enforces a direct bucket to put on the
    /// responses it admits, so that a client sees that budget on every answer, not only on
    /// the 429 ([`Limiter::refusal`] has them already). Add them with
    /// [`merge_rate_limit_headers`](crate::merge_rate_limit_headers), beside those of
    /// other buckets the response shows; the middleware then adds its own the same way.
    ///
    /// ```
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use tollgate::Limiter;
    /// let limiter = Limiter::builder().bucket("sign-up", "20/h").build()?;
    /// let decision = limiter.check("sign-up", "203.0.113.7").await?;
    /// let headers = limiter.rate_limit_headers("sign-up", &decision);
    /// assert_eq!(headers["x-ratelimit-limit"], "20");
    /// assert_eq!(headers["x-ratelimit-remaining"], "19");
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
    /// ```
    pub fn rate_limit_headers(&self, bucket: &str, decision: &Decision) -> http::HeaderMap {
        let info = self.direct_outcome(bucket, decision, &Method::GET, "");
        let mut headers = http::HeaderMap::new();
        self.engine.header_style.write(&info, &mut headers);
        headers
    }

    /// What a direct-use `decision` of `bucket` tells a response.
    fn direct_outcome(
        &self,
        bucket: &str,
        decision: &Decision,
        method: &Method,
        path: &str,
    ) -> respond::RateLimitOutcome {
        let quota = match self.engine.table.load().direct.get(bucket) {
            Some(direct) => Some(direct.limit.shown_quota()),
            None => {
                // A name no bucket has (a typo): the response still tells the client what the
                // decision says (its limit, what remains, when to retry), the time to its reset
                // standing in for the window it does not know.
                tracing::warn!(
                    target: "tollgate",
                    bucket,
                    "no bucket for direct use has this name: the response shows the decision \
                     with the time to its reset as the window (declare it with \
                     `LimiterBuilder::bucket`)"
                );
                decision.buckets.first().and_then(|state| {
                    let window = state.reset_after.max(Duration::from_secs(1));
                    let window = Duration::from_secs(window.as_secs_f64().ceil() as u64);
                    tollgate_limits::Quota::new(state.limit.max(1), window).ok()
                })
            }
        };
        let quota = quota.map(|q| (bucket, q));
        respond::RateLimitOutcome::from_decision(bucket, decision, quota, method.clone(), path)
    }

    async fn direct(
        &self,
        op: Op,
        bucket: &str,
        key: &str,
        cost: u64,
    ) -> Result<Decision, CheckError> {
        // The table the call started with, held to the end (its bucket's metrics).
        let table = self.engine.table.load_full();
        let direct = table
            .direct
            .get(bucket)
            .ok_or_else(|| CheckError::UnknownBucket(bucket.to_string()))?;
        if !self.engine.enabled {
            return Ok(Decision {
                allowed: true,
                now: tollgate_limits::Timestamp::default(),
                buckets: Vec::new(),
            });
        }
        let stored = self.engine.direct_key(key, direct.key);
        let charged = Bucket::new(bucket, &stored, direct.limit)
            .with_cost(cost)
            .with_when_full(direct.when_full);
        let batch = Batch::new(op, vec![charged]).with_failure_mode(table.defaults.on_failure);
        // Timed for the decision's span, as the middleware's are (while `DEBUG` is on).
        let started = tracing::enabled!(target: "tollgate", tracing::Level::DEBUG)
            .then(std::time::Instant::now);
        // Asked as the middleware asks (a store that waits is timed).
        let answer = match batch.validate() {
            Ok(()) => self
                .engine
                .ask(&batch)
                .await
                .0
                .map(|(now, states)| Decision {
                    allowed: states.iter().all(|s| s.allowed),
                    now,
                    buckets: states.into_vec(),
                }),
            Err(e) => Err(e),
        };
        // Its span, as the middleware's decisions have one (the refusal's event in it).
        let span = started.map(|t| self.engine.decide_span(bucket, t.elapsed()));
        let _in_span = span.as_ref().map(tracing::Span::enter);
        // A charge is a request decided, as the middleware's are: counted in the limiter's
        // stats and its bucket's metrics (a look, a refund or a reset decides nothing).
        if op == Op::Charge {
            match &answer {
                Ok(decision) if decision.allowed => {
                    self.engine.stats.admitted.fetch_add(1, Ordering::Relaxed);
                    if let Some(state) = decision.buckets.first() {
                        direct.metrics.admitted(state);
                    }
                }
                Ok(decision) => {
                    self.engine.stats.refused.fetch_add(1, Ordering::Relaxed);
                    let none = BucketState::default();
                    let state = decision.buckets.first().unwrap_or(&none);
                    direct.metrics.refused(false, state);
                    // As the middleware's refusals are logged, at most one a second (its
                    // name for the policy too, as its metrics label it; never the key).
                    if let Some(unlogged) = refusal_to_log(&direct.refusals_logged) {
                        tracing::info!(
                            target: "tollgate",
                            policy = %bucket,
                            bucket = %bucket,
                            key_kind = %"direct",
                            reason = %observe::refusal_reason(state),
                            retry_after_ms = decision.retry_after().map(|d| d.as_millis() as u64),
                            unlogged_refusals = unlogged,
                            "{}",
                            observe::refusal_message(false, state)
                        );
                    }
                }
                // (The caller has the error to log.)
                Err(_) => {
                    self.engine.count_store_failure();
                }
            }
        }
        Ok(answer?)
    }

    /// Sets (or replaces) a limit for one key, on top of the endpoint limits: requests
    /// whose `key` (by kind, e.g. [`Key::api_key`]) equals `value` also spend a bucket
    /// of `rate` shared by all routes, so the more restrictive of key and endpoint applies
    /// (a customer's own limit on its API key). The bucket is shared by every source of
    /// that kind too: a kind read from a verified source in one policy ([`Key::tenant`])
    /// and from a header any client writes in another ([`Key::tenant_header`]), or a custom
    /// kind named like a built-in one (`ip`, `user`), pools them, so a client naming `acme`
    /// in the header spends `acme`'s override (give the two sources kinds of their own).
    /// Takes effect on the next request, no restart, in this process only: on a fleet, set
    /// it on every instance (its count is in the store, shared by the instances that have
    /// the override). The
    /// override's bucket is a bucket of its own: it does not count what the route's
    /// buckets did (a client that already spent 100 of its route's 500 a minute, given
    /// 50 a minute, is admitted 50 more; lower the route's limit, or reset the key, to
    /// count what was spent), but it keeps its own count while its window runs:
    /// replacing the override's rate, or removing it and setting it again, counts what
    /// the key spent under it (set at 3 a minute and spent, removed and set again, the
    /// key is refused until the minute lets requests through; reset the key to start it
    /// afresh), as a reloaded limit does: a new quota of the same algorithm and window
    /// keeps the count, while a new algorithm or window starts it afresh on the memory
    /// store (on Redis it carries over, except to or from a fixed window; a review
    /// moved a key through four algorithms at 20 a minute on memory and was admitted
    /// 100 in seconds: to tighten a key already limited, keep its algorithm and window,
    /// or lower its quota), and it is spent by the middleware's policies (routes and
    /// global limits), not by guards ([`Limiter::guard`]: a guard counts what its own
    /// policy counts, a failed authentication's guard the failures, in buckets of its
    /// own), nor by the buckets for direct use that handlers check
    /// ([`Limiter::check`]): routes a handler limits itself are not reached.
    ///
    /// # Errors
    ///
    /// [`InspectError::Rate`] if the rate does not parse, [`InspectError::UnknownKeyKind`]
    /// if no policy limits by the key's kind, [`InspectError::BadIp`] or
    /// [`InspectError::EmptyKey`] for a value no request carries, and
    /// [`InspectError::CostExceedsOverride`] for a limit smaller than one request of a
    /// policy limiting by the kind costs (every request of the key would be refused).
    pub fn set_override(
        &self,
        key: &Key,
        value: &str,
        rate: impl Into<Rate>,
    ) -> Result<(), InspectError> {
        let limit = rate.into().limit()?;
        let stored = self.override_value(key, value, &limit)?;
        self.put_override(key.kind(), &stored, limit);
        Ok(())
    }

    /// Sets the override of the key of kind `kind` stored as `stored`, checked already
    /// ([`Limiter::override_value`]).
    pub(crate) fn put_override(&self, kind: &str, stored: &str, limit: Limit) {
        self.engine.overrides.change(|current| {
            let mut next = Overrides::clone(current);
            next.set(kind, stored, limit);
            next
        });
        // The audit trail of what operators change (the key as stored: hashed if secret).
        tracing::info!(
            target: "tollgate",
            kind = %kind,
            key = %stored,
            limit = %limit,
            "rate-limit override set"
        );
    }

    /// Removes a per-key override; returns whether there was one.
    pub fn remove_override(&self, key: &Key, value: &str) -> bool {
        self.remove_stored(key.kind(), &self.stored_value(key, value))
    }

    /// Removes the override of the key of kind `kind` stored as `stored`; whether there was
    /// one.
    pub(crate) fn remove_stored(&self, kind: &str, stored: &str) -> bool {
        let mut removed = false;
        self.engine.overrides.change(|current| {
            let mut next = Overrides::clone(current);
            removed = next.remove(kind, stored);
            next
        });
        if removed {
            tracing::info!(
                target: "tollgate",
                kind = %kind,
                key = %stored,
                "rate-limit override removed"
            );
        }
        removed
    }

    /// A key's value as the middleware stores it: hashed if the key is secret (a digest
    /// as listed names itself), and an IP address folded like a client's (an IPv6 address
    /// to its network, `2001:db8::/64`, or to a [`Key::network`]'s prefix).
    pub(crate) fn stored_value(&self, key: &Key, value: &str) -> String {
        let read = key.read_credential(value.as_bytes());
        let value = read.as_deref().unwrap_or(value);
        let folded = key
            .source
            .address_network()
            .and_then(|network| self.engine.client_ip.fold_text(value, network));
        key::operator_key(folded.as_deref().unwrap_or(value), key.hashed)
    }

    /// Counters of what the limiter has done.
    pub fn stats(&self) -> LimiterStats {
        let guards = engine::lock(&self.engine.code).guards.clone();
        std::iter::once(&self.engine)
            .chain(&guards)
            .fold(LimiterStats::default(), |sum, engine| {
                let c = &engine.stats;
                LimiterStats {
                    admitted: sum.admitted + c.admitted.load(Ordering::Relaxed),
                    refused: sum.refused + c.refused.load(Ordering::Relaxed),
                    would_refuse: sum.would_refuse + c.would_refuse.load(Ordering::Relaxed),
                    store_errors: sum.store_errors + c.store_errors.load(Ordering::Relaxed),
                    no_peer: sum.no_peer + c.no_peer.load(Ordering::Relaxed),
                }
            })
    }

    /// Every rule of the configuration, for documentation generated from it (see
    /// [`RouteLimits`](crate::RouteLimits)): the central table's rules in the order they were
    /// added, then the global policies, the per-route policies made so far with
    /// [`Limiter::policy`] (one per name; with the pattern of [`Limiter::policy_at`]), the
    /// guards' policies ([`Limiter::guard`]), and the buckets for direct use (by name).
    /// After a [`Limiter::reload`], the new rules. Per-key overrides
    /// ([`Limiter::set_override`]) are not rules and are not here: a key given its own
    /// limit is limited by it on top of what is described ([`Limiter::overrides`] lists
    /// them), so documents made from this (`tollgate::publish`) state what every client
    /// gets, not what one key was given.
    pub fn describe(&self) -> Vec<RouteLimits> {
        let inner = self.engine.table.load();
        let table = inner.classes.iter().map(|(pattern, policy)| {
            RouteLimits::from_compiled(RuleSource::Route, Some(pattern), policy)
        });
        let globals = inner
            .globals
            .iter()
            .map(|p| RouteLimits::from_compiled(RuleSource::Global, None, p));
        // A per-route policy declared for a pattern (`policy_at`) shows it.
        let routes = self.engine.routes.load();
        let pattern_of = |index: usize| {
            routes
                .delegated
                .iter()
                .find(|d| d.index == index)
                .map(|d| &d.pattern)
        };
        let mut seen = std::collections::HashSet::new();
        let per_route = inner
            .per_route
            .iter()
            .enumerate()
            .filter(|(_, p)| seen.insert(p.name.clone()))
            .map(|(i, p)| RouteLimits::from_compiled(RuleSource::PerRoute, pattern_of(i), p));
        let guards = engine::lock(&self.engine.code).guards.clone();
        let guards = guards.iter().flat_map(|guard| {
            let table = guard.table.load();
            table
                .globals
                .iter()
                .map(|p| RouteLimits::from_compiled(RuleSource::Guard, None, p))
                .collect::<Vec<_>>()
        });
        let mut buckets: Vec<(&String, &Limit)> = inner
            .direct
            .iter()
            .map(|(name, d)| (name, &d.limit))
            .collect();
        buckets.sort_by(|a, b| a.0.cmp(b.0));
        let buckets = buckets
            .into_iter()
            .map(|(name, limit)| RouteLimits::from_bucket(name, *limit));
        table
            .chain(globals)
            .chain(per_route)
            .chain(guards)
            .chain(buckets)
            .collect()
    }

    /// The central table's rule for `method` `path`, described (`None`: no rule matches).
    /// Global limits apply on top unless the rule is exempt; a route with its own
    /// [`Limiter::policy`] spends that policy instead.
    pub fn describe_route(&self, method: &Method, path: &str) -> Option<RouteLimits> {
        let table = self.engine.table.load();
        let class = table.classes.classify(method, path)?;
        let pattern = table
            .classes
            .iter()
            .find(|(_, policy)| Arc::ptr_eq(policy, class))
            .map(|(pattern, _)| pattern);
        Some(RouteLimits::from_compiled(
            RuleSource::Route,
            pattern,
            class,
        ))
    }

    /// The per-route policy declared with [`Limiter::policy_at`] for a pattern `method`
    /// `path` matches, described with that pattern (`None`: no such pattern matches).
    #[cfg(feature = "openapi")]
    pub(crate) fn describe_policy_at(&self, method: &Method, path: &str) -> Option<RouteLimits> {
        let routes = self.engine.routes.load();
        let route = routes
            .delegated
            .iter()
            .find(|d| d.table.classify(method, path).is_some())?;
        let table = self.engine.table.load();
        Some(RouteLimits::from_compiled(
            RuleSource::PerRoute,
            Some(&route.pattern),
            table.per_route.get(route.index)?,
        ))
    }

    /// The name of the policy the central table gives `method` `path` (`None`: no rule
    /// matches, only global limits apply). For tests and diagnostics.
    pub fn classify(&self, method: &Method, path: &str) -> Option<Arc<str>> {
        let table = self.engine.table.load();
        table.classes.classify(method, path).map(|c| c.name.clone())
    }
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("enabled", &self.engine.enabled)
            .field("store", &self.engine.store)
            .field("globals", &self.engine.table.load().globals.len())
            .finish_non_exhaustive()
    }
}

/// A bucket for direct use, as declared ([`LimiterBuilder::bucket_when_full`],
/// [`LimiterBuilder::bucket_per_network`], [`LimiterBuilder::bucket_hashed`]).
pub(crate) struct DirectRule {
    pub(crate) name: String,
    pub(crate) rate: Rate,
    pub(crate) when_full: WhenFull,
    /// How it stores the keys it is given.
    pub(crate) key: DirectKey,
}

/// Builds a [`Limiter`]; every mistake is a [`BuildError`] from [`LimiterBuilder::build`].
#[derive(Default)]
pub struct LimiterBuilder {
    store: Option<Arc<dyn Store>>,
    client_ip: Option<ClientIp>,
    identity: Option<Extractor>,
    routes: Vec<(String, Policy)>,
    global: Option<Policy>,
    global_policies: Vec<Policy>,
    direct: Vec<DirectRule>,
    header_style: Option<HeaderStyle>,
    error_body: Option<ErrorBody>,
    enabled: Option<bool>,
    read_env: Option<bool>,
    shadow: bool,
    on_failure: Option<FailureMode>,
    require_default: bool,
    require_peer: Option<bool>,
    /// The settings of the configuration file this builder was set up from.
    #[cfg(any(feature = "yaml", feature = "toml"))]
    pub(crate) file_settings: Option<crate::config::FileSettings>,
    /// Whether that file declares routes, global limits or buckets.
    #[cfg(any(feature = "yaml", feature = "toml"))]
    pub(crate) file_declares_limits: bool,
    /// The configuration file this builder was set up from, and its name: a build error
    /// is pointed at its rule ([`crate::config::Config::build_error`]).
    #[cfg(any(feature = "yaml", feature = "toml"))]
    pub(crate) config_source: Option<Box<(crate::config::Config, String)>>,
    decision_in_request: Option<bool>,
    decision_in_response: Option<bool>,
    refusal_hook: Option<engine::RefusalHook>,
    store_name: Option<String>,
    /// Set for a guard, which is made from a limiter already built: that limiter's store
    /// metrics, as it shares its store (each its own counted every switch of that store to
    /// its fallback once more); and the configuration it shares was warned about when that
    /// limiter was built, and is not again.
    store_metrics: Option<Arc<crate::observe::StoreMetrics>>,
    /// Set for a guard that counts only some responses: its requests of a key run no more
    /// at once than the key has left ([`engine::Gate`]).
    gate: bool,
}

impl fmt::Debug for LimiterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimiterBuilder")
            .field("routes", &self.routes)
            .field("global", &self.global)
            .finish_non_exhaustive()
    }
}

impl LimiterBuilder {
    /// Where bucket state lives. Default: a [`MemoryStore`] (this process only).
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// [`LimiterBuilder::store`] with a store already shared.
    pub fn shared_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Refuses requests that carry no peer address with `500 Internal Server Error` (a
    /// plain-text body saying how to fix the deployment) instead of limiting them all in
    /// one shared `unknown-peer` bucket. A request has no peer address when axum serves
    /// without `into_make_service_with_connect_info::<SocketAddr>()` (or a plain tower
    /// stack inserts no `SocketAddr` / `IpAddr` extension): a deployment mistake that, by
    /// default, only one `tracing` error reports. Exempt routes still pass.
    /// [`LimiterStats::no_peer`] counts such requests either way.
    ///
    /// ```
    /// use tollgate::{Limiter, Policy};
    ///
    /// let limiter = Limiter::builder()
    ///     .route("/api/*", Policy::named("api").per_ip("100/min"))
    ///     .require_peer_address()
    ///     .build()?;
    /// # let _ = limiter;
    /// # Ok::<(), tollgate::BuildError>(())
    /// ```
    pub fn require_peer_address(mut self) -> Self {
        self.require_peer = Some(true);
        self
    }

    /// How the client IP is found. Default [`ClientIp::peer`]: the TCP peer, forwarded
    /// headers ignored.
    pub fn client_ip(mut self, client_ip: ClientIp) -> Self {
        self.client_ip = Some(client_ip);
        self
    }

    /// Who is signed in: the key of [`Policy::per_user`] limits. `None` (anonymous) skips
    /// them. The function sees what earlier middleware put in the extensions, so put the
    /// authentication layer outside (after, in `Router::layer` order) the limiter.
    pub fn identity<F>(mut self, identity: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.identity = Some(Arc::new(identity));
        self
    }

    /// A rule of the central table: `pattern` is `[METHODS ]PATH` (`"/api/*"`,
    /// `"POST /api/templates/{id}/generate"`, `"GET,HEAD /v1/campaigns/:id"`). The most
    /// specific rule matching a request gives its class; two rules that tie are a build
    /// error. A path is the request's whole path: with the layer inside
    /// `Router::nest("/api", ..)`, give `/api/items`, not the nested router's `/items`
    /// (such a rule matches nothing there; the layer warns once, naming the route).
    pub fn route(mut self, pattern: &str, policy: Policy) -> Self {
        self.routes.push((pattern.to_string(), policy));
        self
    }

    /// The class of requests no other rule matches: the same as `.route("/*", policy)`.
    pub fn default_policy(self, policy: Policy) -> Self {
        self.route("/*", policy)
    }

    /// Make a missing default rule a build error ([`BuildError::NoDefaultRule`]), so no
    /// route is left unlimited by accident.
    pub fn require_default(mut self) -> Self {
        self.require_default = true;
        self
    }

    /// A global limit: one bucket for the whole service, spent by every non-exempt request
    /// on top of its class (a backstop for the whole fleet). Several calls add several limits (e.g. a
    /// token bucket and a daily cap) to the policy named `global`. It counts requests: a
    /// request costs it 1 whatever its class's policy costs (`Policy::cost`); to count
    /// points globally, give [`LimiterBuilder::global_policy`] a policy with its own cost.
    pub fn global(mut self, rate: impl Into<Rate>) -> Self {
        let policy = self
            .global
            .take()
            .unwrap_or_else(|| Policy::named("global"));
        self.global = Some(policy.limit(Key::global(), rate));
        self
    }

    /// A policy spent by every non-exempt request on top of its class, with keys of its own
    /// (e.g. `Policy::named("global-ip").per_ip("1000/min")`).
    pub fn global_policy(mut self, policy: Policy) -> Self {
        self.global_policies.push(policy);
        self
    }

    /// A bucket for direct use from handlers ([`Limiter::check`], [`Limiter::peek`],
    /// [`Limiter::penalize`], [`Limiter::reset`]), e.g. `.bucket("sign-in-failures",
    /// Rate::exact("5/30min"))`. Its name must differ from every policy's bucket name.
    pub fn bucket(self, name: &str, rate: impl Into<Rate>) -> Self {
        self.bucket_when_full(name, rate, WhenFull::default())
    }

    /// [`LimiterBuilder::bucket`], choosing what a bounded store (the memory store, and the
    /// fallback's memory) does with a new key of it when its share is full of keys at their
    /// limit: [`WhenFull::RefuseNewKeys`] (what `bucket` does) or
    /// [`WhenFull::EvictLimited`], as [`Policy::when_full`](crate::Policy::when_full) chooses for a policy's
    /// buckets. A bucket keyed by client address usually wants `EvictLimited`: addresses
    /// cost a client real hosts, and refusing every address the store has not seen would let
    /// a flood of them turn every new client away.
    ///
    /// ```
    /// use tollgate::{Limiter, WhenFull};
    ///
    /// let limiter = Limiter::builder()
    ///     .bucket_when_full("sign-in-per-ip", "20/15min", WhenFull::EvictLimited)
    ///     .build()?;
    /// # let _ = limiter;
    /// # Ok::<(), tollgate::BuildError>(())
    /// ```
    pub fn bucket_when_full(self, name: &str, rate: impl Into<Rate>, when_full: WhenFull) -> Self {
        self.direct_bucket(name, rate.into(), when_full, DirectKey::default())
    }

    /// [`LimiterBuilder::bucket_when_full`] for a bucket keyed by personal data (an e-mail
    /// address, an account name): its keys are stored as digests (SHA-256, as
    /// [`Key::hashed`](crate::Key::hashed) stores a policy's), so neither the store (Redis
    /// keys) nor the limiter's logs (an operator's reset) hold them in clear. A digest
    /// without a secret is a pseudonym, not a protection against guessing: whoever has the
    /// logs or the Redis keys and a list of candidate e-mails can tell which of them are
    /// there (a review did, with one line of Python). Keys of high entropy (API keys,
    /// tokens) cannot be guessed that way. Checks, and
    /// the operators' lookups and resets ([`Limiter::peek_bucket`],
    /// [`Limiter::reset_bucket`], the admin router), take the key as given and find it.
    ///
    /// ```
    /// use tollgate::{Limiter, WhenFull};
    ///
    /// let limiter = Limiter::builder()
    ///     .bucket_hashed("sign-in-failures", "5/30min", WhenFull::KeepCounts)
    ///     .build()?;
    /// assert!(limiter.stored_key("sign-in-failures", "ann@example.com")?.starts_with('#'));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn bucket_hashed(self, name: &str, rate: impl Into<Rate>, when_full: WhenFull) -> Self {
        let key = DirectKey {
            network: None,
            hashed: true,
        };
        self.direct_bucket(name, rate.into(), when_full, key)
    }

    /// [`LimiterBuilder::bucket_when_full`] for a bucket keyed by client network: a key
    /// that is an IP address (or a network written as stored, `2001:db8:1::/48`) is folded
    /// to its first `ipv6_prefix` bits, an IPv4 address kept whole, as
    /// [`ClientIp::network_key`](crate::ClientIp::network_key) keys it, in
    /// [`Limiter::check`] and its kin and in the operators' lookups
    /// ([`Limiter::peek_bucket`], [`Limiter::reset_bucket`], the admin router). So an
    /// operator who looks a client up by its address finds its network's count (a plain
    /// bucket folds an address to the client's key, a /64: the network's count was not
    /// found, and its reset freed nobody). A prefix above 128 is a build error
    /// ([`BuildError::BadNetworkPrefix`]).
    ///
    /// ```
    /// use tollgate::{Limiter, WhenFull};
    ///
    /// let limiter = Limiter::builder()
    ///     .bucket_per_network("sign-in-per-network", "1000/15min", WhenFull::EvictLimited, 48)
    ///     .build()?;
    /// # let _ = limiter;
    /// # Ok::<(), tollgate::BuildError>(())
    /// ```
    pub fn bucket_per_network(
        self,
        name: &str,
        rate: impl Into<Rate>,
        when_full: WhenFull,
        ipv6_prefix: u8,
    ) -> Self {
        let key = DirectKey {
            network: Some(ipv6_prefix),
            hashed: false,
        };
        self.direct_bucket(name, rate.into(), when_full, key)
    }

    /// Declares a bucket for direct use.
    fn direct_bucket(
        mut self,
        name: &str,
        rate: Rate,
        when_full: WhenFull,
        key: DirectKey,
    ) -> Self {
        self.direct.push(DirectRule {
            name: name.to_string(),
            rate,
            when_full,
            key,
        });
        self
    }

    /// Which rate-limit headers responses carry. Default: see [`HeaderStyle`].
    pub fn header_style(mut self, style: HeaderStyle) -> Self {
        self.header_style = Some(style);
        self
    }

    /// Whether a store and a header style were given (a configuration file applied to
    /// the builder leaves them when it says nothing of them).
    #[cfg(any(feature = "yaml", feature = "toml"))]
    pub(crate) fn has_store_and_style(&self) -> (bool, bool) {
        (self.store.is_some(), self.header_style.is_some())
    }

    /// The body of 429 responses. Default: see [`ErrorBody`].
    pub fn error_body(mut self, body: ErrorBody) -> Self {
        self.error_body = Some(body);
        self
    }

    /// Whether the middleware puts its [`RateLimitDecision`](crate::RateLimitDecision) in
    /// the request's extensions, for the handler (`Option<Extension<RateLimitDecision>>`). Default
    /// on. Cost: one allocation per admitted request (extensions box what they hold; an
    /// axum request already carries extensions), which turning it off does not save: the
    /// request then carries a smaller mark of the limiter instead, so that a layer of the
    /// same limiter further in (a nested router's) does not charge it again.
    pub fn decision_in_request(mut self, on: bool) -> Self {
        self.decision_in_request = Some(on);
        self
    }

    /// Whether the middleware puts its [`RateLimitDecision`](crate::RateLimitDecision) in
    /// the response's extensions (admitted and refused), for outer layers
    /// (`response.extensions().get::<RateLimitDecision>()`). Default **off**: a handler's
    /// response usually has no extensions yet, and the first one costs three allocations
    /// (the map, its table and the value), as much as the rest of the layer; the
    /// rate-limit headers already tell outer layers most of it.
    pub fn decision_in_response(mut self, on: bool) -> Self {
        self.decision_in_response = Some(on);
        self
    }

    /// Makes the whole refused response yourself (like tower_governor's `error_handler`):
    /// `hook` gets the decision ([`RateLimitOutcome`](crate::RateLimitOutcome)) and the request's
    /// parts, and returns the response. The rate-limit headers of the
    /// [`header_style`](LimiterBuilder::header_style) (`Retry-After` included) are added to
    /// it unless it set them itself, and the decision goes into its extensions; the
    /// [`error_body`](LimiterBuilder::error_body) is not used. The status is yours to
    /// choose (a 429 is what clients expect).
    ///
    /// The hook is fixed at build: [`Limiter::reload`] refuses rules that set one
    /// ([`BuildError::NotReloadable`], `refusal_response`), whether or not the limiter
    /// has one, since a closure cannot be compared with the running one.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{header, Response, StatusCode};
    /// use tollgate::{Limiter, Policy};
    ///
    /// let limiter = Limiter::builder()
    ///     .route("/*", Policy::named("default").per_ip("100/min"))
    ///     .refusal_response(|info, parts| {
    ///         let html = format!(
    ///             "<p>Slow down: {} {} is limited; retry in {} s.</p>",
    ///             parts.method,
    ///             parts.uri.path(),
    ///             info.retry_after_secs().unwrap_or(60),
    ///         );
    ///         let mut response = Response::new(Bytes::from(html));
    ///         *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    ///         response.headers_mut().insert(header::CONTENT_TYPE, "text/html".parse().unwrap());
    ///         response
    ///     })
    ///     .build()?;
    /// # let _ = limiter;
    /// # Ok::<(), tollgate::BuildError>(())
    /// ```
    pub fn refusal_response<F>(mut self, hook: F) -> Self
    where
        F: Fn(&respond::RateLimitOutcome, &Parts) -> http::Response<Bytes> + Send + Sync + 'static,
    {
        self.refusal_hook = Some(Arc::new(hook));
        self
    }

    /// The store's name in metrics (the `store` label) and in the decision span. Default:
    /// `memory` for a store that decides in this process, `shared` for one shared between
    /// processes (its [`Store::mode`] when the limiter is built). Must be a usable name
    /// (letters, digits, `_`, `-`, `.`).
    pub fn store_name(mut self, name: &str) -> Self {
        self.store_name = Some(name.to_string());
        self
    }

    /// Switch limiting on or off (default on). When off, requests pass untouched, without
    /// headers, and so does everything made from the limiter: its guards
    /// ([`Limiter::guard`], a failed-authentication guard included: credentials can then
    /// be guessed at full speed; each guard warns at start-up) and direct checks
    /// ([`Limiter::check`], a lockout included) admit everything. The environment variable
    /// [`ENABLED_ENV`] (`RATE_LIMIT_ENABLED`), when set, overrides this.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = Some(enabled);
        self
    }

    /// Whether to read [`ENABLED_ENV`] at build (default true).
    pub fn read_env(mut self, read: bool) -> Self {
        self.read_env = Some(read);
        self
    }

    /// Dry run for every policy: count and log what would be refused, refuse nothing (and
    /// write no rate-limit headers: see [`Policy::shadow`]).
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// What to do when the store cannot answer, for policies that do not say (default
    /// [`FailureMode::Fallback`]; a store error then admits without headers).
    pub fn on_store_failure(mut self, mode: FailureMode) -> Self {
        self.on_failure = Some(mode);
        self
    }

    /// The rules a table is compiled from.
    fn rules(&self) -> Rules<'_> {
        Rules {
            routes: &self.routes,
            globals: self.global.iter().chain(&self.global_policies).collect(),
            direct: &self.direct,
            defaults: engine::Defaults {
                shadow: self.shadow,
                on_failure: self.on_failure.unwrap_or_default(),
                // A guard (the one builder given its limiter's store metrics, by
                // `try_guard`) spends no per-key overrides.
                overrides: self.store_metrics.is_none(),
            },
            require_default: self.require_default,
        }
    }

    /// The first setting of this builder that a reload cannot change, if it sets one
    /// (set at all: a reload does not compare it with the running limiter's, which a
    /// refusal hook, a closure, could not be).
    fn fixed_setting(&self) -> Option<&'static str> {
        [
            ("store", self.store.is_some()),
            ("client_ip", self.client_ip.is_some()),
            ("require_peer_address", self.require_peer.is_some()),
            ("identity", self.identity.is_some()),
            ("header_style", self.header_style.is_some()),
            ("error_body", self.error_body.is_some()),
            ("enabled", self.enabled.is_some()),
            ("decision_in_request", self.decision_in_request.is_some()),
            ("decision_in_response", self.decision_in_response.is_some()),
            ("refusal_response", self.refusal_hook.is_some()),
            ("store_name", self.store_name.is_some()),
        ]
        .into_iter()
        .find_map(|(name, set)| set.then_some(name))
    }

    /// Checks everything and builds the limiter. Logs configuration warnings with
    /// `tracing` (e.g. every address trusted as a proxy, limiting disabled).
    ///
    /// # Errors
    ///
    /// The first [`BuildError`] found.
    pub fn build(self) -> Result<Limiter, BuildError> {
        #[cfg(any(feature = "yaml", feature = "toml"))]
        {
            let mut builder = self;
            match builder.config_source.take() {
                Some(source) => {
                    let (config, file) = *source;
                    builder.build_unpointed().map_err(|error| {
                        BuildError::Config(Box::new(config.build_error(&file, error)))
                    })
                }
                None => builder.build_unpointed(),
            }
        }
        #[cfg(not(any(feature = "yaml", feature = "toml")))]
        self.build_unpointed()
    }

    /// [`LimiterBuilder::build`], with errors as the builder finds them.
    fn build_unpointed(mut self) -> Result<Limiter, BuildError> {
        let env = if self.read_env.unwrap_or(true) {
            // Empty counts as unset (`RATE_LIMIT_ENABLED=` from a compose file).
            std::env::var(ENABLED_ENV)
                .ok()
                .filter(|v| !v.trim().is_empty())
        } else {
            None
        };
        let enabled = match env.as_deref().map(parse_switch) {
            Some(Some(on)) => on,
            Some(None) => {
                return Err(BuildError::BadEnvSwitch {
                    value: env.unwrap_or_default(),
                })
            }
            None => self.enabled.unwrap_or(true),
        };

        let client_ip = self.client_ip.take().unwrap_or_else(ClientIp::peer);
        client_ip.validate()?;
        let warn = self.store_metrics.is_none();
        if warn {
            for warning in client_ip.warnings() {
                tracing::warn!(target: "tollgate", "{warning}");
            }
        }

        let table = engine::compile_table(
            &self.rules(),
            self.identity.is_some(),
            &CodeRules::default(),
        )?;

        if !enabled && warn {
            tracing::warn!(target: "tollgate", "rate limiting is disabled: requests pass unlimited");
        }
        if self.shadow && warn {
            tracing::warn!(target: "tollgate", "rate limiting is in shadow mode: nothing will be refused");
        }

        let store = self.store.unwrap_or_else(|| Arc::new(MemoryStore::new()));
        let store_name: Arc<str> = match self.store_name {
            Some(name) if engine::name_is_valid(&name) => name.into(),
            Some(name) => return Err(BuildError::BadName { name }),
            None => crate::observe::default_store_name(store.mode()).into(),
        };
        let store_metrics = match self.store_metrics.take() {
            Some(shared) => shared,
            None => Arc::new(crate::observe::StoreMetrics::new(&store_name, store.mode())),
        };

        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let engine = Engine {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            enabled,
            store,
            client_ip,
            identity: self.identity,
            header_style: self.header_style.unwrap_or_default(),
            error_body: self.error_body.unwrap_or_default(),
            require_default: self.require_default,
            table: ArcSwap::from_pointee(table),
            code: Mutex::default(),
            #[cfg(any(feature = "yaml", feature = "toml"))]
            file_settings: self.file_settings,
            #[cfg(any(feature = "yaml", feature = "toml"))]
            file_declares_limits: Mutex::new(self.file_declares_limits),
            overrides: Default::default(),
            routes: Default::default(),
            stats: engine::Counters::default(),
            warned_no_peer: AtomicBool::new(false),
            anonymous_streak: AtomicU64::new(0),
            unmatched_checked: std::sync::atomic::AtomicU32::new(0),
            require_peer: self.require_peer.unwrap_or(false),
            decision_in_request: self.decision_in_request.unwrap_or(true),
            decision_in_response: self.decision_in_response.unwrap_or(false),
            refusal_hook: self.refusal_hook,
            store_name,
            store_metrics,
            gate: self.gate.then(Arc::default),
        };
        Ok(Limiter {
            engine: Arc::new(engine),
        })
    }
}

/// The store the environment names (feature `redis`): `REDIS_URL` or `KV_URL` set → Redis
/// behind a `tollgate::redis::FallbackStore` that answers from memory while
/// Redis fails; unset → a [`MemoryStore`]. Never connects here: an unreachable Redis is not
/// an error, a URL that does not parse is.
///
/// ```no_run
/// # fn main() -> Result<(), tollgate::BuildError> {
/// let limiter = tollgate::Limiter::builder()
///     .store(tollgate::store_from_env()?)
///     .global("1000/min")
///     .build()?;
/// # let _ = limiter; Ok(()) }
/// ```
///
/// # Errors
///
/// [`BuildError::Store`] for a URL that does not parse.
#[cfg(feature = "redis")]
pub fn store_from_env() -> Result<tollgate_redis::EnvStore, BuildError> {
    Ok(tollgate_redis::from_env()?)
}

/// `true`/`false`, `1`/`0`, `on`/`off`, `yes`/`no`, any case.
fn parse_switch(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "on" | "yes" => Some(true),
        "false" | "0" | "off" | "no" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_limits::ManualClock;

    /// A memory store on a stopped clock (no window ends during a test).
    fn stopped_store() -> MemoryStore {
        let clock = ManualClock::new(Duration::from_secs(1_717_200_000));
        MemoryStore::builder().clock(clock).build()
    }

    #[test]
    fn switch_values() {
        for on in ["true", "1", "ON", " yes "] {
            assert_eq!(parse_switch(on), Some(true));
        }
        for off in ["false", "0", "Off", "NO"] {
            assert_eq!(parse_switch(off), Some(false));
        }
        assert_eq!(parse_switch("maybe"), None);
    }

    /// The `Debug` output of a limiter and of a builder names the type and its main
    /// settings (what a user sees in a log line or a panic message).
    #[test]
    fn limiter_and_builder_debug_show_their_settings() {
        let rules = Limiter::builder().route("/a/*", Policy::named("a").per_ip("5/min"));
        let builder = format!("{rules:?}");
        assert!(builder.starts_with("LimiterBuilder {"), "{builder}");
        assert!(builder.contains("routes: [(\"/a/*\""), "{builder}");
        let limiter = rules.global("100/min").read_env(false).build().unwrap();
        let limiter = format!("{limiter:?}");
        assert!(limiter.starts_with("Limiter {"), "{limiter}");
        assert!(limiter.contains("enabled: true"), "{limiter}");
        assert!(limiter.contains("globals: 1"), "{limiter}");
    }

    /// `bucket_hashed` adds a bucket for direct use to the rules declared before it, and
    /// stores its keys hashed.
    #[tokio::test]
    async fn a_hashed_bucket_is_added_to_the_rules_before_it() {
        let limiter = Limiter::builder()
            .route("/a/*", Policy::named("a").per_ip("5/min"))
            .bucket_hashed("sign-in", "2/min", WhenFull::KeepCounts)
            .store(stopped_store())
            .read_env(false)
            .build()
            .unwrap();
        assert_eq!(limiter.classify(&Method::GET, "/a/x").as_deref(), Some("a"));
        let stored = limiter.stored_key("sign-in", "ann@example.com").unwrap();
        assert!(stored.starts_with('#'), "{stored}");
        assert!(!stored.contains("ann"), "{stored}");
        let mut admitted = Vec::new();
        for _ in 0..3 {
            let decision = limiter.check("sign-in", "ann@example.com").await.unwrap();
            admitted.push(decision.allowed);
        }
        assert_eq!(admitted, [true, true, false]);
    }

    /// A charge to a bucket for direct use counts in the limiter's stats, admitted or
    /// refused as decided; a look (`peek`) or a refund decides nothing and counts nothing.
    #[tokio::test]
    async fn direct_charges_are_counted_in_the_stats_and_looks_are_not() {
        let limiter = Limiter::builder()
            .bucket_when_full("otp", "2/min", WhenFull::KeepCounts)
            .store(stopped_store())
            .read_env(false)
            .build()
            .unwrap();
        for _ in 0..3 {
            let _ = limiter.check("otp", "ann").await.unwrap();
        }
        let stats = limiter.stats();
        assert_eq!((stats.admitted, stats.refused), (2, 1));
        let _ = limiter.peek("otp", "ann").await.unwrap();
        let _ = limiter.refund("otp", "ann").await.unwrap();
        let _ = limiter.peek("otp", "ann").await.unwrap();
        let stats = limiter.stats();
        assert_eq!((stats.admitted, stats.refused), (2, 1));
    }
}
