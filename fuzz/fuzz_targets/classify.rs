#![no_main]

#[path = "../harness/classify.rs"]
mod classify;
#[path = "../harness/input.rs"]
mod input;

libfuzzer_sys::fuzz_target!(|data: &[u8]| classify::run(data));
