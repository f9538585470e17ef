#![no_main]

#[path = "../harness/client_ip.rs"]
mod client_ip;
#[path = "../harness/input.rs"]
mod input;

libfuzzer_sys::fuzz_target!(|data: &[u8]| client_ip::run(data));
