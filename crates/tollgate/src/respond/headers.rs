//! [`HeaderStyle`]: which rate-limit headers a response carries, and how they are spelled.

use std::cell::RefCell;
use std::sync::OnceLock;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use smallvec::SmallVec;
use tollgate_limits::{BucketState, Quota, Timestamp};

use super::info::{ceil_secs, retry_secs, shown_reset, RateLimitOutcome};
use super::sf;
use crate::engine::policy_item;

/// `X-RateLimit-Limit`: the most restrictive bucket's quota count.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`: what is left in the most restrictive bucket.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`: when the most restrictive bucket is full again ([`ResetFormat`]).
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// The IETF `RateLimit` field: what is left of each bucket, and when it resets.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// The IETF `RateLimit-Policy` field: each bucket's quota and window.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// The fields a rate-limit response may carry, in the order they are written: a response's
/// pending fields are held by position ([`Fields`]), not by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Field {
    /// `X-RateLimit-Limit`.
    Limit,
    /// `X-RateLimit-Remaining`.
    Remaining,
    /// `X-RateLimit-Reset`.
    Reset,
    /// `RateLimit-Policy`.
    Policy,
    /// `RateLimit`.
    Current,
    /// `Retry-After`.
    RetryAfter,
}

impl Field {
    /// Every field, in position order.
    const ALL: [Field; 6] = [
        Field::Limit,
        Field::Remaining,
        Field::Reset,
        Field::Policy,
        Field::Current,
        Field::RetryAfter,
    ];

    /// The field's name.
    pub(crate) const fn name(self) -> HeaderName {
        match self {
            Field::Limit => X_RATELIMIT_LIMIT,
            Field::Remaining => X_RATELIMIT_REMAINING,
            Field::Reset => X_RATELIMIT_RESET,
            Field::Policy => RATELIMIT_POLICY,
            Field::Current => RATELIMIT,
            Field::RetryAfter => RETRY_AFTER,
        }
    }
}

/// The rate-limit fields of one response, ready to add: a value per [`Field`] position
/// (240 bytes, moved with the request's future; names are not stored).
#[derive(Default)]
pub(crate) struct Fields([Option<HeaderValue>; 6]);

impl Fields {
    /// Sets `field` to `value`.
    pub(crate) fn set(&mut self, field: Field, value: HeaderValue) {
        self.0[field as usize] = Some(value);
    }

    /// The rate-limit fields of `headers` (what a handler's own bucket wrote, say); a list
    /// in several lines, as one.
    fn of(headers: &HeaderMap) -> Self {
        Self(Field::ALL.map(|field| {
            let all = headers.get_all(field.name());
            let mut lines = all.iter();
            let first = lines.next()?;
            if lines.next().is_none() || !matches!(field, Field::Policy | Field::Current) {
                return Some(first.clone());
            }
            HeaderValue::from_bytes(&one_list(&all)).ok()
        }))
    }

    /// Adds the fields to `headers`, beside those another source (a handler's own bucket,
    /// another limiter) wrote there already, so that every bucket a request spent shows:
    /// the IETF lists gain the items they lack; the `X-RateLimit-*` fields, which describe
    /// one bucket, describe whichever has less remaining (theirs on a tie); a
    /// `Retry-After` already there stays.
    /// (By reference: the fields are 240 bytes, which a move copies; each is taken out.)
    pub(crate) fn merge_into(&mut self, headers: &mut HeaderMap) {
        if headers.is_empty() {
            // A response without any field: nothing to merge with, nothing of theirs to
            // keep before ours. (One with a content type alone, as axum makes them, is
            // appended to: taking its content type out into a copy costs more.)
            return self.fill(headers, None);
        }
        let count = self.0.iter().flatten().count();
        if count == 0 {
            // Nothing to merge (a quiet header style, or a handler's map without any).
            return;
        }
        headers.reserve(count);
        let [limit, remaining, reset, policy, current, retry_after] = &mut self.0;
        if headers.len() <= 8 && !has_rate_limit_fields(headers) {
            // The usual response has none of them: each is appended, without the entry
            // lookup a merge takes (a third more than this look at a few names; past a few
            // names, the lookups cost less). In the order a merge adds them
            // ([`APPEND_ORDER`], written out: a loop over it cost a text response about
            // 100 instructions more); a limit or a reset without what remains describes no
            // bucket and is left out, as there.
            if let Some(remaining) = remaining.take() {
                headers.append(X_RATELIMIT_REMAINING, remaining);
                for (name, value) in [(X_RATELIMIT_LIMIT, limit), (X_RATELIMIT_RESET, reset)] {
                    if let Some(value) = value.take() {
                        headers.append(name, value);
                    }
                }
            }
            for (name, value) in [
                (RATELIMIT_POLICY, policy),
                (RATELIMIT, current),
                (RETRY_AFTER, retry_after),
            ] {
                if let Some(value) = value.take() {
                    headers.append(name, value);
                }
            }
            return;
        }
        // Taken one by one: moving the six out at once copies the whole array.
        if let Some(remaining) = remaining.take() {
            merge_one_bucket(headers, limit.take(), remaining, reset.take());
        }
        if let Some(value) = policy.take() {
            merge_list(headers, RATELIMIT_POLICY, value);
        }
        if let Some(value) = current.take() {
            merge_list(headers, RATELIMIT, value);
        }
        if let Some(value) = retry_after.take() {
            insert_vacant(headers, RETRY_AFTER, value);
        }
    }
}

/// The names of the fields in the order [`Fields::merge_into`] appends them: what remains,
/// the limit and the reset (the three only with what remains), the policy, the current
/// list, `Retry-After`.
const APPEND_ORDER: [HeaderName; 6] = [
    X_RATELIMIT_REMAINING,
    X_RATELIMIT_LIMIT,
    X_RATELIMIT_RESET,
    RATELIMIT_POLICY,
    RATELIMIT,
    RETRY_AFTER,
];

/// For each set of the fields of [`APPEND_ORDER`] (a bit per position), and with or
/// without a `Content-Type` before them (the seventh bit), a map of their names in that
/// order (each with an empty value), made once.
static NAMED: [OnceLock<HeaderMap>; 128] = [const { OnceLock::new() }; 128];

impl Fields {
    /// The values in [`APPEND_ORDER`], a limit or a reset without what remains dropped (it
    /// describes no bucket: a merge leaves it out too).
    #[inline(always)]
    fn in_append_order(&mut self) -> [&mut Option<HeaderValue>; 6] {
        let [limit, remaining, reset, policy, current, retry_after] = &mut self.0;
        if remaining.is_none() {
            *limit = None;
            *reset = None;
        }
        [remaining, limit, reset, policy, current, retry_after]
    }

    /// Sets the empty `headers` to `content_type` (if any), then the fields, each taken out,
    /// as inserting it and then [`Fields::merge_into`]'s appends (in [`APPEND_ORDER`]) make
    /// them, but from a copy of the map of their names ([`NAMED`]) with the values put in
    /// place: a copy does not hash each name again, where an append does (a 429 of the
    /// limiter's own, a response without any header of its own; a map holding the
    /// handler's content type is appended to, as taking it out into a copy costs more). A
    /// limit or a reset without what remains describes no bucket and is left out, as a
    /// merge leaves it.
    /// (Out of line: inlined, it costs a merge into a map with fields of its own a few dozen
    /// instructions more.)
    #[inline(never)]
    pub(crate) fn fill(&mut self, headers: &mut HeaderMap, content_type: Option<HeaderValue>) {
        let ordered = self.in_append_order();
        let set = ordered
            .iter()
            .enumerate()
            .fold(0, |set, (i, value)| set | usize::from(value.is_some()) << i);
        if set == 0 {
            if let Some(content_type) = content_type {
                headers.insert(CONTENT_TYPE, content_type);
            }
            return;
        }
        let set = set | usize::from(content_type.is_some()) << APPEND_ORDER.len();
        let mut map = NAMED[set]
            .get_or_init(|| {
                // (Grown by the appends, to room for six fields, rather than reserved:
                // `HeaderMap::with_capacity` or `reserve` called here too is no longer
                // inlined where a response is made or merged into, tens of instructions
                // more there.)
                let mut named = HeaderMap::new();
                if set >> APPEND_ORDER.len() != 0 {
                    named.append(CONTENT_TYPE, HeaderValue::from_static(""));
                }
                for (i, name) in APPEND_ORDER.into_iter().enumerate() {
                    if set & (1 << i) != 0 {
                        named.append(name, HeaderValue::from_static(""));
                    }
                }
                named
            })
            .clone();
        let mut slots = map.values_mut();
        // (The map has a slot for each value there is, in order.)
        if let Some(value) = content_type {
            if let Some(slot) = slots.next() {
                *slot = value;
            }
        }
        for value in ordered {
            if let Some(value) = value.take() {
                if let Some(slot) = slots.next() {
                    *slot = value;
                }
            }
        }
        *headers = map;
    }
}

/// Adds the rate-limit fields of `from` (the headers of a bucket a handler charged, from
/// [`Limiter::rate_limit_headers`](crate::Limiter::rate_limit_headers)) to `into` (a
/// response's headers) as the middleware adds its own: every bucket shows in the IETF
/// `RateLimit` and `RateLimit-Policy` lists, the `X-RateLimit-*` fields describe the one
/// with less remaining, and a `Retry-After` already in `into` stays. Other fields of
/// `from` are left out.
///
/// ```
/// use http::HeaderMap;
///
/// let mut response = HeaderMap::new();
/// response.insert("x-ratelimit-remaining", "0".parse().unwrap());
/// response.insert("ratelimit", "\"lockout\";r=0;t=1800".parse().unwrap());
/// let mut charged = HeaderMap::new();
/// charged.insert("x-ratelimit-remaining", "15".parse().unwrap());
/// charged.insert("ratelimit", "\"auth\";r=15;t=900".parse().unwrap());
/// tollgate::merge_rate_limit_headers(&mut response, &charged);
/// assert_eq!(response["x-ratelimit-remaining"], "0");
/// assert_eq!(response["ratelimit"], "\"lockout\";r=0;t=1800, \"auth\";r=15;t=900");
/// ```
pub fn merge_rate_limit_headers(into: &mut HeaderMap, from: &HeaderMap) {
    Fields::of(from).merge_into(into);
}

/// Whether `headers` has any rate-limit field, by a look at each of its names.
fn has_rate_limit_fields(headers: &HeaderMap) -> bool {
    headers
        .keys()
        .any(|name| Field::ALL.into_iter().any(|field| field.name() == name))
}

/// A list field's lines as one list, as RFC 9110 combines them.
fn one_list<'a>(lines: impl IntoIterator<Item = &'a HeaderValue>) -> Vec<u8> {
    let lines: Vec<&[u8]> = lines.into_iter().map(HeaderValue::as_bytes).collect();
    lines.join(&b", "[..])
}

/// Inserts `value` under `name` unless `headers` has that field.
fn insert_vacant(headers: &mut HeaderMap, name: HeaderName, value: HeaderValue) {
    if let http::header::Entry::Vacant(entry) = headers.entry(name) {
        entry.insert(value);
    }
}

/// The `X-RateLimit-*` fields of one bucket: added where the response has none, or in
/// place of the ones it has if this bucket has less remaining (the tighter bucket shows,
/// even where both sources name a bucket alike and the lists keep theirs).
fn merge_one_bucket(
    headers: &mut HeaderMap,
    limit: Option<HeaderValue>,
    remaining: HeaderValue,
    reset: Option<HeaderValue>,
) {
    let mut entry = match headers.entry(X_RATELIMIT_REMAINING) {
        http::header::Entry::Vacant(entry) => {
            entry.insert(remaining);
            for (name, value) in [(X_RATELIMIT_LIMIT, limit), (X_RATELIMIT_RESET, reset)] {
                if let Some(value) = value {
                    insert_vacant(headers, name, value);
                }
            }
            return;
        }
        http::header::Entry::Occupied(entry) => entry,
    };
    let count = |value: &HeaderValue| value.to_str().ok()?.trim().parse::<u64>().ok();
    let fewer = match (count(&remaining), count(entry.get())) {
        (Some(ours), Some(theirs)) => ours < theirs,
        // Theirs unreadable: they stay.
        _ => false,
    };
    if !fewer {
        return;
    }
    entry.insert(remaining);
    // The three describe one bucket: theirs go.
    for (name, value) in [(X_RATELIMIT_LIMIT, limit), (X_RATELIMIT_RESET, reset)] {
        match value {
            Some(value) => headers.insert(name, value),
            None => headers.remove(name),
        };
    }
}

/// An IETF list field: `value` where the response has none, else the response's items
/// (all its lines, as one list) followed by those of `value` whose bucket it does not name
/// already.
fn merge_list(headers: &mut HeaderMap, name: HeaderName, value: HeaderValue) {
    let mut entry = match headers.entry(name) {
        http::header::Entry::Vacant(entry) => {
            entry.insert(value);
            return;
        }
        http::header::Entry::Occupied(entry) => entry,
    };
    let theirs = one_list(entry.iter());
    let (Ok(theirs), Ok(ours)) = (std::str::from_utf8(&theirs), value.to_str()) else {
        return;
    };
    let mut merged = theirs.to_string();
    // Our items are `"name";...` with names of letters, digits, `-`, `_` and `.`: `, `
    // separates them.
    for item in ours.split(", ") {
        let name = item.split(';').next().unwrap_or(item);
        let named = theirs.match_indices(name).any(|(at, _)| {
            matches!(
                theirs.as_bytes().get(at + name.len()),
                None | Some(b';' | b',' | b' ')
            )
        });
        if !named {
            if !merged.trim().is_empty() {
                merged.push_str(", ");
            }
            merged.push_str(item);
        }
    }
    // Rewritten as one line (its lines joined) when something was added.
    if merged.len() != theirs.len() || entry.iter().count() > 1 {
        if let Ok(merged) = HeaderValue::from_str(&merged) {
            entry.insert(merged);
        }
    }
}

/// The last second an HTTP date can show (9999-12-31 23:59:59 UTC); later times are
/// clamped to it.
const HTTP_DATE_MAX_SECS: u64 = 253_402_300_799;

/// How `X-RateLimit-Reset` spells the time the most restrictive bucket is full again.
/// Every format rounds up, so a reset is never announced early.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ResetFormat {
    /// Unix time in whole seconds: `1717200060` (as GitHub writes it).
    #[default]
    UnixSeconds,
    /// Unix time in whole milliseconds: `1717200060000`.
    UnixMillis,
    /// Whole seconds from now: `60`.
    Seconds,
    /// An HTTP date (IMF-fixdate, RFC 9110): `Sat, 01 Jun 2024 00:01:00 GMT`.
    HttpDate,
}

/// Which rate-limit headers to write, on admitted and refused responses alike.
///
/// - **`X-RateLimit-*`** ([`HeaderStyle::x_ratelimit`]): `X-RateLimit-Limit`, `-Remaining`
///   and `-Reset` for the most restrictive bucket (see
///   [`Decision::most_restrictive`](tollgate_limits::Decision::most_restrictive)), reset in a
///   [`ResetFormat`].
/// - **IETF** ([`HeaderStyle::ietf`]): `RateLimit-Policy` and `RateLimit` as in
///   draft-ietf-httpapi-ratelimit-headers-10, one item per bucket, so stacked limits
///   (per IP and per user) are all visible and none overwrites another:
///
///   ```text
///   RateLimit-Policy: "default-ip";q=500;w=60, "default-user";q=10000;w=3600
///   RateLimit: "default-ip";r=499;t=60, "default-user";r=9999;t=3600
///   ```
///
///   The item is the bucket's name with `:` turned into `-` (other characters outside
///   printable ASCII become `_`; `"` and `\` are escaped), `q` the quota count, `w` the
///   window in seconds, `r` what is left and `t` a number of seconds. Draft 10 defines
///   `t` as the time until more quota is made available. On a bucket that refused the
///   request it is that: until the request would be admitted (what `Retry-After` says for
///   it). On a bucket that admitted it, `t` is the time until the bucket is full again:
///   for a fixed window that is when more comes back (its window's end), but for a
///   rolling window or a token bucket it is an upper bound, not the draft's value: quota
///   comes back bit by bit before it (a review: a token bucket of 5 a minute, burst 2,
///   said `r=0;t=24` and admitted the next request 12 s later). Draft 10 lets a server
///   vary `t` between responses for sliding windows, and a client that waits `t` is
///   never refused for waiting too little; one that wants the earliest moment retries
///   and reads `Retry-After`. Windows and times are rounded up (a window under a
///   second shows as `w=1`: `5/1ms` is told as `q=5;w=1`, fewer than it admits in a
///   second, as a window of `1500ms` is told as `w=2`). Integers above the 15
///   digits a structured field allows are clamped. A token bucket shows its sustained
///   count and window as the limit (`X-RateLimit-Limit`, `q` and `w`: `100/min burst 20`
///   is `q=100;w=60`, of which at most 20 fit at once); one whose burst is above its
///   count shows its burst as the limit and the time the bucket takes to refill it as
///   `w` (`10/min burst 30`: `q=30;w=180`), so what is left never shows more than the
///   limit ([`Limit::shown_quota`](tollgate_limits::Limit::shown_quota)).
///   Where requests have a cost ([`Policy::cost`](crate::Policy::cost)), `q` and `r` count
///   the bucket's points, as `X-RateLimit-*` does. The draft's default unit is requests,
///   and it has none for points (nor does tollgate send a `qu` it does not define): a
///   client that reads `r=2` as two requests may find that one costs more. For an API
///   priced in points, tell clients the costs, or send `X-RateLimit-*` alone.
/// - **`Retry-After`**: on refused requests only, whole seconds rounded up and never 0;
///   absent when waiting cannot help (a request that costs more than the bucket holds).
///   It is written by every style, [`HeaderStyle::none`] included, since it is part of
///   what a 429 means; [`HeaderStyle::without_retry_after`] drops it.
///
/// The default is `X-RateLimit-*` with Unix seconds, plus the IETF fields.
///
/// ```
/// use tollgate::{HeaderStyle, ResetFormat};
///
/// let as_date = HeaderStyle::x_ratelimit(ResetFormat::HttpDate);
/// let in_millis = HeaderStyle::x_ratelimit(ResetFormat::UnixMillis);
/// let both = HeaderStyle::x_ratelimit(ResetFormat::UnixSeconds).with_ietf();
/// assert_eq!(both, HeaderStyle::default());
/// let only_ietf = HeaderStyle::ietf();
/// let silent = HeaderStyle::none().without_retry_after();
/// # let _ = (as_date, in_millis, only_ietf, silent);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HeaderStyle {
    x_ratelimit: Option<ResetFormat>,
    ietf: bool,
    retry_after: bool,
    reset_at_retry: bool,
}

impl Default for HeaderStyle {
    fn default() -> Self {
        Self::x_ratelimit(ResetFormat::UnixSeconds).with_ietf()
    }
}

impl HeaderStyle {
    /// `X-RateLimit-Limit`, `-Remaining` and `-Reset` (in `reset` format), and
    /// `Retry-After` on refusals.
    pub const fn x_ratelimit(reset: ResetFormat) -> Self {
        Self {
            x_ratelimit: Some(reset),
            ietf: false,
            retry_after: true,
            reset_at_retry: false,
        }
    }

    /// The IETF `RateLimit-Policy` and `RateLimit` fields, and `Retry-After` on refusals.
    pub const fn ietf() -> Self {
        Self {
            x_ratelimit: None,
            ietf: true,
            retry_after: true,
            reset_at_retry: false,
        }
    }

    /// No rate-limit headers; only `Retry-After` on refusals.
    pub const fn none() -> Self {
        Self {
            x_ratelimit: None,
            ietf: false,
            retry_after: true,
            reset_at_retry: false,
        }
    }

    /// Adds (or changes the reset format of) the `X-RateLimit-*` headers.
    pub const fn with_x_ratelimit(mut self, reset: ResetFormat) -> Self {
        self.x_ratelimit = Some(reset);
        self
    }

    /// Adds the IETF `RateLimit-Policy` and `RateLimit` fields.
    pub const fn with_ietf(mut self) -> Self {
        self.ietf = true;
        self
    }

    /// Leaves `Retry-After` out of refusals too.
    pub const fn without_retry_after(mut self) -> Self {
        self.retry_after = false;
        self
    }

    /// On a refused request, `X-RateLimit-Reset` says when it can be retried (the time
    /// `Retry-After` names), not when the bucket is full again: for APIs that tell clients
    /// to read either to know when they can restart. The two differ for a sliding window or
    /// a token bucket, where enough comes back before all of it; for a fixed window they
    /// are the same. Admitted requests are unchanged, and so is a refusal that waiting
    /// cannot help.
    ///
    /// ```
    /// use tollgate::{HeaderStyle, ResetFormat};
    ///
    /// let style = HeaderStyle::x_ratelimit(ResetFormat::HttpDate).with_reset_at_retry();
    /// assert!(style.resets_at_retry());
    /// assert!(!HeaderStyle::default().resets_at_retry());
    /// ```
    pub const fn with_reset_at_retry(mut self) -> Self {
        self.reset_at_retry = true;
        self
    }

    /// Whether `X-RateLimit-Reset` on a refusal says when it can be retried
    /// ([`HeaderStyle::with_reset_at_retry`]).
    pub const fn resets_at_retry(&self) -> bool {
        self.reset_at_retry
    }

    /// The reset format of the `X-RateLimit-*` headers, if they are written.
    pub const fn x_ratelimit_format(&self) -> Option<ResetFormat> {
        self.x_ratelimit
    }

    /// Whether the IETF fields are written.
    pub const fn writes_ietf(&self) -> bool {
        self.ietf
    }

    /// Whether `Retry-After` is written on refusals (unless
    /// [`HeaderStyle::without_retry_after`]).
    pub const fn writes_retry_after(&self) -> bool {
        self.retry_after
    }

    /// Writes this style's headers for `info` into `headers`, replacing any of the same
    /// name. Writes nothing if `info` has no buckets.
    ///
    /// ```
    /// use std::time::Duration;
    /// use http::{HeaderMap, Method};
    /// use tollgate::{HeaderStyle, RateLimitOutcome, ResetFormat};
    /// use tollgate::{BucketState, Decision, Quota, Timestamp};
    ///
    /// let decision = Decision {
    ///     allowed: true,
    ///     now: Timestamp::from_micros(1_717_200_000_000_000),
    ///     buckets: vec![BucketState {
    ///         allowed: true,
    ///         limit: 60,
    ///         remaining: 59,
    ///         reset_after: Duration::from_secs(60),
    ///         retry_after: None,
    ///         refusal: None,
    ///     }],
    /// };
    /// let info = RateLimitOutcome::from_decision(
    ///     "campaigns", &decision, [("campaigns:key", Quota::per_minute(60))], Method::GET, "/v1/campaigns",
    /// );
    /// let mut headers = HeaderMap::new();
    /// HeaderStyle::x_ratelimit(ResetFormat::UnixMillis).write(&info, &mut headers);
    /// assert_eq!(headers["x-ratelimit-limit"], "60");
    /// assert_eq!(headers["x-ratelimit-remaining"], "59");
    /// assert_eq!(headers["x-ratelimit-reset"], "1717200060000");
    /// assert!(!headers.contains_key("retry-after"));
    /// ```
    pub fn write(&self, info: &RateLimitOutcome, headers: &mut HeaderMap) {
        let names: SmallVec<[String; 4]> =
            info.buckets.iter().map(|b| sf::string(&b.name)).collect();
        let items: SmallVec<[Shown<'_>; 4]> = info
            .buckets
            .iter()
            .zip(&names)
            .map(|(b, name)| Shown {
                sf_name: name,
                quota: b.quota,
                policy_item: None,
                limit_value: None,
                state: &b.state,
            })
            .collect();
        let view = ShownResponse {
            now: info.now,
            allowed: info.allowed,
            most_restrictive: info.most_restrictive,
            buckets: &items,
            policy: None,
        };
        self.emit(&view, |field, value| {
            headers.insert(field.name(), value);
        });
    }

    /// Whether this style writes any field on a response that was `allowed` (or refused):
    /// [`HeaderStyle::emit`] writes nothing otherwise.
    pub(crate) const fn writes_any(&self, allowed: bool) -> bool {
        self.x_ratelimit.is_some() || self.ietf || (self.retry_after && !allowed)
    }

    /// Hands this style's headers for `view` to `out`, one at a time: the one code path
    /// every rate-limit header goes through (admitted, refused, direct use).
    pub(crate) fn emit(&self, view: &ShownResponse<'_>, mut out: impl FnMut(Field, HeaderValue)) {
        let Some(most) = view.buckets.get(view.most_restrictive) else {
            return;
        };
        // The values that vary with every request (a remaining count past the static
        // table, the `RateLimit` list) are written into one buffer: one allocation for all
        // of them, each field a slice of it.
        let remaining = most.state.remaining;
        let remaining_len =
            (self.x_ratelimit.is_some() && remaining >= SMALL).then(|| digits(remaining));
        let current_len = if self.ietf {
            current_len(view.buckets)
        } else {
            0
        };
        let mut varying = text(remaining_len.unwrap_or(0) + current_len, |out| {
            if remaining_len.is_some() {
                out.number(remaining);
            }
            if self.ietf {
                write_current(view.buckets, out);
            }
        });
        if let Some(format) = self.x_ratelimit {
            let limit = match most.limit_value {
                Some(value) if most.quota.count() == most.state.limit => value.clone(),
                _ => number(most.state.limit),
            };
            out(Field::Limit, limit);
            let remaining = match remaining_len {
                Some(len) => shared_value(varying.split_to(len)),
                None => number(remaining),
            };
            out(Field::Remaining, remaining);
            let reset_after = if self.reset_at_retry {
                shown_reset(most.state)
            } else {
                most.state.reset_after
            };
            let at = view.now.saturating_add(reset_after);
            let reset = match format {
                ResetFormat::UnixSeconds => cached(0, at.as_unix_secs_ceil(), number),
                ResetFormat::UnixMillis => cached(1, at.as_unix_millis_ceil(), number),
                ResetFormat::Seconds => number(ceil_secs(reset_after)),
                ResetFormat::HttpDate => cached(2, at.as_unix_secs_ceil(), |secs| {
                    ascii_value(&http_date(secs))
                }),
            };
            out(Field::Reset, reset);
        }
        if self.ietf {
            let policy = view.policy.cloned().unwrap_or_else(|| {
                let mut text = String::new();
                for (i, b) in view.buckets.iter().enumerate() {
                    if i > 0 {
                        text.push_str(", ");
                    }
                    match b.policy_item {
                        Some(item) => text.push_str(item),
                        None => text.push_str(&policy_item(b.sf_name, b.quota)),
                    }
                }
                ascii_value(&text)
            });
            out(Field::Policy, policy);
            out(Field::Current, shared_value(varying));
        }
        if self.retry_after && !view.allowed {
            if let Some(wait) = most.state.retry_after {
                out(Field::RetryAfter, number(retry_secs(wait)));
            }
        }
    }
}

/// Room for the varying values of one response ([`HeaderStyle::emit`]) in the allocation
/// that holds them: a remaining count and the `RateLimit` items of three buckets with names
/// of twenty characters and counts of a few digits (`"<name>";r=1000;t=60`, 34 bytes each)
/// take about 110 bytes. Longer texts take a buffer of their own.
const TEXT_INLINE: usize = 128;

/// The varying values of one response, of up to [`TEXT_INLINE`] bytes.
struct Inline {
    len: usize,
    bytes: [u8; TEXT_INLINE],
}

impl AsRef<[u8]> for Inline {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The `len` bytes `write` writes, in one allocation (none if `len` is 0).
fn text(len: usize, write: impl FnOnce(&mut Cursor<'_>)) -> Bytes {
    if len == 0 {
        return Bytes::new();
    }
    if len <= TEXT_INLINE {
        let mut inline = Inline {
            len,
            bytes: [0; TEXT_INLINE],
        };
        write(&mut Cursor::new(&mut inline.bytes[..len]));
        return Bytes::from_owner(inline);
    }
    let mut bytes = vec![0; len];
    write(&mut Cursor::new(&mut bytes));
    Bytes::from(bytes)
}

/// Writes into a buffer of the length worked out first.
struct Cursor<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(out: &'a mut [u8]) -> Self {
        Self { out, at: 0 }
    }

    fn push(&mut self, bytes: &[u8]) {
        let end = self.at + bytes.len();
        // The length was worked out from the same numbers: past it nothing is written (the
        // value then holds a zero byte, and an empty one is written instead), rather than a
        // panic on a request.
        debug_assert!(
            end <= self.out.len(),
            "a header value longer than worked out"
        );
        if let Some(to) = self.out.get_mut(self.at..end) {
            to.copy_from_slice(bytes);
            self.at = end;
        }
    }

    fn number(&mut self, n: u64) {
        self.push(itoa::Buffer::new().format(n).as_bytes());
    }
}

/// The two numbers of a bucket's `RateLimit` item: what is left, and the seconds `t`.
fn current_numbers(b: &Shown<'_>) -> (u64, u64) {
    (
        sf::clamp(b.state.remaining),
        sf::clamp(ceil_secs(shown_reset(b.state))),
    )
}

/// The length of the `RateLimit` field's value ([`write_current`]).
#[inline]
fn current_len(buckets: &[Shown<'_>]) -> usize {
    buckets
        .iter()
        .map(|b| {
            let (r, t) = current_numbers(b);
            b.sf_name.len() + ";r=".len() + digits(r) + ";t=".len() + digits(t)
        })
        .sum::<usize>()
        + ", ".len() * buckets.len().saturating_sub(1)
}

/// Writes the `RateLimit` field's value: `"<name>";r=<remaining>;t=<seconds>` per bucket.
fn write_current(buckets: &[Shown<'_>], out: &mut Cursor<'_>) {
    for (i, b) in buckets.iter().enumerate() {
        if i > 0 {
            out.push(b", ");
        }
        let (r, t) = current_numbers(b);
        out.push(b.sf_name.as_bytes());
        out.push(b";r=");
        out.number(r);
        out.push(b";t=");
        out.number(t);
    }
}

/// How many decimal digits `n` has.
///
/// From its bit length: `bits * 1233 >> 12` (1233 / 4096 is just under log10 2) is the
/// digit count of the smallest number of that bit length, or one less; one comparison with
/// a power of ten settles it (a few instructions, where `ilog10` takes a few dozen). `n | 1`
/// has the digits of `n` (every power of ten past 1 is even) and counts 0 as one digit.
fn digits(n: u64) -> usize {
    let n = n | 1;
    let fewest = (((u64::BITS - n.leading_zeros()) * 1233) >> 12) as usize;
    fewest + usize::from(POWERS_OF_TEN.get(fewest).is_some_and(|&p| n >= p))
}

/// 10^0 to 10^19, every power of ten a `u64` holds.
const POWERS_OF_TEN: [u64; 20] = {
    let mut powers = [1u64; 20];
    let mut i = 1;
    while i < 20 {
        powers[i] = powers[i - 1] * 10;
        i += 1;
    }
    powers
};

/// A header value of text [`HeaderStyle::emit`] wrote (printable ASCII only, by
/// construction), without a copy.
fn shared_value(text: Bytes) -> HeaderValue {
    HeaderValue::from_maybe_shared(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// One bucket a response describes.
pub(crate) struct Shown<'a> {
    /// The bucket's name as a structured-field string (`"default-ip"`).
    pub(crate) sf_name: &'a str,
    pub(crate) quota: Quota,
    /// Its `RateLimit-Policy` item, if made already.
    pub(crate) policy_item: Option<&'a str>,
    /// Its quota's count as a header value, if made already.
    pub(crate) limit_value: Option<&'a HeaderValue>,
    pub(crate) state: &'a BucketState,
}

/// What the rate-limit headers of one response are made of.
pub(crate) struct ShownResponse<'a> {
    pub(crate) now: Timestamp,
    pub(crate) allowed: bool,
    /// The index in `buckets` of the bucket `X-RateLimit-*` describe.
    pub(crate) most_restrictive: usize,
    pub(crate) buckets: &'a [Shown<'a>],
    /// The `RateLimit-Policy` value, if made already.
    pub(crate) policy: Option<&'a HeaderValue>,
}

/// A header value from text this module built (printable ASCII only, by construction).
fn ascii_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The decimal digits of every number below [`SMALL`], one after the other, made once.
static DIGITS: OnceLock<&'static str> = OnceLock::new();

/// Numbers below this come from [`DIGITS`] as static header values (no allocation).
const SMALL: u64 = 10_000;

/// Where number `n` (below [`SMALL`]) starts in [`DIGITS`], and its length.
fn small_span(n: u64) -> (usize, usize) {
    let n = n as usize;
    match n {
        0..=9 => (n, 1),
        10..=99 => (10 + (n - 10) * 2, 2),
        100..=999 => (190 + (n - 100) * 3, 3),
        _ => (2_890 + (n - 1_000) * 4, 4),
    }
}

/// `n` as a header value; small numbers (remaining counts, limits, waits) without
/// allocating.
pub(crate) fn number(n: u64) -> HeaderValue {
    if n < SMALL {
        let digits = DIGITS.get_or_init(|| {
            let mut all = String::with_capacity(38_890);
            let mut buf = itoa::Buffer::new();
            for i in 0..SMALL {
                all.push_str(buf.format(i));
            }
            // One string per process, kept for its life: the header values borrow it.
            Box::leak(all.into_boxed_str())
        });
        let (at, len) = small_span(n);
        return HeaderValue::from_static(&digits[at..at + len]);
    }
    let mut buf = itoa::Buffer::new();
    HeaderValue::from_str(buf.format(n)).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

thread_local! {
    /// The last reset value made on this thread, per format: every response in the same
    /// second (or millisecond) shares it instead of formatting it again.
    static LAST_RESET: RefCell<[(u64, Option<HeaderValue>); 3]> =
        const { RefCell::new([(0, None), (0, None), (0, None)]) };
}

/// `make(key)`, or the value made last on this thread for the same `slot` and `key`.
fn cached(slot: usize, key: u64, make: impl FnOnce(u64) -> HeaderValue) -> HeaderValue {
    LAST_RESET.with(|cache| {
        let mut cache = cache.borrow_mut();
        match &cache[slot] {
            (k, Some(value)) if *k == key => value.clone(),
            _ => {
                let value = make(key);
                cache[slot] = (key, Some(value.clone()));
                value
            }
        }
    })
}

/// An IMF-fixdate (RFC 9110 §5.6.7) for `secs` after the Unix epoch, clamped to the year
/// 9999 (the last an HTTP date can show): `Sat, 01 Jun 2024 00:01:00 GMT`.
fn http_date(secs: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.min(HTTP_DATE_MAX_SECS));
    httpdate::fmt_http_date(at)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::Method;
    use tollgate_limits::{Decision, Quota, Timestamp};

    use super::super::info::tests::{never_fits, single, state};
    use super::*;

    /// 2024-06-01 00:00:00 UTC.
    const JUNE_1: u64 = 1_717_200_000_000_000;

    fn written(style: &HeaderStyle, info: &RateLimitOutcome) -> Vec<(String, String)> {
        let mut headers = HeaderMap::new();
        style.write(info, &mut headers);
        let mut all: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        all.sort();
        all
    }

    fn map(fields: &[(&str, &str)]) -> HeaderMap {
        fields
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    /// Every line of field `name` in `headers`, in order.
    fn lines(headers: &HeaderMap, name: HeaderName) -> Vec<&HeaderValue> {
        headers.get_all(name).iter().collect()
    }

    #[test]
    fn merging_keeps_every_bucket_and_the_tighter_one_in_x_ratelimit() {
        let ours = map(&[
            ("x-ratelimit-limit", "5"),
            ("x-ratelimit-remaining", "4"),
            ("x-ratelimit-reset", "60"),
            ("ratelimit-policy", "\"ip\";q=5;w=60, \"user\";q=9;w=60"),
            ("ratelimit", "\"ip\";r=4;t=60, \"user\";r=8;t=60"),
        ]);
        // Theirs has less remaining, and names one of our buckets already.
        let mut theirs = map(&[
            ("x-ratelimit-limit", "3"),
            ("x-ratelimit-remaining", "1"),
            ("x-ratelimit-reset", "900"),
            ("ratelimit-policy", "\"auth\";q=3;w=900, \"user\";q=9;w=60"),
            ("ratelimit", "\"auth\";r=1;t=900, \"user\";r=8;t=60"),
            ("retry-after", "7"),
        ]);
        merge_rate_limit_headers(&mut theirs, &ours);
        let expected = map(&[
            ("x-ratelimit-limit", "3"),
            ("x-ratelimit-remaining", "1"),
            ("x-ratelimit-reset", "900"),
            (
                "ratelimit-policy",
                "\"auth\";q=3;w=900, \"user\";q=9;w=60, \"ip\";q=5;w=60",
            ),
            (
                "ratelimit",
                "\"auth\";r=1;t=900, \"user\";r=8;t=60, \"ip\";r=4;t=60",
            ),
            ("retry-after", "7"),
        ]);
        assert_eq!(theirs, expected);
        // Ours has less remaining: all three of ours, none of theirs left behind.
        let mut theirs = map(&[("x-ratelimit-remaining", "9"), ("x-ratelimit-reset", "1")]);
        merge_rate_limit_headers(&mut theirs, &ours);
        assert_eq!(
            (
                &theirs["x-ratelimit-limit"],
                &theirs["x-ratelimit-remaining"],
                &theirs["x-ratelimit-reset"]
            ),
            (
                &HeaderValue::from_static("5"),
                &HeaderValue::from_static("4"),
                &HeaderValue::from_static("60")
            )
        );
        // Their list in two lines: both kept, as one.
        let mut theirs = HeaderMap::new();
        theirs.append(RATELIMIT, HeaderValue::from_static("\"a\";r=1;t=10"));
        theirs.append(RATELIMIT, HeaderValue::from_static("\"b\";r=2;t=10"));
        merge_rate_limit_headers(&mut theirs, &ours);
        assert_eq!(
            lines(&theirs, RATELIMIT),
            ["\"a\";r=1;t=10, \"b\";r=2;t=10, \"ip\";r=4;t=60, \"user\";r=8;t=60"]
        );
        // A bucket of the same name in both: the lists keep theirs, and `X-RateLimit-*`
        // show the tighter bucket (ours here).
        let mut theirs = map(&[
            ("x-ratelimit-limit", "9"),
            ("x-ratelimit-remaining", "9"),
            ("ratelimit", "\"ip\";r=9;t=60"),
        ]);
        merge_rate_limit_headers(&mut theirs, &ours);
        assert_eq!(theirs["x-ratelimit-remaining"], "4");
        assert_eq!(theirs["ratelimit"], "\"ip\";r=9;t=60, \"user\";r=8;t=60");
        // Our list in two lines: both taken.
        let mut ours_in_lines = HeaderMap::new();
        ours_in_lines.append(RATELIMIT, HeaderValue::from_static("\"c\";r=3;t=10"));
        ours_in_lines.append(RATELIMIT, HeaderValue::from_static("\"d\";r=4;t=10"));
        let mut theirs = map(&[("ratelimit", "\"a\";r=1;t=10")]);
        merge_rate_limit_headers(&mut theirs, &ours_in_lines);
        assert_eq!(
            theirs["ratelimit"],
            "\"a\";r=1;t=10, \"c\";r=3;t=10, \"d\";r=4;t=10"
        );
        // Unreadable remaining: theirs stays.
        let mut theirs = map(&[("x-ratelimit-remaining", "lots")]);
        merge_rate_limit_headers(&mut theirs, &ours);
        assert_eq!(theirs["x-ratelimit-remaining"], "lots");
        assert!(!theirs.contains_key("x-ratelimit-limit"));
        // A limit or reset without what remains describes no bucket: not added, to a
        // response with a few fields (appended to) or with many (merged into).
        let few = map(&[("content-type", "text/plain")]);
        let many: Vec<(String, String)> = (0..12)
            .map(|i| (format!("x-other-{i}"), i.to_string()))
            .collect();
        let many = map(&many
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>());
        for lone in [("x-ratelimit-limit", "10"), ("x-ratelimit-reset", "60")] {
            for response in [&few, &many] {
                let mut theirs = response.clone();
                merge_rate_limit_headers(&mut theirs, &map(&[lone]));
                assert_eq!(&theirs, response, "{lone:?}");
            }
        }
    }

    /// Into a map without any field, or with a content type alone (merged into, or made at
    /// once by `Fields::fill`), the fields come out as appending each in turn after the
    /// content type puts them, for every set of them (a limit or a reset without what
    /// remains left out).
    #[test]
    fn merging_into_an_empty_map_appends_in_order() {
        let values = ["3", "10", "60", "\"p\";q=10;w=60", "\"p\";r=3;t=60", "7"];
        let text = HeaderValue::from_static("text/plain");
        let listed = |headers: &HeaderMap| -> Vec<(String, String)> {
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
                .collect()
        };
        for set in 0..64usize {
            for (start, made_at_once) in [(None, false), (Some(&text), false), (Some(&text), true)]
            {
                let mut fields = Fields::default();
                let mut expected = HeaderMap::new();
                if let Some(content_type) = start {
                    expected.append(CONTENT_TYPE, content_type.clone());
                }
                for (i, (name, value)) in APPEND_ORDER.into_iter().zip(values).enumerate() {
                    if set & (1 << i) == 0 {
                        continue;
                    }
                    let field = Field::ALL.into_iter().find(|f| f.name() == name).unwrap();
                    fields.set(field, HeaderValue::from_static(value));
                    if set & 1 != 0 || !matches!(i, 1 | 2) {
                        expected.append(name, HeaderValue::from_static(value));
                    }
                }
                let mut headers = HeaderMap::new();
                if made_at_once {
                    fields.fill(&mut headers, start.cloned());
                } else {
                    if let Some(content_type) = start {
                        headers.insert(CONTENT_TYPE, content_type.clone());
                    }
                    fields.merge_into(&mut headers);
                }
                assert_eq!(
                    listed(&headers),
                    listed(&expected),
                    "{set:#b} {start:?} {made_at_once}"
                );
            }
        }
    }

    #[test]
    fn merging_takes_the_first_line_of_a_repeated_one_bucket_field() {
        // `X-RateLimit-*` and `Retry-After` describe one bucket: of several lines, the
        // first; only the IETF lists are joined.
        let mut charged = HeaderMap::new();
        for (name, value) in [
            (X_RATELIMIT_REMAINING, "3"),
            (X_RATELIMIT_REMAINING, "7"),
            (RETRY_AFTER, "5"),
            (RETRY_AFTER, "9"),
        ] {
            charged.append(name, HeaderValue::from_static(value));
        }
        for response in [HeaderMap::new(), map(&[("ratelimit", "\"a\";r=1;t=10")])] {
            let mut response = response;
            merge_rate_limit_headers(&mut response, &charged);
            assert_eq!(lines(&response, X_RATELIMIT_REMAINING), ["3"]);
            assert_eq!(lines(&response, RETRY_AFTER), ["5"]);
        }
    }

    #[test]
    fn merging_a_bucket_with_as_much_remaining_keeps_theirs() {
        let ours = map(&[
            ("x-ratelimit-limit", "5"),
            ("x-ratelimit-remaining", "4"),
            ("x-ratelimit-reset", "60"),
        ]);
        let mut theirs = map(&[
            ("x-ratelimit-limit", "9"),
            ("x-ratelimit-remaining", "4"),
            ("x-ratelimit-reset", "900"),
        ]);
        let before = theirs.clone();
        merge_rate_limit_headers(&mut theirs, &ours);
        assert_eq!(theirs, before);
    }

    #[test]
    fn merging_joins_their_list_in_lines_even_when_it_adds_no_item() {
        let ours = map(&[("ratelimit", "\"ip\";r=4;t=60")]);
        let mut theirs = HeaderMap::new();
        theirs.append(RATELIMIT, HeaderValue::from_static("\"a\";r=1;t=10"));
        theirs.append(RATELIMIT, HeaderValue::from_static("\"ip\";r=4;t=60"));
        merge_rate_limit_headers(&mut theirs, &ours);
        assert_eq!(
            lines(&theirs, RATELIMIT),
            ["\"a\";r=1;t=10, \"ip\";r=4;t=60"]
        );
    }

    #[test]
    fn an_empty_bucket_name_is_an_empty_string_item() {
        let info = single(
            "",
            Quota::per_minute(10),
            Timestamp::from_micros(0),
            state(10, 9, Duration::from_secs(60), None),
            "/",
        );
        let mut headers = HeaderMap::new();
        HeaderStyle::ietf().write(&info, &mut headers);
        assert_eq!(headers[RATELIMIT], r#""";r=9;t=60"#);
        assert_eq!(headers[RATELIMIT_POLICY], r#""";q=10;w=60"#);
    }

    #[test]
    fn a_clamped_wait_beside_nothing_remaining_is_written_whole() {
        // The longest `t` beside the shortest `r` and a one-letter name.
        let info = single(
            "b",
            Quota::per_minute(10),
            Timestamp::from_micros(0),
            state(10, 0, Duration::MAX, Some(Duration::MAX)),
            "/",
        );
        let mut headers = HeaderMap::new();
        HeaderStyle::ietf().write(&info, &mut headers);
        assert_eq!(headers[RATELIMIT], r#""b";r=0;t=999999999999999"#);
    }

    #[test]
    fn style_getters_say_what_each_style_writes() {
        let x = HeaderStyle::x_ratelimit(ResetFormat::HttpDate);
        assert!(!x.writes_ietf());
        assert!(!HeaderStyle::none().writes_ietf());
        assert!(HeaderStyle::ietf().writes_ietf());
        assert!(!x.resets_at_retry());
        assert!(!HeaderStyle::default().resets_at_retry());
        assert!(x.with_reset_at_retry().resets_at_retry());
    }

    #[test]
    fn digits_counts_what_itoa_writes() {
        let mut buf = itoa::Buffer::new();
        for n in [0, 1, 9, 10, 99, 100, 12_345, 999_999_999_999_999, u64::MAX] {
            assert_eq!(digits(n), buf.format(n).len(), "{n}");
        }
    }

    #[test]
    fn digits_counts_what_itoa_writes_around_every_power_of_ten() {
        let mut buf = itoa::Buffer::new();
        let mut power = 1u64;
        loop {
            for n in [power - 1, power, power + 1, power.saturating_mul(5)] {
                assert_eq!(digits(n), buf.format(n).len(), "{n}");
            }
            match power.checked_mul(10) {
                Some(next) => power = next,
                None => break,
            }
        }
        for n in (0..100_000).chain([u64::MAX - 1, u64::MAX]) {
            assert_eq!(digits(n), buf.format(n).len(), "{n}");
        }
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut all: Vec<_> = expected
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        all.sort();
        all
    }

    #[test]
    fn reset_as_http_date() {
        // 100 points per minute; a 5-point request with 3 left is refused
        // for 4.2 s; the window is full again 59.5 s after 00:00:00.5.
        let mut refused = state(
            100,
            3,
            Duration::from_millis(59_500),
            Some(Duration::from_millis(4_200)),
        );
        refused.allowed = false;
        let info = single(
            "points:org",
            Quota::per_minute(100),
            Timestamp::from_micros(JUNE_1 + 500_000),
            refused,
            "/v1/things",
        );
        assert_eq!(
            written(&HeaderStyle::x_ratelimit(ResetFormat::HttpDate), &info),
            pairs(&[
                ("retry-after", "5"),
                ("x-ratelimit-limit", "100"),
                ("x-ratelimit-remaining", "3"),
                ("x-ratelimit-reset", "Sat, 01 Jun 2024 00:01:00 GMT"),
            ])
        );
    }

    #[test]
    fn reset_in_unix_millis_on_admitted_and_refused() {
        let now = Timestamp::from_micros(JUNE_1 + 123_456);
        let style = HeaderStyle::x_ratelimit(ResetFormat::UnixMillis);
        let admitted = single(
            "campaigns:key",
            Quota::per_minute(60),
            now,
            state(60, 59, Duration::from_millis(59_500), None),
            "/v1/campaigns",
        );
        // 123.456 ms + 59 500 ms = 59 623.456 ms: rounded up.
        assert_eq!(
            written(&style, &admitted),
            pairs(&[
                ("x-ratelimit-limit", "60"),
                ("x-ratelimit-remaining", "59"),
                ("x-ratelimit-reset", "1717200059624"),
            ])
        );
        let refused = single(
            "campaigns:key",
            Quota::per_minute(60),
            now,
            state(
                60,
                0,
                Duration::from_secs(60),
                Some(Duration::from_millis(999)),
            ),
            "/v1/campaigns",
        );
        assert_eq!(
            written(&style, &refused),
            pairs(&[
                ("retry-after", "1"),
                ("x-ratelimit-limit", "60"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1717200060124"),
            ])
        );
    }

    #[test]
    fn reset_in_unix_seconds_on_admitted_and_refused() {
        let style = HeaderStyle::x_ratelimit(ResetFormat::UnixSeconds);
        // 16 requests 48.3 s into the minute: the window resets at 00:01:00.
        let admitted = single(
            "invoices:key",
            Quota::per_minute(100),
            Timestamp::from_micros(JUNE_1 + 48_300_000),
            state(100, 84, Duration::from_millis(11_700), None),
            "/v1/invoices",
        );
        assert_eq!(
            written(&style, &admitted),
            pairs(&[
                ("x-ratelimit-limit", "100"),
                ("x-ratelimit-remaining", "84"),
                ("x-ratelimit-reset", "1717200060"),
            ])
        );
        // Retry-After only on a refusal, rounded up from 11.2 s.
        let refused = single(
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
        );
        assert_eq!(
            written(&style, &refused),
            pairs(&[
                ("retry-after", "12"),
                ("x-ratelimit-limit", "100"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1717200060"),
            ])
        );
    }

    #[test]
    fn reset_in_seconds_from_now_rounds_up() {
        let info = single(
            "b",
            Quota::per_minute(10),
            Timestamp::from_micros(JUNE_1),
            state(10, 4, Duration::from_micros(30_000_001), None),
            "/",
        );
        let mut headers = HeaderMap::new();
        HeaderStyle::x_ratelimit(ResetFormat::Seconds).write(&info, &mut headers);
        assert_eq!(headers[X_RATELIMIT_RESET], "31");
    }

    fn stacked(allowed: bool) -> RateLimitOutcome {
        let wait = |d: u64| (!allowed).then(|| Duration::from_secs(d));
        let decision = Decision {
            allowed,
            now: Timestamp::from_micros(JUNE_1),
            buckets: vec![
                state(500, 499, Duration::from_secs(60), None),
                state(10_000, 0, Duration::from_millis(3_599_001), wait(1_800)),
            ],
        };
        RateLimitOutcome::from_decision(
            "default",
            &decision,
            [
                ("default:ip", Quota::per_minute(500)),
                ("default:user", Quota::per_hour(10_000)),
            ],
            Method::GET,
            "/api/things",
        )
    }

    /// The varying values (a remaining count past the static table, the `RateLimit` list)
    /// share one buffer, in the allocation that holds them or, past [`TEXT_INLINE`]
    /// bytes, in one of their own: each field is its own text either way.
    #[test]
    fn varying_values_of_any_length_are_each_their_own() {
        for buckets in [1, 8] {
            let names: Vec<String> = (0..buckets)
                .map(|i| format!("a-rather-long-bucket-name:{i}"))
                .collect();
            let decision = Decision {
                allowed: true,
                now: Timestamp::from_micros(JUNE_1),
                buckets: (0..buckets)
                    .map(|i| state(1_000_000, 123_456 + i, Duration::from_secs(60), None))
                    .collect(),
            };
            let info = RateLimitOutcome::from_decision(
                "default",
                &decision,
                names
                    .iter()
                    .map(|n| (n.as_str(), Quota::per_minute(1_000_000))),
                Method::GET,
                "/",
            );
            let mut headers = HeaderMap::new();
            HeaderStyle::default().write(&info, &mut headers);
            let current: Vec<String> = (0..buckets)
                .map(|i| format!("\"a-rather-long-bucket-name-{i}\";r={};t=60", 123_456 + i))
                .collect();
            let current = current.join(", ");
            assert_eq!(buckets == 8, current.len() > TEXT_INLINE, "{current}");
            assert_eq!(headers[X_RATELIMIT_REMAINING], "123456");
            assert_eq!(headers[RATELIMIT], current.as_str());
        }
    }

    #[test]
    fn ietf_fields_name_every_stacked_bucket() {
        let expected_policy = r#""default-ip";q=500;w=60, "default-user";q=10000;w=3600"#;
        let expected_current = r#""default-ip";r=499;t=60, "default-user";r=0;t=3600"#;
        assert_eq!(
            written(&HeaderStyle::ietf(), &stacked(true)),
            pairs(&[
                ("ratelimit-policy", expected_policy),
                ("ratelimit", expected_current),
            ])
        );
        // Refused by the user bucket: Retry-After from it; X-RateLimit-* describe it too.
        // Its `t` is when more of it is available for the request (draft 10): what
        // Retry-After says, not when it is full again; X-RateLimit-Reset says the latter.
        // With `with_reset_at_retry`, X-RateLimit-Reset is when the request can be retried.
        let refused = |reset| {
            pairs(&[
                ("ratelimit-policy", expected_policy),
                (
                    "ratelimit",
                    r#""default-ip";r=499;t=60, "default-user";r=0;t=1800"#,
                ),
                ("retry-after", "1800"),
                ("x-ratelimit-limit", "10000"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", reset),
            ])
        };
        assert_eq!(
            written(&HeaderStyle::default(), &stacked(false)),
            refused("1717203600")
        );
        assert_eq!(
            written(
                &HeaderStyle::default().with_reset_at_retry(),
                &stacked(false)
            ),
            refused("1717201800")
        );
        // Admitted: as it was.
        assert_eq!(
            written(
                &HeaderStyle::default().with_reset_at_retry(),
                &stacked(true)
            ),
            written(&HeaderStyle::default(), &stacked(true))
        );
    }

    #[test]
    fn ietf_names_are_valid_structured_field_strings() {
        let info = single(
            r#"we"ird\name:ü"#,
            Quota::new(3, Duration::from_millis(250)).unwrap(),
            Timestamp::from_micros(0),
            state(3, 2, Duration::from_millis(100), None),
            "/",
        );
        let mut headers = HeaderMap::new();
        HeaderStyle::ietf().write(&info, &mut headers);
        assert_eq!(headers[RATELIMIT_POLICY], r#""we\"ird\\name-_";q=3;w=1"#);
        assert_eq!(headers[RATELIMIT], r#""we\"ird\\name-_";r=2;t=1"#);
    }

    #[test]
    fn styles_choose_what_is_written() {
        let refused = stacked(false);
        let names = |style: &HeaderStyle| -> Vec<String> {
            written(style, &refused)
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(names(&HeaderStyle::none()), ["retry-after"]);
        assert!(names(&HeaderStyle::none().without_retry_after()).is_empty());
        assert_eq!(
            names(&HeaderStyle::ietf().without_retry_after()),
            ["ratelimit", "ratelimit-policy"]
        );
        assert_eq!(
            HeaderStyle::ietf().with_x_ratelimit(ResetFormat::UnixSeconds),
            HeaderStyle::default()
        );
        assert_eq!(
            HeaderStyle::default().x_ratelimit_format(),
            Some(ResetFormat::UnixSeconds)
        );
        assert!(HeaderStyle::default().writes_ietf());
    }

    #[test]
    fn writing_replaces_and_leaves_foreign_headers_alone() {
        let mut headers = HeaderMap::new();
        headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from_static("stale"));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("120"));
        HeaderStyle::default().write(&stacked(true), &mut headers);
        assert_eq!(headers.get_all(X_RATELIMIT_LIMIT).iter().count(), 1);
        // The user bucket has the least left: it is the most restrictive.
        assert_eq!(headers[X_RATELIMIT_LIMIT], "10000");
        // An admitted response keeps a Retry-After its handler set (a 503, say).
        assert_eq!(headers[RETRY_AFTER], "120");
    }

    #[test]
    fn a_request_that_never_fits_gets_no_retry_after() {
        let info = never_fits("p:ip", Method::POST, "/");
        assert_eq!(
            written(&HeaderStyle::x_ratelimit(ResetFormat::UnixSeconds), &info),
            pairs(&[
                ("x-ratelimit-limit", "10"),
                ("x-ratelimit-remaining", "10"),
                ("x-ratelimit-reset", "1717200000"),
            ])
        );
    }

    #[test]
    fn huge_values_do_not_panic_and_stay_valid() {
        let max = tollgate_limits::MAX_COUNT;
        let mut headers = HeaderMap::new();
        for now in [0, u64::MAX] {
            let info = single(
                "b",
                Quota::new(max, tollgate_limits::MAX_PERIOD).unwrap(),
                Timestamp::from_micros(now),
                state(max, max, Duration::MAX, Some(Duration::MAX)),
                "/",
            );
            for format in [
                ResetFormat::UnixSeconds,
                ResetFormat::UnixMillis,
                ResetFormat::Seconds,
                ResetFormat::HttpDate,
            ] {
                HeaderStyle::x_ratelimit(format)
                    .with_ietf()
                    .write(&info, &mut headers);
                assert!(!headers[X_RATELIMIT_RESET].is_empty());
            }
            assert_eq!(headers[RETRY_AFTER], u64::MAX.to_string().as_str());
            assert_eq!(
                headers[RATELIMIT],
                r#""b";r=999999999999999;t=999999999999999"#
            );
            assert_eq!(
                headers[RATELIMIT_POLICY],
                r#""b";q=999999999999999;w=34560000"#
            );
        }
        assert_eq!(headers[X_RATELIMIT_RESET], "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn http_dates_are_imf_fixdates_clamped_to_the_year_9999() {
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(
            http_date(HTTP_DATE_MAX_SECS),
            "Fri, 31 Dec 9999 23:59:59 GMT"
        );
        // Past the year 9999 (where httpdate would panic): the last date there is.
        assert_eq!(
            http_date(HTTP_DATE_MAX_SECS + 1),
            "Fri, 31 Dec 9999 23:59:59 GMT"
        );
        assert_eq!(http_date(u64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
    }
}
