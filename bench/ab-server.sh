#!/usr/bin/env bash
# Two builds of bench-server side by side, rounds interleaved: server CPU µs per request of
# each variant under each build, and new / old per round. For a change whose effect on the
# HTTP table is smaller than the table's run-to-run noise (build the old commit in a
# worktree, copy its target/release/bench-server aside).
#
#   bench/ab-server.sh OLD_BIN NEW_BIN [ROUNDS] [variants...]
#   bench/ab-server.sh /tmp/bs-old target/release/bench-server 5 bare tollgate-ip
set -euo pipefail
old=${1:?the old bench-server}
new=${2:?the new bench-server}
rounds=${3:-5}
shift $(( $# < 3 ? $# : 3 ))
variants=("${@:-bare tollgate-ip tollgate-3 tollgate-refuse}")
read -r -a variants <<< "${variants[*]}"
command -v wrk >/dev/null || { echo "needs wrk" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for round in $(seq 1 "$rounds"); do
  for build in old new; do
    bin=$old
    [ "$build" = new ] && bin=$new
    for v in "${variants[@]}"; do
      port=$(free_port)
      # (No Redis variant: the URL is never used.)
      "$bin" "$v" "$port" "redis://127.0.0.1:1" > "$out/server.log" 2>&1 &
      pid=$!
      for _ in $(seq 1 100); do grep -q ready "$out/server.log" && break; sleep 0.05; done
      before=$(cpu "$pid")
      wrk -t1 -c32 -d3s -H 'x-user: u_42' "http://127.0.0.1:$port/api/items/42" > "$out/wrk.txt" 2>&1 || true
      after=$(cpu "$pid")
      kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
      n=$(awk '/requests in/ {print $1}' "$out/wrk.txt")
      us=$(awk -v a="$before" -v b="$after" -v n="${n:-0}" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { if (n > 0) printf "%.3f", (b - a) * 1e6 / hz / n; else print "nan" }')
      printf '%s\t%s\t%s\t%s\n' "$round" "$build" "$v" "$us" | tee -a "$out/raw.tsv"
    done
  done
done
python3 - "$out/raw.tsv" <<'PY'
import sys, statistics
rows = [l.split('\t') for l in open(sys.argv[1]).read().split('\n') if l]
cpu = {(r, b, v): float(us) for r, b, v, us in rows}
variants = list(dict.fromkeys(v for _, _, v, _ in rows))
rounds = sorted({r for r, _, _, _ in rows}, key=int)
print("| variant | old (median) | new (median) | new / old (median of per-round ratios) |")
print("|---|---|---|---|")
for v in variants:
    old = [cpu[(r, 'old', v)] for r in rounds]
    new = [cpu[(r, 'new', v)] for r in rounds]
    ratio = [cpu[(r, 'new', v)] / cpu[(r, 'old', v)] for r in rounds]
    print(f"| `{v}` | {statistics.median(old):.2f} | {statistics.median(new):.2f} | {statistics.median(ratio):.2f} |")
PY
