"""Turns the HTTP rounds of bench/run.sh (TSV: round, variant, req/s, p50, p99, non-2xx,
server CPU µs per request) into a markdown table: medians over rounds, and the median of
the per-round ratios to the bare server (each round's variants ran back to back, so the
ratio cancels the load the machine had during that round)."""
import statistics
import sys
from collections import defaultdict

LABELS = {
    "bare": "bare axum handler",
    "bare-headers": "bare handler answering with the five rate-limit headers (fixed values, no layer)",
    "governor": "tower_governor, one per-IP limit",
    "tollgate-ip": "tollgate, one per-IP limit (`/*`, never refuses)",
    "tollgate-ip-quiet": "tollgate, one per-IP limit, no headers and no decision in the request (as tower_governor by default)",
    "tollgate-3": "tollgate, IP + user + global (never refuse)",
    "tollgate-redis": "tollgate, one per-IP limit, Redis store (own redis-server)",
    "governor-refuse": "a client far over its limit: tower_governor (429s)",
    "tollgate-refuse": "a client far over its limit: tollgate (429s)",
}

rows = defaultdict(dict)
for line in open(sys.argv[1]):
    fields = line.rstrip("\n").split("\t")
    rnd, variant, rps, p50, p99, non2xx = fields[:6]
    cpu = float(fields[6]) if len(fields) > 6 and fields[6] else None
    rows[variant][int(rnd)] = (float(rps), p50, p99, int(non2xx or 0), cpu)

bare = rows["bare"]
print("## HTTP: requests per second through one axum server")
print()
print("`wrk -t1 -c32 -d4s --latency` against `GET /api/items/42` on `target/release/bench-server`")
print("(one tokio worker; the load generator on the other core), memory store unless said.")
print(f"{len(bare)} rounds; each round runs every server once, in this order. Medians.")
print()
print("The server's CPU time over a run (user + system, `/proc/<pid>/stat`) divided by the")
print("requests it served is what a request costs it; the machine's other load moves it far less")
print("than requests/s, which swing 2x from round to round on a shared machine. **Capacity vs")
print("bare** is bare's CPU per request over this server's, round by round (median): the share of")
print("bare's requests/s this server sustains on the same CPU. (The Redis row's CPU is the")
print("server's own: Redis's is not in it.)")
print()
print("| server | requests/s | vs bare (median of per-round ratios) | vs tower_governor | server CPU µs per request | capacity vs bare (by CPU) | capacity vs tower_governor (by CPU) | p50 | p99 | non-2xx per run |")
print("|---|---|---|---|---|---|---|---|---|---|")
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
    cpus = [r[4] for r in runs.values() if r[4]]
    cpu = f"{statistics.median(cpus):.2f}" if cpus else "-"

    def capacity(base):
        r = [base[k][4] / runs[k][4] for k in runs if k in base and base[k][4] and runs[k][4]]
        return f"{statistics.median(r):.2f}" if r else "-"

    print(
        f"| {label} | {rps:,.0f} | {ratio} | {gratio} | {cpu} | {capacity(bare)} | {capacity(gov)} "
        f"| {p50} | {p99} | {non2xx:,.0f} |"
    )
