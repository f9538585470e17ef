//! One request's buckets: which policies apply, each limit's key, the per-key overrides.
//! Builds the store keys in place (no allocation for keys that fit inline) and resolves
//! each kind of key at most once per request.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use http::request::Parts;
use smallvec::SmallVec;
use tollgate_limits::{Bucket, FailureMode, Op, StoreKey};

use super::compile::{Compiled, CompiledQuota};
use super::{Engine, Overrides};
use crate::client_ip::{peer_addr, push_address_key};
use crate::key::{push_store_key, Key, Source};
use crate::observe::BucketMetrics;
use crate::policy::Cost;

/// How many buckets a request may have before its plan allocates.
pub(crate) const INLINE: usize = 4;

/// The buckets of one request and where each came from. `G` is how a policy is held:
/// borrowed from the engine while the request is decided at once, owned (`Arc`) when the
/// decision waits on the store.
pub(crate) struct Plan<G> {
    /// The policies spent, the route's class (or per-route policy) first.
    pub(crate) groups: SmallVec<[G; 3]>,
    /// The buckets, in the order the store answers them.
    pub(crate) buckets: SmallVec<[Bucket; INLINE]>,
    /// One per bucket: where it came from.
    pub(crate) meta: SmallVec<[Meta; INLINE]>,
    /// The strictest failure mode of the policies with a bucket in the plan.
    pub(crate) on_failure: FailureMode,
}

/// Where a bucket of a plan came from.
#[derive(Clone)]
pub(crate) struct Meta {
    /// The index of its policy in [`Plan::groups`].
    pub(crate) group: u8,
    /// The index of its limit in that policy, or [`OVERRIDE`].
    pub(crate) limit: u8,
    /// Its bit among the limits a `RateLimit-Policy` value is cached by (the class's
    /// limits, then the global policies'), when its quota is the compiled one.
    pub(crate) bit: Option<u8>,
    /// For an override: its label (`override:<kind>`).
    pub(crate) label: Option<Arc<str>>,
}

/// [`Meta::limit`] of a per-key override's bucket.
pub(crate) const OVERRIDE: u8 = u8::MAX;

impl<G> Plan<G> {
    /// A plan without buckets.
    pub(crate) fn new() -> Self {
        Plan {
            groups: SmallVec::new(),
            buckets: SmallVec::new(),
            meta: SmallVec::new(),
            on_failure: FailureMode::Open,
        }
    }
}

impl<G: AsRef<Compiled>> Plan<G> {
    /// The policy of bucket `i`.
    pub(crate) fn policy(&self, i: usize) -> &Compiled {
        self.groups[usize::from(self.meta[i].group)].as_ref()
    }

    /// How the store is asked before the request runs: [`Op::Peek`] when every bucket's
    /// policy counts after the response (a guard's failures), else [`Op::Charge`].
    pub(crate) fn op(&self) -> Op {
        let count_after =
            !self.buckets.is_empty() && (0..self.buckets.len()).all(|i| self.policy(i).count_after);
        if count_after {
            Op::Peek
        } else {
            Op::Charge
        }
    }

    /// Whether bucket `i` is a dry run.
    pub(crate) fn shadow(&self, i: usize) -> bool {
        self.policy(i).shadow
    }

    /// The name bucket `i` shows in logs and headers (`default:ip`, `override:api_key`).
    pub(crate) fn label(&self, i: usize) -> &str {
        self.label_arc(i)
    }

    /// [`Plan::label`], as the shared string it is kept in.
    pub(crate) fn label_arc(&self, i: usize) -> &Arc<str> {
        let meta = &self.meta[i];
        match &meta.label {
            Some(label) => label,
            None => &self.policy(i).limits[usize::from(meta.limit)].bucket,
        }
    }

    /// The metrics of bucket `i`.
    pub(crate) fn metrics(&self, i: usize) -> Option<&BucketMetrics> {
        let meta = &self.meta[i];
        let policy = self.policy(i);
        match meta.label {
            Some(_) => policy.override_bucket(self.kind(i)).map(|o| &o.metrics),
            None => Some(&policy.limits[usize::from(meta.limit)].metrics),
        }
    }

    /// A response counted after the request (`Op::Penalize`, answered with `states` for
    /// the buckets at `at`): admitted, as a charge is, in `stats` and each bucket's
    /// metrics.
    pub(crate) fn count_response(
        &self,
        stats: &super::Counters,
        at: impl Iterator<Item = usize>,
        states: &[tollgate_limits::BucketState],
    ) {
        stats
            .admitted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if crate::observe::ENABLED {
            for (i, state) in at.zip(states) {
                if let Some(metrics) = self.metrics(i) {
                    metrics.admitted(state);
                }
            }
        }
    }

    /// [`Plan::label`], interned (see [`intern`](super::compile::intern)).
    pub(crate) fn static_label(&self, i: usize) -> &'static str {
        let meta = &self.meta[i];
        let policy = self.policy(i);
        match meta.label {
            Some(_) => policy.override_bucket(self.kind(i)).map_or("", |o| o.label),
            None => policy.limits[usize::from(meta.limit)].static_bucket,
        }
    }

    /// The key kind of bucket `i`.
    pub(crate) fn kind(&self, i: usize) -> &str {
        let meta = &self.meta[i];
        let policy = self.policy(i);
        match meta.label.as_deref() {
            Some(label) => label.strip_prefix("override:").unwrap_or(label),
            None => policy.limits[usize::from(meta.limit)].key.kind(),
        }
    }
}

/// How a plan holds a policy: borrowed from the engine, or owned.
pub(crate) trait Group: AsRef<Compiled> {
    /// The policy, owned.
    fn arc(&self) -> Arc<Compiled>;
}

impl Group for &Arc<Compiled> {
    fn arc(&self) -> Arc<Compiled> {
        Arc::clone(self)
    }
}

impl Group for Arc<Compiled> {
    fn arc(&self) -> Arc<Compiled> {
        self.clone()
    }
}

impl<G: Group> Plan<G> {
    /// The same plan, holding its policies.
    pub(crate) fn owned(&self) -> Plan<Arc<Compiled>> {
        Plan {
            groups: self.groups.iter().map(Group::arc).collect(),
            buckets: self.buckets.clone(),
            meta: self.meta.clone(),
            on_failure: self.on_failure,
        }
    }
}

/// A key's value in one request.
enum Value<'a> {
    Text(&'a str),
    /// What [`push_store_key`] keeps as it is when the key is not hashed (printable ASCII,
    /// no braces, no leading `#`, short): a client address's key as [`push_address_key`]
    /// wrote it (digits, hex, `.`, `:`, `/`; or `unknown-peer`), the global key (`all`).
    Kept(&'a [u8]),
    Bytes(&'a [u8]),
    Owned(String),
}

impl Value<'_> {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Value::Text(t) => t.as_bytes(),
            Value::Bytes(b) | Value::Kept(b) => b,
            Value::Owned(s) => s.as_bytes(),
        }
    }

    /// The value as text (what per-key quota functions see).
    fn text(&self) -> Cow<'_, str> {
        match self {
            Value::Text(t) => Cow::Borrowed(t),
            Value::Bytes(b) | Value::Kept(b) => String::from_utf8_lossy(b),
            Value::Owned(s) => Cow::Borrowed(s),
        }
    }
}

/// The keys of one request, each resolved at most once.
struct Keys<'a, 'p> {
    engine: &'a Engine,
    parts: &'p Parts,
    /// The client address (`None` inside: the request has no peer address).
    addr: Option<Option<IpAddr>>,
    /// The address keys made, each with the IPv6 prefix it folds to (one per prefix).
    addresses: SmallVec<[(u8, StoreKey); 2]>,
    user: Option<Option<String>>,
}

impl<'a, 'p> Keys<'a, 'p> {
    fn value<'k>(&'k mut self, key: &'k Key) -> Option<Value<'k>> {
        let value = match &key.source {
            Source::Ip | Source::Network(_) => {
                let addr = self.addr();
                let network = key.source.address_network().flatten();
                let prefix = self.engine.client_ip.prefix(network);
                let made = match self.addresses.iter().position(|(p, _)| *p == prefix) {
                    Some(i) => i,
                    // (Written where it is kept: a key made apart is 64 bytes to copy in.)
                    None => {
                        self.addresses.push((prefix, StoreKey::new()));
                        let at = self.addresses.len() - 1;
                        push_key_of_address(addr, prefix, &mut self.addresses[at].1);
                        at
                    }
                };
                Value::Kept(self.addresses[made].1.as_bytes())
            }
            Source::User => {
                let (engine, parts) = (self.engine, self.parts);
                let identity = engine.identity.as_ref()?;
                Value::Text(
                    self.user
                        .get_or_insert_with(|| {
                            let user = identity(parts);
                            engine.note_identity(user.is_some());
                            user
                        })
                        .as_deref()?,
                )
            }
            Source::Global => Value::Kept(GLOBAL_KEY),
            Source::Header(Ok(name)) => Value::Bytes(self.parts.headers.get(name)?.as_bytes()),
            Source::Header(Err(_)) => return None,
            Source::Custom(f) => Value::Owned(f(self.parts)?),
        };
        (!value.as_bytes().is_empty()).then_some(value)
    }

    /// The client address, resolved once; a request without a peer address is reported
    /// once ([`Engine::note_no_peer`]).
    fn addr(&mut self) -> Option<IpAddr> {
        let (engine, parts) = (self.engine, self.parts);
        *self.addr.get_or_insert_with(|| {
            let addr = engine
                .client_ip
                .resolve(peer_addr(&parts.extensions), &parts.headers);
            if addr.is_none() {
                engine.note_no_peer();
            }
            addr
        })
    }
}

/// The key of the global limits' one bucket.
const GLOBAL_KEY: &[u8] = b"all";

/// [`push_key_of_address`] into a key of its own.
#[cfg(test)]
fn address_key(addr: Option<IpAddr>, prefix: u8) -> StoreKey {
    let mut key = StoreKey::new();
    push_key_of_address(addr, prefix, &mut key);
    key
}

/// Appends to `key` the key of client address `addr`, IPv6 folded to `prefix` bits;
/// without one, the one key every request without a peer address shares.
fn push_key_of_address(addr: Option<IpAddr>, prefix: u8, key: &mut StoreKey) {
    match addr {
        Some(ip) => push_address_key(ip, prefix, key),
        None => key.push_str("unknown-peer"),
    }
}

impl Engine {
    /// The per-key overrides, if there are any: nothing is loaded before one was ever set.
    pub(crate) fn overrides(&self) -> Option<arc_swap::Guard<Arc<Overrides>>> {
        self.overrides
            .if_changed()
            .filter(|overrides| !overrides.is_empty())
    }

    /// The buckets `policies` (the class or per-route policy, then the global ones) charge
    /// for this request, into an empty `plan` the caller holds (a plan is several hundred
    /// bytes, which returning it would copy): each limit whose key the request has, at the
    /// policy's cost, plus the per-key overrides of those keys. A bucket two policies share
    /// is charged once.
    pub(crate) fn plan_into<'a>(
        &'a self,
        parts: &Parts,
        policies: impl Iterator<Item = &'a Arc<Compiled>>,
        plan: &mut Plan<&'a Arc<Compiled>>,
    ) {
        let mut keys = Keys {
            engine: self,
            parts,
            addr: None,
            addresses: SmallVec::new(),
            user: None,
        };
        let overrides = self.overrides();
        let mut bit = 0usize;
        for policy in policies.filter(|p| !p.exempt) {
            let group = plan.groups.len() as u8;
            plan.groups.push(policy);
            let cost = match &policy.cost {
                Cost::Fixed(n) => *n,
                Cost::PerRequest(f) => f(parts).max(1),
            };
            let before = plan.buckets.len();
            for (l, limit) in policy.limits.iter().enumerate() {
                let this_bit = bit;
                bit += 1;
                let Some(value) = keys.value(&limit.key) else {
                    continue;
                };
                let (quota, fixed) = match &limit.quota {
                    CompiledQuota::Fixed(q) => (*q, true),
                    CompiledQuota::PerKey(f) => match f(&value.text(), parts) {
                        Some(q) => (q, false),
                        None => continue,
                    },
                };
                let mut key = limit.key_prefix.clone();
                let key_at = key.len();
                // The value as sent goes to a per-key quota function; the store keeps what
                // the key reads in it (a credential, whatever its spelling).
                match value {
                    // Kept as it is, without looking at each byte again.
                    Value::Kept(kept) if !limit.key.hashed => {
                        key.push_ascii(kept);
                    }
                    _ => {
                        let read = limit.key.read_credential(value.as_bytes());
                        let stored = read.as_deref().map_or(value.as_bytes(), str::as_bytes);
                        push_store_key(stored, limit.key.hashed, &mut key);
                    }
                }
                // (Its cost and `WhenFull` set in place: the builder methods take and return
                // the bucket, a copy of its 120 bytes each.)
                let mut bucket = Bucket::from_key(key, limit.bucket.len(), quota);
                bucket.cost = cost;
                bucket.when_full = limit.when_full;
                let bit = (fixed && this_bit < 8).then_some(this_bit as u8);
                let over = overrides.as_ref().and_then(|overrides| {
                    let stored = &bucket.key[key_at..];
                    overrides.get(limit.key.kind(), stored).map(|l| {
                        let label: Arc<str> = format!("override:{}", limit.key.kind()).into();
                        let bucket = Bucket::new(&label, stored, l)
                            .with_cost(cost)
                            .with_when_full(limit.when_full);
                        (bucket, label)
                    })
                });
                plan.push(
                    bucket,
                    Meta {
                        group,
                        limit: l as u8,
                        bit,
                        label: None,
                    },
                );
                if let Some((bucket, label)) = over {
                    plan.push(
                        bucket,
                        Meta {
                            group,
                            limit: OVERRIDE,
                            bit: None,
                            label: Some(label),
                        },
                    );
                }
            }
            if plan.buckets.len() > before {
                plan.on_failure = stricter(plan.on_failure, policy.on_failure);
            }
        }
        // The first policy's `RateLimit-Policy` values are cached by a bit per limit laid
        // out for its own limits and then the global ones. A request that spends another
        // class too (a path read two ways) numbers its limits otherwise: its value is not
        // taken from that cache nor put in it, or the slot of another set of buckets would
        // show this request's (and that set the other's, for the life of the process).
        let laid_out = plan
            .groups
            .first()
            .is_some_and(|first| Some(first.policy_values.len()) == 1usize.checked_shl(bit as u32));
        if !laid_out {
            for meta in &mut plan.meta {
                meta.bit = None;
            }
        }
    }
}

impl<G> Plan<G> {
    /// Adds a bucket, unless the request already spends it (a global policy sharing a
    /// bucket name with the class, an override two limits of one key kind share, or the
    /// two classes of a path read two ways that share a bucket). A bucket spent twice is
    /// charged once, at the higher of the two costs: a request is limited at least as
    /// strictly as the route that serves it, whichever reading came first.
    fn push(&mut self, bucket: Bucket, meta: Meta) {
        if let Some(held) = self.buckets.iter_mut().find(|b| b.key == bucket.key) {
            held.cost = held.cost.max(bucket.cost);
            return;
        }
        self.buckets.push(bucket);
        self.meta.push(meta);
    }
}

/// Closed beats Fallback beats Open.
pub(crate) fn stricter(a: FailureMode, b: FailureMode) -> FailureMode {
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use http::Request;

    use crate::{Key, Limiter, Policy};

    fn parts(uri: &str, user: Option<&str>) -> http::request::Parts {
        let mut req = Request::get(uri);
        if let Some(user) = user {
            req = req.header("x-user", user);
        }
        let (mut parts, ()) = req.body(()).unwrap().into_parts();
        parts
            .extensions
            .insert(SocketAddr::from(([203, 0, 113, 7], 4000)));
        parts
    }

    /// An address key and the global key go into the store key as they are: what
    /// `push_store_key` makes of them when they are not hashed, for every form
    /// `push_address_key` writes.
    #[test]
    fn kept_keys_are_stored_as_they_are() {
        let global = super::GLOBAL_KEY;
        assert_eq!(crate::key::store_key(global, false).as_bytes(), global);
        let addresses: [std::net::IpAddr; 5] = [
            [203, 0, 113, 7].into(),
            [0, 0, 0, 0].into(),
            [255, 255, 255, 255].into(),
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
            "64:ff9b::c000:207".parse().unwrap(),
        ];
        for ip in addresses {
            for prefix in [0, 48, 64, 127, 128] {
                let key = super::address_key(Some(ip), prefix);
                assert_eq!(crate::key::store_key(key.as_bytes(), false), key.as_str());
            }
        }
        let unknown = super::address_key(None, 64);
        assert_eq!(
            crate::key::store_key(unknown.as_bytes(), false),
            unknown.as_str()
        );
    }

    /// The plan of the request of `parts` for `policies`.
    fn plan_of<'a>(
        engine: &'a super::Engine,
        parts: &http::request::Parts,
        policies: impl Iterator<Item = &'a std::sync::Arc<super::Compiled>>,
    ) -> super::Plan<&'a std::sync::Arc<super::Compiled>> {
        let mut plan = super::Plan::new();
        engine.plan_into(parts, policies, &mut plan);
        plan
    }

    fn limiter() -> Limiter {
        Limiter::builder()
            .identity(|p| {
                p.headers
                    .get("x-user")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from)
            })
            .route(
                "/api/*",
                Policy::named("default")
                    .per_ip("500/min")
                    .per_user("10000/h"),
            )
            .global_policy(Policy::named("global").limit(Key::global(), "1000/min"))
            .build()
            .unwrap()
    }

    #[test]
    fn a_plan_names_every_bucket_and_skips_absent_keys() {
        let limiter = limiter();
        let engine = &limiter.engine;
        let table = engine.table.load();
        let class = table.classes.classify(&http::Method::GET, "/api/x");
        let anonymous = parts("/api/x", None);
        let plan = plan_of(engine, &anonymous, class.into_iter().chain(&table.globals));
        let keys: Vec<&str> = plan.buckets.iter().map(|b| b.key.as_str()).collect();
        assert_eq!(keys, ["default:ip:203.0.113.7", "global:all"]);
        assert_eq!(plan.buckets[0].name(), "default:ip");
        assert_eq!(plan.label(1), "global");
        // Bits: default's two limits first, then the global's.
        assert_eq!(plan.meta[0].bit, Some(0));
        assert_eq!(plan.meta[1].bit, Some(2));

        let signed_in = parts("/api/x", Some("u_42"));
        let plan = plan_of(engine, &signed_in, class.into_iter().chain(&table.globals));
        let keys: Vec<&str> = plan.buckets.iter().map(|b| b.key.as_str()).collect();
        assert_eq!(
            keys,
            ["default:ip:203.0.113.7", "default:user:u_42", "global:all"]
        );
        assert_eq!(plan.kind(1), "user");
    }

    /// `PATCH /v1/contacts/%2e%2e` reads as `/v1` (a `/v1/*` route, 1 point) and, as
    /// received, as `/v1/contacts/{id}` (3 points): both classes share one bucket, which is
    /// charged once, at 3 (it kept the first reading's 1).
    #[test]
    fn a_bucket_two_classes_share_is_charged_the_higher_cost() {
        let points = Policy::named("points").per_ip("1000/min");
        let limiter = Limiter::builder()
            .route("/v1/*", points.clone().cost(1))
            .route("PATCH /v1/contacts/{id}", points.cost(3))
            .build()
            .unwrap();
        let engine = &limiter.engine;
        let table = engine.table.load();
        for path in ["/v1/contacts/%2e%2e", "/v1/contacts/%2E", "/v1/contacts/7"] {
            let p = parts(path, None);
            let classes = table.classes.classify_all(&http::Method::PATCH, path);
            let plan = plan_of(engine, &p, classes.into_iter());
            let charged: Vec<(&str, u64)> = plan
                .buckets
                .iter()
                .map(|b| (b.key.as_str(), b.cost))
                .collect();
            assert_eq!(charged, [("points:ip:203.0.113.7", 3)], "{path}");
        }
    }

    #[test]
    fn overrides_add_a_bucket_for_their_key() {
        let limiter = limiter();
        limiter
            .set_override(&Key::ip(), "203.0.113.7", "5/min")
            .unwrap();
        let engine = &limiter.engine;
        let table = engine.table.load();
        let class = table.classes.classify(&http::Method::GET, "/api/x");
        let p = parts("/api/x", None);
        let plan = plan_of(engine, &p, class.into_iter().chain(&table.globals));
        let keys: Vec<&str> = plan.buckets.iter().map(|b| b.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "default:ip:203.0.113.7",
                "override:ip:203.0.113.7",
                "global:all"
            ]
        );
        assert_eq!(plan.label(1), "override:ip");
        assert_eq!(plan.kind(1), "ip");
    }

    #[test]
    fn an_ipv6_override_applies_to_the_clients_network() {
        let limiter = limiter();
        limiter
            .set_override(&Key::ip(), "2001:db8:1:2::9", "5/min")
            .unwrap();
        let engine = &limiter.engine;
        let table = engine.table.load();
        let class = table.classes.classify(&http::Method::GET, "/api/x");
        let mut p = parts("/api/x", None);
        p.extensions
            .insert("[2001:db8:1:2::1]:4000".parse::<SocketAddr>().unwrap());
        let plan = plan_of(engine, &p, class.into_iter().chain(&table.globals));
        let keys: Vec<&str> = plan.buckets.iter().map(|b| b.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "default:ip:2001:db8:1:2::/64",
                "override:ip:2001:db8:1:2::/64",
                "global:all"
            ]
        );
        assert!(limiter.remove_override(&Key::ip(), "2001:db8:1:2::9"));
    }
}
