#!/usr/bin/env python3
"""How long requests wait while Redis stalls: the promise is twice the fallback's timeout.

    cargo build --examples                 # the debug builds this runs
    python3 bench/stall.py                 # seed 002 (fails open), 3 rounds
    python3 bench/stall.py --seed 003 --rounds 5
    python3 bench/stall.py --binary /elsewhere/seed_002   # another build of the example

Each round starts a `redis-server` of its own on a free port (never the one on 6379) and
one instance of the example on it, sends a request every 50 ms (each on its own
connection, one client's key), stops Redis (SIGSTOP) 1 s in and resumes it (SIGCONT) 2.5 s
later, and prints the slowest answer while Redis was stopped and how many took over
150 ms. With the default timeout (`TOLLGATE_REDIS_TIMEOUT_MS`, 50 ms) no answer should
take much over 100 ms: it exits 1 if one took more than twice the timeout and 100 ms, or
failed. Stdlib only.
"""

import argparse
import http.client
import sys
import threading
import time

from examples import Redis, example_binary, start_examples, stop_examples

SEEDS = {
    "002": ("/v1/campaigns/42", {"x-api-key": "key_beta"}),
    "003": ("/api/tickets/t1", {"authorization": "Bearer osk_initech_1"}),
}


def one_round(binary, path, headers, timeout_ms):
    redis = Redis()
    procs = []
    try:
        env = {"TOLLGATE_REDIS_TIMEOUT_MS": str(timeout_ms)} if timeout_ms else {}
        procs = start_examples(binary, 1, redis, env)
        port = procs[0][1]
        time.sleep(0.5)
        answers = []

        def request(sent_at):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            started = time.time()
            try:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except OSError:
                status = 0
            finally:
                conn.close()
            answers.append((sent_at, time.time() - started, status))

        threads = []
        began = time.time()
        stopped = False
        while time.time() - began < 4.5:
            since = time.time() - began
            if since >= 1.0 and stopped is False:
                redis.pause()
                stopped = True
            if since >= 3.5 and stopped is True:
                redis.resume()
                stopped = None
            thread = threading.Thread(target=request, args=(since,))
            thread.start()
            threads.append(thread)
            time.sleep(0.05)
        for thread in threads:
            thread.join()
    finally:
        stop_examples(procs)
        redis.stop()
    during = [took for sent_at, took, _ in answers if 1.0 <= sent_at < 3.5]
    failed = sum(1 for _, _, status in answers if status == 0 or status >= 500)
    return max(during), sum(1 for took in during if took > 0.15), len(during), failed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", choices=sorted(SEEDS), default="002")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout-ms", type=int, default=0,
                        help="TOLLGATE_REDIS_TIMEOUT_MS (default: the example's, 50)")
    parser.add_argument("--binary", help="the example's binary (default: the debug build's)")
    args = parser.parse_args()
    binary = example_binary(args.seed, args.binary)
    path, headers = SEEDS[args.seed]
    # Twice the timeout, and room for a debug build on a busy machine.
    bound = 2 * (args.timeout_ms or 50) / 1000 + 0.1
    within = True
    for r in range(1, args.rounds + 1):
        slowest, slow, n, failed = one_round(binary, path, headers, args.timeout_ms)
        ok = slowest <= bound and failed == 0
        within &= ok
        print(f"seed {args.seed}, round {r}: slowest answer while Redis was stopped "
              f"{slowest * 1000:.0f} ms; {slow} of {n} over 150 ms; {failed} failed or 5xx"
              f"{'' if ok else f'  OVER {bound * 1000:.0f} ms'}", flush=True)
    sys.exit(0 if within else 1)


if __name__ == "__main__":
    main()
