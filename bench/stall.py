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
take much over 100 ms. Stdlib only.
"""

import argparse
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SEEDS = {
    "002": ("/v1/campaigns/42", {"x-api-key": "key_beta"}),
    "003": ("/api/tickets/t1", {"authorization": "Bearer osk_initech_1"}),
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def one_round(binary, path, headers, timeout_ms):
    redis_port, port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="stall-redis-") as workdir:
        redis = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        instance = None
        try:
            if not wait_for_port(redis_port, 10):
                sys.exit("redis-server did not start")
            env = dict(os.environ, PORT=str(port),
                       REDIS_URL=f"redis://127.0.0.1:{redis_port}", RUST_LOG="warn")
            if timeout_ms:
                env["TOLLGATE_REDIS_TIMEOUT_MS"] = str(timeout_ms)
            instance = subprocess.Popen([binary], cwd=ROOT, env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if not wait_for_port(port, 30):
                sys.exit("the example did not start")
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
                    redis.send_signal(signal.SIGSTOP)
                    stopped = True
                if since >= 3.5 and stopped is True:
                    redis.send_signal(signal.SIGCONT)
                    stopped = None
                thread = threading.Thread(target=request, args=(since,))
                thread.start()
                threads.append(thread)
                time.sleep(0.05)
            for thread in threads:
                thread.join()
        finally:
            if instance is not None:
                instance.terminate()
                instance.wait()
            redis.send_signal(signal.SIGCONT)
            redis.terminate()
            redis.wait()
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
    binary = args.binary or os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
        "debug", "examples", f"seed_{args.seed}")
    if not os.path.exists(binary):
        sys.exit(f"{binary} is missing: run `cargo build --examples` first")
    path, headers = SEEDS[args.seed]
    for r in range(1, args.rounds + 1):
        slowest, slow, n, failed = one_round(binary, path, headers, args.timeout_ms)
        print(f"seed {args.seed}, round {r}: slowest answer while Redis was stopped "
              f"{slowest * 1000:.0f} ms; {slow} of {n} over 150 ms; {failed} failed or 5xx",
              flush=True)


if __name__ == "__main__":
    main()
