//! What the layer costs per request on the memory store: classify, resolve keys, decide
//! (class + global), headers. `cargo bench -p tollgate --bench layer`.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::net::SocketAddr;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use tollgate::{Limiter, MemoryStore, Policy};
use tower::{service_fn, Service, ServiceBuilder};

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

fn bench(c: &mut Criterion) {
    let limiter = Limiter::builder()
        .store(MemoryStore::builder().max_entries(1_000_000).build())
        .read_env(false)
        .identity(|p| {
            p.headers
                .get("x-user")
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        })
        .route("/api/webhooks/*", Policy::exempt())
        .route(
            "POST /api/templates/{id}/generate",
            Policy::named("generate")
                .per_ip("300/min")
                .per_user("3000/h"),
        )
        .route(
            "/api/*",
            Policy::named("default")
                .per_ip("1000000000/min")
                .per_user("1000000000/h"),
        )
        .global("1000000000/min")
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(limiter.layer())
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }));
    let peer: SocketAddr = "203.0.113.7:4000".parse().unwrap();
    let request = |path: &str, user: Option<&str>| {
        let mut req = Request::get(path).body(Full::new(Bytes::new())).unwrap();
        req.extensions_mut().insert(peer);
        if let Some(user) = user {
            req.headers_mut().insert("x-user", user.parse().unwrap());
        }
        req
    };
    c.bench_function("layer: ip + user + global, admitted", |b| {
        b.iter(|| black_box(now(svc.call(request("/api/items/42", Some("u_42")))).unwrap()))
    });
    c.bench_function("layer: exempt", |b| {
        b.iter(|| black_box(now(svc.call(request("/api/webhooks/stripe", None))).unwrap()))
    });
    let mut bare = service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    c.bench_function("no layer", |b| {
        b.iter(|| black_box(now(bare.call(request("/api/items/42", Some("u_42")))).unwrap()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
