//! One HTTP server for the load generator: `bench-server <variant> <port> [redis-url]`,
//! `GET /api/items/{id}` answering `ok`, on one tokio worker thread. Prints `ready` once it
//! listens. Variants:
//!
//! - `bare`: the handler alone.
//! - `bare-headers`: the handler answering with the five rate-limit headers tollgate writes
//!   (fixed values) among its own, no layer: what those headers cost by themselves, on the
//!   wire. (A middleware adding them, such as `axum::middleware::map_response`, costs more
//!   than the headers: it boxes a future and clones the router per request.)
//! - `governor`: tower_governor, one per-IP limit that never refuses.
//! - `governor-refuse`: tower_governor, a per-IP limit of 1 per hour (every request a 429).
//! - `tollgate-ip`: tollgate, `/*` with one per-IP limit that never refuses.
//! - `tollgate-ip-quiet`: `tollgate-ip` adding nothing to an admitted response (no rate-limit
//!   headers, no decision in the request): what tower_governor does by default.
//! - `tollgate-3`: tollgate, IP + user (`x-user` header) + global limits that never refuse.
//! - `tollgate-refuse`: tollgate, a per-IP limit of 1 per hour (every request a 429).
//! - `tollgate-redis`: `tollgate-ip` on a Redis store (the URL in the third argument).

use std::net::SocketAddr;

use axum::http::{HeaderName, HeaderValue};
use axum::routing::get;
use axum::Router;
use tollgate::{HeaderStyle, Limiter, LimiterBuilder, Policy};
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::GovernorLayer;

const NEVER: &str = "1000000000/min";

/// The five rate-limit headers of one per-IP limit that never refuses, as tollgate writes
/// them (fixed values).
const FIXED_HEADERS: [(HeaderName, HeaderValue); 5] = [
    (
        HeaderName::from_static("x-ratelimit-limit"),
        HeaderValue::from_static("1000000000"),
    ),
    (
        HeaderName::from_static("x-ratelimit-remaining"),
        HeaderValue::from_static("999999999"),
    ),
    (
        HeaderName::from_static("x-ratelimit-reset"),
        HeaderValue::from_static("1764676800"),
    ),
    (
        HeaderName::from_static("ratelimit-policy"),
        HeaderValue::from_static("\"default-ip\";q=1000000000;w=60"),
    ),
    (
        HeaderName::from_static("ratelimit"),
        HeaderValue::from_static("\"default-ip\";r=999999999;t=60"),
    ),
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(variant), Some(port)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: bench-server <variant> <port> [redis-url]");
        std::process::exit(2);
    };
    let port: u16 = port.parse().expect("a port number");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(serve(variant, port, args.get(3).cloned()));
}

fn tollgate(
    policy: Policy,
    global: bool,
    configure: impl FnOnce(LimiterBuilder) -> LimiterBuilder,
) -> Limiter {
    let mut builder = Limiter::builder()
        .read_env(false)
        .identity(|parts| {
            parts
                .headers
                .get("x-user")
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        })
        .route("/*", policy);
    if global {
        builder = builder.global(NEVER);
    }
    configure(builder).build().expect("a valid limiter")
}

async fn serve(variant: &str, port: u16, redis: Option<String>) {
    let app = Router::new().route("/api/items/{id}", get(|| async { "ok" }));
    let app = match variant {
        "bare" => app,
        "bare-headers" => {
            Router::new().route("/api/items/{id}", get(|| async { (FIXED_HEADERS, "ok") }))
        }
        "governor" | "governor-refuse" => {
            let mut config = GovernorConfigBuilder::default();
            if variant == "governor" {
                config.per_nanosecond(1).burst_size(1_000_000_000);
            } else {
                config.per_second(3600).burst_size(1);
            }
            app.layer(GovernorLayer::new(config.finish().expect("a valid config")))
        }
        "tollgate-ip" => {
            app.layer(tollgate(Policy::named("default").per_ip(NEVER), false, |b| b).layer())
        }
        "tollgate-ip-quiet" => {
            let limiter = tollgate(Policy::named("default").per_ip(NEVER), false, |b| {
                b.header_style(HeaderStyle::none())
                    .decision_in_request(false)
            });
            app.layer(limiter.layer())
        }
        "tollgate-3" => app.layer(
            tollgate(
                Policy::named("default").per_ip(NEVER).per_user(NEVER),
                true,
                |b| b,
            )
            .layer(),
        ),
        "tollgate-refuse" => {
            app.layer(tollgate(Policy::named("default").per_ip("1/h"), false, |b| b).layer())
        }
        "tollgate-redis" => {
            let url = redis.expect("tollgate-redis needs a Redis URL");
            let store = tollgate::redis::RedisStore::builder()
                .url(url)
                .build()
                .expect("a Redis store");
            app.layer(
                tollgate(Policy::named("default").per_ip(NEVER), false, |b| {
                    b.store(store)
                })
                .layer(),
            )
        }
        other => panic!("unknown variant {other}"),
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("a free port");
    println!("ready");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .expect("serving");
}
