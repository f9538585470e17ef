#!/usr/bin/env bash
# Runs a command with a redis-server of its own (a Unix socket in a temporary directory,
# no TCP port, no persistence), named by TOLLGATE_FUZZ_REDIS_URL, and stops it afterwards.
# The lua_store target needs it (it flushes the server at every run):
#
#   fuzz/with-redis.sh cargo +nightly fuzz run -s none lua_store corpus/lua_store seeds/lua_store -- -max_total_time=600
set -euo pipefail

command -v redis-server >/dev/null 2>&1 || {
    echo "with-redis: no redis-server on the PATH" >&2
    exit 3
}
dir=$(mktemp -d)
redis-server --port 0 --unixsocket "$dir/redis.sock" --save "" --appendonly no \
    --dir "$dir" --logfile "$dir/redis.log" &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 200); do
    [ -S "$dir/redis.sock" ] && break
    sleep 0.05
done
[ -S "$dir/redis.sock" ] || {
    echo "with-redis: redis-server did not start" >&2
    cat "$dir/redis.log" >&2
    exit 3
}
export TOLLGATE_FUZZ_REDIS_URL="unix://$dir/redis.sock"
"$@"
