//! [`RateLimitDecision`]: what the limiter decided for one request, in the request's
//! extensions (for the handler) and the response's (for outer layers); and
//! [`TooManyRequests`], a 429 that is an axum response.

use std::borrow::Cow;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use serde::ser::{Serialize, SerializeStruct, Serializer};
use tollgate_limits::{BucketState, Timestamp};

use super::info::{ceil_secs, retry_secs};

/// What the limiter decided for one request, as seen from its most restrictive bucket
/// (the one `X-RateLimit-*` describe; dry-run buckets never show).
///
/// The middleware puts it in the request's extensions before calling the handler (unless
/// [`LimiterBuilder::decision_in_request`](crate::LimiterBuilder::decision_in_request) is
/// off), and, if
/// [`LimiterBuilder::decision_in_response`](crate::LimiterBuilder::decision_in_response)
/// is on, in the response's extensions (admitted or refused) for outer layers. A request
/// the limiter did not decide (exempt route, limits off, a store failure
/// that admits, only dry-run buckets) carries none. With several limiters, the innermost
/// one's decision is the one a handler sees; a second layer of one limiter passes the
/// request on and leaves the first one's.
///
/// ```
/// use axum::{routing::get, Extension, Router};
/// use tollgate::{Limiter, Policy, RateLimitDecision};
///
/// // An `Option`: a request the limiter did not decide carries none (`Extension` alone
/// // would answer those requests with a 500).
/// async fn handler(limit: Option<Extension<RateLimitDecision>>) -> String {
///     match limit {
///         Some(Extension(limit)) => {
///             format!("{} of {} left in {}", limit.remaining, limit.limit, limit.bucket)
///         }
///         None => "not limited".to_owned(),
///     }
/// }
///
/// let limiter = Limiter::builder()
///     .route("/*", Policy::named("default").per_ip("100/min"))
///     .build()?;
/// let app: Router = Router::new().route("/", get(handler)).layer(limiter.layer());
/// # Ok::<(), tollgate::BuildError>(())
/// ```
///
/// Serializes (serde) as
/// `{"allowed":true,"policy":"default","bucket":"default:ip","limit":100,"remaining":99,"reset":60,"retry_after":null}`,
/// with `reset` and `retry_after` in whole seconds rounded up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitDecision {
    /// Whether the request was admitted.
    pub allowed: bool,
    /// The policy the bucket belongs to. (The middleware's decisions borrow configuration
    /// names kept for the life of the process: copying a decision touches no shared
    /// reference count.)
    pub policy: Cow<'static, str>,
    /// The bucket's name (`"default:ip"`), without the client's key.
    pub bucket: Cow<'static, str>,
    /// The bucket's limit.
    pub limit: u64,
    /// What is left in the bucket.
    pub remaining: u64,
    /// How long until the bucket is full again.
    pub reset_after: Duration,
    /// How long to wait before retrying: set on refusals that waiting can help.
    pub retry_after: Option<Duration>,
    /// When the store decided.
    pub now: Timestamp,
    /// The limiter whose layer decided and put this into the request, so that a layer of
    /// the same limiter further in knows this request was charged already.
    pub(crate) limiter: LayerId,
}

/// The id of the limiter whose layer put a decision into a request (0: none). Not part of
/// what a decision says: every decision equals one that says the same, and a clone has
/// none, as a sub-request made with a copy of a request's extensions is a request of its
/// own.
#[derive(Debug, Default, Eq)]
pub(crate) struct LayerId(pub(crate) u64);

impl Clone for LayerId {
    fn clone(&self) -> Self {
        Self(0)
    }
}

impl PartialEq for LayerId {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl RateLimitDecision {
    /// The decision of bucket `bucket` of policy `policy` answered by `state` at `now`.
    pub(crate) fn new(
        policy: Cow<'static, str>,
        bucket: Cow<'static, str>,
        state: &BucketState,
        now: Timestamp,
        allowed: bool,
    ) -> Self {
        Self {
            allowed,
            policy,
            bucket,
            limit: state.limit,
            remaining: state.remaining,
            reset_after: state.reset_after,
            retry_after: if allowed { None } else { state.retry_after },
            now,
            limiter: LayerId::default(),
        }
    }

    /// The decision, as made by a layer of limiter `id`.
    pub(crate) fn of_limiter(mut self, id: u64) -> Self {
        self.limiter = LayerId(id);
        self
    }

    /// When the bucket is full again. Saturates instead of overflowing.
    pub fn reset_at(&self) -> Timestamp {
        self.now.saturating_add(self.reset_after)
    }

    /// [`RateLimitDecision::reset_after`] in whole seconds, rounded up.
    pub fn reset_secs(&self) -> u64 {
        ceil_secs(self.reset_after)
    }

    /// [`RateLimitDecision::retry_after`] in whole seconds, rounded up and never 0 (what
    /// `Retry-After` says).
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(retry_secs)
    }
}

impl Serialize for RateLimitDecision {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("RateLimitDecision", 7)?;
        s.serialize_field("allowed", &self.allowed)?;
        s.serialize_field("policy", &*self.policy)?;
        s.serialize_field("bucket", &*self.bucket)?;
        s.serialize_field("limit", &self.limit)?;
        s.serialize_field("remaining", &self.remaining)?;
        s.serialize_field("reset", &self.reset_secs())?;
        s.serialize_field("retry_after", &self.retry_after_secs())?;
        s.end()
    }
}

/// A complete `429 Too Many Requests` ([`Limiter::refusal`](crate::Limiter::refusal)): an
/// `http::Response<Bytes>` (it derefs to one) that, with the `axum` feature, is an axum
/// response too.
///
/// ```
/// # #[cfg(feature = "axum")] {
/// use axum::response::{IntoResponse, Response};
/// use http::Method;
/// use tollgate::{CheckError, Limiter};
///
/// async fn export(limiter: Limiter, user: String) -> Result<Response, CheckError> {
///     let decision = limiter.check("exports", &user).await?; // `?`: a 503 if the store fails
///     if !decision.allowed {
///         return Ok(limiter.refusal("exports", &decision, &Method::POST, "/export").into_response());
///     }
///     Ok("exported".into_response())
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct TooManyRequests(Response<Bytes>);

impl TooManyRequests {
    /// The response.
    pub fn into_inner(self) -> Response<Bytes> {
        self.0
    }
}

impl From<Response<Bytes>> for TooManyRequests {
    fn from(response: Response<Bytes>) -> Self {
        Self(response)
    }
}

impl From<TooManyRequests> for Response<Bytes> {
    fn from(response: TooManyRequests) -> Self {
        response.0
    }
}

impl Deref for TooManyRequests {
    type Target = Response<Bytes>;

    fn deref(&self) -> &Response<Bytes> {
        &self.0
    }
}

impl DerefMut for TooManyRequests {
    fn deref_mut(&mut self) -> &mut Response<Bytes> {
        &mut self.0
    }
}

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for TooManyRequests {
    fn into_response(self) -> axum::response::Response {
        self.0.map(axum::body::Body::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_with_whole_seconds() {
        let state = BucketState {
            allowed: false,
            limit: 100,
            remaining: 0,
            reset_after: Duration::from_millis(59_001),
            retry_after: Some(Duration::from_millis(400)),
            refusal: Some(tollgate_limits::Refusal::OverLimit),
        };
        let d = RateLimitDecision::new(
            "default".into(),
            "default:ip".into(),
            &state,
            Timestamp::from_micros(1_000_000),
            false,
        );
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"allowed":false,"policy":"default","bucket":"default:ip","limit":100,"remaining":0,"reset":60,"retry_after":1}"#
        );
        assert_eq!(d.reset_at(), Timestamp::from_micros(60_001_000));
        let admitted =
            RateLimitDecision::new(d.policy.clone(), d.bucket.clone(), &state, d.now, true);
        assert_eq!(admitted.retry_after, None);
        // Which layer made it is not part of what it says, and a clone does not carry it.
        let made = d.clone().of_limiter(7);
        assert_eq!(made, d);
        assert_eq!(made.clone().limiter.0, 0);
    }

    #[test]
    fn too_many_requests_is_the_response_it_wraps() {
        let response = || {
            let mut response = Response::new(Bytes::from_static(b"{}"));
            *response.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
            response
                .headers_mut()
                .insert("retry-after", http::HeaderValue::from_static("7"));
            TooManyRequests::from(response)
        };
        let mut refusal = response();
        assert_eq!(refusal.status(), 429);
        assert_eq!(refusal.headers()["retry-after"], "7");
        assert_eq!(refusal.body(), "{}");
        refusal
            .headers_mut()
            .insert("x-request-id", http::HeaderValue::from_static("r1"));
        let inner = refusal.into_inner();
        assert_eq!(inner.status(), 429);
        assert_eq!(inner.headers()["x-request-id"], "r1");
        assert_eq!(inner.body(), "{}");
        let converted: Response<Bytes> = response().into();
        assert_eq!(converted.status(), 429);
        assert_eq!(converted.headers()["retry-after"], "7");
        assert_eq!(converted.body(), "{}");
    }
}
