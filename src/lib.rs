//! Support code shared by tollgate's examples (`examples/`) and its black-box HTTP tests
//! (`tests/`). Not published; see the `tollgate` crate for the library.

use axum::Router;

/// Serves `app` the way every example does: on `HOST` (default `127.0.0.1`) and `PORT`
/// (default `default_port`; `0` picks a free port), HTTP/1.1, with the peer address
/// available to the limiter (`ConnectInfo<SocketAddr>`, as axum's
/// `into_make_service_with_connect_info` gives it). Prints `listening on http://ADDR`
/// first, which the black-box tests wait for. (Logging is set up by [`main`], before the
/// example builds its limiter.) Ctrl-C stops accepting and lets requests in flight finish;
/// `SIGHUP` does not stop it.
///
/// A connection that has not sent a whole request head within [`HEADER_READ_TIMEOUT`] of
/// starting one (or of the previous response, on a kept-alive connection) is closed: a rate
/// limiter sees only complete requests, so a client that never finishes its headers would
/// otherwise hold a connection (and a file descriptor) for ever, beyond any limit. For the
/// same reason a request body must arrive whole within [`BODY_READ_TIMEOUT`] of its reader
/// first waiting for it (see [`DeadlineBody`]): a handler that reads a body a client stops
/// sending would wait for it, holding its connection, for ever.
///
/// A response to a request whose body was announced and not read to its end (a refusal
/// made before the body is read, a handler that ignores it) says `Connection: close`: the
/// connection cannot carry another request before that body, and a client told nothing
/// would send its next request on a connection going away. The rest of such a body is read
/// and discarded while the response is sent, as long as it keeps arriving ([`LINGER_IDLE`]),
/// then the connection closes: closed under bytes still arriving, it would be reset, and a
/// client that writes its whole body before reading (many do) would see the reset instead
/// of the response (see [`ReadToEnd`]). A connection's read buffer holds at most
/// [`MAX_BUF_SIZE`].
///
/// # Errors
///
/// A bad `HOST`/`PORT`, or an address that cannot be bound.
pub async fn serve(app: Router, default_port: u16) -> std::io::Result<()> {
    use axum::extract::ConnectInfo;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceExt;

    let host = setting("HOST").unwrap_or_else(|| "127.0.0.1".into());
    // An IPv6 address as URLs write it (`[::1]`) is the address.
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(&host);
    let port = match setting("PORT") {
        Some(p) => p.parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("PORT={p} is not a port number"),
            )
        })?,
        None => default_port,
    };
    let listener = listen(host, port)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("HOST={host} PORT={port}: {e}")))?;
    // `SIGHUP` (a closed terminal, an operator's reload habit) must not stop a server:
    // registering it once replaces the default action (terminate) for the process. The
    // examples that reload on it listen for it themselves.
    #[cfg(unix)]
    let _ = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    println!("listening on http://{}", listener.local_addr()?);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF_SIZE);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut stop = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, a connection reset before it was accepted:
                    // the listener stays up.
                    tracing::warn!("accept error: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = tower::service_fn(
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                let (request, read) =
                    ReadToEnd::request(request.map(|b| DeadlineBody::new(b, BODY_READ_TIMEOUT)));
                let app = app.clone();
                async move {
                    let mut response = app.oneshot(request).await?;
                    read.close_if_unread(&mut response);
                    Ok::<_, std::convert::Infallible>(response)
                }
            },
        );
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client that goes away or times out ends its connection: nothing to report.
            let _ = connection.await;
        });
    }
    graceful.shutdown().await;
    Ok(())
}

/// How many connections the kernel holds for the examples before they are accepted (the
/// system's `somaxconn` caps it). `TcpListener::bind` asks for 128: a burst of new
/// connections filled that before the accept loop ran, and the kernel dropped the rest's
/// handshakes, which their clients sent again after a second (a review's 1,500 connections
/// opened at once to a debug build took 4 to 11 s, a second lost at every 129th).
pub const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `host` (a name or an address) and `port`, on the first of its addresses
/// that binds, with room for [`LISTEN_BACKLOG`] connections waiting to be accepted.
async fn listen(host: &str, port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        // Each step may fail for one address (IPv6 switched off in the kernel, say) and not
        // for the next, as in `TcpListener::bind`.
        let listener = (|| {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            // As `TcpListener::bind` does: a restarted example binds its port at once.
            #[cfg(unix)]
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(LISTEN_BACKLOG)
        })();
        match listener {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the host has no address to listen on",
        )
    }))
}

/// The most a connection's read buffer holds before hyper stops reading into it (hyper's
/// default is about 400 KiB): a request head must fit, with the read that passed this
/// (a longer one is answered `431`; a review found heads up to 112 KiB read, 114,689 bytes
/// answered `431`), and a body being read, or the rest of an
/// unread one being discarded (see [`ReadToEnd`]), holds no more than this per connection.
/// At the default, connections draining refused bodies held about 180 KiB each (a review:
/// 800 of them at once took the demo from 9 to about 200 MB).
pub const MAX_BUF_SIZE: usize = 64 * 1024;

/// How long the rest of an unread body may pause before its connection is closed under it
/// (see [`ReadToEnd`]): a client still sending keeps it open, one that stopped does not
/// hold its connection and buffer for the whole [`BODY_READ_TIMEOUT`].
pub const LINGER_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a connection may take to send a request head (see [`serve`]).
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a request body may take to arrive whole, counted from when its reader first
/// waits for it (see [`serve`] and [`DeadlineBody`]).
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pin_project_lite::pin_project! {
    /// A request body that must arrive whole within a time of its reader first waiting for
    /// it: a frame asked for after that is an error ([`BodyTimedOut`]), which a handler
    /// reading the body answers as a bad request (axum's extractors give `400`), and the
    /// server then closes the connection. The clock starts the first time the body is not
    /// ready when read, so a handler that reads late is not blamed on the client, and a
    /// body that is never waited for (an empty one, one already received) costs no timer.
    pub struct DeadlineBody<B> {
        #[pin]
        inner: B,
        timeout: std::time::Duration,
        deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<B> DeadlineBody<B> {
    /// `inner`, which must end within `timeout` of its reader first waiting for it.
    pub fn new(inner: B, timeout: std::time::Duration) -> Self {
        Self {
            inner,
            timeout,
            deadline: None,
        }
    }
}

/// A request body that notes whether it was read to its end, for the response to say
/// whether its connection can carry another request (see [`serve`]), and that reads the
/// rest of an announced body (discarding it) once it is dropped unread: a client that writes
/// its whole body before reading the answer (a refusal made before the body is read) then
/// reads the answer where the connection closing under its unread bytes would reset it,
/// the answer lost (RFC 9112 section 9.6). The rest is read in a task of its own while the
/// answer is sent, as long as the body keeps arriving (a pause of [`LINGER_IDLE`] ends it;
/// with [`DeadlineBody`], at most its timeout in all); the connection closes after it. A
/// request that asked to be told before sending its body (`Expect: 100-continue`) is read
/// so only once its body was asked for (hyper answers `100 Continue` when a handler first
/// reads it; a handler that stops reading, as at a size limit, leaves the rest coming):
/// asking for a body never asked for would invite it.
pub struct ReadToEnd<B> {
    // `None` once dropped (its rest is being read).
    inner: Option<B>,
    // Only for a body announced over HTTP/1 (see `BodyRead`).
    ended: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    // Reads the rest of `inner` if it is dropped unread (`None`: it is not). A function
    // and not a flag: `Drop` cannot ask for the bounds reading needs (`read_rest`).
    linger: Option<fn(B)>,
    // Whether the client sends the body without being asked, or was asked (read once):
    // `false` for a request with `Expect: 100-continue` not read yet.
    invited: bool,
}

/// Whether the body of a request [`ReadToEnd::request`] wrapped was read to its end.
#[derive(Debug, Clone)]
pub struct BodyRead {
    /// Whether the request announced a body over HTTP/1 (`None`: it did not).
    ended: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl<B> ReadToEnd<B>
where
    B: http_body::Body + Unpin + Send + 'static,
{
    /// `request`, its body noting whether it is read to its end, and where to see it.
    /// Dropped unread, the body is read to its end in a task of the current Tokio runtime
    /// (none: it is not).
    pub fn request(request: axum::http::Request<B>) -> (axum::http::Request<Self>, BodyRead) {
        let announced =
            !request.body().is_end_stream() && request.version() <= axum::http::Version::HTTP_11;
        // A request without a body (most of them) costs no flag.
        let ended =
            announced.then(|| std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)));
        // (The header is looked at only for a request with a body.)
        let expects_continue = || {
            request
                .headers()
                .get(axum::http::header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
        };
        let linger = announced.then_some(read_rest::<B> as fn(B));
        let invited = !(announced && expects_continue());
        let read = BodyRead {
            ended: ended.clone(),
        };
        let request = request.map(|inner| ReadToEnd {
            inner: Some(inner),
            ended,
            linger,
            invited,
        });
        (request, read)
    }
}

/// Reads `body` to its end (or its first error, or until nothing arrives for
/// [`LINGER_IDLE`]) in a task of the current Tokio runtime, discarding it.
fn read_rest<B>(mut body: B)
where
    B: http_body::Body + Unpin + Send + 'static,
{
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let mut body = std::pin::Pin::new(&mut body);
            loop {
                let frame = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx));
                match tokio::time::timeout(LINGER_IDLE, frame).await {
                    Ok(Some(Ok(_))) => {}
                    // The end, an error, or a client that stopped sending.
                    _ => break,
                }
            }
        });
    }
}

impl<B> Drop for ReadToEnd<B> {
    fn drop(&mut self) {
        let ended = self
            .ended
            .as_ref()
            .is_some_and(|ended| ended.load(std::sync::atomic::Ordering::Acquire));
        let rest = (self.linger, self.inner.take(), ended, self.invited);
        if let (Some(read_rest), Some(body), false, true) = rest {
            read_rest(body);
        }
    }
}

impl BodyRead {
    /// Adds `Connection: close` to `response` if its request announced a body that was not
    /// read to its end.
    pub fn close_if_unread<T>(&self, response: &mut axum::http::Response<T>) {
        let unread = self
            .ended
            .as_ref()
            .is_some_and(|ended| !ended.load(std::sync::atomic::Ordering::Acquire));
        if unread {
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for ReadToEnd<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        // Asked for: a client that waited for `100 Continue` sends it now.
        this.invited = true;
        let mut inner = std::pin::Pin::new(inner);
        let frame = inner.as_mut().poll_frame(cx);
        let end = match &frame {
            std::task::Poll::Ready(None) => true,
            std::task::Poll::Ready(Some(Ok(_))) => inner.is_end_stream(),
            _ => false,
        };
        if let Some(ended) = this.ended.as_ref().filter(|_| end) {
            ended.store(true, std::sync::atomic::Ordering::Release);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(B::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| http_body::SizeHint::with_exact(0), B::size_hint)
    }
}

/// The error of a [`DeadlineBody`] whose deadline passed before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimedOut;

impl<B> http_body::Body for DeadlineBody<B>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::future::Future;
        use std::task::Poll;
        let this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let timeout = *this.timeout;
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimedOut.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Logs to standard error, filtered by `RUST_LOG` (default `info`), in colour only on a
/// terminal (a file or a log collector gets plain text). A span the filter lets through
/// is logged when it closes, with its fields: `RUST_LOG=tollgate=debug` shows each
/// decision's `tollgate.decide` span (its policy, store and the store's latency).
fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// The store of the environment ([`tollgate::store_from_env`]: Redis with a memory
/// fallback when `REDIS_URL` or `KV_URL` is set, memory otherwise), its Redis keys under
/// `prefix`. Each example is an application of its own: several sharing one Redis keep
/// their buckets of one name (`failed-auth`) apart, where under one prefix a client refused
/// by one would be refused by all.
pub fn store_from_env(prefix: &str) -> Result<tollgate::redis::EnvStore, tollgate::BuildError> {
    use tollgate::redis::{FallbackConfig, RedisStore};
    let redis = RedisStore::builder().prefix(prefix);
    Ok(tollgate::redis::from_env_with(
        redis,
        FallbackConfig::default(),
    )?)
}

/// Requests that fail authentication, per client IP, in the seed examples: the guessing
/// budget of their guard ([`failed_auth_guard`]).
pub const FAILED_AUTH_PER_IP: &str = "20/min";

/// Requests that fail authentication, per client network (an IPv6 /48, an IPv4 address on
/// its own), beside [`FAILED_AUTH_PER_IP`]: IPv6 clients are counted by their /64, and one
/// holding a /48 (a tunnel broker gives one away) holds 65,536 of those. Five clients'
/// guessing budgets for a whole network.
pub const FAILED_AUTH_PER_NETWORK: &str = "100/min";

/// The leading bits of an IPv6 client address that make its network in the examples'
/// backstops per network ([`FAILED_AUTH_PER_NETWORK`], the demo's handler buckets).
pub const NETWORK_BITS: u8 = 48;

/// The seed examples' failed-authentication guard, for `limiter.guard(..)` outside their
/// authentication layer: [`tollgate::Policy::failed_auth_per_ip`] with
/// [`FAILED_AUTH_PER_IP`], and [`FAILED_AUTH_PER_NETWORK`] per client network.
pub fn failed_auth_guard() -> tollgate::Policy {
    tollgate::Policy::failed_auth_per_ip(FAILED_AUTH_PER_IP)
        .per_network(NETWORK_BITS, FAILED_AUTH_PER_NETWORK)
}

/// The examples' setting `name` from the environment, trimmed: `None` when unset or set
/// but empty (`PORT=`, as an empty `REDIS_URL` is no Redis: the default).
pub fn setting(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|value| value.trim().to_string())
        .filter(|value| !value.is_empty())
}

/// A setting of the environment that cannot be used: named with its value, so that the
/// operator who set it knows which to mend (a limiter built from a file would otherwise
/// blame the file for a value it does not hold).
#[derive(Debug, thiserror::Error)]
#[error("{name}={value}: {source}")]
pub struct BadSetting {
    /// The environment variable.
    pub name: &'static str,
    /// Its value, as read (trimmed).
    pub value: String,
    /// Why it cannot be used.
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl BadSetting {
    /// The setting `name`, whose `value` cannot be used because of `source`.
    pub fn new(
        name: &'static str,
        value: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            name,
            value: value.into(),
            source: source.into(),
        }
    }
}

/// How every example finds its clients' addresses: the TCP peer, or behind the proxies
/// listed in `TRUSTED_PROXIES` (comma-separated CIDRs or addresses; none if unset) the
/// client they forward for.
///
/// # Errors
///
/// [`BadSetting`] naming `TRUSTED_PROXIES` if an entry is not a proxy address or network.
pub fn client_ip_from_env() -> Result<tollgate::ClientIp, BadSetting> {
    let proxies = setting("TRUSTED_PROXIES").unwrap_or_default();
    let entries = proxies.split(',').map(str::trim).filter(|s| !s.is_empty());
    let client_ip = tollgate::ClientIp::peer().trust_proxies(entries);
    client_ip
        .validate()
        .map_err(|e| BadSetting::new("TRUSTED_PROXIES", proxies, e))?;
    Ok(client_ip)
}

/// `quota` as a rolling window counted in 60 segments, so that a client at a steady pace up
/// to about 98% of it is admitted (the oldest segment counts whole until it leaves: a
/// review's clients at 98.5 to 100% of 500 a minute were refused 2 to 17 times in about
/// 1,400; the default ten segments refuse one above about 91%); a window too short for 60
/// segments (under 60 ms) keeps the default.
pub fn steady_rolling(quota: tollgate::Quota) -> tollgate::Limit {
    tollgate::Limit::sliding_segments(quota, 60).unwrap_or_else(|_| tollgate::Limit::sliding(quota))
}

/// Whether `path` is `prefix` or below it (`/v1`, `/v1/...`; not `/v10`): an example's API,
/// the only paths its authentication asks credentials for. A path outside it (a browser's
/// `/favicon.ico`) is answered 404 by the router and spends nothing, not even the
/// failed-authentication budget of its client's IP.
pub fn is_under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The answer to `request` if it is a CORS preflight (`OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`): `204 No Content`, without the `Access-Control-Allow-*`
/// fields (the examples allow no cross-origin call, so a browser goes no further). A
/// browser sends one before a cross-origin call that carries an API key or
/// `Authorization`, and it never carries credentials itself (the Fetch standard). The
/// examples' authentication answers it before asking for credentials and before the
/// limiters inside it: answered 401, it counted as a failed authentication (20 from a
/// browser behind an address others share turned every client of that address away for a
/// minute, valid keys included); let through unauthenticated, it spent seed 004's
/// gateway-wide backstop, which one anonymous client could then empty alone. It describes
/// no call, and spends no budget. The failed-authentication guard ([`failed_auth_guard`])
/// is outside the authentication: once an address spent its budget, its preflights are
/// refused (`429`) with the rest of its requests.
pub fn preflight_answer<B>(request: &axum::http::Request<B>) -> Option<axum::response::Response> {
    use axum::http::header::{ACCESS_CONTROL_REQUEST_METHOD, ORIGIN};
    use axum::response::IntoResponse;
    let headers = request.headers();
    // (The Fetch standard's preflight always names the method it asks about.)
    let preflight = request.method() == axum::http::Method::OPTIONS
        && headers.contains_key(ORIGIN)
        && headers
            .get(ACCESS_CONTROL_REQUEST_METHOD)
            .is_some_and(|method| !method.is_empty());
    preflight.then(|| axum::http::StatusCode::NO_CONTENT.into_response())
}

/// Whether the secret `given` is `expected`, compared in time that depends on neither
/// where the first difference is nor `expected`'s length (only on `given`'s, which the
/// client knows): an operator's token is not to be guessed byte by byte, or its length
/// found, by timing.
pub fn same_secret(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    let mut differ = usize::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        // The same work at every byte: past `expected`'s end, its bytes again (the
        // lengths differ already).
        let y = if b.is_empty() { 0 } else { b[i % b.len()] };
        differ |= usize::from(x ^ y);
    }
    differ == 0
}

/// The bearer token of `headers`' `Authorization` (RFC 6750: the scheme's case does not
/// matter, `bearer x` is `Bearer x`), trimmed; `None` without one or for an empty token, so
/// that an empty `Authorization: Bearer ` does not hide another credential (a cookie).
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// An example's `main`: sets up logging (to standard error, filtered by `RUST_LOG`,
/// default `info`), then runs `example`, so that what the example logs while it builds its
/// limiter (configuration warnings: limiting disabled, every address trusted as a proxy) is
/// seen. Returns success, or the example's error printed as its message
/// (`error: rate-limits.yaml:4:7: routes[0]...`), not in Rust's debug form, and exit
/// status 1.
pub async fn main(
    example: impl std::future::Future<Output = Result<(), Box<dyn std::error::Error>>>,
) -> std::process::ExitCode {
    init_logging();
    match example.await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use axum::body::Bytes;
    use http_body::{Body, Frame};

    use super::{same_secret, BodyTimedOut, DeadlineBody};

    #[test]
    fn a_secret_matches_only_itself() {
        assert!(same_secret("s3cret", "s3cret"));
        for given in ["", "s3cre", "s3crets", "s3cres", "s3crets3cret", "S3cret"] {
            assert!(!same_secret(given, "s3cret"), "{given}");
        }
        assert!(!same_secret("x", ""));
        assert!(same_secret("", ""));
    }

    /// A body whose frame is not ready the first `waits` times it is read (`wake`: whether
    /// it asks to be read again, as a body whose data is on its way does).
    struct Late {
        waits: usize,
        wake: bool,
        data: Option<Bytes>,
    }

    impl Body for Late {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            if self.waits > 0 {
                self.waits -= 1;
                if self.wake {
                    cx.waker().wake_by_ref();
                }
                return Poll::Pending;
            }
            Poll::Ready(self.data.take().map(|d| Ok(Frame::data(d))))
        }
    }

    async fn first_frame<B: Body + Unpin>(
        body: &mut B,
    ) -> Option<Result<Frame<B::Data>, B::Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
    }

    /// A handler that reads its body long after the request came is not blamed on the
    /// client: the clock starts when the body is first waited for.
    #[tokio::test(start_paused = true)]
    async fn a_body_read_late_is_not_cut_off() {
        let late = Late {
            waits: 2,
            wake: true,
            data: Some(Bytes::from_static(b"{}")),
        };
        let mut body = DeadlineBody::new(late, Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(60)).await;
        let frame = first_frame(&mut body)
            .await
            .expect("a frame")
            .expect("in time");
        assert_eq!(frame.into_data().ok(), Some(Bytes::from_static(b"{}")));
    }

    /// A body that stops arriving is an error once its reader has waited the timeout.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_an_error_after_the_timeout() {
        let stalled = Late {
            waits: usize::MAX,
            wake: false,
            data: None,
        };
        let mut body = DeadlineBody::new(stalled, Duration::from_secs(10));
        let started = tokio::time::Instant::now();
        let error = first_frame(&mut body).await.expect("an end").unwrap_err();
        assert!(error.is::<BodyTimedOut>(), "{error}");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }
}
