#!/usr/bin/env bash
# Instructions per request through one stack of the layer bench, under callgrind: repeatable
# where wall time on a shared machine is not.
#
#   bench/callgrind-layer.sh "tollgate, one per-IP limit, no decision"   # a stack's name (or part of it)
#   bench/callgrind-layer.sh zzz                                        # "no layer" alone
#
# Runs the bench twice (chunks of 10,000 and 30,000 requests, one round): the difference
# divided by 20,000 is one request through "no layer" plus one through the stack of that
# name (or, if none has it, every stack whose name contains it). It runs "no layer" alone the same way, and prints both and
# what the named stacks add to it: total - 2 x "no layer" (for one stack, the layer's own
# cost per request; building the request, the handler and the body are in "no layer").
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 1; }
cargo bench -q --no-run -p tollgate --features metrics --bench layer 2>/dev/null
target=${CARGO_TARGET_DIR:-target}
bench=$(ls -t "$target"/release/deps/layer-* | grep -v '\.d$' | head -1)
only=${1:?a stack name, or part of one}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# Only the requests are counted (`--toggle-collect` on the closure that sends one): setting
# up the stacks is not, and would not cancel out between the two runs (the memory store's
# clock calibrates itself for a time, not a number of instructions: several hundred per
# request of difference between two runs of the same build before).
ir() {
  LAYER_ONLY="$only" LAYER_ROUNDS=1 LAYER_CHUNK=$1 \
    valgrind --tool=callgrind --toggle-collect='layer::contender::*' \
    --callgrind-out-file="$out/cg.$1" "$bench" --bench interleaved 2>&1 |
    awk '/Collected/ {print $4}'
}
per_request() {
  local a b
  a=$(ir 10000)
  b=$(ir 30000)
  echo $(( (b - a) / 20000 ))
}
total=$(per_request)
if [ "$only" = zzz ]; then
  echo "no layer: $total instructions per request"
  exit 0
fi
bare=$(only=zzz per_request)
echo "$only: $total instructions per request (no layer + the stacks named); no layer: $bare; added by the stacks named: $(( total - 2 * bare ))"
