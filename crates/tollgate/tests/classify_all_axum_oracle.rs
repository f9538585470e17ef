//! `RouteTable::classify_all` against axum's own router: for random raw paths, every
//! non-exempt class that axum routes the path to, as sent or after normalisation (a path
//! normaliser in front of the router), is among the classes the request is charged. So no
//! spelling of a path moves a request out of the class of the route that serves it.

use axum::{body::Body, routing, Router};
use http::{Method, Request};
use proptest::prelude::*;
use tollgate::__private::RouteTable;
use tollgate::RoutePattern;
use tower::ServiceExt;

/// (tollgate pattern, axum routes, class); GET only. Classes starting with `exempt` are
/// lenient. The shape of the demo's table: wildcard routes next to looser classes.
const RULES: &[(&str, &[&str], &str)] = &[
    ("/api/*", &["/api", "/api/{*rest}"], "api"),
    (
        "/api/documents/temp/*",
        &["/api/documents/temp", "/api/documents/temp/{*file}"],
        "downloads",
    ),
    (
        "/api/documents/{id}/download",
        &["/api/documents/{id}/download"],
        "download",
    ),
    (
        "/api/knowledge/*",
        &["/api/knowledge", "/api/knowledge/{*rest}"],
        "knowledge",
    ),
    (
        "/api/twilio/*",
        &["/api/twilio", "/api/twilio/{*rest}"],
        "twilio",
    ),
    (
        "/api/twilio/sms/*",
        &["/api/twilio/sms", "/api/twilio/sms/{*rest}"],
        "exempt-sms",
    ),
    (
        "/api/stripe/webhook",
        &["/api/stripe/webhook"],
        "exempt-stripe",
    ),
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

async fn axum_class(router: &Router, path: &str) -> String {
    let request = Request::builder().uri(path).body(Body::empty()).unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let bytes = axum::body::to_bytes(response.into_body(), 1024)
        .await
        .unwrap();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// RFC 3986 normalisation, written independently of the classifier: escaped unreserved
/// characters decoded (other escapes upper-cased), empty and `.` segments dropped, `..`
/// resolved.
fn normalise(path: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for segment in path.split('/') {
        let mut decoded = String::new();
        let bytes = segment.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let hex = (bytes[i] == b'%')
                .then(|| segment.get(i + 1..i + 3))
                .flatten()
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(b) if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => {
                    decoded.push(b as char);
                    i += 3;
                }
                Some(_) => {
                    decoded.push('%');
                    decoded.push_str(&segment[i + 1..i + 3].to_ascii_uppercase());
                    i += 3;
                }
                None => {
                    decoded.push(bytes[i] as char);
                    i += 1;
                }
            }
        }
        match decoded.as_str() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(decoded),
        }
    }
    format!("/{}", out.join("/"))
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("api".to_owned()),
        Just("documents".to_owned()),
        Just("temp".to_owned()),
        Just("download".to_owned()),
        Just("knowledge".to_owned()),
        Just("twilio".to_owned()),
        Just("%74wilio".to_owned()),
        Just("sms".to_owned()),
        Just("stripe".to_owned()),
        Just("webhook".to_owned()),
        Just("7".to_owned()),
        Just(String::new()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%2e%2E".to_owned()),
        Just(".%2E".to_owned()),
        Just("%2E".to_owned()),
        Just("%2F".to_owned()),
        Just("%FF".to_owned()),
        "[a-z0-9%._~-]{1,6}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    (prop::collection::vec(segment(), 0..9), any::<bool>()).prop_map(|(segments, trailing)| {
        let mut path = format!("/{}", segments.join("/"));
        if trailing {
            path.push('/');
        }
        path
    })
}

/// Starts most paths inside a wildcard route, where dot segments can climb out of it.
fn climbing_path() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just("/api/documents/temp"),
            Just("/api/knowledge"),
            Just("/api/twilio"),
            Just("/api/twilio/sms"),
            Just(""),
        ],
        path(),
    )
        .prop_map(|(prefix, rest)| format!("{prefix}{rest}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn every_non_exempt_class_axum_serves_is_charged(path in climbing_path()) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let table = table();
        let router = router();
        let ours: Vec<&str> = table.classify_all(&Method::GET, &path).into_iter().copied().collect();
        prop_assert!(!ours.is_empty() && ours.len() <= 2, "{:?} for {}", ours, path);
        prop_assert_eq!(ours.first().copied(), table.classify(&Method::GET, &path).copied());
        if ours.len() == 2 {
            prop_assert_ne!(ours[0], ours[1]);
            prop_assert!(!ours.iter().any(|c| c.starts_with("exempt")), "{:?} for {}", ours, path);
        }
        let served = runtime.block_on(axum_class(&router, &path));
        let normalised = normalise(&path);
        let after_normaliser = runtime.block_on(axum_class(&router, &normalised));
        for (reading, class) in [("as sent", &served), ("normalised", &after_normaliser)] {
            if !class.starts_with("exempt") {
                prop_assert!(
                    ours.contains(&class.as_str()),
                    "{} ({}) is served by `{}` but charged {:?}", path, reading, class, ours
                );
            }
        }
        // An exempt answer only where axum really serves an exempt route.
        if ours.iter().any(|c| c.starts_with("exempt")) {
            prop_assert_eq!(ours, vec![served.as_str()], "{}", path);
        }
    }
}

#[tokio::test]
async fn known_climbs_are_charged_the_serving_class() {
    let table = table();
    let router = router();
    for (path, serving, also) in [
        (
            "/api/documents/temp/../../knowledge/f",
            "downloads",
            "knowledge",
        ),
        (
            "/api/documents/temp/%2E%2E/%2e%2e/knowledge/f",
            "downloads",
            "knowledge",
        ),
        ("/api/documents/temp/../../twilio/f", "downloads", "twilio"),
        ("/api/documents/temp/../../projects", "downloads", "api"),
        (
            "/api/knowledge/../documents/7/download",
            "knowledge",
            "download",
        ),
    ] {
        assert_eq!(axum_class(&router, path).await, serving, "{path}");
        let ours: Vec<&str> = table
            .classify_all(&Method::GET, path)
            .into_iter()
            .copied()
            .collect();
        assert_eq!(ours, [also, serving], "{path}");
    }
}
