//! The store an application gets from its environment: Redis (with the memory fallback) when
//! `REDIS_URL` or `KV_URL` is set, memory otherwise.
//!
//! The fallback's settings can come from the environment too ([`FALLBACK_VARIABLES`]):
//! `TOLLGATE_FALLBACK_DIVISOR` (the number of app instances, see
//! [`FallbackConfig::fallback_divisor`]), `TOLLGATE_REDIS_TIMEOUT_MS` (see
//! [`FallbackConfig::timeout`]) and `TOLLGATE_REDIS_PATIENCE` (see
//! [`FallbackConfig::patience`]); [`from_env`] and [`from_env_with`] read them, over
//! the settings given in code, and [`fallback_config_from_env`] applies them to any
//! settings.
//!
//! ```no_run
//! use tollgate_limits::Store;
//!
//! # fn demo() -> Result<(), tollgate_redis::RedisConfigError> {
//! let store = tollgate_redis::from_env()?; // a bad URL is an error here; an unreachable Redis is not
//! match store.redis() {
//!     Some(fallback) => println!("rate limits in Redis, now on {}", fallback.mode()),
//!     None => println!("rate limits in memory (no REDIS_URL / KV_URL)"),
//! }
//! # Ok(()) }
//! ```

use tollgate_limits::{Batch, BoxFuture, Decision, MemoryStore, Store, StoreError};

use crate::error::RedisConfigError;
use crate::fallback::{FallbackConfig, FallbackStore};
use crate::store::{RedisStore, RedisStoreBuilder};

/// The environment variables holding the Redis URL, in the order they are read (empty
/// values count as unset). `KV_URL` is what Vercel KV / Upstash set.
pub const URL_VARIABLES: [&str; 2] = ["REDIS_URL", "KV_URL"];

/// The environment variables of the fallback's settings: the divisor of limits on memory
/// (the number of app instances, [`FallbackConfig::fallback_divisor`]), the per-call
/// timeout in milliseconds ([`FallbackConfig::timeout`]) and the patience, in timeouts, of
/// a call queued behind Redis's answers ([`FallbackConfig::patience`]). Each, when set and
/// not empty, must be a whole number of at least 1 (a timeout of more than an hour is
/// taken as an hour, [`MAX_WAIT`](crate::MAX_WAIT)).
pub const FALLBACK_VARIABLES: [&str; 3] = [
    "TOLLGATE_FALLBACK_DIVISOR",
    "TOLLGATE_REDIS_TIMEOUT_MS",
    "TOLLGATE_REDIS_PATIENCE",
];

/// `config` with what the environment sets of [`FALLBACK_VARIABLES`] applied over it
/// (unset or empty variables leave it as it is).
///
/// ```
/// use tollgate_redis::{fallback_config_from_env, FallbackConfig};
///
/// // With TOLLGATE_FALLBACK_DIVISOR=3 in the environment, the divisor is 3.
/// let config = fallback_config_from_env(FallbackConfig::default())?;
/// assert!(config.fallback_divisor() >= 1);
/// # Ok::<(), tollgate_redis::RedisConfigError>(())
/// ```
///
/// # Errors
///
/// [`RedisConfigError::InvalidEnv`] for a value that is not a whole number of at least 1.
pub fn fallback_config_from_env(
    config: FallbackConfig,
) -> Result<FallbackConfig, RedisConfigError> {
    fallback_config_from(|name| std::env::var(name).ok(), config)
}

fn fallback_config_from(
    get: impl Fn(&str) -> Option<String>,
    mut config: FallbackConfig,
) -> Result<FallbackConfig, RedisConfigError> {
    let [divisor, timeout, patience] = FALLBACK_VARIABLES;
    if let Some(n) = positive(
        &get,
        divisor,
        "the number of app instances, a whole number of at least 1",
    )? {
        config = config.with_fallback_divisor(u32::try_from(n).unwrap_or(u32::MAX));
    }
    if let Some(ms) = positive(&get, timeout, "milliseconds, a whole number of at least 1")? {
        config = config.with_timeout(std::time::Duration::from_millis(ms));
    }
    if let Some(n) = positive(&get, patience, "timeouts, a whole number of at least 1")? {
        config = config.with_patience(u32::try_from(n).unwrap_or(u32::MAX));
    }
    Ok(config)
}

/// The variable's value as a number of at least 1, if set and not empty.
fn positive(
    get: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
    expected: &'static str,
) -> Result<Option<u64>, RedisConfigError> {
    let Some(value) = get(variable) else {
        return Ok(None);
    };
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    match trimmed.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(Some(n)),
        _ => Err(RedisConfigError::InvalidEnv {
            variable,
            value,
            expected,
        }),
    }
}

/// The Redis URL of the environment, if any (see [`URL_VARIABLES`]).
pub fn redis_url_from_env() -> Option<String> {
    url_from(|name| std::env::var(name).ok())
}

fn url_from(get: impl Fn(&str) -> Option<String>) -> Option<String> {
    URL_VARIABLES
        .iter()
        .filter_map(|name| get(name))
        .map(|v| v.trim().to_owned())
        .find(|v| !v.is_empty())
}

/// A store chosen by the environment: see [`from_env`].
#[derive(Debug, Clone)]
pub enum EnvStore {
    /// No Redis URL: state in this process.
    Memory(MemoryStore),
    /// Redis, falling back to memory when it fails.
    Redis(FallbackStore<RedisStore>),
}

impl EnvStore {
    /// The Redis fallback store, if a Redis URL was set.
    pub fn redis(&self) -> Option<&FallbackStore<RedisStore>> {
        match self {
            EnvStore::Redis(store) => Some(store),
            EnvStore::Memory(_) => None,
        }
    }
}

impl Store for EnvStore {
    fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
        match self {
            EnvStore::Memory(store) => store.apply(batch),
            EnvStore::Redis(store) => store.apply(batch),
        }
    }

    fn apply_sync(
        &self,
        op: tollgate_limits::Op,
        buckets: &[tollgate_limits::Bucket],
        states: &mut [tollgate_limits::BucketState],
    ) -> Option<Result<tollgate_limits::Timestamp, StoreError>> {
        match self {
            // In memory, decided on the calling thread like a bare `MemoryStore`.
            EnvStore::Memory(store) => store.apply_sync(op, buckets, states),
            EnvStore::Redis(store) => store.apply_sync(op, buckets, states),
        }
    }

    fn mode(&self) -> tollgate_limits::StoreMode {
        match self {
            EnvStore::Memory(store) => store.mode(),
            EnvStore::Redis(store) => Store::mode(store),
        }
    }

    fn fallbacks(&self) -> u64 {
        match self {
            EnvStore::Memory(_) => 0,
            EnvStore::Redis(store) => store.fallbacks(),
        }
    }
}

/// The store of the environment: `REDIS_URL` (or `KV_URL`) set → a [`FallbackStore`] over a
/// [`RedisStore`] at that URL with the default settings and those of
/// [`FALLBACK_VARIABLES`]; unset → a [`MemoryStore`].
///
/// Never connects and never fails because Redis is unreachable (the fallback store starts on
/// memory and probes it); only a URL that does not parse is an error.
///
/// # Errors
///
/// [`RedisConfigError::InvalidUrl`], [`RedisConfigError::InvalidEnv`].
pub fn from_env() -> Result<EnvStore, RedisConfigError> {
    from_env_with(RedisStore::builder(), FallbackConfig::default())
}

/// [`from_env`] with a builder for the Redis store (prefix, refusal cache, timeouts; its URL
/// is replaced by the environment's) and fallback settings (over which
/// [`FALLBACK_VARIABLES`] apply).
///
/// # Errors
///
/// [`RedisConfigError::InvalidUrl`], [`RedisConfigError::InvalidEnv`].
pub fn from_env_with(
    redis: RedisStoreBuilder,
    config: FallbackConfig,
) -> Result<EnvStore, RedisConfigError> {
    from_env_with_memory(redis, config, MemoryStore::new())
}

/// [`from_env_with`], with the memory store to use: the store itself without a URL, the
/// fallback's memory with one (a store bounded with [`MemoryStore::builder`]'s
/// `max_entries`, say).
///
/// # Errors
///
/// [`RedisConfigError::InvalidUrl`], [`RedisConfigError::InvalidEnv`].
pub fn from_env_with_memory(
    redis: RedisStoreBuilder,
    config: FallbackConfig,
    memory: MemoryStore,
) -> Result<EnvStore, RedisConfigError> {
    from_url(
        redis_url_from_env(),
        redis,
        fallback_config_from_env(config)?,
        memory,
    )
}

fn from_url(
    url: Option<String>,
    redis: RedisStoreBuilder,
    config: FallbackConfig,
    memory: MemoryStore,
) -> Result<EnvStore, RedisConfigError> {
    Ok(match url {
        None => EnvStore::Memory(memory),
        Some(url) => EnvStore::Redis(FallbackStore::with_memory(
            redis.url(url).for_fallback(&config).build()?,
            memory,
            config,
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store of `url` with the default settings and memory store.
    fn url_store(url: Option<&str>) -> Result<EnvStore, RedisConfigError> {
        from_url(
            url.map(String::from),
            RedisStore::builder(),
            FallbackConfig::default(),
            MemoryStore::new(),
        )
    }

    /// An environment of `pairs`.
    fn vars(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn reads_redis_url_then_kv_url() {
        assert_eq!(url_from(vars(&[])), None);
        assert_eq!(
            url_from(vars(&[
                ("KV_URL", "rediss://kv:1"),
                ("REDIS_URL", "redis://r:2")
            ])),
            Some("redis://r:2".into())
        );
        assert_eq!(
            url_from(vars(&[("KV_URL", "rediss://kv:1"), ("REDIS_URL", "  ")])),
            Some("rediss://kv:1".into())
        );
    }

    #[test]
    fn the_memory_store_of_the_environment_decides_synchronously() {
        use tollgate_limits::{Bucket, BucketState, Limit, Op, Quota};
        let store = url_store(None).unwrap();
        let buckets = [Bucket::new("b", "k", Limit::sliding(Quota::per_minute(2)))];
        let mut states = [BucketState::default()];
        for allowed in [true, true, false] {
            let decided = store.apply_sync(Op::Charge, &buckets, &mut states);
            assert!(matches!(decided, Some(Ok(_))), "{decided:?}");
            assert_eq!(states[0].allowed, allowed);
        }
        // Redis never answers on the calling thread.
        let redis = url_store(Some("redis://127.0.0.1:1/")).unwrap();
        assert!(redis
            .apply_sync(Op::Charge, &buckets, &mut states)
            .is_none());
    }

    #[test]
    fn memory_without_url_and_typed_error_for_a_bad_one() {
        let store = url_store(None).unwrap();
        assert!(store.redis().is_none());
        let err = url_store(Some("http://user:pw@host")).unwrap_err();
        assert!(matches!(err, RedisConfigError::InvalidUrl { .. }));
        assert!(!err.to_string().contains("pw"), "{err}");
        let store = url_store(Some("redis://127.0.0.1:1/")).unwrap();
        assert!(store.redis().is_some());
    }

    #[test]
    fn fallback_settings_come_from_the_environment_with_typed_errors() {
        let base = FallbackConfig::default().with_fallback_divisor(2);
        let same = fallback_config_from(vars(&[("TOLLGATE_FALLBACK_DIVISOR", " ")]), base.clone());
        assert_eq!(same.unwrap(), base);
        let set = fallback_config_from(
            vars(&[
                ("TOLLGATE_FALLBACK_DIVISOR", "3"),
                ("TOLLGATE_REDIS_TIMEOUT_MS", " 20 "),
                ("TOLLGATE_REDIS_PATIENCE", "4"),
            ]),
            base.clone(),
        )
        .unwrap();
        assert_eq!(set.fallback_divisor(), 3);
        assert_eq!(set.timeout(), std::time::Duration::from_millis(20));
        assert_eq!(set.patience(), 4);
        for (variable, value) in [
            ("TOLLGATE_FALLBACK_DIVISOR", "0"),
            ("TOLLGATE_FALLBACK_DIVISOR", "three"),
            ("TOLLGATE_REDIS_TIMEOUT_MS", "-5"),
            ("TOLLGATE_REDIS_TIMEOUT_MS", "1.5"),
            ("TOLLGATE_REDIS_PATIENCE", "0"),
            ("TOLLGATE_REDIS_PATIENCE", "1s"),
        ] {
            let get = move |name: &str| (name == variable).then(|| value.to_string());
            let err = fallback_config_from(get, base.clone()).unwrap_err();
            assert!(
                matches!(&err, RedisConfigError::InvalidEnv { variable: v, value: got, .. }
                    if *v == variable && got == value),
                "{err}"
            );
            assert!(err
                .to_string()
                .starts_with(&format!("environment variable {variable}=")));
        }
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn rediss_without_the_tls_feature_is_a_config_error() {
        let err = url_store(Some("rediss://default:pw@kv.example.com:6379")).unwrap_err();
        assert!(matches!(err, RedisConfigError::InvalidUrl { .. }), "{err}");
    }

    /// A fallback timeout longer than the Redis store's own response timeout (500 ms by
    /// default) is what a call waits: a review set `TOLLGATE_REDIS_TIMEOUT_MS=2000` and saw
    /// every call to a Redis slow for a second give up at 500 ms and leave for memory.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_call_waits_the_fallback_timeout_not_the_stores_default() {
        use std::time::{Duration, Instant};
        use tollgate_limits::{Batch, Bucket, Limit, Quota, Store};

        let server = tollgate_testkit::RedisServer::start();
        let timeout = Duration::from_millis(2000);
        let store = from_url(
            Some(server.url()),
            RedisStore::builder(),
            FallbackConfig::default().with_timeout(timeout),
            MemoryStore::new(),
        )
        .unwrap();
        let batch = Batch::charge(vec![Bucket::new(
            "slow",
            "k",
            Limit::sliding(Quota::per_minute(10)),
        )]);
        assert!(store.apply(&batch).await.unwrap().allowed, "connected");
        // Redis stalls for 900 ms: longer than the store's default, shorter than the
        // fallback's timeout.
        server.pause();
        let started = Instant::now();
        let (answer, ()) = tokio::join!(store.apply(&batch), async {
            tokio::time::sleep(Duration::from_millis(900)).await;
            server.resume();
        });
        assert!(answer.unwrap().allowed);
        assert!(started.elapsed() >= Duration::from_millis(850));
        assert_eq!(store.fallbacks(), 0, "answered by Redis, never left it");
        assert_eq!(store.mode(), tollgate_limits::StoreMode::Shared);
    }
}
