#!/usr/bin/env bash
# The benchmark suite: one command, about 9 minutes, writes BENCHMARKS.md at the root.
#
#   bench/run.sh            # everything
#   ROUNDS=2 bench/run.sh   # fewer HTTP rounds
#   PARTS="http layer" bench/run.sh   # only those parts again (http engine layer memory
#                                     # redis server); the others' last figures are kept
#
# Every comparison is made in the same run, rounds interleaved (bare, peer, tollgate, one
# after the other, round after round), and reported as ratios: absolute numbers on a shared
# machine move from minute to minute, ratios from one run do not. CI does not run it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-4}
DURATION=${DURATION:-4}
OUT="$(pwd)/target/bench-out"
ALL_PARTS="http engine layer memory redis server"
PARTS=${PARTS:-$ALL_PARTS}
mkdir -p "$OUT"
part() { [[ " $PARTS " == *" $1 "* ]]; }
n=0
for p in $ALL_PARTS; do
  n=$((n + 1))
  if part "$p"; then rm -f "$OUT/$n-$p.md"; fi
done

command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
command -v redis-server >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null; }

echo "== building (release)"
cargo build --release -q -p tollgate-bench --bins
cargo bench -q --no-run -p tollgate-limits --bench decide 2>/dev/null
cargo bench -q --no-run -p tollgate --features metrics --bench layer 2>/dev/null

# A process's CPU time so far, in clock ticks (user + system, all threads).
server_cpu() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Its own redis-server on a free port (never the shared one on 6379).
REDIS_PORT=$(free_port)
REDIS_DIR=$(mktemp -d)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$REDIS_DIR" --daemonize yes --pidfile "$REDIS_DIR/pid" >/dev/null
trap 'kill "$(cat "$REDIS_DIR/pid")" 2>/dev/null || true; rm -rf "$REDIS_DIR"' EXIT

if part http; then
echo "== HTTP: wrk -t1 -c32 -d${DURATION}s, $ROUNDS interleaved rounds"
VARIANTS=(bare bare-headers governor tollgate-ip tollgate-ip-quiet tollgate-3 tollgate-redis governor-refuse tollgate-refuse)
RAW="$OUT/http.tsv"
: > "$RAW"
for round in $(seq 1 "$ROUNDS"); do
  for v in "${VARIANTS[@]}"; do
    port=$(free_port)
    target/release/bench-server "$v" "$port" "redis://127.0.0.1:$REDIS_PORT" > "$OUT/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do grep -q ready "$OUT/server.log" && break; sleep 0.05; done
    # The load generator on the other core; the server has one tokio worker. The server's
    # CPU time (user + system, every thread) over the run, per request served: what a
    # request costs it, which the machine's other load moves far less than requests/s.
    cpu_before=$(server_cpu "$pid")
    wrk -t1 -c32 -d"${DURATION}s" --latency -H 'x-user: u_42' "http://127.0.0.1:$port/api/items/42" > "$OUT/wrk.txt" 2>&1 || true
    cpu_after=$(server_cpu "$pid")
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
    requests=$(awk '/requests in/ {print $1}' "$OUT/wrk.txt")
    cpu_us=$(awk -v a="$cpu_before" -v b="$cpu_after" -v n="${requests:-0}" -v hz="$(getconf CLK_TCK)" \
      'BEGIN { if (n > 0) printf "%.3f", (b - a) * 1e6 / hz / n; else print "" }')
    rps=$(awk '/Requests\/sec/ {print $2}' "$OUT/wrk.txt")
    p50=$(awk '$1=="50%" {print $2}' "$OUT/wrk.txt")
    p99=$(awk '$1=="99%" {print $2}' "$OUT/wrk.txt")
    non2xx=$(awk '/Non-2xx/ {print $5}' "$OUT/wrk.txt")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$v" "${rps:-0}" "${p50:-?}" "${p99:-?}" "${non2xx:-0}" "$cpu_us" >> "$RAW"
    echo "  round $round $v: ${rps:-0} req/s p50 ${p50:-?} p99 ${p99:-?} non-2xx ${non2xx:-0} server CPU ${cpu_us:-?} us/request"
  done
done
python3 bench/http_table.py "$RAW" > "$OUT/1-http.md"
fi

if part engine; then
echo "== engine: one keyed decision beside governor (interleaved)"
TOLLGATE_BENCH_OUT="$OUT/2-engine.md" cargo bench -q -p tollgate-limits --bench decide -- interleaved 2>&1 | tail -n 30
fi

if part layer; then
echo "== layer: per request through the tower layer (interleaved)"
TOLLGATE_BENCH_OUT="$OUT/3-layer.md" cargo bench -q -p tollgate --features metrics --bench layer -- interleaved 2>&1 | tail -n 16
fi

if part memory; then
echo "== memory per live key"
target/release/bench-memory > "$OUT/4-memory.md"
cat "$OUT/4-memory.md"
fi

if part redis && cargo bench -q --no-run -p tollgate-redis --features deadpool --bench throughput >/dev/null 2>&1; then
  echo "== Redis"
  BENCH_ROUNDS=${REDIS_ROUNDS:-11} TOLLGATE_BENCH_OUT="$OUT/5-redis.md" timeout 400 cargo bench -q -p tollgate-redis --features deadpool --bench throughput 2>&1 | tail -n 30 || true
fi

if part server && command -v valgrind >/dev/null; then
  echo "== HTTP servers under callgrind: instructions per request"
  {
    echo "## HTTP: instructions per request (callgrind)"
    echo
    echo "\`bench/callgrind-server.sh\`: each server of the HTTP table (but the Redis one) under"
    echo "\`valgrind --tool=callgrind\`, \`wrk -t1 -c4\` against it (2 s of warm-up, then ${SECONDS_MEASURED:-4} s counted):"
    echo "user-space instructions over the requests served. Unlike requests/s, these repeat from"
    echo "run to run within about 1%, and unlike the layer bench they include all a server does"
    echo "around the layer. The kernel's share (reading and writing the sockets) is not in them."
    echo
    bench/callgrind-server.sh
  } > "$OUT/6-server.md"
  cat "$OUT/6-server.md"
fi

{
  echo "# Benchmarks"
  echo
  echo "Written by \`bench/run.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'). Machine: $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load average at the start $(cut -d' ' -f1-3 /proc/loadavg)."
  echo "The machine is shared: only ratios measured in the same run, rounds interleaved, are comparable."
  if [ "$PARTS" != "$ALL_PARTS" ]; then
    echo "This run measured only: $PARTS; the other sections are from an earlier run of the script."
  fi
  echo
  for f in "$OUT"/[0-9]-*.md; do cat "$f"; echo; done
} > BENCHMARKS.md
echo "wrote BENCHMARKS.md"
