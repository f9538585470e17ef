//! [`RedisStore`]: bucket state in Redis, one Lua round trip per request, on the Redis
//! server's clock (fixed windows: on the instance's).
//!
//! # Keys
//!
//! A bucket's key is the store's prefix (default `tollgate:`) followed by
//! [`Bucket::key`] (`<bucket name>:<key>`), for example `tollgate:default:ip:203.0.113.7`.
//! A fixed window keeps each window's count in a key of its own, that key and
//! `:<window index>` (microseconds since the Unix epoch divided by the period,
//! [`RedisStore::redis_key_at`]), for example `tollgate:default:ip:203.0.113.7:29412345`.
//! Sliding windows, token buckets and fixed windows keep one string per key; an exact
//! sliding log keeps a hash with one field per admitted instant. Every key written gets an
//! expiry (`PXAT` / `PEXPIREAT`) one second after its state is back to fresh (see "Time"),
//! so idle keys leave Redis by themselves.
//!
//! The values hold only what the scripts' arguments do not: a token bucket its theoretical
//! arrival time and the emission interval it was worked out with (`<tat>:<interval>`, µs:
//! when the bucket's sustained rate changes, what it counted carries over in tokens and the
//! key is written back in the new interval at once); a fixed window its count, a plain
//! integer; a sliding window a short tag of its shape (`<segments>:<segment µs>|`) and
//! then, for each segment that still counts, its index, count and the time of its last
//! admission (19 bytes, binary). Keys written by earlier versions are read and rewritten in
//! this form on their next change (a token bucket's `<tat>` alone is read in the interval
//! of the call, as it was before; a fixed window's count in the bucket's own key,
//! `-<used>`, carries into its window's key when that is first written; during a rolling
//! upgrade, instances of the earlier version keep counting in the old key, apart, until
//! its window ends, and read a token bucket's `<tat>:<interval>` as another algorithm's
//! state: such a key starts afresh there, once, and is written back as `<tat>`).
//!
//! A key holds one state. When a bucket's shape changes (another algorithm, a sliding
//! window's other window or segments, a reload; or, across a fleet mid-rollout, instances
//! that hold different limits for one bucket name), what the key's state still counts under
//! its own limit **carries over** into the new shape, counted as admitted at the change (a
//! sliding window's or an exact log's count as one admission now, a token bucket's TAT
//! the count's worth ahead, at most a window or the old state's freshness if longer; see
//! `decide.lua`). So a fleet whose instances disagree on a limit stays limited
//! (alternating requests admit at most what the looser limit allows in its window) and a
//! reload keeps what was counted. The key is rewritten in the new shape by the first call
//! (a look excepted), refused or not, when the old state is of a shorter window (a token
//! bucket's: until it is full again) and the new shape holds its count at least as long (a
//! token bucket's TAT far enough ahead): a limit lengthened from a minute to an hour holds
//! a client that spent it for the hour from the change. Otherwise only by a call that
//! changes it (a refusal written over a count of a window as long or longer would date it
//! anew, and a client alternating between two instances be refused for as long as it keeps
//! sending), and a call refused on the old state is told to wait until enough of it leaves
//! for its cost to fit. (A call the shorter window admits writes the count in its shape,
//! which leaves with that window: the longer window's instance can then admit its quota
//! again before its own window is over.) The memory store starts afresh on a shape change
//! within one process (it keeps each algorithm's state of a key apart); on Redis the count
//! carries over. An exact log of another window is not another shape: its entries keep
//! their times and each instance counts them in its own window (a shorter window's call
//! drops the entries it no longer counts), so instances whose logs' windows differ admit
//! up to the sum of their limits while they disagree. A token bucket's TAT in the formats
//! before its interval was stored (`<tat>`, `T<tat>`) says no count to another shape and is
//! not carried. A fixed window's keys are its own, so a fixed window and another algorithm
//! are two counters: its count outlives a change to another algorithm and back within the
//! window, as in memory. Its own only while one bucket counts every key by one kind of
//! algorithm: a window's key is the bucket's key and `:<window index>`, which is also the
//! key of the value `<value>:<window index>` under another algorithm, so a bucket counting
//! some keys by a fixed window and others by another (a per-key quota choosing the
//! algorithm, instances disagreeing mid-rollout) lets a client whose value it chooses
//! write over a window's count, which then starts afresh (a review: 33 admitted in a
//! minute against 3). Give each algorithm its own bucket name. A fixed
//! window whose period changes starts afresh, as in memory (another period, another window
//! index); if the period changes back within the old period's window, that window's count
//! counts again (the memory store starts afresh).
//!
//! On Redis Cluster, `{...}` in a key is a *hash tag*: only what is inside the braces decides
//! the slot. A prefix such as `{tollgate}:` puts every key on one slot (every request is then
//! atomic, but one node carries all the rate-limit traffic); braces in bucket names or keys
//! group those keys. Without braces, keys spread over the cluster.
//!
//! # Atomicity
//!
//! On one Redis server, a request is decided by one script run: every bucket is checked and,
//! for a charge, either all are charged or none. On Redis Cluster a script can only touch
//! keys of one slot, so a request whose keys span several slots is decided per slot (those
//! calls run concurrently), and if a slot refuses, the charges of the slots that admitted
//! are given back with a second call. **That path is not atomic across slots**: between the
//! two calls another request may see the temporary charge (and be refused when it would not
//! have been), and if the refund cannot be delivered, the charge stays until the key expires.
//! Put the keys of one request on one slot with a hash tag to avoid it. The give-back runs
//! in a task of its own, so it is still delivered if the caller stops waiting (a timeout).
//!
//! # Abandoned calls
//!
//! A call that times out ([`RedisStoreBuilder::response_timeout`], or
//! [`FallbackStore`](crate::FallbackStore)'s shorter per-call timeout) has usually been sent
//! already: Redis may still run it after the caller was answered otherwise (from memory, or
//! with an error). Such a charge then counts twice (in Redis and in the answer the caller
//! got) or counts although the request was turned away, and what the request gives back
//! afterwards (a refund) is given back where it was answered (the fallback's memory), so
//! Redis keeps that charge for its window. The excess is bounded by the requests a key
//! makes while a call waits (timeout × rate; with the fallback's patience, up to that many
//! timeouts while calls are queued behind answers), and only while Redis is slow.
//! [`FallbackStore`](crate::FallbackStore) makes a call whose connection broke once more
//! through a fresh connection: if Redis ran it before the connection broke, it counts
//! twice (a charge: one request refused early).
//!
//! # Time
//!
//! Sliding windows, sliding logs and token buckets are decided on the Redis server's clock
//! (the script reads `TIME`), so app instances whose clocks differ share one timeline,
//! except in requests that include a fixed window (below).
//! [`Decision::now`] is that time. On a cluster, each node's clock is used for its own keys.
//!
//! **Fixed windows are placed by the instance's clock** ([`RedisStoreBuilder::clock`],
//! default the system clock): the instance names the window's key by its index, so that a
//! charge of one fixed window is one `INCRBY`-shaped call (`fixed.lua`), with no `TIME` and
//! one number back, from which the instance works out remaining, reset and wait. Between
//! instances whose clocks differ, a window's boundary moves by the skew: an instance whose
//! clock runs ahead starts the next window (a fresh count) that much earlier. A request that
//! includes a fixed window is decided entirely on the instance's clock (its other buckets
//! too), and [`Decision::now`] is then the instance's time: a token bucket or sliding
//! window charged alongside a fixed window by an instance whose clock is off is written on
//! that clock, and other instances, on the server's, see it that far ahead or behind (a
//! shared token bucket refusing the fleet's other clients, when the skew is beyond its
//! burst interval). Every key outlives its state by
//! a second, so that an instance whose clock runs behind the server's (or another
//! instance's) by less than that still finds what counts; beyond a second of skew, a key can
//! expire while that instance would still count it.
//!
//! # Numbers
//!
//! The script computes in Lua numbers, exact up to 2^53, which covers every quota
//! ([`MAX_COUNT`](tollgate_limits::MAX_COUNT), 2^53 − 1) and every timestamp until the year
//! 2255. Costs above 2^53 are sent as 2^53 (more than any capacity: the charge is refused
//! the same way).
//! Counts and times kept or replied saturate at 2^53 (where the memory store saturates at
//! `u64::MAX`), so a huge penalty leaves a key refusing normally until about the year 2255
//! (or until reset), never an error. An exact log's saturated total is recounted from the
//! entries still in its window when an entry leaves (or a refund takes one back), as in
//! memory, so a huge penalty that leaves does not take another still counting with it.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{RedisError, RedisResult, Value};
use tollgate_limits::{
    Algorithm, Batch, BoxFuture, Bucket, Clock, Decision, Limit, Op, Store, StoreError,
    SystemClock, Timestamp,
};

use crate::cache::{RefusalCache, DEFAULT_REFUSAL_CACHE};
use crate::error::{redact, RedisConfigError};
use crate::fallback::{lock, Origin};
use crate::script::{self, Arg, Call, Placed};
use crate::slot::slot;

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "tollgate:";

/// The shortest response and connection timeouts, and fallback timeout (shorter ones are
/// taken as this).
pub(crate) const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// The default time a command may wait for Redis's answer before failing.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);

/// The default time a connection attempt may take.
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(1);

/// How the store reaches Redis.
enum Connection {
    /// One multiplexed connection shared by every request, made on first use and remade
    /// after a failure.
    Manager { url: String, manager: SharedManager },
    /// A pool of connections, one per request in flight.
    #[cfg(feature = "deadpool")]
    Pool(deadpool_redis::Pool),
    /// Redis Cluster, connected on first use and renewed as [`Renewing`] says.
    Cluster(SharedCluster),
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Connection::Manager { url, .. } => {
                f.debug_tuple("ConnectionManager").field(url).finish()
            }
            #[cfg(feature = "deadpool")]
            Connection::Pool(pool) => f.debug_tuple("Pool").field(&pool.status()).finish(),
            Connection::Cluster(_) => f.write_str("Cluster"),
        }
    }
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend(Box::new(e))
}

/// Whether an error says the server wants a password first: `NOAUTH`, or the protocol
/// error it answers a long command of a client that did not authenticate with (a review:
/// "unauthenticated multibulk length" was all a missing password was told as).
fn asks_for_password(code: &str, detail: Option<&str>) -> bool {
    code == "NOAUTH"
        || (code == "ERR" && detail.is_some_and(|d| d.contains("Protocol error: unauthenticated")))
}

/// Whether a reply or an error says the server does not have the script.
fn is_noscript(reply: &Result<Value, RedisError>) -> bool {
    match reply {
        Ok(Value::ServerError(e)) => e.code() == "NOSCRIPT",
        Err(e) => e.code() == Some("NOSCRIPT"),
        Ok(_) => false,
    }
}

/// Runs `call`'s script over `conn`: `EVALSHA`, and `EVAL` (which also caches the script
/// again) if the server does not know it (a restart, a failover, `SCRIPT FLUSH`).
async fn run<C: ConnectionLike>(conn: &mut C, call: Call<'_>) -> Result<Decision, StoreError> {
    let mut reply = conn.req_packed_command(&call.command(false)?).await;
    if is_noscript(&reply) {
        reply = conn.req_packed_command(&call.command(true)?).await;
    }
    match reply {
        Err(e) => Err(script_error(e)),
        Ok(Value::ServerError(e)) => Err(script_error(e.into())),
        Ok(reply) => call.decision(&reply),
    }
}

/// The store's error for the script's error reply: a redirection and a password asked
/// for are told as such.
fn script_error(e: RedisError) -> StoreError {
    let detail = e.detail();
    match e.code() {
        Some(code) if is_redirect(code) => redirected(code, detail),
        Some(code) if asks_for_password(code, detail) => StoreError::Unavailable(format!(
            "Redis asks for a password, and the URL gives none it takes \
             (`redis://:<password>@host:port/`, or `redis://<user>:<password>@...` for an ACL \
             user): {e}"
        )),
        _ => backend(e),
    }
}

/// Whether an error code is a Redis Cluster node's redirection.
fn is_redirect(code: &str) -> bool {
    matches!(code, "MOVED" | "ASK")
}

/// A redirection answered to a store made on one server's URL: that server is a node of
/// Redis Cluster, and the error says how to connect to one (a review: the demo's
/// `REDIS_URL` named a cluster node, and its warning said only `Moved: 12561 ...`).
fn redirected(code: &str, detail: Option<&str>) -> StoreError {
    backend(ClusterNode {
        answer: format!("{code} {}", detail.unwrap_or_default()),
    })
}

/// A Redis Cluster node's redirection (`MOVED`, `ASK`), answered to a store made on one
/// server's URL.
#[derive(Debug, thiserror::Error)]
#[error("Redis answered `{answer}`: it is a node of Redis Cluster, which a store on one URL (`REDIS_URL`, `store.url`) cannot use; connect with `RedisStoreBuilder::cluster`")]
struct ClusterNode {
    answer: String,
}

/// How long a [`Renewing`] connection may answer nothing but errors before it is replaced.
const RENEW_AFTER: Duration = Duration::from_secs(1);

/// A connection made on first use, and made afresh once it has answered nothing but errors
/// for [`RENEW_AFTER`]; a call its caller gave up on (the fallback's timeout) counts as an
/// error, as it never answered.
///
/// A `ConnectionManager` makes its connection again only after I/O errors: one whose
/// connection failed otherwise (a password Redis refused, during a password rotation, say;
/// a database that does not exist) would fail every call until the process restarts, and
/// the store would never go back to Redis. A Redis Cluster connection that a failover left
/// refreshing its slots for ever had every call wait until its caller gave up, and was
/// never replaced either (a review: a master killed under load, its replica promoted, and
/// the store on memory for good after 6 of 10 such failovers).
struct Renewing<C> {
    /// The connection, and the runtime that drives it ([`Made`]); shared with that
    /// runtime's [`Forget`] task.
    current: Arc<ArcSwapOption<Made<C>>>,
    /// Held while one is made: a cluster connection is made by connecting, and every call
    /// waiting for one would otherwise make its own.
    making: tokio::sync::Mutex<()>,
    /// Set while calls fail.
    failing: AtomicBool,
    /// Since when calls fail, or since the connection was last replaced.
    failing_since: Mutex<Option<Instant>>,
}

/// A connection made by [`Renewing`], for as long as the runtime that made it runs: a
/// connection's tasks (a multiplexed connection's driver, a `ConnectionManager`'s
/// reconnection and its timers) run on the runtime it was made on, and one used from
/// another runtime once that one ended fails every call, or panics where it polls a timer
/// of the ended runtime (a review: a limiter whose store connected in a runtime used only
/// at start-up panicked about twice per request in the next, for a second, until the
/// connection was renewed). So a task of that runtime ([`Forget`]) forgets the connection
/// when the runtime ends it, and the next call makes one on its own runtime.
struct Made<C> {
    connection: C,
    /// Dropped with this: ends its [`Forget`] task, the connection replaced.
    _replaced: tokio::sync::oneshot::Sender<()>,
}

/// Held by a task on the runtime a [`Made`] connection was made on, until the connection is
/// replaced: dropped by the runtime as it ends, it takes the connection out of its
/// [`Renewing`] if it is still there.
struct Forget<C> {
    slot: std::sync::Weak<ArcSwapOption<Made<C>>>,
    made: std::sync::Weak<Made<C>>,
}

impl<C> Drop for Forget<C> {
    fn drop(&mut self) {
        let Some(slot) = self.slot.upgrade() else {
            return;
        };
        let current = slot.load();
        if current
            .as_ref()
            .is_some_and(|c| std::ptr::eq(Arc::as_ptr(c), self.made.as_ptr()))
        {
            slot.compare_and_swap(&current, None);
        }
    }
}

impl<C> Renewing<C> {
    fn new() -> Self {
        Self {
            current: Arc::new(ArcSwapOption::empty()),
            making: tokio::sync::Mutex::new(()),
            failing: AtomicBool::new(false),
            failing_since: Mutex::new(None),
        }
    }

    /// Notes whether a call through the connection succeeded, dropping a connection that
    /// has failed every call for [`RENEW_AFTER`] (the next call makes another).
    /// (A call that worked costs an atomic load: the clock is read for failures only.)
    fn note(&self, ok: bool) {
        if !ok {
            self.failed_at(Instant::now());
            return;
        }
        if self.failing.load(Ordering::Relaxed) {
            self.failing.store(false, Ordering::Relaxed);
            *lock(&self.failing_since) = None;
        }
    }

    /// A call through the connection failed at `now` ([`Renewing::note`]).
    fn failed_at(&self, now: Instant) {
        let mut since = lock(&self.failing_since);
        match *since {
            None => {
                *since = Some(now);
                self.failing.store(true, Ordering::Relaxed);
            }
            Some(at) if now.duration_since(at) >= RENEW_AFTER => {
                *since = Some(now);
                self.current.store(None);
                tracing::debug!(
                    target: "tollgate",
                    "Redis connection failed every call for {RENEW_AFTER:?}: connecting afresh"
                );
            }
            Some(_) => {}
        }
    }
}

impl<C: Clone + Send + Sync + 'static> Renewing<C> {
    /// The connection, made by `make` if there is none (or the runtime it was made on
    /// ended: [`Made`]).
    async fn get(
        &self,
        make: impl AsyncFnOnce() -> Result<C, StoreError>,
    ) -> Result<C, StoreError> {
        if let Some(c) = &*self.current.load() {
            return Ok(C::clone(&c.connection));
        }
        let _making = self.making.lock().await;
        if let Some(c) = &*self.current.load() {
            return Ok(C::clone(&c.connection));
        }
        let connection = make().await?;
        let (replaced, ended) = tokio::sync::oneshot::channel::<()>();
        let made = Arc::new(Made {
            connection: connection.clone(),
            _replaced: replaced,
        });
        let forget = Forget {
            slot: Arc::downgrade(&self.current),
            made: Arc::downgrade(&made),
        };
        self.current.store(Some(made));
        tokio::spawn(async move {
            let _forget = forget;
            // (An error: the connection was replaced, or the store dropped.)
            let _ = ended.await;
        });
        Ok(connection)
    }

    /// Runs `call` on the connection (made by `make` if there is none), noting whether it
    /// worked: an error Redis answered (`OOM` when full, `READONLY` on a replica) says it
    /// did, and `broken` tells the others; a call dropped before it finished did not.
    async fn run<T, E>(
        &self,
        make: impl AsyncFnOnce() -> Result<C, StoreError>,
        call: impl AsyncFnOnce(&mut C) -> Result<T, E>,
        broken: fn(&E) -> bool,
    ) -> Result<Result<T, E>, StoreError> {
        let mut noted = Noted {
            connection: self,
            ok: false,
        };
        let mut conn = self.get(make).await?;
        let result = call(&mut conn).await;
        noted.ok = !result.as_ref().is_err_and(broken);
        Ok(result)
    }
}

/// Notes a call's outcome on its [`Renewing`] connection when dropped: finished or not.
struct Noted<'a, C> {
    connection: &'a Renewing<C>,
    ok: bool,
}

impl<C> Drop for Noted<'_, C> {
    fn drop(&mut self) {
        self.connection.note(self.ok);
    }
}

/// The multiplexed connection of [`Connection::Manager`], made on first use: lazily, so that
/// building the store needs neither a runtime nor Redis; renewed as [`Renewing`] says.
struct SharedManager {
    client: redis::Client,
    config: ConnectionManagerConfig,
    connection: Renewing<ConnectionManager>,
}

impl SharedManager {
    fn new(client: redis::Client, config: ConnectionManagerConfig) -> Self {
        Self {
            client,
            config,
            connection: Renewing::new(),
        }
    }

    /// [`Renewing::run`] on the manager.
    async fn run<T, E>(
        &self,
        call: impl AsyncFnOnce(&mut ConnectionManager) -> Result<T, E>,
        broken: fn(&E) -> bool,
    ) -> Result<Result<T, E>, StoreError> {
        let make = async || {
            ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())
                .map_err(backend)
        };
        self.connection.run(make, call, broken).await
    }
}

/// The connection of [`Connection::Cluster`], made on first use.
struct SharedCluster {
    client: ClusterClient,
    connection: Renewing<ClusterConnection>,
    /// The longest a call may take: a response's timeout, and a connection's when one is
    /// made afresh. The cluster client retries a call that timed out and connects again by
    /// itself, which took up to 8 s with a master paused (a review).
    limit: Duration,
}

impl SharedCluster {
    /// [`Renewing::run`] on the cluster connection, failing after [`SharedCluster::limit`]:
    /// the scripts, and the `INFO` and `CLUSTER SLOTS` that tell a restarted master.
    async fn run<T, E>(
        &self,
        call: impl AsyncFnOnce(&mut ClusterConnection) -> Result<T, E>,
        broken: fn(&E) -> bool,
    ) -> Result<Result<T, E>, StoreError> {
        let make = async || self.client.get_async_connection().await.map_err(backend);
        tokio::time::timeout(self.limit, self.connection.run(make, call, broken))
            .await
            .map_err(|_| StoreError::Timeout(self.limit))?
    }
}

/// Whether a Redis error says the connection failed, not that Redis answered about its
/// own state or the script's (full, a replica, loading, busy, the script unknown): a new
/// connection would get the same answer. Anything else counts as failed, an `ERR` too
/// (a database that does not exist, refused when the connection was made).
fn broken(e: &RedisError) -> bool {
    !matches!(
        e.code(),
        Some(
            "OOM"
                | "READONLY"
                | "MISCONF"
                | "LOADING"
                | "BUSY"
                | "NOSCRIPT"
                | "EXECABORT"
                | "MASTERDOWN"
        )
    )
}

/// [`broken`], of a store error (one the script's reply made, or a server error reply, is
/// an answer).
fn broken_store(e: &StoreError) -> bool {
    match e {
        StoreError::Backend(inner) => inner.downcast_ref::<RedisError>().is_some_and(broken),
        _ => false,
    }
}

/// Whether a store error says the connection to Redis dropped: an I/O error of a broken
/// pipe, a reset or a closed connection (what the multiplexed connection answers once
/// Redis's `timeout` closed it while idle, or `CLIENT KILL` did). Not a refused
/// connection (nothing to send a call again through), not a timeout, and not an error
/// Redis answered (`NOSCRIPT`, `OOM`, `NOPERM`): a fresh connection would not change them.
/// The connection manager connects afresh after such an error, so a call made again goes
/// through a new connection.
pub(crate) fn connection_broke(e: &StoreError) -> bool {
    match e {
        StoreError::Backend(inner) => inner.downcast_ref::<RedisError>().is_some_and(|e| {
            e.is_connection_dropped() && !e.is_connection_refusal() && !e.is_timeout()
        }),
        _ => false,
    }
}

impl Connection {
    async fn run(&self, call: Call<'_>) -> Result<Decision, StoreError> {
        match self {
            Connection::Manager { manager, .. } => {
                manager
                    .run(async |conn| run(conn, call).await, broken_store)
                    .await?
            }
            #[cfg(feature = "deadpool")]
            Connection::Pool(pool) => {
                let mut conn = pool.get().await.map_err(backend)?;
                run(&mut conn, call).await
            }
            Connection::Cluster(cluster) => {
                cluster
                    .run(async |conn| run(conn, call).await, broken_store)
                    .await?
            }
        }
    }
}

/// How long [`Connection::connect_error`] waits for a connection.
const DIAGNOSIS_TIMEOUT: Duration = Duration::from_secs(1);

impl Connection {
    /// The error of a connection made afresh, outside the multiplexed one (which retries by
    /// itself, so that a call only times out): a wrong password, a database that does not
    /// exist, a password asked for (a `PING` on it), or a refused connection (nothing
    /// listens at the address: a server stopped, a wrong port). `None` if it connects and
    /// answers, is cut off, does not answer within [`DIAGNOSIS_TIMEOUT`] (nor within the
    /// client's own connection timeout: a paused or overloaded server, which is what the
    /// timeout says already), or is a pool or a cluster (which report their own errors).
    async fn connect_error(&self) -> Option<String> {
        let Connection::Manager { manager, .. } = self else {
            return None;
        };
        // Connected without a password, the client has not been asked for one yet: a
        // `PING` is (a password required since the store connected, its connection then
        // cut, showed only as a broken pipe).
        let asked = async {
            let mut conn = manager.client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<Value>(&mut conn).await
        };
        match tokio::time::timeout(DIAGNOSIS_TIMEOUT, asked).await {
            // A refusal: the multiplexed connection's retries showed a stopped Redis as a
            // call that did not answer within the timeout (two reviews read it as latency).
            Ok(Err(e)) if e.is_connection_refusal() => Some(e.to_string()),
            // Otherwise the server's answers only: a connection cut off says nothing more.
            Ok(Err(e)) if !e.is_timeout() && !e.is_io_error() => match script_error(e) {
                StoreError::Unavailable(why) => Some(why),
                other => Some(other.to_string()),
            },
            _ => None,
        }
    }

    /// The text of `INFO <section>`; `None` on Redis Cluster (whose nodes each answer for
    /// themselves), or if the server refuses `INFO` (an ACL without it, a renamed command,
    /// a hosted Redis): it cannot tell, which is not a failure.
    async fn info(&self, section: &str) -> Result<Option<String>, StoreError> {
        let mut cmd = redis::cmd("INFO");
        cmd.arg(section);
        let reply = match self {
            Connection::Manager { manager, .. } => {
                manager
                    .run(async |conn| conn.req_packed_command(&cmd).await, broken)
                    .await?
            }
            #[cfg(feature = "deadpool")]
            Connection::Pool(pool) => {
                let mut conn = pool.get().await.map_err(backend)?;
                conn.req_packed_command(&cmd).await
            }
            Connection::Cluster(_) => return Ok(None),
        };
        info_text(section, reply)
    }

    /// On Redis Cluster, `INFO <section>` of every master, by address (sorted); `None` on
    /// a single server, or if a master refuses `INFO`. Fails if a master does not answer.
    async fn info_of_masters(
        &self,
        section: &str,
    ) -> Result<Option<Vec<(String, String)>>, StoreError> {
        let mut cmd = redis::cmd("INFO");
        cmd.arg(section);
        // `INFO` goes to every master; the answer maps each address to its text.
        let Some(reply) = self.on_cluster(&cmd).await? else {
            return Ok(None);
        };
        let Value::Map(nodes) = reply else {
            return Err(StoreError::Protocol(format!(
                "expected a map of nodes from INFO {section} on Redis Cluster, got {reply:?}"
            )));
        };
        let mut texts = Vec::with_capacity(nodes.len());
        for (address, text) in nodes {
            let address = match address {
                Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Value::SimpleString(text) => text,
                other => format!("{other:?}"),
            };
            match info_text(section, Ok(text))? {
                Some(text) => texts.push((address, text)),
                None => return Ok(None),
            }
        }
        texts.sort();
        Ok(Some(texts))
    }

    /// On Redis Cluster, the answer to `cmd`, routed as the cluster client routes it; `None`
    /// on a single server.
    async fn on_cluster(&self, cmd: &redis::Cmd) -> Result<Option<Value>, StoreError> {
        let Connection::Cluster(cluster) = self else {
            return Ok(None);
        };
        let reply = cluster
            .run(async |conn| conn.req_packed_command(cmd).await, broken)
            .await?
            .map_err(backend)?;
        Ok(Some(reply))
    }

    /// On Redis Cluster, how many masters serve its slots (`CLUSTER SLOTS`), those marked
    /// failing included; 0 on a single server.
    async fn masters(&self) -> Result<usize, StoreError> {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SLOTS");
        let Some(reply) = self.on_cluster(&cmd).await? else {
            return Ok(0);
        };
        let Value::Array(ranges) = reply else {
            return Err(StoreError::Protocol(format!(
                "expected an array of slot ranges from CLUSTER SLOTS, got {reply:?}"
            )));
        };
        // Each range: start, end, then its master ([ip, port, id, ...]) and replicas.
        let mut masters: Vec<String> = ranges
            .iter()
            .filter_map(|range| match range {
                Value::Array(fields) => match fields.get(2) {
                    Some(Value::Array(node)) => Some(format!("{node:?}")),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        masters.sort();
        masters.dedup();
        Ok(masters.len())
    }
}

/// The text of an `INFO <section>` reply; `None` if the server refuses the command for
/// good (an ACL user without it, or a renamed command). Another error (busy with a script,
/// loading, a password asked) is one: the server may answer later. (A review: every error
/// was taken as a refusal, and logged as an ACL's.)
fn info_text(section: &str, reply: RedisResult<Value>) -> Result<Option<String>, StoreError> {
    let refused = |code: &str, detail: Option<&str>| {
        code == "NOPERM"
            || (code == "ERR" && detail.is_some_and(|d| d.starts_with("unknown command")))
    };
    match reply {
        Err(e) if e.code().is_some_and(|code| refused(code, e.detail())) => Ok(None),
        Err(e) => Err(backend(e)),
        Ok(Value::ServerError(e)) if refused(e.code(), e.details()) => Ok(None),
        Ok(Value::ServerError(e)) => Err(backend(e)),
        Ok(Value::BulkString(bytes)) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Ok(Value::VerbatimString { text, .. }) => Ok(Some(text)),
        Ok(other) => Err(StoreError::Protocol(format!(
            "expected text from INFO {section}, got {other:?}"
        ))),
    }
}

/// The value of `field` in the text of an `INFO` reply.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

/// What `INFO memory` says about evictions: a warning if Redis may evict keys when its
/// memory is full (`maxmemory` set, `maxmemory-policy` other than `noeviction`).
/// Every key the store writes has a time to live, so even the `volatile-*` policies
/// choose among them: a lockout, a daily cap, a window's count silently gone.
fn eviction_warning(info: &str) -> Option<String> {
    let maxmemory: u64 = info_field(info, "maxmemory")?.parse().ok()?;
    let policy = info_field(info, "maxmemory_policy")?;
    (maxmemory > 0 && policy != "noeviction").then(|| {
        format!(
            "Redis evicts keys when its memory ({maxmemory} bytes) is full \
             (maxmemory-policy {policy}): rate-limit counts can vanish then, and clients be \
             admitted again; give the limiter a Redis (or database) with \
             maxmemory-policy noeviction"
        )
    })
}

struct Inner {
    connection: Connection,
    prefix: String,
    cache: Option<RefusalCache>,
    /// Places fixed windows.
    clock: Arc<dyn Clock>,
    /// The `run_id` of the server whose eviction policy was looked at last (`None`: none
    /// was; `Some(None)`: a server that gives none) ([`RedisStore::run_id`]): a restarted
    /// or another server is looked at again.
    eviction_checked: Mutex<Option<Option<String>>>,
    /// Whether a refused `INFO` was warned about ([`RedisStore::run_id`]).
    info_refusal_warned: AtomicBool,
    /// The builder's response timeout: a call Redis answers later fails. `None` for a pool.
    response_timeout: Option<Duration>,
}

/// A [`Store`] keeping bucket state in Redis (a server, or Redis Cluster). Clones share one
/// connection.
///
/// ```no_run
/// use tollgate_limits::{Batch, Bucket, Limit, Quota, Store};
/// use tollgate_redis::RedisStore;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::open("redis://127.0.0.1:6379/")?; // connects on first use
/// let bucket = Bucket::new("default:ip", "203.0.113.7", Limit::sliding(Quota::parse("500/min")?));
/// let decision = store.apply(&Batch::charge(vec![bucket])).await?;
/// assert!(decision.allowed);
/// # Ok(()) }
/// ```
///
/// See the [module documentation](crate::store) for keys, atomicity and time.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("connection", &self.inner.connection)
            .field("prefix", &self.inner.prefix)
            .field(
                "refusal_cache",
                &self.inner.cache.as_ref().map(RefusalCache::len),
            )
            .finish()
    }
}

enum Target {
    None,
    Url(String),
    Cluster(Vec<String>),
    #[cfg(feature = "deadpool")]
    Pool(deadpool_redis::Pool),
}

/// Builds a [`RedisStore`]: where Redis is, the key prefix, timeouts, the refusal cache.
pub struct RedisStoreBuilder {
    target: Target,
    prefix: String,
    clock: Arc<dyn Clock>,
    refusal_cache: usize,
    response_timeout: Duration,
    connection_timeout: Duration,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = match &self.target {
            Target::None => "none".to_owned(),
            Target::Url(u) => redact(u),
            Target::Cluster(nodes) => format!(
                "cluster {:?}",
                nodes.iter().map(|n| redact(n)).collect::<Vec<_>>()
            ),
            #[cfg(feature = "deadpool")]
            Target::Pool(_) => "pool".to_owned(),
        };
        f.debug_struct("RedisStoreBuilder")
            .field("target", &target)
            .field("prefix", &self.prefix)
            .field("clock", &self.clock)
            .field("refusal_cache", &self.refusal_cache)
            .field("response_timeout", &self.response_timeout)
            .field("connection_timeout", &self.connection_timeout)
            .finish()
    }
}

impl Default for RedisStoreBuilder {
    fn default() -> Self {
        Self {
            target: Target::None,
            prefix: DEFAULT_PREFIX.to_owned(),
            clock: Arc::new(SystemClock),
            refusal_cache: DEFAULT_REFUSAL_CACHE,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            connection_timeout: DEFAULT_CONNECTION_TIMEOUT,
        }
    }
}

impl RedisStoreBuilder {
    /// Connect to one Redis server through one multiplexed connection
    /// ([`ConnectionManager`]), the fastest way: concurrent requests share its writes.
    /// `redis://[user:password@]host[:port][/db]`, `rediss://` (feature `tls`) or
    /// `unix:///path/to/socket`.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.target = Target::Url(url.into());
        self
    }

    /// Connect to Redis Cluster through these initial nodes, each a URL as for
    /// [`RedisStoreBuilder::url`] (the rest of the cluster is discovered). Keys are grouped
    /// by hash slot; see the [module documentation](crate::store).
    ///
    /// ```
    /// use tollgate_redis::{FallbackConfig, RedisStore};
    ///
    /// let store = RedisStore::builder()
    ///     .cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])
    ///     // Each request's keys in one slot: one script call per request.
    ///     .prefix("{app}:")
    ///     .for_fallback(&FallbackConfig::default())
    ///     .build()?;
    /// assert!(store.is_cluster());
    /// # Ok::<(), tollgate_redis::RedisConfigError>(())
    /// ```
    pub fn cluster<I, S>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.target = Target::Cluster(nodes.into_iter().map(Into::into).collect());
        self
    }

    /// Use an application's existing deadpool-redis pool: each request takes a connection
    /// from it for its round trip. (One multiplexed connection, [`RedisStoreBuilder::url`],
    /// carried 1.6 to 1.9 times the decisions per second in the benchmark.) Feature
    /// `deadpool`.
    #[cfg(feature = "deadpool")]
    pub fn pool(mut self, pool: deadpool_redis::Pool) -> Self {
        self.target = Target::Pool(pool);
        self
    }

    /// What every key starts with. Default [`DEFAULT_PREFIX`] (`tollgate:`). On Redis Cluster,
    /// braces are a hash tag: `{tollgate}:` puts every key on one slot.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The clock that places fixed windows (see "Time" in the [module
    /// documentation](crate::store)). Default [`SystemClock`], the instance's wall clock.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// How many keys the local cache of refusals may hold; 0 turns it off. Default
    /// 10 000: a client hammering while refused then costs, per
    /// [`REFUSAL_CACHE_MAX_AGE`](crate::REFUSAL_CACHE_MAX_AGE), only the Redis calls it sends
    /// within one round trip of a cached refusal's end, until its wait is over. See
    /// [`RedisStore`]'s "Refusal cache" notes in the crate documentation.
    pub fn refusal_cache(mut self, max_keys: usize) -> Self {
        self.refusal_cache = max_keys;
        self
    }

    /// How long one command may wait for its answer before it fails. Default
    /// [`DEFAULT_RESPONSE_TIMEOUT`]. ([`FallbackStore`](crate::FallbackStore) has its own,
    /// shorter, per-call timeout.) Not used with a deadpool-redis pool (feature
    /// `deadpool`), whose own configuration applies. On Redis Cluster, a call (the client's
    /// retries and a connection made afresh included) fails after this and the
    /// [connection timeout](RedisStoreBuilder::connection_timeout) together. At least
    /// 1 ms (as [`FallbackConfig::with_timeout`](crate::FallbackConfig::with_timeout)):
    /// zero would fail calls that Redis answers at once.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout.max(MIN_TIMEOUT);
        self
    }

    /// Waits for an answer at least as long as a [`FallbackStore`](crate::FallbackStore)
    /// of `config` may wait for its primary (its timeout, and while the primary answers
    /// other calls its patience in timeouts, [`FallbackConfig::with_patience`](crate::FallbackConfig::with_patience)): a store behind a fallback whose
    /// timeout ([`FallbackConfig::with_timeout`](crate::FallbackConfig::with_timeout)) is
    /// longer than this store's response timeout would otherwise fail its calls at the
    /// shorter one (a review set 2 s and saw every call give up at 500 ms). The stores made
    /// from the environment and from configuration files are made this way.
    pub fn for_fallback(self, config: &crate::FallbackConfig) -> Self {
        let timeout = self
            .response_timeout
            .max(config.timeout().saturating_mul(config.patience()));
        self.response_timeout(timeout)
    }

    /// How long one connection attempt may take. Default [`DEFAULT_CONNECTION_TIMEOUT`];
    /// at least 1 ms.
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout.max(MIN_TIMEOUT);
        self
    }

    fn parse(url: &str) -> Result<redis::Client, RedisConfigError> {
        redis::Client::open(url).map_err(|source| RedisConfigError::InvalidUrl {
            url: redact(url),
            source,
        })
    }

    /// The store. Nothing connects yet: the first call does, so an unreachable Redis is a
    /// failed call (which [`FallbackStore`](crate::FallbackStore) answers from memory),
    /// never a failed start.
    ///
    /// # Errors
    ///
    /// No connection given, a URL that does not parse, or a cluster with no nodes.
    pub fn build(self) -> Result<RedisStore, RedisConfigError> {
        let connection = match self.target {
            Target::None => return Err(RedisConfigError::NoConnection),
            Target::Url(url) => Connection::Manager {
                manager: SharedManager::new(
                    Self::parse(&url)?,
                    ConnectionManagerConfig::new()
                        .set_response_timeout(Some(self.response_timeout))
                        .set_connection_timeout(Some(self.connection_timeout))
                        // Reconnect quickly after Redis restarts; every failed command
                        // triggers a new attempt after these are spent (after I/O errors;
                        // after others, `SharedManager` makes a new manager).
                        .set_min_delay(Duration::from_millis(20))
                        .set_max_delay(Duration::from_millis(500))
                        .set_number_of_retries(4),
                ),
                url: redact(&url),
            },
            Target::Cluster(nodes) => {
                if nodes.is_empty() {
                    return Err(RedisConfigError::EmptyCluster);
                }
                for node in &nodes {
                    Self::parse(node)?;
                }
                let client = ClusterClient::builder(nodes.clone())
                    .response_timeout(self.response_timeout)
                    .connection_timeout(self.connection_timeout)
                    .retries(2)
                    .build()
                    .map_err(|source| RedisConfigError::InvalidUrl {
                        url: nodes
                            .iter()
                            .map(|n| redact(n))
                            .collect::<Vec<_>>()
                            .join(","),
                        source,
                    })?;
                Connection::Cluster(SharedCluster {
                    client,
                    connection: Renewing::new(),
                    limit: self
                        .response_timeout
                        .saturating_add(self.connection_timeout),
                })
            }
            #[cfg(feature = "deadpool")]
            Target::Pool(pool) => Connection::Pool(pool),
        };
        // A pool's own configuration applies, not the builder's timeout.
        #[cfg(feature = "deadpool")]
        let response_timeout =
            (!matches!(connection, Connection::Pool(_))).then_some(self.response_timeout);
        #[cfg(not(feature = "deadpool"))]
        let response_timeout = Some(self.response_timeout);
        Ok(RedisStore::with_connection(
            connection,
            self.prefix,
            self.refusal_cache,
            self.clock,
            response_timeout,
        ))
    }
}

impl RedisStore {
    /// A builder.
    pub fn builder() -> RedisStoreBuilder {
        RedisStoreBuilder::default()
    }

    /// A store on the Redis server at `url`, through one multiplexed connection made on
    /// first use, with the default prefix and refusal cache.
    ///
    /// # Errors
    ///
    /// [`RedisConfigError::InvalidUrl`].
    pub fn open(url: &str) -> Result<Self, RedisConfigError> {
        Self::builder().url(url).build()
    }

    /// A store using an application's deadpool-redis pool, with the default prefix and
    /// refusal cache. Feature `deadpool`.
    #[cfg(feature = "deadpool")]
    pub fn from_pool(pool: deadpool_redis::Pool) -> Self {
        Self::with_connection(
            Connection::Pool(pool),
            DEFAULT_PREFIX.to_owned(),
            DEFAULT_REFUSAL_CACHE,
            Arc::new(SystemClock),
            None,
        )
    }

    fn with_connection(
        connection: Connection,
        prefix: String,
        refusal_cache: usize,
        clock: Arc<dyn Clock>,
        response_timeout: Option<Duration>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                connection,
                prefix,
                cache: (refusal_cache > 0).then(|| RefusalCache::new(refusal_cache)),
                clock,
                eviction_checked: Mutex::new(None),
                info_refusal_warned: AtomicBool::new(false),
                response_timeout,
            }),
        }
    }

    /// How long a call waits for Redis's answer before it fails (the builder's response
    /// timeout); `None` for a deadpool-redis pool, whose own configuration applies.
    pub(crate) fn gives_up_after(&self) -> Option<Duration> {
        self.inner.response_timeout
    }

    /// Whether every call goes through one multiplexed connection, answered in the order
    /// its calls were written: not a pool, not Redis Cluster.
    pub(crate) fn answers_in_order(&self) -> bool {
        matches!(self.inner.connection, Connection::Manager { .. })
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The Redis key of `bucket`: the prefix and [`Bucket::key`]. A fixed window keeps each
    /// window's count in a key of its own, this key and `:<window index>`
    /// ([`RedisStore::redis_key_at`]).
    pub fn redis_key(&self, bucket: &Bucket) -> String {
        let mut key = String::with_capacity(self.inner.prefix.len() + bucket.key.len() + 12);
        key.push_str(&self.inner.prefix);
        key.push_str(&bucket.key);
        key
    }

    /// The Redis key holding `bucket`'s state when the store's clock reads `at`: for a fixed
    /// window, [`RedisStore::redis_key`] and `:<window index>` (the microseconds since the
    /// Unix epoch divided by the period: windows are aligned on the epoch, as the memory
    /// store aligns them, so a day's ends at midnight UTC); for the other algorithms,
    /// [`RedisStore::redis_key`].
    pub fn redis_key_at(&self, bucket: &Bucket, at: Timestamp) -> String {
        let mut key = self.redis_key(bucket);
        if let Algorithm::FixedWindow = bucket.limit.algorithm() {
            let (index, _, _) =
                script::fixed_window(bucket.limit.quota().period_micros(), at.as_micros());
            key.push(':');
            key.push_str(&index.to_string());
        }
        key
    }

    /// The SHA1 of the general Lua script (`decide.lua`), the name `EVALSHA` calls it by.
    pub fn script_sha() -> &'static str {
        script::SHA.as_str()
    }

    /// The general Lua script's source (to load it with `SCRIPT LOAD`, or read it).
    pub fn script_source() -> &'static str {
        script::SOURCE
    }

    /// The SHA1 of the Lua script that charges one fixed window (`fixed.lua`).
    pub fn fixed_window_script_sha() -> &'static str {
        script::FIXED_SHA.as_str()
    }

    /// The source of the Lua script that charges one fixed window.
    pub fn fixed_window_script_source() -> &'static str {
        script::FIXED_SOURCE
    }

    /// The arguments after `EVALSHA` that this store sends for `batch` when its clock reads
    /// `now` (which places fixed windows): the script's SHA (one of
    /// [`RedisStore::script_sha`] and [`RedisStore::fixed_window_script_sha`]), the number
    /// of keys, the keys, then the numbers. With them, `redis-cli` or `redis-benchmark` can
    /// replay exactly what the store asks (the benchmark does), and
    /// [`RedisStore::script_decision`] reads the reply. On Redis Cluster the store may split
    /// a batch by hash slot; this is the call of a batch that is not split.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidBatch`] for a batch the store would refuse to send.
    pub fn script_call(&self, batch: &Batch, now: Timestamp) -> Result<Vec<String>, StoreError> {
        self.with_call(batch, now, |call| {
            Ok(call
                .command(false)?
                .args_iter()
                .skip(1)
                .map(|a| match a {
                    redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                    _ => String::new(),
                })
                .collect())
        })
    }

    /// Lays `batch` out as the store would send it at `now` (checked, keys placed, the
    /// script chosen) and runs `f` on that call.
    fn with_call<R>(
        &self,
        batch: &Batch,
        now: Timestamp,
        f: impl FnOnce(&Call<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        batch.validate()?;
        let (now, keys) = self.placed(batch, || now);
        let args = self.args(batch, &keys);
        f(&Call {
            op: batch.op,
            buckets: &args,
            now,
        })
    }

    /// The arguments after `EVALSHA <sha>` that this store sends for `batch` now: the number
    /// of keys, the keys, then the numbers ([`RedisStore::script_call`] without the SHA,
    /// at the store's clock).
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidBatch`] for a batch the store would refuse to send.
    pub fn script_args(&self, batch: &Batch) -> Result<Vec<String>, StoreError> {
        let mut args = self.script_call(batch, self.inner.clock.now())?;
        args.remove(0);
        Ok(args)
    }

    /// The decision a script's `reply` to [`RedisStore::script_call`]`(batch, now)` means,
    /// as the store reads it.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidBatch`] for a batch the store would refuse to send,
    /// [`StoreError::Protocol`] for a reply the script would not give, and the server's
    /// error if the reply is one.
    pub fn script_decision(
        &self,
        batch: &Batch,
        now: Timestamp,
        reply: &Value,
    ) -> Result<Decision, StoreError> {
        self.with_call(batch, now, |call| match reply {
            Value::ServerError(e) => Err(backend(e.clone())),
            reply => call.decision(reply),
        })
    }

    /// The time a batch is laid out at (read from `clock` only when it has a fixed window,
    /// which that time places) and its Redis keys: what `decide` sends and
    /// [`RedisStore::script_call`] shows, from one place.
    fn placed(
        &self,
        batch: &Batch,
        clock: impl FnOnce() -> Timestamp,
    ) -> (Option<u64>, Vec<String>) {
        let now = needs_clock(batch).then(|| clock().as_micros());
        (now, self.keys(batch, now))
    }

    /// The batch's keys; fixed windows' placed at `now`.
    fn keys(&self, batch: &Batch, now: Option<u64>) -> Vec<String> {
        batch
            .buckets
            .iter()
            .map(|b| match now {
                Some(now) => self.redis_key_at(b, Timestamp::from_micros(now)),
                None => self.redis_key(b),
            })
            .collect()
    }

    /// The scripts' view of `batch`'s buckets, under their Redis `keys`.
    fn args<'a>(&self, batch: &'a Batch, keys: &'a [String]) -> Vec<Arg<'a>> {
        let cluster = self.is_cluster();
        batch
            .buckets
            .iter()
            .zip(keys)
            .map(|(b, key)| Arg {
                key,
                limit: &b.limit,
                cost: b.cost,
                // The key before window keys, on another slot: a script may not read it.
                no_migration: cluster
                    && matches!(b.limit.algorithm(), Algorithm::FixedWindow)
                    && slot(key) != slot(&self.redis_key(b)),
                placed: None,
            })
            .collect()
    }

    /// Raises each bucket's key to at least `bucket.cost` counted, fresh again in the
    /// duration beside it, in one script call per hash slot: what
    /// [`FallbackStore`](crate::FallbackStore) writes back to a Redis that restarted
    /// empty. A key that counts as much already is left alone, so instances restoring a key
    /// at once raise it to the larger of their counts, never to their sum; what a key lacks
    /// is placed as late as its freshness allows (as [`MemoryStore::mirror`] places a
    /// count), so it leaves when it would have.
    ///
    /// [`MemoryStore::mirror`]: tollgate_limits::MemoryStore::mirror
    pub(crate) async fn restore(
        &self,
        owed: &[(Bucket, Duration)],
    ) -> Result<Decision, StoreError> {
        self.place(owed, false).await
    }

    /// Adds each bucket's cost to its key, placed as [`RedisStore::restore`] places what it
    /// adds (fresh again in the duration beside it), in one script call per hash slot: what
    /// [`FallbackStore`](crate::FallbackStore) admitted from memory while Redis failed,
    /// given back. Placed so, a rolling window's count leaves when memory's would have,
    /// not a window after the give-back, and a token bucket's adds the time memory still
    /// owes rather than whole tokens: a client that waits the `Retry-After` memory gave it
    /// is admitted.
    pub(crate) async fn give_back(
        &self,
        owed: &[(Bucket, Duration)],
    ) -> Result<Decision, StoreError> {
        self.place(owed, true).await
    }

    /// [`RedisStore::restore`] (`add` false) or [`RedisStore::give_back`] (`add` true).
    async fn place(&self, owed: &[(Bucket, Duration)], add: bool) -> Result<Decision, StoreError> {
        let batch = Batch::new(Op::Penalize, owed.iter().map(|(b, _)| b.clone()).collect());
        batch.validate()?;
        let (now, keys) = self.placed(&batch, || self.inner.clock.now());
        let mut args = self.args(&batch, &keys);
        for (arg, (_, fresh)) in args.iter_mut().zip(owed) {
            arg.placed = Some(Placed {
                fresh: u64::try_from(fresh.as_micros()).unwrap_or(u64::MAX),
                add,
            });
        }
        let decision = if self.is_cluster() {
            self.decide_by_slot(Op::Penalize, &args, now).await?
        } else {
            let call = Call {
                op: Op::Penalize,
                buckets: &args,
                now,
            };
            self.inner.connection.run(call).await?
        };
        if let Some(cache) = self.inner.cache.as_ref() {
            cache.forget(&batch.buckets);
        }
        Ok(decision)
    }

    /// The Redis server's `run_id` (from `INFO server`): it changes when the server
    /// restarts, which is how [`FallbackStore`](crate::FallbackStore) knows that Redis may
    /// have come back empty. `None` on Redis Cluster, and when the server refuses `INFO`
    /// (an ACL user without it, a renamed command): a restart is then not noticed, which
    /// is logged as a warning the first time (a review: a Redis restarted empty, a
    /// lockout's 5 failures answered 5 more and 500 more of a spent 500 a minute admitted,
    /// and nothing said why).
    ///
    /// # Errors
    ///
    /// The server could not be reached or did not answer `INFO`.
    pub async fn run_id(&self) -> Result<Option<String>, StoreError> {
        let connection = &self.inner.connection;
        let Some(server) = connection.info("server").await? else {
            if !self.is_cluster() && !self.inner.info_refusal_warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    target: "tollgate",
                    "Redis refuses INFO (an ACL user without it, or a renamed command): a Redis \
                     that restarts empty is not noticed, so the counts this instance holds are \
                     not written back to it, and whether Redis may evict counts is not checked; \
                     allow INFO for this user (`+info`)"
                );
            }
            return Ok(None);
        };
        let run_id = info_field(&server, "run_id").map(str::to_owned);
        // Once per server start, the first time it answers: whether it may evict the
        // counts (a review restarted Redis with another policy, or failed over to a server
        // configured otherwise, and nothing was said).
        let checked = |checked: &Option<Option<String>>| checked.as_ref() == Some(&run_id);
        if !checked(&lock(&self.inner.eviction_checked)) {
            if let Ok(memory) = connection.info("memory").await {
                let warning = memory.as_deref().and_then(eviction_warning);
                let mut last = lock(&self.inner.eviction_checked);
                if !checked(&last) {
                    *last = Some(run_id.clone());
                    drop(last);
                    if let Some(warning) = warning {
                        tracing::warn!(target: "tollgate", "{warning}");
                    }
                }
            }
        }
        Ok(run_id)
    }

    /// What identifies the data the server holds: its `run_id` and its replication id
    /// (`master_replid`, from `INFO replication`), which changes when the server takes
    /// another's data (made a replica, a full sync replaces its keys with its master's)
    /// and when a replica is promoted. [`FallbackStore`](crate::FallbackStore) writes the
    /// counts it holds back when this changes: a review made the store's Redis a replica
    /// of an empty one and then a master again, with the same `run_id` and none of its
    /// counts (8 failures of a lockout of 5 answered). `None` as for
    /// [`RedisStore::run_id`]; without `INFO replication`, the `run_id` alone.
    ///
    /// # Errors
    ///
    /// The server could not be reached or did not answer `INFO`.
    pub async fn incarnation(&self) -> Result<Option<String>, StoreError> {
        if self.is_cluster() {
            return self.cluster_incarnation().await;
        }
        let Some(run_id) = self.run_id().await? else {
            return Ok(None);
        };
        let replication = self.inner.connection.info("replication").await?;
        let replid = replication
            .as_deref()
            .and_then(|info| info_field(info, "master_replid"))
            .unwrap_or_default();
        Ok(Some(format!("{run_id}/{replid}")))
    }

    /// On Redis Cluster: each master's address, `run_id` and replication id. It changes
    /// when a master restarts, or a replica takes over from one, which may have lost counts
    /// either way; and it fails while a master does not answer, so that
    /// [`FallbackStore`](crate::FallbackStore) gives nothing back to the cluster until
    /// every master does (a review: calls that gave back an outage's admissions, queued on
    /// a paused master and sent again at each return, ran together when it resumed, and
    /// charged keys up to 14 times for one admission).
    async fn cluster_incarnation(&self) -> Result<Option<String>, StoreError> {
        let connection = &self.inner.connection;
        let Some(servers) = connection.info_of_masters("server").await? else {
            return Ok(None);
        };
        let Some(replication) = connection.info_of_masters("replication").await? else {
            return Ok(None);
        };
        // `INFO` reaches the masters the client knows: one it dropped after it went down
        // is missing from the answer, which is not a restart (a re-check saw a killed
        // master reported restarted while it was still down). The cluster still names it
        // as a master until a replica takes over.
        let masters = connection.masters().await?;
        if servers.len() < masters {
            return Err(StoreError::Unavailable(format!(
                "{} of the {masters} masters of the Redis Cluster answered",
                servers.len()
            )));
        }
        let ids: Vec<String> = servers
            .iter()
            .map(|(address, server)| {
                let replid = replication
                    .iter()
                    .find(|(a, _)| a == address)
                    .and_then(|(_, text)| info_field(text, "master_replid"))
                    .unwrap_or_default();
                let run_id = info_field(server, "run_id").unwrap_or_default();
                format!("{address}={run_id}/{replid}")
            })
            .collect();
        Ok(Some(ids.join(",")))
    }

    /// Why a connection made afresh fails, if it does: what a call that only timed out
    /// hides (the multiplexed connection retries by itself), such as a wrong password, a
    /// database that does not exist, or a refused connection (nothing listens at the
    /// address). `None` if it connects or does not answer within a second.
    pub async fn connect_error(&self) -> Option<String> {
        self.inner.connection.connect_error().await
    }

    /// On Redis Cluster, the hash slot `bucket`'s key is in now (a fixed window's key is
    /// its current window's); `None` on a single server.
    pub(crate) fn slot_of(&self, bucket: &Bucket) -> Option<Slot> {
        self.is_cluster()
            .then(|| slot(&self.redis_key_at(bucket, self.inner.clock.now())))
    }

    /// Whether this store talks to Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.connection, Connection::Cluster(_))
    }

    /// Decides `batch`: from the refusal cache if it knows the refusal
    /// ([`Origin::Cache`]), otherwise on Redis ([`Origin::Backend`]). [`Store::apply`]
    /// answers the decision; [`Primary::apply_with_origin`](crate::Primary::apply_with_origin)
    /// both.
    pub(crate) async fn decide(&self, batch: &Batch) -> Result<(Decision, Origin), StoreError> {
        batch.validate()?;
        let cache = self.inner.cache.as_ref();
        let sent_at = Instant::now();
        if let (Some(cache), Op::Charge) = (cache, batch.op) {
            if let Some(decision) = cache.lookup(&batch.buckets, sent_at) {
                return Ok((decision, Origin::Cache));
            }
        }
        // Before sending: a refund or reset answered meanwhile makes this answer stale.
        let generations = cache.map(RefusalCache::generations);
        // A fixed window is placed by this instance's clock.
        let (now, keys) = self.placed(batch, || self.inner.clock.now());
        let args = self.args(batch, &keys);
        let decision = if self.is_cluster() {
            self.decide_by_slot(batch.op, &args, now).await?
        } else {
            let call = Call {
                op: batch.op,
                buckets: &args,
                now,
            };
            self.inner.connection.run(call).await?
        };
        if let (Some(cache), Some(generations)) = (cache, generations) {
            match batch.op {
                Op::Charge if !decision.allowed => {
                    cache.record(&batch.buckets, &decision, sent_at, generations)
                }
                Op::Peek => {}
                _ => cache.forget(&batch.buckets),
            }
        }
        Ok((decision, Origin::Backend))
    }

    /// Redis Cluster: one script run per hash slot, concurrently; a charge refused by one
    /// slot is given back in the others.
    async fn decide_by_slot(
        &self,
        op: Op,
        args: &[Arg<'_>],
        now: Option<u64>,
    ) -> Result<Decision, StoreError> {
        let call = |op, buckets| Call { op, buckets, now };
        let slots: Vec<_> = args.iter().map(|a| slot(a.key)).collect();
        let mut distinct = Vec::with_capacity(slots.len());
        for s in &slots {
            if !distinct.contains(s) {
                distinct.push(*s);
            }
        }
        if distinct.len() == 1 {
            return self.inner.connection.run(call(op, args)).await;
        }
        let groups: Vec<(Vec<usize>, Vec<Arg<'_>>)> = distinct
            .iter()
            .map(|&s| {
                let idx: Vec<usize> = (0..args.len()).filter(|&i| slots[i] == s).collect();
                let group = idx.iter().map(|&i| args[i]).collect();
                (idx, group)
            })
            .collect();
        let results = futures_util::future::join_all(
            groups
                .iter()
                .map(|(_, group)| self.inner.connection.run(call(op, group))),
        )
        .await;

        let charged =
            |r: &Result<Decision, StoreError>| op == Op::Charge && matches!(r, Ok(d) if d.allowed);
        let failed = results.iter().any(|r| r.is_err());
        let refused = results.iter().any(|r| matches!(r, Ok(d) if !d.allowed));
        let give_back = op == Op::Charge && (failed || refused);
        let mut results = results;
        if give_back {
            // In a task of its own, with owned arguments: dropping this call's future (a
            // caller's timeout, such as FallbackStore's) does not cancel the give-back.
            // An exact log's charge is given back at the time its node placed it: a plain
            // refund takes the log's newest entry, which may be a later request's (its own,
            // older, then leaves the window early: a review saw 21 of 20 admitted within a
            // window), and another node's time may be after it (nothing found). Other
            // algorithms are given back whole: a token bucket given back at the charge's
            // time keeps what refilled since, and overlapping give-backs added up to a token
            // kept (a re-check).
            type Owed = (Option<Timestamp>, Vec<(String, Limit, u64, bool)>);
            let mut owed: Vec<Owed> = Vec::new();
            // Where each call's answers go: the group's index in `results`, the buckets'
            // places in it.
            let mut places: Vec<(usize, Vec<usize>)> = Vec::new();
            for (g, ((_, group), r)) in groups.iter().zip(&results).enumerate() {
                let Ok(d) = r else { continue };
                if !charged(r) {
                    continue;
                }
                for log in [true, false] {
                    let (spots, args): (Vec<usize>, Vec<_>) = group
                        .iter()
                        .enumerate()
                        .filter(|(_, a)| (a.limit.algorithm() == Algorithm::SlidingLog) == log)
                        .map(|(j, a)| (j, (a.key.to_owned(), *a.limit, a.cost, a.no_migration)))
                        .unzip();
                    if !args.is_empty() {
                        places.push((g, spots));
                        owed.push((log.then_some(d.now), args));
                    }
                }
            }
            let inner = self.inner.clone();
            let refunds = tokio::spawn(async move {
                let inner = &inner;
                futures_util::future::join_all(owed.iter().map(|(at, group)| async move {
                    let args: Vec<Arg<'_>> = group
                        .iter()
                        .map(|(key, limit, cost, no_migration)| Arg {
                            key,
                            limit,
                            cost: *cost,
                            no_migration: *no_migration,
                            placed: None,
                        })
                        .collect();
                    inner
                        .connection
                        .run(Call {
                            op: at.map_or(Op::Refund, Op::RefundAt),
                            buckets: &args,
                            now,
                        })
                        .await
                        .inspect_err(|e| {
                            tracing::warn!(
                                target: "tollgate::redis",
                                error = %e,
                                "could not give back a charge on one Redis Cluster slot after another slot refused; it stays until the key expires"
                            )
                        })
                        .ok()
                }))
                .await
            })
            .await
            // (If the task panicked, the charges stay, as if undelivered.)
            .unwrap_or_default();
            // The buckets fit but were not charged: report them as they are now.
            for ((g, spots), refund) in places.iter().zip(refunds) {
                if let (Some(refund), Ok(d)) = (refund, &mut results[*g]) {
                    for (&j, state) in spots.iter().zip(refund.buckets) {
                        d.buckets[j] = state;
                    }
                }
            }
        }

        let mut states = vec![None; args.len()];
        let mut allowed = true;
        // The earliest of the nodes' times: a charge given back at it after the response
        // (`Op::RefundAt`, a `304` under `refund_if`) finds each slot's own entry at or
        // after it. At the latest, a node that answered earlier found none in an exact
        // log, and kept the charge (a review: 10 refunded requests left 3 and 7 counted).
        let mut now: Option<Timestamp> = None;
        for ((idx, _), result) in groups.iter().zip(results) {
            let d = result?;
            allowed &= d.allowed;
            now = Some(now.map_or(d.now, |n| n.min(d.now)));
            for (i, state) in idx.iter().zip(d.buckets) {
                states[*i] = Some(state);
            }
        }
        if op != Op::Charge && op != Op::Peek {
            allowed = true;
        }
        Ok(Decision {
            allowed,
            now: now.unwrap_or_default(),
            buckets: states.into_iter().flatten().collect(),
        })
    }
}

/// Whether a batch needs the store's clock: a fixed window is placed by it.
fn needs_clock(batch: &Batch) -> bool {
    batch
        .buckets
        .iter()
        .any(|b| matches!(b.limit.algorithm(), Algorithm::FixedWindow))
}

impl Store for RedisStore {
    fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(async move { Ok(self.decide(batch).await?.0) })
    }

    /// Redis is shared by every process that uses it.
    fn mode(&self) -> tollgate_limits::StoreMode {
        tollgate_limits::StoreMode::Shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection whose calls are all given up on (a cluster connection stuck refreshing
    /// its slots after a failover: each call waited until the fallback's timeout dropped
    /// it) is made afresh after [`RENEW_AFTER`], as one whose calls fail; one call that
    /// works in between keeps it.
    #[tokio::test]
    async fn a_connection_whose_calls_never_answer_is_made_afresh() {
        let made = std::sync::atomic::AtomicU64::new(0);
        let make = async || Ok::<_, StoreError>(made.fetch_add(1, Ordering::Relaxed) + 1);
        let connection = Renewing::<u64>::new();
        let never = async |_: &mut u64| std::future::pending::<Result<(), ()>>().await;
        let given_up = connection.run(make, never, |_| true);
        let waited = tokio::time::timeout(Duration::from_millis(1), given_up).await;
        assert!(waited.is_err());
        let since = lock(&connection.failing_since).expect("a call given up on is a failure");
        assert_eq!(connection.get(make).await.unwrap(), 1);
        connection.failed_at(since + RENEW_AFTER / 2);
        assert_eq!(connection.get(make).await.unwrap(), 1);
        connection.failed_at(since + RENEW_AFTER);
        assert_eq!(connection.get(make).await.unwrap(), 2);
        // Calls that answer keep the connection.
        let answers = async |conn: &mut u64| Ok::<u64, ()>(*conn);
        assert_eq!(
            connection.run(make, answers, |_| true).await.unwrap(),
            Ok(2)
        );
        assert!(lock(&connection.failing_since).is_none());
        connection.failed_at(since + RENEW_AFTER * 3);
        assert_eq!(connection.get(make).await.unwrap(), 2);
    }

    /// The shape of Redis 7's `INFO memory` (lines end in `\r\n`; names share prefixes).
    fn info(maxmemory: u64, policy: &str) -> String {
        format!(
            "# Memory\r\nused_memory:1000000\r\nmaxmemory:{maxmemory}\r\n\
             maxmemory_human:1.00M\r\nmaxmemory_policy:{policy}\r\n"
        )
    }

    #[test]
    fn a_redis_that_may_evict_keys_is_warned_about() {
        for policy in [
            "allkeys-lru",
            "volatile-lru",
            "volatile-ttl",
            "allkeys-random",
        ] {
            let warning = eviction_warning(&info(1_048_576, policy)).unwrap();
            assert!(warning.contains(policy), "{warning}");
            assert!(warning.contains("noeviction"), "{warning}");
        }
        // Writes fail instead (the store falls back), or there is no limit to reach.
        assert_eq!(eviction_warning(&info(1_048_576, "noeviction")), None);
        assert_eq!(eviction_warning(&info(0, "allkeys-lru")), None);
        assert_eq!(eviction_warning("# Memory\r\n"), None);
    }

    #[test]
    fn only_errors_redis_did_not_answer_count_against_the_connection() {
        use redis::{ErrorKind, ServerErrorKind};
        let answered = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ReadOnly),
            "You can't write against a read only replica.",
        ));
        assert!(!broken(&answered));
        assert!(!broken_store(&backend(answered)));
        for failed in [
            RedisError::from((ErrorKind::AuthenticationFailed, "WRONGPASS")),
            RedisError::from((
                ErrorKind::Server(ServerErrorKind::ResponseError),
                "DB index is out of range",
            )),
            RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)),
        ] {
            assert!(broken(&failed), "{failed}");
            assert!(broken_store(&backend(failed)));
        }
        assert!(!broken_store(&StoreError::Protocol("an odd reply".into())));
    }

    /// Only a connection that dropped is worth a call through a fresh one: not a refused
    /// connection, a timeout, nor an error Redis answered.
    #[test]
    fn only_a_dropped_connection_is_made_again() {
        use redis::{ErrorKind, ServerErrorKind};
        let io = |kind| backend(RedisError::from(std::io::Error::from(kind)));
        for dropped in [
            std::io::ErrorKind::BrokenPipe,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::ConnectionAborted,
            std::io::ErrorKind::UnexpectedEof,
        ] {
            assert!(connection_broke(&io(dropped)), "{dropped:?}");
        }
        for not in [
            std::io::ErrorKind::ConnectionRefused,
            std::io::ErrorKind::TimedOut,
        ] {
            assert!(!connection_broke(&io(not)), "{not:?}");
        }
        for answered in [
            ServerErrorKind::NoScript,
            ServerErrorKind::ReadOnly,
            ServerErrorKind::NoPerm,
        ] {
            let e = RedisError::from((ErrorKind::Server(answered), "answered"));
            assert!(!connection_broke(&backend(e)), "{answered:?}");
        }
        assert!(!connection_broke(&StoreError::Timeout(
            Duration::from_millis(50)
        )));
        assert!(!connection_broke(&StoreError::Protocol("odd".into())));
    }

    /// The builder keeps what it is given, and shows it without the URL's password.
    #[test]
    fn the_builder_keeps_its_settings_and_hides_the_password() {
        let builder = RedisStore::builder()
            .url("redis://user:s3cret@127.0.0.1:6390/2")
            .prefix("app:")
            .refusal_cache(7)
            .response_timeout(Duration::from_millis(50))
            .connection_timeout(Duration::from_secs(2));
        let shown = format!("{builder:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        for setting in [
            "127.0.0.1:6390/2",
            "prefix: \"app:\"",
            "refusal_cache: 7",
            "response_timeout: 50ms",
            "connection_timeout: 2s",
        ] {
            assert!(shown.contains(setting), "{setting} in {shown}");
        }
    }

    /// Timeouts out of range are taken in range, never a panic (a review: the largest
    /// durations panicked building a cluster's store, adding the two; zero failed calls
    /// Redis answered at once).
    #[test]
    fn timeouts_are_taken_in_range() {
        let zero = RedisStore::builder()
            .url("redis://127.0.0.1:6390/")
            .response_timeout(Duration::ZERO)
            .connection_timeout(Duration::ZERO);
        let shown = format!("{zero:?}");
        for setting in ["response_timeout: 1ms", "connection_timeout: 1ms"] {
            assert!(shown.contains(setting), "{setting} in {shown}");
        }
        let largest = RedisStore::builder()
            .cluster(["redis://127.0.0.1:6390/"])
            .response_timeout(Duration::MAX)
            .connection_timeout(Duration::MAX)
            .build();
        assert!(largest.is_ok());
    }

    #[test]
    fn info_fields_are_read_whole() {
        let text = info(5, "volatile-lru");
        assert_eq!(info_field(&text, "maxmemory"), Some("5"));
        assert_eq!(info_field(&text, "maxmemory_policy"), Some("volatile-lru"));
        assert_eq!(info_field(&text, "max"), None);
    }
}
