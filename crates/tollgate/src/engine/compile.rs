//! Policies checked and compiled once, when the limiter is built: bucket names, key kinds,
//! and the constant parts of the rate-limit headers, so a request only fills in numbers.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};

use http::HeaderValue;
use tollgate_limits::{Bucket, FailureMode, Limit, Op, Quota, Sampled, StoreKey, WhenFull};

use crate::classify::{RoutePattern, RouteTable};
use crate::error::BuildError;
use crate::key::{Key, Source};
use crate::observe::BucketMetrics;
use crate::policy::{Cost, Policy, QuotaFn, QuotaSource, StatusFn};
use crate::respond::{number, sf};

/// Settings every policy inherits unless it says otherwise.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Defaults {
    pub(crate) shadow: bool,
    pub(crate) on_failure: FailureMode,
    /// Whether the limiter's per-key overrides apply to its policies (a guard's limiter
    /// has none: its policies get no override buckets, nor their metrics series).
    pub(crate) overrides: bool,
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
    /// The name, interned: what a request's decision carries without touching a shared
    /// reference count.
    pub(crate) static_name: &'static str,
    pub(crate) exempt: bool,
    pub(crate) limits: Vec<CompiledLimit>,
    pub(crate) cost: Cost,
    pub(crate) refund_if: Option<StatusFn>,
    pub(crate) count_only_if: Option<StatusFn>,
    /// Whether a request is looked at before it runs and counted once its response counts
    /// (a guard's failures), instead of charged before and given back.
    pub(crate) count_after: bool,
    pub(crate) shadow: bool,
    pub(crate) on_failure: FailureMode,
    /// Whether the warning about a per-route policy charged by the central class first
    /// was logged (once per policy).
    pub(crate) warned_central: AtomicBool,
    /// Whether the warning about a per-route policy's layer passing a request another
    /// per-route policy's layer took was logged (once per policy).
    pub(crate) warned_outer: AtomicBool,
    /// Refusal events logged (Unix ms).
    pub(crate) refusals_logged: Sampled,
    /// `RateLimit-Policy` values by which of this policy's and the global policies' limits
    /// a response shows (a bit per limit, this policy's first), made on first use.
    pub(crate) policy_values: Box<[OnceLock<HeaderValue>]>,
    /// The per-key override buckets of this policy's key kinds (`override:<kind>`), one
    /// per kind.
    pub(crate) overrides: Vec<OverrideBucket>,
}

impl Compiled {
    /// Whether a response may give this policy's charge back.
    pub(crate) fn may_refund(&self) -> bool {
        self.refund_if.is_some() || self.count_only_if.is_some()
    }

    /// Whether the charge is given back for a response of `status`.
    pub(crate) fn refunds(&self, status: http::StatusCode) -> bool {
        self.refund_if.as_ref().is_some_and(|f| f(status))
            || self.count_only_if.as_ref().is_some_and(|f| !f(status))
    }

    /// What a response of `status` does to a bucket of this policy: give its charge back
    /// ([`Op::Refund`]), count it now that it counts ([`Op::Penalize`], for a policy that
    /// counts after), or nothing.
    ///
    /// `None` is a request that got no response (its future was dropped: a client that
    /// went away, a timeout further out): it counts for no policy that counts only some
    /// responses, so their reservation is given back; a policy that gives back some
    /// responses' charge keeps it. (An inner service's error is a `500`.)
    pub(crate) fn after_response(&self, status: Option<http::StatusCode>) -> Option<Op> {
        let Some(status) = status else {
            return (!self.count_after && self.count_only_if.is_some()).then_some(Op::Refund);
        };
        if self.count_after {
            (!self.refunds(status)).then_some(Op::Penalize)
        } else {
            self.refunds(status).then_some(Op::Refund)
        }
    }

    /// Whether a response of `status` (`None`: none) counts against this policy's buckets:
    /// a guard's when it counts it after the response, a charged policy's unless it gives
    /// its charge back for it.
    pub(crate) fn counts(&self, status: Option<http::StatusCode>) -> bool {
        match self.after_response(status) {
            Some(op) => op == Op::Penalize,
            None => !self.count_after,
        }
    }

    /// The override bucket of key kind `kind`.
    pub(crate) fn override_bucket(&self, kind: &str) -> Option<&OverrideBucket> {
        self.overrides.iter().find(|o| &*o.kind == kind)
    }
}

/// The per-key override bucket of one key kind of a policy.
pub(crate) struct OverrideBucket {
    pub(crate) kind: Arc<str>,
    /// `override:<kind>`, interned.
    pub(crate) label: &'static str,
    pub(crate) metrics: BucketMetrics,
}

pub(crate) struct CompiledLimit {
    pub(crate) key: Key,
    pub(crate) quota: CompiledQuota,
    /// The bucket name in the store and in headers: `<bucket>:<kind>[#n]`.
    pub(crate) bucket: Arc<str>,
    /// The bucket name, interned.
    pub(crate) static_bucket: &'static str,
    /// `<bucket>:`, the start of each of its store keys, written once.
    pub(crate) key_prefix: StoreKey,
    /// The bucket name as a structured-field string (`"default-ip"`), for the IETF fields.
    pub(crate) sf_name: Box<str>,
    /// `"default-ip";q=500;w=60`: this limit's `RateLimit-Policy` item (fixed quotas).
    pub(crate) policy_item: Option<Box<str>>,
    /// The quota's count as an `X-RateLimit-Limit` value (fixed quotas).
    pub(crate) limit_value: Option<HeaderValue>,
    pub(crate) when_full: WhenFull,
    /// Its metrics (registered once, here).
    pub(crate) metrics: BucketMetrics,
}

pub(crate) enum CompiledQuota {
    Fixed(Limit),
    PerKey(QuotaFn),
}

impl CompiledQuota {
    /// The limit, when it is the same for every key.
    pub(crate) fn fixed(&self) -> Option<Limit> {
        match self {
            CompiledQuota::Fixed(limit) => Some(*limit),
            CompiledQuota::PerKey(_) => None,
        }
    }
}

/// `name` for the life of the process, shared by every policy that uses it: a
/// configuration name (policy, bucket, override label), interned when a policy is compiled,
/// so a request's decision carries it without touching a reference count shared by every
/// thread. Each distinct name is kept once (configuration names are few and short).
pub(crate) fn intern(name: &str) -> &'static str {
    static NAMES: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut names = super::lock(&NAMES);
    let names = names.get_or_insert_with(HashSet::new);
    if let Some(&interned) = names.get(name) {
        return interned;
    }
    let interned: &'static str = Box::leak(name.into());
    names.insert(interned);
    interned
}

/// The name per-key overrides' buckets are stored under (`override:<kind>:<key>`): a
/// policy or bucket of that name would share their keys.
pub(crate) const RESERVED_NAME: &str = "override";

/// Checks a policy or bucket name ([`name_is_valid`], and not [`RESERVED_NAME`]).
pub(crate) fn check_name(name: &str) -> Result<(), BuildError> {
    if !name_is_valid(name) {
        return Err(BuildError::BadName {
            name: name.to_string(),
        });
    }
    if name == RESERVED_NAME {
        return Err(BuildError::ReservedName {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// A bucket or policy name: ASCII letters, digits, `_`, `-`, `.`; 1 to 64 of them.
pub(crate) fn name_is_valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// One `RateLimit-Policy` item: `"name";q=500;w=60`.
pub(crate) fn policy_item(sf_name: &str, quota: Quota) -> String {
    let mut item = String::with_capacity(sf_name.len() + 24);
    item.push_str(sf_name);
    let _ = write!(
        item,
        ";q={};w={}",
        sf::clamp(quota.count()),
        sf::clamp(crate::respond::ceil_secs(quota.period()))
    );
    item
}

/// The most limits (this policy's and the global ones) whose `RateLimit-Policy` values are
/// kept ready; beyond, they are made per response.
const MAX_CACHED_LIMITS: u32 = 8;

/// Checks `policy` and compiles it; binds its bucket name to its limits in `signatures`.
/// `global_limits` is how many limits the global policies have (for the header cache).
pub(crate) fn compile(
    policy: &Policy,
    defaults: &Defaults,
    has_identity: bool,
    signatures: &mut Signatures,
    global_limits: usize,
) -> Result<Arc<Compiled>, BuildError> {
    let name = policy.name.clone();
    let bucket_name = policy.bucket_name().clone();
    for n in [&name, &bucket_name] {
        check_name(n)?;
    }
    let mut compiled = Compiled {
        name: name.clone(),
        static_name: intern(&name),
        exempt: policy.exempt,
        limits: Vec::new(),
        cost: policy.cost.clone(),
        refund_if: policy.refund_if.clone(),
        count_only_if: policy.count_only_if.clone(),
        count_after: policy.count_after,
        shadow: policy.shadow || defaults.shadow,
        on_failure: policy.on_failure.unwrap_or(defaults.on_failure),
        warned_central: AtomicBool::new(false),
        warned_outer: AtomicBool::new(false),
        refusals_logged: Sampled::new(),
        policy_values: Box::default(),
        overrides: Vec::new(),
    };
    if policy.exempt {
        if !policy.limits.is_empty() {
            return Err(BuildError::ExemptWithLimits {
                policy: name.to_string(),
            });
        }
        return Ok(Arc::new(compiled));
    }
    if policy.limits.is_empty() {
        return Err(BuildError::EmptyPolicy {
            policy: name.to_string(),
        });
    }
    if let (Some(refunds), Some(counts)) = (&policy.refund_if, &policy.count_only_if) {
        // (A file's `refund_statuses` and `count_only_statuses` are checked as they are
        // read; functions, for every status there is.)
        let both = (100..=999u16)
            .filter_map(|code| http::StatusCode::from_u16(code).ok())
            .find(|&status| refunds(status) && counts(status));
        if let Some(status) = both {
            return Err(BuildError::RefundedAndCounted {
                policy: name.to_string(),
                status: status.as_u16(),
            });
        }
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
        // A header key's name is checked first: its kind is made from the name, and the
        // name is what the user wrote.
        if let Source::Header(Err(header)) = &key.source {
            return Err(BuildError::BadHeaderName {
                policy: name.to_string(),
                header: header.clone(),
            });
        }
        if !key.kind_is_valid() {
            return Err(BuildError::BadKeyKind {
                policy: name.to_string(),
                kind: key.kind().to_string(),
            });
        }
        match &key.source {
            Source::User if !has_identity => {
                return Err(BuildError::NoIdentity {
                    policy: name.to_string(),
                })
            }
            Source::Network(prefix) if *prefix > 128 => {
                return Err(BuildError::BadNetworkPrefix {
                    bucket: format!("{bucket_name}:{}", key.kind()),
                    prefix: *prefix,
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
        let sf_name: Box<str> = sf::string(&bucket).into();
        let (policy_item, limit_value) = match &quota {
            CompiledQuota::Fixed(l) => (
                Some(policy_item(&sf_name, l.shown_quota()).into()),
                Some(number(l.shown_count())),
            ),
            CompiledQuota::PerKey(_) => (None, None),
        };
        if defaults.overrides && compiled.override_bucket(key.kind()).is_none() {
            let label: Arc<str> = format!("override:{}", key.kind()).into();
            compiled.overrides.push(OverrideBucket {
                kind: key.kind.clone(),
                label: intern(&label),
                metrics: BucketMetrics::new(&name, &label),
            });
        }
        compiled.limits.push(CompiledLimit {
            key: key.clone(),
            quota,
            metrics: BucketMetrics::new(&name, &bucket),
            static_bucket: intern(&bucket),
            key_prefix: Bucket::key_prefix(&bucket),
            bucket,
            sf_name,
            policy_item,
            limit_value,
            when_full: policy.when_full,
        });
    }
    let shown = (compiled.limits.len() + global_limits) as u32;
    if shown <= MAX_CACHED_LIMITS {
        compiled.policy_values = (0..1usize << shown).map(|_| OnceLock::new()).collect();
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

/// How a bucket for direct use stores the keys it is given
/// ([`Engine::direct_key`](super::Engine::direct_key)).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DirectKey {
    /// The IPv6 prefix its address keys are folded to, if keyed by client network
    /// ([`LimiterBuilder::bucket_per_network`](crate::LimiterBuilder::bucket_per_network)).
    pub(crate) network: Option<u8>,
    /// Whether its keys are stored as digests
    /// ([`LimiterBuilder::bucket_hashed`](crate::LimiterBuilder::bucket_hashed)).
    pub(crate) hashed: bool,
}

/// A bucket for direct use ([`Limiter::check`](crate::Limiter::check) and its kin): its
/// limit, and its metrics (as a policy's bucket has, under its own name).
pub(crate) struct Direct {
    pub(crate) limit: Limit,
    /// What a bounded store does with a new key when the bucket's share is full.
    pub(crate) when_full: WhenFull,
    /// How a key given to it is stored.
    pub(crate) key: DirectKey,
    pub(crate) metrics: BucketMetrics,
    /// Its refusal events (see [`refusal_due`]).
    pub(crate) refusals_logged: Sampled,
}

/// A limiter's compiled rules: the central table, the global policies, the buckets for
/// direct use, and the per-route policies code declared. A reload swaps it whole; a request
/// loads it once, at its start, and finishes under it.
pub(crate) struct Table {
    /// The central table: a request's class.
    pub(crate) classes: Arc<RouteTable<Arc<Compiled>>>,
    /// The global policies (not exempt).
    pub(crate) globals: Vec<Arc<Compiled>>,
    /// How many limits the global policies have together.
    pub(crate) global_limits: usize,
    /// The buckets for direct use, by name.
    pub(crate) direct: Arc<HashMap<String, Direct>>,
    /// The per-route policies ([`Limiter::policy`](crate::Limiter::policy)), by the index
    /// their layer holds, compiled against this table's global policies.
    pub(crate) per_route: Vec<Arc<Compiled>>,
    /// Every bucket name bound by the policies above.
    pub(crate) signatures: Signatures,
    /// What policies inherit (also the failure mode of direct use).
    pub(crate) defaults: Defaults,
}

/// The rules a table is compiled from (a builder's).
pub(crate) struct Rules<'a> {
    pub(crate) routes: &'a [(String, Policy)],
    pub(crate) globals: Vec<&'a Policy>,
    pub(crate) direct: &'a [crate::limiter::DirectRule],
    pub(crate) defaults: Defaults,
    pub(crate) require_default: bool,
}

/// What code declared on a built limiter, outside its table, that every table must respect:
/// the per-route policies (compiled again against each table) and the guards' own limiters
/// (whose bucket names no table may use, and whose buckets the operators' lookups and the
/// stats reach through this one).
#[derive(Default)]
pub(crate) struct CodeRules {
    pub(crate) per_route: Vec<Policy>,
    pub(crate) guards: Vec<Arc<super::Engine>>,
}

impl CodeRules {
    /// [`shown_apart`] for `tables` (a limiter's, a new guard's) and the guards' tables,
    /// which answer the same requests.
    pub(crate) fn shown_apart_from(&self, tables: &[&Table]) -> Result<(), BuildError> {
        let guards: Vec<_> = self.guards.iter().map(|guard| guard.table.load()).collect();
        shown_apart(tables.iter().copied().chain(guards.iter().map(|t| &***t)))
    }

    /// Whether a guard uses the bucket name `name`.
    pub(crate) fn guard_binds(&self, name: &str) -> bool {
        self.guards
            .iter()
            .any(|guard| guard.table.load().binds(name))
    }
}

/// Checks and compiles `rules`, then the per-route policies of `code`, into a table.
pub(crate) fn compile_table(
    rules: &Rules<'_>,
    has_identity: bool,
    code: &CodeRules,
) -> Result<Table, BuildError> {
    let defaults = rules.defaults;
    let mut signatures = Signatures::default();
    let global_limits: usize = rules
        .globals
        .iter()
        .filter(|p| !p.exempt)
        .map(|p| p.limits.len())
        .sum();
    let patterns = rules
        .routes
        .iter()
        .map(|(pattern, _)| RoutePattern::parse(pattern))
        .collect::<Result<Vec<_>, _>>()?;
    // The patterns' own mistakes first (ties, rules never matched), which do not depend on
    // the policies: a file's two rules of one pattern, both named after it, were told
    // their policies share a bucket, and renaming one led to the tie.
    patterns
        .iter()
        .fold(RouteTable::builder(), |table, pattern| {
            table.route(pattern.clone(), ())
        })
        .build()?;
    let mut classes = RouteTable::builder().lenient(|class: &Arc<Compiled>| class.exempt);
    let mut has_default = false;
    for (pattern, (_, policy)) in patterns.into_iter().zip(rules.routes) {
        let compiled = compile(
            policy,
            &defaults,
            has_identity,
            &mut signatures,
            global_limits,
        )?;
        has_default |= pattern.is_default();
        classes = classes.route(pattern, compiled);
    }
    let classes = classes.build()?;
    if rules.require_default && !has_default {
        return Err(BuildError::NoDefaultRule);
    }

    let mut globals = Vec::new();
    for policy in &rules.globals {
        let compiled = compile(
            policy,
            &defaults,
            has_identity,
            &mut signatures,
            global_limits,
        )?;
        if compiled.exempt {
            return Err(BuildError::ExemptGlobal {
                policy: compiled.name.to_string(),
            });
        }
        globals.push(compiled);
    }

    let per_route = code
        .per_route
        .iter()
        .map(|policy| {
            compile(
                policy,
                &defaults,
                has_identity,
                &mut signatures,
                global_limits,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(name) = signatures.keys().find(|name| code.guard_binds(name)) {
        return Err(BuildError::DuplicateBucket {
            name: name.to_string(),
        });
    }

    let mut direct = HashMap::new();
    for rule in rules.direct {
        let (name, rate) = (&rule.name, &rule.rate);
        check_name(name)?;
        if let Some(prefix) = rule.key.network.filter(|bits| *bits > 128) {
            return Err(BuildError::BadNetworkPrefix {
                bucket: name.clone(),
                prefix,
            });
        }
        let limit = rate.limit().map_err(|source| BuildError::BucketRate {
            bucket: name.clone(),
            source: Box::new(source),
        })?;
        let bucket: Arc<str> = name.as_str().into();
        let metrics = BucketMetrics::new(&bucket, &bucket);
        if signatures.contains_key(name.as_str())
            || code.guard_binds(name)
            || direct
                .insert(
                    name.clone(),
                    Direct {
                        limit,
                        when_full: rule.when_full,
                        key: rule.key,
                        metrics,
                        refusals_logged: Sampled::new(),
                    },
                )
                .is_some()
        {
            return Err(BuildError::DuplicateBucket { name: name.clone() });
        }
    }

    let table = Table {
        classes: Arc::new(classes),
        globals,
        global_limits,
        direct: Arc::new(direct),
        per_route,
        signatures,
        defaults,
    };
    table.check_whole(code)?;
    Ok(table)
}

/// Checks the key kinds of `policies`, which per-key overrides, peeks and resets name
/// across the whole limiter:
/// - each is stored one way, hashed or as given: an override, a peek or a reset of a kind
///   stores its key one way ([`BuildError::KeyKindStoredTwoWays`]);
/// - none is another followed by `:` (a custom `network` beside `Key::network(48)`'s
///   `network:48`, [`BuildError::KeyKindsOverlap`]): a store key is `<bucket>:<kind>:<key>`
///   in a policy and `override:<kind>:<key>` for an override, so a key of the shorter kind
///   (`48:203.0.113.7`, from the request) would land on the other's.
fn kinds_agree<'a>(policies: impl Iterator<Item = &'a Arc<Compiled>>) -> Result<(), BuildError> {
    // Per kind: whether it is hashed, and the first policy that says so.
    let mut seen: HashMap<&str, (bool, &str)> = HashMap::new();
    for policy in policies {
        for limit in &policy.limits {
            let (kind, hashed) = (limit.key.kind(), limit.key.hashed);
            match seen.get(kind) {
                None => {
                    seen.insert(kind, (hashed, &policy.name));
                }
                Some(&(first, other)) if first != hashed => {
                    let (h, p) = if hashed {
                        (&*policy.name, other)
                    } else {
                        (other, &*policy.name)
                    };
                    return Err(BuildError::KeyKindStoredTwoWays {
                        kind: kind.to_string(),
                        hashed: h.to_string(),
                        plain: p.to_string(),
                    });
                }
                Some(_) => {}
            }
        }
    }
    // Each kind's part before a `:`, where another kind has that name.
    for &longer in seen.keys() {
        let shorter = longer
            .match_indices(':')
            .map(|(at, _)| &longer[..at])
            .find_map(|prefix| seen.get_key_value(prefix).filter(|(k, _)| **k != "global"));
        if let Some((kind, (_, policy))) = shorter {
            return Err(BuildError::KeyKindsOverlap {
                policy: policy.to_string(),
                kind: kind.to_string(),
                longer: longer.to_string(),
            });
        }
    }
    Ok(())
}

/// Checks that no two buckets of `tables` (a limiter's and its guards', which answer the
/// same requests) show one name in the IETF `RateLimit` and `RateLimit-Policy` fields,
/// which write `:` as `-`: a policy `p`'s per-IP bucket `p:ip` and a global policy named
/// `p-ip`, or a policy named `override-ip` and the per-key overrides of kind `ip` (a
/// review: both as `"p-ip"` on one response, a client unable to tell which limit is which;
/// from a guard, one of the two items left out of the merged fields).
fn shown_apart<'a>(tables: impl Iterator<Item = &'a Table>) -> Result<(), BuildError> {
    let mut shown: HashMap<String, &str> = HashMap::new();
    for (name, bucket) in tables.flat_map(Table::shown) {
        match shown.get(&name) {
            Some(first) if *first != bucket => {
                return Err(BuildError::ShownAlike {
                    first: first.to_string(),
                    second: bucket.to_string(),
                    shown: name,
                })
            }
            Some(_) => {}
            None => {
                shown.insert(name, bucket);
            }
        }
    }
    Ok(())
}

impl Table {
    /// What holds across the table and the guards of `code`, each policy having been
    /// checked alone as it compiled: its key kinds ([`kinds_agree`]) and the names its
    /// buckets show ([`shown_apart`]).
    fn check_whole(&self, code: &CodeRules) -> Result<(), BuildError> {
        kinds_agree(self.policies())?;
        code.shown_apart_from(&[self])
    }

    /// The names this table's buckets show in the IETF `RateLimit` and `RateLimit-Policy`
    /// fields, each with its bucket: its policies' buckets, the per-key overrides of their
    /// key kinds, and its buckets for direct use (which a handler shows beside the
    /// middleware's).
    fn shown(&self) -> impl Iterator<Item = (String, &str)> {
        let policies = self.policies().flat_map(|policy| {
            let limits = policy
                .limits
                .iter()
                .map(|limit| (limit.sf_name.to_string(), &*limit.bucket));
            let overrides = policy
                .overrides
                .iter()
                .map(|o| (sf::string(o.label), o.label));
            limits.chain(overrides)
        });
        let direct = self
            .direct
            .keys()
            .map(|name| (sf::string(name), name.as_str()));
        policies.chain(direct)
    }

    /// Every policy of the table: its classes', its global ones and its per-route ones.
    pub(crate) fn policies(&self) -> impl Iterator<Item = &Arc<Compiled>> {
        self.classes
            .iter()
            .map(|(_, p)| p)
            .chain(&self.globals)
            .chain(&self.per_route)
    }

    /// This table with one more per-route policy (compiled against it), and that policy.
    pub(crate) fn with_route_policy(
        &self,
        policy: &Policy,
        has_identity: bool,
        code: &CodeRules,
    ) -> Result<(Table, Arc<Compiled>), BuildError> {
        let mut signatures = self.signatures.clone();
        let compiled = compile(
            policy,
            &self.defaults,
            has_identity,
            &mut signatures,
            self.global_limits,
        )?;
        // A bucket for direct use or a guard's may not be its bucket, as `compile_table`
        // requires of every table: else no reload could take the limiter's own rules.
        if let Some(name) = signatures.keys().find(|name| {
            !self.signatures.contains_key(*name) && (self.binds(name) || code.guard_binds(name))
        }) {
            return Err(BuildError::DuplicateBucket {
                name: name.to_string(),
            });
        }
        let mut per_route = self.per_route.clone();
        per_route.push(compiled.clone());
        let table = Table {
            classes: self.classes.clone(),
            globals: self.globals.clone(),
            global_limits: self.global_limits,
            direct: self.direct.clone(),
            per_route,
            signatures,
            defaults: self.defaults,
        };
        table.check_whole(code)?;
        Ok((table, compiled))
    }

    /// Whether `name` is a bucket name of this table (a policy's or one for direct use).
    pub(crate) fn binds(&self, name: &str) -> bool {
        self.signatures.contains_key(name) || self.direct.contains_key(name)
    }
}

/// Whether a refusal event should be logged at `now_ms` (Unix milliseconds) for the policy
/// or bucket whose events `logged` samples: at most one per second each. `Some(n)`: log, `n`
/// refusals were not logged since the last one.
pub(crate) fn refusal_due(logged: &Sampled, now_ms: u64) -> Option<u64> {
    const EVERY_MS: u64 = 1_000;
    logged.due(now_ms, EVERY_MS)
}

/// [`refusal_due`] now, for a refusal event of the sampler `logged`: `None` also when
/// `tollgate`'s `INFO` events are off (nothing is counted then).
pub(crate) fn refusal_to_log(logged: &Sampled) -> Option<u64> {
    if !tracing::enabled!(target: "tollgate", tracing::Level::INFO) {
        return None;
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    refusal_due(logged, now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            shadow: false,
            on_failure: FailureMode::Fallback,
            overrides: true,
        }
    }

    /// Two buckets that would show one name in the IETF fields (`:` written `-`) are a
    /// build error naming both (a review: `"p-ip"` twice on one response); one bucket
    /// shared by two policies shows once, and is not.
    #[test]
    fn buckets_that_would_show_one_name_are_refused() {
        use crate::{Key, Limiter};
        let shown_alike = |builder: crate::LimiterBuilder| match builder.build() {
            Err(BuildError::ShownAlike {
                first,
                second,
                shown,
            }) => Some((first, second, shown)),
            Err(e) => panic!("{e}"),
            Ok(_) => None,
        };
        let base = || Limiter::builder().read_env(false);
        let per_ip = || Policy::named("p").per_ip("11/min");
        let with_global = base()
            .route("/*", per_ip())
            .global_policy(Policy::named("p-ip").limit(Key::global(), "9/min"));
        let (first, second, shown) = shown_alike(with_global).unwrap();
        assert_eq!(shown, "\"p-ip\"");
        assert_eq!(
            [first.as_str(), second.as_str()].map(|b| b.contains(':')),
            [true, false]
        );
        let two_kinds = Policy::named("p")
            .limit(Key::header("x-a"), "5/min")
            .limit(Key::custom("header-x-a", |_| None), "7/min");
        let (.., shown) = shown_alike(base().route("/*", two_kinds)).unwrap();
        assert_eq!(shown, "\"p-header-x-a\"");
        let direct = base().route("/*", per_ip()).bucket("p-ip", "5/min");
        assert!(shown_alike(direct).is_some());
        // A policy named as a kind's per-key overrides show (`override:ip`).
        let overrides = base()
            .route("/*", Policy::named("a").per_ip("10/min"))
            .global_policy(Policy::named("override-ip").limit(Key::global(), "100/min"));
        let (.., shown) = shown_alike(overrides).unwrap();
        assert_eq!(shown, "\"override-ip\"");
        // A guard's buckets answer the limiter's requests too.
        let limiter = base().route("/*", per_ip()).build().unwrap();
        let guard = limiter.try_guard(Policy::named("p-ip").limit(Key::global(), "9/min"));
        assert!(
            matches!(guard, Err(BuildError::ShownAlike { .. })),
            "{:?}",
            guard.err()
        );
        assert!(limiter
            .try_guard(Policy::named("g").limit(Key::global(), "9/min"))
            .is_ok());
        let shared = |n: &str| Policy::named(n).per_ip("5/min").bucket("shared");
        let apart = base().route("/a/*", shared("a")).route("/b/*", shared("b"));
        assert_eq!(shown_alike(apart), None);
    }

    #[test]
    fn bucket_names_and_header_items_are_made_once() {
        let policy = Policy::named("default")
            .per_ip("500/min")
            .per_ip("10000/day");
        let c = compile(&policy, &defaults(), false, &mut Signatures::new(), 1).unwrap();
        let names: Vec<&str> = c.limits.iter().map(|l| &*l.bucket).collect();
        assert_eq!(names, ["default:ip", "default:ip#2"]);
        assert_eq!(&*c.limits[0].sf_name, "\"default-ip\"");
        assert_eq!(
            c.limits[1].policy_item.as_deref(),
            Some("\"default-ip#2\";q=10000;w=86400")
        );
        // Two limits of its own and one global: 2^3 cached policy values.
        assert_eq!(c.policy_values.len(), 8);
    }

    #[test]
    fn a_shared_bucket_must_declare_the_same_limits() {
        let mut sigs = Signatures::new();
        let a = Policy::named("a").bucket("auth").per_ip("20/15min");
        let b = Policy::named("b").bucket("auth").per_ip("20/15min");
        let c = Policy::named("c").bucket("auth").per_ip("30/15min");
        compile(&a, &defaults(), false, &mut sigs, 0).unwrap();
        compile(&b, &defaults(), false, &mut sigs, 0).unwrap();
        assert!(matches!(
            compile(&c, &defaults(), false, &mut sigs, 0),
            Err(BuildError::SharedBucketMismatch { .. })
        ));
    }

    #[test]
    fn mistakes_are_typed_errors() {
        let mut sigs = Signatures::new();
        let bad = |p: Policy| compile(&p, &defaults(), false, &mut Signatures::new(), 0).err();
        assert!(matches!(
            bad(Policy::named("x")),
            Some(BuildError::EmptyPolicy { .. })
        ));
        assert!(matches!(
            bad(Policy::named("x").per_user("1/min")),
            Some(BuildError::NoIdentity { .. })
        ));
        // A header key with a name that is not a header name says so (not that its kind,
        // `header:<name>`, is not a kind).
        assert!(matches!(
            bad(Policy::named("x").limit(crate::Key::header("x device"), "1/min")),
            Some(BuildError::BadHeaderName { .. })
        ));
        // An exempt policy never charges: limits on it are a mistake, not silence.
        assert!(matches!(
            bad(Policy::exempt().per_ip("1/min")),
            Some(BuildError::ExemptWithLimits { .. })
        ));
        assert!(matches!(
            bad(Policy::named("x y").per_ip("1/min")),
            Some(BuildError::BadName { .. })
        ));
        // A custom kind holds no `:`, and no kind is another followed by `:`: a key taken
        // from the request (`x-account:alice`) could otherwise name another kind's bucket.
        assert!(matches!(
            bad(Policy::named("x").per_key("a:b", |_| None, "1/min")),
            Some(BuildError::BadKeyKind { .. })
        ));
        // `global` is `Key::global()`'s: its bucket is the policy's name alone, so a custom
        // kind of that name would store `x:ip:203.0.113.9` for a request that says
        // `ip:203.0.113.9`, the per-IP limit's key of that address.
        assert!(matches!(
            bad(Policy::named("x")
                .per_ip("2/min")
                .per_key("global", |_| None, "1000/min")),
            Some(BuildError::BadKeyKind { kind, .. }) if kind == "global"
        ));
        // In one policy or two (per-key overrides are the limiter's): a table of them.
        let table = |policies: Vec<Policy>| {
            let mut builder = crate::Limiter::builder().read_env(false);
            for (i, policy) in policies.into_iter().enumerate() {
                builder = builder.route(format!("/{i}/*").as_str(), policy);
            }
            builder.build().err()
        };
        assert!(matches!(
            table(vec![Policy::named("x")
                .per_header("x-account", "3/min")
                .per_key("header", |_| None, "100/min")]),
            Some(BuildError::KeyKindsOverlap { kind, longer, .. })
                if kind == "header" && longer == "header:x-account"
        ));
        assert!(matches!(
            table(vec![
                Policy::named("x").per_network(48, "3/min"),
                Policy::named("y").per_key("network", |_| None, "100/min"),
            ]),
            Some(BuildError::KeyKindsOverlap { policy, kind, longer })
                if policy == "y" && kind == "network" && longer == "network:48"
        ));
        assert!(table(vec![Policy::named("x")
            .per_header("x-account", "3/min")
            .per_key("headers", |_| None, "100/min")])
        .is_none());
        // `all` is the global limit's key: a custom kind of that name would put a key on
        // its fixed windows' (`x:all:<window>`).
        assert!(matches!(
            bad(Policy::named("x")
                .limit(crate::Key::global(), crate::Rate::fixed("3/min"))
                .per_key("all", |_| None, "100/min")),
            Some(BuildError::BadKeyKind { kind, .. }) if kind == "all"
        ));
        assert!(matches!(
            bad(Policy::named("x").per_ip("1/min").cost(0)),
            Some(BuildError::ZeroCost { .. })
        ));
        // A response both given back and counted (a review: five 401s under both left the
        // policy's 3 untouched: it counted none), unlike two lists apart.
        let status = |code: u16| move |s: http::StatusCode| s.as_u16() == code;
        assert!(matches!(
            bad(Policy::named("x")
                .per_ip("3/min")
                .refund_if(|s| s.is_client_error())
                .count_only_if(status(401))),
            Some(BuildError::RefundedAndCounted { status: 401, .. })
        ));
        assert!(bad(Policy::named("x")
            .per_ip("3/min")
            .refund_if(status(304))
            .count_only_if(status(401)))
        .is_none());
        // Every status a response can have, those past 599 included.
        assert!(matches!(
            bad(Policy::named("x")
                .per_ip("3/min")
                .refund_if(status(600))
                .count_only_if(|s| s.as_u16() >= 600)),
            Some(BuildError::RefundedAndCounted { status: 600, .. })
        ));
        let _ = &mut sigs;
    }

    #[test]
    fn names_are_interned_once() {
        let a = intern("interned-name");
        let b = intern(&String::from("interned-name"));
        assert!(std::ptr::eq(a, b));
        assert_eq!(a, "interned-name");
        let c = compile(
            &Policy::named("p").per_ip("1/min"),
            &defaults(),
            false,
            &mut Signatures::new(),
            0,
        )
        .unwrap();
        assert_eq!((c.static_name, c.limits[0].static_bucket), ("p", "p:ip"));
        assert_eq!(c.override_bucket("ip").unwrap().label, "override:ip");
    }

    #[test]
    fn refusal_events_are_sampled_per_policy() {
        let policy = Policy::named("p").per_ip("1/min");
        let c = compile(&policy, &defaults(), false, &mut Signatures::new(), 0).unwrap();
        assert_eq!(refusal_due(&c.refusals_logged, 10_000), Some(0));
        for _ in 0..99 {
            assert_eq!(refusal_due(&c.refusals_logged, 10_500), None);
        }
        assert_eq!(
            refusal_due(&c.refusals_logged, 11_000),
            Some(99),
            "a second later, with the count"
        );
    }
}
