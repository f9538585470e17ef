#!/usr/bin/env bash
# Runs every fuzz target for a few seconds: a smoke test that the targets build and that
# nothing the fuzzers reach quickly panics. Needs a nightly toolchain (`rustup toolchain
# list`); installs cargo-fuzz if it is missing; prints a skip notice and succeeds when
# neither can be had. Exits non-zero if a target finds a crash (the input is written to
# fuzz/artifacts/<target>/; keep it under fuzz/regressions/<target>/, see README.md).
#
#   fuzz/ci.sh                    # 5 s per target
#   FUZZ_SECONDS=60 fuzz/ci.sh    # longer
#   FUZZ_TARGET_DIR=/tmp/t fuzz/ci.sh   # build elsewhere than fuzz/target
set -euo pipefail
cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-5}
target_dir=${FUZZ_TARGET_DIR:-target}

skip() {
    echo "fuzz: skipped: $*"
    exit 0
}

command -v rustup >/dev/null 2>&1 || skip "no rustup, so no nightly toolchain"
rustup toolchain list | grep -q '^nightly' ||
    skip "no nightly toolchain (rustup toolchain install nightly)"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install --locked cargo-fuzz || skip "cargo-fuzz could not be installed"
fi

# No sanitizer: tollgate forbids unsafe code, and without ASan each target runs ~2x more
# inputs in its few seconds.
fuzz=(cargo +nightly fuzz)
build=(--sanitizer none --target-dir "$target_dir")
"${fuzz[@]}" build "${build[@]}"

corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
for target in $("${fuzz[@]}" list); do
    # New inputs go to a scratch corpus; the saved ones are read only.
    dirs=("$corpus/$target")
    for saved in "seeds/$target" "regressions/$target"; do
        [ -d "$saved" ] && dirs+=("$saved")
    done
    mkdir -p "$corpus/$target"
    options=(-max_total_time="$seconds")
    [ -f "dict/$target.dict" ] && options+=(-dict="dict/$target.dict")
    log="$corpus/$target.log"
    run=("${fuzz[@]}" run "${build[@]}" "$target" "${dirs[@]}" -- "${options[@]}")
    if [ "$target" = lua_store ]; then
        # The Lua script against memory needs a redis-server of its own.
        if ! command -v redis-server >/dev/null 2>&1; then
            echo "fuzz: $target: skipped (no redis-server)"
            continue
        fi
        run=(./with-redis.sh "${run[@]}")
    fi
    if "${run[@]}" >"$log" 2>&1; then
        echo "fuzz: $target: $(grep -E '^Done ' "$log" || echo 'done')"
    else
        tail -n 40 "$log"
        echo "fuzz: $target failed"
        exit 1
    fi
done
echo "fuzz: every target ran ${seconds}s without a crash"
