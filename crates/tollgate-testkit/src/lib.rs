//! Test support for tollgate: throwaway `redis-server` processes on free loopback ports,
//! which tests can kill (`SIGKILL`), pause (`SIGSTOP`), resume and restart, and a small
//! Redis Cluster of several masters.
//!
//! Nothing here touches a Redis the machine already runs: every server is started by the
//! test, on a port the kernel handed out as free, with persistence off and its own
//! temporary directory, and is killed when dropped.
//!
//! ```no_run
//! use tollgate_testkit::RedisServer;
//!
//! let mut server = RedisServer::start();
//! let url = server.url(); // redis://127.0.0.1:<port>/
//! server.pause();          // SIGSTOP: connections stay open, calls hang
//! server.resume();         // SIGCONT
//! server.kill();           // SIGKILL
//! server.restart();        // same port, empty
//! # let _ = url;
//! ```
//!
//! `redis-server` and `redis-cli` must be on the `PATH` (Debian/Ubuntu: `apt-get install
//! redis-server`, which brings both; `redis-benchmark` comes with `redis-tools`). If they are
//! missing, [`RedisServer::start`] panics with a message that says so: a test that needs Redis
//! never passes silently without it.

use std::fmt;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a server may take to answer `PING` after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How many fresh ports to try when another process takes the port first.
const START_ATTEMPTS: u32 = 5;

/// Why a server or cluster could not be started.
#[derive(Debug)]
#[non_exhaustive]
pub enum TestkitError {
    /// A Redis binary is not installed.
    Missing {
        /// The program that was not found.
        program: &'static str,
    },
    /// Starting or talking to a process failed.
    Io(std::io::Error),
    /// The server did not come up; the log says why.
    NotReady {
        /// What was expected.
        what: String,
        /// The end of the server's log.
        log: String,
    },
}

impl fmt::Display for TestkitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TestkitError::Missing { program } => write!(
                f,
                "`{program}` was not found on PATH: the Redis tests need a real Redis \
                 (Debian/Ubuntu: `apt-get install redis-server redis-tools`)"
            ),
            TestkitError::Io(e) => write!(f, "{e}"),
            TestkitError::NotReady { what, log } => {
                write!(f, "{what}; end of the server log:\n{log}")
            }
        }
    }
}

impl std::error::Error for TestkitError {}

impl From<std::io::Error> for TestkitError {
    fn from(e: std::io::Error) -> Self {
        TestkitError::Io(e)
    }
}

/// Spawns `program`, mapping "not found" to [`TestkitError::Missing`].
fn spawn(program: &'static str, cmd: &mut Command) -> Result<Child, TestkitError> {
    cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => TestkitError::Missing { program },
        _ => TestkitError::Io(e),
    })
}

/// A loopback port nothing listens on now. With `bus`, `port + 10000` (a cluster node's bus
/// port) is free too.
fn free_port(bus: bool) -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    loop {
        let port = if bus {
            // Cluster bus ports are port + 10000, so stay below 55536; spread the tries
            // with the pid so concurrent test binaries do not race for the same ones.
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let start = u64::from(std::process::id()).wrapping_mul(7919) ^ nanos();
            (20_000 + (start.wrapping_add(n.wrapping_mul(104_729)) % 30_000)) as u16
        } else {
            match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)) {
                Ok(l) => match l.local_addr() {
                    Ok(a) => a.port(),
                    Err(_) => continue,
                },
                Err(_) => continue,
            }
        };
        let free = |p: u16| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok();
        if free(port) && (!bus || free(port + 10_000)) {
            return port;
        }
    }
}

fn nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()))
}

/// Sends a signal to a process with the `kill` program (std has no signals but SIGKILL).
fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg("-s")
        .arg(sig)
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        matches!(status, Ok(s) if s.success()),
        "could not send SIG{sig} to redis-server (pid {pid}): {status:?}"
    );
}

/// Sends one inline command and reads what comes back (enough for `PING` and `INFO`).
fn raw_command(port: u16, command: &str) -> std::io::Result<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.write_all(command.as_bytes())?;
    stream.write_all(b"\r\n")?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if reply_complete(&out) {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Whether `reply` holds a whole simple, error, integer or bulk-string reply.
fn reply_complete(reply: &[u8]) -> bool {
    let Some(eol) = reply.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    if reply.first() != Some(&b'$') {
        return true;
    }
    let len: i64 = std::str::from_utf8(&reply[1..eol])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(-1);
    len < 0 || reply.len() >= eol + 2 + len as usize + 2
}

/// A temporary directory of a test's own (`tollgate-<tag>-<pid>-<n>-<nanos>` under the
/// system's), removed on drop, a panicking test's included.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a new, empty directory whose name starts `tollgate-<tag>-`.
    pub fn new(tag: &str) -> std::io::Result<Self> {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "tollgate-{tag}-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            nanos()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `redis-server` process on a free loopback port, with persistence off (`--save ""
/// --appendonly no`) and its own temporary directory. Killed (`SIGKILL`) and cleaned up on
/// drop.
pub struct RedisServer {
    port: u16,
    cluster: bool,
    dir: TempDir,
    child: Option<Child>,
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("pid", &self.pid())
            .field("cluster", &self.cluster)
            .finish()
    }
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers `PING`.
    ///
    /// # Panics
    ///
    /// If `redis-server` is not installed or does not start; the message says why.
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|e| panic!("cannot start redis-server: {e}"))
    }

    /// [`RedisServer::start`], returning the error instead of panicking.
    ///
    /// # Errors
    ///
    /// [`TestkitError::Missing`] if `redis-server` is not on the `PATH`; otherwise why it
    /// did not come up.
    pub fn try_start() -> Result<Self, TestkitError> {
        Self::start_with(false)
    }

    fn start_with(cluster: bool) -> Result<Self, TestkitError> {
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            let mut server = Self {
                port: free_port(cluster),
                cluster,
                dir: TempDir::new("redis")?,
                child: None,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e @ TestkitError::Missing { .. }) => return Err(e),
                // Most likely another process took the port between the check and the bind.
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| TestkitError::NotReady {
            what: "redis-server did not start".into(),
            log: String::new(),
        }))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.0.join("redis.log")
    }

    fn spawn(&mut self) -> Result<(), TestkitError> {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir.0)
            .arg("--logfile")
            .arg(self.log_path());
        if self.cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn("redis-server", &mut cmd)?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), TestkitError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(TestkitError::NotReady {
                        what: format!("redis-server on port {} exited: {status}", self.port),
                        log: self.log_tail(),
                    });
                }
            }
            if matches!(raw_command(self.port, "PING"), Ok(r) if r.starts_with("+PONG")) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(TestkitError::NotReady {
                    what: format!(
                        "redis-server on port {} did not answer PING within {START_TIMEOUT:?}",
                        self.port
                    ),
                    log: self.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last lines of the server's log (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The process id, while the server runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's directory (its log is `redis.log` there).
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// Whether the process is running (possibly paused).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the server with `SIGKILL` (no shutdown, connections reset) and waits for it to
    /// exit. A no-op if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Pauses the server with `SIGSTOP`: connections stay open and calls hang until
    /// [`RedisServer::resume`].
    ///
    /// # Panics
    ///
    /// If the server is not running.
    pub fn pause(&self) {
        signal(self.pid().expect("redis-server is not running"), "STOP");
    }

    /// Resumes a paused server with `SIGCONT`.
    ///
    /// # Panics
    ///
    /// If the server is not running.
    pub fn resume(&self) {
        signal(self.pid().expect("redis-server is not running"), "CONT");
    }

    /// Kills the server if it runs and starts a new, empty one on the same port.
    ///
    /// # Panics
    ///
    /// If it does not come back (e.g. another process took the port meanwhile).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!("cannot restart redis-server on port {}: {e}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Runs `redis-cli -p <port> <args>` and returns its standard output.
    ///
    /// # Panics
    ///
    /// If `redis-cli` is missing or fails.
    pub fn cli<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        redis_cli(self.port, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `redis-cli -p <port> <args>` and returns its standard output.
fn redis_cli<I, S>(port: u16, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new("redis-cli");
    cmd.arg("-h")
        .arg("127.0.0.1")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = spawn("redis-cli", &mut cmd).unwrap_or_else(|e| panic!("{e}"));
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("redis-cli failed: {e}"));
    assert!(
        out.status.success(),
        "redis-cli -p {port} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Redis Cluster of masters only (no replicas), each a [`RedisServer`] started with
/// `--cluster-enabled yes` on a free loopback port, joined with `redis-cli --cluster create`.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` nodes (at least 3, as Redis requires), creates the cluster and waits
    /// until every node reports `cluster_state:ok` with all 16384 slots assigned.
    ///
    /// # Panics
    ///
    /// If `redis-server` or `redis-cli` is missing or the cluster does not form.
    pub fn start(masters: usize) -> Self {
        Self::try_start(masters).unwrap_or_else(|e| panic!("cannot start a Redis Cluster: {e}"))
    }

    /// [`RedisCluster::start`], returning the error instead of panicking.
    ///
    /// # Errors
    ///
    /// [`TestkitError::Missing`] if a Redis binary is missing; otherwise why the cluster did
    /// not form.
    pub fn try_start(masters: usize) -> Result<Self, TestkitError> {
        assert!(masters >= 3, "a Redis Cluster needs at least 3 masters");
        let nodes = (0..masters)
            .map(|_| RedisServer::start_with(true))
            .collect::<Result<Vec<_>, _>>()?;
        let mut cmd = Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        for node in &nodes {
            cmd.arg(format!("127.0.0.1:{}", node.port()));
        }
        cmd.args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = spawn("redis-cli", &mut cmd)?.wait_with_output()?;
        if !out.status.success() {
            return Err(TestkitError::NotReady {
                what: "redis-cli --cluster create failed".into(),
                log: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        let cluster = Self { nodes };
        cluster.wait_ok()?;
        Ok(cluster)
    }

    fn wait_ok(&self) -> Result<(), TestkitError> {
        let deadline = Instant::now() + START_TIMEOUT * 2;
        'outer: loop {
            for node in &self.nodes {
                let info = raw_command(node.port(), "CLUSTER INFO").unwrap_or_default();
                if !(info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")) {
                    if Instant::now() > deadline {
                        return Err(TestkitError::NotReady {
                            what: format!("cluster node {} not ready", node.port()),
                            log: info,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                    continue 'outer;
                }
            }
            return Ok(());
        }
    }

    /// The nodes, in the order they were started.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Mutable access to the nodes (to kill or pause one).
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// Every node's URL, to give a cluster client as its initial nodes.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The hash slot of `key` and the port of the master serving it, asked from the
    /// cluster itself (`CLUSTER KEYSLOT`, `CLUSTER NODES`).
    pub fn node_of(&self, key: &str) -> (u16, u16) {
        let first = &self.nodes()[0];
        let slot: u16 = first
            .cli(["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("a slot number");
        // Lines: <id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <state> <slots>...
        for line in first.cli(["CLUSTER", "NODES"]).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port: u16 = fields[1]
                .split(['@', ':'])
                .nth(1)
                .and_then(|p| p.parse().ok())
                .expect("a node address");
            for range in fields.iter().skip(8) {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>()) {
                    if (lo..=hi).contains(&slot) {
                        return (slot, port);
                    }
                }
            }
        }
        panic!("no node owns slot {slot}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_says_how_to_install_it() {
        let err = spawn(
            "redis-server",
            &mut Command::new("tollgate-no-such-program"),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            TestkitError::Missing {
                program: "redis-server"
            }
        ));
        assert!(err.to_string().contains("apt-get install"), "{err}");
    }

    #[test]
    fn pause_resume_kill_restart_on_the_same_port() {
        let mut server = RedisServer::start();
        let port = server.port();
        assert!(raw_command(port, "PING").unwrap().starts_with("+PONG"));
        server.cli(["SET", "k", "v"]);

        server.pause();
        assert!(
            raw_command(port, "PING").is_err(),
            "a paused server does not answer"
        );
        server.resume();
        assert!(raw_command(port, "PING").unwrap().starts_with("+PONG"));

        server.kill();
        assert!(!server.is_running());
        assert!(raw_command(port, "PING").is_err());

        server.restart();
        assert_eq!(server.port(), port);
        assert!(server.is_running());
        assert_eq!(server.cli(["EXISTS", "k"]).trim(), "0", "restarted empty");
    }
}

/// A `tracing` subscriber that records every event as `LEVEL target: field=value ...`, for
/// tests that check what is logged. Clones share one log. Install it with
/// `tracing::subscriber::with_default` (tracing caches callsite interest process-wide, so
/// such tests are best alone in their binary).
#[derive(Clone, Default)]
pub struct EventLog {
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    hook: Option<std::sync::Arc<EventHook>>,
}

/// What [`EventLog::with_hook`] runs on each event.
type EventHook = dyn Fn(&str) + Send + Sync;

impl EventLog {
    /// A log that also runs `hook` with each event's line as the event is logged, on the
    /// thread that logs it (before that thread goes on): for a test that must act at the
    /// moment something happens.
    pub fn with_hook(hook: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Self {
            lines: Default::default(),
            hook: Some(std::sync::Arc::new(hook)),
        }
    }

    /// The events recorded so far.
    pub fn events(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The events logged while `test` runs to its end, in order: on a current-thread
    /// runtime (timers and I/O enabled) of its own, with a new log as the thread's
    /// subscriber.
    pub fn during(test: impl std::future::Future<Output = ()>) -> Vec<String> {
        let log = EventLog::default();
        let events = log.clone();
        tracing::subscriber::with_default(log, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime")
                .block_on(test);
        });
        events.events()
    }
}

impl tracing::Subscriber for EventLog {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                use std::fmt::Write as _;
                let _ = write!(self.0, " {}={value:?}", field.name());
            }
        }
        let meta = event.metadata();
        let mut fields = Fields(format!("{} {}:", meta.level(), meta.target()));
        event.record(&mut fields);
        if let Some(hook) = &self.hook {
            hook(&fields.0);
        }
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(fields.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
