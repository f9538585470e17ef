#![no_main]

#[path = "../harness/input.rs"]
mod input;
#[path = "../harness/quota.rs"]
mod quota;

libfuzzer_sys::fuzz_target!(|data: &[u8]| quota::run(data));
