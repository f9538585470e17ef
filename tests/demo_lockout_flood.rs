//! Black-box: a flood of failed sign-ins over junk e-mails cannot unlock a locked e-mail.
//!
//! The sign-in lockout (`sign-in-failures`, exactly 5 failures per 30 minutes per e-mail) keeps
//! one key per e-mail in the memory store. An attacker who fills the store with junk e-mails
//! at their limit must not push a locked victim's key out: the store gives each bucket its own
//! share, and a share full of limited keys refuses new keys instead of forgetting old ones.
//! The demo takes such a refusal as "no room", not as a lockout: an e-mail it never saw
//! still signs in, and while the share is full its failures are counted per client network
//! instead (`sign-in-failures-network`, with the lockout's quota), so the flood does not
//! switch the lockout off for the accounts it has not seen (and the store warns).
//!
//! In CI the demo runs with a small share (`MEMORY_MAX_ENTRIES`, default here 2048) so the
//! flood fills it in seconds. The same test at the attack's full size, against a release build
//! (the figures go to the closing note):
//!
//! ```text
//! FLOOD_EMAILS=120000 FLOOD_SHARE=default cargo test --release --test demo_lockout_flood -- --nocapture
//! ```

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use common::{Example, RawConnection};

const SIGN_IN: &str = "/api/auth/sign-in";
/// The lockout: failures per e-mail before the next attempt is refused.
const LOCKOUT: usize = 5;
/// `AUTH`: sign-in attempts per IP per 15 minutes.
const AUTH_PER_IP: usize = 20;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// The `n`th flooding client: a /48 of its own (the demo keys IPv6 clients by /64, and
/// also limits AUTH per /48: one /48 could not fill the share on its own).
fn flood_ip(n: usize) -> String {
    format!("2001:{:x}:{:x}::1", 0x1000 + (n >> 16), n & 0xffff)
}

fn credentials(email: &str, password: &str) -> String {
    format!(r#"{{"email":"{email}","password":"{password}"}}"#)
}

fn sign_in(
    connection: &mut RawConnection,
    ip: &str,
    email: &str,
    password: &str,
) -> common::RawResponse {
    connection.send_body(
        "POST",
        SIGN_IN,
        &[
            ("x-forwarded-for", ip),
            ("content-type", "application/json"),
        ],
        &credentials(email, password),
    )
}

#[test]
fn a_flood_of_junk_emails_leaves_every_locked_email_locked() {
    let emails = env_number("FLOOD_EMAILS", 3_000);
    let connections = env_number("FLOOD_CONNECTIONS", 4).max(1);
    let share = std::env::var("FLOOD_SHARE").unwrap_or_else(|_| "2048".into());
    let mut env = vec![("TRUSTED_PROXIES", "127.0.0.1/32")];
    if share != "default" {
        env.push(("MEMORY_MAX_ENTRIES", share.as_str()));
    }
    let ex = Example::start_logged("demo", &env);
    let rss_before = ex.rss_kib();

    // Ten victims, each locked by five wrong passwords from an address of its own. Half of
    // them are also refused once before the flood; the other half are only at their limit.
    let victims: Vec<String> = (0..10).map(|i| format!("victim{i}@example.com")).collect();
    let mut connection = RawConnection::connect(&ex.base);
    for (i, victim) in victims.iter().enumerate() {
        let ip = format!("198.51.100.{}", i + 1);
        for attempt in 1..=LOCKOUT {
            let r = sign_in(&mut connection, &ip, victim, "wrong");
            assert_eq!(r.status, 401, "{victim} attempt {attempt}: {}", r.body);
        }
        if i % 2 == 0 {
            let r = sign_in(&mut connection, &ip, victim, "demo-password");
            assert_eq!(r.status, 429, "{victim} is locked: {}", r.body);
        }
    }

    // The flood: every junk e-mail gets five wrong passwords, from addresses that each stay
    // within AUTH (so the lockout bucket, not AUTH, is what fills).
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let failed_401 = AtomicUsize::new(0);
    let refused_429 = AtomicUsize::new(0);
    let locked = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..connections {
            scope.spawn(|| {
                let mut connection = RawConnection::connect(&ex.base);
                loop {
                    let e = next.fetch_add(1, Ordering::Relaxed);
                    if e >= emails {
                        break;
                    }
                    let email = format!("junk{e}@flood.example");
                    let mut counted = 0;
                    for attempt in 0..LOCKOUT {
                        let ip = flood_ip((e * LOCKOUT + attempt) / AUTH_PER_IP);
                        let r = sign_in(&mut connection, &ip, &email, "wrong");
                        match r.status {
                            401 => {
                                counted += 1;
                                failed_401.fetch_add(1, Ordering::Relaxed)
                            }
                            429 => refused_429.fetch_add(1, Ordering::Relaxed),
                            other => panic!("{email}: {other} {}", r.body),
                        };
                    }
                    if counted == LOCKOUT {
                        // Every failure counted: the e-mail is now held at its limit.
                        locked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let rss_after = ex.rss_kib();
    let (failed, refused) = (failed_401.into_inner(), refused_429.into_inner());
    let locked = locked.into_inner();
    println!(
        "flood: {} requests over {emails} e-mails in {:.1} s ({:.0}/s): {failed} × 401, \
         {refused} × 429, {locked} e-mails answered 401 five times; share {share}; RSS {rss_before} KiB \
         before, {rss_after} KiB after",
        failed + refused,
        elapsed.as_secs_f64(),
        (failed + refused) as f64 / elapsed.as_secs_f64(),
    );
    assert_eq!(failed + refused, emails * LOCKOUT);

    // Every victim is still locked, even with the right password.
    for (i, victim) in victims.iter().enumerate() {
        let ip = format!("198.51.100.{}", i + 101);
        let r = sign_in(&mut connection, &ip, victim, "demo-password");
        assert_eq!(
            r.status, 429,
            "{victim} was unlocked by the flood: {}",
            r.body
        );
        let retry_after: u64 = r.header("retry-after").parse().expect("Retry-After");
        assert!(
            (1..=1800).contains(&retry_after),
            "{victim}: Retry-After {retry_after}"
        );
    }

    // The lockout's share held: once full of keys at their limit, new e-mails were not
    // stored. The last junk e-mails came after the share was full (shard by shard): those
    // not stored are counted per client network instead, so from one network (here a /48,
    // one /64 per e-mail) at most five more failures are answered, then 429, whatever the
    // e-mail. A store that did not hold its bound would have locked every one of them (no
    // 401 at all); a lockout switched off by the flood would answer 401 to all of them.
    if let Ok(share) = share.parse::<usize>() {
        if emails > share {
            let answered: Vec<u16> = (emails.saturating_sub(50)..emails)
                .map(|e| {
                    let email = format!("junk{e}@flood.example");
                    let ip = format!("2001:db8:ffff:{e:x}::1");
                    sign_in(&mut connection, &ip, &email, "wrong").status
                })
                .collect();
            let failed = answered.iter().filter(|&&s| s == 401).count();
            assert!(
                (1..=LOCKOUT).contains(&failed),
                "late junk e-mails from one network: {answered:?}"
            );
            assert!(
                answered.iter().all(|&s| s == 401 || s == 429),
                "{answered:?}"
            );
            assert!(
                ex.logged().iter().any(|l| l.contains("its share is full")),
                "the full share was not warned about"
            );
        }
    }
    // E-mails the flood never touched sign in: a full share denies no account it has not
    // seen. Each attempt is counted against its client's network, and a success gives it
    // back: seven new accounts sign in from one address (an office behind one NAT), where
    // the network counts five failures.
    for n in 0..7 {
        let r = sign_in(
            &mut connection,
            "198.51.100.201",
            &format!("newcomer{n}@example.com"),
            "demo-password",
        );
        assert_eq!(r.status, 200, "new account {n} was refused: {}", r.body);
    }
    // Memory stays bounded: the store holds at most its share of keys per bucket.
    assert!(
        rss_after < rss_before + 512 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}

/// A flood of junk e-mails between guesses does not wipe the count of an account on its
/// way to the lock: a soak review guessed one account 29 times in 10 minutes against 5 per
/// 30 by flooding about a share's worth of junk e-mails between its guesses, each flood
/// evicting the account's partial count (4 of 5 back at 0). The lockout keeps every e-mail
/// that still counts (`WhenFull::KeepCounts`).
#[test]
fn a_flood_of_junk_emails_does_not_wipe_a_count_on_its_way_to_the_lock() {
    let ex = Example::start(
        "demo",
        &[
            ("TRUSTED_PROXIES", "127.0.0.1/32"),
            ("MEMORY_MAX_ENTRIES", "1024"),
        ],
    );
    let mut connection = RawConnection::connect(&ex.base);
    let victim = "partial@example.com";
    for attempt in 1..LOCKOUT {
        let r = sign_in(&mut connection, "198.51.100.1", victim, "wrong");
        assert_eq!(r.status, 401, "attempt {attempt}: {}", r.body);
    }
    // One failure each for half again as many junk e-mails as the share holds, from
    // addresses that each stay within AUTH.
    for e in 0..1_536 {
        let ip = flood_ip(e / AUTH_PER_IP);
        let r = sign_in(
            &mut connection,
            &ip,
            &format!("junk{e}@flood.example"),
            "wrong",
        );
        assert!(matches!(r.status, 401 | 429), "{}: {}", r.status, r.body);
    }
    // The victim's fifth failure is its last; the sixth attempt is refused, the right
    // password too.
    let r = sign_in(&mut connection, "198.51.100.2", victim, "wrong");
    assert_eq!(r.status, 401, "the fifth failure: {}", r.body);
    let r = sign_in(&mut connection, "198.51.100.3", victim, "demo-password");
    assert_eq!(r.status, 429, "the count was wiped: {}", r.body);
    let retry_after: u64 = r.header("retry-after").parse().expect("Retry-After");
    assert!(
        (1..=1800).contains(&retry_after),
        "Retry-After {retry_after}"
    );
}
