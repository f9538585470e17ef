#!/usr/bin/env python3
"""Bursts on a healthy Redis: does a fleet admit exactly its limit?

    cargo build --examples                      # the debug builds this runs
    python3 bench/burst.py                      # seeds 002 and 003, 1 and 2 instances, 5 rounds each
    python3 bench/burst.py --seed 002 --instances 2 --rounds 10 --burners 2

Each round starts the example (one or more instances, `REDIS_URL` to a `redis-server` of
its own on a free port, emptied between rounds; never the one on 6379), sends `--burst`
requests at once (threads released together, spread over the instances, each on its own
connection) for one client's limit, then one request at a time for 3 seconds. A round is
exact when the burst admitted the limit, every admitted response carried the rate-limit
headers (seed 002 fails open: a response admitted without them was admitted because the
store was taken for down), and nothing was admitted in the 3 seconds after.

- seed 002: `GET /v1/campaigns/42`, `x-api-key: key_alpha`, 120 per 60 s sliding window.
- seed 003: `GET /api/tickets/t1`, tenant acme, 100 per fixed minute (a round starts early
  in a minute so that its burst and the 3 s after stay in one window).

`--burners N` runs N busy processes (`yes > /dev/null`) during the rounds: the instances
then run on a saturated machine, where a timer fires late. Prints one line per round and a
summary; exits 1 if any round was not exact. Stdlib only.
"""

import argparse
import http.client
import os
import signal
import subprocess
import sys
import threading
import time

from examples import Redis, example_binary, start_examples, stop_examples

SEEDS = {
    "002": {
        "path": "/v1/campaigns/42",
        "headers": {"x-api-key": "key_alpha"},
        "limit": 120,
        "fixed_minute": False,
    },
    "003": {
        "path": "/api/tickets/t1",
        "headers": {"authorization": "Bearer osk_acme_1"},
        "limit": 100,
        "fixed_minute": True,
    },
}


def get(port, spec, conn=None):
    """One request: (status, whether it carried X-RateLimit-Remaining)."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", spec["path"], headers=spec["headers"])
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("x-ratelimit-remaining") is not None
    except OSError:
        return 0, False
    finally:
        if own:
            conn.close()


def burst(ports, spec, n):
    """`n` requests released at once, spread over `ports`; each on its own connection,
    opened before the release."""
    results = [None] * n
    conns = [http.client.HTTPConnection("127.0.0.1", ports[i % len(ports)], timeout=30)
             for i in range(n)]
    for conn in conns:
        conn.connect()
    gate = threading.Barrier(n)

    def one(i):
        gate.wait()
        results[i] = get(None, spec, conns[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    started = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.time() - started
    for conn in conns:
        conn.close()
    return results, took


def round_(seed, spec, instances, redis, burst_size):
    redis.flush()
    if spec["fixed_minute"]:
        # The burst and the 3 s after in one fixed window (with room for the start).
        left = 60 - time.time() % 60
        if left < 25:
            time.sleep(left + 0.5)
    procs = start_examples(example_binary(seed), instances, redis)
    try:
        ports = [port for _, port in procs]
        results, took = burst(ports, spec, burst_size)
        admitted = sum(1 for s, _ in results if s == 200)
        unchecked = sum(1 for s, h in results if s == 200 and not h)
        refused = sum(1 for s, _ in results if s == 429)
        other = len(results) - admitted - refused
        after = 0
        end = time.time() + 3
        i = 0
        while time.time() < end:
            status, _ = get(ports[i % len(ports)], spec)
            after += status == 200
            i += 1
        exact = admitted == spec["limit"] and unchecked == 0 and after == 0 and other == 0
        return {"admitted": admitted, "unchecked": unchecked, "refused": refused,
                "other": other, "after": after, "took": took, "exact": exact}
    finally:
        stop_examples(procs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", choices=sorted(SEEDS), action="append",
                        help="the example (repeatable; default: both)")
    parser.add_argument("--instances", type=int, action="append",
                        help="instances sharing the Redis (repeatable; default: 1 and 2)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--burst", type=int, default=300)
    parser.add_argument("--burners", type=int, default=0)
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
                    res = round_(seed, spec, instances, redis, args.burst)
                    exact += res["exact"]
                    print(f"seed {seed}, {instances} instance(s), round {r}: "
                          f"{res['admitted']} of {spec['limit']} admitted "
                          f"({res['unchecked']} without headers), {res['refused']} refused, "
                          f"{res['other']} other, {res['after']} admitted in the 3 s after; "
                          f"burst answered in {res['took']:.2f} s"
                          f"{'' if res['exact'] else '  NOT EXACT'}", flush=True)
                summary.append((seed, instances, exact, args.rounds))
    finally:
        for b in burners:
            b.send_signal(signal.SIGTERM)
            b.wait()
        redis.stop()
    print()
    print(f"burst {args.burst}, {args.burners} CPU burner(s), load average "
          f"{os.getloadavg()[0]:.1f}")
    for seed, instances, exact, rounds in summary:
        print(f"seed {seed}, {instances} instance(s): {exact} of {rounds} rounds exact")
    sys.exit(0 if all(e == r for _, _, e, r in summary) else 1)


if __name__ == "__main__":
    main()
