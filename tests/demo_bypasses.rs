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

/// Long paths are read whole: a path of many segments whose `..` climb out of the download
/// route, or one over 8 KiB, is still served by that route and still spends its budget
/// (1500/min per IP), and a template id of 8 KiB is still the `generate` class (300/min),
/// not the looser default one. A reading cut short at the limits found another class, or
/// none: 3,000 such downloads a minute reached the handler with no limit at all.
#[test]
fn a_long_path_spends_the_budget_of_the_route_that_serves_it() {
    let ex = demo();
    let ip = "203.0.113.152";
    let long = "a".repeat(8 * 1024 + 8);
    let spellings = [
        format!("/api/documents/temp/../../..{}", "/a".repeat(70)),
        format!("/api/documents/temp/../../../x/{long}"),
        format!("/api/documents/temp/../../knowledge/{long}"),
        "/api/documents/temp/report.pdf".to_string(),
    ];
    let mut connection = RawConnection::connect(&ex.base);
    let mut admitted = [0usize; 4];
    for i in 0..1540 {
        let which = i % spellings.len();
        let response = connection.send("GET", &spellings[which], &[("x-forwarded-for", ip)]);
        match response.status {
            200 => admitted[which] += 1,
            429 => assert_eq!(response.header("x-ratelimit-limit"), "1500", "{which}"),
            other => panic!("{which}: {other} {}", response.body),
        }
    }
    assert_eq!(
        admitted.iter().sum::<usize>(),
        1500,
        "admitted per spelling: {admitted:?}"
    );

    let ip = "203.0.113.153";
    let path = format!("/api/templates/{long}/generate");
    let statuses: Vec<u16> = (0..310)
        .map(|_| {
            connection
                .send("POST", &path, &[("x-forwarded-for", ip)])
                .status
        })
        .collect();
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 300);
    assert!(
        statuses[300..].iter().all(|&s| s == 429),
        "{:?}",
        &statuses[300..]
    );
    let response = connection.send(
        "POST",
        "/api/templates/7/generate",
        &[("x-forwarded-for", ip)],
    );
    assert_eq!(response.status, 429);
    assert_eq!(response.header("x-ratelimit-limit"), "300");
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

/// Posts `body_len` bytes to `path` from `ip` the way a careful client uploads a large body
/// (`Expect: 100-continue`): the body is sent only if the server asks for it. Returns the
/// final status and whether the body was asked for. One connection per call.
fn post_large(ex: &Example, path: &str, ip: &str, body_len: usize) -> (u16, bool) {
    use std::io::{BufRead, BufReader, Write};
    let addr = ex.base.strip_prefix("http://").unwrap();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\nx-forwarded-for: {ip}\r\n\
         content-type: application/json\r\ncontent-length: {body_len}\r\n\
         expect: 100-continue\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let status = |reader: &mut BufReader<std::net::TcpStream>| {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        line.split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"))
    };
    let first = status(&mut reader);
    if first != 100 {
        return (first, false);
    }
    // Asked for the body: send it from another thread (the server may stop reading it
    // and answer first), and read the final status line.
    let mut line = String::new();
    reader.read_line(&mut line).unwrap(); // the blank line after `100 Continue`
    let mut writer = stream;
    let sender = std::thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        let mut left = body_len;
        while left > 0 {
            let n = left.min(chunk.len());
            if writer.write_all(&chunk[..n]).is_err() {
                break;
            }
            left -= n;
        }
    });
    let last = status(&mut reader);
    drop(reader);
    let _ = sender.join();
    (last, true)
}

/// A sign-in body over the demo's limit (16 KiB) is answered `413` as the demo's other
/// errors are: JSON, `{"error": ...}`, with the AUTH bucket's headers it spent.
#[tokio::test]
async fn an_oversized_sign_in_body_is_answered_in_json() {
    let ex = demo();
    let response = ex
        .post("/api/auth/sign-in")
        .header("x-forwarded-for", "203.0.113.162")
        .header("content-type", "application/json")
        .body(vec![b' '; 3 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(
        common::header(&response, "content-type"),
        "application/json"
    );
    assert_eq!(common::header(&response, "x-ratelimit-limit"), "20");
    assert_eq!(common::header(&response, "x-ratelimit-remaining"), "19");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({ "error": "Failed to buffer the request body: length limit exceeded" })
    );
}

/// A sign-in body is read up to 16 KiB, not axum's 2 MB: each is held whole while it is
/// read, and AUTH admits many at once (a review's 400 sign-ins of 2 MB at once, 20 per
/// address, took the demo from 15 MB to 510 MB). One byte more is a `413`, at both sign-ins;
/// 16 KiB of JSON is read (a wrong password: 401).
#[tokio::test]
async fn a_sign_in_body_is_read_up_to_16_kib() {
    let ex = demo();
    let limit = 16 * 1024;
    let credentials = r#"{"email":"big@example.com","password":"wrong"}"#;
    let padded = |len: usize| format!("{credentials:<len$}");
    for (path, ip) in [
        ("/api/auth/sign-in", "203.0.113.163"),
        ("/api/portal/auth/sign-in", "203.0.113.164"),
    ] {
        let send = |body: String| {
            ex.post(path)
                .header("x-forwarded-for", ip)
                .header("content-type", "application/json")
                .body(body)
                .send()
        };
        assert_eq!(send(padded(limit)).await.unwrap().status(), 401, "{path}");
        let over = send(padded(limit + 1)).await.unwrap();
        assert_eq!(over.status(), 413, "{path}");
        assert_eq!(common::header(&over, "x-ratelimit-remaining"), "18");
    }
}

/// Sign-in bodies over the demo's limit (16 KiB) are refused (413), but only after the shared
/// AUTH bucket (20 per 15 minutes per IP) is charged: of 30 posts of 3 MB from one IP, the
/// first 20 are read and refused as too large, the next 10 are refused by the limit before
/// their body is read, and the IP's other AUTH routes are spent too.
#[test]
fn oversized_sign_in_bodies_spend_the_auth_bucket_before_the_body_is_read() {
    let ex = demo();
    let ip = "203.0.113.160";
    let mut answers = Vec::new();
    for n in 0..30 {
        let path = if n % 2 == 0 {
            "/api/auth/sign-in"
        } else {
            "/api/portal/auth/sign-in"
        };
        answers.push(post_large(&ex, path, ip, 3 * 1024 * 1024));
    }
    let mut expected = vec![(413, true); 20];
    expected.extend(vec![(429, false); 10]);
    assert_eq!(answers, expected);
    let mut connection = common::RawConnection::connect(&ex.base);
    let forgot = connection.send(
        "POST",
        "/api/auth/forgot-password",
        &[("x-forwarded-for", ip)],
    );
    assert_eq!(forgot.status, 429);
    assert_eq!(forgot.header("x-ratelimit-limit"), "20");
    // Another IP signs in as usual, its body read.
    assert_eq!(
        post_large(&ex, "/api/auth/sign-in", "203.0.113.161", 10),
        (400, true)
    );
}
