use http::Method;
use serde::ser::{Serialize, Serializer};
use tollgate_limits::{Algorithm, Limit};

use crate::classify::RoutePattern;
use crate::engine::Compiled;

/// Where a described rule comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RuleSource {
    /// A rule of the central table ([`LimiterBuilder::route`](crate::LimiterBuilder::route)).
    Route,
    /// A global policy, spent by every non-exempt request on top of its class
    /// ([`LimiterBuilder::global`](crate::LimiterBuilder::global),
    /// [`LimiterBuilder::global_policy`](crate::LimiterBuilder::global_policy)).
    Global,
    /// A per-route policy made with [`Limiter::policy`](crate::Limiter::policy): it applies
    /// to the routes that carry its layer, which the limiter does not know by path (with
    /// [`Limiter::policy_at`](crate::Limiter::policy_at), the pattern it was declared for
    /// is its [`RouteLimits::pattern`]).
    PerRoute,
    /// A guard ([`Limiter::guard`](crate::Limiter::guard)): it applies to the requests
    /// through its layer (typically outside authentication), on top of everything else.
    Guard,
    /// A bucket for direct use from handlers
    /// ([`LimiterBuilder::bucket`](crate::LimiterBuilder::bucket)); its policy name is the
    /// bucket's name.
    Bucket,
}

/// [`RouteLimits`]: what a [`Limiter`](crate::Limiter) enforces, rule by rule, for
/// documentation generated from the configuration itself (an OpenAPI `x-ratelimit`
/// extension, an HTML table of limits) and for diagnostics.
///
/// ```
/// use http::Method;
/// use tollgate::RuleSource;
/// use tollgate::{Algorithm, Limiter, Policy, Quota, Rate};
///
/// let limiter = Limiter::builder()
///     .identity(|parts| parts.headers.get("x-user").and_then(|v| v.to_str().ok()).map(String::from))
///     .route("/api/stripe/webhook", Policy::exempt())
///     .route("/api/*", Policy::named("default").per_ip("500/min").per_user("10000/h"))
///     .bucket("sign-in-failures", Rate::exact("5/30min"))
///     .build()?;
/// let _chat = limiter.try_policy_at(
///     "POST /api/chat",
///     Policy::named("chat").per_ip("60/min").per_user("30/min"),
/// )?;
///
/// let all = limiter.describe();
/// assert_eq!(all.len(), 4); // two table rules, one per-route policy, one direct bucket
/// let default = &all[1];
/// assert_eq!(default.source, RuleSource::Route);
/// assert_eq!(default.pattern.as_deref(), Some("/api/*"));
/// assert_eq!(default.policy, "default");
/// assert_eq!(default.limits[0].key, "ip");
/// assert_eq!(default.limits[0].bucket, "default:ip"); // as in the IETF headers
/// assert_eq!(default.limits[1].limit.unwrap().quota(), Quota::per_hour(10_000));
/// assert!(all[0].exempt);
/// assert_eq!(all[2].source, RuleSource::PerRoute);
/// assert_eq!(all[3].limits[0].limit.unwrap().algorithm(), Algorithm::SlidingLog);
///
/// // The rule one request falls under:
/// let rule = limiter.describe_route(&Method::GET, "/api/projects").unwrap();
/// assert_eq!(rule.policy, "default");
/// # Ok::<(), tollgate::BuildError>(())
/// ```
///
/// One rule of a limiter's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouteLimits {
    /// Where the rule comes from.
    pub source: RuleSource,
    /// The pattern as written (`"POST /api/templates/{id}/generate"`), for
    /// [`RuleSource::Route`] and for a [`RuleSource::PerRoute`] policy declared with
    /// [`Limiter::policy_at`](crate::Limiter::policy_at).
    pub pattern: Option<String>,
    /// The path part of the pattern (`"/api/templates/{id}/generate"`; `"/*"` for the
    /// default rule), where there is a pattern.
    pub path: Option<String>,
    /// The methods the rule is limited to; empty for any method.
    pub methods: Vec<Method>,
    /// The policy's name (the bucket's name for [`RuleSource::Bucket`]).
    pub policy: String,
    /// Whether requests under this rule pass unlimited.
    pub exempt: bool,
    /// Whether the rule is a dry run ([`Policy::shadow`](crate::Policy::shadow)): counted
    /// and logged, refusing nothing.
    pub shadow: bool,
    /// The rule's limits, in the order the policy declares them; empty when exempt.
    pub limits: Vec<RuleLimit>,
}

/// One configured limit of a described rule ([`RouteLimits::limits`]): the bucket it
/// counts in, whose budget it spends, and its quota and algorithm. What the limiter
/// enforces, not a state: for a bucket's state after a request see
/// [`BucketOutcome`](crate::BucketOutcome).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuleLimit {
    /// The bucket's name, as the IETF `RateLimit-Policy` header and the logs show it
    /// (`"default:ip"`; the header writes `:` as `-`).
    pub bucket: String,
    /// Whose budget it spends: the [`Key::kind`](crate::Key::kind) (`ip`, `user`,
    /// `api_key`, `tenant`, `global`, `header:<name>` or a custom kind).
    pub key: String,
    /// The quota and the algorithm; `None` when the quota is chosen per request
    /// ([`Policy::limit_with`](crate::Policy::limit_with)).
    pub limit: Option<Limit>,
}

impl RouteLimits {
    /// A compiled policy, described; `pattern` for rules of the central table.
    pub(crate) fn from_compiled(
        source: RuleSource,
        pattern: Option<&RoutePattern>,
        policy: &Compiled,
    ) -> Self {
        let text = pattern.map(ToString::to_string);
        let path = text.as_deref().map(|t| match t.find('/') {
            Some(i) => t[i..].to_string(),
            None => "/*".to_string(),
        });
        Self {
            source,
            pattern: text,
            path,
            methods: pattern
                .and_then(RoutePattern::methods)
                .map(<[Method]>::to_vec)
                .unwrap_or_default(),
            policy: policy.name.to_string(),
            exempt: policy.exempt,
            shadow: policy.shadow,
            limits: policy
                .limits
                .iter()
                .map(|l| RuleLimit {
                    bucket: l.bucket.to_string(),
                    key: l.key.kind().to_string(),
                    limit: l.quota.fixed(),
                })
                .collect(),
        }
    }

    /// A bucket for direct use.
    pub(crate) fn from_bucket(name: &str, limit: Limit) -> Self {
        Self {
            source: RuleSource::Bucket,
            pattern: None,
            path: None,
            methods: Vec::new(),
            policy: name.to_string(),
            exempt: false,
            shadow: false,
            limits: vec![RuleLimit {
                bucket: name.to_string(),
                key: "direct".to_string(),
                limit: Some(limit),
            }],
        }
    }
}

impl RuleSource {
    /// `route`, `global`, `per_route`, `guard` or `bucket`: the `source` of the JSON form.
    pub const fn as_str(self) -> &'static str {
        match self {
            RuleSource::Route => "route",
            RuleSource::Global => "global",
            RuleSource::PerRoute => "per_route",
            RuleSource::Bucket => "bucket",
            RuleSource::Guard => "guard",
        }
    }
}

/// Each algorithm's name in a request or a file (`sliding`) and the name documentation
/// gives it (`sliding window`): what [`algorithm_name`] shows, and what the admin router
/// reads back.
#[cfg(feature = "admin")]
pub(crate) const ALGORITHM_NAMES: [(&str, &str); 4] = [SLIDING, EXACT, FIXED, TOKEN_BUCKET];
const SLIDING: (&str, &str) = ("sliding", "sliding window");
const EXACT: (&str, &str) = ("exact", "sliding window (exact)");
const FIXED: (&str, &str) = ("fixed", "fixed window");
const TOKEN_BUCKET: (&str, &str) = ("token_bucket", "token bucket");

/// The name documentation gives an algorithm: `sliding window`, `sliding window (exact)`,
/// `token bucket` or `fixed window`.
pub(crate) fn algorithm_name(limit: &Limit) -> &'static str {
    let (_, shown) = match limit.algorithm() {
        Algorithm::SlidingLog => EXACT,
        Algorithm::TokenBucket { .. } => TOKEN_BUCKET,
        Algorithm::FixedWindow => FIXED,
        _ => SLIDING,
    };
    shown
}

/// A limit's numbers as JSON shows them (`null`s for a quota chosen per request).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LimitJson {
    quota: Option<String>,
    limit: Option<u64>,
    window_seconds: Option<u64>,
    algorithm: Option<&'static str>,
    /// Token buckets only.
    #[serde(skip_serializing_if = "Option::is_none")]
    burst: Option<u64>,
}

impl LimitJson {
    pub(crate) fn new(limit: Option<Limit>) -> Self {
        Self {
            quota: limit.map(|l| l.quota().to_string()),
            // As responses show them (`X-RateLimit-Limit`, `RateLimit-Policy`'s `q` and
            // `w`): a token bucket whose burst is above its count shows its burst.
            limit: limit.map(|l| l.shown_count()),
            // Rounded up, as `RateLimit-Policy`'s `w` (a 500 ms window is not 0 seconds).
            window_seconds: limit.map(|l| crate::respond::ceil_secs(l.shown_quota().period())),
            algorithm: limit.as_ref().map(algorithm_name),
            burst: limit.and_then(|l| match l.algorithm() {
                Algorithm::TokenBucket { burst } => Some(burst),
                _ => None,
            }),
        }
    }
}

/// JSON: `{"bucket", "key", "quota", "limit", "windowSeconds", "algorithm"}` (and `"burst"`
/// for a token bucket); the numbers are `null` for a quota chosen per request.
///
/// ```
/// use tollgate::{Limiter, Policy, Rate};
///
/// let limiter = Limiter::builder()
///     .route("/v1/*", Policy::named("v1").limit(tollgate::Key::ip(), Rate::token_bucket("100/min", 20)))
///     .build()?;
/// let json = serde_json::to_value(&limiter.describe()[0].limits[0]).unwrap();
/// assert_eq!(json, serde_json::json!({
///     "bucket": "v1:ip", "key": "ip", "quota": "100/min", "limit": 100,
///     "windowSeconds": 60, "algorithm": "token bucket", "burst": 20,
/// }));
/// # Ok::<(), tollgate::BuildError>(())
/// ```
impl Serialize for RuleLimit {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Json<'a> {
            bucket: &'a str,
            key: &'a str,
            #[serde(flatten)]
            limit: LimitJson,
        }
        Json {
            bucket: &self.bucket,
            key: &self.key,
            limit: LimitJson::new(self.limit),
        }
        .serialize(serializer)
    }
}

/// JSON: `{"source", "pattern", "path", "methods", "policy", "exempt", "limits"}`, with
/// `source` from [`RuleSource::as_str`] and each limit as [`RuleLimit`] serializes it, and
/// `"shadow": true` for a dry run.
impl Serialize for RouteLimits {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Json<'a> {
            source: &'static str,
            pattern: Option<&'a str>,
            path: Option<&'a str>,
            methods: Vec<&'a str>,
            policy: &'a str,
            exempt: bool,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            shadow: bool,
            limits: &'a [RuleLimit],
        }
        Json {
            source: self.source.as_str(),
            pattern: self.pattern.as_deref(),
            path: self.path.as_deref(),
            methods: self.methods.iter().map(Method::as_str).collect(),
            policy: &self.policy,
            exempt: self.exempt,
            shadow: self.shadow,
            limits: &self.limits,
        }
        .serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use http::Method;
    use tollgate_limits::{Algorithm, Quota};

    use super::RuleSource;
    use crate::{Key, Limiter, Policy, Rate};

    fn limiter() -> Limiter {
        Limiter::builder()
            .read_env(false)
            .identity(|_| None)
            .route("/api/cron/*", Policy::exempt())
            .route(
                "POST,PUT /api/templates/{id}/generate",
                Policy::named("generate")
                    .per_ip("300/min")
                    .per_user("3000/h"),
            )
            .route("/*", Policy::named("default").per_ip("500/min"))
            .route(
                "/v1/*",
                Policy::named("tiers")
                    .limit_with(Key::api_key("x-api-key"), |_, _| None)
                    .limit(Key::api_key("x-api-key"), Rate::token_bucket("100/min", 20))
                    .limit(Key::api_key("x-api-key"), Rate::fixed("10000/day")),
            )
            .global("1000/min")
            .bucket("auth", "20/15min")
            .bucket("sign-in-failures", Rate::exact("5/30min"))
            .build()
            .unwrap()
    }

    #[test]
    fn a_window_under_a_second_shows_as_one_second_like_the_policy_header() {
        let short = super::Limit::sliding(tollgate_limits::Quota::parse("10/500ms").unwrap());
        let json = serde_json::to_value(super::LimitJson::new(Some(short))).unwrap();
        assert_eq!(json["windowSeconds"], 1);
        let minute = super::Limit::sliding(tollgate_limits::Quota::per_minute(10));
        let json = serde_json::to_value(super::LimitJson::new(Some(minute))).unwrap();
        assert_eq!(json["windowSeconds"], 60);
    }

    /// Each algorithm has its own name in the JSON form (`/rate-limits`, the admin table):
    /// a fixed window is not the fallback `sliding window`.
    #[test]
    fn the_json_names_each_algorithm() {
        let all = limiter().describe();
        let json =
            |rule: usize, limit: usize| serde_json::to_value(&all[rule].limits[limit]).unwrap();
        assert_eq!(
            json(3, 2),
            serde_json::json!({
                "bucket": "tiers:api_key#3", "key": "api_key", "quota": "10000/day",
                "limit": 10000, "windowSeconds": 86_400, "algorithm": "fixed window",
            })
        );
        assert_eq!(json(2, 0)["algorithm"], "sliding window");
        assert_eq!(json(3, 1)["algorithm"], "token bucket");
        assert_eq!(json(6, 0)["algorithm"], "sliding window (exact)");
    }

    #[test]
    fn every_rule_in_order_with_its_limits() {
        let limiter = limiter();
        let chat = Policy::named("chat").per_ip("60/min").per_user("30/min");
        let _a = limiter.policy(chat.clone());
        let _b = limiter.policy(chat); // the same policy on a second route: listed once
        let all = limiter.describe();
        type Row<'a> = (RuleSource, Option<&'a str>, &'a str, bool, Vec<String>);
        let summary: Vec<Row<'_>> = all
            .iter()
            .map(|r| {
                (
                    r.source,
                    r.pattern.as_deref(),
                    r.policy.as_str(),
                    r.exempt,
                    r.limits
                        .iter()
                        .map(|l| {
                            format!(
                                "{} {} {}",
                                l.bucket,
                                l.key,
                                l.limit.map_or("per-request".into(), |l| l.to_string())
                            )
                        })
                        .collect(),
                )
            })
            .collect();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            summary,
            vec![
                (
                    RuleSource::Route,
                    Some("/api/cron/*"),
                    "exempt",
                    true,
                    vec![]
                ),
                (
                    RuleSource::Route,
                    Some("POST,PUT /api/templates/{id}/generate"),
                    "generate",
                    false,
                    s(&[
                        "generate:ip ip 300/min sliding",
                        "generate:user user 3000/h sliding"
                    ])
                ),
                (
                    RuleSource::Route,
                    Some("/*"),
                    "default",
                    false,
                    s(&["default:ip ip 500/min sliding"])
                ),
                (
                    RuleSource::Route,
                    Some("/v1/*"),
                    "tiers",
                    false,
                    s(&[
                        "tiers:api_key api_key per-request",
                        "tiers:api_key#2 api_key 100/min burst 20",
                        "tiers:api_key#3 api_key 10000/day fixed",
                    ])
                ),
                (
                    RuleSource::Global,
                    None,
                    "global",
                    false,
                    s(&["global global 1000/min sliding"])
                ),
                (
                    RuleSource::PerRoute,
                    None,
                    "chat",
                    false,
                    s(&["chat:ip ip 60/min sliding", "chat:user user 30/min sliding"])
                ),
                (
                    RuleSource::Bucket,
                    None,
                    "auth",
                    false,
                    s(&["auth direct 20/15min sliding"])
                ),
                (
                    RuleSource::Bucket,
                    None,
                    "sign-in-failures",
                    false,
                    s(&["sign-in-failures direct 5/30min exact"])
                ),
            ]
        );
        let generate = &all[1];
        assert_eq!(
            generate.path.as_deref(),
            Some("/api/templates/{id}/generate")
        );
        assert_eq!(generate.methods, vec![Method::POST, Method::PUT]);
        assert_eq!(all[2].path.as_deref(), Some("/*"));
        assert!(all[2].methods.is_empty());
        assert_eq!(
            all[3].limits[1].limit.unwrap().algorithm(),
            Algorithm::TokenBucket { burst: 20 }
        );
        assert_eq!(
            all[6].limits[0].limit.unwrap().quota(),
            Quota::parse("20/15min").unwrap()
        );
    }

    #[test]
    fn the_rule_a_request_falls_under() {
        let limiter = limiter();
        let rule = |m: Method, p: &str| limiter.describe_route(&m, p).map(|r| r.policy);
        assert_eq!(
            rule(Method::POST, "/api/templates/7/generate").as_deref(),
            Some("generate")
        );
        assert_eq!(
            rule(Method::GET, "/api/templates/7/generate").as_deref(),
            Some("default")
        );
        assert_eq!(
            rule(Method::POST, "/api/cron/daily").as_deref(),
            Some("exempt")
        );
        let only_v1 = Limiter::builder()
            .read_env(false)
            .route("/v1/*", Policy::named("v1").per_ip("1/s"))
            .build()
            .unwrap();
        assert_eq!(only_v1.describe_route(&Method::GET, "/other"), None);
        // A direct-use bucket is not a route.
        assert!(only_v1
            .describe()
            .iter()
            .all(|r| r.source == RuleSource::Route));
    }
}
