//! Responses: the rate-limit headers every limited response carries and the `429 Too Many
//! Requests` a refused request gets.
//!
//! Three pieces, each configurable on its own:
//!
//! - [`RateLimitInfo`]: what a decision says about one request, bucket by bucket, in the
//!   terms headers and bodies are made of (limit, remaining, reset, retry-after).
//! - [`HeaderStyle`]: which headers to write. `X-RateLimit-Limit` / `-Remaining` / `-Reset`
//!   (reset as Unix seconds, Unix milliseconds, seconds from now or an HTTP date, see
//!   [`ResetFormat`]), the IETF `RateLimit` / `RateLimit-Policy` fields
//!   (draft-ietf-httpapi-ratelimit-headers-10, one named item per bucket), and
//!   `Retry-After` on refusals.
//! - [`ErrorBody`]: the JSON body of a 429: ready shapes (an RFC 9457
//!   `application/problem+json` among them) and a closure for anything else.
//! - [`RateLimitDecision`]: the decision in the request's and response's extensions.
//!
//! [`too_many_requests`] puts them together.
//!
//! ```
//! use std::time::Duration;
//! use http::{Method, StatusCode};
//! use tollgate::respond::{too_many_requests, ErrorBody, HeaderStyle, RateLimitInfo, ResetFormat};
//! use tollgate_core::{BucketState, Decision, Quota, Refusal, Timestamp};
//!
//! // What the store answered: the tenant's 100/min bucket is empty for 22.4 more seconds.
//! let decision = Decision {
//!     allowed: false,
//!     now: Timestamp::from_micros(1_717_200_000_000_000),
//!     buckets: vec![BucketState {
//!         allowed: false,
//!         limit: 100,
//!         remaining: 0,
//!         reset_after: Duration::from_secs(60),
//!         retry_after: Some(Duration::from_millis(22_400)),
//!         refusal: Some(Refusal::OverLimit),
//!     }],
//! };
//! let info = RateLimitInfo::from_decision(
//!     "tenant",
//!     &decision,
//!     [("tenant", Quota::per_minute(100))],
//!     Method::GET,
//!     "/api/tickets",
//! );
//! assert_eq!(info.retry_after_secs(), Some(23)); // rounded up
//!
//! let style = HeaderStyle::x_ratelimit(ResetFormat::UnixSeconds);
//! let response = too_many_requests(&info, &style, &ErrorBody::code_details());
//! assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(response.headers()["retry-after"], "23");
//! assert_eq!(response.headers()["x-ratelimit-reset"], "1717200060");
//! assert_eq!(
//!     response.body().as_ref(),
//!     br#"{"error":"Rate limit exceeded","code":"RATE_LIMIT_EXCEEDED","details":{"limit":100,"window":"1m","retryAfter":23}}"#
//! );
//! ```
//!
//! # A request that can never fit
//!
//! When a request costs more than a bucket can ever hold ([`Refusal::CostExceedsCapacity`]),
//! waiting does not help. Such a refusal still answers `429 Too Many Requests` (it is a
//! refusal by the rate limiter, and clients and proxies that count 429s should see it as
//! one; `413` or `400` would blame the payload or the syntax, which are fine), but:
//!
//! - it has **no `Retry-After`**, because any value would be a promise that retrying
//!   works, and clients that honour it would retry forever;
//! - the ready bodies say so in their text field and carry `null` where the retry delay
//!   would be (see [`ErrorBody`]);
//! - the `X-RateLimit-*` and IETF headers are written as usual: they describe the bucket
//!   truthfully.
//!
//! [`Refusal::CostExceedsCapacity`]: tollgate_core::Refusal::CostExceedsCapacity

mod body;
mod decision;
mod headers;
mod info;
pub(crate) mod sf;

pub(crate) use body::{fixed_response, refusal, unavailable};
pub use body::{too_many_requests, ErrorBody};
pub use decision::{RateLimitDecision, TooManyRequests};
pub use headers::{
    HeaderStyle, ResetFormat, RATELIMIT, RATELIMIT_POLICY, X_RATELIMIT_LIMIT,
    X_RATELIMIT_REMAINING, X_RATELIMIT_RESET,
};
pub(crate) use headers::{Shown, ShownResponse};
pub use info::{ceil_secs, BucketInfo, RateLimitInfo};
