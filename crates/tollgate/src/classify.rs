//! Route classification: which rule of a table a request belongs to.
//!
//! A [`RouteTable`] maps rules (an optional list of methods and a path pattern,
//! see [`RoutePattern`]) to values, and [`RouteTable::classify`] picks the value
//! of the **most specific** rule that matches a request:
//!
//! - segment by segment from the left, a literal segment beats a parameter
//!   (`{id}` or `:id`), and a parameter beats a trailing wildcard (`/*`), so an
//!   exact path beats a parameter, a parameter beats a wildcard and a longer
//!   prefix beats a shorter one;
//! - for the same path, a rule that names the method beats one that does not
//!   (a `GET` rule also covers `HEAD`, as axum's `get` handlers do, unless
//!   another rule names `HEAD`).
//!
//! Two rules that tie (the same path shape with overlapping methods) and a rule
//! that can never be chosen (every request it matches goes to more specific
//! rules) are errors from [`RouteTableBuilder::build`] that name the rules.
//!
//! ```
//! use tollgate::__private::RouteTable;
//! use tollgate::RoutePattern;
//! use http::Method;
//!
//! # fn main() -> Result<(), tollgate::PatternError> {
//! let table = RouteTable::builder()
//!     .route("/*".parse()?, "default")
//!     .route("/api/twilio/*".parse()?, "exempt")
//!     .route("/api/stripe/webhook".parse()?, "exempt")
//!     .route(RoutePattern::parse("POST /api/templates/{id}/generate")?, "generate")
//!     .lenient(|class| *class == "exempt")
//!     .build()?;
//!
//! assert_eq!(table.classify(&Method::POST, "/api/templates/7/generate"), Some(&"generate"));
//! assert_eq!(table.classify(&Method::GET, "/api/templates/7/generate"), Some(&"default"));
//! assert_eq!(table.classify(&Method::POST, "/api/twilio/sms/status"), Some(&"exempt"));
//! // Spelling tricks do not leave a class, and never reach an exempt one.
//! assert_eq!(table.classify(&Method::POST, "/api/templates/7/%67enerate"), Some(&"generate"));
//! assert_eq!(table.classify(&Method::POST, "/api/stripe%2Fwebhook"), Some(&"default"));
//! assert_eq!(table.classify(&Method::POST, "/api/templates/../twilio/x"), Some(&"default"));
//!
//! // Mistakes are errors at build time, naming both rules.
//! let err = RouteTable::builder()
//!     .route("GET /v1/items/{id}".parse()?, 1)
//!     .route("GET,HEAD /v1/items/:item".parse()?, 2)
//!     .build()
//!     .unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "rules `GET /v1/items/{id}` and `GET,HEAD /v1/items/:item` tie: both match `GET /v1/items/x` \
//!      and neither is more specific; remove one or give them different methods"
//! );
//! # Ok(())
//! # }
//! ```
//!
//! # How a raw path is read
//!
//! [`RouteTable::classify`] takes the path exactly as received (percent-encoded).
//! It reads it twice:
//!
//! - **as axum's router does**: split on `/`, byte for byte, no decoding, empty
//!   segments and `.`/`..` kept (`/x/` is not `/x`, `%2F` is not a separator);
//! - **canonically** (RFC 3986 normalisation): percent-encoded unreserved
//!   characters decoded (`%7E` is `~`), other escapes kept (upper-cased hex; `%2F`
//!   stays inside its segment and is never a separator), empty segments (`//`,
//!   trailing `/`) and `.` dropped, `..` resolved.
//!
//! For ordinary paths the two readings agree. When they pick different rules
//! (the path was spelled unusually), the table prefers a rule that is not
//! *lenient* (see [`RouteTableBuilder::lenient`]; the layer marks exempt classes
//! lenient), then no rule; between two lenient rules axum's reading wins. Between
//! two rules that are not lenient, [`RouteTable::classify_all`] answers **both**
//! (the layer charges both classes, so the request spends both budgets) and
//! [`RouteTable::classify`], which gives one answer, the canonical one. So an
//! unusual spelling can move a request into a stricter class, never into an exempt
//! one, and never out of the class of the route that serves it: whatever axum's
//! router, or a path normaliser placed after this classifier, would route the path
//! to, a request charged every class of [`RouteTable::classify_all`] is limited at
//! least as strictly.
//!
//! ```
//! use tollgate::__private::RouteTable;
//! use http::Method;
//!
//! # fn main() -> Result<(), tollgate::PatternError> {
//! let table = RouteTable::builder()
//!     .route("/*".parse()?, "default")
//!     .route("GET /files/temp/*".parse()?, "downloads")
//!     .route("/knowledge/*".parse()?, "knowledge")
//!     .build()?;
//! // axum serves this from `/files/temp/{*file}`; normalised, it is `/knowledge/f`.
//! let path = "/files/temp/../../knowledge/f";
//! let all: Vec<_> = table.classify_all(&Method::GET, path).into_iter().collect();
//! assert_eq!(all, [&"knowledge", &"downloads"]);
//! assert_eq!(table.classify(&Method::GET, path), Some(&"knowledge"));
//! // Ordinary paths have one class.
//! let one: Vec<_> = table.classify_all(&Method::GET, "/files/temp/f").into_iter().collect();
//! assert_eq!(one, [&"downloads"]);
//! # Ok(())
//! # }
//! ```
//!
//! A path longer than [`MAX_PATH_LEN`] bytes or with more than [`MAX_SEGMENTS`]
//! segments is classified as axum routes it, from its first [`MAX_SEGMENTS`]
//! segments (more than any pattern has, so the rules match as they would the whole
//! path), and is never exempt (nor in a lenient class). Its normalised reading is
//! not worked out: only a normaliser behind the limiter would follow it, and it
//! would cost work in proportion to the path.
//!
//! Matching is case-sensitive (as in axum). Query strings are not part of the
//! path.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use http::Method;

/// Paths longer than this many bytes are classified as axum routes them (their
/// normalised reading is not worked out) and never in a lenient class.
pub(crate) const MAX_PATH_LEN: usize = 8 * 1024;

/// Paths with more segments than this are read as [`MAX_PATH_LEN`] says; a
/// reading of a path keeps this many of its segments.
pub(crate) const MAX_SEGMENTS: usize = 64;

/// The most segments a pattern may have.
pub(crate) const MAX_PATTERN_SEGMENTS: usize = 32;

/// A segment that equals no literal of any pattern (a space is never part of a
/// valid pattern): used to build the requests that prove a rule can match.
const FRESH: &str = " ";

/// One segment of a pattern's path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// Matches this exact (canonical) text.
    Literal(String),
    /// Matches any segment: a non-empty one, or an empty one the path goes on
    /// after (as axum's router does; only the raw reading has empty segments).
    Param,
}

/// A rule's pattern: optional methods and a path pattern.
///
/// Accepted forms:
///
/// | pattern | matches |
/// |---|---|
/// | `/api/stripe/webhook` | that path, any method |
/// | `POST /api/templates/{id}/generate` | any single segment for `{id}` (empty only if more follow, as in axum), `POST` only |
/// | `GET,HEAD /v1/campaigns/:id` | `:id` is the same as `{id}` |
/// | `/api/twilio/*` (or `/api/twilio/{*rest}`) | `/api/twilio` and everything below it |
/// | `/*` or `*` | every path (the default rule) |
///
/// Methods are upper case and comma separated. Literal segments are written
/// as they appear in a URI (`%`-escapes allowed; `%7E` and `~` are the same).
/// Parameters and wildcards must be whole segments; a wildcard only at the end.
///
/// # Which rule a request belongs to
///
/// Of the rules of a limiter ([`LimiterBuilder::route`](crate::LimiterBuilder::route)), the
/// **most specific** that matches the request:
///
/// - segment by segment from the left, a literal segment beats a parameter (`{id}` or
///   `:id`), and a parameter beats a trailing wildcard (`/*`), so an exact path beats a
///   parameter, a parameter beats a wildcard and a longer prefix beats a shorter one;
/// - for the same path, a rule that names the method beats one that does not (a `GET`
///   rule also covers `HEAD`, as axum's `get` handlers do, unless another rule names
///   `HEAD`).
///
/// Two rules that tie (the same path shape with overlapping methods: `GET /v1/items/{id}`
/// and `GET,HEAD /v1/items/:item`) and a rule that can never be chosen (every request it
/// matches goes to more specific rules) are errors when the limiter is built, naming the
/// rules. A path is read as received and as normalised (`//`, `.`, `..`, escaped
/// unreserved characters): where the two readings fall under different rules, the request
/// is charged under both, so no spelling escapes the rule of the route that serves it.
#[derive(Clone, Debug)]
pub struct RoutePattern {
    /// `None`: any method. Otherwise sorted and deduplicated.
    methods: Option<Vec<Method>>,
    segments: Vec<Segment>,
    /// A trailing `/*`: the path continues with zero or more segments.
    wildcard: bool,
    /// The text as written, for messages.
    source: String,
}

impl PartialEq for RoutePattern {
    /// Patterns are equal when they match the same requests the same way
    /// (`:id` equals `{id}`, `*` equals `/*`); parameter names are ignored.
    fn eq(&self, other: &Self) -> bool {
        self.methods == other.methods && self.same_path_shape(other)
    }
}

impl Eq for RoutePattern {}

impl fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl FromStr for RoutePattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl RoutePattern {
    /// Paths longer than this many bytes are classified as axum routes them, and never in a
    /// lenient class (an exempt rule's). A path normaliser behind the limiter may send
    /// such a path elsewhere: its normalised reading is only worked out for shorter paths.
    pub const MAX_PATH_LEN: usize = MAX_PATH_LEN;

    /// Paths with more segments than this are never in a lenient class either. It is more
    /// than [`RoutePattern::MAX_PATTERN_SEGMENTS`], so such a path still finds the rule
    /// that serves it: a wildcard's.
    pub const MAX_SEGMENTS: usize = MAX_SEGMENTS;

    /// The most segments a pattern may have.
    pub const MAX_PATTERN_SEGMENTS: usize = MAX_PATTERN_SEGMENTS;

    /// Parses a pattern such as `"POST /api/templates/{id}/generate"`,
    /// `"/api/twilio/*"`, `"GET,HEAD /v1/campaigns/:id"` or `"/*"`.
    pub fn parse(s: &str) -> Result<Self, PatternError> {
        Self::parse_why(s).map_err(|reason| PatternError::Invalid {
            pattern: s.trim().to_owned(),
            reason: reason.to_string(),
        })
    }

    /// [`RoutePattern::parse`], with the typed reason of a failure.
    pub(crate) fn parse_why(s: &str) -> Result<Self, InvalidReason> {
        let source = s.trim();
        if source.is_empty() {
            return Err(InvalidReason::Empty);
        }
        let (methods, path) = if source == "*" || source.starts_with('/') {
            (None, if source == "*" { "/*" } else { source })
        } else {
            // `GET,HEAD /path` (spaces after commas allowed).
            let (methods, path) = source
                .find('/')
                .map(|slash| source.split_at(slash))
                .filter(|(methods, _)| methods.ends_with(char::is_whitespace))
                .ok_or(InvalidReason::MissingPath)?;
            (Some(parse_methods(methods)?), path)
        };
        let (segments, wildcard) = parse_path(path)?;
        Ok(Self {
            methods,
            segments,
            wildcard,
            source: source.to_owned(),
        })
    }

    /// The methods this rule is limited to, or `None` for any method.
    pub fn methods(&self) -> Option<&[Method]> {
        self.methods.as_deref()
    }

    /// Whether the pattern is the default rule: any method, every path (`/*`, `*`,
    /// `/{*rest}`, however it was written).
    pub(crate) fn is_default(&self) -> bool {
        self.methods.is_none() && self.segments.is_empty() && self.wildcard
    }

    /// Whether the pattern ends in a wildcard (`/*`).
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// A path this pattern matches, with `x` for each parameter (and nothing for a
    /// trailing wildcard): `/api/templates/x/generate`.
    pub(crate) fn example_path(&self) -> String {
        let mut path = String::new();
        for segment in &self.segments {
            path.push('/');
            match segment {
                Segment::Literal(text) => path.push_str(text),
                Segment::Param => path.push('x'),
            }
        }
        if path.is_empty() {
            path.push('/');
        }
        path
    }

    /// Whether axum's route template `template` (a `MatchedPath`: `/v1/campaigns/{id}`,
    /// `/files/{*rest}`) is this pattern's path, read as [`RoutePattern::parse`] reads it
    /// (`:id` and `{id}` alike, `*` and `{*rest}` alike). Without allocating: the central
    /// layer asks it for a request of a declared route its layer has not been seen on.
    pub(crate) fn is_route(&self, template: &str) -> bool {
        let Some(rest) = template.strip_prefix('/') else {
            return false;
        };
        // `/` has no segments.
        let mut parts = rest.split('/').filter(|_| !rest.is_empty());
        let mut count = 0;
        while let Some(part) = parts.next() {
            if is_catch_all(part) {
                return self.wildcard && count == self.segments.len() && parts.next().is_none();
            }
            let same = match self.segments.get(count) {
                Some(Segment::Param) => param_name(part).is_some(),
                Some(Segment::Literal(text)) => {
                    param_name(part).is_none() && canonical_segment(part) == text.as_str()
                }
                None => false,
            };
            if !same {
                return false;
            }
            count += 1;
        }
        !self.wildcard && count == self.segments.len()
    }

    fn same_path_shape(&self, other: &Self) -> bool {
        self.wildcard == other.wildcard
            && self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|pair| match pair {
                    (Segment::Literal(a), Segment::Literal(b)) => a == b,
                    (Segment::Param, Segment::Param) => true,
                    _ => false,
                })
    }

    /// How well the method matches: 2 named, 1 `HEAD` through `GET`, 0 any
    /// method; `None` when it does not match.
    fn method_rank(&self, method: &Method) -> Option<u8> {
        match &self.methods {
            None => Some(0),
            Some(list) if list.contains(method) => Some(2),
            Some(list) if *method == Method::HEAD && list.contains(&Method::GET) => Some(1),
            Some(_) => None,
        }
    }

    fn matches_path<S: AsRef<str>>(&self, path: &[S], truncated: bool) -> bool {
        let length_ok = if self.wildcard {
            // As in axum, a wildcard takes nothing or a non-empty rest:
            // `/x/` is neither `/x` nor `/x/{*rest}`.
            let rest = path.get(self.segments.len()..).unwrap_or(&[]);
            self.segments.len() <= path.len()
                && !(rest.len() == 1 && rest[0].as_ref().is_empty() && !truncated)
        } else {
            !truncated && self.segments.len() == path.len()
        };
        length_ok
            && self
                .segments
                .iter()
                .zip(path)
                .enumerate()
                .all(|(i, (pattern, segment))| match pattern {
                    Segment::Literal(text) => text == segment.as_ref(),
                    // As in axum, a parameter takes an empty segment when the path
                    // goes on after it: `/a//b` is `/a/{x}/b`, `/a/` is not `/a/{x}`.
                    Segment::Param => {
                        !segment.as_ref().is_empty() || i + 1 < path.len() || truncated
                    }
                })
    }

    /// Rank of the pattern at path position `i`: literal 3, parameter 2, end 1,
    /// wildcard 0.
    fn rank_at(&self, i: usize) -> u8 {
        match self.segments.get(i) {
            Some(Segment::Literal(_)) => 3,
            Some(Segment::Param) => 2,
            None if i == self.segments.len() && !self.wildcard => 1,
            None => 0,
        }
    }

    /// Compares two patterns that both match one path: `Greater` when `self`
    /// is more specific. Looks at the path only.
    fn cmp_path_specificity(&self, other: &Self) -> Ordering {
        let len = self.segments.len().max(other.segments.len());
        (0..=len)
            .map(|i| self.rank_at(i).cmp(&other.rank_at(i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }

    /// Whether some method matches both rules equally well (a tie).
    fn methods_overlap(&self, other: &Self) -> bool {
        match (&self.methods, &other.methods) {
            (None, None) => true,
            (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
            _ => false,
        }
    }

    /// Whether `self` matches, by path alone, a request of `other`'s shape (a path it
    /// takes, with `x` for each parameter): a broader rule whose requests `other` would
    /// take over. (For the configuration file's reloads.)
    #[cfg(any(feature = "yaml", feature = "toml"))]
    pub(crate) fn takes_path_of(&self, other: &Self) -> bool {
        let example = other.example_request(None);
        let segments: Vec<&str> = example.split('/').skip(1).collect();
        self.matches_path(&segments, false)
    }

    /// A request that both `self` and a same-shaped rule match, for messages.
    fn example_request(&self, method: Option<&Method>) -> String {
        let mut out = String::new();
        if let Some(method) = method {
            out.push_str(method.as_str());
            out.push(' ');
        }
        for segment in &self.segments {
            out.push('/');
            out.push_str(match segment {
                Segment::Literal(text) => text,
                Segment::Param => "x",
            });
        }
        if self.wildcard {
            out.push_str("/any");
        } else if self.segments.is_empty() {
            out.push('/');
        }
        out
    }
}

fn parse_methods(list: &str) -> Result<Vec<Method>, InvalidReason> {
    let mut methods = Vec::new();
    for name in list.split(',').map(str::trim) {
        if name.is_empty() {
            return Err(InvalidReason::EmptyMethod);
        }
        if name.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(InvalidReason::LowercaseMethod(name.to_owned()));
        }
        // A legal token, but no client sends it: meant as "any method" (leave the methods
        // out for that).
        if name.contains('*') {
            return Err(InvalidReason::BadMethod(name.to_owned()));
        }
        // Also a legal token, but meant as a list (`GET|POST`): one method no client sends.
        if name.contains(['|', '+', '&']) {
            return Err(InvalidReason::MethodList(name.to_owned()));
        }
        let method = Method::from_bytes(name.as_bytes())
            .map_err(|_| InvalidReason::BadMethod(name.to_owned()))?;
        // An extension method one slip away from a standard one (`GTE`, `DELET`): no client
        // sends it, so the rule would silently never match.
        if let Some(meant) = near_standard_method(name) {
            return Err(InvalidReason::MisspeltMethod {
                given: name.to_owned(),
                meant,
            });
        }
        if !methods.contains(&method) {
            methods.push(method);
        }
    }
    methods.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Ok(methods)
}

/// The methods of HTTP itself (RFC 9110, and `PATCH`): per-route registrations are
/// remembered for these only, and a pattern's method one slip from one of them is taken
/// for a misspelling.
pub(crate) static STANDARD_METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
    Method::CONNECT,
    Method::TRACE,
];

/// The standard method `name` is one slip away from (a letter left out, added, changed,
/// or two neighbours swapped), unless `name` is itself standard or a method in use
/// elsewhere (IANA's registry, and a few common ones outside it: `TRACK` is `TRACE` in
/// IIS, `BATCH`, `PURGE`).
fn near_standard_method(name: &str) -> Option<&'static str> {
    const IN_USE: [&str; 34] = [
        "ACL",
        "BASELINE-CONTROL",
        "BATCH",
        "BIND",
        "CHECKIN",
        "CHECKOUT",
        "COPY",
        "LABEL",
        "LINK",
        "LOCK",
        "MERGE",
        "MKACTIVITY",
        "MKCALENDAR",
        "MKCOL",
        "MKREDIRECTREF",
        "MKWORKSPACE",
        "MOVE",
        "ORDERPATCH",
        "PRI",
        "PROPFIND",
        "PROPPATCH",
        "PURGE",
        "QUERY",
        "REBIND",
        "REPORT",
        "SEARCH",
        "TRACK",
        "UNBIND",
        "UNCHECKOUT",
        "UNLINK",
        "UNLOCK",
        "UPDATE",
        "UPDATEREDIRECTREF",
        "VERSION-CONTROL",
    ];
    let standard = STANDARD_METHODS.iter().map(Method::as_str);
    if standard.clone().any(|m| m == name) || IN_USE.contains(&name) {
        return None;
    }
    standard
        .clone()
        .find(|standard| one_slip(name.as_bytes(), standard.as_bytes()))
}

/// Whether `a` and `b` (which differ) are one edit apart: one byte left out or added,
/// one byte changed, or two neighbouring bytes swapped.
fn one_slip(a: &[u8], b: &[u8]) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let start = short.iter().zip(long).take_while(|(x, y)| x == y).count();
    match long.len() - short.len() {
        // Left out or added: the rest matches after the extra byte.
        1 => short[start..] == long[start + 1..],
        0 => {
            let (x, y) = (&a[start..], &b[start..]);
            // Changed: the rest matches after one byte; swapped: the first two trade places.
            x[1..] == y[1..] || (x.len() >= 2 && x[0] == y[1] && x[1] == y[0] && x[2..] == y[2..])
        }
        _ => false,
    }
}

fn parse_path(path: &str) -> Result<(Vec<Segment>, bool), InvalidReason> {
    if !path.starts_with('/') {
        return Err(InvalidReason::MissingPath);
    }
    if let Some(c) = path.chars().find(|c| c.is_whitespace()) {
        return Err(InvalidReason::BadChar(c));
    }
    if path.contains(['?', '#']) {
        return Err(InvalidReason::QueryOrFragment);
    }
    if path == "/" {
        return Ok((Vec::new(), false));
    }
    let parts: Vec<&str> = path[1..].split('/').collect();
    if parts.len() > MAX_PATTERN_SEGMENTS {
        return Err(InvalidReason::TooManySegments);
    }
    let mut segments = Vec::with_capacity(parts.len());
    // A name given twice: axum refuses such a route, so no request would reach the rule.
    let mut names: Vec<&str> = Vec::new();
    let mut name_once = |name| {
        if names.contains(&name) {
            return Err(InvalidReason::RepeatedParam(name.to_owned()));
        }
        names.push(name);
        Ok(())
    };
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if is_catch_all(part) {
            if !last {
                return Err(InvalidReason::WildcardNotLast);
            }
            if *part != "*" {
                let name = &part[2..part.len() - 1];
                check_param_name(name, part)?;
                name_once(name)?;
            }
            return Ok((segments, true));
        }
        let segment = parse_segment(part, last)?;
        if let Some(name) = param_name(part) {
            name_once(name)?;
        }
        segments.push(segment);
    }
    Ok((segments, false))
}

/// Whether a pattern's segment is a wildcard: `*` or `{*name}`.
fn is_catch_all(part: &str) -> bool {
    part == "*" || (part.starts_with("{*") && part.ends_with('}'))
}

/// The name of a parameter segment, `:name` or `{name}` (not a wildcard's).
fn param_name(part: &str) -> Option<&str> {
    if is_catch_all(part) {
        return None;
    }
    part.strip_prefix(':')
        .or_else(|| part.strip_prefix('{').and_then(|p| p.strip_suffix('}')))
}

fn parse_segment(part: &str, last: bool) -> Result<Segment, InvalidReason> {
    if part.is_empty() {
        return Err(if last {
            InvalidReason::TrailingSlash
        } else {
            InvalidReason::EmptySegment
        });
    }
    if part == "." || part == ".." {
        return Err(InvalidReason::DotSegment);
    }
    if let Some(name) = param_name(part) {
        check_param_name(name, part)?;
        return Ok(Segment::Param);
    }
    if part.contains(['{', '}']) {
        return Err(InvalidReason::PartialParam(part.to_owned()));
    }
    // `/api/**`, axum 0.7's `/*rest`, `/c/*.json`: meant as wildcards, they would match
    // only a path with those very characters.
    if part.contains('*') {
        return Err(InvalidReason::StarInSegment(part.to_owned()));
    }
    let bytes = part.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let valid = bytes.len() > i + 2
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit();
            if !valid {
                return Err(InvalidReason::BadPercent);
            }
            i += 3;
            continue;
        }
        if !is_pchar(b) {
            let c = part[i..].chars().next().unwrap_or('?');
            return Err(InvalidReason::BadChar(c));
        }
        i += 1;
    }
    Ok(Segment::Literal(canonical_segment(part).into_owned()))
}

fn check_param_name(name: &str, part: &str) -> Result<(), InvalidReason> {
    let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(InvalidReason::PartialParam(part.to_owned()))
    }
}

/// RFC 3986 `unreserved`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` without `%` (escapes are checked separately).
fn is_pchar(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes escaped unreserved characters and upper-cases the hex digits of
/// the other escapes. Anything else (invalid escapes included) is kept as is.
fn canonical_segment(segment: &str) -> Cow<'_, str> {
    if !segment.contains('%') {
        return Cow::Borrowed(segment);
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => hex_value(h).zip(hex_value(l)),
            _ => None,
        };
        match escape {
            Some((h, l)) => {
                let value = h * 16 + l;
                if is_unreserved(value) {
                    out.push(value);
                } else {
                    out.push(b'%');
                    out.push(bytes[i + 1].to_ascii_uppercase());
                    out.push(bytes[i + 2].to_ascii_uppercase());
                }
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    // Only ASCII was replaced by ASCII, so this is still UTF-8.
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// What one look at a path finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathShape {
    /// Over [`MAX_PATH_LEN`] bytes or [`MAX_SEGMENTS`] segments: read as axum reads it, and
    /// never in a lenient class.
    OverLimit,
    /// Its canonical segments are its raw ones: no percent-escape, no empty segment (`//`,
    /// a trailing `/`) and no segment starting with `.` (which takes in `.` and `..`).
    Plain,
    /// Anything else: its canonical reading has to be worked out.
    Irregular,
}

/// A path as axum's router reads it: its first [`MAX_SEGMENTS`] segments, and whether more
/// follow. No pattern has that many segments ([`MAX_PATTERN_SEGMENTS`]), so the segments
/// kept decide which rules match as the whole path would.
#[derive(Debug)]
struct Reading<T> {
    segments: Segments<T>,
    more: bool,
}

/// The path as axum's router reads it (`/` separated, nothing decoded: after one leading
/// `/`, each `/` starts a segment), and its shape. Past [`MAX_SEGMENTS`] segments the rest
/// is not looked at: it cannot change which rule matches. The reading is made in `raw`, a
/// blank one the caller keeps (it is a few hundred bytes, which returning it would copy).
fn scan<'a>(path: &'a str, raw: &mut Reading<&'a str>) -> PathShape {
    let bytes = path.as_bytes();
    let segments = &mut raw.segments;
    let body = usize::from(bytes.first() == Some(&b'/'));
    let mut start = body;
    // A segment is irregular if it is empty (`//`) or starts with `.`.
    let mut plain = true;
    while let Some(len) = find_slash(&bytes[start..]) {
        if segments.len() == MAX_SEGMENTS {
            // One segment too many: the rest cannot change which rule matches.
            raw.more = true;
            return PathShape::OverLimit;
        }
        let end = start + len;
        segments.push(&path[start..end]);
        plain &= !matches!(bytes[start..end].first(), None | Some(b'.'));
        start = end + 1;
    }
    let mut more = false;
    if bytes.len() > body {
        if segments.len() == MAX_SEGMENTS {
            more = true;
        } else {
            segments.push(&path[start..]);
            // The last segment may be empty only in `/` itself (a trailing `/` is
            // irregular).
            plain &= match bytes[start..].first() {
                None => bytes.len() <= 1,
                Some(&b) => b != b'.',
            };
        }
    }
    raw.more = more;
    if more || bytes.len() > MAX_PATH_LEN {
        PathShape::OverLimit
    } else if plain && !bytes.contains(&b'%') {
        PathShape::Plain
    } else {
        PathShape::Irregular
    }
}

/// Where the first `/` of `bytes` is: byte by byte in the short rest of a usual path,
/// with `memchr` in a long one (a long segment costs a fraction of an instruction a byte).
fn find_slash(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < 64 {
        bytes.iter().position(|&b| b == b'/')
    } else {
        memchr::memchr(b'/', bytes)
    }
}

/// A path's segments: on the stack for the usual depth (no allocation per request).
type Segments<T> = smallvec::SmallVec<[T; 12]>;

/// The path after RFC 3986 normalisation, with empty segments dropped.
fn canonical_segments<'a>(raw: &[&'a str]) -> Segments<Cow<'a, str>> {
    let mut out: Segments<Cow<'a, str>> = Segments::new();
    for segment in raw {
        let segment = canonical_segment(segment);
        match segment.as_ref() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(segment),
        }
    }
    out
}

/// Why a pattern is invalid (the text of [`PatternError::Invalid`]'s `reason`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InvalidReason {
    /// Nothing was given.
    #[error("the pattern is empty")]
    Empty,
    /// No path, or the path does not start with `/`.
    #[error("the path must start with `/`")]
    MissingPath,
    /// `GET,,POST`.
    #[error("empty method in the method list")]
    EmptyMethod,
    /// Methods are case-sensitive.
    #[error("method `{0}` must be upper case")]
    LowercaseMethod(String),
    /// Not an HTTP method token (or `*`: leave the methods out for any method).
    #[error("`{0}` is not an HTTP method (for any method, leave the methods out: `/path`)")]
    BadMethod(String),
    /// `GET|POST`: methods joined by something other than `,`.
    #[error("`{0}` is one method as written: separate methods with `,` (`GET,POST /path`)")]
    MethodList(String),
    /// `GTE`, `DELET`, `OPTION`: one slip away from a standard method.
    #[error(
        "method `{given}` is not a standard method: did you mean `{meant}`? (no client sends \
         `{given}`, so the rule would never match)"
    )]
    MisspeltMethod {
        /// The method as written.
        given: String,
        /// The standard method it is one slip away from.
        meant: &'static str,
    },
    /// `/a//b`.
    #[error("empty segment (`//`)")]
    EmptySegment,
    /// `/a/b/`.
    #[error("trailing `/`: write the path without it (`/a/` and `/a` are one class)")]
    TrailingSlash,
    /// `/a/../b`.
    #[error("`.` and `..` segments are not allowed")]
    DotSegment,
    /// `/a/*/b`.
    #[error("a wildcard `*` may only be the last segment")]
    WildcardNotLast,
    /// `/a/**`, `/a/*rest`, `/a/*.json`: a star inside a segment.
    #[error(
        "`{0}`: `*` is a wildcard only as the whole last segment (`/api/*`, `/api/{{*rest}}`); \
         a segment with a star in it cannot be matched on its own (cover it with a wildcard)"
    )]
    StarInSegment(String),
    /// `/a/x{id}`, `{}`, `{a-b}`.
    #[error("`{0}`: a parameter is a whole segment, `{{name}}` or `:name`, name of letters, digits, `_`")]
    PartialParam(String),
    /// `/x/{id}/{id}`: a parameter name given twice.
    #[error(
        "parameter `{0}` is named twice: axum refuses such a route, so no request would reach \
         the rule (name each parameter once: `/x/{{a}}/{{b}}`)"
    )]
    RepeatedParam(String),
    /// A character that cannot appear in a URI path.
    #[error("character {0:?} cannot appear in a URI path; percent-encode it")]
    BadChar(char),
    /// `%` not followed by two hex digits.
    #[error("`%` must be followed by two hex digits")]
    BadPercent,
    /// Patterns match paths, not queries.
    #[error("a pattern matches the path only; remove the `?query` or `#fragment`")]
    QueryOrFragment,
    /// More than [`MAX_PATTERN_SEGMENTS`].
    #[error("more than {MAX_PATTERN_SEGMENTS} segments")]
    TooManySegments,
}

/// A pattern or a route table that is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// A pattern that cannot be parsed.
    #[error(
        "invalid route pattern `{pattern}`: {reason} (examples: `POST /api/items/{{id}}/generate`, \
         `GET,HEAD /v1/items/:id`, `/api/webhooks/*`, `/*`)"
    )]
    Invalid {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it (`the path must start with `/``, `method `get` must be
        /// upper case`, ...).
        reason: String,
    },
    /// Two rules that match the same requests equally well.
    #[error(
        "rules `{first}` and `{second}` tie: both match `{example}` and neither is more \
         specific; remove one or give them different methods"
    )]
    Tie {
        /// The rule added first.
        first: Box<RoutePattern>,
        /// The rule added later.
        second: Box<RoutePattern>,
        /// A request both match.
        example: String,
    },
    /// A rule that more specific rules always beat.
    #[error(
        "rule `{rule}` can never match: every request it matches goes to a more specific rule ({})",
        list(.shadowed_by)
    )]
    NeverMatches {
        /// The rule that is never chosen.
        rule: Box<RoutePattern>,
        /// The rules that take its requests.
        shadowed_by: Vec<RoutePattern>,
    },
}

fn list(patterns: &[RoutePattern]) -> String {
    patterns
        .iter()
        .map(|p| format!("`{p}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The classes of one request, from [`RouteTable::classify_all`]: none, one, or two
/// (the path's two readings landed on two different rules that are not lenient).
#[derive(Debug)]
pub struct Classes<'a, T> {
    items: [Option<&'a T>; 2],
}

impl<T> Clone for Classes<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Classes<'_, T> {}

impl<'a, T> Classes<'a, T> {
    /// The class [`RouteTable::classify`] answers.
    pub fn first(&self) -> Option<&'a T> {
        self.items[0]
    }

    /// How many classes (0, 1 or 2).
    pub fn len(&self) -> usize {
        self.items.iter().flatten().count()
    }

    /// Whether no rule matched.
    pub fn is_empty(&self) -> bool {
        self.items[0].is_none()
    }

    /// The classes, [`Classes::first`] first.
    pub fn iter(&self) -> std::iter::Flatten<std::array::IntoIter<Option<&'a T>, 2>> {
        self.items.into_iter().flatten()
    }
}

impl<'a, T> IntoIterator for Classes<'a, T> {
    type Item = &'a T;
    type IntoIter = std::iter::Flatten<std::array::IntoIter<Option<&'a T>, 2>>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// A rule and its value.
#[derive(Clone, Debug)]
struct Rule<T> {
    pattern: RoutePattern,
    value: T,
}

/// Rules and their values; see the module documentation of `classify`.
#[derive(Clone, Debug)]
pub struct RouteTable<T> {
    rules: Vec<Rule<T>>,
    lenient: Option<fn(&T) -> bool>,
}

/// Builds a [`RouteTable`]; created by [`RouteTable::builder`].
#[derive(Clone, Debug)]
pub struct RouteTableBuilder<T> {
    rules: Vec<Rule<T>>,
    lenient: Option<fn(&T) -> bool>,
}

impl<T> RouteTable<T> {
    /// Starts an empty table.
    pub fn builder() -> RouteTableBuilder<T> {
        RouteTableBuilder {
            rules: Vec::new(),
            lenient: None,
        }
    }

    /// The value of the most specific rule matching `method` and `path`, or
    /// `None` if no rule matches (add a `/*` rule as the default).
    ///
    /// `path` is the raw request URI path (percent-encoded, as received);
    /// see the module documentation of `classify` for how it is read.
    pub fn classify(&self, method: &http::Method, path: &str) -> Option<&T> {
        self.classify_indexes(method, path)[0].map(|i| &self.rules[i].value)
    }

    /// Every class a request must be charged so that it is limited at least as
    /// strictly as the route that serves it: the value of [`RouteTable::classify`]
    /// first, then, when the path's two readings (see the module documentation of `classify`) land
    /// on two different rules that are not lenient, the other one. Empty if no rule
    /// matches.
    pub fn classify_all(&self, method: &http::Method, path: &str) -> Classes<'_, T> {
        let [first, second] = self.classify_indexes(method, path);
        Classes {
            items: [
                first.map(|i| &self.rules[i].value),
                second.map(|i| &self.rules[i].value),
            ],
        }
    }

    /// The rules with their values, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = (&RoutePattern, &T)> {
        self.rules.iter().map(|rule| (&rule.pattern, &rule.value))
    }

    /// The pattern of the rule whose value holds `value` (the very value, as
    /// [`RouteTable::classify`] answers it: compared by address).
    pub(crate) fn pattern_of<U: ?Sized>(&self, value: &U) -> Option<&RoutePattern>
    where
        T: AsRef<U>,
    {
        self.iter()
            .find(|(_, rule)| std::ptr::eq((*rule).as_ref(), value))
            .map(|(pattern, _)| pattern)
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the table has no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether some rule takes requests of `method` (`HEAD` where a rule names `GET`),
    /// whatever their path.
    pub(crate) fn takes_method(&self, method: &Method) -> bool {
        self.rules
            .iter()
            .any(|rule| rule.pattern.method_rank(method).is_some())
    }

    fn is_lenient(&self, index: usize) -> bool {
        self.lenient.is_some_and(|f| f(&self.rules[index].value))
    }

    /// The rule `classify` answers, then the other rule to charge, if any.
    fn classify_indexes(&self, method: &Method, path: &str) -> [Option<usize>; 2] {
        let mut raw = Reading {
            segments: Segments::new(),
            more: false,
        };
        match scan(path, &mut raw) {
            // The usual path: its canonical reading is its raw one.
            PathShape::Plain => return [self.best(method, &raw, false), None],
            // As axum routes it (exactly: its first segments decide), and never in a
            // lenient class. Its normalised reading is not worked out: only a normaliser
            // behind the limiter would follow it, and reading all of a path that long
            // would cost work in proportion to it.
            PathShape::OverLimit => return [self.best(method, &raw, true), None],
            PathShape::Irregular => {}
        }
        let canonical = Reading {
            segments: canonical_segments(&raw.segments),
            more: false,
        };
        let by_raw = self.best(method, &raw, false);
        let same_reading = raw.segments.len() == canonical.segments.len()
            && raw
                .segments
                .iter()
                .zip(&canonical.segments)
                .all(|(a, b)| *a == b.as_ref());
        if same_reading {
            return [by_raw, None];
        }
        let by_canonical = self.best(method, &canonical, false);
        // Strictness: a non-lenient rule, then no rule, then a lenient rule.
        // Between two non-lenient rules both are charged (axum serves the request
        // from one, a path normaliser may send it to the other); the canonical one
        // is the single answer. Between two lenient ones, axum's reading (where the
        // request really goes).
        let strictness = |choice: Option<usize>| match choice {
            Some(i) if !self.is_lenient(i) => 2,
            None => 1,
            Some(_) => 0,
        };
        match strictness(by_raw).cmp(&strictness(by_canonical)) {
            Ordering::Greater => [by_raw, None],
            Ordering::Equal if strictness(by_raw) == 0 => [by_raw, None],
            Ordering::Equal if strictness(by_raw) == 2 && by_raw != by_canonical => {
                [by_canonical, by_raw]
            }
            _ => [by_canonical, None],
        }
    }

    /// The most specific rule matching one reading of a path, skipping lenient rules when
    /// `strict`.
    fn best<S: AsRef<str>>(
        &self,
        method: &Method,
        path: &Reading<S>,
        strict: bool,
    ) -> Option<usize> {
        let mut best: Option<(usize, u8)> = None;
        for (i, rule) in self.rules.iter().enumerate() {
            let Some(method_rank) = rule.pattern.method_rank(method) else {
                continue;
            };
            if !rule.pattern.matches_path(&path.segments, path.more)
                || (strict && self.is_lenient(i))
            {
                continue;
            }
            let better = match best {
                None => true,
                Some((j, best_rank)) => rule
                    .pattern
                    .cmp_path_specificity(&self.rules[j].pattern)
                    .then(method_rank.cmp(&best_rank))
                    .is_gt(),
            };
            if better {
                best = Some((i, method_rank));
            }
        }
        best.map(|(i, _)| i)
    }
}

impl<T> RouteTableBuilder<T> {
    /// Adds a rule.
    pub fn route(mut self, pattern: RoutePattern, value: T) -> Self {
        self.rules.push(Rule { pattern, value });
        self
    }

    /// Marks the values for which `is_lenient` is true (exempt classes) as
    /// lenient: a request whose path is spelled unusually or is too long is
    /// never classified into a lenient rule unless every reading of the path
    /// agrees (see the module documentation of `classify`).
    pub fn lenient(mut self, is_lenient: fn(&T) -> bool) -> Self {
        self.lenient = Some(is_lenient);
        self
    }

    /// Checks the rules and builds the table.
    ///
    /// # Errors
    ///
    /// [`PatternError::Tie`] for two rules with the same path shape and an
    /// overlapping method, [`PatternError::NeverMatches`] for a rule that more
    /// specific rules always beat.
    pub fn build(self) -> Result<RouteTable<T>, PatternError> {
        let table = RouteTable {
            rules: self.rules,
            lenient: self.lenient,
        };
        check_ties(&table)?;
        check_reachable(&table)?;
        Ok(table)
    }
}

fn check_ties<T>(table: &RouteTable<T>) -> Result<(), PatternError> {
    for (i, first) in table.rules.iter().enumerate() {
        for second in &table.rules[i + 1..] {
            first.pattern.check_tie(&second.pattern)?;
        }
    }
    Ok(())
}

impl RoutePattern {
    /// [`PatternError::Tie`] if `self` (added first) and `later` have the same path shape
    /// and overlapping methods: both match some request equally well.
    pub(crate) fn check_tie(&self, later: &Self) -> Result<(), PatternError> {
        let (a, b) = (self, later);
        if a.same_path_shape(b) && a.methods_overlap(b) {
            let method = a
                .methods
                .as_ref()
                .and_then(|list| list.iter().find(|m| b.methods().unwrap_or(&[]).contains(m)));
            return Err(PatternError::Tie {
                first: Box::new(a.clone()),
                second: Box::new(b.clone()),
                example: a.example_request(method),
            });
        }
        Ok(())
    }
}

/// A rule can be chosen if some request it matches has no more specific rule.
/// Rules only differ by literals, so it is enough to try, for each method the
/// rule names (or a method no rule names) and each path length it accepts,
/// the path with the rule's literals and, everywhere else, a segment equal to
/// no literal: any other choice would only let more rules compete.
fn check_reachable<T>(table: &RouteTable<T>) -> Result<(), PatternError> {
    let longest = table
        .rules
        .iter()
        .map(|rule| rule.pattern.segments.len())
        .max()
        .unwrap_or(0);
    let unnamed = Method::from_bytes(b"TOLLGATE-PROBE").ok();
    for (index, rule) in table.rules.iter().enumerate() {
        let pattern = &rule.pattern;
        let mut methods: Vec<Method> = match &pattern.methods {
            Some(list) => list.clone(),
            None => unnamed.iter().cloned().collect(),
        };
        if methods.contains(&Method::GET) && !methods.contains(&Method::HEAD) {
            methods.push(Method::HEAD);
        }
        let base: Vec<&str> = pattern
            .segments
            .iter()
            .map(|segment| match segment {
                Segment::Literal(text) => text.as_str(),
                Segment::Param => FRESH,
            })
            .collect();
        let lengths = if pattern.wildcard {
            base.len()..=longest + 1
        } else {
            base.len()..=base.len()
        };
        let mut shadowed_by = Vec::new();
        let reachable = lengths.into_iter().any(|len| {
            let mut segments: Segments<&str> = base.iter().copied().collect();
            segments.resize(len, FRESH);
            let path = Reading {
                segments,
                more: false,
            };
            methods.iter().any(|method| {
                let winner = table.best(method, &path, false);
                if let Some(w) = winner.filter(|&w| w != index) {
                    let by = &table.rules[w].pattern;
                    if !shadowed_by.contains(by) {
                        shadowed_by.push(by.clone());
                    }
                }
                winner == Some(index)
            })
        });
        if !reachable {
            return Err(PatternError::NeverMatches {
                rule: Box::new(pattern.clone()),
                shadowed_by,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path's shape and reading ([`scan`](super::scan)).
    fn scan(path: &str) -> (PathShape, Reading<&str>) {
        let mut raw = Reading {
            segments: Segments::new(),
            more: false,
        };
        (super::scan(path, &mut raw), raw)
    }

    fn reads_the_same(path: &str) -> bool {
        scan(path).0 == PathShape::Plain
    }

    /// The segments as axum's router splits a path: after one leading `/`, at every `/`.
    fn split(path: &str) -> Vec<&str> {
        let rest = path.strip_prefix('/').unwrap_or(path);
        if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        }
    }

    #[test]
    fn a_path_said_to_read_the_same_has_its_raw_segments_as_canonical() {
        let fixed = [
            "",
            "/",
            "//",
            "/a",
            "/a/",
            "/a//b",
            "/a/./b",
            "/a/../b",
            "/.",
            "/..",
            "/.a",
            "/a.b/c",
            "/a%2Fb",
            "/%41",
            "a/b",
            "/api/items/1",
            "/api/items/1/",
        ];
        // And every path of up to five characters from `/ . % a 2`.
        let alphabet = ['/', '.', '%', 'a', '2'];
        let mut drawn = Vec::new();
        for n in 0..=5u32 {
            for mut i in 0..alphabet.len().pow(n) {
                let mut path = String::new();
                for _ in 0..n {
                    path.push(alphabet[i % alphabet.len()]);
                    i /= alphabet.len();
                }
                drawn.push(path);
            }
        }
        let mut same = 0;
        for path in fixed.iter().map(|p| p.to_string()).chain(drawn) {
            let (shape, raw) = scan(&path);
            assert_eq!(raw.segments.to_vec(), split(&path), "{path:?}");
            if shape == PathShape::Plain {
                same += 1;
                let canonical = canonical_segments(&raw.segments);
                let canonical: Vec<&str> = canonical.iter().map(|c| c.as_ref()).collect();
                assert_eq!(raw.segments.to_vec(), canonical, "{path:?}");
            }
        }
        assert!(same > 100, "the usual paths take the short way ({same})");
        assert!(reads_the_same("/api/items/1") && reads_the_same("/"));
        assert!(!reads_the_same("/api/items/1/") && !reads_the_same("/a/%2e%2e/b"));
    }

    /// A path over the limits is read as axum splits it: its first [`MAX_SEGMENTS`]
    /// segments, and whether more follow.
    #[test]
    fn a_path_over_the_limits_is_read_up_to_its_segment_limit() {
        let paths = [
            "/a".repeat(MAX_SEGMENTS),
            "/a".repeat(MAX_SEGMENTS + 1),
            "/a".repeat(MAX_SEGMENTS + 10),
            format!("{}/", "/a".repeat(MAX_SEGMENTS - 1)),
            format!("{}/", "/a".repeat(MAX_SEGMENTS)),
            "a/".repeat(MAX_SEGMENTS + 1),
            format!("/{}", "x".repeat(MAX_PATH_LEN + 5)),
            "x".repeat(MAX_PATH_LEN + 5),
            format!("/{}/{}", "y".repeat(100), "x".repeat(MAX_PATH_LEN)),
            "/abcdefghijklmnopqrstuvwxyz0123456789".repeat(MAX_PATH_LEN / 37 + 1),
            format!("/a/../../..{}", "/b".repeat(MAX_SEGMENTS + 6)),
        ];
        for path in &paths {
            let all = split(path);
            let over = path.len() > MAX_PATH_LEN || all.len() > MAX_SEGMENTS;
            let (shape, raw) = scan(path);
            assert_eq!(shape == PathShape::OverLimit, over, "{}", path.len());
            assert_eq!(raw.more, all.len() > MAX_SEGMENTS, "{}", path.len());
            assert_eq!(
                raw.segments.to_vec(),
                all[..all.len().min(MAX_SEGMENTS)],
                "{}",
                path.len()
            );
        }
    }

    /// Whatever its length, a path is charged by the rule axum serves it from: a long
    /// segment where a pattern has a parameter, or `..` segments that a cut normalised
    /// reading would have taken somewhere else (or nowhere), change nothing.
    #[test]
    fn a_long_path_is_charged_by_the_route_that_serves_it() {
        let t = table(&[
            ("/*", "default"),
            ("GET /files/temp/{*file}", "downloads"),
            ("/knowledge/*", "knowledge"),
            ("POST /templates/{id}/generate", "generate"),
            ("/hooks/*", "exempt-hooks"),
        ]);
        let all = |method: &Method, path: &str| -> Vec<&str> {
            t.classify_all(method, path).into_iter().copied().collect()
        };
        let escaping = format!("/files/temp/../../..{}", "/a".repeat(70));
        assert_eq!(all(&Method::GET, &escaping), ["downloads"]);
        let long_escaping = format!("/files/temp/../../../x/{}", "a".repeat(MAX_PATH_LEN + 8));
        assert_eq!(all(&Method::GET, &long_escaping), ["downloads"]);
        let into_knowledge = format!("/files/temp/../../knowledge/{}", "a".repeat(MAX_PATH_LEN));
        assert_eq!(all(&Method::GET, &into_knowledge), ["downloads"]);
        let long_id = format!("/templates/{}/generate", "a".repeat(MAX_PATH_LEN + 8));
        assert_eq!(all(&Method::POST, &long_id), ["generate"]);
        let deep = format!("/knowledge/x{}", "/b".repeat(MAX_SEGMENTS + 6));
        assert_eq!(all(&Method::GET, &deep), ["knowledge"]);
        // And a long path is still never exempt.
        let hooks = format!("/hooks{}", "/a".repeat(MAX_SEGMENTS + 1));
        assert_eq!(all(&Method::POST, &hooks), ["default"]);
        let hooks = format!("/hooks/{}", "a".repeat(MAX_PATH_LEN));
        assert_eq!(all(&Method::POST, &hooks), ["default"]);
    }

    fn p(s: &str) -> RoutePattern {
        RoutePattern::parse(s).unwrap()
    }

    fn table(rules: &[(&str, &'static str)]) -> RouteTable<&'static str> {
        rules
            .iter()
            .fold(RouteTable::builder(), |b, (pattern, v)| {
                b.route(p(pattern), *v)
            })
            .lenient(|v| v.starts_with("exempt"))
            .build()
            .unwrap()
    }

    /// An API's table: exemptions, an object route, wildcards and method rules.
    fn api_table() -> RouteTable<&'static str> {
        table(&[
            ("/*", "default"),
            ("/api/*", "api"),
            ("/api/auth/*", "exempt-auth"),
            ("/api/twilio/*", "exempt-twilio"),
            ("/api/stripe/webhook", "exempt-stripe"),
            ("/api/stripe/{id}", "stripe-object"),
            ("POST /api/templates/{id}/generate", "generate"),
            ("GET /api/templates/{id}", "template-read"),
            ("/api/templates/{id}", "template-any"),
            ("/api/templates/recent", "recent"),
        ])
    }

    #[test]
    fn parses_the_documented_forms() {
        let pattern = p("POST /api/templates/{id}/generate");
        assert_eq!(pattern.methods(), Some(&[Method::POST][..]));
        assert!(!pattern.is_wildcard());
        assert_eq!(pattern.to_string(), "POST /api/templates/{id}/generate");
        assert_eq!(
            p("GET,HEAD /v1/campaigns/:id"),
            p("HEAD, GET /v1/campaigns/{x}")
        );
        assert_eq!(p("*"), p("/*"));
        assert_eq!(p("/api/twilio/*"), p("/api/twilio/{*rest}"));
        assert_eq!(p("/a/%7euser"), p("/a/~user"));
        assert_ne!(p("/a/b"), p("GET /a/b"));
        let parsed: RoutePattern = "/api/stripe/webhook".parse().unwrap();
        assert_eq!(parsed, p("/api/stripe/webhook"));
        assert!(p("/").methods().is_none());
    }

    fn misspelt(given: &str, meant: &'static str) -> InvalidReason {
        InvalidReason::MisspeltMethod {
            given: given.into(),
            meant,
        }
    }

    /// Extension methods that are not one slip from a standard one stay valid.
    #[test]
    fn extension_methods_are_kept() {
        for method in [
            "PURGE", "PROPFIND", "MKCOL", "COPY", "MOVE", "LOCK", "QUERY", "REPORT", "TRACK",
            "BATCH", "MERGE", "LINK",
        ] {
            let pattern = RoutePattern::parse(&format!("{method} /dav")).unwrap();
            assert_eq!(pattern.methods().unwrap()[0].as_str(), method);
        }
    }

    #[test]
    fn a_route_template_is_the_pattern_it_spells() {
        let pattern = |p: &str| RoutePattern::parse(p).unwrap();
        for (declared, template) in [
            ("POST /api/chat", "/api/chat"),
            ("/v1/campaigns/:id", "/v1/campaigns/{id}"),
            ("/v1/campaigns/{id}", "/v1/campaigns/{campaign}"),
            ("/files/*", "/files/{*rest}"),
            ("/files/{*rest}", "/files/{*path}"),
            ("/", "/"),
            ("/a%62c", "/abc"),
        ] {
            assert!(
                pattern(declared).is_route(template),
                "{declared} ~ {template}"
            );
        }
        for (declared, template) in [
            ("POST /api/*", "/api/chat"),
            ("/api/chat", "/api/{id}"),
            ("/api/{id}", "/api/chat"),
            ("/api/chat", "/api/chat/x"),
            ("/api/chat/x", "/api/chat"),
            ("/files/*", "/files"),
            ("/files/{*rest}", "/files/x/{*rest}"),
            ("/", "/x"),
            ("/x", "x"),
        ] {
            assert!(
                !pattern(declared).is_route(template),
                "{declared} !~ {template}"
            );
        }
    }

    #[test]
    fn invalid_patterns_say_why() {
        let cases = [
            ("", InvalidReason::Empty),
            ("api/x", InvalidReason::MissingPath),
            ("GET", InvalidReason::MissingPath),
            ("get /x", InvalidReason::LowercaseMethod("get".into())),
            ("GET,,POST /x", InvalidReason::EmptyMethod),
            ("G(T /x", InvalidReason::BadMethod("G(T".into())),
            ("GTE /x", misspelt("GTE", "GET")),
            ("GET,PSOT /x", misspelt("PSOT", "POST")),
            ("DELET /x", misspelt("DELET", "DELETE")),
            ("OPTION /x", misspelt("OPTION", "OPTIONS")),
            ("PUTT /x", misspelt("PUTT", "PUT")),
            ("HAED /x", misspelt("HAED", "HEAD")),
            ("PATHC /x", misspelt("PATHC", "PATCH")),
            ("TRACES /x", misspelt("TRACES", "TRACE")),
            ("/a//b", InvalidReason::EmptySegment),
            ("/a/b/", InvalidReason::TrailingSlash),
            ("/a/../b", InvalidReason::DotSegment),
            ("/a/*/b", InvalidReason::WildcardNotLast),
            // Meant as wildcards; they would match only paths with these very characters.
            ("/api/**", InvalidReason::StarInSegment("**".into())),
            ("/api/*rest", InvalidReason::StarInSegment("*rest".into())),
            ("/c/*.json", InvalidReason::StarInSegment("*.json".into())),
            ("* /d", InvalidReason::BadMethod("*".into())),
            ("GET,* /d", InvalidReason::BadMethod("*".into())),
            ("GET|POST /d", InvalidReason::MethodList("GET|POST".into())),
            ("GET+HEAD /d", InvalidReason::MethodList("GET+HEAD".into())),
            ("/a/x{id}", InvalidReason::PartialParam("x{id}".into())),
            ("/a/{}", InvalidReason::PartialParam("{}".into())),
            ("/a/:", InvalidReason::PartialParam(":".into())),
            ("/a/{a-b}", InvalidReason::PartialParam("{a-b}".into())),
            ("/x/{id}/{id}", InvalidReason::RepeatedParam("id".into())),
            ("/x/:id/y/{id}", InvalidReason::RepeatedParam("id".into())),
            (
                "/x/{rest}/{*rest}",
                InvalidReason::RepeatedParam("rest".into()),
            ),
            ("/a/caf\u{e9}", InvalidReason::BadChar('\u{e9}')),
            ("/a/%zz", InvalidReason::BadPercent),
            ("/a?x=1", InvalidReason::QueryOrFragment),
        ];
        for (pattern, reason) in cases {
            let err = RoutePattern::parse(pattern).unwrap_err();
            assert_eq!(
                err,
                PatternError::Invalid {
                    pattern: pattern.trim().to_owned(),
                    reason: reason.to_string()
                },
                "{pattern}"
            );
        }
        let long = "/a".repeat(MAX_PATTERN_SEGMENTS + 1);
        assert!(RoutePattern::parse(&long).is_err());
        assert_eq!(
            RoutePattern::parse("/a/*/b").unwrap_err().to_string(),
            "invalid route pattern `/a/*/b`: a wildcard `*` may only be the last segment \
             (examples: `POST /api/items/{id}/generate`, `GET,HEAD /v1/items/:id`, \
             `/api/webhooks/*`, `/*`)"
        );
    }

    #[test]
    fn most_specific_rule_wins() {
        let t = api_table();
        let c = |m: Method, path: &str| t.classify(&m, path).copied();
        assert_eq!(c(Method::GET, "/"), Some("default"));
        assert_eq!(c(Method::GET, "/health"), Some("default"));
        assert_eq!(c(Method::GET, "/api"), Some("api"));
        assert_eq!(c(Method::GET, "/api/users/1"), Some("api"));
        assert_eq!(
            c(Method::POST, "/api/twilio/sms/status"),
            Some("exempt-twilio")
        );
        assert_eq!(c(Method::POST, "/api/twilio"), Some("exempt-twilio"));
        // `/api/twilio/` is `/api/twilio` canonically, but axum routes it to
        // `/api/{*rest}`: not exempt.
        assert_eq!(c(Method::POST, "/api/twilio/"), Some("api"));
        // Exact beats parameter beats wildcard.
        assert_eq!(
            c(Method::POST, "/api/stripe/webhook"),
            Some("exempt-stripe")
        );
        assert_eq!(c(Method::GET, "/api/stripe/ch_1"), Some("stripe-object"));
        assert_eq!(c(Method::GET, "/api/stripe/ch_1/refunds"), Some("api"));
        assert_eq!(c(Method::GET, "/api/templates/recent"), Some("recent"));
        // A method beats no method; GET covers HEAD.
        assert_eq!(c(Method::GET, "/api/templates/5"), Some("template-read"));
        assert_eq!(c(Method::HEAD, "/api/templates/5"), Some("template-read"));
        assert_eq!(c(Method::DELETE, "/api/templates/5"), Some("template-any"));
        assert_eq!(
            c(Method::POST, "/api/templates/5/generate"),
            Some("generate")
        );
        assert_eq!(c(Method::GET, "/api/templates/5/generate"), Some("api"));
        // Case-sensitive, like axum.
        assert_eq!(c(Method::POST, "/API/stripe/webhook"), Some("default"));
    }

    #[test]
    fn a_named_head_rule_beats_get_for_head() {
        let t = table(&[("GET /x", "get"), ("HEAD /x", "head"), ("/x", "any")]);
        assert_eq!(t.classify(&Method::HEAD, "/x"), Some(&"head"));
        assert_eq!(t.classify(&Method::GET, "/x"), Some(&"get"));
        assert_eq!(t.classify(&Method::PUT, "/x"), Some(&"any"));
    }

    #[test]
    fn no_default_means_none() {
        let t = table(&[("/api/*", "api")]);
        assert_eq!(t.classify(&Method::GET, "/other"), None);
        assert_eq!(t.classify(&Method::GET, "/apix"), None);
        assert_eq!(t.len(), 1);
        assert!(!t.is_empty());
        assert_eq!(
            t.iter().next().map(|(p, v)| (p.to_string(), *v)),
            Some(("/api/*".into(), "api"))
        );
    }

    #[test]
    fn spelling_tricks_never_reach_an_exempt_rule() {
        let t = api_table();
        let c = |path: &str| *t.classify(&Method::POST, path).unwrap();
        // Escaped unreserved characters are the same path...
        assert_eq!(c("/api/templates/5/%67enerate"), "generate");
        assert_eq!(c("/api/templates/5/generate/"), "generate");
        assert_eq!(c("/api//templates/5/generate"), "generate");
        assert_eq!(c("/api/templates/./5/generate"), "generate");
        assert_eq!(c("/api/x/../templates/5/generate"), "generate");
        // ...but an exempt rule needs the plain spelling: axum would route these
        // elsewhere (`/api/stripe/{id}` gets `%77ebhook`).
        assert_eq!(c("/api/stripe/webhook"), "exempt-stripe");
        assert_eq!(c("/api/stripe/%77ebhook"), "stripe-object");
        assert_eq!(c("/api/stripe/webhook/"), "api");
        assert_eq!(c("/api//stripe/webhook"), "api");
        assert_eq!(c("/api/./stripe/webhook"), "api");
        assert_eq!(c("/api/templates/../stripe/webhook"), "api");
        assert_eq!(c("/api/templates/%2e%2e/twilio/x"), "api");
        // `%2F` is never a separator.
        assert_eq!(c("/api%2Ftwilio/x"), "default");
        assert_eq!(c("/api/stripe%2Fwebhook"), "api");
        assert_eq!(c("/api/twilio%2f..%2f..%2ftemplates"), "api");
        // Through `..` out of an exempt prefix: still not exempt when the
        // canonical path is elsewhere, and stricter classes win.
        assert_eq!(c("/api/twilio/../templates/5/generate"), "generate");
        assert_eq!(c("/api/twilio/../users"), "api");
        // Two exempt readings: where axum sends it.
        assert_eq!(c("/api/twilio/../auth/x"), "exempt-twilio");
        // `..` above the root stays at the root.
        assert_eq!(c("/../../api/twilio/x"), "default");
        // Non-UTF-8 bytes stay escaped and match only parameters/wildcards.
        assert_eq!(c("/api/stripe/%FF%FE"), "stripe-object");
        assert_eq!(c("/api/stripe/%ff%fe/x"), "api");
    }

    fn all(t: &RouteTable<&'static str>, method: Method, path: &str) -> Vec<&'static str> {
        let classes = t.classify_all(&method, path);
        assert_eq!(classes.first(), t.classify(&method, path), "{path}");
        assert_eq!(classes.len(), classes.iter().count(), "{path}");
        assert_eq!(
            classes.is_empty(),
            classes.iter().next().is_none(),
            "{path}"
        );
        classes.into_iter().copied().collect()
    }

    #[test]
    fn dot_segments_out_of_a_wildcard_charge_both_classes() {
        let t = table(&[
            ("/*", "default"),
            ("/api/*", "api"),
            ("GET /api/documents/temp/*", "downloads"),
            ("/api/knowledge/*", "knowledge"),
            ("/api/twilio/*", "twilio"),
            ("/api/twilio/sms/*", "exempt-sms"),
        ]);
        let get = |path: &str| all(&t, Method::GET, path);
        // axum serves these from `/api/documents/temp/{*file}`; normalised they are
        // elsewhere: both classes, the canonical one first.
        for path in [
            "/api/documents/temp/../../knowledge/f",
            "/api/documents/temp/%2E%2E/%2e%2e/knowledge/f",
            "/api/documents/temp/.%2E/..//knowledge/f",
        ] {
            assert_eq!(get(path), ["knowledge", "downloads"], "{path}");
        }
        assert_eq!(
            get("/api/documents/temp/../../twilio/f"),
            ["twilio", "downloads"]
        );
        assert_eq!(
            get("/api/documents/temp/../../projects"),
            ["api", "downloads"]
        );
        assert_eq!(
            get("/api/documents/temp/../../../x"),
            ["default", "downloads"]
        );
        // The other way round: axum serves from the looser class, normalised it is
        // the download route.
        assert_eq!(
            get("/api/knowledge/../documents/temp/f"),
            ["downloads", "knowledge"]
        );
        // One rule by both readings: one class.
        assert_eq!(get("/api/documents/temp/a/../b"), ["downloads"]);
        assert_eq!(get("/api/documents/temp/f/"), ["downloads"]);
        assert_eq!(get("/api/documents/temp/%66"), ["downloads"]);
        assert_eq!(get("/api/documents/temp/f"), ["downloads"]);
        // Another method: no download rule either way.
        assert_eq!(
            all(&t, Method::POST, "/api/documents/temp/../../knowledge/f"),
            ["knowledge", "api"]
        );
        // An exempt reading is dropped for the other, whichever it is; never both.
        assert_eq!(get("/api/twilio/sms/../../knowledge/f"), ["knowledge"]);
        assert_eq!(get("/api/documents/temp/../../twilio/sms/x"), ["downloads"]);
        assert_eq!(get("/api/twilio/sms/x"), ["exempt-sms"]);
        // Over-long paths: as axum serves them (the download route), and only so.
        let long = format!("/api/documents/temp/../..{}", "/a".repeat(MAX_SEGMENTS));
        assert_eq!(get(&long), ["downloads"]);
        // No rule at all.
        let t = table(&[("/api/x", "x")]);
        assert!(all(&t, Method::GET, "/other").is_empty());
        assert_eq!(all(&t, Method::GET, "/api/y/../x"), ["x"]);
    }

    #[test]
    fn an_empty_segment_is_a_parameter_when_the_path_goes_on() {
        // axum routes `/api/twilio//status` to `/api/twilio/{id}/status` (with an empty
        // `id`), so it must not be classified into the exempt wildcard around it.
        let t = RouteTable::builder()
            .route(p("/*"), "default")
            .route(p("/api/twilio/*"), "exempt-twilio")
            .route(p("/api/twilio/{id}/status"), "status")
            .lenient(|class| class.starts_with("exempt"))
            .build()
            .unwrap();
        let c = |path: &str| *t.classify(&Method::POST, path).unwrap();
        assert_eq!(c("/api/twilio/7/status"), "status");
        assert_eq!(c("/api/twilio//status"), "status");
        assert_eq!(c("/api/twilio/x"), "exempt-twilio");
        // At the end of the path an empty segment is no parameter (axum: 404).
        let t = RouteTable::builder()
            .route(p("/*"), "default")
            .route(p("/v/{id}"), "item")
            .build()
            .unwrap();
        assert_eq!(t.classify(&Method::GET, "/v/7"), Some(&"item"));
        assert_eq!(t.classify(&Method::GET, "/v/"), Some(&"default"));
    }

    #[test]
    fn without_a_lenient_marker_the_canonical_reading_wins() {
        let t = RouteTable::builder()
            .route(p("/*"), "default")
            .route(p("/api/stripe/webhook"), "webhook")
            .build()
            .unwrap();
        assert_eq!(
            t.classify(&Method::POST, "/api/stripe/webhook/"),
            Some(&"webhook")
        );
        assert_eq!(
            t.classify(&Method::POST, "/api/stripe/%77ebhook"),
            Some(&"webhook")
        );
    }

    #[test]
    fn long_paths_are_never_exempt() {
        let t = api_table();
        let long_twilio = format!("/api/twilio/{}", "a/".repeat(MAX_PATH_LEN));
        assert_eq!(t.classify(&Method::POST, &long_twilio), Some(&"api"));
        let long_segment = format!("/api/twilio/{}", "a".repeat(MAX_PATH_LEN));
        assert_eq!(t.classify(&Method::POST, &long_segment), Some(&"api"));
        let long_root = format!("/{}", "a".repeat(MAX_PATH_LEN));
        assert_eq!(t.classify(&Method::POST, &long_root), Some(&"default"));
        let many_segments = format!("/api/twilio{}", "/a".repeat(MAX_SEGMENTS));
        assert_eq!(t.classify(&Method::POST, &many_segments), Some(&"api"));
        let fewer = format!("/api/twilio{}", "/a".repeat(MAX_SEGMENTS - 2));
        assert_eq!(t.classify(&Method::POST, &fewer), Some(&"exempt-twilio"));
        // Just under the limit is read normally.
        let fits = format!("/api/twilio/{}", "a".repeat(MAX_PATH_LEN - 20));
        assert_eq!(t.classify(&Method::POST, &fits), Some(&"exempt-twilio"));
        // Without a wildcard rule a long path has no class.
        let t = table(&[("/api/x", "x")]);
        assert_eq!(t.classify(&Method::GET, &long_root), None);
    }

    #[test]
    fn ties_are_errors_naming_both_rules() {
        let err = RouteTable::builder()
            .route(p("/*"), 0)
            .route(p("POST /api/templates/{id}/generate"), 1)
            .route(p("POST,PUT /api/templates/:tid/generate"), 2)
            .build()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "rules `POST /api/templates/{id}/generate` and `POST,PUT /api/templates/:tid/generate` \
             tie: both match `POST /api/templates/x/generate` and neither is more specific; \
             remove one or give them different methods"
        );
        let err = RouteTable::builder()
            .route(p("/*"), 0)
            .route(p("*"), 1)
            .build()
            .unwrap_err();
        assert!(matches!(err, PatternError::Tie { .. }), "{err}");
        // Different methods, or a method against none, do not tie.
        assert!(RouteTable::builder()
            .route(p("GET /a/{id}"), 0)
            .route(p("POST /a/{id}"), 1)
            .route(p("/a/{id}"), 2)
            .build()
            .is_ok());
    }

    #[test]
    fn never_matching_rules_are_errors_naming_the_shadowing_rules() {
        let err = RouteTable::builder()
            .route(p("/x/*"), 0)
            .route(p("/x"), 1)
            .route(p("/x/{id}"), 2)
            .route(p("/x/{id}/*"), 3)
            .build()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "rule `/x/*` can never match: every request it matches goes to a more specific rule \
             (`/x`, `/x/{id}`, `/x/{id}/*`)"
        );
        let err = RouteTable::builder()
            .route(p("/x/*"), 0)
            .route(p("GET /x/*"), 1)
            .route(p("GET /x"), 2)
            .route(p("GET /x/{id}"), 3)
            .route(p("GET /x/{id}/*"), 4)
            .build()
            .unwrap_err();
        assert_eq!(
            err,
            PatternError::NeverMatches {
                rule: Box::new(p("GET /x/*")),
                shadowed_by: vec![p("GET /x"), p("GET /x/{id}"), p("GET /x/{id}/*")],
            }
        );
        // A wildcard still owns deeper paths, and `/x` alone.
        assert!(RouteTable::builder()
            .route(p("/x/*"), 0)
            .route(p("/x/{id}"), 2)
            .build()
            .is_ok());
        assert!(RouteTable::builder()
            .route(p("/x/*"), 0)
            .route(p("/x/{id}/*"), 2)
            .build()
            .is_ok());
    }

    /// axum serves `/a/` from neither `/a` nor `/a/{x}`: an empty last segment is
    /// no parameter, so its raw reading is the default (charged besides `/a`), and
    /// between two exempt readings it is not the exempt `/a/{x}`.
    #[test]
    fn a_trailing_slash_is_no_parameter() {
        let t = table(&[("/*", "default"), ("/a", "list"), ("/a/{x}", "item")]);
        assert_eq!(all(&t, Method::GET, "/a/"), ["list", "default"]);
        let t = table(&[
            ("/*", "default"),
            ("/a", "exempt-a"),
            ("/a/{x}", "exempt-x"),
        ]);
        assert_eq!(all(&t, Method::GET, "/a/"), ["default"]);
    }

    /// An escape that stays escaped keeps both its hex digits: a rule spelt with
    /// `%2F` takes that spelling (and only it), as axum routes it.
    #[test]
    fn an_escaped_reserved_character_keeps_its_hex_digits() {
        let t = table(&[
            ("/*", "default"),
            ("/files/a%2Fb", "exempt-file"),
            ("/upload/a%2Fb", "upload"),
        ]);
        assert_eq!(all(&t, Method::GET, "/files/a%2Fb"), ["exempt-file"]);
        assert_eq!(all(&t, Method::POST, "/upload/a%2Fb"), ["upload"]);
        assert_eq!(all(&t, Method::POST, "/upload/a%3Fb"), ["default"]);
    }

    /// A path of exactly [`MAX_PATH_LEN`] bytes is within the limit: read in full, and
    /// it may be exempt; one byte more is over it.
    #[test]
    fn a_path_of_exactly_the_length_limit_is_within_it() {
        let t = table(&[("/*", "default"), ("/hooks/*", "exempt-hooks")]);
        let path = format!("/hooks/{}", "a".repeat(MAX_PATH_LEN - "/hooks/".len()));
        assert_eq!(path.len(), MAX_PATH_LEN);
        assert_eq!(all(&t, Method::POST, &path), ["exempt-hooks"]);
        assert_eq!(all(&t, Method::POST, &format!("{path}a")), ["default"]);
    }

    /// A path whose every segment is spelt differently from its canonical reading
    /// (here its only one) is still read canonically: `/%6Cogin` is `/login`.
    #[test]
    fn a_path_escaped_in_every_segment_is_read_canonically() {
        let t = table(&[("/*", "default"), ("POST /login", "login")]);
        assert_eq!(all(&t, Method::POST, "/%6Cogin"), ["login", "default"]);
        assert_eq!(all(&t, Method::POST, "/%6C%6Fgin"), ["login", "default"]);
    }
}
