//! Configuration files (TOML and YAML) load onto the builder and enforce what they say.

mod common;

use std::io::Write;

use axum::routing::get;
use axum::Router;
use common::{clock_and_store, header, serve, status_of, times};
use tollgate::config::ConfigError;
use tollgate::{Limit, Limiter, LimiterBuilder, ManualClock, Quota, Refusal};

fn write_temp(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tollgate-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    path
}

/// The limiter a configuration file describes, on a memory store whose clock the test
/// moves, served by [`app`].
async fn serve_file(path: impl AsRef<std::path::Path>) -> (ManualClock, common::Server) {
    let (clock, store) = clock_and_store();
    let limiter = LimiterBuilder::from_config(path)
        .unwrap()
        .store(store)
        .build()
        .unwrap();
    (clock, serve(app(&limiter)).await)
}

fn app(limiter: &Limiter) -> Router {
    Router::new()
        .route("/v1/invoices", get(|| async { "invoices" }))
        .route("/v1/reports", get(|| async { "reports" }))
        .route("/v1/other", get(|| async { "other" }))
        .layer(limiter.layer())
}

#[tokio::test]
async fn seed_004_yaml_loads_as_printed_and_enforces_burst_then_refill() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/seed_004.yaml");
    let (clock, server) = serve_file(path).await;

    // /v1/reports: burst 2, then one token every 12 s (5/min).
    assert_eq!(server.statuses("/v1/reports", 3).await, vec![200, 200, 429]);
    let refused = server.get("/v1/reports").send().await.unwrap();
    assert_eq!(header(&refused, "retry-after"), "12");
    clock.advance(std::time::Duration::from_secs(12));
    assert_eq!(server.statuses("/v1/reports", 2).await, vec![200, 429]);

    // /v1/invoices: burst 20 on its own bucket, untouched by the reports above.
    assert_eq!(server.statuses("/v1/invoices", 20).await, times(200, 20));
    let refused = server.get("/v1/invoices").send().await.unwrap();
    assert_eq!(refused.status(), 429);
    // sustained 100/min: a token every 0.6 s, so Retry-After rounds up to 1.
    assert_eq!(header(&refused, "retry-after"), "1");
    assert_eq!(header(&refused, "x-ratelimit-limit"), "100");
}

#[tokio::test]
async fn the_gateway_global_limit_is_a_backstop_over_every_route() {
    let path = write_temp(
        "global.yaml",
        "routes:\n  - path: /*\n    rate_limit: { sustained: 100/min, burst: 100/s }\ngateway:\n  global_rate_limit:\n    sustained: 3/min\n",
    );
    let (_clock, server) = serve_file(&path).await;
    assert_eq!(server.status("/v1/invoices").await, 200);
    assert_eq!(server.status("/v1/reports").await, 200);
    assert_eq!(server.status("/v1/other").await, 200);
    assert_eq!(server.status("/v1/invoices").await, 429);
}

/// A file saved with a byte-order mark (as some Windows editors save UTF-8) reads as
/// without one, in both formats (a review: YAML refused seed 004's file as "more than
/// one document", and seed 004 would not start).
#[test]
fn a_byte_order_mark_is_not_part_of_the_file() {
    let page = include_str!("fixtures/seed_004.yaml");
    let toml = "[[routes]]\npath = \"/*\"\nlimits = [{ limit = \"5/min\" }]\n";
    for (name, text) in [("bom.yaml", page), ("bom.toml", toml)] {
        let plain = LimiterBuilder::from_config(write_temp(name, text)).unwrap();
        let path = write_temp(name, &format!("\u{feff}{text}"));
        let marked = LimiterBuilder::from_config(&path);
        assert!(marked.is_ok(), "{name}: {:?}", marked.err());
        let described = |b: LimiterBuilder| format!("{:?}", b.build().unwrap().describe());
        assert_eq!(described(marked.unwrap()), described(plain), "{name}");
    }
}

#[tokio::test]
async fn toml_routes_exemptions_keys_daily_caps_and_headers() {
    let path = write_temp(
        "table.toml",
        r#"
headers = { x_ratelimit = "unix_millis", ietf = false }
body = "code_details"

[[routes]]
path = "/v1/other"
exempt = true

[[routes]]
path = "/v1/*"
name = "api"
refund_statuses = [304]
limits = [
  { per = "api_key", limit = "2/min" },
  { per = "api_key", daily = "3/day" },
]
"#,
    );
    let (clock, server) = serve_file(&path).await;
    let key = |k: &'static str| move |r: reqwest::RequestBuilder| r.header("x-api-key", k);
    let a = key("key-a");
    // Exempt: never limited, no headers.
    for _ in 0..5 {
        let r = a(server.get("/v1/other")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-limit"), "");
    }
    let first = a(server.get("/v1/invoices")).send().await.unwrap();
    assert_eq!(first.status(), 200);
    // Reset in Unix milliseconds; no IETF fields.
    assert!(header(&first, "x-ratelimit-reset").len() >= 13);
    assert_eq!(header(&first, "ratelimit"), "");
    assert_eq!(
        a(server.get("/v1/reports")).send().await.unwrap().status(),
        200
    );
    let third = a(server.get("/v1/reports")).send().await.unwrap();
    assert_eq!(third.status(), 429);
    let body = third.text().await.unwrap();
    assert!(
        body.starts_with(r#"{"error":"Rate limit exceeded","code":"RATE_LIMIT_EXCEEDED""#),
        "{body}"
    );
    // Another key has its own budget.
    assert_eq!(
        key("key-b")(server.get("/v1/reports"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Once the rolling minute has passed (a segment counts until a minute after its last
    // admission), the daily cap (3) is what refuses key-a.
    clock.advance(std::time::Duration::from_secs(60));
    assert_eq!(
        a(server.get("/v1/reports")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        a(server.get("/v1/reports")).send().await.unwrap().status(),
        429
    );
    // `daily:` is a hard cap per rolling 24 hours, not a calendar day: key-a is still
    // refused just past the next 00:00 UTC (T0 is a midnight), and admitted a day after
    // its last admission.
    let secs = std::time::Duration::from_secs;
    assert_eq!(common::T0 % 86_400, 0);
    clock.advance(secs(86_400 - 60 + 1));
    assert_eq!(
        a(server.get("/v1/reports")).send().await.unwrap().status(),
        429
    );
    clock.advance(secs(59));
    assert_eq!(
        a(server.get("/v1/reports")).send().await.unwrap().status(),
        200
    );
}

#[test]
fn a_bad_quota_names_file_line_and_column() {
    let path = write_temp(
        "bad.yaml",
        "routes:\n  - path: /v1/invoices\n    rate_limit:\n      sustained: 100/fortnight\n",
    );
    let err = LimiterBuilder::from_config(&path).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ConfigError::Parse { line: Some(4), .. }),
        "{text}"
    );
    assert!(
        text.starts_with(&format!("{}:4:", path.display())),
        "{text}"
    );
    assert!(text.contains("fortnight"), "{text}");
    assert!(text.contains("routes[0].rate_limit"), "{text}");

    let path = write_temp(
        "bad.toml",
        "[[routes]]\npath = \"/x\"\nlimits = [{ per = \"ip\", limit = \"0/min\" }]\n",
    );
    let err = LimiterBuilder::from_config(&path).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ConfigError::Parse { line: Some(3), .. }),
        "{text}"
    );
    assert!(text.contains("at least 1"), "{text}");
}

#[test]
fn unknown_fields_keys_and_incomplete_rules_are_errors() {
    let typo = write_temp(
        "typo.yaml",
        "routes:\n  - path: /x\n    rate_limt: { sustained: 1/min }\n",
    );
    let text = LimiterBuilder::from_config(&typo).unwrap_err().to_string();
    assert!(text.contains("rate_limt") && text.contains(":3:"), "{text}");

    let key = write_temp(
        "key.yaml",
        "routes:\n  - path: /x\n    limits: [{ per: tenant, limit: 1/min }]\n",
    );
    let text = LimiterBuilder::from_config(&key).unwrap_err().to_string();
    assert!(text.contains("tenant:x-tenant-id"), "{text}");

    let burst = write_temp(
        "burst.yaml",
        "routes:\n  - path: /x\n    rate_limit: { burst: 20/s }\n",
    );
    let err = LimiterBuilder::from_config(&burst).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Rule { field, line: Some(3), .. }
            if field == "routes[0].rate_limit.burst (/x)"),
        "{err}"
    );

    let tie = write_temp("tie.yaml", "routes:\n  - { path: /x, name: a, rate_limit: { sustained: 1/min } }\n  - { path: /x, name: b, rate_limit: { sustained: 2/min } }\n");
    let err = Limiter::from_config(&tie).unwrap_err();
    assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("/x"), "{err}");
    assert!(err.to_string().contains("tie"), "{err}");

    let per = write_temp(
        "per.yaml",
        "buckets:\n  failures: { per: ip, limit: 5/30min }\n",
    );
    let err = LimiterBuilder::from_config(&per).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Rule { field, line: Some(2), .. }
            if field == "buckets.failures.per"),
        "{err}"
    );

    let unknown = write_temp("table.ini", "");
    assert!(matches!(
        Limiter::from_config(&unknown),
        Err(ConfigError::UnknownFormat { .. })
    ));
    assert!(matches!(
        Limiter::from_config("/nonexistent/x.toml"),
        Err(ConfigError::Read { .. })
    ));
}

/// `headers: { reset_at_retry: true }`: a refusal's `X-RateLimit-Reset` is when it can be
/// retried (what `Retry-After` says), not when the bucket is full again; the IETF `t` of
/// the refusing bucket says the same whatever the setting (draft 10: until more quota is
/// available). A token bucket of 5/min with a burst of 5, spent at once: a token is back
/// in 12 s, all five in 60 s.
#[tokio::test]
async fn reset_at_retry_makes_a_refusals_reset_its_retry() {
    for (reset_at_retry, expected_reset) in [(false, "60"), (true, "12")] {
        let path = write_temp(
            &format!("reset-{reset_at_retry}.yaml"),
            &format!(
                "headers: {{ x_ratelimit: seconds, reset_at_retry: {reset_at_retry} }}\n\
                 routes:\n  - path: /*\n    name: api\n    \
                 rate_limit: {{ sustained: 5/min, burst: 5/min }}\n"
            ),
        );
        let (_clock, server) = serve_file(&path).await;
        assert_eq!(server.statuses("/v1/invoices", 5).await, times(200, 5));
        let refused = server.get("/v1/invoices").send().await.unwrap();
        assert_eq!(refused.status(), 429);
        assert_eq!(header(&refused, "retry-after"), "12", "{reset_at_retry}");
        assert_eq!(
            header(&refused, "x-ratelimit-reset"),
            expected_reset,
            "{reset_at_retry}"
        );
        assert_eq!(header(&refused, "ratelimit"), r#""api-ip";r=0;t=12"#);
    }
}

/// `per: global` is one budget that every client spends: three clients of a 2/min rule
/// are refused on the third request between them.
#[tokio::test]
async fn per_global_is_one_budget_shared_by_every_client() {
    let path = write_temp(
        "per-global.yaml",
        "client_ip: { trusted_proxies: [127.0.0.1/32] }\n\
         routes:\n  - { path: /v1/*, name: api, limits: [{ per: global, limit: 2/min }] }\n",
    );
    let (_clock, server) = serve_file(&path).await;
    let mut got = Vec::new();
    for ip in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
        got.push(status_of(server.get("/v1/invoices").header("x-forwarded-for", ip)).await);
    }
    assert_eq!(got, [200, 200, 429]);
}

/// `algorithm: sliding` is the default rolling window, whatever the period: a window
/// shorter than ten milliseconds (fewer milliseconds than the default segments) builds as
/// it does without `algorithm:`.
#[test]
fn algorithm_sliding_is_the_default_window_even_under_ten_milliseconds() {
    let mut limits = Vec::new();
    for algorithm in ["", ", algorithm: sliding"] {
        let path = write_temp(
            "sliding-5ms.yaml",
            &format!(
                "routes:\n  - {{ path: /*, name: api, limits: [{{ limit: 2/5ms{algorithm} }}] }}\n"
            ),
        );
        let limiter = Limiter::from_config(&path).unwrap();
        limits.push(limiter.describe()[0].limits[0].limit);
    }
    let quota: Quota = "2/5ms".parse().unwrap();
    assert_eq!(limits, [Some(Limit::sliding(quota)); 2]);
}

/// A rule without `name:` is named after its pattern: letters and digits lowercased, `_`
/// and `.` kept, anything else one `-` between words (`GET /v1/Invoices` is
/// `get-v1-invoices`), `all` for a pattern without a word.
#[test]
fn unnamed_rules_are_named_after_their_pattern() {
    let path = write_temp(
        "unnamed.yaml",
        "routes:\n  - { path: /v1/Invoices, methods: [GET], limits: [{ limit: 5/min }] }\n  - { path: /v1/report_2024.csv, limits: [{ limit: 5/min }] }\n  - { path: /*, limits: [{ limit: 5/min }] }\n",
    );
    let limiter = Limiter::from_config(&path).unwrap();
    let mut policies: Vec<String> = limiter
        .describe()
        .iter()
        .map(|r| r.policy.clone())
        .collect();
    policies.sort();
    assert_eq!(policies, ["all", "get-v1-invoices", "v1-report_2024.csv"]);
}

/// `refund_statuses:` gives back the charge of a response of those statuses: a rule of
/// 1/min whose 200s are refunded admits every request.
#[tokio::test]
async fn refund_statuses_give_back_the_charge_of_those_responses() {
    let path = write_temp(
        "refund.yaml",
        "routes:\n  - { path: /*, name: api, refund_statuses: [200], limits: [{ limit: 1/min }] }\n",
    );
    let (_clock, server) = serve_file(&path).await;
    assert_eq!(server.statuses("/v1/invoices", 3).await, times(200, 3));
}

/// `headers: { x_ratelimit: none }` drops the `X-RateLimit-*` headers and keeps the IETF
/// fields (on by default); with `ietf: false` as well, responses carry neither.
#[tokio::test]
async fn x_ratelimit_none_keeps_the_ietf_fields_unless_they_are_off_too() {
    for (ietf, expected) in [("", r#""api-ip";r=4;t=60"#), (", ietf: false", "")] {
        let path = write_temp(
            "x-none.yaml",
            &format!(
                "headers: {{ x_ratelimit: none{ietf} }}\n\
                 routes:\n  - {{ path: /*, name: api, limits: [{{ limit: 5/min }}] }}\n"
            ),
        );
        let (_clock, server) = serve_file(&path).await;
        let response = server.get("/v1/invoices").send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-ratelimit-limit"), "", "{ietf}");
        assert_eq!(header(&response, "ratelimit"), expected, "{ietf}");
    }
}

/// `store.max_entries` bounds the memory store the file builds: with the smallest store,
/// a bucket holds at most 1024 keys at their limit (64 in each of 16 shards) and refuses
/// new keys beyond them for room; the default store holds all 2048.
#[tokio::test]
async fn store_max_entries_bounds_the_memory_store() {
    let buckets = "buckets:\n  sign-in: { limit: 1/30min }\n";
    let mut admitted = Vec::new();
    for store in ["", "store: { kind: memory, max_entries: 1024 }\n"] {
        let path = write_temp("max-entries.yaml", &format!("{store}{buckets}"));
        let limiter = Limiter::from_config(&path).unwrap();
        let (mut allowed, mut refused_for_room) = (0, 0);
        for i in 0..2048 {
            let decision = limiter.check("sign-in", &format!("key-{i}")).await.unwrap();
            if decision.allowed {
                allowed += 1;
            } else if decision.buckets[0].refusal == Some(Refusal::StoreFull) {
                refused_for_room += 1;
            }
        }
        assert_eq!(allowed + refused_for_room, 2048, "{store}");
        admitted.push(allowed);
    }
    // 2048 keys fill each shard's 64 (128 a shard on average).
    assert_eq!(admitted, [2048, 1024]);
}

/// A file applied to a builder that was given a store and a header style in code, and
/// whose `store:` and `headers:` say nothing, leaves both (a review: the store given was
/// replaced by a memory store of the file's own, a Redis store in code becoming one
/// budget per process, and `HeaderStyle::none()` by the default headers). A file that
/// names them sets them.
#[tokio::test]
async fn a_file_without_store_or_headers_keeps_those_given_in_code() {
    use tollgate::config::Config;
    use tollgate::HeaderStyle;
    let routes = "routes:\n  - { path: /*, name: api, limits: [{ limit: 5/min }] }\n";
    for (file, store_used, headers) in [
        (String::new(), true, ""),
        (
            "store: { kind: memory, max_entries: 2048 }\nheaders: { ietf: true }\n".to_string(),
            false,
            r#""api-ip";r=4;t=60"#,
        ),
    ] {
        let (_clock, store) = clock_and_store();
        let builder = Limiter::builder()
            .store(store.clone())
            .header_style(HeaderStyle::none());
        let config = Config::from_yaml(&format!("{file}{routes}")).unwrap();
        let limiter = config.apply(builder, "inline").unwrap().build().unwrap();
        let server = serve(app(&limiter)).await;
        let response = server.get("/v1/invoices").send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "ratelimit"), headers, "{file}");
        assert_eq!(store.len() == 1, store_used, "{file}");
    }
}

/// `burst:` is a count (its docs say so): `20` reads as `20/s` does, in YAML and TOML (a
/// review's `burst: 20` was "`20` has no `/`"); `0` is a burst of 0.
#[test]
fn a_burst_is_a_count_alone_or_a_quota() {
    use tollgate::config::Config;
    let yaml = |burst: &str| {
        Config::from_yaml(&format!(
            "routes:\n  - path: /x\n    rate_limit: {{ sustained: 100/min, burst: {burst} }}\n"
        ))
    };
    let toml = |burst: &str| {
        Config::from_toml(&format!(
            "[[routes]]\npath = \"/x\"\nrate_limit = {{ sustained = \"100/min\", burst = {burst} }}\n"
        ))
    };
    let routes = |config: Config| format!("{:?}", config.routes);
    let quota = routes(yaml("20/s").unwrap());
    assert!(quota.contains("burst: Some(Quota { count: 20"), "{quota}");
    assert_eq!(routes(yaml("20").unwrap()), quota);
    assert_eq!(routes(toml("20").unwrap()), quota);
    assert_eq!(routes(toml("\"20/s\"").unwrap()), quota);
    assert_eq!(routes(toml("\"20\"").unwrap()), quota);
    assert_eq!(routes(yaml("\"20\"").unwrap()), quota);
    for zero in [yaml("0").unwrap_err(), toml("0").unwrap_err()] {
        assert!(
            zero.to_string()
                .contains("a burst (bucket capacity) must be at least 1"),
            "{zero}"
        );
    }
}
