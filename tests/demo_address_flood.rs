//! Black-box: a flood of addresses, each at its limit, does not turn new clients away.
//!
//! The demo's buckets keyed by IP (the shared `AUTH` bucket of sign-in and password help,
//! sign-up, magic links, and the middleware's per-IP policies) live in the memory store when
//! Redis is not set, bounded per bucket name (`MEMORY_MAX_ENTRIES`). Once a flood of addresses
//! at their limit fills a bucket's share, a new address evicts the least recently seen of them
//! (`WhenFull::EvictLimited`): refusing every address the store has not seen would let the
//! flood deny sign-in to every new client for the rest of the window. An address still being
//! refused was seen recently, and stays refused.
//!
//! In CI the share is the smallest the demo takes (1024), so the flood fills it in seconds.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Example, RawConnection};

const FORGOT: &str = "/api/auth/forgot-password";
const SIGN_IN: &str = "/api/auth/sign-in";
/// `AUTH`: attempts per IP per 15 minutes.
const AUTH_PER_IP: usize = 20;
/// Flooding addresses: past the share (1024), so that every shard of it is full.
const FLOOD: usize = 1_600;

fn forgot(connection: &mut RawConnection, ip: &str) -> u16 {
    connection
        .send_body(
            "POST",
            FORGOT,
            &[
                ("x-forwarded-for", ip),
                ("content-type", "application/json"),
            ],
            r#"{"email":"someone@example.com"}"#,
        )
        .status
}

#[test]
fn a_flood_of_limited_addresses_leaves_room_for_new_clients() {
    let ex = Example::start_logged(
        "demo",
        &[
            ("TRUSTED_PROXIES", "127.0.0.1/32"),
            ("MEMORY_MAX_ENTRIES", "1024"),
        ],
    );
    // Each flooding address spends its AUTH budget and is refused once more: at its limit.
    let next = AtomicUsize::new(0);
    let refused_early = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                let mut connection = RawConnection::connect(&ex.base);
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= FLOOD {
                        break;
                    }
                    let ip = format!("10.7.{}.{}", n / 250, n % 250);
                    let statuses: Vec<u16> = (0..=AUTH_PER_IP)
                        .map(|_| forgot(&mut connection, &ip))
                        .collect();
                    if statuses[..AUTH_PER_IP] != [202; AUTH_PER_IP] {
                        refused_early.fetch_add(1, Ordering::Relaxed);
                    }
                    assert_eq!(statuses[AUTH_PER_IP], 429, "{ip}: {statuses:?}");
                }
            });
        }
    });
    // Every flooding address got its 20: none found the store full.
    assert_eq!(refused_early.into_inner(), 0);

    let mut connection = RawConnection::connect(&ex.base);
    // New clients sign in, each on its first attempt.
    for i in 0..32 {
        let ip = format!("198.51.100.{i}");
        let r = connection.send_body(
            "POST",
            SIGN_IN,
            &[
                ("x-forwarded-for", ip.as_str()),
                ("content-type", "application/json"),
            ],
            r#"{"email":"newcomer@example.com","password":"demo-password"}"#,
        );
        assert_eq!(r.status, 200, "{ip} was refused: {}", r.body);
        // Its AUTH budget is fresh (the success shows AUTH; the e-mail's lockout, with no
        // failure counted, shows nothing).
        let ratelimit = r.header("ratelimit");
        assert!(ratelimit.contains(r#""auth";r=19;"#), "{ip}: {ratelimit}");
    }
    // The address that flooded last is still at its limit.
    let last = format!("10.7.{}.{}", (FLOOD - 1) / 250, (FLOOD - 1) % 250);
    assert_eq!(forgot(&mut connection, &last), 429);
}

/// IPv6 clients are keyed by /64, and one /48 holds 65,536 of those: the AUTH budget of a
/// whole network (`auth-network`, 1,000 per 15 minutes per /48) keeps one holder of a /48
/// from multiplying the per-address budget. Past it, every address of the network is
/// refused with that budget's 429, and its own AUTH charge is given back; another network
/// is not affected. (Sign-ins, with the right password: password help has a tighter share
/// of its own per network, `tests/ipv6_networks.rs`.)
#[test]
fn one_network_cannot_multiply_the_per_address_auth_budget() {
    const NETWORK_BUDGET: usize = 1_000;
    let ex = Example::start_logged(
        "demo",
        &[
            ("TRUSTED_PROXIES", "127.0.0.1/32"),
            ("ADMIN_TOKEN", "s3cret"),
        ],
    );
    let mut connection = RawConnection::connect(&ex.base);
    // 60 /64s of one /48, 20 requests each: 1,200, each /64 within its own 20.
    let mut admitted = 0;
    let mut refused = Vec::new();
    for subnet in 0..60 {
        let ip = format!("2001:db8:aaaa:{subnet:x}::1");
        for _ in 0..AUTH_PER_IP {
            let r = connection.send_body(
                "POST",
                SIGN_IN,
                &[
                    ("x-forwarded-for", ip.as_str()),
                    ("content-type", "application/json"),
                ],
                r#"{"email":"someone@example.com","password":"demo-password"}"#,
            );
            match r.status {
                200 => admitted += 1,
                429 => refused.push(r),
                other => panic!("{ip}: {other} {}", r.body),
            }
        }
    }
    assert_eq!(admitted, NETWORK_BUDGET);
    assert_eq!(refused.len(), 60 * AUTH_PER_IP - NETWORK_BUDGET);
    let first = &refused[0];
    assert_eq!(first.header("x-ratelimit-limit"), "1000");
    assert_eq!(first.header("x-ratelimit-remaining"), "0");
    assert!(!first.header("retry-after").is_empty());
    // A refused request spent nothing of its address's own budget: the last /64, every
    // request of which the network's budget refused, has all 20 left.
    let r = connection.send(
        "GET",
        "/admin/rate-limits/buckets/auth/2001:db8:aaaa:3b::1",
        &[("authorization", "Bearer s3cret")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains(r#""remaining":20"#), "{}", r.body);
    // Another /48, and an IPv4 client, are their own networks.
    for ip in ["2001:db8:bbbb::1", "198.51.100.77"] {
        assert_eq!(forgot(&mut connection, ip), 202, "{ip}");
    }
    // So is each IPv4 client behind a NAT64 translator (`64:ff9b::a.b.c.d`), though the
    // translator shows them all in one /48: 60 of them, 20 requests each, all admitted.
    for client in 0..60 {
        let ip = format!("64:ff9b::203.0.113.{client}");
        for _ in 0..AUTH_PER_IP {
            assert_eq!(forgot(&mut connection, &ip), 202, "{ip}");
        }
    }
}
