//! [`Policy`]: a named set of limits for a class of routes, and what a request costs in it.

use std::fmt;
use std::sync::Arc;

use http::request::Parts;
use http::StatusCode;
use tollgate_limits::{FailureMode, Limit, WhenFull};

use crate::key::Key;
use crate::rate::Rate;

/// A quota chosen per key and request (plan tiers); `None` means the limit does not apply.
pub(crate) type QuotaFn = Arc<dyn Fn(&str, &Parts) -> Option<Limit> + Send + Sync>;
/// What a request costs, from the request.
pub(crate) type CostFn = Arc<dyn Fn(&Parts) -> u64 + Send + Sync>;
/// A test on the response status.
pub(crate) type StatusFn = Arc<dyn Fn(StatusCode) -> bool + Send + Sync>;

/// A named set of limits, the cost of a request in them, and what to do after the response.
/// Cheap to clone; built by chaining.
///
/// Bucket state is keyed by the policy's bucket name ([`Policy::bucket`], the policy's name
/// by default), the key's kind and the key, so policies with the same bucket name share
/// their budgets (they must then declare the same limits: checked at build).
///
/// ```
/// use http::StatusCode;
/// use tollgate::{FailureMode, Key, Limit, Policy, Quota, Rate};
///
/// // One `auth` bucket shared by sign-in, forgot and reset password.
/// let auth = Policy::named("auth").per_ip("20/15min");
///
/// // 60/min per IP and 30/min per signed-in user.
/// let chat = Policy::named("chat").per_ip("60/min").per_user("30/min");
///
/// // A token bucket (sustained 100/min, burst 20) and a daily cap, per API key.
/// let invoices = Policy::named("invoices")
///     .limit(Key::api_key("x-api-key"), Rate::token_bucket("100/min", 20))
///     .limit(Key::api_key("x-api-key"), Rate::fixed("10000/day"));
///
/// // Points per organisation, the quota depends on the plan.
/// let points = Policy::named("points")
///     .limit_with(Key::tenant(|p| p.headers.get("x-org").and_then(|v| v.to_str().ok()).map(String::from)),
///         |_org, parts| Some(Limit::sliding(Quota::per_minute(
///             if parts.headers.contains_key("x-enterprise") { 1000 } else { 100 }))))
///     .cost(5);
///
/// // A 304 Not Modified does not count.
/// let tenant = Policy::named("tenant")
///     .per_tenant(|p| p.extensions.get::<String>().cloned(), "100/min")
///     .refund_if(|status| status == StatusCode::NOT_MODIFIED);
///
/// // A sign-in limit that only counts failures, failing closed if the store is down.
/// let sign_in = Policy::named("sign-in")
///     .per_ip("5/min")
///     .count_only_if(|status| status == StatusCode::UNAUTHORIZED)
///     .on_store_failure(FailureMode::Closed);
/// # let _ = (auth, chat, invoices, points, tenant, sign_in);
/// ```
#[derive(Clone)]
pub struct Policy {
    pub(crate) name: Arc<str>,
    pub(crate) bucket: Option<Arc<str>>,
    pub(crate) exempt: bool,
    pub(crate) limits: Vec<LimitRule>,
    pub(crate) cost: Cost,
    pub(crate) refund_if: Option<StatusFn>,
    pub(crate) count_only_if: Option<StatusFn>,
    pub(crate) shadow: bool,
    pub(crate) on_failure: Option<FailureMode>,
    pub(crate) when_full: WhenFull,
    /// Whether a request is counted once its response is known (it is looked at before):
    /// set by [`Limiter::guard`](crate::Limiter::guard) for a policy that counts only some
    /// responses.
    pub(crate) count_after: bool,
}

/// One limit of a policy: a key and its quota.
#[derive(Clone)]
pub(crate) struct LimitRule {
    pub(crate) key: Key,
    pub(crate) quota: QuotaSource,
}

#[derive(Clone)]
pub(crate) enum QuotaSource {
    Fixed(Rate),
    PerKey(QuotaFn),
}

#[derive(Clone)]
pub(crate) enum Cost {
    Fixed(u64),
    PerRequest(CostFn),
}

impl Policy {
    /// An empty policy named `name` (the name appears in logs, in the IETF headers and, by
    /// default, in bucket names). Add limits with [`Policy::per_ip`] and the like. The
    /// name `global` is the one of [`LimiterBuilder::global`](crate::LimiterBuilder::global)'s
    /// policy: a policy of that name beside it shares its bucket, as two policies of one name
    /// do. With the same limits, that is one count (a request both apply to is charged
    /// once); with other limits, a build error
    /// ([`BuildError::SharedBucketMismatch`](crate::BuildError::SharedBucketMismatch)).
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into().into(),
            bucket: None,
            exempt: false,
            limits: Vec::new(),
            cost: Cost::Fixed(1),
            refund_if: None,
            count_only_if: None,
            shadow: false,
            on_failure: None,
            when_full: WhenFull::default(),
            count_after: false,
        }
    }

    /// Routes that are never limited (webhooks, cron callbacks): requests pass untouched,
    /// global limits included, with no rate-limit headers.
    pub fn exempt() -> Self {
        let mut policy = Self::named("exempt");
        policy.exempt = true;
        policy
    }

    /// A limit per client IP.
    pub fn per_ip(self, rate: impl Into<Rate>) -> Self {
        self.limit(Key::ip(), rate)
    }

    /// A limit per client network: [`Key::network`] (an IPv6 client's first `ipv6_prefix`
    /// bits, an IPv4 address whole), a backstop beside [`Policy::per_ip`] for clients that
    /// hold many IPv6 /64s.
    pub fn per_network(self, ipv6_prefix: u8, rate: impl Into<Rate>) -> Self {
        self.limit(Key::network(ipv6_prefix), rate)
    }

    /// A limit per signed-in user (see
    /// [`LimiterBuilder::identity`](crate::LimiterBuilder::identity)); anonymous requests
    /// skip it.
    pub fn per_user(self, rate: impl Into<Rate>) -> Self {
        self.limit(Key::user(), rate)
    }

    /// A limit per API key sent in `header` (hashed before it is stored).
    pub fn per_api_key(self, header: &str, rate: impl Into<Rate>) -> Self {
        self.limit(Key::api_key(header), rate)
    }

    /// A limit per tenant, named by `tenant` from the request.
    pub fn per_tenant<F>(self, tenant: F, rate: impl Into<Rate>) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.limit(Key::tenant(tenant), rate)
    }

    /// A limit per value of a request header (see [`Key::header`]).
    pub fn per_header(self, name: &str, rate: impl Into<Rate>) -> Self {
        self.limit(Key::header(name), rate)
    }

    /// A limit per key computed by `key` from the request, under the kind name `kind`
    /// (see [`Key::custom`]).
    pub fn per_key<F>(self, kind: &str, key: F, rate: impl Into<Rate>) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.limit(Key::custom(kind, key), rate)
    }

    /// A limit on any [`Key`] with any [`Rate`] (token bucket, fixed daily cap, exact log).
    /// Several limits may share a key kind (burst + daily cap): each has its own bucket.
    pub fn limit(mut self, key: Key, rate: impl Into<Rate>) -> Self {
        self.limits.push(LimitRule {
            key,
            quota: QuotaSource::Fixed(rate.into()),
        });
        self
    }

    /// A limit whose quota is chosen per request by `quota(key, parts)` (plan tiers:
    /// 1000 points/min on one plan, 100 on another). `None` skips the limit for that
    /// request. Changing the quota a key gets takes effect on its next request. The
    /// function is given the key's value as the request sent it; a credential from
    /// `authorization` is one bucket whatever its spelling ([`Key::api_key`]), so read its
    /// scheme case-insensitively, or a spelling the function does not know goes unlimited.
    pub fn limit_with<F>(mut self, key: Key, quota: F) -> Self
    where
        F: Fn(&str, &Parts) -> Option<Limit> + Send + Sync + 'static,
    {
        self.limits.push(LimitRule {
            key,
            quota: QuotaSource::PerKey(Arc::new(quota)),
        });
        self
    }

    /// Share budgets with every policy using the same bucket name (sign-in, forgot
    /// password and reset password spending one `auth` bucket). Policies sharing a
    /// bucket must declare the same limits.
    pub fn bucket(mut self, name: impl Into<String>) -> Self {
        self.bucket = Some(name.into().into());
        self
    }

    /// What a bounded store (the memory store, and the fallback's memory) does with a new
    /// key of this policy's buckets when their share of the store is full of keys at their
    /// limit: refuse it (the default: a client being limited always stays limited, however
    /// many keys others invent) or evict the least recently seen limited keys (new keys are
    /// always served; a flood of invented keys can free a limited one). See [`WhenFull`].
    pub fn when_full(mut self, mode: WhenFull) -> Self {
        self.when_full = mode;
        self
    }

    /// What a request costs in every bucket of this policy (points); at least 1.
    pub fn cost(mut self, points: u64) -> Self {
        self.cost = Cost::Fixed(points);
        self
    }

    /// The cost of each request, from the request (0 is counted as 1).
    pub fn cost_fn<F>(mut self, cost: F) -> Self
    where
        F: Fn(&Parts) -> u64 + Send + Sync + 'static,
    {
        self.cost = Cost::PerRequest(Arc::new(cost));
        self
    }

    /// Give the charge back when the response's status satisfies `refund` (so that a
    /// `304 Not Modified` does not count).
    ///
    /// What is given back is this request's own charge, from where it was counted
    /// ([`Op::RefundAt`](tollgate_limits::Op::RefundAt)): a response that comes after its
    /// fixed window ended gives nothing back in the next one, and a token bucket gets back
    /// its charge less the time the request took (a response slower than one token's time
    /// gives nothing back). So a slow response never frees room that requests charged after
    /// it took. A request that gets no response (the client went away, a timeout further
    /// out gave up on it) keeps its charge, on every store: only a response whose status
    /// satisfies `refund` gives it back. An inner service's error (a `LoadShed`'s
    /// `Overloaded` inside the limiter) is judged as the `500` it ends as: `refund_if(|s|
    /// s.is_server_error())` gives it back.
    ///
    /// Until then the charge counts: each request reserves its cost while it runs, and on
    /// Redis until the refund's own round trip is answered. So requests in flight that
    /// will be given back can refuse others meanwhile (a review sent a tenant's 300
    /// conditional and 100 plain requests at once over 200 connections to seed 003 on
    /// Redis: 75 to 80 of the plain ones were admitted, where the limit left room for all
    /// 100; on memory, 100). [`Policy::count_only_if`] reserves the same way; a guard's
    /// policy ([`Limiter::guard`](crate::Limiter::guard)) does not: it looks before and
    /// counts after, so requests in flight together may all be admitted past the limit.
    /// A status both `refund` and [`Policy::count_only_if`] say yes to is a build error
    /// ([`BuildError::RefundedAndCounted`](crate::BuildError::RefundedAndCounted)).
    pub fn refund_if<F>(mut self, refund: F) -> Self
    where
        F: Fn(StatusCode) -> bool + Send + Sync + 'static,
    {
        self.refund_if = Some(Arc::new(refund));
        self
    }

    /// Count only responses whose status satisfies `counts` (a sign-in limit that counts
    /// only `401`s). A request is still refused while the budget is spent; each request
    /// reserves its cost while it runs, and the charge is given back when its response
    /// does not count. (A guard's policy, [`Limiter::guard`](crate::Limiter::guard),
    /// reserves nothing: it looks before the request and counts the response after.) A
    /// request that gets no response (its future dropped: the client went away, a timeout
    /// further out gave up) counts for nothing either; an inner service's error counts as
    /// the `500` it ends as. A panic is no response through the layer (the inner service's
    /// `call` or its future panicked), unless a layer that catches panics
    /// (`tower_http::catch_panic`) sits inside the limiter: the limiter then sees its `500`,
    /// which counts if `counts` says so. On a store that answers through a
    /// future (Redis), what they reserved is given back on the Tokio runtime the request
    /// ran on (a runtime shutting down drops such a give-back: what it reserved stays
    /// counted for its window, erring towards refusing). So answer failures as fast as
    /// successes: a handler that delays its `401`s (a sleep against guessing) tells a
    /// client that gives up early that it failed, and that attempt goes uncounted.
    pub fn count_only_if<F>(mut self, counts: F) -> Self
    where
        F: Fn(StatusCode) -> bool + Send + Sync + 'static,
    {
        self.count_only_if = Some(Arc::new(counts));
        self
    }

    /// Dry run: count, log what would be refused (and count it in
    /// [`LimiterStats::would_refuse`](crate::LimiterStats)), refuse nothing. A shadow
    /// policy's buckets write no rate-limit headers: a client is not told of a limit that
    /// is not enforced.
    pub fn shadow(mut self) -> Self {
        self.shadow = true;
        self
    }

    /// What to do when the store cannot answer (see [`FailureMode`]): `Fallback` (the
    /// default) lets the store answer from memory; `Open` admits without rate-limit
    /// headers; `Closed` answers `503 Service Unavailable`.
    pub fn on_store_failure(mut self, mode: FailureMode) -> Self {
        self.on_failure = Some(mode);
        self
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether requests under this policy pass unlimited.
    pub fn is_exempt(&self) -> bool {
        self.exempt
    }

    /// The name bucket state is kept under.
    pub(crate) fn bucket_name(&self) -> &Arc<str> {
        self.bucket.as_ref().unwrap_or(&self.name)
    }

    /// Requests that fail authentication, per client IP: a policy named `failed-auth` that
    /// counts only `401 Unauthorized` responses (no credentials, or unknown ones). Meant for
    /// [`Limiter::guard`](crate::Limiter::guard), placed outside the authentication layer,
    /// so that guessing API keys or tokens is throttled like any other abuse:
    ///
    /// ```
    /// # use tollgate::{Limiter, Policy};
    /// # let limiter = Limiter::builder().build()?;
    /// # let authenticate = tower::layer::util::Identity::new();
    /// let app = axum::Router::new()
    ///     // ... routes ...
    ///     .layer(limiter.layer())                                      // per tenant, after auth
    ///     .layer(authenticate)                                         // answers 401
    ///     .layer(limiter.guard(Policy::failed_auth_per_ip("20/min"))); // runs first
    /// # let _: axum::Router = app;
    /// # Ok::<(), tollgate::BuildError>(())
    /// ```
    ///
    /// A guard looks at the IP's count before a request runs and counts the request once
    /// its answer is a 401 (see [`Limiter::guard`](crate::Limiter::guard)), so
    /// authenticated clients spend nothing, and however many of their requests are in
    /// flight at once, none is refused for another's sake. Once an IP's failures reach the
    /// limit, every request from it is refused (429, with the usual headers and
    /// `Retry-After`) until the window lets one through, authenticated or not: the guard
    /// runs before credentials are checked.
    ///
    /// Requests sent together are let run no more at once than the IP has failures left
    /// (per process): the others wait for a place, and look again once one of those
    /// running is answered (and counted, if it failed). So guesses sent together are
    /// answered no more than the limit (a review had 300 of 300 answered at once against
    /// 20 a minute before), and a client's valid requests all run, that many at a time. When
    /// no place of a key was given up for 2 s (its places held by long requests: long
    /// polls, slow uploads, several users behind one address), a request that waited 2 s
    /// may run as one more than the key has left, one such at a time: the client's other
    /// requests run one after another rather than wait for a long one to end (a failure
    /// among them leaves fewer than run, and the rest wait again). Failures answered stay
    /// within the limit, or one more where failures themselves take 2 s to be answered. A
    /// fleet of N instances lets N times the failures left run at once.
    ///
    /// Its store-failure mode is [`FailureMode::Fallback`] whatever the limiter's default (a
    /// limiter set to fail open would otherwise let guessing run at full speed through an
    /// outage): on a store with a fallback it keeps counting in memory.
    ///
    /// When its share of a bounded store (the memory store's `max_entries` per bucket name)
    /// is full of addresses at their limit, it evicts the least recently seen of them for a
    /// new address ([`WhenFull::EvictLimited`]) instead of refusing the new one: the guard
    /// runs before credentials are checked, so refusing every address it has not seen would
    /// let a flood of failing addresses turn every new client away, valid credentials or
    /// not. An address still guessing is seen recently and stays limited.
    ///
    /// An IPv6 client is counted by its /64 ([`ClientIp::ipv6_prefix`](crate::ClientIp::ipv6_prefix)),
    /// and one that holds a /48 holds 65,536 of them: add a limit per network beside it
    /// (`.per_network(48, "100/min")`, [`Key::network`]) to bound what such a holder
    /// guesses in all.
    pub fn failed_auth_per_ip(rate: impl Into<Rate>) -> Self {
        Self::named("failed-auth")
            .per_ip(rate)
            .count_only_if(|status| status == StatusCode::UNAUTHORIZED)
            .on_store_failure(FailureMode::Fallback)
            .when_full(WhenFull::EvictLimited)
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Policy");
        d.field("name", &self.name);
        if self.exempt {
            d.field("exempt", &true);
        }
        if let Some(bucket) = &self.bucket {
            d.field("bucket", bucket);
        }
        let limits: Vec<String> = self
            .limits
            .iter()
            .map(|l| match &l.quota {
                QuotaSource::Fixed(rate) => format!("{} {rate:?}", l.key.kind()),
                QuotaSource::PerKey(_) => format!("{} per-key quota", l.key.kind()),
            })
            .collect();
        d.field("limits", &limits);
        match &self.cost {
            Cost::Fixed(n) => d.field("cost", n),
            Cost::PerRequest(_) => d.field("cost", &"fn"),
        };
        d.field("shadow", &self.shadow).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A policy tells its name and whether it is exempt; its debug output lists its name,
    /// bucket, limits and cost (and `exempt` only for an exempt policy).
    #[test]
    fn name_exemption_and_debug() {
        let invoices = Policy::named("invoices")
            .bucket("billing")
            .limit(Key::api_key("x-api-key"), Rate::token_bucket("100/min", 20))
            .per_ip("12/fortnight")
            .limit_with(Key::ip(), |_, _| None)
            .cost(5)
            .shadow();
        assert_eq!(invoices.name(), "invoices");
        assert!(!invoices.is_exempt());
        let debug = format!("{invoices:?}");
        assert!(
            debug.starts_with(
                "Policy { name: \"invoices\", bucket: \"billing\", limits: \
                 [\"api_key Rate(100/min burst 20)\", \"ip Rate(invalid \\\"12/fortnight\\\": "
            ),
            "{debug}"
        );
        assert!(
            debug.ends_with("\"ip per-key quota\"], cost: 5, shadow: true, .. }"),
            "{debug}"
        );

        let exempt = Policy::exempt();
        assert_eq!(exempt.name(), "exempt");
        assert!(exempt.is_exempt());
        assert_eq!(
            format!("{exempt:?}"),
            "Policy { name: \"exempt\", exempt: true, limits: [], cost: 1, shadow: false, .. }"
        );
        let per_request = Policy::named("points").cost_fn(|_| 3);
        assert_eq!(
            format!("{per_request:?}"),
            "Policy { name: \"points\", limits: [], cost: \"fn\", shadow: false, .. }"
        );
    }
}
