#!/usr/bin/env bash
# User-space instructions per request served by `bench-server`, under callgrind: the HTTP
# table's servers measured the way the layer bench's callgrind figures are, repeatable
# where requests/s on a shared machine are not, and with everything a real server does
# around the layer (hyper, axum's router, the body, the connection's task).
#
#   bench/callgrind-server.sh                          # every variant below, a table
#   bench/callgrind-server.sh bare tollgate-ip         # those variants
#   SECONDS_MEASURED=8 bench/callgrind-server.sh ...   # a longer window (default 4 s)
#
# Each variant runs under `valgrind --tool=callgrind`; `wrk -t1 -c4` warms it up for 2 s,
# its counters are zeroed, `wrk` runs again and the counters are dumped: instructions in
# that dump over the requests `wrk` counted. The kernel's share (syscalls) is not in it.
# Prints a Markdown table; the "added" column is the variant minus `bare`, when `bare` is
# among the variants.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 1; }
command -v wrk >/dev/null || { echo "needs wrk" >&2; exit 1; }
cargo build --release -q -p tollgate-bench --bin bench-server
target=${CARGO_TARGET_DIR:-target}
measured=${SECONDS_MEASURED:-4}
if [ $# -eq 0 ]; then
  set -- bare bare-headers governor tollgate-ip tollgate-ip-quiet tollgate-3 governor-refuse tollgate-refuse
fi
out=$(mktemp -d)
trap 'pkill -f "callgrind-out-file=$out" 2>/dev/null || true; rm -rf "$out"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

per_request() {
  local v=$1 port pid n ir dump
  port=$(free_port)
  valgrind --tool=callgrind --callgrind-out-file="$out/cg.$v" \
    "$target/release/bench-server" "$v" "$port" > "$out/$v.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do grep -q ready "$out/$v.log" && break; sleep 0.1; done
  local url="http://127.0.0.1:$port/api/items/42"
  wrk -t1 -c4 -d2s -H 'x-user: u_42' "$url" > /dev/null 2>&1
  callgrind_control -z "$pid" > /dev/null 2>&1
  wrk -t1 -c4 -d"${measured}s" -H 'x-user: u_42' "$url" > "$out/$v.wrk" 2>&1
  callgrind_control -d "$pid" > /dev/null 2>&1
  # The dump is written before callgrind_control returns; the final one at exit is not used.
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  n=$(awk '/requests in/ {print $1}' "$out/$v.wrk")
  if [ -z "$n" ] || [ "$n" -eq 0 ]; then
    echo "$v: no requests served (see its log: $(tail -n 3 "$out/$v.log" | tr '\n' ' '))" >&2
    exit 1
  fi
  dump=$(ls "$out/cg.$v".*1 2>/dev/null | head -1)
  ir=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
  echo $(( ir / n ))
}

declare -A ir
for v in "$@"; do
  ir[$v]=$(per_request "$v")
  echo "  $v: ${ir[$v]} instructions per request" >&2
done
echo "| server | instructions per request | added to bare |"
echo "|---|---|---|"
for v in "$@"; do
  added=""
  if [ -n "${ir[bare]:-}" ]; then added=$(( ${ir[$v]} - ${ir[bare]} )); fi
  echo "| \`$v\` | ${ir[$v]} | $added |"
done
