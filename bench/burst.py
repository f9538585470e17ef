#!/usr/bin/env python3
"""Bursts on a healthy Redis: does a fleet admit exactly its limit?

    cargo build --examples                      # the debug builds this runs (--release: those)
    python3 bench/burst.py                      # seeds 001, 002 and 003, 1 and 2 instances, 5 rounds each
    python3 bench/burst.py --seed 002 --instances 2 --rounds 10 --burners 2

Each round starts the example (one or more instances, `REDIS_URL` to a `redis-server` of
its own on a free port, emptied between rounds; never the one on 6379), sends a burst of
requests at once (each on a connection of its own, opened first, spread over the
instances; every request written in one turn of an event loop) for one client's limit,
then one request of the least cost at a time for 3 seconds. A round is exact when the
burst and those after it admitted the limit's points exactly, the burst all but what its
dearest request costs (with requests of one point: the whole limit), and every admitted
response carried the rate-limit headers (seed 002 fails open: a response admitted without
them was admitted because the store was taken for down).

- seed 001: one organization's 1,000 points per rolling minute (`tok_acme_ci`), spent by
  `GET`s of 1, 3, 5 and 10 points in turn; 1,500 requests per instance (a review's burst:
  two debug instances without a divisor took a healthy Redis for down and admitted up to
  1,908 points).
- seed 002: `GET /v1/campaigns/42`, `x-api-key: key_alpha`, 120 per 60 s sliding window;
  300 requests in all.
- seed 003: `GET /api/tickets/t1`, tenant acme, 100 per fixed minute (a round starts early
  in a minute so that its burst and the 3 s after stay in one window); 300 requests in all.

`--divisor` runs N instances with `TOLLGATE_FALLBACK_DIVISOR=N` (as the README says to):
while an instance decides from memory, it admits its share of what remained, not all of
it. `--burners N` runs N busy processes (`yes > /dev/null`) during the rounds: the instances
then run on a saturated machine, where a timer fires late. Prints one line per round and a
summary; exits 1 if any round was not exact. Stdlib only. Two seed 001 instances hold
3,000 connections open at once: the client needs that many file descriptors, and each
instance 1,500 (`ulimit -n`).
"""

import argparse
import asyncio
import collections
import http.client
import os
import signal
import subprocess
import sys
import time

from examples import Redis, example_binary, start_examples, stop_examples

# Each seed's requests, (path, points), sent in turn (the first is the cheapest, sent after
# the burst); `burst`: requests in all, or `burst_each` per instance.
SEEDS = {
    "001": {
        "requests": [("/v1/contacts/7", 1), ("/v1/contacts", 3),
                     ("/v1/reports/summary", 5), ("/v1/export", 10)],
        "headers": {"authorization": "Bearer tok_acme_ci"},
        "limit": 1000,
        "fixed_minute": False,
        "burst_each": 1500,
    },
    "002": {
        "requests": [("/v1/campaigns/42", 1)],
        "headers": {"x-api-key": "key_alpha"},
        "limit": 120,
        "fixed_minute": False,
        "burst": 300,
    },
    "003": {
        "requests": [("/api/tickets/t1", 1)],
        "headers": {"authorization": "Bearer osk_acme_1"},
        "limit": 100,
        "fixed_minute": True,
        "burst": 300,
    },
}


def get(port, spec, conn=None, path=None):
    """One request (of `path`, by default the seed's cheapest): (status, whether it carried
    X-RateLimit-Remaining)."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path or spec["requests"][0][0], headers=spec["headers"])
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("x-ratelimit-remaining") is not None
    except OSError:
        return 0, False
    finally:
        if own:
            conn.close()


def burst(ports, spec, n):
    """`n` requests sent at once, spread over `ports`, the seed's requests in turn: each on a
    connection of its own, all opened first, then every request written in one turn of an
    event loop (threads released together sent them over a second and more). Their
    (status, whether it carried X-RateLimit-Remaining, points), and how long they took."""
    return asyncio.run(_burst(ports, spec, n))


async def _burst(ports, spec, n):
    requests = spec["requests"]
    streams = await asyncio.gather(*(
        asyncio.open_connection("127.0.0.1", ports[i % len(ports)]) for i in range(n)))
    fields = "".join(f"{name}: {value}\r\n" for name, value in spec["headers"].items())
    started = time.time()
    # Request i goes to instance i % len(ports), and is the seed's request (i // len(ports))
    # % len(requests): each instance gets every kind in turn.
    def kind(i):
        return requests[(i // len(ports)) % len(requests)]

    for i, (_, writer) in enumerate(streams):
        path = kind(i)[0]
        writer.write(f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{fields}\r\n".encode())

    async def answer(i, reader):
        cost = kind(i)[1]
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                asyncio.TimeoutError):
            return 0, False, cost
        lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split()[1])
        except (IndexError, ValueError):
            return 0, False, cost
        names = {line.split(":", 1)[0].strip().lower() for line in lines[1:] if ":" in line}
        return status, "x-ratelimit-remaining" in names, cost

    results = await asyncio.gather(*(answer(i, reader) for i, (reader, _) in enumerate(streams)))
    took = time.time() - started
    for _, writer in streams:
        writer.close()
    return results, took


def round_(seed, spec, instances, redis, burst_size=None, divisor=None, release=False):
    redis.flush()
    if spec["fixed_minute"]:
        # The burst and the 3 s after in one fixed window (with room for the start).
        left = 60 - time.time() % 60
        if left < 25:
            time.sleep(left + 0.5)
    env = {"TOLLGATE_FALLBACK_DIVISOR": str(divisor)} if divisor else None
    procs = start_examples(example_binary(seed, release=release), instances, redis, env)
    try:
        ports = [port for _, port in procs]
        n = burst_size or spec.get("burst") or spec["burst_each"] * instances
        results, took = burst(ports, spec, n)
        admitted = sum(cost for s, _, cost in results if s == 200)
        unchecked = sum(1 for s, h, _ in results if s == 200 and not h)
        refused = sum(1 for s, _, _ in results if s == 429)
        other = collections.Counter(s for s, _, _ in results if s not in (200, 429))
        after = 0
        end = time.time() + 3
        i = 0
        while time.time() < end:
            status, _ = get(ports[i % len(ports)], spec)
            after += (status == 200) * spec["requests"][0][1]
            i += 1
        dearest = max(cost for _, cost in spec["requests"])
        exact = (admitted + after == spec["limit"] and admitted > spec["limit"] - dearest
                 and unchecked == 0 and not other)
        return {"admitted": admitted, "unchecked": unchecked, "refused": refused,
                "other": other, "after": after, "took": took, "exact": exact, "sent": n}
    finally:
        stop_examples(procs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", choices=sorted(SEEDS), action="append",
                        help="the example (repeatable; default: all three)")
    parser.add_argument("--instances", type=int, action="append",
                        help="instances sharing the Redis (repeatable; default: 1 and 2)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--burst", type=int,
                        help="requests in a burst, in all (default: the seed's)")
    parser.add_argument("--burners", type=int, default=0)
    parser.add_argument("--release", action="store_true",
                        help="the release builds (cargo build --release --examples)")
    parser.add_argument("--divisor", action="store_true",
                        help="run N instances with TOLLGATE_FALLBACK_DIVISOR=N")
    args = parser.parse_args()
    seeds = args.seed or sorted(SEEDS)
    counts = args.instances or [1, 2]

    redis = Redis()
    burners = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL)
               for _ in range(args.burners)]
    summary = []
    try:
        for seed in seeds:
            spec = SEEDS[seed]
            for instances in counts:
                exact = 0
                for r in range(1, args.rounds + 1):
                    res = round_(seed, spec, instances, redis, args.burst,
                                 instances if args.divisor else None, args.release)
                    exact += res["exact"]
                    print(f"seed {seed}, {instances} instance(s), round {r}: "
                          f"{res['sent']} sent, {res['admitted']} of {spec['limit']} points "
                          f"admitted ({res['unchecked']} responses without headers), "
                          f"{res['refused']} refused, {sum(res['other'].values())} other"
                          f"{' ' + str(dict(res['other'])) if res['other'] else ''}, {res['after']} "
                          f"points admitted in the 3 s after; "
                          f"burst answered in {res['took']:.2f} s"
                          f"{'' if res['exact'] else '  NOT EXACT'}", flush=True)
                summary.append((seed, instances, exact, args.rounds))
    finally:
        for b in burners:
            b.send_signal(signal.SIGTERM)
            b.wait()
        redis.stop()
    print()
    print(f"burst {args.burst or 'per seed'}, {args.burners} CPU burner(s), "
          f"{'a divisor of the instances' if args.divisor else 'no divisor'}, "
          f"{'release' if args.release else 'debug'} builds, load average "
          f"{os.getloadavg()[0]:.1f}")
    for seed, instances, exact, rounds in summary:
        print(f"seed {seed}, {instances} instance(s): {exact} of {rounds} rounds exact")
    sys.exit(0 if all(e == r for _, _, e, r in summary) else 1)


if __name__ == "__main__":
    main()
