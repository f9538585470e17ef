#![no_main]

#[path = "../harness/input.rs"]
mod input;
#[path = "../harness/lua_store.rs"]
mod lua_store;

libfuzzer_sys::fuzz_target!(
    init: {
        if std::env::var_os(lua_store::URL_VARIABLE).is_none() {
            eprintln!(
                "lua_store: set {} to a redis-server of its own (it is flushed); fuzz/with-redis.sh starts one",
                lua_store::URL_VARIABLE
            );
            std::process::exit(2);
        }
    },
    |data: &[u8]| lua_store::run(data)
);
