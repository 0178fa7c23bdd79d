#!/usr/bin/env python3
"""Forwarding benchmark: ingest load and forwarding at the same time.

enrollhook (release, SQLite) forwards every event to 2 subscriptions pointing at
a destination: a local HTTP receiver that answers 200 at once (the bare baseline
receiver), or a broker on its default local port (NATS JetStream 4222, RabbitMQ
5672, Redis 6379), each with its own stream / exchange + queue / key made for
the run and removed after. wrk (or `enrollhook simulate --rate`) drives ingest
for DURATION seconds; every second we sample the outbox depth (pending
deliveries). After ingest stops we time how long the outbox takes to drain.
Forwarding keeps up when the depth stays bounded during the load.
`enrollhook_cpu_us_per_event` is enrollhook's CPU time from the start of the
load until the outbox is empty, per stored event: everything the run's events
cost it (ingest and every forward), however the cores were shared meanwhile.

`--destinations http,nats,amqp,redis` runs each in turn in one invocation (one
JSON line each), so the brokers are compared with HTTP on the same machine state;
`none` is the same ingest with no subscription, the baseline for "forwarding must
not slow ingest" (`--destinations none,http --subscriptions 1 --rate 3000
--sim-concurrency 32`: ingest p50/p99 as `simulate` saw them, side by side).
`--database postgres://…` runs the load on PostgreSQL.

`--latency N` then measures, at light load (`--latency-rate` deliveries/s, one
at a time), the time from each delivery's 200 to its forward reaching a local
receiver (in this process, one clock), and prints its p50/p99/max as one more
JSON line. A forward can reach the receiver before the 200 reaches the sender
(the worker is woken by the commit, before the answer is written): those
latencies are negative and count as such. `--latency-database` runs it on
PostgreSQL (`postgres://…`, a database of its own, emptied first) instead of a
fresh SQLite file.

Usage: python3 bench/forward.py [--duration 20] [--rate 5000] [--destinations http,nats]
                                [--latency 500 [--latency-rate 20] [--latency-database URL]]
       (bench/run.sh builds first, with examples/broker_place, which makes and
       removes each broker's stream / exchange + queue / keys and counts them)
"""

import argparse
import http.server
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (shared helpers: build paths, wrk, process control)


def count(db, sql):
    """One number from the run's database: a SQLite file path or a postgres:// URL."""
    if str(db).startswith("postgres"):
        r = bench.psql(str(db).rsplit("/", 1)[1].split("?")[0], sql)
        return int(r.stdout.strip() or 0)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return c.execute(sql).fetchone()[0]


# The processes besides enrollhook that a run's CPU goes to, by their name in
# /proc/PID/comm: the broker (or PostgreSQL) serving the destination or the store.
BROKER_PROCESSES = {"nats": ("nats-server",), "amqp": ("beam.smp",), "redis": ("redis-server",)}


def pids_named(names):
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in names:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def cpu_of(pids):
    return sum(bench.cpu_seconds(p) for p in pids)


def pending(db):
    try:
        return count(db, "SELECT COUNT(*) FROM outbox WHERE state = 'pending'")
    except sqlite3.OperationalError:  # the server has not created its tables yet
        return 0


def delivered(db):
    return count(db, "SELECT COUNT(*) FROM outbox WHERE state = 'delivered'")


class Broker:
    """A destination for one run: what a subscription needs, and setup/teardown."""

    def __init__(self, kind, name, dest_port=None):
        self.kind, self.name, self.dest_port = kind, name, dest_port

    def place(self, action):
        """examples/broker_place: create, remove or count the run's stream / exchange + queue / keys."""
        if self.kind in ("http", "none"):
            return None
        done = subprocess.run([str(bench.RELEASE / "examples" / "broker_place"), action, self.kind, self.name],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"broker_place {action} {self.kind}: {done.stderr.strip()}")
        return done.stdout.strip()

    def subscription(self, i):
        if self.kind == "http":
            return {"url": f"http://127.0.0.1:{self.dest_port}/webhooks/thinkific/dest{i}"}
        if self.kind == "nats":
            return {"url": "nats://127.0.0.1:4222", "subject": f"{self.name}.{i}.{{topic}}"}
        if self.kind == "amqp":
            return {"url": "amqp://guest:guest@127.0.0.1:5672/%2f", "exchange": self.name,
                    "routing_key": f"{i}.{{topic}}"}
        return {"url": "redis://127.0.0.1:6379", "stream": f"{self.name}:{i}", "maxlen": 1_000_000}

    def alone(self):
        """What the broker confirms per second on its own (RabbitMQ only: persistent,
        mandatory publishes with confirms, 256 in flight, the forwarder's library),
        measured in a place of its own just before the run, for beside its rate."""
        if self.kind != "amqp":
            return None
        place = Broker(self.kind, self.name + "_alone")
        place.place("create")
        try:
            return json.loads(place.place("ceiling"))["per_s"]
        finally:
            place.place("remove")


# --shaped: what a school would set up. Each filter is evaluated on every event
# and accepts (nearly) all of the simulator's traffic, so every event is still
# rendered and sent twice: the worst case for forwarding, not a lighter one.
SHAPED = [
    {"filter": {"resource": {"$in": ["enrollment", "lesson", "quiz", "order", "user"]}},
     "template": {"preset": "slack"}},
    {"filter": {"$or": [{"payload.percentage_completed": {"$gte": 0}},
                        {"payload.user.email": {"$exists": True}}]},
     "template": {"preset": "json"}},
]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--destinations", default="http",
                   help="comma-separated, run in turn: none (no subscription: the baseline), "
                        "http, nats, amqp, redis")
    p.add_argument("--subscriptions", type=int, default=2, help="subscriptions per destination")
    p.add_argument("--sim-concurrency", type=int, default=64,
                   help="deliveries in flight with --rate (simulate --concurrency)")
    p.add_argument("--database", default=None,
                   help="postgres://… to run the load on PostgreSQL (a database of its own, "
                        "emptied first); default: a fresh SQLite file")
    p.add_argument("--enrollhook-bin", default=None,
                   help="another build's binary to measure (A/B against this checkout's)")
    p.add_argument("--duration", type=int, default=20)
    p.add_argument("--events", type=int, default=600_000)
    p.add_argument("--connections", type=int, default=8, help="wrk connections ingesting")
    p.add_argument("--forward-concurrency", type=int, default=None,
                   help="enrollhook's --forward-concurrency (default: its own)")
    p.add_argument("--rate", type=int, default=0,
                   help="ingest at this many events/s with `enrollhook simulate` (64 in flight) "
                        "instead of wrk as fast as it answers")
    p.add_argument("--shaped", action="store_true",
                   help="the 2 subscriptions filter and render templates (Slack and JSON presets) "
                        "instead of forwarding every event as it came")
    p.add_argument("--latency", type=int, default=0,
                   help="then measure 200-to-receiver latency over this many deliveries at light load")
    p.add_argument("--latency-rate", type=float, default=20.0,
                   help="deliveries/s during the latency measurement (one at a time)")
    p.add_argument("--latency-database", default=None,
                   help="postgres://… to measure latency on PostgreSQL (default: a fresh SQLite file)")
    p.add_argument("--latency-only", action="store_true", help="skip the load runs")
    args = p.parse_args()
    if args.enrollhook_bin:
        bench.ENROLLHOOK = Path(args.enrollhook_bin).resolve()
    for kind in args.destinations.split(","):
        if kind not in ("none", "http", "nats", "amqp", "redis"):
            p.error(f"unknown destination {kind}: use none, http, nats, amqp or redis")
    if not args.latency_only:
        for kind in args.destinations.split(","):
            run_one(kind, args)
    if args.latency:
        measure_latency(args)


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure_latency(args):
    """Light load: one delivery at a time; from its 200 to its forward's arrival."""
    events_file = bench.BENCH / "out" / f"events-v2-{args.events}.txt"
    if not events_file.exists():
        (bench.BENCH / "out").mkdir(exist_ok=True)
        subprocess.run([sys.executable, str(bench.BENCH / "gen_events.py"), "--count", str(args.events),
                        "--secret", bench.SECRET, "--out", str(events_file)], check=True)
    with open(events_file) as f:
        lines = [next(f).rstrip("\n") for _ in range(args.latency)]
    arrived, lock = {}, threading.Lock()

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            at = time.monotonic()
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with lock:
                arrived.setdefault(json.loads(body)["id"], at)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_):
            pass

    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    work = Path(tempfile.mkdtemp(prefix="enrollhook-latency-"))
    (work / "enrollhook.toml").write_text(f'[[source]]\nname = "c8"\nsecret = "{bench.SECRET}"\n')
    database = args.latency_database or f"sqlite://{work / 'enrollhook.db'}"
    if args.latency_database:
        name = database.rsplit("/", 1)[1].split("?")[0]
        bench.create_pg_database(name)
    port, log_path = bench.free_port(), work / "enrollhook.log"
    server = subprocess.Popen([str(bench.ENROLLHOOK), "--config", str(work / "enrollhook.toml"),
                               "--database", database, "serve", "--listen", f"127.0.0.1:{port}",
                               "--allow-private-destinations"],
                              stdout=subprocess.DEVNULL, stderr=open(log_path, "w"))
    try:
        bench.wait_ready(server, port, log_path)
        body = json.dumps({"url": f"http://127.0.0.1:{receiver.server_port}/in", "topics": ["*"]}).encode()
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{port}/api/subscriptions", data=body,
            headers={"content-type": "application/json"})).read()
        answered = {}
        for line in lines:
            signature, delivery = line.split(" ", 1)
            req = urllib.request.Request(f"http://127.0.0.1:{port}/webhooks/thinkific/c8",
                                         data=delivery.encode(),
                                         headers={"content-type": "application/json",
                                                  "x-thinkific-hmac-sha256": signature})
            urllib.request.urlopen(req).read()
            answered[json.loads(delivery)["id"]] = time.monotonic()
            time.sleep(1 / args.latency_rate)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with lock:
                if len(arrived) >= len(answered):
                    break
            time.sleep(0.05)
        with lock:
            latencies = [(arrived[i] - t) * 1000 for i, t in answered.items() if i in arrived]
        print(json.dumps({
            "measure": "200 to receiver, light load",
            "backend": database.split(":", 1)[0],
            "deliveries": len(answered),
            "forwarded": len(latencies),
            "rate_per_s": args.latency_rate,
            "latency_p50_ms": round(percentile(latencies, 0.50), 2) if latencies else None,
            "latency_p99_ms": round(percentile(latencies, 0.99), 2) if latencies else None,
            "latency_max_ms": round(max(latencies), 2) if latencies else None,
        }))
    finally:
        bench.stop(server)
        receiver.shutdown()


def run_one(kind, args):
    out = bench.BENCH / "out"
    out.mkdir(exist_ok=True)
    events_file = out / f"events-v2-{args.events}.txt"
    if not events_file.exists():
        subprocess.run([sys.executable, str(bench.BENCH / "gen_events.py"), "--count", str(args.events),
                        "--secret", bench.SECRET, "--out", str(events_file)], check=True)
    work = Path(tempfile.mkdtemp(prefix="enrollhook-forward-"))
    dest_port, port = bench.free_port(), bench.free_port()
    dest = subprocess.Popen([str(bench.RELEASE / "examples" / "bench_baseline"), "--mode", "bare",
                             "--listen", f"127.0.0.1:{dest_port}", "--secret", bench.SECRET,
                             "--database", str(work / "unused.db")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    broker = Broker(kind, f"enrollhook_bench_{int(time.time())}", dest_port)
    broker_alone = broker.alone()
    broker.place("create")
    (work / "enrollhook.toml").write_text(f'[[source]]\nname = "c8"\nsecret = "{bench.SECRET}"\n')
    if args.database:
        db = args.database
        bench.create_pg_database(db.rsplit("/", 1)[1].split("?")[0])
        database = db
    else:
        db = work / "enrollhook.db"
        database = f"sqlite://{db}"
    log_path = work / "enrollhook.log"
    server = subprocess.Popen([str(bench.ENROLLHOOK), "--config", str(work / "enrollhook.toml"),
                               "--database", database, "serve", "--listen", f"127.0.0.1:{port}",
                               "--allow-private-destinations"]
                              + (["--forward-concurrency", str(args.forward_concurrency)]
                                 if args.forward_concurrency else []),
                              stdout=subprocess.DEVNULL, stderr=open(log_path, "w"))
    try:
        bench.wait_ready(server, port, log_path)
        bench.wait_ready(dest, dest_port, log_path)
        for i in range(args.subscriptions if kind != "none" else 0):
            body = json.dumps({**broker.subscription(i), "topics": ["*"],
                               **(SHAPED[i] if args.shaped else {})}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/subscriptions", data=body,
                                         headers={"content-type": "application/json"})
            urllib.request.urlopen(req).read()
        samples, stop = [], threading.Event()

        def sample():
            while not stop.is_set():
                samples.append(pending(db))
                time.sleep(1)

        sampler = threading.Thread(target=sample)
        sampler.start()
        # Where the cores go during the load: enrollhook, the load generator,
        # the receiver, the broker and PostgreSQL (cores = CPU seconds / wall).
        parts = {"enrollhook": lambda: [server.pid], "receiver": lambda: [dest.pid],
                 "broker": lambda: pids_named(BROKER_PROCESSES.get(kind, ())),
                 "postgres": lambda: pids_named(("postgres",)) if args.database else []}
        cpu_before = {name: cpu_of(pids()) for name, pids in parts.items()}
        started = time.monotonic()
        if args.rate:
            sim = subprocess.Popen([str(bench.ENROLLHOOK), "simulate", "--url",
                                  f"http://127.0.0.1:{port}/webhooks/thinkific/c8", "--source", "c8",
                                  "--secret", bench.SECRET, "--rate", str(args.rate),
                                  "--concurrency", str(args.sim_concurrency),
                                  "--duration", f"{args.duration}s", "--students", "1000000",
                                  "--courses", "50", "--arrival-days", "1"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            sim_out, sim_err = [], []
            readers = [threading.Thread(target=lambda f=f, into=into: into.append(f.read()))
                       for f, into in ((sim.stdout, sim_out), (sim.stderr, sim_err))]
            for r in readers:
                r.start()
            # wait4 gives the simulator's own CPU time, counted to its exit.
            _, status, usage = os.wait4(sim.pid, 0)
            sim.returncode = os.waitstatus_to_exitcode(status)
            sim_cpu = usage.ru_utime + usage.ru_stime
            for r in readers:
                r.join()
            sim.stdout, sim.stderr = "".join(sim_out), "".join(sim_err)
            if sim.returncode != 0:
                raise RuntimeError(f"simulate failed: {sim.stderr[-500:]}")
            elapsed = time.monotonic() - started
            stored = count(db, "SELECT COUNT(*) FROM events")
            run = {"ok": stored, "ok_per_s": stored / elapsed}
            latency = re.search(r"latency ms: p50 ([\d.]+)\s+p90 ([\d.]+)\s+p99 ([\d.]+)", sim.stdout)
            if latency:
                run["p50_ms"], run["p99_ms"] = float(latency.group(1)), float(latency.group(3))
        else:
            run = bench.run_wrk(port, args.connections, args.duration, "c8", events_file)
        ingest_end = time.monotonic()
        load_seconds = ingest_end - started
        cores = {name: round((cpu_of(pids()) - cpu_before[name]) / load_seconds, 2)
                 for name, pids in parts.items()}
        if args.rate:
            cores["simulator"] = round(sim_cpu / load_seconds, 2)
        while pending(db) > 0 and time.monotonic() - ingest_end < 300:
            time.sleep(0.2)
        drained = time.monotonic()
        # All of enrollhook's work for the run's events, ingest and every
        # forward, whether done during the load or in the drain after it:
        # what it costs, independent of how the two cores were shared.
        enrollhook_cpu = cpu_of([server.pid]) - cpu_before["enrollhook"]
        stop.set()
        sampler.join()
        total = delivered(db)
        held = broker.place("count")
        result = {
            "destination": kind + (" (filter + template)" if args.shaped else ""),
            "backend": "postgres" if args.database else "sqlite",
            "subscriptions": args.subscriptions if kind != "none" else 0,
            "ingest_events_per_s": round(run["ok_per_s"]),
            "stored": run["ok"],
            "deliveries": total,
            "messages_in_broker": int(held) if held is not None else None,
            "broker_alone_msgs_per_s": broker_alone,
            "deliveries_per_s_overall": round(total / (drained - started)),
            "outbox_depth_max_during_load": max(samples[: args.duration] or [0]),
            "outbox_depth_samples": samples,
            "drain_seconds_after_load": round(drained - ingest_end, 1),
            "ingest_p50_ms": run.get("p50_ms"),
            "ingest_p99_ms": bench.ms(run["p99_us"]) if "p99_us" in run else run.get("p99_ms"),
            "cores_during_load": cores,
            "enrollhook_cpu_us_per_event": round(enrollhook_cpu / max(run["ok"], 1) * 1e6),
        }
        print(json.dumps(result))
    finally:
        bench.stop(server)
        dest.kill()
        broker.place("remove")


if __name__ == "__main__":
    main()
