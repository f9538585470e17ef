//! Forged forwarding headers, and requests built to break the middleware, against a real
//! server. (Header parsing itself is property-tested in `client_ip_spoofing.rs`.) Needs the
//! `axum` feature: without it the layer does not read axum's `ConnectInfo`.
#![cfg(feature = "axum")]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use common::{clock_and_store, header, serve, status_of, times, Server};
use tollgate::{ClientIp, HeaderStyle, Limiter, Policy, ProxyHeader, ResetFormat};

async fn ok() -> &'static str {
    "ok"
}

async fn limited_server(client_ip: ClientIp) -> Server {
    let (_clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .header_style(HeaderStyle::x_ratelimit(ResetFormat::Seconds))
        .client_ip(client_ip)
        .identity(common::user_header)
        .route("/api/webhooks/*", Policy::exempt())
        .route(
            "/*",
            Policy::named("default")
                .per_ip("3/min")
                .per_api_key("x-api-key", "100/min"),
        )
        .build()
        .unwrap();
    let app = Router::new()
        .route("/api/items", get(ok))
        .route("/api/webhooks/{name}", get(ok))
        .fallback(|| async { "fallback" })
        .layer(limiter.layer());
    serve(app).await
}

#[tokio::test]
async fn an_untrusted_client_forging_every_header_is_still_itself() {
    for header_kind in [
        ProxyHeader::XForwardedFor,
        ProxyHeader::Forwarded,
        ProxyHeader::XRealIp,
    ] {
        // Proxies are trusted, but not the loopback peer the test connects from.
        let server = limited_server(
            ClientIp::peer()
                .trust_proxies(["10.0.0.0/8", "192.168.0.0/16"])
                .proxy_header(header_kind),
        )
        .await;
        let mut statuses = Vec::new();
        for i in 0..6 {
            let forged = format!("198.51.100.{i}");
            let r = server
                .get("/api/items")
                .header("x-forwarded-for", format!("{forged}, 10.0.0.{i}"))
                .header("forwarded", format!("for={forged}"))
                .header("x-real-ip", &forged)
                .send()
                .await
                .unwrap();
            statuses.push(r.status().as_u16());
        }
        assert_eq!(
            statuses,
            vec![200, 200, 200, 429, 429, 429],
            "{header_kind:?}"
        );
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_gets_its_own_bucket() {
    // The test's connection plays the proxy: 127.0.0.1 is trusted.
    let server = limited_server(ClientIp::peer().trust_proxies(["127.0.0.0/8"])).await;
    let via_proxy =
        |xff: &'static str| status_of(server.get("/api/items").header("x-forwarded-for", xff));
    for _ in 0..3 {
        assert_eq!(via_proxy("203.0.113.7").await, 200);
    }
    assert_eq!(via_proxy("203.0.113.7").await, 429);
    // Another client behind the same proxy has its own budget.
    for _ in 0..3 {
        assert_eq!(via_proxy("203.0.113.8").await, 200);
    }
    // A client that forges an entry to the left of what the proxy appended stays itself.
    assert_eq!(via_proxy("198.51.100.99, 203.0.113.7").await, 429);
    // IPv6 clients share their /64.
    assert_eq!(via_proxy("2001:db8:1:2::1").await, 200);
    assert_eq!(via_proxy("2001:db8:1:2::2").await, 200);
    assert_eq!(via_proxy("2001:db8:1:2:ffff::3").await, 200);
    assert_eq!(via_proxy("2001:db8:1:2::4").await, 429);
    assert_eq!(via_proxy("2001:db8:1:3::1").await, 200);
}

/// Sends raw bytes and returns the status line of the answer.
fn raw(server: &Server, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn no_request_makes_it_panic() {
    let server = limited_server(ClientIp::peer().trust_proxies(["127.0.0.0/8"])).await;
    let addr = server.addr();

    // Malformed header values: non-UTF-8, empty, garbage, in every header the limiter reads.
    let odd = [
        reqwest::header::HeaderValue::from_bytes(b"\xff\xfe\xfd").unwrap(),
        reqwest::header::HeaderValue::from_static(""),
        reqwest::header::HeaderValue::from_static("unknown, , ,,"),
        reqwest::header::HeaderValue::from_static("[::1]:99999, 300.1.1.1, for=\"\\"),
    ];
    for value in &odd {
        let r = server
            .get("/api/items")
            .header("x-forwarded-for", value.clone())
            .header("forwarded", value.clone())
            .header("x-real-ip", value.clone())
            .header("x-api-key", value.clone())
            .header("x-user", value.clone())
            .send()
            .await
            .unwrap();
        // Every one of them is limited (as the proxy itself, or its last good hop).
        assert!(matches!(r.status().as_u16(), 200 | 429), "{value:?}");
    }

    // 10,000 X-Forwarded-For entries in one header, and in 80 lines of 125 (hyper takes
    // at most 100 header lines).
    let entries: Vec<String> = (0..10_000)
        .map(|i| format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256))
        .collect();
    let r = server
        .get("/api/items")
        .header("x-forwarded-for", entries.join(", "))
        .send()
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 200 | 429));
    let mut request = server.get("/api/items");
    for line in entries.chunks(125) {
        request = request.header("x-forwarded-for", line.join(","));
    }
    assert!(matches!(
        request.send().await.unwrap().status().as_u16(),
        200 | 429
    ));

    // Paths: percent-encoded non-UTF-8, raw non-ASCII bytes, dot segments, and 20 kB.
    let server_ref = &server;
    let statuses = tokio::task::spawn_blocking({
        let server = Server {
            base: server_ref.base.clone(),
            client: server_ref.client.clone(),
        };
        move || {
            [
                raw(&server, b"GET /api/%ff%fe%00 HTTP/1.1\r\nhost: x\r\n\r\n"),
                raw(&server, b"GET /api/\xff\xfe HTTP/1.1\r\nhost: x\r\n\r\n"),
                raw(&server, b"GET /api/webhooks/../items HTTP/1.1\r\nhost: x\r\n\r\n"),
                raw(&server, format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a/".repeat(10_000)).as_bytes()),
                raw(&server, b"GET /api/items HTTP/1.1\r\nhost: x\r\nx-forwarded-for: \xc3\x28, \xa0\xa1\r\nx-api-key: \x80\x81\r\n\r\n"),
            ]
        }
    })
    .await
    .unwrap();
    for status in &statuses {
        assert!(status.starts_with("HTTP/1.1 "), "{statuses:?}");
        assert!(!status.starts_with("HTTP/1.1 5"), "{statuses:?}");
    }
    // The server is still up and still limiting.
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = c
        .get(format!("http://{addr}/api/items"))
        .header("x-forwarded-for", "203.0.113.50")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-remaining"), "2");
}

#[tokio::test]
async fn unusual_spellings_do_not_reach_an_exempt_class() {
    let server = limited_server(ClientIp::peer()).await;
    // /api/webhooks/* is exempt; these reach the same handlers (or the fallback) but are
    // limited like everything else.
    assert_eq!(
        server.statuses("/api/webhooks/stripe", 5).await,
        times(200, 5)
    );
    let mut statuses = Vec::new();
    for path in [
        "/api/items",
        "/api//webhooks/x",
        "/api/%77ebhooks/x",
        "/api/webhooks%2Fx",
    ] {
        statuses.push(server.status(path).await);
    }
    assert_eq!(statuses, vec![200, 200, 200, 429]);
}

/// A limiter of `routes` on a memory store, serving `/api/items` and `/keys/items`.
async fn credential_server(routes: Vec<(&str, Policy)>) -> (Limiter, Server) {
    let (_clock, store) = clock_and_store();
    let limiter = routes
        .into_iter()
        .fold(Limiter::builder().store(store), |b, (pattern, policy)| {
            b.route(pattern, policy)
        })
        .build()
        .unwrap();
    let app = Router::new()
        .route("/api/items", get(ok))
        .route("/keys/items", get(ok))
        .layer(limiter.layer());
    (limiter, serve(app).await)
}

/// The statuses of requests to `path`, one per value of `header` in `values`.
async fn statuses_with(server: &Server, path: &str, header: &str, values: &[&str]) -> Vec<u16> {
    let mut statuses = Vec::new();
    for value in values {
        statuses.push(status_of(server.get(path).header(header, *value)).await);
    }
    statuses
}

/// A bearer token keyed from `Authorization` is one budget however its scheme is spelled
/// and spaced, as the authentication reading it takes them (a review spent 3 a minute 113
/// times over, one spelling at a time); an operator's override of it, given in any
/// spelling, reaches the same key.
#[tokio::test]
async fn a_bearer_token_is_one_budget_whatever_its_spelling() {
    use tollgate::Key;
    let bearer = Policy::named("api").limit(Key::api_key("authorization"), "3/min");
    let (limiter, server) = credential_server(vec![("/*", bearer)]).await;
    let spellings = [
        "Bearer tok",
        "bearer tok",
        "BEARER tok",
        "Bearer   tok",
        "Bearer\ttok",
    ];
    let twice: Vec<&str> = spellings.iter().flat_map(|s| [*s, *s]).collect();
    let statuses = statuses_with(&server, "/api/items", "authorization", &twice).await;
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 3);
    // Another token is another budget.
    let other = statuses_with(&server, "/api/items", "authorization", &["Bearer TOK"]).await;
    assert_eq!(other, [200]);
    // An override given as `bEaReR tok` is the override of that token.
    limiter
        .set_override(&Key::api_key("authorization"), "bEaReR  tok", "10/min")
        .unwrap();
    let overridden = statuses_with(&server, "/api/items", "authorization", &["Bearer tok"]);
    assert_eq!(overridden.await, [429], "the endpoint's 3 still spent");
    let stored = limiter.overrides();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].key,
        limiter.stored_key("api:api_key", "Bearer tok").unwrap()
    );
}

/// An API key read two ways under one kind (from `x-api-key` as sent, from `authorization`
/// as a credential): an override by kind applies whichever header a request sends it in (a
/// re-check: set by kind, it was stored under the first reading only, and a bearer token
/// it named was admitted 3 of 3 where 1).
#[tokio::test]
async fn an_override_by_kind_applies_to_each_reading_of_the_kind() {
    use tollgate::Key;
    let (limiter, server) = credential_server(vec![
        (
            "/keys/*",
            Policy::named("keys").limit(Key::api_key("x-api-key"), "3/min"),
        ),
        (
            "/*",
            Policy::named("bearer").limit(Key::api_key("authorization"), "3/min"),
        ),
    ])
    .await;
    for value in ["Bearer tok_9", "k1"] {
        limiter
            .set_override_for_kind("api_key", value, "1/min")
            .unwrap();
    }
    for (path, header, value) in [
        ("/api/items", "authorization", "bearer  tok_9"),
        ("/keys/items", "x-api-key", "k1"),
    ] {
        let statuses = statuses_with(&server, path, header, &[value; 3]).await;
        assert_eq!(statuses, [200, 429, 429], "{header}: {value}");
    }
    // `Bearer tok_9` under both readings, `k1` under one (its two readings are one).
    assert_eq!(limiter.overrides().len(), 3);
    assert!(limiter
        .remove_override_for_kind("api_key", "Bearer tok_9")
        .unwrap());
    assert_eq!(limiter.overrides().len(), 1, "k1's stays");
}

/// A per-key quota function is given the credential as the client sent it (its scheme as
/// spelled: a function reading `Bearer <token>` keeps working), while the budget is the
/// token's whatever its spelling (a re-check: the function was given `bearer tok` and
/// skipped the limit).
#[tokio::test]
async fn a_quota_function_reads_the_credential_as_sent() {
    use tollgate::{Key, Limit, Quota};
    let tiered = Policy::named("api").limit_with(Key::api_key("authorization"), |value, _| {
        value
            .strip_prefix("Bearer ")
            .map(|_| Limit::sliding(Quota::per_minute(2)))
    });
    let (_limiter, server) = credential_server(vec![("/*", tiered)]).await;
    let spellings = ["Bearer tok", "Bearer  tok", "Bearer tok"];
    let statuses = statuses_with(&server, "/api/items", "authorization", &spellings).await;
    assert_eq!(statuses, [200, 200, 429]);
}
