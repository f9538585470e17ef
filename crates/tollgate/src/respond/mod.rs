//! Responses: the rate-limit headers and the 429 (documented at the crate root, "Responses").

mod body;
mod decision;
mod headers;
mod info;
pub(crate) mod sf;

pub(crate) use body::{fixed_response, refusal_of, unavailable};
pub use body::{too_many_requests, ErrorBody};
pub use decision::{RateLimitDecision, TooManyRequests};
pub use headers::{
    merge_rate_limit_headers, HeaderStyle, ResetFormat, RATELIMIT, RATELIMIT_POLICY,
    X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET,
};
pub(crate) use headers::{number, Fields, Shown, ShownResponse};
pub(crate) use info::{ceil_secs, Most};
pub use info::{BucketOutcome, RateLimitOutcome};
