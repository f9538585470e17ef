//! Support code shared by tollgate's examples (`examples/`) and its black-box HTTP tests
//! (`tests/`). Not published; see the `tollgate` crate for the library.

use std::net::SocketAddr;

use axum::Router;

/// Serves `app` the way every example does: on `HOST` (default `127.0.0.1`) and `PORT`
/// (default `default_port`; `0` picks a free port), with the peer address available to the
/// limiter (`into_make_service_with_connect_info`). Prints `listening on http://ADDR` first,
/// which the black-box tests wait for. Logs go to standard error (`RUST_LOG`, default `info`).
///
/// # Errors
///
/// A bad `HOST`/`PORT`, or an address that cannot be bound.
pub async fn serve(app: Router, default_port: u16) -> std::io::Result<()> {
    init_logging();
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port = match std::env::var("PORT") {
        Ok(p) => p.trim().parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("PORT={p} is not a port number"),
            )
        })?,
        Err(_) => default_port,
    };
    let listener = tokio::net::TcpListener::bind((host.as_str(), port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

/// Logs to standard error, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The comma-separated CIDR list in `TRUSTED_PROXIES` (empty if unset).
pub fn trusted_proxies_from_env() -> Vec<String> {
    std::env::var("TRUSTED_PROXIES")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Whether `path` is `prefix` or below it (`/v1`, `/v1/...`; not `/v10`): an example's API,
/// the only paths its authentication asks credentials for. A path outside it (a browser's
/// `/favicon.ico`) is answered 404 by the router and spends nothing, not even the
/// failed-authentication budget of its client's IP.
pub fn is_under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The bearer token of `headers`' `Authorization` (RFC 6750: the scheme's case does not
/// matter, `bearer x` is `Bearer x`), trimmed; `None` without one or for an empty token, so
/// that an empty `Authorization: Bearer ` does not hide another credential (a cookie).
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}
