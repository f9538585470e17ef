//! [`ErrorBody`]: the JSON body of a 429 (or an RFC 9457 problem), and
//! [`too_many_requests`], the whole refusal.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use serde::ser::{Serialize, SerializeMap, Serializer};

use super::headers::HeaderStyle;
use super::info::{Most, RateLimitOutcome};

/// A closure that renders a body: the info, and whether to pretty-print.
type Render = dyn Fn(&RateLimitOutcome, bool) -> Result<Vec<u8>, serde_json::Error> + Send + Sync;

/// The JSON body of a `429 Too Many Requests`.
///
/// Ready shapes, with the key order shown (it does not depend on serde_json's
/// `preserve_order` feature):
///
/// | constructor | body (compact) |
/// |---|---|
/// | [`ErrorBody::retry_after_camel`] (the default) | `{"error":"Too Many Requests","message":"Rate limit exceeded; retry in 23 seconds.","retryAfter":23}` |
/// | [`ErrorBody::code_details`] | `{"error":"Rate limit exceeded","code":"RATE_LIMIT_EXCEEDED","details":{"limit":100,"window":"1m","retryAfter":23}}` |
/// | [`ErrorBody::message`] | `{"error":"rate_limit_exceeded","message":"You have exceeded the rate limit for GET /v1/invoices.","limit":100,"remaining":0,"reset_at":1717200060}` |
/// | [`ErrorBody::problem`] (RFC 9457, `application/problem+json`) | `{"type":"about:blank","title":"Too Many Requests","status":429,"detail":"Rate limit exceeded; retry in 23 seconds.","retryAfter":23}` |
/// | [`ErrorBody::custom`] | whatever the closure returns |
///
/// Every shape is sent as `application/json` except [`ErrorBody::problem`]
/// (`application/problem+json`); [`ErrorBody::with_content_type`] changes it.
///
/// Numbers describe the most restrictive bucket; `retryAfter` is whole seconds rounded up,
/// `window` the quota's period (`1m`, `15m`, `1h`, `1d`, `90s`, `250ms`), `reset_at` Unix
/// seconds rounded up. Bodies are compact unless [`ErrorBody::pretty`] asks for two-space
/// indentation.
///
/// **A request that can never fit** (it costs more than the bucket holds): the text field
/// (`message` in the default and [`message`](ErrorBody::message) shapes, `detail` in the
/// [`problem`](ErrorBody::problem), `error` in the [`code_details`](ErrorBody::code_details)
/// shape) says so, e.g. `This request costs 12 points, but this rate limit allows at most 10
/// at once; retrying will not help.`, and `retryAfter` is `null`.
///
/// ```
/// use tollgate::ErrorBody;
///
/// let default = ErrorBody::default();
/// let with_code = ErrorBody::code_details();
/// let indented = ErrorBody::message().pretty();
/// let mine = ErrorBody::custom(|info| {
///     serde_json::json!({ "status": 429, "retry_in": info.retry_after_secs() })
/// });
/// # let _ = (default, with_code, indented, mine);
/// ```
#[derive(Clone)]
pub struct ErrorBody {
    shape: Shape,
    pretty: bool,
    content_type: Option<HeaderValue>,
}

#[derive(Clone)]
enum Shape {
    Ready(Ready),
    Custom(Arc<Render>),
}

/// The ready shapes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Ready {
    RetryAfterCamel,
    CodeDetails,
    Message,
    Problem,
}

impl fmt::Debug for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("ErrorBody");
        match &self.shape {
            Shape::Ready(ready) => debug.field("shape", ready),
            Shape::Custom(_) => debug.field("shape", &"Custom(<closure>)"),
        };
        debug.field("pretty", &self.pretty);
        if let Some(content_type) = &self.content_type {
            debug.field("content_type", content_type);
        }
        debug.finish()
    }
}

impl Default for ErrorBody {
    /// [`ErrorBody::retry_after_camel`].
    fn default() -> Self {
        Self::retry_after_camel()
    }
}

impl ErrorBody {
    const fn shape(shape: Shape) -> Self {
        Self {
            shape,
            pretty: false,
            content_type: None,
        }
    }

    /// `{"error":"Too Many Requests","message":"Rate limit exceeded; retry in 23
    /// seconds.","retryAfter":23}`: the wait in whole seconds, in words and as a number.
    /// The default.
    pub const fn retry_after_camel() -> Self {
        Self::shape(Shape::Ready(Ready::RetryAfterCamel))
    }

    /// `{"error":"Rate limit exceeded","code":"RATE_LIMIT_EXCEEDED","details":{"limit":100,
    /// "window":"1m","retryAfter":23}}`: a machine-readable code, and the limit, its window
    /// and the wait under `details`.
    pub const fn code_details() -> Self {
        Self::shape(Shape::Ready(Ready::CodeDetails))
    }

    /// `{"error":"rate_limit_exceeded","message":"You have exceeded the rate limit for GET
    /// /v1/invoices.","limit":100,"remaining":0,"reset_at":1717200060}`: which request
    /// was limited, the limit, what remains and when it resets (Unix seconds).
    pub const fn message() -> Self {
        Self::shape(Shape::Ready(Ready::Message))
    }

    /// An RFC 9457 problem, sent as `application/problem+json`:
    /// `{"type":"about:blank","title":"Too Many Requests","status":429,"detail":"Rate limit
    /// exceeded; retry in 23 seconds.","retryAfter":23}`. `type` `about:blank` says the
    /// problem is what the status code means; `retryAfter` is an extension member (whole
    /// seconds, `null` when waiting cannot help). A policy that fails closed answers its
    /// `503` as a problem too (`"title":"Service Unavailable","status":503`).
    pub const fn problem() -> Self {
        Self::shape(Shape::Ready(Ready::Problem))
    }

    /// A body of your own: the closure's value as JSON. Anything [`Serialize`] works: a
    /// `#[derive(Serialize)]` struct keeps its field order; a [`serde_json::Value`] built
    /// with `json!` keeps its key order only if serde_json's `preserve_order` feature is
    /// on (otherwise keys are sorted). If serialization fails, the default body is sent
    /// instead and a `tracing` warning says why: a refusal is never turned into a 500.
    ///
    /// ```
    /// use tollgate::ErrorBody;
    ///
    /// let body = ErrorBody::custom(|info| {
    ///     serde_json::json!({
    ///         "error": "slow down",
    ///         "path": info.path,
    ///         "retry_after": info.retry_after_secs(),
    ///     })
    /// });
    /// # let _ = body;
    /// ```
    pub fn custom<F, T>(render: F) -> Self
    where
        F: Fn(&RateLimitOutcome) -> T + Send + Sync + 'static,
        T: Serialize,
    {
        Self::shape(Shape::Custom(Arc::new(move |info, pretty| {
            to_json(&render(info), pretty)
        })))
    }

    /// The same body, sent with `Content-Type: content_type` (e.g. a custom body that is an
    /// RFC 9457 problem: `HeaderValue::from_static("application/problem+json")`).
    pub fn with_content_type(mut self, content_type: HeaderValue) -> Self {
        self.content_type = Some(content_type);
        self
    }

    /// The `Content-Type` the body is sent with.
    pub fn content_type(&self) -> HeaderValue {
        match (&self.content_type, &self.shape) {
            (Some(content_type), _) => content_type.clone(),
            (None, Shape::Ready(Ready::Problem)) => {
                HeaderValue::from_static("application/problem+json")
            }
            (None, _) => HeaderValue::from_static("application/json"),
        }
    }

    /// The same shape, indented with two spaces and one key per line.
    pub const fn pretty(mut self) -> Self {
        self.pretty = true;
        self
    }

    /// The body's bytes for `info`.
    pub fn render(&self, info: &RateLimitOutcome) -> Bytes {
        let bytes = match &self.shape {
            Shape::Custom(render) => render(info, self.pretty).unwrap_or_else(|error| {
                tracing::warn!(
                    %error,
                    policy = %info.policy,
                    "custom 429 body failed to serialize; sending the default body"
                );
                let inputs = Inputs::of(Ready::RetryAfterCamel, info, self.pretty);
                ready_shape(&inputs, &info.method, &info.path)
            }),
            Shape::Ready(ready) => return ready_body(*ready, info, self.pretty),
        };
        Bytes::from(bytes)
    }
}

/// What a ready body is made of besides the request line: the one description both the
/// rendering ([`ready_shape`]) and the per-thread reuse ([`ready_body`]) go by, so equal
/// inputs make equal bytes.
#[derive(Clone, Copy, PartialEq)]
struct Inputs {
    shape: Ready,
    pretty: bool,
    limit: Option<u64>,
    remaining: Option<u64>,
    period: Option<Duration>,
    retry_after: Option<u64>,
    never_fits: Option<(u64, u64)>,
    reset_at: Option<u64>,
}

impl Inputs {
    /// What ready `shape` makes of `info`.
    fn of(shape: Ready, info: &RateLimitOutcome, pretty: bool) -> Self {
        let period = info.most_restrictive_bucket().map(|b| b.quota.period());
        Self::from_most(shape, pretty, info.most(), period)
    }

    /// What ready `shape` makes of an outcome whose most restrictive bucket is `most`'s,
    /// of a quota of `period`.
    fn from_most(shape: Ready, pretty: bool, most: Most<'_>, period: Option<Duration>) -> Self {
        Self {
            shape,
            pretty,
            limit: most.state.map(|s| s.limit),
            remaining: most.state.map(|s| s.remaining),
            period,
            retry_after: most.retry_after_secs(),
            never_fits: most.never_fits(),
            reset_at: most.reset_at().map(|t| t.as_unix_secs_ceil()),
        }
    }
}

/// The last ready body made on a thread, with what it was made of.
struct LastBody {
    inputs: Inputs,
    /// The request line, for the shape that writes it ([`Ready::Message`]).
    method: http::Method,
    path: String,
    bytes: Bytes,
}

thread_local! {
    /// A client far over its limit is refused with the same body until the wait it is told
    /// changes (once a second): the body is made once per thread, and shared after that.
    static LAST_BODY: std::cell::RefCell<Option<LastBody>> = const { std::cell::RefCell::new(None) };
}

/// The body of ready `shape` for `info`: the one made last on this thread when it was made
/// of the same inputs, else a new one.
fn ready_body(shape: Ready, info: &RateLimitOutcome, pretty: bool) -> Bytes {
    let inputs = Inputs::of(shape, info, pretty);
    reuse_or_make(inputs, &info.method, &info.path)
}

/// The body of ready `inputs` for a request of `method` to `path`: the one made last on
/// this thread when it was made of the same inputs, else a new one.
fn reuse_or_make(inputs: Inputs, method: &http::Method, path: &str) -> Bytes {
    let with_line = inputs.shape == Ready::Message;
    LAST_BODY.with(|last| {
        let mut last = last.borrow_mut();
        if let Some(last) = last.as_ref().filter(|last| {
            last.inputs == inputs && (!with_line || (last.method == method && last.path == path))
        }) {
            return last.bytes.clone();
        }
        let bytes = Bytes::from(ready_shape(&inputs, method, path));
        *last = Some(LastBody {
            inputs,
            method: method.clone(),
            path: if with_line {
                path.to_owned()
            } else {
                String::new()
            },
            bytes: bytes.clone(),
        });
        bytes
    })
}

impl ErrorBody {
    /// The body for an outcome whose most restrictive bucket is `most`'s, of a quota of
    /// `period`, for a request of `method` to `path`, if it is a ready shape (the bytes
    /// [`ErrorBody::render`] makes of that outcome, made without it); `None` for a custom
    /// body, which needs the outcome.
    pub(crate) fn ready(
        &self,
        most: Most<'_>,
        period: Option<Duration>,
        method: &http::Method,
        path: &str,
    ) -> Option<Bytes> {
        match self.shape {
            Shape::Ready(ready) => Some(reuse_or_make(
                Inputs::from_most(ready, self.pretty, most, period),
                method,
                path,
            )),
            Shape::Custom(_) => None,
        }
    }
}

/// The whole refusal: `429 Too Many Requests`, the body's `Content-Type`, the
/// headers of `style` (with `Retry-After` unless waiting cannot help) and `body`'s bytes.
///
/// ```
/// use std::time::Duration;
/// use http::Method;
/// use tollgate::{too_many_requests, ErrorBody, HeaderStyle, RateLimitOutcome, ResetFormat};
/// use tollgate::{BucketState, Decision, Quota, Refusal, Timestamp};
///
/// let decision = Decision {
///     allowed: false,
///     now: Timestamp::from_micros(1_717_200_048_000_000),
///     buckets: vec![BucketState {
///         allowed: false,
///         limit: 100,
///         remaining: 0,
///         reset_after: Duration::from_secs(12),
///         retry_after: Some(Duration::from_millis(600)),
///         refusal: Some(Refusal::OverLimit),
///     }],
/// };
/// let info = RateLimitOutcome::from_decision(
///     "invoices", &decision, [("invoices:key", Quota::per_minute(100))], Method::GET, "/v1/invoices",
/// );
/// let style = HeaderStyle::x_ratelimit(ResetFormat::UnixSeconds);
/// let response = too_many_requests(&info, &style, &ErrorBody::message().pretty());
/// assert_eq!(response.status(), 429);
/// assert_eq!(response.headers()["content-type"], "application/json");
/// assert_eq!(response.headers()["retry-after"], "1");
/// assert_eq!(response.headers()["x-ratelimit-reset"], "1717200060");
/// assert!(response.body().ends_with(b"\"reset_at\": 1717200060\n}"));
/// ```
pub fn too_many_requests(
    info: &RateLimitOutcome,
    style: &HeaderStyle,
    body: &ErrorBody,
) -> Response<Bytes> {
    let mut response = refusal(info, body);
    style.write(info, response.headers_mut());
    response
}

/// A 429 with `body` for `info` and its content type, before any rate-limit header.
fn refusal(info: &RateLimitOutcome, body: &ErrorBody) -> Response<Bytes> {
    let mut response = refusal_of(body.render(info));
    // Room for the rate-limit headers added next (growing the map would move it).
    let headers = response.headers_mut();
    *headers = http::HeaderMap::with_capacity(8);
    headers.insert(CONTENT_TYPE, body.content_type());
    response
}

/// A 429 of `bytes`, without any header yet (the layer makes its map at once: its content
/// type and rate-limit headers, `Settled::apply_with`).
pub(crate) fn refusal_of(bytes: Bytes) -> Response<Bytes> {
    let mut response = Response::new(bytes);
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    response
}

/// 503 for a store that failed while the policy fails closed (and for
/// [`CheckError::Store`](crate::CheckError::Store) as an axum response):
/// `{"error":"rate limiter unavailable"}`, or as an RFC 9457 problem where the 429s are
/// ([`ErrorBody::problem`]).
pub(crate) fn unavailable(body: &ErrorBody) -> Response<Bytes> {
    let (content_type, text): (HeaderValue, &'static [u8]) = match body.shape {
        Shape::Ready(Ready::Problem) => (
            body.content_type(),
            br#"{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"The rate limiter is unavailable; retry in 1 second."}"#,
        ),
        _ => (
            HeaderValue::from_static("application/json"),
            br#"{"error":"rate limiter unavailable"}"#,
        ),
    };
    let mut response = Response::new(Bytes::from_static(text));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// A response of `status` whose body (of `content_type`) never changes.
pub(crate) fn fixed_response(
    status: StatusCode,
    content_type: &'static str,
    body: &'static [u8],
) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from_static(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn to_json<T: Serialize + ?Sized>(value: &T, pretty: bool) -> Result<Vec<u8>, serde_json::Error> {
    if pretty {
        serde_json::to_vec_pretty(value)
    } else {
        serde_json::to_vec(value)
    }
}

/// The bytes of a ready body made of `inputs` (and, for the message shape, the request line).
fn ready_shape(inputs: &Inputs, method: &http::Method, path: &str) -> Vec<u8> {
    let limit = Json::opt(inputs.limit);
    let retry_after = Json::opt(inputs.retry_after);
    let never_fits = inputs.never_fits.map(|(cost, capacity)| {
        format!(
            "This request costs {cost} points, but this rate limit allows at most {capacity} at once; retrying will not help."
        )
    });
    let retry_in = || {
        never_fits
            .clone()
            .unwrap_or_else(|| match inputs.retry_after {
                Some(1) => "Rate limit exceeded; retry in 1 second.".to_owned(),
                Some(secs) => format!("Rate limit exceeded; retry in {secs} seconds."),
                None => "Rate limit exceeded.".to_owned(),
            })
    };
    let value = match inputs.shape {
        Ready::RetryAfterCamel => Json::Obj(vec![
            ("error", Json::str("Too Many Requests")),
            ("message", Json::Str(retry_in().into())),
            ("retryAfter", retry_after),
        ]),
        Ready::Problem => Json::Obj(vec![
            ("type", Json::str("about:blank")),
            ("title", Json::str("Too Many Requests")),
            ("status", Json::Int(429)),
            ("detail", Json::Str(retry_in().into())),
            ("retryAfter", retry_after),
        ]),
        Ready::CodeDetails => Json::Obj(vec![
            (
                "error",
                Json::Str(never_fits.map_or("Rate limit exceeded".into(), Cow::Owned)),
            ),
            ("code", Json::str("RATE_LIMIT_EXCEEDED")),
            (
                "details",
                Json::Obj(vec![
                    ("limit", limit),
                    (
                        "window",
                        inputs
                            .period
                            .map_or(Json::Null, |period| Json::Str(window(period).into())),
                    ),
                    ("retryAfter", retry_after),
                ]),
            ),
        ]),
        Ready::Message => {
            // A `HEAD` is answered with the fields a `GET` would have (RFC 9110 9.3.2), its
            // length included: the message names the `GET` whose limit it shares.
            let method = if method == http::Method::HEAD {
                &http::Method::GET
            } else {
                method
            };
            let message = never_fits.unwrap_or_else(|| {
                format!("You have exceeded the rate limit for {method} {path}.")
            });
            Json::Obj(vec![
                ("error", Json::str("rate_limit_exceeded")),
                ("message", Json::Str(message.into())),
                ("limit", limit),
                ("remaining", Json::opt(inputs.remaining)),
                ("reset_at", Json::opt(inputs.reset_at)),
            ])
        }
    };
    // Serializing strings, integers and string-keyed objects cannot fail.
    to_json(&value, inputs.pretty).unwrap_or_default()
}

/// A quota's period as the [`code_details`](ErrorBody::code_details) body writes it: the largest unit that divides it,
/// `1m`, `15m`, `1h`, `1d`, `90s`, `250ms`.
fn window(period: Duration) -> String {
    const UNITS: [(u128, &str); 5] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
        (1, "ms"),
    ];
    let ms = period.as_millis();
    UNITS
        .iter()
        .find(|(unit, _)| ms > 0 && ms.is_multiple_of(*unit))
        .map_or_else(
            || format!("{ms}ms"),
            |(unit, name)| format!("{}{name}", ms / unit),
        )
}

/// A JSON value whose objects keep the order their keys were written in, whatever
/// serde_json's features.
enum Json<'a> {
    Str(Cow<'a, str>),
    Int(u64),
    Null,
    Obj(Vec<(&'static str, Json<'a>)>),
}

impl Json<'_> {
    const fn str(s: &'static str) -> Self {
        Json::Str(Cow::Borrowed(s))
    }

    fn opt(n: Option<u64>) -> Self {
        n.map_or(Json::Null, Json::Int)
    }
}

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Str(s) => serializer.serialize_str(s),
            Json::Int(n) => serializer.serialize_u64(*n),
            Json::Null => serializer.serialize_unit(),
            Json::Obj(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http::Method;
    use tollgate_limits::{Decision, Quota, Timestamp};

    use super::super::headers::ResetFormat;
    use super::super::info;
    use super::super::info::tests::{single, state};
    use super::*;

    /// 2024-06-01 00:00:00 UTC.
    const JUNE_1: u64 = 1_717_200_000_000_000;

    fn text(bytes: &Bytes) -> &str {
        std::str::from_utf8(bytes).unwrap()
    }

    /// 100 per minute per tenant, empty for 22.4 more seconds.
    fn tenant_refused() -> RateLimitOutcome {
        single(
            "tenant",
            Quota::per_minute(100),
            Timestamp::from_micros(JUNE_1),
            state(
                100,
                0,
                Duration::from_secs(60),
                Some(Duration::from_millis(22_400)),
            ),
            "/api/tickets",
        )
    }

    /// GET /v1/invoices, 100/min per API key, refused 48.3 s into the minute.
    fn invoices_refused() -> RateLimitOutcome {
        single(
            "invoices:key",
            Quota::per_minute(100),
            Timestamp::from_micros(JUNE_1 + 48_300_000),
            state(
                100,
                0,
                Duration::from_millis(11_700),
                Some(Duration::from_millis(11_200)),
            ),
            "/v1/invoices",
        )
    }

    fn never_fits() -> RateLimitOutcome {
        info::tests::never_fits("reports:key", Method::GET, "/v1/reports")
    }

    #[test]
    fn a_body_made_again_from_the_same_inputs_is_shared_and_any_change_makes_a_new_one() {
        let refused = |path: &str, wait_ms: u64, period: Duration| {
            single(
                "tenant",
                Quota::new(100, period).unwrap(),
                Timestamp::from_micros(JUNE_1),
                state(
                    100,
                    0,
                    Duration::from_secs(60),
                    Some(Duration::from_millis(wait_ms)),
                ),
                path,
            )
        };
        let minute = Duration::from_secs(60);
        for body in [
            ErrorBody::retry_after_camel(),
            ErrorBody::code_details(),
            ErrorBody::message(),
            ErrorBody::problem(),
        ] {
            let first = body.render(&refused("/a", 22_400, minute));
            let again = body.render(&refused("/a", 22_400, minute));
            assert_eq!(first, again);
            assert_eq!(first.as_ptr(), again.as_ptr(), "made once: {body:?}");
            // Every input a shape writes changes the bytes; the others share them.
            for (other, changes) in [
                (
                    refused("/a", 30_000, minute),
                    !matches!(body.shape, Shape::Ready(Ready::Message)),
                ),
                (
                    refused("/b", 22_400, minute),
                    matches!(body.shape, Shape::Ready(Ready::Message)),
                ),
                (
                    refused("/a", 22_400, Duration::from_secs(3600)),
                    matches!(body.shape, Shape::Ready(Ready::CodeDetails)),
                ),
            ] {
                let made = body.render(&other);
                assert_eq!(made != first, changes, "{body:?}: {}", text(&made));
                // Never the previous body for other inputs: compare with a fresh render.
                assert_eq!(
                    text(&made),
                    text(&Bytes::from(match body.shape {
                        Shape::Ready(ready) => ready_shape(
                            &Inputs::of(ready, &other, false),
                            &other.method,
                            &other.path,
                        ),
                        Shape::Custom(_) => unreachable!(),
                    }))
                );
                body.render(&refused("/a", 22_400, minute));
            }
        }
        // Another shape, same inputs: its own bytes.
        let camel = ErrorBody::retry_after_camel().render(&refused("/a", 22_400, minute));
        let problem = ErrorBody::problem().render(&refused("/a", 22_400, minute));
        assert_ne!(camel, problem);
    }

    #[test]
    fn default_body_includes_retry_after_seconds() {
        let body = ErrorBody::retry_after_camel().render(&tenant_refused());
        assert_eq!(
            text(&body),
            r#"{"error":"Too Many Requests","message":"Rate limit exceeded; retry in 23 seconds.","retryAfter":23}"#
        );
        assert_eq!(ErrorBody::default().render(&tenant_refused()), body);
        let one = single(
            "b",
            Quota::per_minute(1),
            Timestamp::from_micros(0),
            state(1, 0, Duration::from_secs(1), Some(Duration::from_micros(1))),
            "/",
        );
        assert_eq!(
            text(&ErrorBody::default().render(&one)),
            r#"{"error":"Too Many Requests","message":"Rate limit exceeded; retry in 1 second.","retryAfter":1}"#
        );
    }

    #[test]
    fn problem_details_per_rfc_9457() {
        let response = too_many_requests(
            &tenant_refused(),
            &HeaderStyle::none(),
            &ErrorBody::problem(),
        );
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        assert_eq!(response.headers()["retry-after"], "23");
        assert_eq!(
            text(response.body()),
            r#"{"type":"about:blank","title":"Too Many Requests","status":429,"detail":"Rate limit exceeded; retry in 23 seconds.","retryAfter":23}"#
        );
        let why = "This request costs 12 points, but this rate limit allows at most 10 at once; retrying will not help.";
        assert_eq!(
            text(&ErrorBody::problem().render(&never_fits())),
            format!(
                r#"{{"type":"about:blank","title":"Too Many Requests","status":429,"detail":"{why}","retryAfter":null}}"#
            )
        );
        // A custom body can be a problem too.
        let custom = ErrorBody::custom(|info: &RateLimitOutcome| {
            serde_json::json!({ "type": "https://example.com/probs/rate", "policy": info.policy })
        })
        .with_content_type(HeaderValue::from_static("application/problem+json"));
        let response = too_many_requests(&tenant_refused(), &HeaderStyle::none(), &custom);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        assert_eq!(
            ErrorBody::default().content_type(),
            HeaderValue::from_static("application/json")
        );
    }

    #[test]
    fn code_details_response_byte_for_byte() {
        let response = too_many_requests(
            &tenant_refused(),
            &HeaderStyle::x_ratelimit(ResetFormat::UnixSeconds),
            &ErrorBody::code_details(),
        );
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let headers = response.headers();
        assert_eq!(headers.len(), 5);
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["retry-after"], "23");
        assert_eq!(headers["x-ratelimit-limit"], "100");
        assert_eq!(headers["x-ratelimit-remaining"], "0");
        assert_eq!(headers["x-ratelimit-reset"], "1717200060");
        assert_eq!(
            text(response.body()),
            r#"{"error":"Rate limit exceeded","code":"RATE_LIMIT_EXCEEDED","details":{"limit":100,"window":"1m","retryAfter":23}}"#
        );
    }

    #[test]
    fn pretty_message_response_byte_for_byte() {
        let response = too_many_requests(
            &invoices_refused(),
            &HeaderStyle::x_ratelimit(ResetFormat::UnixSeconds),
            &ErrorBody::message().pretty(),
        );
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["retry-after"], "12");
        assert_eq!(response.headers()["x-ratelimit-reset"], "1717200060");
        // Two-space indentation, keys in this order.
        let expected = r#"{
  "error": "rate_limit_exceeded",
  "message": "You have exceeded the rate limit for GET /v1/invoices.",
  "limit": 100,
  "remaining": 0,
  "reset_at": 1717200060
}"#;
        assert_eq!(text(response.body()), expected);
        assert_eq!(
            text(&ErrorBody::message().render(&invoices_refused())),
            r#"{"error":"rate_limit_exceeded","message":"You have exceeded the rate limit for GET /v1/invoices.","limit":100,"remaining":0,"reset_at":1717200060}"#
        );
    }

    /// A `HEAD` refused: the body a `GET` would have had, so its `Content-Length` is the
    /// same (a review: 167 bytes for `HEAD`, 166 for `GET`).
    #[test]
    fn a_head_s_message_names_the_get_it_stands_for() {
        let head = RateLimitOutcome {
            method: http::Method::HEAD,
            ..invoices_refused()
        };
        assert_eq!(
            ErrorBody::message().render(&head),
            ErrorBody::message().render(&invoices_refused())
        );
    }

    #[test]
    fn a_request_that_never_fits_says_retrying_will_not_help() {
        let info = never_fits();
        let response = too_many_requests(&info, &HeaderStyle::default(), &ErrorBody::default());
        assert_eq!(response.status(), 429);
        assert!(!response.headers().contains_key("retry-after"));
        assert_eq!(response.headers()["x-ratelimit-limit"], "10");
        let why = "This request costs 12 points, but this rate limit allows at most 10 at once; retrying will not help.";
        assert_eq!(
            text(response.body()),
            format!(r#"{{"error":"Too Many Requests","message":"{why}","retryAfter":null}}"#)
        );
        assert_eq!(
            text(&ErrorBody::code_details().render(&info)),
            format!(
                r#"{{"error":"{why}","code":"RATE_LIMIT_EXCEEDED","details":{{"limit":10,"window":"1m","retryAfter":null}}}}"#
            )
        );
        assert_eq!(
            text(&ErrorBody::message().render(&info)),
            format!(
                r#"{{"error":"rate_limit_exceeded","message":"{why}","limit":10,"remaining":10,"reset_at":1717200000}}"#
            )
        );
    }

    #[test]
    fn custom_bodies_get_the_info() {
        let body = ErrorBody::custom(
            |info: &RateLimitOutcome| serde_json::json!({ "retry": info.retry_after_secs(), "path": info.path }),
        );
        let bytes = body.render(&tenant_refused());
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            value,
            serde_json::json!({ "retry": 23, "path": "/api/tickets" })
        );
        assert_eq!(
            text(
                &ErrorBody::custom(|_: &RateLimitOutcome| [1, 2])
                    .pretty()
                    .render(&tenant_refused())
            ),
            "[\n  1,\n  2\n]"
        );
    }

    #[test]
    fn a_custom_body_that_fails_to_serialize_falls_back_to_the_default() {
        struct Broken;
        impl Serialize for Broken {
            fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("broken"))
            }
        }
        let body = ErrorBody::custom(|_: &RateLimitOutcome| Broken);
        assert_eq!(
            body.render(&tenant_refused()),
            ErrorBody::default().render(&tenant_refused())
        );
    }

    #[test]
    fn paths_are_escaped_into_valid_json() {
        let info = single(
            "b",
            Quota::per_minute(1),
            Timestamp::from_micros(0),
            state(1, 0, Duration::from_secs(60), Some(Duration::from_secs(60))),
            "/a\"b\\c\u{1}\u{e9}</script>",
        );
        let bytes = ErrorBody::message().render(&info);
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            value["message"],
            "You have exceeded the rate limit for GET /a\"b\\c\u{1}\u{e9}</script>."
        );
    }

    #[test]
    fn windows_use_the_largest_unit_that_divides() {
        for (period, shown) in [
            (Duration::from_secs(60), "1m"),
            (Duration::from_secs(900), "15m"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(86_400), "1d"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_secs(400 * 86_400), "400d"),
            (Duration::ZERO, "0ms"),
        ] {
            assert_eq!(window(period), shown);
        }
    }

    #[test]
    fn no_buckets_and_huge_values_do_not_panic() {
        let empty = RateLimitOutcome::from_decision(
            "p",
            &Decision {
                allowed: false,
                now: Timestamp::from_micros(u64::MAX),
                buckets: Vec::new(),
            },
            std::iter::empty::<(&str, Quota)>(),
            Method::GET,
            "/",
        );
        let response =
            too_many_requests(&empty, &HeaderStyle::default(), &ErrorBody::code_details());
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers().len(), 1);
        assert_eq!(
            text(response.body()),
            r#"{"error":"Rate limit exceeded","code":"RATE_LIMIT_EXCEEDED","details":{"limit":null,"window":null,"retryAfter":null}}"#
        );
        let max = tollgate_limits::MAX_COUNT;
        let huge = single(
            "b",
            Quota::new(max, tollgate_limits::MAX_PERIOD).unwrap(),
            Timestamp::from_micros(u64::MAX),
            state(max, max, Duration::MAX, Some(Duration::MAX)),
            "/",
        );
        let body = ErrorBody::message().render(&huge);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["reset_at"], u64::MAX.div_ceil(1_000_000));
        assert_eq!(
            text(&ErrorBody::retry_after_camel().render(&huge)),
            r#"{"error":"Too Many Requests","message":"Rate limit exceeded; retry in 18446744073709551615 seconds.","retryAfter":18446744073709551615}"#
        );
    }

    #[test]
    fn debug_names_the_shape() {
        assert_eq!(
            format!("{:?}", ErrorBody::message().pretty()),
            "ErrorBody { shape: Message, pretty: true }"
        );
        assert!(format!("{:?}", ErrorBody::custom(|_: &RateLimitOutcome| 1)).contains("Custom"));
    }
}
