//! `REDIS_URL` in the environment overrides a configuration file's store (its own binary:
//! it sets process-wide environment variables).
#![cfg(all(feature = "redis", feature = "yaml"))]

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use axum::routing::get;
use axum::Router;
use common::serve;
use tollgate::Limiter;
use tollgate_testkit::RedisServer;

/// Held while a test changes the process's environment: the tests of this binary run in
/// parallel, and each reads variables the other sets.
static ENV: Mutex<()> = Mutex::new(());

/// Writes `yaml` to `limits.yaml` in a directory of this test run (`name`); its path.
fn limits_file(name: &str, yaml: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tollgate-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("limits.yaml");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(yaml)
        .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_url_overrides_a_memory_store_in_the_file() {
    let redis = RedisServer::start();
    let path = limits_file(
        "config-env",
        b"store: { kind: memory }\nroutes:\n  - { path: /*, name: api, limits: [{ per: ip, limit: 2/min }] }\n",
    );
    let limiter = {
        let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
        std::env::set_var("REDIS_URL", redis.url());
        let limiter = Limiter::from_config(&path);
        std::env::remove_var("REDIS_URL");
        limiter.unwrap()
    };
    let app = Router::new()
        .route("/x", get(|| async { "ok" }))
        .layer(limiter.layer());
    let server = serve(app).await;
    assert_eq!(server.statuses("/x", 3).await, vec![200, 200, 429]);
    // The budget lives in Redis, under the store's prefix and the policy's bucket.
    let keys = redis.cli(["--scan", "--pattern", "tollgate:api*"]);
    assert!(keys.contains("tollgate:api"), "keys in Redis: {keys:?}");
}

/// `TOLLGATE_FALLBACK_DIVISOR` and `TOLLGATE_REDIS_TIMEOUT_MS` override the file's
/// fallback settings; a bad value is a typed error naming the variable, at build time.
#[test]
fn fallback_settings_from_the_environment_are_checked_at_build_time() {
    let path = limits_file(
        "config-env-fb",
        b"store: { kind: redis, url: \"redis://127.0.0.1:1/\", fallback_divisor: 2 }\nroutes:\n  - { path: /*, name: api, limits: [{ per: ip, limit: 2/min }] }\n",
    );
    let env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("TOLLGATE_FALLBACK_DIVISOR", "zero");
    let err = Limiter::from_config(&path).unwrap_err();
    std::env::set_var("TOLLGATE_FALLBACK_DIVISOR", "3");
    std::env::set_var("TOLLGATE_REDIS_TIMEOUT_MS", "20");
    let ok = Limiter::from_config(&path);
    std::env::remove_var("TOLLGATE_FALLBACK_DIVISOR");
    std::env::remove_var("TOLLGATE_REDIS_TIMEOUT_MS");
    drop(env);
    assert!(
        matches!(err, tollgate::config::ConfigError::Store { ref message, .. }
            if message.contains("TOLLGATE_FALLBACK_DIVISOR=\"zero\"")),
        "{err}"
    );
    assert!(ok.is_ok());
}

/// A file's `patience` is the Redis fallback's, and `TOLLGATE_REDIS_PATIENCE` overrides it
/// (read off the limiter's store, which shows its settings).
#[test]
fn the_patience_comes_from_the_file_or_the_environment() {
    let path = limits_file(
        "config-env-patience",
        b"store: { kind: redis, url: \"redis://127.0.0.1:1/\", patience: 3 }\nroutes:\n  - { path: /*, name: api, limits: [{ per: ip, limit: 2/min }] }\n",
    );
    let env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let from_file = format!("{:?}", Limiter::from_config(&path).unwrap());
    std::env::set_var("TOLLGATE_REDIS_PATIENCE", "7");
    let from_env = format!("{:?}", Limiter::from_config(&path).unwrap());
    std::env::set_var("TOLLGATE_REDIS_PATIENCE", "none");
    let err = Limiter::from_config(&path).unwrap_err();
    std::env::remove_var("TOLLGATE_REDIS_PATIENCE");
    drop(env);
    assert!(from_file.contains("patience: 3,"), "{from_file}");
    assert!(from_env.contains("patience: 7,"), "{from_env}");
    assert!(
        matches!(err, tollgate::config::ConfigError::Store { ref message, .. }
            if message.contains("TOLLGATE_REDIS_PATIENCE=\"none\"")),
        "{err}"
    );
}

/// A file's `timeout_ms` longer than the Redis store's own response timeout (500 ms by
/// default) is what a request waits for Redis: a review set 2 s and saw requests to a
/// Redis slow for a second leave for memory at 500 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_files_timeout_above_half_a_second_is_waited_out() {
    let redis = RedisServer::start();
    let yaml = format!(
        "store: {{ kind: redis, url: \"{}\", timeout_ms: 2000 }}\nroutes:\n  - {{ path: /*, name: api, limits: [{{ per: ip, limit: 5/min }}] }}\n",
        redis.url()
    );
    let path = limits_file("config-env-timeout", yaml.as_bytes());
    let limiter = {
        let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
        Limiter::from_config(&path).unwrap()
    };
    let app = Router::new()
        .route("/x", get(|| async { "ok" }))
        .layer(limiter.layer());
    let server = serve(app).await;
    assert_eq!(server.statuses("/x", 1).await, vec![200]);
    redis.pause();
    let started = std::time::Instant::now();
    let (statuses, ()) = tokio::join!(server.statuses("/x", 1), async {
        tokio::time::sleep(std::time::Duration::from_millis(900)).await;
        redis.resume();
    });
    assert_eq!(statuses, vec![200]);
    assert!(started.elapsed() >= std::time::Duration::from_millis(850));
    assert_eq!(limiter.store_mode(), tollgate::StoreMode::Shared);
}

/// A store the file names that cannot be made is an error at its field, with the line and
/// column: a `url:` that does not parse, `kind: redis` without `url:` (a review found
/// neither placed). The environment's settings, which override the file, have no place in
/// it: their field is `store`, and the message names the variable.
#[test]
fn a_store_that_cannot_be_made_is_an_error_at_its_field() {
    let env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let cases = [
        (
            "config-env-bad-url",
            "store: { kind: redis, url: \"not a url\" }\nroutes: []\n",
            "store.url",
            (1, 28),
            "invalid Redis URL",
        ),
        (
            "config-env-no-url",
            "routes: []\nstore:\n  kind: redis\n",
            "store.kind",
            (3, 9),
            "`kind: redis` needs `url:",
        ),
    ];
    for (name, yaml, field, (line, column), says) in cases {
        let path = limits_file(name, yaml.as_bytes());
        let err = Limiter::from_config(&path).unwrap_err();
        assert!(
            matches!(&err, tollgate::config::ConfigError::Store {
                line: Some(l), column: Some(c), field: f, message, ..
            } if (*l, *c) == (line, column) && f == field && message.contains(says)),
            "{name}: {err:?}"
        );
        assert!(
            err.to_string()
                .starts_with(&format!("{}:{line}:{column}: {field}: ", path.display())),
            "{err}"
        );
    }
    let path = limits_file("config-env-env-url", b"routes: []\n");
    std::env::set_var("REDIS_URL", "notaurl");
    let err = Limiter::from_config(&path).unwrap_err();
    std::env::remove_var("REDIS_URL");
    drop(env);
    assert!(
        matches!(&err, tollgate::config::ConfigError::Store {
            line: None, column: None, field, message, ..
        } if field == "store" && message.starts_with("REDIS_URL / KV_URL: invalid Redis URL")),
        "{err:?}"
    );
}
