//! The fuzzers' saved inputs for the quota parser, the configuration loader, the route
//! classifier and the forwarded-header reader, replayed on stable (see `fuzz/README.md`):
//! every crash they found stays fixed, every seed keeps passing.

#[path = "../../../fuzz/harness/classify.rs"]
mod classify;
#[path = "../../../fuzz/harness/client_ip.rs"]
mod client_ip;
#[path = "../../../fuzz/harness/config.rs"]
mod config;
#[path = "../../../fuzz/harness/input.rs"]
mod input;
#[path = "../../../fuzz/harness/quota.rs"]
mod quota;
#[path = "../../../fuzz/harness/replay.rs"]
mod replay;

const DIR: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn quota_inputs() {
    replay::replay(DIR, "quota", quota::run);
}

#[test]
fn config_inputs() {
    replay::replay(DIR, "config", config::run);
}

#[test]
fn classify_inputs() {
    replay::replay(DIR, "classify", classify::run);
}

#[test]
fn client_ip_inputs() {
    replay::replay(DIR, "client_ip", client_ip::run);
}
