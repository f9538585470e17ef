//! Black-box: a client holding many IPv6 /64s does not multiply the examples' abuse limits.
//!
//! Clients are keyed by IP, an IPv6 client by its /64, and whoever holds a /48 (a tunnel
//! broker gives one away; many home connections get a /56) holds 65,536 (or 256) of those,
//! each with a fresh per-IP budget. A review spread requests over the /64s of one /48 and
//! had 180 guesses answered by seed 002's guard of 20 a minute per IP, 100 sign-ups and 150
//! magic links from the demo against 20 and 30 per IP (and, a re-test, 1,000 password-reset
//! e-mails through AUTH's network share), and emptied seed 004's gateway-wide
//! bucket (every partner refused) through `/v1/status`, 60 a minute per IP. Each of those
//! limits has a backstop per /48 now (an IPv4 address is a network of its own).
//!
//! The clients' addresses come through `X-Forwarded-For` from a trusted proxy (the test's
//! loopback address), as every example reads `TRUSTED_PROXIES`.

mod common;

use common::{Example, RawConnection};

const PROXY: (&str, &str) = ("TRUSTED_PROXIES", "127.0.0.1/32");

/// The statuses of `n` requests `method target` from client `ip` (via the trusted proxy),
/// with `headers` and `body`.
fn send_from(
    app: &Example,
    ip: &str,
    (method, target): (&str, &str),
    headers: &[(&str, &str)],
    body: &str,
    n: usize,
) -> Vec<u16> {
    let mut connection = RawConnection::connect(&app.base);
    let mut all = vec![("x-forwarded-for", ip)];
    all.extend_from_slice(headers);
    (0..n)
        .map(|_| connection.send_body(method, target, &all, body).status)
        .collect()
}

/// How many of `statuses` are `status`.
fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|&&s| s == status).count()
}

/// `per_ip` requests from each of six /64s of the /48 `prefix` (`2001:db8:aa`): the
/// statuses of all of them.
fn from_six_64s(
    app: &Example,
    prefix: &str,
    request: (&str, &str),
    headers: &[(&str, &str)],
    body: &str,
    per_ip: usize,
) -> Vec<u16> {
    (1..=6)
        .flat_map(|n| {
            send_from(
                app,
                &format!("{prefix}:{n:x}::1"),
                request,
                headers,
                body,
                per_ip,
            )
        })
        .collect()
}

#[test]
fn seed_002s_guard_answers_100_guesses_per_48_not_20_per_64() {
    let app = Example::start("seed_002", &[PROXY]);
    let guess = ("GET", "/v1/campaigns/1");
    let wrong = [("x-api-key", "guess")];
    // 20 a minute per /64; 100 a minute per /48: 120 sent, 100 answered.
    let statuses = from_six_64s(&app, "2001:db8:aa", guess, &wrong, "", 20);
    assert_eq!(
        (count(&statuses, 401), count(&statuses, 429)),
        (100, 20),
        "{statuses:?}"
    );
    // Any other /64 of it is refused; the /48 next door is another network.
    assert_eq!(
        send_from(&app, "2001:db8:aa:ff::1", guess, &wrong, "", 1),
        [429]
    );
    assert_eq!(
        send_from(&app, "2001:db8:ab:1::1", guess, &wrong, "", 1),
        [401]
    );
    // IPv4 addresses are networks of their own: each has its 20.
    for ip in ["198.51.100.7", "198.51.100.8"] {
        let statuses = send_from(&app, ip, guess, &wrong, "", 21);
        assert_eq!(count(&statuses, 401), 20, "{ip}: {statuses:?}");
    }
}

#[test]
fn seed_004s_status_admits_300_per_48_and_leaves_the_gateway_to_partners() {
    let app = Example::start("seed_004", &[PROXY]);
    // 60 a minute per /64; 300 a minute per /48: 360 sent, 300 admitted.
    let statuses = from_six_64s(&app, "2001:db8:aa", ("GET", "/v1/status"), &[], "", 60);
    assert_eq!(
        (count(&statuses, 200), count(&statuses, 429)),
        (300, 60),
        "{statuses:?}"
    );
    // A partner is served: the gateway's 1,000 a minute were not the /48's to spend.
    let invoices = send_from(
        &app,
        "192.0.2.50",
        ("GET", "/v1/invoices"),
        &[("x-api-key", "ew_live_full")],
        "",
        1,
    );
    assert_eq!(invoices, [200]);
}

/// The demo's answers show the network budgets they spend beside the address's: where
/// the network's other addresses spent more of it, what remains is the network's (a review:
/// `r=10` shown of the address's bucket, and the next request refused by the network's).
#[test]
fn the_demos_answers_show_the_network_budget_they_spend() {
    let app = Example::start("demo", &[PROXY]);
    let json = ("content-type", "application/json");
    let email = r#"{"email":"someone@example.com"}"#;
    let magic = ("POST", "/api/portal/auth/magic-link");
    // 130 of the /48's 150 from five of its /64s (30 in 15 minutes each).
    let spent: usize = [(1, 30), (2, 30), (3, 30), (4, 30), (5, 10)]
        .into_iter()
        .map(|(n, k)| {
            let ip = format!("2001:db8:ee:{n:x}::1");
            count(&send_from(&app, &ip, magic, &[json], email, k), 202)
        })
        .sum();
    assert_eq!(spent, 130);
    // A sixth /64 has 30 of its own and 20 of the network's: its first answer says 19
    // remain, and exactly 19 more are admitted.
    let mut sixth = RawConnection::connect(&app.base);
    let headers = [("x-forwarded-for", "2001:db8:ee:6::1"), json];
    let mut send = || sixth.send_body(magic.0, magic.1, &headers, email);
    let first = send();
    assert_eq!(first.status, 202);
    assert_eq!(
        (
            first.header("x-ratelimit-limit"),
            first.header("x-ratelimit-remaining")
        ),
        ("150", "19")
    );
    let current = first.header("ratelimit");
    assert!(
        current.starts_with(r#""portal-magic-link";r=29;"#)
            && current.contains(r#", "portal-magic-link-network";r=19;"#),
        "{current}"
    );
    assert!(
        first
            .header("ratelimit-policy")
            .contains(r#""portal-magic-link-network";q=150;w=900"#),
        "{}",
        first.header("ratelimit-policy")
    );
    let rest: Vec<u16> = (0..20).map(|_| send().status).collect();
    assert_eq!((count(&rest, 202), rest[19]), (19, 429), "{rest:?}");
}

#[test]
fn the_demos_sign_up_magic_links_and_admin_guard_are_bounded_per_48() {
    let app = Example::start("demo", &[PROXY, ("ADMIN_TOKEN", "the-admin-token")]);
    let json = [("content-type", "application/json")];
    let email = r#"{"email":"someone@example.com"}"#;
    // Sign-up: 20 an hour per /64, 100 per /48.
    let sign_up = ("POST", "/api/auth/sign-up");
    let statuses = from_six_64s(&app, "2001:db8:bb", sign_up, &json, email, 20);
    assert_eq!(count(&statuses, 201), 100, "{statuses:?}");
    assert_eq!(
        send_from(&app, "2001:db8:bb:ff::1", sign_up, &json, email, 1),
        [429]
    );
    // Magic links: 30 in 15 minutes per /64, 150 per /48.
    let magic = ("POST", "/api/portal/auth/magic-link");
    let statuses = from_six_64s(&app, "2001:db8:cc", magic, &json, email, 30);
    assert_eq!(count(&statuses, 202), 150, "{statuses:?}");
    assert_eq!(
        send_from(&app, "2001:db8:cc:ff::1", magic, &json, email, 1),
        [429]
    );
    // Password help (each an e-mail): 20 in 15 minutes per /64 (the page's AUTH), 150 per
    // /48 (AUTH's own network share, 1,000, sign-ins included, let one /48 send 1,000).
    let forgot = ("POST", "/api/auth/forgot-password");
    let statuses: Vec<u16> = (1..=8)
        .flat_map(|n| {
            send_from(
                &app,
                &format!("2001:db8:ab:{n:x}::1"),
                forgot,
                &json,
                email,
                20,
            )
        })
        .collect();
    assert_eq!(count(&statuses, 202), 150, "{statuses:?}");
    let reset = ("POST", "/api/portal/auth/reset-password");
    assert_eq!(
        send_from(&app, "2001:db8:ab:ff::1", reset, &json, email, 1),
        [429]
    );
    // What the refused ones charged was given back: sign-in is still open to the network.
    let sign_in = ("POST", "/api/auth/sign-in");
    let wrong_password = r#"{"email":"someone@example.com","password":"wrong"}"#;
    assert_eq!(
        send_from(&app, "2001:db8:ab:ff::1", sign_in, &json, wrong_password, 1),
        [401]
    );
    // The admin router's guard: 10 wrong tokens a minute per /64, 50 per /48.
    let admin = ("GET", "/admin/rate-limits");
    let wrong = [("authorization", "Bearer wrong")];
    let statuses = from_six_64s(&app, "2001:db8:dd", admin, &wrong, "", 10);
    assert_eq!(count(&statuses, 401), 50, "{statuses:?}");
    assert_eq!(
        send_from(&app, "2001:db8:dd:ff::1", admin, &wrong, "", 1),
        [429]
    );
    // The right token from another network is served.
    let right = [("authorization", "Bearer the-admin-token")];
    assert_eq!(
        send_from(&app, "2001:db8:ee:1::1", admin, &right, "", 1),
        [200]
    );
    // The demo's pages (rendered per request): 60 a minute per /64, 300 per /48.
    let metrics = ("GET", "/metrics");
    let statuses = from_six_64s(&app, "2001:db8:fa", metrics, &[], "", 60);
    assert_eq!(count(&statuses, 200), 300, "{statuses:?}");
    assert_eq!(
        send_from(
            &app,
            "2001:db8:fa:ff::1",
            ("GET", "/openapi.json"),
            &[],
            "",
            1
        ),
        [429]
    );
}
