//! Seed 001 (examples/seed_001) as a client sees it: points per request, one budget per
//! organization shared by its tokens, `X-RateLimit-Reset` as an HTTP date.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{header, Example};
use reqwest::{Method, Response};

fn start() -> Example {
    Example::start("seed_001", &[])
}

async fn call(app: &Example, token: &str, method: Method, path: &str) -> Response {
    app.request(method, path)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Seconds since the epoch of an IMF-fixdate (`Sat, 01 Jun 2024 00:01:00 GMT`); panics on
/// anything else.
fn parse_http_date(text: &str) -> u64 {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let fields: Vec<&str> = text.split(' ').collect();
    assert_eq!(fields.len(), 6, "not an HTTP date: {text:?}");
    assert_eq!(fields[5], "GMT", "{text:?}");
    let weekday = fields[0].strip_suffix(',').expect("weekday,");
    assert!(fields[1].len() == 2 && fields[4].len() == 8, "{text:?}");
    let day: u64 = fields[1].parse().unwrap();
    let month = MONTHS.iter().position(|m| *m == fields[2]).expect("month") as u64 + 1;
    let year: u64 = fields[3].parse().unwrap();
    let hms: Vec<u64> = fields[4].split(':').map(|x| x.parse().unwrap()).collect();
    // Days from 1970-01-01 to year-month-day (proleptic Gregorian), counting from March.
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era_days = (y / 400) * 146_097;
    let yoe = y % 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let days = era_days + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    assert_eq!(DAYS[(days % 7) as usize], weekday, "weekday of {text:?}");
    days * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2]
}

#[test]
fn http_date_parser_reads_a_known_date() {
    assert_eq!(
        parse_http_date("Sat, 01 Jun 2024 00:01:00 GMT"),
        1_717_200_060
    );
    assert_eq!(
        parse_http_date("Thu, 29 Feb 2024 12:00:00 GMT"),
        1_709_208_000
    );
}

/// Limit, remaining, and the reset as Unix seconds; checks the reset is an HTTP date within
/// the next rolling minute (66 s: the window and one segment).
fn budget(response: &Response) -> (u64, u64, u64) {
    let reset = parse_http_date(&header(response, "x-ratelimit-reset"));
    let now = unix_now();
    assert!(
        reset + 1 >= now && reset <= now + 67,
        "reset {reset} not within the minute after {now}"
    );
    (
        header(response, "x-ratelimit-limit").parse().unwrap(),
        header(response, "x-ratelimit-remaining").parse().unwrap(),
        reset,
    )
}

#[tokio::test]
async fn build_plan_spends_points_by_complexity_across_all_its_tokens() {
    let app = start();
    // 9 batch operations (10 points each) on one token, alternating with the other token.
    let mut spent = 0;
    for i in 0..9 {
        let token = if i % 2 == 0 {
            "tok_globex_1"
        } else {
            "tok_globex_2"
        };
        let r = call(&app, token, Method::POST, "/v1/contacts/batch").await;
        assert_eq!(r.status(), 200, "batch #{i}");
        spent += 10;
        let (limit, remaining, _) = budget(&r);
        assert_eq!((limit, remaining), (100, 100 - spent));
    }
    // A write costs 3, a single read 1: 94 spent, 6 left.
    let r = call(&app, "tok_globex_2", Method::POST, "/v1/contacts").await;
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "x-ratelimit-remaining"), "7");
    let r = call(&app, "tok_globex_1", Method::GET, "/v1/contacts/7").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-remaining"), "6");

    // A 10-point batch no longer fits: refused, and a refusal spends nothing.
    let refused = call(&app, "tok_globex_1", Method::POST, "/v1/contacts/batch").await;
    assert_eq!(refused.status(), 429);
    let (limit, remaining, reset) = budget(&refused);
    assert_eq!((limit, remaining), (100, 6));
    let retry: u64 = header(&refused, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // The page: Retry-After (seconds) or X-RateLimit-Reset (date) say when to restart.
    assert!(
        reset.abs_diff(unix_now() + retry) <= 1,
        "retry {retry}, reset {reset}, now {}",
        unix_now()
    );

    // The 5-point aggregation still fits exactly; then nothing does, not even 1 point.
    let r = call(&app, "tok_globex_2", Method::GET, "/v1/reports/summary").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-remaining"), "1");
    let r = call(&app, "tok_globex_2", Method::GET, "/v1/contacts/1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-remaining"), "0");
    for (token, method, path) in [
        ("tok_globex_1", Method::GET, "/v1/contacts/1"),
        ("tok_globex_2", Method::DELETE, "/v1/contacts/1"),
    ] {
        let r = call(&app, token, method, path).await;
        assert_eq!(r.status(), 429, "{path}");
        assert_eq!(header(&r, "x-ratelimit-limit"), "100");
        assert_eq!(header(&r, "x-ratelimit-remaining"), "0");
        assert!(!header(&r, "retry-after").is_empty());
    }

    // Another organization has its own budget, sized by its plan.
    let r = call(&app, "tok_acme_ci", Method::GET, "/v1/contacts/1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(budget(&r).0, 1000);
    assert_eq!(header(&r, "x-ratelimit-remaining"), "999");
}

#[tokio::test]
async fn enterprise_plan_has_1000_points_shared_by_its_tokens() {
    let app = start();
    // 100 exports of 10 points, alternating the organization's two tokens.
    for i in 0..100u64 {
        let token = if i % 2 == 0 {
            "tok_acme_ci"
        } else {
            "tok_acme_web"
        };
        let r = call(&app, token, Method::GET, "/v1/export").await;
        assert_eq!(r.status(), 200, "export #{i}");
        assert_eq!(header(&r, "x-ratelimit-limit"), "1000");
        assert_eq!(
            header(&r, "x-ratelimit-remaining"),
            (1000 - 10 * (i + 1)).to_string()
        );
    }
    for token in ["tok_acme_ci", "tok_acme_web"] {
        let r = call(&app, token, Method::GET, "/v1/contacts/1").await;
        assert_eq!(r.status(), 429, "{token}");
        assert_eq!(header(&r, "x-ratelimit-remaining"), "0");
    }
    // The Build organization is untouched.
    let r = call(&app, "tok_globex_1", Method::GET, "/v1/contacts").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-limit"), "100");
    assert_eq!(header(&r, "x-ratelimit-remaining"), "97");
}

#[tokio::test]
async fn costs_per_route_and_only_the_guessing_budget_without_a_known_token() {
    let app = start();
    let expected = [
        (Method::GET, "/v1/contacts/1", 1),
        (Method::GET, "/v1/contacts", 3),
        (Method::POST, "/v1/contacts", 3),
        (Method::PATCH, "/v1/contacts/1", 3),
        (Method::DELETE, "/v1/contacts/1", 3),
        (Method::GET, "/v1/reports/summary", 5),
        (Method::POST, "/v1/contacts/batch", 10),
        (Method::GET, "/v1/export", 10),
        (Method::GET, "/v1/unknown", 1),
    ];
    let mut remaining = 1000;
    for (method, path, cost) in expected {
        let r = call(&app, "tok_acme_web", method, path).await;
        remaining -= cost;
        assert_eq!(
            header(&r, "x-ratelimit-remaining"),
            remaining.to_string(),
            "{path} costs {cost}"
        );
    }
    for token in [None, Some("tok_nobody")] {
        let mut request = app.get("/v1/contacts/1");
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 401);
        // The failed-authentication budget per IP (see tests/key_guessing.rs).
        assert_eq!(header(&r, "x-ratelimit-limit"), "20");
    }
}
