#![no_main]

#[path = "../harness/config.rs"]
mod config;
#[path = "../harness/input.rs"]
mod input;

libfuzzer_sys::fuzz_target!(|data: &[u8]| config::run(data));
