//! `RATE_LIMIT_ENABLED=false` switches every limit off (its own test binary: it sets the
//! process environment).

mod common;

use axum::routing::get;
use axum::Router;
use common::{clock_and_store, serve, times};
use tollgate::{BuildError, Limiter, Policy};

#[tokio::test]
async fn the_environment_switch_overrides_the_configuration() {
    // SAFETY-free in edition 2021; the only test in this binary touching the environment.
    std::env::set_var("RATE_LIMIT_ENABLED", "false");
    let (_clock, store) = clock_and_store();
    let limiter = Limiter::builder()
        .store(store)
        .enabled(true)
        .route("/*", Policy::named("default").per_ip("1/min"))
        .global("1/min")
        .bucket("sign-in-failures", "1/min")
        .build()
        .unwrap();
    assert!(!limiter.is_enabled());
    let app = Router::new()
        .route("/x", get(|| async { "ok" }))
        .layer(limiter.layer());
    let server = serve(app).await;
    for _ in 0..5 {
        let r = server.get("/x").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("x-ratelimit-limit").is_none());
        assert!(r.headers().get("ratelimit").is_none());
    }
    // Direct use is off too.
    for _ in 0..3 {
        assert!(
            limiter
                .check("sign-in-failures", "a@example.com")
                .await
                .unwrap()
                .allowed
        );
    }

    // `true` switches limits on even if the configuration says off.
    std::env::set_var("RATE_LIMIT_ENABLED", "true");
    let limiter = Limiter::builder()
        .enabled(false)
        .route("/*", Policy::named("default").per_ip("1/min"))
        .build()
        .unwrap();
    let server = serve(
        Router::new()
            .route("/x", get(|| async { "ok" }))
            .layer(limiter.layer()),
    )
    .await;
    assert_eq!(server.statuses("/x", 2).await, vec![200, 429]);

    // Anything else is a build error.
    std::env::set_var("RATE_LIMIT_ENABLED", "sometimes");
    let err = Limiter::builder().build().unwrap_err();
    assert!(matches!(err, BuildError::BadEnvSwitch { ref value } if value == "sometimes"));

    // Empty (`RATE_LIMIT_ENABLED=` in a compose file) counts as unset.
    std::env::set_var("RATE_LIMIT_ENABLED", " ");
    assert!(!Limiter::builder()
        .enabled(false)
        .build()
        .unwrap()
        .is_enabled());
    assert!(Limiter::builder().build().unwrap().is_enabled());

    // Unset: the configuration decides; read_env(false) ignores the variable.
    std::env::remove_var("RATE_LIMIT_ENABLED");
    let off = Limiter::builder()
        .enabled(false)
        .route("/*", Policy::named("default").per_ip("1/min"))
        .build()
        .unwrap();
    let server = serve(
        Router::new()
            .route("/x", get(|| async { "ok" }))
            .layer(off.layer()),
    )
    .await;
    assert_eq!(server.statuses("/x", 3).await, times(200, 3));
    std::env::set_var("RATE_LIMIT_ENABLED", "false");
    let on = Limiter::builder().read_env(false).build().unwrap();
    assert!(on.is_enabled());
    std::env::remove_var("RATE_LIMIT_ENABLED");
}

/// `store_from_env`: memory without `REDIS_URL` / `KV_URL`, a typed error for a bad URL.
#[cfg(feature = "redis")]
#[test]
fn the_store_comes_from_the_environment() {
    std::env::remove_var("REDIS_URL");
    std::env::remove_var("KV_URL");
    assert!(matches!(
        tollgate::store_from_env(),
        Ok(tollgate::redis::EnvStore::Memory(_))
    ));
    std::env::set_var("REDIS_URL", "redis://127.0.0.1:1/");
    assert!(matches!(
        tollgate::store_from_env(),
        Ok(tollgate::redis::EnvStore::Redis(_))
    ));
    std::env::set_var("REDIS_URL", "not a url");
    assert!(matches!(
        tollgate::store_from_env(),
        Err(BuildError::Store(_))
    ));
    std::env::remove_var("REDIS_URL");
}
