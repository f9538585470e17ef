//! The classifier against axum's own router: for random raw paths, a request
//! the classifier calls exempt is one axum routes to that same exempt route,
//! and plain paths land where axum routes them.

use axum::{body::Body, routing, Router};
use http::{Method, Request};
use proptest::prelude::*;
use tollgate::__private::RouteTable;
use tollgate::RoutePattern;
use tower::ServiceExt;

/// (tollgate pattern, axum routes, class). Classes starting with `exempt` are lenient.
const RULES: &[(&str, &[&str], &str)] = &[
    ("/api/*", &["/api", "/api/{*rest}"], "api"),
    (
        "/api/auth/*",
        &["/api/auth", "/api/auth/{*rest}"],
        "exempt-auth",
    ),
    (
        "/api/twilio/*",
        &["/api/twilio", "/api/twilio/{*rest}"],
        "exempt-twilio",
    ),
    (
        "/api/stripe/webhook",
        &["/api/stripe/webhook"],
        "exempt-stripe",
    ),
    ("/api/stripe/{id}", &["/api/stripe/{id}"], "stripe-object"),
    (
        "/api/templates/{id}/generate",
        &["/api/templates/{id}/generate"],
        "generate",
    ),
    ("/api/templates/{id}", &["/api/templates/{id}"], "template"),
];

fn table() -> RouteTable<&'static str> {
    RULES
        .iter()
        .fold(RouteTable::builder(), |b, (pattern, _, class)| {
            b.route(RoutePattern::parse(pattern).unwrap(), *class)
        })
        .route("/*".parse().unwrap(), "default")
        .lenient(|class| class.starts_with("exempt"))
        .build()
        .unwrap()
}

fn router() -> Router {
    let mut router = Router::new();
    for (_, routes, class) in RULES {
        for route in *routes {
            let class: &'static str = class;
            router = router.route(route, routing::any(move || async move { class }));
        }
    }
    router.fallback(|| async { "default" })
}

async fn axum_class(router: &Router, path: &str) -> Option<String> {
    let request = Request::builder().uri(path).body(Body::empty()).ok()?;
    let response = router.clone().oneshot(request).await.ok()?;
    let bytes = axum::body::to_bytes(response.into_body(), 1024)
        .await
        .ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("api".to_owned()),
        Just("auth".to_owned()),
        Just("twilio".to_owned()),
        Just("stripe".to_owned()),
        Just("webhook".to_owned()),
        Just("%77ebhook".to_owned()),
        Just("%74wilio".to_owned()),
        Just("templates".to_owned()),
        Just("generate".to_owned()),
        Just("7".to_owned()),
        Just(String::new()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%2e%2E".to_owned()),
        Just("%2F".to_owned()),
        Just("stripe%2Fwebhook".to_owned()),
        Just("%FF".to_owned()),
        "[a-z0-9%._~-]{1,6}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    (prop::collection::vec(segment(), 0..8), any::<bool>()).prop_map(|(segments, trailing)| {
        let mut path = format!("/{}", segments.join("/"));
        if trailing {
            path.push('/');
        }
        path
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_exempt_unless_axum_routes_there_too(path in path()) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let table = table();
        let ours = table.classify(&Method::POST, &path).copied();
        prop_assert!(ours.is_some());
        let theirs = runtime.block_on(axum_class(&router(), &path));
        prop_assert!(theirs.is_some(), "axum could not route {}", path);
        if let (Some(ours), Some(theirs)) = (ours, theirs) {
            if ours.starts_with("exempt") {
                prop_assert_eq!(ours, theirs.as_str(), "path {}", path);
            }
            // Plainly spelled paths are classified exactly as axum routes them.
            let plain = !path.contains('%') && !path.contains("//") && !path.ends_with('/')
                && !path.split('/').any(|s| s == "." || s == "..");
            if plain || path == "/" {
                prop_assert_eq!(ours, theirs.as_str(), "path {}", path);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn arbitrary_paths_and_patterns_never_panic(
        path in prop_oneof![".*", "(/[^/]{0,3}){0,40}", "[/.%a-f0-9]{0,64}"],
        patterns in prop::collection::vec("[A-Z, ]{0,8}(/[a-z{}:*%.]{0,4}){0,4}", 0..6),
        repeat in 0usize..3000,
    ) {
        let table = table();
        let _ = table.classify(&Method::GET, &path);
        let _ = table.classify(&Method::GET, &path.repeat(repeat));
        let built = patterns
            .iter()
            .filter_map(|p| RoutePattern::parse(p).ok())
            .fold(RouteTable::builder(), |b, p| b.route(p, ()))
            .build();
        if let Ok(built) = built {
            let _ = built.classify(&Method::GET, &path);
        }
    }
}

#[tokio::test]
async fn known_escapes_stay_in_class() {
    let table = table();
    let router = router();
    for path in [
        "/api/stripe/%77ebhook",
        "/api/stripe/webhook/",
        "/api/%74wilio/x",
        "/api/templates/../twilio/x",
        "/api/twilio/../templates/7/generate",
        "/api/stripe%2Fwebhook",
    ] {
        let ours = *table.classify(&Method::POST, path).unwrap();
        let theirs = axum_class(&router, path).await.unwrap();
        assert!(
            !ours.starts_with("exempt"),
            "{path}: {ours} (axum: {theirs})"
        );
    }
    assert_eq!(
        axum_class(&router, "/api/stripe/%77ebhook").await.unwrap(),
        "stripe-object"
    );
}
