//! Seed 004 (examples/seed_004) reloads its YAML while it serves: started on a copy of
//! `endpointwise.yaml` (`ENDPOINTWISE_CONFIG`), it applies an edited burst within 2 s, keeps
//! what partners already spent, and survives a broken edit with the last good limits.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Example;
use serde_json::json;

const ADMIN: &str = "admin-test-token";
/// The environment that opens `/admin` with [`ADMIN`].
const WITH_ADMIN: (&str, &str) = ("ENDPOINTWISE_ADMIN_TOKEN", ADMIN);

/// The page's file, as shipped with the example.
const ORIGINAL: &str = include_str!("../examples/seed_004/endpointwise.yaml");

/// A copy of the file in a directory of its own, removed on drop.
struct Copy {
    dir: PathBuf,
    path: PathBuf,
}

impl Copy {
    fn new() -> Copy {
        // One directory per copy: the tests of this file run at once.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "tollgate-seed-004-reload-{}-{n}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("endpointwise.yaml");
        let copy = Copy { dir, path };
        copy.write(ORIGINAL);
        copy
    }

    /// Replaces the file's content at once (write, then rename over it).
    fn write(&self, text: &str) {
        let tmp = self.dir.join("endpointwise.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A new read-scoped partner key (no limit of its own).
async fn new_key(app: &Example) -> String {
    app.created_key(ADMIN, json!({ "name": "Reload Test", "scope": "read" }))
        .await
}

/// The statuses of `n` `GET /v1/reports` with `key`.
async fn reports(app: &Example, key: &str, n: usize) -> Vec<u16> {
    app.statuses(n, || app.get("/v1/reports").header("x-api-key", key))
        .await
}

/// The burst `/openapi.json` publishes for `GET /v1/reports` (the limits as enforced).
async fn published_burst(app: &Example) -> u64 {
    let doc = app.json("/openapi.json").await;
    doc["paths"]["/v1/reports"]["get"]["x-ratelimit"]["limits"][0]["burst"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn an_edited_burst_applies_within_2_s_and_a_broken_edit_keeps_the_last_good_limits() {
    let copy = Copy::new();
    let app = Example::start_logged(
        "seed_004",
        &[
            ("ENDPOINTWISE_CONFIG", copy.path().to_str().unwrap()),
            WITH_ADMIN,
        ],
    );
    // The page's reports: 5/min sustained (a token every 12 s), burst 2.
    let spent = new_key(&app).await;
    assert_eq!(published_burst(&app).await, 2);
    assert_eq!(reports(&app, &spent, 3).await, [200, 200, 429]);

    // Burst 2 -> 5.
    copy.write(&ORIGINAL.replace("burst: 2/s", "burst: 5/s"));
    let edited = Instant::now();
    while published_burst(&app).await != 5 {
        assert!(
            edited.elapsed() < Duration::from_secs(2),
            "the edited burst was not applied within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A fresh key gets the new burst; the key that spent 2 keeps them spent (3 left).
    let fresh = new_key(&app).await;
    assert_eq!(
        reports(&app, &fresh, 6).await,
        [200, 200, 200, 200, 200, 429]
    );
    assert_eq!(reports(&app, &spent, 4).await, [200, 200, 200, 429]);
    // The invoices' limits did not change: their burst is still 20.
    let statuses = app
        .statuses(21, || app.get("/v1/invoices").header("x-api-key", &fresh))
        .await;
    assert_eq!(statuses[..20], [200; 20]);
    assert_eq!(statuses[20], 429);

    // A broken edit (a quota that does not parse), then one that does not build (two
    // rules for one route): each is logged, and the gateway keeps serving with burst 5.
    copy.write(&ORIGINAL.replace("burst: 2/s", "burst: 7/fortnight"));
    logged_within_2s(&app, "7/fortnight").await;
    copy.write(&routes_tie());
    // (The tie is what is wrong: it was logged as the two rules' names sharing a bucket.)
    logged_within_2s(&app, "rules `GET /v1/reports` and `GET /v1/reports` tie").await;
    assert_eq!(published_burst(&app).await, 5);
    let another = new_key(&app).await;
    assert_eq!(
        reports(&app, &another, 6).await,
        [200, 200, 200, 200, 200, 429]
    );

    // The watcher is still at work: a good edit after the broken ones applies.
    copy.write(&ORIGINAL.replace("burst: 2/s", "burst: 3/s"));
    let edited = Instant::now();
    while published_burst(&app).await != 3 {
        assert!(
            edited.elapsed() < Duration::from_secs(2),
            "the good edit after the broken ones was not applied within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = new_key(&app).await;
    assert_eq!(reports(&app, &last, 4).await, [200, 200, 200, 429]);
}

/// Waits (at most 2 s) for the example to log that the file was not reloaded, with an
/// error that mentions `what`.
async fn logged_within_2s(app: &Example, what: &str) {
    let since = Instant::now();
    loop {
        let refused = app.logged().into_iter().filter(|line| {
            line.contains("ERROR")
                && line.contains("not reloaded")
                && line.contains("previous rules stay in force")
        });
        if refused.clone().any(|line| line.contains(what)) {
            return;
        }
        assert!(
            since.elapsed() < Duration::from_secs(2),
            "no error logged for {what} within 2 s: {:#?}",
            app.logged()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The page's file with a second rule for `GET /v1/reports` (a tie: does not build).
fn routes_tie() -> String {
    ORIGINAL.replacen(
        "routes:\n",
        "routes:\n  - path: /v1/reports\n    methods: [GET]\n    rate_limit: { sustained: 1/min }\n\n",
        1,
    )
}

/// A file that sets what the page leaves to the gateway (its headers, its key) runs with
/// them: they were overridden in code, silently.
#[tokio::test]
async fn a_file_that_sets_headers_and_a_default_key_runs_with_them() {
    let copy = Copy::new();
    copy.write(&format!(
        "{ORIGINAL}\nheaders:\n  x_ratelimit: unix_millis\n  ietf: true\ndefault_key: ip\n"
    ));
    let app = Example::start(
        "seed_004",
        &[
            ("ENDPOINTWISE_CONFIG", copy.path().to_str().unwrap()),
            WITH_ADMIN,
        ],
    );
    let r = app
        .get("/v1/invoices")
        .header("x-api-key", "ew_live_full")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Unix milliseconds: 13 digits (seconds have 10).
    assert_eq!(common::header(&r, "x-ratelimit-reset").len(), 13);
    assert!(common::header(&r, "ratelimit-policy").contains("q="));
    // Per IP: a second key from the same address spends the same budget (burst 20).
    let other = app
        .statuses(20, || {
            app.get("/v1/invoices")
                .header("x-api-key", "ew_live_limited")
        })
        .await;
    assert_eq!(other[..19], [200; 19]);
    assert_eq!(other[19], 429);
}

/// A file that does not load stops the gateway at start with its error as the README shows
/// it (`<file>:<line>:<column>: <field>: ...`), not in Rust's debug form.
#[test]
fn a_file_that_does_not_load_stops_the_start_with_its_message() {
    let copy = Copy::new();
    copy.write("routes:\n  - path: /x\n    rate_limit: { burst: 20/s }\n");
    let mut child = std::process::Command::new(common::example_path("seed_004"))
        .env("ENDPOINTWISE_CONFIG", copy.path())
        .env("PORT", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("the gateway started on a file that does not load");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "error: {}:3:26: routes[0].rate_limit.burst (/x): `burst` needs `sustained`",
        copy.path().display()
    );
    assert!(stderr.starts_with(&expected), "{stderr}");
}
