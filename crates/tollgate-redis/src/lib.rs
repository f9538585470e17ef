//! The Redis store of [tollgate](https://docs.rs/tollgate), and the fallback store that keeps
//! limiting from memory when Redis is slow, down, restarting or failing over.
//!
//! - [`RedisStore`]: a [`Store`](tollgate_limits::Store) keeping bucket state in Redis. One Lua
//!   script evaluates every bucket of a request in one round trip (`EVALSHA`, reloaded on
//!   `NOSCRIPT`), on the Redis server's clock (fixed windows are placed by the instance's
//!   clock, and a charge of one runs an `INCRBY`-shaped script of its own), refusing
//!   without charging any bucket when one refuses, and setting an expiry on every key it
//!   writes. It gives the same decisions as
//!   [`MemoryStore`](tollgate_limits::MemoryStore) for every algorithm, operation, cost and set
//!   of buckets (on Redis Cluster, one script per hash slot: a refusal in one slot gives
//!   back the charges made in the others, and a request's buckets are decided together only
//!   when the prefix's hash tag, `{app}:`, puts them in one slot). Connects through one
//!   multiplexed connection (the default, and the fastest), an application's
//!   `deadpool_redis::Pool` (feature `deadpool`), or Redis Cluster (in code,
//!   [`RedisStoreBuilder::cluster`]; [`from_env`]'s URL names one server).
//! - [`FallbackStore`]: a per-call timeout and a circuit breaker in front of a primary store;
//!   decides from memory (or fails open / closed, per batch) while the primary fails, probes it
//!   in the background and returns to it.
//! - [`from_env`]: `REDIS_URL` / `KV_URL` set → `FallbackStore<RedisStore>`; unset → memory;
//!   `TOLLGATE_FALLBACK_DIVISOR`, `TOLLGATE_REDIS_TIMEOUT_MS` and `TOLLGATE_REDIS_PATIENCE`
//!   set the fallback's divisor, timeout and patience.
//!
//! Both stores are made anywhere (in a `static`, before a runtime starts) but decide only
//! in a tokio runtime with its I/O and time drivers enabled (`#[tokio::main]`'s, or
//! `Builder::enable_all`): their calls and timeouts are tokio's.
//!
//! ```no_run
//! use std::time::Duration;
//! use tollgate_limits::{Batch, Bucket, Limit, Quota, Store};
//! use tollgate_redis::{FallbackConfig, FallbackStore, RedisStore};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = RedisStore::builder()
//!     .url("redis://127.0.0.1:6379/")
//!     .prefix("myapp:rl:")
//!     .build()?;
//! let store = FallbackStore::with_config(redis, FallbackConfig::default().with_timeout(Duration::from_millis(50)));
//!
//! let per_ip = Bucket::new("default:ip", "203.0.113.7", Limit::sliding(Quota::parse("500/min")?));
//! let per_user = Bucket::new("default:user", "u_42", Limit::sliding(Quota::parse("10000/h")?));
//! let decision = store.apply(&Batch::charge(vec![per_ip, per_user])).await?;
//! println!("admitted: {}, retry after: {:?}", decision.allowed, decision.retry_after());
//! # Ok(()) }
//! ```
//!
//! # Which Redis
//!
//! One that does not evict the store's keys: `maxmemory-policy noeviction` (when full, it
//! refuses writes and [`FallbackStore`] decides from memory), or a Redis of its own. Under
//! any other policy with `maxmemory` set, the `volatile-*` ones included (every key the
//! store writes has a time to live), a full Redis drops counts silently: a lockout, a
//! daily cap. [`RedisStore::run_id`] (which [`FallbackStore`]'s checks call) reads
//! `INFO memory` once per server start (each new `run_id`), and logs a warning when Redis
//! may evict.
//!
//! # Refusal cache
//!
//! A client that keeps sending while it is refused would cost a Redis round trip per request.
//! [`RedisStore`] remembers refusals locally: once Redis refused a key until T, a charge of the
//! same buckets before T at the same cost is refused without asking Redis, with the wait
//! shortened by the time that passed (a costlier charge goes to Redis: it must wait longer,
//! and only Redis knows how much). It is **on by default** (10 000 keys,
//! [`RedisStoreBuilder::refusal_cache`] sets the size or turns it off with 0). Measured with
//! the benchmark (`cargo bench -p tollgate-redis --features deadpool --bench throughput`,
//! 2 shared cores, eleven runs on two machines): 64 tasks hammering one refused key got 0.9
//! to 4.7 million answers per second from the cache against 18,000 to 160,000 through Redis
//! (29 to 130 times more), and Redis received nothing (that was before a cached refusal
//! answered for at most a second, below). While the cache is empty it costs one atomic load per
//! request. What it trades: a refund or
//! reset made by *another* instance (or Redis restarting empty) is seen by this instance
//! when T passes or [`REFUSAL_CACHE_MAX_AGE`] (1 s) after the refusal, whichever is first: a
//! cached refusal answers for at most that long, then the next charge asks Redis again (so
//! a key hammered while refused costs each instance, each second, the calls that arrive
//! within one round trip of the entry's end); refunds and
//! resets made through this store take effect at once.
//! Refusals are never extended by the cache: its deadline is counted from when the request
//! was sent, so it lets go no later than Redis would.
//!
//! # Connections
//!
//! One multiplexed connection ([`RedisStoreBuilder::url`], a
//! `redis::aio::ConnectionManager`) lets every concurrent request share one socket and its
//! writes; in the benchmark here it carried 1.6 to 1.9 times (medians of three runs of 5 to
//! 15 rounds) the decisions per second of a deadpool-redis pool of 64 connections, whose connections each
//! carry one request at a time (`RedisStoreBuilder::pool`, feature `deadpool`, accepts an
//! application's pool anyway), and about as many as `redis-benchmark` sending the same script call. The
//! connection is made on first use and remade after Redis restarts.
//!
//! The Redis server's time bounds throughput: in the benchmark here (a shared 2-core
//! machine, 11 interleaved rounds) a decision on one sliding-window bucket took the server
//! 7.2 µs (`usec_per_call`, median; a `TIME`, `GET`, `SET` GCRA script 5.9 µs in the same
//! rounds), one token bucket 6.9 µs, one fixed window 2.9 µs (a bare `INCRBY` + `PEXPIRE`
//! script 2.7 µs), two sliding-window buckets 13.0 µs; so one Redis core decides some
//! 70,000 to 300,000 requests per second, depending on the buckets per request and their
//! algorithms (`BENCHMARKS.md`; the machine was faster than the one of the figures before,
//! so compare the ratios there).
//!
//! # Features
//!
//! None is on by default.
//!
//! - `tls`: `rediss://` URLs (rustls with the webpki roots).
//! - `deadpool`: `RedisStoreBuilder::pool` and `RedisStore::from_pool`, for an application
//!   that already has a deadpool-redis pool, and the `deadpool_redis` re-export. Off by
//!   default because one multiplexed connection is faster, and because with it a major
//!   release of deadpool-redis is a breaking change.

mod cache;
pub mod env;
pub mod error;
pub mod fallback;
mod ledger;
mod script;
mod slot;
pub mod store;
mod under_way;

pub use cache::{DEFAULT_REFUSAL_CACHE, REFUSAL_CACHE_MAX_AGE};
pub use env::{
    fallback_config_from_env, from_env, from_env_with, from_env_with_memory, redis_url_from_env,
    EnvStore, FALLBACK_VARIABLES, URL_VARIABLES,
};
pub use error::RedisConfigError;
pub use fallback::{
    FallbackConfig, FallbackStore, Mode, Origin, Primary, DEFAULT_MIRROR_KEYS, DEFAULT_PATIENCE,
    DEFAULT_PROBE_MAX, DEFAULT_TIMEOUT, MAX_WAIT, WATCH_EVERY,
};
pub use store::{
    RedisStore, RedisStoreBuilder, DEFAULT_CONNECTION_TIMEOUT, DEFAULT_PREFIX,
    DEFAULT_RESPONSE_TIMEOUT,
};

/// Re-exported so applications can build the pool they hand to
/// [`RedisStoreBuilder::pool`] with the same version (feature `deadpool`, off by default:
/// a major release of deadpool-redis is a breaking change of this feature only).
#[cfg(feature = "deadpool")]
pub use deadpool_redis;
/// Re-exported for the same reason.
pub use redis;
