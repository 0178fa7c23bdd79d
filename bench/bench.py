#!/usr/bin/env python3
"""Ingest benchmark driver (run through `bash bench/run.sh`, which builds first).

For each contender: start it on a free loopback port, warm it up, drive it with
wrk at 8 and at 64 connections using distinct pre-signed deliveries, read its
CPU time and peak RSS from /proc, stop it, check what it stored, and finally
write the table into BENCHMARKS.md between the ingest-benchmark markers.

Each wrk run posts to its own source (/webhooks/thinkific/{warmup,c8,c64}), so
one file of distinct events serves every run: an event is unique per
(source, event id), exactly as enrollhook de-duplicates.
"""

import argparse
import atexit
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RELEASE = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
ENROLLHOOK = RELEASE / "enrollhook"  # --enrollhook-bin compares another build
SECRET = "bench-secret"
SOURCES = ("warmup", "c8", "c64")
PG_URL = "postgres://postgres@127.0.0.1/enrollhook_bench"
PG_BASELINE_DB = "enrollhook_bench_baseline"
BEGIN = "<!-- BEGIN ingest-benchmark: written by bench/run.sh, edits here are overwritten -->"
END = "<!-- END ingest-benchmark -->"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Skip(Exception):
    """A contender that cannot run here (e.g. no PostgreSQL backend yet)."""


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- /proc readings


def process_tree(pid):
    """pid and all its descendants (gunicorn's workers)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def cpu_seconds(pid):
    """utime + stime of the process tree, in seconds."""
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


def peak_rss_mib(pid):
    """Sum of VmHWM (peak resident set) over the process tree."""
    total_kib = 0
    for p in process_tree(pid):
        try:
            m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text())
        except OSError:
            continue
        if m:
            total_kib += int(m.group(1))
    return total_kib / 1024


# ---------------------------------------------------------------- load generator


def run_wrk(port, conns, seconds, source, events_file):
    threads = min(2, conns)
    cmd = [
        "wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s",
        "-s", str(BENCH / "events.lua"), f"http://127.0.0.1:{port}",
        "--", str(events_file), str(threads), f"/webhooks/thinkific/{source}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    line = next((l for l in out.stdout.splitlines() if l.startswith("WRKJSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")
    r = json.loads(line[len("WRKJSON "):])
    r["conns"] = conns
    r["ok"] = r["requests"] - r["non2xx"]
    r["ok_per_s"] = r["ok"] / (r["duration_us"] / 1e6)
    return r


# ---------------------------------------------------------------- contenders


class Contender:
    """Something that answers POST /webhooks/thinkific/{source} on a port."""

    stores = False  # keeps events we can count afterwards

    def __init__(self, name, label):
        self.name, self.label = name, label

    def command(self, port, work):
        raise NotImplementedError

    def env(self, work):
        return None

    def prepare(self, work):
        pass

    def count(self, work):
        """Events stored, by source (or {"all": n} when the store has no source)."""
        return {}

    def after(self, work):
        """Extra checks once the contender has stopped: list of (check, ok, detail)."""
        return []


class Baseline(Contender):
    def __init__(self, mode, label):
        super().__init__(f"baseline-{mode}", label)
        self.mode = mode
        self.stores = mode in ("rusqlite", "sqlite", "postgres")

    def prepare(self, work):
        if self.mode == "postgres":
            create_pg_database(PG_BASELINE_DB)

    def command(self, port, work):
        database = (f"postgres://postgres@127.0.0.1/{PG_BASELINE_DB}" if self.mode == "postgres"
                    else str(work / "baseline.db"))
        return [str(RELEASE / "examples" / "bench_baseline"), "--mode", self.mode,
                "--listen", f"127.0.0.1:{port}", "--secret", SECRET, "--database", database]

    def count(self, work):
        if self.mode == "postgres":
            return pg_counts(PG_BASELINE_DB)
        return sqlite_counts(work / "baseline.db", BY_SOURCE)


class Enrollhook(Contender):
    stores = True

    def __init__(self, backend, label):
        super().__init__(f"enrollhook-{backend}", label)
        self.backend = backend

    def url(self, work):
        return f"sqlite://{work / 'enrollhook.db'}" if self.backend == "sqlite" else PG_URL

    def prepare(self, work):
        sources = "".join(f'[[source]]\nname = "{s}"\nsecret = "{SECRET}"\n\n' for s in SOURCES)
        (work / "enrollhook.toml").write_text(sources)
        if self.backend == "postgres":
            create_pg_database("enrollhook_bench")

    def command(self, port, work):
        return [str(ENROLLHOOK), "--config", str(work / "enrollhook.toml"),
                "--database", self.url(work), "serve", "--listen", f"127.0.0.1:{port}"]

    def count(self, work):
        if self.backend == "sqlite":
            return sqlite_counts(work / "enrollhook.db", BY_SOURCE)
        return pg_counts("enrollhook_bench")

    def after(self, work):
        # The projection built delivery by delivery (with group commit and
        # out-of-order arrivals) must equal a full re-fold of the event log.
        started = time.monotonic()
        r = subprocess.run([str(ENROLLHOOK), "--database", self.url(work),
                            "rebuild", "--check"], capture_output=True, text=True)
        took = time.monotonic() - started
        detail = (r.stdout.strip() or r.stderr.strip()) + f" ({took:.1f} s)"
        return [("projection equals a full rebuild (`enrollhook rebuild --check`)", r.returncode == 0, detail)]


class EnrollhookOtlp(Enrollhook):
    """enrollhook on SQLite exporting traces (1 % sampled) to a local sink that
    answers 200 to anything (bench_baseline --mode bare): tracing's overhead."""

    def __init__(self, label):
        super().__init__("sqlite", label)
        self.name = "enrollhook-sqlite-otlp"
        self.sink = None

    def prepare(self, work):
        super().prepare(work)
        self.sink_port = free_port()
        self.sink = subprocess.Popen(
            [str(RELEASE / "examples" / "bench_baseline"), "--mode", "bare",
             "--listen", f"127.0.0.1:{self.sink_port}", "--secret", SECRET,
             "--database", str(work / "sink.db")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        atexit.register(self.stop_sink)  # also when the run fails before `after`
        wait_ready(self.sink, self.sink_port, work / "sink.log")

    def stop_sink(self):
        if self.sink:
            stop(self.sink)
            self.sink = None

    def command(self, port, work):
        return super().command(port, work) + [
            "--otlp-endpoint", f"http://127.0.0.1:{self.sink_port}", "--otlp-sample", "0.01"]

    def after(self, work):
        self.stop_sink()
        return super().after(work)


class Flask(Contender):
    stores = True

    def command(self, port, work):
        # gunicorn's documented worker count: 2 × cores + 1.
        workers = 2 * (os.cpu_count() or 1) + 1
        return [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}",
                "--chdir", str(BENCH), "--log-level", "warning", "flask_receiver:app"]

    def env(self, work):
        return {**os.environ, "BENCH_SECRET": SECRET, "BENCH_DB": str(work / "flask.db")}

    def count(self, work):
        return sqlite_counts(work / "flask.db", BY_SOURCE)


BY_SOURCE = "SELECT source, COUNT(*) FROM events GROUP BY source"


def sqlite_counts(path, sql):
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return dict(db.execute(sql).fetchall())


def pg_counts(db):
    r = psql(db, BY_SOURCE)
    if r.returncode != 0:
        return {}
    return {source: int(n) for source, n in (l.split("|") for l in r.stdout.split())}


def create_pg_database(name):
    if not shutil.which("psql"):
        raise Skip("psql is not installed")
    for sql in (f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"):
        r = psql("postgres", sql)
        if r.returncode != 0:
            raise Skip(f"PostgreSQL not reachable: {r.stderr.strip()}")


def psql(db, sql):
    return subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-tAc", sql],
                          capture_output=True, text=True)


CONTENDERS = {
    "bare": Baseline("bare", "bare axum (reads the body)"),
    "verify": Baseline("verify", "axum + HMAC + JSON parse"),
    "rusqlite": Baseline("rusqlite", "axum + HMAC + JSON + SQLite group commit of the raw event (rusqlite): **SQLite ceiling**"),
    "sqlite": Baseline("sqlite", "the same through sqlx (extra row: the driver's cost)"),
    "postgres": Baseline("postgres", "axum + HMAC + JSON + PostgreSQL group commit of the raw event: **PostgreSQL ceiling**"),
    "enrollhook-sqlite": Enrollhook("sqlite", "**enrollhook, SQLite**"),
    "enrollhook-postgres": Enrollhook("postgres", "**enrollhook, PostgreSQL**"),
    "flask": Flask("flask", "Flask + gunicorn receiver (HMAC + SQLite insert)"),
}

# Measured only when named in --only (not part of the default run).
OPTIONAL_CONTENDERS = {
    "enrollhook-sqlite-otlp": EnrollhookOtlp(
        "enrollhook, SQLite, traces over OTLP sampled at 1 % (to a local sink)"),
}


def wait_ready(proc, port, log_path, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = Path(log_path).read_text(errors="replace").strip().splitlines()[-3:]
            raise Skip("exited at start: " + " / ".join(tail))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"not listening on {port} after {timeout} s")


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(c, args, events_file, out_dir):
    work = out_dir / c.name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    c.prepare(work)
    port = free_port()
    load_before = os.getloadavg()[0]
    log_path = work / "server.log"
    with open(log_path, "wb") as server_log:
        proc = subprocess.Popen(c.command(port, work), env=c.env(work), cwd=work,
                                stdout=server_log, stderr=subprocess.STDOUT)
    try:
        wait_ready(proc, port, log_path)
        runs = {}
        runs["warmup"] = run_wrk(port, 64, args.warmup, "warmup", events_file)
        runs["c8"] = run_wrk(port, 8, args.duration, "c8", events_file)
        cpu_before = cpu_seconds(proc.pid)
        runs["c64"] = run_wrk(port, 64, args.duration, "c64", events_file)
        cpu = cpu_seconds(proc.pid) - cpu_before
        rss = peak_rss_mib(proc.pid)
    finally:
        stop(proc)
    result = {"name": c.name, "label": c.label, "runs": runs, "peak_rss_mib": rss,
              "load": (load_before, os.getloadavg()[0]),
              "cpu_s_per_10k": cpu / max(runs["c64"]["ok"], 1) * 10_000, "checks": []}
    for source, r in runs.items():
        if r["non2xx"] or r["timeouts"] or r["connect_errors"] or r["read_errors"] or r["write_errors"]:
            result["checks"].append((f"`{source}` run: every request answered 2xx", False,
                                     f"{r['non2xx']} non-2xx, {r['timeouts']} timeouts, "
                                     f"{r['connect_errors'] + r['read_errors'] + r['write_errors']} socket errors"))
        if c.stores and r["wrapped"]:
            result["checks"].append((f"`{source}` run: only distinct events sent", False,
                                     f"the event file ran out {r['wrapped']} times: raise --events"))
    if c.stores:
        counts = c.count(work)
        if not counts:
            result["checks"].append(("stored events can be counted", False, "no count"))
        for source, stored in counts.items():
            rs = list(runs.values()) if source == "all" else [runs[source]]
            ok, conns = sum(r["ok"] for r in rs), sum(r["conns"] for r in rs)
            # Requests still in flight when wrk stops may be stored without wrk
            # seeing their answer: at most one per connection.
            good = ok <= stored <= ok + conns
            result["checks"].append((f"`{source}` run{'s' if source == 'all' else ''}: stored events match 2xx answers",
                                     good, f"{stored} stored, {ok} answered 2xx"))
        result["checks"].extend(c.after(work))
    return result


# ---------------------------------------------------------------- report


def ms(us):
    return f"{us / 1000:.2f}"


def fsync_ms(directory, rounds=200):
    """p50 and p99 of appending 4 KiB and fsyncing: what one durable commit costs at least."""
    path = directory / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    times = []
    try:
        for _ in range(rounds):
            os.write(fd, b"x" * 4096)
            t = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return times[len(times) // 2] * 1000, times[int(len(times) * 0.99)] * 1000


def machine_description():
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) / 2**20
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    wrk_version = (wrk_version.stdout + wrk_version.stderr).split("\n")[0].strip()
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Linux {platform.release()}; "
            f"{wrk_version}; load generator on the same machine")


def render(results, skipped, args, fsync):
    by = {r["name"]: r for r in results}
    bare = by.get("baseline-bare")
    ceiling = by.get("baseline-rusqlite")
    pg_ceiling = by.get("baseline-postgres")

    def pct(r, base):
        if not base:
            return "–"
        return f"{100 * r['runs']['c64']['ok_per_s'] / base['runs']['c64']['ok_per_s']:.0f} %"

    def own_ceiling(r):
        """Each backend against its own database's ceiling."""
        if r["name"] in ("enrollhook-postgres", "baseline-postgres"):
            return pct(r, pg_ceiling)
        return pct(r, ceiling)

    lines = [
        BEGIN,
        "",
        f"Run {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} on "
        f"{machine_description()}. Each contender: {args.warmup} s warm-up at 64 connections, "
        f"then {args.duration} s at 8 and {args.duration} s at 64 connections (wrk, 2 threads), "
        f"every request a distinct pre-signed delivery (~630 bytes; "
        + ("enrollment events only, `--no-lessons`). " if args.no_lessons
           else "a third of them lesson.completed, as Thinkific sends one per progress). ")
        + 
        f"fsync of the database disk: p50 {fsync[0]:.2f} ms, p99 {fsync[1]:.2f} ms; "
        f"1-minute load average before each contender: "
        + ", ".join(f"{r['name']} {r['load'][0]:.1f}" for r in results) + ".",
        "",
        "| contender | events/s @64 | p50 / p99 @8 (ms) | p50 / p99 @64 (ms) | CPU s / 10k events | peak RSS (MiB) | vs bare axum | vs its storage ceiling |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        c8, c64 = r["runs"]["c8"], r["runs"]["c64"]
        lines.append(
            f"| {r['label']} | {c64['ok_per_s']:,.0f} | {ms(c8['p50_us'])} / {ms(c8['p99_us'])} | "
            f"{ms(c64['p50_us'])} / {ms(c64['p99_us'])} | {r['cpu_s_per_10k']:.2f} | "
            f"{r['peak_rss_mib']:.0f} | {pct(r, bare)} | {own_ceiling(r)} |")
    for name, why in skipped:
        lines.append(f"| {(CONTENDERS.get(name) or OPTIONAL_CONTENDERS[name]).label} | skipped: {why} | | | | | | |")
    lines.append("")

    eh, flask = by.get("enrollhook-sqlite"), by.get("flask")
    if eh:
        rate = eh["runs"]["c64"]["ok_per_s"]
        targets = []
        if bare:
            share = rate / bare["runs"]["c64"]["ok_per_s"]
            targets.append(("≥ 30 % of bare axum at 64 connections", share >= 0.30, f"{100 * share:.0f} %"))
        if ceiling:
            share = rate / ceiling["runs"]["c64"]["ok_per_s"]
            targets.append(("≥ 80 % of the SQLite storage ceiling at 64 connections", share >= 0.80, f"{100 * share:.0f} %"))
        if flask:
            flask_rate = max(flask["runs"]["c64"]["ok_per_s"], 1e-9)
            times = rate / flask_rate
            context = f"{times:.0f} ×"
            if ceiling:
                # What the target asks of this machine: the storage ceiling itself,
                # which does the least a durable receiver can, is this many times Flask.
                context += f" (the storage ceiling: {ceiling['runs']['c64']['ok_per_s'] / flask_rate:.0f} ×)"
            targets.append(("≥ 40 × the Flask receiver", times >= 40, context))
        p99 = eh["runs"]["c8"]["p99_us"] / 1000
        targets.append(("p99 < 5 ms at 8 connections", p99 < 5, f"{p99:.2f} ms"))
        if ceiling:
            limit = ceiling["runs"]["c8"]["p99_us"] / 1000
            targets.append(("p99 at 8 connections within 1.5 × the SQLite ceiling's",
                            p99 <= 1.5 * limit, f"{p99:.2f} ms against {limit:.2f} ms ({p99 / limit:.2f} ×)"))
        lines.append("Targets for enrollhook on SQLite, this run:")
        lines.append("")
        for what, ok, value in targets:
            lines.append(f"- {what}: {value} — {'met' if ok else '**not met**'}")
        lines.append("")
    ehp = by.get("enrollhook-postgres")
    if ehp and pg_ceiling:
        share = ehp["runs"]["c64"]["ok_per_s"] / pg_ceiling["runs"]["c64"]["ok_per_s"]
        lines.append("Target for enrollhook on PostgreSQL, this run:")
        lines.append("")
        lines.append(f"- ≥ 70 % of the PostgreSQL storage ceiling at 64 connections: {100 * share:.0f} % — "
                     f"{'met' if share >= 0.70 else '**not met**'}")
        lines.append("")
    checks = [(r["label"], c) for r in results for c in r["checks"]]
    if checks:
        lines.append("Correctness checks after each run:")
        lines.append("")
        for label, (what, ok, detail) in checks:
            lines.append(f"- {label.replace('**', '')}: {what}: {detail} — {'ok' if ok else '**FAILED**'}")
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


HEADER = """# Benchmarks

## Ingest benchmark

`bash bench/run.sh` builds in release mode, starts each contender on a loopback
port, drives it with [wrk](https://github.com/wg/wrk) sending distinct pre-signed
Thinkific deliveries (`bench/gen_events.py`, `bench/events.lua`), and rewrites
the table below. See the notes after the table for what the numbers mean.

"""


def write_report(path, block):
    text = path.read_text() if path.exists() else HEADER + BEGIN + "\n" + END + "\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n## Ingest benchmark\n\n" + block + "\n"
    path.write_text(text)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    p.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per contender")
    p.add_argument("--events", type=int, default=600_000, help="distinct deliveries in the event file")
    p.add_argument("--no-lessons", action="store_true",
                   help="traffic without lesson.completed (enrollment events only, as before issue #17): "
                        "with and without, one after the other, shows what lesson events cost")
    p.add_argument("--only", default=",".join(CONTENDERS), help="comma-separated contenders: " + ",".join(CONTENDERS)
                   + " (optional: " + ",".join(OPTIONAL_CONTENDERS) + ")")
    p.add_argument("--report", default=str(ROOT / "BENCHMARKS.md"), help="markdown file to update ('-' for stdout only)")
    p.add_argument("--enrollhook-bin", help="measure this enrollhook binary instead (A/B comparisons)")
    p.add_argument("--log", default=None, help="RUST_LOG for enrollhook (default: its own, info)")
    args = p.parse_args()
    global ENROLLHOOK
    if args.enrollhook_bin:
        ENROLLHOOK = Path(args.enrollhook_bin).resolve()
    if args.log:
        os.environ["RUST_LOG"] = args.log

    started = time.monotonic()
    out_dir = BENCH / "out"
    out_dir.mkdir(exist_ok=True)
    lessons = "-no-lessons" if args.no_lessons else ""
    events_file = out_dir / f"events-v2{lessons}-{args.events}.txt"
    if not events_file.exists():
        log(f"writing {args.events:,} signed deliveries to {events_file}")
        subprocess.run([sys.executable, str(BENCH / "gen_events.py"), "--count", str(args.events),
                        "--secret", SECRET, "--out", str(events_file) + ".tmp"]
                       + (["--no-lessons"] if args.no_lessons else []), check=True)
        os.rename(str(events_file) + ".tmp", events_file)

    fsync = fsync_ms(out_dir)
    log(f"fsync p50 {fsync[0]:.2f} ms, p99 {fsync[1]:.2f} ms")
    results, skipped = [], []
    for name in args.only.split(","):
        c = CONTENDERS.get(name) or OPTIONAL_CONTENDERS.get(name)
        if c is None:
            sys.exit(f"unknown contender {name!r}: choose from "
                     + ",".join([*CONTENDERS, *OPTIONAL_CONTENDERS]))
        log(f"{name}: starting")
        try:
            r = measure(c, args, events_file, out_dir)
        except Skip as why:
            log(f"{name}: skipped: {why}")
            skipped.append((name, str(why)))
            continue
        c8, c64 = r["runs"]["c8"], r["runs"]["c64"]
        log(f"{name}: {c64['ok_per_s']:,.0f}/s @64 (p50 {ms(c64['p50_us'])} p99 {ms(c64['p99_us'])} ms), "
            f"{c8['ok_per_s']:,.0f}/s @8 (p50 {ms(c8['p50_us'])} p99 {ms(c8['p99_us'])} ms), "
            f"{r['cpu_s_per_10k']:.2f} CPU s/10k, {r['peak_rss_mib']:.0f} MiB")
        for what, ok, detail in r["checks"]:
            log(f"{name}: {'ok' if ok else 'FAILED'}: {what}: {detail}")
        results.append(r)

    (out_dir / "results.json").write_text(
        json.dumps({"fsync_ms": fsync, "results": results, "skipped": skipped}, indent=1))
    block = render(results, skipped, args, fsync)
    print(block)
    if args.report != "-":
        write_report(Path(args.report), block)
        log(f"table written to {args.report}")
    log(f"done in {time.monotonic() - started:.0f} s")
    failed = [c for r in results for c in r["checks"] if not c[1]]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
