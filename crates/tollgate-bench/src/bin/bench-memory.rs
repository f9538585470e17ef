//! Bytes of memory per live key: resident memory after charging N distinct keys, minus
//! before, divided by N; each case in a fresh child process (so no case reuses memory
//! another freed). Prints a markdown section. `bench-memory [case n]` runs one case.
//!
//! Keys: IPv4 addresses `10.x.y.z`, as a per-IP limit sees them: tollgate's bucket
//! `default:ip:10.x.y.z`, governor's keyed limiter with the same `String`, and with
//! `IpAddr` keys. Quotas never run out during the measurement (every key stays live).

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::process::Command;
use std::time::Duration;

use governor::{Quota as GovernorQuota, RateLimiter};
use tollgate_limits::{Bucket, Limit, MemoryStore, Quota};

const N: u64 = 1_000_000;
/// The exact log keeps an entry per admission: measured with fewer keys.
const N_LOG: u64 = 100_000;

const CASES: [(&str, &str, u64); 7] = [
    ("tollgate-token", "tollgate, token bucket (GCRA)", N),
    (
        "tollgate-sliding",
        "tollgate, sliding window (10 segments)",
        N,
    ),
    ("tollgate-fixed", "tollgate, fixed window (per day)", N),
    (
        "tollgate-exact",
        "tollgate, exact sliding log (1 admission per key)",
        N_LOG,
    ),
    (
        "governor-string",
        "governor keyed limiter, `String` keys",
        N,
    ),
    ("governor-ip", "governor keyed limiter, `IpAddr` keys", N),
    ("empty", "(nothing: the measurement's own noise)", N),
];

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn ip(n: u64) -> Ipv4Addr {
    Ipv4Addr::from(0x0A00_0000 + n as u32)
}

/// Charges `n` keys in case `case`; returns bytes per key.
fn measure(case: &str, n: u64) -> f64 {
    let day = Quota::per_day(1_000_000);
    let before = rss_bytes();
    let kept: Box<dyn std::any::Any> = match case {
        "governor-string" | "governor-ip" => {
            let quota = GovernorQuota::with_period(Duration::from_millis(86))
                .expect("non-zero")
                .allow_burst(NonZeroU32::new(1_000_000).expect("non-zero"));
            if case == "governor-string" {
                let limiter = RateLimiter::keyed(quota);
                for i in 0..n {
                    assert!(limiter.check_key(&format!("default:ip:{}", ip(i))).is_ok());
                }
                Box::new(limiter)
            } else {
                let limiter = RateLimiter::<IpAddr, _, _>::keyed(quota);
                for i in 0..n {
                    assert!(limiter.check_key(&IpAddr::V4(ip(i))).is_ok());
                }
                Box::new(limiter)
            }
        }
        "empty" => Box::new(()),
        _ => {
            let limit = match case {
                // 10 per day, burst 10: one charge keeps a key live for 2.4 hours (with a
                // burst of a million, its state would be fresh again 86 ms later).
                "tollgate-token" => Limit::token_bucket(Quota::per_day(10), 10).expect("valid"),
                "tollgate-sliding" => Limit::sliding(day),
                "tollgate-fixed" => Limit::fixed(day),
                _ => Limit::sliding_exact(day),
            };
            let store = MemoryStore::builder().max_entries(2 * n as usize).build();
            for i in 0..n {
                let bucket = Bucket::new("default:ip", &ip(i).to_string(), limit);
                assert!(store.charge(std::slice::from_ref(&bucket)).unwrap().allowed);
            }
            assert_eq!(store.len() as u64, n);
            Box::new(store)
        }
    };
    let after = rss_bytes();
    drop(kept);
    after.saturating_sub(before) as f64 / n as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let (Some(case), Some(n)) = (args.get(1), args.get(2)) {
        println!("{:.1}", measure(case, n.parse().expect("a count")));
        return;
    }
    println!("## Memory per live key");
    println!();
    println!(
        "`target/release/bench-memory`: resident memory after charging N distinct keys, minus"
    );
    println!(
        "before, divided by N; each case in a fresh process. Keys are IPv4 addresses as a per-IP"
    );
    println!(
        "limit sees them. Hash tables grow by doubling, so the figure depends on where N falls"
    );
    println!(
        "between two sizes (1,000,000 is a poor spot for everyone: tables just past half full)."
    );
    println!();
    println!("| store | keys | bytes per key |");
    println!("|---|---|---|");
    for (case, label, n) in CASES {
        let output = Command::new(&args[0])
            .args([case, &n.to_string()])
            .output()
            .expect("running a case");
        let bytes = String::from_utf8_lossy(&output.stdout).trim().to_string();
        println!("| {label} | {n} | {bytes} |");
    }
}
