//! Operator access to what a [`Limiter`] counts: any bucket's state for one key, resetting
//! it, per-key overrides named by their key kind, and where the store decides now. What
//! the admin router (`tollgate::admin`, feature `admin`) serves; usable without it.
//!
//! Buckets are named as in headers, logs and [`Limiter::describe`]: a policy's bucket
//! (`default:ip`, `chat:user`, `tiers:api_key#2`, `global`), a bucket for direct use
//! (`sign-in-failures`), or a per-key override (`override:api_key`). Keys are given as
//! requests carry them: an IP address, a user id, the API key itself (hashed here exactly
//! as the middleware hashes it).
//!
//! ```
//! use tollgate::{Limiter, Policy, StoreMode};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let limiter = Limiter::builder()
//!     .route("/api/*", Policy::named("default").per_ip("500/min"))
//!     .build()?;
//! // What a client at 203.0.113.7 has left in the default class, and a fresh start for it:
//! let state = limiter.peek_bucket("default:ip", "203.0.113.7").await?;
//! assert_eq!(state.buckets[0].remaining, 500);
//! let _ = limiter.reset_bucket("default:ip", "203.0.113.7").await?; // the bucket, full again
//! assert_eq!(limiter.store_mode(), StoreMode::Memory);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::sync::Arc;

use tollgate_limits::{Batch, Bucket, Decision, Limit, Op, Quota, StoreError, StoreMode};

use crate::engine::{Compiled, DirectKey};
use crate::key::{is_digest, operator_key, Key, Source};
use crate::limiter::Limiter;
use crate::policy::Cost;
use crate::rate::{Rate, RateError};

/// The prefix of a per-key override's bucket name (`override:api_key`).
pub(crate) const OVERRIDE_PREFIX: &str = "override:";

/// Why an operator's request about a bucket or a key could not be answered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    /// No policy, direct-use bucket or override kind has this bucket name.
    #[error("no bucket named `{0}` (see `Limiter::describe` for the names)")]
    UnknownBucket(String),
    /// No policy limits by this key kind.
    #[error("no policy limits by key kind `{0}`")]
    UnknownKeyKind(String),
    /// The key has no override in this bucket.
    #[error("no override for this key of kind `{0}`")]
    NoOverride(String),
    /// The bucket's quota is chosen per request, so its state cannot be read without one.
    #[error("bucket `{0}` has its quota chosen per request: it can be reset, not read")]
    QuotaPerRequest(String),
    /// A per-IP key that is not an IP address.
    #[error("`{0}` is not an IP address")]
    BadIp(String),
    /// An empty key.
    #[error("the key is empty")]
    EmptyKey,
    /// An override's rate that does not parse.
    #[error(transparent)]
    Rate(#[from] RateError),
    /// An override smaller than what one request costs on a route keyed by its kind: every
    /// request of that key would be refused, with nothing to wait for.
    #[error("an override of {capacity} for key kind `{kind}` is less than policy `{policy}`'s cost of {cost} points per request: every request of the key would be refused")]
    CostExceedsOverride {
        /// The key kind.
        kind: String,
        /// A policy that limits by it at that cost.
        policy: String,
        /// What one of its requests costs.
        cost: u64,
        /// What the override holds.
        capacity: u64,
    },
    /// The store could not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One per-key override ([`Limiter::set_override`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct OverrideInfo {
    /// The key kind (`api_key`, `ip`, ...).
    pub kind: String,
    /// The key as stored: as given, or `#` and a digest for keys that carry secrets.
    pub key: String,
    /// The override's limit.
    #[serde(serialize_with = "serialize_limit")]
    pub limit: Limit,
}

fn serialize_limit<S: serde::Serializer>(limit: &Limit, s: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&crate::describe::LimitJson::new(Some(*limit)), s)
}

/// A bucket found by name: whose key it counts, under which limit.
enum Found {
    /// A policy's bucket; `None`: the quota is chosen per request.
    Policy(Key, Option<Limit>),
    /// A bucket for direct use, and how it stores a key.
    Direct(Limit, DirectKey),
    Override(Key),
}

impl Limiter {
    /// The state of `bucket` for `key`, changing nothing: what a request of cost 1 would be
    /// answered (`buckets[0]`: limit, remaining, reset). Also when limiting is disabled.
    ///
    /// # Errors
    ///
    /// [`InspectError::UnknownBucket`], [`InspectError::QuotaPerRequest`],
    /// [`InspectError::NoOverride`], [`InspectError::BadIp`], or the store's error.
    pub async fn peek_bucket(&self, bucket: &str, key: &str) -> Result<Decision, InspectError> {
        self.peek_stored(bucket, key)
            .await
            .map(|(decision, _)| decision)
    }

    /// [`Limiter::peek_bucket`], and the key it reached ([`Limiter::stored_key`]).
    pub(crate) async fn peek_stored(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<(Decision, String), InspectError> {
        let (stored, limit) = self.resolve(bucket, key)?;
        let limit = limit.ok_or_else(|| InspectError::QuotaPerRequest(bucket.to_string()))?;
        let decision = self.apply_one(Op::Peek, bucket, &stored, limit).await?;
        Ok((decision, stored))
    }

    /// The key `bucket` stores `key` under, as [`Limiter::peek_bucket`] and
    /// [`Limiter::reset_bucket`] find it: an address folded to its client's key (or its
    /// network's, for [`LimiterBuilder::bucket_per_network`](crate::LimiterBuilder::bucket_per_network),
    /// whose keys must be addresses or networks as stored: another is
    /// [`InspectError::BadIp`]), a secret kind's key as its digest, any other key as given.
    /// What an operator sees to know which key a lookup reached (an IPv6 address stands for
    /// its /64 or /48).
    ///
    /// ```
    /// use tollgate::{Limiter, Policy};
    ///
    /// let limiter = Limiter::builder()
    ///     .route("/*", Policy::named("api").per_ip("100/min"))
    ///     .build()?;
    /// assert_eq!(limiter.stored_key("api:ip", "2001:db8:1:2::9")?, "2001:db8:1:2::/64");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`InspectError::UnknownBucket`], [`InspectError::NoOverride`],
    /// [`InspectError::BadIp`], [`InspectError::EmptyKey`].
    pub fn stored_key(&self, bucket: &str, key: &str) -> Result<String, InspectError> {
        self.resolve(bucket, key).map(|(stored, _)| stored)
    }

    /// Forgets everything `bucket` counted for `key`: its next request starts afresh.
    /// Made while a Redis store decides from its memory fallback, the reset is made there,
    /// and once Redis answers again takes from Redis what Redis had last reported to this
    /// instance for the key; what other instances counted there meanwhile stays counted.
    ///
    /// # Errors
    ///
    /// As [`Limiter::peek_bucket`], except that a quota chosen per request is no error.
    pub async fn reset_bucket(&self, bucket: &str, key: &str) -> Result<Decision, InspectError> {
        self.reset_stored(bucket, key)
            .await
            .map(|(decision, _)| decision)
    }

    /// [`Limiter::reset_bucket`], and the key it reached ([`Limiter::stored_key`]).
    pub(crate) async fn reset_stored(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<(Decision, String), InspectError> {
        let (stored, limit) = self.resolve(bucket, key)?;
        // A reset forgets the key whatever its limit; any limit names it.
        let limit = limit.unwrap_or_else(|| Limit::sliding(Quota::per_second(1)));
        let decision = self.apply_one(Op::Reset, bucket, &stored, limit).await?;
        tracing::info!(
            target: "tollgate",
            bucket = %bucket,
            key = %stored,
            "rate-limit bucket reset"
        );
        Ok((decision, stored))
    }

    /// Where the store decides now (memory, shared, or memory while the shared store fails).
    pub fn store_mode(&self) -> StoreMode {
        self.engine.store.mode()
    }

    /// [`Limiter::set_override`] with the key named by its kind (`api_key`, `ip`, a custom
    /// kind), as the table uses it (hashed if its policies hash it; an IPv6 address folded to
    /// its prefix like the client's address). A kind read two ways (an API key from
    /// `x-api-key` as sent, and from `authorization` as a credential,
    /// [`Key::api_key`](crate::Key::api_key)) gets the override under each reading, so it
    /// applies whichever header a request sends the key in.
    ///
    /// # Errors
    ///
    /// [`InspectError::UnknownKeyKind`], [`InspectError::BadIp`], [`InspectError::Rate`].
    pub fn set_override_for_kind(
        &self,
        kind: &str,
        value: &str,
        rate: impl Into<Rate>,
    ) -> Result<(), InspectError> {
        self.set_override_stored(kind, value, rate).map(drop)
    }

    /// [`Limiter::set_override_for_kind`]; how the override is stored, once per way the
    /// kind reads a value (what the admin router answers).
    pub(crate) fn set_override_stored(
        &self,
        kind: &str,
        value: &str,
        rate: impl Into<Rate>,
    ) -> Result<Vec<String>, InspectError> {
        let keys = self.keys_of_kind(kind)?;
        let limit = rate.into().limit()?;
        // Every reading checked before any is set.
        let mut stored = keys
            .iter()
            .map(|key| self.override_value(key, value, &limit))
            .collect::<Result<Vec<_>, _>>()?;
        // (A value both readings store alike, `bearer t`, is one override.)
        stored.dedup();
        for stored in &stored {
            self.put_override(kind, stored, limit);
        }
        Ok(stored)
    }

    /// The stored value of an override of `limit` for `key` given as `value`, once it is
    /// known to be one the middleware can meet: a kind some policy limits by, a value a
    /// request can carry, and a limit that holds what one request of every policy limiting
    /// by the kind costs.
    pub(crate) fn override_value(
        &self,
        key: &Key,
        value: &str,
        limit: &Limit,
    ) -> Result<String, InspectError> {
        let kind = key.kind();
        let capacity = limit.capacity();
        // One look at the policies limiting by the kind: `None` if there is none, else the
        // first whose request costs more than the override holds, if any.
        let costly = self.with_policies(|policies| costlier_than(policies, kind, capacity));
        let Some(costly) = costly else {
            return Err(InspectError::UnknownKeyKind(kind.to_string()));
        };
        let value = self.request_value(key, value)?;
        if let Some((policy, cost)) = costly {
            return Err(InspectError::CostExceedsOverride {
                kind: kind.to_string(),
                policy,
                cost,
                capacity,
            });
        }
        Ok(operator_key(&value, key.hashed))
    }

    /// [`Limiter::remove_override`] with the key named by its kind; whether there was one.
    ///
    /// # Errors
    ///
    /// [`InspectError::UnknownKeyKind`], [`InspectError::BadIp`].
    pub fn remove_override_for_kind(&self, kind: &str, value: &str) -> Result<bool, InspectError> {
        let mut removed = false;
        for key in self.keys_of_kind(kind)? {
            let value = self.request_value(&key, value)?;
            removed |= self.remove_stored(kind, &operator_key(&value, key.hashed));
        }
        Ok(removed)
    }

    /// Every per-key override, by kind and key.
    pub fn overrides(&self) -> Vec<OverrideInfo> {
        let mut all: Vec<OverrideInfo> = self
            .engine
            .overrides
            .load()
            .iter()
            .map(|(kind, key, limit)| OverrideInfo {
                kind: kind.to_string(),
                key: key.to_string(),
                limit,
            })
            .collect();
        all.sort_by(|a, b| (&a.kind, &a.key).cmp(&(&b.kind, &b.key)));
        all
    }

    async fn apply_one(
        &self,
        op: Op,
        name: &str,
        stored: &str,
        limit: Limit,
    ) -> Result<Decision, InspectError> {
        let on_failure = self.engine.table.load().defaults.on_failure;
        let batch =
            Batch::new(op, vec![Bucket::new(name, stored, limit)]).with_failure_mode(on_failure);
        Ok(self.engine.apply(&batch).await?)
    }

    /// The stored key and limit of `bucket` for the request key `key`.
    fn resolve(&self, bucket: &str, key: &str) -> Result<(String, Option<Limit>), InspectError> {
        if key.is_empty() {
            return Err(InspectError::EmptyKey);
        }
        match self.find(bucket)? {
            // A bucket keyed by client network counts addresses' networks only: a key that
            // is neither an address nor a network as stored (`::/0`, `127.0.0.0/8`) names
            // nothing it holds, and a lookup or reset of it would answer for nothing.
            Found::Direct(_, how)
                if how.network.is_some()
                    && self.engine.client_ip.fold_text(key, how.network).is_none() =>
            {
                Err(InspectError::BadIp(key.to_string()))
            }
            Found::Direct(limit, how) => {
                // A digest as stored names itself, as for an override (`operator_key`); a
                // handler's direct call reads its key as given.
                let stored = if is_digest(key) {
                    key.to_string()
                } else {
                    self.engine.direct_key(key, how)
                };
                Ok((stored, Some(limit)))
            }
            Found::Policy(k, limit) => {
                let value = self.request_value(&k, key)?;
                Ok((operator_key(&value, k.hashed), limit))
            }
            Found::Override(k) => {
                let value = self.request_value(&k, key)?;
                let stored = operator_key(&value, k.hashed);
                let limit = self
                    .engine
                    .overrides
                    .load()
                    .get(k.kind(), &stored)
                    .ok_or_else(|| InspectError::NoOverride(k.kind().to_string()))?;
                Ok((stored, Some(limit)))
            }
        }
    }

    fn find(&self, bucket: &str) -> Result<Found, InspectError> {
        if let Some(direct) = self.engine.table.load().direct.get(bucket) {
            return Ok(Found::Direct(direct.limit, direct.key));
        }
        if let Some(kind) = bucket.strip_prefix(OVERRIDE_PREFIX) {
            return self
                .key_of_kind(kind)
                .map(Found::Override)
                .ok_or_else(|| InspectError::UnknownBucket(bucket.to_string()));
        }
        let found = self.with_policies(|policies| {
            policies
                .flat_map(|p| &p.limits)
                .find(|l| &*l.bucket == bucket)
                .map(|l| Found::Policy(l.key.clone(), l.quota.fixed()))
        });
        found.ok_or_else(|| InspectError::UnknownBucket(bucket.to_string()))
    }

    /// A key of kind `kind` as the table's policies declare it.
    fn key_of_kind(&self, kind: &str) -> Option<Key> {
        self.keys_of_kind(kind).ok()?.into_iter().next()
    }

    /// The keys of kind `kind` as the table's policies declare them, one per way they read
    /// a value (a credential, or a value as sent); [`InspectError::UnknownKeyKind`] if no
    /// policy limits by the kind.
    fn keys_of_kind(&self, kind: &str) -> Result<Vec<Key>, InspectError> {
        let keys = self.with_policies(|policies| {
            let mut keys: Vec<Key> = Vec::new();
            for limit in policies.flat_map(|p| &p.limits) {
                let key = &limit.key;
                let read = key.reads_credentials();
                if key.kind() == kind && !keys.iter().any(|k| k.reads_credentials() == read) {
                    keys.push(key.clone());
                }
            }
            keys
        });
        if keys.is_empty() {
            return Err(InspectError::UnknownKeyKind(kind.to_string()));
        }
        Ok(keys)
    }

    /// Runs `f` over every compiled policy: the central table's, the global ones, the
    /// per-route ones made so far, then the guards' ([`Limiter::guard`]: their buckets
    /// live on this limiter's store under names no table uses).
    fn with_policies<T>(&self, f: impl FnOnce(&mut dyn Iterator<Item = &Arc<Compiled>>) -> T) -> T {
        let table = self.engine.table.load();
        let guards: Vec<Arc<Compiled>> = crate::engine::lock(&self.engine.code)
            .guards
            .iter()
            .flat_map(|guard| guard.table.load().globals.clone())
            .collect();
        let mut all = table.policies().chain(&guards);
        f(&mut all)
    }

    /// What a request's key resolves to for `key` given as `value`: the client's address
    /// key for an IP (IPv6 folded to its prefix), `all` for the global key, and any other
    /// key exactly as given, spaces included, as the middleware keys a request by it (an
    /// identity function's `" spacey"` is another user than `"spacey"`).
    fn request_value(&self, key: &Key, value: &str) -> Result<String, InspectError> {
        if value.trim().is_empty() {
            return Err(InspectError::EmptyKey);
        }
        Ok(match (&key.source, key.source.address_network()) {
            (Source::Global, _) => "all".to_string(),
            (_, Some(_)) if value == "unknown-peer" => value.to_string(),
            (_, Some(network)) => self
                .engine
                .client_ip
                .fold_text(value, network)
                .ok_or_else(|| InspectError::BadIp(value.to_string()))?,
            _ => key
                .read_credential(value.as_bytes())
                .unwrap_or_else(|| value.to_string()),
        })
    }
}

/// Among `policies`, those limiting by key kind `kind`: `None` if there is none, else the
/// first whose request costs more than `capacity` at once (its name and cost), if any.
pub(crate) fn costlier_than(
    policies: &mut dyn Iterator<Item = &Arc<Compiled>>,
    kind: &str,
    capacity: u64,
) -> Option<Option<(String, u64)>> {
    let mut limiting = policies
        .filter(|p| p.limits.iter().any(|l| l.key.kind() == kind))
        .peekable();
    limiting.peek()?;
    Some(limiting.find_map(|p| match p.cost {
        Cost::Fixed(cost) if cost > capacity => Some((p.name.to_string(), cost)),
        _ => None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Policy, Rate};

    /// A bucket keyed by client network folds an address to its network in a handler's
    /// check and in an operator's lookup alike: any address of the /48 finds its count,
    /// and a reset by one frees the network (a plain bucket folded the operator's address
    /// to its /64, so the network's count read as fresh and its reset freed nobody).
    #[tokio::test]
    async fn a_bucket_per_network_folds_addresses_to_its_network() {
        let limiter = Limiter::builder()
            .bucket_per_network("net", "10/min", tollgate_limits::WhenFull::EvictLimited, 48)
            .bucket("per-client", "10/min")
            .build()
            .unwrap();
        for key in ["2001:db8:1:2::5", "2001:db8:1:3::7", "2001:db8:1::/48"] {
            assert!(limiter.check("net", key).await.unwrap().allowed);
            assert!(limiter.check("per-client", key).await.unwrap().allowed);
        }
        let remaining = |bucket: &'static str, key: &'static str| {
            let limiter = limiter.clone();
            async move { limiter.peek_bucket(bucket, key).await.unwrap().buckets[0].remaining }
        };
        for key in ["2001:db8:1:ffff::9", "2001:db8:1::/48", "[2001:db8:1::1]"] {
            assert_eq!(remaining("net", key).await, 7, "{key}");
        }
        assert_eq!(remaining("net", "2001:db8:2::1").await, 10, "another /48");
        // A plain bucket: the client's /64 (the /48 given as stored is a key of its own).
        assert_eq!(remaining("per-client", "2001:db8:1:2::9").await, 9);
        let _ = limiter
            .reset_bucket("net", "2001:db8:1:4::1")
            .await
            .unwrap();
        assert_eq!(remaining("net", "2001:db8:1::/48").await, 10);
        // An IPv4 client is its address.
        let _ = limiter.check("net", "198.51.100.7").await.unwrap();
        assert_eq!(remaining("net", "::ffff:198.51.100.7").await, 9);
        // What is neither an address nor the network as stored names nothing the bucket
        // holds: an error, not the fresh state of a key no client reaches (a review: `::/0`
        // looked up and reset with 200s while the real /48 stayed locked).
        for key in [
            "::/0",
            "127.0.0.0/8",
            "2001:db8::/32",
            "2001:db8:1:5::9/64",
            "alice",
        ] {
            assert!(
                matches!(limiter.peek_bucket("net", key).await, Err(InspectError::BadIp(k)) if k == key),
                "{key}"
            );
            assert!(
                matches!(
                    limiter.reset_bucket("net", key).await,
                    Err(InspectError::BadIp(_))
                ),
                "{key}"
            );
        }
        // A plain bucket takes any key.
        assert_eq!(remaining("per-client", "alice").await, 10);
        // A prefix no address has is a build error.
        let bad = Limiter::builder()
            .bucket_per_network(
                "net",
                "10/min",
                tollgate_limits::WhenFull::EvictLimited,
                129,
            )
            .build();
        assert!(matches!(
            bad,
            Err(crate::BuildError::BadNetworkPrefix { bucket, prefix: 129 }) if bucket == "net"
        ));
    }

    fn limiter() -> Limiter {
        Limiter::builder()
            .read_env(false)
            .identity(|parts| {
                parts
                    .headers
                    .get("x-user")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from)
            })
            .route(
                "/api/*",
                Policy::named("default").per_ip("3/min").per_user("5/min"),
            )
            .route(
                "/v1/*",
                Policy::named("tiers")
                    .limit_with(Key::api_key("x-api-key"), |_, _| None)
                    .limit(Key::api_key("x-api-key"), Rate::token_bucket("100/min", 2)),
            )
            .global("1000/min")
            .bucket("sign-in-failures", Rate::exact("5/30min"))
            .build()
            .unwrap()
    }

    /// An override the middleware could never meet, or one that would refuse every request
    /// of its key, is an error (it was stored: a key kind no policy uses, a value no request
    /// carries, a limit below what one request costs), through both ways to set one.
    #[test]
    fn overrides_the_middleware_cannot_honour_are_errors() {
        let limiter = Limiter::builder()
            .read_env(false)
            .route(
                "/*",
                Policy::named("heavy")
                    .per_api_key("x-api-key", "100/min")
                    .per_ip("100/min")
                    .cost(10),
            )
            .build()
            .unwrap();
        let api_key = Key::api_key("x-api-key");
        assert!(matches!(
            limiter.set_override(&api_key, "k1", "9/min"),
            Err(InspectError::CostExceedsOverride {
                cost: 10,
                capacity: 9,
                ..
            })
        ));
        assert!(matches!(
            limiter.set_override_for_kind(api_key.kind(), "k1", "9/min"),
            Err(InspectError::CostExceedsOverride { .. })
        ));
        assert!(matches!(
            limiter.set_override(&Key::custom("tenant", |_| None), "t1", "50/min"),
            Err(InspectError::UnknownKeyKind(kind)) if kind == "tenant"
        ));
        assert!(matches!(
            limiter.set_override(&Key::ip(), "not-an-ip", "50/min"),
            Err(InspectError::BadIp(_))
        ));
        assert!(matches!(
            limiter.set_override(&Key::ip(), " ", "50/min"),
            Err(InspectError::EmptyKey)
        ));
        assert!(limiter.overrides().is_empty());
        limiter.set_override(&api_key, "k1", "10/min").unwrap();
        limiter
            .set_override(&Key::ip(), "203.0.113.7", "50/min")
            .unwrap();
        assert_eq!(limiter.overrides().len(), 2);
    }

    /// A direct-use bucket keyed by client address: the handler's raw address, its
    /// `ClientIp::key` and an operator's lookup of any address of the /64 name one key (an
    /// operator's lookup said "fresh" and a reset did nothing for a locked IPv6 client).
    #[tokio::test]
    async fn a_direct_buckets_ip_keys_are_folded_like_clients() {
        let limiter = limiter();
        for ip in ["2001:db8:1:2::a", "2001:db8:1:2::b", "2001:db8:1:2::/64"] {
            let _ = limiter.check("sign-in-failures", ip).await.unwrap();
        }
        let peek = limiter
            .peek_bucket("sign-in-failures", "2001:db8:1:2::ffff")
            .await
            .unwrap();
        assert_eq!(peek.buckets[0].remaining, 2);
        // Another /64 is another key; IPv4 keys are the address.
        let other = limiter
            .peek("sign-in-failures", "2001:db8:1:3::a")
            .await
            .unwrap();
        assert_eq!(other.buckets[0].remaining, 5);
        let _ = limiter
            .reset_bucket("sign-in-failures", "2001:db8:1:2::c")
            .await
            .unwrap();
        let after = limiter
            .peek("sign-in-failures", "2001:db8:1:2::a")
            .await
            .unwrap();
        assert_eq!(after.buckets[0].remaining, 5);
        // (Keys that are not addresses are taken as given: the test below.)
    }

    #[tokio::test]
    async fn peek_and_reset_policy_direct_and_global_buckets() {
        let limiter = limiter();
        // Direct bucket: public API and inspect agree.
        let _ = limiter
            .check("sign-in-failures", "a@example.com")
            .await
            .unwrap();
        let peek = limiter
            .peek_bucket("sign-in-failures", "a@example.com")
            .await
            .unwrap();
        assert_eq!(peek.buckets[0].remaining, 4);
        let _ = limiter
            .reset_bucket("sign-in-failures", "a@example.com")
            .await
            .unwrap();
        let after = limiter
            .peek("sign-in-failures", "a@example.com")
            .await
            .unwrap();
        assert_eq!(after.buckets[0].remaining, 5);

        // The global bucket has one key whatever is asked.
        let g = limiter.peek_bucket("global", "anything").await.unwrap();
        assert_eq!(g.buckets[0].limit, 1000);

        // An IPv6 client is counted by its /64: any address of it names the same key.
        let a = "2001:db8:1:2::1";
        let stored = limiter.request_value(&Key::ip(), a).unwrap();
        assert_eq!(stored, "2001:db8:1:2::/64");
        assert_eq!(
            limiter
                .request_value(&Key::ip(), "2001:db8:1:2::/64")
                .unwrap(),
            stored
        );
        // Any other key is the request's as given: an identity that keeps a space names
        // another user, whom a lookup, a reset or an override must reach (it reached the
        // user without the space).
        assert_eq!(
            limiter.request_value(&Key::user(), " spacey").unwrap(),
            " spacey"
        );
        assert!(matches!(
            limiter.request_value(&Key::user(), "  "),
            Err(InspectError::EmptyKey)
        ));
    }

    #[tokio::test]
    async fn unknown_names_per_request_quotas_and_bad_keys_are_typed_errors() {
        let limiter = limiter();
        let err = |r: Result<Decision, InspectError>| r.unwrap_err();
        assert!(matches!(
            err(limiter.peek_bucket("nope:ip", "1.2.3.4").await),
            InspectError::UnknownBucket(b) if b == "nope:ip"
        ));
        assert!(matches!(
            err(limiter.peek_bucket("tiers:api_key", "k").await),
            InspectError::QuotaPerRequest(_)
        ));
        // A per-request quota can still be reset.
        let _ = limiter.reset_bucket("tiers:api_key", "k").await.unwrap();
        assert!(matches!(
            err(limiter.peek_bucket("default:ip", "not-an-ip").await),
            InspectError::BadIp(_)
        ));
        assert!(matches!(
            err(limiter.peek_bucket("default:user", "").await),
            InspectError::EmptyKey
        ));
        assert!(matches!(
            err(limiter.peek_bucket("override:api_key", "k").await),
            InspectError::NoOverride(_)
        ));
        assert!(matches!(
            err(limiter.peek_bucket("override:tenant", "k").await),
            InspectError::UnknownBucket(_)
        ));
        assert!(matches!(
            limiter.set_override_for_kind("tenant", "t", "1/min"),
            Err(InspectError::UnknownKeyKind(_))
        ));
        assert!(matches!(
            limiter.set_override_for_kind("api_key", "k", "1/fortnight"),
            Err(InspectError::Rate(_))
        ));
    }

    #[tokio::test]
    async fn overrides_by_kind_hash_secrets_like_the_middleware() {
        let limiter = limiter();
        limiter
            .set_override_for_kind("api_key", "secret-key", "20/min")
            .unwrap();
        // The same entry as the typed API makes: removing it through it works.
        assert_eq!(
            limiter.overrides(),
            vec![OverrideInfo {
                kind: "api_key".into(),
                key: crate::key::store_key(b"secret-key", true),
                limit: Rate::from("20/min").limit().unwrap(),
            }]
        );
        assert!(limiter.overrides()[0].key.starts_with('#'));
        let o = limiter
            .peek_bucket("override:api_key", "secret-key")
            .await
            .unwrap();
        assert_eq!(o.buckets[0].limit, 20);
        // The key as listed names it too: an operator need not put the credential in a
        // URL (a review: the digest named a digest of the digest, and removed nothing).
        let listed = limiter.overrides()[0].key.clone();
        let o = limiter
            .peek_bucket("override:api_key", &listed)
            .await
            .unwrap();
        assert_eq!(o.buckets[0].limit, 20);
        assert!(limiter
            .remove_override_for_kind("api_key", &listed)
            .unwrap());
        assert!(limiter.overrides().is_empty());
        limiter
            .set_override_for_kind("api_key", "secret-key", "20/min")
            .unwrap();
        assert!(limiter.remove_override(&Key::api_key("x-api-key"), "secret-key"));
        assert!(!limiter
            .remove_override_for_kind("api_key", "secret-key")
            .unwrap());
        assert!(limiter.overrides().is_empty());
    }
}
