//! Black-box tests of `examples/demo` (seed 000): the demo runs as its own process and is
//! checked over HTTP with a real client.
//!
//! Each test starts its own demo with `TRUSTED_PROXIES=127.0.0.1/32` and picks its clients'
//! addresses with `X-Forwarded-For`, so every check starts from fresh buckets.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{header, times, Example};
use reqwest::{RequestBuilder, Response};
use serde_json::{json, Value};

/// The demo behind a trusted proxy (us).
fn demo() -> Example {
    Example::start("demo", &[("TRUSTED_PROXIES", "127.0.0.1/32")])
}

fn get(ex: &Example, ip: &str, path: &str) -> RequestBuilder {
    ex.get(path).header("x-forwarded-for", ip)
}

fn post(ex: &Example, ip: &str, path: &str) -> RequestBuilder {
    ex.post(path).header("x-forwarded-for", ip)
}

async fn send(request: RequestBuilder) -> Response {
    request.send().await.unwrap()
}

async fn status(request: RequestBuilder) -> u16 {
    send(request).await.status().as_u16()
}

fn credentials(email: &str, password: &str) -> Value {
    json!({ "email": email, "password": password })
}

/// Checks a 429 byte for byte against seed 000's shape; returns its `Retry-After`.
async fn assert_refusal(response: Response, limit: u64, max_wait: u64) -> u64 {
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "content-type"), "application/json");
    let wait: u64 = header(&response, "retry-after").parse().unwrap();
    assert!((1..=max_wait).contains(&wait), "Retry-After {wait}");
    assert_eq!(header(&response, "x-ratelimit-limit"), limit.to_string());
    assert_eq!(header(&response, "x-ratelimit-remaining"), "0");
    let reset: u64 = header(&response, "x-ratelimit-reset").parse().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        reset >= now && reset <= now + max_wait + 1,
        "reset {reset} now {now}"
    );
    let body = response.text().await.unwrap();
    assert_eq!(
        body,
        format!(
            r#"{{"error":"Too Many Requests","message":"Rate limit exceeded; retry in {wait} seconds.","retryAfter":{wait}}}"#
        )
    );
    wait
}

#[tokio::test(flavor = "multi_thread")]
async fn default_class_admits_exactly_500_per_ip_then_answers_seed_429() {
    let ex = demo();
    let ip = "203.0.113.1";
    let first = send(get(&ex, ip, "/api/projects")).await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-ratelimit-limit"), "500");
    assert_eq!(header(&first, "x-ratelimit-remaining"), "499");
    assert_eq!(
        ex.statuses(499, || get(&ex, ip, "/api/projects")).await,
        times(200, 499)
    );
    // The 501st: the seed's 429 (a sliding minute of 10 segments waits at most 66 s).
    assert_refusal(send(get(&ex, ip, "/api/projects")).await, 500, 60).await;
    // /api/me is in the same class; the others have buckets of their own.
    assert_eq!(status(get(&ex, ip, "/api/me")).await, 429);
    for (method_post, path, limit) in [
        (false, "/api/twilio/numbers", "1200"),
        (true, "/api/templates/7/generate", "300"),
        (false, "/api/documents/1/download", "1500"),
        (false, "/api/knowledge/articles", "2000"),
        (true, "/api/assistant/chat", "60"),
    ] {
        let request = if method_post {
            post(&ex, ip, path)
        } else {
            get(&ex, ip, path)
        };
        let response = send(request).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(header(&response, "x-ratelimit-limit"), limit, "{path}");
    }
    // Exempt: never limited, no rate-limit headers, even for an IP whose default is spent.
    for (method_post, path) in [
        (true, "/api/twilio/voice/incoming"),
        (true, "/api/twilio/sms/status"),
        (true, "/api/stripe/webhook"),
        (true, "/api/webhooks/resend"),
        (false, "/api/cron/nightly"),
        (true, "/api/onlyoffice/callback"),
        (true, "/api/teams/switch"),
    ] {
        let request = || {
            if method_post {
                post(&ex, ip, path)
            } else {
                get(&ex, ip, path)
            }
        };
        let response = send(request()).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(header(&response, "x-ratelimit-limit"), "", "{path}");
        assert_eq!(header(&response, "ratelimit"), "", "{path}");
    }
    assert_eq!(
        ex.statuses(520, || post(&ex, ip, "/api/stripe/webhook"))
            .await,
        times(200, 520)
    );
    // Auth routes are not under the middleware: the handler's AUTH bucket is untouched.
    assert_eq!(
        status(post(&ex, ip, "/api/auth/forgot-password")).await,
        202
    );
    // Another IP has its own budget.
    assert_eq!(status(get(&ex, "203.0.113.2", "/api/projects")).await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_is_60_per_ip_and_30_per_user() {
    let ex = demo();
    let chat = |ip: &'static str, user: Option<&'static str>| {
        let request = post(&ex, ip, "/api/assistant/chat");
        match user {
            Some(u) => request.bearer_auth(u),
            None => request,
        }
    };
    // Anonymous: the 61st request from one IP is the 429.
    assert_eq!(
        ex.statuses(60, || chat("198.51.100.1", None)).await,
        times(200, 60)
    );
    assert_refusal(send(chat("198.51.100.1", None)).await, 60, 60).await;

    // Two users on one IP: each 30 (the 31st is refused), together the IP's 60.
    let ip = "198.51.100.2";
    assert_eq!(
        ex.statuses(30, || chat(ip, Some("alice"))).await,
        times(200, 30)
    );
    assert_refusal(send(chat(ip, Some("alice"))).await, 30, 60).await;
    assert_eq!(
        ex.statuses(30, || chat(ip, Some("bob"))).await,
        times(200, 30)
    );
    assert_eq!(status(chat(ip, None)).await, 429, "the IP's 60 are spent");
    // The user's bucket follows the user to another IP; another user there is fine.
    assert_eq!(status(chat("198.51.100.3", Some("alice"))).await, 429);
    assert_eq!(status(chat("198.51.100.3", Some("carol"))).await, 200);
    // A session cookie is the same user as the bearer token.
    let cookie = post(&ex, "198.51.100.4", "/api/assistant/chat").header("cookie", "session=alice");
    assert_eq!(status(cookie).await, 429);
}

/// Spends one request of signed-in `dana` on `path`: its `RateLimit-Policy` and
/// `X-RateLimit-Remaining`.
async fn spend(ex: &Example, ip: &str, path: &str) -> (String, String) {
    let r = send(get(ex, ip, path).bearer_auth("dana")).await;
    assert_eq!(r.status(), 200, "{path}");
    (
        header(&r, "ratelimit-policy"),
        header(&r, "x-ratelimit-remaining"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn generate_admits_300_and_route_classes_spend_their_own_buckets() {
    let ex = demo();
    let ip = "192.0.2.10";
    assert_eq!(
        ex.statuses(300, || post(&ex, ip, "/api/templates/42/generate"))
            .await,
        times(200, 300)
    );
    assert_refusal(
        send(post(&ex, ip, "/api/templates/9/generate")).await,
        300,
        66,
    )
    .await;
    // GET on that path is the default class.
    assert_eq!(status(get(&ex, ip, "/api/projects")).await, 200);

    // The three download routes share one bucket; default and twilio have their own.
    let ip = "192.0.2.11";
    let downloads = r#""downloads-ip";q=1500;w=60, "downloads-user";q=15000;w=3600"#;
    assert_eq!(
        spend(&ex, ip, "/api/documents/1/download").await,
        (downloads.to_string(), "1499".to_string())
    );
    assert_eq!(
        spend(&ex, ip, "/api/documents/temp/report.pdf").await,
        (downloads.to_string(), "1498".to_string())
    );
    assert_eq!(
        spend(&ex, ip, "/api/invoices/9/pdf").await,
        (downloads.to_string(), "1497".to_string())
    );
    assert_eq!(
        spend(&ex, ip, "/api/twilio/numbers").await,
        (
            r#""twilio-ip";q=1200;w=60, "twilio-user";q=12000;w=3600"#.to_string(),
            "1199".to_string()
        )
    );
    assert_eq!(
        spend(&ex, ip, "/api/knowledge/articles").await,
        (
            r#""knowledge-ip";q=2000;w=60, "knowledge-user";q=20000;w=3600"#.to_string(),
            "1999".to_string()
        )
    );
    assert_eq!(
        spend(&ex, ip, "/api/projects").await,
        (
            r#""default-ip";q=500;w=60, "default-user";q=10000;w=3600"#.to_string(),
            "499".to_string()
        )
    );
}

/// "5 / 30 minutes" counts failures: a successful sign-in between them gives back its own
/// attempt and lifts none of them, so the fifth failure in 30 minutes locks the e-mail
/// whatever succeeded in between (a review: wrong four times, right, wrong twice, right:
/// six failures in a second and no lock, as a success cleared the count; each of the
/// owner's sign-ins gave a guesser four more tries).
#[tokio::test(flavor = "multi_thread")]
async fn a_successful_sign_in_does_not_lift_the_failures_before_it() {
    let ex = demo();
    let ip = "198.51.100.30";
    let sign_in = |password: &str| {
        post(&ex, ip, "/api/auth/sign-in").json(&credentials("d@example.com", password))
    };
    // Each answer, a success too, shows the failures the e-mail has left (a review: a
    // success showed only the AUTH bucket, the failures' 401s the lockout).
    let mut answers = Vec::new();
    for password in ["wrong", "wrong", "wrong", "wrong", "demo-password", "wrong"] {
        let r = send(sign_in(password)).await;
        answers.push((
            r.status().as_u16(),
            header(&r, "x-ratelimit-limit"),
            header(&r, "x-ratelimit-remaining"),
        ));
    }
    let shown = |status, remaining: &str| (status, "5".to_string(), remaining.to_string());
    assert_eq!(
        answers,
        [
            shown(401, "4"),
            shown(401, "3"),
            shown(401, "2"),
            shown(401, "1"),
            shown(200, "1"),
            shown(401, "0"),
        ]
    );
    // Five failures in 30 minutes: locked, the right password too.
    assert_refusal(send(sign_in("demo-password")).await, 5, 1800).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_bucket_is_shared_and_failed_sign_ins_lock_the_email() {
    let ex = demo();
    let ip = "198.51.100.20";
    let sign_in = |ip: &'static str, email: &str, password: &str| {
        post(&ex, ip, "/api/auth/sign-in").json(&credentials(email, password))
    };
    // Five wrong passwords for one e-mail: 401 each; then it is locked, right password or not.
    for _ in 0..5 {
        assert_eq!(status(sign_in(ip, "a@example.com", "wrong")).await, 401);
    }
    let locked = send(sign_in(ip, "A@example.com ", "demo-password")).await;
    assert_refusal(locked, 5, 1800).await;
    // Another e-mail still signs in (and gets a session cookie).
    let ok = send(sign_in(ip, "b@example.com", "demo-password")).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(
        header(&ok, "set-cookie"),
        "session=b@example.com; Path=/; HttpOnly; SameSite=Lax"
    );
    assert_eq!(
        ok.json::<Value>().await.unwrap(),
        json!({"userId": "b@example.com"})
    );
    // The lockout is per e-mail, not per IP.
    assert_eq!(
        status(sign_in("198.51.100.21", "a@example.com", "demo-password")).await,
        429
    );
    assert_eq!(
        status(sign_in("198.51.100.21", "c@example.com", "demo-password")).await,
        200
    );

    // So far 7 AUTH requests from `ip`; 13 more across the other auth routes make 20.
    let routes = [
        "/api/auth/forgot-password",
        "/api/auth/reset-password",
        "/api/portal/auth/forgot-password",
        "/api/portal/auth/reset-password",
    ];
    for path in routes.iter().cycle().take(11) {
        assert_eq!(status(post(&ex, ip, path)).await, 202, "{path}");
    }
    let portal = |password: &str| {
        post(&ex, ip, "/api/portal/auth/sign-in").json(&credentials("p@example.com", password))
    };
    assert_eq!(status(portal("wrong")).await, 401);
    assert_eq!(status(portal("demo-password")).await, 200);
    // The 21st: every route of the shared bucket refuses.
    assert_refusal(
        send(post(&ex, ip, "/api/auth/forgot-password")).await,
        20,
        990,
    )
    .await;
    for path in routes {
        assert_eq!(status(post(&ex, ip, path)).await, 429, "{path}");
    }
    assert_eq!(status(portal("demo-password")).await, 429);
    assert_eq!(
        status(sign_in(ip, "c@example.com", "demo-password")).await,
        429
    );
    // Sign-up and the magic link have buckets of their own.
    assert_eq!(status(post(&ex, ip, "/api/auth/sign-up")).await, 201);
    assert_eq!(
        status(post(&ex, ip, "/api/portal/auth/magic-link")).await,
        202
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_up_admits_20_and_magic_link_30_per_ip() {
    let ex = demo();
    let ip = "198.51.100.30";
    assert_eq!(
        ex.statuses(20, || post(&ex, ip, "/api/auth/sign-up")).await,
        times(201, 20)
    );
    assert_refusal(send(post(&ex, ip, "/api/auth/sign-up")).await, 20, 3960).await;
    assert_eq!(
        ex.statuses(30, || post(&ex, ip, "/api/portal/auth/magic-link"))
            .await,
        times(202, 30)
    );
    assert_refusal(
        send(post(&ex, ip, "/api/portal/auth/magic-link")).await,
        30,
        990,
    )
    .await;
    assert_eq!(
        status(post(&ex, "198.51.100.31", "/api/auth/sign-up")).await,
        201
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn portal_writes_per_portal_user_and_staff_on_portal_by_ip_only() {
    let ex = demo();
    let as_portal = |ip: &'static str, path: &'static str, user: &'static str| {
        post(&ex, ip, path).header("x-portal-user", user)
    };
    let uploads = "/api/portal/documents";
    let messages = "/api/portal/messages";
    assert_eq!(
        ex.statuses(40, || as_portal("192.0.2.40", uploads, "p1"))
            .await,
        times(201, 40)
    );
    assert_refusal(send(as_portal("192.0.2.40", uploads, "p1")).await, 40, 990).await;
    // Per portal user: from another IP p1 is still refused; p2 on the same IP is not.
    assert_eq!(status(as_portal("192.0.2.41", uploads, "p1")).await, 429);
    assert_eq!(status(as_portal("192.0.2.40", uploads, "p2")).await, 201);
    // Messages are a bucket of their own: 120.
    assert_eq!(
        ex.statuses(120, || as_portal("192.0.2.42", messages, "p1"))
            .await,
        times(201, 120)
    );
    assert_refusal(
        send(as_portal("192.0.2.42", messages, "p1")).await,
        120,
        990,
    )
    .await;
    // No portal user: no write.
    assert_eq!(status(post(&ex, "192.0.2.43", uploads)).await, 401);

    // Staff on /api/portal/*: the IP bucket only, their own bucket untouched.
    let ip = "192.0.2.44";
    for _ in 0..3 {
        let r = send(get(&ex, ip, uploads).bearer_auth("erin")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "ratelimit-policy"), r#""default-ip";q=500;w=60"#);
    }
    let r = send(get(&ex, ip, "/api/projects").bearer_auth("erin")).await;
    let ratelimit = header(&r, "ratelimit");
    assert!(
        ratelimit.starts_with(r#""default-ip";r=496;"#)
            && ratelimit.contains(r#""default-user";r=9999;"#),
        "{ratelimit}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn view_as_spends_the_operators_own_bucket() {
    let ex = demo();
    let user_remaining = |r: &Response| {
        let field = header(r, "ratelimit");
        let item = field
            .split(", ")
            .find(|i| i.starts_with(r#""default-user""#))
            .unwrap_or_else(|| panic!("no user bucket in {field:?}"))
            .to_string();
        item.split(';').nth(1).unwrap().to_string()
    };
    let ip = "192.0.2.50";
    for expected in ["r=9999", "r=9998"] {
        let r = send(get(&ex, ip, "/api/platform/view-as/bob").bearer_auth("olga")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(user_remaining(&r), expected);
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"operator": "olga", "viewingAs": "bob"})
        );
    }
    let olga = send(get(&ex, ip, "/api/me").header("cookie", "theme=dark; session=olga")).await;
    assert_eq!(user_remaining(&olga), "r=9997");
    let bob = send(get(&ex, ip, "/api/me").bearer_auth("bob")).await;
    assert_eq!(user_remaining(&bob), "r=9999");
}

#[tokio::test(flavor = "multi_thread")]
async fn openapi_and_html_are_generated_from_the_configuration() {
    let ex = demo();
    let doc: Value = send(ex.get("/openapi.json")).await.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let limits = |path: &str, method: &str| doc["paths"][path][method]["x-ratelimit"].clone();
    let limit = |policy: &str,
                 bucket: &str,
                 per: &str,
                 quota: &str,
                 n: u64,
                 secs: u64,
                 algorithm: &str,
                 by: &str| {
        json!({"policy": policy, "bucket": bucket, "per": per, "quota": quota, "limit": n,
               "windowSeconds": secs, "algorithm": algorithm, "enforcedBy": by})
    };
    let sliding = "sliding window";
    assert_eq!(
        limits("/api/assistant/chat", "post"),
        json!({"throttled": true, "limits": [
            limit("chat", "chat:ip", "ip", "60/min", 60, 60, sliding, "route"),
            limit("chat", "chat:user", "user", "30/min", 30, 60, sliding, "route"),
        ]})
    );
    assert_eq!(
        limits("/api/projects", "get"),
        json!({"throttled": true, "limits": [
            limit("default", "default:ip", "ip", "500/min", 500, 60, sliding, "middleware"),
            limit("default", "default:user", "user", "10000/h", 10000, 3600, sliding, "middleware"),
        ]})
    );
    assert_eq!(
        limits("/api/auth/sign-in", "post"),
        json!({"throttled": true, "limits": [
            limit("auth", "auth", "ip", "20/15min", 20, 900, sliding, "handler"),
            limit("auth-network", "auth-network", "network", "1000/15min", 1000, 900, sliding,
                  "handler"),
            limit("sign-in-failures", "sign-in-failures", "email", "5/30min", 5, 1800,
                  "sliding window (exact)", "handler"),
            limit("sign-in-failures-network", "sign-in-failures-network", "network", "5/30min",
                  5, 1800, "sliding window (exact)", "handler"),
        ]})
    );
    assert_eq!(
        limits("/api/portal/documents", "post"),
        json!({"throttled": true, "limits": [
            limit("default", "default:ip", "ip", "500/min", 500, 60, sliding, "middleware"),
            limit("portal-uploads", "portal-uploads", "portal_user", "40/15min", 40, 900, sliding, "handler"),
        ]})
    );
    assert_eq!(
        limits("/api/invoices/{id}/pdf", "get")["limits"][0]["quota"],
        "1500/min"
    );
    assert_eq!(
        limits("/api/documents/temp/{file}", "get")["limits"][0]["bucket"],
        "downloads:ip"
    );
    assert_eq!(
        limits("/api/stripe/webhook", "post"),
        json!({"throttled": false, "limits": []})
    );
    assert_eq!(
        doc["paths"]["/api/projects"]["get"]["responses"]["429"]["$ref"],
        "#/components/responses/TooManyRequests"
    );
    // Every answer carries the fields the demo's header style writes: listed on each
    // response, and on the demo's own 429.
    for name in ["X-RateLimit-Remaining", "RateLimit", "RateLimit-Policy"] {
        let listed = &doc["paths"]["/api/projects"]["get"]["responses"]["200"]["headers"][name];
        assert_eq!(
            listed["$ref"],
            format!("#/components/headers/{name}"),
            "{name}"
        );
        let too_many = &doc["components"]["responses"]["TooManyRequests"]["headers"][name];
        assert!(too_many.is_object(), "{name}");
    }

    let page = send(ex.get("/rate-limits")).await;
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    let html = page.text().await.unwrap();
    assert!(html.contains(
        "<tr><td><code>/api/knowledge/*</code></td><td>knowledge</td><td>2000/min per ip"
    ));
    assert!(html.contains(
        "<tr><td><code>/api/cron/*</code></td><td>exempt</td><td>not limited by the middleware</td></tr>"
    ));
    assert!(html.contains("5/30min per email"));
}

/// The demo's own pages are rendered on each request (a few hundred microseconds each):
/// one budget of 60 a minute per IP for the three, so a flood of them is refused, and
/// another client still reads them.
#[tokio::test(flavor = "multi_thread")]
async fn the_docs_and_metrics_pages_share_a_limit_per_client() {
    let ex = demo();
    let ip = "198.51.100.60";
    let pages = ["/openapi.json", "/rate-limits", "/metrics"];
    for i in 0..60 {
        assert_eq!(status(get(&ex, ip, pages[i % 3])).await, 200, "fetch {i}");
    }
    for page in pages {
        let r = send(get(&ex, ip, page)).await;
        assert_eq!(r.status(), 429, "{page}");
        assert!(
            header(&r, "ratelimit").starts_with(r#""pages-ip";r=0;"#),
            "{page}"
        );
    }
    assert_eq!(status(get(&ex, "198.51.100.61", "/metrics")).await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_enabled_false_turns_every_limit_off() {
    let ex = Example::start(
        "demo",
        &[
            ("TRUSTED_PROXIES", "127.0.0.1/32"),
            ("RATE_LIMIT_ENABLED", "false"),
        ],
    );
    let ip = "203.0.113.90";
    let chat = send(post(&ex, ip, "/api/assistant/chat")).await;
    assert_eq!(header(&chat, "x-ratelimit-limit"), "");
    assert_eq!(
        ex.statuses(70, || post(&ex, ip, "/api/assistant/chat").bearer_auth("u"))
            .await,
        times(200, 70)
    );
    assert_eq!(
        ex.statuses(25, || post(&ex, ip, "/api/auth/forgot-password"))
            .await,
        times(202, 25)
    );
    let wrong = || post(&ex, ip, "/api/auth/sign-in").json(&credentials("a@example.com", "x"));
    assert_eq!(ex.statuses(8, wrong).await, times(401, 8));
    let right =
        post(&ex, ip, "/api/auth/sign-in").json(&credentials("a@example.com", "demo-password"));
    assert_eq!(status(right).await, 200);
    // What it publishes says so: no operation lists limits, and the document's description
    // does not say routes are throttled.
    let doc: Value = send(ex.get("/openapi.json")).await.json().await.unwrap();
    let description = doc["info"]["description"].as_str().unwrap();
    assert!(
        description.starts_with("Rate limiting is off") && !description.contains("are throttled"),
        "{description}"
    );
    let chat = &doc["paths"]["/api/assistant/chat"]["post"]["x-ratelimit"];
    assert_eq!(chat["throttled"], false, "{chat}");
    let page = send(ex.get("/rate-limits")).await.text().await.unwrap();
    assert!(page.contains("Rate limiting is off"));
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_is_ignored_without_trusted_proxies() {
    let ex = Example::start("demo", &[]);
    let mut statuses = Vec::new();
    for i in 0..61 {
        let spoofed = format!("10.9.{}.{}", i / 200, i % 200 + 1);
        statuses.push(status(post(&ex, &spoofed, "/api/assistant/chat")).await);
    }
    let mut expected = times(200, 60);
    expected.push(429);
    assert_eq!(statuses, expected);
}

/// The buckets handlers charge show on every answer, not only on the 429: a portal write
/// shows its portal user's cap (40 per 15 minutes) and an auth answer its AUTH bucket. A
/// portal write the cap refuses spends nothing of the IP's default bucket (a refusal
/// charges no bucket), so a capped portal user cannot lock their IP out of the API.
#[tokio::test(flavor = "multi_thread")]
async fn handler_buckets_show_on_every_answer_and_a_capped_write_spends_nothing_else() {
    let ex = demo();
    let ip = "192.0.2.60";
    let upload = || post(&ex, ip, "/api/portal/documents").header("x-portal-user", "p9");
    for n in 1..=40u64 {
        let r = send(upload()).await;
        assert_eq!(r.status(), 201);
        assert_eq!(header(&r, "x-ratelimit-limit"), "40", "upload {n}");
        assert_eq!(header(&r, "x-ratelimit-remaining"), (40 - n).to_string());
    }
    for _ in 0..30 {
        assert_eq!(status(upload()).await, 429);
    }
    // 40 admitted uploads spent the IP's default bucket; the 30 refused did not.
    let r = send(get(&ex, ip, "/api/projects")).await;
    assert_eq!(header(&r, "x-ratelimit-remaining"), "459");

    // AUTH (20 per 15 minutes per IP) on a 202, a 401 and a 200.
    let ip = "192.0.2.61";
    let r = send(post(&ex, ip, "/api/auth/forgot-password")).await;
    assert_eq!(r.status(), 202);
    assert_eq!(
        (
            header(&r, "x-ratelimit-limit"),
            header(&r, "x-ratelimit-remaining")
        ),
        ("20".to_string(), "19".to_string())
    );
    let wrong = post(&ex, ip, "/api/auth/sign-in").json(&credentials("ann@example.com", "no"));
    let r = send(wrong).await;
    assert_eq!(r.status(), 401);
    // Every bucket the failure spent shows (AUTH's network share too: an IPv4 address is a
    // network of its own); `X-RateLimit-*` the tighter: the e-mail's lockout, with 4
    // failures left.
    assert_eq!(
        (
            header(&r, "x-ratelimit-limit"),
            header(&r, "x-ratelimit-remaining")
        ),
        ("5".to_string(), "4".to_string())
    );
    assert_eq!(
        header(&r, "ratelimit"),
        "\"sign-in-failures\";r=4;t=1800, \"auth\";r=18;t=900, \"auth-network\";r=998;t=900"
    );
    let right =
        post(&ex, ip, "/api/auth/sign-in").json(&credentials("ann@example.com", "demo-password"));
    let r = send(right).await;
    assert_eq!(r.status(), 200);
    // A success shows them too: the lockout it was checked against (its own attempt given
    // back, the failure before still counting), and AUTH and its network share, which it
    // spent.
    assert_eq!(
        header(&r, "ratelimit"),
        "\"sign-in-failures\";r=4;t=1800, \"auth\";r=17;t=900, \"auth-network\";r=997;t=900"
    );
    assert_eq!(header(&r, "x-ratelimit-remaining"), "4");
}

/// Successful sign-ins of an e-mail without failures show the AUTH bucket they spend,
/// counting down from the page's 20, not the untouched lockout (a review read `5` left,
/// never moving, on the first 15).
#[tokio::test(flavor = "multi_thread")]
async fn sign_ins_without_failures_show_the_auth_bucket_they_spend() {
    let ex = demo();
    let ip = "192.0.2.71";
    let mut shown = Vec::new();
    for _ in 0..21 {
        let right = post(&ex, ip, "/api/auth/sign-in")
            .json(&credentials("fresh@example.com", "demo-password"));
        let r = send(right).await;
        shown.push((
            r.status().as_u16(),
            header(&r, "x-ratelimit-limit"),
            header(&r, "x-ratelimit-remaining"),
        ));
    }
    let expected: Vec<(u16, String, String)> = (0..21)
        .map(|i| match i {
            20 => (429, "20".to_string(), "0".to_string()),
            _ => (200, "20".to_string(), (19 - i).to_string()),
        })
        .collect();
    assert_eq!(shown, expected);
}

/// A sign-in e-mail that is not an address a cookie can carry is a 400, never a 500 or a
/// cookie with attributes the client chose: a `;` would add cookie attributes, a newline
/// made the response fail (500), 200 kB made a header no client reads (a body that large
/// is now a 413 unread, `demo_bypasses.rs`: 10 kB is read, and refused as no address).
#[tokio::test(flavor = "multi_thread")]
async fn a_sign_in_email_that_is_no_address_is_a_400() {
    let ex = demo();
    let ip = "192.0.2.70";
    let long = format!("{}@example.com", "a".repeat(10_000));
    for email in [
        "a@x.com; Domain=evil.example; Max-Age=99999999",
        "a@x.com\nX-Evil: 1",
        long.as_str(),
        "é@example.com",
        "no-at-sign.example.com",
    ] {
        let r = send(post(&ex, ip, "/api/auth/sign-in").json(&credentials(email, "demo-password")))
            .await;
        assert_eq!(r.status(), 400, "{:.40}", email);
        assert!(r.headers().get("set-cookie").is_none());
    }
    let r = send(
        post(&ex, ip, "/api/auth/sign-in").json(&credentials("Ann@Example.com", "demo-password")),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "set-cookie").starts_with("session=ann@example.com; Path=/"));
}

/// The page: "If Redis is unavailable or misconfigured, the server falls back to an
/// in-memory store for that process only". Redis settings the demo cannot use (a URL that
/// does not parse; `rediss://`, which this build cannot open) are logged as an error and
/// the demo counts in memory; it stopped with the error before. The page's REST API
/// variables, which tollgate does not read, are warned about.
#[tokio::test(flavor = "multi_thread")]
async fn redis_settings_that_cannot_be_used_fall_back_to_memory() {
    for (name, value, says) in [
        ("REDIS_URL", "notaurl", "the Redis settings cannot be used"),
        (
            "KV_URL",
            "rediss://default:secret-token@127.0.0.1:6399",
            "the Redis settings cannot be used",
        ),
        (
            "KV_REST_API_URL",
            "https://example.upstash.io",
            "KV_REST_API_URL is not read",
        ),
    ] {
        let ex = Example::start_logged(
            "demo",
            &[("TRUSTED_PROXIES", "127.0.0.1/32"), (name, value)],
        );
        for remaining in ["499", "498"] {
            let response = send(get(&ex, "203.0.113.91", "/api/projects")).await;
            assert_eq!(response.status(), 200, "{name}={value}");
            assert_eq!(header(&response, "x-ratelimit-remaining"), remaining);
        }
        let logged = ex.stop_logged().join("\n");
        assert!(logged.contains(says), "{name}={value}: {logged}");
        assert!(
            logged.contains("counting in memory, for this process only"),
            "{logged}"
        );
        assert!(!logged.contains("secret-token"), "{logged}");
    }
}

/// A setting set but empty is its default, as an empty `REDIS_URL` is no Redis (a review:
/// `HOST=` and `MEMORY_MAX_ENTRIES=` stopped the demo, `PORT=` every example).
#[tokio::test]
async fn settings_set_but_empty_are_their_defaults() {
    let ex = Example::start(
        "demo",
        &[
            ("HOST", ""),
            ("MEMORY_MAX_ENTRIES", " "),
            ("TRUSTED_PROXIES", ""),
            ("ADMIN_TOKEN", ""),
        ],
    );
    assert!(ex.base.starts_with("http://127.0.0.1:"), "{}", ex.base);
    let r = ex.get("/api/projects").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-limit"), "500");
    let admin = ex.get("/admin/rate-limits").send().await.unwrap();
    assert_eq!(admin.status(), 404, "no admin router without a token");
}
