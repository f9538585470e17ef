//! The route classifier and its path reader, against axum's own router.
//!
//! A small table of rules (methods, literal / parameter segments, a trailing wildcard,
//! literals sometimes percent-encoded in the pattern; each rule exempt or not) is built
//! twice: as a `RouteTable` whose exempt rules are lenient, and as an axum `Router` whose
//! routes are the rules' paths written plainly (the application the table describes).
//! Requests are then classified by both.
//!
//! Invariants: no panic (whatever the table, method or path); a request the table calls
//! exempt is one axum routes to an exempt rule, or to nothing (404/405); a path over the
//! length or segment limits is never exempt; whatever its spelling or length, a path that
//! axum routes to a rule that is not exempt is charged by that rule; a plainly spelled
//! path that axum routes to a rule is classified as that rule.
#![allow(dead_code)]

use axum::body::Body;
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;
use http::{Method, Request, Uri};
use tollgate::__private::RouteTable;
use tollgate::RoutePattern;
const MAX_PATH_LEN: usize = RoutePattern::MAX_PATH_LEN;
const MAX_SEGMENTS: usize = RoutePattern::MAX_SEGMENTS;

use crate::input::{ready, Input};

/// Literal segments as the application writes them, and other spellings of each that a
/// pattern may use.
const LITERALS: &[(&str, &[&str])] = &[
    ("a", &["a", "%61"]),
    ("b", &["b"]),
    ("api", &["api", "%61pi", "ap%69"]),
    ("~x", &["~x", "%7Ex", "%7ex"]),
    ("a.b", &["a.b", "a%2Eb", "a%2eb"]),
    ("%2F", &["%2F", "%2f"]),
    ("x-y", &["x-y", "x%2Dy"]),
    ("A", &["A", "%41"]),
];

/// Segments requests are made of.
const PATH_SEGMENTS: &[&str] = &[
    "a", "%61", "b", "api", "%61pi", "~x", "%7Ex", "%7ex", "a.b", "a%2Eb", "%2F", "%2f", "x-y",
    "A", "%41", "", ".", "..", "%2e", "%2E%2e", ".%2E", "zz", "%", "%zz", "%FF", "a%2Fb", "%00",
];

const METHODS: [(Method, MethodFilter); 6] = [
    (Method::GET, MethodFilter::GET),
    (Method::HEAD, MethodFilter::HEAD),
    (Method::POST, MethodFilter::POST),
    (Method::PUT, MethodFilter::PUT),
    (Method::DELETE, MethodFilter::DELETE),
    (Method::PATCH, MethodFilter::PATCH),
];

#[derive(Clone, Debug)]
enum Seg {
    Literal(usize),
    Param,
}

#[derive(Clone, Debug)]
struct Rule {
    /// Indices into `METHODS`; `None`: any method.
    methods: Option<Vec<usize>>,
    segments: Vec<Seg>,
    wildcard: bool,
    exempt: bool,
    /// The pattern as written.
    text: String,
}

impl Rule {
    fn generate(input: &mut Input<'_>) -> Self {
        let flags = input.byte();
        let methods = if flags & 1 == 0 {
            None
        } else {
            let mask = input.byte() | 1 << input.below(5);
            Some(
                (0..METHODS.len())
                    .filter(|i| mask & (1 << i) != 0)
                    .collect::<Vec<usize>>(),
            )
        };
        let segments: Vec<Seg> = (0..input.below(4))
            .map(|_| match input.below(LITERALS.len() + 2) {
                i if i < LITERALS.len() => Seg::Literal(i),
                _ => Seg::Param,
            })
            .collect();
        let wildcard = flags & 2 != 0;
        let exempt = flags & 4 != 0;
        let mut text = String::new();
        if let Some(methods) = &methods {
            let names: Vec<&str> = methods.iter().map(|&i| METHODS[i].0.as_str()).collect();
            text.push_str(&names.join(","));
            text.push(' ');
        }
        for (i, segment) in segments.iter().enumerate() {
            text.push('/');
            match segment {
                Seg::Literal(l) => text.push_str(input.pick(LITERALS[*l].1)),
                Seg::Param if flags & 8 != 0 => text.push_str(&format!(":p{i}")),
                Seg::Param => text.push_str(&format!("{{p{i}}}")),
            }
        }
        if wildcard {
            text.push_str(if flags & 16 != 0 { "/{*rest}" } else { "/*" });
        } else if segments.is_empty() {
            text.push('/');
        }
        Rule {
            methods,
            segments,
            wildcard,
            exempt,
            text,
        }
    }

    /// How well the rule's methods match `method`: 2 named, 1 `HEAD` through `GET`,
    /// 0 any method.
    fn method_rank(&self, method: usize) -> Option<u8> {
        match &self.methods {
            None => Some(0),
            Some(list) if list.contains(&method) => Some(2),
            Some(list) if METHODS[method].0 == Method::HEAD && list.contains(&0) => Some(1),
            Some(_) => None,
        }
    }

    /// The axum path of the rule's segments.
    fn axum_path(&self) -> String {
        let mut path = String::new();
        for (i, segment) in self.segments.iter().enumerate() {
            path.push('/');
            match segment {
                Seg::Literal(l) => path.push_str(LITERALS[*l].0),
                Seg::Param => path.push_str(&format!("{{p{i}}}")),
            }
        }
        if path.is_empty() {
            path.push('/');
        }
        path
    }
}

/// The application: one route per rule path (a wildcard rule is its prefix and
/// `{*rest}` below it), each method answered by the rule that would own it on that path.
fn router(rules: &[Rule]) -> Router {
    // (axum path, rule, registered by a wildcard)
    let mut paths: Vec<(String, Vec<(usize, bool)>)> = Vec::new();
    let mut add = |path: String, rule: usize, wildcard: bool| match paths
        .iter_mut()
        .find(|(p, _)| *p == path)
    {
        Some((_, rules)) => rules.push((rule, wildcard)),
        None => paths.push((path, vec![(rule, wildcard)])),
    };
    for (i, rule) in rules.iter().enumerate() {
        let base = rule.axum_path();
        if rule.wildcard {
            let below = if base == "/" {
                "/{*rest}".to_owned()
            } else {
                format!("{base}/{{*rest}}")
            };
            add(below, i, true);
        }
        add(base, i, rule.wildcard);
    }
    let mut router = Router::new();
    for (path, candidates) in paths {
        let mut methods: Option<MethodRouter> = None;
        for (m, (_, filter)) in METHODS.iter().enumerate() {
            // An exact rule beats a wildcard on its own prefix; then the method rank.
            let best = candidates
                .iter()
                .filter_map(|&(rule, wildcard)| {
                    rules[rule]
                        .method_rank(m)
                        .map(|rank| ((!wildcard, rank), rule))
                })
                .max_by_key(|&(key, _)| key);
            if let Some((_, rule)) = best {
                let handler = move || async move { [("x-rule", rule.to_string())] };
                methods = Some(match methods {
                    None => on(*filter, handler),
                    Some(router) => router.on(*filter, handler),
                });
            }
        }
        if let Some(methods) = methods {
            router = router.route(&path, methods);
        }
    }
    router
}

/// The rule axum routes `method` `path` to (`None`: 404 or 405).
fn axum_rule(router: &Router, method: &Method, uri: Uri) -> Option<usize> {
    let request = Request::builder()
        .method(method.clone())
        .uri(uri)
        .body(Body::empty())
        .ok()?;
    let mut service = router.clone();
    let response = ready(tower_service::Service::call(&mut service, request)).ok()?;
    let rule = response.headers().get("x-rule")?.to_str().ok()?;
    rule.parse().ok()
}

/// `f()`, or `None` if it panics (without the panic hook's report).
fn quietly<T>(f: impl FnOnce() -> T) -> Option<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result.ok()
}

fn generate_path(input: &mut Input<'_>) -> String {
    match input.below(8) {
        // Arbitrary bytes.
        0 => format!("/{}", String::from_utf8_lossy(input.bytes(64))),
        // Too many segments, or too long (a segment of its own, or a whole path), between
        // a few segments (`..` among them) before and after.
        1 => {
            let mut path = short_path(input, 4);
            let segment = input.pick(PATH_SEGMENTS);
            let count = MAX_SEGMENTS - 2 + input.below(6);
            if input.bool() {
                path.push_str(&format!("/{segment}").repeat(count));
            } else {
                path.push_str(&format!(
                    "/a{}",
                    "a".repeat(MAX_PATH_LEN - 4 + input.below(8))
                ));
            }
            path.push_str(&short_path(input, 3));
            if input.bool() {
                path.push_str(&"/..".repeat(input.below(2 * MAX_SEGMENTS)));
            }
            path
        }
        _ => {
            let mut path = short_path(input, 7);
            if path.is_empty() || input.byte() < 32 {
                path.push('/');
            }
            path
        }
    }
}

/// Up to `max - 1` segments, each after a `/`.
fn short_path(input: &mut Input<'_>, max: usize) -> String {
    let mut path = String::new();
    for _ in 0..input.below(max) {
        path.push('/');
        path.push_str(input.pick(PATH_SEGMENTS));
    }
    path
}

fn is_plain(path: &str) -> bool {
    path == "/"
        || (!path.contains('%')
            && !path.ends_with('/')
            && !path.contains("//")
            && !path.split('/').any(|s| s == "." || s == ".."))
}

/// The fuzz target.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let rules: Vec<Rule> = (0..1 + input.below(6))
        .map(|_| Rule::generate(&mut input))
        .collect();
    let mut builder = RouteTable::builder().lenient(|value: &(usize, bool)| value.1);
    for (i, rule) in rules.iter().enumerate() {
        let pattern = RoutePattern::parse(&rule.text)
            .unwrap_or_else(|e| panic!("pattern `{}`: {e}", rule.text));
        builder = builder.route(pattern, (i, rule.exempt));
    }
    let table = match builder.build() {
        Ok(table) => table,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    // axum refuses some tables (e.g. `/{*rest}` next to `/{id}/x/{*rest}`): they are no
    // application, and the oracle has nothing to say about them.
    let Some(router) = quietly(|| router(&rules)) else {
        return;
    };
    let describe = || {
        rules
            .iter()
            .map(|r| format!("{}{}", r.text, if r.exempt { " (exempt)" } else { "" }))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    for _ in 0..1 + input.below(8) {
        let path = generate_path(&mut input);
        let custom = input.byte() == 255;
        let m = input.below(METHODS.len());
        let method = if custom {
            Method::from_bytes(b"PROPFIND").unwrap_or_default()
        } else {
            METHODS[m].0.clone()
        };
        let ours = table.classify(&method, &path).copied();
        let over_limit = path.len() > MAX_PATH_LEN || path.matches('/').count() > MAX_SEGMENTS;
        if over_limit {
            assert!(
                !ours.is_some_and(|(_, exempt)| exempt),
                "{method} {path:.80}...: a path over the limits is exempt [{}]",
                describe()
            );
        }
        if custom {
            continue;
        }
        let Ok(uri) = path.parse::<Uri>() else {
            continue;
        };
        if uri.path() != path {
            continue;
        }
        let theirs = axum_rule(&router, &method, uri);
        // Whatever the path's spelling or length, the rule that serves it is charged
        // (unless it is exempt).
        if let Some(theirs) = theirs.filter(|&r| !rules[r].exempt) {
            let all: Vec<usize> = table
                .classify_all(&method, &path)
                .into_iter()
                .map(|(i, _)| *i)
                .collect();
            assert!(
                all.contains(&theirs),
                "{method} {path:.200}: charged as {:?}, axum routes it to `{}` [{}]",
                all.iter().map(|&i| &rules[i].text).collect::<Vec<_>>(),
                rules[theirs].text,
                describe()
            );
        }
        if over_limit {
            continue;
        }
        if let Some((rule, true)) = ours {
            assert!(
                theirs.is_none_or(|r| rules[r].exempt),
                "{method} {path}: classified exempt (`{}`) but axum routes it to `{}` [{}]",
                rules[rule].text,
                rules[theirs.unwrap_or_default()].text,
                describe()
            );
        }
        if let (Some(theirs), true) = (theirs, is_plain(&path)) {
            assert_eq!(
                ours.map(|(i, _)| i),
                Some(theirs),
                "{method} {path}: classified as {:?}, axum routes it to `{}` [{}]",
                ours.map(|(i, _)| &rules[i].text),
                rules[theirs].text,
                describe()
            );
        }
    }
}
