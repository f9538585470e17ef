"""Turns the HTTP rounds of bench/run.sh (TSV: round, variant, req/s, p50, p99, non-2xx)
into a markdown table: medians over rounds, and the median of the per-round ratios to the
bare server (each round's variants ran back to back, so the ratio cancels the load the
machine had during that round)."""
import statistics
import sys
from collections import defaultdict

LABELS = {
    "bare": "bare axum handler",
    "bare-headers": "bare handler + the five rate-limit headers (fixed values, no limiter)",
    "governor": "tower_governor, one per-IP limit",
    "tollgate-ip": "tollgate, one per-IP limit (`/*`, never refuses)",
    "tollgate-3": "tollgate, IP + user + global (never refuse)",
    "tollgate-redis": "tollgate, one per-IP limit, Redis store (own redis-server)",
    "governor-refuse": "a client far over its limit: tower_governor (429s)",
    "tollgate-refuse": "a client far over its limit: tollgate (429s)",
}

rows = defaultdict(dict)
for line in open(sys.argv[1]):
    rnd, variant, rps, p50, p99, non2xx = line.rstrip("\n").split("\t")
    rows[variant][int(rnd)] = (float(rps), p50, p99, int(non2xx or 0))

bare = rows["bare"]
print("## HTTP: requests per second through one axum server")
print()
print("`wrk -t1 -c32 -d4s --latency` against `GET /api/items/42` on `target/release/bench-server`")
print("(one tokio worker; the load generator on the other core), memory store unless said.")
print(f"{len(bare)} rounds; each round runs every server once, in this order. Medians.")
print()
print("| server | requests/s | vs bare (median of per-round ratios) | vs tower_governor | p50 | p99 | non-2xx per run |")
print("|---|---|---|---|---|---|---|")
gov = rows.get("governor", {})
for variant, label in LABELS.items():
    if variant not in rows:
        continue
    runs = rows[variant]
    rps = statistics.median(r[0] for r in runs.values())
    ratios = [runs[k][0] / bare[k][0] for k in runs if k in bare and bare[k][0] > 0]
    gratios = [runs[k][0] / gov[k][0] for k in runs if k in gov and gov[k][0] > 0]
    p50 = sorted(r[1] for r in runs.values())[len(runs) // 2]
    p99 = sorted(r[2] for r in runs.values())[len(runs) // 2]
    non2xx = statistics.median(r[3] for r in runs.values())
    ratio = f"{statistics.median(ratios):.2f}" if ratios else "-"
    gratio = f"{statistics.median(gratios):.2f}" if gratios else "-"
    print(f"| {label} | {rps:,.0f} | {ratio} | {gratio} | {p50} | {p99} | {non2xx:,.0f} |")
