#!/usr/bin/env bash
# The reliability suite: Redis faults under HTTP load, spoofed forwarding headers, a spray of
# 3 million client keys and hostile paths against a release build of the demo;
# writes docs/RELIABILITY.md. Loopback only, its own redis-server processes (never the one
# on 6379), about 2 minutes. Not run in CI. See bench/reliability.py.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "reliability: needs redis-server and redis-cli" >&2; exit 1; }
cargo build --release -q --example demo
exec python3 bench/reliability.py
