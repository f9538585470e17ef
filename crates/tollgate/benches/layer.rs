//! What the layer costs per request on the memory store, beside no layer and beside
//! tower_governor, through the same tower service and the same requests (no network):
//! `cargo bench -p tollgate --bench layer` (criterion's figures, then the interleaved
//! comparison), or only the comparison: `cargo bench -p tollgate --bench layer -- interleaved`.
//! With `TOLLGATE_BENCH_OUT=<file>`, the comparison is also written there as markdown.
//!
//! With `--features metrics`, two more stacks: the per-IP limiter with a Prometheus
//! recorder installed when it was built (metrics on), beside the same limiter without one
//! ("one per-IP limit": the feature compiled in, its handles no-ops). And in every build,
//! the per-IP limiter without the decision in the request's extensions.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::ConnectInfo;
use bytes::Bytes;
use criterion::{criterion_group, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use tollgate::{Limiter, MemoryStore, Policy};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::GovernorLayer;

/// Polls a future that is ready without waiting (memory store, ready inner service).
fn now<F: Future>(f: F) -> F::Output {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

const NEVER: &str = "1000000000/min";

type Req = Request<Full<Bytes>>;

/// The handler every stack ends in.
async fn ok(_req: Req) -> Result<Response<axum::body::Body>, Infallible> {
    Ok(Response::new(axum::body::Body::from("ok")))
}

/// A handler's response as axum makes it of a `&str` or a `String`: with its content type.
async fn ok_text(_req: Req) -> Result<Response<axum::body::Body>, Infallible> {
    Ok(axum::response::IntoResponse::into_response("ok"))
}

fn limiter(policy: Policy, global: bool) -> Limiter {
    limiter_with(policy, global, |b| b)
}

fn limiter_with(
    policy: Policy,
    global: bool,
    configure: impl FnOnce(tollgate::LimiterBuilder) -> tollgate::LimiterBuilder,
) -> Limiter {
    let mut builder = Limiter::builder()
        .store(MemoryStore::builder().max_entries(1_000_000).build())
        .read_env(false)
        .identity(|p| {
            p.headers
                .get("x-user")
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        })
        .route("/api/webhooks/*", Policy::exempt())
        .route("/api/*", policy);
    if global {
        builder = builder.global(NEVER);
    }
    configure(builder).build().unwrap()
}

/// One request through `svc`, polled to completion, its body read to the end as a server
/// would; returns the body's length.
fn call<S, B>(svc: &mut S) -> usize
where
    S: Service<Req, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body + Unpin,
{
    let response = now(async {
        svc.ready().await.unwrap();
        svc.call(request()).await.unwrap()
    });
    let mut body = response.into_body();
    let mut n = 0;
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    while let std::task::Poll::Ready(Some(Ok(frame))) =
        std::pin::Pin::new(&mut body).poll_frame(&mut cx)
    {
        n += frame.data_ref().map_or(0, bytes::Buf::remaining);
    }
    n
}

type Contender = (&'static str, Box<dyn FnMut() -> usize>);

fn contender<S, B>(name: &'static str, mut svc: S) -> Contender
where
    S: Service<Req, Response = Response<B>> + 'static,
    S::Error: std::fmt::Debug,
    B: http_body::Body + Unpin + 'static,
{
    (name, Box::new(move || call(&mut svc)))
}

fn contenders() -> Vec<Contender> {
    let ip = limiter(Policy::named("default").per_ip(NEVER), false);
    let three = limiter(Policy::named("default").per_ip(NEVER).per_user(NEVER), true);
    let refuse = limiter(Policy::named("default").per_ip("1/h"), false);
    let governor = |refusing: bool| {
        let mut config = GovernorConfigBuilder::default();
        if refusing {
            config.per_second(3600).burst_size(1);
        } else {
            config.per_nanosecond(1).burst_size(1_000_000_000);
        }
        GovernorLayer::new(config.finish().unwrap())
    };
    let no_decision = limiter_with(Policy::named("default").per_ip(NEVER), false, |b| {
        b.decision_in_request(false)
    });
    // What tower_governor does by default: decide, and add nothing to an admitted response.
    let decide_only = limiter_with(Policy::named("default").per_ip(NEVER), false, |b| {
        b.decision_in_request(false)
            .header_style(tollgate::HeaderStyle::none())
    });
    #[allow(unused_mut)]
    let mut all = vec![
        contender("no layer", service_fn(ok)),
        contender(
            "tower_governor, one per-IP limit",
            ServiceBuilder::new().layer(governor(false)).service_fn(ok),
        ),
        contender(
            "tollgate, one per-IP limit",
            ServiceBuilder::new().layer(ip.layer()).service_fn(ok),
        ),
        contender(
            "tollgate, IP + user + global",
            ServiceBuilder::new().layer(three.layer()).service_fn(ok),
        ),
        contender(
            "tower_governor, refused (429)",
            ServiceBuilder::new().layer(governor(true)).service_fn(ok),
        ),
        contender(
            "tollgate, refused (429)",
            ServiceBuilder::new().layer(refuse.layer()).service_fn(ok),
        ),
        contender("no layer, text response", service_fn(ok_text)),
        contender(
            "tollgate, one per-IP limit, text response",
            ServiceBuilder::new().layer(ip.layer()).service_fn(ok_text),
        ),
        contender(
            "tollgate, one per-IP limit, no decision in the request",
            ServiceBuilder::new()
                .layer(no_decision.layer())
                .service_fn(ok),
        ),
        contender(
            "tollgate, one per-IP limit, no headers, no decision in the request",
            ServiceBuilder::new()
                .layer(decide_only.layer())
                .service_fn(ok),
        ),
    ];
    #[cfg(feature = "metrics")]
    {
        // Handles are registered at build: build under the recorder. (Its registry is
        // shared with the handles, so the recorder itself may go.)
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let (ip_metrics, refuse_metrics) = metrics::with_local_recorder(&recorder, || {
            (
                limiter(Policy::named("default").per_ip(NEVER), false),
                limiter(Policy::named("default").per_ip("1/h"), false),
            )
        });
        all.push(contender(
            "tollgate, one per-IP limit, metrics on",
            ServiceBuilder::new()
                .layer(ip_metrics.layer())
                .service_fn(ok),
        ));
        all.push(contender(
            "tollgate, refused (429), metrics on",
            ServiceBuilder::new()
                .layer(refuse_metrics.layer())
                .service_fn(ok),
        ));
    }
    all
}

fn request() -> Req {
    let peer: SocketAddr = "203.0.113.7:4000".parse().unwrap();
    let mut req = Request::get("/api/items/42")
        .header("x-user", "u_42")
        .body(Full::new(Bytes::new()))
        .unwrap();
    req.extensions_mut().insert(ConnectInfo(peer));
    req
}

fn bench(c: &mut Criterion) {
    for (name, mut call) in contenders() {
        c.bench_function(name, |b| b.iter(|| black_box(call())));
    }
}

/// The contenders interleaved: each round times one chunk of every contender back to back,
/// and the cost added by a layer is its time minus "no layer" in the same round (median
/// over rounds).
#[allow(non_snake_case)]
fn interleaved() {
    // `LAYER_ROUNDS` / `LAYER_CHUNK` shrink the run (under callgrind, say).
    let env = |name: &str, default: u32| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (ROUNDS, CHUNK) = (
        env("LAYER_ROUNDS", 15) as usize,
        env("LAYER_CHUNK", 100_000),
    );
    // `LAYER_ONLY=<text>`: only the stack of that name, or if none has it, the stacks whose
    // name contains it (and "no layer" always), for profiling one of them.
    let only = std::env::var("LAYER_ONLY").ok();
    let all = contenders();
    let exact = only
        .as_deref()
        .is_some_and(|o| all.iter().any(|(name, _)| *name == o));
    let mut contenders: Vec<Contender> = all
        .into_iter()
        .filter(|(name, _)| {
            *name == "no layer"
                || match only.as_deref() {
                    None => true,
                    Some(o) if exact => *name == o,
                    Some(o) => name.contains(o),
                }
        })
        .collect();
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
    for _ in 0..ROUNDS {
        for (times, (_, call)) in ns.iter_mut().zip(&mut contenders) {
            let start = Instant::now();
            for _ in 0..CHUNK {
                black_box(call());
            }
            times.push(start.elapsed().as_nanos() as f64 / f64::from(CHUNK));
        }
    }
    let mut out = String::new();
    out.push_str("## Layer: cost per request through the tower service\n\n");
    out.push_str("`cargo bench -p tollgate --bench layer -- interleaved`: the same request (`GET /api/items/42`,\n");
    out.push_str(
        "a peer address and an `x-user` header) through each stack, polled to completion in\n",
    );
    out.push_str(&format!(
        "process (no network), {ROUNDS} interleaved rounds of {CHUNK} requests. Memory store.\n\n"
    ));
    out.push_str("| stack | ns per request | added by the layer (ns, median of per-round differences) |\n|---|---|---|\n");
    for (i, (name, _)) in contenders.iter().enumerate() {
        let mut own = ns[i].clone();
        let mut added: Vec<f64> = ns[i].iter().zip(&ns[0]).map(|(t, b)| t - b).collect();
        out.push_str(&format!(
            "| {name} | {:.0} | {:.0} |\n",
            median(&mut own),
            median(&mut added)
        ));
    }
    print!("\n{out}");
    if let Ok(path) = std::env::var("TOLLGATE_BENCH_OUT") {
        std::fs::write(path, out).expect("writing the bench output");
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

criterion_group!(benches, bench);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let only_interleaved = args.iter().any(|a| a == "interleaved");
    let measuring = args.iter().any(|a| a == "--bench")
        && !args
            .iter()
            .any(|a| a == "--list" || a == "--profile-time" || a == "--test");
    if !only_interleaved {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
    if measuring {
        interleaved();
    }
}
