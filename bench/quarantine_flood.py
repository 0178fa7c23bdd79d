#!/usr/bin/env python3
"""Quarantine flood: FORGED forged deliveries (bad signature, so each is
quarantined) beside a stream of good ones, against the enrollhook binary given.
Reports the good deliveries' latency (p50/p99/max) and the flood's rate.

Before issue #14 every rejected delivery pruned the quarantine (an OFFSET walk)
under the write lock the good deliveries share; now once per max/64 inserts.

The good deliveries are first sent alone (the baseline, same server, same run),
then beside the flood.

Usage: python3 bench/quarantine_flood.py BINARY [--forged 20000] [--good 500]
       [--flood-threads 8] [--max-quarantine 5000] [--server-args "--max-quarantine-rate 1000000"]
(a debug build is fine for a before/after comparison; release for absolute numbers)
"""

import argparse
import hashlib
import hmac
import json
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
import urllib.error

SECRET = "bench-school-api-key"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def post(url, body, signature):
    req = urllib.request.Request(url, data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    req.add_header("X-Thinkific-Hmac-Sha256", signature)
    req.add_header("X-Thinkific-Topic", "order.created")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def body(i, kind):
    return json.dumps({
        "id": f"{kind}-{i}", "resource": "order", "action": "created", "tenant_id": "59",
        "created_at": "2024-01-01T00:00:00Z", "payload": {"id": i, "amount_cents": 1000},
    }).encode()


def sign(b):
    return hmac.new(SECRET.encode(), b, hashlib.sha256).hexdigest()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("binary")
    p.add_argument("--forged", type=int, default=20000)
    p.add_argument("--good", type=int, default=500)
    p.add_argument("--flood-threads", type=int, default=8)
    p.add_argument("--max-quarantine", type=int, default=5000)
    p.add_argument("--server-args", default="", help="more `serve` flags, space-separated")
    p.add_argument("--flood-rate", type=float, default=0,
                   help="forged deliveries a second in all (0: as fast as the threads go); "
                        "a fixed rate compares builds under the same flood")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [a.binary, "serve", "--listen", f"127.0.0.1:{port}", "--database",
             f"sqlite://{d}/flood.db", "--secret", SECRET,
             "--max-quarantine", str(a.max_quarantine)] + a.server_args.split(),
            stdout=subprocess.DEVNULL, stderr=open(f"{d}/server.log", "w"))
        try:
            for _ in range(300):
                try:
                    urllib.request.urlopen(base + "/healthz", timeout=1)
                    break
                except Exception:
                    time.sleep(0.1)
            url = base + "/webhooks/thinkific"

            def good(i):
                b = body(i, "good")
                t0 = time.time()
                status = post(url, b, sign(b))
                assert status == 200, status
                return (time.time() - t0) * 1000

            alone = sorted(good(i) for i in range(a.good))
            left = [a.forged]
            lock = threading.Lock()

            def flood():
                interval = a.flood_threads / a.flood_rate if a.flood_rate else 0
                next_at = time.time()
                while True:
                    with lock:
                        if left[0] <= 0:
                            return
                        left[0] -= 1
                        i = left[0]
                    post(url, body(i, "forged"), sign(b"not this body"))
                    if interval:
                        next_at += interval
                        time.sleep(max(0.0, next_at - time.time()))

            start = time.time()
            threads = [threading.Thread(target=flood) for _ in range(a.flood_threads)]
            for t in threads:
                t.start()
            latencies = []
            i = 0
            while any(t.is_alive() for t in threads) and i < a.good:
                latencies.append(good(a.good + i))
                i += 1
            for t in threads:
                t.join()
            flood_s = time.time() - start
            latencies.sort()
            n = len(latencies)

            def pct(xs, q):
                return round(xs[min(len(xs) - 1, len(xs) * q // 100)], 2)

            print(json.dumps({
                "binary": a.binary, "server_args": a.server_args, "forged": a.forged,
                "flood_rate": a.flood_rate,
                "flood_seconds": round(flood_s, 2), "forged_per_s": round(a.forged / flood_s),
                "alone_p50_ms": pct(alone, 50), "alone_p99_ms": pct(alone, 99),
                "good": n, "good_p50_ms": pct(latencies, 50), "good_p99_ms": pct(latencies, 99),
                "good_max_ms": round(latencies[-1], 2),
            }))
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
