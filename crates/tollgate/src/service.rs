//! [`RateLimit`]: the middleware service.

use std::fmt;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::engine::{After, Outcome, Scope, Start};
use crate::future::ResponseFuture;
use crate::limiter::Limiter;
use crate::response_body::ResponseBody;

/// Rate-limits the requests to `S` (made by [`RateLimitLayer`](crate::RateLimitLayer)).
/// Works on any `Service<http::Request<B>>` that is `Clone` and whose responses are
/// `http::Response`s with a body whose chunks are made from [`Bytes`] (`Data:
/// From<Bytes>`: axum's `Body`, `Full<Bytes>`, a stream of `Bytes`), as the 429's body is
/// written in place of the service's; all clones enforce the same limits. A service that is
/// not `Clone` (a `BoxService`) can be put behind `tower::buffer::Buffer` or boxed as a
/// `BoxCloneService`.
///
/// `poll_ready` is the inner service's: behind a layer that holds requests back (a
/// `ConcurrencyLimit`, a `Buffer`), a request waits for room there before it is even
/// refused. Put such layers inside the limiter so that refused requests take no room.
///
/// Without axum (a plain tower or hyper stack), give each request its peer address as a
/// `SocketAddr` (or `IpAddr`) extension, from the connection it came on:
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use std::convert::Infallible;
/// use std::net::SocketAddr;
///
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tollgate::{Limiter, Policy};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// let limiter = Limiter::builder()
///     .route("/*", Policy::named("default").per_ip("1/min"))
///     .build()?;
/// // What a server does per connection: `peer` is the address `accept` gave.
/// let peer: SocketAddr = "203.0.113.7:40000".parse()?;
/// let service = ServiceBuilder::new()
///     .map_request(move |mut request: http::Request<()>| {
///         request.extensions_mut().insert(peer);
///         request
///     })
///     .layer(limiter.layer())
///     .service(service_fn(|_request| async {
///         Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("hello"))))
///     }));
/// let request = || http::Request::new(());
/// assert_eq!(service.clone().oneshot(request()).await?.status(), 200);
/// assert_eq!(service.oneshot(request()).await?.status(), 429);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    limiter: Limiter,
    scope: Scope,
}

impl<S> RateLimit<S> {
    pub(crate) fn new(inner: S, limiter: Limiter, scope: Scope) -> Self {
        Self {
            inner,
            limiter,
            scope,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the middleware.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> RateLimit<S> {
    /// The inner service made ready for this request, a fresh clone taking its place: a
    /// request decided later takes it into its future, and one answered without it (a
    /// 429) drops it, so that what its `poll_ready` reserved (a `ConcurrencyLimit`'s
    /// permit) is given up now, not held by this instance until its next call (a review: a
    /// reused instance kept the only permit after a refusal, and its clones waited).
    fn take_ready(&mut self) -> S {
        let clone = self.inner.clone();
        std::mem::replace(&mut self.inner, clone)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: Body,
    ResBody::Data: From<Bytes>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let mut outcome = Outcome::Proceed(None);
        let start = self
            .limiter
            .engine
            .start(&self.scope, &mut parts, &mut outcome);
        match start {
            Start::Pass => {
                ResponseFuture::calling(self.inner.call(Request::from_parts(parts, body)), None)
            }
            Start::Left(left) => {
                let fut = self.inner.call(Request::from_parts(parts, body));
                ResponseFuture::watching(fut, left)
            }
            // Decided at once (the memory store): no future to wait on.
            // (The admitted outcome's `After` is taken from the slot, not moved out with a
            // pattern: that move copies its several hundred bytes once more.)
            Start::Now => match outcome {
                Outcome::Proceed(ref mut after) => {
                    After::put_in_request(after, self.limiter.engine.id, &mut parts.extensions);
                    let req = Request::from_parts(parts, body);
                    ResponseFuture::calling_with(self.inner.call(req), after)
                }
                // (Answered from the slot, not moved out of it: see above.)
                Outcome::Refuse(ref mut refused) => {
                    drop(self.take_ready());
                    ResponseFuture::respond(refused.respond(&parts), &parts)
                }
                Outcome::Respond(response) => {
                    drop(self.take_ready());
                    ResponseFuture::respond(response, &parts)
                }
            },
            Start::Later(decide, asking) => {
                let req = Request::from_parts(parts, body);
                ResponseFuture::deciding(
                    decide,
                    asking,
                    self.take_ready(),
                    req,
                    self.limiter.engine.id,
                )
            }
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .field("scope", &self.scope)
            .finish()
    }
}
