//! [`ResponseFuture`]: the response future of [`RateLimit`](crate::RateLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use pin_project_lite::pin_project;
use tollgate_limits::BoxFuture;
use tower_service::Service;

use crate::engine::{in_background, After, Asking, Left, Outcome, Settled};
use crate::response_body::ResponseBody;

pin_project! {
    /// Asks the store, then calls the inner service (or answers 429), then adds the
    /// rate-limit headers and gives the charge back if the response does not count.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }

    impl<S, B> PinnedDrop for ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        // Dropped before its response (a client that went away, a timeout further out):
        // what the request reserved is given back where no response means it does not
        // count, and a store call under way is finished rather than cut short.
        fn drop(this: Pin<&mut Self>) {
            match this.project().state.project() {
                // A future that panicked while polled (a store's, a policy's code in it) is
                // not run again: it would only panic again ("`async fn` resumed after
                // panicking"), from a task of its own, blaming the limiter.
                StateProj::Deciding { polling: true, .. }
                | StateProj::Settling { polling: true, .. } => {}
                // A look waiting for its place (not asking the store) is dropped with it.
                StateProj::Deciding {
                    asking: Some(asking),
                    ..
                } if !asking.now() => {}
                // (An admitted outcome's `After`, dropped, gives back what is to be given
                // back, as one the future held when calling does.)
                StateProj::Deciding { decide, .. } => {
                    let decide = std::mem::replace(decide, Box::pin(std::future::pending()));
                    in_background(Box::pin(async move {
                        drop(decide.await);
                    }));
                }
                StateProj::Settling { settle, .. } => {
                    let settle = std::mem::replace(settle, Box::pin(std::future::pending()));
                    in_background(settle);
                }
                StateProj::Calling { .. }
                | StateProj::Watching { .. }
                | StateProj::Refused { .. }
                | StateProj::Done => {}
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        Deciding {
            decide: BoxFuture<'static, Outcome>,
            // A look's: whether it is asking the store (see `Asking`).
            asking: Option<Asking>,
            inner: Option<S>,
            req: Option<Request<B>>,
            // The deciding limiter's id.
            limiter: u64,
            // Set while `decide` is polled: still set when the future is dropped, it
            // panicked.
            polling: bool,
        },
        Calling {
            #[pin]
            fut: S::Future,
            after: Option<After>,
        },
        // A probe left to a per-route layer further in that has not seen a request of its
        // method yet: whether it did is looked at once the response comes.
        Watching {
            #[pin]
            fut: S::Future,
            left: Option<Box<Left>>,
        },
        Settling {
            settle: BoxFuture<'static, Settled>,
            response: Option<S::Response>,
            // As `Deciding`'s.
            polling: bool,
        },
        Refused {
            response: Option<Response<Bytes>>,
        },
        Done,
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(crate) fn calling(fut: S::Future, after: Option<After>) -> Self {
        Self {
            state: State::Calling { fut, after },
        }
    }

    /// [`ResponseFuture::calling`] with the `After` taken out of `after` (by reference:
    /// an `After` is several hundred bytes, which taking it out and then moving it into
    /// the future copies twice).
    pub(crate) fn calling_with(fut: S::Future, after: &mut Option<After>) -> Self {
        let mut this = Self::calling(fut, None);
        if let State::Calling { after: slot, .. } = &mut this.state {
            std::mem::swap(slot, after);
        }
        this
    }

    /// Calls the inner service with a request left to a per-route layer that has not seen
    /// any yet ([`Left::answered`] once it answers).
    pub(crate) fn watching(fut: S::Future, left: Box<Left>) -> Self {
        Self {
            state: State::Watching {
                fut,
                left: Some(left),
            },
        }
    }

    /// The limiter's own answer to the request of `parts` (see [`answer`]).
    pub(crate) fn respond(response: Response<Bytes>, parts: &Parts) -> Self {
        Self {
            state: State::Refused {
                response: Some(answer(response, parts)),
            },
        }
    }

    pub(crate) fn deciding(
        decide: BoxFuture<'static, Outcome>,
        asking: Option<Asking>,
        inner: S,
        req: Request<B>,
        limiter: u64,
    ) -> Self {
        Self {
            state: State::Deciding {
                decide,
                asking,
                inner: Some(inner),
                req: Some(req),
                limiter,
                polling: false,
            },
        }
    }
}

/// Polls `fut` with `polling` set for as long as the poll runs: still set afterwards, the
/// poll panicked (see the drop of [`ResponseFuture`]).
fn poll_marked<T>(
    fut: &mut BoxFuture<'static, T>,
    polling: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<T> {
    *polling = true;
    let polled = fut.as_mut().poll(cx);
    *polling = false;
    polled
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Deciding {
                    decide,
                    inner,
                    req,
                    limiter,
                    polling,
                    ..
                } => {
                    let outcome = ready!(poll_marked(decide, polling, cx));
                    match outcome {
                        Outcome::Proceed(mut after) => {
                            let (Some(mut inner), Some(mut req)) = (inner.take(), req.take())
                            else {
                                unreachable!("ResponseFuture polled after it was taken apart");
                            };
                            let limiter = *limiter;
                            // Decided: nothing of the decision is left to finish, should the
                            // inner service panic (or this future be dropped) from here.
                            this.state.set(State::Done);
                            After::put_in_request(&mut after, limiter, req.extensions_mut());
                            let fut = inner.call(req);
                            this.state.set(State::Calling { fut, after });
                        }
                        answered => {
                            let Some(req) = req.take() else {
                                unreachable!("ResponseFuture polled after it was taken apart");
                            };
                            let (parts, _body) = req.into_parts();
                            this.state.set(State::Done);
                            let response = match answered {
                                Outcome::Refuse(mut refused) => refused.respond(&parts),
                                Outcome::Respond(response) => response,
                                Outcome::Proceed(_) => unreachable!("matched above"),
                            };
                            let response = answer(response, &parts);
                            return Poll::Ready(Ok(response.map(ResponseBody::full)));
                        }
                    }
                }
                StateProj::Calling { fut, after } => {
                    let mut response = match ready!(fut.poll(cx)) {
                        Ok(response) => response,
                        Err(e) => {
                            // It ends as a server error further out.
                            if let Some(after) = after.take() {
                                after.abandon(Some(StatusCode::INTERNAL_SERVER_ERROR));
                            }
                            this.state.set(State::Done);
                            return Poll::Ready(Err(e));
                        }
                    };
                    let settle = after.as_mut().and_then(|a| a.finish(&mut response));
                    match settle {
                        Some(settle) => this.state.set(State::Settling {
                            settle,
                            response: Some(response),
                            polling: false,
                        }),
                        None => {
                            this.state.set(State::Done);
                            return Poll::Ready(Ok(response.map(ResponseBody::inner)));
                        }
                    }
                }
                StateProj::Watching { fut, left } => {
                    let answered = ready!(fut.poll(cx));
                    if let Some(left) = left.take() {
                        // An error ends as a server error further out.
                        left.answered(
                            answered
                                .as_ref()
                                .map_or(StatusCode::INTERNAL_SERVER_ERROR, |response| {
                                    response.status()
                                }),
                        );
                    }
                    this.state.set(State::Done);
                    return Poll::Ready(answered.map(|r| r.map(ResponseBody::inner)));
                }
                StateProj::Settling {
                    settle,
                    response,
                    polling,
                } => {
                    let mut settled = ready!(poll_marked(settle, polling, cx));
                    let response = response.take();
                    this.state.set(State::Done);
                    if let Some(mut response) = response {
                        settled.apply(&mut response);
                        return Poll::Ready(Ok(response.map(ResponseBody::inner)));
                    }
                }
                StateProj::Refused { response } => {
                    let response = response.take();
                    this.state.set(State::Done);
                    if let Some(response) = response {
                        return Poll::Ready(Ok(response.map(ResponseBody::full)));
                    }
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

/// The limiter's own answer (a 429, or a 500/503 it makes) to the request of `parts`, whose
/// body it drops unread: over HTTP/1, a request that announced a body (`Content-Length`
/// other than 0, or `Transfer-Encoding`) is answered with `Connection: close`. The server
/// cannot read the next request of the connection before that body, which nobody reads,
/// so it closes the connection after the answer (hyper does so whenever the body has not
/// all arrived yet); without the header a client sends its next request on a connection
/// that is going away, and that request fails.
fn answer(mut response: Response<Bytes>, parts: &Parts) -> Response<Bytes> {
    if parts.version <= Version::HTTP_11 && announces_body(&parts.headers) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Whether a request of `headers` announced a body: `Transfer-Encoding`, or a
/// `Content-Length` (its first line) other than 0. The names of a request of a few fields
/// are looked at one by one, which costs less than the two lookups (a hash each) that
/// larger ones take; a `Content-Length` is read only if there is one.
fn announces_body(headers: &HeaderMap) -> bool {
    let (chunked, length) = if headers.keys_len() <= 16 {
        headers
            .keys()
            .fold((false, false), |(chunked, length), name| {
                (
                    chunked || name == header::TRANSFER_ENCODING,
                    length || name == header::CONTENT_LENGTH,
                )
            })
    } else {
        (headers.contains_key(header::TRANSFER_ENCODING), true)
    };
    chunked
        || (length
            && headers
                .get(header::CONTENT_LENGTH)
                .is_some_and(|length| length.as_bytes() != b"0"))
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
