#!/usr/bin/env bash
# Instructions per keyed decision (100,000 live keys, one thread) under callgrind, for one
# contender of the engine bench: repeatable where wall time on a shared machine is not.
#
#   bench/callgrind-decide.sh governor | tollgate_gcra | tollgate_sliding
#
# Runs the contender twice (100,000 and 300,000 decisions after the same warm-up) and prints
# the difference divided by 200,000. Only the decisions are counted (`--toggle-collect` on
# the loop that makes them): the clocks calibrate themselves during the warm-up for a time,
# not a number of instructions, which moved the difference by up to 50 between two runs of
# the same build.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 1; }
cargo bench -q --no-run -p tollgate-limits --bench decide 2>/dev/null
target=${CARGO_TARGET_DIR:-target}
bench=$(ls -t "$target"/release/deps/decide-* | grep -v '\.d$' | head -1)
name=${1:?a contender: governor, tollgate_gcra or tollgate_sliding}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
ir() {
  DECIDE_PROFILE="$name" DECIDE_ITERS=$1 \
    valgrind --tool=callgrind --toggle-collect='decide::run*' --callgrind-out-file="$out/cg.$1" "$bench" 2>&1 |
    awk '/Collected/ {print $4}'
  if [ -n "${KEEP:-}" ]; then cp "$out/cg.$1" "$KEEP.$1"; fi
}
a=$(ir 100000)
b=$(ir 300000)
echo "$name: $(( (b - a) / 200000 )) instructions per decision"
