//! Black-box tests of `examples/demo`: ways around a limit that a hostile client tries, each
//! closed. The demo runs as its own process behind a trusted proxy (us), and each test
//! picks its client addresses with `X-Forwarded-For`.

mod common;

use common::{Example, RawConnection};

/// The demo behind a trusted proxy (us).
fn demo() -> Example {
    Example::start("demo", &[("TRUSTED_PROXIES", "127.0.0.1/32")])
}

/// `GET /api/documents/temp/{*file}` is the `downloads` class (1500/min per IP). Dot
/// segments, plain or escaped, make the normalised path another class, looser (knowledge,
/// 2000/min), as loose (twilio) or stricter (default, 500/min); axum still serves every one
/// of them from the download route. Whatever the spelling, no more than 1500 a minute reach
/// that handler from one IP, on one keep-alive connection, paths sent as they are.
#[test]
fn no_spelling_of_a_path_puts_more_than_its_routes_limit_into_its_handler() {
    let ex = demo();
    let ip = "203.0.113.150";
    let spellings = [
        "/api/documents/temp/../../knowledge/f",
        "/api/documents/temp/%2E%2E/%2e%2e/knowledge/f",
        "/api/documents/temp/.%2e/../knowledge/articles",
        "/api/documents/temp/../../twilio/f",
        "/api/documents/temp/../../projects",
        "/api/documents/temp/report.pdf",
    ];
    let mut connection = RawConnection::connect(&ex.base);
    let mut admitted = [0usize; 6];
    let mut refused = 0;
    for i in 0..1650 {
        let which = i % spellings.len();
        let path = spellings[which];
        let response = connection.send("GET", path, &[("x-forwarded-for", ip)]);
        match response.status {
            200 => {
                // The download route's handler: it echoes the path as it was sent.
                assert!(
                    response.body.contains(&format!(r#""path":"{path}""#)),
                    "{path}: {}",
                    response.body
                );
                admitted[which] += 1;
            }
            429 => {
                assert_eq!(response.header("x-ratelimit-limit"), "1500", "{path}");
                assert_eq!(response.header("x-ratelimit-remaining"), "0", "{path}");
                refused += 1;
            }
            other => panic!("{path}: {other} {}", response.body),
        }
    }
    assert_eq!(
        admitted.iter().sum::<usize>(),
        1500,
        "admitted per spelling: {admitted:?}"
    );
    assert_eq!(refused, 150);
    // Each spelling got its share before the download bucket ran out: none was refused
    // by its other class (default's 500 is far from spent by 250).
    assert_eq!(admitted, [250; 6]);
}

/// Spellings that climb out of the download route also spend the class of the path they
/// normalise to: the knowledge budget of an IP that downloaded through `../../knowledge`
/// is what it spent.
#[test]
fn a_climbing_spelling_spends_both_classes() {
    let ex = demo();
    let ip = "203.0.113.151";
    let mut connection = RawConnection::connect(&ex.base);
    for _ in 0..10 {
        let response = connection.send(
            "GET",
            "/api/documents/temp/%2e%2e/%2E%2E/knowledge/f",
            &[("x-forwarded-for", ip)],
        );
        assert_eq!(response.status, 200);
    }
    let knowledge = connection.send("GET", "/api/knowledge/articles", &[("x-forwarded-for", ip)]);
    assert_eq!(knowledge.status, 200);
    assert_eq!(knowledge.header("x-ratelimit-limit"), "2000");
    assert_eq!(knowledge.header("x-ratelimit-remaining"), "1989");
    let download = connection.send(
        "GET",
        "/api/documents/temp/report.pdf",
        &[("x-forwarded-for", ip)],
    );
    assert_eq!(download.header("x-ratelimit-limit"), "1500");
    assert_eq!(download.header("x-ratelimit-remaining"), "1489");
}
