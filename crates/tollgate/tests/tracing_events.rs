//! What the limiter logs: one event per refusal (never the raw key), per shadow refusal,
//! per configuration warning. Alone in its binary: tracing caches callsite interest
//! process-wide, so tests running in parallel without a subscriber would hide events.

mod common;

use common::{answering, echo, request};
use http::StatusCode;
use tollgate::{
    Batch, BoxFuture, ClientIp, Decision, Limiter, MemoryStore, Op, Policy, Store, StoreError,
};
use tollgate_testkit::EventLog;
use tower::{service_fn, ServiceBuilder, ServiceExt};

/// The events at `level` (`"WARN"`, `"ERROR"`...; `""`: any) that say `text`, in order.
fn saying<'a>(events: &'a [String], level: &str, text: &str) -> Vec<&'a String> {
    events
        .iter()
        .filter(|e| e.starts_with(level) && e.contains(text))
        .collect()
}

/// `echo` behind `limiter`'s layer, as a plain tower service.
fn echo_behind(
    limiter: &Limiter,
) -> impl tower::Service<
    http::Request<common::Body>,
    Response = http::Response<impl Sized>,
    Error = std::convert::Infallible,
> + Clone {
    ServiceBuilder::new()
        .layer(limiter.layer())
        .service(service_fn(echo))
}

#[test]
fn refusals_and_warnings_are_logged_without_secrets() {
    let events = EventLog::during(async {
        let limiter = Limiter::builder()
            .client_ip(ClientIp::peer().trust_proxies(["0.0.0.0/0"]))
            .route(
                "/*",
                Policy::named("keys").per_api_key("x-api-key", "1/min"),
            )
            .route("/shadow/*", Policy::named("trial").per_ip("1/min").shadow())
            .build()
            .unwrap();
        let svc = echo_behind(&limiter);
        let peer = Some("192.0.2.1:5000");
        for _ in 0..2 {
            let _ = svc
                .clone()
                .oneshot(request("/x", peer, Some("sk_live_secret")))
                .await
                .unwrap();
            let _ = svc
                .clone()
                .oneshot(request("/shadow/x", peer, None))
                .await
                .unwrap();
        }
        // No peer address at all: one clear error, then the requests share one key.
        let first = svc
            .clone()
            .oneshot(request("/shadow/y", None, None))
            .await
            .unwrap();
        let second = svc
            .clone()
            .oneshot(request("/shadow/y", None, None))
            .await
            .unwrap();
        assert_eq!(
            (first.status(), second.status()),
            (StatusCode::OK, StatusCode::OK)
        );
        assert_eq!(limiter.stats().would_refuse, 2);
    });
    let all = events.join("\n");
    assert!(!all.contains("sk_live_secret"), "{all}");
    let refusals = saying(&events, "", "rate limit exceeded");
    assert_eq!(refusals.len(), 1, "{all}");
    assert!(refusals[0].starts_with("INFO"), "{all}");
    for field in [
        r#"policy=keys"#,
        r#"bucket=keys:api_key"#,
        r#"key_kind=api_key"#,
        "shadow=false",
        "reason=over_limit",
        // Without axum's matched route, the rule of the table that classed the request.
        "route=/*",
    ] {
        assert!(
            refusals[0].contains(field),
            "{field} missing in {}",
            refusals[0]
        );
    }
    let shadow = saying(&events, "", "would refuse");
    // Refusal events are sampled: at most one per second per policy (the second one of
    // `trial`, a few milliseconds later, is counted in `would_refuse`, not logged).
    assert_eq!(shadow.len(), 1, "{all}");
    assert!(shadow[0].contains("policy=trial") && shadow[0].contains("shadow=true"));
    assert_eq!(saying(&events, "WARN", "0.0.0.0/0").len(), 1, "{all}");
    assert_eq!(
        saying(&events, "ERROR", "into_make_service_with_connect_info").len(),
        1,
        "{all}"
    );
}

/// A reload that leaves fewer routes or global limits than were running (a rule dropped,
/// or a file loaded before its writer finished) is loaded, with a warning that names the
/// counts; one that keeps them all is not warned about.
#[test]
fn a_reload_that_drops_rules_is_warned_about() {
    let rules = |limit: &str| {
        Limiter::builder()
            .route("/a/*", Policy::named("a").per_ip(limit))
            .route("/b/*", Policy::named("b").per_ip(limit))
            .global("100/min")
    };
    let events = EventLog::during(async {
        let limiter = rules("5/min").read_env(false).build().unwrap();
        limiter.reload(rules("6/min")).unwrap();
        limiter
            .reload(Limiter::builder().route("/a/*", Policy::named("a").per_ip("5/min")))
            .unwrap();
    });
    let warnings = saying(&events, "", "fewer routes or global limits");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    for field in [
        "routes=1",
        "were_routes=2",
        "global_policies=0",
        "were_global_policies=1",
    ] {
        assert!(warnings[0].contains(field), "{field}: {}", warnings[0]);
    }
}

/// With axum, a refusal names the route it matched, not the path requested: a path can
/// carry what does not belong in logs (here an e-mail address).
#[test]
fn a_refusal_names_the_route_not_the_path() {
    let events = EventLog::during(async {
        let limiter = Limiter::builder()
            .route("/*", Policy::named("reset").per_ip("1/min"))
            .route(
                "/users/{id}/tokens/*",
                Policy::named("tokens").per_ip("1/min"),
            )
            .build()
            .unwrap();
        let app = axum::Router::new()
            .route(
                "/users/{email}/reset",
                axum::routing::get(|| async { "sent" }),
            )
            .layer(limiter.layer());
        let mut statuses = Vec::new();
        // A route axum serves, then a path no axum route matches (answered 404 by the
        // fallback, which the layer wraps too).
        for path in [
            "/users/alice@example.com/reset",
            "/users/bob@example.com/tokens/tok_SECRET123",
        ] {
            for _ in 0..2 {
                let mut req = http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .unwrap();
                req.extensions_mut()
                    .insert("192.0.2.1:5000".parse::<std::net::SocketAddr>().unwrap());
                statuses.push(app.clone().oneshot(req).await.unwrap().status());
            }
        }
        assert_eq!(
            statuses,
            [
                StatusCode::OK,
                StatusCode::TOO_MANY_REQUESTS,
                StatusCode::NOT_FOUND,
                StatusCode::TOO_MANY_REQUESTS
            ]
        );
    });
    let all = events.join("\n");
    let refusals = saying(&events, "", "rate limit exceeded");
    assert_eq!(refusals.len(), 2, "{all}");
    assert!(
        refusals[0].contains("route=/users/{email}/reset"),
        "{}",
        refusals[0]
    );
    // Without an axum route, the rule of the table that classed the request.
    assert!(
        refusals[1].contains("route=/users/{id}/tokens/*"),
        "{}",
        refusals[1]
    );
    for secret in ["alice@example.com", "bob@example.com", "tok_SECRET123"] {
        assert!(!all.contains(secret), "{all}");
    }
}

/// What operators change at runtime is logged, with the key as stored: a secret kind's key
/// hashed, never as given.
#[test]
fn overrides_and_resets_are_logged_with_the_stored_key() {
    let events = EventLog::during(async {
        let limiter = Limiter::builder()
            .route(
                "/*",
                Policy::named("keys")
                    .per_api_key("x-api-key", "10/min")
                    .per_ip("100/min"),
            )
            .read_env(false)
            .build()
            .unwrap();
        limiter
            .set_override_for_kind("api_key", "sk_live_secret", "50/min")
            .unwrap();
        limiter
            .set_override_for_kind("ip", "2001:db8::1", "5/min")
            .unwrap();
        assert!(limiter
            .remove_override_for_kind("api_key", "sk_live_secret")
            .unwrap());
        // Nothing to remove: nothing changed, nothing logged.
        assert!(!limiter
            .remove_override_for_kind("api_key", "sk_live_secret")
            .unwrap());
        let _ = limiter.reset_bucket("keys:ip", "192.0.2.7").await.unwrap();
    });
    let all = events.join("\n");
    assert!(!all.contains("sk_live_secret"), "{all}");
    let with = |message: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e.starts_with("INFO") && e.contains(message))
            .cloned()
            .collect()
    };
    let set = with("rate-limit override set");
    assert_eq!(set.len(), 2, "{all}");
    assert!(
        set[0].contains("kind=api_key") && set[0].contains("key=#"),
        "{}",
        set[0]
    );
    assert!(set[0].contains("limit=50/min"), "{}", set[0]);
    assert!(
        set[1].contains("kind=ip") && set[1].contains("key=2001:db8::/64"),
        "{}",
        set[1]
    );
    let removed = with("rate-limit override removed");
    assert_eq!(removed.len(), 1, "{all}");
    assert!(removed[0].contains("kind=api_key") && removed[0].contains("key=#"));
    let reset = with("rate-limit bucket reset");
    assert_eq!(reset.len(), 1, "{all}");
    assert!(
        reset[0].contains("bucket=keys:ip") && reset[0].contains("key=192.0.2.7"),
        "{}",
        reset[0]
    );
}

/// A method a client invents is shown cut to 32 bytes in every event that shows a method:
/// a refusal's and a store failure's (a review: 95,000 bytes of method in one log line).
#[test]
fn every_event_that_shows_a_method_cuts_a_long_invented_one() {
    let method = "Z".repeat(5_000);
    let events = EventLog::during(async {
        let limiters = [
            Limiter::builder().route("/*", Policy::named("one").per_ip("1/min")),
            Limiter::builder()
                .store(common::Down)
                .route("/*", Policy::named("down").per_ip("1/min")),
        ];
        for limiter in limiters {
            let svc = echo_behind(&limiter.build().unwrap());
            for _ in 0..2 {
                let mut req = request("/x", Some("192.0.2.1:5000"), None);
                *req.method_mut() = http::Method::from_bytes(method.as_bytes()).unwrap();
                svc.clone().oneshot(req).await.unwrap();
            }
        }
    });
    let all = events.join("\n");
    let cut = format!("method={}…", "Z".repeat(32));
    for text in ["rate limit exceeded", "rate-limit store failed"] {
        let logged = saying(&events, "", text);
        assert_eq!(logged.len(), 1, "{text}: {all}");
        assert!(
            logged[0].contains(&cut) && logged[0].len() < 1_000,
            "{}",
            logged[0]
        );
    }
}

/// A store failure names the request as a refusal does: the rule that classed it, never
/// the path requested, which can carry an e-mail or a token.
#[test]
fn a_store_failure_names_the_rule_not_the_path() {
    let events = EventLog::during(async {
        let limiter = Limiter::builder()
            .store(common::Down)
            .route("/users/*", Policy::named("users").per_ip("10/min"))
            .build()
            .unwrap();
        let svc = echo_behind(&limiter);
        let peer = Some("192.0.2.1:5000");
        let response = svc
            .oneshot(request(
                "/users/alice@example.com/tokens/tok_SECRET123",
                peer,
                None,
            ))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "fails open by default");
    });
    let all = events.join("\n");
    let failures = saying(&events, "", "rate-limit store failed");
    assert_eq!(failures.len(), 1, "{all}");
    assert!(failures[0].contains("route=/users/*"), "{}", failures[0]);
    for secret in ["alice@example.com", "tok_SECRET123"] {
        assert!(!all.contains(secret), "{all}");
    }
}

/// A memory store whose backend fails every call made after a response: giving a charge
/// back, counting a response.
#[derive(Debug, Clone)]
struct FailsAfterResponses(MemoryStore);

impl Store for FailsAfterResponses {
    fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
        match batch.op {
            Op::Charge | Op::Peek => self.0.apply(batch),
            _ => Box::pin(async {
                Err(StoreError::Unavailable(
                    "test: down after the response".into(),
                ))
            }),
        }
    }
}

/// A store that could not give a charge back (a 304 under `refund_if`), and one that could
/// not count a response (a 401 seen by a guard that counts only 401s), each say which it
/// was.
#[test]
fn a_failed_refund_and_a_failed_count_after_a_response_are_told_apart() {
    for (guard, status, said) in [
        (
            false,
            StatusCode::NOT_MODIFIED,
            "could not give a charge back",
        ),
        (true, StatusCode::UNAUTHORIZED, "could not count a response"),
    ] {
        let events = EventLog::during(async move {
            let etags = Policy::named("etags")
                .per_ip("5/min")
                .refund_if(|s| s == StatusCode::NOT_MODIFIED);
            let builder = Limiter::builder().store(FailsAfterResponses(MemoryStore::new()));
            let limiter = if guard {
                builder.build().unwrap()
            } else {
                builder.route("/*", etags).build().unwrap()
            };
            let layer = if guard {
                limiter.guard(
                    Policy::named("sign-in")
                        .per_ip("5/min")
                        .count_only_if(|s| s == StatusCode::UNAUTHORIZED),
                )
            } else {
                limiter.layer()
            };
            let svc = ServiceBuilder::new()
                .layer(layer)
                .service(answering(status));
            let response = svc
                .oneshot(request("/x", Some("192.0.2.1:5000"), None))
                .await
                .unwrap();
            assert_eq!(response.status(), status);
        });
        let all = events.join("\n");
        let warned = saying(&events, "", "could not");
        assert_eq!(warned.len(), 1, "{said}: {all}");
        assert!(warned[0].starts_with("WARN"), "{all}");
        assert!(warned[0].contains(said), "{said}: {all}");
    }
}

/// A per-route policy whose requests the central layer charges first (a plain tower stack,
/// without axum's matched route) is warned about once, however many requests follow; a
/// store that cannot take the central class's charge back says so on each of them.
#[test]
fn a_route_charged_centrally_first_is_warned_once_and_a_failed_give_back_each_time() {
    let events = EventLog::during(async {
        let limiter = Limiter::builder()
            .store(FailsAfterResponses(MemoryStore::new()))
            .route("/*", Policy::named("default").per_ip("100/min"))
            .build()
            .unwrap();
        let svc = ServiceBuilder::new()
            .layer(limiter.layer())
            .layer(limiter.policy(Policy::named("chat").per_ip("5/min")))
            .service(service_fn(echo));
        for _ in 0..3 {
            let response = svc
                .clone()
                .oneshot(request("/chat", Some("192.0.2.1:5000"), None))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
    });
    let all = events.join("\n");
    let count = |said: &str| saying(&events, "WARN", said).len();
    assert_eq!(count("first charged to the central class"), 1, "{all}");
    assert_eq!(
        count("could not give the central class's charge back"),
        3,
        "{all}"
    );
}

/// Requests without a peer address are logged about once, not each of them.
#[test]
fn a_missing_peer_address_is_logged_once() {
    let events = EventLog::during(async {
        let limiter = Limiter::builder()
            .route("/*", Policy::named("default").per_ip("100/min"))
            .build()
            .unwrap();
        let svc = echo_behind(&limiter);
        for _ in 0..3 {
            let _ = svc
                .clone()
                .oneshot(request("/x", None, None))
                .await
                .unwrap();
        }
        assert_eq!(limiter.stats().no_peer, 3);
    });
    let all = events.join("\n");
    let errors = saying(&events, "ERROR", "no client address");
    assert_eq!(errors.len(), 1, "{all}");
}

/// A reload that drops only a route, or only a global limit, is warned about too, each
/// time with the counts it dropped from.
#[test]
fn a_reload_that_drops_only_a_route_or_only_a_global_limit_is_warned_about() {
    let rules = |routes: &[&str], globals: &[&str]| {
        let mut rules = Limiter::builder();
        for (i, pattern) in routes.iter().enumerate() {
            rules = rules.route(pattern, Policy::named(format!("r{i}")).per_ip("5/min"));
        }
        for (i, rate) in globals.iter().enumerate() {
            rules = rules.global_policy(Policy::named(format!("g{i}")).per_ip(*rate));
        }
        rules
    };
    let events = EventLog::during(async {
        let limiter = rules(&["/a/*", "/b/*"], &["100/min", "1000/hour"])
            .read_env(false)
            .build()
            .unwrap();
        limiter
            .reload(rules(&["/a/*"], &["100/min", "1000/hour"]))
            .unwrap();
        limiter.reload(rules(&["/a/*"], &["100/min"])).unwrap();
    });
    let warnings = saying(&events, "", "fewer routes or global limits");
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    for field in ["routes=1", "were_routes=2", "global_policies=2"] {
        assert!(warnings[0].contains(field), "{field}: {}", warnings[0]);
    }
    for field in ["routes=1", "were_routes=1", "were_global_policies=2"] {
        assert!(warnings[1].contains(field), "{field}: {}", warnings[1]);
    }
}

/// Building a disabled limiter warns that requests pass unlimited; an enabled one (two
/// here) does not. A reload that turns shadow mode on warns that nothing will be refused,
/// once: a reload that leaves it off, or keeps it on (twice here), does not.
#[test]
fn disabled_and_newly_shadowed_limiters_are_warned_about() {
    let rules = || Limiter::builder().route("/*", Policy::named("default").per_ip("5/min"));
    let events = EventLog::during(async {
        rules().read_env(false).enabled(false).build().unwrap();
        rules().read_env(false).enabled(true).build().unwrap();
        let limiter = rules().read_env(false).build().unwrap();
        limiter.reload(rules()).unwrap();
        for _ in 0..3 {
            limiter.reload(rules().shadow(true)).unwrap();
        }
    });
    let all = events.join("\n");
    let count = |text: &str| saying(&events, "", text).len();
    assert_eq!(count("rate limiting is disabled"), 1, "{all}");
    assert_eq!(count("shadow mode: nothing will be refused"), 1, "{all}");
}

/// What building a limiter warns about (every IPv4 address trusted as a proxy, limiting
/// disabled, shadow mode) is logged once, by the build: the limiter's guards share that
/// configuration and do not log it again (an operator read it twice per guard).
#[test]
fn a_limiters_warnings_are_not_repeated_by_its_guards() {
    let events = EventLog::during(async {
        let limiter = Limiter::builder()
            .route("/*", Policy::named("default").per_ip("5/min"))
            .client_ip(ClientIp::peer().trust_proxies(["0.0.0.0/0"]))
            .read_env(false)
            .enabled(false)
            .shadow(true)
            .build()
            .unwrap();
        let _ = limiter.guard(Policy::named("failed-auth").per_ip("20/min"));
        let _ = limiter.guard(Policy::named("failed-admin").per_ip("10/min"));
    });
    let all = events.join("\n");
    for text in [
        "`0.0.0.0/0`, i.e. every IPv4 address",
        "rate limiting is disabled",
        "shadow mode: nothing will be refused",
    ] {
        assert_eq!(saying(&events, "WARN", text).len(), 1, "{text}:\n{all}");
    }
}

/// A refusal of a bucket for direct use (`Limiter::check`: a handler's sign-in cap, a
/// lockout) is an `INFO` event as the middleware's are, at most one a second per bucket,
/// never with the key: a review found the demo's lockout and sign-in cap refusing 21,307
/// requests without a line, where the docs promise refusal events.
#[test]
fn refusals_of_a_bucket_for_direct_use_are_logged_without_the_key() {
    let events = EventLog::during(async {
        let limiter = Limiter::builder()
            .bucket("sign-in-failures", "2/30min")
            .read_env(false)
            .build()
            .unwrap();
        for _ in 0..2 {
            let d = limiter
                .check("sign-in-failures", "victim@example.com")
                .await
                .unwrap();
            assert!(d.allowed);
        }
        for _ in 0..3 {
            let d = limiter
                .check("sign-in-failures", "victim@example.com")
                .await
                .unwrap();
            assert!(!d.allowed);
        }
    });
    let all = events.join("\n");
    assert!(!all.contains("victim"), "{all}");
    let refusals = saying(&events, "INFO", "rate limit exceeded");
    // Three refusals within a second: one event.
    assert_eq!(refusals.len(), 1, "{all}");
    for field in [
        "policy=sign-in-failures",
        "bucket=sign-in-failures",
        "key_kind=direct",
        "reason=over_limit",
        "unlogged_refusals=0",
        "retry_after_ms=17999",
    ] {
        assert!(
            refusals[0].contains(field),
            "{field} missing in {}",
            refusals[0]
        );
    }
}

/// A key refused because its bucket's share of the memory store is full of keys at their
/// limit is not over its limit: its event says the store had no room (`reason=store_full`),
/// not "rate limit exceeded" (a review counted 217,114 such lockout "refusals" in the logs
/// and metrics of sign-ins the demo served per network instead).
#[test]
fn a_key_refused_for_want_of_room_is_not_logged_as_over_its_limit() {
    let events = EventLog::during(async {
        let limiter = Limiter::builder()
            .store(MemoryStore::builder().max_entries(64).shards(1).build())
            .route("/*", Policy::named("default").per_ip("1/min"))
            .bucket("lockout", "1/min")
            .read_env(false)
            .build()
            .unwrap();
        let svc = echo_behind(&limiter);
        for i in 0..64 {
            let peer = format!("198.51.100.{i}:4000");
            let r = svc.clone().oneshot(request("/x", Some(&peer), None));
            assert_eq!(r.await.unwrap().status(), StatusCode::OK);
            assert!(
                limiter
                    .check("lockout", &format!("u{i}"))
                    .await
                    .unwrap()
                    .allowed
            );
        }
        let r = svc
            .clone()
            .oneshot(request("/x", Some("203.0.113.9:4000"), None));
        assert_eq!(r.await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(!limiter.check("lockout", "new").await.unwrap().allowed);
    });
    let all = events.join("\n");
    assert!(
        saying(&events, "", "rate limit exceeded").is_empty(),
        "{all}"
    );
    let full = saying(
        &events,
        "INFO",
        "no room for a new key in the store: refused",
    );
    assert_eq!(full.len(), 2, "{all}");
    for (event, policy) in full.iter().zip(["default", "lockout"]) {
        assert!(event.contains("reason=store_full"), "{event}");
        assert!(event.contains(&format!("policy={policy}")), "{event}");
    }
}

/// Each bucket whose share of the memory store is full is warned about when it fills, with
/// its own count of refused new keys: another bucket warned about just before neither
/// delays it nor adds its refusals to it (a review: a second bucket's full share was told
/// of 11 s late, as `refused=7` where it had refused 2 and the other 5).
#[test]
fn each_full_share_is_warned_about_with_its_own_count() {
    let events = EventLog::during(async {
        let clock = tollgate::ManualClock::new(std::time::Duration::from_secs(1_700_000_000));
        let limiter = Limiter::builder()
            .store(
                MemoryStore::builder()
                    .clock(clock.clone())
                    .max_entries(64)
                    .shards(1)
                    .build(),
            )
            .bucket_when_full("a", "5/30min", tollgate::WhenFull::KeepCounts)
            .bucket_when_full("b", "5/30min", tollgate::WhenFull::KeepCounts)
            .read_env(false)
            .build()
            .unwrap();
        let check = |bucket: &'static str, key: String| {
            let limiter = limiter.clone();
            async move { limiter.check(bucket, &key).await.unwrap().allowed }
        };
        for bucket in ["a", "b"] {
            for i in 0..64 {
                assert!(check(bucket, format!("{i}")).await, "{bucket} {i}");
            }
            // Full: a new key is refused (`a` warned about; `b` too, at once).
            assert!(!check(bucket, "new".into()).await);
        }
        // Four more of `a` within the interval: counted for its next warning.
        for i in 0..4 {
            assert!(!check("a", format!("more {i}")).await);
        }
        clock.advance(std::time::Duration::from_secs(11));
        assert!(!check("b", "later".into()).await);
        assert!(!check("a", "later".into()).await);
    });
    let all = events.join("\n");
    // `bucket="a" ... refused=1` as `a:1`.
    let warned: Vec<String> = saying(&events, "WARN", "refuses new keys of this bucket")
        .iter()
        .map(|w| {
            let value = |field: &str| {
                let rest = w.split(&format!(" {field}=")).nth(1).unwrap_or("?");
                rest.split(' ')
                    .next()
                    .unwrap_or("?")
                    .trim_matches('"')
                    .to_owned()
            };
            format!("{}:{}", value("bucket"), value("refused"))
        })
        .collect();
    // Before, one warning for the store: `["a:1", "b:6"]`.
    assert_eq!(warned, ["a:1", "b:1", "b:1", "a:5"], "{all}");
}

/// A limiter whose one class, `/api/*` (`default`), allows 100 a minute per IP.
fn api_default() -> Limiter {
    Limiter::builder()
        .read_env(false)
        .route("/api/*", Policy::named("default").per_ip("100/min"))
        .build()
        .unwrap()
}

/// A declared route's probe dropped before it reaches the route's layer (the client went
/// away while a middleware in front of the route ran) is not warned about: it says nothing
/// of where the layer is (a review: a correctly wired app's log blamed its wiring).
#[test]
fn a_probe_dropped_before_its_layer_is_not_warned_about() {
    let events = EventLog::during(async {
        let limiter = api_default();
        let chat = limiter.policy_at("POST /api/chat", Policy::named("chat").per_ip("5/min"));
        let slow = axum::middleware::from_fn(
            |request: axum::extract::Request, next: axum::middleware::Next| async move {
                if request.headers().contains_key("x-slow") {
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                }
                next.run(request).await
            },
        );
        let app = axum::Router::new()
            .route(
                "/api/chat",
                axum::routing::post(|| async { "chat" }).layer(chat),
            )
            .route("/api/other", axum::routing::post(|| async { "other" }))
            .layer(slow)
            .layer(limiter.layer());
        let post = |path: &str, slow: bool| {
            let mut req = request(path, Some("192.0.2.1:5000"), None);
            *req.method_mut() = http::Method::POST;
            if slow {
                req.headers_mut().insert("x-slow", "1".parse().unwrap());
            }
            app.clone().oneshot(req)
        };
        let dropped = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            post("/api/chat", true),
        )
        .await;
        assert!(dropped.is_err());
        // Once the wait after it is over, a probe the layer sees.
        tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
        assert_eq!(post("/api/chat", false).await.unwrap().status(), 200);
    });
    let text = "answered without reaching the policy's layer";
    assert_eq!(saying(&events, "WARN", text).len(), 0, "{events:#?}");
}

#[test]
fn a_per_route_layer_on_a_route_its_pattern_does_not_match_is_warned_about_by_its_pattern() {
    let events = EventLog::during(async {
        let limiter = api_default();
        // The pattern misspells the route the layer is on.
        let chat = limiter.policy_at(
            "POST /api/assistant/chats",
            Policy::named("chat").per_ip("5/min"),
        );
        let app = axum::Router::new()
            .route(
                "/api/assistant/chat",
                axum::routing::post(|| async { "chat" }).layer(chat),
            )
            .layer(limiter.layer());
        for _ in 0..2 {
            let mut req = request("/api/assistant/chat", Some("192.0.2.1:5000"), None);
            *req.method_mut() = http::Method::POST;
            let response = app.clone().oneshot(req).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            // Charged to its class, not to the policy the layer's pattern names.
            assert_eq!(
                response.headers()["ratelimit-policy"],
                "\"default-ip\";q=100;w=60"
            );
        }
    });
    let warned = saying(
        &events,
        "WARN",
        "a per-route policy's layer is on a route its pattern does not match",
    );
    assert_eq!(warned.len(), 1, "{events:#?}");
    assert!(
        warned[0].contains("policy=chat")
            && warned[0].contains("pattern=POST /api/assistant/chats")
            && warned[0].contains("route=/api/assistant/chat"),
        "{}",
        warned[0]
    );
}

#[test]
fn rules_written_without_the_nest_prefix_are_warned_about_once() {
    let events = EventLog::during(async {
        let limiter = Limiter::builder()
            .read_env(false)
            .route("/items/*", Policy::named("items").per_ip("3/min"))
            .build()
            .unwrap();
        // Rules as the nested router declares its routes: axum's routes there carry the
        // prefix (`/api/items/{id}`), which no rule matches.
        let api = axum::Router::new()
            .route("/items/{id}", axum::routing::get(|| async { "item" }))
            .route("/health", axum::routing::get(|| async { "ok" }))
            .layer(limiter.layer());
        let app = axum::Router::new().nest("/api", api);
        for path in ["/api/health", "/api/items/1", "/api/items/2", "/api/health"] {
            for _ in 0..2 {
                let req = request(path, Some("192.0.2.1:5000"), None);
                let response = app.clone().oneshot(req).await.unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                // Not limited: no rule matched.
                assert!(response.headers().get("ratelimit-policy").is_none());
            }
        }
    });
    let warned = saying(
        &events,
        "WARN",
        "no rate-limit rule matches this route inside `Router::nest`",
    );
    assert_eq!(warned.len(), 1, "{events:#?}");
    assert!(
        warned[0].contains(r#"route="/api/items/{id}""#)
            && warned[0].contains("rule=/items/*")
            && warned[0].contains(r#"prefix="/api""#),
        "{}",
        warned[0]
    );
}

/// The nest warning says the rule does not apply, not that the route is unlimited: a
/// global limit still limits it.
#[test]
fn the_nest_warning_with_a_global_limit_says_the_rule_does_not_apply() {
    let events = EventLog::during(async {
        let limiter = Limiter::builder()
            .read_env(false)
            .global("100/min")
            .route("/items/*", Policy::named("items").per_ip("3/min"))
            .build()
            .unwrap();
        let api = axum::Router::new()
            .route("/items/{id}", axum::routing::get(|| async { "item" }))
            .layer(limiter.layer());
        let app = axum::Router::new().nest("/api", api);
        let req = request("/api/items/1", Some("192.0.2.1:5000"), None);
        let response = app.clone().oneshot(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["ratelimit-policy"],
            "\"global\";q=100;w=60"
        );
    });
    let warned = saying(&events, "WARN", "inside `Router::nest`");
    assert_eq!(warned.len(), 1, "{events:#?}");
    assert!(
        warned[0].contains("that rule does not apply to this route")
            && !warned[0].contains("not limited"),
        "{}",
        warned[0]
    );
}

/// A route left unlimited on purpose beside a rule for a shorter path, with no nest at
/// all (`/admin/login` beside a rule for `/login`), is no nest to warn about.
#[test]
fn no_nest_warning_without_a_nest() {
    let events = EventLog::during(async {
        let limiter = Limiter::builder()
            .read_env(false)
            .route("POST /login", Policy::named("login").per_ip("5/min"))
            .build()
            .unwrap();
        let app = axum::Router::new()
            .route("/login", axum::routing::post(|| async { "login" }))
            .route("/admin/login", axum::routing::post(|| async { "admin" }))
            .layer(limiter.layer());
        let mut req = request("/admin/login", Some("192.0.2.1:5000"), None);
        *req.method_mut() = http::Method::POST;
        let response = app.clone().oneshot(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    });
    let warned = saying(&events, "WARN", "no rate-limit rule matches");
    assert!(warned.is_empty(), "{warned:#?}");
}

#[test]
fn a_guard_of_a_disabled_limiter_says_it_is_off_by_name() {
    let events = EventLog::during(async {
        let limiter = Limiter::builder()
            .read_env(false)
            .enabled(false)
            .route("/*", Policy::named("default").per_ip("100/min"))
            .build()
            .unwrap();
        let guard = limiter.guard(Policy::failed_auth_per_ip("1/min"));
        // The same guard asked for again (an app built twice) is that guard: no second word.
        let _ = limiter.guard(Policy::failed_auth_per_ip("1/min"));
        // Off indeed: two failures in a row, neither refused.
        let svc = ServiceBuilder::new()
            .layer(guard)
            .service(answering(StatusCode::UNAUTHORIZED));
        for _ in 0..2 {
            let response = svc
                .clone()
                .oneshot(request("/x", Some("192.0.2.1:5000"), None))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        }
        // On, a guard says nothing of the kind.
        let on = Limiter::builder().read_env(false).build().unwrap();
        let _ = on.guard(Policy::failed_auth_per_ip("1/min"));
    });
    let off = saying(
        &events,
        "WARN",
        "a guard of a limiter switched off is off too",
    );
    assert_eq!(off.len(), 1, "{events:#?}");
    assert!(off[0].contains("failed-auth"), "{}", off[0]);
}

/// Of two per-route policies' layers on a route, the outer one charges: the inner one,
/// passed over, is warned about once (a review: silently, the route's own policy was never
/// spent). One layer put on a route twice is not warned about.
#[test]
fn a_per_route_policy_passed_over_for_another_is_warned_about_once() {
    let events = EventLog::during(async {
        let limiter = api_default();
        let chat = limiter.policy_at("POST /api/chat", Policy::named("chat").per_ip("5/min"));
        let writes = limiter.policy(Policy::named("writes").per_ip("4/min"));
        let twice = limiter.policy(Policy::named("twice").per_ip("4/min"));
        let app = axum::Router::new()
            .route(
                "/api/chat",
                axum::routing::post(|| async { "chat" }).layer(chat),
            )
            .route_layer(writes)
            // (Added after `route_layer`: not under `writes`.)
            .route(
                "/api/twice",
                axum::routing::post(|| async { "twice" })
                    .layer::<_, std::convert::Infallible>(twice.clone())
                    .layer(twice),
            )
            .layer(limiter.layer());
        let mut statuses = Vec::new();
        for path in ["/api/chat", "/api/twice"] {
            for _ in 0..5 {
                let mut req = request(path, Some("192.0.2.1:5000"), None);
                *req.method_mut() = http::Method::POST;
                statuses.push(app.clone().oneshot(req).await.unwrap().status().as_u16());
            }
        }
        // `writes` (4) charges the chat route; `twice` (4) its own, once per request.
        assert_eq!(statuses, [200, 200, 200, 200, 429, 200, 200, 200, 200, 429]);
    });
    let text = "after another per-route policy's layer of the limiter took it";
    let warned = saying(&events, "WARN", text);
    assert_eq!(warned.len(), 1, "{events:#?}");
    assert!(warned[0].contains("policy=chat"), "{}", warned[0]);
    assert!(warned[0].contains("outer=writes"), "{}", warned[0]);
}
