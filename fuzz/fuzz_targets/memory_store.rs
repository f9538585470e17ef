#![no_main]

#[path = "../harness/input.rs"]
mod input;
#[path = "../harness/memory_store.rs"]
mod memory_store;

libfuzzer_sys::fuzz_target!(|data: &[u8]| memory_store::run(data));
