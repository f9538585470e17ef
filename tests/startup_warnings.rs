//! Every example warns its operator at start-up about a configuration that weakens its
//! limits (`RATE_LIMIT_ENABLED=false`, `TRUSTED_PROXIES` trusting every address), once each:
//! logging is set up before the example builds its limiter, and the limiter's guards do
//! not repeat what its build said. Off a terminal, the log is plain text.

mod common;

use common::Example;

const EXAMPLES: [&str; 5] = ["demo", "seed_001", "seed_002", "seed_003", "seed_004"];

/// `setting`, with the admin routers on (the demo's and seed 004's, each behind a guard of
/// the limiter).
fn with_admin<'a>(setting: (&'a str, &'a str)) -> [(&'a str, &'a str); 3] {
    [
        setting,
        ("ADMIN_TOKEN", "startup-warnings-admin-token"),
        ("ENDPOINTWISE_ADMIN_TOKEN", "startup-warnings-admin-token"),
    ]
}

/// The lines of `logged` that say `text`.
fn saying(logged: &[String], text: &str) -> usize {
    logged.iter().filter(|line| line.contains(text)).count()
}

#[test]
fn every_example_warns_once_about_limits_switched_off() {
    for name in EXAMPLES {
        let example = Example::start_logged(name, &with_admin(("RATE_LIMIT_ENABLED", "false")));
        let logged = example.stop_logged();
        let text = "rate limiting is disabled: requests pass unlimited";
        assert_eq!(saying(&logged, text), 1, "{name}: {logged:#?}");
        // Plain text off a terminal (a file, a log collector): no colour codes.
        assert_eq!(saying(&logged, "\u{1b}["), 0, "{name}: {logged:#?}");
    }
}

#[test]
fn every_example_warns_once_about_trusting_every_address() {
    for name in EXAMPLES {
        let example =
            Example::start_logged(name, &with_admin(("TRUSTED_PROXIES", "0.0.0.0/0,::/0")));
        let logged = example.stop_logged();
        for text in ["`0.0.0.0/0`, i.e. every IPv4", "`::/0`, i.e. every IPv6"] {
            assert_eq!(saying(&logged, text), 1, "{name}: {text}: {logged:#?}");
        }
    }
}

/// A daily cap over another window than a day (`100/h` for `100/day`) is said at start-up
/// (a review: `ENDPOINTWISE_DAILY_CAP=2/s` ran as 2 a second without a word); a day is not.
#[test]
fn seed_004_says_a_daily_cap_that_is_not_per_day() {
    let text = "the daily cap counts over";
    for (cap, warned) in [("2/s", 1), ("100/h", 1), ("25/day", 0), ("25/24h", 0)] {
        let example = Example::start_logged("seed_004", &[("ENDPOINTWISE_DAILY_CAP", cap)]);
        let logged = example.stop_logged();
        assert_eq!(saying(&logged, text), warned, "{cap}: {logged:#?}");
    }
}

/// A Redis down at start-up is warned about once: each example makes one store (seed 004
/// made a second from its file's default store, connected it and dropped it: the warning
/// twice, 7 ms apart).
#[test]
fn every_example_warns_once_about_a_redis_down_at_startup() {
    let url = common::unreachable_redis_url();
    let text = "rate-limit store switched to the in-memory fallback";
    for name in EXAMPLES {
        let example = Example::start_logged(name, &with_admin(("REDIS_URL", &url)));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while saying(&example.logged(), text) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Time for a second store's check (seed 004's came 7 ms after the first).
        std::thread::sleep(std::time::Duration::from_millis(500));
        let logged = example.stop_logged();
        assert_eq!(saying(&logged, text), 1, "{name}: {logged:#?}");
    }
}

/// `HOST` may name an IPv6 address as URLs write it (`[::1]`): the example listens there
/// (a review: `HOST=[::]` stopped every example with "failed to lookup address
/// information", naming neither `HOST` nor its value). A host that does not resolve is
/// named in the error.
#[tokio::test]
async fn host_may_be_an_ipv6_address_in_brackets() {
    let example = Example::start("seed_001", &[("HOST", "[::1]")]);
    assert!(
        example.base.starts_with("http://[::1]:"),
        "{}",
        example.base
    );
    let r = example.get("/v1/contacts").send().await.unwrap();
    assert_eq!(r.status(), 401, "served: no key, so unauthorized");
    let out = std::process::Command::new(common::example_path("seed_001"))
        .env("HOST", "nope.invalid")
        .env("PORT", "0")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("HOST=nope.invalid"),
        "{said}"
    );
}

/// What example `name` says on stderr when started with `env`, which must stop it.
fn refused_start(name: &str, env: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(common::example_path(name))
        .envs(env.iter().copied())
        .env("PORT", "0")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{name} started with {env:?}: {said}");
    said
}

/// A setting of the environment that cannot be used stops an example, and the error names
/// the setting and its value: the limiter built from a file said the file held it (a
/// review: `TRUSTED_PROXIES=notanip` and `ENDPOINTWISE_DAILY_CAP=abc` were blamed on
/// `limits.yaml` and `endpointwise.yaml`, which hold neither).
#[test]
fn every_example_names_a_setting_it_cannot_use() {
    for name in EXAMPLES {
        let said = refused_start(name, &[("TRUSTED_PROXIES", "10.0.0.0/8, notanip")]);
        assert!(
            said.contains("TRUSTED_PROXIES=10.0.0.0/8, notanip: ") && said.contains("`notanip`"),
            "{name}: {said}"
        );
        assert!(!said.contains(".yaml"), "{name}: {said}");
    }
    for cap in ["abc", "25/fortnight", "0/day", "25"] {
        let said = refused_start("seed_004", &[("ENDPOINTWISE_DAILY_CAP", cap)]);
        assert!(
            said.contains(&format!("ENDPOINTWISE_DAILY_CAP={cap}: ")) && !said.contains(".yaml"),
            "{cap}: {said}"
        );
    }
    let said = refused_start("demo", &[("MEMORY_MAX_ENTRIES", "12")]);
    assert!(said.contains("MEMORY_MAX_ENTRIES=12: "), "{said}");
}
