//! Publishing limits (feature `openapi`): the `x-ratelimit` of every operation checked
//! against the limiter's own table, and against what a real server enforces.

mod common;

use axum::routing::{get, post};
use axum::Router;
use common::{clock_and_store, serve, status_of};
use http::Method;
use serde_json::{json, Value};
use tollgate::publish::{PublishError, Publisher};
use tollgate::{Key, Limiter, Policy, Rate, RouteLimits, RuleSource};

async fn ok() -> &'static str {
    "ok"
}

fn limiter() -> Limiter {
    let (_clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .read_env(false)
        .store(store)
        .identity(common::user_header)
        .route("/api/stripe/webhook", Policy::exempt())
        .route(
            "/api/*",
            Policy::named("default").per_ip("5/min").per_user("100/h"),
        )
        .route(
            "GET /api/reports/{id}",
            Policy::named("reports").per_ip("2/min"),
        )
        .route(
            "/v1/*",
            Policy::named("v1")
                .limit_with(Key::api_key("x-api-key"), |_, _| None)
                .limit(Key::api_key("x-api-key"), Rate::token_bucket("100/min", 20)),
        )
        .global("1000/min")
        .bucket("sign-in-failures", Rate::exact("5/30min"))
        .build()
        .unwrap();
    let _chat = limiter.policy_at("POST /api/chat", Policy::named("chat").per_ip("1/min"));
    limiter
}

fn operation(summary: &str) -> Value {
    json!({ "summary": summary, "responses": { "200": { "description": "OK" } } })
}

fn document() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": { "title": "test", "version": "1" },
        "paths": {
            "/api/projects": { "get": operation("List projects"), "post": operation("Create a project") },
            "/api/reports/{report}": { "get": operation("A report") },
            "/api/chat": { "post": operation("Chat") },
            "/api/sign-in": { "post": operation("Sign in") },
            "/api/stripe/webhook": { "post": operation("Webhook") },
            "/v1/invoices": { "get": operation("Invoices") },
            "/health": { "get": operation("Health") },
        },
    })
}

fn publisher(limiter: &Limiter) -> Publisher {
    Publisher::new(limiter)
        .route_policy("POST /api/chat", "chat")
        .handler_buckets("POST /api/sign-in", &["sign-in-failures"])
        .bucket_key("sign-in-failures", "email")
}

fn x(doc: &Value, path: &str, method: &str) -> Value {
    doc["paths"][path][method]["x-ratelimit"].clone()
}

/// `(bucket, per, quota, enforcedBy)` of an operation's limits.
fn summary(doc: &Value, path: &str, method: &str) -> Vec<(String, String, Value, String)> {
    x(doc, path, method)["limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["bucket"].as_str().unwrap().to_string(),
                l["per"].as_str().unwrap().to_string(),
                l["quota"].clone(),
                l["enforcedBy"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn row(bucket: &str, per: &str, quota: Option<&str>, by: &str) -> (String, String, Value, String) {
    (bucket.into(), per.into(), json!(quota), by.into())
}

#[test]
fn every_operation_gets_the_limits_of_its_rule_the_globals_and_its_handler() {
    let limiter = limiter();
    let mut doc = document();
    publisher(&limiter).annotate(&mut doc).unwrap();

    let global = row("global", "global", Some("1000/min"), "middleware");
    let default = [
        row("default:ip", "ip", Some("5/min"), "middleware"),
        row("default:user", "user", Some("100/h"), "middleware"),
        global.clone(),
    ];
    assert_eq!(summary(&doc, "/api/projects", "get"), default);
    assert_eq!(summary(&doc, "/api/projects", "post"), default);
    assert_eq!(
        summary(&doc, "/api/reports/{report}", "get"),
        [
            row("reports:ip", "ip", Some("2/min"), "middleware"),
            global.clone()
        ]
    );
    assert_eq!(
        summary(&doc, "/api/chat", "post"),
        [row("chat:ip", "ip", Some("1/min"), "route"), global.clone()]
    );
    let mut sign_in = default.to_vec();
    sign_in.push(row("sign-in-failures", "email", Some("5/30min"), "handler"));
    assert_eq!(summary(&doc, "/api/sign-in", "post"), sign_in);
    assert_eq!(
        summary(&doc, "/v1/invoices", "get"),
        [
            row("v1:api_key", "api_key", None, "middleware"),
            row("v1:api_key#2", "api_key", Some("100/min"), "middleware"),
            global.clone()
        ]
    );
    // No rule matches: the global limits still apply.
    assert_eq!(summary(&doc, "/health", "get"), [global]);
    assert_eq!(
        x(&doc, "/api/stripe/webhook", "post"),
        json!({ "throttled": false, "limits": [] })
    );

    // Whole entries: a token bucket and a quota chosen per request.
    assert_eq!(
        x(&doc, "/v1/invoices", "get")["limits"],
        json!([
            { "policy": "v1", "bucket": "v1:api_key", "per": "api_key", "quota": null,
              "limit": null, "windowSeconds": null, "algorithm": null, "enforcedBy": "middleware" },
            { "policy": "v1", "bucket": "v1:api_key#2", "per": "api_key", "quota": "100/min",
              "limit": 100, "windowSeconds": 60, "algorithm": "token bucket", "burst": 20,
              "enforcedBy": "middleware" },
            { "policy": "global", "bucket": "global", "per": "global", "quota": "1000/min",
              "limit": 1000, "windowSeconds": 60, "algorithm": "sliding window",
              "enforcedBy": "middleware" },
        ])
    );

    // A 429 on throttled operations only, and the response it refers to.
    let responses = |path: &str, method: &str| doc["paths"][path][method]["responses"].clone();
    assert_eq!(
        responses("/api/chat", "post")["429"],
        json!({ "$ref": "#/components/responses/TooManyRequests" })
    );
    assert_eq!(responses("/api/chat", "post")["200"]["description"], "OK");
    assert_eq!(responses("/api/stripe/webhook", "post").get("429"), None);
    let component = &doc["components"]["responses"]["TooManyRequests"];
    assert!(
        component["headers"]["Retry-After"].is_object(),
        "{component}"
    );
}

/// A guard's layer wraps whatever routes the application puts it on: told which
/// operations pass through it (`guard_at`), the publisher lists its limits there, exempt
/// routes included (their exemption is from their class, not from the guard), and nowhere
/// else. A review found seed 004's failed-authentication guard refusing valid keys on
/// operations whose published limits did not name it.
#[test]
fn a_guard_is_published_on_the_operations_it_wraps() {
    let limiter = limiter();
    let _guard = limiter.guard(Policy::failed_auth_per_ip("20/min").per_network(48, "100/min"));
    let mut doc = document();
    publisher(&limiter)
        .guard_at("/api/*", "failed-auth")
        .annotate(&mut doc)
        .unwrap();
    let guard = [
        row("failed-auth:ip", "ip", Some("20/min"), "guard"),
        row(
            "failed-auth:network:48",
            "network:48",
            Some("100/min"),
            "guard",
        ),
    ];
    let mut projects = vec![
        row("default:ip", "ip", Some("5/min"), "middleware"),
        row("default:user", "user", Some("100/h"), "middleware"),
        row("global", "global", Some("1000/min"), "middleware"),
    ];
    projects.extend(guard.clone());
    assert_eq!(summary(&doc, "/api/projects", "get"), projects);
    assert_eq!(summary(&doc, "/api/stripe/webhook", "post"), guard);
    assert_eq!(x(&doc, "/api/stripe/webhook", "post")["throttled"], true);
    assert_eq!(
        summary(&doc, "/health", "get"),
        [row("global", "global", Some("1000/min"), "middleware")]
    );

    for (publisher, expected) in [
        (
            Publisher::new(&limiter).guard_at("/api/*", "failed-auths"),
            PublishError::UnknownGuard {
                pattern: "/api/*".into(),
                policy: "failed-auths".into(),
            },
        ),
        (
            Publisher::new(&limiter).guard_at("/nowhere/*", "failed-auth"),
            PublishError::NoSuchOperation {
                pattern: "/nowhere/*".into(),
            },
        ),
    ] {
        let mut doc = document();
        assert_eq!(publisher.annotate(&mut doc), Err(expected));
        assert_eq!(doc, document(), "unchanged");
    }
}

/// Every published limit is, number for number, a limit of the limiter's table, under the
/// rule the central table really gives a request to that operation.
#[test]
fn a_route_with_a_policy_at_publishes_its_own_policy_without_being_named_again() {
    let limiter = limiter();
    let mut doc = document();
    Publisher::new(&limiter).annotate(&mut doc).unwrap();
    let global = row("global", "global", Some("1000/min"), "middleware");
    assert_eq!(
        summary(&doc, "/api/chat", "post"),
        [row("chat:ip", "ip", Some("1/min"), "route"), global]
    );
    // Its pattern names POST only: another method keeps the central class.
    assert_eq!(
        Publisher::new(&limiter)
            .operation(&Method::GET, "/api/chat")
            .unwrap()
            .limits[0]
            .bucket,
        "default:ip"
    );
}

#[test]
fn every_published_limit_is_one_of_the_tables_and_of_the_right_rule() {
    let limiter = limiter();
    let mut doc = document();
    let publisher = publisher(&limiter);
    publisher.annotate(&mut doc).unwrap();
    let table = limiter.describe();
    let rule_of_bucket = |bucket: &str| -> (&RouteLimits, Value) {
        table
            .iter()
            .find_map(|r| {
                r.limits
                    .iter()
                    .find(|l| l.bucket == bucket)
                    .map(|l| (r, serde_json::to_value(l).unwrap()))
            })
            .unwrap_or_else(|| panic!("`{bucket}` is not in the table"))
    };
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let concrete = path.replace("{report}", "7");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            for published in op["x-ratelimit"]["limits"].as_array().unwrap() {
                let (rule, described) = rule_of_bucket(published["bucket"].as_str().unwrap());
                for field in ["quota", "limit", "windowSeconds", "algorithm", "burst"] {
                    assert_eq!(published.get(field), described.get(field), "{path} {field}");
                }
                assert_eq!(published["policy"], rule.policy);
                match (rule.source, published["enforcedBy"].as_str().unwrap()) {
                    (RuleSource::Route, "middleware") => assert_eq!(
                        limiter.classify(&m, &concrete).as_deref(),
                        Some(rule.policy.as_str()),
                        "{method} {path}"
                    ),
                    (RuleSource::Global, "middleware")
                    | (RuleSource::PerRoute, "route")
                    | (RuleSource::Bucket, "handler") => {}
                    other => panic!("{method} {path}: {other:?}"),
                }
                checked += 1;
            }
            // The same limits, asked one operation at a time.
            assert_eq!(
                serde_json::to_value(publisher.operation(&m, path).unwrap()).unwrap(),
                op["x-ratelimit"]
            );
        }
    }
    assert_eq!(checked, 3 + 3 + 2 + 2 + 4 + 3 + 1);
}

/// What is published is what a server enforces: the published counts are admitted, the
/// next request is refused.
#[tokio::test]
async fn the_published_numbers_are_the_enforced_ones() {
    let limiter = limiter();
    let mut doc = document();
    publisher(&limiter).annotate(&mut doc).unwrap();
    let chat_layer = limiter.policy_at("POST /api/chat", Policy::named("chat").per_ip("1/min"));
    let app = Router::new()
        .route("/api/reports/{id}", get(ok))
        .route("/api/chat", post(ok).layer(chat_layer))
        .layer(limiter.layer());
    let server = serve(app).await;
    for (path, method, url) in [
        ("/api/reports/{report}", "get", "/api/reports/9"),
        ("/api/chat", "post", "/api/chat"),
    ] {
        let limit = x(&doc, path, method)["limits"][0]["limit"]
            .as_u64()
            .unwrap();
        let request = || match method {
            "get" => server.get(url),
            _ => server.post(url),
        };
        for i in 0..limit {
            assert_eq!(status_of(request()).await, 200, "{url} request {i}");
        }
        assert_eq!(status_of(request()).await, 429, "{url} past {limit}");
    }
}

#[test]
fn limits_that_never_apply_can_be_left_out_and_a_base_path_added() {
    let limiter = limiter();
    let mut doc = json!({ "openapi": "3.1.0", "paths": {
        "/projects": { "get": operation("List") },
        "/sign-in": { "post": operation("Sign in") },
    }});
    Publisher::new(&limiter)
        .base_path("/api/")
        .applies(|_, path, limit| limit.key != "user" || path != "/api/sign-in")
        .annotate(&mut doc)
        .unwrap();
    let buckets = |path: &str, method: &str| -> Vec<String> {
        x(&doc, path, method)["limits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["bucket"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        buckets("/projects", "get"),
        ["default:ip", "default:user", "global"]
    );
    assert_eq!(buckets("/sign-in", "post"), ["default:ip", "global"]);

    // The rules table asks it too, with each rule's path: a user's limit of the `/api/*`
    // rule is left out where the identity names no user (a review found the demo's
    // rules table promising a per-user limit on routes where none applies).
    let rules = Publisher::new(&limiter)
        .applies(|_, path, limit| limit.key != "user" || path != "/api/*")
        .rules_html();
    assert!(
        rules.contains("<tr><td><code>/api/*</code></td><td>default</td><td>5/min per ip <small>(sliding window, bucket default:ip)</small></td></tr>"),
        "{rules}"
    );
    assert!(!rules.contains("default:user"), "{rules}");
}

#[test]
fn a_documents_own_429_response_is_kept() {
    let limiter = limiter();
    let mine = json!({ "description": "Slow down", "headers": { "X-RateLimit-Limit": {} } });
    let mut doc = json!({
        "openapi": "3.1.0",
        "paths": { "/api/a": { "get": { "responses": { "429": { "description": "custom" } } } } },
        "components": { "responses": { "TooManyRequests": mine.clone() } },
    });
    Publisher::new(&limiter).annotate(&mut doc).unwrap();
    assert_eq!(
        doc["paths"]["/api/a"]["get"]["responses"]["429"],
        json!({ "description": "custom" })
    );
    assert_eq!(doc["components"]["responses"]["TooManyRequests"], mine);
}

#[test]
fn mistakes_are_typed_errors_and_leave_the_document_alone() {
    let limiter = limiter();
    let cases: Vec<(Publisher, PublishError)> = vec![
        (
            Publisher::new(&limiter).route_policy("POST /api/chatt", "chat"),
            PublishError::NoSuchOperation {
                pattern: "POST /api/chatt".into(),
            },
        ),
        (
            Publisher::new(&limiter).route_policy("POST /api/chat", "chats"),
            PublishError::UnknownPolicy {
                pattern: "POST /api/chat".into(),
                policy: "chats".into(),
            },
        ),
        (
            Publisher::new(&limiter).handler_buckets("POST /api/sign-in", &["sign-up"]),
            PublishError::UnknownBucket {
                pattern: "POST /api/sign-in".into(),
                bucket: "sign-up".into(),
            },
        ),
        (
            publisher(&limiter).bucket_key("sign-in-failure", "email"),
            PublishError::UnknownKeyBucket {
                bucket: "sign-in-failure".into(),
            },
        ),
        (
            Publisher::new(&limiter).handler_buckets("P@ST /api/sign-in", &[]),
            PublishError::BadPattern {
                pattern: "P@ST /api/sign-in".into(),
            },
        ),
    ];
    for (publisher, expected) in cases {
        let mut doc = document();
        assert_eq!(publisher.annotate(&mut doc), Err(expected));
        assert_eq!(doc, document(), "unchanged");
    }
    let mut not_openapi = json!({ "swagger": "2.0" });
    assert_eq!(
        Publisher::new(&limiter).annotate(&mut not_openapi),
        Err(PublishError::NotOpenApi("no `paths` object"))
    );
    // `components`, or its `responses`, that is not an object: an error, not a panic.
    for components in [json!(5), json!({ "responses": [] })] {
        let mut doc = document();
        doc["components"] = components;
        let before = doc.clone();
        assert_eq!(
            Publisher::new(&limiter).annotate(&mut doc),
            Err(PublishError::NotOpenApi("`components` is not an object"))
        );
        assert_eq!(doc, before, "unchanged");
    }
}

/// A path parameter is a whole segment: a handler's bucket declared for
/// `GET /api/exports/{id}` is published on that operation only, not on
/// `/api/exports/{export}.csv` nor `/api/exports/v{n}`.
#[test]
fn a_path_parameter_is_a_whole_segment() {
    let limiter = limiter();
    let mut doc = json!({ "openapi": "3.1.0", "paths": {
        "/api/exports/{export}": { "get": operation("An export") },
        "/api/exports/{export}.csv": { "get": operation("An export as CSV") },
        "/api/exports/v{n}": { "get": operation("An export format") },
    }});
    Publisher::new(&limiter)
        .handler_buckets("GET /api/exports/{id}", &["sign-in-failures"])
        .annotate(&mut doc)
        .unwrap();
    let default = vec![
        row("default:ip", "ip", Some("5/min"), "middleware"),
        row("default:user", "user", Some("100/h"), "middleware"),
        row("global", "global", Some("1000/min"), "middleware"),
    ];
    let mut with_handler = default.clone();
    with_handler.push(row(
        "sign-in-failures",
        "direct",
        Some("5/30min"),
        "handler",
    ));
    assert_eq!(summary(&doc, "/api/exports/{export}", "get"), with_handler);
    assert_eq!(summary(&doc, "/api/exports/{export}.csv", "get"), default);
    assert_eq!(summary(&doc, "/api/exports/v{n}", "get"), default);
}

#[test]
fn the_html_tables_list_every_rule_and_operation() {
    let limiter = limiter();
    let publisher = publisher(&limiter);
    let rules = publisher.rules_html();
    assert_eq!(
        rules.matches("<tr><td>").count(),
        limiter.describe().len(),
        "one row per rule"
    );
    for expected in [
        "<tr><td><code>/api/stripe/webhook</code></td><td>exempt</td><td>not limited by the middleware</td></tr>",
        "<tr><td><code>GET /api/reports/{id}</code></td><td>reports</td><td>2/min per ip <small>(sliding window, bucket reports:ip)</small></td></tr>",
        "<tr><td><code>/v1/*</code></td><td>v1</td><td>chosen per request, per api_key<br>100/min per api_key <small>(token bucket, burst 20, bucket v1:api_key#2)</small></td></tr>",
        "<tr><td><code>every request (global)</code></td><td>global</td><td>1000/min per global",
        "<tr><td><code>POST /api/chat</code></td><td>chat</td><td>1/min per ip",
        "<tr><td><code>applied by handlers</code></td><td>sign-in-failures</td><td>5/30min per email <small>(sliding window (exact), bucket sign-in-failures)</small></td></tr>",
    ] {
        assert!(rules.contains(expected), "{expected}\nnot in\n{rules}");
    }

    let doc = document();
    let page = publisher
        .html_page("Limits <of> test", "Per client & per user.", Some(&doc))
        .unwrap();
    assert!(page.starts_with("<!doctype html>"));
    assert!(page.contains("<h1>Limits &lt;of&gt; test</h1>"));
    assert!(page.contains("<p>Per client &amp; per user.</p>"));
    assert!(page.contains(&rules));
    assert!(page.contains(
        "<tr><td>POST</td><td><code>/api/stripe/webhook</code></td><td>Webhook</td><td>not throttled</td></tr>"
    ));
    assert!(page.contains(
        "<tr><td>POST</td><td><code>/api/chat</code></td><td>Chat</td><td>1/min per ip <small>(sliding window, bucket chat:ip)</small> [route]<br>1000/min per global"
    ));
    assert_eq!(
        page.matches("<tr><td>").count(),
        limiter.describe().len() + 8,
        "one row per operation of the document"
    );
}

/// The published limits are the enforced ones: a dry run refuses nothing, and a limiter
/// turned off limits nothing (both were published as throttling).
#[test]
fn dry_runs_and_a_limiter_turned_off_publish_no_limits() {
    let rules = || {
        Limiter::builder()
            .read_env(false)
            .route("/api/*", Policy::named("default").per_ip("5/min"))
            .route(
                "/api/new/*",
                Policy::named("trial").per_ip("1/min").shadow(),
            )
            .global("1000/min")
    };
    let limiter = rules().build().unwrap();
    let publisher = Publisher::new(&limiter);
    let new = publisher.operation(&Method::GET, "/api/new/x").unwrap();
    assert!(new.throttled, "the global limit applies");
    let buckets: Vec<&str> = new.limits.iter().map(|l| l.bucket.as_str()).collect();
    assert_eq!(buckets, ["global"]);
    let described = limiter.describe();
    let trial = described.iter().find(|r| r.policy == "trial").unwrap();
    assert!(trial.shadow);
    assert_eq!(serde_json::to_value(trial).unwrap()["shadow"], true);
    // The rules table says so too (it showed a dry run's limit as any other).
    let table = publisher.rules_html();
    assert!(
        table.contains("<tr><td><code>/api/new/*</code></td><td>trial</td><td>not enforced (a dry run: counted, never refused)</td></tr>"),
        "{table}"
    );
    assert!(table.contains("5/min per ip"), "{table}");

    let off = rules().enabled(false).build().unwrap();
    let publisher = Publisher::new(&off);
    for path in ["/api/x", "/api/new/x"] {
        let limits = publisher.operation(&Method::GET, path).unwrap();
        assert!(!limits.throttled && limits.limits.is_empty(), "{path}");
    }
    // The rules table lists no limit while limiting is off (a review: the demo run with
    // RATE_LIMIT_ENABLED=false published every rule's limit on its page).
    assert_eq!(
        publisher.rules_html(),
        "<table class=\"rate-limit-rules\">\n<tr><th>Rule</th><th>Policy</th><th>Limits</th></tr>\n\
         <tr><td colspan=\"3\">Rate limiting is off: no request is limited.</td></tr>\n</table>\n"
    );
}

/// The rate-limit fields a layer writes on every answer to a request it charged are listed
/// on each response of the operations it charges, as the limiter's header style writes
/// them (a review: seed 004's page says every response carries `X-RateLimit-*`, and its
/// document listed none; the 429 only `Retry-After`). An exempt operation lists none, nor
/// does a 429 of the document's own.
#[test]
fn the_fields_each_response_carries_are_listed_as_the_header_style_writes_them() {
    let refs = |response: &Value| -> Vec<String> {
        let mut names: Vec<String> = response["headers"]
            .as_object()
            .map(|h| h.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    };
    let all = [
        "RateLimit",
        "RateLimit-Policy",
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
    ];

    // The default style: `X-RateLimit-*` in Unix seconds and the IETF fields.
    let mut doc = document();
    doc["paths"]["/api/projects"]["get"]["responses"]["404"] = json!({ "description": "No such project", "headers": { "x-ratelimit-limit": { "description": "mine" } } });
    doc["paths"]["/api/projects"]["post"]["responses"]["429"] = json!({ "description": "custom" });
    publisher(&limiter()).annotate(&mut doc).unwrap();
    let responses = |path: &str, method: &str| doc["paths"][path][method]["responses"].clone();
    assert_eq!(refs(&responses("/api/projects", "get")["200"]), all);
    assert_eq!(
        responses("/api/projects", "get")["200"]["headers"]["X-RateLimit-Reset"],
        json!({ "$ref": "#/components/headers/X-RateLimit-Reset" })
    );
    // A field the document lists already, however it spells it, stays its own.
    let not_found = responses("/api/projects", "get")["404"].clone();
    assert_eq!(
        not_found["headers"]["x-ratelimit-limit"],
        json!({ "description": "mine" })
    );
    assert!(
        not_found["headers"].get("X-RateLimit-Limit").is_none(),
        "{not_found}"
    );
    assert_eq!(refs(&not_found).len(), all.len());
    assert_eq!(
        responses("/api/projects", "post")["429"],
        json!({ "description": "custom" })
    );
    assert_eq!(
        refs(&responses("/api/chat", "post")["200"]),
        all,
        "a route's own layer"
    );
    // A handler that adds its bucket's fields to its answers (`merge_rate_limit_headers`).
    assert_eq!(refs(&responses("/api/sign-in", "post")["200"]), all);
    assert_eq!(
        refs(&responses("/api/stripe/webhook", "post")["200"]),
        Vec::<String>::new()
    );
    let headers = &doc["components"]["headers"];
    assert_eq!(headers["X-RateLimit-Reset"]["schema"]["type"], "integer");
    assert!(
        headers["X-RateLimit-Reset"]["description"]
            .as_str()
            .unwrap()
            .contains("Unix time in seconds"),
        "{headers}"
    );
    assert_eq!(headers["RateLimit"]["schema"]["type"], "string");
    let current = headers["RateLimit"]["description"].as_str().unwrap();
    assert!(current.contains("as `Retry-After`"), "{current}");
    let too_many = &doc["components"]["responses"]["TooManyRequests"];
    assert_eq!(
        refs(too_many),
        [
            "RateLimit",
            "RateLimit-Policy",
            "Retry-After",
            "X-RateLimit-Limit",
            "X-RateLimit-Remaining",
            "X-RateLimit-Reset"
        ]
    );
    assert_eq!(
        too_many["headers"]["Retry-After"]["schema"]["type"],
        "integer"
    );
    // The body as the limiter writes it (the default shape), for an example refusal.
    assert_eq!(
        too_many["content"]["application/json"]["example"],
        json!({ "error": "Too Many Requests",
                "message": "Rate limit exceeded; retry in 12 seconds.", "retryAfter": 12 })
    );

    // `X-RateLimit-*` alone, the reset an HTTP date (the retry moment on a 429).
    let style =
        tollgate::HeaderStyle::x_ratelimit(tollgate::ResetFormat::HttpDate).with_reset_at_retry();
    let limiter = Limiter::builder()
        .read_env(false)
        .header_style(style)
        .error_body(tollgate::ErrorBody::problem())
        .route("/api/*", Policy::named("default").per_ip("5/min"))
        .build()
        .unwrap();
    // A guard's operation lists them too (a guard writes them), one no limit applies to
    // none.
    let _guard = limiter.guard(Policy::named("plain").per_ip("100/min"));
    let mut doc = document();
    Publisher::new(&limiter)
        .guard_at("/health", "plain")
        .annotate(&mut doc)
        .unwrap();
    let x_ratelimit = [
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
    ];
    for path in ["/api/projects", "/health"] {
        assert_eq!(
            refs(&doc["paths"][path]["get"]["responses"]["200"]),
            x_ratelimit,
            "{path}"
        );
    }
    assert_eq!(
        refs(&doc["paths"]["/v1/invoices"]["get"]["responses"]["200"]),
        Vec::<String>::new()
    );
    let reset = &doc["components"]["headers"]["X-RateLimit-Reset"];
    assert_eq!(reset["schema"]["type"], "string");
    let description = reset["description"].as_str().unwrap();
    assert!(
        description.contains("HTTP date") && description.contains("retried"),
        "{description}"
    );
    let problem = &doc["components"]["responses"]["TooManyRequests"]["content"]
        ["application/problem+json"]["example"];
    assert_eq!(problem["status"], 429, "{problem}");
    assert_eq!(problem["retryAfter"], 12, "{problem}");

    // Headers that are not an object: not a document references can go into.
    let mut doc = document();
    doc["components"] = json!({ "headers": "none" });
    assert!(matches!(
        Publisher::new(&limiter).annotate(&mut doc),
        Err(PublishError::NotOpenApi(_))
    ));

    // No fields: nothing listed, and the 429 says `Retry-After` alone.
    let limiter = Limiter::builder()
        .read_env(false)
        .header_style(tollgate::HeaderStyle::none())
        .route("/api/*", Policy::named("default").per_ip("5/min"))
        .build()
        .unwrap();
    let mut doc = document();
    Publisher::new(&limiter).annotate(&mut doc).unwrap();
    assert_eq!(
        refs(&doc["paths"]["/api/projects"]["get"]["responses"]["200"]),
        Vec::<String>::new()
    );
    assert!(
        doc["components"].get("headers").is_none(),
        "{}",
        doc["components"]
    );
    assert_eq!(
        refs(&doc["components"]["responses"]["TooManyRequests"]),
        ["Retry-After"]
    );
}
