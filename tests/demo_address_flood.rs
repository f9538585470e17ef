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
        assert_eq!(r.header("x-ratelimit-remaining"), "19", "{ip}");
    }
    // The address that flooded last is still at its limit.
    let last = format!("10.7.{}.{}", (FLOOD - 1) / 250, (FLOOD - 1) % 250);
    assert_eq!(forgot(&mut connection, &last), 429);
}
