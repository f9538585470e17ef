"""What bench/burst.py and bench/stall.py share: free ports, a redis-server of their own,
the seed examples' debug builds started on it. Stdlib only."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def example_binary(seed, binary=None, release=False):
    """The debug (or `release`) build of example `seed_<seed>` (or `binary`), which must
    exist."""
    profile = "release" if release else "debug"
    binary = binary or os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
        profile, "examples", f"seed_{seed}")
    if not os.path.exists(binary):
        build = "cargo build --release --examples" if release else "cargo build --examples"
        sys.exit(f"{binary} is missing: run `{build}` first")
    return binary


class Redis:
    """A redis-server of the script's own, on a free loopback port (never 6379)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_for_port(self.port, 10):
            self.stop()
            sys.exit("redis-server did not start")

    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def flush(self):
        subprocess.run(["redis-cli", "-p", str(self.port), "FLUSHALL"],
                       stdout=subprocess.DEVNULL, check=True)

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def stop(self):
        self.resume()
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def start_examples(binary, n, redis, env=None):
    """`n` instances of `binary` on `redis`, each on a free port: [(process, port)]."""
    procs = []
    for _ in range(n):
        port = free_port()
        full = dict(os.environ, PORT=str(port), REDIS_URL=redis.url(),
                    RUST_LOG=os.environ.get("RUST_LOG", "warn"), **(env or {}))
        procs.append((subprocess.Popen([binary], cwd=ROOT, env=full,
                                       stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL), port))
    for _, port in procs:
        if not wait_for_port(port, 30):
            stop_examples(procs)
            sys.exit(f"{binary} did not start on port {port}")
    return procs


def stop_examples(procs):
    for proc, _ in procs:
        proc.terminate()
    for proc, _ in procs:
        proc.wait()
