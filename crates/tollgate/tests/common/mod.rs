//! Shared test support: a real axum server on loopback, a reqwest client, a manual clock.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use tollgate::{Batch, BoxFuture, Decision, ManualClock, MemoryStore, Store, StoreError};

/// The tests' epoch: 2024-06-01T00:00:00Z, aligned to every window used here.
pub const T0: u64 = 1_717_200_000;

/// A clock at [`T0`] and a memory store reading it.
pub fn clock_and_store() -> (ManualClock, MemoryStore) {
    let clock = ManualClock::new(Duration::from_secs(T0));
    let store = MemoryStore::builder().clock(clock.clone()).build();
    (clock, store)
}

/// A running server and a client for it.
pub struct Server {
    pub base: String,
    pub client: reqwest::Client,
}

/// Serves `app` on 127.0.0.1 (a free port) with the peer address in `ConnectInfo`.
pub async fn serve(app: Router) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    Server {
        base: format!("http://{addr}"),
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
    }
}

impl Server {
    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(format!("{}{path}", self.base))
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(format!("{}{path}", self.base))
    }

    /// The status of a GET.
    pub async fn status(&self, path: &str) -> u16 {
        self.get(path).send().await.unwrap().status().as_u16()
    }

    /// The statuses of `n` GETs, one after another.
    pub async fn statuses(&self, path: &str, n: usize) -> Vec<u16> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.status(path).await);
        }
        out
    }

    /// The status and the `name` header of `n` POSTs to `path`, one after another.
    pub async fn posts_showing(&self, path: &str, n: usize, name: &str) -> Vec<(u16, String)> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(showing(self.post(path), name).await);
        }
        out
    }

    pub fn addr(&self) -> SocketAddr {
        self.base.trim_start_matches("http://").parse().unwrap()
    }
}

/// Sends `request` and returns its status.
pub async fn status_of(request: reqwest::RequestBuilder) -> u16 {
    request.send().await.unwrap().status().as_u16()
}

/// Sends `request` and returns its status and its `name` header ("" if absent).
pub async fn showing(request: reqwest::RequestBuilder, name: &str) -> (u16, String) {
    let response = request.send().await.unwrap();
    (response.status().as_u16(), header(&response, name))
}

/// `n` times `status`.
pub fn times(status: u16, n: usize) -> Vec<u16> {
    vec![status; n]
}

/// A header of a response as text ("" if absent).
pub fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// A store that records the bucket keys it is asked about, then asks a memory store.
#[derive(Debug, Clone)]
pub struct Recording {
    pub store: MemoryStore,
    pub keys: Arc<Mutex<Vec<String>>>,
}

impl Recording {
    pub fn new(store: MemoryStore) -> Self {
        Self {
            store,
            keys: Arc::default(),
        }
    }

    pub fn keys(&self) -> Vec<String> {
        self.keys.lock().unwrap().clone()
    }
}

impl Store for Recording {
    fn apply<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
        self.keys
            .lock()
            .unwrap()
            .extend(batch.buckets.iter().map(|b| b.key.to_string()));
        self.store.apply(batch)
    }
}

/// A store whose backend is always down.
#[derive(Debug, Clone, Copy)]
pub struct Down;

impl Store for Down {
    fn apply<'a>(&'a self, _batch: &'a Batch) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(async { Err(StoreError::Unavailable("test: store is down".into())) })
    }
}

/// The identity the tests use: the `x-user` header.
pub fn user_header(parts: &http::request::Parts) -> Option<String> {
    parts
        .headers
        .get("x-user")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

/// The body of the plain-tower tests' requests and responses.
pub type Body = http_body_util::Full<bytes::Bytes>;

/// A GET of `path` for a plain tower service: the peer address as a `SocketAddr`
/// extension (what the limiter reads without axum), and an optional `x-api-key`.
pub fn request(path: &str, peer: Option<&str>, api_key: Option<&str>) -> http::Request<Body> {
    let mut req = http::Request::get(path)
        .body(Body::new(bytes::Bytes::new()))
        .unwrap();
    if let Some(peer) = peer {
        req.extensions_mut()
            .insert(peer.parse::<SocketAddr>().unwrap());
    }
    if let Some(key) = api_key {
        req.headers_mut().insert("x-api-key", key.parse().unwrap());
    }
    req
}

/// What a plain tower service answers: a response, or never an error.
pub type Answer = std::future::Ready<Result<http::Response<Body>, std::convert::Infallible>>;

/// A plain tower service answering `status`, with an empty body.
pub fn answering(
    status: http::StatusCode,
) -> tower::util::ServiceFn<impl Fn(http::Request<Body>) -> Answer + Clone> {
    tower::service_fn(move |_req: http::Request<Body>| {
        let mut response = http::Response::new(Body::default());
        *response.status_mut() = status;
        std::future::ready(Ok(response))
    })
}

/// A plain tower service answering `hello`.
pub async fn echo(
    _req: http::Request<Body>,
) -> Result<http::Response<Body>, std::convert::Infallible> {
    Ok(http::Response::new(Body::new(bytes::Bytes::from_static(
        b"hello",
    ))))
}
