//! An empty configuration file is not an error (every setting takes its default), but it is
//! never silent: loading one logs a warning that the limiter it builds limits nothing. Alone
//! in its binary: tracing caches callsite interest process-wide.

use std::io::Write;

use tollgate::config::Config;
use tollgate::Limiter;
use tollgate_testkit::EventLog;

fn write_temp(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tollgate-config-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    path
}

#[test]
fn an_empty_file_builds_a_limiter_that_limits_nothing_and_says_so() {
    let capture = EventLog::default();
    let events = capture.clone();
    let empty_yaml = write_temp("empty.yaml", "");
    let comments_toml = write_temp("comments.toml", "# limits go here\n\n");
    let markers_yaml = write_temp("markers.yaml", "---\n# limits go here\n...\n");
    let settings_only = write_temp("settings.yaml", "---\nshadow: false\nbody: message\n");
    let with_routes = write_temp(
        "routes.yaml",
        "routes:\n  - { path: /*, limits: [{ limit: 5/min }] }\n",
    );
    tracing::subscriber::with_default(capture, || {
        for path in [&empty_yaml, &comments_toml, &markers_yaml, &settings_only] {
            let limiter = Limiter::from_config(path).unwrap();
            // Nothing is limited: no rule, no global limit, no bucket.
            assert!(limiter.describe().is_empty(), "{}", path.display());
        }
        Limiter::from_config(&with_routes).unwrap();
        // Text without a file: the same.
        assert!(Config::from_toml("").is_ok());
    });
    let events = events.events();
    let all = events.join("\n");
    let warned = |file: &str, what: &str| {
        events
            .iter()
            .filter(|e| e.starts_with("WARN") && e.contains(file) && e.contains(what))
            .count()
    };
    let empty = "is empty: every setting takes its default and, unless code adds rules, the limiter limits nothing";
    assert_eq!(warned(&empty_yaml.display().to_string(), empty), 1, "{all}");
    assert_eq!(
        warned(&comments_toml.display().to_string(), empty),
        1,
        "{all}"
    );
    // YAML's document markers (`---`, `...`) hold nothing either.
    assert_eq!(
        warned(&markers_yaml.display().to_string(), empty),
        1,
        "{all}"
    );
    assert_eq!(warned("<toml>", empty), 1, "{all}");
    assert_eq!(
        warned(
            &settings_only.display().to_string(),
            "declares no routes, global limits or buckets"
        ),
        1,
        "{all}"
    );
    assert_eq!(
        warned(&with_routes.display().to_string(), "limits nothing"),
        0,
        "{all}"
    );
}
