//! The configuration loader: TOML or YAML text, then the builder, then the limiter.
//!
//! Invariants: no panic anywhere from text to a built limiter (bad configuration is an
//! error); a parse error's line and column lie inside the text; every error prints; a
//! limiter that builds classifies and describes its own route paths.
#![allow(dead_code)]

use http::Method;
use tollgate::config::{Config, ConfigError};
use tollgate::Limiter;

/// Checks one configuration text, `yaml` or TOML.
pub fn check_text(text: &str, yaml: bool) {
    let parsed = if yaml {
        Config::from_yaml(text)
    } else {
        Config::from_toml(text)
    };
    let config = match parsed {
        Ok(config) => config,
        Err(e) => {
            check_error(text, &e);
            return;
        }
    };
    let builder = match config.apply(Limiter::builder(), "<fuzz>") {
        Ok(builder) => builder,
        Err(e) => {
            check_error(text, &e);
            return;
        }
    };
    let limiter = match builder.build() {
        Ok(limiter) => limiter,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let _ = limiter.describe();
    for route in &config.routes {
        for method in [Method::GET, Method::HEAD, Method::POST] {
            let _ = limiter.classify(&method, &route.path);
            let _ = limiter.describe_route(&method, &route.path);
        }
    }
    let _ = format!("{limiter:?}");
}

const LINE_BREAKS: &[char] = &['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'];

fn check_error(text: &str, error: &ConfigError) {
    let message = error.to_string();
    assert!(!message.is_empty());
    if let ConfigError::Parse { line, column, .. } = error {
        // Lines as YAML counts them: `\r\n`, `\r`, `\n` and the Unicode breaks end a line.
        let lines = text.replace("\r\n", "\n").matches(LINE_BREAKS).count() + 1;
        if let Some(line) = *line {
            // YAML places an error at the end of a text without a final line break at
            // the start of the line after it.
            let end = line == lines + 1 && *column == Some(1);
            assert!(
                line >= 1 && (line <= lines || end),
                "line {line} of {lines}: {message}"
            );
        }
        if let Some(column) = *column {
            assert!(column >= 1, "{message}");
        }
    }
}

/// The fuzz target: the first byte chooses the format (odd: YAML), the rest is the text
/// (invalid UTF-8 replaced).
pub fn run(data: &[u8]) {
    let Some((&format, text)) = data.split_first() else {
        return;
    };
    check_text(&String::from_utf8_lossy(text), format & 1 == 1);
}
