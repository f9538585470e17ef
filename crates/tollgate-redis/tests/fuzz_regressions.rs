//! The `lua_store` fuzzer's saved inputs (the Lua script on a real redis-server against
//! the memory store), replayed on stable with a redis-server of this test's own (see
//! `fuzz/README.md`): every seed keeps passing, every difference it found stays fixed.

#[path = "../../../fuzz/harness/input.rs"]
mod input;
#[path = "../../../fuzz/harness/lua_store.rs"]
mod lua_store;
#[path = "../../../fuzz/harness/replay.rs"]
mod replay;

use tollgate_testkit::RedisServer;

#[test]
fn lua_store_inputs() {
    let server = RedisServer::start();
    // The only test of this binary: nothing else reads the environment meanwhile.
    std::env::set_var(lua_store::URL_VARIABLE, server.url());
    replay::replay(env!("CARGO_MANIFEST_DIR"), "lua_store", lua_store::run);
}
