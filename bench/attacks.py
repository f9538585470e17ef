"""The reliability suite's attacks on the demo's own inputs (no Redis): spoofed forwarding
headers, a spray of millions of client keys, hostile paths. Used by bench/reliability.py;
each attack takes a function that starts a demo with extra environment and returns it.

Requests go over plain keep-alive sockets (`Conn`, one request at a time) except the
spray, which pipelines: several processes, each one connection with a writer thread
sending batches of requests while the process counts the answers as they arrive.
"""

import json
import multiprocessing
import os
import socket
import threading
import time

# The default class (`/api/*`): 500/min per IP. The download class: 1500/min per IP.
DEFAULT_LIMIT = 500
DOWNLOAD_LIMIT = 1500
ADMIN_TOKEN = "reliability"


class Conn:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closes it."""

    def __init__(self, port):
        self.port = port
        self.sock = None
        self.file = None

    def _connect(self):
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")

    def close(self):
        if self.sock:
            self.file.close()
            self.sock.close()
            self.sock = self.file = None

    def send(self, method, path, headers=()):
        """(status, lower-cased headers, body); status 0 when no answer came, even on a new
        connection (a kept-alive one the server closed meanwhile is retried once)."""
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers)
        head += "Content-Length: 0\r\n\r\n"
        reused = self.sock is not None
        answer = self._exchange(head.encode("latin-1"))
        if answer[0] == 0 and reused:
            answer = self._exchange(head.encode("latin-1"))
        return answer

    def _exchange(self, request):
        try:
            if self.sock is None:
                self._connect()
            self.sock.sendall(request)
            line = self.file.readline()
            if not line:
                raise ConnectionError("closed")
            status = int(line.split()[1])
            fields = {}
            while True:
                line = self.file.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                fields[name.strip().lower()] = value.strip()
            if "content-length" in fields:
                body = self.file.read(int(fields["content-length"]))
            else:
                body = self.file.read()
                fields["connection"] = "close"
            if fields.get("connection", "").lower() == "close":
                self.close()
            return status, fields, body
        except (OSError, ValueError, IndexError):
            self.close()
            return 0, {}, b""


def admin_state(port, bucket, key):
    """The admin router's view of one key of one bucket (changes nothing)."""
    c = Conn(port)
    status, _, body = c.send("GET", f"/admin/rate-limits/buckets/{bucket}/{key}",
                             [("Authorization", f"Bearer {ADMIN_TOKEN}")])
    c.close()
    assert status == 200, (status, body)
    return json.loads(body)


def rss_kib(pid):
    """(VmRSS, VmHWM) of a process, in KiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            fields[name] = value.split()[0] if value.split() else "0"
    return int(fields["VmRSS"]), int(fields["VmHWM"])


# ----------------------------------------------------------------------------------------
# (a) Spoofed forwarding headers.

SPOOF_REQUESTS = 650  # the default class's 500 plus 150


def spoof_value(kind, n):
    """A forwarding header naming the n-th address (IPv4 and IPv6 in turn)."""
    v4 = f"198.51.{(n >> 8) & 255}.{n & 255}"
    v6 = f"2001:db8:{n:x}::7"
    addr = v4 if n % 2 else v6
    if kind == "X-Forwarded-For":
        return [("X-Forwarded-For", addr)]
    if kind == "Forwarded":
        node = addr if n % 2 else f'"[{addr}]:4711"'
        return [("Forwarded", f"for={node};proto=https")]
    if kind == "X-Real-IP":
        return [("X-Real-IP", addr)]
    # All three at once, each naming another address.
    return spoof_value("X-Forwarded-For", n) + spoof_value("Forwarded", n + 1) + \
        spoof_value("X-Real-IP", n + 2)


SPOOF_KINDS = ["X-Forwarded-For", "Forwarded", "X-Real-IP", "all three"]


def spoof_run(port, headers_of, n=SPOOF_REQUESTS):
    """`n` GET /api/projects on one connection; per-kind and total admitted/refused/other."""
    c = Conn(port)
    admitted = refused = other = 0
    per_kind = {}
    for i in range(n):
        kind, headers = headers_of(i)
        status, _, _ = c.send("GET", "/api/projects", headers)
        k = per_kind.setdefault(kind, [0, 0])
        if status == 200:
            admitted += 1
            k[0] += 1
        elif status == 429:
            refused += 1
            k[1] += 1
        else:
            other += 1
    c.close()
    return {"admitted": admitted, "refused": refused, "other": other, "per_kind": per_kind}


def spoofed_headers(start_demo):
    rows = []
    # Untrusted: the peer (127.0.0.1) is the client, whatever it writes.
    demo = start_demo(TRUSTED_PROXIES="", ADMIN_TOKEN=ADMIN_TOKEN)
    try:
        r = spoof_run(demo.port, lambda i: (SPOOF_KINDS[i % 4], spoof_value(SPOOF_KINDS[i % 4], i)))
        r["peer_remaining"] = admin_state(demo.port, "default:ip", "127.0.0.1")["remaining"]
        r["spoofed_remaining"] = admin_state(demo.port, "default:ip", "198.51.0.1")["remaining"]
        r.update(name="TRUSTED_PROXIES unset: X-Forwarded-For, Forwarded, X-Real-IP and all three "
                      "in turn, a new address (IPv4 and IPv6 in turn) each request",
                 env="TRUSTED_PROXIES= ", expect=DEFAULT_LIMIT)
        rows.append(r)
    finally:
        demo.close()
    # Trusted (we are the proxy): X-Forwarded-For is believed, the other headers are not.
    demo = start_demo(TRUSTED_PROXIES="127.0.0.1/32", ADMIN_TOKEN=ADMIN_TOKEN)
    try:
        r = spoof_run(demo.port, lambda i: ("X-Forwarded-For", spoof_value("X-Forwarded-For", i)))
        r["spoofed_remaining"] = admin_state(demo.port, "default:ip", "198.51.0.1")["remaining"]
        r.update(name="positive control, TRUSTED_PROXIES=127.0.0.1/32: a new X-Forwarded-For "
                      "address each request (each its own bucket)",
                 env="TRUSTED_PROXIES=127.0.0.1/32", expect=SPOOF_REQUESTS)
        rows.append(r)

        # The client forges the left of X-Forwarded-For; the proxy appends the peer it saw.
        r = spoof_run(demo.port, lambda i: ("X-Forwarded-For", [(
            "X-Forwarded-For", f"{spoof_value('X-Forwarded-For', i)[0][1]}, 203.0.113.9")]))
        r["peer_remaining"] = admin_state(demo.port, "default:ip", "203.0.113.9")["remaining"]
        r.update(name="TRUSTED_PROXIES=127.0.0.1/32, `X-Forwarded-For: <forged>, 203.0.113.9` "
                      "(the client forges the left, the proxy appends the peer it saw)",
                 env="TRUSTED_PROXIES=127.0.0.1/32", expect=DEFAULT_LIMIT)
        rows.append(r)

        # Headers the proxy does not write: the peer (the proxy, 127.0.0.1) is the client.
        kinds = ["Forwarded", "X-Real-IP"]
        r = spoof_run(demo.port, lambda i: (kinds[i % 2], spoof_value(kinds[i % 2], i)))
        r["peer_remaining"] = admin_state(demo.port, "default:ip", "127.0.0.1")["remaining"]
        r.update(name="TRUSTED_PROXIES=127.0.0.1/32, Forwarded and X-Real-IP only (headers "
                      "the proxy does not write), a new address each request",
                 env="TRUSTED_PROXIES=127.0.0.1/32", expect=DEFAULT_LIMIT)
        rows.append(r)
    finally:
        demo.close()
    return rows


# ----------------------------------------------------------------------------------------
# (b) A spray of millions of client keys.

SPRAY_KEYS = 3_000_000
SPRAY_ROUNDS = 3
SPRAY_SAMPLE = 3000  # keys read back through the admin router afterwards
SPRAY_WORKERS = 4
SPRAY_BATCH = 512
PATTERNS = {
    "responses": b"HTTP/1.1 ",
    "200": b"HTTP/1.1 200",
    "429": b"HTTP/1.1 429",
    "5xx": b"HTTP/1.1 5",
    "fresh": b"x-ratelimit-remaining: 499\r\n",
}
TAIL = max(len(p) for p in PATTERNS.values())


def spray_key(n):
    """The n-th key: even n an IPv4 address in 10/8, odd n an IPv6 address in its own /64
    (IPv6 keys are per /64), all distinct."""
    j = n >> 1
    if n & 1:
        return f"2001:db8:{j >> 16:x}:{j & 0xffff:x}::1"
    return f"10.{(j >> 16) & 255}.{(j >> 8) & 255}.{j & 255}"


def spray_worker(port, first, step, total, out):
    """Keys first, first+step, ... below total, one pipelined request each, on one connection."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    expected = len(range(first, total, step))

    def writer():
        batch = []
        for n in range(first, total, step):
            batch.append(f"GET /api/projects HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: {spray_key(n)}"
                         "\r\n\r\n".encode())
            if len(batch) == SPRAY_BATCH:
                sock.sendall(b"".join(batch))
                batch = []
        if batch:
            sock.sendall(b"".join(batch))

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    counts = dict.fromkeys(PATTERNS, 0)
    tail = b""
    while counts["responses"] < expected:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        data = tail + chunk
        for name, p in PATTERNS.items():
            counts[name] += data.count(p) - tail.count(p)
        tail = data[-TAIL:]
    t.join()
    sock.close()
    out.put(counts)


def scrape_every_second(port, stop):
    c = Conn(port)
    while not stop.wait(1.0):
        c.send("GET", "/metrics")
    c.close()


def spray(start_demo):
    demo = start_demo(TRUSTED_PROXIES="127.0.0.1/32", ADMIN_TOKEN=ADMIN_TOKEN)
    try:
        c = Conn(demo.port)
        # A client at its limit before the spray: still refused after it.
        victim = [("X-Forwarded-For", "203.0.113.77")]
        for _ in range(DEFAULT_LIMIT):
            assert c.send("GET", "/api/projects", victim)[0] == 200
        before_victim = c.send("GET", "/api/projects", victim)[0]
        victim_at = time.monotonic()
        c.close()
        rss_before, _ = rss_kib(demo.proc.pid)
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        totals = dict.fromkeys(PATTERNS, 0)
        rss_rounds = []
        started = time.monotonic()
        # Rounds of a million keys each, resident memory after each. In the first two nothing
        # scrapes /metrics; the demo's Prometheus recorder (`install_recorder`, upkeep only on
        # a scrape) keeps every histogram sample until the next scrape. In the third a
        # scraper reads /metrics every second, as Prometheus would.
        for r in range(SPRAY_ROUNDS):
            lo, hi = r * SPRAY_KEYS // SPRAY_ROUNDS, (r + 1) * SPRAY_KEYS // SPRAY_ROUNDS
            stop = threading.Event()
            scraper = threading.Thread(target=scrape_every_second, args=(demo.port, stop))
            if r == SPRAY_ROUNDS - 1:
                scraper.start()
            workers = [ctx.Process(target=spray_worker,
                                   args=(demo.port, lo + w, SPRAY_WORKERS, hi, out))
                       for w in range(SPRAY_WORKERS)]
            for w in workers:
                w.start()
            for _ in workers:
                for k, v in out.get(timeout=300).items():
                    totals[k] += v
            for w in workers:
                w.join()
            if r == SPRAY_ROUNDS - 1:
                stop.set()
                scraper.join()
            rss_rounds.append(rss_kib(demo.proc.pid)[0])
        seconds = time.monotonic() - started
        rss_after, hwm = rss_kib(demo.proc.pid)
        c = Conn(demo.port)
        after_victim = c.send("GET", "/api/projects", victim)[0]
        victim_seconds = round(time.monotonic() - victim_at, 1)
        c.close()
        # A new key after the spray is held; the first sprayed key was evicted (a fresh 500
        # again); of keys sampled evenly across the spray, about the store's bound are held.
        # (Connections run at their own pace, so "the last key sent" is a request of its own.)
        c = Conn(demo.port)
        assert c.send("GET", "/api/projects", [("X-Forwarded-For", "198.18.0.1")])[0] == 200
        c.close()
        last = admin_state(demo.port, "default:ip", "198.18.0.1")["remaining"]
        first = admin_state(demo.port, "default:ip", spray_key(0))["remaining"]
        sample = range(0, SPRAY_KEYS, SPRAY_KEYS // SPRAY_SAMPLE)
        held = sum(admin_state(demo.port, "default:ip", spray_key(n))["remaining"] == 499
                   for n in sample)
        return {
            "keys": SPRAY_KEYS, "workers": SPRAY_WORKERS, "seconds": round(seconds, 1),
            "rps": round(SPRAY_KEYS / seconds), **totals,
            "rss_before_kib": rss_before, "rss_rounds_kib": rss_rounds,
            "rss_after_kib": rss_after, "hwm_kib": hwm,
            "victim_before": before_victim, "victim_after": after_victim,
            "victim_seconds": victim_seconds,
            "first_key_remaining": first, "last_key_remaining": last,
            "sample": len(sample), "sample_held": held,
        }
    finally:
        demo.close()


# ----------------------------------------------------------------------------------------
# (c) Hostile paths against the download route (`GET /api/documents/temp/{*file}`,
# 1500/min per IP). Each spelling reaches axum's download route; the handler echoes the path.

T = "/api/documents/temp/"
PATH_FAMILIES = [
    # name, spellings (used in turn), requests
    ("control: `report.pdf`", [T + "report.pdf"], DOWNLOAD_LIMIT + 100),
    ("dot segments into another class (`../../knowledge/f`, `../../projects`, `../../twilio/f`)",
     [T + "../../knowledge/f", T + "../../projects", T + "../../twilio/f"], DOWNLOAD_LIMIT + 100),
    ("`%2E%2E` spellings (`%2E%2E/%2e%2e/knowledge/f`, `.%2e/%2E./knowledge/articles`, "
     "`..%2E/projects`: three dots, no dot segment, the default class)",
     [T + "%2E%2E/%2e%2e/knowledge/f", T + ".%2e/%2E./knowledge/articles", T + "..%2E/projects"],
     DOWNLOAD_LIMIT + 100),
    ("climbing past the root (`../../../../../etc/passwd`, `%2e%2e/` × 12 + `api/auth/sign-in`, an exempt class)",
     [T + "../../../../../etc/passwd", T + "%2e%2e/" * 12 + "api/auth/sign-in"], DOWNLOAD_LIMIT + 100),
    ("2,000 `x/../` pairs (10 KB)", [T + "x/../" * 2000 + "f"], DOWNLOAD_LIMIT + 100),
    ("very long path: one 8 KB segment, one 60 KB segment",
     [T + "a" * 8_000, T + "b" * 60_000], DOWNLOAD_LIMIT + 100),
    ("many segments: 10,000 (`a/` × 10,000, 20 KB)", [T + "a/" * 10_000 + "f"], DOWNLOAD_LIMIT + 100),
    ("invalid percent-encoding (`%zz`, `%`, `%E2%82`, `%%2e%2e`, `%00`, `%FF%FE`)",
     [T + "%zz/f", T + "%/f", T + "%E2%82/f", T + "%%2e%2e/f", T + "%00/f", T + "%FF%FE/f"],
     DOWNLOAD_LIMIT + 100),
    ("past hyper's URI limit: a 70 KB path", [T + "c" * 70_000], 20),
]


def path_family(port, ip, spellings, n):
    c = Conn(port)
    counts = {"200": 0, "429": 0, "other 4xx": 0, "5xx": 0, "statuses": set()}
    for i in range(n):
        status, _, _ = c.send("GET", spellings[i % len(spellings)], [("X-Forwarded-For", ip)])
        counts["statuses"].add(status)
        if status == 200:
            counts["200"] += 1
        elif status == 429:
            counts["429"] += 1
        elif 400 <= status < 500:
            counts["other 4xx"] += 1
        else:
            counts["5xx"] += 1  # 5xx or no answer
    c.close()
    counts["statuses"] = sorted(counts["statuses"])
    return counts


def hostile_paths(start_demo):
    demo = start_demo(TRUSTED_PROXIES="127.0.0.1/32")
    rows = []
    try:
        for i, (name, spellings, n) in enumerate(PATH_FAMILIES):
            r = path_family(demo.port, f"203.0.113.{100 + i}", spellings, n)
            r.update(name=name, requests=n)
            rows.append(r)
        # Every spelling above in turn from one more IP: one budget for all of them.
        everything = [s for _, spellings, n in PATH_FAMILIES if n > 100 for s in spellings]
        n = DOWNLOAD_LIMIT + 200
        r = path_family(demo.port, "203.0.113.199", everything, n)
        r.update(name=f"all {len(everything)} spellings above in turn, from one IP", requests=n)
        rows.append(r)
    finally:
        demo.close()
    return rows
