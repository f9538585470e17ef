//! Configuration files that must not be accepted: out-of-range values are typed errors at
//! the value, and what the builder finds wrong is pointed back at the rule of the file,
//! with file, line, column and field.

mod common;

use std::io::Write;

use tollgate::config::ConfigError;
use tollgate::config::{Config, ValueProblem, MIN_MAX_ENTRIES};
use tollgate::{BuildError, Limiter, LimiterBuilder};

fn write_temp(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tollgate-config-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    path
}

/// `(line, column, field, error)` of the located build error of a file `name` holding
/// `text` (see [`invalid`]).
fn build_error_in(name: &str, text: &str) -> (usize, usize, String, BuildError) {
    invalid(Limiter::from_config(write_temp(name, text)).unwrap_err())
}

/// `(line, column, field, problem)` of a `ConfigError::Value`.
fn value_error(err: ConfigError) -> (usize, usize, String, ValueProblem) {
    match err {
        ConfigError::Value {
            line: Some(line),
            column: Some(column),
            field,
            problem,
            ..
        } => (line, column, field, problem),
        other => panic!("not a located value error: {other:?} ({other})"),
    }
}

/// `(line, column, field, source)` of a `ConfigError::Invalid`.
fn invalid(err: ConfigError) -> (usize, usize, String, BuildError) {
    match err {
        ConfigError::Invalid {
            line: Some(line),
            column: Some(column),
            field,
            source,
            ..
        } => (line, column, field, *source),
        other => panic!("not a located build error: {other:?} ({other})"),
    }
}

const ROUTE: &str = "routes:\n  - { path: /*, name: api, limits: [{ per: ip, limit: 2/min }] }\n";

#[test]
fn a_store_too_small_to_limit_is_an_error_at_its_line() {
    for n in [0, 1, 2, MIN_MAX_ENTRIES - 1] {
        let path = write_temp(
            "small.yaml",
            &format!("store:\n  kind: memory\n  max_entries: {n}\n{ROUTE}"),
        );
        let err = Limiter::from_config(&path).unwrap_err();
        let text = err.to_string();
        assert_eq!(
            value_error(err),
            (
                3,
                16,
                "store.max_entries".into(),
                ValueProblem::TooFewEntries { value: n }
            )
        );
        assert!(
            text.starts_with(&format!(
                "{}:3:16: store.max_entries: a store of {n} entries is too small",
                path.display()
            )),
            "{text}"
        );
    }
    // The smallest accepted store still limits, alternating three keys.
    let path = write_temp(
        "smallest.toml",
        &format!("[store]\nmax_entries = {MIN_MAX_ENTRIES}\n[[routes]]\npath = \"/*\"\nlimits = [{{ per = \"ip\", limit = \"2/min\" }}]\n"),
    );
    assert!(Limiter::from_config(&path).is_ok());
    let err = Config::from_toml("[store]\nmax_entries = 1\n").unwrap_err();
    assert_eq!(
        value_error(err),
        (
            2,
            15,
            "store.max_entries".into(),
            ValueProblem::TooFewEntries { value: 1 }
        )
    );
}

#[test]
fn a_zero_timeout_divisor_or_patience_is_an_error_not_quietly_one() {
    let err = Config::from_yaml("store: { kind: env, timeout_ms: 0 }\n").unwrap_err();
    assert_eq!(
        value_error(err),
        (1, 33, "store.timeout_ms".into(), ValueProblem::ZeroTimeout)
    );
    let err = Config::from_toml("[store]\nkind = \"env\"\nfallback_divisor = 0\n").unwrap_err();
    let text = err.to_string();
    assert_eq!(
        value_error(err),
        (
            3,
            20,
            "store.fallback_divisor".into(),
            ValueProblem::ZeroDivisor
        )
    );
    assert!(
        text.starts_with("<toml>:3:20: store.fallback_divisor: "),
        "{text}"
    );
    let err = Config::from_yaml("store:\n  patience: 0\n").unwrap_err();
    assert_eq!(
        value_error(err),
        (2, 13, "store.patience".into(), ValueProblem::ZeroPatience)
    );
    assert!(
        Config::from_yaml("store: { timeout_ms: 1, fallback_divisor: 1, patience: 1 }\n").is_ok()
    );
    // A configuration changed in code is checked when it is applied.
    let mut config = Config::from_yaml(ROUTE).unwrap();
    config.store.fallback_divisor = Some(0);
    let err = config.apply(Limiter::builder(), "code").unwrap_err();
    assert!(
        matches!(&err, ConfigError::Value { problem: ValueProblem::ZeroDivisor, field, .. }
            if field == "store.fallback_divisor"),
        "{err}"
    );
}

#[test]
fn statuses_outside_100_to_599_are_errors_naming_the_entry() {
    let yaml =
        "routes:\n  - path: /*\n    limits: [{ limit: 5/min }]\n    count_only_statuses: [42]\n";
    let err = Config::from_yaml(yaml).unwrap_err();
    assert_eq!(
        value_error(err),
        (
            4,
            27,
            "routes[0].count_only_statuses[0]".into(),
            ValueProblem::NotAStatus(42)
        )
    );
    let toml = "[[routes]]\npath = \"/a\"\nlimits = [{ limit = \"5/min\" }]\n\n[[routes]]\npath = \"/*\"\nlimits = [{ limit = \"5/min\" }]\nrefund_statuses = [304, 700]\n";
    let err = Config::from_toml(toml).unwrap_err();
    let text = err.to_string();
    assert_eq!(
        value_error(err),
        (
            8,
            25,
            "routes[1].refund_statuses[1]".into(),
            ValueProblem::NotAStatus(700)
        )
    );
    assert_eq!(
        text,
        "<toml>:8:25: routes[1].refund_statuses[1]: 700 is not an HTTP status code: use 100-599 (for example 304 or 401)"
    );
    assert!(Config::from_yaml(
        "routes:\n  - { path: /*, limits: [{ limit: 5/min }], refund_statuses: [100, 599] }\n"
    )
    .is_ok());
}

#[test]
fn two_rules_that_tie_name_the_second_rule_line_and_column() {
    let path = write_temp(
        "tie.yaml",
        "routes:\n  - { path: /x, name: a, rate_limit: { sustained: 1/min } }\n  - { path: /y, name: c, rate_limit: { sustained: 1/min } }\n  - { path: /x, name: b, rate_limit: { sustained: 2/min } }\n",
    );
    let err = Limiter::from_config(&path).unwrap_err();
    let text = err.to_string();
    let (line, column, field, source) = invalid(err);
    assert_eq!(
        (line, column, field.as_str()),
        (4, 13, "routes[2].path (/x)")
    );
    assert!(matches!(source, BuildError::Route(_)), "{source}");
    assert!(
        text.starts_with(&format!(
            "{}:4:13: routes[2].path (/x): rules `/x` and `/x` tie",
            path.display()
        )),
        "{text}"
    );
}

#[test]
fn a_cidr_with_host_bits_names_its_entry() {
    let path = write_temp(
        "cidr.yaml",
        &format!("client_ip:\n  trusted_proxies:\n    - 10.0.0.0/8\n    - 192.168.1.1/24\n{ROUTE}"),
    );
    let err = Limiter::from_config(&path).unwrap_err();
    let text = err.to_string();
    let (line, column, field, source) = invalid(err);
    assert_eq!(
        (line, column, field.as_str()),
        (4, 7, "client_ip.trusted_proxies[1]")
    );
    assert!(matches!(source, BuildError::ClientIp(_)), "{source}");
    assert!(text.contains("192.168.1.0/24"), "{text}");
}

#[test]
fn a_zero_cost_names_the_cost() {
    let toml = "[[routes]]\npath = \"/*\"\nname = \"api\"\nlimits = [{ per = \"ip\", limit = \"5/min\" }]\n\n[[routes]]\npath = \"/heavy\"\nname = \"heavy\"\ncost = 0\nlimits = [{ per = \"ip\", limit = \"5/min\" }]\n";
    let (line, column, field, source) = build_error_in("cost.toml", toml);
    assert_eq!(
        (line, column, field.as_str()),
        (9, 8, "routes[1].cost (/heavy)")
    );
    assert!(matches!(source, BuildError::ZeroCost { .. }), "{source}");
    // A cost no limit can ever admit, likewise.
    let yaml = "routes:\n  - path: /*\n    cost: 10\n    limits: [{ per: ip, limit: 5/min }]\n";
    let (line, column, field, source) = build_error_in("cost.yaml", yaml);
    assert_eq!(
        (line, column, field.as_str()),
        (3, 11, "routes[0].cost (/*)")
    );
    assert!(
        matches!(source, BuildError::CostExceedsCapacity { .. }),
        "{source}"
    );
}

#[test]
fn per_user_without_an_identity_names_the_key_and_builds_with_one() {
    let yaml = "routes:\n  - path: /*\n    name: api\n    limits:\n      - { per: ip, limit: 50/min }\n      - { per: user, limit: 10/min }\n";
    let path = write_temp("user.yaml", yaml);
    let err = Limiter::from_config(&path).unwrap_err();
    let text = err.to_string();
    let (line, column, field, source) = invalid(err);
    assert_eq!(
        (line, column, field.as_str()),
        (6, 16, "routes[0].limits[1].per (/*)")
    );
    assert!(matches!(source, BuildError::NoIdentity { .. }), "{source}");
    assert!(text.contains(".identity("), "{text}");
    // With the identity added in code, the file builds.
    let limiter = Limiter::from_config_with(&path, |b| b.identity(|_| None)).unwrap();
    assert_eq!(limiter.describe().len(), 1);
    // `default_key: user` is blamed where it is set.
    let yaml = "default_key: user\nroutes:\n  - { path: /*, name: api, rate_limit: { sustained: 5/min } }\n";
    let (line, column, field, _) = build_error_in("default-user.yaml", yaml);
    assert_eq!((line, column, field.as_str()), (1, 14, "default_key"));
    // A global limit per user.
    let yaml = "global:\n  - { per: ip, limit: 100/min }\n  - { per: user, limit: 50/min }\n";
    let (line, column, field, _) = build_error_in("global-user.yaml", yaml);
    assert_eq!((line, column, field.as_str()), (3, 12, "global[1].per"));
}

#[test]
fn bad_bucket_and_policy_names_name_their_field() {
    let yaml = "routes:\n  - path: /*\n    name: api\n    bucket: shared bucket!\n    limits: [{ limit: 5/min }]\n";
    let path = write_temp("bucket.yaml", yaml);
    let err = Limiter::from_config(&path).unwrap_err();
    let text = err.to_string();
    let (line, column, field, source) = invalid(err);
    assert_eq!(
        (line, column, field.as_str()),
        (4, 13, "routes[0].bucket (/*)")
    );
    assert!(matches!(source, BuildError::BadName { .. }), "{source}");
    assert!(
        text.starts_with(&format!(
            "{}:4:13: routes[0].bucket (/*): `shared bucket!` is not a usable",
            path.display()
        )),
        "{text}"
    );
    let toml = "[buckets.\"sign in\"]\nlimit = \"5/30min\"\n";
    let (line, _, field, source) = build_error_in("direct.toml", toml);
    assert_eq!((line, field.as_str()), (1, "buckets.sign in"));
    assert!(matches!(source, BuildError::BadName { .. }), "{source}");
    // `override` is where per-key overrides live: a policy of that name would share their
    // keys (its token bucket and an override's window overwrote each other: no limit held).
    let yaml = "routes:\n  - { path: /v1/reports, name: override, limits: [{ limit: 5/min }] }\n";
    let (line, column, field, source) = build_error_in("override.yaml", yaml);
    assert_eq!(
        (line, column, field.as_str()),
        (2, 32, "routes[0].name (/v1/reports)")
    );
    assert!(
        matches!(source, BuildError::ReservedName { .. }),
        "{source}"
    );
    for built in [
        Limiter::builder()
            .route("/*", tollgate::Policy::named("override").per_ip("5/min"))
            .build(),
        Limiter::builder()
            .route(
                "/*",
                tollgate::Policy::named("reports")
                    .bucket("override")
                    .per_ip("5/min"),
            )
            .build(),
        Limiter::builder().bucket("override", "5/min").build(),
    ] {
        let err = built.unwrap_err();
        assert!(matches!(err, BuildError::ReservedName { .. }), "{err}");
    }
    // Two rules sharing a bucket with different limits: the second one.
    let yaml = "routes:\n  - { path: /a, bucket: auth, limits: [{ limit: 5/min }] }\n  - { path: /b, bucket: auth, limits: [{ limit: 6/min }] }\n";
    let (line, column, field, source) = build_error_in("shared.yaml", yaml);
    assert_eq!(
        (line, column, field.as_str()),
        (3, 25, "routes[1].bucket (/b)")
    );
    assert!(
        matches!(source, BuildError::SharedBucketMismatch { .. }),
        "{source}"
    );
}

#[test]
fn incomplete_rules_point_at_the_field() {
    let path = write_temp(
        "burst.yaml",
        "routes:\n  - path: /x\n    rate_limit: { burst: 20/s }\n",
    );
    let err = LimiterBuilder::from_config(&path).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, ConfigError::Rule { line: Some(3), column: Some(26), field, .. }
            if field == "routes[0].rate_limit.burst (/x)"),
        "{err:?}"
    );
    assert!(
        text.starts_with(&format!(
            "{}:3:26: routes[0].rate_limit.burst (/x): `burst` needs `sustained`",
            path.display()
        )),
        "{text}"
    );
}

#[test]
fn errors_from_rules_added_in_code_name_the_limiter() {
    let path = write_temp("code.yaml", ROUTE);
    let err = Limiter::from_config_with(&path, |b| {
        b.route("/*", tollgate::Policy::named("again").per_ip("1/min"))
    })
    .unwrap_err();
    // The rule in code ties with the file's: the file's rule is the first of the two.
    assert!(
        matches!(&err, ConfigError::Invalid { field, .. } if field == "limiter"),
        "{err}"
    );
}

/// What `LimiterBuilder::from_config(..)?.identity(..).build()` returns: one error type
/// (`?` turns the file's `ConfigError` into a `BuildError`).
fn from_builder(path: &std::path::Path) -> Result<Limiter, BuildError> {
    LimiterBuilder::from_config(path)?
        .identity(common::user_header)
        .build()
}

#[test]
fn a_build_error_after_from_config_keeps_the_file_line_and_field() {
    // The builder finds the CIDR wrong at `build()`, after code added the identity.
    let path = write_temp(
        "builder-cidr.yaml",
        &format!("client_ip:\n  trusted_proxies:\n    - 10.0.0.0/33\n{ROUTE}"),
    );
    let err = from_builder(&path).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "{}:3:7: client_ip.trusted_proxies[0]: ",
            path.display()
        )),
        "{text}"
    );
    assert!(text.contains("10.0.0.0/33"), "{text}");
    let BuildError::Config(config) = err else {
        panic!("not a configuration error: {err:?}");
    };
    let (line, column, field, source) = invalid(*config);
    assert_eq!(
        (line, column, field.as_str()),
        (3, 7, "client_ip.trusted_proxies[0]")
    );
    assert!(matches!(source, BuildError::ClientIp(_)), "{source}");

    // A rule added in code that ties with the file's: the file is still named.
    let path = write_temp("builder-code.yaml", ROUTE);
    let err = LimiterBuilder::from_config(&path)
        .unwrap()
        .route("/*", tollgate::Policy::named("again").per_ip("1/min"))
        .build()
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{}: limiter: ", path.display())),
        "{err}"
    );

    // Errors of the file itself come through the same `?`, with their line.
    let path = write_temp(
        "builder-value.yaml",
        &format!("store:\n  timeout_ms: 0\n{ROUTE}"),
    );
    let err = from_builder(&path).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{}:2:", path.display())),
        "{err}"
    );
    assert!(
        matches!(&err, BuildError::Config(c) if matches!(**c, ConfigError::Value { .. })),
        "{err:?}"
    );
}

#[test]
fn a_bad_header_name_in_any_header_key_is_an_error_at_its_entry() {
    // `tenant:` was read by a function that looked the header up by a name no header can
    // have: it built, and limited nothing.
    for per in ["tenant", "api_key", "header"] {
        let path = write_temp(
            &format!("bad-{per}.yaml"),
            &format!(
                "routes:\n  - {{ path: /*, name: api, limits: [{{ per: \"{per}:bad header\", limit: 1/min }}] }}\n"
            ),
        );
        let err = Limiter::from_config(&path).unwrap_err();
        let (line, _, field, source) = invalid(err);
        assert_eq!(
            (line, field.as_str()),
            (2, "routes[0].limits[0].per (/*)"),
            "{per}"
        );
        assert!(
            matches!(&source, BuildError::BadHeaderName { header, .. } if header == "bad header"),
            "{per}: {source}"
        );
    }
}

#[tokio::test]
async fn a_tenant_header_that_is_not_utf8_is_still_counted() {
    use tower::ServiceExt;
    let path = write_temp(
        "tenant.yaml",
        "routes:\n  - { path: /*, name: api, limits: [{ per: \"tenant:x-tenant\", limit: 2/min }] }\n",
    );
    let limiter = Limiter::from_config(&path).unwrap();
    let svc = tower::ServiceBuilder::new()
        .layer(limiter.layer())
        .service(tower::service_fn(common::echo));
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let mut req = common::request("/x", Some("192.0.2.1:5000"), None);
        req.headers_mut().insert(
            "x-tenant",
            http::HeaderValue::from_bytes(b"acme\xff").unwrap(),
        );
        statuses.push(svc.clone().oneshot(req).await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 429]);
}

#[test]
fn a_bucket_given_twice_is_an_error_not_the_last_one_kept() {
    let path = write_temp(
        "twice.yaml",
        &format!(
            "{ROUTE}buckets:\n  sign-in: {{ limit: 5/min }}\n  sign-in: {{ limit: 500/min }}\n"
        ),
    );
    let err = Limiter::from_config(&path).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("`sign-in` is given twice"), "{text}");
    assert!(text.starts_with(&format!("{}:", path.display())), "{text}");
}

#[test]
fn a_status_both_given_back_and_counted_is_an_error() {
    // Accepted, the refund won: 5 responses of 200 admitted on a 2/min rule that counts
    // only 200s.
    let yaml = "routes:\n  - path: /*\n    limits: [{ limit: 2/min }]\n    refund_statuses: [200]\n    count_only_statuses: [401, 200]\n";
    let err = Config::from_yaml(yaml).unwrap_err();
    assert_eq!(
        value_error(err),
        (
            5,
            32,
            "routes[0].count_only_statuses[1]".into(),
            ValueProblem::RefundedAndCounted(200)
        )
    );
}

/// A TOML error names the field, as a YAML one does, with its line and column.
#[test]
fn toml_errors_name_the_field() {
    let cases = [
        (
            "[[routes]]\npath = \"/*\"\nlimits = [{ per = \"ip\", limit = \"0/min\" }]\n",
            "routes[0].limits[0].limit: ",
            3,
        ),
        (
            "[[routes]]\npath = \"/*\"\nlimitz = []\n",
            "routes[0].limitz: unknown field `limitz`",
            3,
        ),
        ("[store]\nkind = \"memry\"\n", "store.kind: ", 2),
    ];
    for (toml, field, expected_line) in cases {
        match Config::from_toml(toml).unwrap_err() {
            ConfigError::Parse { line, message, .. } => {
                assert!(message.starts_with(field), "{toml}: {message}");
                assert_eq!(line, Some(expected_line), "{toml}: {message}");
            }
            other => panic!("{toml}: not a parse error: {other}"),
        }
    }
}

/// A value that does not parse inside a YAML mapping is placed at its own field, as in
/// TOML: serde_yaml_ng names and places only the mapping around it (a review got
/// `4:7: routes[0].rate_limit` for a bad `burst` on line 5: the line of the valid
/// `sustained`, and no `.burst`).
#[test]
fn a_yaml_value_that_does_not_parse_is_placed_at_its_field() {
    let cases = [
        (
            "routes:\n  - path: /v1/invoices\n    rate_limit:\n      sustained: 100/min\n      burst: 20/fortnight\n",
            "routes[0].rate_limit.burst: `20/fortnight`",
            (5, 14),
        ),
        (
            "routes:\n  - path: /x\n    limits:\n      - per: ip\n        limit: 5/fortnight\n",
            "routes[0].limits[0].limit: `5/fortnight`",
            (5, 16),
        ),
        (
            "routes:\n  - path: /x\n    rate_limit: { sustained: 100/fortnight }\n",
            "routes[0].rate_limit.sustained: `100/fortnight`",
            (3, 30),
        ),
        (
            "routes:\n  - path: /x\n    limits: [{ per: ip, limit: 0/min }]\n",
            "routes[0].limits[0].limit: ",
            (3, 32),
        ),
        // A burst of 0 is told as one, not as a quota of 0 with its advice to exempt the
        // route (a review's `burst: 0/s`).
        (
            "routes:\n  - path: /x\n    rate_limit: { sustained: 100/min, burst: 0/s }\n",
            "routes[0].rate_limit.burst: `0/s`: a burst (bucket capacity) must be at least 1",
            (3, 46),
        ),
    ];
    for (yaml, field, (line, column)) in cases {
        match Config::from_yaml(yaml).unwrap_err() {
            ConfigError::Parse {
                line: at_line,
                column: at_column,
                message,
                ..
            } => {
                assert!(message.starts_with(field), "{yaml}: {message}");
                assert_eq!(
                    (at_line, at_column),
                    (Some(line), Some(column)),
                    "{yaml}: {message}"
                );
            }
            other => panic!("{yaml}: not a parse error: {other}"),
        }
    }
}

/// An entry is `limit:` (with `algorithm:`) or `sustained`/`burst`/`daily`: one with both
/// was two limits, `algorithm` applying to one only (`algorithm: fixed` left the daily cap
/// rolling). It is refused at the first field of the trio.
#[test]
fn an_entry_with_limit_and_the_trio_is_an_error_at_the_trio() {
    for (entry, field, column) in [
        (
            "{ per: ip, limit: 5/min, sustained: 7/min, algorithm: fixed }",
            "sustained",
            50,
        ),
        (
            "{ limit: 5/min, daily: 9/day, algorithm: fixed }",
            "daily",
            37,
        ),
        ("{ limit: 5/min, burst: 3/s }", "burst", 37),
    ] {
        let yaml = format!("routes:\n  - path: /x\n    limits: [{entry}]\n");
        let err = LimiterBuilder::from_config(write_temp("mixed.yaml", &yaml)).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, ConfigError::Rule { line: Some(3), column: Some(c), field: f, .. }
                if *c == column && *f == format!("routes[0].limits[0].{field} (/x)")),
            "{entry}: {err:?}"
        );
        assert!(
            text.contains(&format!("`{field}` beside `limit`")),
            "{text}"
        );
    }
}

/// `daily:` is a cap per day: another window there was taken as it stood (`daily: 10/min`
/// capped 10 a minute, where a cap of 10 a day was meant or a `limit:`), without a word.
#[test]
fn a_daily_cap_over_another_window_than_a_day_is_an_error_at_it() {
    for (rate, accepted) in [
        ("10/min", false),
        ("1000/h", false),
        ("100/2d", false),
        ("10000/day", true),
        ("10000/24h", true),
        ("10000/1d", true),
    ] {
        let yaml = format!(
            "routes:\n  - path: /x\n    rate_limit: {{ sustained: 10/min, daily: {rate} }}\n"
        );
        let result = LimiterBuilder::from_config(write_temp("daily.yaml", &yaml));
        match result {
            Ok(_) => assert!(accepted, "{rate} accepted"),
            Err(err) => {
                assert!(!accepted, "{rate}: {err}");
                let text = err.to_string();
                assert!(
                    matches!(&err, ConfigError::Rule { line: Some(3), field, .. }
                        if field == "routes[0].rate_limit.daily (/x)"),
                    "{rate}: {err:?}"
                );
                assert!(
                    text.contains(&format!("`{rate}`: `daily` is a cap per day")),
                    "{text}"
                );
            }
        }
    }
}

/// A rule without `name:` is named after its pattern, and two patterns can give one name
/// (`/v1/items` and `/v1/items/*` are both `v1-items`): one name would be one budget, so
/// the later rule must be named, at its line.
#[test]
fn unnamed_rules_whose_names_coincide_are_an_error_at_the_later_one() {
    let cases = [
        (
            "routes:\n  - { path: /v1/items, limits: [{ per: ip, limit: 3/min }] }\n  - { path: /v1/items/*, limits: [{ per: ip, limit: 3/min }] }\n",
            "`v1-items` after its pattern, and the rule for `/v1/items` spends",
        ),
        (
            "routes:\n  - { path: /a-b, limits: [{ per: ip, limit: 3/min }] }\n  - { path: /a/b, limits: [{ per: ip, limit: 9/min }] }\n",
            "`a-b` after its pattern, and the rule for `/a-b` spends",
        ),
        // A named rule later in the file: the unnamed one is to name.
        (
            "routes:\n  - { path: /z, limits: [{ per: ip, limit: 3/min }] }\n  - { path: /x/z, limits: [{ per: ip, limit: 3/min }] }\n  - { path: /y, name: x-z, limits: [{ per: ip, limit: 3/min }] }\n",
            "`x-z` after its pattern, and the rule for `/y` spends",
        ),
        (
            "global:\n  - { limit: 100/s }\nroutes:\n  - { path: /global, limits: [{ per: ip, limit: 3/min }] }\n",
            "`global` after its pattern, and the file's global limits spend",
        ),
    ];
    for (i, (text, says)) in cases.into_iter().enumerate() {
        let path = write_temp(&format!("coincide-{i}.yaml"), text);
        let err = LimiterBuilder::from_config(&path).unwrap_err();
        let line = text.lines().count() - usize::from(i == 2);
        assert!(
            matches!(&err, ConfigError::Rule { line: Some(l), .. } if *l == line),
            "{i}: {err:?}"
        );
        assert!(err.to_string().contains(says), "{i}: {err}");
    }
    // Two rules for one route (however spelt) are a tie, and are reported as one.
    let tie = write_temp(
        "coincide-tie.yaml",
        "routes:\n  - { path: '/a/{id}', limits: [{ per: ip, limit: 3/min }] }\n  - { path: '/a/:id', limits: [{ per: ip, limit: 3/min }] }\n",
    );
    let err = Limiter::from_config(&tie).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Invalid { line: Some(3), .. })
            && !err.to_string().contains("after its pattern"),
        "{err:?}"
    );
    // With different limits too: the tie is what is wrong, not the bucket their names
    // share (which was said first, and renaming one rule then led to the tie).
    let tie = write_temp(
        "coincide-tie-limits.yaml",
        "routes:\n  - { path: /a/*, limits: [{ per: ip, limit: 5/min }] }\n  - { path: /a/*, limits: [{ per: ip, limit: 6/min }] }\n",
    );
    let err = Limiter::from_config(&tie).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Invalid { line: Some(3), .. })
            && err.to_string().contains("rules `/a/*` and `/a/*` tie"),
        "{err:?}"
    );
    // Budgets of their own (`bucket:`) share nothing, whatever the names.
    let own = write_temp(
        "coincide-own-bucket.yaml",
        "routes:\n  - { path: /v1/items, limits: [{ per: ip, limit: 3/min }] }\n  - { path: /v1/items/*, bucket: item, limits: [{ per: ip, limit: 3/min }] }\n",
    );
    Limiter::from_config(&own).unwrap();
    // Named, the same two patterns have a budget each; one `name:` twice still shares.
    let named = write_temp(
        "coincide-named.yaml",
        "routes:\n  - { path: /v1/items, limits: [{ per: ip, limit: 3/min }] }\n  - { path: /v1/items/*, name: item, limits: [{ per: ip, limit: 3/min }] }\n  - { path: /v2/*, name: item, limits: [{ per: ip, limit: 3/min }] }\n",
    );
    let limiter = Limiter::from_config(&named).unwrap();
    let buckets: Vec<String> = limiter
        .describe()
        .iter()
        .map(|r| r.limits[0].bucket.clone())
        .collect();
    assert_eq!(buckets, ["v1-items:ip", "item:ip", "item:ip"]);
}

/// `global:` entries of one key are one policy, `global-<kind>`, with a bucket per limit
/// (`#2` for the second), not two policies of one name that the builder refuses.
#[tokio::test]
async fn global_limits_of_one_key_are_one_policy() {
    let path = write_temp(
        "global-two.yaml",
        "global:\n  - { per: ip, limit: 5/min }\n  - { per: ip, limit: 50/h, when_full: evict_limited }\n",
    );
    let limiter = Limiter::from_config(&path).unwrap();
    let described = limiter.describe();
    let global: Vec<_> = described
        .iter()
        .filter(|r| r.policy == "global-ip")
        .collect();
    assert_eq!(global.len(), 1, "{described:?}");
    let limits: Vec<(&str, String)> = global[0]
        .limits
        .iter()
        .map(|l| (l.bucket.as_str(), l.limit.unwrap().quota().to_string()))
        .collect();
    assert_eq!(
        limits,
        [
            ("global-ip:ip", "5/min".into()),
            ("global-ip:ip#2", "50/h".into())
        ]
    );
    // Two headers of one kind: one policy, each limit keyed by its own header (the second
    // header's requests were keyed by the first's, and went unlimited).
    let headers = write_temp(
        "global-two-headers.yaml",
        "global:\n  - { per: 'api_key:x-a', limit: 1/min }\n  - { per: 'api_key:x-b', limit: 1/min }\n",
    );
    let limiter = Limiter::from_config(&headers).unwrap();
    let svc = |limiter: &Limiter| {
        tower::ServiceBuilder::new()
            .layer(limiter.layer())
            .service(tower::service_fn(|_req: http::Request<String>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
            }))
    };
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let mut req = http::Request::get("/x")
            .header("x-b", "key-b")
            .body(String::new())
            .unwrap();
        req.extensions_mut()
            .insert(std::net::SocketAddr::from(([192, 0, 2, 1], 4000)));
        let response = tower::ServiceExt::oneshot(svc(&limiter), req)
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [200, 429]);
    // One policy has one `when_full:`: two that differ are an error at the second.
    let clash = write_temp(
        "global-clash.yaml",
        "global:\n  - { per: ip, limit: 5/min, when_full: evict_limited }\n  - { per: ip, limit: 50/h, when_full: refuse_new_keys }\n",
    );
    let err = LimiterBuilder::from_config(&clash).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Rule { line: Some(3), field, .. } if field == "global[1].when_full"),
        "{err:?}"
    );
}

/// Settings that could never take effect are errors at their field, not silence: limits
/// or what only a charge uses on a route never charged, and a method left blank (which
/// would have made the rule one for every method).
#[test]
fn settings_that_would_do_nothing_are_errors_at_their_field() {
    let cases = [
        (
            "routes:\n  - { path: /hook, exempt: true, cost: 5 }\n",
            "routes[0].cost (/hook)",
            "an exempt route is never charged: `cost:` does nothing on it",
        ),
        (
            "routes:\n  - { path: /hook, exempt: true, bucket: shared }\n",
            "routes[0].bucket (/hook)",
            "`bucket:` does nothing",
        ),
        (
            "routes:\n  - { path: /hook, exempt: true, refund_statuses: [304] }\n",
            "routes[0].refund_statuses (/hook)",
            "`refund_statuses:` does nothing",
        ),
        (
            "routes:\n  - { path: /hook, exempt: true, limits: [{ limit: 3/min }] }\n",
            "routes[0].exempt (/hook)",
            "an exempt route takes no limits",
        ),
        (
            "routes:\n  - { path: /hook, exempt: true, rate_limit: { sustained: 3/min } }\n",
            "routes[0].exempt (/hook)",
            "an exempt route takes no limits",
        ),
        (
            "routes:\n  - { path: /a, methods: [''], limits: [{ per: ip, limit: 3/min }] }\n",
            "routes[0].methods[0] (/a)",
            "an empty method",
        ),
    ];
    for (i, (text, field, says)) in cases.into_iter().enumerate() {
        let path = write_temp(&format!("does-nothing-{i}.yaml"), text);
        let err = LimiterBuilder::from_config(&path).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Rule { line: Some(2), field: f, .. } if f == field),
            "{i}: {err:?}"
        );
        assert!(err.to_string().contains(says), "{i}: {err}");
    }
}

#[test]
fn a_blank_or_spaced_key_prefix_is_an_error_at_its_value() {
    for (yaml, column) in [
        ("store: { kind: env, prefix: \"\" }\n", 29),
        ("store: { kind: env, prefix: \"my app:\" }\n", 29),
    ] {
        let err = Config::from_yaml(yaml).unwrap_err();
        assert_eq!(
            value_error(err),
            (1, column, "store.prefix".into(), ValueProblem::BadPrefix),
            "{yaml}"
        );
    }
    assert!(Config::from_yaml("store: { kind: env, prefix: \"tollgate:billing:\" }\n").is_ok());
}

/// A header key with its header name left blank (`tenant:`, `header: `, `api_key:`) is an
/// error where it is written, saying what to write: not a key on a header no request has.
#[test]
fn a_header_key_without_its_header_is_an_error_at_the_key() {
    for (per, what) in [
        ("tenant:", "tenant"),
        ("header: ", "header"),
        ("api_key:", "api_key"),
    ] {
        let yaml =
            format!("routes:\n  - path: /*\n    limits: [{{ per: \"{per}\", limit: 1/min }}]\n");
        match Config::from_yaml(&yaml).unwrap_err() {
            ConfigError::Parse { line, message, .. } => {
                assert_eq!(line, Some(3), "{per}: {message}");
                let says = format!(
                    "`{}`: say which header, as in `{what}:x-tenant-id`",
                    per.trim()
                );
                assert!(message.contains(&says), "{per}: {message}");
            }
            other => panic!("{per}: not a parse error: {other:?}"),
        }
    }
}

/// `buckets:` written as a list rather than a map of names is an error that says what
/// was expected; a YAML error shows its location once, in front.
#[test]
fn buckets_that_are_not_a_map_say_a_map_was_expected() {
    let err = Config::from_yaml("buckets:\n  - sign-in\n").unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, ConfigError::Parse { line: Some(2), column: Some(3), message, .. }
            if message == "buckets: invalid type: sequence, expected a map of names to limits"),
        "{err:?}"
    );
    assert_eq!(
        text,
        "<yaml>:2:3: buckets: invalid type: sequence, expected a map of names to limits"
    );
}

/// A global limit without a key (`per:` left out, or `per: global`) is the one bucket
/// every request spends, the policy `global`, not a policy per key kind; `when_full:` on
/// it is an error at the field, where the global limits with a key may each repeat the
/// same `when_full:`.
#[test]
fn global_limits_without_a_key_are_the_global_policy() {
    let path = write_temp(
        "global-keyless.yaml",
        "global:\n  - { limit: 5/min }\n  - { per: global, limit: 50/h }\n",
    );
    let limiter = Limiter::from_config(&path).unwrap();
    let described: Vec<(String, Vec<String>)> = limiter
        .describe()
        .iter()
        .map(|r| {
            (
                r.policy.clone(),
                r.limits.iter().map(|l| l.bucket.clone()).collect(),
            )
        })
        .collect();
    // (The second bucket is named as any second limit of a kind is: `<name>:<kind>#2`.)
    assert_eq!(
        described,
        [(
            "global".to_string(),
            vec!["global".to_string(), "global:global#2".to_string()]
        )]
    );
    for per in ["", "per: global, "] {
        let path = write_temp(
            "global-when-full.yaml",
            &format!("global:\n  - {{ {per}limit: 5/min, when_full: evict_limited }}\n"),
        );
        let err = LimiterBuilder::from_config(&path).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Rule { line: Some(2), field, .. } if field == "global[0].when_full"),
            "{per}: {err:?}"
        );
    }
    let path = write_temp(
        "global-same-when-full.yaml",
        "global:\n  - { per: ip, limit: 5/min, when_full: evict_limited }\n  - { per: ip, limit: 50/h, when_full: evict_limited }\n",
    );
    Limiter::from_config(&path).unwrap();
}

/// The global limits with a key are the policies `global-<kind>`, not `global`: an
/// unnamed rule for `/global` beside them has a budget of its own and builds.
#[test]
fn a_rule_for_global_beside_keyed_global_limits_builds() {
    let path = write_temp(
        "global-route-keyed.yaml",
        "global:\n  - { per: ip, limit: 100/s }\nroutes:\n  - { path: /global, limits: [{ per: ip, limit: 3/min }] }\n",
    );
    let limiter = Limiter::from_config(&path).unwrap();
    let policies: Vec<String> = limiter
        .describe()
        .iter()
        .map(|r| r.policy.clone())
        .collect();
    assert_eq!(policies, ["global", "global-ip"]);
}

/// A limit without `per:` (keyed by `default_key`) before the limit that needs an identity
/// is not the one blamed: the error is at the `per: user` entry.
#[test]
fn per_user_after_a_limit_without_per_names_the_user_entry() {
    let yaml = "routes:\n  - path: /*\n    limits:\n      - { limit: 50/min }\n      - { per: user, limit: 10/min }\n";
    let (line, column, field, source) = build_error_in("user-after-default.yaml", yaml);
    assert_eq!(
        (line, column, field.as_str()),
        (5, 16, "routes[0].limits[1].per (/*)")
    );
    assert!(matches!(source, BuildError::NoIdentity { .. }), "{source}");
}

/// Route patterns the builder refuses name the part at fault: the methods of a rule with
/// a method that is no method, the path of one whose path is malformed, and the path of a
/// rule that more specific rules always beat.
#[test]
fn a_refused_pattern_names_its_methods_or_its_path() {
    for (name, yaml, at) in [
        (
            "lowercase-method.yaml",
            "routes:\n  - { path: /a, limits: [{ limit: 5/min }] }\n  - { path: /b, methods: [get], limits: [{ limit: 5/min }] }\n",
            (3, 26, "routes[1].methods (get /b)"),
        ),
        (
            "bad-path.yaml",
            "routes:\n  - { path: /a, limits: [{ limit: 5/min }] }\n  - { path: b/c, limits: [{ limit: 5/min }] }\n",
            (3, 13, "routes[1].path (b/c)"),
        ),
        (
            "never-matches.yaml",
            "routes:\n  - { path: /x, name: a, methods: [GET], limits: [{ limit: 5/min }] }\n  - { path: '/x/{id}', name: b, methods: [GET], limits: [{ limit: 5/min }] }\n  - { path: '/x/{id}/*', name: c, methods: [GET], limits: [{ limit: 5/min }] }\n  - { path: '/x/*', name: d, methods: [GET], limits: [{ limit: 5/min }] }\n",
            (5, 13, "routes[3].path (GET /x/*)"),
        ),
    ] {
        let (line, column, field, source) = build_error_in(name, yaml);
        assert_eq!((line, column, field.as_str()), at, "{name}");
        assert!(matches!(source, BuildError::Route(_)), "{name}: {source}");
    }
}

/// An IPv6 prefix longer than 128 bits names `client_ip.ipv6_prefix`.
#[test]
fn an_ipv6_prefix_over_128_names_its_field() {
    let (line, column, field, source) = build_error_in(
        "ipv6-prefix.yaml",
        &format!("client_ip:\n  ipv6_prefix: 129\n{ROUTE}"),
    );
    assert_eq!(
        (line, column, field.as_str()),
        (2, 16, "client_ip.ipv6_prefix")
    );
    assert!(matches!(source, BuildError::ClientIp(_)), "{source}");
}

/// A bucket added in code under the name of one of the file's `buckets:` names the
/// file's bucket.
#[test]
fn a_bucket_added_in_code_twice_names_the_files_bucket() {
    let path = write_temp(
        "bucket-in-code.yaml",
        &format!("{ROUTE}buckets:\n  sign-in: {{ limit: 5/min }}\n"),
    );
    let err = Limiter::from_config_with(&path, |b| b.bucket("sign-in", "9/min")).unwrap_err();
    let (line, column, field, source) = invalid(err);
    assert_eq!((line, column, field.as_str()), (4, 12, "buckets.sign-in"));
    assert!(
        matches!(&source, BuildError::DuplicateBucket { name } if name == "sign-in"),
        "{source}"
    );
}

/// An unnamed rule whose pattern gives it a reserved name names its path, not an earlier
/// rule's.
#[test]
fn a_reserved_name_from_a_pattern_names_that_rules_path() {
    let (line, column, field, source) = build_error_in("reserved-from-path.yaml",
        "routes:\n  - { path: /a, limits: [{ limit: 5/min }] }\n  - { path: /override, limits: [{ limit: 5/min }] }\n",);
    assert_eq!(
        (line, column, field.as_str()),
        (3, 13, "routes[1].path (/override)")
    );
    assert!(
        matches!(source, BuildError::ReservedName { .. }),
        "{source}"
    );
}

/// Three rules share a bucket and the third declares other limits: the third is named,
/// not the second that agrees with the first.
#[test]
fn the_rule_that_differs_on_a_shared_bucket_is_named() {
    let (line, column, field, source) = build_error_in(
        "shared-third.yaml",
        "routes:\n  - { path: /a, bucket: auth, limits: [{ limit: 5/min }] }\n  - { path: /b, bucket: auth, limits: [{ limit: 5/min }] }\n  - { path: /c, bucket: auth, limits: [{ limit: 6/min }] }\n",
    );
    assert_eq!(
        (line, column, field.as_str()),
        (4, 25, "routes[2].bucket (/c)")
    );
    assert!(
        matches!(&source, BuildError::SharedBucketMismatch { second, .. } if second == "c"),
        "{source}"
    );
}

/// A rule named `global` beside the global limits shares their bucket with other limits:
/// the rule is named, with its line (it was `limiter`, without a place in the file).
#[test]
fn a_rule_named_like_the_global_limits_is_named() {
    for (file, yaml) in [
        (
            "global-name.yaml",
            "routes:\n  - path: /a\n    name: global\n    limits: [{ per: global, limit: 5/s }]\ngateway:\n  global_rate_limit: { sustained: 1000/min }\n",
        ),
        (
            "global-name-ip.yaml",
            "routes:\n  - path: /a\n    name: global\n    limits: [{ per: ip, limit: 5/s }]\nglobal:\n  - { per: global, limit: 10/s }\n",
        ),
    ] {
        let (line, column, field, source) = build_error_in(file, yaml);
        assert_eq!((line, column, field.as_str()), (3, 11, "routes[0].name (/a)"), "{file}");
        assert!(
            matches!(&source, BuildError::SharedBucketMismatch { bucket, .. } if bucket == "global"),
            "{source}"
        );
    }
}

/// A header key whose kind is too long for a bucket name names the rule that has it.
#[test]
fn a_key_kind_too_long_names_its_rule() {
    let long = format!("x-{}", "a".repeat(60));
    let (line, column, field, source) = build_error_in(
        "long-kind.yaml",
        &format!(
            "routes:\n  - {{ path: /a, limits: [{{ per: 'header:{long}', limit: 5/min }}] }}\n"
        ),
    );
    assert_eq!((line, column, field.as_str()), (2, 5, "routes[0] (/a)"));
    assert!(matches!(source, BuildError::BadKeyKind { .. }), "{source}");
}

/// A location with a line and no column is shown as `file:line`.
#[test]
fn an_error_with_a_line_and_no_column_shows_the_line() {
    let err = ConfigError::Rule {
        file: "limits.yaml".into(),
        line: Some(3),
        column: None,
        field: "routes[0]".into(),
        message: "wrong".into(),
    };
    assert_eq!(err.to_string(), "limits.yaml:3: routes[0]: wrong");
}

/// A zero cost on a later rule names that rule's `cost:`, not an earlier rule that has a
/// cost of its own.
#[test]
fn a_zero_cost_after_a_costed_rule_names_the_zero_cost() {
    let yaml = "routes:\n  - { path: /a, name: a, cost: 2, limits: [{ limit: 5/min }] }\n  - { path: /heavy, name: heavy, cost: 0, limits: [{ limit: 5/min }] }\n";
    let (line, column, field, source) = build_error_in("cost-second.yaml", yaml);
    assert_eq!(
        (line, column, field.as_str()),
        (3, 40, "routes[1].cost (/heavy)")
    );
    assert!(
        matches!(&source, BuildError::ZeroCost { policy } if policy == "heavy"),
        "{source}"
    );
}

/// A bucket for direct use whose rate is impossible is named as a bucket (it read `policy
/// `b`, limit per direct: …`).
#[test]
fn a_direct_buckets_bad_rate_names_the_bucket() {
    let built = Limiter::builder().bucket("exports", "0/min").build();
    let Err(error) = built else {
        panic!("built");
    };
    assert!(
        matches!(&error, BuildError::BucketRate { bucket, .. } if bucket == "exports"),
        "{error}"
    );
    assert!(
        error.to_string().starts_with("bucket `exports`: "),
        "{error}"
    );
}

/// `methods: []` names no method: refused where it is written (it meant every method).
#[test]
fn an_empty_methods_list_is_refused() {
    let path = write_temp(
        "no-methods.yaml",
        "routes:\n  - path: /a\n    methods: []\n    limits: [{ limit: 5/min }]\n",
    );
    let error = Limiter::from_config(&path).unwrap_err().to_string();
    assert!(error.contains(":3:"), "{error}");
    assert!(error.contains("names no method"), "{error}");
}

/// A store's URL put where the schema wants something else is quoted by the parse error
/// with its password hidden (a review: `store: "redis://default:P@host"` and
/// `kind: "redis://..."` printed it, and a watcher's reload logged it at ERROR); a loaded
/// configuration's `Debug` hides it too (a review: printed twice, the URL and the file).
#[test]
fn a_store_password_is_not_printed_by_errors_or_debug() {
    let misplaced = [
        (
            "store.yaml",
            "store: \"redis://default:FILEPASS8@127.0.0.1:6379\"\n",
        ),
        (
            "kind.yaml",
            "store:\n  kind: \"redis://default:FILEPASS8@127.0.0.1:6379\"\n",
        ),
        (
            "entries.yaml",
            "store:\n  max_entries: \"redis://default:FILEPASS8@h:1\"\n",
        ),
        (
            "store.toml",
            "store = \"redis://default:FILEPASS8@127.0.0.1:6379\"\n",
        ),
    ];
    for (name, text) in misplaced {
        let err = Config::from_path(write_temp(name, text)).unwrap_err();
        let (shown, debug) = (err.to_string(), format!("{err:?}"));
        assert!(matches!(err, ConfigError::Parse { .. }), "{name}: {shown}");
        assert!(shown.contains("redis://default:***@"), "{name}: {shown}");
        assert!(!shown.contains("FILEPASS8"), "{name}: {shown}");
        assert!(!debug.contains("FILEPASS8"), "{name}: {debug}");
    }
    let loaded = Config::from_path(write_temp(
        "loaded.yaml",
        "store:\n  kind: redis\n  url: redis://default:RightPass99@127.0.0.1:6379\n",
    ))
    .unwrap();
    let debug = format!("{loaded:?}");
    assert!(!debug.contains("RightPass99"), "{debug}");
    assert!(
        debug.contains("redis://default:***@127.0.0.1:6379"),
        "{debug}"
    );
}
